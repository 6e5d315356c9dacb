//! The KV cache: [`cache`] (the paged pool: per-layer K/V tensors in fixed-size blocks, and the
//! [`BlockTable`] that maps a sequence's positions to slots) and [`block_manager`] (who owns which
//! block: allocation, reference counts, prefix caching, copy-on-write). The pool is sized from
//! plain dimensions ([`KvShape`]), not from a model config: the KV layer knows no model.

pub mod block_manager;
pub mod cache;

pub use block_manager::BlockManager;
pub use cache::{BlockTable, KvShape, PagedKvCache, DEFAULT_BLOCK_SIZE};
