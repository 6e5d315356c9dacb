//! Starts the real `wick serve` on the default model and runs the official `openai` Python SDK
//! against it (tests/e2e/test_openai_sdk.py). `scripts/test` builds the binary and the Python
//! environment (.venv-e2e, from tests/e2e/requirements.txt) first; a missing piece is a failure
//! with instructions, never a skip.

use std::path::PathBuf;
use std::process::Command;

use wick_tests::{http_get, root, sdk_env, wick_binary, Server};

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
        .envs(sdk_env(server, API_KEY))
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

/// Tool calling through the SDK: tests/e2e/test_tools.py. Its 128-tool prompt is ~5.5-5.8k tokens
/// (the tool names are salted, so the count varies): in the usual 256 MiB of f32 KV (364 blocks,
/// 5,824 tokens) it can leave too few blocks to admit anything beside it, and the test of a short
/// request beside a long one would measure admission, not scheduling.
#[test]
fn tool_calling_through_the_openai_python_sdk() {
    let server = Server::start(&["--api-key", API_KEY, "--kv-cache-mib", "512"]);
    run_sdk_tests(&server, "test_tools.py", "the tool calling tests", &[]);
}

/// The Responses API through the SDK (create, stream, parse, previous_response_id, tools, the
/// store and its errors): tests/e2e/test_responses.py.
#[test]
fn responses_api_through_the_openai_python_sdk() {
    let server = Server::start(&["--api-key", API_KEY]);
    run_sdk_tests(&server, "test_responses.py", "the Responses API tests", &[]);
}

/// Greedy chats for the speculative test: output that repeats its prompt (where n-gram lookup
/// proposes well) and free text.
const SPECULATIVE_PROMPTS: [&str; 4] = [
    "Repeat this list exactly: apples, pears, plums, cherries, apples, pears, plums, cherries.",
    "Count from one to twenty in words.",
    "Write the alphabet in capital letters separated by commas.",
    "Write a Python function that returns the sum of a list of numbers.",
];
const SPECULATIVE_MAX_TOKENS: &str = "32";

/// Speculative decoding through the SDK (tests/e2e/test_speculative.py): the default model
/// dequantized to f32 verifies proposals from the same GGUF kept quantized (`--draft-model`,
/// its `--draft-dtype` left at `auto`), then from n-gram lookup (`--speculative ngram`). Every
/// answer must be plain greedy decoding's (`wick generate --dtype f32`, no speculation), and
/// /metrics must count accepted proposals (vLLM's spec-decode counters).
#[test]
fn speculative_decoding_through_the_openai_python_sdk() {
    let expected: Vec<serde_json::Value> = SPECULATIVE_PROMPTS
        .iter()
        .map(|prompt| {
            let out = Command::new(wick_binary())
                .args(["generate", "--chat", "--dtype", "f32", "--prompt", prompt])
                .args(["--max-tokens", SPECULATIVE_MAX_TOKENS])
                .output()
                .expect("wick generate runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8(out.stdout).expect("utf-8 output");
            let content = text.strip_suffix('\n').unwrap_or(&text).to_string();
            serde_json::json!({"prompt": prompt, "content": content})
        })
        .collect();
    let env = [
        ("WICK_EXPECTED", serde_json::Value::from(expected).to_string()),
        ("WICK_MAX_TOKENS", SPECULATIVE_MAX_TOKENS.to_string()),
    ];
    let draft = wick_tests::default_model();
    for (method, flags) in [
        ("draft model", ["--draft-model", draft.as_str()]),
        ("ngram", ["--speculative", "ngram"]),
    ] {
        // JSON logs: the start-up line's fields, without the text format's colours; `k` is the
        // default, wick-engine's `SpeculativeConfig::DEFAULT_NUM_SPECULATIVE_TOKENS`.
        let common = ["--api-key", API_KEY, "--dtype", "f32", "--log-format", "json"];
        let server = Server::start(&[&common[..], &flags].concat());
        let log = std::fs::read_to_string(Server::log_path(server.port)).unwrap_or_default();
        assert!(
            log.lines()
                .any(|l| l.contains(r#""message":"speculative decoding on""#)
                    && l.contains(&format!(r#""method":"{method}""#))
                    && l.contains(r#""k":3"#)),
            "{log}"
        );
        run_sdk_tests(
            &server,
            "test_speculative.py",
            &format!("the speculative decoding tests ({method})"),
            &env,
        );
        // Over the run (the engine speculates in the first steps of each batch size at least).
        let counter = |name: &str| {
            let line = format!("{name}{{model_name=\"{}\"}} ", wick_tests::DEFAULT_MODEL_ID);
            wick_tests::metric(server.port, &line).unwrap_or_else(|| panic!("{name} missing"))
        };
        let proposed = counter("vllm:spec_decode_num_draft_tokens_total");
        let accepted = counter("vllm:spec_decode_num_accepted_tokens_total");
        println!("{method}: {proposed} proposed, {accepted} accepted");
        assert!(
            accepted > 0.0 && accepted <= proposed,
            "{method}: {proposed} proposed, {accepted} accepted"
        );
    }
}

/// A score route through the SDK (tests/e2e/test_score_route.py): the default model answers,
/// Qwen2.5-Coder-0.5B scores; the SDK reads wick's headers with `with_raw_response`.
#[test]
fn a_score_route_through_the_openai_python_sdk() {
    let text = format!(
        "[server]\nmodel = \"small\"\napi_keys = [\"{API_KEY}\"]\n\n\
         [[models]]\nid = \"small\"\nsource = \"{}\"\nserved_name = \"small\"\n\n\
         [[models]]\nid = \"coder\"\nsource = \"{}\"\nserved_name = \"coder\"\n\n\
         [[routes]]\nname = \"auto\"\ntiers = [\"small\", \"coder\"]\n\
         policy = {{ verify = \"score\", min_mean_logprob = -1.0 }}\n",
        wick_tests::default_model(),
        wick_tests::fallback_model()
    );
    let path = std::env::temp_dir().join(format!("wick-score-sdk-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write config");
    let server = Server::start(&["--config", &path.to_string_lossy()]);
    let env = [
        ("WICK_ROUTE", "auto".to_string()),
        ("WICK_CHEAP", "small".to_string()),
        ("WICK_FALLBACK", "coder".to_string()),
        ("WICK_MIN_MEAN", "-1.0".to_string()),
    ];
    run_sdk_tests(&server, "test_score_route.py", "the score route tests", &env);
}
