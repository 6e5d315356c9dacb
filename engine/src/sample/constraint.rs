//! Constrained decoding with llguidance: a request's JSON schema (or grammar) becomes a matcher
//! that, before every sampled token, says which tokens keep the output valid; the sampler masks
//! the rest. The output then always parses and validates, even from a small model.
//!
//! llguidance works on token *bytes*. Its `toktrie_hf_tokenizers` adapter is built against an
//! older `tokenizers` release than ours, so the bytes come from our tokenizer's JSON form through
//! llguidance's own `token_bytes_from_tokenizer_json` (byte-level BPE and byte-fallback
//! vocabularies; special tokens get llguidance's marker byte, so grammars never produce them).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{token_bytes_from_tokenizer_json, Matcher, ParserFactory};

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON Schema (`response_format: {"type": "json_schema", ...}`, tool arguments).
    JsonSchema(serde_json::Value),
    /// A Lark grammar in llguidance's dialect (which can embed JSON schemas).
    Lark(String),
    /// Free output until one of `triggers` is generated; from the first byte of the trigger on,
    /// the output must match `grammar` (a "lazy grammar": `tool_choice: "auto"` constrains a
    /// tool call once the model starts one in its format's markup).
    Triggered {
        triggers: Vec<String>,
        grammar: Box<ConstraintSpec>,
    },
}

/// Compiles [`ConstraintSpec`]s into matchers for one tokenizer. Built once per engine.
pub struct ConstraintCompiler {
    factory: ParserFactory,
}

impl ConstraintCompiler {
    /// `vocab_size` is the width of the model's logits (it may exceed the tokenizer's
    /// vocabulary: the extra ids are never allowed).
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self> {
        let env = TokenBytesEnv::new(tokenizer, vocab_size)?;
        let env: TokEnv = Arc::new(env);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::InvalidConfig(format!("constrained decoding: {e}")))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A fresh matcher for `spec`; a schema or grammar llguidance cannot compile is the
    /// request's fault and names `param`.
    pub fn compile(&self, spec: &ConstraintSpec, param: &str) -> Result<Constraint> {
        if let ConstraintSpec::Triggered { triggers, grammar } = spec {
            let inner = self.compile(grammar, param)?;
            if triggers.iter().any(String::is_empty) || triggers.is_empty() {
                return Err(EngineError::InvalidRequest {
                    param: param.to_string(),
                    message: "a triggered grammar needs non-empty triggers".into(),
                });
            }
            return Ok(Constraint {
                lazy: Some(Box::new(Lazy {
                    pristine: inner.matcher.clone(),
                    waiting: Waiting {
                        triggers: triggers.iter().map(|t| t.as_bytes().to_vec()).collect(),
                        ..Waiting::default()
                    },
                    triggered: false,
                })),
                matcher: inner.matcher,
            });
        }
        let grammar = match spec {
            ConstraintSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"})))
            }
            ConstraintSpec::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            ConstraintSpec::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            ConstraintSpec::Triggered { .. } => unreachable!("handled above"),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| EngineError::InvalidRequest {
                param: param.to_string(),
                message: format!("cannot build a grammar from {param}: {e}"),
            })?;
        Ok(Constraint {
            matcher: Matcher::new(Ok(parser)),
            lazy: None,
        })
    }
}

/// JSON laid out as Python's `json.dumps` does (`", "` and `": "`, no other whitespace) unless
/// the schema sets its own `x-guidance` options. llguidance's default allows whitespace anywhere,
/// and a small model then loops on newlines until `max_tokens` instead of closing the object.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
        });
    }
    schema
}

/// One sequence's position in its grammar.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    /// Set for a [`ConstraintSpec::Triggered`] grammar.
    lazy: Option<Box<Lazy>>,
}

#[derive(Clone)]
struct Lazy {
    /// The grammar at its start, to re-arm after a trigger whose continuation it rejected.
    pristine: Matcher,
    waiting: Waiting,
    /// A trigger started the grammar: it now decides every token.
    triggered: bool,
}

/// The output of a sequence under a [`ConstraintSpec::Triggered`] grammar, until a trigger.
#[derive(Clone, Default)]
struct Waiting {
    triggers: Vec<Vec<u8>>,
    tokens: Vec<u32>,
    /// The bytes of `tokens` (special tokens as llguidance writes them: marker byte + name).
    bytes: Vec<u8>,
    /// Where each token's bytes start in `bytes`.
    starts: Vec<usize>,
    /// Triggers starting before this byte were tried already.
    skip_before: usize,
}

impl Waiting {
    /// Records `token`; if a trigger now appears, the tokens to feed the grammar: from the
    /// token where the trigger starts (re-tokenized from the trigger's first byte when it
    /// starts inside a token: "Sure<tool" ends in the trigger's beginning).
    fn push(&mut self, token: u32, trie: &TokTrie, env: &TokEnv) -> Option<(usize, Vec<TokenId>)> {
        let searched_from = self.bytes.len();
        self.starts.push(self.bytes.len());
        self.tokens.push(token);
        self.bytes.extend_from_slice(trie.token(token));
        let at = self
            .triggers
            .iter()
            .filter_map(|t| {
                // Only where the new token can complete a match.
                let from = searched_from.saturating_sub(t.len() - 1).max(self.skip_before);
                find(&self.bytes[from..], t).map(|i| from + i)
            })
            .min()?;
        let i = self.starts.partition_point(|&s| s <= at) - 1;
        let start = self.starts[i];
        let end = self.starts.get(i + 1).copied().unwrap_or(self.bytes.len());
        let special = self.bytes.get(start) == Some(&TokTrie::SPECIAL_TOKEN_MARKER);
        let mut feed = if at == start || special {
            vec![self.tokens[i]]
        } else {
            env.tokenize_bytes(&self.bytes[at..end])
        };
        feed.extend_from_slice(&self.tokens[i + 1..]);
        Some((at, feed))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .field("active", &self.is_active())
            .finish()
    }
}

impl Constraint {
    /// Whether the grammar decides the next token (false while a triggered grammar waits for
    /// its trigger: the output is free).
    pub fn is_active(&self) -> bool {
        self.lazy.as_ref().is_none_or(|l| l.triggered)
    }

    /// Sets every token the grammar does not allow next to -inf. When the grammar is complete
    /// only EOS stays allowed; if the matcher failed (it cannot on tokens it allowed itself),
    /// only `eos` is allowed, so the sequence ends rather than produce invalid output.
    pub fn mask(&mut self, logits: &mut [f32], eos: u32) {
        if !self.is_active() {
            return;
        }
        match self.matcher.compute_mask_or_eos() {
            Ok(allowed) => {
                for (id, x) in logits.iter_mut().enumerate() {
                    if !allowed.is_allowed(id as TokenId) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("constraint failed, ending the sequence: {e}");
                let keep = logits.get(eos as usize).copied().unwrap_or(0.0);
                logits.fill(f32::NEG_INFINITY);
                if let Some(x) = logits.get_mut(eos as usize) {
                    *x = if keep.is_finite() { keep } else { 0.0 };
                }
            }
        }
    }

    /// Advances the grammar past a sampled token (or, while waiting for a trigger, records it
    /// and starts the grammar at the trigger).
    pub fn advance(&mut self, token: u32) {
        if let Some(lazy) = self.lazy.as_mut().filter(|l| !l.triggered) {
            // The pristine matcher never failed, so it always has its tokenizer.
            let env = match lazy.pristine.tok_env() {
                Ok(env) => env,
                Err(e) => {
                    tracing::warn!("triggered constraint has no tokenizer, output stays free: {e}");
                    lazy.waiting.triggers.clear();
                    return;
                }
            };
            let Some((at, feed)) = lazy.waiting.push(token, env.tok_trie(), &env) else {
                return;
            };
            match self.matcher.consume_tokens(&feed) {
                Ok(()) => lazy.triggered = true,
                Err(e) => {
                    // The model wrote past the trigger what the grammar cannot match ("in
                    // <tool_call>." : the token holding the trigger ran on). Nothing generated can
                    // be taken back: the output stays free, and the next trigger gets a fresh
                    // grammar.
                    tracing::debug!("triggered grammar rejected its start, waiting for another: {e}");
                    self.matcher = lazy.pristine.clone();
                    lazy.waiting.skip_before = at + 1;
                }
            }
            return;
        }
        // A finished grammar allows only EOS, and has nothing left to consume it with.
        if self.matcher.is_stopped() {
            return;
        }
        if let Err(e) = self.matcher.consume_token(token) {
            tracing::warn!("constraint rejected token {token}: {e}");
        }
    }

    /// The grammar reached its end (or failed): nothing but EOS can follow.
    pub fn is_stopped(&self) -> bool {
        self.is_active() && self.matcher.is_stopped()
    }
}

/// llguidance's view of our tokenizer: every token's bytes, and tokenization of byte strings.
struct TokenBytesEnv {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenBytesEnv {
    fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self> {
        let hf = tokenizer.inner();
        let unusable = |e: String| EngineError::InvalidConfig(format!("constrained decoding: {e}"));
        let json = hf.to_string(false).map_err(|e| unusable(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&json).map_err(|e| unusable(e.to_string()))?;
        let mut words = token_bytes_from_tokenizer_json(&json).map_err(|e| unusable(e.to_string()))?;
        if words.len() > vocab_size {
            return Err(unusable(format!(
                "the tokenizer has {} tokens, the model's logits {vocab_size}",
                words.len()
            )));
        }
        // Ids beyond the tokenizer (padded logits) are named like special tokens: never allowed.
        for id in words.len()..vocab_size {
            words.push(marked(&format!("<[{id}]>")));
        }
        let eos = tokenizer.eos_token_ids.first().copied().unwrap_or(0);
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let mut trie = TokTrie::from(&info, &words);
        if tokenizer.eos_token_ids.len() > 1 {
            trie = trie.with_eos_tokens(&tokenizer.eos_token_ids);
        }
        Ok(Self {
            trie,
            tokenizer: hf.clone(),
        })
    }
}

impl TokenizerEnv for TokenBytesEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

/// A special token's name behind llguidance's marker byte (never produced by plain text).
fn marked(name: &str) -> Vec<u8> {
    let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    bytes.extend_from_slice(name.as_bytes());
    bytes
}
