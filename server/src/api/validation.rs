//! Request checks and the mapping from OpenAI's JSON to the engine's [`SamplingParams`]. Range
//! checks live in `SamplingParams::validate` (one place for the engine and the server); here are
//! the checks that only make sense for the wire format.

use axum::body::Bytes;
use serde::de::DeserializeOwned;
use wick_engine::sample::constraint::ConstraintSpec;
use wick_engine::sample::params::{SamplingParams, MAX_TOP_LOGPROBS};
use wick_engine::tokenizer::Tokenizer;

use crate::api::chat_template::ChatMessage;
use crate::api::errors::ApiError;
use crate::api::openai::{ChatMessageIn, MessageContent, PromptInput, ResponseFormat, SamplingFields};
use crate::tools::check_schema_size;

/// The largest `n` accepted (each choice is a sequence in the batch).
pub const MAX_N: u32 = 128;

/// OpenAI's completions cap on `logprobs`.
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// Maps the shared sampling fields. `max_tokens` comes from the caller (chat prefers
/// `max_completion_tokens`; completions default to 16 like OpenAI's).
/// The request's sampling fields as the engine's parameters; a `response_format` schema may be
/// `max_schema_bytes` long at most.
pub fn sampling_params(
    f: &SamplingFields,
    max_tokens: Option<u32>,
    max_schema_bytes: usize,
) -> Result<SamplingParams, ApiError> {
    let n = f.n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1 (off) or at least 1, got {k}"),
            ))
        }
    };
    let mut logit_bias = std::collections::HashMap::new();
    for (key, &bias) in f.logit_bias.iter().flatten() {
        let id: u32 = key.parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("logit_bias keys must be token ids, got {key:?}"),
            )
        })?;
        logit_bias.insert(id, bias);
    }
    let stop = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 16 {
        return Err(ApiError::invalid("stop", "at most 16 stop sequences are allowed"));
    }
    let defaults = SamplingParams::default();
    Ok(SamplingParams {
        n: n as usize,
        temperature: f.temperature.unwrap_or(defaults.temperature),
        top_p: f.top_p.unwrap_or(defaults.top_p),
        top_k,
        min_p: f.min_p.unwrap_or(defaults.min_p),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
        logit_bias,
        // Negative seeds are valid for OpenAI; the bits are what matter.
        seed: f.seed.map(|s| s as u64),
        logprobs: false,
        top_logprobs: 0,
        prompt_logprobs: None,
        constraint: constraint(f.response_format.as_ref(), max_schema_bytes)?,
        max_tokens: max_tokens.map(|m| m as usize),
        min_tokens: f.min_tokens.unwrap_or(0) as usize,
        stop,
        stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
        ignore_eos: f.ignore_eos.unwrap_or(false),
        skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
    })
}

/// Chat logprobs: `logprobs: true` and `top_logprobs` in 0..=20 (which needs `logprobs`).
pub fn chat_logprobs(
    params: &mut SamplingParams,
    logprobs: Option<bool>,
    top: Option<u32>,
) -> Result<(), ApiError> {
    let wanted = logprobs.unwrap_or(false);
    if let Some(top) = top {
        if !wanted {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs requires logprobs to be true",
            ));
        }
        if top as usize > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top}"),
            ));
        }
        params.top_logprobs = top as usize;
    }
    params.logprobs = wanted;
    Ok(())
}

/// Message text: a string, or the text parts of a part array joined (other part types refused).
fn content_text(content: &Option<MessageContent>, index: usize) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(MessageContent::Text(s)) => Ok(s.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => text.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::invalid(
                            format!("messages[{index}].content"),
                            "a text content part needs a `text` field",
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::invalid(
                            format!("messages[{index}].content"),
                            format!("content parts of type `{other}` are not supported by this model"),
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// The messages as the chat template sees them. Roles: system, developer (given to the template
/// as system, as vLLM does for templates that predate it), user, assistant, tool.
pub fn chat_messages(messages: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!(
                            "unknown role `{other}` (expected system, developer, user, assistant or tool)"
                        ),
                    ))
                }
            };
            // OpenAI's rule: only an assistant message (which may consist of tool calls alone)
            // may leave `content` out or null; any other role's missing text is a client bug.
            if m.content.is_none() && role != "assistant" {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    format!("a {} message needs `content` (a string or content parts)", m.role),
                ));
            }
            Ok(ChatMessage {
                role: role.to_string(),
                content: content_text(&m.content, i)?,
                tool_calls: m
                    .tool_calls
                    .as_ref()
                    .map(|c| template_tool_calls(c, i))
                    .transpose()?,
                tool_call_id: m.tool_call_id.clone(),
                name: m.name.clone(),
            })
        })
        .collect()
}

/// An assistant message's `tool_calls` as chat templates expect them: each a function call whose
/// `arguments` (a JSON string in OpenAI's API) is parsed into an object, as vLLM does; a string
/// that is not JSON is passed through as it is.
fn template_tool_calls(calls: &serde_json::Value, index: usize) -> Result<Vec<serde_json::Value>, ApiError> {
    let param = format!("messages[{index}].tool_calls");
    let calls = calls
        .as_array()
        .ok_or_else(|| ApiError::invalid(&param, "tool_calls must be an array"))?;
    calls
        .iter()
        .map(|call| {
            let mut call = call.clone();
            let function = call
                .get_mut("function")
                .filter(|f| f.get("name").is_some_and(|n| n.is_string()))
                .ok_or_else(|| ApiError::invalid(&param, "each tool call needs a function with a name"))?;
            if let Some(serde_json::Value::String(args)) = function.get("arguments") {
                if let Ok(parsed) = serde_json::from_str::<serde_json::Value>(args) {
                    function["arguments"] = parsed;
                }
            }
            Ok(call)
        })
        .collect()
}

/// Completions' prompts as token ids (one engine request each). Text is tokenized with the
/// model's special tokens (BOS), token ids are taken as they are.
pub fn completion_prompts(
    prompt: &PromptInput,
    encode: impl Fn(&str) -> Result<Vec<u32>, ApiError>,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let prompts = match prompt {
        PromptInput::Text(s) => vec![encode(s)?],
        PromptInput::Texts(v) => v.iter().map(|s| encode(s)).collect::<Result<_, _>>()?,
        PromptInput::Tokens(ids) => vec![ids.clone()],
        PromptInput::TokenLists(lists) => lists.clone(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    Ok(prompts)
}

/// Refuses a prompt text that cannot fit the model's context whatever its exact token count,
/// before it is encoded (a body of megabytes would otherwise cost seconds of BPE only to be
/// refused by the engine): `context_length_exceeded`, naming `param`.
pub fn check_fits_context(
    tokenizer: &Tokenizer,
    text: &str,
    max_model_len: usize,
    param: &str,
) -> Result<(), ApiError> {
    let at_least = tokenizer.min_tokens(text)?;
    if at_least < max_model_len {
        return Ok(());
    }
    Err(ApiError::invalid(
        param,
        format!(
            "the prompt ({} bytes) is at least {at_least} tokens, more than this model's context of \
             {max_model_len} tokens",
            text.len()
        ),
    )
    .with_code("context_length_exceeded"))
}

/// `response_format` as the engine's constraint (compiled, and so checked, before submission).
fn constraint(
    format: Option<&ResponseFormat>,
    max_schema_bytes: usize,
) -> Result<Option<ConstraintSpec>, ApiError> {
    Ok(match format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(ConstraintSpec::JsonObject),
        Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
            Some(schema) if schema.is_object() || schema.is_boolean() => {
                let param = "response_format.json_schema.schema".to_string();
                check_schema_size(schema, max_schema_bytes, param)?;
                Some(ConstraintSpec::JsonSchema(schema.clone()))
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "the schema must be a JSON object",
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "json_schema needs a schema",
                ))
            }
        },
    })
}

/// The deprecated `functions` (the predecessor of `tools`) are refused rather than silently
/// answered without them; `function_call: "none"` (never call) is honoured trivially.
pub fn check_functions(
    functions: Option<&Vec<serde_json::Value>>,
    function_call: Option<&serde_json::Value>,
) -> Result<(), ApiError> {
    let offered = functions.is_some_and(|f| !f.is_empty());
    let none = function_call.is_some_and(|c| c == "none");
    if offered && !none {
        return Err(ApiError::invalid(
            "functions",
            "function calling is not supported by this server yet",
        ));
    }
    Ok(())
}

/// The JSON body as the endpoint's fields plus the shared sampling fields. Syntax errors are
/// 400s; wrong types are 400s naming the field.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<(T, SamplingFields), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    Ok((from_value(&value)?, from_value(&value)?))
}

pub(crate) fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            // A missing required field: serde names it in the message.
            let field = inner.to_string();
            let param = field.split('`').nth(1).unwrap_or("").to_string();
            ApiError::invalid(param, format!("invalid request: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("invalid value for `{path}`: {inner}"))
        }
    })
}
