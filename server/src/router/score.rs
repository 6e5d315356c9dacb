//! Score mode (`verify = "score"`): the fallback reads the cheap tier's answer instead of
//! writing its own. One prefill of the conversation and the answer, as the fallback's own chat
//! template renders them, gives the fallback's logprob of every answer token (a completions
//! request with `echo` and `logprobs`, which a local model and a remote OpenAI-compatible server
//! such as vLLM or wick answer alike). The answer stands where their mean and minimum clear the
//! policy's `min_mean_logprob` and `min_token_logprob`; otherwise the request escalates. Checking
//! costs one forward pass over tokens the fallback would have had to read anyway, where
//! answering costs one per token; and the models may have different tokenizers, since the text
//! is what is scored.
//!
//! Where the fallback cannot be asked (unreachable, breaker open), the cheap answer stands and
//! `x-wick-failover` says so. Where the answer cannot be scored (a completions prompt that is
//! not one string, a scoring prompt over the fallback's context), the request escalates.

use axum::http::HeaderName;
use serde_json::{json, Value};
use wick_config::RoutePolicy;

use super::backend::{Backend, BackendFailure, BackendKind, Completed};
use super::metrics::RouterMetrics;
use super::policy::Escalation;
use super::trail::Trail;
use super::{Route, Tier};
use crate::api::errors::ApiError;
use crate::api::local_model::LocalModels;
use crate::api::openai::{ChatCompletionRequest, ChatMessageIn};
use crate::api::service::Endpoint;
use crate::api::validation;

/// `mean=-0.412, min=-3.207, tokens=12`: the fallback's logprobs over the cheap answer.
pub const SCORE_HEADER: HeaderName = HeaderName::from_static("x-wick-score");

/// The fallback's logprobs over an answer (the worst of its choices).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// The lowest of the choices' mean token logprobs.
    pub mean: f64,
    /// The lowest token logprob of any choice.
    pub min: f64,
    /// Answer tokens scored, over all choices.
    pub tokens: usize,
    /// Tokens the fallback read to score (the conversations and the answers).
    pub prefill_tokens: u64,
}

impl Score {
    pub fn header(&self) -> String {
        format!(
            "mean={:.3}, min={:.3}, tokens={}",
            self.mean, self.min, self.tokens
        )
    }

    /// Why the answer does not stand under `policy`, if it does not.
    pub fn judge(&self, policy: &RoutePolicy) -> Option<Escalation> {
        if policy.min_mean_logprob.is_some_and(|m| self.mean < m) {
            Some(Escalation::LowScoreMean)
        } else if policy.min_token_logprob.is_some_and(|m| self.min < m) {
            Some(Escalation::LowScoreToken)
        } else {
            None
        }
    }
}

/// One choice's answer as the fallback scored it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredAnswer {
    pub text: ScoringText,
    /// Each answer token's byte offset in `text.text` and its logprob.
    pub tokens: Vec<(usize, f64)>,
    /// Tokens the fallback read (the conversation and the answer).
    pub prefill_tokens: u64,
}

impl Score {
    /// The worst of the choices' scores.
    pub fn of(answers: &[ScoredAnswer]) -> Option<Score> {
        answers
            .iter()
            .map(|a| {
                let n = a.tokens.len().max(1) as f64;
                Score {
                    mean: a.tokens.iter().map(|t| t.1).sum::<f64>() / n,
                    min: a.tokens.iter().map(|t| t.1).fold(f64::INFINITY, f64::min),
                    tokens: a.tokens.len(),
                    prefill_tokens: a.prefill_tokens,
                }
            })
            .reduce(|t, s| Score {
                mean: t.mean.min(s.mean),
                min: t.min.min(s.min),
                tokens: t.tokens + s.tokens,
                prefill_tokens: t.prefill_tokens + s.prefill_tokens,
            })
    }
}

/// The text the fallback reads, and the byte offset where the answer starts in it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringText {
    pub text: String,
    pub answer_start: usize,
}

/// Score mode's check of a cheap tier's whole answer that passed the policy's other checks, on
/// the route's last tier: `None`, it stands (scored well, or the fallback could not be asked:
/// then `x-wick-failover` says so); else why it escalates. Counts the outcome, and the scoring
/// prefill as the fallback's work.
pub(super) async fn verify(
    metrics: &RouterMetrics,
    route: &Route,
    local: &LocalModels,
    endpoint: Endpoint,
    request: &Value,
    answer: &Value,
    trail: &mut Trail,
) -> Option<Escalation> {
    let Tier {
        backend: fallback,
        breaker,
    } = route.tiers.last()?;
    let outcome = |o: &str| metrics.verifications.with_label_values(&[&route.name, o]).inc();
    let unavailable = |trail: &mut Trail, reason: &str| {
        metrics.failed_over(trail, route, &fallback.id, reason);
        outcome("unavailable");
    };
    if !breaker.allow() {
        unavailable(trail, "breaker_open");
        return None;
    }
    match score(local, fallback, endpoint, request, answer).await {
        Err(f) => {
            tracing::warn!(route = %route.name, backend = %fallback.id, "scoring failed, the cheap answer stands: {f}");
            breaker.record_failure();
            unavailable(trail, f.reason());
            None
        }
        Ok(Err(why)) => {
            breaker.record_success();
            tracing::debug!(route = %route.name, "unscorable answer escalates: {why}");
            outcome("unscorable");
            Some(Escalation::Unscorable)
        }
        Ok(Ok(answers)) => {
            breaker.record_success();
            let s = Score::of(&answers)?;
            trail.score = Some(s);
            trail.fallback.scored(s.prefill_tokens);
            metrics.fallback_counters(route)[0].inc_by(s.prefill_tokens);
            let verdict = s.judge(&route.policy);
            outcome(if verdict.is_some() { "rejected" } else { "accepted" });
            if verdict.is_some() {
                trail.continuation =
                    super::continuation::plan(endpoint, request, answer, &answers, &route.policy);
            }
            verdict
        }
    }
}

/// Scores `answer` (a cheap tier's whole response to `request`) on `fallback`, each choice
/// (`Err` inside: why it cannot be scored). `Err`: the fallback could not be asked.
async fn score(
    local: &LocalModels,
    fallback: &Backend,
    endpoint: Endpoint,
    request: &Value,
    answer: &Value,
) -> Result<Result<Vec<ScoredAnswer>, String>, BackendFailure> {
    let texts = match scoring_texts(local, fallback, endpoint, request, answer) {
        Ok(t) if t.is_empty() => return Ok(Err("the answer has no choices".into())),
        Ok(t) => t,
        Err(why) => return Ok(Err(why)),
    };
    let asks = texts.into_iter().map(|t| score_one(local, fallback, t));
    let mut answers = Vec::new();
    for result in futures_util::future::join_all(asks).await {
        match result? {
            Ok(a) => answers.push(a),
            Err(why) => return Ok(Err(why)),
        }
    }
    Ok(Ok(answers))
}

/// One choice's scoring request: the prompt echoed with its logprobs, one token generated
/// (the least a completions request generates).
async fn score_one(
    local: &LocalModels,
    fallback: &Backend,
    text: ScoringText,
) -> Result<Result<ScoredAnswer, String>, BackendFailure> {
    let body = json!({"prompt": text.text, "echo": true, "logprobs": 0, "max_tokens": 1,
        "temperature": 0.0});
    let json = match fallback.complete(local, body, "the scoring answer").await? {
        Completed::Answer(json) => json,
        Completed::Refused(status, message) => {
            // A prompt over the fallback's context aside, a refusal is the setup's (a remote
            // that serves another model name, or no `echo` with `logprobs`): worth a warning.
            tracing::warn!(backend = %fallback.id, %status, "the fallback refused to score an answer: {message}");
            return Ok(Err(format!(
                "the fallback refused to score ({status}): {message}"
            )));
        }
    };
    Ok(
        answer_logprobs(&json, &text).map(|(tokens, prefill_tokens)| ScoredAnswer {
            text,
            tokens,
            prefill_tokens,
        }),
    )
}

/// The echoed tokens from `text.answer_start` on, each with its byte offset in `text.text` and
/// its logprob (OpenAI's legacy `logprobs`: `token_logprobs` and `text_offset`; the prompt's are
/// the first `usage.prompt_tokens`), and that count.
pub fn answer_logprobs(response: &Value, text: &ScoringText) -> Result<(Vec<(usize, f64)>, u64), String> {
    let logprobs = response.pointer("/choices/0/logprobs");
    let values = logprobs
        .and_then(|l| l.get("token_logprobs"))
        .and_then(Value::as_array);
    let offsets = logprobs
        .and_then(|l| l.get("text_offset"))
        .and_then(Value::as_array);
    let prompt_tokens = response.pointer("/usage/prompt_tokens").and_then(Value::as_u64);
    let (Some(values), Some(offsets), Some(prompt_tokens)) = (values, offsets, prompt_tokens) else {
        return Err("the fallback's answer has no echoed logprobs".into());
    };
    let n = (prompt_tokens as usize).min(values.len()).min(offsets.len());
    let offsets: Vec<usize> = offsets[..n]
        .iter()
        .map(|o| o.as_u64().map_or(usize::MAX, |o| o as usize))
        .collect();
    let tokens = logprobs.and_then(|l| l.get("tokens")).and_then(Value::as_array);
    let offsets = byte_offsets(offsets, tokens, &text.text);
    let scored: Vec<(usize, f64)> = values[..n]
        .iter()
        .zip(offsets)
        .filter_map(|(v, o)| Some((o, v.as_f64()?)))
        .filter(|&(o, _)| o >= text.answer_start && o != usize::MAX)
        .collect();
    if scored.is_empty() {
        return Err("the answer has no tokens to score".into());
    }
    Ok((scored, prompt_tokens))
}

/// The prompt tokens' offsets as byte offsets into `text`: wick counts bytes, a server in
/// Python (vLLM) characters. Where the text is not ASCII the last token's end tells which.
fn byte_offsets(offsets: Vec<usize>, tokens: Option<&Vec<Value>>, text: &str) -> Vec<usize> {
    let last = offsets.last().copied().zip(
        tokens
            .and_then(|t| t.get(offsets.len().checked_sub(1)?))
            .and_then(Value::as_str),
    );
    let Some((offset, token)) = last.filter(|_| !text.is_ascii()) else {
        return offsets;
    };
    let in_chars = offset.checked_add(token.chars().count()) == Some(text.chars().count())
        && offset.checked_add(token.len()) != Some(text.len());
    if !in_chars {
        return offsets;
    }
    let bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).chain([text.len()]).collect();
    offsets
        .into_iter()
        .map(|o| bytes.get(o).copied().unwrap_or(usize::MAX))
        .collect()
}

/// The texts to score, one per choice of `answer`.
fn scoring_texts(
    local: &LocalModels,
    fallback: &Backend,
    endpoint: Endpoint,
    request: &Value,
    answer: &Value,
) -> Result<Vec<ScoringText>, String> {
    let choices = answer
        .get("choices")
        .and_then(Value::as_array)
        .ok_or("the answer has no choices")?;
    match endpoint {
        Endpoint::Completions => {
            let prompt = request
                .get("prompt")
                .and_then(Value::as_str)
                .ok_or("the prompt is not one string")?;
            let echoed = request.get("echo").and_then(Value::as_bool).unwrap_or(false);
            choices
                .iter()
                .map(|c| {
                    let text = c.get("text").and_then(Value::as_str).unwrap_or_default();
                    // With `echo` the answer's text starts with the prompt.
                    let text = if echoed {
                        text.strip_prefix(prompt).unwrap_or(text)
                    } else {
                        text
                    };
                    Ok(ScoringText {
                        text: format!("{prompt}{text}"),
                        answer_start: prompt.len(),
                    })
                })
                .collect()
        }
        Endpoint::Chat => {
            let req: ChatCompletionRequest = validation::from_value(request).map_err(message)?;
            let render = |req: &ChatCompletionRequest, generation_prompt: bool| {
                chat_text(local, fallback, req, generation_prompt)
            };
            let prefix = render(&req, true)?;
            choices
                .iter()
                .map(|c| {
                    let message = c.get("message").ok_or("a choice has no message")?;
                    chat_scoring_text(&req, &prefix, message, render)
                })
                .collect()
        }
    }
}

/// The conversation ending in `message` (the answer) as the fallback reads it: rendered with
/// the answer as the last assistant turn (so its end-of-turn marker and tool-call markup are
/// scored too), where that rendering extends `prefix` (the conversation up to the generation
/// prompt); else `prefix` and the answer's text.
fn chat_scoring_text(
    req: &ChatCompletionRequest,
    prefix: &str,
    message: &Value,
    render: impl Fn(&ChatCompletionRequest, bool) -> Result<String, String>,
) -> Result<ScoringText, String> {
    let content = message.get("content").and_then(Value::as_str).unwrap_or_default();
    let calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty());
    let mut turn = json!({"role": "assistant", "content": content});
    if let Some(calls) = calls {
        turn["tool_calls"] = Value::Array(calls.clone());
    }
    let turn: ChatMessageIn = serde_json::from_value(turn).map_err(|e| e.to_string())?;
    let mut answered = req.clone();
    answered.messages.push(turn);
    match render(&answered, false) {
        Ok(full) if full.starts_with(prefix) && full.len() > prefix.len() => Ok(ScoringText {
            text: full,
            answer_start: prefix.len(),
        }),
        _ if !content.is_empty() => Ok(ScoringText {
            text: format!("{prefix}{content}"),
            answer_start: prefix.len(),
        }),
        _ => Err("the answer's turn does not extend the conversation as rendered".into()),
    }
}

/// A chat request as the fallback's template renders it (with its tools).
fn chat_text(
    local: &LocalModels,
    fallback: &Backend,
    req: &ChatCompletionRequest,
    generation_prompt: bool,
) -> Result<String, String> {
    let messages = validation::chat_messages(&req.messages).map_err(message)?;
    let held;
    let (template, format) = match &fallback.kind {
        BackendKind::Local => {
            held = local.get(&fallback.model).map_err(message)?;
            (held.template.as_ref(), held.tool_format)
        }
        BackendKind::Remote(_) => (fallback.template.as_deref(), fallback.tool_format),
    };
    let template = template.ok_or("the fallback has no chat template")?;
    crate::tools::prepare_with(template, format, req, messages, &local.limits, generation_prompt)
        .map(|p| p.prompt)
        .map_err(message)
}

fn message(e: ApiError) -> String {
    e.body.error.message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echoed(tokens: &[(&str, Option<f64>)], prompt_tokens: u64) -> Value {
        let mut offset = 0;
        let offsets: Vec<usize> = tokens
            .iter()
            .map(|(t, _)| {
                let o = offset;
                offset += t.len();
                o
            })
            .collect();
        let values: Vec<Option<f64>> = tokens.iter().map(|(_, l)| *l).collect();
        json!({"choices": [{"logprobs": {"tokens": tokens.iter().map(|t| t.0).collect::<Vec<_>>(),
            "token_logprobs": values, "text_offset": offsets}}],
            "usage": {"prompt_tokens": prompt_tokens}})
    }

    #[test]
    fn only_the_answers_tokens_count_and_not_the_generated_one() {
        // "Q: 2+2?\nA:" is the conversation (10 bytes); " 4" and "." the answer; "\n" the
        // token the scoring request generated.
        let response = echoed(
            &[
                ("Q:", None),
                (" 2+2?", Some(-3.0)),
                ("\nA:", Some(-2.0)),
                (" 4", Some(-0.5)),
                (".", Some(-1.5)),
                ("\n", Some(-9.0)),
            ],
            5,
        );
        let text = ScoringText {
            text: "Q: 2+2?\nA: 4.\n".into(),
            answer_start: 10,
        };
        let (tokens, prefill) = answer_logprobs(&response, &text).expect("scored");
        assert_eq!(tokens, vec![(10, -0.5), (12, -1.5)]);
        let answer = ScoredAnswer {
            text: text.clone(),
            tokens,
            prefill_tokens: prefill,
        };
        let s = Score::of(std::slice::from_ref(&answer)).expect("a score");
        assert_eq!((s.mean, s.min, s.tokens, s.prefill_tokens), (-1.0, -1.5, 2, 5));
        assert_eq!(s.header(), "mean=-1.000, min=-1.500, tokens=2");
        // Two choices: the worse mean and the lowest token; the tokens of both.
        let other = ScoredAnswer {
            tokens: vec![(10, -0.1), (12, -2.5), (13, -0.1)],
            ..answer.clone()
        };
        let s = Score::of(&[answer, other]).expect("a score");
        assert_eq!((s.mean, s.min, s.tokens, s.prefill_tokens), (-1.0, -2.5, 5, 10));
        let past = ScoringText {
            answer_start: 14,
            ..text.clone()
        };
        assert!(answer_logprobs(&response, &past).is_err());
        assert!(answer_logprobs(&json!({"choices": []}), &text).is_err());
    }

    /// A server that counts offsets in characters (vLLM): on a text that is not ASCII they
    /// become byte offsets, so the answer starts where wick's own would put it.
    #[test]
    fn character_offsets_become_byte_offsets() {
        let text = ScoringText {
            text: "¿Qué? Sí.\n".into(),
            answer_start: "¿Qué? ".len(),
        };
        let tokens = [
            ("¿", None),
            ("Qué", Some(-1.0)),
            ("? ", Some(-1.0)),
            ("Sí", Some(-0.2)),
            (".", Some(-0.4)),
            ("\n", Some(-0.1)),
        ];
        let chars = echoed(&tokens, 6);
        let mut offset = 0;
        let in_chars: Vec<usize> = tokens
            .iter()
            .map(|(t, _)| {
                let o = offset;
                offset += t.chars().count();
                o
            })
            .collect();
        let mut by_chars = chars.clone();
        by_chars["choices"][0]["logprobs"]["text_offset"] = json!(in_chars);
        let bytes = answer_logprobs(&chars, &text).expect("bytes");
        assert_eq!(answer_logprobs(&by_chars, &text).expect("chars"), bytes);
        assert_eq!(
            bytes.0.iter().map(|t| t.1).collect::<Vec<_>>(),
            vec![-0.2, -0.4, -0.1]
        );
    }

    #[test]
    fn thresholds_judge_the_mean_then_the_lowest_token() {
        let s = Score {
            mean: -0.8,
            min: -4.0,
            tokens: 3,
            prefill_tokens: 9,
        };
        let policy = |mean, token| RoutePolicy {
            min_mean_logprob: mean,
            min_token_logprob: token,
            ..RoutePolicy::default()
        };
        assert_eq!(s.judge(&policy(Some(-1.0), Some(-5.0))), None);
        assert_eq!(
            s.judge(&policy(Some(-0.5), Some(-5.0))),
            Some(Escalation::LowScoreMean)
        );
        assert_eq!(
            s.judge(&policy(None, Some(-3.0))),
            Some(Escalation::LowScoreToken)
        );
        assert_eq!(s.judge(&policy(None, None)), None);
    }

    /// The answer's turn as ChatML renders it extends the conversation: the scored text is
    /// that rendering, the answer starting where the generation prompt ends.
    #[test]
    fn a_chat_answer_is_scored_as_the_fallbacks_template_renders_its_turn() {
        let template = crate::api::chat_template::ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                .into(),
            None,
            None,
        )
        .expect("template");
        let req: ChatCompletionRequest = serde_json::from_value(json!({"model": "m",
            "messages": [{"role": "user", "content": "2+2?"}]}))
        .expect("request");
        let render = |r: &ChatCompletionRequest, g: bool| {
            let messages = validation::chat_messages(&r.messages).map_err(message)?;
            template.render(&messages, g).map_err(|e| e.to_string())
        };
        let prefix = render(&req, true).expect("prefix");
        let message = json!({"role": "assistant", "content": "4"});
        let t = chat_scoring_text(&req, &prefix, &message, render).expect("text");
        assert_eq!(
            t.text,
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        );
        assert_eq!(&t.text[t.answer_start..], "4<|im_end|>\n");
    }
}
