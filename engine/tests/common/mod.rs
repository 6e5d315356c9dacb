//! Shared by the engine's integration tests: where the default model and the reference
//! outputs live. The model comes from scripts/fetch-default-model; a missing file is a failure
//! with instructions, never a silent skip.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use wick_engine::model::loader::{self, LoadOptions, LoadedModel};
use wick_engine::model::weights::WeightFormat;
use wick_engine::source::ModelSource;

pub mod golden;

pub const FALLBACK_MODEL_SHA256: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";

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

/// The Qwen2 fallback model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M), which must have been fetched
/// by scripts/fetch-fallback-model into the same cache directory as the default model.
pub fn fallback_model_path() -> PathBuf {
    let path = wick_engine::default_model_path().with_file_name("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf");
    assert!(
        path.is_file(),
        "fallback model missing at {}: run scripts/fetch-fallback-model first",
        path.display()
    );
    path
}

pub fn load_fallback() -> LoadedModel {
    load_fallback_with(LoadOptions::default())
}

pub fn load_fallback_with(opts: LoadOptions) -> LoadedModel {
    loader::load(&ModelSource::GgufFile(fallback_model_path()), &opts).expect("fallback model loads")
}

/// `tests/reference`; `WICK_REFERENCE_DIR` overrides it for test binaries run away from the
/// checkout they were built in (scripts/gpu-check carries them to a GPU machine).
pub fn reference_dir() -> PathBuf {
    std::env::var_os("WICK_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference"))
}

/// The device tests that may run on a GPU use: `WICK_TEST_DEVICE` (`cpu`, `cuda:N`), default CPU.
pub fn test_device() -> candle_core::Device {
    let spec = std::env::var("WICK_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    wick_engine::device_from_spec(&spec).unwrap_or_else(|e| panic!("WICK_TEST_DEVICE={spec}: {e}"))
}

/// The default model on the test device (`WICK_TEST_DEVICE`), so that the engine-level tests
/// (batched == one sequence, speculation == plain decoding) can be rerun on a GPU as they are.
pub fn load_default(dtype: Option<DType>) -> LoadedModel {
    let format = dtype.map_or(WeightFormat::AsStored, WeightFormat::Dense);
    load_default_with(LoadOptions {
        format,
        device: test_device(),
    })
}

/// The default model as a draft model with a pool of 64 blocks of 16 tokens.
pub fn default_draft() -> wick_engine::spec::draft::DraftModel {
    use wick_engine::kv::block_manager::BlockManager;
    use wick_engine::kv::cache::PagedKvCache;
    use wick_engine::runner::{kv_shape, ModelRunner};
    let loaded = load_default(None);
    let (blocks, block_size) = (64, 16);
    let cache = PagedKvCache::new(
        kv_shape(loaded.model.config()),
        block_size,
        blocks,
        loaded.model.dtype(),
        loaded.model.device(),
    )
    .expect("KV pool");
    wick_engine::spec::draft::DraftModel::new(
        ModelRunner::new(loaded.model, cache),
        BlockManager::new(blocks, block_size).expect("block manager"),
    )
    .expect("draft model")
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

/// Waits until the engine has nothing running or waiting (10 s at most), and returns its stats
/// then.
pub fn settled(engine: &wick_engine::Engine) -> wick_engine::engine::EngineStats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = engine.stats();
        if stats.num_running == 0 && stats.num_waiting == 0 || std::time::Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
