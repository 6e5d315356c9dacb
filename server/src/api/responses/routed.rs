//! `POST /v1/responses` for a route (or a remote backend asked for by name). The request becomes
//! the chat request a local model would get (`convert::chat_body`), and the router serves it
//! exactly as a `/v1/chat/completions` request: pre-routing, cascade, failover, breakers,
//! pricing, its `x-wick-*` headers; a remote tier gets it at its `/v1/chat/completions`, so a
//! remote need not know the Responses API. The chat answer becomes the response object (here),
//! a chat stream the Responses events (`routed_stream`). The response is stored like a local
//! model's, so `previous_response_id` and `item_reference` work across routes and models.

use std::sync::Arc;

use axum::body::{to_bytes, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::errors::ApiError;
use crate::api::local_model::LocalModels;
use crate::api::openai::unix_now;
use crate::api::responses::convert::{self, responses_param};
use crate::api::responses::output::{output_items, usage_from_chat, ResponseHead, Status};
use crate::api::responses::request::ResponsesRequest;
use crate::api::responses::routed_stream;
use crate::api::responses::store::ResponseStore;
use crate::api::responses::{prepare, Prepared};
use crate::api::service::Endpoint;
use crate::router::{self, Route, RouterState};

/// The router reads a whole answer up to this size before it answers; so does this.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Where a routed request goes: the route, and a tier the client pinned (`x-wick-route` or
/// `metadata.wick_route`).
pub struct RouteChoice<'a> {
    pub router: &'a RouterState,
    pub route: &'a Route,
    pub pinned: Option<String>,
}

/// `POST /v1/responses` whose `model` is a route (or a remote backend).
pub async fn create(
    choice: RouteChoice<'_>,
    models: &LocalModels,
    store: &Arc<ResponseStore>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let req = ResponsesRequest::parse(body)?;
    let mut prepared: Prepared = prepare(req, store)?;
    // Named after the route until a tier answers; then after the model that answered.
    let mut head = ResponseHead::new(&prepared.req, &prepared.req.model, unix_now());
    let forced = convert::forces_call(&prepared.req);
    let logprobs = prepared.req.wants_logprobs();
    let wants_stream = prepared.req.stream == Some(true);
    let save = prepared.save(store);
    let chat = std::mem::take(&mut prepared.chat);
    let reply = router::dispatch(
        choice.router,
        models,
        choice.route,
        Endpoint::Chat,
        chat,
        choice.pinned.as_deref(),
    )
    .await;
    let (parts, body) = reply.into_parts();
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let mut response = if parts.status.is_success() && is_sse {
        routed_stream::sse(body, head, forced, save)
    } else {
        let answer = to_bytes(body, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| ApiError::bad_gateway(format!("reading the route's answer: {e}")))?;
        if !parts.status.is_success() {
            tier_error(parts.status, &answer)
        } else if wants_stream {
            // A backend that ignored `stream`; the client's SDK waits for events.
            ApiError::bad_gateway("the route's backend answered a streamed request without a stream")
                .into_response()
        } else {
            let answer: Value = serde_json::from_slice(&answer)
                .map_err(|e| ApiError::bad_gateway(format!("the route's answer is not JSON: {e}")))?;
            let object = response_object(&mut head, &answer, logprobs, forced)?;
            if let Some(save) = save {
                save.keep(&head.id, &object);
            }
            Json(object).into_response()
        }
    };
    copy_router_headers(&parts.headers, response.headers_mut());
    Ok(response)
}

/// `x-wick-backend`, `x-wick-escalation`, `x-wick-failover`: who answered and why, as chat's
/// routed answers say it.
fn copy_router_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in [
        router::BACKEND_HEADER,
        router::ESCALATION_HEADER,
        router::FAILOVER_HEADER,
    ] {
        if let Some(v) = from.get(&name) {
            to.insert(name, v.clone());
        }
    }
}

/// A chat completion (`choices[0]`) as the response object: its text and calls as output
/// items, `length` as `incomplete`, its usage in Responses' shape, `model` the one that
/// answered.
pub fn response_object(
    head: &mut ResponseHead,
    answer: &Value,
    logprobs: bool,
    forced: bool,
) -> Result<Value, ApiError> {
    let choice = answer
        .pointer("/choices/0")
        .ok_or_else(|| ApiError::bad_gateway("the route's answer has no choices"))?;
    if let Some(model) = answer.get("model").and_then(Value::as_str) {
        head.set_model(model);
    }
    let text = choice
        .pointer("/message/content")
        .and_then(Value::as_str)
        .map(str::to_string);
    let field = |call: &Value, path: &str| {
        call.pointer(path)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let calls = choice
        .pointer("/message/tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            (
                field(c, "/id"),
                field(c, "/function/name"),
                field(c, "/function/arguments"),
            )
        })
        .collect();
    let status = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => Status::Incomplete,
        _ => Status::Completed,
    };
    let token_logprobs: Vec<Value> = match choice.pointer("/logprobs/content") {
        Some(Value::Array(entries)) if logprobs => entries.clone(),
        _ => Vec::new(),
    };
    let output = output_items(text, &token_logprobs, calls, forced, status);
    let usage = answer.get("usage").filter(|u| u.is_object()).map(usage_from_chat);
    Ok(head.object(status, output, usage, Some(unix_now())))
}

/// A refusal from the router or a tier, in OpenAI's shape whatever the backend sent, its
/// `param` named as the Responses request names it.
fn tier_error(status: StatusCode, answer: &[u8]) -> Response {
    let parsed: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
    let error = parsed.get("error").filter(|e| e.is_object());
    let text = |key: &str| error.and_then(|e| e.get(key)).and_then(Value::as_str);
    let message = text("message").map_or_else(
        || {
            let shown: String = String::from_utf8_lossy(answer).chars().take(500).collect();
            format!("the route's backend answered {status}: {shown}")
        },
        str::to_string,
    );
    let default_kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    let body = json!({"error": {
        "message": message,
        "type": text("type").unwrap_or(default_kind),
        "param": text("param").map(responses_param),
        "code": error.and_then(|e| e.get("code")).cloned().unwrap_or(Value::Null),
    }});
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn head() -> ResponseHead {
        let req = ResponsesRequest::parse(&Bytes::from(r#"{"model": "auto", "input": "hi"}"#)).unwrap();
        ResponseHead::new(&req, "auto", 1)
    }

    #[test]
    fn a_chat_answer_becomes_the_response_of_the_model_that_answered() {
        let answer = json!({"model": "large", "choices": [{"index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": "Blue is",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "logprobs": {"content": [{"token": "Blue", "logprob": -0.5, "bytes": [66], "top_logprobs": []}]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 3}}});
        let mut head = head();
        let object = response_object(&mut head, &answer, true, false).unwrap();
        assert_eq!(object["model"], "large");
        assert_eq!(object["status"], "incomplete");
        assert_eq!(object["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(object["output"][0]["content"][0]["text"], "Blue is");
        assert_eq!(object["output"][0]["status"], "incomplete");
        assert_eq!(object["output"][0]["content"][0]["logprobs"][0]["token"], "Blue");
        assert_eq!(object["output"][1]["type"], "function_call");
        assert_eq!(object["output"][1]["call_id"], "call_1");
        assert_eq!(
            object["usage"],
            json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 0},
                "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 9})
        );
        // Logprobs the client did not ask for are not passed on.
        let object = response_object(&mut head, &answer, false, false).unwrap();
        assert_eq!(object["output"][0]["content"][0]["logprobs"], json!([]));
        let e = response_object(&mut head, &json!({"choices": []}), false, false).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    }

    async fn error_body(status: StatusCode, answer: &str) -> Value {
        let response = tier_error(status, answer.as_bytes());
        assert_eq!(response.status(), status);
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_tiers_error_keeps_openais_shape_with_the_responses_param() {
        let e = error_body(
            StatusCode::BAD_REQUEST,
            r#"{"error": {"message": "too long", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}"#,
        )
        .await;
        assert_eq!(
            e,
            json!({"error": {"message": "too long", "type": "invalid_request_error", "param": "input", "code": "context_length_exceeded"}})
        );
        // Whatever a remote sends, the client gets OpenAI's fields.
        let e = error_body(StatusCode::UNPROCESSABLE_ENTITY, "<html>no</html>").await;
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("422") && m.contains("<html>no</html>")));
        assert!(e["error"]["param"].is_null() && e["error"]["code"].is_null());
        let e = error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error": {"message": "no tier"}}"#,
        )
        .await;
        assert_eq!(e["error"]["type"], "server_error");
    }
}
