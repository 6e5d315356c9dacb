//! Turning per-item outcomes into the per-model figures `wick route-eval` reports.
//!
//! Shares and per-backend accuracy are over the items that got an answer (errors are counted
//! apart), so a model's backend shares sum to 1. Cost is per million tokens, from `--price
//! backend=in,out`; a backend without a price costs 0 and is listed in `unpriced`.
//!
//! An item the router escalated also pays for each escalated attempt (`x-wick-escalation:
//! small:length`). Its usage is not returned, so it is **estimated**: the answer's prompt
//! tokens, and the request's `max_tokens` as completion tokens when the reason is `length`,
//! else the answer's completion tokens. "Always the fallback" prices each item's returned
//! usage at the route's last tier (for a plain model: its own backend). An escalated answer
//! returned because every later tier failed is priced once, as the answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::headers::{self, FallbackWork, NoHeader, Score};
use crate::cli::bench::Percentiles;

/// What one item's request gave.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ItemRecord {
    pub id: String,
    pub check: String,
    pub correct: bool,
    /// Who answered: `x-wick-backend`, or the body's `model` when the header is absent.
    pub backend: Option<String>,
    /// `x-wick-escalation` / `x-wick-failover` entries (`backend:reason`).
    pub escalations: Vec<String>,
    pub failovers: Vec<String>,
    pub latency_ms: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The request's `max_tokens` (for the cost of an escalated `length` attempt).
    #[serde(skip)]
    pub max_tokens: u64,
    /// `usage.completion_tokens_details.accepted_prediction_tokens` (a speculating engine's
    /// draft tokens it accepted), for the fallback's forward passes when it is asked directly.
    pub accepted_prediction_tokens: Option<u64>,
    /// `x-wick-score`: the fallback's logprobs over the cheap tier's answer (score mode).
    pub score: Option<Score>,
    /// `x-wick-fallback`: what the route's last tier did for this request.
    pub fallback: Option<FallbackWork>,
    pub answer: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendShare {
    pub backend: String,
    pub answered: usize,
    pub share: f64,
    pub correct: usize,
    pub accuracy: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cost {
    pub total: f64,
    /// The same items' tokens at the fallback's (last tier's) price.
    pub always_fallback: f64,
    /// `1 - total / always_fallback` (0 when the fallback costs nothing).
    pub saved_fraction: f64,
    pub unpriced: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub model: String,
    /// The route's tiers as `/models` lists them (empty for a plain model).
    pub tiers: Vec<String>,
    pub items: usize,
    pub errors: usize,
    pub correct: usize,
    /// Correct over all items (an error counts as wrong).
    pub accuracy: f64,
    pub backends: Vec<BackendShare>,
    /// Share of answered items the route's first tier answered (None for a plain model).
    pub cheap_share: Option<f64>,
    pub escalated: usize,
    pub failed_over: usize,
    pub latency_ms: Option<Percentiles>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Option<Cost>,
    /// What the fallback (the route's last tier, or `--fallback` asked directly) did per
    /// answered item: the share it decoded nothing for, its forward passes, its prompt and
    /// generated tokens. From `x-wick-fallback`; without it, from the usage of the model named
    /// by `--fallback`, 0 for other plain models, else None (see [`headers`]).
    pub fallback_no_decode_share: Option<f64>,
    pub fallback_forwards_per_item: Option<f64>,
    pub fallback_prefill_per_item: Option<f64>,
    pub fallback_decode_per_item: Option<f64>,
    pub records: Vec<ItemRecord>,
}

/// Per-million-token prices: backend → (input, output).
pub type Prices = HashMap<String, (f64, f64)>;

/// Parses `backend=in,out`.
pub fn parse_price(s: &str) -> Result<(String, (f64, f64)), String> {
    let err = || format!("--price {s:?}: expected BACKEND=IN,OUT (dollars per million tokens)");
    let (backend, rest) = s.split_once('=').ok_or_else(err)?;
    let (i, o) = rest.split_once(',').ok_or_else(err)?;
    let (i, o) = (i.trim().parse::<f64>(), o.trim().parse::<f64>());
    match (i, o) {
        (Ok(i), Ok(o)) if !backend.is_empty() && i >= 0.0 && o >= 0.0 => Ok((backend.to_string(), (i, o))),
        _ => Err(err()),
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl ModelReport {
    /// `fallback`: the model known to be the fallback (`--fallback`, or the calibrated route's
    /// last tier), which decides how records without `x-wick-fallback` count.
    pub fn new(
        model: &str,
        tiers: Vec<String>,
        records: Vec<ItemRecord>,
        prices: &Prices,
        fallback: Option<&str>,
    ) -> Self {
        let answered: Vec<&ItemRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let mut by_backend: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for r in &answered {
            let e = by_backend.entry(r.backend.as_deref().unwrap_or("?")).or_default();
            e.0 += 1;
            e.1 += usize::from(r.correct);
        }
        let backends: Vec<BackendShare> = by_backend
            .into_iter()
            .map(|(b, (n, c))| BackendShare {
                backend: b.to_string(),
                answered: n,
                share: ratio(n, answered.len()),
                correct: c,
                accuracy: ratio(c, n),
            })
            .collect();
        let cheap_share = tiers.first().map(|cheap| {
            backends
                .iter()
                .find(|b| &b.backend == cheap)
                .map_or(0.0, |b| b.share)
        });
        let mut latencies: Vec<f64> = answered.iter().map(|r| r.latency_ms).collect();
        let correct = records.iter().filter(|r| r.correct).count();
        let cost = (!prices.is_empty()).then(|| cost(&tiers, &answered, prices));
        let work = headers::summarize(&answered, NoHeader::for_model(model, tiers.is_empty(), fallback));
        Self {
            model: model.to_string(),
            items: records.len(),
            errors: records.len() - answered.len(),
            correct,
            accuracy: ratio(correct, records.len()),
            backends,
            cheap_share,
            escalated: answered.iter().filter(|r| !r.escalations.is_empty()).count(),
            failed_over: answered.iter().filter(|r| !r.failovers.is_empty()).count(),
            latency_ms: Percentiles::of(&mut latencies),
            prompt_tokens: answered.iter().map(|r| r.prompt_tokens).sum(),
            completion_tokens: answered.iter().map(|r| r.completion_tokens).sum(),
            cost,
            fallback_no_decode_share: work.map(|w| w.no_decode_share),
            fallback_forwards_per_item: work.map(|w| w.forwards_per_item),
            fallback_prefill_per_item: work.map(|w| w.prefill_per_item),
            fallback_decode_per_item: work.map(|w| w.decode_per_item),
            tiers,
            records,
        }
    }
}

fn cost(tiers: &[String], answered: &[&ItemRecord], prices: &Prices) -> Cost {
    let mut unpriced = BTreeSet::new();
    let mut price = |backend: &str, input: u64, output: u64| match prices.get(backend) {
        Some((i, o)) => (input as f64 * i + output as f64 * o) / 1e6,
        None => {
            unpriced.insert(backend.to_string());
            0.0
        }
    };
    let (mut total, mut always_fallback) = (0.0, 0.0);
    for r in answered {
        let backend = r.backend.as_deref().unwrap_or("?");
        total += price(backend, r.prompt_tokens, r.completion_tokens);
        for e in &r.escalations {
            let (tier, reason) = e.split_once(':').unwrap_or((e, ""));
            if tier == backend {
                // Every later tier failed and the escalated answer was returned: priced above.
                continue;
            }
            let out = if reason == "length" {
                r.max_tokens
            } else {
                r.completion_tokens
            };
            total += price(tier, r.prompt_tokens, out);
        }
        let fallback = tiers.last().map_or(backend, String::as_str);
        always_fallback += price(fallback, r.prompt_tokens, r.completion_tokens);
    }
    Cost {
        total,
        always_fallback,
        saved_fraction: if always_fallback > 0.0 {
            1.0 - total / always_fallback
        } else {
            0.0
        },
        unpriced: unpriced.into_iter().collect(),
    }
}

/// The human-readable table: one row per model. The `fb` columns are the fallback's work per
/// item (share it decoded nothing for, forward passes, prompt + generated tokens); `-` where
/// unknown.
pub fn table(reports: &[ModelReport]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<12} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>7} {:>8} {:>7} {:>11}  backends (share, accuracy)\n",
        "model",
        "items",
        "errors",
        "accuracy",
        "cheap",
        "mean ms",
        "p50 ms",
        "p90 ms",
        "tokens",
        "cost $",
        "saved",
        "fb 0-dec",
        "fb fwd",
        "fb in+out"
    ));
    for r in reports {
        let (mean, p50, p90) = r.latency_ms.map_or((0.0, 0.0, 0.0), |p| (p.mean, p.p50, p.p90));
        let cheap = r.cheap_share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0));
        let (cost, saved) = r.cost.as_ref().map_or(("-".into(), "-".into()), |c| {
            (
                format!("{:.6}", c.total),
                format!("{:.0}%", c.saved_fraction * 100.0),
            )
        });
        let no_decode = r
            .fallback_no_decode_share
            .map_or("-".into(), |s| format!("{:.0}%", s * 100.0));
        let forwards = r
            .fallback_forwards_per_item
            .map_or("-".into(), |f| format!("{f:.1}"));
        let tokens = match (r.fallback_prefill_per_item, r.fallback_decode_per_item) {
            (Some(p), Some(d)) => format!("{p:.0}+{d:.0}"),
            _ => "-".into(),
        };
        let backends: Vec<String> = r
            .backends
            .iter()
            .map(|b| format!("{} {:.0}% {:.0}%", b.backend, b.share * 100.0, b.accuracy * 100.0))
            .collect();
        out.push_str(&format!(
            "{:<12} {:>5} {:>6} {:>7.1}% {:>8} {:>8.0} {:>8.0} {:>8.0} {:>10} {:>10} {:>7} {:>8} {:>7} {:>11}  {}\n",
            r.model,
            r.items,
            r.errors,
            r.accuracy * 100.0,
            cheap,
            mean,
            p50,
            p90,
            r.prompt_tokens + r.completion_tokens,
            cost,
            saved,
            no_decode,
            forwards,
            tokens,
            backends.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(backend: &str, correct: bool, esc: &[&str], pt: u64, ct: u64) -> ItemRecord {
        ItemRecord {
            backend: Some(backend.into()),
            correct,
            escalations: esc.iter().map(|s| s.to_string()).collect(),
            prompt_tokens: pt,
            completion_tokens: ct,
            max_tokens: 16,
            latency_ms: 10.0,
            ..Default::default()
        }
    }

    #[test]
    fn shares_accuracy_and_cost_of_a_cascade() {
        let prices: Prices = [("small".into(), (1.0, 2.0)), ("large".into(), (10.0, 20.0))].into();
        let records = vec![
            rec("small", true, &[], 100, 10),
            rec("large", true, &["small:length"], 100, 10),
            rec("large", false, &["small:abstain"], 100, 10),
            ItemRecord {
                error: Some("refused".into()),
                ..Default::default()
            },
        ];
        let r = ModelReport::new(
            "auto",
            vec!["small".into(), "large".into()],
            records,
            &prices,
            None,
        );
        assert_eq!((r.items, r.errors, r.correct, r.escalated), (4, 1, 2, 2));
        assert_eq!(r.accuracy, 0.5);
        assert_eq!(r.backends.iter().map(|b| b.answered).sum::<usize>(), 3);
        assert!((r.backends.iter().map(|b| b.share).sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(r.cheap_share, Some(1.0 / 3.0));
        let large = r.backends.iter().find(|b| b.backend == "large").unwrap();
        assert_eq!((large.answered, large.correct, large.accuracy), (2, 1, 0.5));
        let c = r.cost.unwrap();
        // small: 100*1+10*2 = 120; large: 100*10+10*20 = 1200 each; escalated attempts at
        // small's price: length → 100*1 + 16*2 = 132, abstain → 120.
        let total = (120.0 + 1200.0 + 132.0 + 1200.0 + 120.0) / 1e6;
        assert!((c.total - total).abs() < 1e-12, "{}", c.total);
        assert!((c.always_fallback - 3600.0 / 1e6).abs() < 1e-12);
        assert!((c.saved_fraction - (1.0 - total / (3600.0 / 1e6))).abs() < 1e-9);
        assert!(c.unpriced.is_empty());
    }

    #[test]
    fn an_escalated_answer_kept_after_the_fallback_failed_is_priced_once() {
        let prices: Prices = [("small".into(), (1.0, 2.0)), ("large".into(), (10.0, 20.0))].into();
        let mut r = rec("small", true, &["small:abstain"], 100, 10);
        r.failovers = vec!["large:unreachable".into()];
        let m = ModelReport::new(
            "auto",
            vec!["small".into(), "large".into()],
            vec![r],
            &prices,
            None,
        );
        assert_eq!((m.escalated, m.failed_over, m.cheap_share), (1, 1, Some(1.0)));
        let c = m.cost.unwrap();
        assert!((c.total - 120.0 / 1e6).abs() < 1e-12, "{}", c.total);
        assert!((c.always_fallback - 1200.0 / 1e6).abs() < 1e-12);
    }

    #[test]
    fn a_plain_model_is_its_own_fallback_and_unpriced_backends_are_listed() {
        let r = ModelReport::new(
            "m",
            vec![],
            vec![rec("m", true, &[], 5, 5)],
            &[("x".into(), (1.0, 1.0))].into(),
            None,
        );
        assert_eq!(r.cheap_share, None);
        let c = r.cost.unwrap();
        assert_eq!((c.total, c.always_fallback, c.saved_fraction), (0.0, 0.0, 0.0));
        assert_eq!(c.unpriced, vec!["m".to_string()]);
    }

    #[test]
    fn fallback_columns_per_model() {
        let usage = |ct, accepted| ItemRecord {
            accepted_prediction_tokens: accepted,
            ..rec("large", true, &[], 40, ct)
        };
        let failed = ItemRecord {
            error: Some("timeout".into()),
            ..Default::default()
        };
        let none = Prices::new();
        let records = vec![usage(10, Some(4)), usage(0, None), failed.clone()];
        // The fallback asked directly: from usage, over the answered items only.
        let large = ModelReport::new("large", vec![], records.clone(), &none, Some("large"));
        assert_eq!(large.fallback_no_decode_share, Some(0.5));
        assert_eq!(large.fallback_forwards_per_item, Some(3.5));
        assert_eq!(large.fallback_prefill_per_item, Some(40.0));
        assert_eq!(large.fallback_decode_per_item, Some(5.0));
        // Another plain model never touched the fallback; without --fallback nothing is known.
        let small = ModelReport::new("small", vec![], records.clone(), &none, Some("large"));
        assert_eq!(small.fallback_no_decode_share, Some(1.0));
        assert_eq!(small.fallback_forwards_per_item, Some(0.0));
        let unknown = ModelReport::new("large", vec![], records, &none, None);
        assert_eq!(unknown.fallback_forwards_per_item, None);
        // A route: its headers, whatever --fallback says.
        let routed = |h: &str| ItemRecord {
            fallback: headers::parse_fallback(h),
            ..rec("small", true, &[], 30, 5)
        };
        let auto = ModelReport::new(
            "auto",
            vec!["small".into(), "large".into()],
            vec![
                routed("prefill=40, decode=0, forwards=1"),
                routed("prefill=80, decode=10, forwards=11"),
            ],
            &none,
            None,
        );
        assert_eq!(auto.fallback_no_decode_share, Some(0.5));
        assert_eq!(auto.fallback_forwards_per_item, Some(6.0));
        let text = table(&[large, unknown, auto]);
        let rows: Vec<&str> = text.lines().collect();
        assert!(
            rows[0].contains("fb 0-dec") && rows[0].contains("fb in+out"),
            "{text}"
        );
        assert!(
            rows[1].contains(" 50") && rows[1].contains("3.5") && rows[1].contains("40+5"),
            "{text}"
        );
        assert!(rows[2].contains("      -           -  large"), "{text}");
        assert!(rows[3].contains("6.0") && rows[3].contains("60+5"), "{text}");
    }

    #[test]
    fn prices_parse() {
        assert_eq!(parse_price("small=0.1,0.4"), Ok(("small".into(), (0.1, 0.4))));
        for bad in ["small", "small=1", "=1,2", "small=a,2", "small=-1,2"] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
    }
}
