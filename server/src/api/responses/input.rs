//! `input`: a string or a list of items, checked and normalized to the item shapes the API
//! returns (each with an `id` and `status`, content as part lists; an `item_reference` replaced
//! by the stored item it names), then turned into chat messages (JSON, as a chat request has
//! them). A stored conversation is kept in the normalized shapes, so a follow-up's prefix and
//! its new items go through the same conversion.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use crate::api::errors::ApiError;

/// A fresh item or response id in OpenAI's form: `{prefix}_` and 32 hex digits.
pub fn new_id(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}_{n:032x}")
}

/// Finds a stored item by id, for `item_reference` (`ResponseStore::item`).
pub type ItemLookup<'a> = &'a dyn Fn(&str) -> Option<Value>;

/// `input` as normalized items. A string is one user message; an `item_reference` is the item
/// `lookup` finds.
pub fn normalize(input: Option<&Value>, lookup: ItemLookup) -> Result<Vec<Value>, ApiError> {
    match input {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![message_item("user", vec![input_text(text)])]),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::invalid("input", "input must not be an empty list"));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| normalize_item(item, i, lookup))
                .collect()
        }
        Some(_) => Err(ApiError::invalid(
            "input",
            "input must be a string or a list of input items",
        )),
    }
}

fn input_text(text: &str) -> Value {
    json!({"type": "input_text", "text": text})
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

fn message_item(role: &str, content: Vec<Value>) -> Value {
    let prefix = if role == "assistant" { "msg" } else { "msg_in" };
    json!({"id": new_id(prefix), "type": "message", "role": role, "content": content, "status": "completed"})
}

fn str_field<'a>(item: &'a Map<String, Value>, field: &str, param: &str) -> Result<&'a str, ApiError> {
    item.get(field).and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            format!("{param}.{field}"),
            format!("this item needs `{field}` (a string)"),
        )
    })
}

fn normalize_item(item: &Value, index: usize, lookup: ItemLookup) -> Result<Value, ApiError> {
    let param = format!("input[{index}]");
    let fields = item
        .as_object()
        .ok_or_else(|| ApiError::invalid(&param, "each input item must be an object"))?;
    // Messages may leave `type` out (the "easy" form: `{"role", "content"}`).
    let kind = match fields.get("type") {
        None if fields.contains_key("role") => "message",
        None => {
            return Err(ApiError::invalid(
                format!("{param}.type"),
                "the item needs a `type`",
            ))
        }
        Some(t) => t
            .as_str()
            .ok_or_else(|| ApiError::invalid(format!("{param}.type"), "`type` must be a string"))?,
    };
    let id = |prefix: &str| {
        fields
            .get("id")
            .and_then(Value::as_str)
            .map_or_else(|| new_id(prefix), str::to_string)
    };
    match kind {
        "message" => {
            let role = str_field(fields, "role", &param)?;
            if !matches!(role, "user" | "system" | "developer" | "assistant") {
                return Err(ApiError::invalid(
                    format!("{param}.role"),
                    format!("unknown role `{role}` (expected user, system, developer or assistant)"),
                ));
            }
            let content = message_content(fields.get("content"), role, &param)?;
            let mut item = message_item(role, content);
            item["id"] = Value::String(id(if role == "assistant" { "msg" } else { "msg_in" }));
            Ok(item)
        }
        "function_call" => {
            let call_id = str_field(fields, "call_id", &param)?;
            let name = str_field(fields, "name", &param)?;
            let arguments = str_field(fields, "arguments", &param)?;
            Ok(json!({
                "id": id("fc"), "type": "function_call", "call_id": call_id, "name": name,
                "arguments": arguments, "status": "completed",
            }))
        }
        "function_call_output" => {
            let call_id = str_field(fields, "call_id", &param)?;
            let output = match fields.get("output") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    Value::Array(text_parts(parts, "input_text", &format!("{param}.output"))?)
                }
                _ => {
                    return Err(ApiError::invalid(
                        format!("{param}.output"),
                        "a function_call_output needs `output` (a string or input_text parts)",
                    ))
                }
            };
            Ok(json!({
                "id": id("fco"), "type": "function_call_output", "call_id": call_id,
                "output": output, "status": "completed",
            }))
        }
        "item_reference" => {
            let id = str_field(fields, "id", &param)?;
            // OpenAI's answer to an id it does not have: a 404 naming the item.
            lookup(id).ok_or_else(|| {
                let mut e = ApiError::not_found(format!(
                    "Item with id '{id}' not found: it is no item of a stored response (never was, expired, evicted or deleted)."
                ));
                e.body.error.param = Some(format!("{param}.id"));
                e
            })
        }
        "reasoning" => Err(ApiError::invalid(
            format!("{param}.type"),
            "reasoning items are not supported: the models this server runs do not reason",
        )),
        other => Err(ApiError::invalid(
            format!("{param}.type"),
            format!("input items of type `{other}` are not supported by this server"),
        )),
    }
}

/// A message's content as a part list: a string becomes one text part; parts must be text
/// (`input_text`, or `output_text`/`refusal` for an assistant).
fn message_content(content: Option<&Value>, role: &str, param: &str) -> Result<Vec<Value>, ApiError> {
    let param = format!("{param}.content");
    let assistant = role == "assistant";
    match content {
        Some(Value::String(s)) if assistant => Ok(vec![output_text(s)]),
        Some(Value::String(s)) => Ok(vec![input_text(s)]),
        Some(Value::Array(parts)) if assistant => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                let p = format!("{param}[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("output_text") => {
                        let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            ApiError::invalid(format!("{p}.text"), "an output_text part needs `text`")
                        })?;
                        Ok(output_text(text))
                    }
                    Some("refusal") => {
                        let refusal = part.get("refusal").and_then(Value::as_str).ok_or_else(|| {
                            ApiError::invalid(format!("{p}.refusal"), "a refusal part needs `refusal`")
                        })?;
                        Ok(json!({"type": "refusal", "refusal": refusal}))
                    }
                    other => Err(ApiError::invalid(
                        format!("{p}.type"),
                        format!(
                            "an assistant message's parts must be output_text or refusal, got {}",
                            other.unwrap_or("no type")
                        ),
                    )),
                }
            })
            .collect(),
        Some(Value::Array(parts)) => text_parts(parts, "input_text", &param),
        _ => Err(ApiError::invalid(
            param,
            "a message needs `content` (a string or a list of content parts)",
        )),
    }
}

/// Parts that must all be text parts of type `kind` (images, files and audio are refused: the
/// models this server runs read text only).
fn text_parts(parts: &[Value], kind: &str, param: &str) -> Result<Vec<Value>, ApiError> {
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| {
            let p = format!("{param}[{j}]");
            match part.get("type").and_then(Value::as_str) {
                Some(t) if t == kind => {
                    let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::invalid(format!("{p}.text"), format!("an {kind} part needs `text`"))
                    })?;
                    Ok(json!({"type": kind, "text": text}))
                }
                Some(other) => Err(ApiError::invalid(
                    format!("{p}.type"),
                    format!("content parts of type `{other}` are not supported by this model (only {kind})"),
                )),
                None => Err(ApiError::invalid(
                    format!("{p}.type"),
                    "each content part needs a `type`",
                )),
            }
        })
        .collect()
}

/// A normalized part list's text (text parts joined; a refusal counts as its text).
fn parts_text(parts: &Value) -> String {
    let mut text = String::new();
    for part in parts.as_array().into_iter().flatten() {
        if let Some(t) = part
            .get("text")
            .or_else(|| part.get("refusal"))
            .and_then(Value::as_str)
        {
            text.push_str(t);
        }
    }
    text
}

/// Every `function_call_output` must answer a `function_call` earlier in the conversation
/// (OpenAI's rule; a dangling result would reach the template with nothing to attach to).
/// `prefix` is the stored conversation, `items` the new input.
pub fn check_call_outputs(prefix: &[Value], items: &[Value]) -> Result<(), ApiError> {
    let mut calls: HashSet<&str> = prefix
        .iter()
        .filter(|i| i["type"] == "function_call")
        .filter_map(|i| i["call_id"].as_str())
        .collect();
    for (index, item) in items.iter().enumerate() {
        let call_id = item["call_id"].as_str();
        match item["type"].as_str() {
            Some("function_call") => calls.extend(call_id),
            Some("function_call_output") if !call_id.is_some_and(|c| calls.contains(c)) => {
                return Err(ApiError::invalid(
                    format!("input[{index}].call_id"),
                    format!(
                        "no function_call found for the function_call_output with call_id `{}`",
                        call_id.unwrap_or_default()
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Normalized items as chat messages (JSON, as a chat request has them): `instructions` first
/// (a system message), then each message; consecutive function calls join the assistant
/// message before them as its `tool_calls`, and each call's output becomes a `tool` message.
pub fn chat_messages(instructions: Option<&str>, items: &[Value]) -> Vec<Value> {
    let mut messages: Vec<Value> = Vec::with_capacity(items.len() + 1);
    if let Some(text) = instructions {
        messages.push(json!({"role": "system", "content": text}));
    }
    for item in items {
        match item["type"].as_str() {
            Some("message") => {
                let role = item["role"].as_str().unwrap_or("user");
                messages.push(json!({"role": role, "content": parts_text(&item["content"])}));
            }
            Some("function_call") => {
                let call = json!({
                    "id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                });
                let open = messages
                    .last_mut()
                    .filter(|m| m["role"] == "assistant")
                    .and_then(Value::as_object_mut);
                match open {
                    Some(m) => match m.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        Some(calls) => calls.push(call),
                        None => {
                            m.insert("tool_calls".into(), json!([call]));
                        }
                    },
                    None => {
                        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}))
                    }
                }
            }
            Some("function_call_output") => {
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    parts => parts_text(parts),
                };
                messages.push(json!({"role": "tool", "content": output, "tool_call_id": item["call_id"]}));
            }
            // Normalization admits nothing else.
            _ => {}
        }
    }
    messages
}
