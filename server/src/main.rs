//! The `wick` binary: the command line, and `wick serve`, which assembles the server from the
//! configuration (every local model's engine, the router, the HTTP routes) and drains it on
//! SIGTERM. The other subcommands live in `wick_server::cli`.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wick_server::api::responses::store::ResponseStore;
use wick_server::api::routes;
use wick_server::api::state::AppState;
use wick_server::cli;
use wick_server::cli::config::{ConfigCommand, ServeArgs};
use wick_server::ops::auth::ApiKeys;
use wick_server::ops::drain;
use wick_server::router::RouterState;
use wick_server::tools::RequestLimits;

/// Forward passes allocate and free megabyte buffers many times per step; mimalloc reuses them
/// where glibc's malloc would map fresh pages each time (docs/engine.md, "Memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    #[command(after_help = cli::config::serve_after_help())]
    Serve(Box<ServeArgs>),
    /// Check configuration files, or print the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate a completion for one prompt and report prompt/decode speed.
    Generate(cli::generate::GenerateArgs),
    /// Load-test any OpenAI-compatible server with concurrent streaming requests.
    Bench(cli::bench::BenchArgs),
    /// Score a labelled JSONL set against model names or routes: accuracy, who answered,
    /// latency, tokens and cost.
    RouteEval(cli::route_eval::RouteEvalArgs),
}

fn serve(cfg: wick_config::Config) -> Result<()> {
    let server_cfg = &cfg.server;
    // Weights (drafts included), then engines; the served model first.
    let models = cli::local_models::start(&cfg)?;
    for m in cfg.unused_models() {
        tracing::warn!(
            model = %m.id,
            "not loaded: neither server.model, nor a route's tier, nor the draft of a model served"
        );
    }
    let mut state: Option<AppState> = None;
    let mut local_ids = std::collections::HashMap::new();
    for m in models {
        local_ids.insert(m.config_id.clone(), m.model_id.clone());
        match &mut state {
            None => state = Some(AppState::new(m.engine, m.model_id, m.template, m.tool_format)),
            Some(s) => s
                .add_model(m.engine, m.model_id, m.template, m.tool_format)
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
    state.api_keys = ApiKeys::new(
        server_cfg
            .api_keys
            .iter()
            .map(|k| k.expose().to_string())
            .collect(),
    );
    state.max_body_bytes = server_cfg.max_body_bytes;
    state.models.limits = RequestLimits {
        max_tools: server_cfg.max_tools,
        max_schema_bytes: server_cfg.max_schema_bytes,
    };
    state.cors_allow_origins = server_cfg.cors_allow_origins.clone();
    state.responses = Arc::new(ResponseStore::from_config(server_cfg));
    let state = Arc::new(state);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", server_cfg.host, server_cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let models: Vec<&str> = state.models.iter().map(|m| m.id.as_str()).collect();
        tracing::info!(%addr, ?models, "serving");
        let app = routes::router(state.clone());
        let app = if cfg.metrics.enabled {
            app
        } else {
            routes::without_metrics(app)
        };
        let drain_state = state.clone();
        let (drain_delay, grace) = (
            std::time::Duration::from_secs(server_cfg.drain_delay_secs),
            std::time::Duration::from_secs(server_cfg.drain_grace_secs),
        );
        let (signalled_tx, mut signalled_rx) = tokio::sync::watch::channel(false);
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            drain::shutdown_signal().await;
            // Drain: readiness turns 503 and new requests get 503 while load balancers notice
            // (`drain_delay`); then the listener closes and in-flight requests finish.
            drain_state.drain.start();
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
            cli::config::init_logging(cfg.logging.format, &cfg.logging.level)?;
            serve(cfg)
        }
        Command::Generate(args) => {
            cli::config::init_logging(log_format, "info")?;
            cli::generate::run(args)
        }
        Command::Config(cmd) => std::process::exit(cli::config::run(cmd)?),
        Command::Bench(args) => {
            cli::config::init_logging(log_format, "info")?;
            cli::bench::run(args)?;
            Ok(())
        }
        Command::RouteEval(args) => {
            // Logs on stderr; stdout carries the table or the JSON.
            cli::config::init_logging(log_format, "warn")?;
            cli::route_eval::run(args)?;
            Ok(())
        }
    }
}
