//! Prometheus metrics (`GET /metrics`, text format, the `prometheus` crate), named as vLLM names
//! them (`vllm:*`, labelled `model_name`) so existing vLLM dashboards and autoscaling rules work
//! unchanged. Engine gauges and counters are read from `Engine::stats()` at scrape time; request
//! latencies are observed as events stream (`RequestTimer`); HTTP requests by a middleware.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use wick_engine::engine::EngineStats;

const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// The process's metrics: the registry `/metrics` renders, HTTP requests, and one
/// [`ModelMetrics`] per local model (each labelled with its `model_name`).
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
}

/// One local model's engine and request metrics, labelled `model_name`.
pub struct ModelMetrics {
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: Gauge,
    kv_blocks_total: IntGauge,
    kv_blocks_used: IntGauge,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    preemptions: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    spec_draft_tokens: IntCounter,
    spec_accepted_tokens: IntCounter,
    ttft: HistogramVec,
    itl: HistogramVec,
    e2e: HistogramVec,
    queue_time: HistogramVec,
    finished: IntCounterVec,
    model: String,
    /// The engine's cumulative counters at the last scrape (the prometheus counters advance by
    /// the difference, so they stay monotonic).
    last: Mutex<EngineStats>,
}

/// Registers metrics into one registry, each labelled `model_name = model`.
struct Registrar<'a> {
    registry: &'a Registry,
    model: &'a str,
}

impl Registrar<'_> {
    fn opts(&self, name: &str, help: &str) -> Opts {
        Opts::new(name, help).const_label("model_name", self.model)
    }

    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> prometheus::Result<C> {
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.register(IntGauge::with_opts(self.opts(name, help))?)
    }

    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.register(IntCounter::with_opts(self.opts(name, help))?)
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        vars: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts {
            common_opts: self.opts(name, help),
            buckets: buckets.to_vec(),
        };
        self.register(HistogramVec::new(opts, vars)?)
    }
}

impl Metrics {
    /// Where other parts (the router) register their metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The process's metrics; HTTP metrics carry the served (first) model's `model_name`, as
    /// in a one-model process.
    pub fn new(model: &str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let r = Registrar {
            registry: &registry,
            model,
        };
        let http_requests = r.register(IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["handler", "status"],
        )?)?;
        let http_duration = r.histogram(
            "http_request_duration_seconds",
            "Time to the response head (for streams: to the start of the stream)",
            LATENCY_BUCKETS,
            &["handler"],
        )?;
        Ok(Self {
            http_requests,
            http_duration,
            registry,
        })
    }

    /// Registers the metrics of one local model (vLLM's names, labelled `model_name`).
    pub fn add_model(&self, model: &str) -> prometheus::Result<Arc<ModelMetrics>> {
        let r = Registrar {
            registry: &self.registry,
            model,
        };
        Ok(Arc::new(ModelMetrics {
            running: r.gauge("vllm:num_requests_running", "Sequences holding KV blocks")?,
            waiting: r.gauge("vllm:num_requests_waiting", "Sequences waiting for admission")?,
            kv_usage: r.register(Gauge::with_opts(
                r.opts("vllm:kv_cache_usage_perc", "KV cache usage (1 = all blocks used)"),
            )?)?,
            kv_blocks_total: r.gauge("wick:kv_cache_blocks_total", "KV cache blocks")?,
            kv_blocks_used: r.gauge(
                "wick:kv_cache_blocks_used",
                "KV cache blocks referenced by sequences",
            )?,
            prefix_queries: r.counter(
                "vllm:prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache",
            )?,
            prefix_hits: r.counter(
                "vllm:prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache",
            )?,
            preemptions: r.counter(
                "vllm:num_preemptions_total",
                "Sequences preempted (recomputed later)",
            )?,
            prompt_tokens: r.counter("vllm:prompt_tokens_total", "Prompt tokens of admitted requests")?,
            generation_tokens: r.counter("vllm:generation_tokens_total", "Generated tokens")?,
            // 0 for a model that does not speculate (`draft` or `speculative` unset).
            spec_draft_tokens: r.counter(
                "vllm:spec_decode_num_draft_tokens_total",
                "Speculative decoding: tokens proposed and verified",
            )?,
            spec_accepted_tokens: r.counter(
                "vllm:spec_decode_num_accepted_tokens_total",
                "Speculative decoding: proposed tokens the model accepted",
            )?,
            ttft: r.histogram(
                "vllm:time_to_first_token_seconds",
                "Time to the first token",
                LATENCY_BUCKETS,
                &[],
            )?,
            itl: r.histogram(
                "vllm:time_per_output_token_seconds",
                "Time between consecutive tokens of a choice",
                ITL_BUCKETS,
                &[],
            )?,
            e2e: r.histogram(
                "vllm:e2e_request_latency_seconds",
                "Request latency, submission to the last token",
                LATENCY_BUCKETS,
                &[],
            )?,
            queue_time: r.histogram(
                "vllm:request_queue_time_seconds",
                "Time a request waited in the queue before it was first scheduled",
                LATENCY_BUCKETS,
                &[],
            )?,
            finished: r.register(IntCounterVec::new(
                r.opts("vllm:request_success_total", "Finished choices by finish reason"),
                &["finished_reason"],
            )?)?,
            model: model.to_string(),
            last: Mutex::new(EngineStats::default()),
        }))
    }

    /// The text exposition, after each model's metrics took its engine's figures.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl ModelMetrics {
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Takes the engine's figures as of now (at scrape time).
    pub fn observe(&self, stats: &EngineStats) {
        self.running.set(stats.num_running as i64);
        self.waiting.set(stats.num_waiting as i64);
        self.kv_blocks_total.set(stats.num_blocks as i64);
        self.kv_blocks_used.set(stats.used_blocks as i64);
        self.kv_usage
            .set(stats.used_blocks as f64 / stats.num_blocks.max(1) as f64);
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
            advance(
                &self.spec_draft_tokens,
                stats.spec_draft_tokens_total,
                last.spec_draft_tokens_total,
            );
            advance(
                &self.spec_accepted_tokens,
                stats.spec_accepted_tokens_total,
                last.spec_accepted_tokens_total,
            );
            *last = stats.clone();
        }
    }
}

/// Observes one request's latencies as its events pass: TTFT on the first token, the gap
/// between a choice's consecutive tokens, end-to-end and the finish reason at the end.
pub struct RequestTimer {
    metrics: Arc<ModelMetrics>,
    start: Instant,
    first_token: bool,
    /// Last token time per choice.
    last_token: Vec<Option<Instant>>,
}

impl RequestTimer {
    pub fn new(metrics: Arc<ModelMetrics>) -> Self {
        Self {
            metrics,
            start: Instant::now(),
            first_token: false,
            last_token: Vec::new(),
        }
    }

    pub fn token(&mut self, choice: usize) {
        let now = Instant::now();
        if !self.first_token {
            self.first_token = true;
            self.metrics
                .ttft
                .with_label_values(&[] as &[&str])
                .observe((now - self.start).as_secs_f64());
        }
        if self.last_token.len() <= choice {
            self.last_token.resize(choice + 1, None);
        }
        if let Some(prev) = self.last_token[choice].replace(now) {
            self.metrics
                .itl
                .with_label_values(&[] as &[&str])
                .observe((now - prev).as_secs_f64());
        }
    }

    pub fn finished(&self, reason: &str) {
        self.metrics.finished.with_label_values(&[reason]).inc();
    }

    /// One engine request's wait before it was first scheduled (a request with several
    /// prompts is several engine requests, as in vLLM).
    pub fn queued(&self, wait: std::time::Duration) {
        self.metrics
            .queue_time
            .with_label_values(&[] as &[&str])
            .observe(wait.as_secs_f64());
    }

    pub fn done(&self) {
        self.metrics
            .e2e
            .with_label_values(&[] as &[&str])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Counts every request by its route pattern (never the raw path: unbounded label values) and
/// status, and times it.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(req).await;
    m.http_duration
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        let prefix = format!("{name}{{model_name=\"m\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn speculative_counters_follow_the_engines_totals() {
        let metrics = Metrics::new("m").unwrap();
        let model = metrics.add_model("m").unwrap();
        let (draft, accepted) = (
            "vllm:spec_decode_num_draft_tokens_total",
            "vllm:spec_decode_num_accepted_tokens_total",
        );
        // Registered before any speculation, at 0.
        let text = metrics.render();
        assert_eq!(
            (sample(&text, draft), sample(&text, accepted)),
            (Some(0.0), Some(0.0))
        );
        let mut stats = EngineStats {
            spec_draft_tokens_total: 12,
            spec_accepted_tokens_total: 5,
            ..EngineStats::default()
        };
        model.observe(&stats);
        // Scraped twice without new steps: unchanged, not counted again.
        model.observe(&stats);
        let text = metrics.render();
        assert_eq!(
            (sample(&text, draft), sample(&text, accepted)),
            (Some(12.0), Some(5.0))
        );
        stats.spec_draft_tokens_total = 20;
        stats.spec_accepted_tokens_total = 9;
        model.observe(&stats);
        let text = metrics.render();
        assert_eq!(
            (sample(&text, draft), sample(&text, accepted)),
            (Some(20.0), Some(9.0))
        );
    }
}
