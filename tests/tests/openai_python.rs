//! Starts the real `wick serve` on the default model and runs the official `openai` Python SDK
//! against it (tests/e2e/test_openai_sdk.py). `scripts/test` builds the binary and the Python
//! environment (.venv-e2e, from tests/e2e/requirements.txt) first; a missing piece is a failure
//! with instructions, never a skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const API_KEY: &str = "e2e-test-key";
const PROMPT: &str = "Write a long story about a dragon who learns to bake bread.";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `wick` binary next to this test's build directory (target/<profile>/wick).
fn wick_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WICK_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("wick");
    assert!(
        bin.is_file(),
        "{} missing: build it first (scripts/test runs `cargo build --release --bin wick`)",
        bin.display()
    );
    bin
}

fn python() -> PathBuf {
    let p = std::env::var_os("WICK_E2E_PYTHON")
        .map_or_else(|| root().join(".venv-e2e/bin/python"), PathBuf::from);
    assert!(
        p.is_file(),
        "{} missing: scripts/test creates it (python3 -m venv .venv-e2e && .venv-e2e/bin/pip install -r tests/e2e/requirements.txt)",
        p.display()
    );
    p
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out))
}

fn start_server() -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("wick-e2e-{port}.log"))).expect("log file");
    let child = Command::new(wick_binary())
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--kv-cache-mib",
            "256",
            "--api-key",
            API_KEY,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("wick starts");
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some((200, _)) = http_get(port, "/ready") {
            return server;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("wick serve did not become ready on port {port}");
}

/// What the golden-tested engine path (`wick generate --chat`, greedy) answers.
fn expected_content() -> String {
    let out = Command::new(wick_binary())
        .args(["generate", "--chat", "--prompt", PROMPT, "--max-tokens", "24"])
        .output()
        .expect("wick generate runs");
    assert!(
        out.status.success(),
        "wick generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

#[test]
fn official_openai_python_sdk_against_wick_serve() {
    let python = python();
    let expected = serde_json::json!({"prompt": PROMPT, "content": expected_content()});
    let server = start_server();
    // /v1 needs the key; probes and metrics do not.
    assert_eq!(http_get(server.port, "/v1/models").map(|r| r.0), Some(401));
    assert_eq!(http_get(server.port, "/metrics").map(|r| r.0), Some(200));
    let model_id = "SmolLM2-135M-Instruct.Q4_1";
    let out = Command::new(python)
        .arg(root().join("tests/e2e/test_openai_sdk.py"))
        .env("WICK_BASE_URL", format!("http://127.0.0.1:{}/v1", server.port))
        .env("WICK_MODEL_ID", model_id)
        .env("WICK_EXPECTED", expected.to_string())
        .env("WICK_API_KEY", API_KEY)
        .output()
        .expect("python runs");
    let report = String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(out.status.success(), "the openai SDK tests failed:\n{report}");
    // Health and readiness are plain JSON.
    assert_eq!(http_get(server.port, "/health").map(|r| r.0), Some(200));
    assert_eq!(http_get(server.port, "/nope").map(|r| r.0), Some(404));
}
