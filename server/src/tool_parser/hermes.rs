//! Hermes / Qwen 2.5 markup: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one
//! block per call, text before them as content. Also what the generic prompt asks for.

use super::{incomplete, json_calls_at, prefix, text_until_marker, ws_len, Ctx, Prefix, Step};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

pub(super) fn step(buf: &str, cx: &Ctx) -> Step {
    if buf.starts_with(OPEN) {
        call(buf, cx)
    } else {
        text_until_marker(buf, &[OPEN], cx.eof)
    }
}

/// `buf` starts with `<tool_call>`.
fn call(buf: &str, cx: &Ctx) -> Step {
    let start = OPEN.len() + ws_len(&buf[OPEN.len()..]);
    let rest = &buf[start..];
    if rest.is_empty() {
        return incomplete(buf, cx);
    }
    if !rest.starts_with(['{', '[']) {
        // Not a call (prose mentioning the tag): the tag is text, and so is what follows.
        return Step::Content(OPEN.len());
    }
    let (json_end, calls) = match json_calls_at(buf, start, OPEN.len(), cx, false) {
        Ok(region) => region,
        Err(step) => return step,
    };
    // The region runs through `</tool_call>`; a call whose closing tag is missing (the model
    // went on with another `<tool_call>`, or stopped) still counts.
    let after = json_end + ws_len(&buf[json_end..]);
    let end = match prefix(&buf[after..], CLOSE) {
        Prefix::Full => after + CLOSE.len(),
        Prefix::Partial if !cx.eof => return Step::NeedMore,
        // At the end of the output: trailing whitespace or a cut-off closing tag.
        Prefix::Partial => buf.len(),
        Prefix::No => json_end,
    };
    match calls {
        Some(calls) => Step::Calls(end, calls),
        None => Step::Content(end),
    }
}
