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
    // Speculation 10% slower: after the warm-up it is tried EXPLORE_STEPS steps at a time, the
    // tries further and further apart, up to EXPLORE_MAX. (They lose too little time to wait
    // longer for it: see `a_try_that_loses_time_waits_for_it`.)
    let choices: Vec<bool> = (0..2000)
        .map(|_| {
            let s = p.choose(1);
            p.observe(1, s, 10, 10.0 / if s { 90.0 } else { 100.0 });
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
    let (mut speculated, mut prompt_due, mut was) = (0, false, false);
    for step in 0..steps {
        prompt_due |= step % request == 0;
        let warm = p.buckets[Payoff::bucket(decodes)].wait > 0;
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
        let seconds = if s { with_secs } else { without_secs } * noise + catch_up;
        // As in the engine: the first step of a try after plain steps catches the draft up
        // on them (and on any prompt meanwhile), a cost, not a measurement.
        if s && !was && warm {
            p.observe_catch_up(decodes, seconds);
        } else {
            p.observe(decodes, s, tokens, seconds);
        }
        was = s;
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
/// draft time in each step). The time the warm-up lost against plain decoding sets the wait
/// before the first try, as after a try that cost as much, instead of `EXPLORE_EVERY` steps;
/// prompt lookup, which has no draft to catch up, loses less and waits less.
#[test]
fn a_costly_warm_up_delays_the_first_try() {
    let first_try = |step_seconds: f64| {
        let mut p = Payoff::default();
        let mut warm = true;
        for i in 0..5000 {
            let s = p.choose(4);
            if s && !warm {
                return i;
            }
            warm &= p.buckets[Payoff::bucket(4)].wait == 0;
            if s {
                p.observe(4, true, 10, step_seconds);
            } else {
                p.observe(4, false, 4, 0.08);
            }
        }
        usize::MAX
    };
    let expected = |step_seconds: f64| {
        let (mut with, mut without) = (Average::default(), Average::default());
        for _ in 0..WARM_UP {
            with.add(10.0, step_seconds);
            without.add(4.0, 0.08);
        }
        let lost = time_lost(&with, &without);
        2 * WARM_UP as usize + costly_wait(lost, without.step_seconds().unwrap()) as usize - 1
    };
    let (lookup, draft) = (first_try(0.36), first_try(0.36 + 0.4));
    assert_eq!(lookup, expected(0.36));
    assert_eq!(draft, expected(0.36 + 0.4));
    assert!(lookup > 2 * WARM_UP as usize + EXPLORE_EVERY as usize, "{lookup}");
    assert!(draft > 2 * lookup, "{draft} vs {lookup}");
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
    let inherited = p.buckets[Payoff::bucket(2)].min_wait;
    assert_eq!(p.buckets[Payoff::bucket(4)].min_wait, inherited);
    // Its tries find speculation three times as fast: it switches at the first.
    let switched = (0..inherited as usize + 2 * EXPLORE_STEPS as usize).find(|_| {
        let s = p.choose(4);
        p.observe(4, s, 10, 10.0 / if s { 300.0 } else { 100.0 });
        p.standing(4)
    });
    assert!(switched.is_some(), "no switch within {inherited} steps");
    let share = run(&mut p, 4, 300.0, 100.0, 200);
    assert!(share > 0.75, "speculated in only {share} of the steps");

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
/// then a new sequence on which it wins: the next try comes within `EXPLORE_EVERY` steps, or
/// as soon as the time its tries lose allows, not up to `EXPLORE_MAX`.
#[test]
fn a_new_sequence_brings_the_next_try_forward() {
    let mut p = Payoff::default();
    run(&mut p, 1, 80.0, 100.0, 2000);
    assert_eq!(p.buckets[0].wait, EXPLORE_MAX);
    p.new_text(1);
    let wait = p.buckets[0].wait;
    assert!(wait < EXPLORE_MAX / 4, "{wait}");
    let first = (0..wait as usize + 1).find(|_| {
        let s = p.choose(1);
        p.observe(1, s, 10, 10.0 / if s { 200.0 } else { 100.0 });
        s
    });
    assert!(first.is_some(), "no try within {wait} steps");
    let share = run(&mut p, 1, 200.0, 100.0, 100);
    assert!(share > 0.9, "speculated in only {share} of the steps");
}

/// Four sequences, prompt lookup 0.74x plain decoding (no catch-up: nothing else prices its
/// tries), and a new request every 12 steps, each bringing the next try forward: the time the
/// tries lose stays within [`EXPLORE_SHARE`] of the whole. Tries every `EXPLORE_EVERY` steps
/// lost over 4%.
#[test]
fn a_try_that_loses_time_waits_for_it() {
    let mut p = Payoff::default();
    let (with, without) = (52.2, 70.7);
    let (mut total, mut lost, mut warm) = (0.0, 0.0, true);
    for step in 0..20_000 {
        if step % 12 == 0 {
            p.new_text(4);
        }
        let s = p.choose(4);
        let tokens = if s { 6 } else { 4 };
        let seconds = tokens as f64 / if s { with } else { without };
        p.observe(4, s, tokens, seconds);
        warm &= p.buckets[Payoff::bucket(4)].wait == 0;
        if !warm {
            total += seconds;
            if s {
                lost += seconds - tokens as f64 / without;
            }
        }
    }
    let share = lost / total;
    assert!(share > 0.0, "never tried again");
    assert!(share < EXPLORE_SHARE, "tries lost {share} of the time");
}
