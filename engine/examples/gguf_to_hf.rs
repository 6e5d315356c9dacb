//! Converts a Llama GGUF into a Hugging Face directory (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json) in a chosen float type, so the safetensors path can be
//! benchmarked without downloading another checkpoint (scripts/gpu-check uses it for bf16).
//!
//!     cargo run --release -p wick-engine --example gguf_to_hf -- OUT_DIR [--model GGUF] [--dtype bf16]
//!
//! Weights are dequantized, Q/K rows un-permuted back to Hugging Face's half-split RoPE layout
//! (the same conversion engine/tests/safetensors.rs checks token for token against the GGUF).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use wick_engine::model::loader::{self, LoadOptions};
use wick_engine::model::weights::{WeightFormat, Weights, LAYER_PARTS};
use wick_engine::source::ModelSource;

type Error = Box<dyn std::error::Error>;

/// GGUF's Q/K rows are permuted for interleaved RoPE; undo it per head.
fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    w.reshape((heads, out / heads / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let out = PathBuf::from(
        args.get(1)
            .filter(|a| !a.starts_with("--"))
            .ok_or("usage: gguf_to_hf OUT_DIR [--model GGUF] [--dtype bf16]")?,
    );
    let gguf = arg("--model").map_or_else(wick_engine::default_model_path, PathBuf::from);
    let dtype = match WeightFormat::parse(&arg("--dtype").unwrap_or_else(|| "bf16".into()))? {
        WeightFormat::Dense(d) => d,
        other => return Err(format!("--dtype must be a float type, got {other:?}").into()),
    };
    let loaded = loader::load(&ModelSource::GgufFile(gguf.clone()), &LoadOptions::default())?;
    let cfg = loaded.config().clone();
    let mut w = Weights::open_gguf(&gguf)?;
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    // Dequantize to f32 first, then round once to the target type.
    let mut dense = |name: &str| -> Result<Tensor, Error> { Ok(w.dense(name, DType::F32, &dev)?) };
    tensors.insert(
        "model.embed_tokens.weight".to_string(),
        dense("token_embd.weight")?,
    );
    tensors.insert("model.norm.weight".to_string(), dense("output_norm.weight")?);
    for l in 0..cfg.num_hidden_layers {
        for (g, h) in LAYER_PARTS {
            let mut t = dense(&format!("blk.{l}.{g}.weight"))?;
            if g == "attn_q" {
                t = unpermute(&t, cfg.num_attention_heads)?;
            } else if g == "attn_k" {
                t = unpermute(&t, cfg.num_key_value_heads)?;
            }
            tensors.insert(format!("model.layers.{l}.{h}.weight"), t);
        }
    }
    if !cfg.tie_word_embeddings {
        tensors.insert("lm_head.weight".to_string(), dense("output.weight")?);
    }
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
        .collect::<Result<HashMap<_, _>, Error>>()?;
    std::fs::create_dir_all(&out)?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    let torch_dtype = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "torch_dtype": torch_dtype,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "eos_token_id": loaded.tokenizer.eos_token_ids.first().copied().unwrap_or(2),
        "bos_token_id": 1,
    });
    std::fs::write(out.join("config.json"), config.to_string())?;
    loaded
        .tokenizer
        .inner()
        .save(out.join("tokenizer.json"), false)
        .map_err(|e| format!("writing tokenizer.json: {e}"))?;
    let mut tc = serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"});
    if let Some(t) = &loaded.tokenizer.chat_template {
        tc["chat_template"] = t.clone().into();
    }
    std::fs::write(out.join("tokenizer_config.json"), tc.to_string())?;
    println!(
        "wrote {} ({torch_dtype}, {} tensors)",
        out.display(),
        tensors.len()
    );
    Ok(())
}
