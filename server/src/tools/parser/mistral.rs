//! Mistral calls: `[TOOL_CALLS][{"name": "f", "arguments": {…}}, …]` (Mistral 7B v0.3, Nemo,
//! Small/Large up to tokenizer v7), and the newer `[TOOL_CALLS]f[ARGS]{…}` (tokenizer v11+,
//! optionally `[CALL_ID]id` before `[ARGS]`; the model's id is not kept, wick gives its own).
//! When the server decodes without special tokens `[TOOL_CALLS]` is gone; a JSON array of calls
//! to given tools at the start of the answer is then recognised.

use super::{
    ident_len, incomplete, json, json_region, prefix, text_until_marker, ws_len, Ctx, Prefix, RawCall, Step,
};
use serde_json::Value;

const TOOL_CALLS: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";
const CALL_ID: &str = "[CALL_ID]";

pub(super) fn step(buf: &str, cx: &Ctx) -> Step {
    if cx.at_start {
        let ws = ws_len(buf);
        if ws == buf.len() {
            return if cx.eof { Step::Markup(ws) } else { Step::NeedMore };
        }
        if ws > 0 {
            return Step::Markup(ws);
        }
        match prefix(buf, TOOL_CALLS) {
            Prefix::Partial if !cx.eof => return Step::NeedMore,
            Prefix::No | Prefix::Partial if buf.starts_with('[') => return json_region(buf, 0, 1, cx, false),
            _ => {}
        }
    }
    if buf.starts_with(TOOL_CALLS) {
        after_marker(buf, cx)
    } else {
        text_until_marker(buf, &[TOOL_CALLS], cx.eof)
    }
}

/// `buf` starts with `[TOOL_CALLS]`.
fn after_marker(buf: &str, cx: &Ctx) -> Step {
    let start = TOOL_CALLS.len() + ws_len(&buf[TOOL_CALLS.len()..]);
    let rest = &buf[start..];
    if rest.is_empty() {
        return incomplete(buf, cx);
    }
    if rest.starts_with(['[', '{']) {
        return json_region(buf, start, TOOL_CALLS.len(), cx, false);
    }
    // `name[ARGS]{…}` or `name[CALL_ID]id[ARGS]{…}`.
    let name_len = ident_len(rest);
    if name_len == 0 {
        return Step::Content(TOOL_CALLS.len());
    }
    let mut i = start + name_len;
    match (prefix(&buf[i..], ARGS), prefix(&buf[i..], CALL_ID)) {
        (Prefix::Full, _) => {}
        (_, Prefix::Full) => {
            i += CALL_ID.len();
            i += buf[i..]
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(buf.len() - i);
            match prefix(&buf[i..], ARGS) {
                Prefix::Full => {}
                Prefix::Partial => return incomplete(buf, cx),
                Prefix::No => return Step::Content(TOOL_CALLS.len()),
            }
        }
        (Prefix::Partial, _) | (_, Prefix::Partial) => return incomplete(buf, cx),
        _ => return Step::Content(TOOL_CALLS.len()),
    }
    let args_start = i + ARGS.len();
    if buf.len() == args_start {
        return incomplete(buf, cx);
    }
    if !buf[args_start..].starts_with('{') {
        return Step::Content(TOOL_CALLS.len());
    }
    let end = match json::scan(&buf[args_start..]) {
        json::Scan::Incomplete => return incomplete(buf, cx),
        json::Scan::Invalid => return Step::Content(TOOL_CALLS.len()),
        json::Scan::Complete(n) => args_start + n,
    };
    let name = &rest[..name_len];
    match json::parse_lenient(&buf[args_start..end]) {
        Some(args @ Value::Object(_)) if cx.names.contains(name) => Step::Calls(
            end,
            vec![RawCall {
                name: name.to_string(),
                arguments: args.to_string(),
            }],
        ),
        _ => Step::Content(end),
    }
}
