//! The HTTP routes. Handlers are thin: parse (`parse_json`), validate (`validation`), render the
//! chat template, submit (`infer`), then shape OpenAI's response or SSE stream (`stream`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::errors::ApiError;
use crate::infer::{self, ChoiceOutput};
use crate::metrics::{self, RequestTimer};
use crate::model_list;
use crate::openai::*;
use crate::router::backend::Endpoint;
use crate::stream::{self, StreamKind};
use crate::tools::{self, ToolConstraint};
use crate::validation;

pub use crate::state::AppState;

/// `system_fingerprint` in responses: the build.
pub fn fingerprint() -> String {
    format!("wick-{}", env!("CARGO_PKG_VERSION"))
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn random_id(prefix: &str) -> String {
    let n: u128 = rand::rng().random();
    format!("{prefix}-{n:032x}")
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(model_list::list_models))
        .route("/v1/models/{id}", get(model_list::get_model))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    let router = Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/version", get(version))
        .route("/metrics", get(metrics::metrics_handler))
        .route_layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn(request_id));
    let router = match cors(&state.cors_allow_origins) {
        Some(layer) => router.layer(layer),
        None => router,
    };
    router.with_state(state)
}

/// CORS for browser clients: the listed origins (or any, for `*`), the API's methods, and the
/// headers the SDKs send. Preflights are answered before authentication.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([HeaderName::from_static("x-request-id")]),
    )
}

/// `Authorization: Bearer KEY` with one of the configured keys (OpenAI's 401 otherwise).
async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if state.api_keys.is_empty() {
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
            if state
                .api_keys
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

/// The JSON body as the endpoint's fields plus the shared sampling fields. Syntax errors are
/// 400s; wrong types are 400s naming the field.
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<(T, SamplingFields), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    Ok((from_value(&value)?, from_value(&value)?))
}

fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            // A missing required field: serde names it in the message.
            let field = inner.to_string();
            let param = field.split('`').nth(1).unwrap_or("").to_string();
            ApiError::invalid(param, format!("invalid request: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("invalid value for `{path}`: {inner}"))
        }
    })
}

/// A request for a route (or a remote backend by name) goes to the router; `None`: it is for a
/// local model.
async fn route_request(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    let router = state.router.as_ref()?;
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let model = value.get("model")?.as_str()?;
    let route = router.routes.get(model).or_else(|| router.direct.get(model))?;
    // An explicit choice of tier: the `x-wick-route` header, or `metadata.wick_route`.
    let pinned = headers
        .get(crate::router::ROUTE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            value
                .pointer("/metadata/wick_route")?
                .as_str()
                .map(str::to_string)
        });
    Some(crate::router::dispatch(state.clone(), route, endpoint, value, pinned.as_deref()).await)
}

/// The local model's handlers, for the router's local tier (boxed: the handlers call the
/// router, which calls this).
pub fn handle_local(
    state: Arc<AppState>,
    endpoint: Endpoint,
    body: Bytes,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
    Box::pin(async move {
        let headers = HeaderMap::new();
        let result = match endpoint {
            Endpoint::Chat => chat_completions(State(state), headers, Ok(body)).await,
            Endpoint::Completions => completions(State(state), headers, Ok(body)).await,
        };
        result.into_response()
    })
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.check_not_draining()?;
    let body = body?;
    if let Some(response) = route_request(&state, Endpoint::Chat, &headers, &body).await {
        return Ok(response);
    }
    let (req, sampling): (ChatCompletionRequest, SamplingFields) = parse_json(&body)?;
    let model = state.local_model(&req.model)?;
    validation::check_functions(req.functions.as_ref(), req.function_call.as_ref())?;
    if req.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(ApiError::invalid(
            "audio",
            "audio output is not supported by this model",
        ));
    }
    let messages = validation::chat_messages(&req.messages)?;
    let template = model
        .template
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("the model has no chat template; use /v1/completions"))?;
    let prepared = tools::prepare(template, model.tool_format, &req, messages)?;
    // The template writes BOS itself where the model wants one.
    let prompt = model.engine.tokenizer().encode(&prepared.prompt, false)?;
    let mut params =
        validation::sampling_params(&sampling, req.max_completion_tokens.or(sampling.max_tokens))?;
    validation::chat_logprobs(&mut params, req.logprobs, req.top_logprobs)?;
    let mut compiled = None;
    match prepared.constraint {
        Some(ToolConstraint::Forced(_)) if params.constraint.is_some() => {
            return Err(ApiError::invalid(
                "response_format",
                "response_format cannot be combined with a tool_choice that forces a call",
            ));
        }
        Some(ToolConstraint::Forced(spec)) => {
            // Compiled here so that a schema llguidance rejects is blamed on `tools`.
            compiled = Some(model.engine.compile_constraint(&spec, "tools")?);
            params.constraint = Some(spec);
        }
        // `auto` with response_format: the answer's format wins; calls are still parsed.
        Some(ToolConstraint::Triggered(_)) if params.constraint.is_some() => {}
        Some(ToolConstraint::Triggered(spec)) => match model.engine.compile_constraint(&spec, "tools") {
            Ok(c) => {
                compiled = Some(c);
                params.constraint = Some(spec);
            }
            // `auto` never needed a grammar to work: a schema llguidance cannot compile leaves
            // the calls unconstrained (and parsed afterwards) rather than failing the request.
            Err(e) => tracing::warn!("tool_choice auto without a grammar: {e}"),
        },
        None => {}
    }
    let tool_setup = prepared.tools.map(Arc::new);
    if tool_setup.as_ref().is_some_and(|t| !t.generic) {
        // Tool markup such as <|python_tag|> or [TOOL_CALLS] is a special token: keep it for
        // the parser (it never reaches the client as content).
        params.skip_special_tokens = false;
    }
    let n = params.n;
    let timer = RequestTimer::new(model.metrics.clone());
    let events = infer::submit_all(&model.engine, vec![prompt], &params, compiled.as_ref(), timer)?;
    let id = random_id("chatcmpl");
    if sampling.stream.unwrap_or(false) {
        let include_usage = sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let options = stream::SseOptions {
            kind: StreamKind::Chat,
            id,
            n,
            include_usage,
            logprobs: params.logprobs,
            tools: tool_setup,
        };
        return Ok(stream::sse(model, events, options));
    }
    let (choices, usage) = infer::collect(events, n, 1).await?;
    let tokenizer = model.engine.tokenizer();
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let (content, tool_calls) = match &tool_setup {
                Some(setup) => tools::message(setup, &c.text),
                None => (Some(c.text), None),
            };
            ChatChoice {
                index,
                logprobs: params
                    .logprobs
                    .then(|| stream::chat_logprobs(tokenizer, &c.tokens, &c.logprobs)),
                finish_reason: if tool_calls.is_some() {
                    Some("tool_calls")
                } else {
                    c.finish.map(|f| f.as_str())
                },
                message: ChatMessageOut {
                    role: "assistant",
                    content,
                    tool_calls,
                },
            }
        })
        .collect();
    Ok(Json(ChatCompletion {
        id,
        object: "chat.completion",
        created: unix_now(),
        model: model.id.clone(),
        system_fingerprint: fingerprint(),
        choices,
        usage: stream::usage(usage),
    })
    .into_response())
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.check_not_draining()?;
    let body = body?;
    if let Some(response) = route_request(&state, Endpoint::Completions, &headers, &body).await {
        return Ok(response);
    }
    let (req, sampling): (CompletionRequest, SamplingFields) = parse_json(&body)?;
    let model = state.local_model(&req.model)?;
    if let Some(best_of) = req.best_of.filter(|&b| b > 1) {
        // Generating best_of candidates to return the likeliest n is not implemented: refused
        // rather than answered as if it were.
        return Err(ApiError::invalid(
            "best_of",
            format!("best_of {best_of} is not supported (only 1)"),
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "suffix is not supported by this model",
        ));
    }
    let tokenizer = model.engine.tokenizer().clone();
    let prompts = validation::completion_prompts(&req.prompt, |s| Ok(tokenizer.encode(s, true)?))?;
    // OpenAI's completions default to 16 tokens.
    let mut params = validation::sampling_params(&sampling, Some(sampling.max_tokens.unwrap_or(16)))?;
    if let Some(k) = req.logprobs {
        if k > validation::MAX_COMPLETION_LOGPROBS {
            return Err(ApiError::invalid(
                "logprobs",
                format!(
                    "logprobs must be between 0 and {}, got {k}",
                    validation::MAX_COMPLETION_LOGPROBS
                ),
            ));
        }
        params.logprobs = true;
        params.top_logprobs = k as usize;
    }
    let echo = req.echo.unwrap_or(false);
    if echo && sampling.stream.unwrap_or(false) {
        return Err(ApiError::invalid("echo", "echo is not supported with stream"));
    }
    // Echo with logprobs also gives the prompt's token logprobs (lm-eval-harness' loglikelihood).
    let echoed_ids = (echo && params.logprobs).then(|| prompts.clone());
    if echoed_ids.is_some() {
        params.prompt_logprobs = Some(params.top_logprobs);
    }
    let n = params.n;
    let num_prompts = prompts.len();
    let echoed: Vec<String> = if echo {
        prompts
            .iter()
            .map(|p| tokenizer.decode(p, false))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let timer = RequestTimer::new(model.metrics.clone());
    let events = infer::submit_all(&model.engine, prompts, &params, None, timer)?;
    let id = random_id("cmpl");
    if sampling.stream.unwrap_or(false) {
        let include_usage = sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let options = stream::SseOptions {
            kind: StreamKind::Completion,
            id,
            n,
            include_usage,
            logprobs: params.logprobs,
            tools: None,
        };
        return Ok(stream::sse(model, events, options));
    }
    let (choices, usage) = infer::collect(events, n, num_prompts).await?;
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(index, c): (usize, ChoiceOutput)| {
            let prefix = echoed.get(index / n).cloned().unwrap_or_default();
            let logprobs = params.logprobs.then(|| {
                let generated = stream::completion_logprobs(&tokenizer, &c.tokens, &c.logprobs, prefix.len());
                match (&echoed_ids, &c.prompt_logprobs) {
                    (Some(ids), Some(entries)) => {
                        let mut all = stream::prompt_logprobs(&tokenizer, &ids[index / n], entries);
                        all.append(generated);
                        all
                    }
                    _ => generated,
                }
            });
            CompletionChoice {
                index,
                logprobs,
                finish_reason: c.finish.map(|f| f.as_str()),
                text: prefix + &c.text,
            }
        })
        .collect();
    Ok(Json(Completion {
        id,
        object: "text_completion",
        created: unix_now(),
        model: model.id.clone(),
        system_fingerprint: fingerprint(),
        choices,
        usage: Some(stream::usage(usage)),
    })
    .into_response())
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "draining"})),
        )
            .into_response();
    }
    let models: Vec<&str> = state.models.iter().map(|m| m.id.as_str()).collect();
    Json(serde_json::json!({"status": "ready", "model": state.primary().id, "models": models}))
        .into_response()
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({"version": env!("CARGO_PKG_VERSION")}))
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// `x-request-id`: the client's (when it is a sane header value) or a fresh one, echoed on the
/// response and recorded on the request's log span.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| random_id("req"));
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert("x-request-id", value.clone());
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut response = tracing::Instrument::instrument(next.run(req), span).await;
    response.headers_mut().insert("x-request-id", value);
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
