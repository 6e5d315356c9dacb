//! The paged KV cache: per layer, one preallocated pool of fixed-size blocks for K and one for V.
//!
//! Pool layout is `(num_kv_heads, num_blocks * block_size, head_dim)`: a token's K (or V) lives
//! at one *slot* (`block * block_size + offset`) in every head. Heads first means that gathering
//! the slots of a batch of sequences with one `index_select` yields `(heads, tokens, head_dim)`
//! already laid out for batched matmuls, so attention never copies K/V a second time.

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// What one token's K (or V) takes in the pool, per layer: `kv_heads * head_dim` values in each
/// of `layers` layers. Plain dimensions, so that the pool knows no model configuration (the
/// runner derives them from one: `runner::kv_shape`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The blocks a sequence owns, in order: token `pos` lives in block `pos / block_size`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable(pub Vec<u32>);

impl BlockTable {
    pub fn slot(&self, pos: usize, block_size: usize) -> Result<u32> {
        let block = self.0.get(pos / block_size).ok_or_else(|| {
            EngineError::InvalidBatch(format!(
                "position {pos} is beyond the {} blocks of the block table",
                self.0.len()
            ))
        })?;
        Ok(block * block_size as u32 + (pos % block_size) as u32)
    }

    pub fn num_blocks(&self) -> usize {
        self.0.len()
    }
}

pub struct PagedKvCache {
    /// `(k, v)` per layer.
    layers: Vec<(Tensor, Tensor)>,
    block_size: usize,
    num_blocks: usize,
}

impl PagedKvCache {
    pub fn bytes_per_block(shape: KvShape, block_size: usize, dtype: DType) -> usize {
        2 * shape.layers * block_size * shape.kv_heads * shape.head_dim * dtype.size_in_bytes()
    }

    pub fn new(
        kv: KvShape,
        block_size: usize,
        num_blocks: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(EngineError::InvalidConfig(format!(
                "KV cache needs a positive block size and block count (got {block_size} x {num_blocks})"
            )));
        }
        let shape = (kv.kv_heads, num_blocks * block_size, kv.head_dim);
        let layers = (0..kv.layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            block_size,
            num_blocks,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn dtype(&self) -> DType {
        self.layers[0].0.dtype()
    }

    /// Writes the new tokens' K and V (`(kv_heads, tokens, head_dim)`) into their slots, rounded
    /// to the pool's dtype. `slot_index` is the slot mapping broadcast to the same shape (built
    /// once per forward).
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor, slot_index: &Tensor) -> Result<()> {
        let (kc, vc) = &self.layers[layer];
        kc.scatter_set(slot_index, &k.to_dtype(kc.dtype())?, 1)?;
        vc.scatter_set(slot_index, &v.to_dtype(vc.dtype())?, 1)?;
        Ok(())
    }

    /// The whole K and V pools of a layer.
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }

    /// Copies whole blocks, `(source, destination)` pairs, in every layer's K and V pools (the
    /// copy-on-write copies asked for by the block manager). All sources are read before any
    /// destination is written; destinations must be distinct. Portable candle ops.
    pub fn copy_blocks(&self, pairs: &[(u32, u32)]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut dsts: Vec<u32> = pairs.iter().map(|&(_, d)| d).collect();
        dsts.sort_unstable();
        dsts.dedup();
        let out_of_range = pairs
            .iter()
            .find(|&&(s, d)| s as usize >= self.num_blocks || d as usize >= self.num_blocks);
        if let Some((s, d)) = out_of_range {
            return Err(EngineError::InvalidBatch(format!(
                "block copy {s} -> {d} outside the pool of {} blocks",
                self.num_blocks
            )));
        }
        if dsts.len() != pairs.len() {
            return Err(EngineError::InvalidBatch(
                "two block copies into the same block".into(),
            ));
        }
        let bs = self.block_size as u32;
        let slots = |block: u32| block * bs..(block + 1) * bs;
        let src: Vec<u32> = pairs.iter().flat_map(|&(s, _)| slots(s)).collect();
        let dst: Vec<u32> = pairs.iter().flat_map(|&(_, d)| slots(d)).collect();
        let (k0, _) = &self.layers[0];
        let (kv_heads, _, head_dim) = k0.dims3()?;
        let n = src.len();
        let src = Tensor::from_vec(src, n, k0.device())?;
        let dst = Tensor::from_vec(dst, (1, n, 1), k0.device())?
            .broadcast_as((kv_heads, n, head_dim))?
            .contiguous()?;
        for (k, v) in &self.layers {
            k.scatter_set(&dst, &k.index_select(&src, 1)?, 1)?;
            v.scatter_set(&dst, &v.index_select(&src, 1)?, 1)?;
        }
        Ok(())
    }

    /// K and V of the given slots: `(kv_heads, slots, head_dim)` each.
    pub fn gather(&self, layer: usize, slots: &Tensor) -> Result<(Tensor, Tensor)> {
        let (kc, vc) = &self.layers[layer];
        Ok((kc.index_select(slots, 1)?, vc.index_select(slots, 1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: KvShape = KvShape {
        layers: 2,
        kv_heads: 2,
        head_dim: 3,
    };

    /// Fills every slot of every pool with a distinct value, copies blocks, and checks each
    /// destination slot against the source's original value, every other slot unchanged.
    #[test]
    fn copy_blocks_copies_whole_blocks_in_every_layer() -> Result<()> {
        let (block_size, num_blocks) = (4, 6);
        let cache = PagedKvCache::new(TINY, block_size, num_blocks, DType::F32, &Device::Cpu)?;
        let slots = num_blocks * block_size;
        let (heads, dim) = (TINY.kv_heads, TINY.head_dim);
        let all_slots: Vec<u32> = (0..slots as u32).collect();
        let index = Tensor::from_vec(all_slots, (1, slots, 1), &Device::Cpu)?
            .broadcast_as((heads, slots, dim))?
            .contiguous()?;
        let value = |layer: usize, which: usize| {
            let base = (layer * 2 + which) as f32 * 1e4;
            Tensor::arange(base, base + (heads * slots * dim) as f32, &Device::Cpu)?
                .reshape((heads, slots, dim))
        };
        for layer in 0..TINY.layers {
            cache.write(layer, &value(layer, 0)?, &value(layer, 1)?, &index)?;
        }
        // 1 -> 4 and 4 -> 0 in one call: block 0 must get block 4's *original* content.
        let pairs = [(1u32, 4u32), (4, 0), (5, 2)];
        cache.copy_blocks(&pairs)?;
        let mut source_block: Vec<usize> = (0..num_blocks).collect();
        for &(s, d) in &pairs {
            source_block[d as usize] = s as usize;
        }
        for layer in 0..TINY.layers {
            let (k, v) = cache.layer(layer);
            for (which, got) in [k, v].into_iter().enumerate() {
                let got = got.to_vec3::<f32>()?;
                let want = value(layer, which)?.to_vec3::<f32>()?;
                for h in 0..heads {
                    for slot in 0..slots {
                        let src_slot = source_block[slot / block_size] * block_size + slot % block_size;
                        assert_eq!(
                            got[h][slot], want[h][src_slot],
                            "layer {layer} head {h} slot {slot}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn copy_blocks_rejects_bad_pairs() -> Result<()> {
        let cache = PagedKvCache::new(TINY, 4, 3, DType::F32, &Device::Cpu)?;
        assert!(cache.copy_blocks(&[(0, 3)]).is_err());
        assert!(cache.copy_blocks(&[(0, 1), (2, 1)]).is_err());
        cache.copy_blocks(&[])?;
        Ok(())
    }
}
