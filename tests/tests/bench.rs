//! `wick bench` against a real `wick serve`: the load generator reports what really happened
//! (every request counted, every token, percentiles in order) and fails loudly when the server
//! refuses it.

use std::process::Command;

use serde_json::Value;
use wick_tests::{wick_binary, Server};

const KEY: &str = "bench-secret";

fn bench(port: u16, key: &str, extra: &[&str]) -> (std::process::Output, Option<Value>) {
    let json = std::env::temp_dir().join(format!(
        "wick-bench-{port}-{}.json",
        extra.join("_").replace('/', "")
    ));
    let _ = std::fs::remove_file(&json);
    let output = Command::new(wick_binary())
        .args([
            "bench",
            "--url",
            &format!("http://127.0.0.1:{port}/v1"),
            "--prompt-words",
            "20",
        ])
        .args(["--json", json.to_str().expect("utf-8 temp dir")])
        .args(extra)
        .env("OPENAI_API_KEY", key)
        .output()
        .expect("wick bench runs");
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("bench JSON parses"));
    (output, report)
}

fn assert_level(level: &Value, concurrency: u64, requests: u64, max_tokens: u64) {
    assert_eq!(level["concurrency"], concurrency);
    assert_eq!(level["requests"], requests, "{level}");
    assert_eq!(level["failed"], 0, "{level}");
    // ignore_eos is on by default, so every request yields exactly max_tokens.
    assert_eq!(level["output_tokens"], requests * max_tokens, "{level}");
    assert!(
        level["mean_prompt_tokens"].as_f64().expect("number") >= 20.0,
        "{level}"
    );
    assert!(level["requests_per_s"].as_f64().expect("number") > 0.0);
    for metric in ["ttft_ms", "itl_ms", "latency_ms"] {
        let p = &level[metric];
        let get = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{metric}.{k} in {level}"));
        assert!(
            0.0 < get("p50") && get("p50") <= get("p90") && get("p90") <= get("p99"),
            "{metric}: {p}"
        );
    }
    // A request's first token cannot come after its last.
    assert!(level["ttft_ms"]["p99"].as_f64() <= level["latency_ms"]["p99"].as_f64());
}

#[test]
fn bench_reports_every_request_and_token() {
    let server = Server::start(&["--api-key", KEY]);
    let (out, report) = bench(
        server.port,
        KEY,
        &["--concurrency", "1,3", "--requests", "3", "--max-tokens", "6"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = report.expect("JSON written");
    // The model was discovered through GET /v1/models.
    assert_eq!(report["model"], "SmolLM2-135M-Instruct.Q4_1");
    let levels = report["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 2);
    assert_level(&levels[0], 1, 3, 6);
    assert_level(&levels[1], 3, 3, 6);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("out tok/s") && table.lines().count() >= 4,
        "{table}"
    );

    let (out, report) = bench(
        server.port,
        KEY,
        &[
            "--endpoint",
            "chat",
            "--concurrency",
            "2",
            "--requests",
            "2",
            "--max-tokens",
            "5",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_level(&report.expect("JSON written")["levels"][0], 2, 2, 5);
}

#[test]
fn bench_fails_clearly_when_the_server_refuses() {
    let server = Server::start(&["--api-key", KEY]);
    let (out, report) = bench(
        server.port,
        "wrong-key",
        &[
            "--model",
            "SmolLM2-135M-Instruct.Q4_1",
            "--concurrency",
            "1",
            "--requests",
            "1",
        ],
    );
    assert!(!out.status.success());
    assert!(report.is_none());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warm-up request failed") && stderr.contains("401"),
        "{stderr}"
    );
}
