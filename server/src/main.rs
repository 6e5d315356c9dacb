//! The `wick` binary.

mod config_cmd;

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
use wick_engine::Engine;
use wick_server::chat_template::{ChatMessage, ChatTemplate};
use wick_server::router::RouterState;
use wick_server::server::{self, AppState};
use wick_server::tools;

use config_cmd::{ConfigCommand, ServeArgs};

#[derive(Parser)]
#[command(name = "wick", version, about = "An OpenAI-compatible LLM serving daemon")]
struct Cli {
    /// Log lines as text (default) or as JSON objects (one per line, for log collectors).
    /// Levels: RUST_LOG.
    #[arg(long, global = true, env = "WICK_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    #[command(after_help = config_cmd::serve_after_help())]
    Serve(Box<ServeArgs>),
    /// Check configuration files, or print the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate a completion for one prompt and report prompt/decode speed.
    Generate(GenerateArgs),
    /// Load-test any OpenAI-compatible server with concurrent streaming requests.
    Bench(wick_server::bench::BenchArgs),
    /// Score a labelled JSONL set against model names or routes: accuracy, who answered,
    /// latency, tokens and cost.
    RouteEval(wick_server::route_eval::RouteEvalArgs),
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

fn generate(args: GenerateArgs) -> Result<()> {
    let source = resolve_model(args.model.as_deref())?;
    let opts = load_options(&args.device, args.dtype.as_deref())?;
    let loaded = loader::load(&source, &opts).context("loading the model")?;
    let tok = &loaded.tokenizer;
    let prompt_ids = if args.chat {
        let tmpl = chat_template(args.chat_template.as_ref(), tok)?
            .context("the model has no chat template; pass --chat-template")?;
        let text = tmpl.render(&[ChatMessage::new("user", args.prompt.clone())], true)?;
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

/// One local model, loaded (weights on the device; no engine yet).
struct LoadedLocal {
    /// The config's id (routes name it) and the name clients use.
    config_id: String,
    model_id: String,
    loaded: wick_engine::loader::LoadedModel,
    template: Option<ChatTemplate>,
    tool_format: Option<wick_server::tool_parser::ToolCallFormat>,
}

fn load_local(model: &wick_config::ModelConfig, opts: &LoadOptions) -> Result<LoadedLocal> {
    let source = resolve_model(model.source.as_deref())?;
    let model_id = model.served_name.clone().unwrap_or_else(|| source.display_name());
    tracing::info!(model = %model_id, "loading");
    let loaded = loader::load(&source, opts).with_context(|| format!("loading model `{}`", model.id))?;
    let template = chat_template(model.chat_template.as_ref(), &loaded.tokenizer)?;
    if template.is_none() {
        tracing::warn!(model = %model_id, "the model has no chat template: /v1/chat/completions will answer 400");
    }
    let tool_format = model.tool_call_parser.map(config_cmd::tool_call_format);
    if let (Some(format), Some(t)) = (tool_format, &template) {
        if tools::template_format(t, Some(format)).is_none() {
            tracing::warn!(
                model = %model_id,
                %format,
                "tool_call_parser is not used: the chat template does not render tools, so tool \
                 requests get the generic prompt and its Hermes markup"
            );
        }
    }
    Ok(LoadedLocal {
        config_id: model.id.clone(),
        model_id,
        loaded,
        template,
        tool_format,
    })
}

fn serve(cfg: wick_config::Config) -> Result<()> {
    // wick-config validated that one local model is the served one; routes may name more.
    let models = cfg.local_models();
    anyhow::ensure!(!models.is_empty(), "no local model to serve");
    let (engine_cfg, server_cfg) = (&cfg.engine, &cfg.server);
    let opts = load_options(&engine_cfg.device, engine_cfg.dtype.as_deref())?;
    // Every model's weights first, then the engines: on a GPU each engine's KV pool takes its
    // share of the memory left once all weights are in.
    let loaded = models
        .iter()
        .map(|m| load_local(m, &opts))
        .collect::<Result<Vec<_>>>()?;
    let mut state: Option<AppState> = None;
    let mut local_ids = std::collections::HashMap::new();
    let count = loaded.len();
    for (i, m) in loaded.into_iter().enumerate() {
        let mut engine_config = config_cmd::engine_config(engine_cfg);
        engine_config.gpu_memory_share = 1.0 / (count - i) as f64;
        let engine = Arc::new(
            Engine::new(m.loaded, engine_config)
                .with_context(|| format!("starting the engine of `{}`", m.config_id))?,
        );
        local_ids.insert(m.config_id.clone(), m.model_id.clone());
        match &mut state {
            None => state = Some(AppState::new(engine, m.model_id, m.template, m.tool_format)),
            Some(s) => s
                .add_model(engine, m.model_id, m.template, m.tool_format)
                .map_err(anyhow::Error::msg)?,
        }
    }
    let mut state = state.context("no local model to serve")?;
    state.router = RouterState::from_config(&cfg, &local_ids, state.metrics.registry())
        .context("setting up the routes")?;
    if let Some(router) = &state.router {
        let names: Vec<&String> = router.routes.keys().collect();
        tracing::info!(routes = ?names, "routing");
    }
    state.api_keys = server_cfg
        .api_keys
        .iter()
        .map(|k| k.expose().to_string())
        .collect();
    state.max_body_bytes = server_cfg.max_body_bytes;
    state.cors_allow_origins = server_cfg.cors_allow_origins.clone();
    let state = Arc::new(state);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", server_cfg.host, server_cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let models: Vec<&str> = state.models.iter().map(|m| m.id.as_str()).collect();
        tracing::info!(%addr, ?models, "serving");
        let app = server::router(state.clone());
        let app = if cfg.metrics.enabled {
            app
        } else {
            config_cmd::without_metrics(app)
        };
        let drain_state = state.clone();
        let (drain_delay, grace) = (
            std::time::Duration::from_secs(server_cfg.drain_delay_secs),
            std::time::Duration::from_secs(server_cfg.drain_grace_secs),
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
        for m in &state.models {
            m.engine.shutdown();
        }
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
    let log_format = match cli.log_format.as_deref() {
        Some("json") => wick_config::LogFormat::Json,
        _ => wick_config::LogFormat::Text,
    };
    match cli.command {
        Command::Serve(args) => {
            // Logging follows the configuration, so it starts once that is read.
            let cfg = args.load(cli.log_format.as_deref())?;
            config_cmd::init_logging(cfg.logging.format, &cfg.logging.level)?;
            serve(cfg)
        }
        Command::Generate(args) => {
            config_cmd::init_logging(log_format, "info")?;
            generate(args)
        }
        Command::Config(cmd) => std::process::exit(config_cmd::run(cmd)?),
        Command::Bench(args) => {
            config_cmd::init_logging(log_format, "info")?;
            wick_server::bench::run(args)?;
            Ok(())
        }
        Command::RouteEval(args) => {
            // Logs on stderr; stdout carries the table or the JSON.
            config_cmd::init_logging(log_format, "warn")?;
            wick_server::route_eval::run(args)?;
            Ok(())
        }
    }
}
