//! Recorded outputs in each format. Every case is also streamed under many splits (all split
//! points of short outputs, every char alone, random splits) and must give the same content and
//! calls as the non-streamed parse, with OpenAI-shaped deltas.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::ToolCallFormat::{Hermes, Llama3Json, Mistral};
use super::*;

mod hermes;
mod llama3;
mod mistral;

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

/// Long outputs (random splits only) and multi-byte text (splits on char boundaries).
#[test]
fn long_and_unicode_outputs() {
    let intro = "Je vérifie la météo à Paris et l'heure à Tōkyō… 🌦️ ".repeat(12);
    // Raw newlines in the Hermes call (parsed leniently), escaped ones in the others.
    let code = "def f(x):\n    return x * 2  # ünïcödé ✓\n".repeat(20);
    let escaped = code.replace('\n', "\\n");
    let args = json!({"path": "f.py", "text": code});
    let hermes = format!(
        "{intro}\n<tool_call>\n{{\"name\": \"write_file\", \"arguments\": {{\"path\": \"f.py\", \"text\": \"{code}\"}}}}\n</tool_call>"
    );
    check(
        Hermes,
        &hermes,
        Some(WEATHER),
        Some(intro.trim()),
        &[("write_file", args.clone())],
    );
    let llama = format!(
        "{intro}<|python_tag|>{{\"name\": \"write_file\", \"parameters\": {{\"path\": \"f.py\", \"text\": \"{escaped}\"}}}}<|eom_id|>"
    );
    check(
        Llama3Json,
        &llama,
        Some(WEATHER),
        Some(intro.trim()),
        &[("write_file", args.clone())],
    );
    let mistral = format!(
        "{intro}[TOOL_CALLS][{{\"name\": \"write_file\", \"arguments\": {{\"path\": \"f.py\", \"text\": \"{escaped}\"}}}}]"
    );
    check(
        Mistral,
        &mistral,
        Some(WEATHER),
        Some(intro.trim()),
        &[("write_file", args)],
    );
    // Truncated: everything comes back, trimmed.
    let cut = &hermes[..hermes.len() - 40];
    check(Hermes, cut, Some(WEATHER), Some(cut.trim()), &[]);
}

/// Random concatenations of markup, JSON pieces and text: no panic, stream == non-stream under
/// splits, and an output without calls comes back whole (trimmed) as content.
#[test]
fn random_fragment_soup() {
    const FRAGMENTS: &[&str] = &[
        "<tool_call>",
        "</tool_call>",
        "<tool_",
        "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}",
        r#"<|python_tag|>{"name": "get_time", "parameters": {"tz": "UTC"}}"#,
        "[TOOL_CALLS]get_time[ARGS]{}",
        r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#,
        r#"{"name": "get_time", "parameters": {}}"#,
        r#"[{"name": "get_time", "arguments": {}}]"#,
        "brave_search.call(query=\"x\")",
        "<|python_tag|>",
        "<|eom_id|>",
        "[TOOL_CALLS]",
        "get_weather",
        "[ARGS]",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "\\",
        " ",
        "\n",
        ";",
        ",",
        ":",
        "(",
        ")",
        "=",
        "null",
        "hello",
        "é🌦",
    ];
    let tools = tools(WEATHER);
    let mut rng = StdRng::seed_from_u64(6);
    for format in ToolCallFormat::ALL {
        let (mut with_calls, mut with_content) = (0, 0);
        for _ in 0..300 {
            let n = rng.random_range(1..10);
            let text: String = (0..n)
                .map(|_| FRAGMENTS[rng.random_range(0..FRAGMENTS.len())])
                .collect();
            let parsed = parse(format, &text, Some(&tools));
            let drops_tokens = format == Llama3Json && text.contains("<|eom_id|>");
            if parsed.tool_calls.is_empty() && !drops_tokens {
                assert_eq!(parsed.content.as_deref(), Some(text.trim()), "{format} {text:?}");
            }
            for call in &parsed.tool_calls {
                let args: Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
                assert!(args.is_object() && is_call_id(&call.id), "{call:?}");
            }
            check_streaming(format, &text, Some(&tools), &parsed);
            with_calls += usize::from(!parsed.tool_calls.is_empty());
            with_content += usize::from(parsed.content.is_some_and(|c| !c.is_empty()));
        }
        // The soup exercises both outcomes.
        assert!(
            with_calls >= 20 && with_content >= 100,
            "{format}: {with_calls} {with_content}"
        );
    }
}

/// The layouts the constrained-decoding grammars (`tool_grammar`) generate parse back into the
/// same calls, parallel ones included.
#[test]
fn constrained_layouts_parse() {
    let calls = [
        ("get_weather", json!({"city": "Paris"})),
        ("get_time", json!({"tz": "UTC"})),
    ];
    let hermes = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"UTC\"}}\n</tool_call>";
    check(Hermes, hermes, Some(WEATHER), None, &calls);
    let llama = r#"{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {"tz": "UTC"}}"#;
    check(Llama3Json, llama, Some(WEATHER), None, &calls);
    let mistral = r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {"tz": "UTC"}}]"#;
    check(Mistral, mistral, Some(WEATHER), None, &calls);
}
