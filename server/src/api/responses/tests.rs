//! Input items (item references included), the request's refusals, and the conversation's
//! conversion to a chat request.

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::convert::chat_body;
use super::input::{chat_messages, check_call_outputs, normalize, ItemLookup};
use super::request::ResponsesRequest;
use crate::api::openai::{ChatCompletionRequest, SamplingFields};
use crate::api::validation::from_value;

fn param(e: crate::api::errors::ApiError) -> String {
    e.body.error.param.unwrap_or_default()
}

/// No stored items.
const NOTHING: ItemLookup = &|_| None;

fn text(message: &Value) -> &str {
    message["content"].as_str().unwrap_or("")
}

#[test]
fn a_string_input_is_one_user_message_with_an_id() {
    let items = normalize(Some(&json!("hi")), NOTHING).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["role"], "user");
    assert_eq!(items[0]["content"], json!([{"type": "input_text", "text": "hi"}]));
    assert!(items[0]["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
}

#[test]
fn items_become_chat_messages_with_calls_and_results() {
    let input = json!([
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "thinking", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"x\":1}"},
        {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "one"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "two"}]},
    ]);
    let items = normalize(Some(&input), NOTHING).unwrap();
    check_call_outputs(&[], &items).unwrap();
    let messages = chat_messages(Some("sys"), &items);
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        roles,
        ["system", "developer", "user", "assistant", "tool", "tool"]
    );
    assert_eq!(text(&messages[2]), "ab");
    assert_eq!(text(&messages[3]), "thinking");
    // Both calls join the assistant message before them, in chat's shape.
    let calls = messages[3]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(
        calls[0]["function"],
        json!({"name": "f", "arguments": "{\"x\":1}"})
    );
    assert_eq!(messages[4]["tool_call_id"], "call_1");
    assert_eq!(text(&messages[5]), "two");
}

#[test]
fn a_call_without_a_message_before_it_is_an_assistant_message_of_its_own() {
    let input = json!([
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    ]);
    let messages = chat_messages(None, &normalize(Some(&input), NOTHING).unwrap());
    assert_eq!(messages[1]["role"], "assistant");
    assert!(messages[1]["content"].is_null());
}

#[test]
fn bad_items_name_their_field() {
    let cases = [
        (json!([]), "input"),
        (json!(3), "input"),
        (json!(["hi"]), "input[0]"),
        (json!([{"content": "hi"}]), "input[0].type"),
        (json!([{"role": "robot", "content": "x"}]), "input[0].role"),
        (json!([{"role": "user"}]), "input[0].content"),
        (
            json!([{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]),
            "input[0].content[0].type",
        ),
        (
            json!([{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]),
            "input[0].content[0].type",
        ),
        (
            json!([{"type": "function_call", "name": "f", "arguments": "{}"}]),
            "input[0].call_id",
        ),
        (
            json!([{"type": "function_call_output", "call_id": "c"}]),
            "input[0].output",
        ),
        (json!([{"type": "item_reference", "id": "x"}]), "input[0].id"),
        (json!([{"type": "item_reference"}]), "input[0].id"),
        (json!([{"type": "reasoning", "summary": []}]), "input[0].type"),
        (json!([{"type": "web_search_call"}]), "input[0].type"),
    ];
    for (input, want) in cases {
        let e = normalize(Some(&input), NOTHING).expect_err(&input.to_string());
        assert_eq!(param(e), want, "{input}");
    }
}

#[test]
fn a_call_output_must_answer_an_earlier_call() {
    let items = normalize(
        Some(&json!([{"type": "function_call_output", "call_id": "c9", "output": "x"}])),
        NOTHING,
    )
    .unwrap();
    assert_eq!(
        param(check_call_outputs(&[], &items).unwrap_err()),
        "input[0].call_id"
    );
    let earlier = normalize(
        Some(&json!([{"type": "function_call", "call_id": "c9", "name": "f", "arguments": "{}"}])),
        NOTHING,
    )
    .unwrap();
    check_call_outputs(&earlier, &items).unwrap();
}

fn refused(body: Value) -> String {
    let bytes = Bytes::from(body.to_string());
    param(ResponsesRequest::parse(&bytes).expect_err(&body.to_string()))
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    let base = |extra: Value| {
        let mut body = json!({"model": "m", "input": "hi"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        body
    };
    assert_eq!(refused(base(json!({"frobnicate": 1}))), "frobnicate");
    assert_eq!(refused(base(json!({"background": true}))), "background");
    assert_eq!(
        refused(base(json!({"reasoning": {"effort": "low"}}))),
        "reasoning"
    );
    assert_eq!(refused(base(json!({"conversation": "conv_1"}))), "conversation");
    assert_eq!(refused(base(json!({"truncation": "auto"}))), "truncation");
    assert_eq!(
        refused(base(json!({"include": ["file_search_call.results"]}))),
        "include[0]"
    );
    assert_eq!(refused(base(json!({"top_logprobs": 21}))), "top_logprobs");
    assert_eq!(refused(base(json!({"temperature": "hot"}))), "temperature");
    assert_eq!(
        refused(base(json!({"text": {"format": {"type": "text"}, "x": 1}}))),
        "text.x"
    );
    let long = "v".repeat(513);
    assert_eq!(refused(base(json!({"metadata": {"k": long}}))), "metadata.k");
    assert_eq!(refused(json!({"input": "hi"})), "model");
    // What asks for nothing is accepted.
    let ok = base(
        json!({"background": false, "reasoning": {"effort": null}, "truncation": "disabled", "store": false}),
    );
    ResponsesRequest::parse(&Bytes::from(ok.to_string())).unwrap();
}

#[test]
fn an_item_reference_is_the_stored_item_and_an_unknown_one_a_404() {
    let stored = json!({"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f",
        "arguments": "{}", "status": "completed"});
    let lookup = |id: &str| (id == "fc_1").then(|| stored.clone());
    let input = json!([
        {"role": "user", "content": "q"},
        {"type": "item_reference", "id": "fc_1"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]);
    let items = normalize(Some(&input), &lookup).unwrap();
    assert_eq!(items[1], stored, "the item itself, its id kept");
    // The referenced call is what the output answers.
    check_call_outputs(&[], &items).unwrap();
    let messages = chat_messages(None, &items);
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_1");
    assert_eq!(messages[2]["tool_call_id"], "call_1");
    let e = normalize(
        Some(&json!(["hi", {"type": "item_reference", "id": "fc_2"}])),
        &lookup,
    );
    // `"hi"` fails first: items are checked in order.
    assert_eq!(param(e.unwrap_err()), "input[0]");
    let e = normalize(
        Some(&json!([{"role": "user", "content": "q"}, {"type": "item_reference", "id": "fc_2"}])),
        &lookup,
    )
    .unwrap_err();
    assert_eq!(e.status, StatusCode::NOT_FOUND);
    assert_eq!(param(e.clone()), "input[1].id");
    assert!(e.body.error.message.contains("fc_2"), "{}", e.body.error.message);
}

fn parsed(body: Value) -> ResponsesRequest {
    ResponsesRequest::parse(&Bytes::from(body.to_string())).unwrap()
}

#[test]
fn the_chat_body_is_a_chat_request_with_only_what_was_asked() {
    let req = parsed(
        json!({"model": "m", "input": "hi", "max_output_tokens": 9, "temperature": 0.5,
        "top_p": 0.9, "include": ["message.output_text.logprobs"], "top_logprobs": 2,
        "text": {"format": {"type": "json_object"}}, "stream": true, "metadata": {"k": "v"}}),
    );
    let messages = chat_messages(Some("sys"), &normalize(req.input.as_ref(), NOTHING).unwrap());
    let body = chat_body(&req, messages).unwrap();
    assert_eq!(
        body,
        json!({"model": "m", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
            "max_tokens": 9, "temperature": 0.5, "top_p": 0.9, "logprobs": true, "top_logprobs": 2,
            "response_format": {"type": "json_object"}, "stream": true,
            "stream_options": {"include_usage": true}})
    );
    // The local path reads it as `/v1/chat/completions` would.
    let chat: ChatCompletionRequest = from_value(&body).unwrap();
    let sampling: SamplingFields = from_value(&body).unwrap();
    assert_eq!(
        (chat.messages.len(), chat.logprobs, chat.top_logprobs),
        (2, Some(true), Some(2))
    );
    assert_eq!((sampling.max_tokens, sampling.temperature), (Some(9), Some(0.5)));
    assert!(sampling.stream_options.is_some_and(|o| o.include_usage));
    // Nothing asked, nothing sent: a tier's defaults apply.
    let req = parsed(
        json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}],
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": false}),
    );
    let body = chat_body(&req, Vec::new()).unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["model", "messages", "tools", "tool_choice", "parallel_tool_calls"]
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
}
