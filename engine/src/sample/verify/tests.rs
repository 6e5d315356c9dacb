use super::*;
use crate::sample::params::SamplingParams;
use candle_core::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seeded(seed: u64, temperature: f32) -> SequenceSamplingState {
    let params = SamplingParams {
        seed: Some(seed),
        temperature,
        ..SamplingParams::default()
    };
    SequenceSamplingState::new(params, &[], &[])
}

fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

fn rows(rows: &[Vec<f32>]) -> Tensor {
    let vocab = rows[0].len();
    let flat: Vec<f32> = rows.concat();
    Tensor::from_vec(flat, (rows.len(), vocab), &Device::Cpu).unwrap()
}

/// Draws from `q` by inverse CDF.
fn draw(q: &[f64], rng: &mut StdRng) -> u32 {
    let u: f64 = rng.random();
    let mut c = 0.0;
    for (i, &w) in q.iter().enumerate() {
        c += w;
        if u < c {
            return i as u32;
        }
    }
    (q.len() - 1) as u32
}

/// Pearson's statistic of `counts` against `probs` (every expected count is large here).
fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .map(|(&o, &p)| {
            let e = p * n as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

/// 7 degrees of freedom: P(chi2 > 24.32) = 0.001.
const CHI2_7DF_999: f64 = 24.32;

const P0: [f64; 8] = [0.30, 0.20, 0.15, 0.10, 0.10, 0.08, 0.05, 0.02];
const P1: [f64; 8] = [0.05, 0.05, 0.10, 0.40, 0.10, 0.10, 0.15, 0.05];
/// A proposal distribution unlike the target's, so that many proposals are rejected.
const Q: [f64; 8] = [0.02, 0.08, 0.05, 0.30, 0.05, 0.10, 0.10, 0.30];

/// The rejection rule keeps the target's distribution: with proposals drawn from a different
/// distribution, the first token emitted follows the target's first row, the second (after an
/// accepted proposal) the second row, and a proposal `d` is accepted with probability `p(d)`.
#[test]
fn verified_tokens_follow_the_targets_distribution() {
    let logits = rows(&[logits_of(&P0), logits_of(&P1)]);
    let mut state = seeded(11, 1.0);
    let mut proposals_rng = StdRng::seed_from_u64(5);
    let trials = 40_000;
    let mut first = [0u64; 8];
    let mut second = [0u64; 8];
    let (mut proposed_by_token, mut accepted_by_token) = ([0u64; 8], [0u64; 8]);
    for _ in 0..trials {
        let d = draw(&Q, &mut proposals_rng);
        let out = sample_and_verify(&logits, &mut [&mut state], &[&[d]])
            .unwrap()
            .remove(0);
        first[out[0].token as usize] += 1;
        proposed_by_token[d as usize] += 1;
        if out[0].token == d {
            accepted_by_token[d as usize] += 1;
            assert_eq!(out.len(), 2);
            second[out[1].token as usize] += 1;
        } else {
            assert_eq!(out.len(), 1, "nothing follows a rejection");
        }
    }
    let chi_first = chi_square(&first, &P0);
    let chi_second = chi_square(&second, &P1);
    eprintln!("chi2 first token {chi_first:.2}, second token {chi_second:.2} (7 df)");
    assert!(
        chi_first < CHI2_7DF_999,
        "first tokens {first:?} do not follow {P0:?}"
    );
    assert!(
        chi_second < CHI2_7DF_999,
        "second tokens {second:?} do not follow {P1:?}"
    );
    for d in 0..8 {
        let rate = accepted_by_token[d] as f64 / proposed_by_token[d] as f64;
        // Binomial standard error at these counts is under 0.015; 4 of them.
        let se = (P0[d] * (1.0 - P0[d]) / proposed_by_token[d] as f64).sqrt();
        assert!(
            (rate - P0[d]).abs() < 4.0 * se + 1e-3,
            "token {d} accepted at {rate:.3}, expected p = {}",
            P0[d]
        );
    }
}

/// Verification consumes the RNG exactly as plain decoding does: a seeded sequence emits the
/// same tokens whatever was proposed, right or wrong.
#[test]
fn verification_emits_what_plain_sampling_would() {
    let mut rng = StdRng::seed_from_u64(3);
    let table: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..50).map(|_| rng.random_range(-3.0f32..3.0)).collect())
        .collect();
    for temperature in [0.0, 0.7, 1.0] {
        // One token per step, plain.
        let mut plain = seeded(42, temperature);
        let expected: Vec<u32> = table
            .iter()
            .map(|row| plain.sample(&mut row.clone()).token)
            .collect();
        // All proposals right: one call emits all four.
        let mut s = seeded(42, temperature);
        let out = sample_and_verify(&rows(&table), &mut [&mut s], &[&expected[..3]]).unwrap();
        let got: Vec<u32> = out[0].iter().map(|t| t.token).collect();
        assert_eq!(got, expected, "temperature {temperature}");
        // The second proposal wrong: two emitted, the second is the plain one; then the third
        // step (re-proposed) continues the same stream.
        let mut s = seeded(42, temperature);
        let wrong = (expected[1] + 1) % 50;
        let out = sample_and_verify(&rows(&table[..3]), &mut [&mut s], &[&[expected[0], wrong]]).unwrap();
        let got: Vec<u32> = out[0].iter().map(|t| t.token).collect();
        assert_eq!(got, expected[..2], "temperature {temperature}");
        let out = sample_and_verify(&rows(&table[2..]), &mut [&mut s], &[&[expected[2]]]).unwrap();
        let got: Vec<u32> = out[0].iter().map(|t| t.token).collect();
        assert_eq!(got, expected[2..], "temperature {temperature}");
    }
}

#[test]
fn greedy_verification_stops_at_the_first_mismatch() {
    let mut s = seeded(0, 0.0);
    let out = verify_greedy(&mut s, &[5, 6, 9, 2], &[5, 6, 7]).unwrap();
    assert_eq!(out.iter().map(|t| t.token).collect::<Vec<_>>(), [5, 6, 9]);
    let out = verify_greedy(&mut s, &[5, 6], &[5]).unwrap();
    assert_eq!(out.iter().map(|t| t.token).collect::<Vec<_>>(), [5, 6]);
    assert!(verify_greedy(&mut s, &[5], &[5]).is_err());
    assert_eq!(s.num_output_tokens(), 5);
}

#[test]
fn a_batch_of_sequences_with_and_without_proposals() {
    let probs = [0.97, 0.01, 0.01, 0.01];
    let greedy_rows = vec![logits_of(&probs); 3];
    let logits = rows(
        &[
            greedy_rows.clone(),
            vec![logits_of(&probs)],
            greedy_rows[..2].to_vec(),
        ]
        .concat(),
    );
    let (mut a, mut b, mut c) = (seeded(1, 0.0), seeded(1, 0.0), seeded(1, 0.0));
    let out = sample_and_verify(&logits, &mut [&mut a, &mut b, &mut c], &[&[0, 0], &[], &[3]]).unwrap();
    let tokens: Vec<Vec<u32>> = out.iter().map(|o| o.iter().map(|t| t.token).collect()).collect();
    assert_eq!(tokens, vec![vec![0, 0, 0], vec![0], vec![0]]);
    // Rows and proposals must agree.
    assert!(sample_and_verify(&logits, &mut [&mut a], &[&[0]]).is_err());
}
