//! Starts the real `wick serve` on the default model and runs the official `openai` Python SDK
//! against it (tests/e2e/test_openai_sdk.py). `scripts/test` builds the binary and the Python
//! environment (.venv-e2e, from tests/e2e/requirements.txt) first; a missing piece is a failure
//! with instructions, never a skip.

use std::path::PathBuf;
use std::process::Command;

use wick_tests::{http_get, root, wick_binary, Server};

const API_KEY: &str = "e2e-test-key";
const PROMPT: &str = "Write a long story about a dragon who learns to bake bread.";

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

/// Runs one SDK test file (`tests/e2e/FILE`) with the venv's python against `server` (the
/// default model, `API_KEY`), plus `env`; prints its output and fails naming `what`.
fn run_sdk_tests(server: &Server, file: &str, what: &str, env: &[(&str, String)]) {
    let out = Command::new(python())
        .arg(root().join("tests/e2e").join(file))
        .env("WICK_BASE_URL", format!("http://127.0.0.1:{}/v1", server.port))
        .env("WICK_MODEL_ID", "SmolLM2-135M-Instruct.Q4_1")
        .env("WICK_API_KEY", API_KEY)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("python runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let report = String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(out.status.success(), "{what} failed:\n{report}");
}

#[test]
fn official_openai_python_sdk_against_wick_serve() {
    let expected = serde_json::json!({"prompt": PROMPT, "content": expected_content()});
    let server = Server::start(&["--api-key", API_KEY]);
    // /v1 needs the key; probes and metrics do not.
    assert_eq!(http_get(server.port, "/v1/models").map(|r| r.0), Some(401));
    assert_eq!(http_get(server.port, "/metrics").map(|r| r.0), Some(200));
    run_sdk_tests(
        &server,
        "test_openai_sdk.py",
        "the openai SDK tests",
        &[("WICK_EXPECTED", expected.to_string())],
    );
    // Health and readiness are plain JSON.
    assert_eq!(http_get(server.port, "/health").map(|r| r.0), Some(200));
    assert_eq!(http_get(server.port, "/nope").map(|r| r.0), Some(404));
}

/// `response_format` (constrained decoding) through the SDK: tests/e2e/test_structured_outputs.py.
#[test]
fn structured_outputs_through_the_openai_python_sdk() {
    let server = Server::start(&["--api-key", API_KEY]);
    run_sdk_tests(
        &server,
        "test_structured_outputs.py",
        "the structured output tests",
        &[],
    );
}

/// Tool calling through the SDK: tests/e2e/test_tools.py.
#[test]
fn tool_calling_through_the_openai_python_sdk() {
    let server = Server::start(&["--api-key", API_KEY]);
    run_sdk_tests(&server, "test_tools.py", "the tool calling tests", &[]);
}

/// The Responses API through the SDK (create, stream, parse, previous_response_id, tools, the
/// store and its errors): tests/e2e/test_responses.py.
#[test]
fn responses_api_through_the_openai_python_sdk() {
    let server = Server::start(&["--api-key", API_KEY]);
    run_sdk_tests(&server, "test_responses.py", "the Responses API tests", &[]);
}
