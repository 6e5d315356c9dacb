//! Whether speculation pays on this machine, for this model pair, at this batch size: learned
//! from the steps themselves, so that speculation never makes serving slower.
//!
//! Verifying `k` proposals costs `k` more rows in the target's forward (and `k` draft forwards).
//! Where a decode step is bound by reading the weights (a GPU, a CPU with many cores per memory
//! channel), extra rows are nearly free and every accepted proposal is a token gained. Where it is
//! bound by arithmetic (this workplace's 2-core CPU, where a 4-row step of the 1.5B model costs
//! about 2.2 one-row steps), the same proposals can cost more than they bring. The crossover
//! depends on the hardware, the pair of models, the batch and the text, so it is measured, not
//! configured: per batch-size bucket, an average of tokens emitted per second of step time with
//! speculation and without. A step follows whichever is faster; one step in [`EXPLORE_EVERY`]
//! tries the other, so a change (another kind of prompt, a better draft) is noticed.
//!
//! Only steps that decode and nothing else are measured: a prefill chunk's time says nothing
//! about speculation. The tokens do not depend on the choice (verification emits what plain
//! decoding would), so this changes speed only.

/// Decodes per step in each bucket: 1, 2, 3-4, 5-8, more.
const BUCKETS: usize = 5;
/// One step in this many tries the option that is currently slower.
const EXPLORE_EVERY: u64 = 16;
/// Measurements of an option before its average is trusted.
const WARM_UP: u32 = 4;
/// Weight of the newest measurement in an average.
const ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Copy, Default)]
struct Average {
    value: f64,
    samples: u32,
}

impl Average {
    fn add(&mut self, x: f64) {
        self.value = if self.samples == 0 {
            x
        } else {
            self.value + ALPHA * (x - self.value)
        };
        self.samples = self.samples.saturating_add(1);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Tokens per second of decode-only steps, with and without speculation.
    with: Average,
    without: Average,
    steps: u64,
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

    /// Whether a step decoding `decodes` sequences should speculate.
    pub fn choose(&mut self, decodes: usize) -> bool {
        let b = &mut self.buckets[Self::bucket(decodes)];
        b.steps += 1;
        if b.with.samples < WARM_UP {
            return true;
        }
        if b.without.samples < WARM_UP {
            return false;
        }
        let better = b.with.value > b.without.value;
        if b.steps.is_multiple_of(EXPLORE_EVERY) {
            !better
        } else {
            better
        }
    }

    /// Records a decode-only step: whether it speculated, the tokens it emitted, its seconds.
    pub fn observe(&mut self, decodes: usize, speculated: bool, tokens: usize, seconds: f64) {
        if seconds <= 0.0 || tokens == 0 {
            return;
        }
        let b = &mut self.buckets[Self::bucket(decodes)];
        let rate = tokens as f64 / seconds;
        if speculated {
            b.with.add(rate);
        } else {
            b.without.add(rate);
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
                with: b.with.value,
                without: b.without.value,
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

    #[test]
    fn follows_the_faster_option_and_keeps_checking_the_other() {
        let mut p = Payoff::default();
        // Speculation slower: after the warm-up, one step in EXPLORE_EVERY speculates.
        let share = run(&mut p, 1, 50.0, 100.0, 400);
        assert!(share < 0.1, "speculated in {share} of the steps");
        assert!(share > 0.03, "never re-checked: {share}");
        // The text changes and speculation pays now: the bucket switches within a few
        // exploration rounds.
        run(&mut p, 1, 200.0, 100.0, 200);
        let share = run(&mut p, 1, 200.0, 100.0, 200);
        assert!(share > 0.9, "speculated in only {share} of the steps");
        // Buckets are independent: a batch of 16 has learnt nothing yet.
        assert_eq!(p.estimates().len(), 1);
        let share = run(&mut p, 16, 10.0, 100.0, 400);
        assert!(share < 0.1);
        assert_eq!(p.estimates().len(), 2);
    }
}
