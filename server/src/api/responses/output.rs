//! The response object and its output items, as the SDKs parse them: the request's settings
//! echoed as OpenAI echoes them, `output` (a `message` with `output_text` parts, then
//! `function_call` items), `status` and `usage`.

use serde_json::{json, Value};
use wick_engine::engine::Usage as EngineUsage;

use crate::api::responses::input::new_id;
use crate::api::responses::request::ResponsesRequest;

/// What every form of one response (created, in progress, final) shares: its id, creation time
/// and the request's settings as echoed.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub id: String,
    pub created_at: u64,
    settings: Value,
}

impl ResponseHead {
    pub fn new(req: &ResponsesRequest, model: &str, created_at: u64) -> Self {
        let text_format = req
            .text
            .as_ref()
            .and_then(|t| t.format.clone())
            .filter(|f| !f.is_null())
            .unwrap_or_else(|| json!({"type": "text"}));
        let verbosity = req.text.as_ref().and_then(|t| t.verbosity.clone());
        let settings = json!({
            "model": model,
            "instructions": req.instructions,
            "tools": req.tools.clone().unwrap_or_default(),
            "tool_choice": req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
            "temperature": echo_f32(req.temperature.unwrap_or(1.0)),
            "top_p": echo_f32(req.top_p.unwrap_or(1.0)),
            "top_logprobs": req.top_logprobs.unwrap_or(0),
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": req.max_tool_calls,
            "metadata": req.metadata.clone().unwrap_or_default(),
            "previous_response_id": req.previous_response_id,
            "store": req.store.unwrap_or(true),
            "text": {"format": text_format, "verbosity": verbosity.unwrap_or_else(|| "medium".into())},
            "truncation": "disabled",
            "background": false,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "user": req.user,
            "safety_identifier": req.safety_identifier,
            "prompt_cache_key": req.prompt_cache_key,
        });
        Self {
            id: new_id("resp"),
            created_at,
            settings,
        }
    }

    /// The model that answers: a route's response names the backend that answered it, known
    /// only once it has.
    pub fn set_model(&mut self, model: &str) {
        self.settings["model"] = json!(model);
    }

    /// The response object in `status`; `incomplete` adds OpenAI's reason (the only one here:
    /// `max_output_tokens` cut the output).
    pub fn object(
        &self,
        status: Status,
        output: Vec<Value>,
        usage: Option<Value>,
        completed_at: Option<u64>,
    ) -> Value {
        let mut object = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status.as_str(),
            "completed_at": completed_at,
            "error": null,
            "incomplete_details": (status == Status::Incomplete).then(|| json!({"reason": "max_output_tokens"})),
            "output": output,
            "usage": usage,
        });
        if let (Some(object), Some(settings)) = (object.as_object_mut(), self.settings.as_object()) {
            object.extend(settings.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        object
    }
}

/// An f32 setting as the client wrote it: through its shortest decimal form, so that 0.9 is
/// echoed as 0.9 and not as the f64 nearest the f32 (0.8999999761581421).
pub fn echo_f32(v: f32) -> Value {
    v.to_string().parse::<f64>().map_or(Value::Null, |f| json!(f))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    Incomplete,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Incomplete => "incomplete",
        }
    }
}

/// Responses' `usage` from the engine's.
pub fn usage(u: EngineUsage) -> Value {
    usage_of(
        u.prompt_tokens as u64,
        u.cached_prompt_tokens as u64,
        u.completion_tokens as u64,
    )
}

/// Responses' `usage` from a chat answer's (`prompt_tokens`, `completion_tokens`,
/// `prompt_tokens_details.cached_tokens`); a count the backend left out is 0.
pub fn usage_from_chat(u: &Value) -> Value {
    let count = |path: &str| u.pointer(path).and_then(Value::as_u64).unwrap_or(0);
    usage_of(
        count("/prompt_tokens"),
        count("/prompt_tokens_details/cached_tokens"),
        count("/completion_tokens"),
    )
}

fn usage_of(input: u64, cached: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

/// An `output_text` part (`logprobs` as chat's token logprobs, which have the same shape).
pub fn text_part(text: &str, logprobs: &[Value]) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs})
}

/// An assistant message item; `content` empty while it streams.
pub fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "role": "assistant", "status": status, "content": content})
}

pub fn function_call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "id": id, "type": "function_call", "call_id": call_id, "name": name,
        "arguments": arguments, "status": status,
    })
}

/// Whether an output has a message item: when there is text, or when there is nothing else
/// (an empty answer is still a message), unless a forced call leaves no room for text.
pub fn has_message(text: &str, calls: usize, forced: bool) -> bool {
    !text.is_empty() || (calls == 0 && !forced)
}

/// A finished output's items: the message (when [`has_message`]) then the calls, as
/// `(call_id, name, arguments)`. A message cut by `max_output_tokens` is `incomplete`.
pub fn output_items(
    text: Option<String>,
    logprobs: &[Value],
    calls: Vec<(String, String, String)>,
    forced: bool,
    status: Status,
) -> Vec<Value> {
    let text = text.unwrap_or_default();
    let mut items = Vec::with_capacity(calls.len() + 1);
    if has_message(&text, calls.len(), forced) {
        let item_status = if status == Status::Incomplete {
            "incomplete"
        } else {
            "completed"
        };
        items.push(message_item(
            &new_id("msg"),
            item_status,
            vec![text_part(&text, logprobs)],
        ));
    }
    for (call_id, name, arguments) in calls {
        items.push(function_call_item(
            &new_id("fc"),
            &call_id,
            &name,
            &arguments,
            "completed",
        ));
    }
    items
}
