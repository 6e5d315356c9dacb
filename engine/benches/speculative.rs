//! Speculative decoding through the engine API: single-stream decode speed and acceptance for
//! the target alone, with a draft model, and with prompt lookup (n-gram), on code,
//! summarisation and chat prompts; then aggregate throughput at several stream counts (the first
//! round apart from the later ones: there the payoff measurement still learns). The
//! engines run side by side in alternating rounds (the machine is noisy: compare the
//! means within one run). Greedy outputs are compared across modes: a difference is reported.
//!
//!     cargo bench -p wick-engine --bench speculative                 (pair a: default model)
//!     WICK_BENCH_PAIR=qwen cargo bench -p wick-engine --bench speculative
//!
//! Pairs: `default`: the default model dequantized to f32 as the target, the same GGUF kept
//! quantized (Q4_1) as its draft; `qwen`: Qwen2.5-Coder-1.5B-Instruct Q4_K_M with the 0.5B as
//! its draft (`scripts/fetch-fallback-model` and `scripts/fetch-fallback-model --1.5b`).
//! Knobs: WICK_BENCH_ROUNDS (3), WICK_BENCH_OUTPUT_TOKENS (128), WICK_BENCH_STREAMS ("4,16"),
//! WICK_BENCH_REQUESTS (requests per stream in the aggregate, 3), WICK_BENCH_MODES (`a,b`: only
//! the modes whose names contain one, besides the target alone), WICK_BENCH_K
//! (num_speculative_tokens, 3), WICK_BENCH_MAX_BATCH (speculation's batch limit;
//! default: the engine's), WICK_BENCH_MEASURE_PAYOFF (0: speculate in every step instead of
//! where it is measured to pay), WICK_BENCH_DRAFT_VOCAB (N: a fourth mode, the draft proposing
//! only among the first N ids), WICK_BENCH_SINGLE / WICK_BENCH_AGGREGATE (0 skips that part),
//! WICK_BENCH_DRAFT_FORMAT (`q4_0`, ...: a further mode, the draft re-quantized to it at load,
//! with WICK_BENCH_DRAFT_VOCAB's restriction where that is set), WICK_BENCH_UNGUESSED (1: a
//! further mode, that draft without prompt lookup's guesses), WICK_BENCH_UNMEASURED (1: a
//! further mode, that draft speculating in every step whatever the payoff), WICK_BENCH_CONTROL
//! (1: a further mode, a second target alone: the spread between engines), WICK_BENCH_DEVICE (`cpu`,
//! `cuda:N`; both models load there).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wick_engine::engine::{EngineEvent, EngineStats};
use wick_engine::model::loader::{self, LoadOptions, LoadedModel};
use wick_engine::model::weights::WeightFormat;
use wick_engine::sample::params::SamplingParams;
use wick_engine::source::ModelSource;
use wick_engine::spec::SpeculativeConfig;
use wick_engine::{DType, Engine, EngineConfig, GenerateRequest};

const SUMMARY_SOURCE: &str = "The city council met on Tuesday to discuss the new public \
library. The library will be built on the site of the old train station, next to the river. \
Construction is expected to start in March and to take about two years. The council approved \
a budget of twelve million dollars for the project. The new library will have a children's \
wing, a makerspace with 3D printers, and a rooftop garden that is open to the public. Several \
residents spoke in favour of the plan, saying the old library was too small and often crowded. \
One resident raised concerns about parking near the river, and the council agreed to study the \
traffic before construction begins.";

fn prompts() -> Vec<(&'static str, String)> {
    let code_edit = "Add type hints and a docstring to every function in this Python code, and \
return the whole code:\n```python\ndef area(width, height):\n    return width * height\n\n\
def perimeter(width, height):\n    return 2 * (width + height)\n\ndef is_square(width, height):\n\
    return width == height\n```";
    vec![
        (
            "code",
            "Write a Python function merge_sorted(a, b) that merges two sorted lists into one sorted list."
                .into(),
        ),
        ("code", code_edit.into()),
        (
            "summarisation",
            format!(
                "{SUMMARY_SOURCE}\n\nSummarize the text above in three sentences, quoting it where you can."
            ),
        ),
        (
            "summarisation",
            format!("{SUMMARY_SOURCE}\n\nRewrite the text above as a bulleted list of facts."),
        ),
        ("chat", "What are three benefits of regular exercise?".into()),
        (
            "chat",
            "Explain the difference between TCP and UDP to a beginner.".into(),
        ),
    ]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cache_file(name: &str) -> PathBuf {
    let path = wick_engine::default_model_path().with_file_name(name);
    assert!(
        path.is_file(),
        "{} missing: see the header of this bench",
        path.display()
    );
    path
}

fn load(path: &Path, format: WeightFormat) -> LoadedModel {
    let spec = std::env::var("WICK_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device =
        wick_engine::device_from_spec(&spec).unwrap_or_else(|e| panic!("WICK_BENCH_DEVICE={spec}: {e}"));
    let opts = LoadOptions { format, device };
    loader::load(&ModelSource::GgufFile(path.to_path_buf()), &opts).expect("model loads")
}

struct Mode {
    name: &'static str,
    engine: Engine,
}

/// One request's decode speed: tokens after the first over the time after the first.
struct Decode {
    tokens: Vec<u32>,
    decode_time: Duration,
}

fn run_one(engine: &Engine, prompt: &[u32], max_tokens: usize) -> Decode {
    let params = SamplingParams {
        max_tokens: Some(max_tokens),
        ..SamplingParams::greedy()
    };
    let mut stream = engine
        .submit(GenerateRequest::new(prompt.to_vec(), params))
        .expect("accepted");
    let mut tokens = Vec::new();
    let mut first = None;
    let mut last = Instant::now();
    while let Some(event) = stream.blocking_recv() {
        match event {
            EngineEvent::Token(t) => {
                tokens.push(t.token);
                last = Instant::now();
                first.get_or_insert(last);
            }
            EngineEvent::Done(_) => break,
            EngineEvent::Error(e) => panic!("engine error: {e}"),
            _ => {}
        }
    }
    Decode {
        tokens,
        decode_time: first.map_or(Duration::ZERO, |f| last - f),
    }
}

fn spec_counts(s: &EngineStats) -> (u64, u64, f64) {
    (
        s.spec_draft_tokens_total,
        s.spec_accepted_tokens_total,
        s.spec_draft_seconds_total,
    )
}

fn main() {
    let pair = std::env::var("WICK_BENCH_PAIR").unwrap_or_else(|_| "default".into());
    let rounds = env_usize("WICK_BENCH_ROUNDS", 3);
    let max_tokens = env_usize("WICK_BENCH_OUTPUT_TOKENS", 128);
    let k = env_usize("WICK_BENCH_K", SpeculativeConfig::DEFAULT_NUM_SPECULATIVE_TOKENS);
    let max_batch = env_usize("WICK_BENCH_MAX_BATCH", SpeculativeConfig::DEFAULT_MAX_BATCH);
    let streams: Vec<usize> = std::env::var("WICK_BENCH_STREAMS")
        .unwrap_or_else(|_| "4,16".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    type Loader = Box<dyn Fn() -> LoadedModel>;
    let (target, draft_path): (Loader, PathBuf) = match pair.as_str() {
        "qwen" => {
            let t = cache_file("Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf");
            (
                Box::new(move || load(&t, WeightFormat::AsStored)),
                cache_file("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"),
            )
        }
        _ => {
            let p = wick_engine::default_model_path();
            let q = p.clone();
            (Box::new(move || load(&p, WeightFormat::Dense(DType::F32))), q)
        }
    };
    let draft = || load(&draft_path, WeightFormat::AsStored);
    let config = |speculative: Option<SpeculativeConfig>| EngineConfig {
        num_blocks: Some(1024),
        speculative: speculative.map(|s| SpeculativeConfig {
            num_speculative_tokens: k,
            max_batch,
            measure_payoff: env_usize("WICK_BENCH_MEASURE_PAYOFF", 1) != 0,
            ..s
        }),
        ..EngineConfig::default()
    };
    let draft_vocab = env_usize("WICK_BENCH_DRAFT_VOCAB", 0);
    let mut modes = vec![
        Mode {
            name: "target alone",
            engine: Engine::new(target(), config(None)).expect("engine"),
        },
        Mode {
            name: "draft model",
            engine: Engine::with_draft(target(), draft(), config(Some(SpeculativeConfig::draft_model())))
                .expect("engine"),
        },
        Mode {
            name: "n-gram",
            engine: Engine::new(target(), config(Some(SpeculativeConfig::ngram()))).expect("engine"),
        },
    ];
    let restricted = SpeculativeConfig {
        draft_vocab: Some(draft_vocab),
        ..SpeculativeConfig::draft_model()
    };
    if draft_vocab > 0 {
        modes.push(Mode {
            name: "draft, leading ids only",
            engine: Engine::with_draft(target(), draft(), config(Some(restricted))).expect("engine"),
        });
    }
    let format = std::env::var("WICK_BENCH_DRAFT_FORMAT")
        .ok()
        .map(|spec| WeightFormat::parse(&spec).expect("WICK_BENCH_DRAFT_FORMAT"));
    let best_draft = || load(&draft_path, format.unwrap_or(WeightFormat::AsStored));
    let best = if draft_vocab > 0 {
        restricted
    } else {
        SpeculativeConfig::draft_model()
    };
    if format.is_some() {
        let name = if draft_vocab > 0 {
            "draft re-quantized, leading ids only"
        } else {
            "draft re-quantized"
        };
        modes.push(Mode {
            name,
            engine: Engine::with_draft(target(), best_draft(), config(Some(best))).expect("engine"),
        });
    }
    if env_usize("WICK_BENCH_UNGUESSED", 0) != 0 {
        let speculative = SpeculativeConfig {
            draft_lookup: None,
            ..best
        };
        modes.push(Mode {
            name: "the last draft, no guesses",
            engine: Engine::with_draft(target(), best_draft(), config(Some(speculative))).expect("engine"),
        });
    }
    if env_usize("WICK_BENCH_UNMEASURED", 0) != 0 {
        let mut config = config(Some(best));
        if let Some(s) = &mut config.speculative {
            s.measure_payoff = false;
        }
        modes.push(Mode {
            name: "the last draft, speculating every step",
            engine: Engine::with_draft(target(), best_draft(), config).expect("engine"),
        });
    }
    if env_usize("WICK_BENCH_CONTROL", 0) != 0 {
        // A second engine without speculation: its ratio to the first is the harness's own
        // spread between engines, against which the other modes' ratios are read.
        modes.push(Mode {
            name: "target alone again (control)",
            engine: Engine::new(target(), config(None)).expect("engine"),
        });
    }
    // WICK_BENCH_MODES=a,b: besides the target alone, only the modes whose names contain one.
    if let Ok(only) = std::env::var("WICK_BENCH_MODES") {
        let keep: Vec<&str> = only.split(',').map(str::trim).collect();
        let mut index = 0;
        modes.retain(|m| {
            index += 1;
            index == 1 || keep.iter().any(|k| m.name.contains(k))
        });
    }
    let prompts: Vec<(&str, Vec<u32>)> = prompts()
        .into_iter()
        .map(|(kind, text)| {
            let chat = format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n");
            (
                kind,
                modes[0]
                    .engine
                    .tokenizer()
                    .encode(&chat, false)
                    .expect("tokenizes"),
            )
        })
        .collect();
    let kinds = ["code", "summarisation", "chat"];
    println!(
        "pair {pair}: k = {k}, max_batch = {max_batch}, {max_tokens} output tokens, {rounds} rounds, {} threads",
        rayon::current_num_threads()
    );

    if env_usize("WICK_BENCH_SINGLE", 1) != 0 {
        // [mode][kind] -> (tokens, seconds, proposed, accepted)
        let mut totals = vec![vec![(0usize, 0f64, 0u64, 0u64); kinds.len()]; modes.len()];
        let mut mismatches = 0;
        for round in 0..rounds {
            for (kind, prompt) in &prompts {
                let ki = kinds.iter().position(|k| k == kind).unwrap_or(0);
                let mut reference: Option<Vec<u32>> = None;
                // Alternate the order between rounds so no mode always runs first.
                let order: Vec<usize> = if round % 2 == 0 {
                    (0..modes.len()).collect()
                } else {
                    (0..modes.len()).rev().collect()
                };
                for &m in &order {
                    let before = spec_counts(&modes[m].engine.stats());
                    let d = run_one(&modes[m].engine, prompt, max_tokens);
                    let after = spec_counts(&modes[m].engine.stats());
                    let t = &mut totals[m][ki];
                    t.0 += d.tokens.len().saturating_sub(1);
                    t.1 += d.decode_time.as_secs_f64();
                    t.2 += after.0 - before.0;
                    t.3 += after.1 - before.1;
                    match &reference {
                        None => reference = Some(d.tokens),
                        Some(r) if *r != d.tokens => {
                            mismatches += 1;
                            eprintln!("greedy output of `{}` differs on a {kind} prompt", modes[m].name);
                        }
                        _ => {}
                    }
                }
            }
        }
        println!("\nsingle stream, decode tok/s (acceptance), mean over {rounds} rounds:");
        println!("| mode | {} |", kinds.join(" | "));
        println!("|---|{}", "---|".repeat(kinds.len()));
        for (m, mode) in modes.iter().enumerate() {
            let cells: Vec<String> = totals[m]
                .iter()
                .enumerate()
                .map(|(ki, &(tok, secs, proposed, accepted))| {
                    let rate = tok as f64 / secs.max(1e-9);
                    let base = totals[0][ki].0 as f64 / totals[0][ki].1.max(1e-9);
                    if m == 0 {
                        format!("{rate:.1}")
                    } else {
                        format!(
                            "{rate:.1} ({:.2}x; {:.0}% of {proposed})",
                            rate / base,
                            100.0 * accepted as f64 / proposed.max(1) as f64
                        )
                    }
                })
                .collect();
            println!("| {} | {} |", mode.name, cells.join(" | "));
        }
        println!("greedy outputs differing from the target alone: {mismatches}");
    }

    if env_usize("WICK_BENCH_AGGREGATE", 1) != 0 {
        // Requests per stream, back to back: after the first, arrivals are staggered as in a
        // busy server, not a burst that starts and ends together.
        let per_stream = env_usize("WICK_BENCH_REQUESTS", 3);
        // [phase][mode][streams]: phase 0 is the first round, where the payoff measurement
        // of a batch size still learns (its first speculative steps catch the draft up on
        // every prompt); phase 1 the later rounds, a server that has been running.
        let mut rows = vec![vec![vec![(0usize, 0f64); streams.len()]; modes.len()]; 2];
        // [phase][mode][streams] -> (proposed, accepted, the draft's seconds)
        let mut spec = vec![vec![vec![(0u64, 0u64, 0f64); streams.len()]; modes.len()]; 2];
        for round in 0..rounds {
            let phase = usize::from(round > 0);
            for (si, &c) in streams.iter().enumerate() {
                // Rotated each round, so every mode takes every place in the order (reversing
                // it kept the middle mode in the middle: with three or five modes, one mode
                // always ran between two others).
                let order: Vec<usize> = (0..modes.len()).map(|i| (i + round) % modes.len()).collect();
                for &m in &order {
                    let engine = &modes[m].engine;
                    let before = spec_counts(&engine.stats());
                    let start = Instant::now();
                    let tokens: usize = std::thread::scope(|s| {
                        let handles: Vec<_> = (0..c)
                            .map(|i| {
                                let prompts = &prompts;
                                s.spawn(move || {
                                    (0..per_stream)
                                        .map(|j| {
                                            let prompt = &prompts[(i + j) % prompts.len()].1;
                                            run_one(engine, prompt, max_tokens / 2).tokens.len()
                                        })
                                        .sum::<usize>()
                                })
                            })
                            .collect();
                        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
                    });
                    rows[phase][m][si].0 += tokens;
                    rows[phase][m][si].1 += start.elapsed().as_secs_f64();
                    let after = spec_counts(&engine.stats());
                    spec[phase][m][si].0 += after.0 - before.0;
                    spec[phase][m][si].1 += after.1 - before.1;
                    spec[phase][m][si].2 += after.2 - before.2;
                }
            }
        }
        for phase in 0..rounds.min(2) {
            let title = if phase == 0 {
                "first round".to_string()
            } else {
                format!("rounds 2-{rounds}")
            };
            println!(
                "\naggregate tok/s, {title} ({per_stream} requests per stream back to back, all prompts, {} output tokens each):",
                max_tokens / 2
            );
            println!(
                "| mode | {} |",
                streams
                    .iter()
                    .map(|c| format!("{c} streams"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            println!("|---|{}", "---|".repeat(streams.len()));
            print_aggregate(&modes, &rows[phase], &spec[phase]);
        }
    }
    for mode in &modes[1..] {
        let estimates: Vec<String> = mode
            .engine
            .stats()
            .spec_payoff
            .iter()
            .map(|e| {
                let bucket = if e.max_decodes == usize::MAX {
                    "more decodes".to_string()
                } else {
                    format!("<= {} decodes", e.max_decodes)
                };
                format!("{bucket}: {:.1} with, {:.1} without", e.with, e.without)
            })
            .collect();
        println!("{} measured tok/s: {}", mode.name, estimates.join("; "));
    }
}

/// One aggregate table's rows: each mode's tok/s and its ratio to the target alone (mode 0),
/// with how often speculation ran.
fn print_aggregate(modes: &[Mode], rows: &[Vec<(usize, f64)>], spec: &[Vec<(u64, u64, f64)>]) {
    for (m, mode) in modes.iter().enumerate() {
        let cells: Vec<String> = rows[m]
            .iter()
            .enumerate()
            .map(|(si, &(tok, secs))| {
                let rate = tok as f64 / secs.max(1e-9);
                let base = rows[0][si].0 as f64 / rows[0][si].1.max(1e-9);
                let (proposed, accepted, draft_seconds) = spec[m][si];
                let mut drafted = if proposed > 0 {
                    // Proposals per output token: how often speculation ran.
                    format!(
                        ", {:.2} proposed/token, {:.0}% accepted",
                        proposed as f64 / tok.max(1) as f64,
                        100.0 * accepted as f64 / proposed as f64
                    )
                } else {
                    String::new()
                };
                if draft_seconds > 0.0 {
                    // The draft's forwards (catch-ups included) as a share of the wall time.
                    drafted += &format!(
                        ", draft {:.0}% of the time",
                        100.0 * draft_seconds / secs.max(1e-9)
                    );
                }
                format!("{rate:.1} ({:.2}x{drafted})", rate / base)
            })
            .collect();
        println!("| {} | {} |", mode.name, cells.join(" | "));
    }
}
