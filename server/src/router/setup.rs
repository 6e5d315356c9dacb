//! The router from the configuration: routes, their tiers (local models run by this process
//! or remote clients), breakers, and the remote backends clients may ask for by name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wick_config::{Config, RoutePolicy};

use super::backend::{Backend, BackendKind, RemoteClient};
use super::breaker::CircuitBreaker;
use super::metrics::RouterMetrics;
use super::{Route, RouterState, Tier};

#[derive(Debug, thiserror::Error)]
pub enum RouterConfigError {
    #[error("route `{route}` names local model `{model}`, which this process does not run")]
    LocalModelNotRunning { route: String, model: String },
    #[error("model `{model}`: {source}")]
    Client {
        model: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("router metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("model `{model}`: chat_template {path}: {message}")]
    Template {
        model: String,
        path: String,
        message: String,
    },
}

/// A remote model's chat template, read from its file (no BOS or EOS text known: a template
/// that writes them renders them empty, and the remote server adds its BOS when it tokenizes).
fn remote_template(
    model: &str,
    path: &std::path::Path,
) -> Result<crate::api::chat_template::ChatTemplate, RouterConfigError> {
    let error = |message: String| RouterConfigError::Template {
        model: model.to_string(),
        path: path.display().to_string(),
        message,
    };
    let source = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    crate::api::chat_template::ChatTemplate::new(source, None, None).map_err(|e| error(e.to_string()))
}

impl RouterState {
    /// The routes and remote backends of `cfg`; `local` maps the id of each local model this
    /// process runs to what clients call it (its served name). `None` when there are no routes.
    pub fn from_config(
        cfg: &Config,
        local: &HashMap<String, String>,
        registry: &prometheus::Registry,
    ) -> Result<Option<Self>, RouterConfigError> {
        if cfg.routes.is_empty() {
            return Ok(None);
        }
        let mut backends: HashMap<String, Arc<Backend>> = HashMap::new();
        let breaker = |p: &RoutePolicy| {
            CircuitBreaker::new(p.breaker_failures, Duration::from_secs(p.breaker_cooldown_secs))
        };
        let mut routes = HashMap::new();
        for r in &cfg.routes {
            let mut tiers = Vec::new();
            for id in &r.tiers {
                if let Some(b) = backends.get(id) {
                    tiers.push(Tier {
                        backend: b.clone(),
                        breaker: breaker(&r.policy),
                    });
                    continue;
                }
                let Some(m) = cfg.models.iter().find(|m| &m.id == id) else {
                    continue; // wick-config's validation reports unknown ids before this runs.
                };
                let kind = match &m.url {
                    Some(url) => {
                        let key = m.api_key_env.as_ref().and_then(|var| match std::env::var(var) {
                            Ok(key) => Some(key),
                            Err(_) => {
                                // Started anyway: the backend may not need a key; if it does,
                                // its 401s fail over like any other failure.
                                tracing::warn!(model = %id, %var, "api_key_env is not set: no key sent");
                                None
                            }
                        });
                        let timeout = Duration::from_secs(m.timeout_secs.unwrap_or(600));
                        let client =
                            RemoteClient::new(url, key, timeout, m.max_concurrency).map_err(|source| {
                                RouterConfigError::Client {
                                    model: id.clone(),
                                    source,
                                }
                            })?;
                        BackendKind::Remote(client)
                    }
                    None => BackendKind::Local,
                };
                let model = match kind {
                    BackendKind::Local => {
                        local
                            .get(id)
                            .cloned()
                            .ok_or_else(|| RouterConfigError::LocalModelNotRunning {
                                route: r.name.clone(),
                                model: id.clone(),
                            })?
                    }
                    BackendKind::Remote(_) => m.served_name.clone().unwrap_or_else(|| id.clone()),
                };
                let template = match (&kind, &m.chat_template) {
                    (BackendKind::Remote(_), Some(path)) => Some(Arc::new(remote_template(id, path)?)),
                    _ => None,
                };
                let backend = Arc::new(Backend {
                    id: id.clone(),
                    model,
                    kind,
                    template,
                    tool_format: m.tool_call_parser.map(Into::into),
                    prices: (
                        m.price_input_per_mtok.unwrap_or(0.0),
                        m.price_output_per_mtok.unwrap_or(0.0),
                    ),
                    capabilities: m.capabilities(),
                });
                backends.insert(id.clone(), backend.clone());
                tiers.push(Tier {
                    backend,
                    breaker: breaker(&r.policy),
                });
            }
            routes.insert(
                r.name.clone(),
                Route {
                    name: r.name.clone(),
                    tiers,
                    policy: r.policy.clone(),
                },
            );
        }
        let mut backends: Vec<Arc<Backend>> = backends.into_values().collect();
        backends.sort_by(|a, b| a.id.cmp(&b.id));
        let policy = RoutePolicy::default();
        let direct = backends
            .iter()
            .filter(|b| b.is_remote())
            .map(|b| {
                let route = Route {
                    name: b.model.clone(),
                    tiers: vec![Tier {
                        backend: b.clone(),
                        breaker: breaker(&policy),
                    }],
                    policy: policy.clone(),
                };
                (b.model.clone(), route)
            })
            .collect();
        Ok(Some(Self {
            routes,
            backends,
            direct,
            metrics: RouterMetrics::new(registry)?,
        }))
    }

    /// Breaker states into their gauge (at scrape time).
    pub fn observe_breakers(&self) {
        for r in self.routes.values().chain(self.direct.values()) {
            for t in &r.tiers {
                self.metrics
                    .breaker
                    .with_label_values(&[&r.name, &t.backend.id])
                    .set(t.breaker.state().as_gauge());
            }
        }
    }
}
