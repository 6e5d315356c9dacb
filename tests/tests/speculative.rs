//! Speculative decoding in `wick serve` configured by a file: a draft entry runs inside its
//! target's engine (served on its own only where a route names it), vLLM's spec-decode counters
//! on /metrics count its proposals, and a draft with another vocabulary stops start-up with both
//! sizes named. The SDK-level checks (answers equal plain decoding) are in openai_python.rs.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use wick_tests::{
    default_model, fallback_model, free_port, http_get, metric, post_json, wick_binary, Server,
};

const DRAFT: &str = "vllm:spec_decode_num_draft_tokens_total";
const ACCEPTED: &str = "vllm:spec_decode_num_accepted_tokens_total";

/// The default model dequantized to f32 (`target`), drafted for by the same file kept as stored
/// (`small`), with JSON logs; `extra` is appended.
fn config(extra: &str) -> String {
    let source = default_model();
    let text = format!(
        r#"
[engine]
dtype = "f32"

[[models]]
id = "target"
source = "{source}"
served_name = "target"
draft = "small"
num_speculative_tokens = 5

[[models]]
id = "small"
source = "{source}"
served_name = "small"
dtype = "auto"

[logging]
format = "json"
{extra}"#
    );
    let path = std::env::temp_dir().join(format!(
        "wick-speculative-{}-{}.toml",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

/// `name`'s sample for `model`, as /metrics shows it now.
fn counter(port: u16, name: &str, model: &str) -> Option<f64> {
    metric(port, &format!("{name}{{model_name=\"{model}\"}} "))
}

fn model_ids(port: u16) -> Vec<String> {
    let (status, text) = http_get(port, "/v1/models").expect("models");
    assert_eq!(status, 200, "{text}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let models: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    let data = models["data"].as_array().expect("a list");
    data.iter()
        .filter_map(|m| m["id"].as_str().map(String::from))
        .collect()
}

fn chat_reply(port: u16, model: &str) -> wick_tests::Reply {
    let r = post_json(
        port,
        "/v1/chat/completions",
        &json!({
            "model": model,
            "messages": [{"role": "user", "content": "Count from one to twenty in words."}],
            "temperature": 0,
            "max_tokens": 32,
        }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r
}

#[test]
fn a_draft_from_the_file_speculates_inside_its_target_and_metrics_count_it() {
    let server = Server::start(&["--config", &config("")]);
    let port = server.port;
    // `small` only drafts: not a model of its own, and the only servable model is `target`
    // although the file names no `server.model`.
    assert_eq!(model_ids(port), ["target"]);
    let log = std::fs::read_to_string(Server::log_path(port)).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains(r#""message":"speculative decoding on""#)
                && l.contains(r#""method":"draft model""#)
                && l.contains(r#""k":5"#)),
        "{log}"
    );
    // The counters exist from the start, at 0, labelled like the other per-model metrics.
    assert_eq!(counter(port, DRAFT, "target"), Some(0.0));
    assert_eq!(counter(port, ACCEPTED, "target"), Some(0.0));
    assert_eq!(
        counter(port, DRAFT, "small"),
        None,
        "the draft has no metrics of its own"
    );

    let reply = chat_reply(port, "target");
    let answer = reply.json();
    assert!(
        answer["usage"]["completion_tokens"]
            .as_u64()
            .is_some_and(|n| n > 1),
        "{answer}"
    );
    let (proposed, accepted) = (
        counter(port, DRAFT, "target").expect("draft tokens"),
        counter(port, ACCEPTED, "target").expect("accepted tokens"),
    );
    // The engine speculates in the first decode steps of a batch size before it measures
    // whether speculation pays, so the first request's proposals are counted.
    assert!(
        accepted > 0.0 && accepted <= proposed,
        "{proposed} proposed, {accepted} accepted"
    );
    // The one request's own share: OpenAI's prediction-token fields, and a header. Every
    // proposal is one or the other; accepted ones past the end of the answer (after its end
    // of turn) count for the engine's acceptance but are not in the completion.
    let details = &answer["usage"]["completion_tokens_details"];
    let (kept, rejected) = (
        details["accepted_prediction_tokens"].as_f64().expect("accepted"),
        details["rejected_prediction_tokens"].as_f64().expect("rejected"),
    );
    assert_eq!(kept + rejected, proposed, "{answer}");
    assert!(kept <= accepted, "{answer}");
    let completion = answer["usage"]["completion_tokens"].as_f64().expect("completion");
    assert!(kept < completion, "the first token is the prefill's: {answer}");
    assert_eq!(
        reply.header("x-wick-draft"),
        Some(format!("accepted={kept}/{proposed}").as_str())
    );
}

#[test]
fn a_draft_a_route_names_is_served_too_without_speculating() {
    let routes =
        "\n[server]\nmodel = \"target\"\n\n[[routes]]\nname = \"auto\"\ntiers = [\"small\", \"target\"]\n";
    let server = Server::start(&["--config", &config(routes)]);
    let port = server.port;
    let ids = model_ids(port);
    for id in ["target", "small", "auto"] {
        assert!(ids.iter().any(|m| m == id), "{id} not in {ids:?}");
    }
    // `small` answers with an engine of its own, which does not speculate: no prediction
    // fields, no header.
    let reply = chat_reply(port, "small");
    assert_eq!(reply.header("x-wick-draft"), None);
    assert!(reply.json()["usage"].get("completion_tokens_details").is_none());
    assert_eq!(counter(port, DRAFT, "small"), Some(0.0));
    assert!(counter(port, "vllm:generation_tokens_total", "small").is_some_and(|n| n > 0.0));
}

/// The Qwen fallback model (151936 tokens) cannot draft for the default model (49152): start-up
/// fails, non-zero, naming both sizes and the model whose engine could not start.
#[test]
fn a_draft_with_another_vocabulary_stops_serve() {
    let port = free_port();
    let log = Server::log_path(port);
    let child = Command::new(wick_binary())
        .args(["serve", "--port", &port.to_string(), "--kv-cache-mib", "64"])
        .args(["--draft-model", &fallback_model()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("wick starts");
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "wick serve still running with a mismatched draft (answers /ready: {:?})",
            http_get(port, "/ready").map(|r| r.0)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(&log).expect("log");
    assert!(!status.success(), "{err}");
    assert!(err.contains("starting the engine of `default`"), "{err}");
    assert!(
        err.contains("vocabulary (151936 tokens)") && err.contains("(49152 tokens)"),
        "{err}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What plain greedy decoding of the f32 default model says to `prompt` (a process of its own,
/// no speculation): the fallback alone.
fn plain_answer(prompt: &str, max_tokens: u32) -> String {
    let out = Command::new(wick_binary())
        .args(["generate", "--chat", "--dtype", "f32", "--prompt", prompt])
        .args(["--max-tokens", &max_tokens.to_string()])
        .output()
        .expect("wick generate runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

/// A lossless route (`verify = "lossless"`): the fallback answers every request, its engine
/// drafting with the route's cheap tier, so each answer, streamed or not, is the fallback's
/// own (plain decoding's, request by request), with the drafted share in a header and in
/// usage; no cheap answer is judged.
#[test]
fn a_lossless_route_answers_as_its_fallback_alone_drafted_by_its_cheap_tier() {
    const MAX_TOKENS: u32 = 24;
    let route = "\n[server]\nmodel = \"target\"\n\n[[routes]]\nname = \"code\"\ntiers = [\"small\", \"target\"]\npolicy = { verify = \"lossless\" }\n";
    let server = Server::start(&["--config", &config(route)]);
    let port = server.port;
    let prompts = [
        "Count from one to twenty in words.",
        "Write a Python function that reverses a string.",
        "What is the capital of France?",
    ];
    let (mut proposed, mut kept) = (0, 0);
    for prompt in prompts {
        let body = json!({
            "model": "code",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        });
        let r = post_json(port, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let answer = r.json();
        let content = answer["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert_eq!(content, plain_answer(prompt, MAX_TOKENS), "{prompt}");
        assert_eq!(r.header("x-wick-backend"), Some("target"));
        assert_eq!(r.header("x-wick-escalation"), None, "nothing is judged");
        let details = &answer["usage"]["completion_tokens_details"];
        let accepted = details["accepted_prediction_tokens"].as_u64().expect("accepted");
        let rejected = details["rejected_prediction_tokens"].as_u64().expect("rejected");
        assert_eq!(
            r.header("x-wick-draft"),
            Some(format!("accepted={accepted}/{}", accepted + rejected).as_str())
        );
        proposed += accepted + rejected;
        kept += accepted;

        // Streamed: the same text, from the same tier, and the drafted share in its usage.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let r = post_json(port, "/v1/chat/completions", &streamed);
        assert_eq!((r.status, r.header("x-wick-backend")), (200, Some("target")));
        let chunks: Vec<serde_json::Value> = r
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, content, "{prompt}, streamed");
        let details = chunks
            .iter()
            .find_map(|c| c["usage"].get("completion_tokens_details"))
            .expect("the usage chunk's prediction tokens");
        let count = |key: &str| details[key].as_u64().expect(key);
        proposed += count("accepted_prediction_tokens") + count("rejected_prediction_tokens");
        kept += count("accepted_prediction_tokens");
    }
    // The route counts its fallback's verified proposals, streamed and not.
    let drafted = |outcome: &str| {
        let line = format!(
            "wick_router_draft_tokens_total{{backend=\"target\",outcome=\"{outcome}\",route=\"code\"}} "
        );
        wick_tests::metric(port, &line).unwrap_or(0.0) as u64
    };
    assert_eq!(
        (drafted("accepted"), drafted("rejected")),
        (kept, proposed - kept)
    );
    // The engine speculates in the first steps of each batch size before it measures.
    assert!(proposed > 0, "the cheap tier drafted nothing");
    // The cheap tier's own engine answered nothing: it only drafted.
    assert_eq!(counter(port, "vllm:generation_tokens_total", "small"), Some(0.0));
}

/// `verify = "lossless"` without the fallback drafting with a cheaper tier stops start-up
/// with the file's line and the fix.
#[test]
fn a_lossless_route_whose_fallback_does_not_draft_is_refused() {
    let source = default_model();
    let text = format!(
        "[[models]]\nid = \"big\"\nsource = \"{source}\"\n\n[[models]]\nid = \"small\"\nsource = \"{source}\"\n\n\
         [server]\nmodel = \"big\"\n\n[[routes]]\nname = \"code\"\ntiers = [\"small\", \"big\"]\npolicy = {{ verify = \"lossless\" }}\n"
    );
    let path = std::env::temp_dir().join(format!("wick-lossless-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(wick_binary())
        .args(["serve", "--config", &path.to_string_lossy()])
        .output()
        .expect("wick serve runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("routes[0].policy.verify"), "{stderr}");
    assert!(
        stderr.contains("add `draft = \"small\"` to the [[models]] entry `big`"),
        "{stderr}"
    );
}
