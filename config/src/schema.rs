//! The schema: one struct per TOML table. Every table denies unknown keys (a typo is an error,
//! never a silently ignored setting) and every field has a default, so an empty file is the same
//! as no file: `wick serve` on 127.0.0.1:8080 with the embedded default model.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    /// `[[models]]`: local models (a source) and remote OpenAI-compatible endpoints (a URL).
    /// Empty means the embedded default model.
    pub models: Vec<ModelConfig>,
    /// `[[routes]]`: model names that map to ordered tiers (the router, issue #7, serves them).
    pub routes: Vec<RouteConfig>,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// The `[[models]]` id this process serves; may be left out when there is one local model.
    /// Other local models that routes name as tiers run in this process too, each with its own
    /// engine and KV pool (`Config::local_models`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Bearer tokens accepted on `/v1/*`; empty: no authentication. Prefer `WICK_API_KEY` (from a
    /// secret) to keys written in the file.
    pub api_keys: Vec<Secret>,
    /// Browser origins allowed by CORS (`*` for any); empty: no CORS headers.
    pub cors_allow_origins: Vec<String>,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// A chat request with more tools gets 400 (`tools`): each tool is rendered into the
    /// prompt and compiled into the call grammar, so their number bounds a request's work.
    pub max_tools: usize,
    /// A JSON Schema (a tool's `parameters`, a `response_format` schema) larger than this many
    /// bytes, as JSON, gets 400: a schema is compiled into a grammar per request.
    pub max_schema_bytes: usize,
    /// Stored responses (`/v1/responses` with `store`, the default) kept in memory at most; the
    /// oldest is evicted past it. They live in this process only.
    pub responses_store_max: usize,
    /// The stored responses' size at most, in bytes of JSON (a response counts with the
    /// conversation it continues, which it keeps in memory); the oldest are evicted past it.
    pub responses_store_max_bytes: usize,
    /// A stored response is forgotten this long after it was created.
    pub responses_store_ttl_secs: u64,
    /// On SIGTERM: keep the listener open (answering 503) this long so load balancers notice.
    pub drain_delay_secs: u64,
    /// Then wait this long at most for in-flight requests.
    pub drain_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            model: None,
            api_keys: Vec::new(),
            cors_allow_origins: Vec::new(),
            max_body_bytes: 8 << 20,
            max_tools: 128,
            max_schema_bytes: 64 << 10,
            responses_store_max: 1024,
            responses_store_max_bytes: 64 << 20,
            responses_store_ttl_secs: 3600,
            drain_delay_secs: 5,
            drain_grace_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Load weights dequantized (`f32`, `f16`, `bf16`) or re-quantized (`q8_0`, `q4_0`);
    /// unset or `auto` keeps GGUF weights as stored. A model's own `dtype` overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// KV cache budget (K and V, all layers) in MiB; the block count follows from it. Unset:
    /// 1024 on the CPU; on a GPU, the memory free once the weights are loaded minus
    /// `gpu_memory_headroom_mib`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_cache_mib: Option<usize>,
    /// The KV pool's dtype: `auto` (see docs/engine.md, "KV cache dtype"), `f32` or `f16`
    /// (half the bytes per token: twice the tokens in the same budget; K and V rounded to f16).
    pub kv_cache_dtype: String,
    /// On a GPU with `kv_cache_mib` unset: device memory left to activations and the CUDA
    /// context after the KV pool is carved out.
    pub gpu_memory_headroom_mib: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    pub max_num_seqs: usize,
    /// Token budget of one step (chunked prefill).
    pub max_num_batched_tokens: usize,
    /// Requests waiting for admission before new ones get 429.
    pub max_waiting_requests: usize,
    pub enable_prefix_caching: bool,
    /// Caps the context below the model's own limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            dtype: None,
            kv_cache_mib: None,
            kv_cache_dtype: "auto".into(),
            gpu_memory_headroom_mib: 2048,
            block_size: 16,
            max_num_seqs: 64,
            max_num_batched_tokens: 256,
            max_waiting_requests: 1024,
            enable_prefix_caching: true,
            max_model_len: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// How routes and `server.model` refer to this model.
    pub id: String,
    /// Local: a `.gguf` file, a Hugging Face model directory, or a Hub id
    /// `org/name[@rev][:file.gguf]`. Neither `source` nor `url`: the embedded default model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Remote: an OpenAI-compatible base URL (`http://wick-large:8080/v1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Remote: the environment variable holding its API key (never the key itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Remote: per-request timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Remote: requests in flight at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// The name clients pass as `model` (default: the file stem, directory name or Hub id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_name: Option<String>,
    /// A Jinja chat template file overriding the model's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<PathBuf>,
    /// How tool calls are parsed from the output (issue #6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_parser: Option<ToolCallParser>,
    /// Local: how this model's weights are held, overriding `engine.dtype` (the same values,
    /// and `auto`: GGUF weights as stored). A draft usually stays quantized under a dense target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Local: speculative decoding with a draft model, the id of another local `[[models]]`
    /// entry sharing this model's vocabulary. The draft runs inside this model's engine; it is
    /// not served on its own unless a route or `server.model` names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// Local: speculative decoding without a draft model (`ngram`: prompt lookup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<Speculative>,
    /// With `draft` or `speculative`: the most tokens proposed per sequence and step, 1 to
    /// [`MAX_NUM_SPECULATIVE_TOKENS`]. Unset: wick-engine's default
    /// (`SpeculativeConfig::DEFAULT_NUM_SPECULATIVE_TOKENS`, 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_speculative_tokens: Option<usize>,
    /// With `draft` or `speculative`: speculation is off in a step decoding more sequences than
    /// this (a batch that large keeps the matmuls busy already); at most this many, the engine
    /// speculates where it measures that it pays. Unset: wick-engine's default
    /// (`SpeculativeConfig::DEFAULT_MAX_BATCH`, 16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative_max_batch: Option<usize>,
    /// With `draft` or `speculative`: `false` speculates in every step of up to
    /// `speculative_max_batch` decodes instead of where the engine measures that it pays (where
    /// it is known to pay, e.g. a GPU at small batches, or to compare the two). Unset: measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative_measure: Option<bool>,
    /// With `draft`: the draft proposes only among the first this many token ids (and the
    /// added tokens: end of turn, tool-call markers), so its output head reads that share of
    /// its rows. Output never depends on it; proposals of a token left out fail. Unset: the
    /// whole vocabulary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_vocab: Option<usize>,
    /// With `draft`: prompt lookup guesses the draft's next tokens (what followed the
    /// sequence's last 2-4 tokens earlier) and the draft checks the guess in the forward it
    /// runs anyway, so where the text repeats it runs fewer forwards. Proposals, acceptance and
    /// output are the same either way. Unset: on (wick-engine's
    /// `SpeculativeConfig::draft_model`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_lookup: Option<bool>,
    /// Routes: what a million prompt tokens cost on this model (any currency, e.g. USD), for
    /// the router's cost metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_input_per_mtok: Option<f64>,
    /// Routes: what a million generated tokens cost on this model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_output_per_mtok: Option<f64>,
    /// Routes: what this model can do beyond text chat; a request that needs something a tier
    /// lacks skips that tier (pre-routing). Default: a local model has `tools`,
    /// `structured_outputs` and `logprobs` (wick's models read text only); a remote one
    /// everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Capability>>,
}

/// What a request may need from a model beyond text chat (`[[models]] capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// `tools` (or legacy `functions`) offered with a `tool_choice` other than `none`.
    Tools,
    /// `response_format` `json_object` or `json_schema`.
    StructuredOutputs,
    /// Token logprobs in the answer.
    Logprobs,
    /// Image content parts (`image_url`, `input_image`).
    ImageInput,
    /// Audio content parts (`input_audio`) or audio output (`audio`, `modalities`).
    Audio,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::Tools,
        Capability::StructuredOutputs,
        Capability::Logprobs,
        Capability::ImageInput,
        Capability::Audio,
    ];
    /// What wick's own (text-only) models do.
    pub const LOCAL: [Capability; 3] = [
        Capability::Tools,
        Capability::StructuredOutputs,
        Capability::Logprobs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::StructuredOutputs => "structured_outputs",
            Self::Logprobs => "logprobs",
            Self::ImageInput => "image_input",
            Self::Audio => "audio",
        }
    }
}

impl ModelConfig {
    /// [`ModelConfig::capabilities`], or the default for a local or remote model.
    pub fn capabilities(&self) -> Vec<Capability> {
        match &self.capabilities {
            Some(c) => c.clone(),
            None if self.is_remote() => Capability::ALL.to_vec(),
            None => Capability::LOCAL.to_vec(),
        }
    }
}

impl ModelConfig {
    pub fn is_remote(&self) -> bool {
        self.url.is_some()
    }

    /// Whether this model speculates (with a draft model or `speculative`).
    pub fn speculates(&self) -> bool {
        self.draft.is_some() || self.speculative.is_some()
    }
}

/// Speculative decoding without a draft model (`[[models]] speculative`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speculative {
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the last few
    /// tokens (free; right whenever the output quotes its context).
    Ngram,
}

impl Speculative {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ngram => "ngram",
        }
    }
}

/// The most `num_speculative_tokens` takes: every proposed token is one more row per sequence
/// in the target's forward, and a longer run is rarely accepted whole.
pub const MAX_NUM_SPECULATIVE_TOKENS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallParser {
    /// Llama 3.x JSON tool calls.
    Llama3Json,
    /// Hermes / Qwen 2.5 `<tool_call>` markup.
    Hermes,
    /// Mistral `[TOOL_CALLS]`.
    Mistral,
}

/// A route: clients ask for `name` and the tiers answer cheapest first (schema for issue #7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Model ids, cheapest first; the last is the fallback.
    pub tiers: Vec<String>,
    #[serde(default)]
    pub policy: RoutePolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutePolicy {
    /// Escalate when the cheap tier stops with `length` before finishing.
    pub escalate_on_length: bool,
    /// Escalate when a tool call does not parse or validate.
    pub escalate_on_invalid_tool_call: bool,
    /// Escalate when the mean token logprob falls under this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_mean_logprob: Option<f64>,
    /// Escalate when any token's logprob falls under this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_token_logprob: Option<f64>,
    /// Escalate when the answer matches one of these (case-insensitive substrings).
    pub abstain_patterns: Vec<String>,
    /// Streaming: tokens of the cheap tier held back before deciding.
    pub stream_hold_tokens: usize,
    /// Failover: retries across tiers per request.
    pub max_retries: usize,
    /// Failover: consecutive failures that open a backend's circuit breaker.
    pub breaker_failures: usize,
    /// Failover: how long an open breaker waits before half-opening.
    pub breaker_cooldown_secs: u64,
    /// How the fallback checks the cheap tier. `lossless`: the cheap tier drafts inside the
    /// fallback's engine and the fallback verifies every token (speculative decoding), so the
    /// answer is the fallback's own; both local, one vocabulary, the fallback's `[[models]]`
    /// entry naming the cheap tier as its `draft`. `score`: the fallback scores the cheap
    /// tier's whole answer in one prefill (its token logprobs over the answer), and
    /// `min_mean_logprob` / `min_token_logprob` apply to those instead of the cheap tier's
    /// own; any pair of models, the fallback local or remote (a remote one needs its
    /// `chat_template` for chat requests). Unset: the cascade judges the cheap tier's answer
    /// by the policy above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyMode>,
}

/// A route's [`RoutePolicy::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    Lossless,
    Score,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            escalate_on_length: true,
            escalate_on_invalid_tool_call: true,
            min_mean_logprob: None,
            min_token_logprob: None,
            abstain_patterns: Vec::new(),
            stream_hold_tokens: 32,
            max_retries: 2,
            breaker_failures: 5,
            breaker_cooldown_secs: 30,
            verify: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on `/metrics` (off: 404 there).
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `wick_server=debug,info`); `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A value that must not be printed: `Debug` and `Serialize` show `"********"`, so neither logs
/// nor `wick config print` can leak it. [`Secret::expose`] gives the value to the one place
/// that needs it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

pub const MASK: &str = "********";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}
