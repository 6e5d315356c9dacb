//! The router's score-mode headers and what the fallback did per item.
//!
//! - `x-wick-score: mean=-0.412, min=-3.207, tokens=12`: the fallback scored the cheap tier's
//!   answer (its mean and minimum token logprob over the answer's tokens), whether the answer
//!   then stood or escalated.
//! - `x-wick-fallback: prefill=120, decode=35, forwards=36`: what the route's last tier did for
//!   the request (prompt tokens it processed, scoring included; tokens it generated as an
//!   answer; its forward passes).
//!
//! Parsing is tolerant (`key=value` pairs split on `,`, unknown keys ignored, a duplicate key's
//! last value wins) because the router may add keys; a header missing a required key or with a
//! value that does not parse is taken as absent rather than guessed at.

use serde::Serialize;

use super::report::ItemRecord;

/// `x-wick-score`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    pub mean: f64,
    pub min: f64,
    /// The answer's token count, when the header gives it (informational only).
    pub tokens: Option<u64>,
}

/// `x-wick-fallback`, or the same figures derived from a plain model's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FallbackWork {
    pub prefill: u64,
    pub decode: u64,
    pub forwards: u64,
}

/// The `key=value` pairs of a header, in order.
fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header
        .split(',')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// Parses `x-wick-score`; None when `mean` or `min` is missing or not a number. NaN is refused
/// (no threshold compares with it); `-inf` is kept (a token the fallback gives probability 0).
pub fn parse_score(header: &str) -> Option<Score> {
    let (mut mean, mut min, mut tokens) = (None, None, None);
    for (k, v) in pairs(header) {
        let number = || v.parse::<f64>().ok().filter(|x| !x.is_nan());
        match k {
            "mean" => mean = Some(number()?),
            "min" => min = Some(number()?),
            "tokens" => tokens = Some(v.parse::<u64>().ok()?),
            _ => {}
        }
    }
    Some(Score {
        mean: mean?,
        min: min?,
        tokens,
    })
}

/// Parses `x-wick-fallback`; None unless all three counts are there and parse.
pub fn parse_fallback(header: &str) -> Option<FallbackWork> {
    let (mut prefill, mut decode, mut forwards) = (None, None, None);
    for (k, v) in pairs(header) {
        let slot = match k {
            "prefill" => &mut prefill,
            "decode" => &mut decode,
            "forwards" => &mut forwards,
            _ => continue,
        };
        *slot = Some(v.parse::<u64>().ok()?);
    }
    Some(FallbackWork {
        prefill: prefill?,
        decode: decode?,
        forwards: forwards?,
    })
}

/// How a model's records without `x-wick-fallback` are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoHeader {
    /// The model is the fallback, asked directly: its own usage is the fallback's work.
    FromUsage,
    /// A plain model other than the fallback: it never touched the fallback.
    Zero,
    /// Unknown (no `--fallback`, or a route that sent no header): not counted.
    Unknown,
}

impl NoHeader {
    /// `fallback` is `--fallback` (or the calibrated route's last tier); `plain` is true when
    /// `/models` lists no tiers for the model.
    pub fn for_model(model: &str, plain: bool, fallback: Option<&str>) -> Self {
        match fallback {
            Some(f) if f == model => Self::FromUsage,
            Some(_) if plain => Self::Zero,
            _ => Self::Unknown,
        }
    }
}

/// The fallback's work on one answered item: the header when sent, else per `rule`.
pub fn fallback_work(record: &ItemRecord, rule: NoHeader) -> Option<FallbackWork> {
    if let Some(w) = record.fallback {
        return Some(w);
    }
    match rule {
        // One prefill pass yields the first token and each decode step one more, so a plain
        // answer takes completion_tokens passes; a speculating engine's accepted draft tokens
        // came free with a verified step. At least the prefill, even for an empty answer.
        NoHeader::FromUsage => Some(FallbackWork {
            prefill: record.prompt_tokens,
            decode: record.completion_tokens,
            forwards: record
                .completion_tokens
                .saturating_sub(record.accepted_prediction_tokens.unwrap_or(0))
                .max(1),
        }),
        NoHeader::Zero => Some(FallbackWork::default()),
        NoHeader::Unknown => None,
    }
}

/// Per-model means of the fallback's work (the `fallback_*` report fields).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FallbackSummary {
    /// Share of items the fallback decoded nothing for (it only scored, or was never asked).
    pub no_decode_share: f64,
    pub forwards_per_item: f64,
    pub prefill_per_item: f64,
    pub decode_per_item: f64,
}

/// Means over the answered records whose fallback work is known; None when none is.
pub fn summarize(records: &[&ItemRecord], rule: NoHeader) -> Option<FallbackSummary> {
    let works: Vec<FallbackWork> = records.iter().filter_map(|r| fallback_work(r, rule)).collect();
    if works.is_empty() {
        return None;
    }
    let n = works.len() as f64;
    let mean = |f: fn(&FallbackWork) -> u64| works.iter().map(f).sum::<u64>() as f64 / n;
    Some(FallbackSummary {
        no_decode_share: works.iter().filter(|w| w.decode == 0).count() as f64 / n,
        forwards_per_item: mean(|w| w.forwards),
        prefill_per_item: mean(|w| w.prefill),
        decode_per_item: mean(|w| w.decode),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_headers_parse_tolerantly() {
        let s = parse_score("mean=-0.412, min=-3.207, tokens=12").expect("good");
        assert_eq!((s.mean, s.min, s.tokens), (-0.412, -3.207, Some(12)));
        // Unknown keys ignored, order and spacing free, tokens optional, -inf kept.
        let s = parse_score(" min = -inf ,  extra=x,mean=-1 ").expect("tolerant");
        assert_eq!((s.mean, s.min, s.tokens), (-1.0, f64::NEG_INFINITY, None));
        for bad in [
            "",
            "mean=-0.4",
            "min=-3",
            "mean=abc, min=-3",
            "mean=NaN, min=-3",
            "mean=-0.4, min=-3, tokens=-1",
            "mean -0.4, min -3",
            "garbage",
        ] {
            assert_eq!(parse_score(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fallback_headers_parse_tolerantly() {
        let w = FallbackWork {
            prefill: 120,
            decode: 35,
            forwards: 36,
        };
        assert_eq!(parse_fallback("prefill=120, decode=35, forwards=36"), Some(w));
        assert_eq!(
            parse_fallback("forwards=36,new=1,decode=35 , prefill=120"),
            Some(w)
        );
        for bad in [
            "",
            "prefill=120, decode=35",
            "prefill=120, decode=-1, forwards=3",
            "prefill=1.5, decode=3, forwards=3",
            "prefill=, decode=3, forwards=3",
        ] {
            assert_eq!(parse_fallback(bad), None, "{bad:?}");
        }
    }

    fn answered(pt: u64, ct: u64, accepted: Option<u64>, header: Option<&str>) -> ItemRecord {
        ItemRecord {
            prompt_tokens: pt,
            completion_tokens: ct,
            accepted_prediction_tokens: accepted,
            fallback: header.and_then(parse_fallback),
            ..Default::default()
        }
    }

    #[test]
    fn the_rule_for_records_without_a_header() {
        assert_eq!(
            NoHeader::for_model("large", true, Some("large")),
            NoHeader::FromUsage
        );
        // The fallback named directly is measured from usage even when it is itself a route.
        assert_eq!(
            NoHeader::for_model("large", false, Some("large")),
            NoHeader::FromUsage
        );
        assert_eq!(NoHeader::for_model("small", true, Some("large")), NoHeader::Zero);
        // A route that sent no header did touch the fallback, by how much is unknown.
        assert_eq!(
            NoHeader::for_model("auto", false, Some("large")),
            NoHeader::Unknown
        );
        assert_eq!(NoHeader::for_model("small", true, None), NoHeader::Unknown);
    }

    #[test]
    fn fallback_work_from_headers_and_usage() {
        let header = answered(50, 9, None, Some("prefill=120, decode=0, forwards=1"));
        let w = |p, d, f| FallbackWork {
            prefill: p,
            decode: d,
            forwards: f,
        };
        // The header wins over any rule.
        for rule in [NoHeader::FromUsage, NoHeader::Zero, NoHeader::Unknown] {
            assert_eq!(fallback_work(&header, rule), Some(w(120, 0, 1)));
        }
        assert_eq!(
            fallback_work(&answered(40, 10, None, None), NoHeader::FromUsage),
            Some(w(40, 10, 10))
        );
        assert_eq!(
            fallback_work(&answered(40, 10, Some(6), None), NoHeader::FromUsage),
            Some(w(40, 10, 4))
        );
        // An empty answer still took its prefill; accepted tokens never exceed the passes.
        assert_eq!(
            fallback_work(&answered(40, 0, None, None), NoHeader::FromUsage),
            Some(w(40, 0, 1))
        );
        assert_eq!(
            fallback_work(&answered(40, 3, Some(9), None), NoHeader::FromUsage),
            Some(w(40, 3, 1))
        );
        assert_eq!(
            fallback_work(&answered(40, 10, None, None), NoHeader::Zero),
            Some(w(0, 0, 0))
        );
        assert_eq!(
            fallback_work(&answered(40, 10, None, None), NoHeader::Unknown),
            None
        );
    }

    #[test]
    fn summaries_average_known_items() {
        // A score route: two answers stood (the fallback only scored), one escalated.
        let records = [
            answered(30, 5, None, Some("prefill=40, decode=0, forwards=1")),
            answered(30, 5, None, Some("prefill=44, decode=0, forwards=1")),
            answered(30, 20, None, Some("prefill=90, decode=20, forwards=21")),
        ];
        let refs: Vec<&ItemRecord> = records.iter().collect();
        let s = summarize(&refs, NoHeader::Unknown).expect("headers");
        assert!((s.no_decode_share - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.forwards_per_item - 23.0 / 3.0).abs() < 1e-12);
        assert!((s.prefill_per_item - 58.0).abs() < 1e-12);
        assert!((s.decode_per_item - 20.0 / 3.0).abs() < 1e-12);

        // The fallback alone, from usage: 10 tokens with 4 accepted → 6 passes; 0 tokens → 1.
        let records = [answered(40, 10, Some(4), None), answered(60, 0, None, None)];
        let refs: Vec<&ItemRecord> = records.iter().collect();
        let s = summarize(&refs, NoHeader::FromUsage).expect("usage");
        assert_eq!(
            (
                s.no_decode_share,
                s.forwards_per_item,
                s.prefill_per_item,
                s.decode_per_item
            ),
            (0.5, 3.5, 50.0, 5.0)
        );
        // Another plain model: all zero, every item decode-free.
        let s = summarize(&refs, NoHeader::Zero).expect("zero");
        assert_eq!(
            s,
            FallbackSummary {
                no_decode_share: 1.0,
                ..Default::default()
            }
        );
        assert_eq!(summarize(&refs, NoHeader::Unknown), None);
        assert_eq!(summarize(&[], NoHeader::Zero), None);
    }
}
