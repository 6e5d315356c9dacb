//! Errors of the engine crate. Each variant carries enough context (a path, a name) for a user to
//! act on it without reading a backtrace.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file not found: {0}")]
    MissingFile(PathBuf),

    #[error(
        "unsupported model architecture `{0}` (wick supports Llama-family models: llama, mistral, qwen2)"
    )]
    UnsupportedArchitecture(String),

    #[error("unsupported tensor type {dtype} for `{name}`")]
    UnsupportedTensorType { name: String, dtype: String },

    #[error("could not read {path}: {message} (is the file truncated or corrupt?)")]
    CorruptFile { path: PathBuf, message: String },

    #[error("no tokenizer found for model at {0} (expected tokenizer.json, or tokenizer metadata in the GGUF file)")]
    MissingTokenizer(PathBuf),

    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),

    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    #[error("could not resolve `{id}` on the Hugging Face Hub: {message}")]
    Hub { id: String, message: String },

    #[error("KV cache is out of blocks: need {needed}, have {free} free")]
    OutOfBlocks { needed: usize, free: usize },

    /// The device asked for cannot be used (no CUDA support built in, no driver, no such GPU).
    #[error("device unavailable: {0}")]
    Device(String),

    #[error("invalid batch: {0}")]
    InvalidBatch(String),

    /// A request parameter a client sent is out of range. `param` names it (OpenAI's error
    /// object has a `param` field); `message` is complete on its own.
    #[error("{message}")]
    InvalidRequest { param: String, message: String },

    /// The waiting queue is full: the server answers 429 and the client should retry later.
    #[error("the server is overloaded: {waiting} requests are already waiting; retry later")]
    Overloaded { waiting: usize },

    /// The prompt (plus the requested completion) does not fit the model's context.
    #[error("{}", context_message(*.prompt_tokens, *.max_tokens, *.max_model_len))]
    ContextLengthExceeded {
        prompt_tokens: usize,
        max_tokens: Option<usize>,
        max_model_len: usize,
    },

    /// The engine thread has stopped (shut down, or it failed); no request can run.
    #[error("the engine has stopped")]
    EngineStopped,

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

fn context_message(prompt_tokens: usize, max_tokens: Option<usize>, max_model_len: usize) -> String {
    match max_tokens {
        Some(max) => format!(
            "This model's maximum context length is {max_model_len} tokens. However, you requested \
             {} tokens ({prompt_tokens} in the prompt, {max} for the completion). Please reduce \
             the length of the prompt or of the completion.",
            prompt_tokens + max
        ),
        None => format!(
            "This model's maximum context length is {max_model_len} tokens. However, the prompt \
             has {prompt_tokens} tokens, which leaves no room for the completion. Please reduce \
             the length of the prompt."
        ),
    }
}
