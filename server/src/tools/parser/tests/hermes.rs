//! Hermes / Qwen 2.5 recorded outputs.

use serde_json::json;

use super::*;

#[test]
fn hermes_single_call() {
    // Qwen2.5-7B-Instruct.
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>";
    let args = json!({"city": "Paris", "unit": "celsius"});
    check(
        Hermes,
        text,
        Some(WEATHER),
        None,
        &[("get_weather", args.clone())],
    );
    // Hermes 2 Pro puts `arguments` first.
    let text = "<tool_call>\n{\"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}, \"name\": \"get_weather\"}\n</tool_call>";
    check(Hermes, text, Some(WEATHER), None, &[("get_weather", args)]);
    // The exact arguments text: compact.
    let m = parse(
        Hermes,
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\":  \"Paris\"}}</tool_call>",
        Some(&tools(WEATHER)),
    );
    assert_eq!(m.tool_calls[0].arguments, r#"{"city":"Paris"}"#);
}

#[test]
fn hermes_parallel_calls_and_content_before() {
    let text = "I'll look up both for you.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"timezone\": \"Europe/Paris\"}}\n</tool_call>";
    let calls = [
        ("get_weather", json!({"city": "Paris"})),
        ("get_time", json!({"timezone": "Europe/Paris"})),
    ];
    check(
        Hermes,
        text,
        Some(WEATHER),
        Some("I'll look up both for you."),
        &calls,
    );
    // No separator, closing tag of the first missing, text after.
    let text = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}<tool_call>{\"name\": \"get_time\", \"arguments\": {\"timezone\": \"Europe/Paris\"}}</tool_call>\nDone.";
    check(Hermes, text, Some(WEATHER), Some("Done."), &calls);
    // An array in one block.
    let text = "<tool_call>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {\"timezone\": \"Europe/Paris\"}}]</tool_call>";
    check(Hermes, text, Some(WEATHER), None, &calls);
}

#[test]
fn hermes_nested_arguments_and_variants() {
    let text = "<tool_call>\n{\"name\": \"create_event\", \"arguments\": {\"title\": \"Review\", \"when\": {\"day\": \"friday\", \"slots\": [9, 10.5]}, \"invitees\": [{\"name\": \"Ana\", \"role\": \"owner\"}], \"private\": true, \"notes\": null}}\n</tool_call>";
    let args = json!({"title": "Review", "when": {"day": "friday", "slots": [9, 10.5]},
        "invitees": [{"name": "Ana", "role": "owner"}], "private": true, "notes": null});
    check(Hermes, text, Some(WEATHER), None, &[("create_event", args)]);
    // Arguments as a JSON string, absent arguments, raw newlines in a string value.
    let text = r#"<tool_call>{"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}</tool_call>"#;
    check(
        Hermes,
        text,
        Some(WEATHER),
        None,
        &[("get_weather", json!({"city": "Paris"}))],
    );
    let text = r#"<tool_call>{"name": "get_time"}</tool_call>"#;
    check(Hermes, text, Some(WEATHER), None, &[("get_time", json!({}))]);
    let text =
        "<tool_call>{\"name\": \"write_file\", \"arguments\": {\"text\": \"line 1\nline 2\"}}</tool_call>";
    check(
        Hermes,
        text,
        Some(WEATHER),
        None,
        &[("write_file", json!({"text": "line 1\nline 2"}))],
    );
    // The output ends right after the JSON (closing tag cut or used as a stop string).
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool";
    check(
        Hermes,
        text,
        Some(WEATHER),
        None,
        &[("get_weather", json!({"city": "Paris"}))],
    );
}

#[test]
fn hermes_malformed_and_truncated_are_content() {
    for text in [
        // Missing brace, max_tokens mid-call, a cut-off tag, not JSON, unknown tool.
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}\n</tool_call>",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
        "Checking.\n<tool_ca",
        "<tool_call>\nget_weather(city=\"Paris\")\n</tool_call>",
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\",}}</tool_call>",
        "<tool_call>{\"name\": \"book_flight\", \"arguments\": {\"to\": \"Paris\"}}</tool_call>",
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": [\"Paris\"]}</tool_call>",
        "<tool_call>[]</tool_call>",
        "Wrap each call in <tool_call> tags.",
        "<tool_call>",
    ] {
        check(Hermes, text, Some(WEATHER), Some(text), &[]);
    }
    // The second of two calls is cut off: the first stays a call, the rest is content.
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"argu";
    let rest = "<tool_call>\n{\"name\": \"get_time\", \"argu";
    check(
        Hermes,
        text,
        Some(WEATHER),
        Some(rest),
        &[("get_weather", json!({"city": "Paris"}))],
    );
}

#[test]
fn hermes_markup_inside_strings() {
    let text = "<tool_call>\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"notes.md\", \"text\": \"Use <tool_call> and </tool_call> tags, {like [this]}\"}}\n</tool_call>";
    let args = json!({"path": "notes.md", "text": "Use <tool_call> and </tool_call> tags, {like [this]}"});
    check(Hermes, text, Some(WEATHER), None, &[("write_file", args)]);
}

#[test]
fn hermes_no_tools_given_and_plain_answers() {
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    check(Hermes, text, None, Some(text), &[]);
    // Bare JSON that is not a call to a given tool stays content.
    let text = "{\"name\": \"get_forecast\", \"arguments\": {\"city\": \"Paris\"}}";
    check(Hermes, text, Some(WEATHER), Some(text), &[]);
    let text = "{\"city\": \"Paris\", \"temp\": 21}";
    check(Hermes, text, Some(WEATHER), Some(text), &[]);
    let text = "  The weather in Paris is sunny.\n\n";
    check(
        Hermes,
        text,
        Some(WEATHER),
        Some("The weather in Paris is sunny."),
        &[],
    );
    check(Hermes, text, None, Some(text), &[]);
    check(Hermes, "", Some(WEATHER), Some(""), &[]);
}

#[test]
fn hermes_bare_and_fenced_calls_as_the_whole_answer() {
    let args = json!({"city": "Paris"});
    // Qwen2.5-Coder-0.5B under tool_choice auto (recorded from wick with its template).
    let text = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
    check(
        Hermes,
        text,
        Some(WEATHER),
        None,
        &[("get_weather", args.clone())],
    );
    // Qwen2.5-Coder-1.5B's habit: a markdown fence.
    let text = "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```";
    check(
        Hermes,
        text,
        Some(WEATHER),
        None,
        &[("get_weather", args.clone())],
    );
    let text = "\n```\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```\nDone.";
    check(
        Hermes,
        text,
        Some(WEATHER),
        Some("Done."),
        &[("get_weather", args.clone())],
    );
    // Without tools, or without `arguments`, or not at the start: content.
    let text = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
    check(Hermes, text, None, Some(text), &[]);
    let text = "{\"name\": \"get_weather\"}";
    check(Hermes, text, Some(WEATHER), Some(text), &[]);
    let text = "Here: {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
    check(Hermes, text, Some(WEATHER), Some(text), &[]);
    let text = "```python\nprint(1)\n```";
    check(Hermes, text, Some(WEATHER), Some(text), &[]);
    // Cut off inside the fence: content.
    let text = "```json\n{\"name\": \"get_weather\", \"argu";
    check(Hermes, text, Some(WEATHER), Some(text), &[]);
}
