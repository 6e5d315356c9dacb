//! CUDA kernels (feature `cuda`): the `.cu` sources beside this file are compiled to PTX at
//! build time (`engine/build.rs`) and launched from here.

pub(crate) mod paged_decode;
