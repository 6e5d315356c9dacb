//! Plain greedy generation for one prompt through the paged path: what `wick generate` and the
//! golden tests run. The server goes through the scheduler instead.

use std::time::{Duration, Instant};

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::kv::block_manager::BlockManager;
use crate::runner::{LogitsWanted, ModelRunner, SequenceChunk};

#[derive(Debug, Clone)]
pub struct StepOutput {
    pub token: u32,
    /// The full next-token log-distribution the token was chosen from (f32, `vocab`).
    pub logprobs: Vec<f32>,
}

#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens found in the prefix cache (not computed).
    pub cached_prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl GenerationStats {
    /// Prefill rate over the prompt tokens actually computed.
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        (self.prompt_tokens - self.cached_prompt_tokens) as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode rate over the tokens after the first (the first comes out of the prefill).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

pub fn log_softmax_row(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(candle_nn::ops::log_softmax(logits, D::Minus1)?.to_vec1::<f32>()?)
}

/// Greedy decoding of up to `max_new_tokens`, stopping after any of `stop_ids`. `on_step` sees
/// every step (token and its log-distribution). The prompt's cached prefix (if `blocks` caches
/// prefixes) is not recomputed; full blocks are committed to the prefix cache as they fill, and
/// the sequence's blocks are freed at the end.
pub fn greedy(
    runner: &mut ModelRunner,
    blocks: &mut BlockManager,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_ids: &[u32],
    mut on_step: impl FnMut(&StepOutput),
) -> Result<(Vec<u32>, GenerationStats)> {
    let (mut table, mut cached) = blocks.allocate_prompt(prompt)?;
    let result = (|| {
        let mut stats = GenerationStats {
            prompt_tokens: prompt.len(),
            cached_prompt_tokens: cached,
            ..Default::default()
        };
        let mut out = Vec::new();
        // Every token of the sequence; those before `cached` have their K/V in the cache.
        let mut tokens: Vec<u32> = prompt.to_vec();
        while out.len() < max_new_tokens {
            let started = Instant::now();
            blocks.ensure_capacity(&mut table, tokens.len())?;
            let chunk = SequenceChunk {
                tokens: &tokens[cached..],
                num_cached: cached,
                block_table: &table,
                logits: LogitsWanted::Last,
            };
            let logits = runner.execute(&[chunk])?.squeeze(0)?;
            let logprobs = log_softmax_row(&logits)?;
            let token = crate::sample::sampler::argmax(&logprobs);
            if out.is_empty() {
                stats.prefill_time = started.elapsed();
            } else {
                stats.decode_time += started.elapsed();
            }
            cached = tokens.len();
            blocks.commit_full_blocks(&table, &tokens)?;
            on_step(&StepOutput { token, logprobs });
            out.push(token);
            if stop_ids.contains(&token) {
                break;
            }
            tokens.push(token);
        }
        stats.generated_tokens = out.len();
        Ok((out, stats))
    })();
    blocks.free(&mut table);
    result
}
