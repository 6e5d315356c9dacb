//! One generation stream: a request's prompt and what it has generated so far, where its K/V
//! live, and the per-stream state that turns sampled ids into text and decides when it ends.
//!
//! A request with `n > 1` becomes `n` sequences. Only the first (the *lead*) is scheduled while
//! the prompt is prefilled; its siblings wait in [`Sequence::forks`] and, once the prompt's K/V
//! are computed, share its blocks ([`BlockManager::fork`](crate::kv::block_manager::BlockManager::fork))
//! and sample their first token from the same logits. From then on each is on its own.

use crate::kv::cache::BlockTable;
use crate::sample::params::SamplingParams;
use crate::sample::sampler::{PromptTokenLogprob, SequenceSamplingState};
use crate::sample::stop::StopChecker;
use crate::tokenizer::detokenizer::IncrementalDetokenizer;

/// Identifies a request (all `n` sequences of it) for the engine's lifetime.
pub type RequestId = u64;

pub struct Sequence {
    pub request_id: RequestId,
    /// The choice index within the request (0 for `n = 1`).
    pub index: usize,
    /// Prompt then output; after a preemption all of them are recomputed as one long prompt.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache (`tokens[..num_computed]`). The scheduler runs
    /// `tokens[num_computed..]`, in chunks; a decoding sequence has exactly one uncomputed token,
    /// the last one sampled.
    pub num_computed: usize,
    /// Empty while waiting (blocks are taken at admission, given back on preemption).
    pub block_table: BlockTable,
    /// Lower runs first (vLLM's convention); ties go to the earlier arrival.
    pub priority: i32,
    /// Submission order, the FCFS key.
    pub arrival: u64,
    pub sampling: SequenceSamplingState,
    pub stop: StopChecker,
    pub detokenizer: IncrementalDetokenizer,
    /// Siblings of a request with `n > 1` that wait for this sequence's prompt.
    pub forks: Vec<Sequence>,
    /// Prompt tokens found in the prefix cache at the first admission (reported in usage).
    pub cached_prompt_tokens: Option<usize>,
    pub num_preemptions: usize,
    /// With `prompt_logprobs`: the entries computed so far (for prompt positions 1..), until
    /// they are sent.
    pub prompt_logprobs: Vec<PromptTokenLogprob>,
    pub prompt_logprobs_sent: bool,
    /// Speculative decoding: proposals in flight and how many to propose next.
    pub spec: SpecState,
}

/// A sequence's speculative decoding state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecState {
    /// Proposed tokens appended to `tokens` for this step's verification; 0 outside a step
    /// (they are verified, and taken off again, within the step that ran them).
    pub num_draft: usize,
    /// How many tokens to propose next, adapted to recent acceptance; None before the first
    /// proposal (the configured maximum then).
    pub k: Option<usize>,
}

impl Sequence {
    /// A sequence that has not been admitted yet (priority 0, arrival 0: the caller sets them).
    /// `eos_token_ids` and `max_model_len` are the model's; `params` must have passed validation.
    pub fn new(
        request_id: RequestId,
        index: usize,
        prompt: &[u32],
        params: SamplingParams,
        eos_token_ids: &[u32],
        max_model_len: usize,
    ) -> Self {
        // Under a grammar, EOS is where the grammar ends: always honoured.
        let stop = if params.constraint.is_some() {
            let stop_params = SamplingParams {
                ignore_eos: false,
                min_tokens: 0,
                ..params.clone()
            };
            StopChecker::new(&stop_params, eos_token_ids, prompt.len(), max_model_len)
        } else {
            StopChecker::new(&params, eos_token_ids, prompt.len(), max_model_len)
        };
        let detokenizer = IncrementalDetokenizer::new(prompt, params.skip_special_tokens);
        Self {
            request_id,
            index,
            tokens: prompt.to_vec(),
            prompt_len: prompt.len(),
            num_computed: 0,
            block_table: BlockTable::default(),
            priority: 0,
            arrival: 0,
            sampling: SequenceSamplingState::new(params, prompt, eos_token_ids),
            stop,
            detokenizer,
            forks: Vec::new(),
            cached_prompt_tokens: None,
            num_preemptions: 0,
            prompt_logprobs: Vec::new(),
            prompt_logprobs_sent: false,
            spec: SpecState::default(),
        }
    }

    /// The scheduling order: priority, then arrival, then choice index.
    pub fn order_key(&self) -> (i32, u64, usize) {
        (self.priority, self.arrival, self.index)
    }

    pub fn output_tokens(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Tokens still to run through the model before the next token can be sampled.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Whether this sequence still owes prompt logprobs: its prompt must then be computed in
    /// full (no prefix-cache hits) with every row's logits.
    pub fn wants_prompt_logprobs(&self) -> bool {
        self.sampling.params().prompt_logprobs.is_some() && !self.prompt_logprobs_sent
    }

    /// Sequences scheduled together at admission: this one and its waiting siblings.
    pub fn group_size(&self) -> usize {
        1 + self.forks.len()
    }
}
