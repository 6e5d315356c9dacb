//! The router with real processes: a `large` wick (the fallback model, Qwen2.5-Coder-0.5B, a
//! separate process reached over HTTP) behind a router wick that serves `small` (the default
//! model) itself and the routes. Each escalation trigger, failover when the large process is killed, the breaker
//! opening and recovering after a restart, streaming passthrough, and that `model` and the
//! `x-wick-*` headers say who answered. The Responses API through routes: router_responses.rs.

use std::time::Duration;

use serde_json::{json, Value};
use wick_tests::{fallback_model, free_port, http_get, metric, post_json as post, Server};

/// The content of a streamed chat answer, and the `model` of its chunks.
fn streamed_content(body: &str) -> (String, Vec<String>) {
    let mut content = String::new();
    let mut models = Vec::new();
    for data in body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        models.push(v["model"].as_str().unwrap_or_default().to_string());
        if let Some(c) = v.pointer("/choices/0/delta/content").and_then(Value::as_str) {
            content.push_str(c);
        }
        assert!(
            v.pointer("/choices/0/logprobs").is_none_or(Value::is_null),
            "{data}"
        );
    }
    (content, models)
}

/// The usage chunk of a streamed answer (`usage` set, `choices` empty), if it has one.
fn streamed_usage(body: &str) -> Option<Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .find(|v| v["choices"].as_array().is_some_and(Vec::is_empty) && v["usage"].is_object())
        .map(|v| v["usage"].clone())
}

fn tokens_of(usage: &Value, key: &str) -> f64 {
    usage[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {usage}"))
}

fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a colour."}]})
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("config written");
    path.display().to_string()
}

fn router_config(large_port: u16) -> String {
    format!(
        r#"
[engine]
max_model_len = 160         # the small tier's context: long prompts escalate to `large`

[[models]]
id = "small"
served_name = "small"
price_input_per_mtok = 0.1
price_output_per_mtok = 0.2

[[models]]
id = "large"
url = "http://127.0.0.1:{large_port}/v1"
served_name = "large"
timeout_secs = 60
price_input_per_mtok = 1.0
price_output_per_mtok = 2.0

[[routes]]
name = "priced"
tiers = ["small", "large"]
policy = {{ escalate_on_length = false }}

[[routes]]
name = "auto"               # the defaults: escalate on length
tiers = ["small", "large"]

[[routes]]
name = "lenient"
tiers = ["small", "large"]
policy = {{ escalate_on_length = false }}

[[routes]]
name = "strict"             # no real answer has a mean logprob this high
tiers = ["small", "large"]
policy = {{ escalate_on_length = false, min_mean_logprob = -0.0001 }}

[[routes]]
name = "strict-late"        # a threshold every answer passes, so logprobs are asked and removed
tiers = ["small", "large"]
policy = {{ escalate_on_length = false, min_token_logprob = -1000.0 }}

[[routes]]
name = "abstain"            # " " matches any answer of two words or more
tiers = ["small", "large"]
policy = {{ escalate_on_length = false, abstain_patterns = [" "] }}

[[routes]]
name = "large-first"
tiers = ["large", "small"]
policy = {{ escalate_on_length = false, breaker_failures = 1, breaker_cooldown_secs = 2 }}

[[routes]]
name = "only-large"
tiers = ["large"]
"#
    )
}

#[test]
fn cascade_failover_breaker_and_streaming_through_real_processes() {
    let dir = tempfile_dir();
    let large_port = free_port();
    let large_cfg = write(
        &dir,
        "large.toml",
        &format!(
            "[[models]]\nid = \"large\"\nserved_name = \"large\"\nsource = {:?}\n",
            fallback_model()
        ),
    );
    let mut large = Some(Server::start_on(large_port, &["--config", &large_cfg]));
    let router_cfg = write(&dir, "router.toml", &router_config(large_port));
    let router = Server::start(&["--config", &router_cfg]);
    let port = router.port;

    // /v1/models: the local model, the routes with their tiers, the remote backend.
    let (_, models) = http_get(port, "/v1/models").expect("models");
    let models: Value = serde_json::from_str(models.split_once("\r\n\r\n").unwrap().1).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["small", "auto", "lenient", "strict", "large-first", "large"] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }
    let auto = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "auto")
        .unwrap();
    assert_eq!(auto["tiers"], json!(["small", "large"]));

    // The cheap tier's answer stands: it answered, under its own model name.
    let r = post(port, "/v1/chat/completions", &chat("lenient", 4));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert_eq!(r.header("x-wick-escalation"), None);
    assert_eq!(r.json()["model"], "small");

    // Each escalation trigger passes the request up to `large`.
    let escalated = |route: &str, body: &Value, reason: &str| {
        let r = post(port, "/v1/chat/completions", body);
        assert_eq!(r.status, 200, "{route}: {}", r.body);
        assert_eq!(r.header("x-wick-backend"), Some("large"), "{route}");
        assert_eq!(
            r.header("x-wick-escalation"),
            Some(format!("small:{reason}").as_str()),
            "{route}"
        );
        assert_eq!(r.json()["model"], "large", "{route}");
        r
    };
    escalated("auto", &chat("auto", 4), "length");
    let r = escalated("strict", &chat("strict", 8), "low_mean_logprob");
    // The router asked for logprobs to decide; the client did not, so it gets none.
    assert!(r.json()["choices"][0]["logprobs"].is_null(), "{}", r.body);
    let mut with_logprobs = chat("strict", 8);
    with_logprobs["logprobs"] = json!(true);
    let r = escalated("strict", &with_logprobs, "low_mean_logprob");
    assert!(
        r.json()["choices"][0]["logprobs"]["content"].is_array(),
        "{}",
        r.body
    );
    escalated("abstain", &chat("abstain", 8), "abstain");
    let long = json!({"model": "lenient", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "tell me more ".repeat(80)}]});
    escalated("lenient", &long, "context");
    // Completions go through routes too.
    let r = post(
        port,
        "/v1/completions",
        &json!({"model": "auto", "prompt": "One, two,", "max_tokens": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("large"));
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    // A request error is the client's: the same for every tier, answered at once.
    let mut bad = chat("auto", 4);
    bad["temperature"] = json!(-1);
    let r = post(port, "/v1/chat/completions", &bad);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert!(r.json()["error"]["message"].is_string());

    // Streaming passes through from the first tier that answers, committed from the start.
    let mut stream = chat("large-first", 6);
    stream["stream"] = json!(true);
    let r = post(port, "/v1/chat/completions", &stream);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("large"));
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    assert!(
        r.body.contains(r#""model":"large""#) && r.body.contains("data: [DONE]"),
        "{}",
        r.body
    );

    // An explicit tier: `metadata.wick_route` or the `x-wick-route` header; no cascade.
    let mut pinned = chat("auto", 4);
    pinned["metadata"] = json!({"wick_route": "large"});
    let r = post(port, "/v1/chat/completions", &pinned);
    assert_eq!(r.header("x-wick-backend"), Some("large"));
    assert_eq!(r.header("x-wick-escalation"), None);
    let body = chat("auto", 4).to_string();
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nx-wick-route: small\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = wick_tests::request_raw(port, &raw).expect("answer");
    assert!(text.contains("x-wick-backend: small"), "{text}");
    assert!(
        !text.contains("x-wick-escalation"),
        "pinned: no cascade, even cut at 4 tokens"
    );
    pinned["metadata"] = json!({"wick_route": "huge"});
    let r = post(port, "/v1/chat/completions", &pinned);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "x-wick-route");

    // Cost: the answer priced on the tier that gave it and, for the saving, on the fallback
    // (10x the prices here, so 10x the cost).
    let r = post(port, "/v1/chat/completions", &chat("priced", 8));
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    let usage = &r.json()["usage"];
    let tokens = |k: &str| usage[k].as_f64().unwrap();
    let spent = metric(port, r#"wick_router_cost_total{backend="small",route="priced"}"#).unwrap();
    let want = (tokens("prompt_tokens") * 0.1 + tokens("completion_tokens") * 0.2) / 1e6;
    assert!((spent - want).abs() < 1e-12, "{spent} vs {want}");
    let fallback = metric(port, r#"wick_router_fallback_cost_total{route="priced"}"#).unwrap();
    assert!(
        (fallback - 10.0 * want).abs() < 1e-11,
        "{fallback} vs {}",
        10.0 * want
    );

    // The streaming cascade: the first tokens are held and judged like a whole answer.
    let streamed = |body: &Value| {
        let mut body = body.clone();
        body["stream"] = json!(true);
        post(port, "/v1/chat/completions", &body)
    };

    // Streams are priced too, from the usage chunk the router asks for (and removes again when
    // the client did not ask for it).
    let cost = |route: &str, backend: &str| {
        let line = format!(r#"wick_router_cost_total{{backend="{backend}",route="{route}"}}"#);
        metric(port, &line).unwrap_or(0.0)
    };
    let fallback_cost = |route: &str| {
        metric(
            port,
            &format!(r#"wick_router_fallback_cost_total{{route="{route}"}}"#),
        )
        .unwrap_or(0.0)
    };
    let small_price =
        |u: &Value| (tokens_of(u, "prompt_tokens") * 0.1 + tokens_of(u, "completion_tokens") * 0.2) / 1e6;
    let large_price =
        |u: &Value| (tokens_of(u, "prompt_tokens") * 1.0 + tokens_of(u, "completion_tokens") * 2.0) / 1e6;
    let close =
        |got: f64, want: f64, what: &str| assert!((got - want).abs() < 1e-12, "{what}: {got} vs {want}");
    let mut with_usage = chat("priced", 8);
    with_usage["stream_options"] = json!({"include_usage": true});
    // Held (8 tokens end within the hold of 32), judged, committed: the client asked for the
    // usage, so it is passed on; it is charged on `small` and, for the saving, on the fallback.
    let (spent, saved) = (cost("priced", "small"), fallback_cost("priced"));
    let r = streamed(&with_usage);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    let usage = streamed_usage(&r.body).unwrap_or_else(|| panic!("no usage chunk: {}", r.body));
    assert_eq!(r.body.matches(r#""usage""#).count(), 1, "{}", r.body);
    close(
        cost("priced", "small") - spent,
        small_price(&usage),
        "streamed cost",
    );
    close(
        fallback_cost("priced") - saved,
        large_price(&usage),
        "streamed fallback cost",
    );
    // The same request without include_usage: priced the same, and no usage chunk for the client.
    let (spent, saved) = (cost("priced", "small"), fallback_cost("priced"));
    let r = streamed(&chat("priced", 8));
    assert!(!r.body.contains(r#""usage""#), "{}", r.body);
    assert!(r.body.ends_with("data: [DONE]\n\n"), "{}", r.body);
    close(
        cost("priced", "small") - spent,
        small_price(&usage),
        "cost without include_usage",
    );
    close(
        fallback_cost("priced") - saved,
        large_price(&usage),
        "fallback without include_usage",
    );
    // An escalated stream: the dropped attempt (it ended within the hold, so its usage came) is
    // charged on `small`, the answer, passed through from the last tier, on `large`. `small`'s
    // usage for the same request: a non-streamed call pinned to it (charged once more).
    let (spent_small, spent_large, saved) = (
        cost("auto", "small"),
        cost("auto", "large"),
        fallback_cost("auto"),
    );
    let mut pinned_small = chat("auto", 4);
    pinned_small["metadata"] = json!({"wick_route": "small"});
    let r = post(port, "/v1/chat/completions", &pinned_small);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    let small_usage = r.json()["usage"].clone();
    let mut escalating = chat("auto", 4);
    escalating["stream_options"] = json!({"include_usage": true});
    let r = streamed(&escalating);
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    let large_usage = streamed_usage(&r.body).unwrap_or_else(|| panic!("no usage chunk: {}", r.body));
    close(
        cost("auto", "small") - spent_small,
        2.0 * small_price(&small_usage),
        "escalated attempt",
    );
    close(
        cost("auto", "large") - spent_large,
        large_price(&large_usage),
        "passed through",
    );
    let answers_on_fallback = large_price(&small_usage) + large_price(&large_usage);
    close(
        fallback_cost("auto") - saved,
        answers_on_fallback,
        "fallback cost of both answers",
    );
    let r = streamed(&chat("auto", 4));
    assert_eq!(r.header("x-wick-backend"), Some("large"), "{:?}", r.headers);
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    let (_, models) = streamed_content(&r.body);
    assert!(
        !models.is_empty() && models.iter().all(|m| m == "large"),
        "{models:?}"
    );
    let r = streamed(&chat("strict", 8));
    assert_eq!(r.header("x-wick-escalation"), Some("small:low_mean_logprob"));
    // Judged and committed after 32 held tokens: the client gets the whole answer, held part
    // and rest, identical to the non-streamed one (and without the router's logprobs).
    for (route, max_tokens) in [("lenient", 60), ("strict-late", 60)] {
        let mut ask = chat(route, max_tokens);
        ask["messages"][0]["content"] = json!("Write a short story about a cat.");
        let whole = post(port, "/v1/chat/completions", &ask);
        let r = streamed(&ask);
        assert_eq!(r.header("x-wick-backend"), Some("small"), "{route}");
        let (content, models) = streamed_content(&r.body);
        assert!(models.iter().all(|m| m == "small"), "{route}");
        assert_eq!(
            content,
            whole.json()["choices"][0]["message"]["content"].as_str().unwrap(),
            "{route}"
        );
        assert!(r.body.ends_with("data: [DONE]\n\n"), "{route}");
        assert!(
            whole.json()["usage"]["completion_tokens"].as_u64().unwrap() > 32,
            "{route}: too short to test the hold"
        );
    }

    // Failover: with `large` gone, `large-first` is answered by `small`...
    drop(large.take());
    let r = post(port, "/v1/chat/completions", &chat("large-first", 4));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert_eq!(r.header("x-wick-failover"), Some("large:unreachable"));
    // ...and after one failure (breaker_failures = 1) the breaker is open: `large` is skipped.
    let r = post(port, "/v1/chat/completions", &chat("large-first", 4));
    assert_eq!(r.header("x-wick-failover"), Some("large:breaker_open"));
    let breaker = r#"wick_router_breaker_state{backend="large",route="large-first"}"#;
    assert_eq!(metric(port, breaker), Some(1.0));
    // A route with no tier left answers 503 in OpenAI's error format.
    let r = post(port, "/v1/chat/completions", &chat("only-large", 4));
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("no tier"));
    // `auto` still answers with its cheap tier; the failed escalation keeps the cheap answer.
    let r = post(port, "/v1/chat/completions", &chat("auto", 4));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    assert_eq!(r.header("x-wick-failover"), Some("large:unreachable"));

    // Recovery: `large` comes back; after the cooldown the breaker half-opens, the trial
    // request succeeds and closes it.
    let _large = Server::start_on(large_port, &["--config", &large_cfg]);
    std::thread::sleep(Duration::from_millis(2100));
    let r = post(port, "/v1/chat/completions", &chat("large-first", 4));
    assert_eq!(r.header("x-wick-backend"), Some("large"), "{:?}", r.headers);
    assert_eq!(metric(port, breaker), Some(0.0));
    // Metrics count who answered and why.
    assert!(
        metric(
            port,
            r#"wick_router_requests_total{backend="large",route="strict"}"#
        ) >= Some(2.0)
    );
    assert!(
        metric(
            port,
            r#"wick_router_escalations_total{backend="small",reason="context",route="lenient"}"#
        ) >= Some(1.0)
    );
    assert!(
        metric(
            port,
            r#"wick_router_failovers_total{backend="large",reason="unreachable",route="large-first"}"#
        ) >= Some(1.0)
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wick-router-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn the_cascade_example_config_serves_auto_and_fails_over_when_large_is_absent() {
    let cfg = wick_tests::root().join("config/examples/cascade.toml");
    let server = Server::start(&["--config", &cfg.display().to_string()]);
    // Cut at 4 tokens, `small`'s answer escalates; `wick-large` does not resolve here, so the
    // cheap answer is returned, saying why.
    let r = post(server.port, "/v1/chat/completions", &chat("auto", 4));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    assert!(
        r.header("x-wick-failover")
            .is_some_and(|f| f.starts_with("large:")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.json()["model"], "smollm2-135m");
}
