//! Pre-routing on what a request needs: a request with images, audio, tools, a response format
//! or logprobs skips the tiers whose model lacks that (`[[models]] capabilities`), instead of
//! getting the cheap tier's 400 or a degraded answer.

use serde_json::Value;
use wick_config::Capability;

use crate::api::service::Endpoint;

/// What `body` (an OpenAI request) needs beyond text chat, in [`Capability::ALL`]'s order.
pub fn required(endpoint: Endpoint, body: &Value) -> Vec<Capability> {
    let non_empty = |key: &str| {
        body.get(key)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let mut parts = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content")?.as_array())
        .flatten()
        .filter_map(|p| p.get("type")?.as_str());
    let (mut image, mut audio) = (false, false);
    for kind in &mut parts {
        image |= matches!(kind, "image_url" | "input_image" | "image");
        audio |= matches!(kind, "input_audio" | "audio");
    }
    audio |= body.get("audio").is_some_and(|a| !a.is_null())
        || body
            .get("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|v| v == "audio"));
    let tools = (non_empty("tools") && body.get("tool_choice").and_then(Value::as_str) != Some("none"))
        || (non_empty("functions") && body.get("function_call").and_then(Value::as_str) != Some("none"));
    let structured = matches!(
        body.pointer("/response_format/type").and_then(Value::as_str),
        Some("json_object" | "json_schema")
    );
    let logprobs = match endpoint {
        Endpoint::Chat => body.get("logprobs").and_then(Value::as_bool) == Some(true),
        Endpoint::Completions => body.get("logprobs").is_some_and(|l| !l.is_null()),
    };
    Capability::ALL
        .into_iter()
        .filter(|c| match c {
            Capability::Tools => tools,
            Capability::StructuredOutputs => structured,
            Capability::Logprobs => logprobs,
            Capability::ImageInput => image,
            Capability::Audio => audio,
        })
        .collect()
}

/// The request field to name when no tier has `capability`.
pub fn param(capability: Capability) -> &'static str {
    match capability {
        Capability::Tools => "tools",
        Capability::StructuredOutputs => "response_format",
        Capability::Logprobs => "logprobs",
        Capability::ImageInput | Capability::Audio => "messages",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn needs(endpoint: Endpoint, body: Value) -> Vec<&'static str> {
        required(endpoint, &body)
            .into_iter()
            .map(Capability::as_str)
            .collect()
    }

    #[test]
    fn what_a_request_needs() {
        let text = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert!(needs(Endpoint::Chat, text).is_empty());
        let image = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        assert_eq!(needs(Endpoint::Chat, image), ["image_input"]);
        let audio = json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]});
        assert_eq!(needs(Endpoint::Chat, audio), ["audio"]);
        let speak = json!({"messages": [], "modalities": ["text", "audio"]});
        assert_eq!(needs(Endpoint::Chat, speak), ["audio"]);
        let tool = json!({"type": "function", "function": {"name": "f"}});
        let tools = json!({"messages": [], "tools": [tool], "response_format": {"type": "json_object"},
            "logprobs": true});
        assert_eq!(
            needs(Endpoint::Chat, tools),
            ["tools", "structured_outputs", "logprobs"]
        );
        // Tools offered but not to be called; an empty list; logprobs false; plain text format.
        let none = json!({"messages": [], "tools": [tool], "tool_choice": "none", "logprobs": false,
            "response_format": {"type": "text"}});
        assert!(needs(Endpoint::Chat, none).is_empty());
        assert!(needs(Endpoint::Chat, json!({"tools": []})).is_empty());
        // Completions' logprobs is a number (0 asks for the chosen tokens' only).
        assert_eq!(
            needs(Endpoint::Completions, json!({"prompt": "x", "logprobs": 0})),
            ["logprobs"]
        );
        assert!(needs(Endpoint::Completions, json!({"prompt": "x", "logprobs": null})).is_empty());
    }
}
