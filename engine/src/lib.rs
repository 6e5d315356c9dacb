//! wick's engine: loads Llama-family models (GGUF or safetensors, local or from the Hugging Face
//! Hub), tokenizes, and runs batched forward passes over a paged KV cache.
//!
//! One room per part (docs/architecture.md; `scripts/check-layers` keeps the arrows one way):
//! - [`source`]: what to load (a file, a directory, a Hub id) and the GGUF metadata;
//! - [`tokenizer`]: the tokenizer and the incremental detokenizer;
//! - [`model`]: configuration, weights, loading, the Llama/Qwen2 forward and its attention
//!   interface;
//! - [`kernels`]: what replaces candle ops for speed (CPU, and CUDA behind the `cuda` feature);
//! - [`kv`]: the paged KV pool and the block manager with prefix caching;
//! - [`sample`]: sampling parameters, the sampler, constraints, stop handling;
//! - [`sched`]: sequence state and the batching policy;
//! - [`runner`]: one forward step for a batch over the paged pool;
//! - [`spec`]: speculative decoding's proposers (prompt lookup, a draft model);
//! - [`engine`]: the engine thread and the handle the server calls.

pub mod engine;
pub mod error;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod runner;
pub mod sample;
pub mod sched;
pub mod source;
pub mod spec;
pub mod tokenizer;

pub use candle_core::DType;
pub use engine::{Engine, EngineConfig, EngineEvent, GenerateRequest, GenerationStream};
pub use error::{EngineError, Result};
pub use model::device::device_from_spec;

/// File name of the embedded default model (SmolLM2-135M-Instruct, Q4_1).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `scripts/fetch-default-model` puts the default model: `$WICK_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/wick`, else `$HOME/.cache/wick` (empty variables count as unset).
pub fn default_model_path() -> std::path::PathBuf {
    use std::path::PathBuf;
    let set = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let dir = set("WICK_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        set("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("wick")
    });
    dir.join(DEFAULT_MODEL_FILE)
}
