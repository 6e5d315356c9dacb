//! Chat templates: the model's own Jinja template (GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`), rendered with minijinja and Python-compatible string methods so
//! Hugging Face templates run unchanged.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("the model has no chat template; pass one with --chat-template")]
    Missing,
    #[error("chat template error: {0}")]
    Render(String),
}

/// A message as Hugging Face chat templates read it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant's calls, HF-style: `{"id", "type": "function", "function": {"name",
    /// "arguments"}}` with `arguments` an object (OpenAI sends a JSON string; templates such as
    /// Llama 3.1's apply `tojson` to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` message's answer to this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The Jinja source (tool-call format detection reads it).
    source: String,
    /// The variables the template reads from its context (`tools`, `builtin_tools`, ...).
    variables: std::collections::HashSet<String>,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

/// `tojson` as Hugging Face renders it (Python's `json.dumps(x, ensure_ascii=False)`): `", "`
/// and `": "` separators, or `indent` spaces, and no HTML escaping. minijinja's own is compact
/// and escapes `<`, `>`, `&` and `'`, so a tool schema would reach the model in a different
/// form than the one it was trained on.
fn tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> Result<String, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let result = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&pad),
            );
            value.serialize(&mut ser)
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PythonFormatter,
        )),
    };
    result.map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    String::from_utf8(out).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))
}

/// serde_json's compact output with Python's default separators.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        // Keys are separated like array items.
        self.begin_array_value(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

fn render_error(e: JinjaError) -> ChatTemplateError {
    // The template's own message (raise_exception) is what a user needs to see.
    let mut msg = e.detail().map_or_else(|| e.to_string(), String::from);
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    ChatTemplateError::Render(msg)
}

impl ChatTemplate {
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // HF renders with trim_blocks and lstrip_blocks.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.clone())
            .map_err(render_error)?;
        let variables = env
            .get_template("chat")
            .map_err(render_error)?
            .undeclared_variables(false);
        Ok(Self {
            env,
            source,
            variables,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template reads `name` from its context (`tools`: it renders tool
    /// definitions; `builtin_tools`: Llama 3.1's built-in tools).
    pub fn reads(&self, name: &str) -> bool {
        self.variables.contains(name)
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with_tools(messages, add_generation_prompt, None)
    }

    /// Renders with `tools` (OpenAI's `{"type": "function", "function": {...}}` list, which is
    /// what Hugging Face templates iterate over); `None` renders `tools` as none, as HF does.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String, ChatTemplateError> {
        self.render_with_builtin_tools(messages, add_generation_prompt, tools, &[])
    }

    /// [`Self::render_with_tools`] plus Llama 3.1's `builtin_tools` (names such as
    /// `brave_search`), left undefined when empty: the template tests `is defined`.
    pub fn render_with_builtin_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[serde_json::Value]>,
        builtin_tools: &[String],
    ) -> Result<String, ChatTemplateError> {
        let tmpl = self.env.get_template("chat").map_err(render_error)?;
        let base = context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        let ctx = if builtin_tools.is_empty() {
            base
        } else {
            context! { builtin_tools => builtin_tools, ..base }
        };
        tmpl.render(ctx).map_err(render_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    /// The shape of Llama 3.1's and Hermes' templates: tools listed as JSON, an assistant's calls
    /// with `arguments | tojson`, tool results by id.
    #[test]
    fn tools_tool_calls_and_tool_results_reach_the_template() {
        let src = "{% if tools %}TOOLS{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}\
{% for m in messages %}{{ m.role }}:{% if m.tool_calls %}{% for c in m.tool_calls %}\
CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}{% else %}{{ m.content }}{% endif %}\
{% if m.tool_call_id %} (for {{ m.tool_call_id }}){% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src.into(), None, None).unwrap();
        let tools = [serde_json::json!({"type": "function", "function": {"name": "get_weather"}})];
        let call = serde_json::json!({"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}});
        let messages = [
            msg("user", "weather?"),
            ChatMessage {
                tool_calls: Some(vec![call]),
                ..msg("assistant", "")
            },
            ChatMessage {
                tool_call_id: Some("call_1".into()),
                ..msg("tool", "sunny")
            },
        ];
        let out = t.render_with_tools(&messages, false, Some(&tools)).unwrap();
        // (trim_blocks, as HF renders: a newline right after a block tag is dropped.)
        assert_eq!(
            out,
            "TOOLS get_weatheruser:weather?assistant:CALL get_weather {\"city\": \"Paris\"}tool:sunny (for call_1)"
        );
        // No tools: the template sees none.
        let out = t.render(&messages[..1], false).unwrap();
        assert_eq!(out, "user:weather?");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let src =
            "{{ messages[0].tool_calls[0] | tojson }}|{{ messages[0].tool_calls[0] | tojson(indent=2) }}";
        let t = ChatTemplate::new(src.into(), None, None).unwrap();
        let m = ChatMessage {
            tool_calls: Some(vec![serde_json::json!({"a": [1, 2], "b": "<é&'>"})]),
            ..msg("assistant", "")
        };
        let out = t.render(&[m], false).unwrap();
        assert_eq!(
            out,
            "{\"a\": [1, 2], \"b\": \"<é&'>\"}|{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": \"<é&'>\"\n}"
        );
    }

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(src.into(), None, None).unwrap();
        let out = t.render(&[msg("user", " hi ")], true).unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_string_methods_work() {
        let src = "{{ messages[0].content.strip().upper() }}{{ bos_token }}";
        let t = ChatTemplate::new(src.into(), Some("<s>".into()), None).unwrap();
        assert_eq!(t.render(&[msg("user", "  abc ")], false).unwrap(), "ABC<s>");
    }

    #[test]
    fn raise_exception_message_is_reported() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}";
        let t = ChatTemplate::new(src.into(), None, None).unwrap();
        let err = t.render(&[msg("assistant", "x")], false).unwrap_err().to_string();
        assert!(err.contains("Conversation must start with user"), "{err}");
    }
}
