//! Tool preparation against real templates: Llama 3.1's (custom and built-in tools), a
//! template without tool support (the generic prompt), and `tool_call_parser` overriding
//! detection.

use serde_json::{json, Value};

use super::*;
use crate::api::validation::chat_messages;

fn llama31() -> ChatTemplate {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/templates/llama-3.1-instruct.jinja"
    );
    let source = std::fs::read_to_string(path).expect("fixture");
    ChatTemplate::new(
        source,
        Some("<|begin_of_text|>".into()),
        Some("<|eot_id|>".into()),
    )
    .unwrap()
}

fn function(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name, "description": format!("the {name} tool"),
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}})
}

fn request(body: Value) -> (ChatCompletionRequest, Vec<ChatMessage>) {
    let req: ChatCompletionRequest = serde_json::from_value(body).expect("request");
    let messages = chat_messages(&req.messages).expect("messages");
    (req, messages)
}

fn prepare_body(template: &ChatTemplate, configured: Option<ToolCallFormat>, body: Value) -> PreparedChat {
    let (req, messages) = request(body);
    prepare(template, configured, &req, messages, &RequestLimits::default()).expect("prepares")
}

#[test]
fn llama31_builtin_tools_take_the_system_prompt_form() {
    let tools = json!([
        function("brave_search"),
        function("wolfram_alpha"),
        function("get_weather")
    ]);
    let p = prepare_body(
        &llama31(),
        None,
        json!({"model": "m", "tools": tools, "messages": [{"role": "user", "content": "Weather in Paris?"}]}),
    );
    // Built-ins in the system message, as Llama 3.1's model card shows them...
    assert!(
        p.prompt.contains(
            "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nTools: brave_search, wolfram_alpha\n\n"
        ),
        "{}",
        p.prompt
    );
    // ...custom tools as JSON in the first user message, and the built-ins not among them.
    let user = &p.prompt[p.prompt.find("<|start_header_id|>user").unwrap()..];
    assert!(user.contains("\"name\": \"get_weather\""), "{user}");
    assert!(!user.contains("\"name\": \"brave_search\""), "{user}");
    assert!(p
        .prompt
        .ends_with("Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"));
    let setup = p.tools.expect("tools in play");
    assert_eq!(setup.format, ToolCallFormat::Llama3Json);
    assert!(!setup.generic);
    // auto: free text until a JSON call starts.
    match p.constraint {
        Some(ToolConstraint::Triggered(ConstraintSpec::Triggered { triggers, .. })) => {
            assert_eq!(triggers, vec!["{\"name\"".to_string()]);
        }
        other => panic!("expected a triggered grammar, got {other:?}"),
    }
    // The model's built-in call comes back as an OpenAI tool call with JSON arguments.
    let out = r#"<|python_tag|>brave_search.call(query="weather in Paris")<|eom_id|>"#;
    let (content, calls) = message(&setup, out);
    assert_eq!(content, None);
    let calls = calls.expect("a call");
    assert_eq!(calls[0].function.name, "brave_search");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].function.arguments).unwrap(),
        json!({"query": "weather in Paris"})
    );
}

#[test]
fn llama31_replays_builtin_calls_and_results_in_ipython_form() {
    let tools = json!([function("brave_search")]);
    let call = json!({"id": "call_1", "type": "function",
        "function": {"name": "brave_search", "arguments": "{\"query\": \"weather in Paris\"}"}});
    let p = prepare_body(
        &llama31(),
        None,
        json!({"model": "m", "tools": tools, "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        ]}),
    );
    assert!(
        p.prompt.contains(
            "<|start_header_id|>assistant<|end_header_id|>\n\n<|python_tag|>brave_search.call(query=\"weather in Paris\")<|eom_id|>"
        ),
        "{}",
        p.prompt
    );
    assert!(
        p.prompt
            .contains("<|start_header_id|>ipython<|end_header_id|>\n\n"),
        "{}",
        p.prompt
    );
    assert!(p.prompt.contains("18 C, sunny"), "{}", p.prompt);
}

#[test]
fn required_forces_and_none_drops_the_tools() {
    let tools = json!([function("get_weather")]);
    let ask = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let p = prepare_body(
        &llama31(),
        None,
        json!({"model": "m", "tools": tools, "tool_choice": "required", "messages": ask}),
    );
    assert!(matches!(
        p.constraint,
        Some(ToolConstraint::Forced(ConstraintSpec::Lark(_)))
    ));
    let p = prepare_body(
        &llama31(),
        None,
        json!({"model": "m", "tools": tools, "tool_choice": "none", "messages": ask}),
    );
    assert!(p.tools.is_none() && p.constraint.is_none());
    assert!(!p.prompt.contains("Environment: ipython"), "{}", p.prompt);
}

#[test]
fn tool_call_parser_overrides_detection_for_templates_that_render_tools() {
    let llama = llama31();
    assert_eq!(template_format(&llama, None), Some(ToolCallFormat::Llama3Json));
    assert_eq!(
        template_format(&llama, Some(ToolCallFormat::Hermes)),
        Some(ToolCallFormat::Hermes)
    );
    // Renders tools, but in no markup we know: the configured parser decides (Hermes if none).
    let plain = ChatTemplate::new(
        "{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}".into(),
        None,
        None,
    )
    .unwrap();
    assert_eq!(template_format(&plain, None), Some(ToolCallFormat::Hermes));
    assert_eq!(
        template_format(&plain, Some(ToolCallFormat::Mistral)),
        Some(ToolCallFormat::Mistral)
    );
    let p = prepare_body(
        &plain,
        Some(ToolCallFormat::Mistral),
        json!({"model": "m", "tools": [function("get_weather")], "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(p.tools.as_ref().unwrap().format, ToolCallFormat::Mistral);
    assert!(
        p.prompt.starts_with("TOOLS [{\"type\": \"function\""),
        "{}",
        p.prompt
    );
    // No tool support at all: the generic prompt and Hermes, whatever is configured.
    let none = ChatTemplate::new(
        "{% for m in messages %}{{ m.content }}\n{% endfor %}".into(),
        None,
        None,
    )
    .unwrap();
    assert_eq!(template_format(&none, Some(ToolCallFormat::Mistral)), None);
    let p = prepare_body(
        &none,
        Some(ToolCallFormat::Mistral),
        json!({"model": "m", "tools": [function("get_weather")], "messages": [{"role": "user", "content": "hi"}]}),
    );
    let setup = p.tools.unwrap();
    assert!(setup.generic);
    assert_eq!(setup.format, ToolCallFormat::Hermes);
    assert!(p.prompt.contains("<tool_call>"), "{}", p.prompt);
}

#[test]
fn llama31_multi_step_calls_replay_in_order() {
    let tools = json!([function("get_weather"), function("get_time")]);
    let call = |id: &str, name: &str, args: &str| json!([{"id": id, "type": "function", "function": {"name": name, "arguments": args}}]);
    let p = prepare_body(
        &llama31(),
        None,
        json!({"model": "m", "tools": tools, "messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": call("call_1", "get_weather", "{\"query\": \"Paris\"}")},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "assistant", "content": null, "tool_calls": call("call_2", "get_time", "{\"query\": \"Europe/Paris\"}")},
            {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
        ]}),
    );
    let first = p
        .prompt
        .find(r#"{"name": "get_weather", "parameters": {"query": "Paris"}}<|eot_id|>"#)
        .expect("first call replayed in Llama's JSON form");
    let second = p
        .prompt
        .find(r#"{"name": "get_time", "parameters": {"query": "Europe/Paris"}}<|eot_id|>"#)
        .expect("second call replayed");
    let results: Vec<usize> = p
        .prompt
        .match_indices("<|start_header_id|>ipython<|end_header_id|>")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(results.len(), 2, "{}", p.prompt);
    assert!(
        first < results[0] && results[0] < second && second < results[1],
        "{}",
        p.prompt
    );
    assert!(p
        .prompt
        .ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
    // The template itself refuses parallel calls in history: a 400 naming its message.
    let two = json!([
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]);
    let (req, messages) = request(json!({"model": "m", "tools": tools, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": null, "tool_calls": two}]}));
    let err = prepare(&llama31(), None, &req, messages, &RequestLimits::default())
        .err()
        .expect("refused");
    assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
    assert!(err.body.error.message.contains("single tool-calls"), "{err:?}");
}
