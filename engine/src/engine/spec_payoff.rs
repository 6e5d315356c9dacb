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
/// The most time tries may take from a bucket whose choice they keep confirming. A try of
/// speculation after a pause first catches the draft up on every sequence (all they decoded
/// meanwhile, prompts included): at four sequences over a second of draft prefill, more than
/// ten plain steps. That cost (the seconds of the try's catch-up steps) sets the wait before the
/// next try to at least `cost / (EXPLORE_SHARE * a step's seconds)` steps.
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
    pub fn choose(&mut self, decodes: usize) -> bool {
        let b = &mut self.buckets[Self::bucket(decodes)];
        if b.with.samples < WARM_UP {
            return true;
        }
        if b.without.samples < WARM_UP {
            return false;
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
            let step = if better { b.with } else { b.without }.step_seconds();
            b.min_wait = match step.filter(|&s| s > 0.0 && better == b.tried_against) {
                Some(step) => {
                    ((b.catch_up_seconds / (EXPLORE_SHARE * step)).ceil() as u64).min(EXPLORE_COSTLY_MAX)
                }
                None => 0,
            };
            b.wait = b.wait.max(b.min_wait);
            b.catch_up_seconds = 0.0;
            b.countdown = b.wait;
        }
        b.speculating = better;
        if b.wait == 0 {
            b.wait = EXPLORE_EVERY;
            b.countdown = EXPLORE_EVERY;
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
        b.with.samples >= WARM_UP && b.without.samples >= WARM_UP && b.speculating
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
mod tests {
    use super::*;

    /// Feeds `steps` steps where speculating yields `with` tokens/s and not `without`; returns
    /// the share of steps that speculated.
    fn run(p: &mut Payoff, decodes: usize, with: f64, without: f64, steps: usize) -> f64 {
        let mut speculated = 0;
        for _ in 0..steps {
            let s = p.choose(decodes);
            speculated += usize::from(s);
            p.observe(decodes, s, 10, 10.0 / if s { with } else { without });
        }
        speculated as f64 / steps as f64
    }

    /// The steps at which runs of speculation start, and their lengths.
    fn runs(choices: &[bool]) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for (i, &s) in choices.iter().enumerate() {
            match out.last_mut() {
                Some((start, len)) if s && *start + *len == i => *len += 1,
                _ if s => out.push((i, 1)),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn follows_the_faster_option_and_checks_the_other_less_often_while_it_loses() {
        let mut p = Payoff::default();
        // Speculation slower: after the warm-up it is tried EXPLORE_STEPS steps at a time, the
        // tries further and further apart, up to EXPLORE_MAX.
        let choices: Vec<bool> = (0..2000)
            .map(|_| {
                let s = p.choose(1);
                p.observe(1, s, 10, 10.0 / if s { 50.0 } else { 100.0 });
                s
            })
            .collect();
        let tries = &runs(&choices)[1..]; // the first run is the warm-up
        assert!(tries.len() >= 5, "never re-checked: {tries:?}");
        assert!(
            tries.iter().all(|&(_, len)| len == EXPLORE_STEPS as usize),
            "{tries:?}"
        );
        let gaps: Vec<usize> = tries.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert!(gaps.windows(2).all(|g| g[0] <= g[1]), "{gaps:?}");
        // A try's last step, then `wait` steps to the next try's first.
        let gap = |wait: u64| wait as usize + EXPLORE_STEPS as usize - 1;
        assert_eq!(gaps.first(), Some(&gap(EXPLORE_EVERY * 2)));
        assert_eq!(gaps.last(), Some(&gap(EXPLORE_MAX)));
        // The text changes and speculation pays now: the next try switches the bucket.
        run(&mut p, 1, 200.0, 100.0, EXPLORE_MAX as usize + 8);
        let share = run(&mut p, 1, 200.0, 100.0, 200);
        assert!(share > 0.75, "speculated in only {share} of the steps");
        // Buckets are independent: a batch of 16 has learnt nothing yet.
        assert_eq!(p.estimates().len(), 1);
        let share = run(&mut p, 16, 10.0, 100.0, 400);
        assert!(share < 0.25);
        assert_eq!(p.estimates().len(), 2);
    }

    /// Simulated steps of `decodes` sequences: speculation's steps emit 1 to 4 tokens a
    /// sequence (92% acceptance at k = 3: 4 tokens 78% of the time) in `with_secs`, plain
    /// decoding's one in `without_secs`; host noise moves both by +-15%. Every `request` steps
    /// a new request's prompt costs the draft `prompt_secs` more in the first step that
    /// speculates. Returns the share of steps that speculated.
    fn noisy(
        decodes: usize,
        with_secs: f64,
        without_secs: f64,
        steps: usize,
        request: usize,
        prompt_secs: f64,
    ) -> f64 {
        let mut p = Payoff::default();
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        let (mut speculated, mut prompt_due) = (0, false);
        for step in 0..steps {
            prompt_due |= step % request == 0;
            let s = p.choose(decodes);
            let noise = 0.85 + 0.3 * next();
            let catch_up = if s && prompt_due { prompt_secs } else { 0.0 };
            prompt_due &= !s;
            let tokens: usize = (0..decodes)
                .map(|_| match (s, next()) {
                    (false, _) => 1,
                    (true, u) if u < 0.78 => 4,
                    (true, u) if u < 0.85 => 3,
                    (true, u) if u < 0.92 => 2,
                    _ => 1,
                })
                .sum();
            speculated += usize::from(s);
            p.observe(
                decodes,
                s,
                tokens,
                if s { with_secs } else { without_secs } * noise + catch_up,
            );
        }
        speculated as f64 / steps as f64
    }

    /// One sequence, speculation ~1.35x plain decoding on average but its per-step rate
    /// swinging 4x: a run of short steps must not turn it off (after the warm-up only the
    /// tries of plain decoding go without; an average of per-step rates kept it on in 94% of
    /// the steps), nor must the draft's catch-up on each new prompt (0.4 s every 30 steps: still
    /// ~1.2x over a request). Four sequences, speculation ~0.75x: it stays off but for its tries.
    #[test]
    fn the_steps_varying_token_counts_do_not_flip_the_choice() {
        let share = noisy(1, 0.105, 0.045, 3000, usize::MAX, 0.0);
        assert!(
            share > 0.97,
            "one sequence: speculated in only {share} of the steps"
        );
        let share = noisy(1, 0.105, 0.045, 3000, 30, 0.4);
        assert!(
            share > 0.9,
            "one sequence, new prompts: speculated in only {share} of the steps"
        );
        let share = noisy(4, 0.36, 0.08, 3000, usize::MAX, 0.0);
        assert!(share < 0.03, "four sequences: speculated in {share} of the steps");
    }

    /// Four sequences, speculation slower, and every try of it starting with a 1.5 s catch-up
    /// of the draft on all that was decoded meanwhile: the tries come far enough apart that
    /// they take a few percent of the time, where tries every `EXPLORE_MAX` steps would take
    /// over 7%.
    #[test]
    fn costly_tries_come_rarely() {
        let mut p = Payoff::default();
        let (step, catch_up) = (0.08, 1.5);
        let (mut total, mut trying, mut was) = (0.0, 0.0, false);
        for i in 0..20_000 {
            let s = p.choose(4);
            let seconds = match (s, was) {
                (true, false) if i > 0 => {
                    p.observe_catch_up(4, catch_up);
                    catch_up
                }
                (true, _) => {
                    p.observe(4, true, 8, 0.3);
                    0.3
                }
                (false, _) => {
                    p.observe(4, false, 4, step);
                    step
                }
            };
            was = s;
            total += seconds;
            if s {
                trying += seconds;
            }
        }
        let share = trying / total;
        assert!(share < 0.06, "tries took {share} of the time");
        let wait = (catch_up / (EXPLORE_SHARE * step)).ceil() as u64;
        assert!(p.buckets[Payoff::bucket(4)].wait >= wait.min(EXPLORE_COSTLY_MAX));
    }

    /// Steps beside a prefill chunk follow the standing choice and explore nothing: none
    /// before the bucket has warmed up, however many come, and they do not use up a try.
    #[test]
    fn unmeasured_steps_follow_the_standing_choice() {
        let mut p = Payoff::default();
        assert!(!p.standing(4), "nothing measured yet");
        let b = Payoff::bucket(4);
        assert_eq!(p.buckets[b].with.samples, 0);
        // Speculation wins at four: once warmed up, unmeasured steps speculate too.
        run(&mut p, 4, 200.0, 100.0, 40);
        assert!(p.standing(4));
        // A bucket where it loses: unmeasured steps do not speculate, tries or not.
        run(&mut p, 16, 50.0, 100.0, 40);
        assert!(!p.standing(16));
        let before = (
            p.buckets[Payoff::bucket(16)].countdown,
            p.buckets[Payoff::bucket(16)].trying,
        );
        assert!((0..1000).all(|_| !p.standing(16)));
        assert_eq!(
            (
                p.buckets[Payoff::bucket(16)].countdown,
                p.buckets[Payoff::bucket(16)].trying
            ),
            before
        );
    }

    /// Speculation loses through one long answer (tries every `EXPLORE_MAX` steps by its end),
    /// then a new sequence on which it wins: the next try comes within `EXPLORE_EVERY` steps,
    /// not up to `EXPLORE_MAX`.
    #[test]
    fn a_new_sequence_brings_the_next_try_forward() {
        let mut p = Payoff::default();
        run(&mut p, 1, 50.0, 100.0, 2000);
        assert_eq!(p.buckets[0].wait, EXPLORE_MAX);
        p.new_text(1);
        let first = (0..EXPLORE_EVERY as usize + 1).find(|_| {
            let s = p.choose(1);
            p.observe(1, s, 10, 10.0 / if s { 200.0 } else { 100.0 });
            s
        });
        assert!(first.is_some(), "no try within {EXPLORE_EVERY} steps");
        let share = run(&mut p, 1, 200.0, 100.0, 100);
        assert!(share > 0.9, "speculated in only {share} of the steps");
    }
}
