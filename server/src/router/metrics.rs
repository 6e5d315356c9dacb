//! The router's Prometheus metrics: requests by the backend that answered, escalations and
//! failovers by reason, breaker states, and cost (spent, and the fallback-only baseline).

use std::sync::Arc;

use prometheus::{CounterVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};

use super::backend::Backend;
use super::tap::Meter;
use super::trail::Trail;
use super::Route;

pub(super) struct RouterMetrics {
    /// What requests cost on the backends they went to (escalated attempts included).
    pub(super) cost: CounterVec,
    /// What the same answers would have cost on the route's last tier.
    pub(super) fallback_cost: CounterVec,
    pub(super) requests: IntCounterVec,
    pub(super) escalations: IntCounterVec,
    pub(super) failovers: IntCounterVec,
    pub(super) breaker: IntGaugeVec,
    /// Proposals a speculating backend verified for the route, by outcome (from usage).
    pub(super) draft_tokens: IntCounterVec,
    /// Score mode: cheap answers the fallback scored, by outcome.
    pub(super) verifications: IntCounterVec,
    /// Tokens the route's last tier read (`prefill`, scoring included) and generated (`decode`).
    pub(super) fallback_tokens: IntCounterVec,
}

impl RouterMetrics {
    pub(super) fn new(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "wick_router_requests_total",
                "Route requests by the backend that answered",
            ),
            &["route", "backend"],
        )?;
        let escalations = IntCounterVec::new(
            Opts::new(
                "wick_router_escalations_total",
                "Answers passed up to the next tier, by reason",
            ),
            &["route", "backend", "reason"],
        )?;
        let failovers = IntCounterVec::new(
            Opts::new(
                "wick_router_failovers_total",
                "Tiers skipped because they failed, by reason",
            ),
            &["route", "backend", "reason"],
        )?;
        let breaker = IntGaugeVec::new(
            Opts::new(
                "wick_router_breaker_state",
                "Circuit breaker per route and backend: 0 closed, 1 open, 2 half-open",
            ),
            &["route", "backend"],
        )?;
        let cost = CounterVec::new(
            Opts::new(
                "wick_router_cost_total",
                "Spent on each backend at its configured token prices",
            ),
            &["route", "backend"],
        )?;
        let fallback_cost = CounterVec::new(
            Opts::new(
                "wick_router_fallback_cost_total",
                "What the same answers would have cost on the route's last tier; minus \
                 wick_router_cost_total: the saving",
            ),
            &["route"],
        )?;
        let draft_tokens = IntCounterVec::new(
            Opts::new(
                "wick_router_draft_tokens_total",
                "Draft tokens a speculating backend verified for the route's answers, by outcome \
                 (accepted, rejected); a lossless route's accepted share of its fallback's tokens",
            ),
            &["route", "backend", "outcome"],
        )?;
        let verifications = IntCounterVec::new(
            Opts::new(
                "wick_router_verifications_total",
                "Score mode: cheap answers the fallback scored, by outcome (accepted, rejected, \
                 unscorable: escalated unscored; unavailable: the fallback could not be asked and \
                 the cheap answer stood)",
            ),
            &["route", "outcome"],
        )?;
        let fallback_tokens = IntCounterVec::new(
            Opts::new(
                "wick_router_fallback_tokens_total",
                "Tokens the route's last tier read (phase prefill, scoring included) and generated \
                 (phase decode) for the route",
            ),
            &["route", "phase"],
        )?;
        registry.register(Box::new(verifications.clone()))?;
        registry.register(Box::new(fallback_tokens.clone()))?;
        registry.register(Box::new(draft_tokens.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        registry.register(Box::new(fallback_cost.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(escalations.clone()))?;
        registry.register(Box::new(failovers.clone()))?;
        registry.register(Box::new(breaker.clone()))?;
        Ok(Self {
            cost,
            fallback_cost,
            requests,
            escalations,
            failovers,
            breaker,
            draft_tokens,
            verifications,
            fallback_tokens,
        })
    }

    /// Records that `backend` was skipped for `reason`: on the request's trail
    /// (`x-wick-failover`) and in `wick_router_failovers_total`.
    pub(super) fn failed_over(&self, trail: &mut Trail, route: &Route, backend: &str, reason: &str) {
        trail.failovers.push(format!("{backend}:{reason}"));
        self.failovers
            .with_label_values(&[&route.name, backend, reason])
            .inc();
    }

    /// The route's counters of its last tier's prefill and decode tokens.
    pub(super) fn fallback_counters(&self, route: &Route) -> [IntCounter; 2] {
        ["prefill", "decode"].map(|phase| self.fallback_tokens.with_label_values(&[&route.name, phase]))
    }

    /// Counts an answer's usage on the route's last tier, if `tier` is that.
    pub(super) fn fallback_answered(&self, route: &Route, tier: &Backend, usage: Option<&serde_json::Value>) {
        if is_fallback(route, tier) {
            count_tokens(&self.fallback_counters(route), usage);
        }
    }

    /// The counters of `tier`'s accepted and rejected proposals for `route`.
    pub(super) fn draft_counters(&self, route: &Route, tier: &Backend) -> [IntCounter; 2] {
        ["accepted", "rejected"].map(|outcome| {
            self.draft_tokens
                .with_label_values(&[&route.name, &tier.id, outcome])
        })
    }

    /// Counts an answer's verified proposals (`usage.completion_tokens_details`), if it has any.
    pub(super) fn drafted(&self, route: &Route, tier: &Backend, usage: Option<&serde_json::Value>) {
        count_drafts(&self.draft_counters(route, tier), usage);
    }
}

/// `(accepted, rejected)` proposals of a usage's prediction-token counts, if it has them.
pub(super) fn prediction_counts(usage: Option<&serde_json::Value>) -> Option<(u64, u64)> {
    let details = usage?.get("completion_tokens_details")?;
    let count = |key: &str| details.get(key)?.as_u64();
    Some((
        count("accepted_prediction_tokens")?,
        count("rejected_prediction_tokens")?,
    ))
}

/// Whether `tier` is the route's last (its fallback; a one-tier route's only tier).
pub(super) fn is_fallback(route: &Route, tier: &Backend) -> bool {
    route.tiers.last().is_some_and(|t| t.backend.id == tier.id)
}

/// Adds a usage's prompt and completion tokens to `counters` (in that order).
pub(super) fn count_tokens(counters: &[IntCounter; 2], usage: Option<&serde_json::Value>) {
    let count = |key: &str| usage.and_then(|u| u.get(key)).and_then(serde_json::Value::as_u64);
    counters[0].inc_by(count("prompt_tokens").unwrap_or(0));
    counters[1].inc_by(count("completion_tokens").unwrap_or(0));
}

/// Adds a usage's accepted and rejected proposals to `counters` (in that order).
pub(super) fn count_drafts(counters: &[IntCounter; 2], usage: Option<&serde_json::Value>) {
    if let Some((accepted, rejected)) = prediction_counts(usage) {
        counters[0].inc_by(accepted);
        counters[1].inc_by(rejected);
    }
}

impl RouterMetrics {
    /// Where a stream's usage is charged: on `tier`, the backend that wrote it (`None`: already
    /// charged) and, when it is the answer the client gets, on the route's last tier (the
    /// saving's baseline), as the non-streamed path does.
    pub(super) fn meter(&self, route: &Route, tier: Option<&Arc<Backend>>, answer: bool) -> Meter {
        let mut meter = Meter::default();
        if let Some(tier) = tier {
            meter.add(
                self.cost.with_label_values(&[&route.name, &tier.id]),
                tier.clone(),
            );
            meter.count_drafts(self.draft_counters(route, tier));
            if is_fallback(route, tier) {
                meter.count_fallback(self.fallback_counters(route));
            }
        }
        if let Some(fallback) = route.tiers.last().filter(|_| answer) {
            let counter = self.fallback_cost.with_label_values(&[&route.name]);
            meter.add(counter, fallback.backend.clone());
        }
        meter
    }
}
