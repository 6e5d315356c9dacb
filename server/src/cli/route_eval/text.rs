//! The calibration as text (the table's companion; `--json` prints the struct instead).

use super::calibrate::{Calibration, Point};

/// A threshold as TOML reads it back: the shortest decimal that round-trips, with a `.0` on a
/// whole number so it stays a float.
pub fn fmt_threshold(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn curve(out: &mut String, name: &str, rows: &[Point], pick: fn(&Point) -> Option<f64>) {
    out.push_str(&format!(
        "{name} alone:\n  {:>10} {:>8} {:>9}\n",
        "threshold", "cheap", "accuracy"
    ));
    for p in rows {
        let t = pick(p).map_or_else(|| "unset".to_string(), fmt_threshold);
        out.push_str(&format!(
            "  {t:>10} {:>8} {:>9}\n",
            pct(p.cheap_share),
            pct(p.accuracy)
        ));
    }
}

fn pair(p: &Point) -> String {
    let show = |x: Option<f64>| x.map_or_else(|| "unset".to_string(), fmt_threshold);
    format!(
        "min_mean_logprob = {}, min_token_logprob = {}",
        show(p.min_mean_logprob),
        show(p.min_token_logprob)
    )
}

/// The curves and the recommendation, as printed after the table.
pub fn calibration(c: &Calibration) -> String {
    let mut out = format!(
        "\ncalibration of `{}`: cheap tier `{}` ({}), fallback `{}` ({}); {} of {} items scored \
         (the others count as escalated)\n",
        c.route,
        c.cheap,
        pct(c.cheap_accuracy),
        c.fallback,
        pct(c.fallback_accuracy),
        c.scored,
        c.items
    );
    if c.cheap_answer_mismatches > 0 {
        out.push_str(&format!(
            "warning: {} items the route kept cheap differ from `{}`'s own answer (not \
             deterministic?): the curves assume they are the same\n",
            c.cheap_answer_mismatches, c.cheap
        ));
    }
    curve(&mut out, "min_mean_logprob", &c.mean_curve, |p| {
        p.min_mean_logprob
    });
    curve(&mut out, "min_token_logprob", &c.min_curve, |p| {
        p.min_token_logprob
    });
    match &c.recommendation {
        Some(r) => out.push_str(&format!(
            "target accuracy {}: the highest cheap share reaching it is {} (accuracy {}):\n{}\n",
            pct(c.target_accuracy),
            pct(r.point.cheap_share),
            pct(r.point.accuracy),
            r.toml
        )),
        None => out.push_str(&format!(
            "no threshold pair reaches the target accuracy {}; the best reachable is {} \
             (cheap share {}) at {}\n",
            pct(c.target_accuracy),
            pct(c.best_accuracy.accuracy),
            pct(c.best_accuracy.cheap_share),
            pair(&c.best_accuracy)
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_stay_toml_floats() {
        assert_eq!(fmt_threshold(-3.0), "-3.0");
        assert_eq!(fmt_threshold(-0.4), "-0.4");
        assert_eq!(fmt_threshold(-0.405), "-0.405");
        assert_eq!(fmt_threshold(f64::NEG_INFINITY), "-inf");
    }
}
