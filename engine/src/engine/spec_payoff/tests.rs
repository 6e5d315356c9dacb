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

/// A draft that loses at four sequences: its warm-up caught it up on four prompts (0.4 s of
/// draft time a step). The first try waits as long as after a try that cost as much,
/// instead of coming `EXPLORE_EVERY` steps later; without draft time (prompt lookup) it
/// comes then.
#[test]
fn a_costly_warm_up_delays_the_first_try() {
    let first_try = |draft_seconds: f64| {
        let mut p = Payoff::default();
        let mut warm = true;
        for i in 0..5000 {
            let s = p.choose(4);
            if s && !warm {
                return i;
            }
            warm &= p.buckets[Payoff::bucket(4)].wait == 0;
            if s {
                p.observe(4, true, 10, 0.36);
                p.observe_draft(4, draft_seconds);
            } else {
                p.observe(4, false, 4, 0.08);
            }
        }
        usize::MAX
    };
    let warm_up = 2 * WARM_UP as usize;
    assert_eq!(first_try(0.0), warm_up + EXPLORE_EVERY as usize - 1);
    let wait = (4.0 * 0.4 / (EXPLORE_SHARE * 0.08)).ceil() as usize;
    assert_eq!(first_try(0.4), warm_up + wait - 1);
}

/// Speculation loses at two decodes: a bucket of four starts without it, measuring plain
/// decoding only, and tries it no sooner than the bucket of two would; where that try finds
/// it faster, the bucket switches. Where it wins at two, four warms up as usual.
#[test]
fn a_loss_at_fewer_decodes_is_inherited() {
    let mut p = Payoff::default();
    run(&mut p, 2, 50.0, 100.0, 40);
    assert!(!p.standing(2));
    let choices: Vec<bool> = (0..EXPLORE_EVERY as usize + WARM_UP as usize - 1)
        .map(|_| {
            let s = p.choose(4);
            p.observe(4, s, 10, 10.0 / if s { 300.0 } else { 100.0 });
            s
        })
        .collect();
    assert!(choices.iter().all(|&s| !s), "{choices:?}");
    assert!(!p.standing(4));
    // Its tries find speculation three times as fast: it switches.
    let share = run(&mut p, 4, 300.0, 100.0, 200);
    assert!(share > 0.75, "speculated in only {share} of the steps");
    assert!(p.standing(4));

    let mut p = Payoff::default();
    run(&mut p, 2, 200.0, 100.0, 40);
    assert!(p.standing(2));
    assert!((0..WARM_UP).all(|_| {
        let s = p.choose(4);
        p.observe(4, s, 10, 0.1);
        s
    }));
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
