//! From a [`ModelSource`] to a loaded model and its tokenizer.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::error::{EngineError, Result};
use crate::llama::LlamaModel;
use crate::model_config::LlamaConfig;
use crate::model_source::{ModelFiles, ModelSource};
use crate::tokenizer::Tokenizer;
use crate::weights::{WeightFormat, Weights};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// None: GGUF weights stay quantized and safetensors load as stored (bf16/f16 → f32 on
    /// CPU). Some(dt): every matrix dense in `dt`, computed in `dt`.
    pub dtype: Option<DType>,
    /// Re-quantize GGUF matrices to this type at load (ignored when `dtype` is set).
    pub requantize: Option<GgmlDType>,
    pub device: Device,
}

impl LoadOptions {
    /// `f32`/`f16`/`bf16` set `dtype`; `q8_0`/`q4_0` set `requantize`.
    pub fn with_format(mut self, spec: &str) -> Result<Self> {
        match WeightFormat::parse(spec)? {
            WeightFormat::Dense(dt) => self.dtype = Some(dt),
            WeightFormat::Quantized(q) => self.requantize = Some(q),
            WeightFormat::AsStored => {}
        }
        Ok(self)
    }

    fn weight_format(&self) -> WeightFormat {
        match (self.dtype, self.requantize) {
            (Some(dt), _) => WeightFormat::Dense(dt),
            (None, Some(q)) => WeightFormat::Quantized(q),
            (None, None) => WeightFormat::AsStored,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            requantize: None,
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
            let md = crate::gguf_metadata::GgufMetadata::new(content);
            let vocab_len = md.array("tokenizer.ggml.tokens").map_or(0, |t| t.len());
            let cfg = LlamaConfig::from_gguf(&md, vocab_len)?;
            if vocab_len == 0 {
                return Err(EngineError::MissingTokenizer(path.clone()));
            }
            let tokenizer = Tokenizer::from_gguf(content)?;
            let model = LlamaModel::load(cfg, &mut weights, opts.weight_format(), device)?;
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
            let dtype = opts
                .dtype
                .unwrap_or(if device.is_cpu() { DType::F32 } else { DType::BF16 });
            let model = LlamaModel::load(cfg, &mut w, WeightFormat::Dense(dtype), device)?;
            Ok(LoadedModel {
                model,
                tokenizer,
                files,
            })
        }
    }
}
