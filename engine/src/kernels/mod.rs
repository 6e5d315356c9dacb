//! What replaces candle ops for speed. Each kernel has a plain-Rust reference it is tested
//! against, and takes plain slices and dimensions: kernels know nothing of the model, the KV pool
//! or the scheduler that call them.
//!
//! - [`cpu`]: the CPU kernels (the Q4_1 matmul, paged attention over the f32 pool);
//! - [`paged_decode`]: the fused paged-attention decode op (a candle `CustomOp3`): its CUDA
//!   kernel lives in `cuda/`, its CPU path is the reference;
//! - `cuda/` (feature `cuda`): the `.cu` sources, compiled to PTX by `engine/build.rs`, and their
//!   launchers.

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod paged_decode;
