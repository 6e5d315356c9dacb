//! From a [`ModelSource`] to a loaded model and its tokenizer.

use candle_core::{DType, Device};

use crate::error::{EngineError, Result};
use crate::model::config::LlamaConfig;
use crate::model::llama::LlamaModel;
use crate::model::weights::{WeightFormat, Weights};
use crate::source::{ModelFiles, ModelSource};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// How matrices are held. `AsStored`: GGUF weights stay quantized and safetensors load
    /// dense (f32 on CPU, bf16 elsewhere); a re-quantization applies to GGUF only.
    pub format: WeightFormat,
    pub device: Device,
}

impl LoadOptions {
    /// `f32`, `f16`, `bf16` (dense) or `q8_0`, `q4_0` (re-quantized), as `--dtype` takes it.
    pub fn with_format(mut self, spec: &str) -> Result<Self> {
        self.format = WeightFormat::parse(spec)?;
        Ok(self)
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            format: WeightFormat::AsStored,
            device: Device::Cpu,
        }
    }
}

pub struct LoadedModel {
    pub model: LlamaModel,
    pub tokenizer: Tokenizer,
    pub files: ModelFiles,
}

impl LoadedModel {
    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }
}

pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel> {
    let files = source.resolve()?;
    load_files(files, opts)
}

pub fn load_files(files: ModelFiles, opts: &LoadOptions) -> Result<LoadedModel> {
    let device = &opts.device;
    match &files {
        ModelFiles::Gguf { path } => {
            let mut weights = Weights::open_gguf(path)?;
            let content = weights
                .gguf_content()
                .ok_or_else(|| EngineError::InvalidConfig("not GGUF".into()))?;
            let md = crate::source::gguf_metadata::GgufMetadata::new(content);
            let vocab_len = md.array("tokenizer.ggml.tokens").map_or(0, |t| t.len());
            let cfg = LlamaConfig::from_gguf(&md, vocab_len)?;
            if vocab_len == 0 {
                return Err(EngineError::MissingTokenizer(path.clone()));
            }
            let tokenizer = Tokenizer::from_gguf(content)?;
            let model = LlamaModel::load(cfg, &mut weights, opts.format, device)?;
            Ok(LoadedModel {
                model,
                tokenizer,
                files,
            })
        }
        ModelFiles::Safetensors {
            config,
            weights,
            tokenizer,
            tokenizer_config,
        } => {
            let json =
                std::fs::read_to_string(config).map_err(|_| EngineError::MissingFile(config.clone()))?;
            let cfg = LlamaConfig::from_hf_json(&json)?;
            let tokenizer = Tokenizer::from_hf_files(tokenizer, tokenizer_config.as_deref())?;
            let mut w = Weights::open_safetensors(weights)?;
            // Half-precision on CPU is slow and imprecise; default to f32 there.
            let dtype = match opts.format {
                WeightFormat::Dense(dt) => dt,
                WeightFormat::AsStored | WeightFormat::Quantized(_) => {
                    if device.is_cpu() {
                        DType::F32
                    } else {
                        DType::BF16
                    }
                }
            };
            let model = LlamaModel::load(cfg, &mut w, WeightFormat::Dense(dtype), device)?;
            Ok(LoadedModel {
                model,
                tokenizer,
                files,
            })
        }
    }
}
