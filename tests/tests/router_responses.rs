//! The Responses API (`/v1/responses`) through the router, with real processes: a `large` wick
//! (the fallback model, Qwen2.5-Coder-0.5B, reached over HTTP) behind a router wick that serves
//! `small` (the default model) itself and the routes. The router serves a Responses request as
//! the chat request it becomes, so cascade, failover, breakers and the `x-wick-*` headers work as
//! for `/v1/chat/completions` (tests/tests/router.rs), and a remote tier is driven through its
//! `/v1/chat/completions`. In-process tiers: tests/tests/local_tiers.rs.

use serde_json::{json, Value};
use wick_tests::{fallback_model, free_port, metric, post_json as post, sse_events, Server};

fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a colour."}]})
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
name = "auto"               # the defaults: escalate on length
tiers = ["small", "large"]

[[routes]]
name = "lenient"
tiers = ["small", "large"]
policy = {{ escalate_on_length = false }}

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

/// The Responses API through the same routes, the second tier another wick process: the
/// router drives the remote through its `/v1/chat/completions` (its `/v1/responses` is never
/// called), cascades and fails over as for chat and says so in its headers, streamed or not;
/// what it answered is stored, so `previous_response_id` and `item_reference` continue it.
#[test]
fn responses_through_routes_over_real_processes() {
    let dir = std::env::temp_dir().join(format!("wick-router-responses-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("config written");
        path.display().to_string()
    };
    let large_port = free_port();
    let large_cfg = write(
        "large.toml",
        &format!(
            "[[models]]\nid = \"large\"\nserved_name = \"large\"\nsource = {:?}\n",
            fallback_model()
        ),
    );
    let mut large = Some(Server::start_on(large_port, &["--config", &large_cfg]));
    let router_cfg = write("router.toml", &router_config(large_port));
    let router = Server::start(&["--config", &router_cfg]);
    let port = router.port;
    let ask = |model: &str, max_tokens: u32, stream: bool| {
        json!({"model": model, "input": "Name a colour.", "max_output_tokens": max_tokens,
            "temperature": 0, "stream": stream})
    };
    let text_of = |r: &Value| r["output"][0]["content"][0]["text"].clone();
    let served = |handler: &str| {
        metric(
            large_port,
            &format!(r#"http_requests_total{{handler="{handler}",status="200"}}"#),
        )
        .unwrap_or(0.0)
    };

    // The cheap tier's answer stands: `small` answers, as it answers the same chat request.
    let chat_small = post(port, "/v1/chat/completions", &chat("lenient", 4));
    let r = post(port, "/v1/responses", &ask("lenient", 4, false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert_eq!(r.header("x-wick-escalation"), None);
    assert_eq!(r.json()["model"], "small");
    assert_eq!(
        text_of(&r.json()),
        chat_small.json()["choices"][0]["message"]["content"]
    );

    // `auto` escalates on length to the remote `large`, driven through its chat endpoint.
    let chat_large = post(port, "/v1/chat/completions", &chat("auto", 4));
    assert_eq!(chat_large.header("x-wick-backend"), Some("large"));
    let large_text = chat_large.json()["choices"][0]["message"]["content"].clone();
    // `large` may end before 4 tokens: its chat answer says which the response must be.
    let cut = chat_large.json()["choices"][0]["finish_reason"] == "length";
    let (status, last_event) = if cut {
        ("incomplete", "response.incomplete")
    } else {
        ("completed", "response.completed")
    };
    let (chats, responses) = (served("/v1/chat/completions"), served("/v1/responses"));
    let r = post(port, "/v1/responses", &ask("auto", 4, false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("large"));
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    let first = r.json();
    assert_eq!(first["model"], "large");
    assert_eq!(first["status"], status, "{first}");
    assert_eq!(text_of(&first), large_text);
    assert_eq!(
        first["usage"]["output_tokens"],
        chat_large.json()["usage"]["completion_tokens"]
    );
    let r = post(port, "/v1/responses", &ask("auto", 4, true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("large"));
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let events = sse_events(&r.body);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&last_event), "{kinds:?}");
    assert_eq!(events[0].1["response"]["model"], "large");
    let deltas: String = events
        .iter()
        .filter(|(k, _)| k == "response.output_text.delta")
        .filter_map(|(_, e)| e["delta"].as_str())
        .collect();
    assert_eq!(json!(deltas), large_text);
    let last = &events[events.len() - 1].1["response"];
    assert_eq!(text_of(last), large_text);
    assert_eq!(last["usage"]["output_tokens"], first["usage"]["output_tokens"]);
    // Both went to the remote's chat endpoint; none to its Responses API.
    assert_eq!(served("/v1/chat/completions") - chats, 2.0);
    assert_eq!(served("/v1/responses") - responses, 0.0);

    // The routed response is stored: a follow-up by `previous_response_id`, or naming its
    // message by `item_reference`, is the conversation sent whole.
    let follow = |input: Value, previous: Option<&Value>| {
        let mut body = json!({"model": "lenient", "input": input, "max_output_tokens": 4, "temperature": 0});
        if let Some(id) = previous {
            body["previous_response_id"] = id.clone();
        }
        let r = post(port, "/v1/responses", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let then = json!({"role": "user", "content": "And another?"});
    let whole = follow(
        json!([{"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": large_text}, then]),
        None,
    );
    let continued = follow(json!([then]), Some(&first["id"]));
    let referenced = follow(
        json!([{"role": "user", "content": "Name a colour."},
            {"type": "item_reference", "id": first["output"][0]["id"]}, then]),
        None,
    );
    for r in [&continued, &referenced] {
        assert_eq!(r["usage"]["input_tokens"], whole["usage"]["input_tokens"], "{r}");
        assert_eq!(text_of(r), text_of(&whole));
    }
    let r = post(
        port,
        "/v1/responses",
        &json!({"model": "auto", "input": [{"type": "item_reference", "id": "msg_nope"}]}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "input[0].id");
    assert_eq!(r.header("x-wick-backend"), None, "refused before routing");

    // A pinned tier: no cascade.
    let mut pinned = ask("auto", 4, false);
    pinned["metadata"] = json!({"wick_route": "small"});
    let r = post(port, "/v1/responses", &pinned);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert_eq!(r.header("x-wick-escalation"), None);
    assert_eq!(r.json()["metadata"]["wick_route"], "small", "echoed as sent");

    // Failover: with `large` gone, `large-first` is answered by `small`, streamed or not;
    // after one failure its breaker is open and `large` is skipped.
    drop(large.take());
    let r = post(port, "/v1/responses", &ask("large-first", 4, false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    assert_eq!(r.header("x-wick-failover"), Some("large:unreachable"));
    assert_eq!(r.json()["model"], "small");
    let r = post(port, "/v1/responses", &ask("large-first", 4, true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("small"));
    // Open after one failure (unless its 2 s cooldown passed already on a slow machine).
    assert!(
        matches!(
            r.header("x-wick-failover"),
            Some("large:breaker_open" | "large:unreachable")
        ),
        "{:?}",
        r.headers
    );
    let events = sse_events(&r.body);
    assert_eq!(events[0].1["response"]["model"], "small");
    assert_eq!(
        text_of(&events[events.len() - 1].1["response"]),
        chat_small.json()["choices"][0]["message"]["content"]
    );
    // No tier left: the router's 503 in OpenAI's shape, saying why.
    let r = post(port, "/v1/responses", &ask("only-large", 4, false));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("no tier")));
    assert_eq!(r.header("x-wick-failover"), Some("large:unreachable"));
    drop(router);
    let _ = std::fs::remove_dir_all(dir);
}
