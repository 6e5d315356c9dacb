//! The GGUF-rebuilt tokenizer against tests/reference/tokenizer_golden.json (Python `tokenizers`
//! configured from the same GGUF metadata by tests/reference/gguf_tokenizer.py), and the streaming
//! detokenizer against one-shot decoding.

mod common;

use std::sync::OnceLock;

use candle_core::quantized::gguf_file::Content;
use serde_json::Value;
use sha2::{Digest, Sha256};
use wick_engine::tokenizer::detokenizer::IncrementalDetokenizer;
use wick_engine::tokenizer::Tokenizer;

struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an integer id") as u32)
        .collect()
}

fn read_json(name: &str) -> Value {
    let path = common::reference_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| read_json("tokenizer_golden.json"))
}

fn cases() -> Vec<Case> {
    let cases: Vec<Case> = golden()["cases"]
        .as_array()
        .expect("`cases` array")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_string(),
            ids: ids_of(&c["ids"]),
            decoded: c["decoded"].as_str().expect("decoded").to_string(),
        })
        .collect();
    assert!(cases.len() >= 30, "golden file has only {} cases", cases.len());
    cases
}

/// The tokenizer straight from the GGUF metadata (no weights loaded).
fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = common::default_model_path();
        let mut file = std::fs::File::open(&path).expect("open default model");
        let content = Content::read(&mut file).expect("read GGUF header");
        Tokenizer::from_gguf(&content).expect("tokenizer from GGUF metadata")
    })
}

#[test]
fn golden_file_matches_default_model() {
    let path = common::default_model_path();
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(&path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        golden()["model_sha256"].as_str().expect("model_sha256"),
        digest,
        "tokenizer_golden.json was produced from a different model file than {}",
        path.display()
    );
    assert_eq!(digest, common::DEFAULT_MODEL_SHA256);
}

#[test]
fn encode_matches_reference() {
    let tok = tokenizer();
    let mut failures = Vec::new();
    for case in cases() {
        let ids = tok.encode(&case.text, false).unwrap();
        if ids != case.ids {
            failures.push(format!(
                "{:?}\n  wick:      {ids:?}\n  reference: {:?}",
                case.text, case.ids
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "encode differs from the reference:\n{}",
        failures.join("\n")
    );
}

#[test]
fn decode_matches_reference() {
    let tok = tokenizer();
    let mut failures = Vec::new();
    for case in cases() {
        let text = tok.decode(&case.ids, false).unwrap();
        if text != case.decoded {
            failures.push(format!(
                "{:?}: wick {text:?}, reference {:?}",
                case.ids, case.decoded
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "decode differs from the reference:\n{}",
        failures.join("\n")
    );
}

#[test]
fn decode_roundtrips_plain_text() {
    // Byte-level BPE is lossless: every case without special tokens decodes back to its text.
    let tok = tokenizer();
    for case in cases().iter().filter(|c| !c.text.contains("<|")) {
        assert_eq!(tok.decode(&case.ids, false).unwrap(), case.text);
        assert_eq!(tok.decode(&case.ids, true).unwrap(), case.text);
    }
}

#[test]
fn special_tokens() {
    let tok = tokenizer();
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), vec![1]);
    assert_eq!(tok.encode("<|im_end|>", false).unwrap(), vec![2]);
    assert_eq!(tok.bos_token_id, Some(1));
    assert!(tok.eos_token_ids.contains(&2), "eos ids {:?}", tok.eos_token_ids);
    let template = tok
        .chat_template
        .as_deref()
        .expect("chat template in GGUF metadata");
    assert!(template.contains("im_start"), "template: {template}");
    // A special token inside text is one id; skipping special tokens drops it from the decoding.
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhi");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>user\nhi<|im_end|>");
    // Text that only looks like a special token is ordinary text.
    let ids = tok.encode("not special: <|im_start and im_end|>", false).unwrap();
    assert!(!ids.contains(&1) && !ids.contains(&2), "{ids:?}");
}

/// Streams `generated` through the detokenizer (after `context`), asserting the invariants, and
/// returns the deltas.
fn stream(tok: &Tokenizer, context: &[u32], generated: &[u32], skip_special: bool) -> Vec<String> {
    let mut detok = IncrementalDetokenizer::new(context, skip_special);
    let mut deltas: Vec<String> = generated.iter().map(|&id| detok.push(tok, id).unwrap()).collect();
    deltas.push(detok.flush(tok).unwrap());
    let one_shot = tok.decode(generated, skip_special).unwrap();
    let streamed: String = deltas.concat();
    assert_eq!(
        streamed, one_shot,
        "streamed text differs from one-shot decoding of {generated:?} (context {context:?}, \
         skip_special_tokens {skip_special}); deltas {deltas:?}"
    );
    if !one_shot.contains('\u{FFFD}') {
        assert!(
            deltas.iter().all(|d| !d.contains('\u{FFFD}')),
            "a delta holds U+FFFD though the text has none: {deltas:?}"
        );
        // Nothing is held back once the characters are complete.
        assert_eq!(deltas.last().unwrap(), "", "flush had text left: {deltas:?}");
    }
    deltas
}

#[test]
fn detokenizer_streams_reference_cases() {
    let tok = tokenizer();
    for case in cases() {
        for skip in [false, true] {
            stream(tok, &[], &case.ids, skip);
        }
    }
}

#[test]
fn detokenizer_streams_generated_text_with_prompt_context() {
    let tok = tokenizer();
    let golden = read_json("golden.json");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for case in cases {
        let prompt = ids_of(&case["prompt_ids"]);
        let generated: Vec<u32> = case["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| s["token"].as_u64().expect("token") as u32)
            .collect();
        assert!(!generated.is_empty());
        for skip in [false, true] {
            stream(tok, &prompt, &generated, skip);
        }
        // The reference recorded the generated text (decoded with special tokens kept).
        let text = case["text"].as_str().expect("text");
        assert_eq!(
            stream(tok, &prompt, &generated, false).concat(),
            text,
            "{}",
            case["name"]
        );
    }
}

#[test]
fn detokenizer_never_splits_multibyte_characters() {
    let tok = tokenizer();
    let texts = [
        "I love 🦀 and 🐍!",
        "🙂🙂🙂",
        "👍🏽 thumbs",
        "family: 👨\u{200d}👩\u{200d}👧\u{200d}👦",
        "flags: 🇫🇷🇯🇵",
        "東京は日本の首都です。",
        "你好，世界！",
        "한국어 텍스트",
        "Ångström",
    ];
    let mut saw_split_character = false;
    for text in texts {
        let ids = tok.encode(text, false).unwrap();
        // The case is only interesting if some token is not valid UTF-8 on its own.
        saw_split_character |= ids
            .iter()
            .any(|&id| tok.decode(&[id], false).unwrap().contains('\u{FFFD}'));
        // Without context, and after a short prompt.
        let context = tok.encode("Say it:", false).unwrap();
        for ctx in [&[][..], &context[..]] {
            let deltas = stream(tok, ctx, &ids, false);
            for d in &deltas {
                assert!(
                    text.contains(d.as_str()),
                    "delta {d:?} is not a piece of {text:?}"
                );
            }
        }
    }
    assert!(
        saw_split_character,
        "no test text splits a character across tokens"
    );
}

/// A GGUF holding only tokenizer metadata, read back as `Content`.
fn tiny_gguf(pre: &str, tokens: &[&str], merges: &[&str]) -> Content {
    use candle_core::quantized::gguf_file::{self, Value};
    let strings = |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let (model, pre, tokens, merges) = (
        Value::String("gpt2".into()),
        Value::String(pre.into()),
        strings(tokens),
        strings(merges),
    );
    let metadata = [
        ("tokenizer.ggml.model", &model),
        ("tokenizer.ggml.pre", &pre),
        ("tokenizer.ggml.tokens", &tokens),
        ("tokenizer.ggml.merges", &merges),
    ];
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &[]).unwrap();
    buf.set_position(0);
    Content::read(&mut buf).unwrap()
}

#[test]
fn llama_bpe_takes_whole_words_from_the_vocabulary() {
    // Llama 3's tokenizer.json (and gguf_tokenizer.py, and llama.cpp) set BPE `ignore_merges`: a
    // pre-tokenized word that is itself in the vocabulary is one id even when the merges would
    // not build it. Plain GPT-2 BPE applies the merges.
    let tokens = ["a", "b", "c", "ab", "abc"];
    let merges = ["a b"];
    let llama3 = Tokenizer::from_gguf(&tiny_gguf("llama-bpe", &tokens, &merges)).unwrap();
    assert_eq!(llama3.encode("abc", false).unwrap(), vec![4]);
    let gpt2 = Tokenizer::from_gguf(&tiny_gguf("gpt2", &tokens, &merges)).unwrap();
    assert_eq!(gpt2.encode("abc", false).unwrap(), vec![3, 2]);
}

/// `min_tokens` never exceeds the real count (it refuses prompts that cannot fit a context
/// without encoding them, so it must be a lower bound), on every golden text and on texts made
/// of the longest tokens there are: runs of spaces, digits, special-token markup, multi-byte
/// characters.
#[test]
fn min_tokens_is_a_lower_bound() {
    let tok = tokenizer();
    let longest: String = (0..200).map(|_| " ").collect();
    let mut texts: Vec<String> = cases().into_iter().map(|c| c.text).collect();
    texts.extend([
        longest.repeat(20),
        "<|im_start|>user\nhi<|im_end|>".repeat(50),
        "1234567890".repeat(100),
        "éàü 漢字 🙂 ".repeat(100),
        "\n\n\n\t\t  ".repeat(300),
        String::new(),
    ]);
    for text in &texts {
        let real = tok.encode(text, false).expect("encodes").len();
        let bound = tok.min_tokens(text).expect("bound");
        assert!(bound <= real, "{bound} > {real} for {text:?}");
    }
    // And it is not vacuous. SmolLM2's longest entry spells 162 bytes, English prose takes ~4.5
    // bytes a token: the bound is 1/36 of the count (555 of 20001 here), so text over ~160x the
    // context in bytes is refused unread.
    let prose = "The quick brown fox jumps over the lazy dog. ".repeat(2000);
    let (bound, real) = (
        tok.min_tokens(&prose).unwrap(),
        tok.encode(&prose, false).unwrap().len(),
    );
    assert!(bound * 40 >= real, "bound {bound} for {real} tokens");
}
