//! Shared by the engine's integration tests: where the default model and the reference
//! outputs live. The model comes from scripts/fetch-default-model; a missing file is a failure
//! with instructions, never a silent skip.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::DType;
use wick_engine::loader::{self, LoadOptions, LoadedModel};
use wick_engine::model_source::ModelSource;

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Same lookup as scripts/fetch-default-model: WICK_CACHE_DIR, else XDG_CACHE_HOME/wick, else
/// $HOME/.cache/wick.
pub fn default_model_path() -> PathBuf {
    let set = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let dir = match set("WICK_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => set("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"))
            .join("wick"),
    };
    let path = dir.join(DEFAULT_MODEL_FILE);
    assert!(
        path.is_file(),
        "default model missing at {}: run scripts/fetch-default-model first",
        path.display()
    );
    path
}

pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

pub fn load_default(dtype: Option<DType>) -> LoadedModel {
    load_default_with(LoadOptions {
        dtype,
        ..Default::default()
    })
}

pub fn load_default_with(opts: LoadOptions) -> LoadedModel {
    loader::load(&ModelSource::GgufFile(default_model_path()), &opts).expect("default model loads")
}
