//! Serving throughput and latency through the engine API (`Engine::submit`) on the default
//! model: `C` clients each submit requests back to back (~115-token unique prompts, 128 output
//! tokens, greedy, EOS ignored) and read the events as they stream. Not a test: run on an idle
//! machine, compare ratios within one run.
//!
//!     cargo bench -p wick-engine --bench serving [-- C...]        (default: 1 4 16 64)
//!
//! Knobs (environment): RAYON_NUM_THREADS (threads of the forward), WICK_BENCH_MAX_NUM_SEQS,
//! WICK_BENCH_MAX_BATCHED_TOKENS, WICK_BENCH_OUTPUT_TOKENS. The prompts are written to
//! `target/serving-prompts.json`, so `scripts/bench-llama-server` can send llama.cpp's server the
//! very same token ids.

/// The allocator the `wick` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use wick_engine::engine::EngineEvent;
use wick_engine::model::loader::{self, LoadOptions};
use wick_engine::sample::params::SamplingParams;
use wick_engine::sched::scheduler::SchedulerConfig;
use wick_engine::source::ModelSource;
use wick_engine::{Engine, EngineConfig, GenerateRequest};

const PROMPT_TOKENS: usize = 115;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Unique prompts: numbered chat-like requests over a rotating vocabulary, cut to 115 tokens.
fn prompts(engine: &Engine, n: usize) -> Vec<Vec<u32>> {
    const WORDS: &[&str] = &[
        "river", "engine", "garden", "history", "planet", "music", "bridge", "winter", "market", "science",
        "forest", "language", "ocean", "city", "machine", "story", "mountain", "light",
    ];
    (0..n)
        .map(|i| {
            let mut text = format!("Request {i}. Please write a detailed essay about");
            let mut k = i * 7 + 3;
            while text.len() < PROMPT_TOKENS * 8 {
                text.push(' ');
                text.push_str(WORDS[k % WORDS.len()]);
                text.push_str(if k % 5 == 0 { ", and" } else { " and the" });
                k = k * 31 + 17;
            }
            let mut ids = engine.tokenizer().encode(&text, true).expect("tokenize");
            ids.truncate(PROMPT_TOKENS);
            ids
        })
        .collect()
}

struct RequestTiming {
    ttft: Duration,
    total: Duration,
    tokens: usize,
}

fn one_request(engine: &Engine, prompt: Vec<u32>, output_tokens: usize) -> RequestTiming {
    let params = SamplingParams {
        max_tokens: Some(output_tokens),
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    let start = Instant::now();
    let mut stream = engine
        .submit(GenerateRequest::new(prompt, params))
        .expect("submit");
    let mut ttft = None;
    let mut tokens = 0;
    while let Some(event) = stream.blocking_recv() {
        match event {
            EngineEvent::Token(_) => {
                tokens += 1;
                ttft.get_or_insert_with(|| start.elapsed());
            }
            EngineEvent::Done(_) => break,
            EngineEvent::Error(e) => panic!("engine error: {e}"),
            EngineEvent::Finished { .. } | EngineEvent::PromptLogprobs(_) => {}
        }
    }
    RequestTiming {
        ttft: ttft.unwrap_or_default(),
        total: start.elapsed(),
        tokens,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let levels: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let levels = if levels.is_empty() {
        vec![1, 4, 16, 64]
    } else {
        levels
    };
    let output_tokens = env_usize("WICK_BENCH_OUTPUT_TOKENS", 128);
    let scheduler = SchedulerConfig {
        max_num_seqs: env_usize("WICK_BENCH_MAX_NUM_SEQS", SchedulerConfig::default().max_num_seqs),
        max_num_batched_tokens: env_usize(
            "WICK_BENCH_MAX_BATCHED_TOKENS",
            SchedulerConfig::default().max_num_batched_tokens,
        ),
    };
    let loaded = loader::load(
        &ModelSource::GgufFile(wick_engine::default_model_path()),
        &LoadOptions::default(),
    )
    .expect("run scripts/fetch-default-model");
    let engine = Engine::new(
        loaded,
        EngineConfig {
            scheduler,
            ..EngineConfig::default()
        },
    )
    .expect("engine");
    let rounds = |c: usize| if c >= 16 { 1 } else { 8usize.div_ceil(c).max(2) };
    // At least enough for the default levels, so the prompts file does not depend on the
    // levels of the last run; the last prompt is the warm-up's.
    let total: usize = levels.iter().map(|&c| c * rounds(c)).sum::<usize>().max(127);
    let all_prompts = prompts(&engine, total + 1);
    let json = serde_json::to_string(&all_prompts).expect("json");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "../target".into());
    let _ = std::fs::write(format!("{target}/serving-prompts.json"), json);

    println!(
        "serving bench: {} threads, max_num_seqs {}, max_num_batched_tokens {}, {PROMPT_TOKENS}-token prompts, \
         {output_tokens} output tokens",
        rayon::current_num_threads(),
        scheduler.max_num_seqs,
        scheduler.max_num_batched_tokens
    );
    // Warm-up.
    one_request(&engine, all_prompts[total].clone(), 8);
    println!("| concurrency | requests | output tok/s | mean TTFT s | p50 latency s | mean ITL ms | steps | preemptions |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut next = 0;
    for &c in &levels {
        let before = engine.stats();
        let per_client = rounds(c);
        let start = Instant::now();
        let timings: Vec<RequestTiming> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..c)
                .map(|client| {
                    let engine = &engine;
                    let prompts: Vec<Vec<u32>> = (0..per_client)
                        .map(|r| all_prompts[next + client * per_client + r].clone())
                        .collect();
                    s.spawn(move || {
                        prompts
                            .into_iter()
                            .map(|p| one_request(engine, p, output_tokens))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("client"))
                .collect()
        });
        let wall = start.elapsed().as_secs_f64();
        next += c * per_client;
        let after = engine.stats();
        let tokens: usize = timings.iter().map(|t| t.tokens).sum();
        let mut latency: Vec<f64> = timings.iter().map(|t| t.total.as_secs_f64()).collect();
        latency.sort_by(f64::total_cmp);
        let n = timings.len() as f64;
        let ttft = timings.iter().map(|t| t.ttft.as_secs_f64()).sum::<f64>() / n;
        let itl = timings
            .iter()
            .map(|t| (t.total - t.ttft).as_secs_f64() / (t.tokens.max(2) - 1) as f64)
            .sum::<f64>()
            / n;
        println!(
            "| {c} | {} | {:.1} | {:.2} | {:.2} | {:.1} | {} | {} |",
            timings.len(),
            tokens as f64 / wall,
            ttft,
            percentile(&latency, 0.5),
            itl * 1e3,
            after.steps - before.steps,
            after.num_preemptions - before.num_preemptions,
        );
    }
}
