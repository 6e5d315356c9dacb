//! Shared by the engine's integration tests: where the default model and the reference
//! outputs live. The model comes from scripts/fetch-default-model; a missing file is a failure
//! with instructions, never a silent skip.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use wick_engine::loader::{self, LoadOptions, LoadedModel};
use wick_engine::model_source::ModelSource;
use wick_engine::weights::WeightFormat;

pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The default model, which must have been fetched.
pub fn default_model_path() -> PathBuf {
    let path = wick_engine::default_model_path();
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
    let format = dtype.map_or(WeightFormat::AsStored, WeightFormat::Dense);
    load_default_with(LoadOptions {
        format,
        ..Default::default()
    })
}

pub fn load_default_with(opts: LoadOptions) -> LoadedModel {
    loader::load(&ModelSource::GgufFile(default_model_path()), &opts).expect("default model loads")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
