//! The layering of docs/architecture.md: `scripts/check-layers` finds no import that crosses a
//! wall in the tree, and its own tests (fixtures with a deliberately wrong import in each kind
//! of wall, from the kv pool importing the model to the router importing the HTTP handlers)
//! show that it fails on them.

use std::process::Command;

use wick_tests::root;

fn run_checker(args: &[&str]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(root().join("scripts/check-layers"))
        .args(args)
        .output()
        .expect("python3 runs scripts/check-layers");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_import_points_one_way() {
    let (ok, text) = run_checker(&[]);
    assert!(ok, "{text}");
}

#[test]
fn the_checker_fails_on_wrong_imports() {
    let (ok, text) = run_checker(&["--self-test"]);
    assert!(ok, "{text}");
    assert!(text.contains("Ran 6 tests"), "{text}");
}
