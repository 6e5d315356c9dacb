//! Hermes / Qwen 2.5 markup: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one
//! block per call, text before them as content. Also what the generic prompt asks for.
//!
//! Small Qwen models (2.5-Coder 0.5B, 1.5B) often answer a call without the tags: the whole
//! answer is the call's JSON, bare or in a ```json fence. That counts as a call when it names a
//! given tool and has `arguments` (anything else stays content, as does JSON without tools).

use super::{incomplete, json_calls_at, json_region, prefix, text_until_marker, ws_len, Ctx, Prefix, Step};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const FENCES: [&str; 2] = ["```json", "```"];
const FENCE_CLOSE: &str = "```";

pub(super) fn step(buf: &str, cx: &Ctx) -> Step {
    if cx.at_start {
        // Leading whitespace is trimmed from content anyway.
        let ws = ws_len(buf);
        if ws == buf.len() {
            return if cx.eof { Step::Markup(ws) } else { Step::NeedMore };
        }
        if ws > 0 {
            return Step::Markup(ws);
        }
        if buf.starts_with(['{', '[']) {
            return json_region(buf, 0, 1, cx, true);
        }
        if let Some(step) = fenced(buf, cx) {
            return step;
        }
    }
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

/// A fenced JSON call at the start of the answer; `None`: not a fence.
fn fenced(buf: &str, cx: &Ctx) -> Option<Step> {
    let fence = FENCES.iter().find_map(|f| match prefix(buf, f) {
        Prefix::Full => Some(Ok(f.len())),
        Prefix::Partial if !cx.eof => Some(Err(())),
        _ => None,
    })?;
    let Ok(fence) = fence else {
        return Some(Step::NeedMore);
    };
    let start = fence + ws_len(&buf[fence..]);
    if start == buf.len() {
        return Some(incomplete(buf, cx));
    }
    if !buf[start..].starts_with(['{', '[']) {
        return None;
    }
    let (json_end, calls) = match json_calls_at(buf, start, fence, cx, true) {
        Ok(region) => region,
        Err(step) => return Some(step),
    };
    let Some(calls) = calls else {
        return Some(Step::Content(json_end));
    };
    let after = json_end + ws_len(&buf[json_end..]);
    Some(match prefix(&buf[after..], FENCE_CLOSE) {
        Prefix::Full => Step::Calls(after + FENCE_CLOSE.len(), calls),
        Prefix::Partial if !cx.eof => Step::NeedMore,
        Prefix::Partial => Step::Calls(buf.len(), calls),
        Prefix::No => Step::Calls(json_end, calls),
    })
}
