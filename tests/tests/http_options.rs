//! Operational switches of `wick serve`: CORS for browser clients and JSON logs.

use wick_tests::{request_raw, Server};

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
