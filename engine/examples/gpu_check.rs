//! Runs the engine on a device (CUDA when built with `--features cuda`) beside the CPU and prints
//! what a GPU check needs: whether greedy tokens match the CPU's, how far the first step's
//! log-probabilities are apart, and serving throughput through the engine API.
//!
//!     cargo run --release -p wick-engine --features cuda --example gpu_check -- \
//!         [--device cuda:0] [--model PATH] [--dtype FORMAT] [--levels 1,16,64]
//!         [--attention auto|portable] [--phases equivalence,serving,kv-auto] [--json PATH] [--mmq]
//!
//! `--model` takes a GGUF file or a Hugging Face directory. `--json` writes the serving figures
//! (decode tok/s at batch 1, aggregate tok/s per concurrency, GPU memory) for scripts/gpu-check.
//! Every phase reports and goes on when it fails, so one run shows as much as possible.

use std::time::Instant;

use candle_core::Device;
use serde_json::json;
use wick_engine::engine::generate::{greedy, StepOutput};
use wick_engine::engine::EngineEvent;
use wick_engine::kv::block_manager::BlockManager;
use wick_engine::kv::cache::PagedKvCache;
use wick_engine::model::loader::{self, LoadOptions, LoadedModel};
use wick_engine::runner::attention::AttentionImpl;
use wick_engine::runner::{kv_shape, ModelRunner};
use wick_engine::sample::params::SamplingParams;
use wick_engine::source::ModelSource;
use wick_engine::{Engine, EngineConfig, GenerateRequest};

type Error = Box<dyn std::error::Error>;

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "List three colours: red,",
];

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn load(source: &ModelSource, device: &Device, dtype: Option<&str>) -> Result<LoadedModel, Error> {
    let mut opts = LoadOptions {
        device: device.clone(),
        ..LoadOptions::default()
    };
    if let Some(d) = dtype {
        opts = opts.with_format(d)?;
    }
    Ok(loader::load(source, &opts)?)
}

/// Greedy tokens, every step's log-distribution, and the model back.
type GreedyRun = (Vec<u32>, Vec<Vec<f32>>, LoadedModel);

/// Greedy tokens and every step's log-distribution, through the paged path.
fn run_greedy(loaded: LoadedModel, prompt: &[u32], n: usize) -> Result<GreedyRun, Error> {
    let cfg = loaded.config().clone();
    let device = loaded.model.device().clone();
    let cache = PagedKvCache::new(kv_shape(&cfg), 16, 64, loaded.model.dtype(), &device)?;
    let mut runner = ModelRunner::new(loaded.model, cache);
    let mut blocks = BlockManager::new(64, 16)?;
    let mut dists = Vec::new();
    let (tokens, _) = greedy(&mut runner, &mut blocks, prompt, n, &[], |s: &StepOutput| {
        dists.push(s.logprobs.clone())
    })?;
    let loaded = LoadedModel {
        model: runner.into_model(),
        tokenizer: loaded.tokenizer,
        files: loaded.files,
    };
    Ok((tokens, dists, loaded))
}

fn equivalence(source: &ModelSource, device: &Device, dtype: Option<&str>) -> Result<(), Error> {
    let mut cpu = load(source, &Device::Cpu, dtype)?;
    let mut dev = load(source, device, dtype)?;
    println!("| prompt | identical greedy tokens (of 32) | max |logprob diff| step 0 | top-1 margin at divergence |");
    println!("|---|---|---|---|");
    for p in PROMPTS {
        let ids = cpu.tokenizer.encode(p, true)?;
        let (a, da, c) = run_greedy(cpu, &ids, 32)?;
        cpu = c;
        let (b, db, d) = run_greedy(dev, &ids, 32)?;
        dev = d;
        let same = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let diff = da[0]
            .iter()
            .zip(&db[0])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let margin = da.get(same).map_or(f32::NAN, |dist| {
            let mut v = dist.clone();
            v.sort_by(|x, y| y.total_cmp(x));
            v[0] - v[1]
        });
        println!(
            "| {p:?} | {same} | {diff:.2e} | {} |",
            if same == a.len() {
                "-".into()
            } else {
                format!("{margin:.3}")
            }
        );
    }
    Ok(())
}

/// Used and total GPU memory in MiB (None on the CPU).
fn gpu_mib(device: &Device) -> Option<(usize, usize)> {
    let (free, total) = wick_engine::model::device::gpu_memory(device).ok()??;
    Some(((total - free) >> 20, total >> 20))
}

/// Sizes the KV pool from free memory (the default on a GPU), serves one short request from it,
/// and prints the pool. Run it in a process of its own (scripts/gpu-check does): on the H200,
/// loading a model again after this engine's thread had exited failed with
/// CUDA_ERROR_INVALID_CONTEXT, which a server (one engine per process) never does.
fn kv_auto(source: &ModelSource, device: &Device, dtype: Option<&str>) -> Result<serde_json::Value, Error> {
    let before = gpu_mib(device);
    let engine = Engine::new(load(source, device, dtype)?, EngineConfig::default())?;
    let after = gpu_mib(device);
    let prompt = engine.tokenizer().encode("The capital of France is", true)?;
    let mut s = engine.submit(GenerateRequest::new(
        prompt,
        SamplingParams {
            max_tokens: Some(8),
            ..SamplingParams::greedy()
        },
    ))?;
    let mut tokens = 0;
    while let Some(e) = s.blocking_recv() {
        if let EngineEvent::Token(_) = e {
            tokens += 1;
        }
    }
    // The engine publishes its stats after a step, so they are read after the request.
    let stats = engine.stats();
    println!(
        "KV pool sized from free memory (headroom {} MiB): {} blocks; {tokens} tokens served from it; GPU memory (MiB used, total) before {before:?}, with the engine {after:?}",
        wick_engine::model::device::DEFAULT_GPU_HEADROOM_BYTES >> 20,
        stats.num_blocks
    );
    if tokens == 0 {
        return Err("no token came back from the auto-sized pool".into());
    }
    Ok(
        json!({"num_blocks": stats.num_blocks, "tokens": tokens, "gpu_mib_used_before": before.map(|a| a.0), "gpu_mib_used_with_engine": after.map(|a| a.0)}),
    )
}

fn serving(
    source: &ModelSource,
    device: &Device,
    dtype: Option<&str>,
    levels: &[usize],
    attention: AttentionImpl,
) -> Result<serde_json::Value, Error> {
    let loaded = load(source, device, dtype)?;
    let engine = Engine::new(
        loaded,
        EngineConfig {
            kv_cache_bytes: 4 << 30,
            gpu_memory_headroom_bytes: None,
            attention,
            scheduler: wick_engine::sched::scheduler::SchedulerConfig {
                max_num_seqs: 128,
                max_num_batched_tokens: 2048,
            },
            ..EngineConfig::default()
        },
    )?;
    let prompt = |i: usize| -> Result<Vec<u32>, Error> {
        let text = format!("Request {i}: write a long, detailed essay about the history of bridges, rivers and cities, \
                            covering engineering, trade, culture and politics across many centuries and continents.");
        let mut ids = engine.tokenizer().encode(&text, true)?;
        ids.resize(115, 42);
        Ok(ids)
    };
    let params = SamplingParams {
        max_tokens: Some(128),
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    // Warm-up.
    let mut s = engine.submit(GenerateRequest::new(
        prompt(9999)?,
        SamplingParams {
            max_tokens: Some(4),
            ..params.clone()
        },
    ))?;
    while s.blocking_recv().is_some() {}
    println!("| concurrency | output tok/s | mean TTFT ms | mean ITL ms |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    let mut peak_mib = gpu_mib(device);
    for &c in levels {
        let start = Instant::now();
        let streams = (0..c)
            .map(|i| Ok(engine.submit(GenerateRequest::new(prompt(c * 1000 + i)?, params.clone()))?))
            .collect::<Result<Vec<_>, Error>>()?;
        let results: Vec<(f64, f64, usize)> = std::thread::scope(|scope| {
            let handles: Vec<_> = streams
                .into_iter()
                .map(|mut s| {
                    scope.spawn(move || {
                        let (mut first, mut n) = (None, 0usize);
                        while let Some(e) = s.blocking_recv() {
                            if let EngineEvent::Token(_) = e {
                                n += 1;
                                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
                            }
                        }
                        (first.unwrap_or(0.0), start.elapsed().as_secs_f64(), n)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or((0.0, 0.0, 0)))
                .collect()
        });
        let wall = start.elapsed().as_secs_f64();
        let tokens: usize = results.iter().map(|r| r.2).sum();
        let ttft = results.iter().map(|r| r.0).sum::<f64>() / c as f64;
        let itl = results
            .iter()
            .map(|r| (r.1 - r.0) / (r.2.max(2) - 1) as f64)
            .sum::<f64>()
            / c as f64;
        println!(
            "| {c} | {:.1} | {:.1} | {:.2} |",
            tokens as f64 / wall,
            ttft * 1e3,
            itl * 1e3
        );
        rows.push(json!({
            "concurrency": c,
            "output_tok_s": tokens as f64 / wall,
            "mean_ttft_ms": ttft * 1e3,
            "mean_itl_ms": itl * 1e3,
            // One stream's decode rate: the inverse of its inter-token latency.
            "decode_tok_s_per_stream": 1.0 / itl.max(1e-9),
        }));
        peak_mib = peak_mib.max(gpu_mib(device));
    }
    Ok(json!({
        "levels": rows,
        "gpu_mib_used": peak_mib.map(|m| m.0),
        "gpu_mib_total": peak_mib.map(|m| m.1),
        "kv_cache_mib": 4096,
    }))
}

fn main() {
    let device_spec = arg("--device").unwrap_or_else(|| "cuda:0".into());
    let model = arg("--model").map_or_else(wick_engine::default_model_path, Into::into);
    let source = if model.is_dir() {
        ModelSource::HfDirectory(model)
    } else {
        ModelSource::GgufFile(model)
    };
    let dtype = arg("--dtype");
    let levels: Vec<usize> = arg("--levels")
        .unwrap_or_else(|| "1,16,64".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    // wick forces candle's DMMV kernels for quantized weights on CUDA (device.rs); `--mmq` puts
    // candle's MMVQ/MMQ kernels back, to compare.
    let mmq = std::env::args().any(|a| a == "--mmq");
    let phases = arg("--phases").unwrap_or_else(|| "equivalence,serving".into());
    let attention = match arg("--attention").as_deref() {
        None | Some("auto") => AttentionImpl::Auto,
        Some("portable") => AttentionImpl::Portable,
        Some(other) => {
            println!("--attention {other}: expected auto or portable");
            std::process::exit(2);
        }
    };
    let device = match wick_engine::device_from_spec(&device_spec) {
        Ok(d) => d,
        Err(e) => {
            println!("device {device_spec}: {e}");
            std::process::exit(1);
        }
    };
    if mmq {
        #[cfg(feature = "cuda")]
        candle_core::quantized::cuda::set_force_dmmv(false);
        println!("candle quantized matmul: MMVQ/MMQ (candle's default)");
    }
    println!(
        "device {device_spec}, model {source:?}, format {}, attention {attention:?}",
        dtype.as_deref().unwrap_or("as stored")
    );
    let mut report = json!({
        "device": device_spec,
        "model": format!("{source:?}"),
        "format": dtype.clone().unwrap_or_else(|| "as stored".into()),
        "attention": format!("{attention:?}"),
    });
    if phases.contains("equivalence") {
        println!("\n## equivalence with the CPU");
        if let Err(e) = equivalence(&source, &device, dtype.as_deref()) {
            println!("FAILED: {e}");
        }
    }
    if phases.contains("kv-auto") {
        println!("\n## KV pool from free GPU memory");
        match kv_auto(&source, &device, dtype.as_deref()) {
            Ok(v) => report["kv_auto"] = v,
            Err(e) => println!("FAILED: {e}"),
        }
    }
    if phases.contains("serving") {
        println!("\n## serving through the engine API (115-token prompts, 128 tokens, greedy)");
        match serving(&source, &device, dtype.as_deref(), &levels, attention) {
            Ok(v) => report["serving"] = v,
            Err(e) => println!("FAILED: {e}"),
        }
    }
    if let Some(path) = arg("--json") {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            println!("could not write {path}: {e}");
        }
    }
}
