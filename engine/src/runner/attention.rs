//! The serving path's [`AttentionBackend`]: the model hands every layer's rotated Q, K and V
//! for all tokens of the batch to it, and it stores K/V in the paged pool and attends.
//!
//! [`PagedAttention`]: K/V go to their slots in the paged pool; each sequence reads its context
//! through its block table. Three implementations: the CPU kernel (`kernels::cpu::attention`, f32
//! on the CPU), the fused decode kernel (`kernels::paged_decode`, decode rows on CUDA) and
//! portable candle ops (scatter_set, index_select, matmul, softmax) for the rest, which run on
//! any device and are the reference the others are tested against. All of them are tested
//! against the model's [`ContiguousAttention`](crate::model::attention::ContiguousAttention).

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::kernels::cpu::attention::CpuSpan;
use crate::kernels::cpu::kv_write::{self, RopeRows};
use crate::kernels::paged_decode::{DecodeSeq, DecodeTable, PagedDecodeOp};
use crate::kv::cache::{BlockTable, PagedKvCache};
use crate::model::attention::{AttentionBackend, Rope};

/// Contexts are padded (with masked slots) to a multiple of this. The reductions over the context
/// (softmax sums, probs x V) then run over whole SIMD strides whatever the batch holds: padded
/// positions add exact zeros, so a sequence gets bit-identical attention alone or batched with
/// longer ones. Quantized models need this: their 8-bit activation rounding turns a 1e-7
/// difference into a different token a few layers later.
pub const CONTEXT_PAD: usize = 64;

/// One sequence's part of a batch: `query_len` new tokens at rows `query_start..`, attending to
/// `context_len` tokens (the new ones included), stored at the slots of `block_table`.
#[derive(Debug, Clone)]
pub struct SequenceSpan {
    pub query_start: usize,
    pub query_len: usize,
    pub context_len: usize,
    pub block_table: BlockTable,
}

/// Sequences attended together: same query length, contexts padded to the longest.
struct AttentionGroup {
    /// Batch rows of the group's queries, sequence-major: `(seqs * query_len)`.
    rows: Tensor,
    seqs: usize,
    query_len: usize,
    max_context: usize,
    /// Slots to gather, `(seqs * max_context)`; padding points at slot 0 and is masked.
    slots: Tensor,
    /// Additive mask `(seqs, 1, query_len, max_context)`: 0 or -inf.
    mask: Tensor,
}

/// Everything about a batch's layout that all layers share, built once per forward.
pub struct PagedAttentionMetadata {
    /// Slot of every new token, broadcast to `(kv_heads, tokens, head_dim)` for `scatter_set`.
    slot_index: Tensor,
    groups: Vec<AttentionGroup>,
    /// Permutation from the groups' concatenated output rows back to batch order (None when
    /// they already are in batch order).
    restore_order: Option<Tensor>,
    /// Set when the CPU kernel runs instead of the portable groups.
    cpu: Option<CpuLayout>,
    /// Set when the fused decode op attends the decode rows (then no group holds them).
    decode: Option<PagedDecodeOp>,
    scale: f64,
}

struct CpuLayout {
    spans: Vec<CpuSpan>,
    /// Span index of every batch row.
    row_span: Vec<u32>,
    /// The pool slot of every batch row's new K/V.
    new_slots: Vec<u32>,
}

/// Which implementation attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionImpl {
    /// The CPU kernel for f32 on the CPU; on CUDA the fused decode kernel for decode rows and
    /// the portable candle ops for prefill rows; the portable ops elsewhere.
    #[default]
    Auto,
    /// Always the portable candle ops (the reference).
    Portable,
    /// The fused decode op for decode rows on any device (on the CPU its Rust transcription,
    /// which is slow: tests use it to run the CUDA path's host logic without a GPU), portable
    /// ops for prefill rows.
    FusedDecode,
}

impl PagedAttentionMetadata {
    /// `dtype`: the model's (queries'); `kv_dtype`: the pool's (the same, or f16 under an f32
    /// model: see `EngineConfig::kv_cache_dtype`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spans: &[SequenceSpan],
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        kv_dtype: DType,
        device: &Device,
        implementation: AttentionImpl,
    ) -> Result<Self> {
        let num_tokens: usize = spans.iter().map(|s| s.query_len).sum();
        let mut slot_mapping = vec![0u32; num_tokens];
        for s in spans {
            if s.query_len == 0 || s.query_len > s.context_len {
                return Err(EngineError::InvalidBatch(format!(
                    "a sequence has {} new tokens and a context of {}",
                    s.query_len, s.context_len
                )));
            }
            if s.query_start + s.query_len > num_tokens {
                return Err(EngineError::InvalidBatch("spans overrun the batch".into()));
            }
            let first_pos = s.context_len - s.query_len;
            for i in 0..s.query_len {
                slot_mapping[s.query_start + i] = s.block_table.slot(first_pos + i, block_size)?;
            }
        }
        let new_slots = slot_mapping.clone();
        let slot_index = Tensor::from_vec(slot_mapping, (1, num_tokens, 1), device)?
            .broadcast_as((kv_heads, num_tokens, head_dim))?
            .contiguous()?;
        let scale = 1.0 / (head_dim as f64).sqrt();

        let cpu_kernel = device.is_cpu()
            && dtype == DType::F32
            && (kv_dtype == DType::F32 || (kv_dtype == DType::F16 && head_dim <= 256));
        if implementation == AttentionImpl::Auto && cpu_kernel {
            let mut row_span = vec![0u32; num_tokens];
            let mut cpu_spans = Vec::with_capacity(spans.len());
            for (i, s) in spans.iter().enumerate() {
                row_span[s.query_start..s.query_start + s.query_len].fill(i as u32);
                cpu_spans.push(CpuSpan {
                    query_start: s.query_start,
                    first_pos: s.context_len - s.query_len,
                    slots: (0..s.context_len)
                        .map(|p| s.block_table.slot(p, block_size))
                        .collect::<Result<_>>()?,
                });
            }
            return Ok(Self {
                slot_index,
                groups: Vec::new(),
                restore_order: None,
                cpu: Some(CpuLayout {
                    spans: cpu_spans,
                    row_span,
                    new_slots,
                }),
                decode: None,
                scale,
            });
        }

        // Decodes (one new token) attend together; every longer chunk attends alone.
        let (decodes, prefills): (Vec<&SequenceSpan>, Vec<&SequenceSpan>) =
            spans.iter().partition(|s| s.query_len == 1);
        // The fused op reads the pool in the queries' dtype.
        let fused = kv_dtype == dtype
            && match implementation {
                AttentionImpl::FusedDecode => true,
                AttentionImpl::Auto => device.is_cuda(),
                AttentionImpl::Portable => false,
            };
        let mut concat_rows: Vec<u32> = Vec::with_capacity(num_tokens);
        let mut members: Vec<Vec<&SequenceSpan>> = prefills.into_iter().map(|s| vec![s]).collect();
        // The decode rows' output comes first, from the fused op or from their group.
        let decode = if decodes.is_empty() {
            None
        } else if fused {
            let seqs: Vec<DecodeSeq<'_>> = decodes
                .iter()
                .map(|s| DecodeSeq {
                    row: s.query_start,
                    context_len: s.context_len,
                    blocks: &s.block_table.0,
                })
                .collect();
            concat_rows.extend(decodes.iter().map(|s| s.query_start as u32));
            let table = DecodeTable::new(&seqs, block_size)?;
            Some(PagedDecodeOp::new(table, block_size, scale as f32, device)?)
        } else {
            members.insert(0, decodes);
            None
        };
        let mut groups = Vec::with_capacity(members.len());
        for group in members {
            let g = Self::group(&group, block_size, dtype, device)?;
            for s in &group {
                concat_rows.extend((s.query_start..s.query_start + s.query_len).map(|r| r as u32));
            }
            groups.push(g);
        }
        let in_order = concat_rows.iter().enumerate().all(|(i, &r)| i as u32 == r);
        let restore_order = if in_order {
            None
        } else {
            let mut inverse = vec![0u32; num_tokens];
            for (i, &r) in concat_rows.iter().enumerate() {
                inverse[r as usize] = i as u32;
            }
            Some(Tensor::from_vec(inverse, num_tokens, device)?)
        };
        Ok(Self {
            slot_index,
            groups,
            restore_order,
            cpu: None,
            decode,
            scale,
        })
    }

    fn group(
        spans: &[&SequenceSpan],
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<AttentionGroup> {
        let query_len = spans[0].query_len;
        let max_context = spans
            .iter()
            .map(|s| s.context_len)
            .max()
            .unwrap_or(0)
            .next_multiple_of(CONTEXT_PAD);
        let mut rows = Vec::with_capacity(spans.len() * query_len);
        let mut slots = Vec::with_capacity(spans.len() * max_context);
        let mut mask = Vec::with_capacity(spans.len() * query_len * max_context);
        for s in spans {
            rows.extend((s.query_start..s.query_start + s.query_len).map(|r| r as u32));
            for pos in 0..max_context {
                slots.push(if pos < s.context_len {
                    s.block_table.slot(pos, block_size)?
                } else {
                    0
                });
            }
            let first_pos = s.context_len - s.query_len;
            for i in 0..query_len {
                // Query i sits at position first_pos + i and sees keys up to and including it.
                let visible = first_pos + i + 1;
                mask.extend((0..max_context).map(|j| if j < visible { 0f32 } else { f32::NEG_INFINITY }));
            }
        }
        let n = spans.len();
        Ok(AttentionGroup {
            rows: Tensor::from_vec(rows, n * query_len, device)?,
            seqs: n,
            query_len,
            max_context,
            slots: Tensor::from_vec(slots, n * max_context, device)?,
            mask: Tensor::from_vec(mask, (n, 1, query_len, max_context), device)?.to_dtype(dtype)?,
        })
    }
}

pub struct PagedAttention<'a> {
    pub cache: &'a PagedKvCache,
    pub meta: &'a PagedAttentionMetadata,
}

impl PagedAttention<'_> {
    /// The CPU kernel over the pool of `layer`, whose slots already hold this batch's K/V.
    fn attend_cpu(&self, layer: usize, q: &Tensor, cpu: &CpuLayout) -> Result<Tensor> {
        let (kc, vc) = self.cache.layer(layer);
        crate::kernels::cpu::attention::paged_attention(
            &q.contiguous()?,
            kc,
            vc,
            &cpu.spans,
            &cpu.row_span,
            self.meta.scale as f32,
        )
    }
}

impl AttentionBackend for PagedAttention<'_> {
    /// On the CPU kernel's path, K is rotated as it is written into its pool slots and V copied
    /// there ([`kv_write`]): bit for bit what rotating, transposing and scattering write.
    fn attend_rope(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &Rope,
    ) -> Result<Tensor> {
        let meta = self.meta;
        let (Some(cpu), Some(cos), Some(sin)) = (&meta.cpu, &rope.cos_f32, &rope.sin_f32) else {
            return self.attend(layer, &rope.apply(q)?, &rope.apply(k)?, v);
        };
        let rows = RopeRows {
            cos,
            sin,
            interleaved: rope.interleaved,
        };
        let (kc, vc) = self.cache.layer(layer);
        kv_write::write_rows(kc, &k.contiguous()?, &cpu.new_slots, Some(&rows))?;
        kv_write::write_rows(vc, &v.contiguous()?, &cpu.new_slots, None)?;
        self.attend_cpu(layer, &rope.apply(q)?, cpu)
    }

    fn attend(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let meta = self.meta;
        let (_, heads, head_dim) = q.dims3()?;
        let kv_heads = k.dim(1)?;
        let q_per_kv = heads / kv_heads;
        self.cache.write(
            layer,
            &k.transpose(0, 1)?.contiguous()?,
            &v.transpose(0, 1)?.contiguous()?,
            &meta.slot_index,
        )?;
        if let Some(cpu) = &meta.cpu {
            return self.attend_cpu(layer, q, cpu);
        }
        let mut outputs = Vec::with_capacity(meta.groups.len() + 1);
        if let Some(op) = &meta.decode {
            let (kc, vc) = self.cache.layer(layer);
            outputs.push(crate::kernels::paged_decode::paged_decode(q, kc, vc, op)?);
        }
        for g in &meta.groups {
            let (b, l, c) = (g.seqs, g.query_len, g.max_context);
            // (b*l, heads, hd) -> (kv_heads, b, q_per_kv * l, hd): each KV head serves its
            // query heads in one matmul instead of being repeated.
            let qg = q
                .index_select(&g.rows, 0)?
                .reshape((b, l, kv_heads, q_per_kv, head_dim))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?
                .reshape((kv_heads, b, q_per_kv * l, head_dim))?;
            let (kc, vc) = self.cache.gather(layer, &g.slots)?;
            let (kc, vc) = (kc.to_dtype(q.dtype())?, vc.to_dtype(q.dtype())?);
            let kc = kc.reshape((kv_heads, b, c, head_dim))?;
            let vc = vc.reshape((kv_heads, b, c, head_dim))?;
            let scores = (qg.matmul(&kc.t()?)? * meta.scale)?
                .reshape((kv_heads, b, q_per_kv, l, c))?
                .broadcast_add(&g.mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((kv_heads, b, q_per_kv * l, c))?;
            let out = probs
                .matmul(&vc)?
                .reshape((kv_heads, b, q_per_kv, l, head_dim))?
                .permute((1, 3, 0, 2, 4))?
                .contiguous()?
                .reshape((b * l, heads * head_dim))?;
            outputs.push(out);
        }
        let out = match outputs.len() {
            1 => outputs.swap_remove(0),
            _ => Tensor::cat(&outputs, 0)?,
        };
        Ok(match &meta.restore_order {
            Some(order) => out.index_select(order, 0)?,
            None => out,
        })
    }
}
