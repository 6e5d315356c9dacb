//! Scheduling: one generation stream's state ([`sequence`]) and the batching policy
//! ([`scheduler`]: iteration-level admission, chunked prefill, preemption). The scheduler
//! decides who runs; the KV layer ([`crate::kv`]) says whether the blocks are there.

pub mod scheduler;
pub mod sequence;
