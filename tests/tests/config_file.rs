//! `wick serve --config FILE` with the real binary: the file's settings take effect (served name,
//! API keys, metrics switch, JSON logs), flags override it, and a bad file stops start-up with
//! the file's line before anything loads.

use std::process::Command;

use wick_tests::{http_get, request_raw, wick_binary, Server};

fn write(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("wick-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

#[test]
fn serve_takes_its_settings_from_the_file_and_flags_override_it() {
    let file = write(
        "serve",
        r#"
[server]
port = 1            # overridden by the test's --port
api_keys = ["file-key"]

[engine]
max_num_seqs = 4
kv_cache_dtype = "f16"

[[models]]
id = "m"
served_name = "from-file"

[metrics]
enabled = false

[logging]
format = "json"
"#,
    );
    let server = Server::start(&["--config", &file]);
    let port = server.port;
    let models = |key: &str| {
        let raw = format!(
            "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\r\n"
        );
        request_raw(port, &raw).unwrap_or_default()
    };
    let ok = models("file-key");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains(r#""id":"from-file""#), "{ok}");
    assert!(models("wrong").starts_with("HTTP/1.1 401"));
    assert_eq!(http_get(port, "/metrics").map(|r| r.0), Some(404));
    assert_eq!(http_get(port, "/health").map(|r| r.0), Some(200));
    // The f16 KV pool serves (and the engine says it made one).
    let body = r#"{"model":"from-file","prompt":"The capital of France is","max_tokens":4}"#;
    let raw = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer file-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let done = request_raw(port, &raw).unwrap_or_default();
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    assert!(done.contains(r#""completion_tokens":4"#), "{done}");
    let log = std::fs::read_to_string(Server::log_path(port)).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains(r#""message":"KV cache""#) && l.contains(r#""dtype":"F16""#)),
        "{log}"
    );
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.starts_with('{') && first.contains(r#""level":"INFO""#),
        "{first}"
    );
}

#[test]
fn a_bad_file_stops_serve_with_its_line() {
    let file = write("bad", "[engine]\nmax_num_seqs = 0\ndevice = \"cuda:x\"\n");
    let out = Command::new(wick_binary())
        .args(["serve", "--config", &file, "--port", "1"])
        .output()
        .expect("wick runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{file}:2:1: engine.max_num_seqs: must be greater than 0"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:3:1: engine.device: `cuda:x` is not a device")),
        "{err}"
    );
    // WICK_* variables override the file.
    let out = Command::new(wick_binary())
        .args(["config", "print", "--config", &file])
        .env("WICK_MAX_NUM_SEQS", "3")
        .env("WICK_DEVICE", "cpu")
        .output()
        .expect("wick runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        printed.contains("max_num_seqs = 3") && printed.contains("device = \"cpu\""),
        "{printed}"
    );
}
