//! The local models this process runs, each with its own engine (and KV pool), chat template,
//! tool-call format and metrics. The first is `server.model` (what `/ready` names); the others
//! are local models that routes name as tiers (wick-config's `Config::local_models`). Clients
//! may ask for any of them by name.

use std::sync::Arc;

use wick_engine::Engine;

use crate::api::chat_template::ChatTemplate;
use crate::api::errors::ApiError;
use crate::ops::metrics::ModelMetrics;
use crate::tools::parser::ToolCallFormat;
use crate::tools::RequestLimits;

pub struct LocalModel {
    /// The name clients use in `model`.
    pub id: String,
    pub engine: Arc<Engine>,
    pub template: Option<ChatTemplate>,
    /// `tool_call_parser` from the config (None: detected from the template).
    pub tool_format: Option<ToolCallFormat>,
    pub metrics: Arc<ModelMetrics>,
}

/// Every local model of the process, `server.model` first; requests find theirs by name. With
/// the bounds every request to them is held to. Cloning shares the models.
#[derive(Default, Clone)]
pub struct LocalModels {
    models: Vec<Arc<LocalModel>>,
    pub limits: RequestLimits,
}

impl LocalModels {
    /// Adds a model; fails when one of that name is already served.
    pub fn push(&mut self, model: LocalModel) -> Result<(), String> {
        if self.models.iter().any(|m| m.id == model.id) {
            return Err(format!("two local models are both served as `{}`", model.id));
        }
        self.models.push(Arc::new(model));
        Ok(())
    }

    /// The model clients call `name` (OpenAI's 404 `model_not_found` otherwise).
    pub fn get(&self, name: &str) -> Result<Arc<LocalModel>, ApiError> {
        self.models
            .iter()
            .find(|m| m.id == name)
            .cloned()
            .ok_or_else(|| ApiError::model_not_found(name))
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Arc<LocalModel>> {
        self.models.iter()
    }

    /// The first model (`server.model`, what `/ready` names), if any.
    pub fn first(&self) -> Option<&Arc<LocalModel>> {
        self.models.first()
    }
}

impl<'a> IntoIterator for &'a LocalModels {
    type Item = &'a Arc<LocalModel>;
    type IntoIter = std::slice::Iter<'a, Arc<LocalModel>>;

    fn into_iter(self) -> Self::IntoIter {
        self.models.iter()
    }
}
