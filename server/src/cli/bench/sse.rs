//! Just enough of Server-Sent Events to time an OpenAI stream: split the body into `data:`
//! payloads as bytes arrive, however the network cuts them.

/// One `data:` payload of the stream.
#[derive(Debug, PartialEq)]
pub enum SseData {
    Json(serde_json::Value),
    Done,
    /// A payload that is not JSON (kept for the error message).
    Other(String),
}

/// Accumulates body bytes and yields complete `data:` lines.
#[derive(Default)]
pub struct SseLines {
    buffer: Vec<u8>,
}

impl SseLines {
    /// Adds bytes and returns every payload completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseData> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            // Comments (`:`), `event:`/`id:` fields and blank separators carry nothing to time.
            let Some(payload) = line.strip_prefix("data:") else {
                continue;
            };
            let payload = payload.trim();
            out.push(if payload == "[DONE]" {
                SseData::Done
            } else {
                match serde_json::from_str(payload) {
                    Ok(value) => SseData::Json(value),
                    Err(_) => SseData::Other(payload.to_string()),
                }
            });
        }
        out
    }
}

/// What one chunk of a completions or chat stream says.
#[derive(Debug, Default, PartialEq)]
pub struct ChunkContent {
    /// Generated text in this chunk (completions `text`, chat `delta.content`).
    pub text_len: usize,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub error: Option<String>,
}

pub fn chunk_content(value: &serde_json::Value) -> ChunkContent {
    let mut out = ChunkContent::default();
    if let Some(error) = value.get("error") {
        out.error = Some(
            error
                .get("message")
                .and_then(|m| m.as_str())
                .map_or_else(|| error.to_string(), str::to_string),
        );
        return out;
    }
    if let Some(choices) = value.get("choices").and_then(|c| c.as_array()) {
        for choice in choices {
            let text = choice
                .get("text")
                .or_else(|| choice.get("delta").and_then(|d| d.get("content")))
                .and_then(|t| t.as_str());
            out.text_len += text.map_or(0, str::len);
        }
    }
    if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
        out.prompt_tokens = usage.get("prompt_tokens").and_then(|t| t.as_u64());
        out.completion_tokens = usage.get("completion_tokens").and_then(|t| t.as_u64());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_split_anywhere_are_reassembled() {
        let body = "data: {\"a\":1}\r\n\r\n: keep-alive\n\nevent: x\ndata: [DONE]\n\n";
        for cut in 0..body.len() {
            let mut lines = SseLines::default();
            let mut got = lines.push(&body.as_bytes()[..cut]);
            got.extend(lines.push(&body.as_bytes()[cut..]));
            assert_eq!(
                got,
                vec![SseData::Json(json!({"a": 1})), SseData::Done],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn chunk_text_usage_and_errors() {
        let c = chunk_content(&json!({"choices": [{"text": "abc"}, {"text": "de"}]}));
        assert_eq!(c.text_len, 5);
        let c = chunk_content(&json!({"choices": [{"delta": {"content": "xy"}}]}));
        assert_eq!(c.text_len, 2);
        let c = chunk_content(&json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}));
        assert_eq!((c.prompt_tokens, c.completion_tokens), (Some(7), Some(3)));
        let c = chunk_content(&json!({"error": {"message": "boom"}}));
        assert_eq!(c.error.as_deref(), Some("boom"));
        let c = chunk_content(&json!({"choices": [{"delta": {"role": "assistant"}}], "usage": null}));
        assert_eq!(c, ChunkContent::default());
    }
}
