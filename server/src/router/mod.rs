//! The router (issue #7): a route is a model name clients ask for (`auto`) that maps to ordered
//! tiers, cheapest first. A request to a route goes to the first tier whose circuit breaker is
//! closed; a failure (unreachable, timeout, 429/5xx, saturated) moves it to the next tier
//! (failover, `max_retries` at most); a complete answer from a tier that is not the last is
//! checked against the route's policy and passed up when it falls short (cascade: `length`, an
//! invalid tool call, low logprobs, an abstain pattern; a prompt too long for the tier's
//! context). The response says who answered: its `model` is the backend's, and headers
//! `x-wick-backend`, `x-wick-escalation` and `x-wick-failover` say why.
//!
//! Streaming: a cheap tier's stream is held back for its first `stream_hold_tokens` tokens
//! (`hold.rs`) and judged like a whole answer; then it is committed (passed through as it
//! arrives) or dropped for the next tier. Every stream goes through a `tap.rs` tap that prices
//! its usage chunk (asked for by the router) and removes what the client did not ask for. See
//! docs/router.md.

pub mod backend;
pub mod breaker;
pub mod capability;
pub mod continuation;
pub mod hold;
mod metrics;
pub mod policy;
pub mod score;
mod setup;
pub mod tap;
mod trail;

pub use setup::RouterConfigError;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::Value;
use wick_config::{RoutePolicy, VerifyMode};

use crate::api::errors::ApiError;
use crate::api::local_model::LocalModels;
use crate::api::service::Endpoint;
use backend::{Backend, BackendFailure, MAX_ANSWER_BYTES};
use breaker::CircuitBreaker;
use metrics::RouterMetrics;
use policy::Escalation;
use tap::StreamTap;
use trail::Trail;

pub const BACKEND_HEADER: HeaderName = HeaderName::from_static("x-wick-backend");
pub const ESCALATION_HEADER: HeaderName = HeaderName::from_static("x-wick-escalation");
pub const FAILOVER_HEADER: HeaderName = HeaderName::from_static("x-wick-failover");
/// The accepted share of a speculating backend's proposals (`accepted=41/52`).
pub const DRAFT_HEADER: HeaderName = HeaderName::from_static(crate::api::sse::DRAFT_HEADER);
/// A request header naming the tier to use (also `metadata.wick_route`).
pub const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-wick-route");

/// How long a dropped stream that had finished may take to send its usage chunk and `[DONE]`.
const REST_OF_STREAM: Duration = Duration::from_secs(2);

pub struct Route {
    pub name: String,
    pub tiers: Vec<Tier>,
    pub policy: RoutePolicy,
}

/// A backend as one route's tier: the breaker is the route's (its policy sets the thresholds).
pub struct Tier {
    pub backend: Arc<Backend>,
    pub breaker: CircuitBreaker,
}

pub struct RouterState {
    pub routes: HashMap<String, Route>,
    /// Every backend the routes name, by id.
    pub backends: Vec<Arc<Backend>>,
    /// Remote backends as clients may also ask for them directly (by their `served_name` or
    /// id): a one-tier route each, so a request is proxied with the tier's breaker and retries
    /// but no cascade.
    pub direct: HashMap<String, Route>,
    metrics: RouterMetrics,
}

/// Serves a request whose `model` is a route; `pinned` (a tier's backend id, from
/// `x-wick-route` or `metadata.wick_route`) goes to that tier first, without cascading (the
/// other tiers remain for failover).
pub async fn dispatch(
    router: &RouterState,
    local: &LocalModels,
    route: &Route,
    endpoint: Endpoint,
    mut body: Value,
    pinned: Option<&str>,
) -> Response {
    // Lossless verification: the fallback answers, its engine drafting with the cheap tier
    // (speculative decoding), so nothing is judged; the cheap tier remains for failover.
    let lossless = route.policy.verify == Some(VerifyMode::Lossless);
    let fallback = route.tiers.last().map(|t| t.backend.id.as_str());
    let pinned = pinned.or(fallback.filter(|_| lossless));
    let order: Vec<&Tier> = match pinned {
        None => route.tiers.iter().collect(),
        Some(id) => {
            let Some(first) = route.tiers.iter().find(|t| t.backend.id == id) else {
                let ids: Vec<&str> = route.tiers.iter().map(|t| t.backend.id.as_str()).collect();
                return ApiError::invalid(
                    ROUTE_HEADER.as_str(),
                    format!(
                        "route `{}` has no tier `{id}`; its tiers: {}",
                        route.name,
                        ids.join(", ")
                    ),
                )
                .into_response();
            };
            std::iter::once(first)
                .chain(route.tiers.iter().filter(|t| t.backend.id != id))
                .collect()
        }
    };
    // `metadata` is OpenAI's free-form map; the router's key is not the backend's business.
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("wick_route");
    }
    let metrics = &router.metrics;
    let mut trail = Trail::default();
    // Pre-routing: tiers whose model lacks what the request needs are passed over.
    let needs = capability::required(endpoint, &body);
    let mut capable = Vec::with_capacity(order.len());
    let mut first_missing = None;
    for tier in order {
        match tier.backend.lacks(&needs) {
            None => capable.push(tier),
            Some(missing) => {
                let reason = format!("lacks_{}", missing.as_str());
                trail.escalations.push(format!("{}:{reason}", tier.backend.id));
                metrics
                    .escalations
                    .with_label_values(&[&route.name, &tier.backend.id, &reason])
                    .inc();
                first_missing.get_or_insert(missing);
            }
        }
    }
    if let (true, Some(missing)) = (capable.is_empty(), first_missing) {
        return ApiError::invalid(
            capability::param(missing),
            format!(
                "no tier of route `{}` supports {} (the request needs it)",
                route.name,
                missing.as_str()
            ),
        )
        .into_response();
    }
    let order = capable;
    let scoring = policy::scores(&route.policy);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let client_logprobs = asks_logprobs(endpoint, &body);
    // Streams are priced from their usage chunk, which the router asks for and removes again
    // if the client did not.
    let client_usage = tap::asks_usage(&body);
    if stream {
        tap::ask_usage(&mut body);
    }
    let tools: Option<Vec<Value>> = body.get("tools").and_then(Value::as_array).cloned();
    // The best answer so far: a cheap tier's, kept in case every tier above it fails.
    let mut kept: Option<(Arc<Backend>, StatusCode, Value)> = None;
    // The same for a stream that ended within the hold: its events, to replay.
    let mut kept_stream: Option<(Arc<Backend>, Vec<hold::SseEvent>)> = None;
    let mut retries = 0;
    let last = order.len().saturating_sub(1);
    for (
        i,
        Tier {
            backend: tier,
            breaker,
        },
    ) in order.into_iter().enumerate()
    {
        if !breaker.allow() {
            metrics.failed_over(&mut trail, route, &tier.id, "breaker_open");
            continue;
        }
        let cascade = i < last && pinned.is_none();
        let mut request = body.clone();
        request["model"] = Value::String(tier.model.clone());
        // The router asks for logprobs to judge the answer (of a tier that gives them); the
        // client did not.
        let strip = cascade
            && policy::needs_logprobs(&route.policy)
            && !client_logprobs
            && tier.lacks(&[wick_config::Capability::Logprobs]).is_none();
        if strip {
            match endpoint {
                Endpoint::Chat => request["logprobs"] = Value::Bool(true),
                Endpoint::Completions => request["logprobs"] = Value::from(0),
            }
        }
        let bytes = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
        let failed = |trail: &mut Trail, f: &BackendFailure| {
            tracing::warn!(route = %route.name, backend = %tier.id, "failover: {f}");
            metrics.failed_over(trail, route, &tier.id, f.reason());
        };
        let (sent, continued_usage) =
            continuation::send(local, route, tier, endpoint, &body, bytes, &mut trail).await;
        let reply = match sent {
            Ok(r) => r,
            Err(f) => {
                breaker.record_failure();
                failed(&mut trail, &f);
                retries += 1;
                if retries > route.policy.max_retries {
                    break;
                }
                continue;
            }
        };
        if stream && reply.status.is_success() {
            // Score mode holds the whole answer: the fallback scores all of it.
            let hold_tokens = match (cascade, scoring) {
                (false, _) => 0,
                (true, true) => usize::MAX,
                (true, false) => route.policy.stream_hold_tokens,
            };
            let tap = || StreamTap::new(strip, !client_usage, metrics.meter(route, Some(tier), true));
            if hold_tokens == 0 {
                // Committed at once: the stream goes through as it comes.
                breaker.record_success();
                let upstream = reply.body.into_data_stream();
                let body = hold::committed_body(Vec::new(), hold::SseSplitter::default(), upstream, tap());
                return stream_response(
                    metrics,
                    route,
                    tier,
                    &trail,
                    reply.status,
                    reply.content_type,
                    body,
                );
            }
            let mut upstream = reply.body.into_data_stream();
            let mut splitter = hold::SseSplitter::default();
            let mut held = Vec::new();
            let mut answer = hold::HeldAnswer::default();
            let mut broken = None;
            while answer.tokens < hold_tokens && !answer.finished {
                match upstream.next().await {
                    Some(Ok(bytes)) => {
                        for event in splitter.push(&bytes) {
                            if let Some(data) = &event.data {
                                answer.add(endpoint, data);
                            }
                            held.push(event);
                        }
                    }
                    Some(Err(e)) => {
                        broken = Some(e.to_string());
                        break;
                    }
                    None => break,
                }
            }
            if let Some(e) = broken {
                breaker.record_failure();
                failed(&mut trail, &BackendFailure::Unreachable(e));
                continue;
            }
            breaker.record_success();
            let whole = answer.as_response(endpoint);
            let verdict = match policy::escalation(&route.policy, endpoint, &whole, tools.as_deref()) {
                None if scoring => {
                    score::verify(metrics, route, local, endpoint, &body, &whole, &mut trail).await
                }
                verdict => verdict,
            };
            match verdict {
                Some(reason) => {
                    // Dropping `upstream` closes the cheap tier's request.
                    trail.escalations.push(format!("{}:{}", tier.id, reason.as_str()));
                    metrics
                        .escalations
                        .with_label_values(&[&route.name, &tier.id, reason.as_str()])
                        .inc();
                    // The attempt is priced if its usage chunk comes: it does for a stream that
                    // ended within the hold (what is left of it is read for it); one cut short
                    // ends without it and is not priced.
                    if answer.finished {
                        hold::read_rest(&mut held, &mut splitter, &mut upstream, REST_OF_STREAM).await;
                    }
                    let mut attempt = StreamTap::new(false, false, metrics.meter(route, Some(tier), false));
                    for e in &held {
                        let _ = attempt.pass(e);
                    }
                    if !attempt.priced() {
                        tracing::debug!(route = %route.name, backend = %tier.id, "dropped stream not priced: no usage chunk");
                    }
                    if answer.finished {
                        kept_stream = Some((tier.clone(), held));
                    }
                    continue;
                }
                None => {
                    let body = hold::committed_body(held, splitter, upstream, tap());
                    return stream_response(
                        metrics,
                        route,
                        tier,
                        &trail,
                        reply.status,
                        reply.content_type,
                        body,
                    );
                }
            }
        }
        let status = reply.status;
        let answer = match reply.bytes(MAX_ANSWER_BYTES).await {
            Ok(b) => b,
            Err(f) => {
                breaker.record_failure();
                failed(&mut trail, &f);
                continue;
            }
        };
        // The backend answered: its breaker closes even if the request was refused.
        breaker.record_success();
        let Ok(mut json) = serde_json::from_slice::<Value>(&answer) else {
            let f = BackendFailure::Unreachable("the answer is not JSON".into());
            failed(&mut trail, &f);
            continue;
        };
        // What the tier did: a continuation's own usage (the kept tokens were read, not written).
        let usage = continued_usage.as_ref().or(json.get("usage"));
        metrics
            .cost
            .with_label_values(&[&route.name, &tier.id])
            .inc_by(tier.cost(usage));
        metrics.drafted(route, tier, usage);
        metrics.fallback_answered(route, tier, usage);
        if metrics::is_fallback(route, tier) {
            trail.fallback.answered(usage);
        }
        let escalation = if !status.is_success() {
            // The request's own fault: the same for every tier, except a context too small.
            let code = json.pointer("/error/code").and_then(Value::as_str);
            if code == Some("context_length_exceeded") && i < last {
                Some(Escalation::Context)
            } else {
                return finish(metrics, route, tier, &trail, status, json);
            }
        } else if cascade {
            match policy::escalation(&route.policy, endpoint, &json, tools.as_deref()) {
                None if scoring => {
                    score::verify(metrics, route, local, endpoint, &body, &json, &mut trail).await
                }
                verdict => verdict,
            }
        } else {
            None
        };
        match escalation {
            Some(reason) => {
                trail.escalations.push(format!("{}:{}", tier.id, reason.as_str()));
                metrics
                    .escalations
                    .with_label_values(&[&route.name, &tier.id, reason.as_str()])
                    .inc();
                if status.is_success() {
                    if !client_logprobs {
                        strip_logprobs(&mut json);
                    }
                    kept = Some((tier.clone(), status, json));
                }
            }
            None => {
                if !client_logprobs {
                    strip_logprobs(&mut json);
                }
                return finish(metrics, route, tier, &trail, status, json);
            }
        }
    }
    if let Some((tier, held)) = kept_stream {
        // A held stream is a cascade tier's (logprobs asked for if the policy reads them),
        // already charged on its tier when it was dropped: only the fallback estimate is added.
        let strip = policy::needs_logprobs(&route.policy) && !client_logprobs;
        let mut tap = StreamTap::new(strip, !client_usage, metrics.meter(route, None, true));
        let body: Vec<u8> = held
            .iter()
            .filter_map(|e| tap.pass(e))
            .flat_map(|b| b.to_vec())
            .collect();
        let ct = HeaderValue::from_static("text/event-stream");
        return stream_response(
            metrics,
            route,
            &tier,
            &trail,
            StatusCode::OK,
            Some(ct),
            Body::from(body),
        );
    }
    match kept {
        // Every tier above it failed: the escalated answer is better than none.
        Some((tier, status, json)) => finish(metrics, route, &tier, &trail, status, json),
        None => {
            let mut response = ApiError::unavailable(format!(
                "route `{}`: no tier could answer ({})",
                route.name,
                trail.failovers.join(", ")
            ))
            .into_response();
            trail.headers("none", false, &mut response);
            response
        }
    }
}

fn stream_response(
    metrics: &RouterMetrics,
    route: &Route,
    tier: &Backend,
    trail: &Trail,
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Body,
) -> Response {
    metrics.requests.with_label_values(&[&route.name, &tier.id]).inc();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    trail.headers(&tier.id, metrics::is_fallback(route, tier), &mut response);
    response
}

fn finish(
    metrics: &RouterMetrics,
    route: &Route,
    tier: &Backend,
    trail: &Trail,
    status: StatusCode,
    json: Value,
) -> Response {
    metrics.requests.with_label_values(&[&route.name, &tier.id]).inc();
    if let Some(fallback) = route.tiers.last().filter(|_| status.is_success()) {
        // The same prompt and answer lengths, priced on the fallback.
        metrics
            .fallback_cost
            .with_label_values(&[&route.name])
            .inc_by(fallback.backend.cost(json.get("usage")));
    }
    let draft = draft_share(&json);
    let mut response = Response::new(Body::from(serde_json::to_vec(&json).unwrap_or_default()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(v) = draft.and_then(|d| HeaderValue::from_str(&d).ok()) {
        headers.insert(DRAFT_HEADER, v);
    }
    trail.headers(&tier.id, false, &mut response);
    response
}

/// `x-wick-draft`'s value (`accepted=41/52`) from an answer's prediction-token counts: a
/// speculating backend's, local or remote.
fn draft_share(json: &Value) -> Option<String> {
    let (accepted, rejected) = metrics::prediction_counts(json.get("usage"))?;
    Some(crate::api::sse::draft_share(accepted, accepted + rejected))
}

fn asks_logprobs(endpoint: Endpoint, body: &Value) -> bool {
    match endpoint {
        Endpoint::Chat => body.get("logprobs").and_then(Value::as_bool).unwrap_or(false),
        Endpoint::Completions => body.get("logprobs").is_some_and(|l| !l.is_null()),
    }
}

/// Logprobs the router asked for itself are not the client's.
/// (A whole answer or one stream chunk; choices without the key are left as they are.)
fn strip_logprobs(json: &mut Value) {
    if let Some(choices) = json.get_mut("choices").and_then(Value::as_array_mut) {
        for c in choices {
            if let Some(obj) = c.as_object_mut().filter(|o| o.contains_key("logprobs")) {
                obj.insert("logprobs".into(), Value::Null);
            }
        }
    }
}
