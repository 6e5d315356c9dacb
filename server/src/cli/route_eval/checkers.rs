//! How an answer is judged: each labelled item carries one [`Check`].
//!
//! - `{"exact": "42"}`: the content, normalized, equals the expected text, normalized
//!   ([`normalize`]: trimmed, lower case, runs of whitespace as one space, trailing `.` removed).
//! - `{"contains": "Paris"}`: the content contains it, case-insensitive.
//! - `{"regex": "..."}`: the content matches (Rust `regex` syntax; `(?i)` for case-insensitive).
//! - `{"json_schema": {...}}`: the content (a surrounding Markdown code fence removed) parses as
//!   JSON and validates against the schema (full JSON Schema, [`crate::tools::json_schema`]).
//! - `{"tool_call": {"name": "...", "arguments": {...}}}`: one of the answer's tool calls has that
//!   name and its parsed arguments contain each given key with an equal value (strings compared
//!   trimmed and case-insensitive, numbers numerically, other values exactly).

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::tools::json_schema::Schema;

/// A check as written in the JSONL file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckSpec {
    Exact(String),
    Contains(String),
    Regex(String),
    JsonSchema(Value),
    ToolCall(ToolCallSpec),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCallSpec {
    pub name: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A check ready to run (its regex or schema compiled).
#[derive(Debug, Clone)]
pub enum Check {
    Exact(String),
    Contains(String),
    Regex(regex::Regex),
    JsonSchema(Schema),
    ToolCall(ToolCallSpec),
}

impl Check {
    pub fn new(spec: CheckSpec) -> Result<Self, String> {
        Ok(match spec {
            CheckSpec::Exact(s) => Self::Exact(s),
            CheckSpec::Contains(s) => Self::Contains(s),
            CheckSpec::Regex(r) => Self::Regex(regex::Regex::new(&r).map_err(|e| format!("bad regex: {e}"))?),
            CheckSpec::JsonSchema(s) if s.is_object() => {
                Self::JsonSchema(Schema::compile(&s).map_err(|e| format!("bad json_schema: {e}"))?)
            }
            // `true`/`false` are schemas too, but as a check they would say nothing.
            CheckSpec::JsonSchema(_) => return Err("json_schema must be an object".into()),
            CheckSpec::ToolCall(t) => Self::ToolCall(t),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Exact(_) => "exact",
            Self::Contains(_) => "contains",
            Self::Regex(_) => "regex",
            Self::JsonSchema(_) => "json_schema",
            Self::ToolCall(_) => "tool_call",
        }
    }

    /// Whether an answer (its content and its `tool_calls`, as the API returned them) passes.
    pub fn passes(&self, content: &str, tool_calls: &[Value]) -> bool {
        match self {
            Self::Exact(want) => normalize(content) == normalize(want),
            Self::Contains(want) => content.to_lowercase().contains(&want.to_lowercase()),
            Self::Regex(re) => re.is_match(content),
            Self::JsonSchema(schema) => {
                serde_json::from_str::<Value>(strip_fence(content)).is_ok_and(|v| schema.is_valid(&v))
            }
            Self::ToolCall(want) => tool_calls.iter().any(|c| call_matches(want, c)),
        }
    }
}

/// Trimmed, lower case, whitespace runs as one space, trailing periods removed.
pub fn normalize(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    joined.trim_end_matches('.').trim_end().to_string()
}

/// The text inside a Markdown code fence (```json … ```), or the trimmed text.
fn strip_fence(s: &str) -> &str {
    let t = s.trim();
    match t.strip_prefix("```").and_then(|r| r.strip_suffix("```")) {
        Some(inner) => inner.split_once('\n').map_or(inner, |(_, body)| body).trim(),
        None => t,
    }
}

fn call_matches(want: &ToolCallSpec, call: &Value) -> bool {
    let f = &call["function"];
    if f["name"].as_str() != Some(want.name.as_str()) {
        return false;
    }
    let args: Value = match &f["arguments"] {
        Value::String(s) => match serde_json::from_str(s) {
            Ok(v) => v,
            Err(_) => return false,
        },
        v => v.clone(),
    };
    want.arguments
        .iter()
        .all(|(k, v)| args.get(k).is_some_and(|got| loosely_equal(v, got)))
}

fn loosely_equal(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(a), Value::String(b)) => a.trim().eq_ignore_ascii_case(b.trim()),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => want == got,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(spec: Value) -> Check {
        Check::new(serde_json::from_value(spec).expect("a check")).expect("valid")
    }

    #[test]
    fn exact_normalizes_case_space_and_a_trailing_period() {
        let c = check(json!({"exact": "Forty two"}));
        assert!(c.passes("  forty   TWO.\n", &[]));
        assert!(!c.passes("forty-two", &[]));
        assert!(!c.passes("It is forty two", &[]));
        assert!(check(json!({"exact": "42"})).passes("42", &[]));
        assert!(!check(json!({"exact": "42"})).passes("420", &[]));
    }

    #[test]
    fn contains_is_case_insensitive() {
        let c = check(json!({"contains": "Paris"}));
        assert!(c.passes("The capital is PARIS.", &[]));
        assert!(!c.passes("Lyon", &[]));
    }

    #[test]
    fn regex_matches_and_a_bad_one_is_an_error() {
        let c = check(json!({"regex": "^\\s*1[,]?024\\b"}));
        assert!(c.passes("1024", &[]));
        assert!(c.passes(" 1,024 is the answer", &[]));
        assert!(!c.passes("2048", &[]));
        let bad: CheckSpec = serde_json::from_value(json!({"regex": "("})).unwrap();
        assert!(Check::new(bad).is_err());
    }

    #[test]
    fn json_schema_validates_types_bounds_and_closed_objects() {
        let c = check(json!({"json_schema": {
            "type": "object", "required": ["name", "age"], "additionalProperties": false,
            "properties": {"name": {"type": "string", "minLength": 1},
                           "age": {"type": "integer", "minimum": 0},
                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}}}}}));
        assert!(c.passes(r#"{"name": "Ada", "age": 36}"#, &[]));
        assert!(c.passes(
            "```json\n{\"name\": \"Ada\", \"age\": 36, \"tags\": [\"a\"]}\n```",
            &[]
        ));
        assert!(!c.passes(r#"{"name": "Ada"}"#, &[]), "required");
        assert!(!c.passes(r#"{"name": "Ada", "age": 36.5}"#, &[]), "integer");
        assert!(!c.passes(r#"{"name": "Ada", "age": -1}"#, &[]), "minimum");
        assert!(
            !c.passes(r#"{"name": "Ada", "age": 3, "x": 1}"#, &[]),
            "additional"
        );
        assert!(
            !c.passes(r#"{"name": "Ada", "age": 3, "tags": ["c"]}"#, &[]),
            "enum"
        );
        assert!(!c.passes("name: Ada", &[]), "not JSON");
        let bad: CheckSpec = serde_json::from_value(json!({"json_schema": 3})).unwrap();
        assert!(Check::new(bad).is_err());
    }

    #[test]
    fn json_schema_is_the_full_standard_and_a_bad_schema_is_an_error() {
        // Keywords the old subset ignored (passed): pattern, anyOf, nested $defs references.
        let c = check(json!({"json_schema": {
            "$defs": {"point": {"type": "object", "required": ["x", "y"],
                "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}},
            "type": "object", "required": ["id", "at"],
            "properties": {"id": {"type": "string", "pattern": "^[a-z]+-[0-9]+$"},
                           "at": {"$ref": "#/$defs/point"},
                           "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}}));
        assert!(c.passes(r#"{"id": "job-7", "at": {"x": 1, "y": 2.5}, "note": null}"#, &[]));
        assert!(
            !c.passes(r#"{"id": "Job 7", "at": {"x": 1, "y": 2}}"#, &[]),
            "pattern"
        );
        assert!(
            !c.passes(r#"{"id": "job-7", "at": {"x": 1}}"#, &[]),
            "$ref'd required"
        );
        assert!(
            !c.passes(r#"{"id": "job-7", "at": {"x": 1, "y": 2}, "note": 3}"#, &[]),
            "anyOf"
        );
        for bad in [json!({"type": "strnig"}), json!({"pattern": "("})] {
            let spec: CheckSpec = serde_json::from_value(json!({"json_schema": bad})).unwrap();
            let err = Check::new(spec).expect_err("does not compile");
            assert!(err.starts_with("bad json_schema: invalid JSON Schema"), "{err}");
        }
    }

    #[test]
    fn tool_call_needs_the_name_and_the_arguments() {
        let c =
            check(json!({"tool_call": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}));
        let call = |name: &str, args: &str| json!({"type": "function", "function": {"name": name, "arguments": args}});
        assert!(c.passes(
            "",
            &[call(
                "get_weather",
                r#"{"city": " paris ", "days": 2.0, "unit": "c"}"#
            )]
        ));
        assert!(c.passes(
            "",
            &[
                call("other", "{}"),
                call("get_weather", r#"{"city": "PARIS", "days": 2}"#)
            ]
        ));
        assert!(
            !c.passes("", &[call("get_time", r#"{"city": "Paris", "days": 2}"#)]),
            "name"
        );
        assert!(
            !c.passes("", &[call("get_weather", r#"{"city": "Lyon", "days": 2}"#)]),
            "value"
        );
        assert!(
            !c.passes("", &[call("get_weather", r#"{"city": "Paris"}"#)]),
            "missing key"
        );
        assert!(!c.passes("", &[call("get_weather", "not json")]), "unparsable");
        assert!(!c.passes("get_weather(city=Paris)", &[]), "no call");
        let name_only = check(json!({"tool_call": {"name": "get_weather"}}));
        assert!(name_only.passes("", &[call("get_weather", "{}")]));
    }

    #[test]
    fn unknown_checks_are_rejected() {
        assert!(serde_json::from_value::<CheckSpec>(json!({"equals": "x"})).is_err());
        assert!(serde_json::from_value::<CheckSpec>(json!({"exact": "x", "contains": "y"})).is_err());
    }
}
