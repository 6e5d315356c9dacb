//! The Responses API's stream events, written from what an answer does as it arrives (text,
//! calls, its end), whoever produces it: the local engine (`stream`) or a route's chat stream
//! (`routed_stream`). Events are SSE events named by their `type` (an `event:` line), each with
//! a `sequence_number`: `response.created`, `response.in_progress`, then per output item
//! `response.output_item.added` ... `response.output_item.done` (a message's
//! `content_part.added`, `output_text.delta`s, `output_text.done`, `content_part.done`; a call's
//! `function_call_arguments.delta`/`.done`), and `response.completed` (or
//! `response.incomplete`) with the whole response, which is then stored. A failure is an
//! `error` event.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::response::sse::Event;
use serde_json::{json, Value};

use crate::api::openai::unix_now;
use crate::api::responses::input::new_id;
use crate::api::responses::output::{
    function_call_item, has_message, message_item, text_part, ResponseHead, Status,
};
use crate::api::responses::store::{ResponseStore, StoredResponse};
use crate::tools::parser::StreamDelta;

/// Where a finished response is stored (`store` not false).
pub struct Save {
    pub store: Arc<ResponseStore>,
    pub input_items: Vec<Value>,
    pub previous: Option<Arc<StoredResponse>>,
}

impl Save {
    /// Stores the finished response `object` as `id`.
    pub fn keep(self, id: &str, object: &Value) {
        let stored = StoredResponse::new(object.clone(), self.input_items, self.previous);
        self.store.insert(id.to_string(), Arc::new(stored));
    }
}

/// The message item being streamed.
struct OpenMessage {
    output_index: usize,
    id: String,
    text: String,
    logprobs: Vec<Value>,
}

/// A call item (done at the next call or the end).
struct OpenCall {
    output_index: usize,
    id: String,
    call_id: String,
    name: String,
    arguments: String,
}

/// One response's events, queued until the SSE body takes them.
pub struct ResponseEvents {
    pub head: ResponseHead,
    sequence: u64,
    pending: VecDeque<Event>,
    /// A `response.completed`/`.incomplete` or `error` event was written: nothing follows.
    pub finished: bool,
    /// Each output index's finished item.
    output: Vec<Option<Value>>,
    message: Option<OpenMessage>,
    calls: Vec<OpenCall>,
    calls_done: usize,
    /// Only the first call is kept (`parallel_tool_calls: false`, as chat does).
    single: bool,
    /// A call is forced: text is no answer (unparsed text is a call cut short).
    forced: bool,
    status: Status,
}

impl ResponseEvents {
    pub fn new(head: ResponseHead, single: bool, forced: bool) -> Self {
        Self {
            head,
            sequence: 0,
            pending: VecDeque::new(),
            finished: false,
            output: Vec::new(),
            message: None,
            calls: Vec::new(),
            calls_done: 0,
            single,
            forced,
            status: Status::Completed,
        }
    }

    /// The next event to send.
    pub fn pop(&mut self) -> Option<Event> {
        self.pending.pop_front()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn emit(&mut self, kind: &str, mut payload: Value) {
        payload["type"] = json!(kind);
        payload["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let data = serde_json::to_string(&payload).unwrap_or_else(|_| "{}".into());
        self.pending.push_back(Event::default().event(kind).data(data));
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) {
        let in_progress = self.head.object(Status::InProgress, Vec::new(), None, None);
        self.emit("response.created", json!({"response": in_progress}));
        self.emit("response.in_progress", json!({"response": in_progress}));
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

    /// Text of the message (with its tokens' logprobs, chat's shape, when asked for).
    pub fn push_text(&mut self, text: String, logprobs: Vec<Value>) {
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

    /// Ends the calls not ended yet.
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

    /// Chat's stream deltas as items: content into the message (none when a call is forced),
    /// calls as function_call items (past the first dropped when only one is wanted). A call
    /// starts with a delta carrying its `id`; later deltas of its `index` add arguments.
    pub fn push_deltas(&mut self, deltas: Vec<StreamDelta>) {
        for delta in deltas {
            match delta {
                StreamDelta::Content(text) if !text.is_empty() && !self.forced => {
                    self.push_text(text, Vec::new())
                }
                StreamDelta::Content(_) => {}
                StreamDelta::ToolCallDelta { index, .. } if self.single && index > 0 => {}
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

    /// The answer is complete (`cut`: by `max_output_tokens`): its items are done. An answer
    /// with no call and no text is still a message (an empty one), unless a call was forced.
    pub fn end_output(&mut self, cut: bool) {
        if cut {
            self.status = Status::Incomplete;
        }
        self.close_calls();
        if self.message.is_none() && has_message("", self.calls.len(), self.forced) {
            self.open_message();
        }
        let status = if cut { "incomplete" } else { "completed" };
        self.close_message(status);
    }

    /// `response.completed` (or `.incomplete`) with the whole response, stored by `save`.
    pub fn complete(&mut self, usage: Option<Value>, save: Option<Save>) {
        let output = self.output.iter().flatten().cloned().collect();
        let object = self.head.object(self.status, output, usage, Some(unix_now()));
        if let Some(save) = save {
            save.keep(&self.head.id, &object);
        }
        let kind = match self.status {
            Status::Incomplete => "response.incomplete",
            _ => "response.completed",
        };
        self.emit(kind, json!({"response": object}));
        self.finished = true;
    }

    /// An `error` event (OpenAI's fields); the stream ends there and nothing is stored.
    pub fn fail(&mut self, code: &str, message: String, param: Option<String>) {
        self.emit("error", json!({"code": code, "message": message, "param": param}));
        self.finished = true;
    }
}
