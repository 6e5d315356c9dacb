//! Several local models in one process (issue #7): the default model as `small` and the
//! fallback model (Qwen2.5-Coder-0.5B) as `large`, each with its own engine, behind a route
//! `auto` whose tiers are both local. Clients may name either model directly; the route
//! escalates from one engine to the other in process; each model has its own metrics. Also:
//! remote backends asked for by name, pre-routing on what a tier's model lacks, and the
//! Responses API through the same routes (escalation, failover, headers, streamed or not).

use serde_json::{json, Value};
use wick_tests::{fallback_model, free_port, http_get, post_json, sse_events, Server};

fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a colour."}]})
}

fn body(text: &str) -> Value {
    serde_json::from_str(text.split_once("\r\n\r\n").expect("a body").1).expect("JSON")
}

#[test]
fn two_local_models_each_answer_and_a_route_escalates_between_them() {
    let dir = std::env::temp_dir().join(format!("wick-local-tiers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unreachable = free_port();
    let cfg = format!(
        r#"
[server]
model = "small"

[[models]]
id = "small"
served_name = "small"

[[models]]
id = "large"
served_name = "large"
source = {large:?}

[[models]]
id = "remote"               # nothing listens there
url = "http://127.0.0.1:{unreachable}/v1"
timeout_secs = 5

[[models]]
id = "vision"               # nothing listens there either; it would take images
url = "http://127.0.0.1:{unreachable}/v1"
capabilities = ["image_input"]

[[models]]
id = "plain"                # a text-only remote: no tools
url = "http://127.0.0.1:{unreachable}/v1"
capabilities = []

[[models]]
id = "unused"               # named by no route: not loaded
source = "/nonexistent.gguf"

[[routes]]
name = "auto"
tiers = ["small", "large"]

[[routes]]
name = "spare"
tiers = ["remote", "large"]

[[routes]]
name = "see"
tiers = ["small", "vision"]

[[routes]]
name = "toolful"
tiers = ["plain", "large"]
"#,
        large = fallback_model()
    );
    let path = dir.join("local-tiers.toml");
    std::fs::write(&path, cfg).expect("config written");
    let server = Server::start(&["--config", &path.display().to_string()]);
    let port = server.port;

    let (status, ready) = http_get(port, "/ready").expect("ready");
    assert_eq!(status, 200);
    assert_eq!(body(&ready)["models"], json!(["small", "large"]));

    // /v1/models: both local models (each with its context), the routes, the remote backend.
    let (_, models) = http_get(port, "/v1/models").expect("models");
    let models = body(&models);
    let data = models["data"].as_array().expect("a list");
    let card = |id: &str| data.iter().find(|m| m["id"] == id).cloned();
    for id in ["small", "large"] {
        let c = card(id).unwrap_or_else(|| panic!("{id} not in {models}"));
        assert_eq!(c["owned_by"], "wick", "{c}");
        assert!(c["max_model_len"].as_u64().is_some_and(|n| n > 0), "{c}");
    }
    assert_eq!(card("auto").expect("route")["tiers"], json!(["small", "large"]));
    assert_eq!(card("remote").expect("remote backend")["owned_by"], "remote");
    assert!(card("unused").is_none(), "{models}");

    // Each local model answers under its own name, from its own engine (the two vocabularies
    // differ, so the same prompt's usage differs).
    let small = post_json(port, "/v1/chat/completions", &chat("small", 6));
    let large = post_json(port, "/v1/chat/completions", &chat("large", 6));
    for (r, name) in [(&small, "small"), (&large, "large")] {
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.json()["model"], name);
        assert_eq!(r.header("x-wick-backend"), None, "a direct request is not routed");
    }
    assert_ne!(
        small.json()["usage"]["prompt_tokens"],
        large.json()["usage"]["prompt_tokens"],
        "two tokenizers"
    );

    // The route escalates from the small engine to the large one, in process: the answer is
    // the one `large` gives directly.
    let r = post_json(port, "/v1/chat/completions", &chat("auto", 6));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("large"));
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    assert_eq!(r.json()["model"], "large");
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        large.json()["choices"][0]["message"]["content"]
    );

    // Streaming from the second model.
    let mut streamed = chat("large", 6);
    streamed["stream"] = json!(true);
    let r = post_json(port, "/v1/chat/completions", &streamed);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut content = String::new();
    for data in r.body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("a chunk");
        assert_eq!(v["model"], "large", "{data}");
        content.push_str(
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
    }
    assert_eq!(json!(content), large.json()["choices"][0]["message"]["content"]);

    // A remote backend by name is proxied (here: unreachable, so a 503 that says so); the
    // route `spare` fails over from it to the local `large`.
    let r = post_json(port, "/v1/chat/completions", &chat("remote", 4));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("x-wick-failover"), Some("remote:unreachable"));
    let r = post_json(port, "/v1/chat/completions", &chat("spare", 4));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("large"));

    // Pre-routing on capabilities: an image skips the text-only tiers (here the vision tier is
    // unreachable, so 503, saying both); with no tier that takes images, a 400 naming
    // `messages`; tools skip a tier configured without them.
    let image = json!({"model": "see", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
    let r = post_json(port, "/v1/chat/completions", &image);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("x-wick-escalation"), Some("small:lacks_image_input"));
    assert_eq!(r.header("x-wick-failover"), Some("vision:unreachable"));
    let mut image_auto = image.clone();
    image_auto["model"] = json!("auto");
    let r = post_json(port, "/v1/chat/completions", &image_auto);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "messages");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("image_input")),
        "{}",
        r.body
    );
    let tools = json!({"model": "toolful", "max_tokens": 24, "temperature": 0,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}}],
        "tool_choice": "required"});
    let r = post_json(port, "/v1/chat/completions", &tools);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("large"));
    assert_eq!(r.header("x-wick-escalation"), Some("plain:lacks_tools"));
    assert_eq!(r.header("x-wick-failover"), None, "`plain` was never tried");
    assert_eq!(
        r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );

    // Completions reach the second model too; an unknown model is a 404.
    let r = post_json(
        port,
        "/v1/completions",
        &json!({"model": "large", "prompt": "One, two,", "max_tokens": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], "large");
    let r = post_json(
        port,
        "/v1/completions",
        &json!({"model": "unused", "prompt": "x"}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "model_not_found");

    // The Responses API serves any local model by name, through the chat planner (so the
    // answer is chat's at temperature 0), and a route through the router as a chat request:
    // escalated in process, with the router's headers, under the name of the model that
    // answered, streamed or not.
    let responses = |model: &str, stream: bool| {
        let body = json!({"model": model, "input": "Name a colour.", "max_output_tokens": 6,
            "temperature": 0, "stream": stream});
        post_json(port, "/v1/responses", &body)
    };
    let large_text = &large.json()["choices"][0]["message"]["content"];
    let r = responses("large", false);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], "large");
    assert_eq!(&r.json()["output"][0]["content"][0]["text"], large_text);
    assert_eq!(r.header("x-wick-backend"), None, "a direct request is not routed");
    let r = responses("auto", false);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("large"));
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    let routed = r.json();
    assert_eq!(routed["model"], "large");
    assert_eq!(&routed["output"][0]["content"][0]["text"], large_text);
    // Cut at 6 tokens or not, as `large`'s chat answer was.
    let cut = large.json()["choices"][0]["finish_reason"] == "length";
    let (status, last_event) = if cut {
        ("incomplete", "response.incomplete")
    } else {
        ("completed", "response.completed")
    };
    assert_eq!(routed["status"], status, "{routed}");
    assert_eq!(routed["incomplete_details"].is_null(), !cut, "{routed}");
    assert_eq!(
        routed["usage"]["input_tokens"],
        large.json()["usage"]["prompt_tokens"]
    );
    let (status, stored) = http_get(
        port,
        &format!("/v1/responses/{}", routed["id"].as_str().unwrap_or("")),
    )
    .expect("retrieve");
    assert_eq!(status, 200, "a routed response is stored");
    assert_eq!(body(&stored), routed);
    let r = responses("auto", true);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-backend"), Some("large"));
    assert_eq!(r.header("x-wick-escalation"), Some("small:length"));
    let events = sse_events(&r.body);
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events[0].1["response"]["model"], "large");
    let (last_kind, last) = events.last().expect("events");
    assert_eq!(last_kind, last_event);
    let deltas: String = events
        .iter()
        .filter(|(kind, _)| kind == "response.output_text.delta")
        .filter_map(|(_, e)| e["delta"].as_str())
        .collect();
    assert_eq!(&json!(deltas), large_text);
    assert_eq!(&last["response"]["output"][0]["content"][0]["text"], large_text);
    // Failover: `spare`'s first tier is unreachable; `large` answers, and the headers say so.
    for stream in [false, true] {
        let r = responses("spare", stream);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-wick-backend"), Some("large"), "stream {stream}");
        assert_eq!(
            r.header("x-wick-failover"),
            Some("remote:unreachable"),
            "stream {stream}"
        );
    }
    // A remote backend by name, unreachable: the router's 503, in OpenAI's shape.
    let r = responses("remote", false);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert_eq!(r.header("x-wick-failover"), Some("remote:unreachable"));
    // Pre-routing on what the request needs: logprobs (`include`) skip no tier here, tools
    // skip `plain`; a request error is named as the Responses request names it.
    let tools = json!({"model": "toolful", "input": "Weather in Paris?", "max_output_tokens": 24,
        "temperature": 0, "tool_choice": "required",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}}]});
    let r = post_json(port, "/v1/responses", &tools);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wick-escalation"), Some("plain:lacks_tools"));
    let call = &r.json()["output"][0];
    assert_eq!(
        (&call["type"], &call["name"]),
        (&json!("function_call"), &json!("get_weather"))
    );
    let mut refused = tools.clone();
    refused["tools"][0]["parameters"] = json!("nope");
    let r = post_json(port, "/v1/responses", &refused);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "tools[0].parameters", "{}", r.body);

    // Each engine has its own metrics, labelled with its name.
    let (_, metrics) = http_get(port, "/metrics").expect("metrics");
    for name in ["small", "large"] {
        let line = format!("vllm:generation_tokens_total{{model_name=\"{name}\"}} ");
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
            .parse()
            .expect("a number");
        assert!(value > 0.0, "{name}: {value}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
