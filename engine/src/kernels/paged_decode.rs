//! Fused paged-attention decode: one query token per sequence attends to its whole context, read
//! straight from the paged K/V pool through its block table, softmax computed online.
//!
//! On CUDA this is the kernel in `kernels/cuda/paged_decode.cu` (launched from `kernels/cuda/`); on
//! the CPU the same custom op runs [`reference`], a plain Rust transcription of the kernel's
//! arithmetic. The CPU version is not a serving path: it exists so that everything around the
//! kernel (the packed table, its validation, shapes, the integration into the attention backend)
//! is exercised by the normal CPU test suite, where no GPU is available.
//!
//! The host side describes a batch's decode sequences in one packed `u32` table, one H2D copy per
//! forward shared by all layers: per sequence `[row, context_len, block_0, .., block_{n-1}]`,
//! padded with zeros to the longest block table (positions past `context_len` are never read).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};

use crate::error::{EngineError, Result};

/// Largest head dimension the kernel supports (its shared-memory tile is sized for it).
pub const MAX_HEAD_DIM: usize = 256;

/// One decode sequence: the batch row of its query and the blocks of its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeSeq<'a> {
    pub row: usize,
    pub context_len: usize,
    /// The sequence's blocks in order (its block table): position `p` is at slot
    /// `blocks[p / block_size] * block_size + p % block_size`.
    pub blocks: &'a [u32],
}

/// The packed decode table on the host, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeTable {
    /// `seqs * stride` entries: row, context length, then `stride - 2` block ids.
    pub data: Vec<u32>,
    pub seqs: usize,
    pub stride: usize,
    /// The largest block id referenced (the pool must hold it).
    pub max_block: u32,
    /// The largest batch row referenced.
    pub max_row: usize,
}

impl DecodeTable {
    /// Packs `seqs`, checking that every context is non-empty and covered by its block table.
    pub fn new(seqs: &[DecodeSeq<'_>], block_size: usize) -> Result<Self> {
        if block_size == 0 {
            return Err(EngineError::InvalidBatch("block size 0".into()));
        }
        if seqs.is_empty() {
            return Err(EngineError::InvalidBatch(
                "a decode table without sequences".into(),
            ));
        }
        let mut max_blocks = 0;
        for s in seqs {
            let needed = s.context_len.div_ceil(block_size);
            if s.context_len == 0 || needed > s.blocks.len() {
                return Err(EngineError::InvalidBatch(format!(
                    "decode row {} has a context of {} tokens but {} blocks of {block_size}",
                    s.row,
                    s.context_len,
                    s.blocks.len()
                )));
            }
            max_blocks = max_blocks.max(needed);
        }
        let to_u32 = |what: &str, v: usize| {
            u32::try_from(v).map_err(|_| EngineError::InvalidBatch(format!("{what} {v} overflows u32")))
        };
        let stride = 2 + max_blocks;
        let mut data = Vec::with_capacity(seqs.len() * stride);
        let mut max_block = 0;
        for s in seqs {
            data.push(to_u32("row", s.row)?);
            data.push(to_u32("context length", s.context_len)?);
            // Only the blocks that hold the context: a table may own more (preallocated growth).
            let blocks = &s.blocks[..s.context_len.div_ceil(block_size)];
            max_block = blocks.iter().copied().fold(max_block, u32::max);
            data.extend_from_slice(blocks);
            data.resize(data.len() + max_blocks - blocks.len(), 0);
        }
        Ok(Self {
            data,
            seqs: seqs.len(),
            stride,
            max_block,
            max_row: seqs.iter().map(|s| s.row).max().unwrap_or(0),
        })
    }

    /// The slot holding position `pos` of sequence `seq` (what the kernel computes).
    pub fn slot(&self, seq: usize, pos: usize, block_size: usize) -> u32 {
        let entry = &self.data[seq * self.stride..(seq + 1) * self.stride];
        entry[2 + pos / block_size] * block_size as u32 + (pos % block_size) as u32
    }
}

/// The custom op: inputs q `(tokens, heads, head_dim)`, K and V pools `(kv_heads, slots,
/// head_dim)`; output `(seqs, heads * head_dim)`, row i for the table's sequence i.
pub struct PagedDecodeOp {
    /// The packed table, on the device of q (`(seqs * stride,)` u32).
    pub table: Tensor,
    pub host: DecodeTable,
    pub block_size: usize,
    pub scale: f32,
}

/// The dimensions the kernel works with, checked against each other and the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeDims {
    pub tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub num_slots: usize,
}

impl PagedDecodeOp {
    pub fn new(host: DecodeTable, block_size: usize, scale: f32, device: &Device) -> Result<Self> {
        let table = Tensor::from_slice(&host.data, host.data.len(), device)?;
        Ok(Self {
            table,
            host,
            block_size,
            scale,
        })
    }

    /// Every check the kernel relies on for memory safety: it indexes the pool with the table's
    /// block ids and q with its rows, unchecked.
    pub fn check(&self, q: &Shape, k: &Shape, v: &Shape) -> Result<DecodeDims> {
        let bad = |m: String| Err(EngineError::InvalidBatch(format!("paged decode: {m}")));
        let (tokens, heads, head_dim) = q.dims3()?;
        let (kv_heads, num_slots, kd) = k.dims3()?;
        if k != v {
            return bad(format!("K pool {k:?} and V pool {v:?} differ"));
        }
        if kd != head_dim {
            return bad(format!("head dim of q {head_dim} != of the pool {kd}"));
        }
        if head_dim == 0 || head_dim > MAX_HEAD_DIM {
            return bad(format!("head dim {head_dim} outside 1..={MAX_HEAD_DIM}"));
        }
        if kv_heads == 0 || heads % kv_heads != 0 {
            return bad(format!(
                "{heads} query heads do not group over {kv_heads} KV heads"
            ));
        }
        if self.host.max_row >= tokens {
            return bad(format!("row {} outside a batch of {tokens}", self.host.max_row));
        }
        if num_slots % self.block_size != 0 {
            return bad(format!(
                "{num_slots} pool slots are not whole blocks of {}",
                self.block_size
            ));
        }
        if self.host.max_block as usize >= num_slots / self.block_size {
            return bad(format!(
                "block {} outside a pool of {} blocks",
                self.host.max_block,
                num_slots / self.block_size
            ));
        }
        let dims = DecodeDims {
            tokens,
            heads,
            kv_heads,
            head_dim,
            num_slots,
        };
        // The kernel takes these as u32 (offsets are computed in 64 bits).
        if [heads, num_slots, self.host.stride]
            .iter()
            .any(|&n| u32::try_from(n).is_err())
        {
            return bad("dimensions overflow the kernel's u32 arguments".into());
        }
        Ok(dims)
    }
}

/// Attends the table's sequences. `q`, `k_pool`, `v_pool` must share a float dtype and device.
pub fn paged_decode(q: &Tensor, k_pool: &Tensor, v_pool: &Tensor, op: &PagedDecodeOp) -> Result<Tensor> {
    op.check(q.shape(), k_pool.shape(), v_pool.shape())?;
    if k_pool.dtype() != q.dtype() || v_pool.dtype() != q.dtype() {
        return Err(EngineError::InvalidBatch(format!(
            "paged decode: q is {:?} but the pool {:?}",
            q.dtype(),
            k_pool.dtype()
        )));
    }
    let q = q.contiguous()?;
    Ok(q.apply_op3_no_bwd(k_pool, v_pool, op)?)
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("paged decode needs contiguous inputs"),
    }
}

/// The kernel's arithmetic in Rust, f32 throughout: scale folded into q, then one online-softmax
/// pass per (sequence, head) over the context in position order.
pub fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    table: &DecodeTable,
    dims: DecodeDims,
    block_size: usize,
    scale: f32,
) -> Vec<f32> {
    let DecodeDims {
        heads,
        kv_heads,
        head_dim: hd,
        num_slots,
        ..
    } = dims;
    let mut out = vec![0f32; table.seqs * heads * hd];
    let mut acc = vec![0f32; hd];
    for seq in 0..table.seqs {
        let entry = &table.data[seq * table.stride..];
        let (row, context_len) = (entry[0] as usize, entry[1] as usize);
        for head in 0..heads {
            let kv = head / (heads / kv_heads);
            let qh: Vec<f32> = q[(row * heads + head) * hd..][..hd]
                .iter()
                .map(|x| x * scale)
                .collect();
            let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
            acc.fill(0.0);
            for pos in 0..context_len {
                let at = (kv * num_slots + table.slot(seq, pos, block_size) as usize) * hd;
                let s: f32 = qh.iter().zip(&k[at..at + hd]).map(|(a, b)| a * b).sum();
                let m_new = m.max(s);
                let (c, p) = ((m - m_new).exp(), (s - m_new).exp());
                l = l * c + p;
                for (a, &x) in acc.iter_mut().zip(&v[at..at + hd]) {
                    *a = *a * c + p * x;
                }
                m = m_new;
            }
            let o = &mut out[(seq * heads + head) * hd..][..hd];
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = a / l;
            }
        }
    }
    out
}

impl CustomOp3 for PagedDecodeOp {
    fn name(&self) -> &'static str {
        "wick-paged-decode"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = self
            .check(l1.shape(), l2.shape(), l3.shape())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let f32s = |s: &CpuStorage, l: &Layout| -> candle_core::Result<Vec<f32>> {
            Ok(match s {
                CpuStorage::F32(d) => contiguous(d, l)?.to_vec(),
                CpuStorage::F16(d) => contiguous(d, l)?.iter().map(|x| x.to_f32()).collect(),
                CpuStorage::BF16(d) => contiguous(d, l)?.iter().map(|x| x.to_f32()).collect(),
                other => candle_core::bail!("paged decode: unsupported dtype {:?}", other.dtype()),
            })
        };
        let out = reference(
            &f32s(s1, l1)?,
            &f32s(s2, l2)?,
            &f32s(s3, l3)?,
            &self.host,
            dims,
            self.block_size,
            self.scale,
        );
        let storage = match s1.dtype() {
            DType::F16 => CpuStorage::F16(out.into_iter().map(half::f16::from_f32).collect()),
            DType::BF16 => CpuStorage::BF16(out.into_iter().map(half::bf16::from_f32).collect()),
            _ => CpuStorage::F32(out),
        };
        Ok((storage, Shape::from((self.host.seqs, dims.heads * dims.head_dim))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let dims = self
            .check(l1.shape(), l2.shape(), l3.shape())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        crate::kernels::cuda::paged_decode::launch(self, dims, (s1, l1), (s2, l2), (s3, l3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(seqs: &[DecodeSeq<'_>], block_size: usize) -> PagedDecodeOp {
        let table = DecodeTable::new(seqs, block_size).unwrap();
        PagedDecodeOp::new(table, block_size, 0.125, &Device::Cpu).unwrap()
    }

    #[test]
    fn table_packs_rows_contexts_and_only_the_blocks_in_use() {
        let (a, b) = (vec![7, 3, 9], vec![4, 1, 8, 2]);
        let seqs = [
            DecodeSeq {
                row: 5,
                context_len: 17,
                blocks: &a,
            },
            // Owns four blocks, uses one: the spare blocks must not widen the table.
            DecodeSeq {
                row: 0,
                context_len: 16,
                blocks: &b,
            },
        ];
        let t = DecodeTable::new(&seqs, 16).unwrap();
        assert_eq!(t.stride, 4);
        assert_eq!(t.data, vec![5, 17, 7, 3, 0, 16, 4, 0]);
        assert_eq!((t.seqs, t.max_block, t.max_row), (2, 7, 5));
        // The slot the kernel computes for every visible position equals the block table's.
        for (i, s) in seqs.iter().enumerate() {
            for pos in 0..s.context_len {
                assert_eq!(
                    t.slot(i, pos, 16),
                    s.blocks[pos / 16] * 16 + (pos % 16) as u32,
                    "seq {i} pos {pos}"
                );
            }
        }
        assert_eq!(t.slot(0, 16, 16), 3 * 16);
    }

    #[test]
    fn table_rejects_what_the_kernel_could_not_read() {
        let short = vec![1];
        let too_long = DecodeSeq {
            row: 0,
            context_len: 17,
            blocks: &short,
        };
        assert!(
            DecodeTable::new(&[too_long], 16).is_err(),
            "context beyond its blocks"
        );
        let empty = DecodeSeq {
            row: 0,
            context_len: 0,
            blocks: &short,
        };
        assert!(DecodeTable::new(&[empty], 16).is_err(), "empty context");
        assert!(DecodeTable::new(&[], 16).is_err(), "no sequences");
        let ok = DecodeSeq {
            row: 0,
            context_len: 3,
            blocks: &short,
        };
        assert!(DecodeTable::new(&[ok], 0).is_err(), "block size 0");
    }

    #[test]
    fn check_guards_every_index_the_kernel_uses() {
        let t = vec![3];
        let o = op(
            &[DecodeSeq {
                row: 2,
                context_len: 5,
                blocks: &t,
            }],
            16,
        );
        let s = |d: (usize, usize, usize)| Shape::from(d);
        // q (tokens, heads, hd); pool (kv_heads, slots, hd) with 4 blocks of 16.
        let dims = o.check(&s((3, 9, 64)), &s((3, 64, 64)), &s((3, 64, 64))).unwrap();
        assert_eq!(
            dims,
            DecodeDims {
                tokens: 3,
                heads: 9,
                kv_heads: 3,
                head_dim: 64,
                num_slots: 64
            }
        );
        let cases = [
            ((2, 9, 64), (3, 64, 64), (3, 64, 64), "row 2 outside a batch of 2"),
            (
                (3, 9, 64),
                (3, 48, 64),
                (3, 48, 64),
                "block 3 outside a pool of 3",
            ),
            ((3, 9, 64), (3, 60, 64), (3, 60, 64), "not whole blocks"),
            ((3, 8, 64), (3, 64, 64), (3, 64, 64), "do not group"),
            ((3, 9, 64), (3, 64, 32), (3, 64, 32), "head dim of q 64"),
            ((3, 9, 64), (3, 64, 64), (3, 32, 64), "differ"),
            ((3, 9, 512), (3, 64, 512), (3, 64, 512), "outside 1..=256"),
        ];
        for (q, k, v, want) in cases {
            let err = o.check(&s(q), &s(k), &s(v)).unwrap_err().to_string();
            assert!(err.contains(want), "{q:?} {k:?} {v:?}: {err}");
        }
    }

    /// The CPU transcription against a direct softmax(q k^T) v, on a context of two blocks
    /// stored out of order, with GQA.
    #[test]
    fn reference_is_attention() {
        let (heads, kv_heads, hd, bs) = (4, 2, 3, 2);
        let t = vec![2, 0];
        let o = op(
            &[DecodeSeq {
                row: 1,
                context_len: 3,
                blocks: &t,
            }],
            bs,
        );
        let num_slots = 6;
        let q: Vec<f32> = (0..2 * heads * hd)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let k: Vec<f32> = (0..kv_heads * num_slots * hd)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let v: Vec<f32> = (0..kv_heads * num_slots * hd)
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let dims = DecodeDims {
            tokens: 2,
            heads,
            kv_heads,
            head_dim: hd,
            num_slots,
        };
        let got = reference(&q, &k, &v, &o.host, dims, bs, 0.5);
        for h in 0..heads {
            let kv = h / 2;
            let qh = &q[(heads + h) * hd..][..hd];
            let slots = [4usize, 5, 0]; // positions 0, 1 in block 2; position 2 in block 0
            let scores: Vec<f64> = slots
                .iter()
                .map(|&s| {
                    (0..hd)
                        .map(|d| (qh[d] * k[(kv * num_slots + s) * hd + d]) as f64 * 0.5)
                        .sum()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = w.iter().sum();
            for d in 0..hd {
                let want: f64 = slots
                    .iter()
                    .zip(&w)
                    .map(|(&s, p)| p / z * v[(kv * num_slots + s) * hd + d] as f64)
                    .sum();
                let g = got[h * hd + d] as f64;
                assert!((g - want).abs() < 1e-5, "head {h} dim {d}: {g} vs {want}");
            }
        }
    }
}
