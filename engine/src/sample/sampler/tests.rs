use super::*;
use crate::error::EngineError;
use candle_core::{DType, Device};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EOS: u32 = 7;

fn state(params: SamplingParams) -> SequenceSamplingState {
    SequenceSamplingState::new(params, &[], &[EOS])
}

/// The defaults with one change.
fn with(change: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams::default();
    change(&mut p);
    p
}

/// Seeded, with one change.
fn seeded(seed: u64, change: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    with(|p| {
        p.seed = Some(seed);
        change(p)
    })
}

fn greedy(change: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    with(|p| {
        p.temperature = 0.0;
        change(p)
    })
}

fn random_logits(rng: &mut StdRng, vocab: usize) -> Vec<f32> {
    (0..vocab).map(|_| rng.random_range(-8.0f32..8.0)).collect()
}

/// Logits whose softmax is `probs` (up to f32 rounding of the log).
fn logits_of(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

fn tensor(rows: &[Vec<f32>]) -> Tensor {
    let vocab = rows.first().map_or(0, Vec::len);
    Tensor::from_vec(rows.concat(), (rows.len(), vocab), &Device::Cpu).unwrap()
}

/// How often each token comes out of `draws` samples of the same row.
fn frequencies(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
    let mut s = state(params);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..draws {
        counts[s.sample(&mut logits.to_vec()).token as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / draws as f64).collect()
}

fn support(freqs: &[f64]) -> Vec<u32> {
    (0..freqs.len() as u32)
        .filter(|&i| freqs[i as usize] > 0.0)
        .collect()
}

#[test]
fn greedy_is_argmax_lowest_index_on_ties() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut s = state(SamplingParams::greedy());
    for _ in 0..50 {
        let logits = random_logits(&mut rng, 1000);
        let want = logits
            .iter()
            .enumerate()
            .fold(0, |b, (i, &x)| if x > logits[b] { i } else { b });
        assert_eq!(s.sample(&mut logits.clone()).token, want as u32);
    }
    assert_eq!(s.sample(&mut [1.0, 3.0, 2.0, 3.0]).token, 1);
    // Past the vectorised chunks of 8, and in the remainder.
    let mut long = vec![0.0; 21];
    (long[19], long[11]) = (4.0, 4.0);
    assert_eq!(s.sample(&mut long).token, 11);
    // A NaN is never chosen.
    assert_eq!(s.sample(&mut [f32::NAN, 0.5, 0.7]).token, 2);
}

#[test]
fn low_temperature_tends_to_greedy() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut s = state(seeded(3, |p| p.temperature = 0.01));
    for _ in 0..200 {
        let mut logits = random_logits(&mut rng, 500);
        let best = argmax(&logits) as usize;
        // A margin of 0.5 at temperature 0.01 leaves the runner-up e^-50 of the mass.
        let runner_up = (0..logits.len()).filter(|&i| i != best).map(|i| logits[i]);
        logits[best] = runner_up.fold(f32::MIN, f32::max) + 0.5;
        assert_eq!(s.sample(&mut logits.clone()).token as usize, best);
    }
    // Below the epsilon it is greedy outright (no division by ~0), even on ties.
    let mut s = state(seeded(3, |p| p.temperature = 1e-6));
    assert!(s.params().is_greedy());
    assert_eq!(s.sample(&mut [0.0, 5.0, 5.0]).token, 1);
}

#[test]
fn top_k_one_is_greedy() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut s = state(seeded(5, |p| (p.temperature, p.top_k) = (1.5, 1)));
    for _ in 0..100 {
        let logits = random_logits(&mut rng, 300);
        assert_eq!(s.sample(&mut logits.clone()).token, argmax(&logits));
    }
    assert_eq!(s.sample(&mut [0.0, 2.0, 1.0, 2.0]).token, 1);
}

#[test]
fn same_seed_same_tokens() {
    let mut rng = StdRng::seed_from_u64(6);
    let rows: Vec<Vec<f32>> = (0..64).map(|_| random_logits(&mut rng, 200)).collect();
    let run = |seed| {
        let mut s = state(seeded(seed, |_| {}));
        let tokens = rows.iter().map(|r| s.sample(&mut r.clone()).token);
        tokens.collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

/// Sampling a sequence alone or in a batch beside sequences with other parameters (greedy,
/// filtered, penalised, unseeded) gives the same tokens and logprobs.
#[test]
fn batch_composition_does_not_change_a_sequence() {
    let vocab = 257;
    let prompt = [1u32, 2, 3, 3];
    let all_params = [
        seeded(11, |p| (p.logprobs, p.top_logprobs) = (true, 3)),
        SamplingParams::greedy(),
        seeded(12, |p| (p.temperature, p.top_p, p.top_k) = (0.7, 0.9, 50)),
        with(|p| (p.repetition_penalty, p.frequency_penalty, p.min_tokens) = (1.3, 0.5, 3)),
        seeded(11, |p| (p.min_p, p.presence_penalty) = (0.05, 1.0)),
    ];
    let new = |p: &SamplingParams| SequenceSamplingState::new(p.clone(), &prompt, &[EOS]);
    let mut batch: Vec<SequenceSamplingState> = all_params.iter().map(new).collect();
    // The reproducible ones, alone.
    let alone_idx = [0usize, 1, 2, 4];
    let mut alone: Vec<SequenceSamplingState> = alone_idx.iter().map(|&i| new(&all_params[i])).collect();
    let mut rng = StdRng::seed_from_u64(13);
    for _ in 0..40 {
        let rows: Vec<Vec<f32>> = (0..batch.len()).map(|_| random_logits(&mut rng, vocab)).collect();
        let mut refs: Vec<&mut SequenceSamplingState> = batch.iter_mut().collect();
        let batched = sample_batch(&tensor(&rows), &mut refs).unwrap();
        for (s, &i) in alone.iter_mut().zip(&alone_idx) {
            let single = sample_batch(&tensor(&rows[i..=i]), &mut [s]).unwrap();
            assert_eq!(single[0], batched[i], "sequence {i}");
        }
    }
}

#[test]
fn repetition_frequency_presence_penalties_exact() {
    let params = with(|p| {
        (p.repetition_penalty, p.frequency_penalty, p.presence_penalty) = (2.0, 0.5, 0.25);
    });
    let mut s = SequenceSamplingState::new(params, &[0, 1, 1], &[]);
    for t in [2, 2, 1] {
        s.record(t);
    }
    let mut logits = vec![2.0, -1.0, 0.5, 0.0, 3.0];
    s.apply_penalties(&mut logits);
    // 0: prompt only -> 2/2. 1: prompt and output once -> -1*2 - 0.5 - 0.25.
    // 2: output twice -> 0.5/2 - 2*0.5 - 0.25. 3: unseen. 4: unseen.
    assert_eq!(logits, vec![1.0, -2.75, -1.0, 0.0, 3.0]);

    // Frequency and presence ignore the prompt.
    let params = with(|p| (p.frequency_penalty, p.presence_penalty) = (1.0, 1.0));
    let mut s = SequenceSamplingState::new(params, &[0, 1], &[]);
    s.record(1);
    let mut logits = vec![1.0, 1.0, 1.0];
    s.apply_penalties(&mut logits);
    assert_eq!(logits, vec![1.0, -1.0, 1.0]);

    // Negative penalties reward repetition; end to end, greedy follows the penalised logits.
    let mut s = state(greedy(|p| p.frequency_penalty = -2.0));
    s.record(2);
    assert_eq!(s.sample(&mut [1.0, 2.5, 0.9]).token, 2);
}

#[test]
fn logit_bias_bans_and_forces() {
    let logits = [5.0, 0.0, 0.0, 1.0];
    let banned = frequencies(seeded(21, |p| p.logit_bias = [(0, -100.0)].into()), &logits, 2000);
    assert_eq!(banned[0], 0.0);
    let force = seeded(22, |p| (p.temperature, p.logit_bias) = (2.0, [(2, 100.0)].into()));
    assert_eq!(frequencies(force, &logits, 2000)[2], 1.0);
    // Values beyond the limit are clamped to it; ids beyond the row are skipped.
    let s = state(with(|p| p.logit_bias = [(0, 1e9), (1, -1e9), (9, 1.0)].into()));
    let mut row = vec![0.5, 0.5, 0.5];
    s.apply_logit_bias(&mut row);
    assert_eq!(row, vec![100.5, -99.5, 0.5]);
}

#[test]
fn min_tokens_masks_eos_and_stop_ids_until_reached() {
    let eos_favoured = vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 9.0];
    let params = greedy(|p| (p.min_tokens, p.stop_token_ids) = (2, vec![4]));
    let mut s = state(params.clone());
    // EOS (7) masked, then the stop id (4) next best: also masked. Then both allowed.
    let tokens: Vec<u32> = (0..3)
        .map(|_| s.sample(&mut eos_favoured.clone()).token)
        .collect();
    assert_eq!(tokens, vec![0, 0, EOS]);
    // With ignore_eos, EOS stops nothing, so it is an ordinary token and not masked.
    let mut s = state(SamplingParams {
        ignore_eos: true,
        ..params
    });
    assert_eq!(s.sample(&mut eos_favoured.clone()).token, EOS);
    assert_eq!(s.num_output_tokens(), 1);
}

/// The ids `filter` keeps for a distribution given as probabilities.
fn kept(change: impl FnOnce(&mut SamplingParams), probs: &[f32]) -> Vec<u32> {
    let max = probs.iter().copied().fold(0.0, f32::max);
    let weights: Vec<f32> = probs.iter().map(|p| p / max).collect();
    let total = weights.iter().map(|&w| w as f64).sum();
    let mut ids: Vec<u32> = filter(&with(change), &weights, total)
        .iter()
        .map(|c| c.0)
        .collect();
    ids.sort();
    ids
}

#[test]
fn top_k_top_p_min_p_keep_the_right_tokens() {
    // Probabilities by id: 0.1, 0.5, 0.05, 0.2, 0.15.
    let probs = [0.1, 0.5, 0.05, 0.2, 0.15];
    assert_eq!(kept(|p| p.top_k = 2, &probs), vec![1, 3]);
    assert_eq!(kept(|p| p.top_k = 4, &probs), vec![0, 1, 3, 4]);
    assert_eq!(kept(|p| p.top_k = 99, &probs), vec![0, 1, 2, 3, 4]);
    // 0.5 < 0.6 <= 0.5 + 0.2: the token crossing top_p is kept.
    assert_eq!(kept(|p| p.top_p = 0.6, &probs), vec![1, 3]);
    assert_eq!(kept(|p| p.top_p = 0.45, &probs), vec![1]);
    assert_eq!(kept(|p| p.top_p = 0.9, &probs), vec![0, 1, 3, 4]);
    // min_p 0.25 of 0.5 = 0.125; 0.35 of 0.5 = 0.175.
    assert_eq!(kept(|p| p.min_p = 0.25, &probs), vec![1, 3, 4]);
    assert_eq!(kept(|p| p.min_p = 0.35, &probs), vec![1, 3]);
    // top_p sees the distribution renormalised by top_k: 0.5 / (0.5 + 0.2) >= 0.7.
    assert_eq!(kept(|p| (p.top_k, p.top_p) = (2, 0.7), &probs), vec![1]);
    // {0.5, 0.2, 0.15} / 0.85: 0.824 < 0.83, so all three; then min_p.
    assert_eq!(kept(|p| (p.top_k, p.top_p) = (3, 0.83), &probs), vec![1, 3, 4]);
    assert_eq!(
        kept(|p| (p.top_k, p.top_p, p.min_p) = (3, 0.83, 0.35), &probs),
        vec![1, 3]
    );
    // min_p comes after top_p: the nucleus of 0.8 is {0.5, 0.2, 0.15}, all above min_p 0.25.
    // (min_p first would drop 0.1 and 0.05, and top_p 0.8 of the rest needs only {0.5, 0.2}.)
    assert_eq!(kept(|p| (p.top_p, p.min_p) = (0.8, 0.25), &probs), vec![1, 3, 4]);
    // Ties at the top_k boundary: the lower id stays.
    assert_eq!(kept(|p| p.top_k = 2, &[0.2, 0.4, 0.2, 0.2]), vec![0, 1]);

    // End to end, the samples cover exactly the kept set, renormalised.
    let logits = logits_of(&probs);
    let f = frequencies(seeded(31, |p| p.top_k = 2), &logits, 20_000);
    assert_eq!(support(&f), vec![1, 3]);
    assert!((f[1] - 0.5 / 0.7).abs() < 0.02, "{f:?}");
    let f = frequencies(seeded(32, |p| p.top_p = 0.9), &logits, 20_000);
    assert_eq!(support(&f), vec![0, 1, 3, 4]);
    let f = frequencies(seeded(33, |p| p.min_p = 0.35), &logits, 20_000);
    assert_eq!(support(&f), vec![1, 3]);
}

/// Unnormalised weights (max 1) of `logits`, and their sum.
fn weights(logits: &[f32]) -> (Vec<f32>, f64) {
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let w: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
    let total = w.iter().map(|&x| x as f64).sum();
    (w, total)
}

#[test]
fn top_p_on_a_large_flat_tail() {
    // One heavy token and a long tail of equal ones.
    let vocab = 49_152;
    let mut logits = vec![0.0f32; vocab];
    logits[123] = 10.0;
    let (w, total) = weights(&logits);
    let nucleus = |top_p: f64| filter(&with(|p| p.top_p = top_p as f32), &w, total).len();
    let heavy = 1.0 / (1.0 + (vocab - 1) as f64 * (-10f64).exp());
    assert_eq!(nucleus(heavy * 0.99), 1);
    // Each tail token holds (1 - heavy) / (vocab - 1); equal weights go by id.
    let tail = (1.0 - heavy) / (vocab - 1) as f64;
    assert_eq!(nucleus(heavy + tail * 999.5), 1 + 1000);
}

/// The prefiltered quickselect nucleus equals the textbook one: sort everything, keep the
/// shortest prefix reaching top_p of the mass.
#[test]
fn top_p_matches_a_full_sort_reference() {
    let mut rng = StdRng::seed_from_u64(45);
    for scale in [0.5f32, 3.0, 12.0] {
        for top_p in [0.05f32, 0.5, 0.9, 0.99, 0.9999] {
            let logits: Vec<f32> = (0..5000).map(|_| rng.random_range(-scale..scale)).collect();
            let (w, total) = weights(&logits);
            let mut all: Vec<(u32, f32)> = w.iter().enumerate().map(|(i, &w)| (i as u32, w)).collect();
            all.sort_by(by_weight_desc);
            let mut cumulative = 0f64;
            let end = all.iter().position(|&(_, w)| {
                cumulative += w as f64;
                cumulative >= top_p as f64 * total
            });
            let mut want: Vec<u32> = all[..=end.unwrap()].iter().map(|c| c.0).collect();
            want.sort();
            let got = filter(&with(|p| p.top_p = top_p), &w, total);
            let mut got: Vec<u32> = got.iter().map(|c| c.0).collect();
            got.sort();
            assert_eq!(got, want, "scale {scale} top_p {top_p}");
        }
    }
}

#[test]
fn logprobs_are_raw_sorted_and_consistent() {
    let mut rng = StdRng::seed_from_u64(41);
    let logits = random_logits(&mut rng, 1000);
    let reference = candle_nn::ops::log_softmax(&tensor(std::slice::from_ref(&logits)), 1).unwrap();
    let reference = reference.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
    let mut want: Vec<(u32, f32)> = reference
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, x))
        .collect();
    want.sort_by(by_weight_desc);
    let mut s = state(seeded(42, |p| {
        (p.logprobs, p.top_logprobs, p.temperature) = (true, 5, 0.5);
        (p.presence_penalty, p.logit_bias) = (2.0, [(17, 100.0)].into());
    }));
    for _ in 0..3 {
        let out = s.sample(&mut logits.clone());
        assert_eq!(out.token, 17, "forced by the bias");
        // Raw: neither the bias nor the temperature nor the penalty shows.
        let lp = out.logprob.unwrap();
        assert!((lp - reference[17]).abs() < 1e-5, "{lp} vs {}", reference[17]);
        assert_eq!(out.top_logprobs.len(), 5);
        for (got, want) in out.top_logprobs.iter().zip(&want) {
            assert_eq!(got.0, want.0);
            assert!((got.1 - want.1).abs() < 1e-5);
        }
        assert!(out.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
    }
    // logprobs without top_logprobs: the chosen token only. Without logprobs: nothing.
    let out = state(greedy(|p| p.logprobs = true)).sample(&mut logits.clone());
    assert!(out.top_logprobs.is_empty());
    assert_eq!(out.token, want[0].0);
    assert!((out.logprob.unwrap() - want[0].1).abs() < 1e-5);
    let out = state(SamplingParams::greedy()).sample(&mut logits.clone());
    assert_eq!((out.logprob, out.top_logprobs.len()), (None, 0));
}

#[test]
fn top_n_orders_ties_by_id() {
    let xs = [1.0, 3.0, 2.0, 3.0, f32::NEG_INFINITY, 2.0];
    assert_eq!(top_n(&xs, 4), vec![(1, 3.0), (3, 3.0), (2, 2.0), (5, 2.0)]);
    assert_eq!(top_n(&xs, 0), vec![]);
    assert_eq!(top_n(&xs, 10).len(), 6);
}

#[test]
fn temperature_one_matches_the_distribution() {
    let probs = [0.2f32, 0.3, 0.5];
    let logits = logits_of(&probs);
    let draws = 20_000;
    // Plain path and filtered path (a min_p that removes nothing) walk differently.
    for params in [seeded(51, |_| {}), seeded(52, |p| p.min_p = 0.01)] {
        let f = frequencies(params, &logits, draws);
        for (got, want) in f.iter().zip(probs) {
            // 3 sigma at 20k draws is about 0.011.
            assert!((got - want as f64).abs() < 0.015, "{f:?}");
        }
    }
    // Temperature 2 flattens: p ~ sqrt(probs), renormalised.
    let f = frequencies(seeded(53, |p| p.temperature = 2.0), &logits, draws);
    let sq: Vec<f64> = probs.iter().map(|&p| (p as f64).sqrt()).collect();
    let z: f64 = sq.iter().sum();
    for (got, want) in f.iter().zip(&sq) {
        assert!((got - want / z).abs() < 0.015, "{f:?}");
    }
}

#[test]
fn degenerate_rows_do_not_panic() {
    let mut s = state(seeded(61, |p| (p.top_p, p.top_k, p.min_p) = (0.5, 3, 0.5)));
    let neg = f32::NEG_INFINITY;
    assert_eq!(s.sample(&mut [neg, neg, neg]).token, 0);
    assert_eq!(s.sample(&mut [f32::NAN, f32::NAN]).token, 0);
    assert_eq!(s.sample(&mut [f32::NAN, 1.0]).token, 1);
    assert_eq!(s.sample(&mut []).token, 0);
    // Ids beyond the row (bias, prompt, EOS) are ignored, not indexed.
    let params = seeded(62, |p| {
        (p.logit_bias, p.repetition_penalty, p.min_tokens) = ([(50, 5.0)].into(), 1.5, 1);
        p.logprobs = true;
    });
    let mut s = SequenceSamplingState::new(params, &[99, 100], &[1000]);
    s.sample(&mut [0.0, 1.0]);
}

#[test]
fn batch_shape_errors() {
    let mut a = state(seeded(1, |_| {}));
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    for bad in [zeros(&[2, 4]), zeros(&[4]), zeros(&[1, 0])] {
        let err = sample_batch(&bad, &mut [&mut a]);
        assert!(matches!(err, Err(EngineError::InvalidBatch(_))), "{bad:?}");
    }
    assert!(sample_batch(&zeros(&[0, 4]), &mut []).unwrap().is_empty());
    // Half-precision logits are converted.
    let half = tensor(&[vec![0.0, 3.0, 1.0]]).to_dtype(DType::BF16).unwrap();
    let mut g = state(SamplingParams::greedy());
    assert_eq!(sample_batch(&half, &mut [&mut g]).unwrap()[0].token, 1);
}
