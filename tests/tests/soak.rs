//! `scripts/soak` end to end (issue 17): a short soak of the real `wick serve` passes with every
//! kind of request answered, no error and the KV blocks back to 0; a server killed under load
//! fails it (errors, no KV figure, no clean exit), and an RSS bound no run can meet fails that
//! check alone, exit status 1 naming it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wick_tests::{root, wick_binary};

const KINDS: &[&str] = &[
    "chat",
    "chat_stream",
    "chat_n2",
    "tools_required",
    "tools_auto",
    "json_schema",
    "completion",
    "completion_stream",
    "disconnect",
    "bad_request",
];

fn json_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("wick-soak-test-{name}-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn soak_command(json: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("scripts/soak"))
        .arg("--wick")
        .arg(wick_binary())
        .arg("--json")
        .arg(json)
        // A small pool: priming it (writing every block once before the load) takes seconds.
        .arg("--server-arg=--kv-cache-mib=128")
        .args(extra);
    cmd
}

fn report(json: &Path) -> Value {
    let text = std::fs::read_to_string(json).expect("the soak wrote its JSON report");
    serde_json::from_str(&text).expect("the report parses")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn short_soak_passes_with_every_kind_of_request() {
    let json = json_path("pass");
    let out = soak_command(
        &json,
        &[
            "--minutes",
            "0.75",
            "--warmup-minutes",
            "0.25",
            "--interval",
            "5",
            "--concurrency",
            "3",
        ],
    )
    .output()
    .expect("python3 runs scripts/soak");
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("soak passed"), "{log}");
    let r = report(&json);
    let s = &r["summary"];
    assert_eq!(r["model"], "SmolLM2-135M-Instruct.Q4_1");
    for kind in KINDS {
        assert!(
            s["requests"][kind].as_u64().expect("a count") > 0,
            "no {kind} request done: {s}"
        );
    }
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["kv_blocks_used_end"], 0, "{s}");
    assert_eq!(s["server_exit"], 0, "{s}");
    assert_eq!(s["passed"], true, "{s}");
    assert_eq!(s["failed_checks"], serde_json::json!([]), "{s}");
    // A sample at start, every 5 s of the load, at its end and after the drain.
    let samples = r["samples"].as_array().expect("samples");
    assert!(samples.len() >= 2, "{samples:?}");
    for sample in samples {
        assert!(sample["rss_mib"].as_f64().expect("RSS") > 50.0, "{sample}");
        assert!(sample["kv_total"].as_u64().expect("KV total") > 0, "{sample}");
    }
    // RSS when ready, after priming the KV pool, after the warm-up and at the end, and the
    // growth checked.
    let rss = &s["rss_mib"];
    for key in ["ready", "primed", "warmup", "peak", "end", "growth"] {
        assert!(rss[key].as_f64().is_some(), "{key}: {rss}");
    }
    assert!(rss["warmup_t"].as_f64().expect("warm-up time") >= 15.0, "{rss}");
}

#[test]
fn a_server_killed_under_load_fails_the_soak() {
    let json = json_path("killed");
    let samples = json.with_extension("out");
    let mut child = soak_command(
        &json,
        &[
            "--minutes",
            "1",
            "--interval",
            "2",
            "--concurrency",
            "2",
            "--no-prime-kv",
        ],
    )
    .stdout(std::fs::File::create(&samples).expect("samples file"))
    .stderr(Stdio::piped())
    .spawn()
    .expect("python3 runs scripts/soak");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut log = String::new();
    let mut pid = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    // The soak names its server's pid, then says when the load starts.
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("stderr reads") == 0 || Instant::now() > deadline {
            panic!("the soak ended or stalled before its load started: {log}");
        }
        log.push_str(&line);
        if let Some(p) = line.split("server pid ").nth(1) {
            pid = Some(p.trim().to_string());
        }
        if line.contains("] load:") {
            break;
        }
    }
    let pid = pid.unwrap_or_else(|| panic!("no server pid in {log}"));
    // Under load: once a sample (every 2 s) counts answered requests.
    loop {
        let out = std::fs::read_to_string(&samples).unwrap_or_default();
        let answered = out.lines().any(|l| {
            l.split("  requests ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .is_some_and(|n| n != "0")
        });
        if answered {
            break;
        }
        assert!(Instant::now() < deadline, "no request answered: {out}{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let killed = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("stderr reads");
    log.push_str(&rest);
    let status = child.wait().expect("the soak exits");
    assert_eq!(status.code(), Some(1), "{log}");
    let s = report(&json)["summary"].clone();
    assert_eq!(s["server_died"], true, "{s}");
    let failed = s["failed_checks"].as_array().expect("failed checks");
    for check in ["errors", "kv_drained", "clean_exit"] {
        assert!(failed.contains(&Value::from(check)), "{check} not failed: {s}");
    }
    // The requests answered before the kill are in the report.
    let done: u64 = KINDS.iter().map(|k| s["requests"][k].as_u64().unwrap_or(0)).sum();
    assert!(done > 0, "{s}");
}

#[test]
fn an_rss_bound_no_run_meets_fails_that_check_alone() {
    let json = json_path("rss");
    // RSS cannot shrink by 100 GB: the growth check fails, and only it.
    let out = soak_command(
        &json,
        &[
            "--minutes",
            "0.25",
            "--interval",
            "5",
            "--concurrency",
            "2",
            "--no-prime-kv",
            "--max-rss-growth-mib",
            "-100000",
        ],
    )
    .output()
    .expect("python3 runs scripts/soak");
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("soak FAILED: rss_growth"), "{log}");
    let s = report(&json)["summary"].clone();
    assert_eq!(s["failed_checks"], serde_json::json!(["rss_growth"]), "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["kv_blocks_used_end"], 0, "{s}");
}
