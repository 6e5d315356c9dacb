//! Llama 3.1/3.2/3.3 calls, as Meta's model card and chat template describe them:
//!
//! - custom tools: `{"name": "f", "parameters": {…}}` (`"arguments"` accepted too), at the start
//!   of the answer or after `<|python_tag|>`; several calls separated by `;` or newlines, or as
//!   a JSON array;
//! - built-in tools (`Environment: ipython`, `Tools: brave_search, wolfram_alpha`):
//!   `<|python_tag|>brave_search.call(query="…")`, keyword arguments with string, number, boolean
//!   or None values, becoming a JSON arguments object;
//! - `code_interpreter`: `<|python_tag|>` followed by raw Python, becoming
//!   `code_interpreter` with `{"code": "…"}`;
//! - each ending optionally in `<|eom_id|>` ("expecting a tool result") or `<|eot_id|>`.
//!
//! A bare JSON call counts only when it is the whole start of the answer, names a given tool and
//! has `parameters`/`arguments`: a plain JSON answer is content. When the server decodes without
//! special tokens, `<|python_tag|>` is gone; built-in calls are then recognised at the start.

use serde_json::{Map, Number, Value};

use super::{incomplete, json_region, prefix, text_until_marker, ws_len, Ctx, Prefix, RawCall, Step};

const PYTHON_TAG: &str = "<|python_tag|>";
const EOM: &str = "<|eom_id|>";
const EOT: &str = "<|eot_id|>";
const MARKERS: [&str; 3] = [PYTHON_TAG, EOM, EOT];
const CALL_OPEN: &str = ".call(";

/// Enabled by the system prompt, not by the request's `tools`, so they need not be listed.
pub(super) const BUILTIN_TOOLS: [&str; 3] = ["brave_search", "wolfram_alpha", "code_interpreter"];

pub(super) fn step(buf: &str, cx: &Ctx) -> Step {
    if cx.at_start || cx.after_call {
        // Leading whitespace and call separators are markup here (content would be trimmed).
        let sep = buf
            .find(|c: char| !(c.is_whitespace() || (cx.after_call && c == ';')))
            .unwrap_or(buf.len());
        if sep == buf.len() {
            return if cx.eof { Step::Markup(sep) } else { Step::NeedMore };
        }
        if sep > 0 {
            return Step::Markup(sep);
        }
        if buf.starts_with(['{', '[']) {
            return json_region(buf, 0, 1, cx, true);
        }
        if cx.at_start {
            for tool in BUILTIN_TOOLS {
                match prefix(buf, &format!("{tool}{CALL_OPEN}")) {
                    Prefix::Full => return builtin_call(buf, 0, 1, cx),
                    Prefix::Partial if !cx.eof => return Step::NeedMore,
                    _ => {}
                }
            }
        }
    }
    if buf.starts_with(PYTHON_TAG) {
        return after_python_tag(buf, cx);
    }
    if let Some(end) = [EOM, EOT].into_iter().find(|m| buf.starts_with(m)) {
        return Step::Markup(end.len());
    }
    text_until_marker(buf, &MARKERS, cx.eof)
}

/// `buf` starts with `<|python_tag|>`: JSON calls, a built-in call, or code.
fn after_python_tag(buf: &str, cx: &Ctx) -> Step {
    let start = PYTHON_TAG.len() + ws_len(&buf[PYTHON_TAG.len()..]);
    let rest = &buf[start..];
    if rest.is_empty() {
        return incomplete(buf, cx);
    }
    if rest.starts_with(['{', '[']) {
        return json_region(buf, start, PYTHON_TAG.len(), cx, true);
    }
    let id = py_ident_len(rest);
    if id > 0 {
        match prefix(&rest[id..], CALL_OPEN) {
            Prefix::Full => return builtin_call(buf, start, PYTHON_TAG.len(), cx),
            Prefix::Partial => return incomplete(buf, cx),
            Prefix::No => {}
        }
    }
    // Raw code for code_interpreter, up to the end-of-message token or the end.
    let (code, end) = match MARKERS[1..].iter().filter_map(|m| Some((rest.find(m)?, m))).min() {
        Some((pos, marker)) => (&rest[..pos], start + pos + marker.len()),
        None if cx.eof => (rest, buf.len()),
        None => return Step::NeedMore,
    };
    let code = code.trim_end();
    if code.is_empty() {
        return Step::Content(end);
    }
    let mut args = Map::new();
    args.insert("code".into(), Value::String(code.into()));
    Step::Calls(
        end,
        vec![RawCall {
            name: "code_interpreter".into(),
            arguments: Value::Object(args).to_string(),
        }],
    )
}

/// `name.call(k=v, …)` at `buf[start]`.
fn builtin_call(buf: &str, start: usize, invalid_len: usize, cx: &Ctx) -> Step {
    match parse_builtin(&buf[start..]) {
        Err(Fail::Incomplete) => incomplete(buf, cx),
        Err(Fail::Invalid) => Step::Content(invalid_len),
        Ok((n, name, args)) => {
            let end = start + n;
            if BUILTIN_TOOLS.contains(&name) || cx.names.contains(name) {
                let arguments = Value::Object(args).to_string();
                Step::Calls(
                    end,
                    vec![RawCall {
                        name: name.into(),
                        arguments,
                    }],
                )
            } else {
                Step::Content(end)
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Fail {
    /// The text ends before the call does.
    Incomplete,
    Invalid,
}

fn py_ident_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// The index of the first non-whitespace char at or after `i`; the text must go on.
fn skip_ws(s: &str, i: usize) -> Result<usize, Fail> {
    let i = i + ws_len(&s[i..]);
    if i == s.len() {
        Err(Fail::Incomplete)
    } else {
        Ok(i)
    }
}

/// Parses `name.call(key=value, …)` (the caller saw `name.call(`): the length, the name and
/// the arguments.
fn parse_builtin(s: &str) -> Result<(usize, &str, Map<String, Value>), Fail> {
    let id = py_ident_len(s);
    let name = &s[..id];
    let mut args = Map::new();
    let mut i = skip_ws(s, id + CALL_OPEN.len())?;
    if s[i..].starts_with(')') {
        return Ok((i + 1, name, args));
    }
    loop {
        let k = py_ident_len(&s[i..]);
        if k == 0 {
            return Err(Fail::Invalid);
        }
        let key = &s[i..i + k];
        i = skip_ws(s, i + k)?;
        if !s[i..].starts_with('=') {
            return Err(Fail::Invalid);
        }
        i = skip_ws(s, i + 1)?;
        let (value, n) = py_value(&s[i..])?;
        args.insert(key.to_string(), value);
        i = skip_ws(s, i + n)?;
        match s[i..].chars().next() {
            Some(')') => return Ok((i + 1, name, args)),
            Some(',') => {
                i = skip_ws(s, i + 1)?;
                if s[i..].starts_with(')') {
                    return Ok((i + 1, name, args));
                }
            }
            _ => return Err(Fail::Invalid),
        }
    }
}

/// A Python literal: a quoted string, a number, True/False/None (or JSON's spellings).
fn py_value(s: &str) -> Result<(Value, usize), Fail> {
    let Some(first) = s.chars().next() else {
        return Err(Fail::Incomplete);
    };
    match first {
        '"' | '\'' => py_string(s, first),
        '0'..='9' | '-' | '+' | '.' => {
            let n = s
                .find(|c: char| !(c.is_ascii_digit() || "+-.eE_".contains(c)))
                .ok_or(Fail::Incomplete)?;
            let text = s[..n].replace('_', "");
            let number = match text.parse::<i64>() {
                Ok(i) => Number::from(i),
                Err(_) => text
                    .parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .ok_or(Fail::Invalid)?,
            };
            Ok((Value::Number(number), n))
        }
        _ => {
            let n = py_ident_len(s);
            if n == s.len() {
                return Err(Fail::Incomplete);
            }
            let value = match &s[..n] {
                "True" | "true" => Value::Bool(true),
                "False" | "false" => Value::Bool(false),
                "None" | "null" => Value::Null,
                _ => return Err(Fail::Invalid),
            };
            Ok((value, n))
        }
    }
}

/// A single- or double-quoted string with Python's common escapes (unknown ones kept, as Python
/// keeps them).
fn py_string(s: &str, quote: char) -> Result<(Value, usize), Fail> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Ok((Value::String(out), i + 1));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let (_, e) = chars.next().ok_or(Fail::Incomplete)?;
        match e {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            '\\' | '\'' | '"' => out.push(e),
            _ => {
                out.push('\\');
                out.push(e);
            }
        }
    }
    Err(Fail::Incomplete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn builtin(s: &str) -> Result<(usize, &str, Value), Fail> {
        parse_builtin(s).map(|(n, name, args)| (n, name, Value::Object(args)))
    }

    #[test]
    fn builtin_calls_parse_keyword_arguments() {
        let s = r#"brave_search.call(query="weather in \"Paris\"\n") rest"#;
        assert_eq!(
            builtin(s),
            Ok((
                s.len() - 5,
                "brave_search",
                json!({"query": "weather in \"Paris\"\n"})
            ))
        );
        let s = "f.call( a = 'x' , b=-1.5e2, c=True, d=None, e=42, f=false, )";
        assert_eq!(
            builtin(s),
            Ok((
                s.len(),
                "f",
                json!({"a": "x", "b": -150.0, "c": true, "d": null, "e": 42, "f": false})
            ))
        );
        assert_eq!(builtin("g.call()"), Ok((8, "g", json!({}))));
        assert_eq!(builtin(r"g.call(p='C:\d')"), Ok((16, "g", json!({"p": "C:\\d"}))));
    }

    #[test]
    fn builtin_calls_cut_short_are_incomplete() {
        for s in [
            "brave_search.call(",
            "brave_search.call(query",
            "brave_search.call(query=",
            "brave_search.call(query=\"wea",
            "brave_search.call(query=\"a\\",
            "brave_search.call(query=\"a\"",
            "brave_search.call(query=\"a\",",
            "f.call(n=12",
            "f.call(b=Tru",
        ] {
            assert_eq!(builtin(s), Err(Fail::Incomplete), "{s}");
        }
    }

    #[test]
    fn builtin_calls_with_other_syntax_are_invalid() {
        for s in [
            "f.call(\"positional\")",
            "f.call(a=b)",
            "f.call(a=1 b=2)",
            "f.call(a=[1])",
            "f.call(a=1.2.3)",
        ] {
            assert_eq!(builtin(s), Err(Fail::Invalid), "{s}");
        }
    }
}
