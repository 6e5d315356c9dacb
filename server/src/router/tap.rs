//! What the router does to a tier's stream on its way to the client: it removes what it asked
//! for itself (logprobs for the policy; the usage chunk, `stream_options.include_usage`, for
//! pricing) and charges the usage chunk to the cost metrics as it passes. Everything else goes
//! on as the backend wrote it.

use std::sync::Arc;

use axum::body::Bytes;
use prometheus::{Counter, IntCounter};
use serde_json::Value;

use super::backend::Backend;
use super::hold::{SseData, SseEvent};

/// Asks for the usage chunk (`stream_options.include_usage`), keeping the client's other stream
/// options. A `stream_options` that is not an object is left for the backend to refuse.
pub fn ask_usage(body: &mut Value) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    if options.is_null() {
        *options = Value::Object(Default::default());
    }
    if let Some(options) = options.as_object_mut() {
        options.insert("include_usage".into(), Value::Bool(true));
    }
}

/// Whether the client asked for the usage chunk itself.
pub fn asks_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
}

/// The usage of the stream's usage chunk (OpenAI's: `usage` set, `choices` empty). Chunks that
/// carry both (vLLM's `continuous_usage_stats`) are running totals, not the final figure.
pub fn usage_chunk(chunk: &Value) -> Option<&Value> {
    let choices_empty = chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty());
    chunk.get("usage").filter(|u| u.is_object() && choices_empty)
}

/// Where a usage figure is charged: each counter adds what it cost at that backend's prices.
#[derive(Clone, Default)]
pub struct Meter {
    charges: Vec<(Counter, Arc<Backend>)>,
    /// Where the usage's verified proposals are counted: accepted, rejected.
    drafts: Option<[IntCounter; 2]>,
    /// Where its tokens are counted as the route's fallback's: prompt, completion.
    fallback: Option<[IntCounter; 2]>,
}

impl Meter {
    pub fn add(&mut self, counter: Counter, priced_on: Arc<Backend>) {
        self.charges.push((counter, priced_on));
    }

    pub fn count_drafts(&mut self, accepted_and_rejected: [IntCounter; 2]) {
        self.drafts = Some(accepted_and_rejected);
    }

    pub fn count_fallback(&mut self, prompt_and_completion: [IntCounter; 2]) {
        self.fallback = Some(prompt_and_completion);
    }

    pub fn charge(&self, usage: &Value) {
        for (counter, backend) in &self.charges {
            counter.inc_by(backend.cost(Some(usage)));
        }
        if let Some(counters) = &self.drafts {
            super::metrics::count_drafts(counters, Some(usage));
        }
        if let Some(counters) = &self.fallback {
            super::metrics::count_tokens(counters, Some(usage));
        }
    }
}

/// One stream's way to the client (see the module doc).
pub struct StreamTap {
    strip_logprobs: bool,
    strip_usage: bool,
    /// Taken when the usage is charged: a stream is priced once.
    meter: Option<Meter>,
}

impl StreamTap {
    /// `strip_logprobs`/`strip_usage`: the router asked for them, the client did not.
    pub fn new(strip_logprobs: bool, strip_usage: bool, meter: Meter) -> Self {
        Self {
            strip_logprobs,
            strip_usage,
            meter: Some(meter),
        }
    }

    /// Whether the stream's usage has been charged.
    pub fn priced(&self) -> bool {
        self.meter.is_none()
    }

    /// What the client gets of `event` (`None`: nothing), charging its usage if it has one.
    pub fn pass(&mut self, event: &SseEvent) -> Option<Bytes> {
        let Some(SseData::Json(chunk)) = &event.data else {
            return Some(event.raw.clone());
        };
        if let Some(usage) = usage_chunk(chunk) {
            if let Some(meter) = self.meter.take() {
                meter.charge(usage);
            }
            if self.strip_usage {
                return None;
            }
        }
        if self.strip_logprobs {
            let mut stripped = chunk.clone();
            super::strip_logprobs(&mut stripped);
            if &stripped != chunk {
                return Some(Bytes::from(format!("data: {stripped}\n\n")));
            }
        }
        Some(event.raw.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::BackendKind;
    use super::super::hold::SseSplitter;
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_is_asked_for_without_losing_the_clients_options() {
        for (sent, want) in [
            (json!({"stream": true}), json!({"include_usage": true})),
            (json!({"stream_options": null}), json!({"include_usage": true})),
            (
                json!({"stream_options": {"include_usage": false, "continuous_usage_stats": true}}),
                json!({"include_usage": true, "continuous_usage_stats": true}),
            ),
        ] {
            let mut body = sent.clone();
            assert!(!asks_usage(&body), "{sent}");
            ask_usage(&mut body);
            assert_eq!(body["stream_options"], want, "{sent}");
            assert!(asks_usage(&body));
        }
        assert!(asks_usage(&json!({"stream_options": {"include_usage": true}})));
        let mut odd = json!({"stream_options": "yes"});
        ask_usage(&mut odd);
        assert_eq!(
            odd["stream_options"], "yes",
            "the backend refuses it, as it would the client's"
        );
    }

    fn backend(prices: (f64, f64)) -> Arc<Backend> {
        Arc::new(Backend {
            id: "b".into(),
            model: "b".into(),
            kind: BackendKind::Local,
            prices,
            capabilities: wick_config::Capability::LOCAL.to_vec(),
            template: None,
            tool_format: None,
        })
    }

    const STREAM: &str = concat!(
        ": keep-alive\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":{\"content\":[]},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":4,\"total_tokens\":14}}\n\n",
        "data: [DONE]\n\n",
    );

    /// What the client gets of [`STREAM`] through a tap, and the counters it charged.
    fn run(strip_logprobs: bool, strip_usage: bool) -> (String, f64, f64) {
        let (cost, fallback) = (Counter::new("c", "c").unwrap(), Counter::new("f", "f").unwrap());
        let mut meter = Meter::default();
        meter.add(cost.clone(), backend((1.0, 2.0)));
        meter.add(fallback.clone(), backend((10.0, 20.0)));
        let mut tap = StreamTap::new(strip_logprobs, strip_usage, meter);
        let mut out = Vec::new();
        // Twice: a repeated usage chunk is not charged again.
        for event in SseSplitter::default().push(format!("{STREAM}{STREAM}").as_bytes()) {
            out.extend(tap.pass(&event).unwrap_or_default().to_vec());
        }
        assert!(tap.priced());
        (String::from_utf8(out).unwrap(), cost.get(), fallback.get())
    }

    #[test]
    fn the_usage_chunk_is_charged_once_and_removed_unless_the_client_asked() {
        let (out, cost, fallback) = run(false, false);
        assert_eq!(out, format!("{STREAM}{STREAM}"), "nothing to remove: as it came");
        assert!((cost - (10.0 * 1.0 + 4.0 * 2.0) / 1e6).abs() < 1e-15, "{cost}");
        assert!(
            (fallback - (10.0 * 10.0 + 4.0 * 20.0) / 1e6).abs() < 1e-15,
            "{fallback}"
        );
        let (out, cost_again, _) = run(true, true);
        assert_eq!(cost_again, cost);
        assert!(!out.contains("prompt_tokens"), "{out}");
        assert!(!out.contains("\"logprobs\":{"), "{out}");
        // The rest is as it came: comments, the `usage: null` chunk, `[DONE]`.
        assert!(out.starts_with(": keep-alive\n\n"), "{out}");
        assert!(out.contains(r#""finish_reason":"stop"}],"usage":null}"#), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        assert_eq!(out.matches("data: ").count(), 6);
    }

    #[test]
    fn only_a_chunk_without_choices_is_the_usage_chunk() {
        let usage = json!({"prompt_tokens": 1, "completion_tokens": 1});
        assert!(usage_chunk(&json!({"choices": [], "usage": usage})).is_some());
        assert!(usage_chunk(&json!({"usage": usage})).is_some());
        assert!(usage_chunk(&json!({"choices": [], "usage": null})).is_none());
        assert!(usage_chunk(&json!({"choices": [{"index": 0}], "usage": usage})).is_none());
    }
}
