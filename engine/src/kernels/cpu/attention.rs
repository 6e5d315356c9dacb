//! Paged attention on the CPU, straight from the KV pool: for every query row and head, scores
//! over exactly the positions that row may see, read through its block table, with one fixed
//! reduction order.
//!
//! Why a kernel and not candle ops: each row's result depends only on its own query and its own
//! context, never on the batch around it or on how the prompt was chunked, so a sequence gets
//! bit-identical logits alone or batched. Quantized models need that for identical tokens (their
//! 8-bit activation rounding amplifies any 1e-7 difference). It also skips the gather copy and
//! the padding of the portable path.

use candle_core::{CpuStorage, Storage, Tensor};
use rayon::prelude::*;

use crate::error::{EngineError, Result};

/// One sequence's rows: from `query_start` on, the first at position
/// `first_pos`; `slots[p]` is where position p's K/V live.
pub struct CpuSpan {
    pub query_start: usize,
    pub first_pos: usize,
    pub slots: Vec<u32>,
}

fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Err(EngineError::InvalidBatch(
            "CPU attention needs f32 CPU tensors".into(),
        ));
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(EngineError::InvalidBatch(
            "CPU attention needs contiguous tensors".into(),
        ));
    };
    f(&data[start..end])
}

/// Dot product with eight independent accumulators: vectorizes, and the order is fixed.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut tail = 0f32;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `q`: `(tokens, heads, head_dim)`; `k_pool`/`v_pool`: `(kv_heads, slots, head_dim)`.
/// Returns `(tokens, heads * head_dim)`.
pub fn paged_attention(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    spans: &[CpuSpan],
    row_span: &[u32],
    scale: f32,
) -> Result<Tensor> {
    let (tokens, heads, hd) = q.dims3()?;
    let (kv_heads, num_slots, _) = k_pool.dims3()?;
    let q_per_kv = heads / kv_heads;
    let mut out = vec![0f32; tokens * heads * hd];
    with_f32(q, |q| {
        with_f32(k_pool, |k| {
            with_f32(v_pool, |v| {
                out.par_chunks_mut(hd).enumerate().for_each_init(
                    Vec::new,
                    |scores: &mut Vec<f32>, (i, o)| {
                        let (row, h) = (i / heads, i % heads);
                        let span = &spans[row_span[row] as usize];
                        let visible = span.first_pos + (row - span.query_start) + 1;
                        let qv = &q[i * hd..(i + 1) * hd];
                        let kv = h / q_per_kv;
                        let head_base = kv * num_slots * hd;
                        scores.clear();
                        let mut max = f32::NEG_INFINITY;
                        for &slot in &span.slots[..visible] {
                            let at = head_base + slot as usize * hd;
                            let s = dot(qv, &k[at..at + hd]) * scale;
                            max = max.max(s);
                            scores.push(s);
                        }
                        let mut sum = 0f32;
                        for s in scores.iter_mut() {
                            *s = (*s - max).exp();
                            sum += *s;
                        }
                        for (&slot, &p) in span.slots[..visible].iter().zip(scores.iter()) {
                            let at = head_base + slot as usize * hd;
                            for (o, &x) in o.iter_mut().zip(&v[at..at + hd]) {
                                *o += p * x;
                            }
                        }
                        let inv = 1.0 / sum;
                        for o in o.iter_mut() {
                            *o *= inv;
                        }
                    },
                );
                Ok(())
            })
        })
    })?;
    Ok(Tensor::from_vec(out, (tokens, heads * hd), q.device())?)
}
