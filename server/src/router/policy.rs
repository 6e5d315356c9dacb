//! The cascade's decision: does a cheap tier's complete answer stand, or does the request go to
//! the next tier (and why)? Reads only the OpenAI response JSON, so it works the same for the
//! local model and a remote one.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use wick_config::{RoutePolicy, VerifyMode};

use crate::api::service::Endpoint;
use crate::tools::json_schema::{Schema, SchemaError};

/// Why an answer was passed up to the next tier (`x-wick-escalation`, metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escalation {
    /// It stopped at `max_tokens` (or the context) before finishing.
    Length,
    /// A tool call that names no offered tool, or whose arguments do not parse as a JSON object
    /// or do not validate against the tool's `parameters` schema.
    InvalidToolCall,
    LowMeanLogprob,
    LowTokenLogprob,
    /// It matched an abstain pattern ("I don't know").
    Abstain,
    /// The prompt does not fit the tier's context (its 400 `context_length_exceeded`).
    Context,
    /// Score mode: the fallback's mean logprob over the answer is under `min_mean_logprob`.
    LowScoreMean,
    /// Score mode: a token of the answer is under `min_token_logprob` for the fallback.
    LowScoreToken,
    /// Score mode: the answer could not be scored (see `router::score`).
    Unscorable,
}

impl Escalation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::InvalidToolCall => "invalid_tool_call",
            Self::LowMeanLogprob => "low_mean_logprob",
            Self::LowTokenLogprob => "low_token_logprob",
            Self::Abstain => "abstain",
            Self::Context => "context",
            Self::LowScoreMean => "low_score_mean",
            Self::LowScoreToken => "low_score_token",
            Self::Unscorable => "unscorable",
        }
    }
}

/// Whether the policy reads the cheap tier's own token logprobs (the router then asks it for
/// them): in score mode its thresholds are the fallback's logprobs over the answer instead.
pub fn needs_logprobs(policy: &RoutePolicy) -> bool {
    !scores(policy) && (policy.min_mean_logprob.is_some() || policy.min_token_logprob.is_some())
}

/// Whether the fallback scores the cheap answer (`verify = "score"`).
pub fn scores(policy: &RoutePolicy) -> bool {
    policy.verify == Some(VerifyMode::Score)
}

/// The first reason, in the order checked, to escalate `response`; `None`: it stands.
/// `tools` are the request's (OpenAI's `{"type": "function", "function": {...}}` objects).
pub fn escalation(
    policy: &RoutePolicy,
    endpoint: Endpoint,
    response: &Value,
    tools: Option<&[Value]>,
) -> Option<Escalation> {
    let choices = response.get("choices").and_then(Value::as_array)?;
    for choice in choices {
        if policy.escalate_on_length && choice.get("finish_reason").and_then(Value::as_str) == Some("length")
        {
            return Some(Escalation::Length);
        }
        let message = choice.get("message");
        if policy.escalate_on_invalid_tool_call {
            let calls = message
                .and_then(|m| m.get("tool_calls"))
                .and_then(Value::as_array);
            if calls.is_some_and(|calls| calls.iter().any(|c| !valid_call(c, tools.unwrap_or_default()))) {
                return Some(Escalation::InvalidToolCall);
            }
        }
        let logprobs = token_logprobs(endpoint, choice);
        if !logprobs.is_empty() && !scores(policy) {
            let mean = logprobs.iter().sum::<f64>() / logprobs.len() as f64;
            if policy.min_mean_logprob.is_some_and(|min| mean < min) {
                return Some(Escalation::LowMeanLogprob);
            }
            let lowest = logprobs.iter().copied().fold(f64::INFINITY, f64::min);
            if policy.min_token_logprob.is_some_and(|min| lowest < min) {
                return Some(Escalation::LowTokenLogprob);
            }
        }
        let text = match endpoint {
            Endpoint::Chat => message.and_then(|m| m.get("content")),
            Endpoint::Completions => choice.get("text"),
        }
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_lowercase();
        if policy
            .abstain_patterns
            .iter()
            .any(|p| !p.is_empty() && text.contains(&p.to_lowercase()))
        {
            return Some(Escalation::Abstain);
        }
    }
    None
}

/// The generated tokens' logprobs, from chat's `logprobs.content[].logprob` or completions'
/// `logprobs.token_logprobs[]`.
pub(super) fn token_logprobs(endpoint: Endpoint, choice: &Value) -> Vec<f64> {
    let lp = choice.get("logprobs");
    match endpoint {
        Endpoint::Chat => lp
            .and_then(|l| l.get("content"))
            .and_then(Value::as_array)
            .map(|c| c.iter().filter_map(|t| t.get("logprob")?.as_f64()).collect()),
        Endpoint::Completions => lp
            .and_then(|l| l.get("token_logprobs"))
            .and_then(Value::as_array)
            .map(|c| c.iter().filter_map(Value::as_f64).collect()),
    }
    .unwrap_or_default()
}

/// A call names an offered tool and its arguments are a JSON object that validates against the
/// tool's `parameters` schema (full JSON Schema, [`crate::tools::json_schema`]; no schema: any object).
/// `strict` plays no part: a strict tool's schema already says what strict means (closed,
/// everything required), and the check is the schema's either way.
fn valid_call(call: &Value, tools: &[Value]) -> bool {
    let Some(function) = call.get("function") else {
        return false;
    };
    let Some(name) = function.get("name").and_then(Value::as_str) else {
        return false;
    };
    let Some(tool) = tools
        .iter()
        .filter_map(|t| t.get("function"))
        .find(|f| f.get("name").and_then(Value::as_str) == Some(name))
    else {
        return false;
    };
    let args: Option<Value> = function
        .get("arguments")
        .and_then(Value::as_str)
        .and_then(|a| serde_json::from_str(a).ok());
    let Some(args @ Value::Object(_)) = args else {
        return false;
    };
    let Some(schema) = tool.get("parameters").filter(|p| !p.is_null()) else {
        return true;
    };
    match Schema::compile(schema) {
        Ok(schema) => schema.is_valid(&args),
        Err(e) => {
            // The server cannot judge the call, which is no fault of the answer: it stands.
            uncompilable_schema(name, &e);
            true
        }
    }
}

/// Set once a tool schema failed to compile: a client sends the same tools with every request,
/// so only the first is a warning and the rest are debug lines.
static WARNED_UNCOMPILABLE: AtomicBool = AtomicBool::new(false);

fn uncompilable_schema(tool: &str, e: &SchemaError) {
    if WARNED_UNCOMPILABLE.swap(true, Ordering::Relaxed) {
        tracing::debug!(%tool, "tool call not validated: {e}");
    } else {
        tracing::warn!(%tool, "tool call not validated (later ones are logged at debug): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> RoutePolicy {
        RoutePolicy {
            min_mean_logprob: Some(-1.0),
            min_token_logprob: Some(-5.0),
            abstain_patterns: vec!["I don't know".into()],
            ..RoutePolicy::default()
        }
    }

    fn chat(content: &str, finish: &str, logprobs: &[f64]) -> Value {
        let lp: Vec<Value> = logprobs
            .iter()
            .map(|l| json!({"token": "x", "logprob": l}))
            .collect();
        json!({"choices": [{"index": 0, "finish_reason": finish,
            "message": {"role": "assistant", "content": content},
            "logprobs": {"content": lp}}]})
    }

    #[test]
    fn each_trigger_escalates_and_a_good_answer_stands() {
        let p = policy();
        let e = |r: &Value| escalation(&p, Endpoint::Chat, r, None);
        assert_eq!(e(&chat("Paris.", "stop", &[-0.1, -0.3])), None);
        assert_eq!(e(&chat("Paris", "length", &[-0.1])), Some(Escalation::Length));
        assert_eq!(
            e(&chat("Paris.", "stop", &[-2.0, -1.5])),
            Some(Escalation::LowMeanLogprob)
        );
        // Mean -0.38: only the one token under -5 escalates.
        let one_bad: Vec<f64> = [vec![-0.1; 20], vec![-6.0]].concat();
        assert_eq!(
            e(&chat("Paris.", "stop", &one_bad)),
            Some(Escalation::LowTokenLogprob)
        );
        assert_eq!(
            e(&chat("Sorry, I DON'T KNOW.", "stop", &[-0.1])),
            Some(Escalation::Abstain)
        );
        let lax = RoutePolicy {
            escalate_on_length: false,
            ..RoutePolicy::default()
        };
        assert_eq!(
            escalation(&lax, Endpoint::Chat, &chat("P", "length", &[-9.0]), None),
            None
        );
        let completion = json!({"choices": [{"text": "4", "finish_reason": "stop",
            "logprobs": {"token_logprobs": [-3.0], "tokens": ["4"]}}]});
        assert_eq!(
            escalation(&p, Endpoint::Completions, &completion, None),
            Some(Escalation::LowMeanLogprob)
        );
    }

    #[test]
    fn tool_calls_must_name_a_tool_and_carry_its_required_arguments() {
        let tools = [
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": false}}}),
        ];
        let with_call = |name: &str, args: &str| {
            json!({"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}]}}]})
        };
        let p = RoutePolicy::default();
        let e = |r: Value| escalation(&p, Endpoint::Chat, &r, Some(&tools));
        assert_eq!(e(with_call("get_weather", r#"{"city": "Paris"}"#)), None);
        for (name, args) in [
            ("get_weather", r#"{"city": "Paris""#),
            ("get_weather", r#"{}"#),
            ("get_weather", r#"{"city": "Paris", "unit": "C"}"#),
            ("get_time", r#"{"city": "Paris"}"#),
            ("get_weather", r#"["Paris"]"#),
        ] {
            assert_eq!(
                e(with_call(name, args)),
                Some(Escalation::InvalidToolCall),
                "{name} {args}"
            );
        }
    }

    /// The verdict on one call to `tool` with `args`: `true` when the answer stands.
    fn stands(tool: Value, args: &str) -> bool {
        let name = tool["function"]["name"].clone();
        let answer = json!({"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}]}}]});
        let verdict = escalation(&RoutePolicy::default(), Endpoint::Chat, &answer, Some(&[tool]));
        assert!(
            matches!(verdict, None | Some(Escalation::InvalidToolCall)),
            "{verdict:?}"
        );
        verdict.is_none()
    }

    fn tool(parameters: Value) -> Value {
        json!({"type": "function", "function": {"name": "book", "parameters": parameters}})
    }

    #[test]
    fn tool_arguments_are_validated_against_the_full_schema() {
        let booking = tool(json!({
            "type": "object",
            "properties": {
                "guests": {"type": "integer", "minimum": 1},
                "room": {"enum": ["single", "double"]},
                "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "dates": {"type": "array", "items": {"type": "string", "format": "date"}, "minItems": 1},
                "contact": {"type": "object", "required": ["email"],
                    "properties": {"email": {"type": "string"}, "phone": {"type": "string"}},
                    "additionalProperties": false}},
            "required": ["guests"]}));
        let ok = r#"{"guests": 2, "room": "double", "code": "LHR", "dates": ["2025-01-01"],
            "contact": {"email": "a@b.c"}}"#;
        assert!(stands(booking.clone(), ok));
        assert!(
            stands(booking.clone(), r#"{"guests": 1}"#),
            "optional keys may be left out"
        );
        for (why, args) in [
            ("type", r#"{"guests": "two"}"#),
            ("integer", r#"{"guests": 2.5}"#),
            ("minimum", r#"{"guests": 0}"#),
            ("enum", r#"{"guests": 2, "room": "suite"}"#),
            ("pattern", r#"{"guests": 2, "code": "lhr"}"#),
            ("array items", r#"{"guests": 2, "dates": ["2025-01-01", 3]}"#),
            ("minItems", r#"{"guests": 2, "dates": []}"#),
            ("nested required", r#"{"guests": 2, "contact": {"phone": "1"}}"#),
            ("nested type", r#"{"guests": 2, "contact": {"email": 5}}"#),
            (
                "nested closed",
                r#"{"guests": 2, "contact": {"email": "a@b.c", "fax": "2"}}"#,
            ),
            ("required", r#"{"room": "single"}"#),
        ] {
            assert!(!stands(booking.clone(), args), "{why}: {args}");
        }
    }

    #[test]
    fn no_schema_takes_any_object_and_a_broken_one_does_not_escalate() {
        let bare = json!({"type": "function", "function": {"name": "ping"}});
        assert!(stands(bare.clone(), r#"{"anything": [1, 2]}"#));
        assert!(stands(bare.clone(), "{}"));
        assert!(
            !stands(bare, "[1]"),
            "arguments are an object whatever the schema"
        );
        assert!(stands(tool(Value::Null), r#"{"x": 1}"#));
        // The server cannot compile it: not the answer's fault, so it stands if it parses.
        let broken = tool(json!({"type": "object", "properties": {"x": {"type": "strnig"}}}));
        assert!(stands(broken.clone(), r#"{"x": 1}"#));
        assert!(!stands(broken, r#"{"x": 1"#), "still has to parse");
    }

    #[test]
    fn strict_does_not_change_the_verdict() {
        let schema = json!({"type": "object", "properties": {"q": {"type": "string"}}});
        for strict in [json!(true), json!(false), Value::Null] {
            let mut t = tool(schema.clone());
            t["function"]["strict"] = strict.clone();
            assert!(stands(t.clone(), r#"{"q": "x", "extra": 1}"#), "strict {strict}");
            assert!(!stands(t, r#"{"q": 1}"#), "strict {strict}");
        }
    }
}
