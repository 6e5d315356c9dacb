//! JSON Schema validation, shared by the router's tool-call check and route-eval's
//! `json_schema` check, so that both judge with the same rules: the `jsonschema` crate, drafts 4,
//! 6, 7, 2019-09 and 2020-12 (from the schema's `$schema`; 2020-12 when it has none), `format`
//! as the draft says (an annotation, not checked, in 2019-09 and 2020-12). A schema is itself
//! checked against its draft's meta-schema when compiled. `$ref`s resolve within the schema
//! only: the crate is built without its HTTP and file resolvers (a tool schema comes from the
//! client, and fetching URLs it names is not the server's business), so a remote `$ref` is a
//! schema that does not compile.

use serde_json::Value;

/// A compiled schema, ready to validate many values.
#[derive(Debug, Clone)]
pub struct Schema(jsonschema::Validator);

/// Why a schema does not compile (not valid under its meta-schema, a bad `pattern`, an
/// unresolvable `$ref`).
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON Schema: {0}")]
pub struct SchemaError(String);

impl Schema {
    pub fn compile(schema: &Value) -> Result<Self, SchemaError> {
        jsonschema::validator_for(schema)
            .map(Self)
            .map_err(|e| SchemaError(located(&e)))
    }

    pub fn is_valid(&self, value: &Value) -> bool {
        self.0.is_valid(value)
    }
}

/// The error with its JSON pointer when it is not the root (`/properties/x/type: ...`).
fn located(e: &jsonschema::ValidationError<'_>) -> String {
    let path = e.instance_path().as_str();
    if path.is_empty() {
        e.to_string()
    } else {
        format!("{path}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_with_the_full_keyword_set() {
        let s = Schema::compile(&json!({
            "type": "object",
            "properties": {"tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
                           "n": {"oneOf": [{"type": "integer"}, {"type": "null"}]}},
            "dependentRequired": {"n": ["tags"]}}))
        .expect("compiles");
        assert!(s.is_valid(&json!({"tags": ["a", "b"], "n": 1})));
        assert!(!s.is_valid(&json!({"tags": ["a", "B"]})), "pattern");
        // Keywords a hand-written subset would skip: oneOf, dependentRequired.
        assert!(!s.is_valid(&json!({"tags": [], "n": 1.5})));
        assert!(!s.is_valid(&json!({"n": 1})));
    }

    #[test]
    fn the_draft_follows_dollar_schema() {
        // Draft 4's boolean `exclusiveMaximum` is a schema error in 2020-12 (there a number).
        let draft4 = json!({"$schema": "http://json-schema.org/draft-04/schema#",
            "type": "number", "maximum": 3, "exclusiveMaximum": true});
        let s = Schema::compile(&draft4).expect("draft 4 compiles");
        assert!(s.is_valid(&json!(2.5)) && !s.is_valid(&json!(3)));
        let mut latest = draft4;
        latest.as_object_mut().map(|o| o.remove("$schema"));
        assert!(Schema::compile(&latest).is_err());
    }

    #[test]
    fn bad_schemas_and_remote_refs_do_not_compile_and_say_where() {
        for bad in [
            json!({"type": "strnig"}),
            json!({"type": "string", "pattern": "("}),
            json!({"$ref": "https://example.com/schema.json"}),
            json!(3),
        ] {
            let err = Schema::compile(&bad).expect_err("invalid");
            assert!(err.to_string().starts_with("invalid JSON Schema: "), "{err}");
        }
        let nested = Schema::compile(&json!({"properties": {"x": {"type": "strnig"}}}));
        let err = nested.expect_err("invalid").to_string();
        assert!(err.contains("/properties/x/type: "), "{err}");
    }
}
