//! What `--model` accepts, and the errors a user sees when it names something wick can't load.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::RngCore;
use wick_engine::model::loader::{self, LoadOptions, LoadedModel};
use wick_engine::source::{ModelFiles, ModelSource};
use wick_engine::EngineError;

fn load_path(path: &Path) -> Result<LoadedModel, EngineError> {
    loader::load(
        &ModelSource::parse(path.to_str().unwrap())?,
        &LoadOptions::default(),
    )
}

/// `LoadedModel` is not `Debug`, so `unwrap_err` is unavailable.
fn load_err(path: &Path) -> EngineError {
    match load_path(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e,
    }
}

#[test]
fn parse_missing_paths() {
    for spec in [
        "/nonexistent/model.gguf",
        "./x.gguf",
        "x.gguf",
        "../models/",
        "~/m.gguf",
        "a/b/c",
    ] {
        match ModelSource::parse(spec) {
            Err(EngineError::MissingFile(p)) => assert_eq!(p, PathBuf::from(spec)),
            other => panic!("{spec}: expected MissingFile, got {other:?}"),
        }
    }
    // A source that names a missing file fails the same way at load time, naming the path.
    let missing = PathBuf::from("/nonexistent/model.gguf");
    let err = match loader::load(&ModelSource::GgufFile(missing.clone()), &LoadOptions::default()) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, EngineError::MissingFile(p) if *p == missing),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn parse_hub_ids() {
    let hub = |repo: &str, revision: Option<&str>, file: Option<&str>| ModelSource::HfHub {
        repo: repo.into(),
        revision: revision.map(Into::into),
        file: file.map(Into::into),
    };
    assert_eq!(
        ModelSource::parse("org/name").unwrap(),
        hub("org/name", None, None)
    );
    assert_eq!(
        ModelSource::parse("org/name@rev").unwrap(),
        hub("org/name", Some("rev"), None)
    );
    assert_eq!(
        ModelSource::parse("org/name@rev:file.gguf").unwrap(),
        hub("org/name", Some("rev"), Some("file.gguf"))
    );
    assert_eq!(
        ModelSource::parse("org/name:file.gguf").unwrap(),
        hub("org/name", None, Some("file.gguf"))
    );
    assert_eq!(
        ModelSource::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(),
        hub("HuggingFaceTB/SmolLM2-135M-Instruct", None, None)
    );
    // Characters a repository name can't hold.
    for bad in ["org/na me", "/name", "org/"] {
        assert!(
            matches!(ModelSource::parse(bad), Err(EngineError::MissingFile(_))),
            "{bad}: {:?}",
            ModelSource::parse(bad)
        );
    }
}

#[test]
fn parse_existing_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.gguf");
    std::fs::write(&file, b"x").unwrap();
    let dir_str = dir.path().to_str().unwrap();
    assert_eq!(
        ModelSource::parse(dir_str).unwrap(),
        ModelSource::HfDirectory(dir.path().to_path_buf())
    );
    assert_eq!(
        ModelSource::parse(file.to_str().unwrap()).unwrap(),
        ModelSource::GgufFile(file.clone())
    );
    // A directory holding one GGUF file and no config.json resolves to that file.
    assert_eq!(
        ModelSource::HfDirectory(dir.path().to_path_buf())
            .resolve()
            .unwrap(),
        ModelFiles::Gguf { path: file }
    );
}

#[test]
fn default_model_loads() {
    let path = common::default_model_path();
    let loaded = load_path(&path).expect("default model loads");
    assert_eq!(loaded.files, ModelFiles::Gguf { path: path.clone() });
    assert_eq!(loaded.files.display_path(), path);
    assert_eq!(loaded.config().num_hidden_layers, 30);
    assert_eq!(loaded.tokenizer.vocab_size(), loaded.config().vocab_size);
}

#[test]
fn truncated_gguf_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.gguf");
    let mut head = Vec::new();
    std::fs::File::open(common::default_model_path())
        .unwrap()
        .take(10 << 20)
        .read_to_end(&mut head)
        .unwrap();
    assert_eq!(head.len(), 10 << 20);
    std::fs::write(&path, &head).unwrap();
    let err = load_err(&path);
    assert!(
        matches!(&err, EngineError::CorruptFile { path: p, .. } if *p == path),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(path.to_str().unwrap()),
        "message does not name the file: {msg}"
    );
    assert!(msg.contains("truncated"), "{msg}");

    // Cut inside the header (the tokenizer metadata) too.
    std::fs::write(&path, &head[..100_000]).unwrap();
    let err = load_err(&path);
    assert!(
        matches!(&err, EngineError::CorruptFile { path: p, .. } if *p == path),
        "{err:?}"
    );
}

#[test]
fn garbage_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let mut bytes = vec![0u8; 64 << 10];
    rand::rng().fill_bytes(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    let err = load_err(&path);
    assert!(
        matches!(&err, EngineError::CorruptFile { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");

    // An empty file, too.
    std::fs::write(&path, b"").unwrap();
    let err = load_err(&path);
    assert!(matches!(&err, EngineError::CorruptFile { .. }), "{err:?}");
}

fn string_array(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

#[test]
fn unsupported_gguf_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    let dev = Device::Cpu;
    let wte = QTensor::quantize(
        &Tensor::zeros((3, 8), candle_core::DType::F32, &dev).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let ln = QTensor::quantize(
        &Tensor::ones(8, candle_core::DType::F32, &dev).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    // A real GPT-2 GGUF carries its tokenizer, so the architecture is what gets rejected.
    let arch = Value::String("gpt2".into());
    let ctx = Value::U32(1024);
    let tok_model = Value::String("gpt2".into());
    let tokens = string_array(&["a", "b", "ab"]);
    let merges = string_array(&["a b"]);
    let metadata: Vec<(&str, &Value)> = vec![
        ("general.architecture", &arch),
        ("gpt2.context_length", &ctx),
        ("tokenizer.ggml.model", &tok_model),
        ("tokenizer.ggml.tokens", &tokens),
        ("tokenizer.ggml.merges", &merges),
    ];
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut file,
        &metadata,
        &[("token_embd.weight", &wte), ("output_norm.weight", &ln)],
    )
    .unwrap();
    file.flush().unwrap();
    drop(file);

    let err = load_err(&path);
    assert!(
        matches!(&err, EngineError::UnsupportedArchitecture(a) if a == "gpt2"),
        "{err:?}"
    );
    assert!(err.to_string().contains("`gpt2`"), "{err}");
}

const LLAMA_SHAPE: &str = r#""vocab_size": 32, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2"#;

fn hf_dir(config: &str, with_tokenizer: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    // Not a valid safetensors file: the errors under test come before the weights are read.
    std::fs::write(dir.path().join("model.safetensors"), b"{}").unwrap();
    if with_tokenizer {
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    }
    dir
}

#[test]
fn hf_directory_without_tokenizer() {
    let config = format!(r#"{{"architectures": ["LlamaForCausalLM"], {LLAMA_SHAPE}}}"#);
    let dir = hf_dir(&config, false);
    let err = load_err(dir.path());
    assert!(
        matches!(&err, EngineError::MissingTokenizer(p) if p == dir.path()),
        "{err:?}"
    );
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn hf_directory_without_weights() {
    let config = format!(r#"{{"architectures": ["LlamaForCausalLM"], {LLAMA_SHAPE}}}"#);
    let dir = hf_dir(&config, true);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(&err, EngineError::MissingFile(p) if p.ends_with("model.safetensors")),
        "{err:?}"
    );
}

#[test]
fn hf_directory_unsupported_architecture() {
    let config = format!(r#"{{"architectures": ["GPT2LMHeadModel"], {LLAMA_SHAPE}}}"#);
    let dir = hf_dir(&config, true);
    let err = load_err(dir.path());
    assert!(
        matches!(&err, EngineError::UnsupportedArchitecture(a) if a == "GPT2LMHeadModel"),
        "{err:?}"
    );
    assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
}

/// GPT-2's own config.json names its sizes `n_embd`, `n_layer`, `n_head`: the architecture must be
/// reported before wick complains about Llama fields it lacks.
#[test]
fn hf_directory_real_gpt2_config() {
    let config = r#"{
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257,
        "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024,
        "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new"
    }"#;
    let dir = hf_dir(config, true);
    let err = load_err(dir.path());
    assert!(
        matches!(&err, EngineError::UnsupportedArchitecture(a) if a == "GPT2LMHeadModel"),
        "{err:?}"
    );
}
