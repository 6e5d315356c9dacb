use super::*;
use crate::cli::route_eval::headers::parse_score;

fn item(cheap: bool, fallback: bool, score: Option<(f64, f64)>) -> CalItem {
    CalItem {
        cheap_correct: cheap,
        fallback_correct: fallback,
        score,
    }
}

/// Five items: the fallback gets 4 right, the cheap model 3; item 4 was never scored.
fn example() -> Vec<CalItem> {
    vec![
        item(true, true, Some((-0.1, -1.0))),
        item(false, true, Some((-0.5, -4.0))),
        item(true, false, Some((-0.3, -2.0))),
        item(false, true, None),
        item(true, true, Some((-0.8, -0.5))),
    ]
}

const NAMES: [&str; 3] = ["auto", "small", "large"];

fn rows(curve: &[Point], pick: fn(&Point) -> Option<f64>) -> Vec<(Option<f64>, f64, f64)> {
    curve
        .iter()
        .map(|p| (pick(p), p.cheap_share, p.accuracy))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn curves_and_recommendation_of_a_hand_computed_example() {
    let c = calibrate(NAMES, &example(), 0, None).expect("scored");
    assert_eq!((c.items, c.scored), (5, 4));
    assert!(close(c.cheap_accuracy, 0.6) && close(c.fallback_accuracy, 0.8));
    assert!(close(c.target_accuracy, 0.77));
    // Cuts fall between neighbouring observed values, as short decimals.
    assert_eq!(
        rows(&c.mean_curve, |p| p.min_mean_logprob),
        vec![
            (None, 0.8, 0.8),       // items 1, 2, 3, 5 cheap; 4 from the fallback
            (Some(-0.7), 0.6, 0.8), // 5 goes to the fallback: right either way
            (Some(-0.4), 0.4, 1.0), // 2 (cheap wrong, fallback right) goes too
            (Some(-0.2), 0.2, 0.8), // 3 (cheap right, fallback wrong) goes: a loss
        ]
    );
    assert_eq!(
        rows(&c.min_curve, |p| p.min_token_logprob),
        vec![
            (None, 0.8, 0.8),
            (Some(-3.0), 0.6, 1.0),
            (Some(-1.5), 0.4, 0.8),
            (Some(-0.8), 0.2, 0.8),
        ]
    );
    assert!(c.mean_curve.iter().all(|p| p.min_token_logprob.is_none()));
    // Target 0.77: everything scored stays cheap, written as a mean threshold under every
    // observed mean (the config needs one).
    let r = c.recommendation.expect("reached");
    assert_eq!(
        (
            r.point.min_mean_logprob,
            r.point.min_token_logprob,
            r.point.cheap_share,
            r.point.accuracy
        ),
        (Some(-1.0), None, 0.8, 0.8)
    );
    assert_eq!(r.toml, "policy = { verify = \"score\", min_mean_logprob = -1.0 }");
    assert_eq!(evaluate(&example(), Some(-1.0), None), r.point);
    // Target 0.9: only dropping item 2 gets there; the min threshold keeps 5 cheap as well.
    for target in [0.9, 1.0] {
        let c = calibrate(NAMES, &example(), 0, Some(target)).expect("scored");
        let r = c.recommendation.expect("reached");
        assert_eq!(
            (
                r.point.min_mean_logprob,
                r.point.min_token_logprob,
                r.point.cheap_share,
                r.point.accuracy
            ),
            (None, Some(-3.0), 0.6, 1.0)
        );
        assert_eq!(
            r.toml,
            "policy = { verify = \"score\", min_token_logprob = -3.0 }"
        );
        assert_eq!(c.best_accuracy, r.point);
    }
}

#[test]
fn unscored_items_always_go_to_the_fallback() {
    // Item 2's cheap answer is right, but unscored it is never kept.
    let items = [item(false, true, Some((-0.2, -1.0))), item(true, false, None)];
    for (m, t) in [(None, None), (Some(-5.0), Some(-5.0)), (Some(-0.1), None)] {
        let p = evaluate(&items, m, t);
        assert!(p.accuracy <= 0.5, "{p:?}");
    }
    // One scored value gives no cut: every pair keeps item 1 cheap (wrong), item 2 is never
    // cheap, so nothing is right.
    let c = calibrate(NAMES, &items, 0, Some(0.0)).expect("one scored");
    assert_eq!(
        (c.scored, c.best_accuracy.accuracy, c.best_accuracy.cheap_share),
        (1, 0.0, 0.5)
    );
    let none = [item(true, true, None), item(false, true, None)];
    let err = calibrate(NAMES, &none, 0, None).expect_err("nothing scored");
    assert_eq!(err, CalibrateError::NoScores { route: "auto".into() });
    assert!(err.to_string().contains("verify = \"score\""), "{err}");
}

#[test]
fn no_pair_reaching_the_target_says_what_is_reachable() {
    // The cheap model is wrong on every scored item: any pair keeps at least one.
    let items = [
        item(false, true, Some((-0.1, -1.0))),
        item(false, true, Some((-0.2, -2.0))),
        item(false, true, Some((-0.3, -3.0))),
    ];
    let c = calibrate(NAMES, &items, 0, Some(1.0)).expect("scored");
    assert_eq!(c.recommendation, None);
    let b = c.best_accuracy;
    assert!(
        close(b.accuracy, 2.0 / 3.0) && close(b.cheap_share, 1.0 / 3.0),
        "{b:?}"
    );
    assert_eq!(evaluate(&items, b.min_mean_logprob, b.min_token_logprob), b);
    let text = crate::cli::route_eval::text::calibration(&c);
    assert!(
        text.contains("no threshold pair reaches") && text.contains("66.7%"),
        "{text}"
    );
}

/// Deterministic pseudo-random items with many ties (scores on a 0.1 grid) and some unscored.
fn random_items(n: usize, mut seed: u64) -> Vec<CalItem> {
    let mut next = move |k: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % k
    };
    (0..n)
        .map(|_| {
            let score = (next(5) != 0).then(|| (-(next(15) as f64) / 10.0, -(next(40) as f64) / 10.0));
            item(next(3) != 0, next(5) != 0, score)
        })
        .collect()
}

/// Every pair of the grid (unset or a cut, for each threshold).
fn grid(items: &[CalItem]) -> Vec<Point> {
    let scored: Vec<(f64, f64)> = items.iter().filter_map(|i| i.score).collect();
    let means = cuts(&scored.iter().map(|s| s.0).collect::<Vec<_>>());
    let mins = cuts(&scored.iter().map(|s| s.1).collect::<Vec<_>>());
    let with_unset = |v: Vec<f64>| {
        std::iter::once(None)
            .chain(v.into_iter().map(Some))
            .collect::<Vec<_>>()
    };
    let (means, mins) = (with_unset(means), with_unset(mins));
    means
        .iter()
        .flat_map(|&m| mins.iter().map(move |&t| (m, t)))
        .map(|(m, t)| evaluate(items, m, t))
        .collect()
}

#[test]
fn the_recommendation_is_the_max_share_pair_meeting_the_target() {
    for seed in 1..20 {
        let items = random_items(60, seed);
        let all = grid(&items);
        for target in [0.5, 0.6, 0.7, 0.75, 0.8, 0.9] {
            let c = calibrate(NAMES, &items, 0, Some(target)).expect("scored");
            let meeting: Vec<&Point> = all.iter().filter(|p| p.accuracy >= target - 1e-12).collect();
            match (
                &c.recommendation,
                meeting
                    .iter()
                    .map(|p| p.cheap_share)
                    .fold(None, |a: Option<f64>, s| Some(a.map_or(s, |a| a.max(s)))),
            ) {
                (Some(r), Some(share)) => {
                    let p = r.point;
                    assert!(p.accuracy >= target - 1e-12, "seed {seed} target {target}: {p:?}");
                    assert!(
                        close(p.cheap_share, share),
                        "seed {seed} target {target}: {p:?} vs {share}"
                    );
                    // Ties on share: the most accurate.
                    let acc = meeting
                        .iter()
                        .filter(|q| close(q.cheap_share, share))
                        .map(|q| q.accuracy)
                        .fold(0.0, f64::max);
                    assert!(close(p.accuracy, acc), "seed {seed} target {target}");
                    // Its figures are what its thresholds give.
                    assert_eq!(evaluate(&items, p.min_mean_logprob, p.min_token_logprob), p);
                }
                (None, None) => {}
                (r, share) => panic!("seed {seed} target {target}: {r:?} vs brute force {share:?}"),
            }
            let best = all.iter().map(|p| p.accuracy).fold(0.0, f64::max);
            assert!(close(c.best_accuracy.accuracy, best), "seed {seed}");
        }
    }
}

#[test]
fn cheap_share_falls_as_either_threshold_rises() {
    for seed in 1..10 {
        let items = random_items(80, seed);
        let c = calibrate(NAMES, &items, 0, None).expect("scored");
        for curve in [&c.mean_curve, &c.min_curve] {
            assert!(
                curve.len() <= CURVE_ROWS + 1 && curve.len() > 2,
                "{}",
                curve.len()
            );
            assert!(
                curve.windows(2).all(|w| w[1].cheap_share <= w[0].cheap_share),
                "{curve:?}"
            );
        }
        let scored: Vec<(f64, f64)> = items.iter().filter_map(|i| i.score).collect();
        let means: Vec<f64> = scored.iter().map(|s| s.0).collect();
        let mins: Vec<f64> = scored.iter().map(|s| s.1).collect();
        for (dimension, values) in [(0, means), (1, mins)] {
            let cut = cuts(&values);
            assert!(cut.windows(2).all(|w| w[0] < w[1]));
            // Every cut falls strictly between two observed values, none on one.
            assert!(cut.iter().all(|c| !values.contains(c)));
            let shares: Vec<f64> = cut
                .iter()
                .map(|&x| {
                    let (m, t) = if dimension == 0 {
                        (Some(x), None)
                    } else {
                        (None, Some(x))
                    };
                    evaluate(&items, m, t).cheap_share
                })
                .collect();
            assert!(shares.windows(2).all(|w| w[1] < w[0]), "{shares:?}");
        }
    }
}

#[test]
fn cut_points_and_thinning() {
    assert_eq!(cuts(&[-0.412, -0.398, -0.412, -3.0]), vec![-2.0, -0.4]);
    assert_eq!(cuts(&[f64::NEG_INFINITY, -2.5]), vec![-4.0]);
    assert_eq!(cuts(&[-1.0]), Vec::<f64>::new());
    let c = between(-0.4122, -0.4121);
    assert!(-0.4122 < c && c < -0.4121, "{c}");
    let many: Vec<f64> = (0..100).map(f64::from).collect();
    let t = thin(&many, 12);
    assert_eq!((t.len(), t[0], t[11]), (12, 0.0, 99.0));
    assert!(t.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(thin(&[1.0, 2.0], 12), vec![1.0, 2.0]);
}

#[test]
fn items_pair_by_position_and_mismatches_are_counted() {
    let rec = |correct: bool, backend: &str, answer: &str, score: Option<&str>| ItemRecord {
        correct,
        backend: Some(backend.into()),
        answer: answer.into(),
        score: score.and_then(parse_score),
        ..Default::default()
    };
    let cheap = [rec(true, "small", "4", None), rec(false, "small", "7", None)];
    let fallback = [rec(true, "large", "4", None), rec(true, "large", "6", None)];
    let route = [
        rec(true, "small", "4", Some("mean=-0.2, min=-1.5, tokens=1")),
        rec(true, "small", "six", Some("mean=-0.9, min=-4, tokens=2")),
    ];
    let (items, mismatches) = items_from(&cheap, &fallback, &route, "small");
    assert_eq!(
        items,
        vec![
            item(true, true, Some((-0.2, -1.5))),
            item(false, true, Some((-0.9, -4.0)))
        ]
    );
    assert_eq!(mismatches, 1);
}
