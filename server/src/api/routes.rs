//! The HTTP routes. Handlers are thin: a request whose `model` is a route (or a remote backend)
//! goes to the router; one for a local model to the local model service (`service`), which the
//! router's local tier calls too. Probes (`/health`, `/ready`, `/version`) and `/metrics` answer
//! here.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::errors::ApiError;
use crate::api::model_list;
use crate::api::openai::random_id;
use crate::api::responses::routed::RouteChoice;
use crate::api::responses::{self, InputItemsQuery};
use crate::api::service::{self, Endpoint};
use crate::api::state::AppState;
use crate::ops::{auth, metrics};

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(create_response))
        .route("/v1/responses/{id}", get(get_response).delete(delete_response))
        .route("/v1/responses/{id}/input_items", get(list_input_items))
        .route("/v1/models", get(model_list::list_models))
        .route("/v1/models/{id}", get(model_list::get_model));
    let router = Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/version", get(version))
        .route("/metrics", get(render_metrics))
        .route_layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.max_body_bytes,
            refuse_announced_large_bodies,
        ))
        // Around the routing, so that `/v1/*` is authenticated before its route or method is
        // known (ops/auth.rs).
        .layer(middleware::from_fn_with_state(
            state.api_keys.clone(),
            auth::require_api_key,
        ))
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
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([HeaderName::from_static("x-request-id")]),
    )
}

/// The route a request's `model` names (a route or a remote backend by name), with the tier
/// the client pinned, and the body as JSON; `None`: the request is for a local model.
fn find_route<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<(RouteChoice<'a>, serde_json::Value)> {
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
    Some((
        RouteChoice {
            router,
            route,
            pinned,
        },
        value,
    ))
}

/// A request for a route (or a remote backend by name) goes to the router; `None`: it is for a
/// local model.
async fn route_request(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    let (choice, value) = find_route(state, headers, body)?;
    let pinned = choice.pinned.as_deref();
    Some(
        crate::router::dispatch(
            choice.router,
            &state.models,
            choice.route,
            endpoint,
            value,
            pinned,
        )
        .await,
    )
}

/// Where a request goes: a route (or a remote backend by name) to the router, else the local
/// model service.
async fn serve_request(
    state: Arc<AppState>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.check_not_draining()?;
    let body = body?;
    if let Some(response) = route_request(&state, endpoint, &headers, &body).await {
        return Ok(response);
    }
    match endpoint {
        Endpoint::Chat => service::chat(&state.models, &body).await,
        Endpoint::Completions => service::completions(&state.models, &body).await,
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    serve_request(state, Endpoint::Chat, headers, body).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    serve_request(state, Endpoint::Completions, headers, body).await
}

/// `POST /v1/responses`: a route (or a remote backend) through the router as a chat request,
/// a local model through the chat planner.
async fn create_response(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.check_not_draining()?;
    let body = body?;
    if let Some((choice, _)) = find_route(&state, &headers, &body) {
        return responses::routed::create(choice, &state.models, &state.responses, &body).await;
    }
    responses::create(&state.models, &state.responses, &body).await
}

async fn get_response(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    responses::retrieve(&state.responses, &id)
}

async fn delete_response(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    responses::delete(&state.responses, &id)
}

async fn list_input_items(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    query: Result<Query<InputItemsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    responses::input_items(&state.responses, &id, &query)
}

/// `GET /metrics`: engine gauges and breaker states are read now, then the registry renders.
async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(router) = &state.router {
        router.observe_breakers();
    }
    for m in state.models.iter() {
        m.metrics.observe(&m.engine.stats());
    }
    let body = state.metrics.render();
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

/// `metrics.enabled = false`: `/metrics` answers 404 like any unknown route.
pub fn without_metrics(app: Router) -> Router {
    async fn hide(req: Request, next: Next) -> Response {
        if req.uri().path() == "/metrics" {
            return ApiError::not_found("no such route").into_response();
        }
        next.run(req).await
    }
    app.layer(middleware::from_fn(hide))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.drain.is_draining() {
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

/// A body whose Content-Length already exceeds the limit is refused before any of it is read.
/// `DefaultBodyLimit` alone reads up to the limit first, and it answers a client that sent
/// `Expect: 100-continue` (curl does for large bodies) with `100 Continue`, inviting the upload
/// it is about to refuse. Bodies without a length are still cut off at the limit as they stream.
async fn refuse_announced_large_bodies(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > limit as u64 => ApiError::payload_too_large().into_response(),
        _ => next.run(req).await,
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
