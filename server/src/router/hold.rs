//! The streaming cascade: a cheap tier's stream is held back for its first `stream_hold_tokens`
//! tokens (or to its end, if it ends sooner) while the route's policy looks at what arrived; then
//! the held events and the rest of the stream go to the client, or the stream is dropped (which
//! closes the upstream request) and the next tier answers. After the first byte the stream is
//! committed: what follows is not judged.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::tap::StreamTap;
use crate::api::service::Endpoint;

/// One SSE event's `data:` payload.
#[derive(Debug, Clone)]
pub enum SseData {
    Json(Value),
    /// `[DONE]` or anything that is not JSON: passed through verbatim.
    Other(String),
}

/// One SSE event as it arrived and what its `data:` lines say.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The event's bytes, separator included: what goes on when the router changes nothing,
    /// so comments (keep-alives) and other fields pass through as the backend wrote them.
    pub raw: Bytes,
    /// `None`: an event without `data:` (a comment).
    pub data: Option<SseData>,
}

/// Splits an SSE byte stream into events.
#[derive(Default)]
pub struct SseSplitter {
    buf: Vec<u8>,
}

impl SseSplitter {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = find_event_end(&self.buf) {
            let raw: Vec<u8> = self.buf.drain(..end.0 + end.1).collect();
            let text = String::from_utf8_lossy(&raw[..end.0]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            let data = (!data.is_empty()).then(|| {
                let data = data.join("\n");
                match serde_json::from_str(&data) {
                    Ok(v) => SseData::Json(v),
                    Err(_) => SseData::Other(data),
                }
            });
            out.push(SseEvent {
                raw: Bytes::from(raw),
                data,
            });
        }
        out
    }

    /// What is left after the last complete event (a stream cut mid-event), as it arrived.
    pub fn rest(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

/// The end of the first event in `buf`: (its length, the separator's length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// What the held part of a stream says, assembled as a non-streamed response so that the same
/// policy judges both.
#[derive(Default)]
pub struct HeldAnswer {
    choices: BTreeMap<u64, HeldChoice>,
    /// Tokens seen (logprob entries, or content-bearing chunks when there are none).
    pub tokens: usize,
    /// The stream ended (`[DONE]`) or every choice has a finish reason.
    pub finished: bool,
}

#[derive(Default)]
struct HeldChoice {
    text: String,
    logprobs: Vec<f64>,
    finish: Option<String>,
    /// By call index: id, name, arguments so far.
    calls: BTreeMap<u64, (Value, String, String)>,
}

impl HeldAnswer {
    pub fn add(&mut self, endpoint: Endpoint, data: &SseData) {
        let v = match data {
            SseData::Json(v) => v,
            SseData::Other(s) => {
                if s.trim() == "[DONE]" {
                    self.finished = true;
                }
                return;
            }
        };
        for c in v.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let choice = self.choices.entry(index).or_default();
            let mut counted = 0;
            let entries = super::policy::token_logprobs(endpoint, c);
            counted += entries.len();
            choice.logprobs.extend(entries);
            let text = match endpoint {
                Endpoint::Chat => c.pointer("/delta/content"),
                Endpoint::Completions => c.get("text"),
            }
            .and_then(Value::as_str)
            .unwrap_or_default();
            choice.text.push_str(text);
            for call in c
                .pointer("/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let entry = choice.calls.entry(i).or_default();
                if let Some(id) = call.get("id") {
                    entry.0 = id.clone();
                }
                if let Some(name) = call.pointer("/function/name").and_then(Value::as_str) {
                    entry.1.push_str(name);
                }
                if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    entry.2.push_str(args);
                }
            }
            if counted == 0 && (!text.is_empty() || c.pointer("/delta/tool_calls").is_some()) {
                counted = 1;
            }
            self.tokens += counted;
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                choice.finish = Some(f.to_string());
            }
        }
        if !self.choices.is_empty() && self.choices.values().all(|c| c.finish.is_some()) {
            self.finished = true;
        }
    }

    /// The held part as a non-streamed response body (tool calls only once finished).
    pub fn as_response(&self, endpoint: Endpoint) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|(index, c)| {
                let lp: Vec<Value> = c.logprobs.iter().map(|l| json!({"logprob": l})).collect();
                match endpoint {
                    Endpoint::Chat => {
                        let calls: Vec<Value> = c
                            .calls
                            .values()
                            .map(|(id, name, args)| {
                                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
                            })
                            .collect();
                        json!({"index": index, "finish_reason": c.finish,
                            "message": {"role": "assistant", "content": c.text,
                                "tool_calls": if self.finished && !calls.is_empty() { Value::Array(calls) } else { Value::Null }},
                            "logprobs": {"content": lp}})
                    }
                    Endpoint::Completions => {
                        json!({"index": index, "finish_reason": c.finish, "text": c.text,
                            "logprobs": {"token_logprobs": c.logprobs}})
                    }
                }
            })
            .collect();
        json!({ "choices": choices })
    }
}

/// A body that sends `held` first, then the rest of `upstream`, each event through `tap`
/// (which prices the usage chunk and removes what the router asked for itself), ending when
/// either side goes away.
pub fn committed_body(
    held: Vec<SseEvent>,
    mut splitter: SseSplitter,
    mut upstream: axum::body::BodyDataStream,
    mut tap: StreamTap,
) -> Body {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for event in &held {
            if let Some(out) = tap.pass(event) {
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
        }
        while let Some(chunk) = upstream.next().await {
            let out = match chunk {
                Ok(bytes) => {
                    let out: Vec<u8> = splitter
                        .push(&bytes)
                        .iter()
                        .filter_map(|e| tap.pass(e))
                        .flat_map(|b| b.to_vec())
                        .collect();
                    if out.is_empty() {
                        continue;
                    }
                    Ok(Bytes::from(out))
                }
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = out.is_err();
            // The client went away: dropping `upstream` here closes the upstream request.
            if tx.send(out).await.is_err() || failed {
                return;
            }
        }
        let rest = splitter.rest();
        if !rest.is_empty() {
            let _ = tx.send(Ok(rest)).await;
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Body::from_stream(stream)
}

/// After a held stream finished (every choice has its finish reason) what is left of it, its
/// usage chunk and `[DONE]`, read into `held` so that the dropped attempt can be priced and a
/// replay is whole. `limit` bounds the wait for a backend that never closes the stream.
pub async fn read_rest(
    held: &mut Vec<SseEvent>,
    splitter: &mut SseSplitter,
    upstream: &mut axum::body::BodyDataStream,
    limit: Duration,
) {
    let done = |e: &SseEvent| matches!(&e.data, Some(SseData::Other(s)) if s.trim() == "[DONE]");
    let rest = async {
        while !held.last().is_some_and(done) {
            match upstream.next().await {
                Some(Ok(bytes)) => held.extend(splitter.push(&bytes)),
                Some(Err(_)) | None => break,
            }
        }
    };
    if tokio::time::timeout(limit, rest).await.is_err() {
        tracing::debug!("a finished stream did not end within {limit:?}: read no further");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunk_boundaries_and_assembles_an_answer() {
        let events = [
            r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":{"content":[{"token":"Hel","logprob":-0.5}]},"finish_reason":null}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"content":"lo"},"logprobs":{"content":[{"token":"lo","logprob":-1.5}]},"finish_reason":null}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
            "data: [DONE]",
        ];
        let wire: String = events.iter().map(|e| format!("{e}\n\n")).collect();
        let mut splitter = SseSplitter::default();
        let mut held = HeldAnswer::default();
        let mut all = Vec::new();
        // Fed in 7-byte pieces: events straddle chunks.
        for piece in wire.as_bytes().chunks(7) {
            for e in splitter.push(piece) {
                held.add(Endpoint::Chat, e.data.as_ref().expect("data"));
                all.push(e);
            }
        }
        assert_eq!(all.len(), 5);
        let raw: Vec<u8> = all.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(raw, wire.as_bytes(), "each event as it came");
        assert!(held.finished);
        assert_eq!(held.tokens, 2);
        let r = held.as_response(Endpoint::Chat);
        assert_eq!(r["choices"][0]["message"]["content"], "Hello");
        assert_eq!(r["choices"][0]["finish_reason"], "length");
        assert_eq!(r["choices"][0]["logprobs"]["content"][1]["logprob"], -1.5);
        // Re-encoding without logprobs keeps the rest of the event.
        let mut tap = StreamTap::new(true, true, Default::default());
        let out = tap.pass(&all[1]).expect("passed");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        );
        assert_eq!(tap.pass(&all[4]).as_deref(), Some(&b"data: [DONE]\n\n"[..]));
        // A stream cut mid-event keeps what came of it.
        let mut cut = SseSplitter::default();
        assert_eq!(cut.push(b"data: [DONE]\n\ndata: {\"x").len(), 1);
        assert_eq!(&cut.rest()[..], b"data: {\"x");
    }

    #[tokio::test]
    async fn the_rest_of_a_finished_stream_is_read_to_done_or_for_the_limit() {
        let pieces = [
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\ndata: [DO",
            "NE]\n\n",
        ];
        let chunks = pieces.map(|p| Ok::<_, std::io::Error>(Bytes::from(p)));
        // A backend that keeps the connection open after `[DONE]`.
        let open = futures_util::stream::iter(chunks).chain(futures_util::stream::pending());
        let mut upstream = Body::from_stream(open).into_data_stream();
        let (mut held, mut splitter) = (Vec::new(), SseSplitter::default());
        let start = std::time::Instant::now();
        read_rest(&mut held, &mut splitter, &mut upstream, Duration::from_secs(60)).await;
        assert!(start.elapsed() < Duration::from_secs(30), "stopped at [DONE]");
        assert_eq!(held.len(), 2);
        assert!(matches!(&held[0].data, Some(SseData::Json(v)) if v["usage"]["prompt_tokens"] == 3));
        // One that sends nothing more: given up after the limit.
        let silent = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let mut upstream = Body::from_stream(silent).into_data_stream();
        let mut held = Vec::new();
        read_rest(&mut held, &mut splitter, &mut upstream, Duration::from_millis(20)).await;
        assert!(held.is_empty());
    }

    #[test]
    fn streamed_tool_calls_are_reassembled_once_finished() {
        let mut held = HeldAnswer::default();
        for e in [
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"Paris\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        ] {
            held.add(Endpoint::Chat, &SseData::Json(e));
        }
        assert!(held.finished);
        let r = held.as_response(Endpoint::Chat);
        let call = &r["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather");
        assert_eq!(call["arguments"], "{\"city\": \"Paris\"}");
    }
}
