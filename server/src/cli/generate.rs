//! `wick generate`: one prompt through the model without a server (greedy), streamed to stdout,
//! with prompt and decode speed on stderr.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use wick_engine::kv::block_manager::BlockManager;
use wick_engine::kv::cache::{PagedKvCache, DEFAULT_BLOCK_SIZE};
use wick_engine::model::loader;
use wick_engine::runner::{kv_shape, ModelRunner};
use wick_engine::tokenizer::detokenizer::IncrementalDetokenizer;

use crate::api::chat_template::ChatMessage;
use crate::cli::model::{chat_template, load_options, resolve_model};

#[derive(Parser)]
pub struct GenerateArgs {
    /// A .gguf file, a Hugging Face model directory, or a Hub id `org/name[@rev][:file]`.
    /// Default: the embedded SmolLM2-135M-Instruct (see scripts/fetch-default-model).
    #[arg(long, env = "WICK_MODEL")]
    pub model: Option<String>,
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

pub fn run(args: GenerateArgs) -> Result<()> {
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
        kv_shape(&cfg),
        DEFAULT_BLOCK_SIZE,
        blocks_needed,
        loaded.model.dtype(),
        &opts.device,
    )?;
    let mut blocks = BlockManager::new(blocks_needed, DEFAULT_BLOCK_SIZE)?;
    let mut runner = ModelRunner::new(loaded.model, cache);
    let mut detok = IncrementalDetokenizer::new(&prompt_ids, true);
    let mut stdout = std::io::stdout();
    let (tokens, stats) = wick_engine::engine::generate::greedy(
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
