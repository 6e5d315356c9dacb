//! wick's engine: loads Llama-family models (GGUF or safetensors, local or from the Hugging Face
//! Hub), tokenizes, and runs batched forward passes over a paged KV cache.
//!
//! Layout, one concept per file: [`model_source`] (what to load), [`loader`], [`weights`],
//! [`model_config`], [`tokenizer`] and [`detokenizer`], [`llama`] (the architecture),
//! [`attention`] (how K/V are stored and read; [`paged_decode`]: the fused decode kernel),
//! [`kv_cache`] (the paged pool), [`block_manager`] (who owns which block), [`model_runner`] (a batch in, logits out),
//! [`sampling_params`] (what a request asks for), [`sampler`] (logits to tokens), [`stop`]
//! (when a sequence ends, and which text may be streamed), [`sequence`] (one generation
//! stream's state), [`scheduler`] (the batching policy) and [`engine`] (the handle the server
//! calls; its thread is `engine_loop`).

pub mod attention;
pub mod block_manager;
pub mod constraint;
pub mod cpu_attention;
pub mod detokenizer;
pub mod device;
pub mod engine;
mod engine_loop;
pub mod error;
pub mod generate;
pub mod gguf_metadata;
mod hub;
pub mod kv_cache;
pub mod llama;
pub mod loader;
pub mod model_config;
pub mod model_runner;
pub mod model_source;
pub mod paged_decode;
#[cfg(feature = "cuda")]
mod paged_decode_cuda;
pub mod q4_1_matmul;
pub mod sampler;
pub mod sampling_params;
pub mod scheduler;
pub mod sequence;
pub mod stop;
pub mod tokenizer;
pub mod weights;

pub use device::device_from_spec;
pub use engine::{Engine, EngineConfig, EngineEvent, GenerateRequest, GenerationStream};
pub use error::{EngineError, Result};

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
