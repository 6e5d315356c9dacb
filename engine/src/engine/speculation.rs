//! Speculative decoding inside the engine's step: the decodes of a step get proposals appended
//! (more tokens in the same forward), and after the sampler's verification the sequences keep
//! what was accepted and give back the KV blocks of what was not.
//!
//! The policy lives here: who proposes (decoding sequences without waiting siblings, in steps
//! decoding at most `max_batch` of them), how many (each sequence's `k`, adapted to its last
//! verification, capped by `max_tokens` so that nothing is generated past it, and by the step's
//! token budget left after the scheduler's plan). Proposals never preempt anyone: a sequence
//! whose pool has no blocks for them just decodes one token.

use std::time::Duration;

use crate::engine::spec_payoff::{Payoff, PayoffEstimate};
use crate::error::{EngineError, Result};
use crate::kv::block_manager::BlockManager;
use crate::sched::scheduler::ScheduledChunk;
use crate::sched::sequence::{Sequence, SpecState};
use crate::spec::draft::{DraftModel, DraftRequest, STEADY_CATCH_UP};
use crate::spec::{ngram, SpeculativeConfig, SpeculativeMethod};

/// What a step's time is, for the payoff measurement.
#[derive(Debug, Clone, Copy)]
enum StepTiming {
    /// A step that decodes and does nothing else: a measurement of its option.
    Measured { decodes: usize, speculated: bool },
    /// A step that speculated after a pause: the draft caught up on the tokens decoded
    /// meanwhile, which is what switching speculation on costs, not what it costs step after
    /// step.
    CatchUp { decodes: usize },
}

pub(crate) struct Speculator {
    config: SpeculativeConfig,
    draft: Option<DraftModel>,
    /// Tokens a draft model may run per step to catch up (its share of a prompt's prefill).
    catch_up_budget: usize,
    pub draft_tokens_total: u64,
    pub accepted_tokens_total: u64,
    /// Seconds spent in the draft model's forwards.
    pub draft_seconds_total: f64,
    payoff: Payoff,
    /// What this step's time will tell the payoff measurement, if anything.
    step_timing: Option<StepTiming>,
    /// The newest request seen decoding: a newer one is another text.
    newest_request: Option<u64>,
}

impl Speculator {
    pub fn new(config: SpeculativeConfig, draft: Option<DraftModel>, catch_up_budget: usize) -> Result<Self> {
        if config.num_speculative_tokens == 0 {
            return Err(EngineError::InvalidConfig(
                "num_speculative_tokens must be at least 1".into(),
            ));
        }
        match (config.method, &draft) {
            (SpeculativeMethod::DraftModel, None) => {
                return Err(EngineError::InvalidConfig(
                    "draft-model speculation needs a draft model".into(),
                ))
            }
            (SpeculativeMethod::Ngram { min, max }, _) if min == 0 || min > max => {
                return Err(EngineError::InvalidConfig(format!(
                    "n-gram speculation needs 1 <= min <= max, got min {min}, max {max}"
                )))
            }
            _ => {}
        }
        Ok(Self {
            config,
            draft: draft.filter(|_| config.method == SpeculativeMethod::DraftModel),
            catch_up_budget: catch_up_budget.max(1),
            draft_tokens_total: 0,
            accepted_tokens_total: 0,
            draft_seconds_total: 0.0,
            payoff: Payoff::default(),
            step_timing: None,
            newest_request: None,
        })
    }

    /// Blocks of the draft model's pool in use (0 without one).
    pub fn draft_used_blocks(&self) -> usize {
        self.draft.as_ref().map_or(0, DraftModel::used_blocks)
    }

    /// Appends proposals to the decode chunks of this step (in `running` order, as the
    /// scheduler planned them), within `budget` more tokens. Blocks for the proposals' positions
    /// are taken from `blocks`, their copy-on-write copies added to `copies`.
    pub fn propose(
        &mut self,
        running: &mut [Sequence],
        chunks: &mut [ScheduledChunk],
        blocks: &mut BlockManager,
        copies: &mut Vec<(u32, u32)>,
        budget: usize,
    ) -> Result<()> {
        let decodes: Vec<usize> = chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                let seq = &running[c.seq];
                c.num_tokens == 1 && seq.num_uncomputed() == 1 && seq.forks.is_empty()
            })
            .map(|(i, _)| i)
            .collect();
        self.step_timing = None;
        if decodes.is_empty() || decodes.len() > self.config.max_batch {
            return Ok(());
        }
        let newest = decodes.iter().map(|&i| running[chunks[i].seq].request_id).max();
        if newest > self.newest_request {
            self.newest_request = newest;
            self.payoff.new_text(decodes.len());
        }
        let measured = decodes.len() == chunks.len();
        let speculate = match (self.config.measure_payoff, measured) {
            (false, _) => true,
            (true, true) => self.payoff.choose(decodes.len()),
            (true, false) => self.payoff.standing(decodes.len()),
        };
        if measured {
            self.step_timing = Some(StepTiming::Measured {
                decodes: decodes.len(),
                speculated: speculate,
            });
        }
        if !speculate {
            return Ok(());
        }
        let per_seq = budget / decodes.len();
        let max_k = self.config.num_speculative_tokens;
        let ks: Vec<usize> = decodes
            .iter()
            .map(|&i| {
                let seq = &running[chunks[i].seq];
                // The token sampled after the proposals counts too: never past max_tokens.
                let room = seq.stop.tokens_left().saturating_sub(1);
                seq.spec.k.unwrap_or(max_k).min(room).min(per_seq)
            })
            .collect();
        let proposals = match (self.config.method, &mut self.draft) {
            (SpeculativeMethod::Ngram { min, max }, _) => decodes
                .iter()
                .zip(&ks)
                .map(|(&i, &k)| ngram::propose(&running[chunks[i].seq].tokens, min, max, k))
                .collect(),
            (SpeculativeMethod::DraftModel, Some(draft)) => {
                // Where the text repeats, the draft's next tokens are likely what followed
                // before: a guess it checks in the forward it runs anyway.
                let guesses: Vec<Vec<u32>> = decodes
                    .iter()
                    .zip(&ks)
                    .map(|(&i, &k)| match self.config.draft_lookup {
                        Some((min, max)) if k > 1 => {
                            ngram::propose(&running[chunks[i].seq].tokens, min, max, k - 1)
                        }
                        _ => Vec::new(),
                    })
                    .collect();
                let requests: Vec<DraftRequest<'_>> = decodes
                    .iter()
                    .zip(&ks)
                    .zip(&guesses)
                    .map(|((&i, &k), guess)| {
                        let seq = &running[chunks[i].seq];
                        DraftRequest {
                            key: (seq.request_id, seq.index),
                            tokens: &seq.tokens,
                            k,
                            prompt_len: seq.prompt_len,
                            guess,
                        }
                    })
                    .collect();
                let started = std::time::Instant::now();
                let proposals = draft.propose(&requests, self.catch_up_budget)?;
                self.draft_seconds_total += started.elapsed().as_secs_f64();
                // A step that also caught the draft up on a pause (the tokens decoded while
                // speculation was off) is not what speculating costs step after step: measured,
                // every exploration would pay the pause and speculation would stay off. (A
                // prompt's catch-up is measured: a draft costs its own prefill of every prompt,
                // which is what decides a busy server with short answers.)
                if draft.caught_up() > STEADY_CATCH_UP {
                    self.step_timing = Some(StepTiming::CatchUp {
                        decodes: decodes.len(),
                    });
                }
                proposals
            }
            (SpeculativeMethod::DraftModel, None) => return Ok(()),
        };
        for ((&i, &k), mut proposal) in decodes.iter().zip(&ks).zip(proposals) {
            proposal.truncate(k);
            if proposal.is_empty() {
                continue;
            }
            let seq = &mut running[chunks[i].seq];
            match blocks.prepare_write(&mut seq.block_table, seq.num_computed + 1, proposal.len()) {
                Ok(c) => copies.extend(c),
                Err(EngineError::OutOfBlocks { .. }) => continue,
                Err(e) => return Err(e),
            }
            seq.spec.num_draft = proposal.len();
            seq.tokens.extend(proposal);
            chunks[i].num_tokens += seq.spec.num_draft;
        }
        Ok(())
    }

    /// Times a finished step: `tokens` emitted in `elapsed`, a measurement where
    /// [`propose`](Self::propose) saw it decoding and nothing else, a try's cost where it saw
    /// the draft catch up after a pause.
    pub fn observe_step(&mut self, tokens: usize, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        match self.step_timing.take() {
            Some(StepTiming::Measured { decodes, speculated }) => {
                self.payoff.observe(decodes, speculated, tokens, seconds);
            }
            Some(StepTiming::CatchUp { decodes }) => self.payoff.observe_catch_up(decodes, seconds),
            None => {}
        }
    }

    /// Tokens per second with and without speculation, per batch size, as measured so far.
    pub fn payoff(&self) -> Vec<PayoffEstimate> {
        self.payoff.estimates()
    }

    /// Counts a verification and adapts the sequence's next `k`: one more after a full
    /// acceptance, else one more than was accepted, so a sequence whose proposals keep failing
    /// proposes one token (one extra row) at a time.
    pub fn record(&mut self, spec: &mut SpecState, proposed: usize, accepted: usize) {
        if proposed == 0 {
            return;
        }
        self.draft_tokens_total += proposed as u64;
        self.accepted_tokens_total += accepted as u64;
        let max_k = self.config.num_speculative_tokens;
        let k = spec.k.unwrap_or(max_k);
        spec.k = Some(if accepted >= proposed { k + 1 } else { accepted + 1 }.clamp(1, max_k));
    }

    /// Frees the draft model's state of sequences no longer running (finished, aborted,
    /// preempted: a preempted sequence catches up again when it is back).
    pub fn retain(&mut self, running: &[Sequence]) {
        if let Some(draft) = &mut self.draft {
            let live: ahash::AHashSet<(u64, usize)> =
                running.iter().map(|s| (s.request_id, s.index)).collect();
            draft.retain(|key| live.contains(&key));
        }
    }
}
