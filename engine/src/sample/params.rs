//! What a request asks of sampling and stopping, with the OpenAI API's defaults and vLLM's
//! extensions (top_k, min_p, repetition_penalty, min_tokens, stop_token_ids, ignore_eos).
//!
//! A plain struct: the server maps its JSON onto it (OpenAI field names are kept) and calls
//! [`SamplingParams::validate`] before anything is scheduled, so the sampler and the stop
//! checker can trust the ranges.

use std::collections::HashMap;

use crate::error::{EngineError, Result};
use crate::sample::constraint::ConstraintSpec;

/// Temperatures below this sample greedily (vLLM's `_SAMPLING_EPS`): dividing by a tiny
/// temperature would overflow the logits to infinity, and the limit is the argmax anyway.
pub const GREEDY_TEMPERATURE_EPS: f32 = 1e-5;

/// OpenAI's cap on `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `logit_bias` values must lie in `-LIMIT..=LIMIT` (OpenAI's range; a request outside it is a
/// 400). The sampler clamps to it too, for callers that skip [`SamplingParams::validate`].
pub const LOGIT_BIAS_LIMIT: f32 = 100.0;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Completions to generate for the prompt.
    pub n: usize,
    /// Softmax temperature; 0 (or below [`GREEDY_TEMPERATURE_EPS`]) means greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches top_p.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 turns it off.
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` times the most likely token's.
    pub min_p: f32,
    /// OpenAI: subtracted once from the logit of every token present in the output so far.
    pub presence_penalty: f32,
    /// OpenAI: subtracted from a token's logit once per occurrence in the output so far.
    pub frequency_penalty: f32,
    /// HF/vLLM: for tokens in the prompt or output, positive logits are divided by it and
    /// negative ones multiplied. 1 turns it off.
    pub repetition_penalty: f32,
    /// Added to the logit of a token id (values clamped to -100..=100 when applied).
    pub logit_bias: HashMap<u32, f32>,
    /// Seeds this sequence's own RNG; `None` draws a fresh seed.
    pub seed: Option<u64>,
    /// Return the chosen token's log-probability.
    pub logprobs: bool,
    /// Also return this many most likely alternatives per position (0..=20).
    pub top_logprobs: usize,
    /// Return the logprob of every prompt token after the first, given the tokens before it,
    /// with this many alternatives (0..=20). Such a prompt is computed in full: no prefix-cache
    /// hits, since the logits of cached positions are never computed.
    pub prompt_logprobs: Option<usize>,
    /// Output must match this schema or grammar (constrained decoding). The grammar decides
    /// where the output ends: `ignore_eos` and `min_tokens` do not apply to it.
    pub constraint: Option<ConstraintSpec>,
    /// Generated-token limit; `None` means until the model's context is full.
    pub max_tokens: Option<usize>,
    /// EOS and stop conditions are ignored until this many tokens have been generated.
    pub min_tokens: usize,
    /// Generation stops before the first occurrence of any of these strings (not returned).
    pub stop: Vec<String>,
    /// Generation stops after any of these ids (their text is not returned).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's EOS tokens.
    pub ignore_eos: bool,
    /// Leave special tokens out of the returned text.
    pub skip_special_tokens: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            n: 1,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: HashMap::new(),
            seed: None,
            logprobs: false,
            top_logprobs: 0,
            prompt_logprobs: None,
            constraint: None,
            max_tokens: None,
            min_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            skip_special_tokens: true,
        }
    }
}

fn invalid(param: &str, message: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest {
        param: param.to_string(),
        message: message.into(),
    }
}

impl SamplingParams {
    /// Greedy decoding, otherwise the defaults.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE_EPS
    }

    /// The parameters of the `index`-th of the `n` completions: each runs as its own sequence,
    /// and with a seed they must not all draw the same tokens, so child `i` uses `seed + i`
    /// (what vLLM does for parallel sampling).
    pub fn for_child(&self, index: usize) -> Self {
        Self {
            n: 1,
            seed: self.seed.map(|s| s.wrapping_add(index as u64)),
            ..self.clone()
        }
    }

    /// Checks every range against the OpenAI / vLLM definitions. `vocab_size` is the width of
    /// the model's logits, which token ids (logit_bias, stop_token_ids) must index.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        if self.n < 1 {
            return Err(invalid("n", format!("n must be at least 1, got {}", self.n)));
        }
        // `!(a..=b).contains(x)` is also true for NaN, which JSON cannot carry but Rust can.
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(invalid(
                "temperature",
                format!("temperature must be between 0 and 2, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {}", self.top_p),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(invalid(
                "min_p",
                format!("min_p must be in [0, 1], got {}", self.min_p),
            ));
        }
        for (param, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(invalid(
                    param,
                    format!("{param} must be between -2 and 2, got {value}"),
                ));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(invalid(
                "repetition_penalty",
                format!(
                    "repetition_penalty must be greater than 0, got {}",
                    self.repetition_penalty
                ),
            ));
        }
        for (&id, &bias) in &self.logit_bias {
            if id as usize >= vocab_size {
                return Err(invalid(
                    "logit_bias",
                    format!("logit_bias: token id {id} is out of vocabulary (size {vocab_size})"),
                ));
            }
            if !(-LOGIT_BIAS_LIMIT..=LOGIT_BIAS_LIMIT).contains(&bias) {
                return Err(invalid(
                    "logit_bias",
                    format!(
                        "logit_bias for token {id} must be between -{LOGIT_BIAS_LIMIT} and \
                         {LOGIT_BIAS_LIMIT}, got {bias}"
                    ),
                ));
            }
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(invalid(
                "top_logprobs",
                format!(
                    "top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {}",
                    self.top_logprobs
                ),
            ));
        }
        if let Some(k) = self.prompt_logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(invalid(
                "prompt_logprobs",
                format!("prompt_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
            ));
        }
        if self.top_logprobs > 0 && !self.logprobs {
            return Err(invalid(
                "top_logprobs",
                "top_logprobs requires logprobs to be true",
            ));
        }
        if self.max_tokens == Some(0) {
            return Err(invalid("max_tokens", "max_tokens must be at least 1, got 0"));
        }
        if let Some(max) = self.max_tokens.filter(|&max| self.min_tokens > max) {
            return Err(invalid(
                "min_tokens",
                format!(
                    "min_tokens ({}) must not exceed max_tokens ({max})",
                    self.min_tokens
                ),
            ));
        }
        // An empty stop string would match before any text and end every completion at once.
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "stop cannot contain an empty string"));
        }
        if let Some(id) = self.stop_token_ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(invalid(
                "stop_token_ids",
                format!("stop_token_ids: token id {id} is out of vocabulary (size {vocab_size})"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults with one change.
    fn with(change: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        change(&mut p);
        p
    }

    #[test]
    fn defaults_match_openai() {
        let p = SamplingParams::default();
        assert_eq!(
            (p.n, p.temperature, p.top_p, p.top_k, p.min_p),
            (1, 1.0, 1.0, 0, 0.0)
        );
        let penalties = (p.presence_penalty, p.frequency_penalty, p.repetition_penalty);
        assert_eq!(penalties, (0.0, 0.0, 1.0));
        assert!(p.skip_special_tokens && !p.ignore_eos && !p.logprobs && !p.is_greedy());
        assert!(p.validate(10).is_ok());
        assert!(SamplingParams::greedy().is_greedy());
    }

    #[test]
    fn each_bad_value_names_its_param() {
        let cases = [
            (with(|p| p.n = 0), "n", "n must be at least 1"),
            (
                with(|p| p.temperature = 2.5),
                "temperature",
                "temperature must be between 0 and 2",
            ),
            (with(|p| p.temperature = -0.1), "temperature", "between 0 and 2"),
            (
                with(|p| p.temperature = f32::NAN),
                "temperature",
                "between 0 and 2",
            ),
            (with(|p| p.top_p = 0.0), "top_p", "top_p must be in (0, 1]"),
            (with(|p| p.top_p = 1.01), "top_p", "top_p must be in (0, 1]"),
            (with(|p| p.min_p = 1.5), "min_p", "min_p must be in [0, 1]"),
            (
                with(|p| p.presence_penalty = 2.1),
                "presence_penalty",
                "between -2 and 2",
            ),
            (
                with(|p| p.frequency_penalty = -3.0),
                "frequency_penalty",
                "between -2 and 2",
            ),
            (
                with(|p| p.repetition_penalty = 0.0),
                "repetition_penalty",
                "greater than 0",
            ),
            (
                with(|p| p.repetition_penalty = f32::INFINITY),
                "repetition_penalty",
                "greater than 0",
            ),
            (
                with(|p| p.logit_bias = [(10, 1.0)].into()),
                "logit_bias",
                "token id 10 is out of vocabulary (size 10)",
            ),
            (
                with(|p| p.logit_bias = [(3, f32::NAN)].into()),
                "logit_bias",
                "between -100 and 100, got NaN",
            ),
            (
                with(|p| p.logit_bias = [(3, 100.5)].into()),
                "logit_bias",
                "between -100 and 100, got 100.5",
            ),
            (
                with(|p| p.logit_bias = [(3, -101.0)].into()),
                "logit_bias",
                "between -100 and 100, got -101",
            ),
            (
                with(|p| p.logit_bias = [(0, f32::NEG_INFINITY)].into()),
                "logit_bias",
                "between -100 and 100, got -inf",
            ),
            (
                with(|p| (p.logprobs, p.top_logprobs) = (true, 21)),
                "top_logprobs",
                "between 0 and 20",
            ),
            (with(|p| p.top_logprobs = 2), "top_logprobs", "requires logprobs"),
            (
                with(|p| p.prompt_logprobs = Some(21)),
                "prompt_logprobs",
                "between 0 and 20",
            ),
            (with(|p| p.max_tokens = Some(0)), "max_tokens", "at least 1"),
            (
                with(|p| (p.max_tokens, p.min_tokens) = (Some(3), 4)),
                "min_tokens",
                "must not exceed max_tokens",
            ),
            (
                with(|p| p.stop = vec!["a".into(), String::new()]),
                "stop",
                "empty string",
            ),
            (
                with(|p| p.stop_token_ids = vec![1, 12]),
                "stop_token_ids",
                "token id 12 is out of vocabulary",
            ),
        ];
        for (params, want_param, want_message) in cases {
            match params.validate(10) {
                Err(EngineError::InvalidRequest { param, message }) => {
                    assert_eq!(param, want_param, "{message}");
                    assert!(
                        message.contains(want_message),
                        "{message:?} lacks {want_message:?}"
                    );
                    // What a client sees is the message alone: it must name the parameter.
                    assert!(message.contains(want_param), "{message:?}");
                }
                other => panic!("{params:?}: expected InvalidRequest, got {other:?}"),
            }
        }
    }

    #[test]
    fn edge_values_are_accepted() {
        let ok = [
            with(|p| (p.temperature, p.top_p) = (0.0, 1.0)),
            with(|p| (p.temperature, p.top_p, p.min_p) = (2.0, 1e-6, 1.0)),
            with(|p| (p.presence_penalty, p.frequency_penalty) = (-2.0, 2.0)),
            // The ends of OpenAI's range (beyond it: refused, above).
            with(|p| p.logit_bias = [(9, 100.0), (0, -100.0)].into()),
            with(|p| (p.logprobs, p.top_logprobs) = (true, 20)),
            with(|p| (p.max_tokens, p.min_tokens) = (Some(4), 4)),
            with(|p| p.top_k = 1_000_000),
        ];
        for p in ok {
            assert!(p.validate(10).is_ok(), "{p:?}");
        }
    }

    #[test]
    fn children_get_distinct_seeds() {
        let p = with(|p| (p.n, p.seed) = (3, Some(u64::MAX)));
        let seeds: Vec<_> = (0..3).map(|i| p.for_child(i).seed).collect();
        assert_eq!(seeds, vec![Some(u64::MAX), Some(0), Some(1)]);
        assert_eq!(p.for_child(2).n, 1);
        assert_eq!(SamplingParams::default().for_child(1).seed, None);
    }
}
