//! Mistral recorded outputs.

use serde_json::json;

use super::*;

#[test]
fn mistral_array_calls() {
    // Mistral 7B Instruct v0.3.
    let text = r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris, France", "format": "celsius"}}]"#;
    let args = json!({"city": "Paris, France", "format": "celsius"});
    check(Mistral, text, Some(WEATHER), None, &[("get_weather", args)]);
    let text = r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "create_event", "arguments": {"title": "Trip", "days": ["sat", "sun"], "budget": {"eur": 300.5}}}]"#;
    let calls = [
        ("get_weather", json!({"city": "Paris"})),
        (
            "create_event",
            json!({"title": "Trip", "days": ["sat", "sun"], "budget": {"eur": 300.5}}),
        ),
    ];
    check(Mistral, text, Some(WEATHER), None, &calls);
    // Decoded without special tokens: the bare array at the start.
    let text = r#"[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "create_event", "arguments": {"title": "Trip", "days": ["sat", "sun"], "budget": {"eur": 300.5}}}]"#;
    check(Mistral, text, Some(WEATHER), None, &calls);
    let text =
        "Let me check.\n[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]";
    check(Mistral, text, Some(WEATHER), Some("Let me check."), &calls[..1]);
}

#[test]
fn mistral_name_args_form() {
    // Tokenizer v11+ (Mistral Small 3.2, Magistral, Devstral).
    let text = r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"timezone": "Europe/Paris"}"#;
    let calls = [
        ("get_weather", json!({"city": "Paris"})),
        ("get_time", json!({"timezone": "Europe/Paris"})),
    ];
    check(Mistral, text, Some(WEATHER), None, &calls);
    let text = r#"[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}"#;
    check(Mistral, text, Some(WEATHER), None, &calls[..1]);
    let text = r#"[TOOL_CALLS]create_event[ARGS]{"title": "[ARGS] and [TOOL_CALLS]", "n": [1, {"x": 2}]}"#;
    let args = json!({"title": "[ARGS] and [TOOL_CALLS]", "n": [1, {"x": 2}]});
    check(Mistral, text, Some(WEATHER), None, &[("create_event", args)]);
}

#[test]
fn mistral_malformed_truncated_and_plain_are_content() {
    for text in [
        r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Par"#,
        r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "book_flight", "arguments": {}}]"#,
        r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": Paris}}]"#,
        r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Par"#,
        r#"[TOOL_CALLS]get_weather[ARG"#,
        r#"[TOOL_CALLS]book_flight[ARGS]{"to": "Paris"}"#,
        r#"[TOOL_CALLS]get weather[ARGS]{}"#,
        "[TOOL_CALLS]",
        "[1] Paris is the capital of France.",
        "[\"Paris\", \"Lyon\"]",
        r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#,
        "[TOOL",
    ] {
        check(Mistral, text, Some(WEATHER), Some(text), &[]);
    }
    let text = r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]"#;
    check(Mistral, text, None, Some(text), &[]);
}
