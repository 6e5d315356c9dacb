//! Whether speculation pays on this machine, for this model pair, at this batch size: learned
//! from the steps themselves, so that speculation never makes serving slower.
//!
//! Verifying `k` proposals costs `k` more rows in the target's forward (and `k` draft forwards).
//! Where a decode step is bound by reading the weights (a GPU, a CPU with many cores per memory
//! channel), extra rows are nearly free and every accepted proposal is a token gained. Where it is
//! bound by arithmetic (this workplace's 2-core CPU, where a 4-row step of the 1.5B model costs
//! about 1.7 one-row steps), the same proposals can cost more than they bring. The crossover
//! depends on the hardware, the pair of models, the batch and the text, so it is measured, not
//! configured: per batch-size bucket, tokens emitted per second of step time with speculation and
//! without (decayed sums of tokens over decayed sums of seconds). A step follows whichever is
//! faster, switching only when the other is ahead by a margin (speculation's steps emit 1 to
//! `k + 1` tokens, so its recent rate swings), and now and then tries the other for a few steps,
//! measured afresh, so a change (another kind of prompt, a better draft) is noticed; the tries
//! come further apart while they change nothing.
//!
//! Only steps that decode and nothing else are measured: a prefill chunk's time says nothing
//! about speculation. The tokens do not depend on the choice (verification emits what plain
//! decoding would), so this changes speed only.

/// Decodes per step in each bucket: 1, 2, 3-4, 5-8, more.
const BUCKETS: usize = 5;
/// Steps between tries of the option that is currently slower, at first; each try that leaves
/// the choice as it was doubles the wait, up to [`EXPLORE_MAX`], and a try that changes it
/// starts again from here. So a loser is re-checked often at first and rarely once it keeps
/// losing (a try of speculation in a busy batch costs the draft's catch-up of every sequence).
const EXPLORE_EVERY: u64 = 16;
/// The longest wait between tries, unless a try costs more (see [`EXPLORE_SHARE`]).
const EXPLORE_MAX: u64 = 256;
/// The most time tries may lose a bucket whose choice they keep confirming. A try of
/// speculation after a pause first catches the draft up on every sequence (all they decoded
/// meanwhile, prompts included): at four sequences over a second of draft prefill, more than
/// ten plain steps. Its measured steps then lose time too, where the option tried is the slower
/// one (prompt lookup at four sequences on two cores: three steps at 0.74x the plain rate, with
/// no catch-up at all). Both (see [`time_lost`]) set the wait before the next try to at
/// least `cost / (EXPLORE_SHARE * a step's seconds)` steps.
const EXPLORE_SHARE: f64 = 0.03;
/// The longest wait a try's cost can set.
const EXPLORE_COSTLY_MAX: u64 = 8192;
/// Steps a try lasts: a draft's first speculative step after a pause also catches up on the
/// pause and is not measured (see `Speculator::propose`), so a try of one step would teach
/// nothing.
const EXPLORE_STEPS: u32 = 3;
/// Measurements of an option before its average is trusted.
const WARM_UP: u32 = 4;
/// Weight left to the older measurements of an average at each new one: a memory of ~30 steps,
/// about one request at one stream, so that a draft's catch-up on a prompt (one long step) counts
/// for what it costs over a request, not as the whole of speculation's rate for the next few
/// steps. A change still shows at once: a try measures its option afresh.
const DECAY: f64 = 0.97;
/// How far the other option must be ahead before a bucket switches to it: speculation's steps
/// emit 1 to `k + 1` tokens, so its recent rate swings; a switch on a few short steps would
/// cost the gain of every step until the next try.
const MARGIN: f64 = 0.1;

/// Tokens per second of one option: decayed sums of tokens and of seconds, so that a step
/// weighs by its length (the rate of a run of steps is its tokens over its time, not the mean
/// of its steps' rates).
#[derive(Debug, Clone, Copy, Default)]
struct Average {
    tokens: f64,
    seconds: f64,
    /// Decayed count of the steps (for a step's mean seconds).
    steps: f64,
    samples: u32,
}

impl Average {
    fn add(&mut self, tokens: f64, seconds: f64) {
        self.tokens = DECAY * self.tokens + tokens;
        self.seconds = DECAY * self.seconds + seconds;
        self.steps = DECAY * self.steps + 1.0;
        self.samples = self.samples.saturating_add(1);
    }

    fn step_seconds(&self) -> Option<f64> {
        (self.steps > 0.0).then(|| self.seconds / self.steps)
    }

    /// Forgets the measurements (not their count): a try measures its option afresh, so that
    /// a change since its last try shows in full.
    fn restart(&mut self) {
        self.tokens = 0.0;
        self.seconds = 0.0;
        self.steps = 0.0;
    }

    fn value(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tokens / self.seconds
        } else {
            0.0
        }
    }
}

/// Seconds lost by the steps in `tried` against the rate of `standing`: what the same tokens
/// would have taken at that rate. `tried` holds exactly the try's steps (a try restarts the
/// option it measures), or the warm-up's.
fn time_lost(tried: &Average, standing: &Average) -> f64 {
    let rate = standing.value();
    if rate > 0.0 {
        (tried.seconds - tried.tokens / rate).max(0.0)
    } else {
        0.0
    }
}

/// The steps to wait before the next try after one that cost `cost` seconds, with steps of
/// `step` seconds: enough that such tries take at most [`EXPLORE_SHARE`] of the time.
fn costly_wait(cost: f64, step: f64) -> u64 {
    ((cost / (EXPLORE_SHARE * step)).ceil() as u64).min(EXPLORE_COSTLY_MAX)
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Tokens per second of decode-only steps, with and without speculation.
    with: Average,
    without: Average,
    /// Steps between tries now, and until the next one.
    wait: u64,
    countdown: u64,
    /// Steps left in the current try, and the choice it is a try against.
    trying: u32,
    tried_against: bool,
    /// A try has ended and its outcome is not yet weighed.
    review: bool,
    /// The choice outside tries, which the other option must beat by [`MARGIN`].
    speculating: bool,
    /// Seconds of steps that caught the draft up after a pause, since the last review.
    catch_up_seconds: f64,
    /// The shortest wait the last costly try allows (see [`EXPLORE_SHARE`]).
    min_wait: u64,
    /// The warm-up measures plain decoding only: a bucket of fewer decodes found speculation
    /// slower (see [`Payoff::choose`]).
    inherits_loss: bool,
}

/// The tokens-per-second averages of one bucket (for logs and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PayoffEstimate {
    pub max_decodes: usize,
    pub with: f64,
    pub without: f64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Payoff {
    buckets: [Bucket; BUCKETS],
}

impl Payoff {
    fn bucket(decodes: usize) -> usize {
        match decodes {
            0 | 1 => 0,
            2 => 1,
            3 | 4 => 2,
            5..=8 => 3,
            _ => 4,
        }
    }

    /// A sequence has started decoding in a step of `decodes`: another text, on which the
    /// option that lost may win (speculation off through a chat answer, then a summary that
    /// quotes its input), so the next try comes as soon as at first, or as a costly try allows.
    pub fn new_text(&mut self, decodes: usize) {
        let b = &mut self.buckets[Self::bucket(decodes)];
        if b.wait > 0 {
            b.wait = EXPLORE_EVERY.max(b.min_wait);
            b.countdown = b.countdown.min(b.wait);
        }
    }

    /// Whether a step decoding `decodes` sequences, and doing nothing else, should speculate:
    /// such a step is measured, so this is where the warm-up and the tries happen.
    ///
    /// A bucket warms up by measuring both options, speculation first, unless a bucket of fewer
    /// decodes has found it slower: more decodes only make a step's extra rows dearer (the
    /// matmuls nearer their arithmetic bound, the draft's catch-up longer), so it starts
    /// without, as sure to lose, and leaves speculation to its tries (no sooner than the
    /// smaller bucket's). A warm-up of speculation costs the draft's catch-up on every
    /// sequence: at sixteen, seconds.
    pub fn choose(&mut self, decodes: usize) -> bool {
        let index = Self::bucket(decodes);
        let (smaller, rest) = self.buckets.split_at_mut(index);
        let b = &mut rest[0];
        if b.wait == 0 {
            if b.with.samples == 0 {
                let lost = smaller.iter().filter(|s| s.wait > 0 && !s.speculating);
                b.inherits_loss = lost.clone().next().is_some();
                b.min_wait = lost.map(|s| s.min_wait).max().unwrap_or(0);
            }
            if b.with.samples < WARM_UP && !b.inherits_loss {
                return true;
            }
            if b.without.samples < WARM_UP {
                return false;
            }
        }
        let (with, without) = (b.with.value(), b.without.value());
        let better = if b.speculating {
            with >= without * (1.0 - MARGIN)
        } else {
            with > without * (1.0 + MARGIN)
        };
        if b.trying > 0 {
            b.trying -= 1;
            b.review = b.trying == 0;
            return !b.tried_against;
        }
        if b.review {
            // A try has ended (its last step measured): wait longer if it changed nothing, and
            // long enough that the catch-ups tries cost stay a small share of the time.
            b.review = false;
            b.wait = if better == b.tried_against {
                (b.wait * 2).min(EXPLORE_MAX)
            } else {
                EXPLORE_EVERY
            };
            let confirmed = better == b.tried_against;
            let (tried, standing) = if b.tried_against {
                (&b.without, &b.with)
            } else {
                (&b.with, &b.without)
            };
            let cost = b.catch_up_seconds + time_lost(tried, standing);
            b.min_wait = standing
                .step_seconds()
                .filter(|&s| s > 0.0 && confirmed)
                .map_or(0, |step| costly_wait(cost, step));
            b.wait = b.wait.max(b.min_wait);
            b.catch_up_seconds = 0.0;
            b.countdown = b.wait;
        }
        b.speculating = better;
        if b.wait == 0 {
            // The warm-up is over. It was the first try of the option that lost: where that is
            // speculation, the time its steps lost (the draft's first catch-up on every
            // sequence's prompt is in them) sets the wait before the next try, as a costly
            // try's does.
            let cost = b.catch_up_seconds + time_lost(&b.with, &b.without);
            let step = b.without.step_seconds().filter(|&s| s > 0.0 && !better);
            let cost = step.map_or(0, |step| costly_wait(cost, step));
            // An inherited loss keeps the smaller bucket's wait.
            b.min_wait = if b.inherits_loss {
                b.min_wait.max(cost)
            } else {
                cost
            };
            b.catch_up_seconds = 0.0;
            b.wait = EXPLORE_EVERY.max(b.min_wait);
            b.countdown = b.wait;
        }
        b.countdown -= 1;
        if b.countdown == 0 {
            b.trying = EXPLORE_STEPS - 1;
            b.review = b.trying == 0;
            b.tried_against = better;
            if better {
                b.without.restart();
            } else {
                b.with.restart();
            }
            return !better;
        }
        better
    }

    /// Whether a step that decodes `decodes` sequences beside a prefill chunk should speculate:
    /// the bucket's standing choice, and no speculation while it has none. Such a step is not
    /// measured, so it neither warms a bucket up nor counts towards a try: exploring in it
    /// would cost without teaching. (In a busy server with a steady stream of arrivals, a
    /// bucket's decode-only steps can be rare; warming up in its mixed steps speculated in a
    /// bucket where it lost, step after step, until four measured steps came.)
    pub fn standing(&self, decodes: usize) -> bool {
        let b = &self.buckets[Self::bucket(decodes)];
        b.wait > 0 && b.speculating
    }

    /// Records a decode-only step: whether it speculated, the tokens it emitted, its seconds.
    pub fn observe(&mut self, decodes: usize, speculated: bool, tokens: usize, seconds: f64) {
        if seconds <= 0.0 || tokens == 0 {
            return;
        }
        let b = &mut self.buckets[Self::bucket(decodes)];
        if speculated {
            b.with.add(tokens as f64, seconds);
        } else {
            b.without.add(tokens as f64, seconds);
        }
    }

    /// Records a step that speculated after a pause (the draft caught up on what was decoded
    /// meanwhile): not a measurement of either option, but what a try of speculation costs.
    pub fn observe_catch_up(&mut self, decodes: usize, seconds: f64) {
        if seconds > 0.0 {
            self.buckets[Self::bucket(decodes)].catch_up_seconds += seconds;
        }
    }

    pub fn estimates(&self) -> Vec<PayoffEstimate> {
        const MAX: [usize; BUCKETS] = [1, 2, 4, 8, usize::MAX];
        self.buckets
            .iter()
            .zip(MAX)
            .filter(|(b, _)| b.with.samples > 0 || b.without.samples > 0)
            .map(|(b, max_decodes)| PayoffEstimate {
                max_decodes,
                with: b.with.value(),
                without: b.without.value(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
