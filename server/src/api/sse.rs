//! Server-sent events as OpenAI streams them: for chat, a first chunk per choice with the role,
//! then content deltas, a chunk with `finish_reason` per choice, an optional usage chunk
//! (`stream_options.include_usage`, with empty `choices`), then `data: [DONE]`. An engine error
//! after the stream started is sent as an `{"error": ...}` event before `[DONE]`. A client that
//! disconnects drops the stream, which cancels the engine requests.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Serialize;
use wick_engine::engine::{EngineEvent, PromptTokenLogprob, Usage as EngineUsage};
use wick_engine::tokenizer::Tokenizer;

use crate::api::errors::ApiError;
use crate::api::infer::{Merged, MergedEvents};
use crate::api::local_model::LocalModel;
use crate::api::openai::*;
use crate::api::openai::{fingerprint, unix_now};
use crate::tools::parser::{StreamDelta, StreamingToolParser};
use crate::tools::{self, ToolSetup};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Chat,
    Completion,
}

pub fn usage(u: EngineUsage) -> Usage {
    Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: u.cached_prompt_tokens,
        },
        completion_tokens_details: u.speculative.map(|s| CompletionTokensDetails {
            accepted_prediction_tokens: s.accepted,
            rejected_prediction_tokens: s.proposed.saturating_sub(s.accepted),
        }),
    }
}

/// `x-wick-draft: accepted=41/52`: a non-streamed answer's accepted share of its proposals,
/// where the model speculates (a stream has it in its usage chunk).
pub fn draft_header(u: &EngineUsage) -> Option<(&'static str, String)> {
    u.speculative
        .map(|s| (DRAFT_HEADER, draft_share(s.accepted as u64, s.proposed as u64)))
}

/// `x-wick-draft`'s value: `accepted=41/52`.
pub fn draft_share(accepted: u64, proposed: u64) -> String {
    format!("accepted={accepted}/{proposed}")
}

pub const DRAFT_HEADER: &str = "x-wick-draft";

fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

/// Chat logprobs for `tokens` with their `(logprob, top)` entries.
pub fn chat_logprobs(
    tokenizer: &Tokenizer,
    tokens: &[u32],
    entries: &[(f32, Vec<(u32, f32)>)],
) -> ChatLogprobs {
    let content = tokens
        .iter()
        .zip(entries)
        .map(|(&id, (lp, top))| {
            let token = token_text(tokenizer, id);
            TokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: *lp,
                top_logprobs: top
                    .iter()
                    .map(|&(t, l)| {
                        let token = token_text(tokenizer, t);
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob: l,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}

/// Completions' legacy logprobs; `offset` is where the generated text starts (after an echo).
pub fn completion_logprobs(
    tokenizer: &Tokenizer,
    tokens: &[u32],
    entries: &[(f32, Vec<(u32, f32)>)],
    mut offset: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for (&id, (lp, top)) in tokens.iter().zip(entries) {
        let token = token_text(tokenizer, id);
        out.text_offset.push(offset);
        offset += token.len();
        out.tokens.push(token);
        out.token_logprobs.push(Some(*lp));
        let map: HashMap<String, f32> = top.iter().map(|&(t, l)| (token_text(tokenizer, t), l)).collect();
        out.top_logprobs.push(Some(map));
    }
    out
}

/// Completions' legacy logprobs of an echoed prompt, OpenAI's way: the first token has none
/// (`null`), every later one its logprob given the tokens before it, and its alternatives with
/// the token itself among them (as vLLM does).
pub fn prompt_logprobs(
    tokenizer: &Tokenizer,
    prompt: &[u32],
    entries: &[PromptTokenLogprob],
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = 0;
    for (i, &id) in prompt.iter().enumerate() {
        let token = token_text(tokenizer, id);
        out.text_offset.push(offset);
        offset += token.len();
        // entries[i - 1] is prompt[i]'s; a shorter list (never expected) leaves nulls.
        let entry = i.checked_sub(1).and_then(|e| entries.get(e));
        out.token_logprobs.push(entry.map(|e| e.logprob));
        out.top_logprobs.push(entry.map(|e| {
            let mut map: HashMap<String, f32> = e
                .top_logprobs
                .iter()
                .map(|&(t, l)| (token_text(tokenizer, t), l))
                .collect();
            map.insert(token.clone(), e.logprob);
            map
        }));
        out.tokens.push(token);
    }
    out
}

/// A token id with its logprob and top alternatives.
type TokenLogprobEntry = (u32, (f32, Vec<(u32, f32)>));

struct StreamState {
    model: Arc<LocalModel>,
    events: MergedEvents,
    kind: StreamKind,
    id: String,
    created: u64,
    n: usize,
    include_usage: bool,
    logprobs: bool,
    pending: VecDeque<Event>,
    finished: bool,
    /// With tools: each choice's text goes through its own parser (taken at its finish), and
    /// whether the choice has made a call.
    tools: Option<Arc<ToolSetup>>,
    parsers: Vec<Option<StreamingToolParser>>,
    made_call: Vec<bool>,
    /// With tools and logprobs: each choice's token logprobs not sent yet. The parser holds
    /// text back, so a token's logprob goes out with the next chunk of its choice (content or
    /// call, or the finish chunk): concatenated, a stream's logprobs equal the non-streamed ones.
    held_logprobs: Vec<Vec<TokenLogprobEntry>>,
}

impl StreamState {
    fn json<T: Serialize>(value: &T) -> Event {
        Event::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
    }

    fn chat_chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> Event {
        Self::json(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.id.clone(),
            system_fingerprint: fingerprint(),
            choices,
            usage,
        })
    }

    fn completion_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Event {
        Self::json(&Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.id.clone(),
            system_fingerprint: fingerprint(),
            choices,
            usage,
        })
    }

    /// A content (or text) chunk for one choice; `finish` ends it.
    fn delta(
        &self,
        index: usize,
        text: String,
        logprobs: Option<TokenLogprobEntry>,
        finish: Option<&'static str>,
    ) -> Event {
        let tokenizer = self.model.engine.tokenizer();
        match self.kind {
            StreamKind::Chat => self.chat_chunk(
                vec![ChatChunkChoice {
                    index,
                    delta: ChatDelta {
                        role: None,
                        content: (finish.is_none() || !text.is_empty()).then_some(text),
                        tool_calls: None,
                    },
                    logprobs: logprobs.map(|(id, e)| chat_logprobs(tokenizer, &[id], &[e])),
                    finish_reason: finish,
                }],
                None,
            ),
            StreamKind::Completion => self.completion_chunk(
                vec![CompletionChoice {
                    index,
                    text,
                    logprobs: logprobs.map(|(id, e)| completion_logprobs(tokenizer, &[id], &[e], 0)),
                    finish_reason: finish,
                }],
                None,
            ),
        }
    }

    /// Chunks for a choice's parsed deltas: content as content, calls as OpenAI's tool-call
    /// deltas (`id` and `type` on a call's first); calls past the first are dropped when only one
    /// is wanted, and content when a call is forced.
    fn push_tool_deltas(&mut self, index: usize, deltas: Vec<StreamDelta>) {
        let single = self.tools.as_ref().is_some_and(|t| t.single);
        // A forced call's unparsed text is a call cut short: never content.
        let forced = self.tools.as_ref().is_some_and(|t| t.forced);
        for delta in deltas {
            match delta {
                StreamDelta::Content(text) if !text.is_empty() && !forced => {
                    let logprobs = self.take_held_logprobs(index);
                    let event = self.chat_chunk(
                        vec![ChatChunkChoice {
                            index,
                            delta: ChatDelta {
                                role: None,
                                content: Some(text),
                                tool_calls: None,
                            },
                            logprobs,
                            finish_reason: None,
                        }],
                        None,
                    );
                    self.pending.push_back(event);
                }
                StreamDelta::Content(_) => {}
                StreamDelta::ToolCallDelta {
                    index: call,
                    id,
                    name,
                    arguments,
                } => {
                    if single && call > 0 {
                        continue;
                    }
                    self.made_call[index] = true;
                    let logprobs = self.take_held_logprobs(index);
                    let event = self.chat_chunk(
                        vec![ChatChunkChoice {
                            index,
                            delta: ChatDelta {
                                role: None,
                                content: None,
                                tool_calls: Some(vec![ToolCallDeltaOut {
                                    index: call,
                                    kind: id.is_some().then_some("function"),
                                    id,
                                    function: FunctionDeltaOut { name, arguments },
                                }]),
                            },
                            logprobs,
                            finish_reason: None,
                        }],
                        None,
                    );
                    self.pending.push_back(event);
                }
            }
        }
    }

    /// The logprobs held back for choice `index` (None when none are, or none were asked for).
    fn take_held_logprobs(&mut self, index: usize) -> Option<ChatLogprobs> {
        let held = std::mem::take(self.held_logprobs.get_mut(index)?);
        if held.is_empty() {
            return None;
        }
        let (tokens, entries): (Vec<u32>, Vec<_>) = held.into_iter().unzip();
        Some(chat_logprobs(self.model.engine.tokenizer(), &tokens, &entries))
    }

    async fn fill(&mut self) {
        let Some(item) = self.events.next().await else {
            // The engine went away without finishing: end cleanly with an error event.
            let e = ApiError::unavailable("the engine stopped before the request finished");
            self.pending.push_back(Self::json(&e.body));
            self.pending.push_back(Event::default().data("[DONE]"));
            self.finished = true;
            return;
        };
        match item {
            Merged::Event(p, EngineEvent::Token(t)) => {
                let index = p * self.n + t.index;
                // With tools the text goes through the parser; logprobs wait for its output.
                if let Some(parser) = self.parsers.get_mut(index).and_then(Option::as_mut) {
                    let deltas = parser.push(&t.text);
                    if let (true, Some(lp)) = (self.logprobs, t.logprob) {
                        if let Some(held) = self.held_logprobs.get_mut(index) {
                            held.push((t.token, (lp, t.top_logprobs)));
                        }
                    }
                    self.push_tool_deltas(index, deltas);
                } else if !t.text.is_empty() || self.logprobs {
                    let lp = t.logprob.map(|lp| (t.token, (lp, t.top_logprobs)));
                    let event = self.delta(index, t.text, lp, None);
                    self.pending.push_back(event);
                }
            }
            Merged::Event(
                p,
                EngineEvent::Finished {
                    index, reason, text, ..
                },
            ) => {
                let index = p * self.n + index;
                if let Some(mut parser) = self.parsers.get_mut(index).and_then(Option::take) {
                    let mut deltas = parser.push(&text);
                    deltas.extend(parser.finish());
                    self.push_tool_deltas(index, deltas);
                } else if !text.is_empty() {
                    let event = self.delta(index, text, None, None);
                    self.pending.push_back(event);
                }
                let reason = match &self.tools {
                    Some(_) => {
                        tools::finish_reason(self.made_call.get(index).copied().unwrap_or(false), reason)
                    }
                    None => reason.as_str(),
                };
                let mut event = self.delta(index, String::new(), None, Some(reason));
                if let Some(logprobs) = self.take_held_logprobs(index) {
                    // What the parser held to the end (a call's last tokens, trailing markup).
                    event = self.chat_chunk(
                        vec![ChatChunkChoice {
                            index,
                            delta: ChatDelta {
                                role: None,
                                content: None,
                                tool_calls: None,
                            },
                            logprobs: Some(logprobs),
                            finish_reason: Some(reason),
                        }],
                        None,
                    );
                }
                self.pending.push_back(event);
            }
            Merged::Event(_, EngineEvent::Error(message)) => {
                self.pending
                    .push_back(Self::json(&ApiError::internal(message).body));
                self.pending.push_back(Event::default().data("[DONE]"));
                self.finished = true;
            }
            // Prompt logprobs come with `echo`, which streams refuse.
            Merged::Event(_, EngineEvent::Done(_) | EngineEvent::PromptLogprobs(_)) => {}
            Merged::Done(u) => {
                if self.include_usage {
                    let event = match self.kind {
                        StreamKind::Chat => self.chat_chunk(Vec::new(), Some(usage(u))),
                        StreamKind::Completion => self.completion_chunk(Vec::new(), Some(usage(u))),
                    };
                    self.pending.push_back(event);
                }
                self.pending.push_back(Event::default().data("[DONE]"));
                self.finished = true;
            }
        }
    }
}

/// The SSE response for a submitted request. `num_choices` = n (per prompt).
/// How a response streams: the endpoint, the response id, choices per prompt, whether a usage
/// chunk and logprobs are sent, and the tools whose calls are parsed out of the text.
pub struct SseOptions {
    pub kind: StreamKind,
    pub id: String,
    pub n: usize,
    pub include_usage: bool,
    pub logprobs: bool,
    pub tools: Option<Arc<ToolSetup>>,
}

pub fn sse(model: Arc<LocalModel>, events: MergedEvents, options: SseOptions) -> Response {
    let SseOptions {
        kind,
        id,
        n,
        include_usage,
        logprobs,
        tools,
    } = options;
    let parsers = (0..n)
        .map(|_| {
            tools
                .as_ref()
                .map(|t| StreamingToolParser::new(t.format, Some(&t.tools)))
        })
        .collect();
    let held_logprobs = vec![Vec::new(); if tools.is_some() { n } else { 0 }];
    let mut s = StreamState {
        tools,
        parsers,
        made_call: vec![false; n],
        held_logprobs,
        model,
        events,
        kind,
        id,
        created: unix_now(),
        n,
        include_usage,
        logprobs,
        pending: VecDeque::new(),
        finished: false,
    };
    if kind == StreamKind::Chat {
        // The role comes first, once per choice (chat has a single prompt).
        for index in 0..n {
            let first = s.chat_chunk(
                vec![ChatChunkChoice {
                    index,
                    delta: ChatDelta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        tool_calls: None,
                    },
                    logprobs: None,
                    finish_reason: None,
                }],
                None,
            );
            s.pending.push_back(first);
        }
    }
    let body = stream::unfold(s, |mut s| async move {
        while s.pending.is_empty() && !s.finished {
            s.fill().await;
        }
        let event = s.pending.pop_front()?;
        Some((Ok::<Event, Infallible>(event), s))
    });
    Sse::new(body).keep_alive(KeepAlive::default()).into_response()
}
