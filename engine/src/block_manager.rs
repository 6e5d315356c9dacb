//! KV block allocation. Hands out block ids of the paged pool and takes them back.
//! (Reference counts and prefix caching build on this in the scheduler work.)

use crate::error::{EngineError, Result};
use crate::kv_cache::BlockTable;

pub struct BlockAllocator {
    free: Vec<u32>,
    num_blocks: usize,
    block_size: usize,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Reversed so that blocks are handed out in increasing order.
        Self {
            free: (0..num_blocks as u32).rev().collect(),
            num_blocks,
            block_size,
        }
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Grows `table` so that it can hold `tokens` tokens.
    pub fn ensure_capacity(&mut self, table: &mut BlockTable, tokens: usize) -> Result<()> {
        let needed = self.blocks_for(tokens).saturating_sub(table.num_blocks());
        if needed > self.free.len() {
            return Err(EngineError::OutOfBlocks {
                needed,
                free: self.free.len(),
            });
        }
        let start = self.free.len() - needed;
        table.0.extend(self.free.drain(start..).rev());
        Ok(())
    }

    pub fn release(&mut self, table: &mut BlockTable) {
        self.free.extend(table.0.drain(..).rev());
    }
}
