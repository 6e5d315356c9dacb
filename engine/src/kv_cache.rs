//! The paged KV cache: per layer, one preallocated pool of fixed-size blocks for K and one for V.
//!
//! Pool layout is `(num_kv_heads, num_blocks * block_size, head_dim)`: a token's K (or V) lives
//! at one *slot* (`block * block_size + offset`) in every head. Heads first means that gathering
//! the slots of a batch of sequences with one `index_select` yields `(heads, tokens, head_dim)`
//! already laid out for batched matmuls, so attention never copies K/V a second time.

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::model_config::LlamaConfig;

pub const DEFAULT_BLOCK_SIZE: usize = 16;

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
    pub fn bytes_per_block(cfg: &LlamaConfig, block_size: usize, dtype: DType) -> usize {
        2 * cfg.num_hidden_layers * block_size * cfg.kv_dim() * dtype.size_in_bytes()
    }

    /// How many blocks fit in `budget_bytes`.
    pub fn blocks_for_budget(
        cfg: &LlamaConfig,
        block_size: usize,
        dtype: DType,
        budget_bytes: usize,
    ) -> usize {
        budget_bytes / Self::bytes_per_block(cfg, block_size, dtype).max(1)
    }

    pub fn new(
        cfg: &LlamaConfig,
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
        let shape = (cfg.num_key_value_heads, num_blocks * block_size, cfg.head_dim);
        let layers = (0..cfg.num_hidden_layers)
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

    /// Writes the new tokens' K and V (`(kv_heads, tokens, head_dim)`) into their slots.
    /// `slot_index` is the slot mapping broadcast to the same shape (built once per forward).
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor, slot_index: &Tensor) -> Result<()> {
        let (kc, vc) = &self.layers[layer];
        kc.scatter_set(slot_index, k, 1)?;
        vc.scatter_set(slot_index, v, 1)?;
        Ok(())
    }

    /// The whole K and V pools of a layer.
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }

    /// K and V of the given slots: `(kv_heads, slots, head_dim)` each.
    pub fn gather(&self, layer: usize, slots: &Tensor) -> Result<(Tensor, Tensor)> {
        let (kc, vc) = &self.layers[layer];
        Ok((kc.index_select(slots, 1)?, vc.index_select(slots, 1)?))
    }
}
