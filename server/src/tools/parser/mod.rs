//! Tool-call parsers: turn a model's raw output into OpenAI's `message.tool_calls` (issue #6,
//! items 2 and 3), for the three families of tool-call markup:
//!
//! - [`ToolCallFormat::Llama3Json`] (Llama 3.1/3.2/3.3): `{"name": …, "parameters": …}`, with or
//!   without `<|python_tag|>`, several calls separated by `;` or newlines, and the built-in
//!   tools' `<|python_tag|>brave_search.call(query="…")` / raw `code_interpreter` code, ending
//!   optionally in `<|eom_id|>` / `<|eot_id|>`;
//! - [`ToolCallFormat::Hermes`] (Hermes 2/3, Qwen 2.5, and the generic prompt of
//!   [`generic_tool_prompt`]): `<tool_call>{"name": …, "arguments": …}</tool_call>`, repeated;
//! - [`ToolCallFormat::Mistral`]: `[TOOL_CALLS][{"name": …, "arguments": …}, …]` and the newer
//!   `[TOOL_CALLS]name[ARGS]{…}`.
//!
//! One scanner per format ([`llama3`], [`hermes`], [`mistral`]) decides, for the unconsumed text,
//! whether its beginning is content, dropped markup, complete tool calls, or undecidable until
//! more text arrives. [`StreamingToolParser`] drives it over deltas; [`parse`] is the same
//! parser fed the whole output at once. So streamed and non-streamed results agree by
//! construction, and the tests check it for every split of recorded outputs.
//!
//! Guarantees (see docs/tools.md):
//! - never fails: markup that is malformed, truncated, or names a tool that was not given comes
//!   back verbatim as content (nothing lost, no 500);
//! - no markup of a parsed call is left in `content`; `arguments` is always the JSON text of an
//!   object (compact, keys in the model's order);
//! - no tools given (or an empty list) → no tool calls: the output is content, unchanged;
//! - with tools, `content` is trimmed of leading and trailing whitespace (what surrounds the
//!   markup), and is `None` when there are calls and no other text.

mod hermes;
mod json;
mod llama3;
mod mistral;
mod streaming;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

pub use streaming::{StreamDelta, StreamingToolParser};

/// The tool-call markup a model writes. Config names are vLLM's `--tool-call-parser` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolCallFormat {
    /// `llama3_json`: Llama 3.1/3.2/3.3.
    Llama3Json,
    /// `hermes`: Hermes 2/3, Qwen 2.5, and models without tool support given
    /// [`generic_tool_prompt`].
    Hermes,
    /// `mistral`: Mistral 7B v0.3, Mistral Nemo/Small/Large.
    Mistral,
}

/// The configured `tool_call_parser` as the parsers' format.
impl From<wick_config::ToolCallParser> for ToolCallFormat {
    fn from(parser: wick_config::ToolCallParser) -> Self {
        match parser {
            wick_config::ToolCallParser::Llama3Json => Self::Llama3Json,
            wick_config::ToolCallParser::Hermes => Self::Hermes,
            wick_config::ToolCallParser::Mistral => Self::Mistral,
        }
    }
}

impl ToolCallFormat {
    pub const ALL: [ToolCallFormat; 3] = [Self::Llama3Json, Self::Hermes, Self::Mistral];

    /// The config name (`tool_call_parser`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama3Json => "llama3_json",
            Self::Hermes => "hermes",
            Self::Mistral => "mistral",
        }
    }

    /// The text that starts a call in this format: under `tool_choice: "auto"` the output is
    /// free until one of these appears, and the call is then finished under its grammar.
    /// (Llama 3's `<|python_tag|>` is not one: the built-in tools' `name.call(...)` form after
    /// it is not JSON.)
    pub fn triggers(self) -> &'static [&'static str] {
        match self {
            Self::Llama3Json => &["{\"name\""],
            Self::Hermes => &["<tool_call>"],
            Self::Mistral => &["[TOOL_CALLS]"],
        }
    }

    /// The family whose markup a chat template teaches, from marks only that family's templates
    /// carry. `None` for templates without tool support (SmolLM2's): the server then uses
    /// [`generic_tool_prompt`] and [`ToolCallFormat::Hermes`].
    pub fn detect(chat_template: &str) -> Option<Self> {
        let has = |s: &str| chat_template.contains(s);
        if has("[TOOL_CALLS]") {
            Some(Self::Mistral)
        } else if has("<tool_call>") {
            Some(Self::Hermes)
        } else if has("<|python_tag|>")
            || has("Environment: ipython")
            // Llama 3.2's custom-tools instruction: `{"name": function name, "parameters": …}`.
            || (has("<|start_header_id|>") && has("\"parameters\""))
        {
            Some(Self::Llama3Json)
        } else {
            None
        }
    }

    fn step(self, buf: &str, cx: &Ctx) -> Step {
        match self {
            Self::Llama3Json => llama3::step(buf, cx),
            Self::Hermes => hermes::step(buf, cx),
            Self::Mistral => mistral::step(buf, cx),
        }
    }
}

impl fmt::Display for ToolCallFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tool call parser {0:?}; expected one of llama3_json, hermes, mistral")]
pub struct UnknownToolCallFormat(pub String);

impl FromStr for ToolCallFormat {
    type Err = UnknownToolCallFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownToolCallFormat(s.to_string()))
    }
}

/// One call, as OpenAI's `message.tool_calls[i]` (`type` is always `"function"`; the server
/// writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_` and 24 random alphanumerics.
    pub id: String,
    pub name: String,
    /// The JSON text of an object (OpenAI sends a string, never an object; SDKs `json.loads` it).
    pub arguments: String,
}

/// A parsed assistant message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedMessage {
    /// The text outside tool calls; `None` when there are calls and no other text.
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

impl ParsedMessage {
    /// Reassembles streamed deltas (a client's view): content concatenated, each call's
    /// `arguments` fragments concatenated in `index` order.
    pub fn from_deltas(deltas: impl IntoIterator<Item = StreamDelta>) -> Self {
        let mut content = String::new();
        let mut tool_calls: Vec<ToolCall> = Vec::new();
        for delta in deltas {
            match delta {
                StreamDelta::Content(text) => content.push_str(&text),
                StreamDelta::ToolCallDelta {
                    index,
                    id,
                    name,
                    arguments,
                } => {
                    while tool_calls.len() <= index {
                        tool_calls.push(ToolCall {
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        });
                    }
                    let call = &mut tool_calls[index];
                    if let Some(id) = id {
                        call.id = id;
                    }
                    if let Some(name) = name {
                        call.name = name;
                    }
                    call.arguments.push_str(&arguments);
                }
            }
        }
        let content = if content.is_empty() && !tool_calls.is_empty() {
            None
        } else {
            Some(content)
        };
        Self { content, tool_calls }
    }
}

/// Parses a whole output. `tools` is the request's `tools` (OpenAI's `{"type": "function",
/// "function": {"name": …}}` objects; bare `{"name": …}` objects work too): only calls to these
/// names count (plus Llama 3.1's built-in tools in their own call form). `None` or empty: no
/// tool calls, the text is the content.
pub fn parse(format: ToolCallFormat, text: &str, tools: Option<&[Value]>) -> ParsedMessage {
    let mut parser = StreamingToolParser::new(format, tools);
    let mut deltas = parser.push(text);
    deltas.extend(parser.finish());
    ParsedMessage::from_deltas(deltas)
}

/// A fresh OpenAI-style call id: `call_` and 24 random alphanumerics.
pub fn new_call_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// The system-prompt text for a model whose chat template has no tool support, in Qwen 2.5's
/// wording (which small instruction-tuned models follow): the tools as JSON, one a line, and the
/// Hermes call form that [`ToolCallFormat::Hermes`] parses. The server appends it to the system
/// message (or makes it one).
pub fn generic_tool_prompt(tools: &[Value]) -> String {
    let mut out = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
    );
    for tool in tools {
        out.push_str(&tool.to_string());
        out.push('\n');
    }
    out.push_str(
        "</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
}

/// The names of the tools a request offers.
#[derive(Debug, Clone, Default)]
pub(crate) struct ToolNames(Vec<String>);

impl ToolNames {
    fn from_tools(tools: Option<&[Value]>) -> Self {
        let names = tools
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t.get("function").unwrap_or(t).get("name")?.as_str())
            .map(str::to_string)
            .collect();
        Self(names)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}

/// A call before it gets an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawCall {
    pub name: String,
    pub arguments: String,
}

/// Where the scanner stands.
pub(crate) struct Ctx<'a> {
    pub names: &'a ToolNames,
    /// Nothing but whitespace and dropped markup so far: a call may start without a marker
    /// (Llama's bare JSON, Mistral's array once `[TOOL_CALLS]` was skipped as a special token).
    pub at_start: bool,
    /// The last thing consumed was a call: Llama's next call may follow after `;` or newlines.
    pub after_call: bool,
    /// No more text will come: every step must decide.
    pub eof: bool,
}

/// What the beginning of the unconsumed text is. Lengths are in bytes, on char boundaries. A
/// step only decides what no later text can change, so any split of the output into deltas
/// yields the same decisions.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Undecidable until more text arrives (never returned at eof).
    NeedMore,
    /// The first `n` bytes are content.
    Content(usize),
    /// The first `n` bytes are markup to drop (separators, end-of-turn tokens).
    Markup(usize),
    /// The first `n` bytes are markup holding these calls.
    Calls(usize, Vec<RawCall>),
}

/// `Step` for a region that stops at the end of the text: undecided, or (at eof) truncated
/// markup given back as content.
fn incomplete(buf: &str, cx: &Ctx) -> Step {
    if cx.eof {
        Step::Content(buf.len())
    } else {
        Step::NeedMore
    }
}

/// Content up to the first marker, holding back a suffix that could begin one (as a stop-string
/// checker does). Callers handle a marker at 0.
fn text_until_marker(buf: &str, markers: &[&str], eof: bool) -> Step {
    if let Some(pos) = markers.iter().filter_map(|m| buf.find(m)).min() {
        return Step::Content(pos);
    }
    let held = if eof {
        0
    } else {
        let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
        (1..=buf.len().min(longest))
            .rev()
            .find(|&k| {
                let tail = &buf.as_bytes()[buf.len() - k..];
                markers
                    .iter()
                    .any(|m| m.len() > k && m.as_bytes().starts_with(tail))
            })
            .unwrap_or(0)
    };
    match buf.len() - held {
        0 => Step::NeedMore,
        // Markers are ASCII, so the held suffix starts on a char boundary.
        n => Step::Content(n),
    }
}

/// How `buf` relates to the literal `lit`.
#[derive(Debug, PartialEq, Eq)]
enum Prefix {
    /// `buf` starts with `lit`.
    Full,
    /// `buf` is shorter and `lit` starts with it: more text decides.
    Partial,
    No,
}

fn prefix(buf: &str, lit: &str) -> Prefix {
    if buf.starts_with(lit) {
        Prefix::Full
    } else if lit.starts_with(buf) {
        Prefix::Partial
    } else {
        Prefix::No
    }
}

fn ws_len(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

fn ident_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
        .unwrap_or(s.len())
}

/// The `arguments` string of a call from its JSON value: an object as compact JSON, a string
/// holding a JSON object (some models quote it) re-serialized, null or absent as `{}`.
fn arguments_string(value: Option<&Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => Some("{}".to_string()),
        Some(v @ Value::Object(_)) => Some(v.to_string()),
        Some(Value::String(s)) => match json::parse_lenient(s)? {
            v @ Value::Object(_) => Some(v.to_string()),
            _ => None,
        },
        Some(_) => None,
    }
}

/// A call from `{"name": …, "arguments" | "parameters": …}` naming a given tool.
/// `require_arguments`: Llama's bare JSON must carry them, or a plain JSON answer with a `name`
/// field would be a call.
fn call_from_value(value: &Value, names: &ToolNames, require_arguments: bool) -> Option<RawCall> {
    let obj = value.as_object()?;
    let name = obj.get("name")?.as_str()?;
    if !names.contains(name) {
        return None;
    }
    let args = obj.get("arguments").or_else(|| obj.get("parameters"));
    if require_arguments && args.is_none() {
        return None;
    }
    Some(RawCall {
        name: name.to_string(),
        arguments: arguments_string(args)?,
    })
}

/// Calls from one JSON call object or a non-empty array of them; `None` unless all are valid
/// (the whole region then goes back as content: nothing lost, nothing half-parsed).
fn calls_from_json(text: &str, names: &ToolNames, require_arguments: bool) -> Option<Vec<RawCall>> {
    match json::parse_lenient(text)? {
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| call_from_value(v, names, require_arguments))
            .collect(),
        v => Some(vec![call_from_value(&v, names, require_arguments)?]),
    }
}

/// The JSON call region starting at `buf[start]` (`{` or `[`): its end and its calls, `None` if
/// it is JSON but not calls to given tools. `Err` carries the step when undecided (text ends
/// inside) or when the text cannot be JSON: then `invalid_len` bytes (the marker) go back as
/// content, and the text after them follows as content.
fn json_calls_at(
    buf: &str,
    start: usize,
    invalid_len: usize,
    cx: &Ctx,
    require_arguments: bool,
) -> Result<(usize, Option<Vec<RawCall>>), Step> {
    match json::scan(&buf[start..]) {
        json::Scan::Incomplete => Err(incomplete(buf, cx)),
        json::Scan::Invalid => Err(Step::Content(invalid_len)),
        json::Scan::Complete(n) => {
            let end = start + n;
            Ok((
                end,
                calls_from_json(&buf[start..end], cx.names, require_arguments),
            ))
        }
    }
}

/// [`json_calls_at`] as a step: calls, or the region as content.
fn json_region(buf: &str, start: usize, invalid_len: usize, cx: &Ctx, require_arguments: bool) -> Step {
    match json_calls_at(buf, start, invalid_len, cx, require_arguments) {
        Ok((end, Some(calls))) => Step::Calls(end, calls),
        Ok((end, None)) => Step::Content(end),
        Err(step) => step,
    }
}
