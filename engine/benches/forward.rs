//! Prefill and decode throughput of the batched paged forward on the default model, per weight
//! format and batch size. Not a test: run on an idle machine and compare ratios within one run.
//!
//!     cargo bench -p wick-engine --bench forward [-- FORMAT...]
//!
//! FORMAT: q4_1 or stored (as shipped), q8_0 and q4_0 (re-quantized at load), f32, f16, bf16
//! (dequantized at load). Threads: RAYON_NUM_THREADS. Another GGUF than the default model:
//! WICK_BENCH_MODEL=path (e.g. the Qwen2 fallback model, `WICK_BENCH_MODEL=$(scripts/fetch-fallback-model)`).

use std::time::Instant;

use candle_core::Device;
use wick_engine::kv::cache::{BlockTable, PagedKvCache};
use wick_engine::model::loader::{self, LoadOptions};
use wick_engine::runner::{kv_shape, LogitsWanted, ModelRunner, SequenceChunk};
use wick_engine::source::ModelSource;

const PROMPT: usize = 128;
const DECODE_STEPS: usize = 32;
const BLOCK: usize = 16;

fn bench(format: &str, batches: &[usize]) {
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
    let per_seq = (PROMPT + DECODE_STEPS).div_ceil(BLOCK);
    let cache = PagedKvCache::new(
        kv_shape(&cfg),
        BLOCK,
        per_seq * max_batch,
        loaded.model.dtype(),
        &Device::Cpu,
    )
    .unwrap();
    let mut runner = ModelRunner::new(loaded.model, cache);
    let tables: Vec<BlockTable> = (0..max_batch)
        .map(|s| BlockTable(((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect()))
        .collect();
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 100 + (i * 7919) % 40000).collect();
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
        let t = Instant::now();
        runner.execute(&chunks).unwrap();
        let prefill = (b * PROMPT) as f64 / t.elapsed().as_secs_f64();
        let next = [42u32];
        let t = Instant::now();
        for step in 0..DECODE_STEPS {
            let chunks: Vec<SequenceChunk> = (0..b)
                .map(|s| SequenceChunk {
                    tokens: &next,
                    num_cached: PROMPT + step,
                    block_table: &tables[s],
                    logits: LogitsWanted::Last,
                })
                .collect();
            runner.execute(&chunks).unwrap();
        }
        let decode = (b * DECODE_STEPS) as f64 / t.elapsed().as_secs_f64();
        println!("| {format:5} | {b:5} | {prefill:8.0} | {decode:8.1} |");
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
        "prompt {PROMPT} tokens per sequence, {DECODE_STEPS} decode steps, threads: {}",
        rayon_threads()
    );
    println!("| format | batch | prefill tok/s | decode tok/s |");
    println!("|---|---|---|---|");
    for f in formats {
        bench(f, &[1, 8, 32]);
    }
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into())
}
