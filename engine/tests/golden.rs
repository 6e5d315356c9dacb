//! Golden test against an independent reference: tests/reference/reference.py (numpy + gguf,
//! float64, no candle, no llama.cpp) dequantizes the default GGUF and records greedy
//! continuations with top-5 logprobs. We run the same prompt ids through the paged path.

mod common;

use candle_core::DType;
use common::golden::{self, Case};
use wick_engine::model::loader::LoadOptions;
use wick_engine::model::weights::WeightFormat;

fn golden_cases() -> Vec<Case> {
    golden::cases("golden.json", common::DEFAULT_MODEL_SHA256)
}

/// Greedy steps of every golden prompt: (token, full logprobs) per step.
fn run_all(opts: LoadOptions, cases: &[Case]) -> Vec<Vec<(u32, Vec<f32>)>> {
    // On the device of WICK_TEST_DEVICE (CPU by default): scripts/gpu-check runs these on a GPU.
    let loaded = common::load_default_with(LoadOptions {
        device: common::test_device(),
        ..opts
    });
    golden::run_all(loaded, cases)
}

#[test]
fn dequantized_f32_matches_reference_exactly() {
    let cases = golden_cases();
    assert!(cases.len() >= 6);
    let ours = run_all(
        LoadOptions {
            format: WeightFormat::Dense(DType::F32),
            ..Default::default()
        },
        &cases,
    );
    let worst = golden::check_exact(&cases, &ours, 1e-3);
    eprintln!("f32: worst top-5 logprob difference {worst:.2e}");
}

/// Weights kept Q4_1: activations are quantized to 8 bits per matmul (as in llama.cpp), so
/// logits move by a few tenths of a nat. Tokens must agree while the reference's top-1/top-2
/// margin is at least 0.5 nats; past a closer call either answer is right. Top-5 logprobs must
/// be within 0.35 nats: measured worst 0.331, for a chosen token at -2.6 nats (confident tokens
/// stay within 0.15: log-softmax normalises their error away). llama.cpp's own Q4_1 path, on
/// the same GGUF, prompts and steps (tests/reference/llama_cpp_deviation.py), is off by up to
/// 0.308 (RMS over the chosen tokens: llama.cpp 0.052, wick 0.074), so 0.3 is below what this
/// quantization allows on these prompts.
#[test]
fn quantized_matches_reference_until_a_close_call() {
    quantized_check(LoadOptions::default(), "Q4_1", 0.35);
}

/// Q4_1 re-quantized to Q8_0 at load (`--dtype q8_0`): the weights are quantized a second time
/// (each Q4_1 block rounded again to 255 levels) and the activations to 8 bits, so logprobs move
/// more than Q4_1's. The worst top-5 difference was 0.52 nats with candle's Q8_0 matmul and is
/// 0.78 (a rank-1 token at -5.7 nats) with wick's kernel, which computes the same quantized
/// operands exactly (within 1e-5 relative of an f64 evaluation: `kernels::cpu::q8_0`'s test) but
/// sums blocks in another order; 8-bit activation rounding turns that 1e-7 difference into
/// another trajectory a few layers later, so the bound covers the trajectories, not one of them.
#[test]
fn requantized_q8_0_matches_reference_until_a_close_call() {
    quantized_check(LoadOptions::default().with_format("q8_0").unwrap(), "Q8_0", 0.85);
}

/// The shipped Q4_1 weights over an f16 KV pool (`kv_cache_dtype = "f16"`): K and V rounded to
/// f16 (11 significant bits) as they are stored. Measured worst by rank 0.193 / 0.223 / 0.214 /
/// 0.461 / 0.339 (the f32 pool: 0.331 / 0.215 / 0.304 / 0.292 / 0.270): the chosen tokens stay
/// as close, a rank-4 token at low probability moves further, as for `--dtype q8_0` the 8-bit
/// activation rounding carrying a small difference into another trajectory. So 0.5, and f16
/// stays opt-in: the default (`auto`) keeps the f32 pool, whose bound is 0.35.
#[test]
fn quantized_with_f16_kv_matches_reference_until_a_close_call() {
    let cases = golden_cases();
    let loaded = common::load_default_with(LoadOptions {
        device: common::test_device(),
        ..Default::default()
    });
    let ours = golden::run_all_with_kv(loaded, &cases, DType::F16);
    check_steps(&cases, &ours, "Q4_1, f16 KV", 0.5);
}

fn quantized_check(opts: LoadOptions, label: &str, logprob_bound: f64) {
    let cases = golden_cases();
    let ours = run_all(opts, &cases);
    check_steps(&cases, &ours, label, logprob_bound);
}

fn check_steps(cases: &[Case], ours: &[Vec<(u32, Vec<f32>)>], label: &str, logprob_bound: f64) {
    let (compared, worst_by_rank) = golden::check_until_close_call(cases, ours, 0.5, logprob_bound);
    eprintln!("{label}: {compared} steps compared, worst logprob difference by rank {worst_by_rank:.3?}");
    assert!(compared >= 20, "too few comparable steps ({compared})");
}
