//! Constrained decoding on the default model: under a JSON schema every sampled output (20
//! seeded choices at temperature 0.8) is complete, parses and validates; a bad schema is a
//! request error naming the parameter.

mod common;

use serde_json::{json, Value};
use wick_engine::engine::EngineEvent;
use wick_engine::sample::constraint::ConstraintSpec;
use wick_engine::sample::params::SamplingParams;
use wick_engine::sample::stop::FinishReason;
use wick_engine::{Engine, EngineConfig, EngineError, GenerateRequest};

fn engine() -> Engine {
    Engine::new(common::load_default(None), EngineConfig::default()).expect("engine starts")
}

fn prompt(engine: &Engine, text: &str) -> Vec<u32> {
    engine.tokenizer().encode(text, true).expect("encodes")
}

/// Every choice's text and finish reason.
fn run(engine: &Engine, prompt: Vec<u32>, params: SamplingParams) -> Vec<(String, Option<FinishReason>)> {
    let n = params.n;
    let mut stream = engine
        .submit(GenerateRequest::new(prompt, params))
        .expect("accepted");
    let mut out = vec![(String::new(), None); n];
    while let Some(event) = stream.blocking_recv() {
        match event {
            EngineEvent::Token(t) => out[t.index].0.push_str(&t.text),
            EngineEvent::Finished {
                index, reason, text, ..
            } => {
                out[index].0.push_str(&text);
                out[index].1 = Some(reason);
            }
            EngineEvent::Done(_) => return out,
            EngineEvent::Error(e) => panic!("engine error: {e}"),
            EngineEvent::PromptLogprobs(_) => {}
        }
    }
    panic!("stream ended without Done");
}

fn sampled(n: usize, max_tokens: usize, constraint: Option<ConstraintSpec>) -> SamplingParams {
    SamplingParams {
        n,
        temperature: 0.8,
        seed: Some(7),
        max_tokens: Some(max_tokens),
        constraint,
        ..SamplingParams::default()
    }
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "user", "guest"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "integer", "minimum": 0, "maximum": 99999}},
                "required": ["city", "zip"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "role", "tags", "address"],
        "additionalProperties": false
    })
}

/// The schema above, checked by hand (the Python e2e test uses the `jsonschema` package).
fn valid_person(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["address", "age", "name", "role", "tags"] {
        return Err(format!("keys {keys:?}"));
    }
    let name = o["name"].as_str().ok_or("name")?;
    if name.chars().count() > 20 {
        return Err("name too long".into());
    }
    let age = o["age"].as_i64().ok_or("age not an integer")?;
    if !(0..=120).contains(&age) {
        return Err(format!("age {age}"));
    }
    if !["admin", "user", "guest"].contains(&o["role"].as_str().ok_or("role")?) {
        return Err("role".into());
    }
    let tags = o["tags"].as_array().ok_or("tags")?;
    if tags.len() > 3
        || tags
            .iter()
            .any(|t| t.as_str().is_none_or(|s| s.chars().count() > 10))
    {
        return Err("tags".into());
    }
    let address = o["address"].as_object().ok_or("address")?;
    if address.len() != 2 || !address["city"].is_string() || !address["zip"].is_number() {
        return Err("address".into());
    }
    Ok(())
}

#[test]
fn json_schema_outputs_always_validate() {
    let engine = engine();
    let p = prompt(&engine, "Describe a user of our system as JSON:\n");
    let constrained = run(
        &engine,
        p.clone(),
        sampled(20, 300, Some(ConstraintSpec::JsonSchema(person_schema()))),
    );
    for (i, (text, finish)) in constrained.iter().enumerate() {
        assert_eq!(
            *finish,
            Some(FinishReason::Stop),
            "choice {i} did not finish: {text}"
        );
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("choice {i}: {e}: {text}"));
        valid_person(&value).unwrap_or_else(|e| panic!("choice {i}: {e}: {text}"));
    }
    // The same seeds without the constraint, for the record (not asserted: a small model).
    let free = run(&engine, p, sampled(20, 120, None));
    let valid = free
        .iter()
        .filter(|(t, _)| serde_json::from_str::<Value>(t.trim()).is_ok_and(|v| valid_person(&v).is_ok()))
        .count();
    eprintln!("valid outputs: constrained 20/20, unconstrained {valid}/20");
}

#[test]
fn json_object_outputs_parse_and_ignore_eos_does_not_run_past_the_end() {
    let engine = engine();
    let p = prompt(&engine, "Give me a JSON object describing a cat:\n");
    let params = SamplingParams {
        ignore_eos: true,
        min_tokens: 5,
        ..sampled(4, 300, Some(ConstraintSpec::JsonObject))
    };
    // Any object: strings are unbounded, so a choice may reach max_tokens inside one. Every
    // choice that stops is exactly one object: nothing after it despite ignore_eos.
    let outputs = run(&engine, p, params);
    let stopped: Vec<&String> = outputs
        .iter()
        .filter(|(_, f)| *f == Some(FinishReason::Stop))
        .map(|(t, _)| t)
        .collect();
    assert!(stopped.len() >= 2, "{outputs:?}");
    for text in stopped {
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(value.is_object(), "{text}");
    }
}

#[test]
fn a_schema_llguidance_cannot_compile_is_a_request_error() {
    let engine = engine();
    let p = prompt(&engine, "x");
    let bad =
        ConstraintSpec::JsonSchema(json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}));
    match engine.submit(GenerateRequest::new(p, sampled(1, 10, Some(bad)))) {
        Err(EngineError::InvalidRequest { param, message }) => {
            assert_eq!(param, "response_format");
            assert!(message.contains("grammar"), "{message}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an unresolvable $ref was accepted"),
    }
    // The engine still serves.
    let ok = run(&engine, prompt(&engine, "Hello"), sampled(1, 3, None));
    assert_eq!(ok.len(), 1);
}
