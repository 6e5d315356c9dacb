//! A route's chat stream (the SSE chunks of `/v1/chat/completions`, as the router passes them
//! on) written as the Responses API's stream events (`events`): content deltas become the
//! message's text (with their logprobs), tool-call deltas function_call items, the finish
//! reason ends the items (`length`: incomplete), the usage chunk (asked for by
//! `convert::chat_body`) gives `usage`, and `[DONE]` completes the response, which is then
//! stored. The first chunk names the model that answered, so `response.created` waits for it.
//! An `{"error"}` chunk, a broken stream or one that ends before the answer did is an `error`
//! event. The tier already parsed tool calls: nothing is parsed here. A client that
//! disconnects drops the stream, and with it the router's request to the tier.

use std::convert::Infallible;

use axum::body::{Body, BodyDataStream};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{stream, StreamExt};
use serde_json::Value;

use crate::api::responses::convert::responses_param;
use crate::api::responses::events::{ResponseEvents, Save};
use crate::api::responses::output::{usage_from_chat, ResponseHead};
use crate::router::hold::{SseData, SseSplitter};
use crate::router::tap::usage_chunk;
use crate::tools::parser::StreamDelta;

struct ChatStream {
    upstream: BodyDataStream,
    splitter: SseSplitter,
    out: ResponseEvents,
    started: bool,
    /// The finish reason came: the items are done.
    answered: bool,
    usage: Option<Value>,
    save: Option<Save>,
}

impl ChatStream {
    /// `response.created` once: named after the model of the first chunk, when it has one.
    fn begin(&mut self, model: Option<&str>) {
        if self.started {
            return;
        }
        if let Some(model) = model {
            self.out.head.set_model(model);
        }
        self.out.start();
        self.started = true;
    }

    fn complete(&mut self) {
        if !self.answered {
            self.out.end_output(false);
            self.answered = true;
        }
        let save = self.save.take();
        self.out.complete(self.usage.take(), save);
    }

    fn fail(&mut self, code: &str, message: String, param: Option<String>) {
        self.begin(None);
        self.out.fail(code, message, param);
    }

    async fn fill(&mut self) {
        match self.upstream.next().await {
            Some(Ok(bytes)) => {
                for event in self.splitter.push(&bytes) {
                    match &event.data {
                        Some(SseData::Json(chunk)) => self.chunk(chunk),
                        Some(SseData::Other(s)) if s.trim() == "[DONE]" => {
                            self.begin(None);
                            self.complete();
                        }
                        // Comments (keep-alives) and anything else that is no chunk.
                        _ => {}
                    }
                    if self.out.finished {
                        return;
                    }
                }
            }
            Some(Err(e)) => self.fail(
                "server_error",
                format!("the route's backend stream broke: {e}"),
                None,
            ),
            // Some servers end without `[DONE]`: an answer that finished is complete.
            None if self.answered => self.complete(),
            None => self.fail(
                "server_error",
                "the route's backend stream ended before its answer did".into(),
                None,
            ),
        }
    }

    /// One chat chunk (one choice: a Responses request asks for one).
    fn chunk(&mut self, chunk: &Value) {
        if let Some(error) = chunk.get("error") {
            let text = |k: &str| error.get(k).and_then(Value::as_str).map(str::to_string);
            let message = text("message").unwrap_or_else(|| error.to_string());
            let code = text("code").unwrap_or_else(|| "server_error".into());
            self.fail(&code, message, text("param").map(|p| responses_param(&p)));
            return;
        }
        self.begin(chunk.get("model").and_then(Value::as_str));
        if let Some(usage) = usage_chunk(chunk) {
            self.usage = Some(usage_from_chat(usage));
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        let text = choice
            .pointer("/delta/content")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match choice.pointer("/logprobs/content") {
            Some(Value::Array(logprobs)) if !logprobs.is_empty() => {
                self.out.push_text(text.to_string(), logprobs.clone())
            }
            _ => self.out.push_deltas(vec![StreamDelta::Content(text.to_string())]),
        }
        let calls = choice
            .pointer("/delta/tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        let deltas = calls
            .map(|call| {
                let text = |path: &str| call.pointer(path).and_then(Value::as_str).map(str::to_string);
                StreamDelta::ToolCallDelta {
                    index: call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize,
                    id: text("/id"),
                    name: text("/function/name"),
                    arguments: text("/function/arguments").unwrap_or_default(),
                }
            })
            .collect();
        self.out.push_deltas(deltas);
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            if !self.answered {
                self.out.end_output(reason == "length");
                self.answered = true;
            }
        }
    }
}

/// The SSE response for a route's chat stream `body`.
pub fn sse(body: Body, head: ResponseHead, forced: bool, save: Option<Save>) -> Response {
    let s = ChatStream {
        upstream: body.into_data_stream(),
        splitter: SseSplitter::default(),
        // The tier already kept one call when only one was wanted.
        out: ResponseEvents::new(head, false, forced),
        started: false,
        answered: false,
        usage: None,
        save,
    };
    let events = stream::unfold(s, |mut s| async move {
        while !s.out.has_pending() && !s.out.finished {
            s.fill().await;
        }
        let event = s.out.pop()?;
        Some((Ok::<Event, Infallible>(event), s))
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Bytes};

    use crate::api::responses::request::ResponsesRequest;

    /// The events `sse` writes for a chat stream `chunks` (each `data:` payload), as JSON.
    async fn events_of(chunks: &[&str]) -> Vec<Value> {
        let req = ResponsesRequest::parse(&Bytes::from(r#"{"model": "auto", "input": "hi"}"#)).unwrap();
        let head = ResponseHead::new(&req, "auto", 1);
        let raw: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        // Split mid-event, as a network would.
        let (a, b) = raw.split_at(raw.len() / 2);
        let parts: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from(a.to_string())), Ok(Bytes::from(b.to_string()))];
        let body = Body::from_stream(futures_util::stream::iter(parts));
        let response = sse(body, head, false, None);
        let text = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        String::from_utf8_lossy(&text)
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn kinds(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap_or("")).collect()
    }

    #[tokio::test]
    async fn a_chat_stream_becomes_the_responses_events() {
        let events = events_of(&[
            r#"{"model":"large","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"model":"large","choices":[{"index":0,"delta":{"content":"Blue"}}]}"#,
            r#"{"model":"large","choices":[{"index":0,"delta":{"content":" sky"}}]}"#,
            r#"{"model":"large","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"model":"large","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#,
            r#"{"model":"large","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}"#,
            r#"{"model":"large","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"model":"large","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}"#,
            "[DONE]",
        ])
        .await;
        assert_eq!(
            kinds(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let numbers: Vec<u64> = events
            .iter()
            .filter_map(|e| e["sequence_number"].as_u64())
            .collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
        assert_eq!(
            events[0]["response"]["model"], "large",
            "named after who answered"
        );
        let done = &events[events.len() - 1]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Blue sky");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["output"][1]["call_id"], "call_1");
        assert_eq!(done["usage"]["input_tokens"], 5);
        assert_eq!(done["usage"]["total_tokens"], 9);
    }

    #[tokio::test]
    async fn length_is_incomplete_and_errors_or_cut_streams_are_error_events() {
        let events = events_of(&[
            r#"{"model":"small","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"length"}]}"#,
            "[DONE]",
        ])
        .await;
        let last = &events[events.len() - 1];
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(last["response"]["output"][0]["status"], "incomplete");
        assert!(last["response"]["usage"].is_null(), "no usage chunk came");

        let events = events_of(&[
            r#"{"model":"small","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"error":{"message":"engine gone","type":"server_error","param":null,"code":null}}"#,
            "[DONE]",
        ])
        .await;
        let last = &events[events.len() - 1];
        assert_eq!(
            (&last["type"], &last["message"], &last["code"]),
            (
                &Value::from("error"),
                &Value::from("engine gone"),
                &Value::from("server_error")
            )
        );
        assert!(!kinds(&events).contains(&"response.completed"));

        let events =
            events_of(&[r#"{"model":"small","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#]).await;
        assert_eq!(kinds(&events).last(), Some(&"error"), "ended before its answer");
    }
}
