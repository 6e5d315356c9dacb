//! API keys: `/v1/*` needs `Authorization: Bearer KEY` with one of the configured keys (OpenAI's
//! 401 otherwise). A middleware whose state is the keys alone.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::errors::ApiError;

/// The accepted bearer tokens; empty: no authentication.
#[derive(Clone, Default)]
pub struct ApiKeys(pub Arc<Vec<String>>);

impl ApiKeys {
    pub fn new(keys: Vec<String>) -> Self {
        Self(Arc::new(keys))
    }
}

/// Lets a request through when no keys are configured or it carries one of them.
pub async fn require_api_key(State(keys): State<ApiKeys>, req: Request, next: Next) -> Response {
    if keys.0.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(key)
            if keys
                .0
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => {
            ApiError::unauthorized("You didn't provide an API key. Send it as `Authorization: Bearer KEY`.")
                .into_response()
        }
    }
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
