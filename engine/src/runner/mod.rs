//! Turns one scheduled batch (a chunk of new tokens per sequence) into model inputs, runs the
//! forward over the paged KV cache, and returns the logits of the rows to sample.

pub mod attention;

use std::ops::Range;

use candle_core::Tensor;

use crate::error::{EngineError, Result};
use crate::kernels::cpu::pool::compute_pool;
use crate::kv::cache::{BlockTable, KvShape, PagedKvCache};
use crate::model::config::LlamaConfig;
use crate::model::llama::LlamaModel;

/// The KV pool's dimensions for a model: the runner is where the model and the pool meet.
pub fn kv_shape(cfg: &LlamaConfig) -> KvShape {
    KvShape {
        layers: cfg.num_hidden_layers,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
    }
}
use crate::runner::attention::{AttentionImpl, PagedAttention, PagedAttentionMetadata, SequenceSpan};

/// Which logits a sequence wants from this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// A prefill chunk that is not the last: nothing to sample.
    None,
    /// The next-token distribution.
    Last,
    /// Every new position (prompt logprobs, scoring).
    All,
    /// The last n positions' (a draft model checking a guess of n - 1 tokens).
    LastN(usize),
}

/// One sequence's share of a batch.
#[derive(Debug, Clone)]
pub struct SequenceChunk<'a> {
    /// The new tokens to run.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache (the chunk's first position).
    pub num_cached: usize,
    /// Blocks holding positions `0..num_cached + tokens.len()`.
    pub block_table: &'a BlockTable,
    pub logits: LogitsWanted,
}

pub struct ModelRunner {
    model: LlamaModel,
    cache: PagedKvCache,
    attention: AttentionImpl,
}

impl ModelRunner {
    pub fn new(model: LlamaModel, cache: PagedKvCache) -> Self {
        Self {
            model,
            cache,
            attention: AttentionImpl::Auto,
        }
    }

    /// Forces an attention implementation (tests run the portable one on the CPU too).
    pub fn with_attention(mut self, attention: AttentionImpl) -> Self {
        self.attention = attention;
        self
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    pub fn into_model(self) -> LlamaModel {
        self.model
    }

    pub fn cache(&self) -> &PagedKvCache {
        &self.cache
    }

    /// Runs every chunk in one forward. Returns `(rows, vocab)` f32 logits: for each chunk in
    /// order, nothing, its last row, or all its rows, as asked.
    pub fn execute(&mut self, chunks: &[SequenceChunk<'_>]) -> Result<Tensor> {
        self.run(chunks, |model, tokens, positions, rows, attn| {
            model.forward(tokens, positions, rows, attn)
        })
    }

    /// As [`execute`](Self::execute), but the greedy token of each row it would return logits
    /// for (the sampler's `argmax`), found in the output head without writing the logits.
    pub fn execute_argmax(&mut self, chunks: &[SequenceChunk<'_>]) -> Result<Vec<u32>> {
        self.execute_argmax_within(chunks, None)
    }

    /// As [`execute_argmax`](Self::execute_argmax), the greedy token among the ids in `within`
    /// alone (see [`LlamaModel::forward_argmax`]).
    pub fn execute_argmax_within(
        &mut self,
        chunks: &[SequenceChunk<'_>],
        within: Option<&[Range<u32>]>,
    ) -> Result<Vec<u32>> {
        self.run(chunks, |model, tokens, positions, rows, attn| {
            model.forward_argmax(tokens, positions, rows, attn, within)
        })
    }

    fn run<T: Send>(
        &mut self,
        chunks: &[SequenceChunk<'_>],
        forward: impl FnOnce(&LlamaModel, &Tensor, &Tensor, Option<&Tensor>, &mut PagedAttention<'_>) -> Result<T>
            + Send,
    ) -> Result<T> {
        let device = self.model.device().clone();
        let max_pos = self.model.config().max_position_embeddings;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut rows = Vec::new();
        let mut spans = Vec::with_capacity(chunks.len());
        for c in chunks {
            if c.tokens.is_empty() {
                return Err(EngineError::InvalidBatch("a chunk without tokens".into()));
            }
            let start = tokens.len();
            let context_len = c.num_cached + c.tokens.len();
            if context_len > max_pos {
                return Err(EngineError::InvalidBatch(format!(
                    "context of {context_len} tokens exceeds the model's {max_pos}"
                )));
            }
            tokens.extend_from_slice(c.tokens);
            positions.extend((c.num_cached..context_len).map(|p| p as u32));
            match c.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => rows.push((tokens.len() - 1) as u32),
                LogitsWanted::All => rows.extend((start..tokens.len()).map(|r| r as u32)),
                LogitsWanted::LastN(n) => {
                    let first = tokens.len().saturating_sub(n).max(start);
                    rows.extend((first..tokens.len()).map(|r| r as u32))
                }
            }
            spans.push(SequenceSpan {
                query_start: start,
                query_len: c.tokens.len(),
                context_len,
                block_table: c.block_table.clone(),
            });
        }
        let cfg = self.model.config();
        let meta = PagedAttentionMetadata::new(
            &spans,
            self.cache.block_size(),
            cfg.num_key_value_heads,
            cfg.head_dim,
            self.model.dtype(),
            self.cache.dtype(),
            &device,
            self.attention,
        )?;
        let n = tokens.len();
        let tokens = Tensor::from_vec(tokens, n, &device)?;
        let positions = Tensor::from_vec(positions, n, &device)?;
        let all_rows = rows.len() == n && rows.iter().enumerate().all(|(i, &r)| i as u32 == r);
        let nrows = rows.len();
        let rows = Tensor::from_vec(rows, nrows, &device)?;
        let mut attn = PagedAttention {
            cache: &self.cache,
            meta: &meta,
        };
        // In the compute pool (a no-op when the engine loop already runs the step there).
        let model = &self.model;
        compute_pool().install(|| {
            forward(
                model,
                &tokens,
                &positions,
                (!all_rows).then_some(&rows),
                &mut attn,
            )
        })
    }
}
