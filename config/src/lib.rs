//! wick's typed configuration: one schema ([`Config`]) for the server, the engine, models,
//! routes, metrics and logging, read from layers in this order (later wins):
//! defaults < TOML file < `WICK_*` environment variables < command-line flags.
//! [`load`] validates the result and reports every problem with where it came from
//! (`file:line:column`, the variable or the flag) and the field's path.

pub mod error;
mod locate;
pub mod overrides;
pub mod schema;
pub mod validate;

use std::path::Path;

pub use error::{ConfigError, Origin, Problem};
pub use overrides::{Layer, Overrides};
pub use schema::*;

/// The id of the model entry that stands for "the embedded default model" when the
/// configuration names none.
pub const DEFAULT_MODEL_ID: &str = "default";

/// Parses TOML text; `path` only names the file in messages. No validation.
pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(src);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        let (message, suggestion, unknown_key) = error::explain(inner.message());
        // The path already ends with an unknown key; "." is the root (a syntax error).
        let field = match (field.as_str(), unknown_key) {
            (".", Some(k)) => k,
            (".", None) => String::new(),
            _ => field,
        };
        let origin = match inner.span() {
            Some(span) => {
                let (line, column) = error::line_column(src, span.start);
                Origin::File {
                    path: path.to_path_buf(),
                    line,
                    column,
                }
            }
            None => Origin::FileUnlocated(path.to_path_buf()),
        };
        ConfigError::Invalid(vec![Problem {
            origin,
            field,
            message,
            suggestion,
        }])
    })
}

/// The layered, validated configuration. `file: None` starts from the defaults.
pub fn load(file: Option<&Path>, env: &Overrides, cli: &Overrides) -> Result<Config, ConfigError> {
    match file {
        Some(path) => {
            let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            load_str(Some((path, &src)), env, cli)
        }
        None => load_str(None, env, cli),
    }
}

/// [`load`] with the file's text given: `(path for messages, TOML text)`.
pub fn load_str(
    file: Option<(&Path, &str)>,
    env: &Overrides,
    cli: &Overrides,
) -> Result<Config, ConfigError> {
    let (mut cfg, src) = match file {
        Some((path, src)) => (parse(src, path)?, src),
        None => (Config::default(), ""),
    };
    let file = file.map(|(path, _)| path);
    let mut origins = Vec::new();
    let mut unapplied = env.apply(&mut cfg, Layer::Env, &mut origins);
    unapplied.extend(cli.apply(&mut cfg, Layer::Flag, &mut origins));
    if cfg.models.is_empty() {
        cfg.models.push(ModelConfig {
            id: DEFAULT_MODEL_ID.into(),
            ..ModelConfig::default()
        });
    }
    let findings = validate::validate(&cfg);
    if findings.is_empty() && unapplied.is_empty() {
        return Ok(cfg);
    }
    let locator = locate::Locator::new(src);
    let problems = unapplied
        .into_iter()
        .chain(findings.into_iter().map(|(field, message, suggestion)| {
            // The last layer that set the field is where the bad value came from.
            let set_by = origins
                .iter()
                .rev()
                .find(|(p, _)| *p == field)
                .map(|(_, o)| o.clone());
            let origin = set_by.unwrap_or_else(|| match file {
                Some(path) => match locator.span(&field) {
                    Some(span) => {
                        let (line, column) = error::line_column(src, span.start);
                        Origin::File {
                            path: path.to_path_buf(),
                            line,
                            column,
                        }
                    }
                    None => Origin::FileUnlocated(path.to_path_buf()),
                },
                None => Origin::Default,
            });
            Problem {
                origin,
                field,
                message,
                suggestion,
            }
        }))
        .collect();
    Err(ConfigError::Invalid(problems))
}

/// Reads `WICK_*` from the process environment.
pub fn env_overrides() -> Result<Overrides, ConfigError> {
    Overrides::from_env(|k| std::env::var(k).ok()).map_err(ConfigError::Invalid)
}

/// Which `[[models]]` entry this process serves: `server.model`, else the only local model that
/// is not another's draft.
pub fn served_model_index(cfg: &Config) -> Option<usize> {
    match &cfg.server.model {
        Some(id) => cfg.models.iter().position(|m| &m.id == id && !m.is_remote()),
        None => {
            let mut local = cfg
                .models
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.is_remote() && !is_draft(cfg, &m.id));
            match (local.next(), local.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            }
        }
    }
}

/// Whether some model names `id` as its `draft`.
pub fn is_draft(cfg: &Config, id: &str) -> bool {
    cfg.models.iter().any(|m| m.draft.as_deref() == Some(id))
}

impl Config {
    /// The model this process serves (see [`served_model_index`]).
    pub fn served_model(&self) -> Option<&ModelConfig> {
        served_model_index(self).map(|i| &self.models[i])
    }

    /// Every local model this process runs, each with its own engine: the served model first,
    /// then each other local model a route names as a tier, in the order routes name them.
    /// Empty when no model is served (an ambiguous `server.model`, reported by validation).
    /// A draft runs inside its target's engine ([`Config::draft_of`]) and is not listed unless
    /// it is served or a tier too.
    pub fn local_models(&self) -> Vec<&ModelConfig> {
        let Some(first) = self.served_model() else {
            return Vec::new();
        };
        let mut out = vec![first];
        for id in self.routes.iter().flat_map(|r| &r.tiers) {
            if let Some(m) = self.models.iter().find(|m| &m.id == id && !m.is_remote()) {
                if !out.iter().any(|o| o.id == m.id) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// The `[[models]]` entries this process does nothing with: not served, no route's tier,
    /// not the draft of a model it runs. Legitimate (an entry kept for later), but worth a
    /// line in the log: an entry meant to be served that no route names is silently absent.
    pub fn unused_models(&self) -> Vec<&ModelConfig> {
        let local = self.local_models();
        let used = |m: &ModelConfig| {
            local
                .iter()
                .any(|l| l.id == m.id || l.draft.as_deref() == Some(m.id.as_str()))
                || self.routes.iter().any(|r| r.tiers.contains(&m.id))
        };
        self.models.iter().filter(|m| !used(m)).collect()
    }

    /// The `[[models]]` entry that drafts for `model`, if it has one.
    pub fn draft_of(&self, model: &ModelConfig) -> Option<&ModelConfig> {
        let id = model.draft.as_deref()?;
        self.models.iter().find(|m| m.id == id)
    }

    /// The configuration as TOML, secrets masked ([`Secret`] serializes as a mask).
    pub fn to_toml(&self) -> String {
        // Every field is a string, number, bool or table of them: serializing cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
