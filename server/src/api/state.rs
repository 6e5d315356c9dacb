//! What the handlers share: the local models, metrics, the router, and the server's settings.

use std::sync::Arc;

use wick_engine::Engine;

use crate::api::chat_template::ChatTemplate;
use crate::api::errors::ApiError;
use crate::api::local_model::{LocalModel, LocalModels};
use crate::api::openai::unix_now;
use crate::api::responses::store::ResponseStore;
use crate::ops::auth::ApiKeys;
use crate::ops::drain::Drain;
use crate::ops::metrics::Metrics;
use crate::router::RouterState;
use crate::tools::parser::ToolCallFormat;

pub struct AppState {
    /// The local models, `server.model` first (see [`LocalModel`]).
    pub models: LocalModels,
    pub metrics: Arc<Metrics>,
    /// Accepted bearer tokens for `/v1/*`; empty: no authentication.
    pub api_keys: ApiKeys,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers.
    pub cors_allow_origins: Vec<String>,
    pub created: u64,
    pub drain: Drain,
    /// Routes to tiers (None: no routes configured).
    pub router: Option<RouterState>,
    /// Stored `/v1/responses` (`server.responses_store_max`, `server.responses_store_ttl_secs`).
    pub responses: Arc<ResponseStore>,
}

impl AppState {
    /// A process serving `engine` as `model_id`; more models come with [`AppState::add_model`].
    pub fn new(
        engine: Arc<Engine>,
        model_id: String,
        template: Option<ChatTemplate>,
        tool_format: Option<ToolCallFormat>,
    ) -> Self {
        let mut state = Self {
            models: LocalModels::default(),
            metrics: Arc::new(Metrics::new(&model_id).expect("metric names are valid")),
            api_keys: ApiKeys::default(),
            max_body_bytes: 8 << 20,
            cors_allow_origins: Vec::new(),
            created: unix_now(),
            drain: Drain::default(),
            router: None,
            responses: Arc::new(ResponseStore::from_config(&wick_config::ServerConfig::default())),
        };
        state
            .add_model(engine, model_id, template, tool_format)
            .expect("the first model's metrics are the registry's only ones");
        state
    }

    /// One more local model (its metrics labelled with its name). Fails when a model of that
    /// name is already served.
    pub fn add_model(
        &mut self,
        engine: Arc<Engine>,
        model_id: String,
        template: Option<ChatTemplate>,
        tool_format: Option<ToolCallFormat>,
    ) -> Result<(), String> {
        if self.models.get(&model_id).is_ok() {
            return Err(format!("two local models are both served as `{model_id}`"));
        }
        let metrics = self
            .metrics
            .add_model(&model_id)
            .map_err(|e| format!("metrics of `{model_id}`: {e}"))?;
        self.models.push(LocalModel {
            id: model_id,
            engine,
            template,
            tool_format,
            metrics,
        })
    }

    /// The model `server.model` names (what `/ready` reports).
    pub fn primary(&self) -> &Arc<LocalModel> {
        self.models.first().expect("AppState::new adds the first model")
    }

    pub(crate) fn check_not_draining(&self) -> Result<(), ApiError> {
        if self.drain.is_draining() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        Ok(())
    }
}
