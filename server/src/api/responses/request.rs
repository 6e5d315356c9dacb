//! The `POST /v1/responses` request as the SDKs send it, and the checks of the fields this server
//! does not act on. Unlike chat's request, unknown fields are refused (a 400 naming the field):
//! the Responses API is new and moving, and a field silently ignored is a behaviour the client
//! did not get.

use std::collections::BTreeMap;

use axum::body::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::api::errors::ApiError;
use crate::api::validation::from_value;
use wick_engine::sample::params::MAX_TOP_LOGPROBS;

/// `include` value that asks for the output text's token logprobs.
pub const INCLUDE_LOGPROBS: &str = "message.output_text.logprobs";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequest {
    pub model: String,
    /// A string (one user message) or a list of items; read by `input::normalize`.
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextConfig>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_logprobs: Option<u32>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub stream: Option<bool>,
    /// `include_obfuscation` only: there is nothing to obfuscate on a private link.
    pub stream_options: Option<Value>,
    pub include: Option<Vec<String>>,
    pub user: Option<String>,
    pub safety_identifier: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub service_tier: Option<String>,
    pub truncation: Option<String>,
    /// Applies to built-in tools only, which are refused: accepted and echoed.
    pub max_tool_calls: Option<u32>,
    pub background: Option<bool>,
    pub reasoning: Option<Value>,
    pub conversation: Option<Value>,
    pub prompt: Option<Value>,
}

/// `text`: the output's format, and a verbosity hint (echoed; a local model has no such knob).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub format: Option<Value>,
    pub verbosity: Option<String>,
}

impl ResponsesRequest {
    /// Parses the body (syntax errors and wrong types are 400s naming the field) and refuses
    /// what this server cannot do.
    pub fn parse(body: &Bytes) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        let req: Self = from_value(&value)?;
        req.check()?;
        Ok(req)
    }

    pub fn wants_logprobs(&self) -> bool {
        self.include.iter().flatten().any(|i| i == INCLUDE_LOGPROBS)
    }

    fn check(&self) -> Result<(), ApiError> {
        if self.background == Some(true) {
            return Err(ApiError::invalid(
                "background",
                "background mode is not supported by this server: send the request without it (stream it for progress)",
            ));
        }
        // Reasoning settings are refused rather than ignored: the local models do not reason,
        // and answering as if they had would hide that from the client. An empty object or
        // nulls ask for nothing and are accepted.
        if let Some(reasoning) = &self.reasoning {
            let asks = match reasoning {
                Value::Null => false,
                Value::Object(fields) => fields.values().any(|v| !v.is_null()),
                _ => true,
            };
            if asks {
                return Err(ApiError::invalid(
                    "reasoning",
                    "reasoning is not supported: the models this server runs are not reasoning models",
                ));
            }
        }
        if self.conversation.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(ApiError::invalid(
                "conversation",
                "conversations are not supported by this server; use previous_response_id",
            ));
        }
        if self.prompt.as_ref().is_some_and(|p| !p.is_null()) {
            return Err(ApiError::invalid(
                "prompt",
                "prompt templates are not supported by this server; send input",
            ));
        }
        match self.truncation.as_deref() {
            None | Some("disabled") => {}
            Some("auto") => {
                return Err(ApiError::invalid(
                    "truncation",
                    "truncation `auto` is not supported: an input too long for the context is refused",
                ))
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "truncation",
                    format!("truncation must be `auto` or `disabled`, got `{other}`"),
                ))
            }
        }
        for (i, item) in self.include.iter().flatten().enumerate() {
            if item != INCLUDE_LOGPROBS {
                return Err(ApiError::invalid(
                    format!("include[{i}]"),
                    format!("include `{item}` is not supported (only `{INCLUDE_LOGPROBS}`)"),
                ));
            }
        }
        if let Some(top) = self.top_logprobs {
            if top as usize > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top}"),
                ));
            }
        }
        if self.wants_logprobs() && self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            // With tools the text goes through the tool-call parser, which holds tokens back:
            // which token belongs to the message is not tracked yet.
            return Err(ApiError::invalid(
                "include",
                format!("`{INCLUDE_LOGPROBS}` is not supported together with tools yet"),
            ));
        }
        check_metadata(self.metadata.as_ref())
    }
}

/// OpenAI's bounds on `metadata`: 16 pairs, keys of 64 characters, values of 512.
fn check_metadata(metadata: Option<&BTreeMap<String, String>>) -> Result<(), ApiError> {
    let Some(metadata) = metadata else {
        return Ok(());
    };
    if metadata.len() > 16 {
        return Err(ApiError::invalid("metadata", "metadata may have at most 16 keys"));
    }
    for (key, value) in metadata {
        if key.chars().count() > 64 {
            return Err(ApiError::invalid(
                "metadata",
                format!("metadata key `{key}` is longer than 64 characters"),
            ));
        }
        if value.chars().count() > 512 {
            return Err(ApiError::invalid(
                format!("metadata.{key}"),
                "metadata values may be 512 characters at most",
            ));
        }
    }
    Ok(())
}
