//! A streamed response from a local model: the engine's events written as the Responses API's
//! stream events (`events`). With tools the text goes through the same streaming parser as
//! chat's streams, so the streamed message and calls are the non-streamed ones. A client that
//! disconnects drops the stream, which cancels the engine request (and nothing is stored).

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
use crate::api::responses::events::{ResponseEvents, Save};
use crate::api::responses::output::{usage, ResponseHead};
use crate::api::sse::chat_logprobs;
use crate::tools::parser::StreamingToolParser;
use crate::tools::ToolSetup;

pub struct StreamSetup {
    pub head: ResponseHead,
    pub tools: Option<Arc<ToolSetup>>,
    pub logprobs: bool,
    pub save: Option<Save>,
}

struct EngineStream {
    model: Arc<LocalModel>,
    events: MergedEvents,
    parser: Option<StreamingToolParser>,
    logprobs: bool,
    save: Option<Save>,
    out: ResponseEvents,
}

impl EngineStream {
    async fn fill(&mut self) {
        let Some(item) = self.events.next().await else {
            let message = "the engine stopped before the request finished".to_string();
            self.out.fail("server_error", message, None);
            return;
        };
        match item {
            Merged::Event(_, EngineEvent::Token(t)) => {
                if let Some(parser) = self.parser.as_mut() {
                    let deltas = parser.push(&t.text);
                    self.out.push_deltas(deltas);
                } else if !t.text.is_empty() || self.logprobs {
                    let logprobs: Vec<Value> = match (self.logprobs, t.logprob) {
                        (true, Some(lp)) => {
                            chat_logprobs(self.model.engine.tokenizer(), &[t.token], &[(lp, t.top_logprobs)])
                                .content
                                .iter()
                                .map(|l| json!(l))
                                .collect()
                        }
                        _ => Vec::new(),
                    };
                    self.out.push_text(t.text, logprobs);
                }
            }
            Merged::Event(_, EngineEvent::Finished { reason, text, .. }) => {
                if let Some(mut parser) = self.parser.take() {
                    let mut deltas = parser.push(&text);
                    deltas.extend(parser.finish());
                    self.out.push_deltas(deltas);
                } else if !text.is_empty() {
                    self.out.push_text(text, Vec::new());
                }
                self.out.end_output(reason == FinishReason::Length);
            }
            Merged::Event(_, EngineEvent::Error(message)) => self.out.fail("server_error", message, None),
            Merged::Event(_, EngineEvent::Done(_) | EngineEvent::PromptLogprobs(_)) => {}
            Merged::Done(u) => {
                let save = self.save.take();
                self.out.complete(Some(usage(u)), save);
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
    let (single, forced) = tools.as_ref().map_or((false, false), |t| (t.single, t.forced));
    let mut out = ResponseEvents::new(head, single, forced);
    out.start();
    let s = EngineStream {
        model,
        events,
        parser,
        logprobs,
        save,
        out,
    };
    let body = stream::unfold(s, |mut s| async move {
        while !s.out.has_pending() && !s.out.finished {
            s.fill().await;
        }
        let event = s.out.pop()?;
        Some((Ok::<Event, Infallible>(event), s))
    });
    Sse::new(body).keep_alive(KeepAlive::default()).into_response()
}
