//! When a sequence ends, and which of its text may be streamed yet.
//!
//! Fed each generated token with its text delta (from the incremental detokenizer), the
//! [`StopChecker`] answers with the text that is safe to emit now and, at the end, why the
//! sequence finished: `stop` (EOS unless ignore_eos, a stop token id, a stop string) or `length`
//! (max_tokens, or the model's context is full).
//!
//! Stop strings may span tokens and are never emitted (OpenAI returns the text before them). So
//! the checker holds back the longest suffix of the text that is still the beginning of some stop
//! string, and releases it once it cannot become one. When several stop strings match, the one
//! that is complete first (the earliest end; the longest on a tie) wins: that is where a client
//! reading the text character by character would stop, so the result does not depend on how the
//! text happens to be split into tokens.
//!
//! min_tokens follows vLLM: no stop condition is honoured until this many tokens have been
//! generated, the current one included. (The sampler masks EOS and stop ids one step longer, so
//! EOS can only come after `min_tokens` ordinary tokens.)

use crate::sample::params::SamplingParams;

/// OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What ended a sequence with [`FinishReason::Stop`] (vLLM reports it as `stop_reason`: none
/// for EOS, the id for a stop token, the string for a stop string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopMatch {
    Eos(u32),
    TokenId(u32),
    String(String),
}

/// The answer to one token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopStep {
    /// Text that may be emitted now (possibly empty).
    pub text: String,
    /// Set when this token ended the sequence; `text` then already holds everything left to emit.
    pub finish: Option<FinishReason>,
}

#[derive(Debug, Clone)]
pub struct StopChecker {
    stop: Vec<String>,
    stop_token_ids: Vec<u32>,
    /// Empty under ignore_eos.
    eos_token_ids: Vec<u32>,
    min_tokens: usize,
    max_tokens: usize,
    num_tokens: usize,
    /// Received but not emitted: it may be the beginning of a stop string.
    held: String,
    /// Everything emitted so far.
    text: String,
    finish: Option<FinishReason>,
    stop_match: Option<StopMatch>,
}

impl StopChecker {
    /// `prompt_len` and `max_model_len` bound the output by the context: without max_tokens a
    /// sequence runs until its context is full, and max_tokens cannot take it further.
    pub fn new(
        params: &SamplingParams,
        eos_token_ids: &[u32],
        prompt_len: usize,
        max_model_len: usize,
    ) -> Self {
        let context_room = max_model_len.saturating_sub(prompt_len);
        Self {
            // Empty strings are refused by validation; skipping them here keeps the matching
            // below free of the degenerate case.
            stop: params.stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            stop_token_ids: params.stop_token_ids.clone(),
            eos_token_ids: if params.ignore_eos {
                Vec::new()
            } else {
                eos_token_ids.to_vec()
            },
            min_tokens: params.min_tokens,
            max_tokens: params.max_tokens.map_or(context_room, |m| m.min(context_room)),
            num_tokens: 0,
            held: String::new(),
            text: String::new(),
            finish: None,
            stop_match: None,
        }
    }

    /// Takes the next generated token and its text. Once finished, further tokens are ignored
    /// (an empty step with the same finish reason).
    pub fn push(&mut self, token: u32, delta: &str) -> StopStep {
        if self.finish.is_some() {
            return StopStep {
                text: String::new(),
                finish: self.finish,
            };
        }
        self.num_tokens += 1;
        let honoured = self.num_tokens >= self.min_tokens;
        if honoured {
            let by_token = if self.eos_token_ids.contains(&token) {
                Some(StopMatch::Eos(token))
            } else if self.stop_token_ids.contains(&token) {
                Some(StopMatch::TokenId(token))
            } else {
                None
            };
            if let Some(m) = by_token {
                // The token's own text is not emitted; what was held back did not become a
                // stop string and is.
                let text = std::mem::take(&mut self.held);
                return self.end(text, FinishReason::Stop, Some(m));
            }
        }
        let before = self.held.len();
        self.held.push_str(delta);
        if honoured {
            if let Some((start, s)) = self.find_stop(before) {
                let text = self.held[..start].to_string();
                self.held.clear();
                return self.end(text, FinishReason::Stop, Some(StopMatch::String(s)));
            }
        }
        if self.num_tokens >= self.max_tokens {
            let text = std::mem::take(&mut self.held);
            return self.end(text, FinishReason::Length, None);
        }
        let keep = self.partial_stop_len();
        let text: String = self.held.drain(..self.held.len() - keep).collect();
        self.text.push_str(&text);
        StopStep { text, finish: None }
    }

    /// Releases the held-back text, for a sequence ended from outside (aborted, or cut short by
    /// the caller): it never became a stop string.
    pub fn flush(&mut self) -> String {
        let text = std::mem::take(&mut self.held);
        self.text.push_str(&text);
        text
    }

    /// All text emitted so far: the concatenation of every step's text and flush.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    pub fn stop_match(&self) -> Option<&StopMatch> {
        self.stop_match.as_ref()
    }

    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// The effective token limit (max_tokens capped by the context room).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokens the sequence may still generate before it ends by length (0 once finished).
    pub fn tokens_left(&self) -> usize {
        if self.finish.is_some() {
            0
        } else {
            self.max_tokens.saturating_sub(self.num_tokens)
        }
    }

    fn end(&mut self, text: String, reason: FinishReason, m: Option<StopMatch>) -> StopStep {
        self.text.push_str(&text);
        self.finish = Some(reason);
        self.stop_match = m;
        StopStep {
            text,
            finish: Some(reason),
        }
    }

    /// The stop string occurrence in `held` that ends first among those ending after byte
    /// `before` (the new text): `(start, string)`. Earlier matches were already ruled out, and
    /// everything emitted is known not to start one, so `held` is all that needs searching.
    fn find_stop(&self, before: usize) -> Option<(usize, String)> {
        let mut best: Option<(usize, usize, &String)> = None;
        for s in &self.stop {
            // A match ending after `before` starts at or after `before + 1 - len`, and on a
            // character boundary: round up to one.
            let mut from = (before + 1).saturating_sub(s.len());
            while !self.held.is_char_boundary(from) {
                from += 1;
            }
            let Some(at) = self.held.get(from..).and_then(|rest| rest.find(s.as_str())) else {
                continue;
            };
            let (start, end) = (from + at, from + at + s.len());
            if best.is_none_or(|(b_start, b_end, _)| (end, start) < (b_end, b_start)) {
                best = Some((start, end, s));
            }
        }
        best.map(|(start, _, s)| (start, s.clone()))
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn partial_stop_len(&self) -> usize {
        self.stop
            .iter()
            .map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&k| s.is_char_boundary(k) && self.held.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
