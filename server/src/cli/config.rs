//! `wick config check|print` and the configuration `wick serve` runs with: the `--config` file,
//! then `WICK_*` variables, then the serve flags (wick-config does the layering and checks).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wick_config::{Config, ConfigError, LogFormat, Overrides, Secret, Speculative};
use wick_engine::sched::scheduler::SchedulerConfig;

/// `wick serve`'s flags. None has a default here: unset flags leave the value to the layers
/// below (environment, file, defaults), so the defaults in the help are wick-config's.
#[derive(Parser)]
pub struct ServeArgs {
    /// A TOML configuration file (see `config/examples/`); the flags below override it.
    #[arg(long, env = "WICK_CONFIG")]
    pub config: Option<PathBuf>,
    /// The `[[models]]` id to serve, when the file has several local models.
    #[arg(long)]
    pub model_id: Option<String>,
    /// A .gguf file, a Hugging Face model directory, or a Hub id `org/name[@rev][:file]`.
    /// Default: the embedded SmolLM2-135M-Instruct (see scripts/fetch-default-model).
    #[arg(long)]
    pub model: Option<String>,
    /// [default: 127.0.0.1]
    #[arg(long)]
    pub host: Option<String>,
    /// [default: 8080]
    #[arg(long)]
    pub port: Option<u16>,
    /// The name clients pass as `model` (default: the model file or id).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// A Jinja chat template file overriding the model's own.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Load GGUF weights dequantized (f32, f16, bf16) or re-quantized (q8_0, q4_0); auto: as
    /// stored. [default: auto]
    #[arg(long)]
    pub dtype: Option<String>,
    /// Speculative decoding with a draft model (a source, as --model takes it) that shares the
    /// served model's vocabulary: it proposes tokens, the served model verifies them in one
    /// forward, and the output is the served model's own.
    #[arg(long)]
    pub draft_model: Option<String>,
    /// The draft model's weights, as --dtype takes them. [default: auto, as stored]
    #[arg(long)]
    pub draft_dtype: Option<String>,
    /// Speculative decoding without a draft model: `ngram` proposes what followed the latest
    /// earlier occurrence of the last few tokens (prompt lookup).
    #[arg(long, value_parser = ["ngram"])]
    pub speculative: Option<String>,
    /// With --draft-model or --speculative: the most tokens proposed per sequence and step
    /// (1 to 16). [default: 3]
    #[arg(long)]
    pub num_speculative_tokens: Option<usize>,
    /// `cpu`, or `cuda:N` in a build with the `cuda` feature. [default: cpu]
    #[arg(long)]
    pub device: Option<String>,
    /// KV cache size in MiB. [default: 1024]
    #[arg(long)]
    pub kv_cache_mib: Option<usize>,
    /// The KV pool's dtype: auto, f32 or f16 (half the bytes per token). [default: auto]
    #[arg(long)]
    pub kv_cache_dtype: Option<String>,
    /// [default: 64]
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// [default: 256]
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Requests waiting for admission before new ones get 429. [default: 1024]
    #[arg(long)]
    pub max_waiting_requests: Option<usize>,
    /// On SIGTERM, keep accepting (answering 503, `/ready` 503) this long before closing the
    /// listener, so load balancers stop routing here first. [default: 5]
    #[arg(long)]
    pub drain_delay_secs: Option<u64>,
    /// Then wait this long at most for in-flight requests to finish. [default: 60]
    #[arg(long)]
    pub drain_grace_secs: Option<u64>,
    /// Request bodies above this many bytes get 413. [default: 8388608]
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Chat requests with more tools get 400. [default: 128]
    #[arg(long)]
    pub max_tools: Option<usize>,
    /// JSON Schemas (tool parameters, response_format) larger than this many bytes get 400.
    /// [default: 65536]
    #[arg(long)]
    pub max_schema_bytes: Option<usize>,
    /// Stored responses (/v1/responses) kept in memory at most; the oldest is evicted past it.
    /// [default: 1024]
    #[arg(long)]
    pub responses_store_max: Option<usize>,
    /// Stored responses' size at most, in bytes of JSON (a response counts with the
    /// conversation it continues); the oldest are evicted past it. [default: 67108864]
    #[arg(long)]
    pub responses_store_max_bytes: Option<usize>,
    /// Stored responses are forgotten this many seconds after they were created. [default: 3600]
    #[arg(long)]
    pub responses_store_ttl_secs: Option<u64>,
    /// Allow browsers from these origins (comma-separated, or `*`) to call the API (CORS).
    #[arg(long)]
    pub cors_allow_origins: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* (comma-separated keys allowed).
    /// Prefer the WICK_API_KEY variable: flags show in process listings.
    #[arg(long)]
    pub api_key: Option<String>,
}

const ENV_HELP: &str = "Every flag has a WICK_* environment variable (--kv-cache-mib: WICK_KV_CACHE_MIB). \
Precedence: defaults < --config file < WICK_* variables < flags.";

/// The help text after `wick serve --help`'s flags.
pub fn serve_after_help() -> &'static str {
    ENV_HELP
}

impl ServeArgs {
    fn overrides(&self, log_format: Option<&str>) -> Overrides {
        let list = |v: &Option<String>| v.as_deref().map(wick_config::overrides::comma_list);
        Overrides {
            model_id: self.model_id.clone(),
            model: self.model.clone(),
            served_model_name: self.served_model_name.clone(),
            chat_template: self.chat_template.clone(),
            draft_model: self.draft_model.clone(),
            draft_dtype: self.draft_dtype.clone(),
            // clap allows `ngram` only.
            speculative: self.speculative.as_ref().map(|_| Speculative::Ngram),
            num_speculative_tokens: self.num_speculative_tokens,
            host: self.host.clone(),
            port: self.port,
            api_keys: list(&self.api_key).map(|keys| keys.into_iter().map(Secret::new).collect()),
            cors_allow_origins: list(&self.cors_allow_origins),
            max_body_bytes: self.max_body_bytes,
            max_tools: self.max_tools,
            max_schema_bytes: self.max_schema_bytes,
            responses_store_max: self.responses_store_max,
            responses_store_max_bytes: self.responses_store_max_bytes,
            responses_store_ttl_secs: self.responses_store_ttl_secs,
            drain_delay_secs: self.drain_delay_secs,
            drain_grace_secs: self.drain_grace_secs,
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            kv_cache_mib: self.kv_cache_mib,
            kv_cache_dtype: self.kv_cache_dtype.clone(),
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_waiting_requests: self.max_waiting_requests,
            log_format: log_format.map(|f| {
                if f == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                }
            }),
        }
    }

    /// The configuration to serve with; problems are listed one per line.
    pub fn load(&self, log_format: Option<&str>) -> Result<Config> {
        let env = wick_config::env_overrides().map_err(problems)?;
        wick_config::load(self.config.as_deref(), &env, &self.overrides(log_format)).map_err(problems)
    }
}

/// A configuration error as an anyhow error whose message lists every problem.
fn problems(e: ConfigError) -> anyhow::Error {
    anyhow::anyhow!("invalid configuration:\n{e}")
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file on its own (no environment, no flags): every problem is printed
    /// as FILE:LINE:COLUMN: FIELD: MESSAGE, and the exit status is 1 if there is any.
    Check {
        /// The TOML files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the effective configuration (defaults < --config file < WICK_* variables) as TOML,
    /// secrets masked.
    Print {
        #[arg(long, env = "WICK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a model's own chat template (its GGUF metadata or tokenizer_config.json): the file
    /// a remote fallback's `chat_template` names on a `verify = "score"` route.
    ChatTemplate {
        /// A GGUF file, a safetensors directory or a Hub id (default: the embedded model).
        #[arg(long)]
        model: Option<String>,
    },
}

/// Runs `wick config ...`; the exit code.
pub fn run(cmd: ConfigCommand) -> Result<i32> {
    match cmd {
        ConfigCommand::Check { files } => {
            let mut failed = false;
            for file in &files {
                failed |= !check(file);
            }
            Ok(i32::from(failed))
        }
        ConfigCommand::Print { config } => {
            let env = wick_config::env_overrides().map_err(problems)?;
            let cfg = wick_config::load(config.as_deref(), &env, &Overrides::default()).map_err(problems)?;
            let from = config.map_or("defaults".into(), |c| c.display().to_string());
            print!(
                "# wick: effective configuration ({from}, then WICK_* variables); secrets masked\n{}",
                cfg.to_toml()
            );
            Ok(0)
        }
        ConfigCommand::ChatTemplate { model } => {
            let source = crate::cli::model::resolve_model(model.as_deref())?;
            let opts = crate::cli::model::load_options("cpu", None)?;
            let loaded = wick_engine::model::loader::load(&source, &opts).context("loading the model")?;
            let template = loaded
                .tokenizer
                .chat_template
                .clone()
                .context("the model has no chat template")?;
            print!("{template}");
            Ok(0)
        }
    }
}

fn check(file: &Path) -> bool {
    let none = Overrides::default();
    match wick_config::load(Some(file), &none, &none) {
        Ok(_) => {
            println!("{}: ok", file.display());
            true
        }
        Err(ConfigError::Invalid(problems)) => {
            for p in problems {
                eprintln!("{p}");
            }
            false
        }
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}

/// The engine's settings from `[engine]`.
pub fn engine_config(e: &wick_config::EngineConfig) -> wick_engine::EngineConfig {
    wick_engine::EngineConfig {
        // The CPU default; on a GPU an explicit size wins over sizing from free memory.
        kv_cache_bytes: e.kv_cache_mib.unwrap_or(1024) << 20,
        gpu_memory_headroom_bytes: match e.kv_cache_mib {
            Some(_) => None,
            None => Some(e.gpu_memory_headroom_mib << 20),
        },
        block_size: e.block_size,
        kv_cache_dtype: match e.kv_cache_dtype.as_str() {
            "f32" => Some(wick_engine::DType::F32),
            "f16" => Some(wick_engine::DType::F16),
            // `auto` (validated at start-up): the model's compute dtype.
            _ => None,
        },
        enable_prefix_caching: e.enable_prefix_caching,
        max_model_len: e.max_model_len,
        max_waiting_requests: e.max_waiting_requests,
        scheduler: SchedulerConfig {
            max_num_seqs: e.max_num_seqs,
            max_num_batched_tokens: e.max_num_batched_tokens,
        },
        ..wick_engine::EngineConfig::default()
    }
}

/// Logs as the configuration says; `RUST_LOG`, when set, wins over `logging.level`.
pub fn init_logging(format: LogFormat, level: &str) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => EnvFilter::try_new(level).with_context(|| format!("logging.level `{level}`"))?,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().with_current_span(true).init(),
        LogFormat::Text => logs.init(),
    }
    Ok(())
}
