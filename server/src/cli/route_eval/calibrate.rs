//! `--calibrate ROUTE`: where to set a score-mode route's thresholds, from one run of the cheap
//! model, the fallback and the route over the same items.
//!
//! At temperature 0 the answer the route's fallback scored is the cheap model's own answer, so
//! per item we know whether the cheap answer is right, whether the fallback's is, and the
//! score (`x-wick-score`). For thresholds (m, t) an item stays cheap iff it was scored with
//! mean >= m and min >= t (unset = no condition); an item never scored (escalated before
//! scoring, or failed) always goes to the fallback. Accuracy is the mean over items of the
//! answer it would get, cheap share the fraction staying cheap.
//!
//! Candidate thresholds are not the observed values themselves but the shortest decimal
//! strictly between two neighbouring ones: the same split of the observed items, and an item
//! sitting exactly on a threshold cannot flip on the header's rounding.

use serde::Serialize;

use super::report::ItemRecord;
use super::text::fmt_threshold;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CalibrateError {
    #[error(
        "--calibrate {route}: none of its answers carried `x-wick-score` \
         (is its policy verify = \"score\"?)"
    )]
    NoScores { route: String },
    #[error(
        "--calibrate {route}: GET /models lists no tiers for it, so its cheap tier and \
         fallback are unknown: name them with --cheap and --fallback"
    )]
    NoTiers { route: String },
    #[error("--calibrate {route}: the cheap tier and the fallback are both `{model}`")]
    SameModel { route: String, model: String },
    #[error("--calibrate: `{model}` was not evaluated over every item")]
    Missing { model: String },
}

/// One item as calibration sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalItem {
    pub cheap_correct: bool,
    pub fallback_correct: bool,
    /// `(mean, min)` from the route's `x-wick-score`.
    pub score: Option<(f64, f64)>,
}

/// A threshold pair (None: unset) and what it gives over the items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub min_mean_logprob: Option<f64>,
    pub min_token_logprob: Option<f64>,
    pub cheap_share: f64,
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    #[serde(flatten)]
    pub point: Point,
    /// The policy line to paste into the route's config.
    pub toml: String,
}

/// The `calibration` object of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    pub route: String,
    pub cheap: String,
    pub fallback: String,
    pub items: usize,
    /// Items whose route answer carried a score.
    pub scored: usize,
    pub cheap_accuracy: f64,
    pub fallback_accuracy: f64,
    pub target_accuracy: f64,
    /// Items the route answered from the cheap tier with an answer other than the cheap
    /// model's own: not 0 means the premise (deterministic answers) does not hold.
    pub cheap_answer_mismatches: usize,
    /// `min_mean_logprob` alone, unset first then rising (cheap share falls).
    pub mean_curve: Vec<Point>,
    /// `min_token_logprob` alone, likewise.
    pub min_curve: Vec<Point>,
    /// The highest cheap share with accuracy >= target; None when no pair reaches it.
    pub recommendation: Option<Recommendation>,
    /// The most accurate pair of the grid (ties: the higher cheap share).
    pub best_accuracy: Point,
}

/// Rows a curve shows at most, besides "unset".
pub const CURVE_ROWS: usize = 12;

/// Per-item outcomes of the three models, matched by position (every model ran the same items
/// in order). The route's record is the cheap tier's answer when its backend is `cheap` and it
/// did not escalate.
pub fn items_from(
    cheap: &[ItemRecord],
    fallback: &[ItemRecord],
    route: &[ItemRecord],
    cheap_name: &str,
) -> (Vec<CalItem>, usize) {
    let mut mismatches = 0;
    let items = cheap
        .iter()
        .zip(fallback)
        .zip(route)
        .map(|((c, f), r)| {
            let route_cheap =
                r.error.is_none() && r.escalations.is_empty() && r.backend.as_deref() == Some(cheap_name);
            mismatches += usize::from(route_cheap && c.error.is_none() && r.answer != c.answer);
            CalItem {
                cheap_correct: c.correct,
                fallback_correct: f.correct,
                score: r.score.map(|s| (s.mean, s.min)),
            }
        })
        .collect();
    (items, mismatches)
}

/// The calibration over `items`; `target` defaults to the fallback's accuracy minus 0.03.
pub fn calibrate(
    names: [&str; 3],
    items: &[CalItem],
    mismatches: usize,
    target: Option<f64>,
) -> Result<Calibration, CalibrateError> {
    let [route, cheap, fallback] = names;
    let scored = items.iter().filter(|i| i.score.is_some()).count();
    if scored == 0 {
        return Err(CalibrateError::NoScores {
            route: route.to_string(),
        });
    }
    let n = items.len() as f64;
    let fallback_accuracy = items.iter().filter(|i| i.fallback_correct).count() as f64 / n;
    let target_accuracy = target.unwrap_or(fallback_accuracy - 0.03);
    let means: Vec<f64> = items.iter().filter_map(|i| i.score.map(|s| s.0)).collect();
    let mins: Vec<f64> = items.iter().filter_map(|i| i.score.map(|s| s.1)).collect();
    // One threshold alone: `on_mean` picks which.
    let curve = |values: &[f64], on_mean: bool| {
        std::iter::once(None)
            .chain(thin(&cuts(values), CURVE_ROWS).into_iter().map(Some))
            .map(|c| {
                if on_mean {
                    evaluate(items, c, None)
                } else {
                    evaluate(items, None, c)
                }
            })
            .collect()
    };
    let (recommended, best_accuracy) = search(items, target_accuracy);
    let recommendation = recommended.map(|mut point| {
        // The config wants at least one threshold: "both unset" is a mean threshold under
        // every observed mean, which keeps the same items.
        if point.min_mean_logprob.is_none() && point.min_token_logprob.is_none() {
            point.min_mean_logprob = Some(below(&means));
        }
        Recommendation {
            toml: policy_toml(&point),
            point,
        }
    });
    Ok(Calibration {
        route: route.to_string(),
        cheap: cheap.to_string(),
        fallback: fallback.to_string(),
        items: items.len(),
        scored,
        cheap_accuracy: items.iter().filter(|i| i.cheap_correct).count() as f64 / n,
        fallback_accuracy,
        target_accuracy,
        cheap_answer_mismatches: mismatches,
        mean_curve: curve(&means, true),
        min_curve: curve(&mins, false),
        recommendation,
        best_accuracy,
    })
}

fn stays_cheap(score: Option<(f64, f64)>, m: Option<f64>, t: Option<f64>) -> bool {
    score.is_some_and(|(mean, min)| m.is_none_or(|m| mean >= m) && t.is_none_or(|t| min >= t))
}

/// Cheap share and accuracy of one threshold pair.
pub fn evaluate(items: &[CalItem], m: Option<f64>, t: Option<f64>) -> Point {
    let (mut cheap, mut correct) = (0usize, 0usize);
    for i in items {
        let c = stays_cheap(i.score, m, t);
        cheap += usize::from(c);
        correct += usize::from(if c { i.cheap_correct } else { i.fallback_correct });
    }
    let n = items.len().max(1) as f64;
    Point {
        min_mean_logprob: m,
        min_token_logprob: t,
        cheap_share: cheap as f64 / n,
        accuracy: correct as f64 / n,
    }
}

/// The cut points of `values`: one between each two neighbouring distinct values, ascending.
pub fn cuts(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v.windows(2).map(|w| between(w[0], w[1])).collect()
}

/// The shortest decimal strictly between `lo < hi` (a round number pastes better).
fn between(lo: f64, hi: f64) -> f64 {
    if lo == f64::NEG_INFINITY {
        return if hi.is_finite() { hi.floor() - 1.0 } else { 0.0 };
    }
    if hi == f64::INFINITY {
        return lo.ceil() + 1.0;
    }
    let mid = lo + (hi - lo) / 2.0;
    (0..=12)
        .map(|d| {
            let scale = 10f64.powi(d);
            (mid * scale).round() / scale
        })
        .find(|c| lo < *c && *c < hi)
        .unwrap_or(mid)
}

/// A round threshold under every finite value (the "unset" mean as a config value).
fn below(values: &[f64]) -> f64 {
    let lo = values
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f64::INFINITY, f64::min);
    if lo.is_finite() {
        lo.floor() - if lo.floor() == lo { 1.0 } else { 0.0 }
    } else {
        -100.0
    }
}

/// At most `k` (>= 2) of `cuts`, evenly spaced by rank (so roughly by cheap share), both ends
/// kept.
fn thin(cuts: &[f64], k: usize) -> Vec<f64> {
    if cuts.len() <= k {
        return cuts.to_vec();
    }
    let last = cuts.len() - 1;
    let mut out: Vec<f64> = (0..k).map(|i| cuts[(i * last + (k - 1) / 2) / (k - 1)]).collect();
    out.dedup();
    out
}

/// Over every pair of (unset or a cut) for each threshold: the highest cheap share with
/// accuracy >= `target` (ties: higher accuracy), and the highest accuracy (ties: higher
/// share). Pairs are tried loosest first and only a strictly better one replaces the best, so
/// of pairs giving the same figures the loosest wins. For each mean threshold the items are
/// swept by falling min, so the grid costs O(n² log n), not O(n³).
fn search(items: &[CalItem], target: f64) -> (Option<Point>, Point) {
    let n = items.len().max(1) as f64;
    let base = items.iter().filter(|i| i.fallback_correct).count() as i64;
    // Each scored item: (mean, min, change in correct answers if it stays cheap).
    let scored: Vec<(f64, f64, i64)> = items
        .iter()
        .filter_map(|i| {
            let (mean, min) = i.score?;
            Some((
                mean,
                min,
                i64::from(i.cheap_correct) - i64::from(i.fallback_correct),
            ))
        })
        .collect();
    let (means, mins): (Vec<f64>, Vec<f64>) = scored.iter().map(|s| (s.0, s.1)).unzip();
    let min_cuts = cuts(&mins);
    let point = |m, t, cheap: usize, correct: i64| Point {
        min_mean_logprob: m,
        min_token_logprob: t,
        cheap_share: cheap as f64 / n,
        accuracy: correct as f64 / n,
    };
    // (cheap, correct) of the best so far.
    let mut ok: Option<(Point, usize, i64)> = None;
    let mut top: Option<(Point, usize, i64)> = None;
    for m in std::iter::once(None).chain(cuts(&means).into_iter().map(Some)) {
        let mut pass: Vec<(f64, i64)> = scored
            .iter()
            .filter(|s| m.is_none_or(|m| s.0 >= m))
            .map(|s| (s.1, s.2))
            .collect();
        pass.sort_by(|a, b| b.0.total_cmp(&a.0));
        // Sweep the min cuts downwards, adding the items each one lets through.
        let (mut j, mut delta) = (0, 0i64);
        let mut by_cut = Vec::with_capacity(min_cuts.len() + 1);
        for &t in min_cuts.iter().rev() {
            while j < pass.len() && pass[j].0 >= t {
                delta += pass[j].1;
                j += 1;
            }
            by_cut.push((Some(t), j, delta));
        }
        by_cut.push((None, pass.len(), pass.iter().map(|p| p.1).sum()));
        for (t, cheap, delta) in by_cut.into_iter().rev() {
            let correct = base + delta;
            if correct as f64 / n >= target - 1e-12
                && ok.is_none_or(|(_, c, k)| cheap > c || (cheap == c && correct > k))
            {
                ok = Some((point(m, t, cheap, correct), cheap, correct));
            }
            if top.is_none_or(|(_, c, k)| correct > k || (correct == k && cheap > c)) {
                top = Some((point(m, t, cheap, correct), cheap, correct));
            }
        }
    }
    let top = top.map_or_else(|| point(None, None, 0, base), |t| t.0);
    (ok.map(|o| o.0), top)
}

/// `policy = { verify = "score", ... }`, an unset threshold left out.
fn policy_toml(p: &Point) -> String {
    let mut out = String::from("policy = { verify = \"score\"");
    if let Some(m) = p.min_mean_logprob {
        out.push_str(&format!(", min_mean_logprob = {}", fmt_threshold(m)));
    }
    if let Some(t) = p.min_token_logprob {
        out.push_str(&format!(", min_token_logprob = {}", fmt_threshold(t)));
    }
    out.push_str(" }");
    out
}

#[cfg(test)]
#[path = "calibrate_tests.rs"]
mod tests;
