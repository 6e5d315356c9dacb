//! Prometheus metrics (`GET /metrics`, text format, the `prometheus` crate). Engine gauges and
//! counters are read from `Engine::stats()` at scrape time; HTTP counters and latency histograms
//! are recorded by a middleware around every route.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use wick_engine::engine::EngineStats;

use crate::server::AppState;

pub struct Metrics {
    registry: Registry,
    running: IntGauge,
    waiting: IntGauge,
    kv_blocks_total: IntGauge,
    kv_blocks_used: IntGauge,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    preemptions: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    /// The engine's cumulative counters at the last scrape (the prometheus counters advance by
    /// the difference, so they stay monotonic).
    last: Mutex<EngineStats>,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("wick_http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )?;
        r.register(Box::new(http_requests.clone()))?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "wick_http_request_duration_seconds",
                "Time to the response head (for streams: to the first byte of the stream)",
            )
            .buckets(vec![
                0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["route"],
        )?;
        r.register(Box::new(http_duration.clone()))?;
        Ok(Self {
            running: gauge(&r, "wick_num_requests_running", "Sequences holding KV blocks")?,
            waiting: gauge(&r, "wick_num_requests_waiting", "Sequences waiting for admission")?,
            kv_blocks_total: gauge(&r, "wick_kv_cache_blocks_total", "KV cache blocks")?,
            kv_blocks_used: gauge(
                &r,
                "wick_kv_cache_blocks_used",
                "KV cache blocks referenced by sequences",
            )?,
            prefix_queries: counter(
                &r,
                "wick_prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache",
            )?,
            prefix_hits: counter(
                &r,
                "wick_prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache",
            )?,
            preemptions: counter(
                &r,
                "wick_num_preemptions_total",
                "Sequences preempted (recomputed later)",
            )?,
            prompt_tokens: counter(
                &r,
                "wick_prompt_tokens_total",
                "Prompt tokens of admitted requests",
            )?,
            generation_tokens: counter(&r, "wick_generation_tokens_total", "Generated tokens")?,
            http_requests,
            http_duration,
            last: Mutex::new(EngineStats::default()),
            registry: r,
        })
    }

    /// The text exposition, with the engine's figures as of now.
    pub fn render(&self, stats: &EngineStats) -> String {
        self.running.set(stats.num_running as i64);
        self.waiting.set(stats.num_waiting as i64);
        self.kv_blocks_total.set(stats.num_blocks as i64);
        self.kv_blocks_used.set(stats.used_blocks as i64);
        if let Ok(mut last) = self.last.lock() {
            let advance = |c: &IntCounter, now: u64, before: u64| c.inc_by(now.saturating_sub(before));
            advance(
                &self.prefix_queries,
                stats.prefix_query_tokens,
                last.prefix_query_tokens,
            );
            advance(&self.prefix_hits, stats.prefix_hit_tokens, last.prefix_hit_tokens);
            advance(&self.preemptions, stats.num_preemptions, last.num_preemptions);
            advance(
                &self.prompt_tokens,
                stats.prompt_tokens_total,
                last.prompt_tokens_total,
            );
            advance(
                &self.generation_tokens,
                stats.generation_tokens_total,
                last.generation_tokens_total,
            );
            *last = stats.clone();
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

pub async fn metrics_handler(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(&state.engine.stats());
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

/// Counts every request by its route pattern (never the raw path: unbounded label values) and
/// status, and times it.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(req).await;
    let m = &state.metrics;
    m.http_duration
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}
