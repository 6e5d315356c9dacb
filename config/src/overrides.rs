//! The layers above the file: `WICK_*` environment variables, then command-line flags. Both are an
//! [`Overrides`]; each setting has one flag `--x-y` and one variable `WICK_X_Y`, so the two layers
//! never disagree on names.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Origin, Problem};
use crate::schema::{Config, LogFormat, ModelConfig, Secret, Speculative};

/// Settings given outside the file. `None`: not given, the layer below decides.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--model-id`: which `[[models]]` entry to serve (`server.model`).
    pub model_id: Option<String>,
    /// `--model`: the served model's source.
    pub model: Option<String>,
    pub served_model_name: Option<String>,
    pub chat_template: Option<PathBuf>,
    /// `--draft-model`: a draft model's source for the served model; the draft gets a
    /// `[[models]]` entry of its own (id `draft`) unless the served model names one already,
    /// whose source it then replaces.
    pub draft_model: Option<String>,
    /// `--draft-dtype`: the draft's `dtype`. With `--draft-model` and without this: `auto` (as
    /// stored), so that a dense `--dtype` for the target leaves the draft quantized.
    pub draft_dtype: Option<String>,
    /// `--speculative`: the served model's `speculative`.
    pub speculative: Option<Speculative>,
    /// `--num-speculative-tokens`: the served model's `num_speculative_tokens`.
    pub num_speculative_tokens: Option<usize>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `--api-key`: comma-separated.
    pub api_keys: Option<Vec<Secret>>,
    /// `--cors-allow-origins`: comma-separated.
    pub cors_allow_origins: Option<Vec<String>>,
    pub max_body_bytes: Option<usize>,
    pub max_tools: Option<usize>,
    pub max_schema_bytes: Option<usize>,
    pub responses_store_max: Option<usize>,
    pub responses_store_max_bytes: Option<usize>,
    pub responses_store_ttl_secs: Option<u64>,
    pub drain_delay_secs: Option<u64>,
    pub drain_grace_secs: Option<u64>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub kv_cache_mib: Option<usize>,
    pub kv_cache_dtype: Option<String>,
    pub max_num_seqs: Option<usize>,
    pub max_num_batched_tokens: Option<usize>,
    pub max_waiting_requests: Option<usize>,
    pub log_format: Option<LogFormat>,
}

/// How a layer names a setting: `Flag("port")` is `--port`, `Env` is `WICK_PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Env,
    Flag,
}

impl Layer {
    pub fn origin(self, name: &str) -> Origin {
        match self {
            Layer::Env => Origin::Env(env_name(name)),
            Layer::Flag => Origin::Flag(format!("--{}", name.replace('_', "-"))),
        }
    }
}

/// `kv_cache_mib` → `WICK_KV_CACHE_MIB`; `api_key` → `WICK_API_KEY`.
pub fn env_name(name: &str) -> String {
    format!("WICK_{}", name.to_ascii_uppercase())
}

/// A comma-separated value as its non-empty, trimmed items.
pub fn comma_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

impl Overrides {
    /// Reads every `WICK_*` setting through `get` (`std::env::var` in the binary; a map in
    /// tests). Unparsable values are problems naming the variable; unset and empty ones are
    /// skipped (an empty variable is how a manifest leaves a setting to the file).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let parsed = |name: &str| get(&env_name(name)).filter(|v| !v.trim().is_empty());
        fn num<T: FromStr>(name: &str, raw: Option<String>, problems: &mut Vec<Problem>) -> Option<T>
        where
            T::Err: std::fmt::Display,
        {
            let raw = raw?;
            match raw.trim().parse() {
                Ok(v) => Some(v),
                Err(e) => {
                    problems.push(Problem {
                        origin: Layer::Env.origin(name),
                        field: String::new(),
                        message: format!("`{raw}`: {e}"),
                        suggestion: None,
                    });
                    None
                }
            }
        }
        let log_format = match parsed("log_format").as_deref() {
            None => None,
            Some("text") => Some(LogFormat::Text),
            Some("json") => Some(LogFormat::Json),
            Some(other) => {
                problems.push(Problem {
                    origin: Layer::Env.origin("log_format"),
                    field: String::new(),
                    message: format!("`{other}`: expected `text` or `json`"),
                    suggestion: None,
                });
                None
            }
        };
        let speculative = match parsed("speculative").as_deref() {
            None => None,
            Some("ngram") => Some(Speculative::Ngram),
            Some(other) => {
                problems.push(Problem {
                    origin: Layer::Env.origin("speculative"),
                    field: String::new(),
                    message: format!("`{other}`: expected `ngram`"),
                    suggestion: None,
                });
                None
            }
        };
        let o = Overrides {
            model_id: parsed("model_id"),
            model: parsed("model"),
            served_model_name: parsed("served_model_name"),
            chat_template: parsed("chat_template").map(PathBuf::from),
            draft_model: parsed("draft_model"),
            draft_dtype: parsed("draft_dtype"),
            speculative,
            num_speculative_tokens: num(
                "num_speculative_tokens",
                parsed("num_speculative_tokens"),
                &mut problems,
            ),
            host: parsed("host"),
            port: num("port", parsed("port"), &mut problems),
            api_keys: parsed("api_key").map(|v| comma_list(&v).into_iter().map(Secret::new).collect()),
            cors_allow_origins: parsed("cors_allow_origins").map(|v| comma_list(&v)),
            max_body_bytes: num("max_body_bytes", parsed("max_body_bytes"), &mut problems),
            max_tools: num("max_tools", parsed("max_tools"), &mut problems),
            max_schema_bytes: num("max_schema_bytes", parsed("max_schema_bytes"), &mut problems),
            responses_store_max: num(
                "responses_store_max",
                parsed("responses_store_max"),
                &mut problems,
            ),
            responses_store_max_bytes: num(
                "responses_store_max_bytes",
                parsed("responses_store_max_bytes"),
                &mut problems,
            ),
            responses_store_ttl_secs: num(
                "responses_store_ttl_secs",
                parsed("responses_store_ttl_secs"),
                &mut problems,
            ),
            drain_delay_secs: num("drain_delay_secs", parsed("drain_delay_secs"), &mut problems),
            drain_grace_secs: num("drain_grace_secs", parsed("drain_grace_secs"), &mut problems),
            device: parsed("device"),
            dtype: parsed("dtype"),
            kv_cache_mib: num("kv_cache_mib", parsed("kv_cache_mib"), &mut problems),
            kv_cache_dtype: parsed("kv_cache_dtype"),
            max_num_seqs: num("max_num_seqs", parsed("max_num_seqs"), &mut problems),
            max_num_batched_tokens: num(
                "max_num_batched_tokens",
                parsed("max_num_batched_tokens"),
                &mut problems,
            ),
            max_waiting_requests: num(
                "max_waiting_requests",
                parsed("max_waiting_requests"),
                &mut problems,
            ),
            log_format,
        };
        if problems.is_empty() {
            Ok(o)
        } else {
            Err(problems)
        }
    }

    /// Sets what this layer gives. `origins` records, per field path, which flag or variable set
    /// it, so a later validation problem names that instead of a file line. The problems are
    /// settings that had nothing to apply to (`--draft-dtype` without a draft model).
    pub fn apply(&self, cfg: &mut Config, layer: Layer, origins: &mut Vec<(String, Origin)>) -> Vec<Problem> {
        let mut set = |name: &str, path: &str| origins.push((path.to_string(), layer.origin(name)));
        macro_rules! put {
            ($field:ident, $target:expr, $path:literal) => {
                if let Some(v) = &self.$field {
                    $target = v.clone().into();
                    set(stringify!($field), $path);
                }
            };
        }
        put!(model_id, cfg.server.model, "server.model");
        put!(host, cfg.server.host, "server.host");
        put!(port, cfg.server.port, "server.port");
        put!(
            cors_allow_origins,
            cfg.server.cors_allow_origins,
            "server.cors_allow_origins"
        );
        put!(max_body_bytes, cfg.server.max_body_bytes, "server.max_body_bytes");
        put!(max_tools, cfg.server.max_tools, "server.max_tools");
        put!(
            max_schema_bytes,
            cfg.server.max_schema_bytes,
            "server.max_schema_bytes"
        );
        put!(
            responses_store_max,
            cfg.server.responses_store_max,
            "server.responses_store_max"
        );
        put!(
            responses_store_max_bytes,
            cfg.server.responses_store_max_bytes,
            "server.responses_store_max_bytes"
        );
        put!(
            responses_store_ttl_secs,
            cfg.server.responses_store_ttl_secs,
            "server.responses_store_ttl_secs"
        );
        put!(
            drain_delay_secs,
            cfg.server.drain_delay_secs,
            "server.drain_delay_secs"
        );
        put!(
            drain_grace_secs,
            cfg.server.drain_grace_secs,
            "server.drain_grace_secs"
        );
        put!(device, cfg.engine.device, "engine.device");
        put!(dtype, cfg.engine.dtype, "engine.dtype");
        put!(kv_cache_mib, cfg.engine.kv_cache_mib, "engine.kv_cache_mib");
        put!(kv_cache_dtype, cfg.engine.kv_cache_dtype, "engine.kv_cache_dtype");
        put!(max_num_seqs, cfg.engine.max_num_seqs, "engine.max_num_seqs");
        put!(
            max_num_batched_tokens,
            cfg.engine.max_num_batched_tokens,
            "engine.max_num_batched_tokens"
        );
        put!(
            max_waiting_requests,
            cfg.engine.max_waiting_requests,
            "engine.max_waiting_requests"
        );
        put!(log_format, cfg.logging.format, "logging.format");
        if let Some(keys) = &self.api_keys {
            cfg.server.api_keys = keys.clone();
            set("api_key", "server.api_keys");
        }
        let (model, name, template) = (&self.model, &self.served_model_name, &self.chat_template);
        let speculation = self.draft_model.is_some()
            || self.draft_dtype.is_some()
            || self.speculative.is_some()
            || self.num_speculative_tokens.is_some();
        if model.is_none() && name.is_none() && template.is_none() && !speculation {
            return Vec::new();
        }
        // Model settings apply to the served model; with no `[[models]]` that is the default one.
        if cfg.models.is_empty() {
            cfg.models.push(ModelConfig {
                id: crate::DEFAULT_MODEL_ID.into(),
                ..ModelConfig::default()
            });
        }
        // An ambiguous choice is left alone here and reported by validation.
        let Some(i) = crate::served_model_index(cfg) else {
            return Vec::new();
        };
        let entry = &mut cfg.models[i];
        let path = |field: &str| format!("models[{i}].{field}");
        if let Some(m) = model {
            entry.source = Some(m.clone());
            entry.url = None;
            set("model", &path("source"));
        }
        if let Some(n) = name {
            entry.served_name = Some(n.clone());
            set("served_model_name", &path("served_name"));
        }
        if let Some(t) = template {
            entry.chat_template = Some(t.clone());
            set("chat_template", &path("chat_template"));
        }
        if !speculation {
            return Vec::new();
        }
        self.apply_speculation(cfg, i, layer, &mut set)
    }

    /// The speculation settings, on the served model `cfg.models[i]` and its draft. A later
    /// layer's draft model replaces an earlier `speculative` and the other way round; both in
    /// one layer are left for validation to report.
    fn apply_speculation(
        &self,
        cfg: &mut Config,
        i: usize,
        layer: Layer,
        set: &mut impl FnMut(&str, &str),
    ) -> Vec<Problem> {
        let path = |i: usize, field: &str| format!("models[{i}].{field}");
        let served_id = cfg.models[i].id.clone();
        if let Some(method) = self.speculative {
            let entry = &mut cfg.models[i];
            entry.speculative = Some(method);
            if self.draft_model.is_none() && entry.draft.take().is_some() {
                // The entry that drafted is an ordinary local model now: keep serving this one.
                cfg.server.model.get_or_insert(served_id.clone());
            }
            set("speculative", &path(i, "speculative"));
        }
        if let Some(k) = self.num_speculative_tokens {
            cfg.models[i].num_speculative_tokens = Some(k);
            set("num_speculative_tokens", &path(i, "num_speculative_tokens"));
        }
        // The served model's draft entry, whose source `--draft-model` replaces (never the
        // served entry itself, which validation reports as drafting for itself).
        let existing = cfg.models[i]
            .draft
            .as_ref()
            .and_then(|id| cfg.models.iter().position(|m| &m.id == id))
            .filter(|&d| d != i);
        if let Some(source) = &self.draft_model {
            let d = match existing {
                Some(d) => d,
                None => {
                    let id = (1..)
                        .map(|n| {
                            if n == 1 {
                                "draft".to_string()
                            } else {
                                format!("draft-{n}")
                            }
                        })
                        .find(|id| cfg.models.iter().all(|m| &m.id != id))
                        .unwrap_or_else(|| "draft".into());
                    cfg.models.push(ModelConfig {
                        id: id.clone(),
                        ..ModelConfig::default()
                    });
                    cfg.models[i].draft = Some(id);
                    set("draft_model", &path(i, "draft"));
                    cfg.models.len() - 1
                }
            };
            let draft = &mut cfg.models[d];
            draft.source = Some(source.clone());
            draft.url = None;
            draft.dtype.get_or_insert_with(|| "auto".into());
            set("draft_model", &path(d, "source"));
            if self.speculative.is_none() {
                cfg.models[i].speculative = None;
            }
        }
        if let Some(dtype) = &self.draft_dtype {
            let draft = cfg.models[i]
                .draft
                .as_ref()
                .and_then(|id| cfg.models.iter().position(|m| &m.id == id));
            match draft {
                Some(d) => {
                    cfg.models[d].dtype = Some(dtype.clone());
                    set("draft_dtype", &path(d, "dtype"));
                }
                None => {
                    return vec![Problem {
                        origin: layer.origin("draft_dtype"),
                        field: path(i, "draft"),
                        message: format!(
                            "`{served_id}` has no draft model for this dtype (give one with \
                             --draft-model or `draft`)"
                        ),
                        suggestion: None,
                    }]
                }
            }
        }
        Vec::new()
    }
}
