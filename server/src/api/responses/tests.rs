//! Input items, the request's refusals and the conversation's conversion to chat messages.

use axum::body::Bytes;
use serde_json::{json, Value};

use super::input::{chat_messages, check_call_outputs, normalize};
use super::request::ResponsesRequest;
use crate::api::openai::MessageContent;

fn param(e: crate::api::errors::ApiError) -> String {
    e.body.error.param.unwrap_or_default()
}

fn text(content: &Option<MessageContent>) -> &str {
    match content {
        Some(MessageContent::Text(t)) => t,
        _ => "",
    }
}

#[test]
fn a_string_input_is_one_user_message_with_an_id() {
    let items = normalize(Some(&json!("hi"))).unwrap();
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
    let items = normalize(Some(&input)).unwrap();
    check_call_outputs(&[], &items).unwrap();
    let messages = chat_messages(Some("sys"), &items);
    let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(
        roles,
        ["system", "developer", "user", "assistant", "tool", "tool"]
    );
    assert_eq!(text(&messages[2].content), "ab");
    assert_eq!(text(&messages[3].content), "thinking");
    // Both calls join the assistant message before them, in chat's shape.
    let calls = messages[3].tool_calls.as_ref().and_then(Value::as_array).unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(
        calls[0]["function"],
        json!({"name": "f", "arguments": "{\"x\":1}"})
    );
    assert_eq!(messages[4].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(text(&messages[5].content), "two");
}

#[test]
fn a_call_without_a_message_before_it_is_an_assistant_message_of_its_own() {
    let input = json!([
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    ]);
    let messages = chat_messages(None, &normalize(Some(&input)).unwrap());
    assert_eq!(messages[1].role, "assistant");
    assert!(messages[1].content.is_none());
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
        (json!([{"type": "item_reference", "id": "x"}]), "input[0].type"),
        (json!([{"type": "reasoning", "summary": []}]), "input[0].type"),
        (json!([{"type": "web_search_call"}]), "input[0].type"),
    ];
    for (input, want) in cases {
        let e = normalize(Some(&input)).expect_err(&input.to_string());
        assert_eq!(param(e), want, "{input}");
    }
}

#[test]
fn a_call_output_must_answer_an_earlier_call() {
    let items = normalize(Some(
        &json!([{"type": "function_call_output", "call_id": "c9", "output": "x"}]),
    ))
    .unwrap();
    assert_eq!(
        param(check_call_outputs(&[], &items).unwrap_err()),
        "input[0].call_id"
    );
    let earlier = normalize(Some(
        &json!([{"type": "function_call", "call_id": "c9", "name": "f", "arguments": "{}"}]),
    ))
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
