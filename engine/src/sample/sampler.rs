//! Turns a batch of next-token logits into tokens, each row under its own sequence's
//! [`SamplingParams`].
//!
//! Per row, in vLLM's order: logit_bias, then the penalties (repetition on prompt + output,
//! frequency and presence on the output only, as OpenAI defines them), then min_tokens (the ids
//! that would end the sequence are masked), then either the argmax (temperature 0) or:
//! temperature, top_k, top_p, min_p (the order of vLLM's V0 sampler and of Hugging Face's
//! warpers; top_p and min_p do not commute) and one draw from what is left.
//!
//! Reproducibility: every sequence owns its RNG, seeded from `seed` (or a fresh random seed), and
//! a sampled row draws exactly one uniform from it; greedy rows draw none. A row's token therefore
//! depends only on its logits and its own history, never on the rest of the batch.
//!
//! Logprobs are those of the raw model distribution, `log_softmax(logits)` before any of the
//! processing above: vLLM's default (`logprobs_mode = "raw_logprobs"`). A token forced by a
//! logit_bias thus reports how likely the model found it, not 0.
//!
//! Everything runs on the CPU over plain `f32` rows: for a 49k vocabulary that is a few passes
//! of 200 KB per row, small beside a forward; rows run in parallel (rayon, in `verify`). Nothing sorts:
//! top_k and top_p use selection (quickselect), top_logprobs a 20-entry buffer.

use ahash::{AHashMap, AHashSet};
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Result;
use crate::sample::constraint::Constraint;
use crate::sample::params::{SamplingParams, LOGIT_BIAS_LIMIT};

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    /// The token's log-probability under the raw model distribution; `None` unless the request
    /// asked for logprobs (computing it costs a pass over the vocabulary).
    pub logprob: Option<f32>,
    /// The `top_logprobs` most likely tokens of the raw distribution, most likely first (ties:
    /// lower id first). The chosen token need not be among them.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// A sequence's sampling state: its parameters, its RNG and what it has generated so far (the
/// penalties and min_tokens depend on it).
#[derive(Debug, Clone)]
pub struct SequenceSamplingState {
    params: SamplingParams,
    rng: StdRng,
    /// Ids masked while fewer than `min_tokens` tokens have been generated: those that would end
    /// the sequence (stop_token_ids, and EOS unless ignore_eos, where EOS stops nothing).
    stop_ids: Vec<u32>,
    /// Distinct prompt ids; only collected when a repetition penalty needs them.
    prompt_tokens: AHashSet<u32>,
    /// Occurrences of each id in the output (frequency and presence penalties).
    output_counts: AHashMap<u32, u32>,
    num_output_tokens: usize,
    /// The grammar the output must follow, and the id that ends the sequence once it is done.
    constraint: Option<(Constraint, u32)>,
}

impl SequenceSamplingState {
    /// `params` should have passed [`SamplingParams::validate`]; out-of-vocabulary ids are
    /// skipped here anyway rather than trusted.
    pub fn new(params: SamplingParams, prompt: &[u32], eos_token_ids: &[u32]) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(eos_token_ids);
        }
        let prompt_tokens = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            AHashSet::new()
        };
        Self {
            params,
            rng,
            stop_ids,
            prompt_tokens,
            output_counts: AHashMap::new(),
            num_output_tokens: 0,
            constraint: None,
        }
    }

    /// Constrains what this sequence samples from now on; `eos` ends it if the grammar fails.
    pub fn set_constraint(&mut self, constraint: Constraint, eos: u32) {
        self.constraint = Some((constraint, eos));
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn num_output_tokens(&self) -> usize {
        self.num_output_tokens
    }

    /// Samples the next token from one row of logits and records it as generated. `logits` is
    /// used as scratch space and left holding unspecified values.
    pub fn sample(&mut self, logits: &mut [f32]) -> SampledToken {
        // A NaN (a broken model or kernel) would poison every comparison below; it can never be
        // the right answer, so it counts as impossible.
        for x in logits.iter_mut() {
            // Written as a select so that it vectorises.
            *x = if x.is_nan() { f32::NEG_INFINITY } else { *x };
        }
        let raw = self
            .params
            .logprobs
            .then(|| RawLogprobs::new(logits, self.params.top_logprobs));
        self.apply_logit_bias(logits);
        self.apply_penalties(logits);
        match &mut self.constraint {
            // The grammar alone decides when the output may end.
            Some((constraint, eos)) if constraint.is_active() => constraint.mask(logits, *eos),
            _ => self.apply_min_tokens(logits),
        }
        let token = if self.params.is_greedy() {
            argmax(logits)
        } else {
            self.sample_random(logits)
        };
        if let Some((constraint, _)) = &mut self.constraint {
            constraint.advance(token);
        }
        self.record(token);
        match raw {
            Some(raw) => SampledToken {
                token,
                logprob: Some(raw.logprob(token)),
                top_logprobs: raw.top,
            },
            None => SampledToken {
                token,
                logprob: None,
                top_logprobs: Vec::new(),
            },
        }
    }

    /// Whether the next token is the plain argmax of the raw logits: greedy, and nothing that
    /// [`sample`](Self::sample) would change the logits with or report from them (logprobs,
    /// logit bias, penalties, a grammar, a `min_tokens` still masking the stop ids). The engine
    /// then lets the output head find the token ([`take_greedy`](Self::take_greedy)).
    pub fn argmax_suffices(&self) -> bool {
        let p = &self.params;
        p.is_greedy()
            && !p.logprobs
            && p.logit_bias.is_empty()
            && p.repetition_penalty == 1.0
            && p.frequency_penalty == 0.0
            && p.presence_penalty == 0.0
            && self.constraint.is_none()
            && (self.num_output_tokens >= p.min_tokens || self.stop_ids.is_empty())
    }

    /// Records `token`, found by the head as the argmax of this step's logits, as
    /// [`sample`](Self::sample) would have when [`argmax_suffices`](Self::argmax_suffices).
    pub fn take_greedy(&mut self, token: u32) -> SampledToken {
        self.record(token);
        SampledToken {
            token,
            logprob: None,
            top_logprobs: Vec::new(),
        }
    }

    fn record(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
        self.num_output_tokens += 1;
    }

    fn apply_logit_bias(&self, logits: &mut [f32]) {
        for (&id, &bias) in &self.params.logit_bias {
            if let Some(x) = logits.get_mut(id as usize) {
                *x += bias.clamp(-LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT);
            }
        }
    }

    /// vLLM's `apply_penalties`: repetition first (once per distinct id seen in prompt or
    /// output), then `count * frequency_penalty`, then `presence_penalty`.
    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            let seen = self.prompt_tokens.iter().chain(
                self.output_counts
                    .keys()
                    .filter(|id| !self.prompt_tokens.contains(*id)),
            );
            for &id in seen {
                if let Some(x) = logits.get_mut(id as usize) {
                    // Dividing a negative logit would raise it: penalising always lowers.
                    if *x > 0.0 {
                        *x /= r;
                    } else {
                        *x *= r;
                    }
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&id, &count) in &self.output_counts {
                if let Some(x) = logits.get_mut(id as usize) {
                    *x -= p.frequency_penalty * count as f32;
                    *x -= p.presence_penalty;
                }
            }
        }
    }

    fn apply_min_tokens(&self, logits: &mut [f32]) {
        if self.num_output_tokens < self.params.min_tokens {
            for &id in &self.stop_ids {
                if let Some(x) = logits.get_mut(id as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Temperature, the filters, then one uniform draw by inverse CDF over what survives.
    fn sample_random(&mut self, logits: &mut [f32]) -> u32 {
        let t = self.params.temperature;
        if t != 1.0 {
            for x in logits.iter_mut() {
                *x /= t;
            }
        }
        // Drawn before anything can return early, so every sampled step consumes exactly one.
        let u: f64 = self.rng.random();
        let max = max_value(logits);
        if !max.is_finite() {
            // Everything masked (or an infinite logit): there is no distribution to draw from.
            return argmax(logits);
        }
        // Unnormalised probabilities in place; the most likely token weighs exactly 1.
        let mut total = 0f64;
        for x in logits.iter_mut() {
            *x = (*x - max).exp();
            total += *x as f64;
        }
        let p = &self.params;
        let filtered = (p.top_k > 0 && p.top_k < logits.len()) || p.top_p < 1.0 || p.min_p > 0.0;
        if !filtered {
            return pick(logits.iter().enumerate().map(|(i, &w)| (i as u32, w)), total, u);
        }
        let candidates = filter(p, logits, total);
        let total = candidates.iter().map(|&(_, w)| w as f64).sum();
        pick(candidates.into_iter(), total, u)
    }
}

/// Samples one token per row of `logits` (`(rows, vocab)`, any float dtype, any device) for the
/// sequence of the same index, and records it in that sequence's state: verification
/// ([`sample_and_verify`](crate::sample::verify::sample_and_verify)) with nothing proposed.
pub fn sample_batch(logits: &Tensor, seqs: &mut [&mut SequenceSamplingState]) -> Result<Vec<SampledToken>> {
    let nothing: Vec<&[u32]> = vec![&[]; seqs.len()];
    let rows = crate::sample::verify::sample_and_verify(logits, seqs, &nothing)?;
    Ok(rows.into_iter().flatten().collect())
}

/// The raw distribution's log-normaliser and top entries, taken before any processing.
struct RawLogprobs {
    /// The row as the model produced it (the chosen token is known only at the end).
    logits: Vec<f32>,
    log_normaliser: f32,
    top: Vec<(u32, f32)>,
}

impl RawLogprobs {
    fn new(logits: &[f32], n: usize) -> Self {
        let max = max_value(logits);
        let log_normaliser = if max.is_finite() {
            let sum: f64 = logits.iter().map(|&x| (x - max).exp() as f64).sum();
            max + sum.ln() as f32
        } else {
            // No finite logit: report the raw values (-inf) rather than NaN from inf - inf.
            0.0
        };
        let top = top_n(logits, n)
            .into_iter()
            .map(|(id, x)| (id, x - log_normaliser))
            .collect();
        Self {
            logits: logits.to_vec(),
            log_normaliser,
            top,
        }
    }

    fn logprob(&self, token: u32) -> f32 {
        self.logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&x| x - self.log_normaliser)
    }
}

/// A prompt token's logprob given the tokens before it, with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// The logprob of `token` in one row of raw logits, and the row's `top` most likely tokens
/// (the distribution a prompt position predicts for the next prompt token).
pub fn token_logprobs(logits: &[f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let raw = RawLogprobs::new(logits, top);
    (raw.logprob(token), raw.top)
}

/// Heaviest first; equal weights by lower id, so every selection below is deterministic.
fn by_weight_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// top_k, then top_p, then min_p over unnormalised weights (max weight 1) summing to `total`.
/// Returns the surviving `(id, weight)` pairs, in no particular (but deterministic) order.
fn filter(p: &SamplingParams, weights: &[f32], total: f64) -> Vec<(u32, f32)> {
    let top_k = p.top_k > 0 && p.top_k < weights.len();
    // Without top_k, top_p alone decides which light tokens survive, and tokens lighter than
    // (1 - top_p) * total / (2 * len) hold less than half the mass top_p excludes between them:
    // the nucleus lies among the heavier ones. On a peaked distribution that leaves a handful.
    let floor = if !top_k && p.top_p < 1.0 {
        ((1.0 - p.top_p as f64) * total / (2 * weights.len()) as f64) as f32
    } else {
        0.0
    };
    let mut candidates: Vec<(u32, f32)> = weights
        .iter()
        .enumerate()
        .filter(|(_, &w)| w > 0.0 && w >= floor)
        .map(|(i, &w)| (i as u32, w))
        .collect();
    if top_k && p.top_k < candidates.len() {
        candidates.select_nth_unstable_by(p.top_k - 1, by_weight_desc);
        candidates.truncate(p.top_k);
    }
    if p.top_p < 1.0 {
        let mass = if top_k {
            candidates.iter().map(|&(_, w)| w as f64).sum()
        } else {
            total
        };
        let end = nucleus_len(&mut candidates, p.top_p as f64 * mass);
        candidates.truncate(end);
    }
    if p.min_p > 0.0 {
        // Relative to the most likely token, whose weight is 1 and which the filters above keep.
        candidates.retain(|&(_, w)| w >= p.min_p);
    }
    candidates
}

/// Reorders `c` so that its first n entries are the nucleus: the shortest heaviest-first prefix
/// (ties by id) weighing at least `target`; returns n. A quickselect on mass rather than a sort:
/// each round splits the undecided range at its median and keeps the half that holds the
/// boundary, O(len) expected where a sort of a flat 49k-token distribution costs milliseconds.
fn nucleus_len(c: &mut [(u32, f32)], target: f64) -> usize {
    // Invariant: c[..lo] is in the nucleus and weighs less than `target`; the boundary (the
    // nucleus' last token) lies in c[lo..hi], every entry of which is lighter than c[..lo] and
    // heavier than c[hi..].
    let (mut lo, mut hi) = (0, c.len());
    let mut need = target;
    while hi - lo > 1 {
        // At most hi - 2, so that both branches shrink the range.
        let mid = lo + (hi - lo - 1) / 2;
        c[lo..hi].select_nth_unstable_by(mid - lo, by_weight_desc);
        let heavy: f64 = c[lo..=mid].iter().map(|&(_, w)| w as f64).sum();
        if heavy >= need {
            hi = mid + 1;
        } else {
            need -= heavy;
            lo = mid + 1;
        }
    }
    // One undecided entry left: it is the boundary. (If rounding left the whole mass short of
    // `target`, that is the lightest token and everything is kept.)
    hi
}

/// Inverse CDF: the first token whose cumulative weight exceeds `u * total`. `total` must be
/// summed in the same order, so the walk always ends on a token of positive weight.
fn pick(weights: impl Iterator<Item = (u32, f32)>, total: f64, u: f64) -> u32 {
    let target = u * total;
    let mut cumulative = 0f64;
    let mut last = 0;
    for (id, w) in weights.filter(|&(_, w)| w > 0.0) {
        cumulative += w as f64;
        last = id;
        if cumulative > target {
            return id;
        }
    }
    // Only reached when rounding put `target` at `total`: the last token is the right answer.
    last
}

/// Index of the largest value; the lowest index wins ties (numpy's and torch's argmax). NaN-free
/// input (see [`SequenceSamplingState::sample`]); 0 for an empty or all -inf row.
pub fn argmax(xs: &[f32]) -> u32 {
    let max = max_value(xs);
    xs.iter().position(|&x| x == max).unwrap_or(0) as u32
}

/// The largest value (-inf when empty), NaN-free input. Eight independent lanes so that the
/// compiler can use vector max instructions; a single running max is a serial dependency chain.
fn max_value(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    rest.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The `n` largest values with their indices, largest first, lower index first among equals.
/// One pass with a small sorted buffer: `n` is at most 20, the row 10^4-10^5 long, and most
/// values are rejected by a single comparison with the current n-th.
fn top_n(xs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for (i, &x) in xs.iter().enumerate() {
        if best.len() == n && best.last().is_some_and(|&(_, v)| x <= v) {
            continue;
        }
        // After every equal value: among equals the earlier (lower) index stays first.
        let at = best.partition_point(|&(_, v)| v >= x);
        best.insert(at, (i as u32, x));
        best.truncate(n);
    }
    best
}

#[cfg(test)]
mod tests;
