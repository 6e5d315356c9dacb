//! What happened on the way to a route's answer, for its response headers: who answered, the
//! escalations and failovers, score mode's score, and what the fallback did for the request.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use serde_json::Value;

use super::continuation::{Continuation, CONTINUED_HEADER};
use super::score::{Score, SCORE_HEADER};
use super::{BACKEND_HEADER, ESCALATION_HEADER, FAILOVER_HEADER};

/// `prefill=120, decode=35, forwards=36`: the route's last tier's work for the request.
pub const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-wick-fallback");

#[derive(Default)]
pub(super) struct Trail {
    pub escalations: Vec<String>,
    pub failovers: Vec<String>,
    /// Score mode: the fallback's score of the cheap answer.
    pub score: Option<Score>,
    pub fallback: FallbackWork,
    /// Score mode: where the fallback continues the rejected cheap answer, until it does.
    pub continuation: Option<Continuation>,
    /// Score mode: the fallback continued the cheap answer (`x-wick-continued`).
    pub continued: Option<String>,
}

/// What the route's last tier did for one request: tokens it read (scoring included), tokens
/// it generated as an answer, and its forward passes (one per prefill, one per decode step).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct FallbackWork {
    pub prefill: u64,
    pub decode: u64,
    pub forwards: u64,
}

impl FallbackWork {
    /// A scoring prefill (its one generated token is not an answer's).
    pub fn scored(&mut self, prefill_tokens: u64) {
        self.prefill += prefill_tokens;
        self.forwards += 1;
    }

    /// Its answer's usage: each forward after the prefill's emits one token and the
    /// proposals it accepted; an answer with no tokens still had its prefill (as route-eval
    /// counts a plain fallback's usage: at least one forward).
    pub fn answered(&mut self, usage: Option<&Value>) {
        let count = |key: &str| {
            usage
                .and_then(|u| u.pointer(key))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let completion = count("/completion_tokens");
        let accepted = count("/completion_tokens_details/accepted_prediction_tokens");
        let prompt = count("/prompt_tokens");
        self.prefill += prompt;
        self.decode += completion;
        self.forwards += completion
            .saturating_sub(accepted)
            .max(u64::from(completion > 0 || prompt > 0));
    }

    /// None where the fallback streams the answer: its tokens are not known when the headers
    /// go out (its usage chunk counts them).
    fn header(&self, fallback_streams: bool) -> Option<String> {
        (!fallback_streams).then(|| {
            format!(
                "prefill={}, decode={}, forwards={}",
                self.prefill, self.decode, self.forwards
            )
        })
    }
}

impl Trail {
    /// The headers of an answer from `backend`; `fallback_streams`: it is the route's fallback,
    /// streaming.
    pub fn headers(&self, backend: &str, fallback_streams: bool, response: &mut Response) {
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(backend) {
            h.insert(BACKEND_HEADER, v);
        }
        for (name, list) in [
            (ESCALATION_HEADER, &self.escalations),
            (FAILOVER_HEADER, &self.failovers),
        ] {
            if !list.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
                    h.insert(name, v);
                }
            }
        }
        let values = [
            (SCORE_HEADER, self.score.map(|s| s.header())),
            (FALLBACK_HEADER, self.fallback.header(fallback_streams)),
            (CONTINUED_HEADER, self.continued.clone()),
        ];
        for (name, value) in values {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                h.insert(name, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_fallbacks_work_adds_scoring_and_answers() {
        let mut w = FallbackWork::default();
        w.scored(40);
        assert_eq!(
            w.header(false).as_deref(),
            Some("prefill=40, decode=0, forwards=1")
        );
        // 30 tokens, 12 of them accepted proposals: 18 forwards after the scoring's one.
        w.answered(Some(&json!({"prompt_tokens": 25, "completion_tokens": 30,
            "completion_tokens_details": {"accepted_prediction_tokens": 12, "rejected_prediction_tokens": 3}})));
        assert_eq!((w.prefill, w.decode, w.forwards), (65, 30, 19));
        w.answered(Some(&json!({"prompt_tokens": 5, "completion_tokens": 0})));
        assert_eq!(w.forwards, 20, "no tokens, but its prefill");
        w.answered(None);
        assert_eq!(w.forwards, 20, "no usage, nothing counted");
        assert_eq!(w.header(true), None);
    }
}
