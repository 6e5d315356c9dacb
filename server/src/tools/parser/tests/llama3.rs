//! Llama 3.x recorded outputs.

use serde_json::json;

use super::*;

#[test]
fn llama3_single_json_call() {
    // Llama 3.1 8B Instruct with custom tools in the user message.
    let text =
        r#"{"name": "get_weather", "parameters": {"city": "San Francisco, CA", "unit": "fahrenheit"}}"#;
    let args = json!({"city": "San Francisco, CA", "unit": "fahrenheit"});
    check(
        Llama3Json,
        text,
        Some(WEATHER),
        None,
        &[("get_weather", args.clone())],
    );
    // With `<|python_tag|>` and `<|eom_id|>` (decoded with special tokens), and Llama 3.2's
    // `"type": "function"`.
    let text = r#"<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "San Francisco, CA", "unit": "fahrenheit"}}<|eom_id|>"#;
    check(
        Llama3Json,
        text,
        Some(WEATHER),
        None,
        &[("get_weather", args.clone())],
    );
    // `arguments` instead of `parameters`, leading whitespace, `<|eot_id|>`.
    let text = "\n\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}<|eot_id|>";
    check(
        Llama3Json,
        text,
        Some(WEATHER),
        None,
        &[("get_weather", json!({"city": "Paris"}))],
    );
}

#[test]
fn llama3_parallel_calls() {
    let paris = ("get_weather", json!({"city": "Paris"}));
    let london = ("get_time", json!({"timezone": "Europe/London"}));
    for sep in ["; ", ";", "\n", "\n\n", " ; \n"] {
        let text = format!(
            r#"{{"name": "get_weather", "parameters": {{"city": "Paris"}}}}{sep}{{"name": "get_time", "parameters": {{"timezone": "Europe/London"}}}}"#
        );
        check(
            Llama3Json,
            &text,
            Some(WEATHER),
            None,
            &[paris.clone(), london.clone()],
        );
    }
    let text = r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {"timezone": "Europe/London"}}<|eom_id|>"#;
    check(
        Llama3Json,
        text,
        Some(WEATHER),
        None,
        &[paris.clone(), london.clone()],
    );
    let text = r#"[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {"timezone": "Europe/London"}}]"#;
    check(Llama3Json, text, Some(WEATHER), None, &[paris, london]);
}

#[test]
fn llama3_nested_arguments() {
    let text = r#"{"name": "create_event", "parameters": {"title": "Standup", "attendees": [{"email": "ana@example.org", "optional": false}, {"email": "bo@example.org", "optional": true}], "duration_minutes": 15, "priority": "high", "start": {"date": "2024-07-23", "time": {"h": 9, "m": 30}}, "score": -0.5e1, "tags": []}}"#;
    let args = json!({"title": "Standup", "attendees": [{"email": "ana@example.org", "optional": false},
        {"email": "bo@example.org", "optional": true}], "duration_minutes": 15, "priority": "high",
        "start": {"date": "2024-07-23", "time": {"h": 9, "m": 30}}, "score": -5.0, "tags": []});
    check(Llama3Json, text, Some(WEATHER), None, &[("create_event", args)]);
}

#[test]
fn llama3_builtin_tools() {
    // The model card's form (system prompt `Environment: ipython` / `Tools: brave_search,
    // wolfram_alpha`): not in the request's tools, still calls.
    let text =
        r#"<|python_tag|>brave_search.call(query="current weather in Menlo Park, California")<|eom_id|>"#;
    let args = json!({"query": "current weather in Menlo Park, California"});
    check(
        Llama3Json,
        text,
        Some(WEATHER),
        None,
        &[("brave_search", args.clone())],
    );
    // Decoded without special tokens: the tag is gone, the call is the whole answer.
    let text = r#"brave_search.call(query="current weather in Menlo Park, California")"#;
    check(Llama3Json, text, Some(WEATHER), None, &[("brave_search", args)]);
    let text = "<|python_tag|>wolfram_alpha.call(query=\"solve x^3 - 4x^2 + 6x - 24 = 0\")<|eom_id|>";
    let args = json!({"query": "solve x^3 - 4x^2 + 6x - 24 = 0"});
    check(Llama3Json, text, Some(WEATHER), None, &[("wolfram_alpha", args)]);
    // Keyword arguments of several types; a given tool in the same form.
    let text = "<|python_tag|>get_time.call(timezone='Europe/Paris', offset=-2, dst=True, fmt=None)";
    let args = json!({"timezone": "Europe/Paris", "offset": -2, "dst": true, "fmt": null});
    check(Llama3Json, text, Some(WEATHER), None, &[("get_time", args)]);
    // code_interpreter: raw Python after the tag.
    let text = "<|python_tag|>import math\nprint(math.factorial(10))\n<|eom_id|>";
    let args = json!({"code": "import math\nprint(math.factorial(10))"});
    check(
        Llama3Json,
        text,
        Some(WEATHER),
        None,
        &[("code_interpreter", args)],
    );
    let text = "I'll compute it.\n\n<|python_tag|>code_interpreter.call(code=\"print(2 ** 10)\")";
    let args = json!({"code": "print(2 ** 10)"});
    check(
        Llama3Json,
        text,
        Some(WEATHER),
        Some("I'll compute it."),
        &[("code_interpreter", args)],
    );
}

#[test]
fn llama3_content_around_calls() {
    let text =
        r#"Let me check the weather.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}"#;
    let call = ("get_weather", json!({"city": "Paris"}));
    check(
        Llama3Json,
        text,
        Some(WEATHER),
        Some("Let me check the weather."),
        std::slice::from_ref(&call),
    );
    let text = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n\nThat is all.";
    check(Llama3Json, text, Some(WEATHER), Some("That is all."), &[call]);
    // Bare JSON counts only at the start of the answer.
    let text = r#"Sure! {"name": "get_weather", "parameters": {"city": "Paris"}}"#;
    check(Llama3Json, text, Some(WEATHER), Some(text), &[]);
}

#[test]
fn llama3_plain_json_answers_are_content() {
    for text in [
        r#"{"answer": 42, "unit": "km"}"#,
        r#"{"name": "Alice", "age": 30}"#,
        // A given tool's name but no parameters: a JSON answer about the tool.
        r#"{"name": "get_weather", "description": "Gets the weather"}"#,
        r#"{"name": "get_weather", "parameters": "Paris"}"#,
        "[1, 2, 3]",
        "{Hello} there",
        "brave_searching the web is fun",
    ] {
        check(Llama3Json, text, Some(WEATHER), Some(text), &[]);
    }
}

#[test]
fn llama3_no_tools_given() {
    let text = r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#;
    check(Llama3Json, text, None, Some(text), &[]);
    check(Llama3Json, text, Some(&[]), Some(text), &[]);
    // Without tools even the built-in form stays text, and whitespace is kept.
    let text = "<|python_tag|>brave_search.call(query=\"x\")\n";
    check(Llama3Json, text, None, Some(text), &[]);
}

#[test]
fn llama3_malformed_and_truncated_are_content() {
    for text in [
        // max_tokens hit mid-call.
        r#"{"name": "get_weather", "parameters": {"city": "Par"#,
        r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}"#,
        r#"<|python_tag|>brave_search.call(query="weather in"#,
        "<|python_tag|>",
        // Not JSON.
        r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": Paris}}"#,
        r#"{"name": "get_weather", "parameters": {"city": "Paris",}}"#,
        // Unknown tool.
        r#"{"name": "book_flight", "parameters": {"to": "Paris"}}"#,
        r#"<|python_tag|>launch.call(target="moon")"#,
        r#"<|python_tag|>brave_search.call("positional")"#,
    ] {
        check(Llama3Json, text, Some(WEATHER), Some(text), &[]);
    }
    // A valid call, then a truncated one: the first stays a call.
    let text = r#"{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "param"#;
    let rest = r#"{"name": "get_time", "param"#;
    check(
        Llama3Json,
        text,
        Some(WEATHER),
        Some(rest),
        &[("get_weather", json!({"city": "Paris"}))],
    );
}

#[test]
fn llama3_markup_inside_strings() {
    let text =
        r#"{"name": "echo", "parameters": {"text": "say <|python_tag|>{\"name\": \"x\"}; <|eom_id|> } ]"}}"#;
    let args = json!({"text": "say <|python_tag|>{\"name\": \"x\"}; <|eom_id|> } ]"});
    check(Llama3Json, text, Some(WEATHER), None, &[("echo", args)]);
    let text = r#"<|python_tag|>brave_search.call(query="what does \"<|eom_id|>\" mean?")<|eom_id|>"#;
    let args = json!({"query": "what does \"<|eom_id|>\" mean?"});
    check(Llama3Json, text, Some(WEATHER), None, &[("brave_search", args)]);
}
