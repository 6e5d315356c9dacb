//! Triggered ("lazy") grammars on the default model's tokenizer: the output is free until the
//! trigger appears, then the grammar holds from the trigger's first byte, also when the trigger
//! starts inside a token; a start the grammar rejects leaves the output free.

mod common;

use wick_engine::sample::constraint::{Constraint, ConstraintCompiler, ConstraintSpec};
use wick_engine::tokenizer::Tokenizer;

const TRIGGER: &str = "<tool_call>";

/// One call to `get_weather` with a `city`, in Hermes markup.
fn spec() -> ConstraintSpec {
    let call = r#"{"type": "object", "properties": {"name": {"const": "get_weather"}}, "required": ["name"], "additionalProperties": false, "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}}"#;
    ConstraintSpec::Triggered {
        triggers: vec![TRIGGER.into()],
        grammar: Box::new(ConstraintSpec::Lark(format!(
            "start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {call}\n"
        ))),
    }
}

struct Setup {
    tokenizer: Tokenizer,
    vocab: usize,
    eos: u32,
    constraint: Constraint,
}

fn setup() -> Setup {
    let loaded = common::load_default(None);
    let vocab = loaded.config().vocab_size;
    let compiler = ConstraintCompiler::new(&loaded.tokenizer, vocab).expect("compiler");
    let constraint = compiler.compile(&spec(), "tools").expect("compiles");
    let eos = loaded.tokenizer.eos_token_ids[0];
    Setup {
        tokenizer: loaded.tokenizer,
        vocab,
        eos,
        constraint,
    }
}

fn text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.inner().decode(&[id], false).expect("decodes")
}

/// The tokens the mask allows (EOS aside).
fn allowed(s: &mut Setup) -> Vec<u32> {
    let mut logits = vec![0f32; s.vocab];
    s.constraint.mask(&mut logits, s.eos);
    (0..s.vocab as u32)
        .filter(|&id| id != s.eos && logits[id as usize].is_finite())
        .collect()
}

/// Feeds `text`'s tokens; returns the byte offset in `text` of the token holding the trigger's
/// first byte, and checks the grammar stays off until the token that completes the trigger.
fn feed(s: &mut Setup, prefix: &str) -> usize {
    let ids = s.tokenizer.encode(prefix, false).expect("encodes");
    let trigger_at = prefix.find(TRIGGER).expect("prefix holds the trigger");
    let mut offset = 0;
    let mut holder = None;
    for id in ids {
        let piece = text(&s.tokenizer, id);
        if holder.is_none() && offset + piece.len() > trigger_at {
            holder = Some(offset);
        }
        s.constraint.advance(id);
        offset += piece.len();
        assert_eq!(
            s.constraint.is_active(),
            offset >= trigger_at + TRIGGER.len(),
            "after {:?}",
            &prefix[..offset]
        );
    }
    holder.expect("trigger fed")
}

/// Every allowed token continues `rest`, and the one that starts it is among them.
fn assert_forced(s: &mut Setup, rest: &str) {
    let allowed = allowed(s);
    assert!(!allowed.is_empty());
    for &id in &allowed {
        let t = text(&s.tokenizer, id);
        assert!(
            rest.starts_with(&t),
            "token {t:?} allowed, the grammar forces {rest:?}"
        );
    }
}

#[test]
fn free_until_the_trigger_then_the_grammar_holds() {
    let mut s = setup();
    for id in s
        .tokenizer
        .encode("Let me check the weather <tool", false)
        .unwrap()
    {
        s.constraint.advance(id);
        assert!(!s.constraint.is_active());
        // Free text: nothing masked.
        assert_eq!(allowed(&mut s).len(), s.vocab - 1);
    }
    let mut s = setup();
    feed(&mut s, "I will look it up.\n<tool_call>\n{\"name\": \"");
    assert_forced(&mut s, "get_weather\"}\n</tool_call>");
    for id in s.tokenizer.encode("get_weather\"}\n</tool_call>", false).unwrap() {
        s.constraint.advance(id);
    }
    assert!(
        s.constraint.is_stopped(),
        "the call is complete: only EOS may follow"
    );
}

#[test]
fn a_trigger_starting_inside_a_token_is_fed_from_its_first_byte() {
    // Some prefix must put the trigger's "<" inside a token ("Sure <" → " <"), or the case is
    // not exercised.
    let mut exercised = false;
    for prefix in [
        "Sure <tool_call>\n{",
        "ok:<tool_call>\n{",
        "(<tool_call>\n{",
        " <tool_call>\n{",
    ] {
        let mut s = setup();
        let holder = feed(&mut s, prefix);
        if holder < prefix.find(TRIGGER).unwrap() {
            exercised = true;
        }
        assert_forced(&mut s, "\"name\": \"get_weather\"}\n</tool_call>");
    }
    assert!(exercised, "no prefix split the trigger inside a token");
}

#[test]
fn a_start_the_grammar_rejects_leaves_the_output_free_until_the_next_trigger() {
    let mut s = setup();
    // The token completing the trigger runs on into text the grammar rejects (">," etc.).
    let run_on = (0..s.vocab as u32)
        .find(|&id| {
            let t = text(&s.tokenizer, id);
            t.len() > 1 && t.starts_with('>') && !t[1..].starts_with('\n')
        })
        .expect("a token starting with '>'");
    let mut ids = s
        .tokenizer
        .encode("Write calls within <tool_call", false)
        .unwrap();
    ids.push(run_on);
    ids.extend(s.tokenizer.encode(" tags. Here", false).unwrap());
    for id in ids {
        s.constraint.advance(id);
        assert!(!s.constraint.is_active());
    }
    assert!(!s.constraint.is_stopped());
    assert_eq!(allowed(&mut s).len(), s.vocab - 1);
    // A real call afterwards is constrained by a fresh grammar.
    for id in s.tokenizer.encode(":\n<tool_call>\n", false).unwrap() {
        s.constraint.advance(id);
    }
    assert!(s.constraint.is_active());
    assert_forced(&mut s, "{\"name\": \"get_weather\"}\n</tool_call>");
}

#[test]
fn empty_triggers_are_a_request_error() {
    let loaded = common::load_default(None);
    let compiler = ConstraintCompiler::new(&loaded.tokenizer, loaded.config().vocab_size).unwrap();
    let spec = ConstraintSpec::Triggered {
        triggers: vec![String::new()],
        grammar: Box::new(ConstraintSpec::JsonObject),
    };
    let e = compiler.compile(&spec, "tools").unwrap_err();
    assert!(e.to_string().contains("trigger"), "{e}");
}
