//! Prefill and decode throughput of the batched paged forward on the default model, per weight
//! format and batch size. Not a test: run on an idle machine and compare ratios within one run.
//!
//!     cargo bench -p wick-engine --bench forward [-- FORMAT...]
//!
//! FORMAT: q4_1 or stored (as shipped), q8_0 and q4_0 (re-quantized at load), f32, f16, bf16
//! (dequantized at load). Threads: RAYON_NUM_THREADS. Shape: WICK_BENCH_PROMPT (prompt tokens per
//! sequence, 128), WICK_BENCH_BATCHES (e.g. `1,8`; default 1, 8, 32), WICK_BENCH_ROUNDS (prefills timed, 1). KV pool: WICK_BENCH_KV=f16. Another GGUF than the default model:
//! WICK_BENCH_MODEL=path (e.g. the Qwen2 fallback model, `WICK_BENCH_MODEL=$(scripts/fetch-fallback-model)`).

/// The allocator the `wick` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use candle_core::Device;
use wick_engine::kv::cache::{BlockTable, PagedKvCache};
use wick_engine::model::loader::{self, LoadOptions};
use wick_engine::runner::{kv_shape, LogitsWanted, ModelRunner, SequenceChunk};
use wick_engine::source::ModelSource;

const DECODE_STEPS: usize = 32;
const BLOCK: usize = 16;

/// Prompt tokens per sequence: 128, or `WICK_BENCH_PROMPT`.
fn prompt_len() -> usize {
    env_usize("WICK_BENCH_PROMPT").unwrap_or(128)
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn bench(format: &str, batches: &[usize]) {
    let prompt_tokens = prompt_len();
    // WICK_BENCH_KV=f16: an f16 KV pool (EngineConfig::kv_cache_dtype).
    let kv_dtype = std::env::var("WICK_BENCH_KV").ok().map(|v| match v.as_str() {
        "f16" => candle_core::DType::F16,
        "f32" => candle_core::DType::F32,
        other => panic!("WICK_BENCH_KV={other}: f16 or f32"),
    });
    let opts = match format {
        "q4_1" | "stored" => LoadOptions::default(),
        other => LoadOptions::default().with_format(other).unwrap(),
    };
    let path = std::env::var_os("WICK_BENCH_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(wick_engine::default_model_path);
    let loaded = loader::load(&ModelSource::GgufFile(path), &opts)
        .expect("run scripts/fetch-default-model (or set WICK_BENCH_MODEL to a GGUF)");
    let cfg = loaded.config().clone();
    let max_batch = *batches.iter().max().unwrap();
    let per_seq = (prompt_tokens + DECODE_STEPS).div_ceil(BLOCK);
    let cache = PagedKvCache::new(
        kv_shape(&cfg),
        BLOCK,
        per_seq * max_batch,
        kv_dtype.unwrap_or(loaded.model.dtype()),
        &Device::Cpu,
    )
    .unwrap();
    let mut runner = ModelRunner::new(loaded.model, cache);
    let tables: Vec<BlockTable> = (0..max_batch)
        .map(|s| BlockTable(((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect()))
        .collect();
    let prompt: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| 100 + (i * 7919) % 40000)
        .collect();
    // Warm-up (allocations, rayon pool).
    runner
        .execute(&[SequenceChunk {
            tokens: &prompt,
            num_cached: 0,
            block_table: &tables[0],
            logits: LogitsWanted::Last,
        }])
        .unwrap();
    for &b in batches {
        let chunks: Vec<SequenceChunk> = (0..b)
            .map(|s| SequenceChunk {
                tokens: &prompt,
                num_cached: 0,
                block_table: &tables[s],
                logits: LogitsWanted::Last,
            })
            .collect();
        // WICK_BENCH_ROUNDS: prefill this many times (the same slots rewritten), mean rate.
        let rounds = env_usize("WICK_BENCH_ROUNDS").unwrap_or(1).max(1);
        let t = Instant::now();
        for _ in 0..rounds {
            runner.execute(&chunks).unwrap();
        }
        let prefill = (rounds * b * prompt_tokens) as f64 / t.elapsed().as_secs_f64();
        let next = [42u32];
        let t = Instant::now();
        for step in 0..DECODE_STEPS {
            let chunks: Vec<SequenceChunk> = (0..b)
                .map(|s| SequenceChunk {
                    tokens: &next,
                    num_cached: prompt_tokens + step,
                    block_table: &tables[s],
                    logits: LogitsWanted::Last,
                })
                .collect();
            runner.execute(&chunks).unwrap();
        }
        let decode = (b * DECODE_STEPS) as f64 / t.elapsed().as_secs_f64();
        println!("| {format:5} | {b:5} | {prefill:8.0} | {decode:8.1} |");
    }
    verify_probe(&mut runner, &tables[0], prompt_tokens);
}

/// WICK_BENCH_VERIFY=1,2,4,5: one sequence's chunk of R new tokens with logits for every row,
/// as speculative verification runs it (the token before and R-1 proposals), after the prompt.
/// Best and mean milliseconds per forward over WICK_BENCH_VERIFY_REPS (20) repetitions, the
/// same slots rewritten; the cost of R rows against one row is what speculation must beat.
/// WICK_BENCH_VERIFY_ARGMAX=1: each row's greedy token from the head instead of its logits, as
/// a greedy verification runs it.
fn verify_probe(runner: &mut ModelRunner, table: &BlockTable, prompt_tokens: usize) {
    let Ok(spec) = std::env::var("WICK_BENCH_VERIFY") else {
        return;
    };
    let rows: Vec<usize> = spec.split(',').filter_map(|r| r.trim().parse().ok()).collect();
    let reps = env_usize("WICK_BENCH_VERIFY_REPS").unwrap_or(20).max(1);
    println!("| verify rows | best ms | mean ms | best / 1 row |");
    println!("|---|---|---|---|");
    let mut one_row = None;
    for &r in &rows {
        let tokens: Vec<u32> = (0..r as u32).map(|i| 500 + i * 31).collect();
        let chunk = [SequenceChunk {
            tokens: &tokens,
            num_cached: prompt_tokens,
            block_table: table,
            logits: LogitsWanted::All,
        }];
        let argmax = std::env::var_os("WICK_BENCH_VERIFY_ARGMAX").is_some();
        let run = |runner: &mut ModelRunner| {
            if argmax {
                runner.execute_argmax(&chunk).map(drop).unwrap()
            } else {
                runner.execute(&chunk).map(drop).unwrap()
            }
        };
        run(runner);
        let mut best = f64::MAX;
        let mut total = 0.0;
        for _ in 0..reps {
            let t = Instant::now();
            run(runner);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            best = best.min(ms);
            total += ms;
        }
        let base = *one_row.get_or_insert(best);
        println!(
            "| {r:4} | {best:7.2} | {:7.2} | {:5.2} |",
            total / reps as f64,
            best / base
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let formats: Vec<&str> = if args.is_empty() {
        vec!["q4_1", "q8_0", "q4_0", "f32", "f16", "bf16"]
    } else {
        args.iter().map(|s| s.as_str()).collect()
    };
    println!(
        "prompt {} tokens per sequence, {DECODE_STEPS} decode steps, threads: {}",
        prompt_len(),
        rayon_threads()
    );
    // WICK_BENCH_BATCHES=1,8: other batch sizes than 1, 8 and 32.
    let batches: Vec<usize> = std::env::var("WICK_BENCH_BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .filter(|b: &Vec<usize>| !b.is_empty())
        .unwrap_or_else(|| vec![1, 8, 32]);
    println!("| format | batch | prefill tok/s | decode tok/s |");
    println!("|---|---|---|---|");
    for f in formats {
        bench(f, &batches);
    }
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into())
}
