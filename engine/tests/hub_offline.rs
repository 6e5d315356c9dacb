//! `org/name[:file]` resolved offline from a prepared Hugging Face cache. One test function: it
//! sets process-wide environment variables (HF_HOME, HF_HUB_OFFLINE).

mod common;

use wick_engine::model::loader::{self, LoadOptions};
use wick_engine::source::{ModelFiles, ModelSource};
use wick_engine::EngineError;

#[test]
fn hub_offline_resolves_from_cache() {
    let home = tempfile::tempdir().unwrap();
    // hf-hub 0.4's layout: {HF_HOME}/hub/models--org--name/refs/main holds the commit hash (no
    // trailing newline), and snapshots/<hash>/<file> the files.
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = home.path().join("hub").join("models--org--name");
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    let cached = snapshot.join("model.gguf");
    std::os::unix::fs::symlink(common::default_model_path(), &cached).unwrap();

    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let source = ModelSource::parse("org/name:model.gguf").unwrap();
    assert_eq!(
        source,
        ModelSource::HfHub {
            repo: "org/name".into(),
            revision: None,
            file: Some("model.gguf".into())
        }
    );
    assert_eq!(
        source.resolve().unwrap(),
        ModelFiles::Gguf { path: cached.clone() }
    );
    let loaded = match loader::load(&source, &LoadOptions::default()) {
        Ok(l) => l,
        Err(e) => panic!("cached model does not load: {e}"),
    };
    assert_eq!(loaded.files, ModelFiles::Gguf { path: cached });
    assert_eq!(loaded.tokenizer.bos_token_id, Some(1));

    // An explicit branch resolves through refs/<branch> the same way.
    std::fs::write(repo_dir.join("refs/dev"), commit).unwrap();
    let on_branch = ModelSource::parse("org/name@dev:model.gguf").unwrap();
    assert!(matches!(on_branch.resolve(), Ok(ModelFiles::Gguf { .. })));

    // Anything not in the cache fails with a Hub error, never a network access.
    let expect_not_cached = |spec: &str, file: &str| {
        let err = ModelSource::parse(spec).unwrap().resolve().unwrap_err();
        let EngineError::Hub { id, message } = &err else {
            panic!("{spec}: expected a Hub error, got {err:?}")
        };
        assert_eq!(id, spec.split([':', '@']).next().unwrap());
        assert!(message.contains(file), "{spec}: {message}");
        assert!(message.contains("not in the local cache"), "{spec}: {message}");
        assert!(err.to_string().contains(id.as_str()), "{err}");
    };
    expect_not_cached("org/name:other.gguf", "other.gguf");
    expect_not_cached("org/name@v2:model.gguf", "model.gguf");
    expect_not_cached("org/absent:model.gguf", "model.gguf");
    // Without a file name wick needs config.json (a listing is impossible offline).
    expect_not_cached("org/name", "config.json");
}
