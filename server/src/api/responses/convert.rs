//! A Responses request as a chat request body (JSON, `/v1/chat/completions`' shape): what the
//! local model service plans (`plan_chat_request`) and what a route sends its tiers, local or
//! remote, so both see the same request. Function tools, `tool_choice` and `text.format` in
//! chat's shapes, and chat's errors renamed to the Responses fields they came from.

use serde_json::{json, Map, Value};

use crate::api::errors::ApiError;
use crate::api::responses::output::echo_f32;
use crate::api::responses::request::ResponsesRequest;

/// OpenAI's built-in (hosted) tools: refused by name, since this server runs none of them.
const BUILT_IN_TOOLS: &[&str] = &[
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "file_search",
    "computer_use_preview",
    "computer_use",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "custom",
    "tool_search",
];

/// Responses' function tools (`{"type": "function", "name", "description", "parameters",
/// "strict"}`) as chat's (`{"type": "function", "function": {...}}`).
pub fn chat_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let param = format!("tools[{i}]");
            let kind = tool
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid(format!("{param}.type"), "each tool needs a `type`"))?;
            match kind {
                "function" => {}
                builtin if BUILT_IN_TOOLS.contains(&builtin) => {
                    return Err(ApiError::invalid(
                        format!("{param}.type"),
                        format!(
                        "the built-in tool `{builtin}` is not supported by this server (only function tools)"
                    ),
                    ))
                }
                other => {
                    return Err(ApiError::invalid(
                        format!("{param}.type"),
                        format!("tools of type `{other}` are not supported (only `function`)"),
                    ))
                }
            }
            let name = tool.get("name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid(
                    format!("{param}.name"),
                    "a function tool needs a `name` (a string)",
                )
            })?;
            let mut function = json!({"name": name});
            for field in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(field).filter(|v| !v.is_null()) {
                    function[field] = v.clone();
                }
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// `tool_choice`: the strings as they are, `{"type": "function", "name"}` in chat's shape; the
/// hosted tools' choices are refused.
pub fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(fields) => match fields.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = fields.get("name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid("tool_choice.name", "a function tool_choice needs a `name`")
                })?;
                Ok(json!({"type": "function", "function": {"name": name}}))
            }
            Some(other) => Err(ApiError::invalid(
                "tool_choice.type",
                format!("tool_choice of type `{other}` is not supported (only none, auto, required or a function)"),
            )),
            None => Err(ApiError::invalid("tool_choice.type", "tool_choice needs a `type`")),
        },
        _ => Err(ApiError::invalid(
            "tool_choice",
            "tool_choice must be none, auto, required or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

/// `text.format` as chat's `response_format` (both JSON forms constrained alike).
pub fn response_format(format: &Value) -> Result<Value, ApiError> {
    let kind = format
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("text.format.type", "text.format needs a `type`"))?;
    match kind {
        "text" | "json_object" => Ok(json!({"type": kind})),
        "json_schema" => {
            if format.get("name").and_then(Value::as_str).is_none() {
                return Err(ApiError::invalid(
                    "text.format.name",
                    "a json_schema format needs a `name`",
                ));
            }
            let mut schema = Map::new();
            for field in ["name", "description", "schema", "strict"] {
                if let Some(v) = format.get(field).filter(|v| !v.is_null()) {
                    schema.insert(field.into(), v.clone());
                }
            }
            Ok(json!({"type": "json_schema", "json_schema": schema}))
        }
        other => Err(ApiError::invalid(
            "text.format.type",
            format!("text.format must be text, json_object or json_schema, got `{other}`"),
        )),
    }
}

/// The chat request body that answers `req` given its conversation as chat `messages`. Fields
/// the client left out are left out (a tier applies its own defaults). With `stream`, the usage
/// chunk is asked for: the final response carries `usage`.
pub fn chat_body(req: &ResponsesRequest, messages: Vec<Value>) -> Result<Value, ApiError> {
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
    let mut put = |key: &str, value: Value| {
        body.insert(key.into(), value);
    };
    // `max_tokens` rather than `max_completion_tokens`: every OpenAI-compatible server a
    // route may send this to reads it.
    if let Some(n) = req.max_output_tokens {
        put("max_tokens", json!(n));
    }
    // As the client wrote them (0.9, not the f32 nearest it widened: 0.8999999761581421).
    if let Some(t) = req.temperature {
        put("temperature", echo_f32(t));
    }
    if let Some(p) = req.top_p {
        put("top_p", echo_f32(p));
    }
    if req.wants_logprobs() {
        put("logprobs", json!(true));
        if let Some(n) = req.top_logprobs {
            put("top_logprobs", json!(n));
        }
    }
    if let Some(tools) = req.tools.as_deref().filter(|t| !t.is_empty()) {
        put("tools", Value::Array(chat_tools(tools)?));
    }
    if let Some(choice) = &req.tool_choice {
        put("tool_choice", chat_tool_choice(choice)?);
    }
    if let Some(parallel) = req.parallel_tool_calls {
        put("parallel_tool_calls", json!(parallel));
    }
    let format = req.text.as_ref().and_then(|t| t.format.as_ref());
    if let Some(format) = format.filter(|f| !f.is_null()) {
        put("response_format", response_format(format)?);
    }
    if req.stream == Some(true) {
        put("stream", json!(true));
        put("stream_options", json!({"include_usage": true}));
    }
    Ok(Value::Object(body))
}

/// Whether a request forces a function call (`tool_choice` `required` or a named function):
/// then an answer has no message item.
pub fn forces_call(req: &ResponsesRequest) -> bool {
    let has_tools = req.tools.as_ref().is_some_and(|t| !t.is_empty());
    has_tools
        && match &req.tool_choice {
            Some(Value::String(s)) => s == "required",
            Some(Value::Object(_)) => true,
            _ => false,
        }
}

/// An error from the chat planner, its `param` renamed to the Responses field it came from.
pub fn rename_param(mut e: ApiError) -> ApiError {
    if let Some(param) = e.body.error.param.take() {
        e.body.error.param = Some(responses_param(&param));
    }
    e
}

/// A chat request field as the Responses field it comes from.
pub fn responses_param(param: &str) -> String {
    if param == "messages" || param.starts_with("messages[") {
        return "input".into();
    }
    if param == "max_tokens" || param == "max_completion_tokens" {
        return "max_output_tokens".into();
    }
    // Logprobs are asked for by `include`.
    if param == "logprobs" {
        return "include".into();
    }
    if let Some(rest) = param.strip_prefix("response_format") {
        let rest = rest.strip_prefix(".json_schema").unwrap_or(rest);
        return format!("text.format{rest}");
    }
    if param.starts_with("tools[") {
        return param.replacen(".function", "", 1);
    }
    if param.starts_with("tool_choice") {
        return param.replacen(".function", "", 1);
    }
    param.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_params_are_renamed_to_responses_fields() {
        for (chat, responses) in [
            ("messages", "input"),
            ("messages[2].content", "input"),
            ("max_tokens", "max_output_tokens"),
            ("response_format", "text.format"),
            ("response_format.json_schema.schema", "text.format.schema"),
            ("tools[1].function.parameters", "tools[1].parameters"),
            ("tools", "tools"),
            ("tool_choice", "tool_choice"),
            ("temperature", "temperature"),
        ] {
            assert_eq!(responses_param(chat), responses, "{chat}");
        }
    }

    #[test]
    fn function_tools_take_chat_shape_and_built_ins_are_refused_by_name() {
        let tools =
            [json!({"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true})];
        assert_eq!(
            chat_tools(&tools).unwrap(),
            [
                json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}})
            ]
        );
        let e = chat_tools(&[tools[0].clone(), json!({"type": "web_search_preview"})]).unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("tools[1].type"));
        assert!(
            e.body.error.message.contains("`web_search_preview`"),
            "{}",
            e.body.error.message
        );
        let e = chat_tools(&[json!({"type": "function"})]).unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("tools[0].name"));
    }

    #[test]
    fn tool_choice_and_text_format_map_to_chat() {
        assert_eq!(chat_tool_choice(&json!("required")).unwrap(), json!("required"));
        assert_eq!(
            chat_tool_choice(&json!({"type": "function", "name": "f"})).unwrap(),
            json!({"type": "function", "function": {"name": "f"}})
        );
        let e = chat_tool_choice(&json!({"type": "file_search"})).unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("tool_choice.type"));
        let format =
            json!({"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true});
        assert_eq!(
            response_format(&format).unwrap(),
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!(
            response_format(&json!({"type": "json_object"})).unwrap(),
            json!({"type": "json_object"})
        );
        let e = response_format(&json!({"type": "json_schema", "schema": {}})).unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("text.format.name"));
    }
}
