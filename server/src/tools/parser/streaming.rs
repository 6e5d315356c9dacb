//! Streaming: text deltas in, OpenAI-shaped content and tool-call deltas out.

use serde_json::Value;

use super::{new_call_id, Ctx, RawCall, Step, ToolCallFormat, ToolNames};

/// One piece of a streamed assistant message, as OpenAI's `choices[i].delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDelta {
    /// `delta.content`.
    Content(String),
    /// `delta.tool_calls[0]`: the first delta of a call carries `id` and `name` (the server adds
    /// `type: "function"`) with empty `arguments`; the next carries the `arguments` text.
    ToolCallDelta {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
}

/// Parses a model's output as it streams. Content streams as it comes, except text that could
/// still turn out to be tool markup: a suffix that may begin a marker (`<tool_c`, `<|python`,
/// `[TOOL`), a call until it is complete, and whitespace until text follows it (content is
/// trimmed). A call is emitted once its markup is complete and parses (two deltas: id and name,
/// then the whole `arguments`), so a call is never streamed and then taken back; markup that
/// turns out malformed or truncated is released as content, at the latest by
/// [`finish`](Self::finish). Any split of an output into deltas gives the same content and
/// calls as [`parse`](super::parse) (call ids are random, so they differ).
///
/// Each push re-scans the undecided text (at most one call's markup), so a call of `n` bytes
/// streamed in `k` deltas costs `O(n·k)`: negligible for calls, bounded for long ones.
#[derive(Debug)]
pub struct StreamingToolParser {
    format: ToolCallFormat,
    names: ToolNames,
    /// Text received and not yet decided.
    buf: String,
    at_start: bool,
    after_call: bool,
    /// Non-whitespace content was emitted: leading whitespace is dropped before that.
    content_started: bool,
    /// Trailing whitespace of the content so far, released when more content follows.
    held_ws: String,
    /// Calls emitted so far: the next call's `index`.
    calls: usize,
}

impl StreamingToolParser {
    /// `tools` as for [`parse`](super::parse): without tools the parser passes text through.
    pub fn new(format: ToolCallFormat, tools: Option<&[Value]>) -> Self {
        Self {
            format,
            names: ToolNames::from_tools(tools),
            buf: String::new(),
            at_start: true,
            after_call: false,
            content_started: false,
            held_ws: String::new(),
            calls: 0,
        }
    }

    /// Feeds the next piece of output; returns what can be emitted now.
    pub fn push(&mut self, delta: &str) -> Vec<StreamDelta> {
        if self.names.is_empty() {
            // No tools: nothing is a call, and the text stays exactly as generated.
            return if delta.is_empty() {
                Vec::new()
            } else {
                vec![StreamDelta::Content(delta.to_string())]
            };
        }
        self.buf.push_str(delta);
        self.drain(false)
    }

    /// The output ended: decides what was held back. Trailing whitespace is dropped.
    pub fn finish(mut self) -> Vec<StreamDelta> {
        if self.names.is_empty() {
            return Vec::new();
        }
        self.drain(true)
    }

    /// Tool calls emitted so far (`finish_reason` is `tool_calls` when non-zero).
    pub fn tool_calls(&self) -> usize {
        self.calls
    }

    fn drain(&mut self, eof: bool) -> Vec<StreamDelta> {
        let buf = std::mem::take(&mut self.buf);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let rest = &buf[pos..];
            let cx = Ctx {
                names: &self.names,
                at_start: self.at_start,
                after_call: self.after_call,
                eof,
            };
            match self.format.step(rest, &cx) {
                // At eof a step always decides; if one did not, its text is content.
                Step::NeedMore if eof => {
                    self.content(rest, &mut out);
                    pos = buf.len();
                }
                Step::NeedMore => break,
                Step::Content(n) => {
                    let n = progress(rest, n);
                    self.content(&rest[..n], &mut out);
                    self.at_start = false;
                    self.after_call = false;
                    pos += n;
                }
                Step::Markup(n) => pos += progress(rest, n),
                Step::Calls(n, calls) => {
                    for call in calls {
                        self.call(call, &mut out);
                    }
                    self.at_start = false;
                    self.after_call = true;
                    pos += progress(rest, n);
                }
            }
        }
        self.buf = buf[pos..].to_string();
        out
    }

    fn content(&mut self, text: &str, out: &mut Vec<StreamDelta>) {
        let text = if self.content_started {
            text
        } else {
            text.trim_start()
        };
        let body = text.trim_end();
        if body.is_empty() {
            self.held_ws.push_str(text);
            return;
        }
        self.content_started = true;
        let mut piece = std::mem::take(&mut self.held_ws);
        piece.push_str(body);
        self.held_ws = text[body.len()..].to_string();
        match out.last_mut() {
            Some(StreamDelta::Content(last)) => last.push_str(&piece),
            _ => out.push(StreamDelta::Content(piece)),
        }
    }

    fn call(&mut self, call: RawCall, out: &mut Vec<StreamDelta>) {
        let index = self.calls;
        self.calls += 1;
        out.push(StreamDelta::ToolCallDelta {
            index,
            id: Some(new_call_id()),
            name: Some(call.name),
            arguments: String::new(),
        });
        out.push(StreamDelta::ToolCallDelta {
            index,
            id: None,
            name: None,
            arguments: call.arguments,
        });
    }
}

/// A step's length, made safe: at least one char, at most the text, on a char boundary. Steps
/// are written to return such lengths; this keeps a slip from looping or panicking on model
/// output.
fn progress(rest: &str, n: usize) -> usize {
    let mut n = n.clamp(1, rest.len());
    while !rest.is_char_boundary(n) {
        n += 1;
    }
    n
}
