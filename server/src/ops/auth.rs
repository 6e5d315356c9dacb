//! API keys: every `/v1/*` request needs `Authorization: Bearer KEY` with one of the configured
//! keys (OpenAI's 401 otherwise), checked before the route or the method is: without a key, an
//! unknown `/v1/` path is as much a 401 as a known one, so routes cannot be probed. The scheme
//! is matched case-insensitively (RFC 9110). Keys are compared as SHA-256 digests, every
//! configured key each time, with no early exit: the time taken says neither the key's length
//! nor which key matched. A middleware whose state is the keys' digests alone.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::api::errors::ApiError;

type KeyDigest = [u8; 32];

/// The accepted bearer tokens, as digests; empty: no authentication.
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<Vec<KeyDigest>>);

impl ApiKeys {
    pub fn new(keys: Vec<String>) -> Self {
        Self(Arc::new(keys.iter().map(|k| digest(k)).collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `given` is one of the keys. Compares against all of them, each in constant time.
    pub fn accepts(&self, given: &str) -> bool {
        let given = digest(given);
        self.0
            .iter()
            .fold(false, |found, key| found | constant_time_eq(key, &given))
    }
}

fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality of two digests whose time does not depend on where they differ.
fn constant_time_eq(a: &KeyDigest, b: &KeyDigest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer TOKEN` header, the scheme in any case.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Lets a request through when it is not for `/v1/*`, no keys are configured, or it carries one
/// of them.
pub async fn require_api_key(State(keys): State<ApiKeys>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if keys.is_empty() || !(path == "/v1" || path.starts_with("/v1/")) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        Some(key) if keys.accepts(key) => next.run(req).await,
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => {
            ApiError::unauthorized("You didn't provide an API key. Send it as `Authorization: Bearer KEY`.")
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_configured_key_is_accepted_and_nothing_else() {
        let keys = ApiKeys::new(vec!["first".into(), "second-key".into()]);
        assert!(keys.accepts("first"));
        assert!(keys.accepts("second-key"));
        for wrong in ["", "firs", "first ", "second-keyx", "FIRST"] {
            assert!(!keys.accepts(wrong), "{wrong:?}");
        }
        assert!(!ApiKeys::default().accepts(""));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer k"), Some("k"));
        assert_eq!(bearer_token("bearer k"), Some("k"));
        assert_eq!(bearer_token("BEARER  k "), Some("k"));
        assert_eq!(bearer_token("Basic k"), None);
        assert_eq!(bearer_token("Bearerk"), None);
    }
}
