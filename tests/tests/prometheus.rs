//! A real Prometheus server (Debian's package, fetched by scripts/fetch-prometheus) scrapes
//! `wick serve`'s `/metrics`, and the test reads wick's figures back through Prometheus' query
//! API: the exposition is valid for the real parser, and the names are queryable as vLLM's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wick_tests::{free_port, http_get, request, Server};

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_binary() -> PathBuf {
    let p = std::env::var_os("WICK_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            home.join(".cache/wick/prometheus/usr/bin/prometheus")
        });
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-prometheus (scripts/test does)",
        p.display()
    );
    p
}

/// The value of the first series of an instant query, once Prometheus has one.
fn query(port: u16, promql: &str) -> Option<(String, f64)> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, response) = http_get(port, &format!("/api/v1/query?query={encoded}"))?;
    if status != 200 {
        return None;
    }
    let body = &response[response.find("\r\n\r\n")? + 4..];
    let json: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let first = json["data"]["result"].get(0)?.clone();
    let value = first["value"][1].as_str()?.parse().ok()?;
    Some((first["metric"].to_string(), value))
}

#[test]
fn a_real_prometheus_scrapes_wick_and_answers_queries() {
    let prometheus = prometheus_binary();
    let wick = Server::start(&[]);
    let body = r#"{"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "Hello", "max_tokens": 7,
                   "temperature": 0, "ignore_eos": true}"#;
    let (status, _) = request(wick.port, "POST", "/v1/completions", Some(body)).expect("completion");
    assert_eq!(status, 200);

    let dir = tempfile_dir();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wick\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            wick.port
        ),
    )
    .expect("config");
    let prom_port = free_port();
    let _prom = Prometheus(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let (labels, tokens) = loop {
        if let Some(found) = query(prom_port, "vllm:generation_tokens_total") {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned wick's metric"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(tokens, 7.0, "generated tokens as scraped");
    assert!(
        labels.contains(r#""model_name":"SmolLM2-135M-Instruct.Q4_1""#),
        "{labels}"
    );
    assert!(labels.contains(r#""job":"wick""#), "{labels}");
    // The scrape target is healthy (every sample parsed).
    let up = query(prom_port, r#"up{job="wick"}"#).map(|(_, v)| v);
    assert_eq!(up, Some(1.0));
    let ttft = query(prom_port, "vllm:time_to_first_token_seconds_count").map(|(_, v)| v);
    assert_eq!(ttft, Some(1.0));
    // vLLM's speculative decoding counters are there for every model, 0 where it does not
    // speculate (tests/tests/speculative.rs has them count under a draft model).
    for name in [
        "vllm:spec_decode_num_draft_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_total",
    ] {
        let (labels, value) = query(prom_port, name).unwrap_or_else(|| panic!("{name} not scraped"));
        assert_eq!(value, 0.0, "{name}");
        assert!(
            labels.contains(r#""model_name":"SmolLM2-135M-Instruct.Q4_1""#),
            "{labels}"
        );
    }
}

/// A scratch directory removed when dropped (declared before Prometheus, so it outlives it).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

fn tempfile_dir() -> TempDir {
    let dir = std::env::temp_dir().join(format!("wick-prometheus-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}
