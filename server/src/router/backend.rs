//! A route's tier: a model this process runs (called in process, through the local model
//! service that answers a direct request) or a remote OpenAI-compatible endpoint (HTTP,
//! streamed through without buffering). Either answers with a status and a body; what counts as
//! a failure (for failover and the circuit breaker) is decided here.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::TryStreamExt;
use tokio::sync::Semaphore;

use crate::api::local_model::LocalModels;
use crate::api::service::{self, Endpoint};
use crate::ops::http_client::error_chain;

pub enum BackendKind {
    /// A model this process runs (its own engine; the handlers find it by `model`).
    Local,
    Remote(RemoteClient),
}

pub struct Backend {
    /// The config's model id (what `x-wick-backend` and the metrics say).
    pub id: String,
    /// The name sent as `model` to it.
    pub model: String,
    pub kind: BackendKind,
    /// Price per million prompt and generated tokens (`price_*_per_mtok`; 0 when unset).
    pub prices: (f64, f64),
    /// What its model can do beyond text chat (`capabilities`, or the default for its kind).
    pub capabilities: Vec<wick_config::Capability>,
    /// Remote: its model's chat template (`chat_template`) and tool-call format, to render a
    /// chat as it reads it when it scores another tier's answer (`router::score`). A local
    /// model's are its `LocalModel`'s.
    pub template: Option<Arc<crate::api::chat_template::ChatTemplate>>,
    pub tool_format: Option<crate::tools::parser::ToolCallFormat>,
}

impl Backend {
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, BackendKind::Remote(_))
    }

    /// The first of `needs` its model lacks.
    pub fn lacks(&self, needs: &[wick_config::Capability]) -> Option<wick_config::Capability> {
        needs.iter().copied().find(|c| !self.capabilities.contains(c))
    }

    /// What `usage` (an OpenAI usage object) cost on this backend.
    pub fn cost(&self, usage: Option<&serde_json::Value>) -> f64 {
        let tokens = |k: &str| {
            usage
                .and_then(|u| u.get(k))
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        };
        (tokens("prompt_tokens") * self.prices.0 + tokens("completion_tokens") * self.prices.1) / 1e6
    }
}

/// Why a tier gave no answer; each moves the request to the next tier.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendFailure {
    /// Connection refused or reset, timeout, body read error.
    Unreachable(String),
    /// 429 or 5xx (or a remote's 401/403: wick's own key is wrong).
    Status(StatusCode),
    /// `max_concurrency` requests already in flight.
    Saturated,
}

impl BackendFailure {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Status(s) if *s == StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            Self::Status(s) if s.is_client_error() => "refused",
            Self::Status(_) => "server_error",
            Self::Saturated => "saturated",
        }
    }
}

impl std::fmt::Display for BackendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "unreachable: {e}"),
            Self::Status(s) => write!(f, "answered {s}"),
            Self::Saturated => f.write_str("at its max_concurrency"),
        }
    }
}

/// A tier's answer: its status (2xx, or a 4xx that is the request's own fault) and body.
pub struct BackendReply {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Body,
}

impl BackendReply {
    fn from_response(response: Response) -> Self {
        let status = response.status();
        let content_type = response.headers().get(axum::http::header::CONTENT_TYPE).cloned();
        Self {
            status,
            content_type,
            body: response.into_body(),
        }
    }

    /// The whole body (non-streamed answers).
    pub async fn bytes(self, limit: usize) -> Result<Bytes, BackendFailure> {
        axum::body::to_bytes(self.body, limit)
            .await
            .map_err(|e| BackendFailure::Unreachable(format!("reading the answer: {e}")))
    }
}

impl Backend {
    /// Sends `body` (with `model` already set to [`Backend::model`]).
    pub async fn send(
        &self,
        local: &LocalModels,
        endpoint: Endpoint,
        body: Bytes,
    ) -> Result<BackendReply, BackendFailure> {
        let reply = match &self.kind {
            BackendKind::Local => {
                let response = service::handle(local, endpoint, body).await;
                BackendReply::from_response(response)
            }
            BackendKind::Remote(client) => client.send(endpoint, body).await?,
        };
        let s = reply.status;
        // 401/403 from a remote are wick's credentials, not the client's: a failing backend.
        let refused_us = matches!(self.kind, BackendKind::Remote(_))
            && (s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN);
        if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() || refused_us {
            return Err(BackendFailure::Status(s));
        }
        Ok(reply)
    }
}

/// Non-streamed answers larger than this are a failure of the tier.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A completions request the router makes itself (score mode's scoring and continuation), and
/// the backend's answer: the JSON of a 200, or the status and message of a refusal.
pub enum Completed {
    Answer(serde_json::Value),
    Refused(StatusCode, String),
}

impl Backend {
    /// Sends `body` to `/v1/completions` (with `model` set to [`Backend::model`]) and reads the
    /// whole answer. `what` names the request in the failure of an answer that is not JSON.
    pub async fn complete(
        &self,
        local: &LocalModels,
        mut body: serde_json::Value,
        what: &str,
    ) -> Result<Completed, BackendFailure> {
        body["model"] = serde_json::Value::String(self.model.clone());
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let reply = self.send(local, Endpoint::Completions, bytes).await?;
        let status = reply.status;
        let text = reply.bytes(MAX_ANSWER_BYTES).await?;
        let json: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| BackendFailure::Unreachable(format!("{what} is not JSON: {e}")))?;
        if status != StatusCode::OK {
            let message = json.pointer("/error/message").and_then(|m| m.as_str());
            return Ok(Completed::Refused(
                status,
                message.unwrap_or_default().to_string(),
            ));
        }
        Ok(Completed::Answer(json))
    }
}

/// An OpenAI-compatible endpoint over HTTP.
pub struct RemoteClient {
    client: reqwest::Client,
    /// `http://host:port/v1` (no trailing slash).
    base_url: String,
    api_key: Option<String>,
    slots: Option<Arc<Semaphore>>,
}

impl RemoteClient {
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
        max_concurrency: Option<usize>,
    ) -> reqwest::Result<Self> {
        let client = crate::ops::http_client::builder()
            .connect_timeout(Duration::from_secs(5).min(timeout))
            // Per read, so a long stream lives as long as tokens keep coming.
            .read_timeout(timeout)
            .build()?;
        Ok(Self {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            slots: max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
        })
    }

    async fn send(&self, endpoint: Endpoint, body: Bytes) -> Result<BackendReply, BackendFailure> {
        // The slot is held until the body is fully read or dropped (the client went away).
        let permit = match &self.slots {
            Some(s) => Some(
                s.clone()
                    .try_acquire_owned()
                    .map_err(|_| BackendFailure::Saturated)?,
            ),
            None => None,
        };
        let mut request = self
            .client
            .post(format!("{}/{}", self.base_url, endpoint.path()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| BackendFailure::Unreachable(error_chain(&e)))?;
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        // Streamed through as it arrives; dropping it (client gone) closes the upstream request.
        let stream = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(error_chain(&e)))
            .inspect_ok(move |_| {
                let _held = &permit;
            });
        Ok(BackendReply {
            status,
            content_type,
            body: Body::from_stream(stream),
        })
    }
}
