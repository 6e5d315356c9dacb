//! Recorded outputs in each format. Every case is also streamed under many splits (all split
//! points of short outputs, every char alone, random splits) and must give the same content and
//! calls as the non-streamed parse, with OpenAI-shaped deltas.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::ToolCallFormat::{Hermes, Llama3Json, Mistral};
use super::*;

const WEATHER: &[&str] = &["get_weather", "get_time", "create_event", "echo", "write_file"];

fn tools(names: &[&str]) -> Vec<Value> {
    names
        .iter()
        .map(|n| json!({"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}))
        .collect()
}

fn is_call_id(id: &str) -> bool {
    id.len() == 29 && id.starts_with("call_") && id[5..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Parses `text` (and streams it under many splits) and checks the exact result: `content`,
/// and the calls' names and `arguments` (the compact JSON text of each object).
#[track_caller]
fn check(
    format: ToolCallFormat,
    text: &str,
    names: Option<&[&str]>,
    content: Option<&str>,
    calls: &[(&str, Value)],
) {
    let tools = names.map(tools);
    let parsed = parse(format, text, tools.as_deref());
    assert_eq!(parsed.content.as_deref(), content, "content of {text:?}");
    let got: Vec<(&str, Value)> = parsed
        .tool_calls
        .iter()
        .map(|c| {
            assert!(is_call_id(&c.id), "id {:?}", c.id);
            let args: Value = serde_json::from_str(&c.arguments).expect("arguments are JSON");
            assert!(args.is_object(), "arguments {:?}", c.arguments);
            assert_eq!(c.arguments, args.to_string(), "arguments are compact JSON");
            (c.name.as_str(), args)
        })
        .collect();
    assert_eq!(got, calls, "calls of {text:?}");
    check_streaming(format, text, tools.as_deref(), &parsed);
}

/// Streams `text` split at many points; each run must reassemble into `expected`.
fn check_streaming(format: ToolCallFormat, text: &str, tools: Option<&[Value]>, expected: &ParsedMessage) {
    let bounds: Vec<usize> = (1..text.len()).filter(|&i| text.is_char_boundary(i)).collect();
    let mut splits: Vec<Vec<usize>> = vec![vec![], bounds.clone()];
    if bounds.len() <= 400 {
        splits.extend(bounds.iter().map(|&i| vec![i]));
    }
    if bounds.len() <= 60 {
        for (a, &i) in bounds.iter().enumerate() {
            splits.extend(bounds[a + 1..].iter().map(|&j| vec![i, j]));
        }
    }
    let mut rng = StdRng::seed_from_u64(text.len() as u64);
    for _ in 0..200 {
        let mut cut: Vec<usize> = bounds.iter().copied().filter(|_| rng.random_bool(0.3)).collect();
        cut.dedup();
        splits.push(cut);
    }
    for cut in splits {
        let mut pieces = Vec::new();
        let mut last = 0;
        for &i in cut.iter().chain([text.len()].iter()) {
            pieces.push(&text[last..i]);
            last = i;
        }
        let mut parser = StreamingToolParser::new(format, tools);
        let mut deltas = Vec::new();
        for piece in &pieces {
            deltas.extend(parser.push(piece));
        }
        deltas.extend(parser.finish());
        check_delta_shape(&deltas);
        let streamed = ParsedMessage::from_deltas(deltas);
        assert_eq!(
            streamed.content, expected.content,
            "streamed content, pieces {pieces:?}"
        );
        let strip = |m: &ParsedMessage| -> Vec<(String, String)> {
            m.tool_calls
                .iter()
                .map(|c| (c.name.clone(), c.arguments.clone()))
                .collect()
        };
        assert_eq!(
            strip(&streamed),
            strip(expected),
            "streamed calls, pieces {pieces:?}"
        );
    }
}

/// OpenAI's shape: indices 0, 1, … in order; a call's first delta has `id` and `name`, the
/// others neither; no empty content deltas.
fn check_delta_shape(deltas: &[StreamDelta]) {
    let mut seen = 0;
    for d in deltas {
        match d {
            StreamDelta::Content(text) => assert!(!text.is_empty()),
            StreamDelta::ToolCallDelta { index, id, name, .. } => {
                if *index == seen {
                    assert!(id.as_deref().is_some_and(is_call_id) && name.is_some(), "{d:?}");
                    seen += 1;
                } else {
                    assert_eq!(*index + 1, seen, "{d:?}");
                    assert!(id.is_none() && name.is_none(), "{d:?}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Llama 3.x

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

// ---------------------------------------------------------------------------------------------
// Hermes / Qwen

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
    let text = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
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

// ---------------------------------------------------------------------------------------------
// Mistral

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

// ---------------------------------------------------------------------------------------------
// Formats, detection, prompt, streaming shape

#[test]
fn format_names_and_detection() {
    for f in ToolCallFormat::ALL {
        assert_eq!(f.name().parse::<ToolCallFormat>(), Ok(f));
        assert_eq!(f.to_string(), f.name());
    }
    assert_eq!(
        "pythonic".parse::<ToolCallFormat>(),
        Err(UnknownToolCallFormat("pythonic".into()))
    );
    // Excerpts of the families' templates.
    let llama31 = r#"{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}{%- if builtin_tools is defined or tools is not none %}{{- "Environment: ipython\n" }}{%- endif %}{{- '{"name": function name, "parameters": dictionary of argument name and its value}' }}{{- "<|python_tag|>" + tool_call.name + ".call(" }}"#;
    let llama32 = r#"{{- "<|start_header_id|>user<|end_header_id|>\n\n" -}}{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}"#;
    let qwen = r#"{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}"#;
    let mistral =
        r#"{{- "[AVAILABLE_TOOLS] [" }}{%- elif message.tool_calls is defined %}{{- "[TOOL_CALLS] [" }}"#;
    let smollm2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    assert_eq!(ToolCallFormat::detect(llama31), Some(Llama3Json));
    assert_eq!(ToolCallFormat::detect(llama32), Some(Llama3Json));
    assert_eq!(ToolCallFormat::detect(qwen), Some(Hermes));
    assert_eq!(ToolCallFormat::detect(mistral), Some(Mistral));
    assert_eq!(ToolCallFormat::detect(smollm2), None);
}

#[test]
fn generic_prompt_lists_tools_and_the_call_form() {
    let tools = [
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}),
    ];
    let prompt = generic_tool_prompt(&tools);
    assert_eq!(
        prompt,
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n\
         {\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather now\",\
         \"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": \
         <args-json-object>}\n</tool_call>"
    );
    // What a model writes following it parses as Hermes.
    let out = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
    assert_eq!(parse(Hermes, out, Some(&tools)).tool_calls[0].name, "get_weather");
}

#[test]
fn bare_function_objects_name_tools_too() {
    let tools = [json!({"name": "get_weather", "parameters": {}})];
    let m = parse(
        Hermes,
        "<tool_call>{\"name\": \"get_weather\"}</tool_call>",
        Some(&tools),
    );
    assert_eq!((m.tool_calls.len(), m.content), (1, None));
}

#[test]
fn streaming_emits_content_early_and_calls_in_openai_shape() {
    let tools = tools(WEATHER);
    let mut p = StreamingToolParser::new(Hermes, Some(&tools));
    let content = |s: &str| vec![StreamDelta::Content(s.into())];
    let call = |index: usize, name: Option<&str>, arguments: &str| StreamDelta::ToolCallDelta {
        index,
        id: None,
        name: name.map(str::to_string),
        arguments: arguments.into(),
    };
    // Trailing whitespace and a possible marker prefix are held back.
    assert_eq!(p.push("Checking "), content("Checking"));
    assert_eq!(p.push("now.\n<tool"), content(" now."));
    assert_eq!(p.push("_call>\n{\"name\": \"get_weather\", "), vec![]);
    let mut first = p.push("\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>");
    // The first delta carries the id (random), the name and empty arguments.
    match &mut first[0] {
        StreamDelta::ToolCallDelta { id, .. } => assert!(id.take().is_some_and(|id| is_call_id(&id))),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        first,
        vec![
            call(0, Some("get_weather"), ""),
            call(0, None, r#"{"city":"Paris"}"#)
        ]
    );
    assert_eq!(p.tool_calls(), 1);
    let second = p.push("\n<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>\n");
    assert_eq!(second.len(), 2);
    assert!(matches!(
        &second[0],
        StreamDelta::ToolCallDelta {
            index: 1,
            id: Some(_),
            ..
        }
    ));
    assert_eq!(second[1], call(1, None, "{}"));
    assert_eq!(p.finish(), vec![]);
}

#[test]
fn streaming_without_tools_passes_text_through() {
    let mut p = StreamingToolParser::new(Llama3Json, None);
    assert_eq!(
        p.push(" {\"name\""),
        vec![StreamDelta::Content(" {\"name\"".into())]
    );
    assert_eq!(p.push(""), vec![]);
    assert_eq!(p.finish(), vec![]);
}
