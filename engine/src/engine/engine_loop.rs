//! The engine thread. It owns the model runner, the KV cache's block manager, the scheduler and
//! every live request, and loops: take commands, schedule a step, copy blocks (copy-on-write),
//! run the forward, sample, detokenize, check stops, send events, free what finished.
//!
//! When there is no work it blocks on its command channel: it never spins, because on a small
//! CPU machine the HTTP server shares its cores.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use candle_core::Tensor;
use tokio::sync::mpsc::UnboundedSender;

use crate::engine::logits_layout::LogitsLayout;
use crate::engine::speculation::Speculator;
use crate::engine::{
    Command, EngineEvent, EngineStats, GenerateRequest, Shared, SpeculativeUsage, TokenEvent, Usage,
};
use crate::error::{EngineError, Result};
use crate::kernels::cpu::pool::compute_pool;
use crate::kv::block_manager::BlockManager;
use crate::runner::{ModelRunner, SequenceChunk};
use crate::sample::constraint::Constraint;
use crate::sample::sampler::{SampledToken, SequenceSamplingState};
use crate::sample::stop::FinishReason;
use crate::sample::verify::{sample_and_verify, verify_greedy};
use crate::sched::scheduler::Scheduler;
use crate::sched::sequence::{RequestId, Sequence};
use crate::tokenizer::Tokenizer;

struct RequestState {
    events: UnboundedSender<EngineEvent>,
    /// Choices not finished yet.
    unfinished: usize,
    /// Admitted at least once (no longer counted in the bounded queue).
    admitted: bool,
    submitted: Instant,
    usage: Usage,
}

pub(crate) struct EngineLoop {
    runner: ModelRunner,
    blocks: BlockManager,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    max_model_len: usize,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    requests: AHashMap<RequestId, RequestState>,
    /// Speculative decoding, when configured.
    spec: Option<Speculator>,
    prompt_tokens_total: u64,
    generation_tokens_total: u64,
    steps: u64,
}

impl EngineLoop {
    pub fn new(
        runner: ModelRunner,
        blocks: BlockManager,
        scheduler: Scheduler,
        tokenizer: Arc<Tokenizer>,
        max_model_len: usize,
        commands: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            runner,
            blocks,
            scheduler,
            tokenizer,
            max_model_len,
            commands,
            shared,
            requests: AHashMap::new(),
            spec: None,
            prompt_tokens_total: 0,
            generation_tokens_total: 0,
            steps: 0,
        }
    }

    pub fn with_speculator(mut self, spec: Speculator) -> Self {
        self.spec = Some(spec);
        self
    }

    pub fn run(mut self) {
        'run: loop {
            if self.scheduler.is_idle() {
                self.publish_stats();
                match self.commands.recv() {
                    Ok(command) => {
                        if !self.handle(command) {
                            break 'run;
                        }
                    }
                    Err(_) => break 'run,
                }
            }
            loop {
                match self.commands.try_recv() {
                    Ok(command) => {
                        if !self.handle(command) {
                            break 'run;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'run,
                }
            }
            self.abort_abandoned();
            if self.scheduler.is_idle() {
                continue;
            }
            // The whole step (forward and sampling) in the compute pool: see kernels::cpu::pool.
            match compute_pool().install(|| self.step()) {
                Ok(true) => {}
                Ok(false) => {
                    // Nothing could be scheduled (should not happen: one sequence always fits
                    // the pool). Wait for a command instead of spinning.
                    tracing::warn!(
                        waiting = self.scheduler.num_waiting(),
                        "no sequence could be scheduled"
                    );
                    match self.commands.recv_timeout(Duration::from_millis(50)) {
                        Ok(command) => {
                            if !self.handle(command) {
                                break 'run;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break 'run,
                    }
                }
                Err(e) => self.fail_running(&e.to_string()),
            }
            self.publish_stats();
        }
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            self.fail(id, "the engine has stopped");
        }
        self.publish_stats();
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Submit {
                id,
                request,
                events,
                constraint,
            } => self.add_request(id, *request, events, constraint),
            Command::Abort(id) => self.abort(id),
            Command::Shutdown => return false,
        }
        true
    }

    fn add_request(
        &mut self,
        id: RequestId,
        request: GenerateRequest,
        events: UnboundedSender<EngineEvent>,
        constraint: Option<Box<Constraint>>,
    ) {
        let GenerateRequest {
            prompt,
            params,
            priority,
            ..
        } = request;
        let eos = &self.tokenizer.eos_token_ids;
        let n = params.n.max(1);
        let new_sequence = |index: usize| {
            let mut seq = Sequence::new(
                id,
                index,
                &prompt,
                params.for_child(index),
                eos,
                self.max_model_len,
            );
            seq.priority = priority;
            seq.arrival = id;
            if let Some(c) = &constraint {
                seq.sampling
                    .set_constraint((**c).clone(), eos.first().copied().unwrap_or(0));
            }
            seq
        };
        let mut lead = new_sequence(0);
        lead.forks = (1..n).map(new_sequence).collect();
        self.requests.insert(
            id,
            RequestState {
                events,
                unfinished: n,
                admitted: false,
                submitted: Instant::now(),
                usage: Usage {
                    prompt_tokens: prompt.len(),
                    speculative: self.spec.as_ref().map(|_| SpeculativeUsage::default()),
                    ..Usage::default()
                },
            },
        );
        self.scheduler.add(lead);
    }

    /// Removes a request and frees its blocks. Unknown ids are ignored.
    fn abort(&mut self, id: RequestId) {
        self.scheduler.remove_request(id, &mut self.blocks);
        if let Some(spec) = &mut self.spec {
            spec.retain(self.scheduler.running());
        }
        if let Some(state) = self.requests.remove(&id) {
            if !state.admitted {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    fn fail(&mut self, id: RequestId, message: &str) {
        if let Some(state) = self.requests.get(&id) {
            let _ = state.events.send(EngineEvent::Error(message.to_string()));
        }
        self.abort(id);
    }

    /// A step failed midway: the running requests' state cannot be trusted, so they end with an
    /// error; waiting requests are untouched.
    fn fail_running(&mut self, message: &str) {
        tracing::error!(error = message, "engine step failed");
        let mut ids: Vec<RequestId> = self.scheduler.running().iter().map(|s| s.request_id).collect();
        ids.dedup();
        for id in ids {
            self.fail(id, message);
        }
    }

    /// Requests whose stream was dropped are cancelled.
    fn abort_abandoned(&mut self) {
        let gone: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            tracing::debug!(request = id, "stream dropped: aborting");
            self.abort(id);
        }
    }

    /// One forward step. Returns false when nothing could be scheduled.
    fn step(&mut self) -> Result<bool> {
        let started = Instant::now();
        let mut out = self.scheduler.schedule(&mut self.blocks)?;
        for &(id, cached) in &out.admitted {
            if let Some(state) = self.requests.get_mut(&id) {
                if !state.admitted {
                    state.admitted = true;
                    state.usage.cached_prompt_tokens = cached;
                    state.usage.queue_time = state.submitted.elapsed();
                    self.prompt_tokens_total += state.usage.prompt_tokens as u64;
                    self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        if out.chunks.is_empty() {
            return Ok(false);
        }
        if let Some(spec) = &mut self.spec {
            let budget = self
                .scheduler
                .config()
                .max_num_batched_tokens
                .saturating_sub(out.num_tokens());
            spec.propose(
                self.scheduler.running_mut(),
                &mut out.chunks,
                &mut self.blocks,
                &mut out.block_copies,
                budget,
            )?;
        }
        self.runner.cache().copy_blocks(&out.block_copies)?;

        // Run the chunks; the ones that reach the end of their sequence are sampled (a chunk
        // ending in proposals: from its last row before them on). Chunks of a prompt whose
        // logprobs are wanted return every row's logits.
        let running = self.scheduler.running();
        let mut sampled = Vec::new();
        let mut layout = LogitsLayout::default();
        let mut chunks: Vec<SequenceChunk<'_>> = Vec::with_capacity(out.chunks.len());
        for c in &out.chunks {
            let seq = &running[c.seq];
            let start = seq.num_computed;
            let end = start + c.num_tokens;
            let last = end == seq.tokens.len();
            if last {
                sampled.push(c.seq);
            }
            let all = seq.wants_prompt_logprobs() && start < seq.prompt_len;
            chunks.push(SequenceChunk {
                tokens: &seq.tokens[start..end],
                num_cached: start,
                block_table: &seq.block_table,
                logits: layout.add(c.seq, start, c.num_tokens, last, all, seq.spec.num_draft),
            });
        }
        // When every sampled row just takes the argmax of its logits, the head finds the
        // tokens and the logits are never written (forks would need the rows copied).
        let running = self.scheduler.running();
        let head_argmax = !sampled.is_empty()
            && layout.prompt_chunks.is_empty()
            && self.runner.model().head_has_argmax()
            && sampled
                .iter()
                .all(|&i| running[i].forks.is_empty() && running[i].sampling.argmax_suffices());
        let (logits, greedy) = if head_argmax {
            (None, Some(self.runner.execute_argmax(&chunks)?))
        } else {
            (Some(self.runner.execute(&chunks)?), None)
        };
        drop(chunks);
        self.steps += 1;
        let logits = logits
            .map(|l| layout.take_prompt_logprobs(l, self.scheduler.running_mut()))
            .transpose()?;
        // Proposals come off the sequences until verified (only the token before them is
        // known to be theirs); one entry per sampled sequence, in order.
        let mut proposals: Vec<Vec<u32>> = Vec::with_capacity(sampled.len());
        for c in &out.chunks {
            let seq = &mut self.scheduler.running_mut()[c.seq];
            let drafts = std::mem::take(&mut seq.spec.num_draft);
            let proposal = seq.tokens.split_off(seq.tokens.len() - drafts);
            seq.num_computed += c.num_tokens - drafts;
            if seq.num_computed == seq.tokens.len() {
                proposals.push(proposal);
            }
            self.blocks
                .commit_full_blocks(&seq.block_table, &seq.tokens[..seq.num_computed])?;
            if seq.wants_prompt_logprobs() && seq.num_computed >= seq.prompt_len {
                seq.prompt_logprobs_sent = true;
                let entries = std::mem::take(&mut seq.prompt_logprobs);
                if let Some(state) = self.requests.get(&seq.request_id) {
                    let _ = state.events.send(EngineEvent::PromptLogprobs(entries));
                }
            }
        }

        // Siblings waiting for a prompt that is now computed share its blocks and its logits row.
        let mut forks = Vec::new();
        let num_rows: usize = proposals.iter().map(|p| p.len() + 1).sum();
        let mut rows: Vec<u32> = (0..num_rows as u32).collect();
        let mut row = 0;
        for (&i, proposal) in sampled.iter().zip(&proposals) {
            let lead_row = row;
            row += proposal.len() + 1;
            let lead = &mut self.scheduler.running_mut()[i];
            for mut fork in std::mem::take(&mut lead.forks) {
                fork.block_table = self.blocks.fork(&lead.block_table)?;
                // The request's prompt logprobs come from the lead.
                fork.prompt_logprobs_sent = true;
                fork.num_computed = lead.num_computed;
                fork.cached_prompt_tokens = lead.cached_prompt_tokens;
                forks.push(fork);
                rows.push(lead_row as u32);
            }
        }
        let logits = match logits {
            Some(logits) if !forks.is_empty() => {
                let rows = Tensor::new(rows.as_slice(), logits.device())?;
                Some(logits.index_select(&rows, 0)?)
            }
            other => other,
        };
        let samples = {
            let running = self.scheduler.running_mut();
            // `sampled` is ascending (chunks come in running order).
            let mut states: Vec<&mut SequenceSamplingState> = running
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| sampled.binary_search(i).is_ok())
                .map(|(_, s)| &mut s.sampling)
                .collect();
            states.extend(forks.iter_mut().map(|f| &mut f.sampling));
            let mut props: Vec<&[u32]> = proposals.iter().map(Vec::as_slice).collect();
            props.resize(states.len(), &[]);
            match (&logits, greedy) {
                (Some(logits), _) => sample_and_verify(logits, &mut states, &props)?,
                (None, Some(tokens)) => {
                    let mut at = 0;
                    let mut out = Vec::with_capacity(states.len());
                    for (state, p) in states.iter_mut().zip(&props) {
                        let rows = tokens.get(at..at + p.len() + 1).ok_or_else(|| {
                            EngineError::InvalidBatch("fewer greedy tokens than rows".into())
                        })?;
                        out.push(verify_greedy(state, rows, p)?);
                        at += p.len() + 1;
                    }
                    out
                }
                (None, None) => return Err(EngineError::InvalidBatch("a step without a head output".into())),
            }
        };

        let mut samples = samples.into_iter();
        let mut finished = Vec::new();
        let mut emitted = 0;
        for ((&i, tokens), proposal) in sampled.iter().zip(samples.by_ref()).zip(&proposals) {
            let seq = &mut self.scheduler.running_mut()[i];
            // The draft's record (its next `k`, the engine's acceptance counters) is the
            // verification's; the request's usage counts only accepted proposals that reached
            // the output: one past an end of turn or a stop string was accepted by the target
            // but is not in the completion (OpenAI's `accepted_prediction_tokens`: prediction
            // tokens that appeared in the completion).
            let num_tokens = tokens.len();
            if let Some(spec) = &mut self.spec {
                spec.record(&mut seq.spec, proposal.len(), num_tokens - 1);
            }
            // If the choice ends in this step: how many of `tokens` reached the output.
            let mut ended_after = None;
            for (j, sample) in tokens.into_iter().enumerate() {
                self.generation_tokens_total += 1;
                emitted += 1;
                if emit(&self.tokenizer, &mut self.requests, seq, sample)? {
                    ended_after = Some(j + 1);
                    break;
                }
                // An accepted proposal: its K/V were computed in this step.
                if j + 1 < num_tokens {
                    seq.num_computed += 1;
                }
            }
            if self.spec.is_some() {
                let usage = self.requests.get_mut(&seq.request_id).map(|r| &mut r.usage);
                if let Some(counts) = usage.and_then(|u| u.speculative.as_mut()) {
                    counts.proposed += proposal.len();
                    counts.accepted += ended_after.unwrap_or(num_tokens).min(num_tokens - 1);
                }
            }
            if ended_after.is_some() {
                finished.push(i);
            } else if !proposal.is_empty() {
                self.blocks
                    .commit_full_blocks(&seq.block_table, &seq.tokens[..seq.num_computed])?;
                // Blocks taken for rejected proposals go back.
                self.blocks.truncate(&mut seq.block_table, seq.tokens.len());
            }
        }
        let finished: Vec<RequestId> = finished
            .iter()
            .rev()
            .map(|&i| self.scheduler.finish(i, &mut self.blocks).request_id)
            .collect();
        if let Some(spec) = &mut self.spec {
            // The draft's state of sequences no longer running (finished here, preempted by
            // this step's schedule) goes back before the clients hear they are done, since
            // finish_choice publishes the stats. Forks, added below, have none yet.
            spec.retain(self.scheduler.running());
        }
        for id in finished {
            self.finish_choice(id);
        }
        for (mut fork, sample) in forks.into_iter().zip(samples) {
            // Forks propose nothing in their first step: one token each.
            let Some(sample) = sample.into_iter().next() else {
                self.blocks.free(&mut fork.block_table);
                return Err(EngineError::InvalidBatch("a fork without a sampled token".into()));
            };
            self.generation_tokens_total += 1;
            if emit(&self.tokenizer, &mut self.requests, &mut fork, sample)? {
                self.blocks.free(&mut fork.block_table);
                self.finish_choice(fork.request_id);
            } else {
                self.scheduler.insert_running(fork);
            }
        }
        if let Some(spec) = &mut self.spec {
            spec.observe_step(emitted, started.elapsed());
        }
        Ok(true)
    }

    fn finish_choice(&mut self, id: RequestId) {
        let Some(state) = self.requests.get_mut(&id) else {
            return;
        };
        state.unfinished = state.unfinished.saturating_sub(1);
        if state.unfinished > 0 {
            return;
        }
        let Some(state) = self.requests.remove(&id) else {
            return;
        };
        // Counters include this request before its client hears it is done: a scrape right
        // after a response must count its tokens (the step's own publish comes later).
        self.publish_stats();
        let _ = state.events.send(EngineEvent::Done(state.usage));
    }

    fn publish_stats(&self) {
        let blocks = self.blocks.stats();
        let stats = EngineStats {
            num_running: self.scheduler.num_running(),
            num_waiting: self.scheduler.num_waiting(),
            num_blocks: blocks.num_blocks,
            used_blocks: blocks.used_blocks,
            prefix_query_tokens: blocks.prefix_query_tokens,
            prefix_hit_tokens: blocks.prefix_hit_tokens,
            num_preemptions: self.scheduler.num_preemptions(),
            prompt_tokens_total: self.prompt_tokens_total,
            generation_tokens_total: self.generation_tokens_total,
            steps: self.steps,
            spec_draft_tokens_total: self.spec.as_ref().map_or(0, |s| s.draft_tokens_total),
            spec_draft_seconds_total: self.spec.as_ref().map_or(0.0, |s| s.draft_seconds_total),
            spec_accepted_tokens_total: self.spec.as_ref().map_or(0, |s| s.accepted_tokens_total),
            draft_used_blocks: self.spec.as_ref().map_or(0, Speculator::draft_used_blocks),
            spec_payoff: self.spec.as_ref().map_or_else(Vec::new, Speculator::payoff),
        };
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = stats;
        }
    }
}

/// Appends a sampled token to `seq` and sends its events. Returns true when the choice ended.
fn emit(
    tokenizer: &Tokenizer,
    requests: &mut AHashMap<RequestId, RequestState>,
    seq: &mut Sequence,
    sample: SampledToken,
) -> Result<bool> {
    seq.tokens.push(sample.token);
    let delta = seq.detokenizer.push(tokenizer, sample.token)?;
    let step = seq.stop.push(sample.token, &delta);
    let Some(state) = requests.get_mut(&seq.request_id) else {
        return Ok(true);
    };
    state.usage.completion_tokens += 1;
    let _ = state.events.send(EngineEvent::Token(TokenEvent {
        index: seq.index,
        token: sample.token,
        text: step.text,
        logprob: sample.logprob,
        top_logprobs: sample.top_logprobs,
    }));
    let Some(reason) = step.finish else {
        return Ok(false);
    };
    // A length cut may leave an incomplete character in the detokenizer; it is emitted as
    // decoded. A stop never emits the stopping token's text.
    let text = match reason {
        FinishReason::Length => seq.detokenizer.flush(tokenizer)?,
        FinishReason::Stop => String::new(),
    };
    let _ = state.events.send(EngineEvent::Finished {
        index: seq.index,
        reason,
        stop: seq.stop.stop_match().cloned(),
        text,
    });
    Ok(true)
}
