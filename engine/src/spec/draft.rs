//! A draft model: a small model with the target's vocabulary proposes its greedy continuation.
//!
//! The draft keeps its own paged KV pool and block manager (prefix caching included), and per
//! sequence a block table and how far it has computed. Each step it first catches up on the
//! tokens the target committed since (the new token, the proposals that were accepted, or a whole
//! prompt, spread over steps by a token budget), then runs one more position per proposed token:
//! `k` forwards, batched over the sequences. Its K/V of proposals that the target rejected are
//! simply overwritten later: the draft trusts only the tokens the sequence really has.
//!
//! A request may come with a guess of the draft's next tokens (prompt lookup: what followed the
//! sequence's last few tokens earlier). The first forward then runs the guessed tokens as further
//! rows, and each row's output is the draft's next token for as long as the guess matched the
//! draft's own: those proposals cost no forward of their own. The proposals are the same with or
//! without a guess.

use std::borrow::Cow;
use std::ops::Range;

use ahash::AHashMap;

use crate::error::{EngineError, Result};
use crate::kv::block_manager::BlockManager;
use crate::kv::cache::BlockTable;
use crate::runner::{LogitsWanted, ModelRunner, SequenceChunk};
use crate::sample::sampler::argmax;

/// The most tokens a sequence catches up on between two speculative steps: after a full
/// acceptance, the last proposal (never run as an input) and the target's token after it;
/// otherwise the target's token alone.
pub const STEADY_CATCH_UP: usize = 2;

/// A sequence: its request id and choice index.
pub type DraftKey = (u64, usize);

/// One sequence's request for proposals.
#[derive(Debug, Clone, Copy)]
pub struct DraftRequest<'a> {
    pub key: DraftKey,
    /// The sequence's tokens: prompt and output so far (the last one not yet in the target's
    /// KV cache either).
    pub tokens: &'a [u32],
    /// Proposals wanted (0: none, but the draft still catches up).
    pub k: usize,
    /// How many of `tokens` are the prompt (the rest was generated).
    pub prompt_len: usize,
    /// What the sequence might say next (prompt lookup), or nothing: the draft runs up to
    /// `k - 1` of these tokens in its first forward, and where its own next token agrees with
    /// the guess the draft has it without a forward of its own. The proposals are the draft's
    /// own tokens either way; a good guess only saves forwards.
    pub guess: &'a [u32],
}

struct DraftSequence {
    table: BlockTable,
    /// Positions whose K/V the draft holds: the sequence's `tokens[..base]`, then `proposed`.
    num_computed: usize,
    base: usize,
    proposed: Vec<u32>,
}

pub struct DraftModel {
    runner: ModelRunner,
    blocks: BlockManager,
    seqs: AHashMap<DraftKey, DraftSequence>,
    /// The token ids it may propose (None: all), ascending and disjoint: see
    /// [`SpeculativeConfig::draft_vocab`].
    ///
    /// [`SpeculativeConfig::draft_vocab`]: crate::spec::SpeculativeConfig::draft_vocab
    vocab: Option<Vec<Range<u32>>>,
    /// The most generated tokens one sequence caught up on in the last
    /// [`propose`](Self::propose).
    caught_up: usize,
    /// Forwards run so far.
    forwards: u64,
}

impl DraftModel {
    /// `blocks` must manage `runner`'s KV pool (same block count and size).
    pub fn new(runner: ModelRunner, blocks: BlockManager) -> Result<Self> {
        let cache = runner.cache();
        if cache.num_blocks() != blocks.num_blocks() || cache.block_size() != blocks.block_size() {
            return Err(EngineError::InvalidConfig(format!(
                "the draft's block manager ({} x {}) does not match its KV pool ({} x {})",
                blocks.num_blocks(),
                blocks.block_size(),
                cache.num_blocks(),
                cache.block_size()
            )));
        }
        Ok(Self {
            runner,
            blocks,
            seqs: AHashMap::new(),
            vocab: None,
            caught_up: 0,
            forwards: 0,
        })
    }

    /// The most generated tokens (prompts not counted) one sequence ran to catch up in the last
    /// [`propose`](Self::propose): [`STEADY_CATCH_UP`] or fewer while a sequence speculates
    /// step after step, more after a pause (the tokens decoded meanwhile).
    pub fn caught_up(&self) -> usize {
        self.caught_up
    }

    /// Forwards the draft has run so far (each a batch over the sequences it serves).
    pub fn forwards(&self) -> u64 {
        self.forwards
    }

    /// Proposes only the first `leading` token ids and the ids in `extra` (the added tokens:
    /// end of turn, tool-call markers), so that its head reads only their rows. A `leading`
    /// that covers the vocabulary changes nothing.
    pub fn with_vocabulary(mut self, leading: usize, extra: &[u32]) -> Self {
        let vocab = self.vocab_size();
        self.vocab = proposable(leading, extra, vocab);
        if let Some(ranges) = &self.vocab {
            tracing::info!(
                proposable = ranges.iter().map(|r| r.len()).sum::<usize>(),
                vocab,
                "the draft model proposes among the leading token ids and the added tokens"
            );
        }
        self
    }

    pub fn vocab_size(&self) -> usize {
        self.runner.model().config().vocab_size
    }

    /// Blocks of the draft's pool held by sequences (0 once every sequence is gone).
    pub fn used_blocks(&self) -> usize {
        self.blocks.stats().used_blocks
    }

    /// Forgets the sequences `live` says are gone, giving their blocks back.
    pub fn retain(&mut self, mut live: impl FnMut(DraftKey) -> bool) {
        let blocks = &mut self.blocks;
        self.seqs.retain(|&key, seq| {
            let keep = live(key);
            if !keep {
                blocks.free(&mut seq.table);
            }
            keep
        });
    }

    /// Up to `k` proposals per request, in request order (empty where the draft has nothing to
    /// say yet: still catching up on a prompt, or out of KV blocks). `catch_up_budget` caps the
    /// tokens run to catch up in this step, so a long prompt's draft prefill is spread over
    /// steps instead of stalling one.
    pub fn propose(
        &mut self,
        requests: &[DraftRequest<'_>],
        catch_up_budget: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let Self {
            runner,
            blocks,
            seqs,
            vocab,
            caught_up,
            forwards,
        } = self;
        *caught_up = 0;
        let mut proposals = vec![Vec::new(); requests.len()];
        // 1. Catch up: from what the draft holds of the sequence to its last token, then
        //    through the guess, if any (its rows' outputs check it).
        let mut budget = catch_up_budget;
        let mut copies = Vec::new();
        // (request, first position, tokens, reaches the last token, guess tokens run)
        let mut catch_up = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            if r.tokens.is_empty() || budget == 0 {
                continue;
            }
            let Some(seq) = Self::sync(blocks, seqs, r)? else {
                continue;
            };
            let start = seq.num_computed;
            let n = (r.tokens.len() - start).min(budget);
            let last = start + n == r.tokens.len();
            let guess = if last {
                r.guess.len().min(r.k.saturating_sub(1))
            } else {
                0
            };
            let written = match blocks.prepare_write(&mut seq.table, start, n + guess) {
                Ok(c) => Some((c, guess)),
                Err(EngineError::OutOfBlocks { .. }) if guess > 0 => {
                    match blocks.prepare_write(&mut seq.table, start, n) {
                        Ok(c) => Some((c, 0)),
                        Err(EngineError::OutOfBlocks { .. }) => None,
                        Err(e) => return Err(e),
                    }
                }
                Err(EngineError::OutOfBlocks { .. }) => None,
                Err(e) => return Err(e),
            };
            let Some((c, guess)) = written else {
                // Its pool is full: this sequence goes without proposals for now.
                if let Some(mut gone) = seqs.remove(&r.key) {
                    blocks.free(&mut gone.table);
                }
                continue;
            };
            copies.extend(c);
            budget -= n;
            *caught_up = (*caught_up).max((start + n).saturating_sub(start.max(r.prompt_len)));
            catch_up.push((i, start, n, last, guess));
        }
        if catch_up.is_empty() {
            return Ok(proposals);
        }
        runner.cache().copy_blocks(&copies)?;
        // Each chunk's input: the tokens to catch up on, then the guess it checks.
        let inputs: Vec<Cow<'_, [u32]>> = catch_up
            .iter()
            .map(|&(i, start, n, _, guess)| {
                let r = &requests[i];
                let tokens = &r.tokens[start..start + n];
                if guess > 0 {
                    Cow::Owned([tokens, &r.guess[..guess]].concat())
                } else {
                    Cow::Borrowed(tokens)
                }
            })
            .collect();
        let chunks: Vec<SequenceChunk<'_>> = catch_up
            .iter()
            .zip(&inputs)
            .map(|(&(i, start, _, last, guess), input)| {
                let r = &requests[i];
                SequenceChunk {
                    tokens: input,
                    num_cached: start,
                    block_table: &seqs[&r.key].table,
                    logits: match (last && r.k > 0, guess) {
                        (false, _) => LogitsWanted::None,
                        (true, 0) => LogitsWanted::Last,
                        (true, g) => LogitsWanted::LastN(g + 1),
                    },
                }
            })
            .collect();
        let first = greedy(runner, &chunks, vocab.as_deref())?;
        *forwards += 1;
        let mut drafting = Vec::new(); // requests still proposing
        let mut first = first.into_iter();
        for &(i, start, n, last, guess) in &catch_up {
            let r = &requests[i];
            let seq = seqs.get_mut(&r.key).ok_or_else(|| missing(r.key))?;
            seq.base = start + n;
            seq.num_computed = seq.base;
            if last && r.k > 0 {
                // The draft's own tokens, as far as the guess agrees with them: each row
                // after a guessed token that was the draft's own is the draft's next token.
                let mut agreeing = true;
                for g in 0..=guess {
                    let token = first.next().ok_or_else(|| missing(r.key))?;
                    if agreeing {
                        seq.proposed.push(token);
                        agreeing = g < guess && r.guess[g] == token;
                        seq.num_computed += usize::from(agreeing);
                    }
                }
                if seq.proposed.len() < r.k {
                    drafting.push(i);
                }
            }
        }
        // 2. One forward per further proposal, over the sequences that want it.
        loop {
            let mut copies = Vec::new();
            let mut ready = Vec::with_capacity(drafting.len());
            for &i in &drafting {
                let seq = seqs
                    .get_mut(&requests[i].key)
                    .ok_or_else(|| missing(requests[i].key))?;
                match blocks.prepare_write(&mut seq.table, seq.num_computed, 1) {
                    Ok(c) => {
                        copies.extend(c);
                        ready.push(i);
                    }
                    // Out of blocks: this sequence proposes what it has.
                    Err(EngineError::OutOfBlocks { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            drafting = ready;
            if drafting.is_empty() {
                break;
            }
            runner.cache().copy_blocks(&copies)?;
            let chunks: Vec<SequenceChunk<'_>> = drafting
                .iter()
                .map(|&i| {
                    let seq = &seqs[&requests[i].key];
                    SequenceChunk {
                        tokens: &seq.proposed[seq.proposed.len() - 1..],
                        num_cached: seq.num_computed,
                        block_table: &seq.table,
                        logits: LogitsWanted::Last,
                    }
                })
                .collect();
            let next = greedy(runner, &chunks, vocab.as_deref())?;
            *forwards += 1;
            for (&i, token) in drafting.iter().zip(next) {
                let seq = seqs
                    .get_mut(&requests[i].key)
                    .ok_or_else(|| missing(requests[i].key))?;
                seq.num_computed += 1;
                seq.proposed.push(token);
            }
            drafting.retain(|&i| seqs[&requests[i].key].proposed.len() < requests[i].k);
        }
        for (i, r) in requests.iter().enumerate() {
            if let Some(seq) = seqs.get(&r.key) {
                proposals[i] = seq.proposed.clone();
            }
        }
        Ok(proposals)
    }

    /// The draft's state of `r`'s sequence, brought up to date with what the target accepted
    /// (created, with prefix-cache hits, on first sight). None when the pool has no room.
    fn sync<'s>(
        blocks: &mut BlockManager,
        seqs: &'s mut AHashMap<DraftKey, DraftSequence>,
        r: &DraftRequest<'_>,
    ) -> Result<Option<&'s mut DraftSequence>> {
        let len = r.tokens.len();
        if let Some(seq) = seqs.get_mut(&r.key) {
            if len >= seq.base {
                // Proposals the sequence now has are K/V the draft may keep.
                let accepted = seq
                    .proposed
                    .iter()
                    .zip(&r.tokens[seq.base..])
                    .take_while(|(p, t)| p == t)
                    .count();
                // The last token must always be run: its output is the next proposal.
                seq.num_computed = seq.num_computed.min(seq.base + accepted).min(len - 1);
                seq.base = seq.num_computed;
                seq.proposed.clear();
                blocks.commit_full_blocks(&seq.table, &r.tokens[..seq.num_computed])?;
                return Ok(seqs.get_mut(&r.key));
            }
            // Shorter than what the draft saw: not the same sequence any more; start over.
            if let Some(mut stale) = seqs.remove(&r.key) {
                blocks.free(&mut stale.table);
            }
        }
        let (table, cached) = match blocks.allocate_prompt(r.tokens) {
            Ok(allocated) => allocated,
            Err(EngineError::OutOfBlocks { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        seqs.insert(
            r.key,
            DraftSequence {
                table,
                num_computed: cached,
                base: cached,
                proposed: Vec::new(),
            },
        );
        Ok(seqs.get_mut(&r.key))
    }
}

/// The ids `0..leading` and those of `extra` past them, as ranges; None when that is the whole
/// vocabulary of `vocab` ids.
fn proposable(leading: usize, extra: &[u32], vocab: usize) -> Option<Vec<Range<u32>>> {
    if leading >= vocab {
        return None;
    }
    let mut ranges = Vec::with_capacity(extra.len() + 1);
    ranges.push(0..leading as u32);
    let mut extra: Vec<u32> = extra
        .iter()
        .copied()
        .filter(|&id| id as usize >= leading && (id as usize) < vocab)
        .collect();
    extra.sort_unstable();
    extra.dedup();
    ranges.extend(extra.into_iter().map(|id| id..id + 1));
    Some(ranges)
}

/// Sets every logit outside `ranges` (ascending and disjoint, as [`proposable`] makes them) to
/// -inf, a run of the row at a time.
fn mask_outside(row: &mut [f32], ranges: &[Range<u32>]) {
    let len = row.len();
    let mut next = 0;
    for r in ranges {
        let start = (r.start as usize).min(len);
        row[next.min(start)..start].fill(f32::NEG_INFINITY);
        next = next.max((r.end as usize).min(len));
    }
    row[next..].fill(f32::NEG_INFINITY);
}

fn missing(key: DraftKey) -> EngineError {
    EngineError::InvalidBatch(format!("draft state of sequence {key:?} vanished mid-step"))
}

/// Runs `chunks` and returns the greedy token among `vocab` (all ids when None) of each row
/// asked for: found by the output head where it can (no logits written, and only `vocab`'s
/// rows of the head read), else the argmax of the logits (lowest id on ties).
fn greedy(
    runner: &mut ModelRunner,
    chunks: &[SequenceChunk<'_>],
    vocab: Option<&[Range<u32>]>,
) -> Result<Vec<u32>> {
    let wanted = chunks.iter().any(|c| c.logits != LogitsWanted::None);
    if wanted && runner.model().head_has_argmax() {
        return runner.execute_argmax_within(chunks, vocab);
    }
    let logits = runner.execute(chunks)?;
    Ok(logits
        .to_vec2::<f32>()?
        .into_iter()
        .map(|mut row| {
            // The sampler's argmax takes NaN-free rows (NaN counts as impossible there too).
            row.iter_mut()
                .filter(|x| x.is_nan())
                .for_each(|x| *x = f32::NEG_INFINITY);
            if let Some(vocab) = vocab {
                mask_outside(&mut row, vocab);
            }
            argmax(&row)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{mask_outside, proposable};

    #[test]
    fn proposable_ids_are_the_leading_ones_and_the_added_ones_past_them() {
        // Added ids inside the prefix add nothing; ids past the vocabulary are dropped.
        assert_eq!(
            proposable(100, &[5, 151645, 150, 150, 151643, 200_000], 151936),
            Some(vec![0..100, 150..151, 151643..151644, 151645..151646])
        );
        assert_eq!(proposable(151936, &[3], 151936), None, "the whole vocabulary");
        assert_eq!(proposable(0, &[2], 10), Some(vec![0..0, 2..3]));
    }

    #[test]
    fn logits_outside_the_proposable_ids_are_masked() {
        let inf = f32::NEG_INFINITY;
        let mut row: Vec<f32> = (0..10).map(|i| i as f32).collect();
        mask_outside(&mut row, &proposable(3, &[5, 7], 10).unwrap());
        assert_eq!(row, [0.0, 1.0, 2.0, inf, inf, 5.0, inf, 7.0, inf, inf]);
        let mut row = vec![1.0; 4];
        mask_outside(&mut row, &[0..0, 2..3]);
        assert_eq!(row, [inf, inf, 1.0, inf]);
    }
}
