//! `wick bench`: a load generator for any OpenAI-compatible server (wick, vLLM, llama-server,
//! OpenAI itself). Keeps C streaming requests in flight at each concurrency level and reports
//! output tok/s, requests/s, time to first token, inter-token latency and end-to-end latency
//! (p50/p90/p99), as a table and as JSON.
//!
//! Prompts are synthetic and deterministic (seeded), each different, so that runs against two
//! servers see the same text and prefix caching does not flatter either.

mod report;
mod sse;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde_json::json;

use crate::ops::http_client::error_chain;
pub use report::{LevelReport, Percentiles, RequestRecord};
use sse::{chunk_content, SseData, SseLines};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `POST /completions` with a text prompt.
    Completions,
    /// `POST /chat/completions` with one user message.
    Chat,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the OpenAI-compatible API, up to and including `/v1`.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    pub url: String,
    /// Model to request (default: the first one `GET /models` lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Bearer token for the server.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, value_enum, default_value_t = Endpoint::Completions)]
    pub endpoint: Endpoint,
    /// Concurrency levels to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Requests per level (default: twice the concurrency, at least 8).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Words per synthetic prompt (common English words: about one token each).
    #[arg(long, default_value_t = 100)]
    pub prompt_words: usize,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Ask the server to ignore end-of-sequence (vLLM, llama.cpp and wick honour it), so every
    /// request produces `max_tokens`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ignore_eos: bool,
    /// Unmeasured requests sent first (loads caches, warms the server).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Everything one run produced, as written to `--json`.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub url: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub prompt_words: usize,
    pub max_tokens: u32,
    pub ignore_eos: bool,
    pub levels: Vec<LevelReport>,
}

/// Runs the benchmark on its own tokio runtime, prints the table and writes the JSON.
pub fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        return Err(BenchError::Invalid(
            "--concurrency needs levels of at least 1".into(),
        ));
    }
    if args.max_tokens == 0 || args.prompt_words == 0 {
        return Err(BenchError::Invalid(
            "--max-tokens and --prompt-words must be at least 1".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run_async(args.clone()))?;
    println!(
        "wick bench: {} model {} ({:?}, {} prompt words, {} max tokens, ignore_eos {})",
        report.url, report.model, report.endpoint, report.prompt_words, report.max_tokens, report.ignore_eos
    );
    print!("{}", report::table(&report.levels));
    for level in &report.levels {
        if let Some(e) = &level.first_error {
            println!(
                "concurrency {}: {} failed; first error: {e}",
                level.concurrency, level.failed
            );
        }
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| BenchError::Invalid(e.to_string()))?;
        std::fs::write(path, text + "\n")?;
    }
    Ok(report)
}

struct Target {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    args: BenchArgs,
}

async fn run_async(args: BenchArgs) -> Result<BenchReport, BenchError> {
    // A fresh connection per request: some servers (llama.cpp's) close a connection after a
    // streamed response, and a pooled one would then fail the next request.
    let client = crate::ops::http_client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .pool_max_idle_per_host(0)
        .build()?;
    let url = args.url.trim_end_matches('/').to_string();
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&client, &url, args.api_key.as_deref()).await?,
    };
    let target = Arc::new(Target {
        client,
        url: url.clone(),
        model: model.clone(),
        api_key: args.api_key.clone(),
        args: args.clone(),
    });
    let most = args
        .concurrency
        .iter()
        .map(|&c| requests_for(&args, c))
        .max()
        .unwrap_or(0);
    let prompts = Arc::new(synthetic_prompts(
        most + args.warmup,
        args.prompt_words,
        args.seed,
    ));

    for i in 0..args.warmup {
        let r = one_request(&target, &prompts[most + i]).await;
        if let Some(e) = r.error {
            return Err(BenchError::Invalid(format!("warm-up request failed: {e}")));
        }
    }
    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        let level = run_level(&target, &prompts, concurrency, requests_for(&args, concurrency)).await;
        tracing::info!(
            concurrency,
            output_tokens_per_s = level.output_tokens_per_s,
            failed = level.failed,
            "level done"
        );
        levels.push(level);
    }
    Ok(BenchReport {
        url,
        model,
        endpoint: args.endpoint,
        prompt_words: args.prompt_words,
        max_tokens: args.max_tokens,
        ignore_eos: args.ignore_eos,
        levels,
    })
}

fn requests_for(args: &BenchArgs, concurrency: usize) -> usize {
    args.requests.unwrap_or((2 * concurrency).max(8))
}

async fn first_model(client: &reqwest::Client, url: &str, key: Option<&str>) -> Result<String, BenchError> {
    let mut request = client.get(format!("{url}/models"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let body: serde_json::Value = request.send().await?.error_for_status()?.json().await?;
    body["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BenchError::Invalid(format!("{url}/models lists no model; pass --model")))
}

/// `requests` requests with `concurrency` in flight: each worker takes the next prompt as soon
/// as its previous request finishes.
async fn run_level(
    target: &Arc<Target>,
    prompts: &Arc<Vec<String>>,
    concurrency: usize,
    requests: usize,
) -> LevelReport {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.min(requests))
        .map(|_| {
            let (target, prompts, next) = (target.clone(), prompts.clone(), next.clone());
            tokio::spawn(async move {
                let mut records = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return records;
                    }
                    records.push(one_request(&target, &prompts[i]).await);
                }
            })
        })
        .collect();
    let mut records = Vec::with_capacity(requests);
    for worker in workers {
        match worker.await {
            Ok(r) => records.extend(r),
            Err(e) => records.push(RequestRecord {
                error: Some(format!("worker failed: {e}")),
                ..Default::default()
            }),
        }
    }
    LevelReport::new(concurrency, &records, start.elapsed())
}

async fn one_request(target: &Target, prompt: &str) -> RequestRecord {
    let start = Instant::now();
    let mut record = match stream_request(target, prompt, start).await {
        Ok(r) => r,
        Err(e) => RequestRecord {
            error: Some(error_chain(&e)),
            ..Default::default()
        },
    };
    record.latency = start.elapsed();
    record
}

async fn stream_request(target: &Target, prompt: &str, start: Instant) -> Result<RequestRecord, BenchError> {
    let args = &target.args;
    let mut body = json!({
        "model": target.model,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let path = match args.endpoint {
        Endpoint::Completions => {
            body["prompt"] = json!(prompt);
            "completions"
        }
        Endpoint::Chat => {
            body["messages"] = json!([{"role": "user", "content": prompt}]);
            "chat/completions"
        }
    };
    if args.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    let mut request = target.client.post(format!("{}/{path}", target.url)).json(&body);
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(BenchError::Invalid(format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        )));
    }
    let mut record = RequestRecord::default();
    let mut lines = SseLines::default();
    let mut last_text: Option<Instant> = None;
    let mut text_chunks = 0u64;
    let mut done = false;
    let mut bytes = response.bytes_stream();
    while let Some(part) = bytes.next().await {
        for data in lines.push(&part?) {
            let value = match data {
                SseData::Done => {
                    done = true;
                    continue;
                }
                SseData::Other(text) => {
                    return Err(BenchError::Invalid(format!("not JSON in the stream: {text}")))
                }
                SseData::Json(value) => value,
            };
            let chunk = chunk_content(&value);
            if let Some(e) = chunk.error {
                return Err(BenchError::Invalid(format!("error event: {e}")));
            }
            if chunk.text_len > 0 {
                let now = Instant::now();
                match last_text {
                    None => record.ttft = Some(now - start),
                    Some(last) => record.inter_token.push(now - last),
                }
                last_text = Some(now);
                text_chunks += 1;
            }
            record.prompt_tokens = chunk.prompt_tokens.unwrap_or(record.prompt_tokens);
            record.completion_tokens = chunk.completion_tokens.unwrap_or(record.completion_tokens);
        }
    }
    if !done {
        return Err(BenchError::Invalid("stream ended without [DONE]".into()));
    }
    // Servers that send no usage chunk: one token per text chunk (true of wick, vLLM, llama.cpp).
    if record.completion_tokens == 0 {
        record.completion_tokens = text_chunks;
    }
    Ok(record)
}

/// Deterministic, mutually different prompts of `words` words each.
pub fn synthetic_prompts(count: usize, words: usize, seed: u64) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "river",
        "old",
        "city",
        "light",
        "morning",
        "quiet",
        "market",
        "stone",
        "bridge",
        "garden",
        "winter",
        "letter",
        "window",
        "music",
        "road",
        "forest",
        "paper",
        "summer",
        "table",
        "voice",
        "train",
        "harbor",
        "story",
        "small",
        "bright",
        "under",
        "across",
        "after",
        "before",
        "slowly",
        "people",
        "house",
        "water",
        "mountain",
        "friend",
        "evening",
        "north",
        "clock",
        "bread",
        "simple",
        "careful",
        "green",
        "dust",
        "rain",
        "field",
        "machine",
        "number",
        "seven",
        "twelve",
        "and",
        "with",
        "was",
        "found",
        "carried",
        "opened",
        "walked",
        "remembered",
        "listened",
        "built",
        "of",
        "in",
        "a",
        "to",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let body: Vec<&str> = (0..words.saturating_sub(1))
                .map(|_| *WORDS.choose(&mut rng).unwrap_or(&"the"))
                .collect();
            format!("{i}: {}", body.join(" "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_deterministic_distinct_and_sized() {
        let a = synthetic_prompts(20, 50, 7);
        assert_eq!(a, synthetic_prompts(20, 50, 7));
        assert_ne!(a, synthetic_prompts(20, 50, 8));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 20);
        assert!(a.iter().all(|p| p.split(' ').count() == 50));
    }
}
