//! Incremental detokenization for streaming.
//!
//! Decoding token by token breaks characters that span several tokens (a byte-level BPE emoji is
//! often 2-4 tokens) and loses the spaces that depend on the previous token. Like vLLM and TGI,
//! we decode a sliding window of ids twice (with and without the newest ones) and emit only the
//! new suffix, and hold back text that ends in U+FFFD (an incomplete UTF-8 sequence).

use crate::error::Result;
use crate::tokenizer::Tokenizer;

pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// Ids before this have been emitted as text.
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDetokenizer {
    /// `context` is the tail of the prompt: it is decoded but never emitted, so the first
    /// generated token gets the right leading space.
    pub fn new(context: &[u32], skip_special_tokens: bool) -> Self {
        let tail = &context[context.len().saturating_sub(6)..];
        Self {
            ids: tail.to_vec(),
            prefix_offset: 0,
            read_offset: tail.len(),
            skip_special_tokens,
        }
    }

    /// Adds one generated id; returns the text that is now certain (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let Some(delta) = full.get(prefix.len()..).filter(|_| full.starts_with(&prefix)) else {
            // The window's decoding changed retroactively (rare, e.g. a decoder that strips):
            // wait for more tokens rather than emit a wrong character.
            return Ok(String::new());
        };
        let delta = delta.to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Text still held back (an incomplete character at the very end), emitted as decoded.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        if self.read_offset >= self.ids.len() {
            return Ok(String::new());
        }
        let prefix = tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        let rest = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            // The context itself ended inside a character: decode the held ids on their own.
            None => tokenizer.decode(&self.ids[self.read_offset..], self.skip_special_tokens)?,
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(rest)
    }
}
