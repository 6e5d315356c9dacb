//! Prefix caching and copy-on-write forks with the real model: K/V reused from the cache (or
//! copied into a fork's private block) must give exactly the logits of computing them afresh.
//! The CPU attention kernel is row-deterministic, so the default quantized model is compared
//! to the bit.

mod common;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wick_engine::kv::block_manager::BlockManager;
use wick_engine::kv::cache::{BlockTable, PagedKvCache};
use wick_engine::runner::{kv_shape, LogitsWanted, ModelRunner, SequenceChunk};

const BLOCK: usize = 16;
const NUM_BLOCKS: usize = 64;

fn runner() -> ModelRunner {
    let loaded = common::load_default(None);
    let cfg = loaded.config().clone();
    let cache = PagedKvCache::new(
        kv_shape(&cfg),
        BLOCK,
        NUM_BLOCKS,
        loaded.model.dtype(),
        &Device::Cpu,
    )
    .unwrap();
    ModelRunner::new(loaded.model, cache)
}

fn random_tokens(rng: &mut StdRng, vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(17..vocab as u32)).collect()
}

/// Runs `tokens[from..]` of a sequence whose first `from` tokens are cached; last-row logits.
fn run(runner: &mut ModelRunner, table: &BlockTable, tokens: &[u32], from: usize) -> Tensor {
    let chunk = SequenceChunk {
        tokens: &tokens[from..],
        num_cached: from,
        block_table: table,
        logits: LogitsWanted::Last,
    };
    runner.execute(&[chunk]).unwrap().squeeze(0).unwrap()
}

fn assert_bit_identical(got: &Tensor, want: &Tensor, what: &str) {
    let (got, want) = (got.to_vec1::<f32>().unwrap(), want.to_vec1::<f32>().unwrap());
    let differing = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differing,
        0,
        "{what}: {differing} logits differ (max |diff| {})",
        {
            got.iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        }
    );
}

#[test]
fn shared_prefix_is_not_recomputed_and_gives_identical_logits() {
    let mut runner = runner();
    let vocab = runner.model().config().vocab_size;
    let mut rng = StdRng::seed_from_u64(11);
    let prefix = random_tokens(&mut rng, vocab, 200);
    let first = [&prefix[..], &random_tokens(&mut rng, vocab, 23)].concat();
    let mut second = [&prefix[..], &random_tokens(&mut rng, vocab, 30)].concat();
    second[200] = first[200] + 1; // Diverge right after the shared prefix.

    let mut blocks = BlockManager::new(NUM_BLOCKS, BLOCK).unwrap();
    // The earlier request: prefill, two decode steps, committed as it goes, then finished.
    let (mut t1, cached) = blocks.allocate_prompt(&first).unwrap();
    assert_eq!(cached, 0);
    let mut tokens = first.clone();
    let mut done = 0;
    for _ in 0..3 {
        blocks.ensure_capacity(&mut t1, tokens.len()).unwrap();
        let logits = run(&mut runner, &t1, &tokens, done);
        done = tokens.len();
        blocks.commit_full_blocks(&t1, &tokens).unwrap();
        tokens.push(wick_engine::sample::sampler::argmax(
            &logits.to_vec1::<f32>().unwrap(),
        ));
    }
    let first_blocks = t1.0.clone();
    blocks.free(&mut t1);
    assert_eq!(blocks.num_free_blocks(), NUM_BLOCKS);

    // The second request reuses the 12 full blocks of the prefix and computes 38 tokens.
    let (t2, cached) = blocks.allocate_prompt(&second).unwrap();
    assert!(cached >= 192, "only {cached} tokens cached");
    assert_eq!(cached, 192);
    assert_eq!(t2.0[..12], first_blocks[..12]);
    let stats = blocks.stats();
    assert_eq!(stats.prefix_hit_tokens, 192);
    assert_eq!(stats.prefix_query_tokens, (first.len() + second.len()) as u64);
    let with_cache = run(&mut runner, &t2, &second, cached);

    // Caching off: the whole prompt computed into fresh blocks.
    let mut off = BlockManager::new(NUM_BLOCKS, BLOCK)
        .unwrap()
        .with_prefix_caching(false);
    let (t3, cached) = off.allocate_prompt(&second).unwrap();
    assert_eq!(cached, 0);
    let without_cache = run(&mut runner, &t3, &second, 0);
    assert_bit_identical(&with_cache, &without_cache, "cached prefix vs full prefill");
}

#[test]
fn forked_branches_match_unforked_runs() {
    let mut runner = runner();
    let vocab = runner.model().config().vocab_size;
    let mut rng = StdRng::seed_from_u64(12);
    let prompt = random_tokens(&mut rng, vocab, 40); // Block 2 holds 8 of 16 tokens.
                                                     // Twelve decode steps each: both branches write into the shared block, then cross into new ones.
    let branches = [
        random_tokens(&mut rng, vocab, 12),
        random_tokens(&mut rng, vocab, 12),
    ];

    let mut blocks = BlockManager::new(NUM_BLOCKS, BLOCK).unwrap();
    let (parent, _) = blocks.allocate_prompt(&prompt).unwrap();
    run(&mut runner, &parent, &prompt, 0);
    blocks.commit_full_blocks(&parent, &prompt).unwrap();
    let child = blocks.fork(&parent).unwrap();
    assert!(parent.0.iter().all(|&b| blocks.ref_count(b) == 2));
    let mut tables = [parent, child];
    let mut seqs = [prompt.clone(), prompt.clone()];
    let mut copies = Vec::new();
    let mut forked_logits = [Vec::new(), Vec::new()];
    for next in branches[0].iter().zip(&branches[1]).map(|(&x, &y)| [x, y]) {
        for (b, table) in tables.iter_mut().enumerate() {
            let pos = seqs[b].len();
            seqs[b].push(next[b]);
            let pairs = blocks.prepare_write(table, pos, 1).unwrap();
            runner.cache().copy_blocks(&pairs).unwrap();
            copies.extend(pairs);
        }
        // Both branches decode in one batch.
        let chunks: Vec<SequenceChunk> = (0..2)
            .map(|b| SequenceChunk {
                tokens: &seqs[b][seqs[b].len() - 1..],
                num_cached: seqs[b].len() - 1,
                block_table: &tables[b],
                logits: LogitsWanted::Last,
            })
            .collect();
        let logits = runner.execute(&chunks).unwrap();
        for (b, out) in forked_logits.iter_mut().enumerate() {
            out.push(logits.get(b).unwrap());
            blocks.commit_full_blocks(&tables[b], &seqs[b]).unwrap();
        }
    }
    // Only the first write into the shared partial block copied it.
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(tables[0].0[..2], tables[1].0[..2]);
    assert_ne!(tables[0].0[2], tables[1].0[2]);

    // Each branch alone, never forked, same chunks, caching off.
    let mut plain = BlockManager::new(NUM_BLOCKS, BLOCK)
        .unwrap()
        .with_prefix_caching(false);
    for b in 0..2 {
        let mut table = BlockTable::default();
        plain.ensure_capacity(&mut table, seqs[b].len()).unwrap();
        run(&mut runner, &table, &prompt, 0);
        for (step, got) in forked_logits[b].iter().enumerate() {
            let len = prompt.len() + step + 1;
            let want = run(&mut runner, &table, &seqs[b][..len], len - 1);
            assert_bit_identical(got, &want, &format!("branch {b} step {step}"));
        }
        plain.free(&mut table);
    }
    for t in &mut tables {
        blocks.free(t);
    }
    assert_eq!(blocks.num_free_blocks(), NUM_BLOCKS);
}
