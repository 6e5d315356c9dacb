//! The Llama architecture (Llama 2/3/3.1/3.2, SmolLM2, TinyLlama, Mistral-7B-style, and Qwen2,
//! which adds biases to the Q/K/V projections: see [`crate::model::config::Architecture`]),
//! written for batches: one forward takes the new tokens of many sequences at once (prefill chunks and
//! single decode tokens mixed), each with its own position, and returns logits only for the rows
//! that will be sampled. Where K/V are stored and how attention reads them is the
//! [`AttentionBackend`]'s business.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::kernels::cpu::acts::QuantizedActs;
use crate::kernels::cpu::matmul::quantize_input;
use crate::model::attention::{AttentionBackend, Rope};
use crate::model::config::{rope_inv_freq, LlamaConfig};
use crate::model::embedding::Embedding;
use crate::model::weights::{CpuMatrix, Linear, WeightFormat, Weights};

struct Block {
    attn_norm: Tensor,
    inputs: Inputs,
    /// Biases of q, k and v ([`qkv_bias`](crate::model::config::Architecture::qkv_bias)).
    qkv_bias: Option<[Tensor; 3]>,
    o: Linear,
    ffn_norm: Tensor,
    down: Linear,
}

/// The projections that read a normalized layer input: q/k/v and gate/up.
enum Inputs {
    /// One matmul each (candle's formats, other devices).
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
        gate: Linear,
        up: Linear,
    },
    /// The CPU kernels: each input quantized once; q/k/v one matrix whose output is cut in
    /// three, gate/up one interleaved matrix with `silu(gate) * up` in its epilogue.
    Fused { qkv: CpuMatrix, gate_up: CpuMatrix },
}

impl Inputs {
    fn new(q: Linear, k: Linear, v: Linear, gate: Linear, up: Linear) -> Self {
        let fused = match (q.as_cpu(), k.as_cpu(), v.as_cpu(), gate.as_cpu(), up.as_cpu()) {
            (Some(q), Some(k), Some(v), Some(g), Some(u)) => {
                CpuMatrix::concat(&[q, k, v]).zip(CpuMatrix::interleave(g, u))
            }
            _ => None,
        };
        match fused {
            Some((qkv, gate_up)) => Inputs::Fused { qkv, gate_up },
            None => Inputs::Separate { q, k, v, gate, up },
        }
    }
}

/// `m` rows as an `(m, cols)` CPU tensor (no copy).
fn rows_tensor(data: Vec<f32>, cols: usize, device: &Device) -> Result<Tensor> {
    let m = data.len() / cols.max(1);
    Ok(Tensor::from_vec(data, (m, cols), device)?)
}

/// A contiguous f32 CPU tensor's values.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    use candle_core::{CpuStorage, Storage};
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(d)), Some((a, b))) => f(&d[a..b]),
        _ => Err(crate::error::EngineError::InvalidBatch(
            "fused CPU layer needs contiguous f32 CPU tensors".into(),
        )),
    }
}

/// `x + a W^T`: in the matmul's epilogue on the CPU kernels, two candle ops elsewhere.
fn add_projection(x: &Tensor, w: &Linear, a: &Tensor) -> Result<Tensor> {
    match w.as_cpu() {
        Some(m) => {
            let acts: QuantizedActs = quantize_input(a)?;
            let out = with_values(x, |x| m.matmul_add(&acts, x))?;
            rows_tensor(out, m.n(), x.device())
        }
        None => Ok((x + w.forward(a)?)?),
    }
}

pub struct LlamaModel {
    cfg: LlamaConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Tensor,
    /// GGUF Q/K weights are permuted for interleaved (GPT-J style) RoPE; Hugging Face weights
    /// use the half-split (NeoX style) form.
    rope_interleaved: bool,
    dtype: DType,
    device: Device,
}

impl LlamaModel {
    /// `format` says how matrices are held (see [`WeightFormat`]).
    pub fn load(
        cfg: LlamaConfig,
        weights: &mut Weights,
        format: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        let dtype = format.compute_dtype();
        let is_gguf = weights.gguf_content().is_some();
        let h = cfg.hidden_size;
        let vec_of = |w: &mut Weights, name: &str, len: usize| -> Result<Tensor> {
            let t = w.dense(name, dtype, device)?;
            w.check_shape(name, &t, &[len])?;
            Ok(t)
        };
        let vec_w = |w: &mut Weights, name: &str| vec_of(w, name, h);
        let q_dim = cfg.num_attention_heads * cfg.head_dim;
        let embed = Embedding::load(weights, "token_embd.weight", (cfg.vocab_size, h), dtype, device)?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let bias = |s: &str| format!("blk.{i}.{s}.bias");
            let qkv_bias = if cfg.architecture.qkv_bias() {
                Some([
                    vec_of(weights, &bias("attn_q"), q_dim)?,
                    vec_of(weights, &bias("attn_k"), cfg.kv_dim())?,
                    vec_of(weights, &bias("attn_v"), cfg.kv_dim())?,
                ])
            } else {
                None
            };
            let inputs = Inputs::new(
                weights.linear(&n("attn_q"), format, device)?,
                weights.linear(&n("attn_k"), format, device)?,
                weights.linear(&n("attn_v"), format, device)?,
                weights.linear(&n("ffn_gate"), format, device)?,
                weights.linear(&n("ffn_up"), format, device)?,
            );
            blocks.push(Block {
                attn_norm: vec_w(weights, &n("attn_norm"))?,
                inputs,
                qkv_bias,
                o: weights.linear(&n("attn_output"), format, device)?,
                ffn_norm: vec_w(weights, &n("ffn_norm"))?,
                down: weights.linear(&n("ffn_down"), format, device)?,
            });
        }
        let norm = vec_w(weights, "output_norm.weight")?;
        let tied = !weights.contains("output.weight");
        let lm_head_name = if tied {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let lm_head = weights.linear(lm_head_name, format, device)?;

        let mut inv_freq = rope_inv_freq(&cfg);
        // Llama 3.1 GGUFs store the long-context correction as per-frequency divisors.
        if is_gguf && weights.contains("rope_freqs.weight") {
            let factors = weights
                .dense("rope_freqs.weight", DType::F32, device)?
                .to_vec1::<f32>()?;
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        let n = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, n), device)?;
        let rope_interleaved = is_gguf && cfg.architecture.gguf_rope_interleaved();
        let cfg = LlamaConfig {
            tie_word_embeddings: tied,
            ..cfg
        };
        Ok(Self {
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
            rope_interleaved,
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `tokens` and `positions`: `(n,)` u32. `logit_rows`: the rows whose logits are wanted
    /// (None: all). Returns f32 logits `(rows, vocab)`.
    pub fn forward(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        logit_rows: Option<&Tensor>,
        attn: &mut dyn AttentionBackend,
    ) -> Result<Tensor> {
        let x = self.head_input(tokens, positions, logit_rows, attn)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// Whether [`forward_argmax`](Self::forward_argmax) can run: the output head has a CPU
    /// kernel.
    pub fn head_has_argmax(&self) -> bool {
        self.lm_head.as_cpu().is_some()
    }

    /// As [`forward`](Self::forward), but each wanted row's greedy token (the sampler's
    /// `argmax` of its logits, NaN as -inf) instead of the logits: the CPU head finds it as it
    /// computes the outputs and never writes them. Only where
    /// [`head_has_argmax`](Self::head_has_argmax). `within`: the only token ids it may
    /// return (all of them when None); a row has `u32::MAX` where `within` has none.
    pub fn forward_argmax(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        logit_rows: Option<&Tensor>,
        attn: &mut dyn AttentionBackend,
        within: Option<&[Range<u32>]>,
    ) -> Result<Vec<u32>> {
        let x = self.head_input(tokens, positions, logit_rows, attn)?;
        self.lm_head
            .argmax(&x, within)?
            .ok_or_else(|| EngineError::InvalidBatch("this model's output head has no argmax kernel".into()))
    }

    /// The layers, then the final norm of the wanted rows: what the output head reads.
    fn head_input(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        logit_rows: Option<&Tensor>,
        attn: &mut dyn AttentionBackend,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let n = tokens.dim(0)?;
        let (heads, kv_heads, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let angles = positions
            .to_dtype(DType::F32)?
            .reshape((n, 1))?
            .broadcast_mul(&self.inv_freq)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let f32_rows = |t: &Tensor| -> Result<Option<Vec<f32>>> {
            Ok(if self.dtype == DType::F32 && t.device().is_cpu() {
                Some(t.flatten_all()?.to_vec1::<f32>()?)
            } else {
                None
            })
        };
        let rope = Rope {
            cos_f32: f32_rows(&cos)?,
            sin_f32: f32_rows(&sin)?,
            cos: cos.to_dtype(self.dtype)?.reshape((n, 1, hd / 2))?,
            sin: sin.to_dtype(self.dtype)?.reshape((n, 1, hd / 2))?,
            interleaved: self.rope_interleaved,
        };
        let eps = cfg.rms_norm_eps as f32;

        let mut x = self.embed.lookup(tokens)?;
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let (mut q, mut k, mut v) = match &b.inputs {
                Inputs::Fused { qkv, .. } => {
                    let acts = quantize_input(&h)?;
                    let kv_dim = kv_heads * hd;
                    let mut parts = qkv
                        .matmul_split(&acts, &[heads * hd, kv_dim, kv_dim])?
                        .into_iter();
                    let mut next = |cols| rows_tensor(parts.next().unwrap_or_default(), cols, &self.device);
                    (next(heads * hd)?, next(kv_dim)?, next(kv_dim)?)
                }
                Inputs::Separate { q, k, v, .. } => (q.forward(&h)?, k.forward(&h)?, v.forward(&h)?),
            };
            if let Some([bq, bk, bv]) = &b.qkv_bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let q = q.reshape((n, heads, hd))?;
            let k = k.reshape((n, kv_heads, hd))?;
            let v = v.reshape((n, kv_heads, hd))?;
            let a = attn.attend_rope(layer, &q, &k, &v, &rope)?;
            x = add_projection(&x, &b.o, &a)?;
            let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
            let gated = match &b.inputs {
                Inputs::Fused { gate_up, .. } => {
                    let out = gate_up.matmul_silu_mul(&quantize_input(&h)?)?;
                    rows_tensor(out, gate_up.n() / 2, &self.device)?
                }
                Inputs::Separate { gate, up, .. } => {
                    (candle_nn::ops::silu(&gate.forward(&h)?)? * up.forward(&h)?)?
                }
            };
            x = add_projection(&x, &b.down, &gated)?;
        }
        let x = match logit_rows {
            Some(rows) => x.index_select(rows, 0)?,
            None => x,
        };
        Ok(candle_nn::ops::rms_norm(&x, &self.norm, eps)?)
    }
}
