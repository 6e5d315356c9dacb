//! Score mode's escalation from the first token the fallback rejects, not from scratch. The
//! cheap answer's tokens before it each cleared the threshold on the fallback, so the fallback
//! writes only the rest: one completions request whose prompt is the conversation and the kept
//! text as its own template renders them (what it just scored, so its prefix cache holds it),
//! made into the chat answer the client asked for.
//!
//! Only for what that request can stand in for: a non-streamed chat answer of plain text (no
//! tools offered, no response format, no logprobs, one choice) with its `max_tokens` set (a
//! completions request's default is 16 tokens, a chat request's the context). Anything else
//! escalates from scratch, as does a continuation the fallback refuses.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use serde_json::{json, Value};
use wick_config::RoutePolicy;

use super::backend::{Backend, BackendFailure, BackendReply, Completed};
use super::metrics::is_fallback;
use super::score::ScoredAnswer;
use super::trail::Trail;
use super::Route;
use crate::api::local_model::LocalModels;
use crate::api::openai::{random_id, unix_now};
use crate::api::service::Endpoint;

/// `kept=12/30`: the cheap answer's tokens the fallback kept, of those it scored.
pub const CONTINUED_HEADER: axum::http::HeaderName = axum::http::HeaderName::from_static("x-wick-continued");

/// The request's sampling fields the continuation carries over.
const SAMPLING: [&str; 10] = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "user",
];

/// Where the fallback continues a rejected answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Continuation {
    /// The conversation and the kept part of the answer, as the fallback reads them.
    pub prompt: String,
    /// The kept part of the answer's content.
    pub kept: String,
    /// Its tokens for the fallback, and the answer's scored tokens.
    pub kept_tokens: u64,
    pub scored_tokens: usize,
    /// Tokens left to the client's `max_tokens`.
    pub max_tokens: u64,
}

impl Continuation {
    pub fn header(&self) -> String {
        format!("kept={}/{}", self.kept_tokens, self.scored_tokens)
    }
}

/// The continuation of `answer` (a cheap chat answer the fallback rejected, scored as
/// `answers`), where one can stand in for escalating from scratch: from the first token under
/// `min_token_logprob`, else under `min_mean_logprob`, with at least one token kept.
pub fn plan(
    endpoint: Endpoint,
    request: &Value,
    answer: &Value,
    answers: &[ScoredAnswer],
    policy: &RoutePolicy,
) -> Option<Continuation> {
    let flag = |key: &str| request.get(key).and_then(Value::as_bool).unwrap_or(false);
    let tools = request
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
        && request.get("tool_choice").and_then(Value::as_str) != Some("none");
    let format = request
        .pointer("/response_format/type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "text");
    let n = request.get("n").and_then(Value::as_u64).unwrap_or(1);
    if endpoint != Endpoint::Chat || flag("stream") || flag("logprobs") || tools || format || n != 1 {
        return None;
    }
    let max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64)?;
    let [scored] = answers else {
        return None;
    };
    let message = answer.pointer("/choices/0/message")?;
    if message
        .get("tool_calls")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty())
    {
        return None;
    }
    let content = message.get("content").and_then(Value::as_str)?;
    let below = |threshold: f64| scored.tokens.iter().find(|t| t.1 < threshold).map(|t| t.0);
    let rejected = policy
        .min_token_logprob
        .and_then(below)
        .or_else(|| policy.min_mean_logprob.and_then(below))?;
    let start = scored.text.answer_start;
    let kept = scored.text.text.get(start..rejected).filter(|k| !k.is_empty())?;
    // The rendered answer starts with the content as it is (no template rewrote it).
    if !content.starts_with(kept) {
        return None;
    }
    let kept_tokens = scored.tokens.iter().filter(|t| t.0 < rejected).count() as u64;
    Some(Continuation {
        prompt: scored.text.text[..rejected].to_string(),
        kept: kept.to_string(),
        kept_tokens,
        scored_tokens: scored.tokens.len(),
        max_tokens: max_tokens.checked_sub(kept_tokens).filter(|&m| m > 0)?,
    })
}

/// Sends a request to `tier`: where it is the route's fallback and score mode planned a
/// continuation of the rejected cheap answer, the continuation (and its own usage, what the
/// fallback did), else `bytes` as they are (also where the fallback refuses the continuation).
pub(super) async fn send(
    local: &LocalModels,
    route: &Route,
    tier: &Backend,
    endpoint: Endpoint,
    request: &Value,
    bytes: Bytes,
    trail: &mut Trail,
) -> (Result<BackendReply, BackendFailure>, Option<Value>) {
    let planned = trail.continuation.take().filter(|_| is_fallback(route, tier));
    let Some(c) = planned else {
        return (tier.send(local, endpoint, bytes).await, None);
    };
    match answer(local, tier, request, &c).await {
        Ok(Some((reply, usage))) => {
            trail.continued = Some(c.header());
            (Ok(reply), Some(usage))
        }
        Ok(None) => (tier.send(local, endpoint, bytes).await, None),
        Err(f) => (Err(f), None),
    }
}

/// Asks `fallback` for the rest of the answer: the chat answer (the kept text and the rest; its
/// usage the conversation as prompt, kept and new tokens as completion) and the continuation's
/// own usage (what the fallback did). `Ok(None)`: it refused; escalate from scratch.
async fn answer(
    local: &LocalModels,
    fallback: &Backend,
    request: &Value,
    c: &Continuation,
) -> Result<Option<(BackendReply, Value)>, BackendFailure> {
    let mut body = json!({"prompt": c.prompt, "max_tokens": c.max_tokens});
    for key in SAMPLING {
        if let Some(v) = request.get(key).filter(|v| !v.is_null()) {
            body[key] = v.clone();
        }
    }
    let rest = match fallback.complete(local, body, "the continuation").await? {
        Completed::Answer(rest) => rest,
        Completed::Refused(status, message) => {
            tracing::warn!(backend = %fallback.id, %status, "the fallback refused a continuation, escalating from scratch: {message}");
            return Ok(None);
        }
    };
    let usage = rest.get("usage").cloned().unwrap_or(Value::Null);
    let chat = chat_answer(&rest, c);
    let reply = BackendReply {
        status: StatusCode::OK,
        content_type: Some(HeaderValue::from_static("application/json")),
        body: Body::from(serde_json::to_vec(&chat).unwrap_or_default()),
    };
    Ok(Some((reply, usage)))
}

/// The chat answer of a continuation: the kept text and the fallback's, its finish reason, and
/// usage as if the fallback had answered the conversation with all of it.
fn chat_answer(rest: &Value, c: &Continuation) -> Value {
    let text = rest
        .pointer("/choices/0/text")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let count = |key: &str| rest.pointer(key).and_then(Value::as_u64).unwrap_or(0);
    let prompt = count("/usage/prompt_tokens").saturating_sub(c.kept_tokens);
    let completion = count("/usage/completion_tokens") + c.kept_tokens;
    let mut usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion});
    if let Some(details) = rest.pointer("/usage/completion_tokens_details") {
        usage["completion_tokens_details"] = details.clone();
    }
    json!({
        "id": random_id("chatcmpl"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": rest.get("model").cloned().unwrap_or(Value::Null),
        "system_fingerprint": rest.get("system_fingerprint").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("{}{text}", c.kept)},
            "logprobs": null, "finish_reason": rest.pointer("/choices/0/finish_reason").cloned().unwrap_or(Value::Null)}],
        "usage": usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::score::ScoringText;

    /// "<u>2+2?</u><a>" then the answer "The answer is 5.</a>": the fallback rejects " 5".
    fn scored() -> (Value, Value, ScoredAnswer) {
        let prefix = "<u>2+2?</u><a>";
        let text = format!("{prefix}The answer is 5.</a>");
        let start = prefix.len();
        let tokens = vec![
            (start, -0.2),
            (start + 3, -0.1),
            (start + 10, -0.3),
            (start + 13, -7.0),
            (start + 15, -0.5),
            (start + 16, -0.01),
        ];
        let request = json!({"model": "auto", "messages": [{"role": "user", "content": "2+2?"}],
            "max_tokens": 20, "temperature": 0.5, "seed": 7});
        let answer = json!({"choices": [{"message": {"role": "assistant", "content": "The answer is 5."}}]});
        let scored = ScoredAnswer {
            text: ScoringText {
                text,
                answer_start: start,
            },
            tokens,
            prefill_tokens: 12,
        };
        (request, answer, scored)
    }

    fn policy(mean: Option<f64>, token: Option<f64>) -> RoutePolicy {
        RoutePolicy {
            min_mean_logprob: mean,
            min_token_logprob: token,
            ..RoutePolicy::default()
        }
    }

    #[test]
    fn it_continues_from_the_first_rejected_token() {
        let (request, answer, scored) = scored();
        let c = plan(
            Endpoint::Chat,
            &request,
            &answer,
            std::slice::from_ref(&scored),
            &policy(None, Some(-5.0)),
        )
        .expect("a continuation");
        assert_eq!(c.kept, "The answer is");
        assert_eq!(c.prompt, "<u>2+2?</u><a>The answer is");
        assert_eq!((c.kept_tokens, c.scored_tokens, c.max_tokens), (3, 6, 17));
        assert_eq!(c.header(), "kept=3/6");
        // The mean alone failed: the first token under it.
        let c = plan(
            Endpoint::Chat,
            &request,
            &answer,
            &[scored],
            &policy(Some(-0.25), None),
        )
        .expect("a continuation");
        assert_eq!(c.kept, "The answer");
    }

    #[test]
    fn what_a_completions_request_cannot_stand_in_for_escalates_from_scratch() {
        let (request, answer, scored) = scored();
        let p = policy(None, Some(-5.0));
        let with = |key: &str, value: Value| {
            let mut r = request.clone();
            r[key] = value;
            plan(Endpoint::Chat, &r, &answer, std::slice::from_ref(&scored), &p)
        };
        assert!(with("stream", json!(true)).is_none());
        assert!(with("logprobs", json!(true)).is_none());
        assert!(with("n", json!(2)).is_none());
        assert!(with("response_format", json!({"type": "json_object"})).is_none());
        assert!(with("tools", json!([{"type": "function", "function": {"name": "f"}}])).is_none());
        assert!(with("max_tokens", json!(3)).is_none(), "nothing left to write");
        assert!(with("response_format", json!({"type": "text"})).is_some());
        let mut unbounded = request.clone();
        unbounded.as_object_mut().map(|o| o.remove("max_tokens"));
        assert!(plan(
            Endpoint::Chat,
            &unbounded,
            &answer,
            std::slice::from_ref(&scored),
            &p
        )
        .is_none());
        assert!(plan(
            Endpoint::Completions,
            &request,
            &answer,
            std::slice::from_ref(&scored),
            &p
        )
        .is_none());
        // The first token rejected: nothing to keep.
        let mut first = scored.clone();
        first.tokens[0].1 = -9.0;
        assert!(plan(Endpoint::Chat, &request, &answer, &[first], &p).is_none());
        // A template that rewrote the content.
        let other = json!({"choices": [{"message": {"role": "assistant", "content": "An answer"}}]});
        assert!(plan(Endpoint::Chat, &request, &other, &[scored], &p).is_none());
    }

    #[test]
    fn the_chat_answer_joins_the_kept_text_and_counts_it_as_completion() {
        let (request, answer, scored) = scored();
        let c = plan(
            Endpoint::Chat,
            &request,
            &answer,
            &[scored],
            &policy(None, Some(-5.0)),
        )
        .expect("plan");
        let rest = json!({"model": "large", "choices": [{"text": " 4.", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}});
        let chat = chat_answer(&rest, &c);
        assert_eq!(chat["choices"][0]["message"]["content"], "The answer is 4.");
        assert_eq!(chat["choices"][0]["finish_reason"], "stop");
        assert_eq!(chat["model"], "large");
        assert_eq!(
            chat["usage"],
            json!({"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11})
        );
    }
}
