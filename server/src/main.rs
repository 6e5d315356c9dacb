//! The `wick` binary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wick_engine::block_manager::BlockManager;
use wick_engine::detokenizer::IncrementalDetokenizer;
use wick_engine::kv_cache::{PagedKvCache, DEFAULT_BLOCK_SIZE};
use wick_engine::loader::{self, LoadOptions};
use wick_engine::model_runner::ModelRunner;
use wick_engine::model_source::ModelSource;
use wick_server::chat_template::{ChatMessage, ChatTemplate};

#[derive(Parser)]
#[command(name = "wick", version, about = "An OpenAI-compatible LLM serving daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt and report prompt/decode speed.
    Generate(GenerateArgs),
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

fn generate(args: GenerateArgs) -> Result<()> {
    let source = resolve_model(args.model.as_deref())?;
    let mut opts = LoadOptions {
        device: wick_engine::device_from_spec(&args.device)?,
        ..Default::default()
    };
    if let Some(format) = &args.dtype {
        opts = opts.with_format(format)?;
    }
    let loaded = loader::load(&source, &opts).context("loading the model")?;
    let tok = &loaded.tokenizer;
    let prompt_ids = if args.chat {
        let source = match &args.chat_template {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            None => tok
                .chat_template
                .clone()
                .context("the model has no chat template; pass --chat-template")?,
        };
        let tmpl = ChatTemplate::new(source, tok.bos_token(), tok.eos_token())?;
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

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate(args) => generate(args),
    }
}
