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

use super::attention_rows::{accumulate, dot, scores as score_rows, softmax_unnormalized};
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

/// An element of the K/V pool: f32, or f16 (half the bytes to store and to read per token,
/// widened to f32 row by row before the same arithmetic).
trait KvElem: Copy + Send + Sync {
    /// The row as f32: itself, or converted into `buf`.
    fn row<'a>(row: &'a [Self], buf: &'a mut [f32; MAX_HEAD_DIM]) -> &'a [f32];
}

/// Rows wider than this take the f32 pool only (no model here comes near it).
const MAX_HEAD_DIM: usize = 256;

impl KvElem for f32 {
    #[inline(always)]
    fn row<'a>(row: &'a [f32], _: &'a mut [f32; MAX_HEAD_DIM]) -> &'a [f32] {
        row
    }
}

impl KvElem for half::f16 {
    #[inline(always)]
    fn row<'a>(row: &'a [half::f16], buf: &'a mut [f32; MAX_HEAD_DIM]) -> &'a [f32] {
        let out = &mut buf[..row.len()];
        #[cfg(all(target_arch = "x86_64", target_feature = "f16c"))]
        {
            // F16C (x86-64-v3): vcvtph2ps, exact, eight values per instruction, inline.
            use std::arch::x86_64::*;
            let (src, dst) = (row.chunks_exact(8), out.chunks_exact_mut(8));
            let tail = src.remainder().len();
            for (s, d) in src.zip(dst) {
                // SAFETY: F16C is compiled in; s holds 8 halves (16 bytes), d 8 floats.
                unsafe {
                    let h = _mm_loadu_si128(s.as_ptr() as *const __m128i);
                    _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
                }
            }
            let at = row.len() - tail;
            for (d, s) in out[at..].iter_mut().zip(&row[at..]) {
                *d = s.to_f32();
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "f16c")))]
        for (d, s) in out.iter_mut().zip(row) {
            *d = s.to_f32();
        }
        out
    }
}

/// `q`: `(tokens, heads, head_dim)`; `k_pool`/`v_pool`: `(kv_heads, slots, head_dim)`, f32 or
/// f16. Returns `(tokens, heads * head_dim)`.
///
/// One task per (tile of up to 16 rows of one sequence, KV head) serves the tile's rows and the KV
/// head's query heads together: each K and V row is read once for all of them (a prefill chunk
/// at a long context used to stream the whole context from memory once per row). Every score and every output element is still computed by
/// exactly the operations of the per-head loop it replaces, in the same order: the results are
/// bit for bit those of one head at a time (tested). An f16 pool gives bit for bit what an f32
/// pool holding the same (f16-rounded) values gives (tested).
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
    let layout = Layout {
        heads,
        kv_heads,
        q_per_kv: heads / kv_heads,
        hd,
        num_slots,
        scale,
    };
    let mut out = vec![0f32; tokens * heads * hd];
    with_f32(q, |q| {
        let (ks, vs) = (k_pool.storage_and_layout(), v_pool.storage_and_layout());
        let pools = (contiguous(&ks.0, ks.1)?, contiguous(&vs.0, vs.1)?);
        match pools {
            (Pool::F32(k), Pool::F32(v)) => attend_rows(&layout, q, k, v, spans, row_span, &mut out),
            (Pool::F16(k), Pool::F16(v)) if hd <= MAX_HEAD_DIM => {
                attend_rows(&layout, q, k, v, spans, row_span, &mut out)
            }
            _ => {
                return Err(EngineError::InvalidBatch(
                    "CPU attention needs an f32 or f16 K/V pool (f16 up to a head dim of 256)".into(),
                ))
            }
        }
        Ok(())
    })?;
    Ok(Tensor::from_vec(out, (tokens, heads * hd), q.device())?)
}

enum Pool<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

fn contiguous<'a>(storage: &'a Storage, layout: &candle_core::Layout) -> Result<Pool<'a>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(EngineError::InvalidBatch(
            "CPU attention needs contiguous tensors".into(),
        ));
    };
    match storage {
        Storage::Cpu(CpuStorage::F32(d)) => Ok(Pool::F32(&d[start..end])),
        Storage::Cpu(CpuStorage::F16(d)) => Ok(Pool::F16(&d[start..end])),
        _ => Err(EngineError::InvalidBatch(
            "CPU attention needs an f32 or f16 K/V pool on the CPU".into(),
        )),
    }
}

/// Query rows served together by one task: every K and V row it loads (from a pool that at long
/// contexts is far larger than the caches) is used for all of them instead of one.
const TILE_ROWS: usize = 16;

/// Consecutive rows of one span, `rows` long from `first`, handled by one task per KV head.
#[derive(Clone, Copy)]
struct Tile {
    first: usize,
    rows: usize,
}

/// The batch's rows cut into tiles: runs of one span's rows, at most [`TILE_ROWS`] long.
fn tiles(row_span: &[u32]) -> Vec<Tile> {
    let mut tiles: Vec<Tile> = Vec::new();
    for (row, &span) in row_span.iter().enumerate() {
        match tiles.last_mut() {
            Some(t) if t.rows < TILE_ROWS && row_span[t.first] == span => t.rows += 1,
            _ => tiles.push(Tile { first: row, rows: 1 }),
        }
    }
    tiles
}

/// `out` shared by tasks that each write their own disjoint rows' heads.
struct SharedOut(*mut f32);
// SAFETY: every task writes only the output of its own (row, KV head) pairs, and no two tasks
// have a pair in common; nothing reads `out` while they run.
unsafe impl Sync for SharedOut {}

fn attend_rows<K: KvElem>(
    layout: &Layout,
    q: &[f32],
    k: &[K],
    v: &[K],
    spans: &[CpuSpan],
    row_span: &[u32],
    out: &mut [f32],
) {
    let (g, hd, heads, kv_heads) = (layout.q_per_kv, layout.hd, layout.heads, layout.kv_heads);
    let tiles = tiles(row_span);
    debug_assert_eq!(out.len(), row_span.len() * heads * hd);
    let shared = SharedOut(out.as_mut_ptr());
    let shared = &shared;
    (0..tiles.len() * kv_heads)
        .into_par_iter()
        .for_each_init(TileScratch::default, |scratch, task| {
            let (tile, kv) = (tiles[task / kv_heads], task % kv_heads);
            let span = &spans[row_span[tile.first] as usize];
            let first_visible = span.first_pos + (tile.first - span.query_start) + 1;
            let slots = &span.slots[..first_visible + tile.rows - 1];
            let o = if tile.rows == 1 {
                // A decode row: nothing to share a load with, and a gather would only add a copy
                // to a loop that memory bandwidth bounds.
                let TileScratch { scores, inv, out, .. } = scratch;
                out.clear();
                out.resize(g * hd, 0.0);
                let qs = &q[(tile.first * heads + kv * g) * hd..][..g * hd];
                attend_group(layout, qs, k, v, kv, slots, scores, inv, out);
                &out[..]
            } else {
                attend_tile(layout, q, k, v, kv, tile, first_visible, slots, scratch)
            };
            for t in 0..tile.rows {
                let at = ((tile.first + t) * heads + kv * g) * hd;
                // SAFETY: (row tile.first + t, KV head kv) is this task's alone (see SharedOut);
                // `at + g * hd <= out.len()` as rows < tokens and kv < kv_heads.
                let dst = unsafe { std::slice::from_raw_parts_mut(shared.0.add(at), g * hd) };
                dst.copy_from_slice(&o[t * g * hd..(t + 1) * g * hd]);
            }
        });
}

struct Layout {
    heads: usize,
    kv_heads: usize,
    q_per_kv: usize,
    hd: usize,
    num_slots: usize,
    scale: f32,
}

/// The query heads `qs` (`q_per_kv * hd`) of one row against KV head `kv` over `slots`, into
/// `o` (`q_per_kv * hd`, zeroed). `scores` and `inv` are scratch space.
#[allow(clippy::too_many_arguments)]
fn attend_group<K: KvElem>(
    l: &Layout,
    qs: &[f32],
    k: &[K],
    v: &[K],
    kv: usize,
    slots: &[u32],
    scores: &mut Vec<f32>,
    inv: &mut Vec<f32>,
    o: &mut [f32],
) {
    let (hd, g, n) = (l.hd, l.q_per_kv, slots.len());
    let head_base = kv * l.num_slots * hd;
    let row_of = |slot: u32| head_base + slot as usize * hd;
    let mut buf = [0f32; MAX_HEAD_DIM];
    // scores[h * n + j]: head h against slot j.
    scores.clear();
    scores.resize(g * n, 0.0);
    for (j, &slot) in slots.iter().enumerate() {
        let kr = K::row(&k[row_of(slot)..][..hd], &mut buf);
        for h in 0..g {
            scores[h * n + j] = dot(&qs[h * hd..(h + 1) * hd], kr) * l.scale;
        }
    }
    inv.clear();
    inv.resize(g, 0.0);
    for h in 0..g {
        inv[h] = softmax_unnormalized(&mut scores[h * n..(h + 1) * n]);
    }
    // Each V row read once for every head of the group; per output element the same sequence
    // of `o += p * v` over the slots in order as one head at a time.
    for (j, &slot) in slots.iter().enumerate() {
        let vr = K::row(&v[row_of(slot)..][..hd], &mut buf);
        for h in 0..g {
            let p = scores[h * n + j];
            for (o, &x) in o[h * hd..(h + 1) * hd].iter_mut().zip(vr) {
                *o += p * x;
            }
        }
    }
    for h in 0..g {
        for o in o[h * hd..(h + 1) * hd].iter_mut() {
            *o *= inv[h];
        }
    }
}

/// K or V rows gathered per step of a tile: 64 rows of 64 floats are 16 KiB, so a block stays
/// in L1 while every row and head of the tile goes over it.
const SLOT_BLOCK: usize = 64;

#[derive(Default)]
struct TileScratch {
    /// `scores[(t * g + h) * n + j]`: row t's head h against slot j.
    scores: Vec<f32>,
    inv: Vec<f32>,
    /// `(rows, g, hd)`.
    out: Vec<f32>,
    /// One block of K or V rows as f32, contiguous.
    block: Vec<f32>,
}

/// Gathers the rows of `slots` (of KV head `kv`) into `block` as f32, contiguous.
fn gather<K: KvElem>(l: &Layout, pool: &[K], kv: usize, slots: &[u32], block: &mut Vec<f32>) {
    let hd = l.hd;
    let head_base = kv * l.num_slots * hd;
    let mut buf = [0f32; MAX_HEAD_DIM];
    block.clear();
    for &slot in slots {
        let at = head_base + slot as usize * hd;
        block.extend_from_slice(K::row(&pool[at..at + hd], &mut buf));
    }
}

/// One tile's query heads of KV head `kv` over `slots` (the last row's context; row t sees the
/// first `first_visible + t`). Returns the tile's outputs, `(rows, q_per_kv, hd)`.
///
/// Per row and head these are exactly the operations of one row at a time, in the same order
/// (scores slot by slot, the softmax over the row's own slots, `o += p * v` slot by slot, then
/// the scaling): sharing a K or V load among rows changes no arithmetic.
#[allow(clippy::too_many_arguments)]
fn attend_tile<'s, K: KvElem>(
    l: &Layout,
    q: &[f32],
    k: &[K],
    v: &[K],
    kv: usize,
    tile: Tile,
    first_visible: usize,
    slots: &[u32],
    scratch: &'s mut TileScratch,
) -> &'s [f32] {
    let (hd, g, n, rows) = (l.hd, l.q_per_kv, slots.len(), tile.rows);
    let visible = |t: usize| first_visible + t;
    // Row t's query heads of this group: q[(row * heads + kv * g + h) * hd..].
    let q_of = |t: usize, h: usize| {
        let at = ((tile.first + t) * l.heads + kv * g + h) * hd;
        &q[at..at + hd]
    };
    // Rows that see some slot of the block starting at `from`, and how many of its slots.
    let seeing = move |from: usize, len: usize| {
        (from.saturating_sub(first_visible - 1)..rows).map(move |t| (t, (visible(t) - from).min(len)))
    };
    let TileScratch {
        scores,
        inv,
        out,
        block,
    } = scratch;
    scores.clear();
    scores.resize(rows * g * n, 0.0);
    for from in (0..n).step_by(SLOT_BLOCK) {
        let len = SLOT_BLOCK.min(n - from);
        gather(l, k, kv, &slots[from..from + len], block);
        for (t, m) in seeing(from, len) {
            for h in 0..g {
                let s = &mut scores[(t * g + h) * n + from..][..m];
                score_rows(q_of(t, h), block, l.scale, s);
            }
        }
    }
    inv.clear();
    inv.resize(rows * g, 0.0);
    for t in 0..rows {
        for h in 0..g {
            inv[t * g + h] = softmax_unnormalized(&mut scores[(t * g + h) * n..][..visible(t)]);
        }
    }
    out.clear();
    out.resize(rows * g * hd, 0.0);
    for from in (0..n).step_by(SLOT_BLOCK) {
        let len = SLOT_BLOCK.min(n - from);
        gather(l, v, kv, &slots[from..from + len], block);
        for (t, m) in seeing(from, len) {
            for h in 0..g {
                let p = &scores[(t * g + h) * n + from..][..m];
                accumulate(&mut out[(t * g + h) * hd..][..hd], p, block);
            }
        }
    }
    for (o, &inv) in out.chunks_exact_mut(hd).zip(inv.iter()) {
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_data::random;
    use candle_core::Device;

    /// The kernel before grouping (one task per row and head), kept as the reference.
    /// `q`: `(tokens, heads, head_dim)`; `k_pool`/`v_pool`: `(kv_heads, slots, head_dim)`.
    /// Returns `(tokens, heads * head_dim)`.
    fn reference(
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
                            for &slot in &span.slots[..visible] {
                                let at = head_base + slot as usize * hd;
                                scores.push(dot(qv, &k[at..at + hd]) * scale);
                            }
                            let inv = softmax_unnormalized(scores);
                            for (&slot, &p) in span.slots[..visible].iter().zip(scores.iter()) {
                                let at = head_base + slot as usize * hd;
                                for (o, &x) in o.iter_mut().zip(&v[at..at + hd]) {
                                    *o += p * x;
                                }
                            }
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

    /// Bit for bit the one-head-at-a-time kernel, for GQA groups of 1, 3 and 7 heads, chunked
    /// prefill rows and decode rows, contexts that are and are not multiples of four.
    #[test]
    fn grouped_kernel_is_bit_identical_to_one_head_at_a_time() {
        let hd = 64;
        for (heads, kv_heads) in [(9, 3), (14, 2), (4, 4)] {
            let num_slots = 256;
            let k = Tensor::from_vec(
                random(kv_heads * num_slots * hd, 1),
                (kv_heads, num_slots, hd),
                &Device::Cpu,
            )
            .unwrap();
            let v = Tensor::from_vec(
                random(kv_heads * num_slots * hd, 2),
                (kv_heads, num_slots, hd),
                &Device::Cpu,
            )
            .unwrap();
            // Span 0: a prefill chunk of 37 rows (three tiles, the last partial) after 110 cached
            // positions (three slot blocks); span 1: a decode row at position 180; span 2: a
            // first chunk of 2 rows.
            let perm = |n: usize, off: u32| {
                (0..n as u32)
                    .map(|p| (p * 7 + off) % num_slots as u32)
                    .collect::<Vec<_>>()
            };
            let spans = vec![
                CpuSpan {
                    query_start: 0,
                    first_pos: 110,
                    slots: perm(147, 3),
                },
                CpuSpan {
                    query_start: 37,
                    first_pos: 180,
                    slots: perm(181, 5),
                },
                CpuSpan {
                    query_start: 38,
                    first_pos: 0,
                    slots: perm(2, 1),
                },
            ];
            let row_span = [vec![0; 37], vec![1, 2, 2]].concat();
            let tokens = row_span.len();
            let q =
                Tensor::from_vec(random(tokens * heads * hd, 3), (tokens, heads, hd), &Device::Cpu).unwrap();
            let ours = paged_attention(&q, &k, &v, &spans, &row_span, 0.125).unwrap();
            let theirs = reference(&q, &k, &v, &spans, &row_span, 0.125).unwrap();
            let (a, b) = (
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{heads}/{kv_heads} heads"
            );
        }
    }

    /// An f16 pool gives bit for bit what an f32 pool holding the same rounded values gives.
    #[test]
    fn f16_pool_equals_f32_pool_of_the_rounded_values() {
        let (heads, kv_heads, hd, num_slots) = (9, 3, 64, 160);
        let round = |t: Tensor| t.to_dtype(candle_core::DType::F16).unwrap();
        let k16 = round(
            Tensor::from_vec(
                random(kv_heads * num_slots * hd, 1),
                (kv_heads, num_slots, hd),
                &Device::Cpu,
            )
            .unwrap(),
        );
        let v16 = round(
            Tensor::from_vec(
                random(kv_heads * num_slots * hd, 2),
                (kv_heads, num_slots, hd),
                &Device::Cpu,
            )
            .unwrap(),
        );
        let (k32, v32) = (
            k16.to_dtype(candle_core::DType::F32).unwrap(),
            v16.to_dtype(candle_core::DType::F32).unwrap(),
        );
        let spans = vec![
            CpuSpan {
                query_start: 0,
                first_pos: 4,
                slots: (0..7).map(|p| (p * 5 + 2) % num_slots as u32).collect(),
            },
            CpuSpan {
                query_start: 3,
                first_pos: 149,
                slots: (0..150).rev().collect(),
            },
        ];
        let row_span = [0, 0, 0, 1];
        let q = Tensor::from_vec(random(4 * heads * hd, 3), (4, heads, hd), &Device::Cpu).unwrap();
        let half = paged_attention(&q, &k16, &v16, &spans, &row_span, 0.125).unwrap();
        let full = paged_attention(&q, &k32, &v32, &spans, &row_span, 0.125).unwrap();
        let (a, b) = (
            half.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            full.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
