//! Hyper-parameters of a Llama-family model, read from GGUF metadata or a Hugging Face
//! `config.json`. Mistral-7B-style models are Llama with GQA and (optionally) no tied embeddings,
//! and Qwen2 is Llama with biases on the Q/K/V projections, so one struct covers them all.

use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::source::gguf_metadata::GgufMetadata;

/// The member of the Llama family: what differs is said by the methods, not by a second model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Architecture {
    /// Llama 2/3, SmolLM2, TinyLlama, Mistral: no projection biases.
    #[default]
    Llama,
    /// Qwen2 / Qwen2.5: biases on the Q, K and V projections; its GGUF Q/K rows are not permuted
    /// (half-split RoPE, as in Hugging Face), unlike Llama's.
    Qwen2,
}

impl Architecture {
    /// From GGUF `general.architecture`; anything else is an [`EngineError::UnsupportedArchitecture`].
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        match name {
            "llama" | "mistral" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// From a Hugging Face `architectures[0]` or `model_type`.
    pub fn from_hf_name(name: &str) -> Result<Self> {
        match name {
            "LlamaForCausalLM" | "MistralForCausalLM" | "llama" | "mistral" => Ok(Self::Llama),
            "Qwen2ForCausalLM" | "qwen2" => Ok(Self::Qwen2),
            other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// Whether the Q, K and V projections carry a bias (`blk.N.attn_q.bias`, ...).
    pub fn qkv_bias(self) -> bool {
        self == Self::Qwen2
    }

    /// Whether GGUF Q/K weights are permuted for interleaved (GPT-J style) RoPE. llama.cpp's
    /// converter does that for Llama only; Qwen2 keeps Hugging Face's half-split (NeoX) layout.
    pub fn gguf_rope_interleaved(self) -> bool {
        self == Self::Llama
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

/// `rope_scaling` with `rope_type = "llama3"` (Llama 3.1 / 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

impl LlamaConfig {
    /// The context position at which one more position of attention costs a token as many
    /// multiply-adds as its layer's weights: `(q, k, v, o and the MLP) / (2 * heads * head_dim)`
    /// (q.k and p.v per query head). 3072 for SmolLM2-135M, 8320 for Qwen2.5-0.5B.
    pub fn attention_context(&self) -> usize {
        let (h, hd) = (self.hidden_size, self.head_dim);
        let qkvo = h * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads);
        let mlp = 3 * h * self.intermediate_size;
        (qkvo + mlp) / (2 * self.num_attention_heads * hd).max(1)
    }

    pub fn num_query_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    fn validate(self) -> Result<Self> {
        let bad = |m: String| Err(EngineError::InvalidConfig(m));
        if self.num_hidden_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return bad("zero layers, hidden size or vocabulary".into());
        }
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} is odd", self.head_dim));
        }
        Ok(self)
    }

    /// Reads `llama.*` (or `mistral.*`, `qwen2.*`) keys. `general.architecture` must name a
    /// Llama-family model.
    pub fn from_gguf(md: &GgufMetadata<'_>, vocab_len: usize) -> Result<Self> {
        let arch = md.str("general.architecture")?;
        let architecture = Architecture::from_gguf_name(arch)?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = md.u64(&key("embedding_length"))? as usize;
        let num_attention_heads = md.u64(&key("attention.head_count"))? as usize;
        let num_key_value_heads = md
            .u64_opt(&key("attention.head_count_kv"))
            .map_or(num_attention_heads, |v| v as usize);
        let head_dim = md
            .u64_opt(&key("attention.key_length"))
            .or_else(|| md.u64_opt(&key("rope.dimension_count")))
            .map_or(hidden_size / num_attention_heads.max(1), |v| v as usize);
        Self {
            architecture,
            vocab_size: md.u64_opt(&key("vocab_size")).map_or(vocab_len, |v| v as usize),
            hidden_size,
            intermediate_size: md.u64(&key("feed_forward_length"))? as usize,
            num_hidden_layers: md.u64(&key("block_count"))? as usize,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: md
                .f64_opt(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: md.f64_opt(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            // Llama 3.1 GGUFs carry the scaled frequencies as a `rope_freqs.weight` tensor instead.
            rope_scaling: None,
            max_position_embeddings: md.u64_opt(&key("context_length")).unwrap_or(4096) as usize,
            tie_word_embeddings: false, // decided by the presence of `output.weight`
        }
        .validate()
    }

    pub fn from_hf_json(json: &str) -> Result<Self> {
        let bad_json = |e: serde_json::Error| EngineError::InvalidConfig(format!("config.json: {e}"));
        // The architecture first: another family's config lacks Llama's fields, and "missing
        // field hidden_size" would hide the real problem.
        let value: serde_json::Value = serde_json::from_str(json).map_err(bad_json)?;
        let arch = value
            .get("architectures")
            .and_then(|a| a.get(0))
            .or_else(|| value.get("model_type"))
            .and_then(|a| a.as_str())
            .unwrap_or("unknown")
            .to_string();
        let architecture = Architecture::from_hf_name(&arch)?;
        let raw: HfConfig = serde_json::from_value(value).map_err(bad_json)?;
        let rope_scaling = match raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                match kind {
                    "llama3" => Some(
                        serde_json::from_value(v.clone())
                            .map_err(|e| EngineError::InvalidConfig(format!("rope_scaling: {e}")))?,
                    ),
                    "default" => None,
                    other => {
                        return Err(EngineError::InvalidConfig(format!(
                            "unsupported rope_scaling type `{other}` (supported: llama3)"
                        )))
                    }
                }
            }
        };
        let num_kv = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: num_kv,
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        }
        .validate()
    }
}

#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f32>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
}

/// Inverse RoPE frequencies, with Llama 3 long-context scaling applied when configured.
pub fn rope_inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / d as f32))
        .collect();
    let Some(s) = cfg.rope_scaling else { return base };
    let old_ctx = s.original_max_position_embeddings as f32;
    let low_wavelen = old_ctx / s.low_freq_factor;
    let high_wavelen = old_ctx / s.high_freq_factor;
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / s.factor
            } else {
                let smooth =
                    (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}
