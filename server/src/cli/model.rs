//! The model a command names: `--model` (or the embedded default), `--device` and `--dtype` as
//! the loader takes them, and the chat template (the model's own or a file). Shared by
//! `wick serve` and `wick generate`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use wick_engine::model::loader::LoadOptions;
use wick_engine::source::ModelSource;
use wick_engine::tokenizer::Tokenizer;

use crate::api::chat_template::ChatTemplate;

/// `--model` as a source; None: the embedded default model, which must have been fetched.
pub fn resolve_model(spec: Option<&str>) -> Result<ModelSource> {
    match spec {
        Some(s) => Ok(ModelSource::parse(s)?),
        None => {
            let path = wick_engine::default_model_path();
            if !path.is_file() {
                anyhow::bail!(
                    "default model not found at {}; run scripts/fetch-default-model or pass --model",
                    path.display()
                );
            }
            Ok(ModelSource::GgufFile(path))
        }
    }
}

/// `--device` and `--dtype` as the loader takes them (shared by `serve` and `generate`). `auto`
/// (or none) keeps GGUF weights as stored: a model's `dtype = "auto"` undoes a dense
/// `engine.dtype` for it (a quantized draft under an f32 target).
pub fn load_options(device: &str, dtype: Option<&str>) -> Result<LoadOptions> {
    let opts = LoadOptions {
        device: wick_engine::device_from_spec(device)?,
        ..Default::default()
    };
    Ok(match dtype {
        Some("auto") | None => opts,
        Some(format) => opts.with_format(format)?,
    })
}

/// The chat template: `override_path`'s file, else the model's own (None: it has none).
pub fn chat_template(override_path: Option<&PathBuf>, tok: &Tokenizer) -> Result<Option<ChatTemplate>> {
    let source = match override_path {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
        None => tok.chat_template.clone(),
    };
    source
        .map(|s| ChatTemplate::new(s, tok.bos_token(), tok.eos_token()))
        .transpose()
        .context("parsing the chat template")
}
