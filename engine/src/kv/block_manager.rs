//! Who owns which KV block, vLLM-style: reference-counted blocks, automatic prefix caching and
//! copy-on-write forks. The manager only does bookkeeping; the caller writes K/V (and performs
//! the block copies [`BlockManager::prepare_write`] asks for, with
//! [`PagedKvCache::copy_blocks`](crate::kv::cache::PagedKvCache::copy_blocks)).
//!
//! Every block is in exactly one of three states:
//! - **in use**: referenced by one or more block tables (`ref_count > 0`);
//! - **free**: unreferenced, holding nothing worth keeping;
//! - **evictable**: unreferenced but registered in the prefix cache. It is handed back to the
//!   next request whose prompt starts with the same tokens, or, once the free list is empty,
//!   evicted (least recently released first) and reused for something else.
//!
//! **Prefix caching.** Once a block is full (all `block_size` tokens written) the caller commits
//! it ([`BlockManager::commit_full_blocks`]). Its hash is chained: a 128-bit hash of the previous
//! block's hash and this block's token ids, so equal hashes mean equal whole prefixes up to and
//! including the block. A later prompt hashes its own full blocks the same way and reuses the
//! longest run of cached blocks from the start, skipping their prefill.
//!
//! **Collisions.** A hit requires the hash *and* the block's own token ids *and* the parent's hash
//! to match what was stored when the block was cached, so a collision on the block itself can
//! never return wrong K/V. What remains is a collision of two different prefixes on the same
//! 128-bit parent hash, of probability about `n² / 2^129` for `n` distinct cached blocks. The hash
//! is `ahash` with fixed seeds: deterministic within a build (hashes are never persisted, so their
//! value across builds or CPUs does not matter).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};

use crate::error::{EngineError, Result};
use crate::kv::cache::BlockTable;

/// Chained content hash of a full block: its tokens and everything before them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub u128);

/// `(parent's hash, the block's tokens) -> hash`. Replaceable for tests (a colliding hasher
/// exercises the token comparison).
pub type BlockHasher = fn(Option<BlockHash>, &[u32]) -> BlockHash;

/// The default [`BlockHasher`]: two differently seeded 64-bit `ahash` passes.
pub fn default_block_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    #[rustfmt::skip]
    const KEYS: [[u64; 4]; 2] = [
        [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344, 0xa409_3822_299f_31d0, 0x082e_fa98_ec4e_6c89],
        [0x4528_21e6_38d0_1377, 0xbe54_66cf_34e9_0c6c, 0xc0ac_29b7_c97c_50dd, 0x3f84_d5b5_b547_0917],
    ];
    let half = |[k0, k1, k2, k3]: [u64; 4]| {
        let mut h = ahash::RandomState::with_seeds(k0, k1, k2, k3).build_hasher();
        h.write_u8(u8::from(parent.is_some()));
        h.write_u128(parent.map_or(0, |p| p.0));
        h.write_usize(tokens.len());
        for &t in tokens {
            h.write_u32(t);
        }
        h.finish()
    };
    BlockHash((u128::from(half(KEYS[0])) << 64) | u128::from(half(KEYS[1])))
}

#[derive(Debug, Default)]
struct Block {
    ref_count: u32,
    /// Set once the block is full and committed. The block is the prefix cache's entry for this
    /// hash only if `cached[hash] == id` (a block computed twice stays an unregistered duplicate).
    hash: Option<BlockHash>,
    /// For the registered block: its parent's hash and its tokens, compared on every hit.
    parent: Option<BlockHash>,
    tokens: Vec<u32>,
    /// Key in the evictable LRU while registered and unreferenced.
    lru_tick: Option<u64>,
}

/// Counters for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockManagerStats {
    pub num_blocks: usize,
    /// Unreferenced and not cached.
    pub free_blocks: usize,
    /// Unreferenced but cached (evictable): reusable by a prefix hit, or by anyone once evicted.
    pub evictable_blocks: usize,
    /// Referenced by at least one block table.
    pub used_blocks: usize,
    /// Blocks registered in the prefix cache (in use or evictable).
    pub cached_blocks: usize,
    /// Prompt tokens looked up in the prefix cache, and how many of them were hits.
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
}

impl BlockManagerStats {
    /// Fraction of the pool referenced by live sequences.
    pub fn usage(&self) -> f64 {
        self.used_blocks as f64 / self.num_blocks.max(1) as f64
    }

    pub fn prefix_hit_rate(&self) -> f64 {
        self.prefix_hit_tokens as f64 / self.prefix_query_tokens.max(1) as f64
    }
}

pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    /// A stack; initially reversed so that blocks are handed out in increasing order.
    free: Vec<u32>,
    /// Evictable blocks by release tick: the first entry is the least recently released.
    evictable: BTreeMap<u64, u32>,
    cached: HashMap<BlockHash, u32>,
    next_tick: u64,
    used: usize,
    watermark_blocks: usize,
    prefix_caching: bool,
    hasher: BlockHasher,
    prefix_query_tokens: u64,
    prefix_hit_tokens: u64,
}

impl BlockManager {
    /// A pool of `num_blocks` blocks of `block_size` tokens, prefix caching on, no watermark.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 || num_blocks > u32::MAX as usize {
            return Err(EngineError::InvalidConfig(format!(
                "block manager needs a positive block size and 1..=2^32-1 blocks (got {block_size} x {num_blocks})"
            )));
        }
        Ok(Self {
            block_size,
            blocks: (0..num_blocks).map(|_| Block::default()).collect(),
            free: (0..num_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            cached: HashMap::new(),
            next_tick: 0,
            used: 0,
            watermark_blocks: 0,
            prefix_caching: true,
            hasher: default_block_hash,
            prefix_query_tokens: 0,
            prefix_hit_tokens: 0,
        })
    }

    /// Blocks [`can_allocate`](Self::can_allocate) keeps free for the growth of running
    /// sequences when admitting new ones.
    pub fn with_watermark_blocks(mut self, blocks: usize) -> Self {
        self.watermark_blocks = blocks;
        self
    }

    /// Turns automatic prefix caching on or off (off: no lookups, nothing is registered).
    pub fn with_prefix_caching(mut self, enabled: bool) -> Self {
        self.prefix_caching = enabled;
        self
    }

    /// Replaces the block hash function. Use it on a fresh manager only.
    pub fn with_block_hasher(mut self, hasher: BlockHasher) -> Self {
        self.hasher = hasher;
        self
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Blocks that can be handed out: free plus evictable.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Whether `num_blocks` more blocks can be taken while keeping the watermark free.
    pub fn can_allocate(&self, num_blocks: usize) -> bool {
        num_blocks + self.watermark_blocks <= self.num_free_blocks()
    }

    /// How many of [`num_free_blocks`](Self::num_free_blocks) `allocate_prompt(prompt)` would
    /// consume now: new blocks plus cached hits that are currently evictable.
    pub fn num_blocks_to_allocate(&self, prompt: &[u32]) -> usize {
        self.plan_prompt(prompt, true).1
    }

    /// As [`Self::num_blocks_to_allocate`]; `use_cache: false` plans without prefix-cache hits.
    pub fn num_blocks_to_allocate_with(&self, prompt: &[u32], use_cache: bool) -> usize {
        self.plan_prompt(prompt, use_cache).1
    }

    /// References held on `block` (0 when free, evictable, or out of range).
    pub fn ref_count(&self, block: u32) -> u32 {
        self.blocks.get(block as usize).map_or(0, |b| b.ref_count)
    }

    /// Whether `block` is the prefix cache's entry for its hash.
    pub fn is_cached(&self, block: u32) -> bool {
        self.blocks
            .get(block as usize)
            .and_then(|b| b.hash)
            .is_some_and(|h| self.cached.get(&h) == Some(&block))
    }

    pub fn stats(&self) -> BlockManagerStats {
        BlockManagerStats {
            num_blocks: self.blocks.len(),
            free_blocks: self.free.len(),
            evictable_blocks: self.evictable.len(),
            used_blocks: self.used,
            cached_blocks: self.cached.len(),
            prefix_query_tokens: self.prefix_query_tokens,
            prefix_hit_tokens: self.prefix_hit_tokens,
        }
    }

    /// The block table for a new prompt and how many of its tokens are already in the KV cache
    /// (a multiple of the block size, at most `len - 1`: the last prompt token is always computed
    /// so that its logits exist). Cached full blocks are shared; the rest are fresh blocks.
    /// All or nothing: on [`EngineError::OutOfBlocks`] nothing changed.
    pub fn allocate_prompt(&mut self, prompt: &[u32]) -> Result<(BlockTable, usize)> {
        self.allocate_prompt_with(prompt, true)
    }

    /// As [`Self::allocate_prompt`]; `use_cache: false` takes only fresh blocks, so the whole
    /// prompt is computed (needed when every prompt position's logits are wanted).
    pub fn allocate_prompt_with(&mut self, prompt: &[u32], use_cache: bool) -> Result<(BlockTable, usize)> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidBatch("an empty prompt".into()));
        }
        let (hits, cost) = self.plan_prompt(prompt, use_cache);
        self.check_available(cost)?;
        if self.prefix_caching && use_cache {
            self.prefix_query_tokens += prompt.len() as u64;
            self.prefix_hit_tokens += (hits.len() * self.block_size) as u64;
        }
        // Take the hits first: evicting for the fresh blocks must not pick one of them.
        for &b in &hits {
            self.acquire(b);
        }
        let num_cached = hits.len() * self.block_size;
        let fresh = self.blocks_for(prompt.len()) - hits.len();
        let mut table = BlockTable(hits);
        self.push_fresh(&mut table, fresh)?;
        Ok((table, num_cached))
    }

    /// Grows `table` with fresh blocks so that it can hold `num_tokens` tokens. All or nothing.
    pub fn ensure_capacity(&mut self, table: &mut BlockTable, num_tokens: usize) -> Result<()> {
        let needed = self.blocks_for(num_tokens).saturating_sub(table.num_blocks());
        self.check_available(needed)?;
        self.push_fresh(table, needed)
    }

    /// Registers the full blocks of `table` in the prefix cache. `tokens` are the sequence's
    /// tokens whose K/V are written (a prefix of the sequence; a partial last block is ignored).
    /// Idempotent and cheap to call after every step: only blocks not committed before are hashed.
    pub fn commit_full_blocks(&mut self, table: &BlockTable, tokens: &[u32]) -> Result<()> {
        if !self.prefix_caching {
            return Ok(());
        }
        if tokens.len() > table.num_blocks() * self.block_size {
            return Err(EngineError::InvalidBatch(format!(
                "{} tokens committed to a block table of {} blocks",
                tokens.len(),
                table.num_blocks()
            )));
        }
        let full = &table.0[..tokens.len() / self.block_size];
        // Blocks are hashed in order (a rewrite unhashes a block before its successors are
        // rewritten), so only the blocks after the last hashed one are new.
        let hashed = |&b: &u32| self.ref_count(b) > 0 && self.blocks[b as usize].hash.is_some();
        let start = full.iter().rposition(hashed).map_or(0, |i| i + 1);
        let mut parent = start
            .checked_sub(1)
            .and_then(|i| self.blocks[full[i] as usize].hash);
        for (i, &id) in full.iter().enumerate().skip(start) {
            if self.ref_count(id) == 0 {
                return Err(EngineError::InvalidBatch(format!("commit of unowned block {id}")));
            }
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let hash = (self.hasher)(parent, chunk);
            self.blocks[id as usize].hash = Some(hash);
            // Register unless another block holds this hash (a duplicate, or a collision).
            if let std::collections::hash_map::Entry::Vacant(entry) = self.cached.entry(hash) {
                entry.insert(id);
                let block = &mut self.blocks[id as usize];
                block.parent = parent;
                block.tokens = chunk.to_vec();
            }
            parent = Some(hash);
        }
        Ok(())
    }

    /// A second table sharing all of `table`'s blocks (for `n > 1` samples of one prompt). Before
    /// either writes into a shared block it must call [`prepare_write`](Self::prepare_write).
    pub fn fork(&mut self, table: &BlockTable) -> Result<BlockTable> {
        if let Some(b) = table.0.iter().find(|&&b| self.ref_count(b) == 0) {
            return Err(EngineError::InvalidBatch(format!(
                "fork of a table with unowned block {b}"
            )));
        }
        for &b in &table.0 {
            self.blocks[b as usize].ref_count += 1;
        }
        Ok(table.clone())
    }

    /// Makes positions `first_pos..first_pos + num_tokens` of `table` writable: grows the table as
    /// [`ensure_capacity`](Self::ensure_capacity) does, replaces every shared block in the range
    /// by a private copy, and takes blocks about to change out of the prefix cache. Returns the
    /// `(source, destination)` block copies the caller must perform in the KV cache before the
    /// write ([`PagedKvCache::copy_blocks`](crate::kv::cache::PagedKvCache::copy_blocks)).
    /// All or nothing.
    pub fn prepare_write(
        &mut self,
        table: &mut BlockTable,
        first_pos: usize,
        num_tokens: usize,
    ) -> Result<Vec<(u32, u32)>> {
        if num_tokens == 0 {
            return Ok(Vec::new());
        }
        let end_block = self.blocks_for(first_pos + num_tokens);
        let written = first_pos / self.block_size..end_block.min(table.num_blocks());
        let mut shared = 0;
        for &b in &table.0[written.clone()] {
            match self.ref_count(b) {
                0 => return Err(EngineError::InvalidBatch(format!("write into unowned block {b}"))),
                1 => {}
                _ => shared += 1,
            }
        }
        let grow = end_block.saturating_sub(table.num_blocks());
        self.check_available(shared + grow)?;
        let mut copies = Vec::with_capacity(shared);
        for i in written {
            let src = table.0[i];
            if self.blocks[src as usize].ref_count > 1 {
                let dst = self.take_free()?;
                self.blocks[src as usize].ref_count -= 1;
                table.0[i] = dst;
                copies.push((src, dst));
            } else {
                self.clear(src); // Its content changes: out of the prefix cache.
            }
        }
        self.push_fresh(table, grow)?;
        Ok(copies)
    }

    /// Releases the blocks of `table` past those holding its first `num_tokens` tokens (as
    /// [`free`](Self::free) would release them). Speculative decoding takes blocks for draft
    /// tokens and gives back those that verification rejected.
    pub fn truncate(&mut self, table: &mut BlockTable, num_tokens: usize) {
        let keep = self.blocks_for(num_tokens);
        if keep < table.num_blocks() {
            let mut tail = BlockTable(table.0.split_off(keep));
            self.free(&mut tail);
        }
    }

    /// Drops `table`'s references and empties it. Blocks nobody references any more become free,
    /// or evictable if they are cached; the table's last blocks are released first, so they are
    /// evicted before its (more shareable) first ones.
    pub fn free(&mut self, table: &mut BlockTable) {
        for b in table.0.drain(..).rev() {
            let Some(block) = self.blocks.get_mut(b as usize).filter(|blk| blk.ref_count > 0) else {
                // A double free: ignoring it keeps the pool consistent.
                tracing::error!(block = b, "freeing a block that is not in use");
                continue;
            };
            block.ref_count -= 1;
            if block.ref_count > 0 {
                continue;
            }
            self.used -= 1;
            if self.is_cached(b) {
                let tick = self.next_tick;
                self.next_tick += 1;
                self.blocks[b as usize].lru_tick = Some(tick);
                self.evictable.insert(tick, b);
            } else {
                self.clear(b);
                self.free.push(b);
            }
        }
    }

    /// Checks the bookkeeping: each block in exactly one state, counts adding up, the cache
    /// pointing at blocks holding its hashes. For tests and debugging.
    pub fn check_consistency(&self) -> std::result::Result<(), String> {
        let mut listed = vec![false; self.blocks.len()];
        let evictable = self.evictable.iter().map(|(&tick, &b)| (b, Some(tick)));
        for (b, tick) in self.free.iter().map(|&b| (b, None)).chain(evictable) {
            let blk = &self.blocks[b as usize];
            let right_state = match tick {
                None => blk.hash.is_none(),
                Some(t) => self.is_cached(b) && blk.lru_tick == Some(t),
            };
            if !right_state || blk.ref_count != 0 || std::mem::replace(&mut listed[b as usize], true) {
                return Err(format!("block {b} is wrongly listed as free or evictable"));
            }
        }
        let used = self.blocks.iter().filter(|b| b.ref_count > 0).count();
        let listed = listed.iter().filter(|&&l| l).count();
        if used != self.used || listed + used != self.blocks.len() {
            let n = self.blocks.len();
            return Err(format!(
                "{listed} free or evictable + {used} used (counter {}) != {n}",
                self.used
            ));
        }
        for (&h, &b) in &self.cached {
            if self.blocks[b as usize].hash != Some(h) {
                return Err(format!("the cache entry of block {b} holds another hash"));
            }
        }
        Ok(())
    }

    /// The longest run of cached full blocks from the start of `prompt`, leaving at least one
    /// token to compute.
    fn cached_prefix(&self, prompt: &[u32]) -> Vec<u32> {
        let mut hits = Vec::new();
        if !self.prefix_caching {
            return hits;
        }
        let mut parent = None;
        for chunk in prompt[..prompt.len().saturating_sub(1)].chunks_exact(self.block_size) {
            let hash = (self.hasher)(parent, chunk);
            let Some(&b) = self.cached.get(&hash) else { break };
            let blk = &self.blocks[b as usize];
            if blk.parent != parent || blk.tokens != chunk {
                break; // A hash collision: not the same block.
            }
            hits.push(b);
            parent = Some(hash);
        }
        hits
    }

    /// The cached prefix blocks of `prompt`, and how many free blocks allocating it takes.
    fn plan_prompt(&self, prompt: &[u32], use_cache: bool) -> (Vec<u32>, usize) {
        if !use_cache {
            return (Vec::new(), self.blocks_for(prompt.len()));
        }
        let hits = self.cached_prefix(prompt);
        let revived = hits
            .iter()
            .filter(|&&b| self.blocks[b as usize].ref_count == 0)
            .count();
        let cost = self.blocks_for(prompt.len()) - hits.len() + revived;
        (hits, cost)
    }

    fn check_available(&self, needed: usize) -> Result<()> {
        let free = self.num_free_blocks();
        if needed > free {
            return Err(EngineError::OutOfBlocks { needed, free });
        }
        Ok(())
    }

    /// One more reference on a cached block, reviving it if it was evictable.
    fn acquire(&mut self, b: u32) {
        let blk = &mut self.blocks[b as usize];
        if let Some(tick) = blk.lru_tick.take() {
            self.evictable.remove(&tick);
        }
        if blk.ref_count == 0 {
            self.used += 1;
        }
        blk.ref_count += 1;
    }

    /// A block from the free list, else the least recently released evictable one (evicted).
    fn take_free(&mut self) -> Result<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self
                    .evictable
                    .pop_first()
                    .ok_or(EngineError::OutOfBlocks { needed: 1, free: 0 })?;
                self.clear(b);
                b
            }
        };
        self.blocks[b as usize].ref_count = 1;
        self.used += 1;
        Ok(b)
    }

    fn push_fresh(&mut self, table: &mut BlockTable, n: usize) -> Result<()> {
        for _ in 0..n {
            let b = self.take_free()?;
            table.0.push(b);
        }
        Ok(())
    }

    /// Removes `b`'s cache entry and metadata (not its reference count).
    fn clear(&mut self, b: u32) {
        let blk = &mut self.blocks[b as usize];
        if let Some(h) = blk.hash.take() {
            if self.cached.get(&h) == Some(&b) {
                self.cached.remove(&h);
            }
        }
        blk.parent = None;
        blk.tokens = Vec::new();
        blk.lru_tick = None;
    }
}
