//! The local models this process runs, each with its own engine (and KV pool), chat template,
//! tool-call format and metrics. The first is `server.model` (what `/ready` names); the others
//! are local models that routes name as tiers (wick-config's `Config::local_models`). Clients
//! may ask for any of them by name.

use std::sync::Arc;

use wick_engine::Engine;

use crate::chat_template::ChatTemplate;
use crate::metrics::ModelMetrics;
use crate::tool_parser::ToolCallFormat;

pub struct LocalModel {
    /// The name clients use in `model`.
    pub id: String,
    pub engine: Arc<Engine>,
    pub template: Option<ChatTemplate>,
    /// `tool_call_parser` from the config (None: detected from the template).
    pub tool_format: Option<ToolCallFormat>,
    pub metrics: Arc<ModelMetrics>,
}
