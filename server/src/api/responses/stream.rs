//! A streamed response as OpenAI sends it: SSE events named by their `type` (an `event:` line),
//! each with a `sequence_number`: `response.created`, `response.in_progress`, then per output
//! item `response.output_item.added` ... `response.output_item.done` (a message's
//! `content_part.added`, `output_text.delta`s, `output_text.done`, `content_part.done`; a call's
//! `function_call_arguments.delta`/`.done`), and `response.completed` (or
//! `response.incomplete`) with the whole response, which is then stored. An engine error is an
//! `error` event. With tools the text goes through the same streaming parser as chat's streams,
//! so the streamed message and calls are the non-streamed ones. A client that disconnects drops
//! the stream, which cancels the engine request (and nothing is stored).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{json, Value};
use wick_engine::engine::EngineEvent;
use wick_engine::sample::stop::FinishReason;

use crate::api::infer::{Merged, MergedEvents};
use crate::api::local_model::LocalModel;
use crate::api::openai::{unix_now, TokenLogprob};
use crate::api::responses::input::new_id;
use crate::api::responses::output::{
    function_call_item, has_message, message_item, text_part, usage, ResponseHead, Status,
};
use crate::api::responses::store::{ResponseStore, StoredResponse};
use crate::api::sse::chat_logprobs;
use crate::tools::parser::{StreamDelta, StreamingToolParser};
use crate::tools::ToolSetup;

/// Where a finished response is stored (`store` not false).
pub struct Save {
    pub store: Arc<ResponseStore>,
    pub input_items: Vec<Value>,
    pub previous: Option<Arc<StoredResponse>>,
}

pub struct StreamSetup {
    pub head: ResponseHead,
    pub tools: Option<Arc<ToolSetup>>,
    pub logprobs: bool,
    pub save: Option<Save>,
}

/// The message item being streamed.
struct OpenMessage {
    output_index: usize,
    id: String,
    text: String,
    logprobs: Vec<TokenLogprob>,
}

/// A call item (complete once the parser emits it; done at the next call or the end).
struct OpenCall {
    output_index: usize,
    id: String,
    call_id: String,
    name: String,
    arguments: String,
}

struct ResponseStream {
    model: Arc<LocalModel>,
    events: MergedEvents,
    head: ResponseHead,
    tools: Option<Arc<ToolSetup>>,
    parser: Option<StreamingToolParser>,
    logprobs: bool,
    save: Option<Save>,
    sequence: u64,
    pending: VecDeque<Event>,
    finished: bool,
    /// Each output index's finished item.
    output: Vec<Option<Value>>,
    message: Option<OpenMessage>,
    calls: Vec<OpenCall>,
    calls_done: usize,
    finish: Option<FinishReason>,
}

impl ResponseStream {
    fn emit(&mut self, kind: &str, mut payload: Value) {
        payload["type"] = json!(kind);
        payload["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let data = serde_json::to_string(&payload).unwrap_or_else(|_| "{}".into());
        self.pending.push_back(Event::default().event(kind).data(data));
    }

    fn next_output_index(&mut self) -> usize {
        self.output.push(None);
        self.output.len() - 1
    }

    fn open_message(&mut self) {
        if self.message.is_some() {
            return;
        }
        let output_index = self.next_output_index();
        let id = new_id("msg");
        let item = message_item(&id, "in_progress", Vec::new());
        self.emit(
            "response.output_item.added",
            json!({"output_index": output_index, "item": item}),
        );
        self.emit(
            "response.content_part.added",
            json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": text_part("", &[])}),
        );
        self.message = Some(OpenMessage {
            output_index,
            id,
            text: String::new(),
            logprobs: Vec::new(),
        });
    }

    fn push_text(&mut self, text: String, logprobs: Vec<TokenLogprob>) {
        self.open_message();
        let Some(m) = self.message.as_mut() else {
            return;
        };
        m.text.push_str(&text);
        m.logprobs.extend(logprobs.iter().cloned());
        let payload = json!({
            "item_id": m.id, "output_index": m.output_index, "content_index": 0,
            "delta": text, "logprobs": logprobs,
        });
        self.emit("response.output_text.delta", payload);
    }

    fn close_message(&mut self, status: &str) {
        let Some(m) = self.message.take() else {
            return;
        };
        let part = text_part(&m.text, &m.logprobs);
        self.emit(
            "response.output_text.done",
            json!({
                "item_id": m.id, "output_index": m.output_index, "content_index": 0,
                "text": m.text, "logprobs": m.logprobs,
            }),
        );
        self.emit(
            "response.content_part.done",
            json!({"item_id": m.id, "output_index": m.output_index, "content_index": 0, "part": part}),
        );
        let item = message_item(&m.id, status, vec![part]);
        self.emit(
            "response.output_item.done",
            json!({"output_index": m.output_index, "item": item}),
        );
        self.output[m.output_index] = Some(item);
    }

    /// Ends the calls not ended yet (the parser emits a call whole, so each is complete).
    fn close_calls(&mut self) {
        while self.calls_done < self.calls.len() {
            let c = &self.calls[self.calls_done];
            let (output_index, id) = (c.output_index, c.id.clone());
            let item = function_call_item(&c.id, &c.call_id, &c.name, &c.arguments, "completed");
            let arguments = c.arguments.clone();
            self.calls_done += 1;
            self.emit(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": output_index, "arguments": arguments}),
            );
            self.emit(
                "response.output_item.done",
                json!({"output_index": output_index, "item": item}),
            );
            self.output[output_index] = Some(item);
        }
    }

    /// The parser's deltas as items: content into the message (none when a call is forced:
    /// then unparsed text is a call cut short), calls as function_call items (past the first
    /// dropped when only one is wanted, as chat does).
    fn push_deltas(&mut self, deltas: Vec<StreamDelta>) {
        let (single, forced) = self
            .tools
            .as_ref()
            .map_or((false, false), |t| (t.single, t.forced));
        for delta in deltas {
            match delta {
                StreamDelta::Content(text) if !text.is_empty() && !forced => self.push_text(text, Vec::new()),
                StreamDelta::Content(_) => {}
                StreamDelta::ToolCallDelta { index, .. } if single && index > 0 => {}
                StreamDelta::ToolCallDelta {
                    index,
                    id,
                    name,
                    arguments,
                } => {
                    if let Some(call_id) = id {
                        self.close_calls();
                        let output_index = self.next_output_index();
                        let call = OpenCall {
                            output_index,
                            id: new_id("fc"),
                            call_id,
                            name: name.unwrap_or_default(),
                            arguments: String::new(),
                        };
                        let item = function_call_item(&call.id, &call.call_id, &call.name, "", "in_progress");
                        self.calls.push(call);
                        self.emit(
                            "response.output_item.added",
                            json!({"output_index": output_index, "item": item}),
                        );
                    }
                    if arguments.is_empty() {
                        continue;
                    }
                    let Some(call) = self.calls.get_mut(index) else {
                        continue;
                    };
                    call.arguments.push_str(&arguments);
                    let payload =
                        json!({"item_id": call.id, "output_index": call.output_index, "delta": arguments});
                    self.emit("response.function_call_arguments.delta", payload);
                }
            }
        }
    }

    fn status(&self) -> Status {
        match self.finish {
            Some(FinishReason::Length) => Status::Incomplete,
            _ => Status::Completed,
        }
    }

    fn fail(&mut self, message: String) {
        self.emit(
            "error",
            json!({"code": "server_error", "message": message, "param": null}),
        );
        self.finished = true;
    }

    async fn fill(&mut self) {
        let Some(item) = self.events.next().await else {
            self.fail("the engine stopped before the request finished".into());
            return;
        };
        match item {
            Merged::Event(_, EngineEvent::Token(t)) => {
                if let Some(parser) = self.parser.as_mut() {
                    let deltas = parser.push(&t.text);
                    self.push_deltas(deltas);
                } else if !t.text.is_empty() || self.logprobs {
                    let logprobs = match (self.logprobs, t.logprob) {
                        (true, Some(lp)) => {
                            chat_logprobs(self.model.engine.tokenizer(), &[t.token], &[(lp, t.top_logprobs)])
                                .content
                        }
                        _ => Vec::new(),
                    };
                    self.push_text(t.text, logprobs);
                }
            }
            Merged::Event(_, EngineEvent::Finished { reason, text, .. }) => {
                if let Some(mut parser) = self.parser.take() {
                    let mut deltas = parser.push(&text);
                    deltas.extend(parser.finish());
                    self.push_deltas(deltas);
                } else if !text.is_empty() {
                    self.push_text(text, Vec::new());
                }
                self.finish = Some(reason);
                self.close_calls();
                let forced = self.tools.as_ref().is_some_and(|t| t.forced);
                if self.message.is_none() && has_message("", self.calls.len(), forced) {
                    self.open_message();
                }
                let status = if self.status() == Status::Incomplete {
                    "incomplete"
                } else {
                    "completed"
                };
                self.close_message(status);
            }
            Merged::Event(_, EngineEvent::Error(message)) => self.fail(message),
            Merged::Event(_, EngineEvent::Done(_) | EngineEvent::PromptLogprobs(_)) => {}
            Merged::Done(u) => {
                let status = self.status();
                let output = self.output.iter().flatten().cloned().collect();
                let object = self.head.object(status, output, Some(usage(u)), Some(unix_now()));
                if let Some(save) = self.save.take() {
                    let stored = StoredResponse {
                        response: object.clone(),
                        input_items: save.input_items,
                        previous: save.previous,
                    };
                    save.store.insert(self.head.id.clone(), Arc::new(stored));
                }
                let kind = match status {
                    Status::Incomplete => "response.incomplete",
                    _ => "response.completed",
                };
                self.emit(kind, json!({"response": object}));
                self.finished = true;
            }
        }
    }
}

/// The SSE response for a submitted Responses request.
pub fn sse(model: Arc<LocalModel>, events: MergedEvents, setup: StreamSetup) -> Response {
    let StreamSetup {
        head,
        tools,
        logprobs,
        save,
    } = setup;
    let parser = tools
        .as_ref()
        .map(|t| StreamingToolParser::new(t.format, Some(&t.tools)));
    let mut s = ResponseStream {
        model,
        events,
        head,
        tools,
        parser,
        logprobs,
        save,
        sequence: 0,
        pending: VecDeque::new(),
        finished: false,
        output: Vec::new(),
        message: None,
        calls: Vec::new(),
        calls_done: 0,
        finish: None,
    };
    let in_progress = s.head.object(Status::InProgress, Vec::new(), None, None);
    s.emit("response.created", json!({"response": in_progress}));
    s.emit("response.in_progress", json!({"response": in_progress}));
    let body = stream::unfold(s, |mut s| async move {
        while s.pending.is_empty() && !s.finished {
            s.fill().await;
        }
        let event = s.pending.pop_front()?;
        Some((Ok::<Event, Infallible>(event), s))
    });
    Sse::new(body).keep_alive(KeepAlive::default()).into_response()
}
