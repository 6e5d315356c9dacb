//! Operational switches of `wick serve`: CORS for browser clients, JSON logs, API keys, request
//! limits, the bounds of the Responses API's store.

use serde_json::{json, Value};
use wick_tests::{http_get, post_json, request_raw, Server};

#[test]
fn cors_preflight_and_json_logs() {
    let server = Server::start(&[
        "--cors-allow-origins",
        "https://app.example",
        "--api-key",
        "k",
        "--log-format",
        "json",
    ]);
    let preflight = |origin: &str| {
        request_raw(
            server.port,
            &format!(
                "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n"
            ),
        )
        .expect("preflight answered")
        .to_ascii_lowercase()
    };
    // Allowed origin: the preflight succeeds without a key (browsers send none) and names it.
    let ok = preflight("https://app.example");
    assert!(ok.starts_with("http/1.1 200"), "{ok}");
    assert!(
        ok.contains("access-control-allow-origin: https://app.example"),
        "{ok}"
    );
    assert!(ok.contains("authorization"), "{ok}");
    // Any other origin gets no CORS grant.
    let other = preflight("https://evil.example");
    assert!(!other.contains("access-control-allow-origin"), "{other}");

    // JSON logs: every line the server wrote is one JSON object with a level and a message.
    let log = std::fs::read_to_string(Server::log_path(server.port)).expect("log");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{line}");
    }
}

/// With an API key, `/v1/*` answers 401 before its route or method is known: an unknown path
/// or a wrong method cannot be told from a real route without the key. The bearer scheme is
/// matched in any case; probes stay open.
#[test]
fn api_keys_are_checked_before_routing() {
    let server = Server::start(&["--api-key", "k1,k2"]);
    let status = |method: &str, path: &str, auth: Option<&str>| {
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let raw = request_raw(
            server.port,
            &format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n"),
        )
        .expect("answered");
        raw.split(' ').nth(1).unwrap_or("").to_string()
    };
    for (method, path) in [
        ("GET", "/v1/models"),
        ("GET", "/v1/no-such-route"),
        ("GET", "/v1"),
        ("DELETE", "/v1/models"),
        ("GET", "/v1/chat/completions"),
    ] {
        assert_eq!(status(method, path, None), "401", "{method} {path} without a key");
        assert_eq!(
            status(method, path, Some("Bearer wrong")),
            "401",
            "{method} {path}"
        );
    }
    // With a key the router decides: the route, a 404, a 405.
    assert_eq!(status("GET", "/v1/models", Some("Bearer k1")), "200");
    assert_eq!(status("GET", "/v1/models", Some("bearer k2")), "200");
    assert_eq!(status("GET", "/v1/models", Some("BEARER k1")), "200");
    assert_eq!(status("GET", "/v1/no-such-route", Some("Bearer k1")), "404");
    assert_eq!(status("DELETE", "/v1/models", Some("Bearer k2")), "405");
    assert_eq!(status("GET", "/v1/models", Some("Basic k1")), "401");
    for probe in ["/health", "/ready", "/version", "/metrics"] {
        assert_eq!(status("GET", probe, None), "200", "{probe}");
    }
}

/// `--max-tools` and `--max-schema-bytes` bound what one request may ask to be rendered and
/// compiled: over them is a 400 naming the field, at or under them the request is served.
#[test]
fn request_limits_refuse_too_many_tools_and_too_large_schemas() {
    let server = Server::start(&["--max-tools", "3", "--max-schema-bytes", "300"]);
    let model = "SmolLM2-135M-Instruct.Q4_1";
    let tool = |name: &str, parameters: Value| json!({"type": "function", "function": {"name": name, "parameters": parameters}});
    let small = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let large =
        json!({"type": "object", "properties": {"a": {"type": "string", "description": "x".repeat(400)}}});
    let chat = |extra: Value| {
        let mut body =
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        for (k, v) in extra.as_object().expect("an object") {
            body[k] = v.clone();
        }
        post_json(server.port, "/v1/chat/completions", &body)
    };
    let refused = |reply: wick_tests::Reply, param: &str, says: &str| {
        assert_eq!(reply.status, 400, "{}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["param"], param, "{}", reply.body);
        assert!(
            error["message"].as_str().unwrap_or("").contains(says),
            "{}",
            reply.body
        );
    };
    let three: Vec<Value> = (0..3).map(|i| tool(&format!("t{i}"), small.clone())).collect();
    let four: Vec<Value> = (0..4).map(|i| tool(&format!("t{i}"), small.clone())).collect();
    assert_eq!(chat(json!({"tools": three})).status, 200);
    refused(chat(json!({"tools": four})), "tools", "server.max_tools");
    refused(
        chat(json!({"tools": [tool("t0", small.clone()), tool("big", large.clone())]})),
        "tools[1].function.parameters",
        "server.max_schema_bytes",
    );
    let format = |schema: Value| json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}});
    assert_eq!(chat(format(small.clone())).status, 200);
    refused(
        chat(format(large.clone())),
        "response_format.json_schema.schema",
        "server.max_schema_bytes",
    );
    let completion = post_json(
        server.port,
        "/v1/completions",
        &json!({"model": model, "prompt": "a", "max_tokens": 2, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": large}}}),
    );
    refused(
        completion,
        "response_format.json_schema.schema",
        "server.max_schema_bytes",
    );
}

/// `--responses-store-max` and `--responses-store-ttl-secs`: past the bound the oldest stored
/// response is gone (404, also as a `previous_response_id`), and past the TTL every one is.
#[test]
fn responses_store_bound_and_ttl_from_flags() {
    let server = Server::start(&["--responses-store-max", "2", "--responses-store-ttl-secs", "3"]);
    let model = "SmolLM2-135M-Instruct.Q4_1";
    let create = |input: &str| {
        let reply = post_json(
            server.port,
            "/v1/responses",
            &json!({"model": model, "input": input, "max_output_tokens": 2}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["id"].as_str().expect("an id").to_string()
    };
    let ids: Vec<String> = ["a", "b", "c"].iter().map(|i| create(i)).collect();
    let status = |id: &str| http_get(server.port, &format!("/v1/responses/{id}")).map(|r| r.0);
    assert_eq!(status(&ids[0]), Some(404), "evicted past the bound");
    assert_eq!((status(&ids[1]), status(&ids[2])), (Some(200), Some(200)));
    let follow_up = post_json(
        server.port,
        "/v1/responses",
        &json!({"model": model, "input": "d", "max_output_tokens": 2, "previous_response_id": ids[0]}),
    );
    assert_eq!(follow_up.status, 404, "{}", follow_up.body);
    assert_eq!(follow_up.json()["error"]["param"], "previous_response_id");
    std::thread::sleep(std::time::Duration::from_millis(3100));
    assert_eq!(status(&ids[2]), Some(404), "expired past the TTL");
}

/// `--responses-store-max-bytes`: a response is charged its JSON (the object and its input
/// items); past the byte bound the oldest are evicted though the count bound has room, so what
/// is stored is always the newest responses that fit; one larger than the bound on its own is
/// not stored and evicts nothing.
#[test]
fn responses_store_byte_bound_from_flags() {
    const BOUND: usize = 8000;
    let server = Server::start(&["--responses-store-max-bytes", &BOUND.to_string()]);
    let model = "SmolLM2-135M-Instruct.Q4_1";
    let get = |path: &str| {
        let (status, text) = http_get(server.port, path).expect("the server answers");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        (status, body)
    };
    // Creates a response and returns its id and what the store charges for it.
    let create = |input: &str, instructions: &str| {
        let reply = post_json(
            server.port,
            "/v1/responses",
            &json!({"model": model, "input": input, "instructions": instructions, "max_output_tokens": 2}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        let id = reply.json()["id"].as_str().expect("an id").to_string();
        let (status, items) = get(&format!("/v1/responses/{id}/input_items"));
        let item_bytes = if status == 200 {
            let items: Value = serde_json::from_str(&items).expect("JSON");
            items["data"]
                .as_array()
                .expect("a list")
                .iter()
                .map(|i| i.to_string().len())
                .sum()
        } else {
            0
        };
        (id, reply.body.len() + item_bytes, status == 200)
    };
    let mut created = Vec::new();
    for word in ["one", "two", "three", "four", "five", "six", "seven"] {
        let (id, bytes, stored) = create(word, "Be brief.");
        assert!(stored, "{word}: a response that fits is stored");
        assert!(
            bytes < BOUND / 3,
            "{word}: {bytes} bytes: the test needs several to fit"
        );
        created.push((id, bytes));
    }
    // The newest responses whose sizes sum to the bound at most, and only those.
    let mut room = BOUND;
    let mut kept = 0;
    for (_, bytes) in created.iter().rev() {
        if *bytes > room {
            break;
        }
        room -= bytes;
        kept += 1;
    }
    assert!(kept >= 3 && kept < created.len(), "{kept} of {}", created.len());
    let stored = |id: &str| get(&format!("/v1/responses/{id}")).0 == 200;
    let now: Vec<bool> = created.iter().map(|(id, _)| stored(id)).collect();
    let want: Vec<bool> = (0..created.len()).map(|i| i >= created.len() - kept).collect();
    assert_eq!(
        now,
        want,
        "sizes {:?}",
        created.iter().map(|c| c.1).collect::<Vec<_>>()
    );
    // Larger than the bound on its own (the instructions are echoed in it): not stored, and
    // what was stored stays.
    let (id, bytes, was_stored) = create("big", &"x".repeat(BOUND));
    assert!(bytes > BOUND && !was_stored, "{bytes}");
    assert!(!stored(&id));
    let after: Vec<bool> = created.iter().map(|(id, _)| stored(id)).collect();
    assert_eq!(after, want);
}
