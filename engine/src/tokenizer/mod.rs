//! The model's tokenizer: `tokenizer.json` through the `tokenizers` crate, or the equivalent
//! tokenizer rebuilt from GGUF metadata.
//!
//! GGUF stores the vocabulary, merges and token types but not the pre-tokenizer; its
//! `tokenizer.ggml.pre` names one. We rebuild the same pipeline Hugging Face uses for that model:
//! - `smollm`: split every digit, then GPT-2 byte-level BPE *without* a prefix space;
//! - `llama-bpe` (Llama 3): the Llama 3 split regex, then byte-level without its own regex;
//! - `qwen2` (Qwen2/2.5): NFC, then the Qwen2 split regex (Llama 3's, but one digit per piece),
//!   then byte-level without its own regex, as in Qwen's `tokenizer.json`;
//! - `gpt2`/`default`: plain GPT-2 byte-level;
//! - SentencePiece `llama` (Llama 2, TinyLlama): BPE with byte fallback, merges derived from the
//!   piece scores, `▁` for spaces.

pub mod detokenizer;

use ahash::AHashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::error::{EngineError, Result};
use crate::source::gguf_metadata::{value_as_f32, value_as_u64, GgufMetadata};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with `\p{N}` (each digit alone) for `\p{N}{1,3}`.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// What Qwen's `generation_config.json` ends generation on: the end of a ChatML turn and the
/// end of a document. The GGUF names only one of them as EOS.
const QWEN2_END_TOKENS: &[&str] = &["<|im_end|>", "<|endoftext|>"];

/// GGUF `tokenizer.ggml.token_type` values.
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

fn longest_token(inner: &tokenizers::Tokenizer) -> usize {
    inner
        .get_vocab(true)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .max(1)
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepend BOS when encoding with special tokens. Set for GGUF tokenizers from
    /// `tokenizer.ggml.add_bos_token`; `tokenizer.json` does this in its own post-processor.
    prepend_bos: bool,
    pub bos_token_id: Option<u32>,
    /// Every id that ends generation (`eos_token_id` may be a list, e.g. Llama 3's `<|eot_id|>`).
    pub eos_token_ids: Vec<u32>,
    pub chat_template: Option<String>,
    /// The most UTF-8 bytes a vocabulary entry (added tokens included) spells: no token stands
    /// for more bytes of normalized text than this (byte-level and byte-fallback entries spell
    /// more bytes than they stand for), which bounds a text's token count from below.
    max_token_bytes: usize,
}

impl Tokenizer {
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens && self.prepend_bos {
            if let Some(bos) = self.bos_token_id {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The ids of added tokens (control tokens such as `<|im_end|>`, user-defined ones such as
    /// `<tool_call>`) and of every end-of-sequence token, ascending.
    pub fn added_token_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.inner.get_added_tokens_decoder().into_keys().collect();
        ids.extend(&self.eos_token_ids);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_token(&self) -> Option<String> {
        self.bos_token_id.and_then(|id| self.id_to_token(id))
    }

    pub fn eos_token(&self) -> Option<String> {
        self.eos_token_ids.first().and_then(|&id| self.id_to_token(id))
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The fewest tokens `text` can encode to, found without encoding it: its normalized length
    /// over the longest token. Cheap (the normalizer is linear, most models here have none), so a
    /// prompt that cannot fit a context is refused before minutes of BPE. A lower bound for
    /// tokenizers that keep every byte of the text, as all Llama-family ones do; one whose
    /// pre-tokenizer drops whitespace (BERT's) could encode to fewer.
    pub fn min_tokens(&self, text: &str) -> Result<usize> {
        let bytes = match self.inner.get_normalizer() {
            Some(n) => {
                let mut normalized = tokenizers::NormalizedString::from(text);
                tokenizers::Normalizer::normalize(n, &mut normalized).map_err(tok_err)?;
                normalized.get().len()
            }
            None => text.len(),
        };
        Ok(bytes / self.max_token_bytes)
    }

    /// Loads `tokenizer.json`, with special tokens and chat template from `tokenizer_config.json`
    /// and EOS ids from `config.json` / `generation_config.json` beside it.
    pub fn from_hf_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| EngineError::CorruptFile {
                path: tokenizer_json.to_path_buf(),
                message: e.to_string(),
            })?;
        let read_json = |p: &Path| -> Option<serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
        };
        let tc = tokenizer_config
            .and_then(read_json)
            .unwrap_or(serde_json::Value::Null);
        let token_of = |key: &str| -> Option<String> {
            match tc.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                v => v.get("content")?.as_str().map(String::from),
            }
        };
        let bos_token_id = token_of("bos_token").and_then(|t| inner.token_to_id(&t));
        let mut eos_token_ids: Vec<u32> = token_of("eos_token")
            .and_then(|t| inner.token_to_id(&t))
            .into_iter()
            .collect();
        let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
        for file in ["config.json", "generation_config.json"] {
            if let Some(v) = read_json(&dir.join(file)).and_then(|j| j.get("eos_token_id").cloned()) {
                let ids: Vec<u64> = match v {
                    serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).collect(),
                    other => other.as_u64().into_iter().collect(),
                };
                for id in ids {
                    if !eos_token_ids.contains(&(id as u32)) {
                        eos_token_ids.push(id as u32);
                    }
                }
            }
        }
        let chat_template = match tc.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(String::from)),
            _ => None,
        }
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        Ok(Self {
            max_token_bytes: longest_token(&inner),
            inner,
            prepend_bos: false,
            bos_token_id,
            eos_token_ids,
            chat_template,
        })
    }

    pub fn from_gguf(content: &Content) -> Result<Self> {
        let md = GgufMetadata::new(content);
        let model = md.str("tokenizer.ggml.model")?;
        let tokens = md.string_array("tokenizer.ggml.tokens")?;
        let types: Vec<u64> = match md.array("tokenizer.ggml.token_type") {
            Ok(a) => a.iter().map(|v| value_as_u64(v).unwrap_or(1)).collect(),
            Err(_) => vec![1; tokens.len()],
        };
        let vocab: AHashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let pre = md.str_opt("tokenizer.ggml.pre").unwrap_or("default");

        let mut inner = match model {
            "gpt2" => {
                let merges: Vec<(String, String)> = md
                    .string_array("tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| tok_err(format!("malformed merge `{m}`")))
                    })
                    .collect::<Result<_>>()?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    // Llama 3 (tokenizer.json, llama.cpp): a word in the vocabulary is one token.
                    .ignore_merges(matches!(pre, "llama-bpe" | "llama3"))
                    .build()
                    .map_err(tok_err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                if pre == "qwen2" {
                    t.with_normalizer(Some(NormalizerWrapper::NFC(NFC)))
                        .map_err(tok_err)?;
                }
                t.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
                t.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
                t
            }
            "llama" => {
                let scores: Vec<f32> = md
                    .array("tokenizer.ggml.scores")?
                    .iter()
                    .map(|v| value_as_f32(v).unwrap_or(0.0))
                    .collect();
                let merges = merges_from_scores(&tokens, &scores, &vocab);
                let unk = md
                    .u64_opt("tokenizer.ggml.unknown_token_id")
                    .and_then(|i| tokens.get(i as usize))
                    .map_or("<unk>".to_string(), |s| s.to_string());
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .unk_token(unk)
                    .fuse_unk(true)
                    .byte_fallback(true)
                    .build()
                    .map_err(tok_err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let add_space_prefix = md.bool_opt("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let mut norms = Vec::new();
                if add_space_prefix {
                    norms.push(NormalizerWrapper::Prepend(Prepend::new("▁".into())));
                }
                norms.push(NormalizerWrapper::Replace(
                    Replace::new(" ", "▁").map_err(tok_err)?,
                ));
                t.with_normalizer(Some(NormalizerWrapper::Sequence(
                    tokenizers::normalizers::Sequence::new(norms),
                )))
                .map_err(tok_err)?;
                let mut decs = vec![
                    DecoderWrapper::Replace(Replace::new("▁", " ").map_err(tok_err)?),
                    DecoderWrapper::ByteFallback(ByteFallback::default()),
                    DecoderWrapper::Fuse(Fuse::default()),
                ];
                if add_space_prefix {
                    decs.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
                }
                t.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(decs))));
                t
            }
            other => {
                return Err(tok_err(format!(
                    "unsupported GGUF tokenizer model `{other}` (supported: gpt2, llama)"
                )))
            }
        };
        // Control tokens (`<|im_end|>`) are special: skipped when decoding for the client, never
        // produced by a grammar. User-defined ones (Qwen's `<tool_call>`, `</tool_call>`) are
        // whole tokens but text, as in the models' own tokenizer.json (`"special": false`): a
        // tool call's markup must reach the parser, and a grammar may write it.
        let added = |kind: u64, special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, &ty)| ty == kind)
                .map(|(t, _)| AddedToken::from(t.to_string(), special).normalized(false))
                .collect()
        };
        inner
            .add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
            .map_err(tok_err)?;
        inner
            .add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
            .map_err(tok_err)?;

        let id = |k: &str| md.u64_opt(k).map(|v| v as u32);
        let mut eos_token_ids: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        // Llama 3 instruct: `<|eot_id|>` ends a turn even when EOS names `<|end_of_text|>`.
        let mut extras: Vec<u32> = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .iter()
            .filter_map(|k| id(k))
            .collect();
        if pre == "qwen2" {
            extras.extend(QWEN2_END_TOKENS.iter().filter_map(|t| inner.token_to_id(t)));
        }
        for e in extras {
            if !eos_token_ids.contains(&e) {
                eos_token_ids.push(e);
            }
        }
        Ok(Self {
            max_token_bytes: longest_token(&inner),
            inner,
            prepend_bos: md
                .bool_opt("tokenizer.ggml.add_bos_token")
                .unwrap_or(model == "llama"),
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_ids,
            chat_template: md.str_opt("tokenizer.chat_template").map(String::from),
        })
    }
}

fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    Ok(match pre {
        "smollm" => PreSequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "llama-bpe" | "llama3" => split_then_byte_level(LLAMA3_SPLIT)?,
        "qwen2" => split_then_byte_level(QWEN2_SPLIT)?,
        "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
        other => {
            return Err(tok_err(format!(
            "unsupported GGUF pre-tokenizer `{other}` (supported: smollm, llama-bpe, qwen2, gpt2, default)"
        )))
        }
    })
}

/// The regex `pattern` isolates the pieces; byte-level then maps bytes without a regex of its own.
fn split_then_byte_level(pattern: &str) -> Result<PreTokenizerWrapper> {
    Ok(PreSequence::new(vec![
        Split::new(
            SplitPattern::Regex(pattern.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?
        .into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

/// SentencePiece BPE has scores instead of merges. A merge (a, b) exists when a, b and a+b are
/// all pieces; its rank is the score order of a+b (higher score merges first), as Hugging Face's
/// SentencePiece converter derives it.
fn merges_from_scores(
    tokens: &[&str],
    scores: &[f32],
    vocab: &AHashMap<String, u32>,
) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(split);
            if let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) {
                merges.push((score, ia.max(ib), a.to_string(), b.to_string()));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    merges.into_iter().map(|(_, _, a, b)| (a, b)).collect()
}
