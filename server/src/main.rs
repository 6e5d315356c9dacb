//! The `wick` binary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::sync::Arc;
use wick_engine::block_manager::BlockManager;
use wick_engine::detokenizer::IncrementalDetokenizer;
use wick_engine::kv_cache::{PagedKvCache, DEFAULT_BLOCK_SIZE};
use wick_engine::loader::{self, LoadOptions};
use wick_engine::model_runner::ModelRunner;
use wick_engine::model_source::ModelSource;
use wick_engine::scheduler::SchedulerConfig;
use wick_engine::{Engine, EngineConfig};
use wick_server::chat_template::{ChatMessage, ChatTemplate};
use wick_server::server::{self, AppState};

#[derive(Parser)]
#[command(name = "wick", version, about = "An OpenAI-compatible LLM serving daemon")]
struct Cli {
    /// Log lines as text or as JSON objects (one per line, for log collectors). Levels: RUST_LOG.
    #[arg(long, global = true, env = "WICK_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    Serve(ServeArgs),
    /// Generate a completion for one prompt and report prompt/decode speed.
    Generate(GenerateArgs),
}

#[derive(Parser)]
struct ServeArgs {
    /// A .gguf file, a Hugging Face model directory, or a Hub id `org/name[@rev][:file]`.
    /// Default: the embedded SmolLM2-135M-Instruct (see scripts/fetch-default-model).
    #[arg(long, env = "WICK_MODEL")]
    model: Option<String>,
    #[arg(long, env = "WICK_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "WICK_PORT", default_value_t = 8080)]
    port: u16,
    /// The name clients pass as `model` (default: the model file or id).
    #[arg(long)]
    served_model_name: Option<String>,
    /// A Jinja chat template file overriding the model's own.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Load GGUF weights dequantized (f32, f16, bf16) or re-quantized (q8_0, q4_0).
    #[arg(long)]
    dtype: Option<String>,
    /// `cpu`, or `cuda:N` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// KV cache size in MiB.
    #[arg(long, default_value_t = 1024)]
    kv_cache_mib: usize,
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    #[arg(long, default_value_t = 256)]
    max_num_batched_tokens: usize,
    /// Requests waiting for admission before new ones get 429.
    #[arg(long, default_value_t = 1024)]
    max_waiting_requests: usize,
    /// On SIGTERM, keep accepting (answering 503, `/ready` 503) this long before closing the
    /// listener, so load balancers stop routing here first.
    #[arg(long, default_value_t = 5)]
    drain_delay_secs: u64,
    /// Then wait this long at most for in-flight requests to finish.
    #[arg(long, default_value_t = 60)]
    drain_grace_secs: u64,
    /// Request bodies above this many bytes get 413.
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Allow browsers from these origins (comma-separated, or `*`) to call the API (CORS).
    #[arg(long, env = "WICK_CORS_ALLOW_ORIGINS")]
    cors_allow_origins: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* (comma-separated keys allowed).
    #[arg(long, env = "WICK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Parser)]
struct GenerateArgs {
    /// A .gguf file, a Hugging Face model directory, or a Hub id `org/name[@rev][:file]`.
    /// Default: the embedded SmolLM2-135M-Instruct (see scripts/fetch-default-model).
    #[arg(long, env = "WICK_MODEL")]
    model: Option<String>,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A Jinja chat template file overriding the model's own.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Load GGUF weights dequantized to f32, f16 or bf16, or re-quantized to q8_0 or q4_0.
    /// Default: keep them as stored.
    #[arg(long)]
    dtype: Option<String>,
    /// `cpu`, or `cuda:N` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn resolve_model(spec: Option<&str>) -> Result<ModelSource> {
    match spec {
        Some(s) => Ok(ModelSource::parse(s)?),
        None => {
            let path = wick_engine::default_model_path();
            if !path.is_file() {
                anyhow::bail!(
                    "default model not found at {}; run scripts/fetch-default-model or pass --model",
                    path.display()
                );
            }
            Ok(ModelSource::GgufFile(path))
        }
    }
}

/// `--device` and `--dtype` as the loader takes them (shared by `serve` and `generate`).
fn load_options(device: &str, dtype: Option<&str>) -> Result<LoadOptions> {
    let opts = LoadOptions {
        device: wick_engine::device_from_spec(device)?,
        ..Default::default()
    };
    Ok(match dtype {
        Some(format) => opts.with_format(format)?,
        None => opts,
    })
}

/// A comma-separated flag as its non-empty, trimmed items.
fn comma_list(value: Option<&String>) -> Vec<String> {
    value
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn generate(args: GenerateArgs) -> Result<()> {
    let source = resolve_model(args.model.as_deref())?;
    let opts = load_options(&args.device, args.dtype.as_deref())?;
    let loaded = loader::load(&source, &opts).context("loading the model")?;
    let tok = &loaded.tokenizer;
    let prompt_ids = if args.chat {
        let tmpl = chat_template(args.chat_template.as_ref(), tok)?
            .context("the model has no chat template; pass --chat-template")?;
        let text = tmpl.render(
            &[ChatMessage {
                role: "user".into(),
                content: args.prompt.clone(),
            }],
            true,
        )?;
        tok.encode(&text, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    let cfg = loaded.config().clone();
    let blocks_needed = (prompt_ids.len() + args.max_tokens).div_ceil(DEFAULT_BLOCK_SIZE);
    let cache = PagedKvCache::new(
        &cfg,
        DEFAULT_BLOCK_SIZE,
        blocks_needed,
        loaded.model.dtype(),
        &opts.device,
    )?;
    let mut blocks = BlockManager::new(blocks_needed, DEFAULT_BLOCK_SIZE)?;
    let mut runner = ModelRunner::new(loaded.model, cache);
    let mut detok = IncrementalDetokenizer::new(&prompt_ids, true);
    let mut stdout = std::io::stdout();
    let (tokens, stats) = wick_engine::generate::greedy(
        &mut runner,
        &mut blocks,
        &prompt_ids,
        args.max_tokens,
        &tok.eos_token_ids,
        |step| {
            if let Ok(text) = detok.push(tok, step.token) {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
            }
        },
    )?;
    println!("{}", detok.flush(tok)?);
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s",
        stats.prompt_tokens,
        stats.prefill_tokens_per_sec(),
        tokens.len(),
        stats.decode_tokens_per_sec()
    );
    Ok(())
}

fn chat_template(
    override_path: Option<&PathBuf>,
    tok: &wick_engine::tokenizer::Tokenizer,
) -> Result<Option<ChatTemplate>> {
    let source = match override_path {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
        None => tok.chat_template.clone(),
    };
    source
        .map(|s| ChatTemplate::new(s, tok.bos_token(), tok.eos_token()))
        .transpose()
        .context("parsing the chat template")
}

fn serve(args: ServeArgs) -> Result<()> {
    let source = resolve_model(args.model.as_deref())?;
    let model_id = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| source.display_name());
    let opts = load_options(&args.device, args.dtype.as_deref())?;
    tracing::info!(model = %model_id, "loading");
    let loaded = loader::load(&source, &opts).context("loading the model")?;
    let template = chat_template(args.chat_template.as_ref(), &loaded.tokenizer)?;
    if template.is_none() {
        tracing::warn!("the model has no chat template: /v1/chat/completions will answer 400");
    }
    let engine = Engine::new(
        loaded,
        EngineConfig {
            kv_cache_bytes: args.kv_cache_mib << 20,
            max_waiting_requests: args.max_waiting_requests,
            scheduler: SchedulerConfig {
                max_num_seqs: args.max_num_seqs,
                max_num_batched_tokens: args.max_num_batched_tokens,
            },
            ..EngineConfig::default()
        },
    )?;
    let mut state = AppState::new(Arc::new(engine), model_id, template);
    state.api_keys = comma_list(args.api_key.as_ref());
    state.max_body_bytes = args.max_body_bytes;
    state.cors_allow_origins = comma_list(args.cors_allow_origins.as_ref());
    let state = Arc::new(state);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(%addr, model = %state.model_id, "serving");
        let app = server::router(state.clone());
        let drain_state = state.clone();
        let (drain_delay, grace) = (
            std::time::Duration::from_secs(args.drain_delay_secs),
            std::time::Duration::from_secs(args.drain_grace_secs),
        );
        let (signalled_tx, mut signalled_rx) = tokio::sync::watch::channel(false);
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Drain: readiness turns 503 and new requests get 503 while load balancers notice
            // (`drain_delay`); then the listener closes and in-flight requests finish.
            drain_state
                .draining
                .store(true, std::sync::atomic::Ordering::Release);
            let _ = signalled_tx.send(true);
            tracing::info!(delay_s = drain_delay.as_secs(), "draining");
            tokio::time::sleep(drain_delay).await;
            tracing::info!("listener closed; waiting for in-flight requests");
        });
        let deadline = async move {
            let _ = signalled_rx.wait_for(|&s| s).await;
            tokio::time::sleep(drain_delay + grace).await;
        };
        tokio::select! {
            served = server => served?,
            _ = deadline => tracing::warn!("drain grace period over; exiting with requests in flight"),
        }
        state.engine.shutdown();
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().with_current_span(true).init();
    } else {
        logs.init();
    }
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Generate(args) => generate(args),
    }
}
