//! The scheduling policy, and nothing else: which sequences run in the next forward step and how
//! many of their tokens.
//!
//! Every step gets a fresh plan ([`SchedulerOutput`]) under two limits, `max_num_batched_tokens`
//! (tokens in the forward) and `max_num_seqs` (sequences holding KV blocks):
//! 1. **Decodes first**, in priority/arrival order, one token each. A decode that needs a block
//!    the pool cannot give triggers **preemption by recompute**: the newest (lowest-priority)
//!    sequence not yet scheduled in this step gives all its blocks back and returns to the front
//!    of the waiting queue with its prompt and output so far; it is recomputed when readmitted
//!    (its prefix cache entries often survive, so usually little is recomputed) and, because
//!    every kernel is row-deterministic and its sampler state is kept, continues with exactly the
//!    tokens it would have produced.
//! 2. **Continuing prefills** (admitted sequences whose prompt is not fully computed yet), each
//!    chunk capped by the token budget left: **chunked prefill**, so a long prompt takes several
//!    steps and never stalls the decodes. While a request that could be admitted waits, the
//!    continuing prefills take at most half of the budget left, so a short request arriving
//!    during a long prompt's prefill starts in the next step rather than after it. A chunk
//!    that shares its step is budgeted by its work, attention included
//!    ([`Scheduler::with_attention_context`]).
//! 3. **Admissions** from the waiting queue, in order (FCFS, or by priority): a sequence is
//!    admitted only when its uncached blocks fit above the watermark, and takes its whole
//!    prompt's blocks at once (so a prefill never needs blocks mid-way); head-of-line blocking
//!    is deliberate, so that a large request is not starved by small ones.
//!
//! The waiting queue's bound is enforced by the engine at submission (a full queue is an
//! `Overloaded` error); sequences coming back from preemption always get in.

use std::collections::VecDeque;

use crate::error::{EngineError, Result};
use crate::kv::block_manager::BlockManager;
use crate::sched::sequence::{RequestId, Sequence};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences holding KV blocks at once (running, including partially prefilled ones).
    pub max_num_seqs: usize,
    /// Tokens in one forward step: decodes plus prefill chunks.
    pub max_num_batched_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 64,
            max_num_batched_tokens: 256,
        }
    }
}

/// One running sequence's part of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledChunk {
    /// Index into [`Scheduler::running`].
    pub seq: usize,
    /// Tokens from `num_computed` on to run now.
    pub num_tokens: usize,
}

#[derive(Debug, Default)]
pub struct SchedulerOutput {
    /// In `running` order.
    pub chunks: Vec<ScheduledChunk>,
    /// Copy-on-write block copies `(source, destination)` to perform before the forward.
    pub block_copies: Vec<(u32, u32)>,
    /// Sequences preempted by this step.
    pub num_preempted: usize,
    /// Requests admitted for the first time in this step, with their prompt tokens found in
    /// the prefix cache.
    pub admitted: Vec<(RequestId, usize)>,
}

impl SchedulerOutput {
    pub fn num_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.num_tokens).sum()
    }
}

pub struct Scheduler {
    config: SchedulerConfig,
    /// See [`Scheduler::with_attention_context`].
    attention_context: Option<usize>,
    /// Ordered by [`Sequence::order_key`].
    waiting: VecDeque<Sequence>,
    /// Ordered by [`Sequence::order_key`]: the first are decoded first and preempted last.
    running: Vec<Sequence>,
    num_preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        if config.max_num_seqs == 0 || config.max_num_batched_tokens == 0 {
            return Err(EngineError::InvalidConfig(format!(
                "max_num_seqs ({}) and max_num_batched_tokens ({}) must be positive",
                config.max_num_seqs, config.max_num_batched_tokens
            )));
        }
        Ok(Self {
            config,
            attention_context: None,
            waiting: VecDeque::new(),
            running: Vec::new(),
            num_preemptions: 0,
        })
    }

    /// Budgets a prefill chunk by its work rather than its tokens while it shares the step with
    /// other sequences: `context` is the position at which a token's attention costs as many
    /// multiply-adds as the rest of its layer ([`LlamaConfig::attention_context`]), so a chunk
    /// from position `p` gets `budget * context / (context + p)` tokens. A long prompt's late
    /// chunks then stop stretching every step (and the decodes riding in it): at 5k positions
    /// a full-budget chunk took several times a short one. Alone, a prefill still takes whole
    /// budgets (nobody waits on its steps).
    ///
    /// [`LlamaConfig::attention_context`]: crate::model::config::LlamaConfig::attention_context
    pub fn with_attention_context(mut self, context: usize) -> Self {
        self.attention_context = Some(context.max(1));
        self
    }

    /// Tokens of a prefill chunk from position `pos` worth `budget` tokens of work.
    fn chunk_cap(attention_context: Option<usize>, budget: usize, pos: usize) -> usize {
        match attention_context {
            Some(k) => ((budget as u128 * k as u128 / (k + pos) as u128) as usize).max(1),
            None => budget,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a sequence (with its waiting siblings) for admission.
    pub fn add(&mut self, seq: Sequence) {
        let key = seq.order_key();
        let at = self.waiting.partition_point(|s| s.order_key() <= key);
        self.waiting.insert(at, seq);
    }

    /// Puts an admitted sequence among the running ones (the engine does this for forks).
    pub fn insert_running(&mut self, seq: Sequence) {
        let key = seq.order_key();
        let at = self.running.partition_point(|s| s.order_key() <= key);
        self.running.insert(at, seq);
    }

    pub fn running(&self) -> &[Sequence] {
        &self.running
    }

    pub fn running_mut(&mut self) -> &mut [Sequence] {
        &mut self.running
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Waiting sequences, siblings included.
    pub fn num_waiting(&self) -> usize {
        self.waiting.iter().map(Sequence::group_size).sum()
    }

    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Removes a running sequence (finished), giving its blocks back.
    pub fn finish(&mut self, index: usize, blocks: &mut BlockManager) -> Sequence {
        let mut seq = self.running.remove(index);
        blocks.free(&mut seq.block_table);
        seq
    }

    /// Removes every sequence of `request` (aborted), giving their blocks back.
    pub fn remove_request(&mut self, request: RequestId, blocks: &mut BlockManager) -> usize {
        let before = self.running.len() + self.num_waiting();
        self.running.retain_mut(|s| {
            let keep = s.request_id != request;
            if !keep {
                blocks.free(&mut s.block_table);
            }
            keep
        });
        self.waiting.retain(|s| s.request_id != request);
        before - self.running.len() - self.num_waiting()
    }

    /// Plans the next step. `blocks` is updated for it: blocks for admitted prompts and decode
    /// growth are taken, preempted sequences' blocks given back.
    pub fn schedule(&mut self, blocks: &mut BlockManager) -> Result<SchedulerOutput> {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        // Tokens planned per running sequence, index-aligned with `running`.
        let mut planned = vec![0usize; self.running.len()];

        // 1. Decodes.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if self.running[i].num_uncomputed() != 1 {
                i += 1;
                continue;
            }
            let seq = &mut self.running[i];
            match blocks.prepare_write(&mut seq.block_table, seq.num_computed, 1) {
                Ok(copies) => {
                    out.block_copies.extend(copies);
                    planned[i] = 1;
                    budget -= 1;
                    i += 1;
                }
                Err(EngineError::OutOfBlocks { .. }) => {
                    // Everything after `i` is unscheduled, so the victim is the last sequence,
                    // `i` itself when it is the last.
                    let victim = self.running.len() - 1;
                    self.preempt(victim, blocks);
                    planned.pop();
                    out.num_preempted += 1;
                    // When the victim was `i`, the loop ends; otherwise `i` retries.
                }
                Err(e) => return Err(e),
            }
        }

        // 2. Continuing prefills. Their blocks were all taken at admission, so only a
        // copy-on-write could be refused; that sequence then waits for a later step. While a
        // request that could be admitted waits, they take at most half the budget left, so a
        // short request starts in the next step instead of after a long prompt's whole prefill.
        let newcomer = self.head_admissible(blocks);
        let mut prefill_budget = if newcomer { budget.div_ceil(2) } else { budget };
        let mut shared = newcomer || planned.iter().any(|&n| n > 0);
        for (i, seq) in self.running.iter_mut().enumerate() {
            if prefill_budget == 0 {
                break;
            }
            if planned[i] > 0 || seq.num_uncomputed() <= 1 {
                continue;
            }
            let mut n = seq.num_uncomputed().min(prefill_budget);
            if shared {
                n = n.min(Self::chunk_cap(
                    self.attention_context,
                    prefill_budget,
                    seq.num_computed,
                ));
            }
            match blocks.prepare_write(&mut seq.block_table, seq.num_computed, n) {
                Ok(copies) => {
                    out.block_copies.extend(copies);
                    planned[i] = n;
                    budget -= n;
                    prefill_budget -= n;
                    shared = true;
                }
                Err(EngineError::OutOfBlocks { .. }) => {}
                Err(e) => return Err(e),
            }
        }

        // 3. Admissions.
        while budget > 0 && self.head_admissible(blocks) {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            let (table, cached) = blocks.allocate_prompt_with(&seq.tokens, !seq.wants_prompt_logprobs())?;
            seq.block_table = table;
            seq.num_computed = cached;
            if seq.cached_prompt_tokens.is_none() {
                let cached_prompt = cached.min(seq.prompt_len);
                seq.cached_prompt_tokens = Some(cached_prompt);
                out.admitted.push((seq.request_id, cached_prompt));
            }
            let mut n = seq.num_uncomputed().min(budget);
            if shared {
                n = n.min(Self::chunk_cap(self.attention_context, budget, seq.num_computed));
            }
            shared = true;
            // Fresh blocks are private: no copy can be needed, and none was allocated later.
            out.block_copies
                .extend(blocks.prepare_write(&mut seq.block_table, seq.num_computed, n)?);
            budget -= n;
            let key = seq.order_key();
            let at = self.running.partition_point(|s| s.order_key() <= key);
            self.running.insert(at, seq);
            planned.insert(at, n);
        }

        out.chunks = planned
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(seq, &num_tokens)| ScheduledChunk { seq, num_tokens })
            .collect();
        Ok(out)
    }

    /// Whether the first waiting request can be admitted now: its group fits under
    /// `max_num_seqs` and its uncached prompt blocks above the watermark.
    fn head_admissible(&self, blocks: &BlockManager) -> bool {
        let Some(head) = self.waiting.front() else {
            return false;
        };
        if self.running.len() + head.group_size() > self.config.max_num_seqs {
            return false;
        }
        let needed = blocks.num_blocks_to_allocate_with(&head.tokens, !head.wants_prompt_logprobs());
        // With nothing running no block will ever come back: then the watermark (headroom for
        // running sequences to grow) has nothing to protect.
        if self.running.is_empty() {
            needed <= blocks.num_free_blocks()
        } else {
            blocks.can_allocate(needed)
        }
    }

    /// Gives all of a running sequence's blocks back and queues it for recomputation.
    fn preempt(&mut self, index: usize, blocks: &mut BlockManager) {
        let mut seq = self.running.remove(index);
        blocks.free(&mut seq.block_table);
        seq.num_computed = 0;
        seq.num_preemptions += 1;
        self.num_preemptions += 1;
        tracing::debug!(
            request = seq.request_id,
            index = seq.index,
            tokens = seq.tokens.len(),
            "preempted (recompute)"
        );
        self.add(seq);
    }
}
