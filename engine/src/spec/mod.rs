//! Speculative decoding's proposers: what a sequence might say next, checked by the target model
//! in one forward (the verification is the sampler's: [`crate::sample::verify`]).
//!
//! - [`ngram`]: prompt lookup. The tokens that followed the latest earlier occurrence of the
//!   sequence's last n tokens; free, and right whenever the output quotes its context.
//! - [`draft`]: a small model sharing the target's vocabulary, with its own paged KV pool,
//!   proposing its greedy continuation.
//!
//! Both propose point masses (one token per position, no distribution), which is what lets the
//! verification emit exactly the tokens plain decoding would.

pub mod draft;
pub mod ngram;

/// Where proposals come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeculativeMethod {
    /// Prompt lookup over prompt and output: the longest suffix of `max..=min` tokens found
    /// earlier proposes what followed it.
    Ngram { min: usize, max: usize },
    /// A draft model, given to the engine beside the target
    /// ([`Engine::with_draft`](crate::engine::Engine::with_draft)).
    DraftModel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculativeConfig {
    pub method: SpeculativeMethod,
    /// The most tokens proposed per sequence and step (vLLM's `num_speculative_tokens`); each
    /// sequence proposes fewer while its proposals keep failing.
    pub num_speculative_tokens: usize,
    /// Speculation is off in a step decoding more sequences than this: a batch that large
    /// already keeps the matmuls busy, and verifying proposals would only add rows.
    pub max_batch: usize,
    /// Speculate only where it is measured to pay: per batch size, steps with and without
    /// speculation are timed and the faster is followed (the engine's `spec_payoff`). Off:
    /// every eligible step speculates (tests of the mechanism).
    pub measure_payoff: bool,
    /// A draft model proposes only among the first `draft_vocab` token ids and the added
    /// tokens (end of turn, tool-call markers): its output head then reads that share of its
    /// rows. BPE vocabularies are in merge order, most frequent first, so the tokens left out
    /// are rarely the next one; when one is, the proposal fails and the target's token is
    /// emitted as always. Output never depends on it. None: the whole vocabulary (the default:
    /// on Qwen2.5-Coder-0.5B drafting for the 1.5B, 32768 ids cost 5 points of acceptance and
    /// saved no measurable time; see docs/speculative.md).
    pub draft_vocab: Option<usize>,
    /// With a draft model: prompt lookup over n-grams of `min..=max` tokens guesses the draft's
    /// next tokens, and the draft checks the guess in the forward it runs anyway (its first,
    /// which catches it up on the sequence, takes the guessed tokens as further rows). As far
    /// as the guess agrees with the draft's own greedy tokens, those proposals need no forward
    /// of their own. The proposals are the draft's either way, so acceptance and output do not
    /// change; where the text repeats (edits, summaries, quotes) the draft runs fewer forwards,
    /// and a wrong guess costs its rows in one draft forward. None: no guesses (the default
    /// for [`Self::ngram`], which has no draft; [`Self::draft_model`] guesses).
    pub draft_lookup: Option<(usize, usize)>,
}

impl SpeculativeConfig {
    /// Three proposals and the token before them are four rows: one group of the CPU kernels'
    /// four-row activation blocks (`kernels::cpu::acts`), so a fifth row would start a second.
    pub const DEFAULT_NUM_SPECULATIVE_TOKENS: usize = 3;
    /// Above this many decodes no step speculates; below it, the measured payoff decides.
    pub const DEFAULT_MAX_BATCH: usize = 16;
    /// The n-grams a draft model's guesses come from ([`draft_lookup`](Self::draft_lookup)):
    /// prompt lookup's own.
    pub const DRAFT_LOOKUP: Option<(usize, usize)> = Some((2, 4));

    pub fn ngram() -> Self {
        Self {
            method: SpeculativeMethod::Ngram { min: 2, max: 4 },
            num_speculative_tokens: Self::DEFAULT_NUM_SPECULATIVE_TOKENS,
            max_batch: Self::DEFAULT_MAX_BATCH,
            measure_payoff: true,
            draft_vocab: None,
            draft_lookup: None,
        }
    }

    /// A draft model, checking guesses from prompt lookup ([`Self::DRAFT_LOOKUP`]).
    pub fn draft_model() -> Self {
        Self {
            method: SpeculativeMethod::DraftModel,
            draft_lookup: Self::DRAFT_LOOKUP,
            ..Self::ngram()
        }
    }
}
