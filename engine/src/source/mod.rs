//! One resolution step from what a user typed (`--model`) to files on disk.
//!
//! Accepted forms: a `.gguf` file; a Hugging Face model directory (`config.json`,
//! `tokenizer.json`, `*.safetensors`); or a Hub id `org/name[@revision][:file.gguf]`, downloaded
//! with `hf-hub` (honours `HF_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE`) into one of the other two.

pub mod gguf_metadata;
mod hub;

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    GgufFile(PathBuf),
    HfDirectory(PathBuf),
    HfHub {
        repo: String,
        revision: Option<String>,
        /// For GGUF repositories that hold several quantizations.
        file: Option<String>,
    },
}

/// The files a model is loaded from, all present locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    Gguf {
        path: PathBuf,
    },
    Safetensors {
        config: PathBuf,
        weights: Vec<PathBuf>,
        tokenizer: PathBuf,
        tokenizer_config: Option<PathBuf>,
    },
}

impl ModelFiles {
    /// The path named in messages about this model.
    pub fn display_path(&self) -> &Path {
        match self {
            ModelFiles::Gguf { path } => path,
            ModelFiles::Safetensors { config, .. } => config.parent().unwrap_or(config),
        }
    }
}

impl ModelSource {
    /// The name a server lists the model under by default: the GGUF file's stem, the
    /// directory's name, or the Hub repository id.
    pub fn display_name(&self) -> String {
        let name = |p: &Path, stem: bool| {
            let n = if stem { p.file_stem() } else { p.file_name() };
            n.map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned())
        };
        match self {
            ModelSource::GgufFile(p) => name(p, true),
            ModelSource::HfDirectory(p) => name(p, false),
            ModelSource::HfHub { repo, .. } => repo.clone(),
        }
    }

    /// Classifies a `--model` argument. Existing paths win over Hub ids.
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::HfDirectory(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(ModelSource::GgufFile(path.to_path_buf()));
        }
        let looks_like_path = spec.starts_with('/')
            || spec.starts_with('.')
            || spec.starts_with('~')
            || spec.ends_with(".gguf") && !spec.contains(':')
            || spec.matches('/').count() != 1;
        if looks_like_path {
            return Err(EngineError::MissingFile(path.to_path_buf()));
        }
        let (rest, file) = match spec.split_once(':') {
            Some((r, f)) => (r, Some(f.to_string())),
            None => (spec, None),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((r, rev)) => (r.to_string(), Some(rev.to_string())),
            None => (rest.to_string(), None),
        };
        let valid =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let mut parts = repo.split('/');
        if !(parts.next().is_some_and(valid) && parts.next().is_some_and(valid)) {
            return Err(EngineError::MissingFile(path.to_path_buf()));
        }
        Ok(ModelSource::HfHub { repo, revision, file })
    }

    pub fn resolve(&self) -> Result<ModelFiles> {
        match self {
            ModelSource::GgufFile(path) => {
                if !path.is_file() {
                    return Err(EngineError::MissingFile(path.clone()));
                }
                Ok(ModelFiles::Gguf { path: path.clone() })
            }
            ModelSource::HfDirectory(dir) => hf_directory_files(dir),
            ModelSource::HfHub { repo, revision, file } => {
                crate::source::hub::download(repo, revision.as_deref(), file.as_deref())
            }
        }
    }
}

/// Lists the files of a Hugging Face model directory, following a sharded
/// `model.safetensors.index.json` when there is one.
pub fn hf_directory_files(dir: &Path) -> Result<ModelFiles> {
    let config = dir.join("config.json");
    if !config.is_file() {
        // A directory holding only a GGUF file is accepted too.
        let ggufs = list_with_extension(dir, "gguf")?;
        if let [only] = ggufs.as_slice() {
            return Ok(ModelFiles::Gguf { path: only.clone() });
        }
        return Err(EngineError::MissingFile(config));
    }
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.is_file() {
        return Err(EngineError::MissingTokenizer(dir.to_path_buf()));
    }
    let index = dir.join("model.safetensors.index.json");
    let weights = if index.is_file() {
        shard_files(&index)?.into_iter().map(|f| dir.join(f)).collect()
    } else {
        list_with_extension(dir, "safetensors")?
    };
    if weights.is_empty() {
        return Err(EngineError::MissingFile(dir.join("model.safetensors")));
    }
    if let Some(missing) = weights.iter().find(|w| !w.is_file()) {
        return Err(EngineError::MissingFile(missing.clone()));
    }
    let tokenizer_config = Some(dir.join("tokenizer_config.json")).filter(|p| p.is_file());
    Ok(ModelFiles::Safetensors {
        config,
        weights,
        tokenizer,
        tokenizer_config,
    })
}

/// The distinct shard file names of a `model.safetensors.index.json`, in a stable order.
pub fn shard_files(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::CorruptFile {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| EngineError::CorruptFile {
            path: index.to_path_buf(),
            message: "no `weight_map`".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn list_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    Ok(out)
}
