//! `wick route-eval` against real processes: a `large` wick behind a router wick that serves
//! `small` itself, the quick labelled set (tests/route-eval/quick.jsonl), and the report's
//! invariants: counts add up, shares sum to 1, who answered matches the route's configuration,
//! a named tool choice always yields a call of that name, and the cost arithmetic; and
//! `--calibrate` on a score route, its curves and recommendation recomputed from the records.

use std::process::Command;

use serde_json::Value;
use wick_tests::{default_model, fallback_model, free_port, root, wick_binary, Server};

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("config written");
    path.display().to_string()
}

fn router_config(large_port: u16) -> String {
    format!(
        r#"
[[models]]
id = "small"
served_name = "small"

[[models]]
id = "large"
url = "http://127.0.0.1:{large_port}/v1"
served_name = "large"
timeout_secs = 60

[[routes]]
name = "fallback"           # the remote backend alone (a router serves remote ones by route)
tiers = ["large"]

[[routes]]
name = "never"              # the cheap tier's answer always stands
tiers = ["small", "large"]
policy = {{ escalate_on_length = false, escalate_on_invalid_tool_call = false }}

[[routes]]
name = "always"             # any token below certainty: every answer escalates
tiers = ["small", "large"]
policy = {{ escalate_on_length = false, escalate_on_invalid_tool_call = false, min_token_logprob = 0.0 }}
"#
    )
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn route_eval_reports_who_answered_accuracy_and_cost() {
    let dir = std::env::temp_dir().join(format!("wick-route-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let large_port = free_port();
    let large_cfg = write(
        &dir,
        "large.toml",
        "[[models]]\nid = \"large\"\nserved_name = \"large\"\n",
    );
    let _large = Server::start_on(large_port, &["--config", &large_cfg]);
    let router_cfg = write(&dir, "router.toml", &router_config(large_port));
    let router = Server::start(&["--config", &router_cfg]);

    let data = root().join("tests/route-eval/quick.jsonl");
    let url = format!("http://127.0.0.1:{}/v1", router.port);
    let out = Command::new(wick_binary())
        .args([
            "route-eval",
            "--data",
            &data.display().to_string(),
            "--url",
            &url,
            "--json",
        ])
        .args([
            "--model", "small", "--model", "fallback", "--model", "never", "--model", "always",
        ])
        .args([
            "--price",
            "small=1,2",
            "--price",
            "large=10,20",
            "--concurrency",
            "2",
        ])
        .output()
        .expect("wick route-eval runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let models = report["models"].as_array().expect("models");
    assert_eq!(models.len(), 4);
    let by_name = |name: &str| models.iter().find(|m| m["model"] == name).expect(name);

    for m in models {
        let name = m["model"].as_str().unwrap();
        let records = m["records"].as_array().unwrap();
        assert_eq!(m["items"], 6, "{name}");
        assert_eq!(records.len(), 6, "{name}");
        assert_eq!(m["errors"], 0, "{name}: {m}");
        let correct = records.iter().filter(|r| r["correct"] == true).count();
        assert_eq!(m["correct"], correct, "{name}");
        assert!((f(&m["accuracy"]) - correct as f64 / 6.0).abs() < 1e-9, "{name}");
        let backends = m["backends"].as_array().unwrap();
        let answered: u64 = backends.iter().map(|b| b["answered"].as_u64().unwrap()).sum();
        assert_eq!(answered, 6, "{name}");
        let shares: f64 = backends.iter().map(|b| f(&b["share"])).sum();
        assert!((shares - 1.0).abs() < 1e-9, "{name}: {shares}");
        // Each backend's count is the records' `backend` (the x-wick-backend header).
        for b in backends {
            let n = records.iter().filter(|r| r["backend"] == b["backend"]).count();
            assert_eq!(b["answered"], n, "{name}");
        }
        // A named tool choice: always a call of that name, whoever answered.
        let tool = records.iter().find(|r| r["id"] == "tool-time-named").unwrap();
        assert_eq!(tool["correct"], true, "{name}: {tool}");
        // Cost: the records' usage at the given prices (escalated attempts at `small`'s,
        // `length` ones at max_tokens: none here, length does not escalate).
        let price = |b: &str| if b == "small" { (1.0, 2.0) } else { (10.0, 20.0) };
        let tokens = |r: &Value| (f(&r["prompt_tokens"]), f(&r["completion_tokens"]));
        let mut total = 0.0;
        for r in records {
            let ((pi, po), (i, o)) = (price(r["backend"].as_str().unwrap()), tokens(r));
            total += (i * pi + o * po) / 1e6;
            total += r["escalations"].as_array().unwrap().len() as f64 * (i + 2.0 * o) / 1e6;
        }
        assert!((f(&m["cost"]["total"]) - total).abs() < 1e-12, "{name}: {m}");
        assert!(
            f(&m["prompt_tokens"]) > 0.0 && f(&m["completion_tokens"]) > 0.0,
            "{name}"
        );
    }

    // A plain model name: no tiers, its own fallback; a one-tier route: its tier answers.
    for (name, backend) in [("small", "small"), ("fallback", "large")] {
        let m = by_name(name);
        assert_eq!(m["backends"].as_array().unwrap().len(), 1);
        assert_eq!(m["backends"][0]["backend"], backend);
        assert_eq!(m["cost"]["total"], m["cost"]["always_fallback"]);
    }
    assert_eq!(by_name("small")["cheap_share"], Value::Null);
    assert_eq!(by_name("fallback")["cheap_share"], 1.0);
    // `never`: the cheap tier answers everything; `always`: the fallback does, after one
    // escalation each, so it costs more than asking the fallback alone.
    let never = by_name("never");
    assert_eq!(never["tiers"], serde_json::json!(["small", "large"]));
    assert_eq!(never["cheap_share"], 1.0);
    assert_eq!(never["escalated"], 0);
    let always = by_name("always");
    assert_eq!(always["cheap_share"], 0.0);
    assert_eq!(always["escalated"], 6);
    assert_eq!(always["backends"][0]["backend"], "large");
    assert_eq!(always["backends"][0]["share"], 1.0);
    for r in always["records"].as_array().unwrap() {
        assert_eq!(
            r["escalations"][0].as_str().unwrap().split(':').next(),
            Some("small"),
            "{r}"
        );
    }
    assert!(f(&always["cost"]["saved_fraction"]) < 0.0);
    // `small` and `never` give the same answers (temperature 0, same model, no escalation).
    let answers = |m: &Value| -> Vec<Value> {
        m["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["answer"].clone())
            .collect()
    };
    assert_eq!(answers(by_name("small")), answers(never));
}

#[test]
fn a_bad_line_is_reported_with_its_number() {
    let dir = std::env::temp_dir().join(format!("wick-route-eval-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let data = write(
        &dir,
        "bad.jsonl",
        "{\"prompt\": \"hi\", \"check\": {\"exact\": \"hi\"}}\n{\"prompt\": \"hi\", \"check\": {\"regex\": \"(\"}}\n",
    );
    let out = Command::new(wick_binary())
        .args([
            "route-eval",
            "--data",
            &data,
            "--model",
            "m",
            "--url",
            "http://127.0.0.1:9/v1",
        ])
        .output()
        .expect("wick route-eval runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.jsonl:2: bad regex"), "{stderr}");
}

/// `--calibrate`: a score route (the default model answering, Qwen2.5-Coder-0.5B scoring) over
/// the quick set. The route's kept answers are the cheap model's own, the mean-threshold curve
/// keeps fewer items cheap as it tightens, and every point's figures (and the recommendation's)
/// follow from the records: which model got each item right and each item's score.
#[test]
fn calibrate_recomputes_from_the_records() {
    let dir = std::env::temp_dir().join(format!("wick-route-eval-cal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = format!(
        "[server]\nmodel = \"small\"\n\n[[models]]\nid = \"small\"\nsource = \"{}\"\nserved_name = \"small\"\n\n\
         [[models]]\nid = \"large\"\nsource = \"{}\"\nserved_name = \"large\"\n\n\
         [[routes]]\nname = \"score\"\ntiers = [\"small\", \"large\"]\npolicy = {{ verify = \"score\", min_mean_logprob = -1.0 }}\n",
        default_model(),
        fallback_model()
    );
    let router = Server::start(&["--config", &write(&dir, "score.toml", &cfg)]);
    let data = root().join("tests/route-eval/quick.jsonl");
    let url = format!("http://127.0.0.1:{}/v1", router.port);
    let out = Command::new(wick_binary())
        .args(["route-eval", "--data", &data.display().to_string(), "--url", &url])
        .args(["--json", "--calibrate", "score", "--concurrency", "2"])
        .output()
        .expect("wick route-eval runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let cal = &report["calibration"];
    assert_eq!(
        (cal["cheap"].as_str(), cal["fallback"].as_str()),
        (Some("small"), Some("large"))
    );
    assert_eq!(cal["items"], 6);
    assert_eq!(cal["cheap_answer_mismatches"], 0, "{cal}");
    let records = |model: &str| -> Vec<Value> {
        let m = report["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == model);
        m.unwrap_or_else(|| panic!("{model} evaluated"))["records"]
            .as_array()
            .unwrap()
            .clone()
    };
    let (route, cheap, fallback) = (records("score"), records("small"), records("large"));
    let scored: Vec<Option<(f64, f64)>> = route
        .iter()
        .map(|r| r["score"].as_object().map(|s| (f(&s["mean"]), f(&s["min"]))))
        .collect();
    assert_eq!(cal["scored"], scored.iter().flatten().count());
    assert!(scored.iter().any(Option::is_some), "nothing was scored: {cal}");
    let point = |p: &Value| {
        let (m, t) = (p["min_mean_logprob"].as_f64(), p["min_token_logprob"].as_f64());
        let mut kept = 0;
        let mut right = 0;
        for (i, score) in scored.iter().enumerate() {
            let stays =
                score.is_some_and(|(mean, min)| m.is_none_or(|m| mean >= m) && t.is_none_or(|t| min >= t));
            kept += usize::from(stays);
            let by = if stays { &cheap[i] } else { &fallback[i] };
            assert_eq!(by["id"], route[i]["id"]);
            right += usize::from(by["correct"] == true);
        }
        (kept as f64 / 6.0, right as f64 / 6.0)
    };
    let curve = cal["mean_curve"].as_array().expect("mean_curve");
    assert!(curve.len() >= 2, "{cal}");
    let mut last_share = f64::INFINITY;
    for p in curve.iter().chain(cal["min_curve"].as_array().unwrap()) {
        let (share, accuracy) = point(p);
        assert!((f(&p["cheap_share"]) - share).abs() < 1e-9, "{p}");
        assert!((f(&p["accuracy"]) - accuracy).abs() < 1e-9, "{p}");
    }
    for p in curve {
        assert!(f(&p["cheap_share"]) <= last_share, "{p}");
        last_share = f(&p["cheap_share"]);
    }
    match cal["recommendation"].as_object() {
        Some(r) => {
            let r = Value::Object(r.clone());
            assert!(f(&r["accuracy"]) >= f(&cal["target_accuracy"]) - 1e-9, "{r}");
            assert_eq!(point(&r), (f(&r["cheap_share"]), f(&r["accuracy"])));
            assert!(
                r["toml"]
                    .as_str()
                    .is_some_and(|t| t.contains("verify = \"score\"")),
                "{r}"
            );
        }
        None => assert!(
            f(&cal["best_accuracy"]["accuracy"]) < f(&cal["target_accuracy"]),
            "{cal}"
        ),
    }
}
