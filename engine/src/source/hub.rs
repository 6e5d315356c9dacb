//! Hugging Face Hub downloads (`org/name[@revision][:file]`). Tests never reach the Hub; this path
//! is exercised offline through `HF_HUB_OFFLINE=1` against a prepared cache directory.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{EngineError, Result};
use crate::source::{shard_files, ModelFiles};

fn hub_err(id: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Hub {
        id: id.to_string(),
        message: e.to_string(),
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Fetches one file: from the local cache when offline, otherwise via the API (which also
/// reuses the cache and shows a progress bar).
struct Fetcher {
    id: String,
    repo: Repo,
    api: Option<hf_hub::api::sync::ApiRepo>,
    cache: Cache,
}

impl Fetcher {
    fn new(repo_id: &str, revision: Option<&str>) -> Result<Self> {
        let repo = match revision {
            Some(rev) => Repo::with_revision(repo_id.into(), RepoType::Model, rev.into()),
            None => Repo::new(repo_id.into(), RepoType::Model),
        };
        let cache = Cache::from_env();
        let api = if offline() {
            None
        } else {
            let token = std::env::var("HF_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or_else(|| cache.token());
            let api = ApiBuilder::from_cache(cache.clone())
                .with_token(token)
                .with_progress(true)
                .build()
                .map_err(|e| hub_err(repo_id, e))?;
            Some(api.repo(repo.clone()))
        };
        Ok(Self {
            id: repo_id.to_string(),
            repo,
            api,
            cache,
        })
    }

    fn get(&self, file: &str) -> Result<PathBuf> {
        match &self.api {
            Some(api) => api
                .get(file)
                .map_err(|e| hub_err(&self.id, format!("{file}: {e}"))),
            None => self.cache.repo(self.repo.clone()).get(file).ok_or_else(|| {
                hub_err(
                    &self.id,
                    format!("{file} is not in the local cache and HF_HUB_OFFLINE is set"),
                )
            }),
        }
    }

    fn try_get(&self, file: &str) -> Option<PathBuf> {
        self.get(file).ok()
    }

    /// File names in the repository, or `None` offline (where listing is impossible).
    fn list(&self) -> Result<Option<Vec<String>>> {
        let Some(api) = &self.api else { return Ok(None) };
        let info = api.info().map_err(|e| hub_err(&self.id, e))?;
        Ok(Some(info.siblings.into_iter().map(|s| s.rfilename).collect()))
    }
}

pub fn download(repo_id: &str, revision: Option<&str>, file: Option<&str>) -> Result<ModelFiles> {
    let f = Fetcher::new(repo_id, revision)?;
    if let Some(file) = file {
        return Ok(ModelFiles::Gguf { path: f.get(file)? });
    }
    let listing = f.list()?;
    if let Some(files) = &listing {
        let has_safetensors = files.iter().any(|n| n.ends_with(".safetensors"));
        let ggufs: Vec<&String> = files.iter().filter(|n| n.ends_with(".gguf")).collect();
        if !has_safetensors {
            return match ggufs.as_slice() {
                [only] => Ok(ModelFiles::Gguf { path: f.get(only)? }),
                [] => Err(hub_err(
                    repo_id,
                    "the repository has neither safetensors nor GGUF weights",
                )),
                many => Err(hub_err(
                    repo_id,
                    format!(
                        "the repository holds several GGUF files; pick one with `{repo_id}:FILE` ({})",
                        many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )),
            };
        }
    }
    let config = f.get("config.json")?;
    let tokenizer = f
        .get("tokenizer.json")
        .map_err(|_| EngineError::MissingTokenizer(PathBuf::from(repo_id)))?;
    let tokenizer_config = f.try_get("tokenizer_config.json");
    let weights = match f.try_get("model.safetensors.index.json") {
        Some(index) => shard_files(&index)?
            .iter()
            .map(|name| f.get(name))
            .collect::<Result<Vec<_>>>()?,
        None => vec![f.get("model.safetensors")?],
    };
    Ok(ModelFiles::Safetensors {
        config,
        weights,
        tokenizer,
        tokenizer_config,
    })
}
