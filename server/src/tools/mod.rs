//! Tool calling for chat completions, between the request and the engine: which tool-call
//! format the model writes, how the tools reach the prompt, the grammar that forces a call
//! (`tool_choice: "required"` or named), and turning the output back into OpenAI's
//! `tool_calls` (non-streamed here, streamed in `api/sse.rs` with the same parser).
//!
//! Beside it: [`parser`] (each format's parser, whole and streaming), [`grammar`] (the grammar a
//! forced call is generated under) and [`json_schema`] (validating arguments against a tool's
//! schema).
//!
//! A model whose chat template knows tools (Llama 3.1, Hermes/Qwen, Mistral: detected from the
//! template) gets them through its template. One that does not (SmolLM2) gets
//! [`generic_tool_prompt`] in its system message and answers in Hermes' `<tool_call>` markup;
//! earlier calls and results in the conversation are written in the same markup.

pub mod grammar;
pub mod json_schema;
pub mod parser;

use serde_json::Value;
use wick_engine::sample::constraint::ConstraintSpec;
use wick_engine::sample::stop::FinishReason;

use crate::api::chat_template::{ChatMessage, ChatTemplate};
use crate::api::errors::ApiError;
use crate::api::openai::{ChatCompletionRequest, FunctionCallOut, ToolCallOut};
use crate::tools::grammar::{forced_tools, tool_call_grammar};
use crate::tools::json_schema::Schema;
use crate::tools::parser::{generic_tool_prompt, parse, ToolCallFormat};

/// Llama 3.1's built-in tools: a function tool with one of these names is passed to a template
/// that reads `builtin_tools` as a built-in (`Environment: ipython`, `Tools: brave_search, ...`),
/// and the model calls it as `<|python_tag|>brave_search.call(query="...")`.
pub const LLAMA_BUILTIN_TOOLS: [&str; 3] = ["brave_search", "wolfram_alpha", "code_interpreter"];

/// A request's tools, as the parsers need them.
#[derive(Debug, Clone)]
pub struct ToolSetup {
    pub format: ToolCallFormat,
    pub tools: Vec<Value>,
    /// At most one call is returned: `parallel_tool_calls: false`, or a named `tool_choice`
    /// (which means exactly one call of that function; the grammar then allows no second).
    pub single: bool,
    /// `tool_choice` forces a call (`required` or named): the grammar allows nothing but calls,
    /// so any text the parser leaves is a call cut short by `max_tokens`, never content.
    pub forced: bool,
    /// The model's template does not know tools (the generic prompt is used).
    pub generic: bool,
}

/// Bounds on what one request may ask to be rendered and compiled (`server.max_tools`,
/// `server.max_schema_bytes`): work that grows with them cannot otherwise be bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_tools: usize,
    pub max_schema_bytes: usize,
}

impl Default for RequestLimits {
    /// The configuration's defaults.
    fn default() -> Self {
        let server = wick_config::ServerConfig::default();
        Self {
            max_tools: server.max_tools,
            max_schema_bytes: server.max_schema_bytes,
        }
    }
}

/// A JSON Schema larger than `max_bytes` (as JSON) is a 400 naming `param`.
pub fn check_schema_size(schema: &Value, max_bytes: usize, param: String) -> Result<(), ApiError> {
    let bytes = serde_json::to_string(schema).map_or(usize::MAX, |s| s.len());
    if bytes <= max_bytes {
        return Ok(());
    }
    Err(ApiError::invalid(
        param,
        format!("the schema is {bytes} bytes, more than this server's limit of {max_bytes} (server.max_schema_bytes)"),
    ))
}

/// How the grammar of a prepared chat applies.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolConstraint {
    /// `tool_choice` forces a call: the whole output is the call.
    Forced(ConstraintSpec),
    /// `tool_choice: "auto"`: free text, but a call the model starts (its format's marker) is
    /// finished under the grammar.
    Triggered(ConstraintSpec),
}

/// What the chat handler needs: the rendered prompt, the tool setup (None: no tools in play)
/// and the grammar for tool calls, if any.
pub struct PreparedChat {
    pub prompt: String,
    pub tools: Option<ToolSetup>,
    pub constraint: Option<ToolConstraint>,
}

/// The tool-call format for `template`: the configured parser (`tool_call_parser`) if the
/// template renders tools, else the one detected from it. `None`: the template does not know
/// tools, and the generic prompt with Hermes markup is used whatever is configured.
pub fn template_format(
    template: &ChatTemplate,
    configured: Option<ToolCallFormat>,
) -> Option<ToolCallFormat> {
    let detected = ToolCallFormat::detect(template.source());
    if detected.is_none() && !template.reads("tools") {
        return None;
    }
    configured.or(detected).or(Some(ToolCallFormat::Hermes))
}

/// A tool's `parameters`, when given, must be a JSON Schema object that compiles: a schema that
/// does not would otherwise leave the call unconstrained and unchecked without a word.
fn check_parameters(index: usize, function: &Value, max_schema_bytes: usize) -> Result<(), ApiError> {
    // Left out or null: any arguments object, as the grammar takes it.
    let Some(parameters) = function.get("parameters").filter(|p| !p.is_null()) else {
        return Ok(());
    };
    let name = function["name"].as_str().unwrap_or_default();
    let param = format!("tools[{index}].function.parameters");
    if !parameters.is_object() {
        return Err(ApiError::invalid(
            param,
            format!("the parameters of tool `{name}` must be a JSON Schema object"),
        ));
    }
    check_schema_size(parameters, max_schema_bytes, param.clone())?;
    Schema::compile(parameters)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(param, format!("the parameters of tool `{name}`: {e}")))
}

pub fn prepare(
    template: &ChatTemplate,
    configured: Option<ToolCallFormat>,
    req: &ChatCompletionRequest,
    messages: Vec<ChatMessage>,
    limits: &RequestLimits,
) -> Result<PreparedChat, ApiError> {
    prepare_with(template, configured, req, messages, limits, true)
}

/// [`prepare`], rendering the conversation with or without the generation prompt (without: a
/// conversation that ends with the assistant's answer, as a verified cascade's fallback scores
/// it; see `router::score`).
pub fn prepare_with(
    template: &ChatTemplate,
    configured: Option<ToolCallFormat>,
    req: &ChatCompletionRequest,
    mut messages: Vec<ChatMessage>,
    limits: &RequestLimits,
    add_generation_prompt: bool,
) -> Result<PreparedChat, ApiError> {
    let render_error = |e: crate::api::chat_template::ChatTemplateError| ApiError::bad_request(e.to_string());
    let tools = req.tools.as_deref().unwrap_or_default();
    if tools.len() > limits.max_tools {
        return Err(ApiError::invalid(
            "tools",
            format!(
                "{} tools, more than this server's limit of {} (server.max_tools)",
                tools.len(),
                limits.max_tools
            ),
        ));
    }
    let none = req.tool_choice.as_ref().is_some_and(|c| c == "none");
    if tools.is_empty() || none {
        if req
            .tool_choice
            .as_ref()
            .is_some_and(|c| c != "none" && c != "auto")
        {
            return Err(ApiError::invalid("tool_choice", "tool_choice needs tools"));
        }
        return Ok(PreparedChat {
            prompt: template
                .render(&messages, add_generation_prompt)
                .map_err(render_error)?,
            tools: None,
            constraint: None,
        });
    }
    for (i, tool) in tools.iter().enumerate() {
        let kind_ok = tool.get("type").is_none_or(|t| t == "function");
        let named = tool
            .get("function")
            .and_then(|f| f.get("name"))
            .is_some_and(Value::is_string);
        if !kind_ok || !named {
            return Err(ApiError::invalid(
                format!("tools[{i}]"),
                "each tool must be {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": {...}}}",
            ));
        }
        check_parameters(i, &tool["function"], limits.max_schema_bytes)?;
    }
    let known = template_format(template, configured);
    let format = known.unwrap_or(ToolCallFormat::Hermes);
    let named = req.tool_choice.as_ref().is_some_and(Value::is_object);
    let single = req.parallel_tool_calls == Some(false) || named;
    let prompt = match known {
        Some(_) => {
            let (custom, builtin) = split_builtin(template, tools);
            let custom = (!custom.is_empty()).then_some(custom.as_slice());
            template.render_with_builtin_tools(&messages, add_generation_prompt, custom, &builtin)
        }
        None => {
            write_generic(&mut messages, tools);
            template.render(&messages, add_generation_prompt)
        }
    }
    .map_err(render_error)?;
    let forced =
        forced_tools(tools, req.tool_choice.as_ref()).map_err(|m| ApiError::invalid("tool_choice", m))?;
    let constraint = match forced {
        Some(allowed) => {
            let grammar =
                tool_call_grammar(format, &allowed, !single).map_err(|m| ApiError::invalid("tools", m))?;
            Some(ToolConstraint::Forced(ConstraintSpec::Lark(grammar)))
        }
        // `auto`: the same grammar over every tool, from the format's marker on.
        None => {
            let all: Vec<&Value> = tools.iter().collect();
            let grammar =
                tool_call_grammar(format, &all, !single).map_err(|m| ApiError::invalid("tools", m))?;
            Some(ToolConstraint::Triggered(ConstraintSpec::Triggered {
                triggers: format.triggers().iter().map(|t| t.to_string()).collect(),
                grammar: Box::new(ConstraintSpec::Lark(grammar)),
            }))
        }
    };
    Ok(PreparedChat {
        prompt,
        tools: Some(ToolSetup {
            format,
            tools: tools.to_vec(),
            single,
            forced: matches!(constraint, Some(ToolConstraint::Forced(_))),
            generic: known.is_none(),
        }),
        constraint,
    })
}

/// The tools a template gets as `tools`, and the names it gets as `builtin_tools` (only for a
/// template that reads `builtin_tools`, i.e. Llama 3.1's).
fn split_builtin(template: &ChatTemplate, tools: &[Value]) -> (Vec<Value>, Vec<String>) {
    if !template.reads("builtin_tools") {
        return (tools.to_vec(), Vec::new());
    }
    let mut custom = Vec::new();
    let mut builtin = Vec::new();
    for tool in tools {
        let name = tool
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str);
        match name.filter(|n| LLAMA_BUILTIN_TOOLS.contains(n)) {
            Some(n) => builtin.push(n.to_string()),
            None => custom.push(tool.clone()),
        }
    }
    (custom, builtin)
}

/// The generic prompt in the system message, and earlier calls and results in the markup the
/// prompt asks for (a template without tool support would drop them).
fn write_generic(messages: &mut Vec<ChatMessage>, tools: &[Value]) {
    let prompt = generic_tool_prompt(tools);
    match messages.first_mut().filter(|m| m.role == "system") {
        Some(system) => system.content = format!("{}\n\n{prompt}", system.content),
        None => messages.insert(0, ChatMessage::new("system", prompt)),
    }
    for m in messages.iter_mut() {
        if let Some(calls) = m.tool_calls.take() {
            for call in calls {
                let f = call.get("function").cloned().unwrap_or_default();
                let markup = serde_json::json!({"name": f.get("name"), "arguments": f.get("arguments")});
                if !m.content.is_empty() {
                    m.content.push('\n');
                }
                m.content
                    .push_str(&format!("<tool_call>\n{markup}\n</tool_call>"));
            }
        }
        if m.role == "tool" {
            m.content = format!("<tool_response>\n{}\n</tool_response>", m.content);
        }
    }
}

/// A finished choice's text as OpenAI's message: content and tool calls, and whether any call
/// was made (then `finish_reason` is `tool_calls`).
pub fn message(setup: &ToolSetup, text: &str) -> (Option<String>, Option<Vec<ToolCallOut>>) {
    let mut parsed = parse(setup.format, text, Some(&setup.tools));
    if setup.single {
        parsed.tool_calls.truncate(1);
    }
    if setup.forced {
        parsed.content = None;
    }
    let calls: Vec<ToolCallOut> = parsed
        .tool_calls
        .into_iter()
        .map(|c| ToolCallOut {
            id: c.id,
            kind: "function",
            function: FunctionCallOut {
                name: c.name,
                arguments: c.arguments,
            },
        })
        .collect();
    (parsed.content, (!calls.is_empty()).then_some(calls))
}

/// A chat choice's `finish_reason` with tools: `length` when `max_tokens` cut the output (even
/// after complete calls: something was cut), else `tool_calls` when a call was made.
pub fn finish_reason(made_call: bool, engine: FinishReason) -> &'static str {
    match engine {
        FinishReason::Length => "length",
        _ if made_call => "tool_calls",
        other => other.as_str(),
    }
}

#[cfg(test)]
mod tests;
