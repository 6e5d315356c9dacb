//! The block manager's bookkeeping: targeted cases (prefix hits, the hit cap, LRU eviction,
//! copy-on-write, hash collisions) and a property test driving thousands of random operations
//! against a model of the live block tables and of what every KV slot holds.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wick_engine::kv::block_manager::{default_block_hash, BlockHash, BlockManager};
use wick_engine::kv::cache::BlockTable;
use wick_engine::EngineError;

fn manager(num_blocks: usize, block_size: usize) -> BlockManager {
    BlockManager::new(num_blocks, block_size).expect("valid manager")
}

/// Allocates `prompt`, "computes" its uncached part and commits it.
fn run_prompt(m: &mut BlockManager, prompt: &[u32]) -> (BlockTable, usize) {
    let (table, cached) = m.allocate_prompt(prompt).unwrap();
    m.commit_full_blocks(&table, prompt).unwrap();
    (table, cached)
}

#[test]
fn prefix_hit_shares_blocks_and_counts_tokens() {
    let mut m = manager(16, 4);
    let a: Vec<u32> = (0..10).collect();
    let (ta, cached) = run_prompt(&mut m, &a);
    assert_eq!((cached, ta.num_blocks()), (0, 3));
    let b = [&a[..8], &[99, 98, 97]].concat();
    let (tb, cached) = m.allocate_prompt(&b).unwrap();
    assert_eq!(cached, 8);
    assert_eq!(tb.0[..2], ta.0[..2]);
    assert_ne!(tb.0[2], ta.0[2]);
    assert_eq!(
        [m.ref_count(ta.0[0]), m.ref_count(ta.0[1]), m.ref_count(ta.0[2])],
        [2, 2, 1]
    );
    let s = m.stats();
    assert_eq!((s.prefix_query_tokens, s.prefix_hit_tokens), (21, 8));
    assert_eq!((s.used_blocks, s.cached_blocks), (4, 2));
    assert!((s.usage() - 0.25).abs() < 1e-12);
}

#[test]
fn hit_leaves_at_least_the_last_token_to_compute() {
    let mut m = manager(16, 4);
    let a: Vec<u32> = (0..8).collect();
    let (mut ta, _) = run_prompt(&mut m, &a);
    m.free(&mut ta);
    // The same 8 tokens: both blocks are cached, but only 4 tokens may be skipped.
    let (mut t, cached) = m.allocate_prompt(&a).unwrap();
    assert_eq!((cached, t.num_blocks()), (4, 2));
    m.free(&mut t);
    let (mut t, cached) = m.allocate_prompt(&[&a[..], &[8]].concat()).unwrap();
    assert_eq!(cached, 8);
    m.free(&mut t);
    assert_eq!(m.allocate_prompt(&a[..1]).unwrap().1, 0);
    assert!(matches!(
        m.allocate_prompt(&[]),
        Err(EngineError::InvalidBatch(_))
    ));
}

#[test]
fn eviction_takes_free_blocks_first_then_the_least_recently_released() {
    let mut m = manager(4, 2);
    let mut cached_block = HashMap::new();
    for t in [1u32, 2, 3] {
        let (mut table, _) = run_prompt(&mut m, &[t, t]);
        cached_block.insert(t, table.0[0]);
        m.free(&mut table);
    }
    assert_eq!((m.stats().free_blocks, m.stats().evictable_blocks), (1, 3));
    // Touch [1, 1]: it becomes the most recently released.
    let (mut t, cached) = m.allocate_prompt(&[1, 1, 5]).unwrap();
    assert_eq!((cached, t.0[0]), (2, cached_block[&1]));
    m.free(&mut t);
    // Three fresh blocks: the free one, then [2, 2] and [3, 3] are evicted, [1, 1] survives.
    let mut big = BlockTable::default();
    m.ensure_capacity(&mut big, 6).unwrap();
    assert!(!m.is_cached(cached_block[&2]) && !m.is_cached(cached_block[&3]));
    assert!(m.is_cached(cached_block[&1]));
    assert!(big.0.contains(&cached_block[&2]) && big.0.contains(&cached_block[&3]));
    m.free(&mut big);
    assert_eq!(m.allocate_prompt(&[2, 2, 9]).unwrap().1, 0);
    assert_eq!(m.allocate_prompt(&[1, 1, 9]).unwrap().1, 2);
    m.check_consistency().unwrap();
}

#[test]
fn copy_on_write_only_for_shared_blocks() {
    let mut m = manager(16, 4);
    let (mut t1, _) = run_prompt(&mut m, &[0, 1, 2, 3, 4, 5]);
    let mut t2 = m.fork(&t1).unwrap();
    let (b0, b1) = (t1.0[0], t1.0[1]);
    assert_eq!((m.ref_count(b0), m.ref_count(b1)), (2, 2));
    // Branch 1 appends into the shared partial block: it gets a copy.
    let copies = m.prepare_write(&mut t1, 6, 1).unwrap();
    assert_eq!(copies, vec![(b1, t1.0[1])]);
    assert_ne!(t1.0[1], b1);
    assert_eq!((m.ref_count(b1), m.ref_count(t1.0[1])), (1, 1));
    // Branch 2 now owns the original alone: no copy.
    assert!(m.prepare_write(&mut t2, 6, 1).unwrap().is_empty());
    assert_eq!(t2.0[1], b1);
    // Growing into new blocks copies nothing.
    assert!(m.prepare_write(&mut t1, 7, 3).unwrap().is_empty());
    assert_eq!(t1.num_blocks(), 3);
    // Rewriting the shared, cached full block 0 copies it; the original stays cached.
    assert!(m.is_cached(b0));
    let copies = m.prepare_write(&mut t2, 2, 1).unwrap();
    assert_eq!(copies, vec![(b0, t2.0[0])]);
    assert!(m.is_cached(b0) && !m.is_cached(t2.0[0]));
    // Rewriting a cached block held alone takes it out of the cache (its content changes).
    assert!(m.prepare_write(&mut t1, 1, 1).unwrap().is_empty());
    assert!(!m.is_cached(b0));
    m.free(&mut t1);
    m.free(&mut t2);
    assert_eq!(m.num_free_blocks(), 16);
    m.check_consistency().unwrap();
}

#[test]
fn hash_collision_is_not_a_hit() {
    let mut m = manager(16, 4).with_block_hasher(|_, _| BlockHash(7));
    let (ta, _) = run_prompt(&mut m, &[1, 2, 3, 4, 9]);
    assert!(m.is_cached(ta.0[0]));
    // Same hash, other tokens: a miss, and the second block is not registered over the first.
    let (tb, cached) = run_prompt(&mut m, &[5, 6, 7, 8, 9]);
    assert_eq!(cached, 0);
    assert!(!m.is_cached(tb.0[0]));
    // The genuine prefix still hits.
    assert_eq!(m.allocate_prompt(&[1, 2, 3, 4, 0]).unwrap().1, 4);
    m.check_consistency().unwrap();
}

#[test]
fn parent_hash_is_compared_too() {
    // A hasher blind to the parent: [5, 6, 7, 8] hashes alike after any first block.
    let mut m = manager(16, 4).with_block_hasher(|_, tokens| default_block_hash(None, tokens));
    run_prompt(&mut m, &[1, 1, 1, 1, 5, 6, 7, 8]);
    run_prompt(&mut m, &[2, 2, 2, 2, 5, 6, 7, 8]);
    // Block 1 of the [2, 2, 2, 2] prefix was never cached; the [1, 1, 1, 1] one must not match.
    assert_eq!(m.allocate_prompt(&[2, 2, 2, 2, 5, 6, 7, 8, 0]).unwrap().1, 4);
    assert_eq!(m.allocate_prompt(&[1, 1, 1, 1, 5, 6, 7, 8, 0]).unwrap().1, 8);
}

#[test]
fn allocation_is_all_or_nothing_and_respects_the_watermark() {
    let mut m = manager(10, 4).with_watermark_blocks(2);
    assert!(m.can_allocate(8) && !m.can_allocate(9));
    let (mut t, _) = run_prompt(&mut m, &(0..30).collect::<Vec<_>>());
    let before = m.stats();
    let err = m.allocate_prompt(&(100..120).collect::<Vec<_>>()).unwrap_err();
    assert!(
        matches!(err, EngineError::OutOfBlocks { needed: 5, free: 2 }),
        "{err}"
    );
    assert!(m.ensure_capacity(&mut t, 60).is_err());
    assert_eq!(t.num_blocks(), 8);
    let mut fork = m.fork(&t).unwrap();
    assert!(
        m.prepare_write(&mut fork, 0, 30).is_err(),
        "8 copies do not fit in 2 blocks"
    );
    m.free(&mut fork);
    assert_eq!(m.stats(), before);
    assert_eq!(m.num_blocks_to_allocate(&(0..32).collect::<Vec<_>>()), 1);
    m.free(&mut t);
    // All 7 full blocks cached and evictable: reviving them costs blocks too.
    assert_eq!(m.num_blocks_to_allocate(&(0..32).collect::<Vec<_>>()), 8);
    assert_eq!(m.num_free_blocks(), 10);
}

#[test]
fn commit_is_idempotent_and_checked() {
    let mut m = manager(8, 4);
    let tokens: Vec<u32> = (0..9).collect();
    let (t, _) = run_prompt(&mut m, &tokens);
    let once = m.stats();
    m.commit_full_blocks(&t, &tokens).unwrap();
    m.commit_full_blocks(&t, &tokens[..5]).unwrap();
    assert_eq!(m.stats(), once);
    assert_eq!(once.cached_blocks, 2);
    assert!(m.commit_full_blocks(&t, &(0..13).collect::<Vec<_>>()).is_err());
}

#[test]
fn prefix_caching_off_caches_nothing() {
    let mut m = manager(8, 4).with_prefix_caching(false);
    let tokens: Vec<u32> = (0..9).collect();
    let (mut t, _) = run_prompt(&mut m, &tokens);
    m.free(&mut t);
    assert_eq!(m.allocate_prompt(&tokens).unwrap().1, 0);
    let s = m.stats();
    assert_eq!(
        (s.cached_blocks, s.evictable_blocks, s.prefix_query_tokens),
        (0, 0, 0)
    );
}

#[test]
fn rejects_bad_configuration_and_unowned_tables() {
    assert!(BlockManager::new(0, 16).is_err() && BlockManager::new(4, 0).is_err());
    let mut m = manager(4, 4);
    assert!(m.fork(&BlockTable(vec![0])).is_err());
    assert!(m.prepare_write(&mut BlockTable(vec![1]), 0, 1).is_err());
    assert!(m.commit_full_blocks(&BlockTable(vec![2]), &[1, 2, 3, 4]).is_err());
    m.check_consistency().unwrap();
}

// ---- Property test -------------------------------------------------------------------------

struct Seq {
    table: BlockTable,
    tokens: Vec<u32>,
    /// Tokens whose K/V are written.
    written: usize,
}

/// The manager plus a model of the live tables and of each slot's content: the token written
/// there and a fingerprint of the whole prefix it was computed with.
struct Sim {
    m: BlockManager,
    rng: StdRng,
    seqs: Vec<Seq>,
    slots: Vec<Option<(u32, u64)>>,
    /// With a colliding hasher a prefix can (as documented) match through a colliding parent
    /// hash: then only each block's own tokens are guaranteed.
    exact_prefixes: bool,
    copies: usize,
    hits: usize,
}

fn fingerprints(tokens: &[u32]) -> Vec<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    tokens
        .iter()
        .map(|&t| {
            h = (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3).rotate_left(17);
            h
        })
        .collect()
}

impl Sim {
    fn bs(&self) -> usize {
        self.m.block_size()
    }

    fn slot(&self, table: &BlockTable, pos: usize) -> usize {
        table.slot(pos, self.bs()).unwrap() as usize
    }

    fn check_content(&self, table: &BlockTable, tokens: &[u32], upto: usize) {
        for (pos, fp) in fingerprints(&tokens[..upto]).into_iter().enumerate() {
            let (tok, got_fp) = self.slots[self.slot(table, pos)].expect("slot never written");
            assert_eq!(tok, tokens[pos], "position {pos} holds another token");
            if self.exact_prefixes {
                assert_eq!(got_fp, fp, "position {pos} was computed with another prefix");
            }
        }
    }

    fn check(&self) {
        self.m.check_consistency().unwrap();
        let mut refs = vec![0u32; self.m.num_blocks()];
        for s in &self.seqs {
            for &b in &s.table.0 {
                refs[b as usize] += 1;
            }
            self.check_content(&s.table, &s.tokens, s.written);
        }
        for (b, &r) in refs.iter().enumerate() {
            assert_eq!(self.m.ref_count(b as u32), r, "block {b}");
        }
        let st = self.m.stats();
        assert_eq!(st.used_blocks, refs.iter().filter(|&&r| r > 0).count());
        assert_eq!(
            st.free_blocks + st.evictable_blocks + st.used_blocks,
            st.num_blocks
        );
    }

    fn new_request(&mut self, prefixes: &[Vec<u32>]) {
        let family = &prefixes[self.rng.random_range(0..prefixes.len())];
        let cut = self.rng.random_range(0..=family.len());
        let extra = self.rng.random_range(1..=2 * self.bs());
        let mut prompt = family[..cut].to_vec();
        prompt.extend((0..extra).map(|_| self.rng.random_range(0..4u32)));
        let cost = self.m.num_blocks_to_allocate(&prompt);
        let before = self.m.stats();
        match self.m.allocate_prompt(&prompt) {
            Ok((table, cached)) => {
                assert!(cost <= before.free_blocks + before.evictable_blocks);
                assert_eq!(
                    self.m.num_free_blocks() + cost,
                    before.free_blocks + before.evictable_blocks
                );
                assert!(cached % self.bs() == 0 && cached < prompt.len());
                assert_eq!(table.num_blocks(), prompt.len().div_ceil(self.bs()));
                self.check_content(&table, &prompt, cached);
                self.hits += usize::from(cached > 0);
                self.seqs.push(Seq {
                    table,
                    tokens: prompt,
                    written: cached,
                });
            }
            Err(EngineError::OutOfBlocks { .. }) => {
                assert!(cost > before.free_blocks + before.evictable_blocks);
                let mut after = self.m.stats();
                after.prefix_query_tokens = before.prefix_query_tokens;
                assert_eq!(after, before);
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn step(&mut self, i: usize) {
        let bs = self.bs();
        let s = &mut self.seqs[i];
        let n = if s.written < s.tokens.len() {
            self.rng.random_range(1..=s.tokens.len() - s.written)
        } else {
            let n = if self.rng.random_bool(0.8) { 1 } else { 3 };
            s.tokens.extend((0..n).map(|_| self.rng.random_range(0..4u32)));
            n
        };
        let first = s.written;
        if self.rng.random_bool(0.2) {
            let lookahead = self.rng.random_range(0..2 * bs);
            if self
                .m
                .ensure_capacity(&mut s.table, first + n + lookahead)
                .is_err()
            {
                return self.preempt(i);
            }
        }
        let shared: Vec<u32> = (first / bs..(first + n).div_ceil(bs).min(s.table.num_blocks()))
            .map(|b| s.table.0[b])
            .filter(|&b| self.m.ref_count(b) > 1)
            .collect();
        let (table_before, stats_before) = (s.table.clone(), self.m.stats());
        let copies = match self.m.prepare_write(&mut s.table, first, n) {
            Ok(c) => c,
            Err(EngineError::OutOfBlocks { .. }) => {
                assert_eq!((&s.table, self.m.stats()), (&table_before, stats_before));
                return self.preempt(i);
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            copies.iter().map(|c| c.0).collect::<Vec<_>>(),
            shared,
            "copies exactly the shared blocks"
        );
        self.copies += copies.len();
        let snapshot = self.slots.clone();
        for &(src, dst) in &copies {
            for o in 0..bs {
                self.slots[dst as usize * bs + o] = snapshot[src as usize * bs + o];
            }
        }
        let s = &self.seqs[i];
        let fps = fingerprints(&s.tokens[..first + n]);
        for (pos, &fp) in fps.iter().enumerate().skip(first) {
            let slot = self.slot(&s.table, pos);
            self.slots[slot] = Some((s.tokens[pos], fp));
        }
        let s = &mut self.seqs[i];
        s.written += n;
        self.m
            .commit_full_blocks(&s.table, &s.tokens[..s.written])
            .unwrap();
        if s.written > 12 * bs {
            self.preempt(i);
        }
    }

    fn preempt(&mut self, i: usize) {
        let mut s = self.seqs.swap_remove(i);
        self.m.free(&mut s.table);
        assert!(s.table.0.is_empty());
    }
}

fn property_run(seed: u64, num_blocks: usize, block_size: usize, colliding: bool) {
    let mut m = manager(num_blocks, block_size);
    if colliding {
        // Few distinct hashes: most lookups meet a block with other tokens or another parent.
        m = m.with_block_hasher(|p, t| BlockHash((p.map_or(0, |h| h.0) * 3 + u128::from(t[0] + t[1])) % 5));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let prefixes: Vec<Vec<u32>> = (0..3)
        .map(|_| {
            (0..rng.random_range(2 * block_size..5 * block_size))
                .map(|_| rng.random_range(0..4))
                .collect()
        })
        .collect();
    let mut sim = Sim {
        m,
        rng,
        seqs: Vec::new(),
        slots: vec![None; num_blocks * block_size],
        exact_prefixes: !colliding,
        copies: 0,
        hits: 0,
    };
    for _ in 0..4000 {
        let roll = sim.rng.random_range(0..100);
        let live = sim.seqs.len();
        if live == 0 || (roll < 25 && live < 12) {
            sim.new_request(&prefixes);
        } else if roll < 70 {
            let i = sim.rng.random_range(0..live);
            sim.step(i);
        } else if roll < 80 && live < 12 {
            let i = sim.rng.random_range(0..live);
            let s = &sim.seqs[i];
            let table = sim.m.fork(&s.table).unwrap();
            let (tokens, written) = (s.tokens.clone(), s.written);
            sim.seqs.push(Seq {
                table,
                tokens,
                written,
            });
        } else if roll < 85 {
            // Roll back (as after rejected speculative tokens): the next step rewrites
            // positions whose blocks may be full and cached.
            let i = sim.rng.random_range(0..live);
            let s = &mut sim.seqs[i];
            s.written -= sim.rng.random_range(0..=s.written.min(2 * block_size));
            s.tokens.truncate(s.written);
        } else {
            let i = sim.rng.random_range(0..live);
            sim.preempt(i);
        }
        sim.check();
    }
    while !sim.seqs.is_empty() {
        sim.preempt(0);
    }
    sim.check();
    assert_eq!(sim.m.num_free_blocks(), num_blocks);
    let st = sim.m.stats();
    eprintln!(
        "seed {seed}: {} prefix hits ({} of {} tokens), {} CoW copies, {} blocks cached at the end",
        sim.hits, st.prefix_hit_tokens, st.prefix_query_tokens, sim.copies, st.cached_blocks
    );
    assert!(
        sim.hits > 100 && sim.copies > 20,
        "the run must exercise caching and CoW"
    );
}

#[test]
fn random_operations_keep_the_bookkeeping_consistent() {
    for seed in 0..4 {
        property_run(seed, 48, 4, false);
    }
    // A tight pool: constant eviction and out-of-blocks paths.
    property_run(10, 20, 2, false);
}

#[test]
fn random_operations_with_a_colliding_hasher_never_return_wrong_tokens() {
    for seed in 0..3 {
        property_run(100 + seed, 48, 4, true);
    }
}
