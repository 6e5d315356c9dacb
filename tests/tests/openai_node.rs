//! Starts the real `wick serve` on the default model and runs the official `openai` Node SDK
//! against its Responses API (tests/e2e-node/test_responses.mjs: `responses.create`,
//! `responses.stream`, `create({stream: true})`, typed errors). `scripts/test` installs the SDK
//! first (`npm ci` in tests/e2e-node, pinned by its package-lock.json); a missing piece is a
//! failure with instructions, never a skip.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use wick_tests::{root, sdk_env, Server};

const API_KEY: &str = "e2e-node-key";
/// The test file's `test(...)` cases: all of them must run and pass.
const CASES: usize = 4;

fn node() -> PathBuf {
    std::env::var_os("WICK_E2E_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

fn json_file(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; scripts/test installs it (cd tests/e2e-node && npm ci)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn responses_api_through_the_openai_node_sdk() {
    let dir = root().join("tests/e2e-node");
    // The SDK installed is the one the lock file pins (an older node_modules is stale).
    let pinned =
        json_file(dir.join("package-lock.json"))["packages"]["node_modules/openai"]["version"].clone();
    let installed = json_file(dir.join("node_modules/openai/package.json"))["version"].clone();
    assert!(
        pinned.is_string(),
        "no openai in tests/e2e-node/package-lock.json"
    );
    assert_eq!(
        installed, pinned,
        "tests/e2e-node/node_modules is stale: scripts/test reinstalls it (npm ci)"
    );
    let server = Server::start(&["--api-key", API_KEY]);
    let out = Command::new(node())
        .args(["--test", "--test-reporter=spec", "test_responses.mjs"])
        .current_dir(&dir)
        .envs(sdk_env(&server, API_KEY))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} does not run ({e}): Node.js 20 or later is needed",
                node().display()
            )
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "the openai Node SDK tests failed:\n{report}"
    );
    // The reporter's summary: every case ran (a file that defines none would pass too).
    let count = |label: &str| {
        report
            .lines()
            .find_map(|l| {
                l.trim_start_matches(|c: char| !c.is_ascii_alphabetic())
                    .strip_prefix(label)
            })
            .and_then(|n| n.trim().parse::<usize>().ok())
    };
    assert_eq!(count("pass "), Some(CASES), "{report}");
    assert_eq!(count("fail "), Some(0), "{report}");
}
