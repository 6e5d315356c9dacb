//! Grammars that make a tool call parse and validate by construction: for `tool_choice:
//! "required"` or a named function, the output is generated under a Lark grammar (llguidance's
//! dialect) whose calls are JSON constrained by each tool's `parameters` schema, in the markup of
//! the model's tool-call format.
//!
//! `tool_choice: "auto"` is not constrained here: the model may answer in text, and its calls
//! are parsed (and checked by the parser) afterwards.

use serde_json::{json, Value};

use crate::tools::parser::ToolCallFormat;

/// The Lark grammar for one or more calls (`parallel`) to any of `tools` (OpenAI's
/// `{"type": "function", "function": {"name", "parameters"}}` objects), in `format`'s markup.
/// Errors name what is wrong with a tool definition.
pub fn tool_call_grammar(format: ToolCallFormat, tools: &[&Value], parallel: bool) -> Result<String, String> {
    // Llama 3.x writes `parameters`, the others `arguments`.
    let args_key = match format {
        ToolCallFormat::Llama3Json => "parameters",
        ToolCallFormat::Hermes | ToolCallFormat::Mistral => "arguments",
    };
    let mut alternatives = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let function = tool.get("function").unwrap_or(tool);
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("tools[{i}] has no function name"))?;
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p) if p.is_object() => p.clone(),
            Some(_) => {
                return Err(format!(
                    "tools[{i}].function.parameters must be a JSON Schema object"
                ))
            }
        };
        alternatives.push(json!({
            "type": "object",
            "properties": {"name": {"const": name}, args_key: parameters},
            "required": ["name", args_key],
            "additionalProperties": false
        }));
    }
    if alternatives.is_empty() {
        return Err("no tools to call".into());
    }
    let mut call = if alternatives.len() == 1 {
        alternatives.remove(0)
    } else {
        json!({"anyOf": alternatives})
    };
    // Python's json.dumps layout, as the chat template showed the model.
    call["x-guidance"] = json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
    let repeat = |item: &str, sep: &str| {
        if parallel {
            format!("{item} ({sep} {item})*")
        } else {
            item.to_string()
        }
    };
    let body = format!("call_json: %json {call}\n");
    Ok(match format {
        ToolCallFormat::Hermes => format!(
            "start: {}\ncall: \"<tool_call>\\n\" call_json \"\\n</tool_call>\"\n{body}",
            repeat("call", "\"\\n\"")
        ),
        ToolCallFormat::Llama3Json => format!("start: {}\n{body}", repeat("call_json", "\"; \"")),
        ToolCallFormat::Mistral => format!(
            "start: \"[TOOL_CALLS][\" {} \"]\"\n{body}",
            repeat("call_json", "\", \"")
        ),
    })
}

/// The tools `tool_choice` allows: all of them for `"required"`, the named one for
/// `{"type": "function", "function": {"name": …}}`. `None` for `"auto"` / `"none"` (nothing is
/// forced). An unknown name or shape is an error message for the `tool_choice` parameter.
pub fn forced_tools<'a>(
    tools: &'a [Value],
    tool_choice: Option<&Value>,
) -> Result<Option<Vec<&'a Value>>, String> {
    let name_of = |t: &'a Value| t.get("function").unwrap_or(t).get("name").and_then(Value::as_str);
    match tool_choice {
        None => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" | "none" => Ok(None),
            "required" => Ok(Some(tools.iter().collect())),
            other => Err(format!(
                "tool_choice must be none, auto, required or a function, got {other:?}"
            )),
        },
        Some(choice) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or("tool_choice must name a function: {\"type\": \"function\", \"function\": {\"name\": ...}}")?;
            let tool = tools
                .iter()
                .find(|t| name_of(t) == Some(name))
                .ok_or_else(|| format!("tool_choice names {name:?}, which is not among the tools"))?;
            Ok(Some(vec![tool]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    #[test]
    fn hermes_grammar_wraps_constrained_json_in_markup() {
        let w = weather();
        let g = tool_call_grammar(ToolCallFormat::Hermes, &[&w], false).unwrap();
        assert!(
            g.starts_with("start: call\ncall: \"<tool_call>\\n\" call_json \"\\n</tool_call>\"\n"),
            "{g}"
        );
        assert!(g.contains(r#""name":{"const":"get_weather"}"#), "{g}");
        assert!(g.contains(r#""required":["name","arguments"]"#), "{g}");
        let g = tool_call_grammar(ToolCallFormat::Hermes, &[&w], true).unwrap();
        assert!(g.starts_with("start: call (\"\\n\" call)*\n"), "{g}");
    }

    #[test]
    fn llama3_uses_parameters_and_several_tools_are_alternatives() {
        let w = weather();
        let t = json!({"type": "function", "function": {"name": "time"}});
        let g = tool_call_grammar(ToolCallFormat::Llama3Json, &[&w, &t], false).unwrap();
        assert!(g.starts_with("start: call_json\n"), "{g}");
        assert!(
            g.contains("anyOf") && g.contains(r#""parameters":{"type":"object"}"#),
            "{g}"
        );
    }

    #[test]
    fn bad_tools_and_choices_are_named() {
        let bad = json!({"type": "function", "function": {"parameters": {}}});
        assert!(tool_call_grammar(ToolCallFormat::Hermes, &[&bad], false)
            .unwrap_err()
            .contains("tools[0]"));
        let tools = [weather()];
        assert_eq!(forced_tools(&tools, None).unwrap(), None);
        assert_eq!(forced_tools(&tools, Some(&json!("auto"))).unwrap(), None);
        assert_eq!(
            forced_tools(&tools, Some(&json!("required")))
                .unwrap()
                .unwrap()
                .len(),
            1
        );
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        assert_eq!(forced_tools(&tools, Some(&named)).unwrap().unwrap()[0], &tools[0]);
        let unknown = json!({"type": "function", "function": {"name": "nope"}});
        assert!(forced_tools(&tools, Some(&unknown)).unwrap_err().contains("nope"));
        assert!(forced_tools(&tools, Some(&json!("sometimes"))).is_err());
    }
}
