//! Finding where a JSON value ends in a model's output, incrementally, and parsing it leniently.

use serde_json::Value;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The object or array ends at this byte offset.
    Complete(usize),
    /// The text ends inside it.
    Incomplete,
    /// The text cannot be the start of a JSON object or array.
    Invalid,
}

/// Scans the object or array at the start of `s`: brackets matched outside strings, and only
/// characters that JSON allows there, so prose after a `{` is told apart early instead of being
/// held back to the end. Full validation is serde's once the value is complete.
pub(crate) fn scan(s: &str) -> Scan {
    let bytes = s.as_bytes();
    if !matches!(bytes.first(), Some(b'{' | b'[')) {
        return Scan::Invalid;
    }
    let mut stack: Vec<u8> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for (i, &c) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            continue;
        }
        match c {
            b'{' | b'[' => stack.push(c),
            b'}' | b']' => {
                let open = if c == b'}' { b'{' } else { b'[' };
                if stack.pop() != Some(open) {
                    return Scan::Invalid;
                }
                if stack.is_empty() {
                    return Scan::Complete(i + 1);
                }
            }
            b'"' => in_string = true,
            // Whitespace, punctuation, numbers and the letters of true, false, null.
            b' ' | b'\t' | b'\n' | b'\r' | b':' | b',' | b'-' | b'+' | b'.' | b'0'..=b'9' | b'E' => {}
            b't' | b'r' | b'u' | b'e' | b'f' | b'a' | b'l' | b's' | b'n' => {}
            _ => return Scan::Invalid,
        }
    }
    Scan::Incomplete
}

/// serde_json, then again with raw control characters inside strings escaped: models write
/// literal newlines and tabs in string values (code, multi-line text), which JSON forbids but
/// whose meaning is plain.
pub(crate) fn parse_lenient(text: &str) -> Option<Value> {
    serde_json::from_str(text)
        .ok()
        .or_else(|| serde_json::from_str(&escape_controls_in_strings(text)).ok())
}

fn escape_controls_in_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            } else if (c as u32) < 0x20 {
                match c {
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    _ => out.push_str(&format!("\\u{:04x}", c as u32)),
                }
                continue;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scan_finds_the_end_of_objects_and_arrays() {
        assert_eq!(scan(r#"{"a": 1} rest"#), Scan::Complete(8));
        assert_eq!(scan(r#"[{"a": [1, 2]}, {"b": null}]x"#), Scan::Complete(28));
        assert_eq!(scan("{}"), Scan::Complete(2));
    }

    #[test]
    fn scan_ignores_brackets_and_quotes_inside_strings() {
        let s = r#"{"a": "}]{[ \" </tool_call> \\", "b": true}"#;
        assert_eq!(scan(s), Scan::Complete(s.len()));
        assert_eq!(scan(r#"{"é": "ü}"}"#), Scan::Complete(r#"{"é": "ü}"}"#.len()));
    }

    #[test]
    fn scan_is_incomplete_when_the_text_ends_inside() {
        assert_eq!(scan("{"), Scan::Incomplete);
        assert_eq!(scan(r#"{"a": "}"#), Scan::Incomplete);
        assert_eq!(scan(r#"{"a": [1, 2"#), Scan::Incomplete);
        assert_eq!(scan(r#"{"a": "\"#), Scan::Incomplete);
    }

    #[test]
    fn scan_rejects_prose_and_mismatched_brackets() {
        assert_eq!(scan("{Hello"), Scan::Invalid);
        assert_eq!(scan("{ x"), Scan::Invalid);
        assert_eq!(scan("[1}"), Scan::Invalid);
        assert_eq!(scan("x{}"), Scan::Invalid);
        assert_eq!(scan(""), Scan::Invalid);
    }

    #[test]
    fn parse_lenient_accepts_raw_newlines_in_strings() {
        assert_eq!(
            parse_lenient("{\"code\": \"a = 1\n\tprint(a)\"}"),
            Some(json!({"code": "a = 1\n\tprint(a)"}))
        );
        // Outside strings a newline is whitespace and stays as is.
        assert_eq!(parse_lenient("{\n\"a\": 1\n}"), Some(json!({"a": 1})));
        assert_eq!(parse_lenient("{\"a\": 1,}"), None);
    }
}
