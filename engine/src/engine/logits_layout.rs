//! Which rows of a step's logits belong to whom, and the prompt logprobs taken from them.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::runner::LogitsWanted;
use crate::sample::sampler::{token_logprobs, PromptTokenLogprob};
use crate::sched::sequence::Sequence;

/// Which rows of a step's logits are whose: a sampled chunk contributes its last row (a chunk
/// verifying proposals, one row per proposal and one more), a chunk of a prompt whose logprobs
/// are wanted all of its rows.
#[derive(Default)]
pub(super) struct LogitsLayout {
    rows: usize,
    /// Rows of the sampled sequences, in chunk order (consecutive per sequence).
    sample_rows: Vec<u32>,
    /// `(running index, first position, rows, first row)` of chunks returning every row.
    pub(super) prompt_chunks: Vec<(usize, usize, usize, usize)>,
}

impl LogitsLayout {
    /// `verified`: proposals at the end of the chunk, verified from its last `verified + 1`
    /// rows (0 for a plain chunk; a chunk with proposals is a decode, never a prompt's).
    pub(super) fn add(
        &mut self,
        seq: usize,
        start: usize,
        len: usize,
        last: bool,
        all: bool,
        verified: usize,
    ) -> LogitsWanted {
        if verified > 0 && last && !all {
            let first = self.rows + len - (verified + 1);
            self.sample_rows
                .extend((first..self.rows + len).map(|r| r as u32));
            self.rows += len;
            LogitsWanted::All
        } else if all {
            self.prompt_chunks.push((seq, start, len, self.rows));
            self.rows += len;
            if last {
                self.sample_rows.push((self.rows - 1) as u32);
            }
            LogitsWanted::All
        } else if last {
            self.sample_rows.push(self.rows as u32);
            self.rows += 1;
            LogitsWanted::Last
        } else {
            LogitsWanted::None
        }
    }
}

impl LogitsLayout {
    /// Records the prompt logprobs the step computed (in `running`, the scheduler's running
    /// sequences) and returns the logits of the sampled rows only (one per sampled sequence, in
    /// chunk order).
    pub(super) fn take_prompt_logprobs(&self, logits: Tensor, running: &mut [Sequence]) -> Result<Tensor> {
        let layout = self;
        if layout.prompt_chunks.is_empty() {
            return Ok(logits);
        }
        for &(i, start, len, first_row) in &layout.prompt_chunks {
            let rows = logits
                .narrow(0, first_row, len)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            let seq = &mut running[i];
            let top = seq.sampling.params().prompt_logprobs.unwrap_or(0);
            for (p, row) in (start..).zip(&rows) {
                // Row p predicts token p + 1. After a preemption, positions already recorded
                // are recomputed: skip them.
                if p + 1 >= seq.prompt_len || p < seq.prompt_logprobs.len() {
                    continue;
                }
                let token = seq.tokens[p + 1];
                let (logprob, top_logprobs) = token_logprobs(row, token, top);
                seq.prompt_logprobs.push(PromptTokenLogprob {
                    token,
                    logprob,
                    top_logprobs,
                });
            }
        }
        if layout.sample_rows.is_empty() {
            return Ok(logits.narrow(0, 0, 0)?);
        }
        let rows = Tensor::new(layout.sample_rows.as_slice(), logits.device())?;
        Ok(logits.index_select(&rows, 0)?)
    }
}
