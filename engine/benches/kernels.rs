//! The CPU matmul kernels alone, per weight format and row count: GMAC/s of `acts W^T` on
//! random weights of one layer's shape. The best of many repetitions, not the mean: on these
//! shared hosts a stolen time slice only ever makes a repetition slower, so the minimum is the
//! figure that compares between builds. Not a test.
//!
//!     cargo bench -p wick-engine --bench kernels [-- FORMAT...]
//!
//! FORMAT: q4_0, q4_1, q4_k, q5_0, q8_0, q6_k (default all). Shape: WICK_BENCH_NK=896x896 (Qwen2's q/o
//! projections; 576x576 is the default model's). Rows: WICK_BENCH_ROWS=1,8,64,512.
//! WICK_BENCH_COPIES=N cycles through N copies of the matrix, one per call: with N copies
//! larger than the last-level cache, the weights come from memory, as in a decode step.
//!
//! `attention` (not in the default set): one layer's paged attention in the default model's
//! shape (9 query heads, 3 KV heads, head dim 64, f32 pool) for a 256-row prefill chunk ending
//! at, and a batch of 16 decode rows at, each context of WICK_BENCH_CTX=512,2048,4096.

/// The allocator the `wick` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use wick_engine::kernels::cpu::acts::QuantizedActs;
use wick_engine::model::weights::CpuMatrix;

fn random(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u64 * 2654435761 + seed * 97) % 10007) as f32 / 10007.0 - 0.5)
        .collect()
}

fn matrix(format: &str, n: usize, k: usize) -> CpuMatrix {
    let dtype = match format {
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q8_0" => GgmlDType::Q8_0,
        "q6_k" => GgmlDType::Q6K,
        "q4_k" => GgmlDType::Q4K,
        other => panic!("unknown format {other}"),
    };
    let t = Tensor::from_vec(random(n * k, 1), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    CpuMatrix::from_qtensor(&q)
        .unwrap()
        .unwrap_or_else(|| panic!("{format} has no CPU kernel for {n}x{k}"))
}

/// Best time of `f` over repetitions lasting about `budget` in all.
fn best_of(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut reps = 0;
    while reps < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        reps += 1;
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let formats: Vec<&str> = if args.is_empty() {
        vec!["q4_0", "q4_1", "q4_k", "q5_0", "q8_0", "q6_k"]
    } else {
        args.iter().map(|s| s.as_str()).collect()
    };
    let (n, k) = std::env::var("WICK_BENCH_NK")
        .ok()
        .and_then(|v| {
            let (n, k) = v.split_once('x')?;
            Some((n.parse().ok()?, k.parse().ok()?))
        })
        .unwrap_or((896, 896));
    let rows: Vec<usize> = std::env::var("WICK_BENCH_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 64, 512]);
    println!(
        "matmul {n}x{k}, kernels: {}, best of ~1 s per cell",
        wick_engine::kernels::cpu::simd::describe()
    );
    println!("| format | rows | GMAC/s | us per call |");
    println!("|---|---|---|---|");
    if formats.contains(&"attention") {
        attention();
    }
    let copies: usize = std::env::var("WICK_BENCH_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    for f in formats.into_iter().filter(|&f| f != "attention") {
        let ws: Vec<CpuMatrix> = (0..copies).map(|_| matrix(f, n, k)).collect();
        let w = &ws[0];
        for &m in &rows {
            let x = random(m * k, 2);
            let acts = QuantizedActs::quantize(&x, m, k);
            let mut next = 0;
            let t = best_of(Duration::from_secs(1), || {
                next = (next + 1) % copies;
                std::hint::black_box(ws[next].matmul_split(&acts, &[n]).unwrap());
            });
            let gmac = (m * n * k) as f64 / t.as_secs_f64() / 1e9;
            println!("| {f:6} | {m:4} | {gmac:6.1} | {:9.1} |", t.as_secs_f64() * 1e6);
            if std::env::var_os("WICK_BENCH_ADD").is_some() {
                let residual = random(m * n, 3);
                let t = best_of(Duration::from_secs(1), || {
                    std::hint::black_box(w.matmul_add(&acts, &residual).unwrap());
                });
                let gmac = (m * n * k) as f64 / t.as_secs_f64() / 1e9;
                println!(
                    "| {f:6} +residual | {m:4} | {gmac:6.1} | {:9.1} |",
                    t.as_secs_f64() * 1e6
                );
            }
        }
    }
}

fn attention() {
    use wick_engine::kernels::cpu::attention::{paged_attention, CpuSpan};
    let (heads, kv_heads, hd) = (9, 3, 64);
    let contexts: Vec<usize> = std::env::var("WICK_BENCH_CTX")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![512, 2048, 4096]);
    println!("attention, {heads} heads / {kv_heads} KV heads x {hd}, f32 pool, best of ~1 s per cell");
    println!("| context | rows | ms per call | GFLOP/s |");
    println!("|---|---|---|---|");
    for &ctx in &contexts {
        // The pool holds 16 sequences of `ctx` slots; slots in order per sequence.
        let seqs = 16;
        let slots = seqs * ctx;
        let k = Tensor::from_vec(
            random(kv_heads * slots * hd, 1),
            (kv_heads, slots, hd),
            &Device::Cpu,
        )
        .unwrap();
        let v = Tensor::from_vec(
            random(kv_heads * slots * hd, 2),
            (kv_heads, slots, hd),
            &Device::Cpu,
        )
        .unwrap();
        let seq_slots = |s: usize| (s * ctx..(s + 1) * ctx).map(|x| x as u32).collect::<Vec<_>>();
        let chunk = 256.min(ctx);
        let prefill = vec![CpuSpan {
            query_start: 0,
            first_pos: ctx - chunk,
            slots: seq_slots(0),
        }];
        let decode: Vec<CpuSpan> = (0..seqs)
            .map(|s| CpuSpan {
                query_start: s,
                first_pos: ctx - 1,
                slots: seq_slots(s),
            })
            .collect();
        let cases = [
            (prefill, vec![0u32; chunk]),
            (decode, (0..seqs as u32).collect::<Vec<_>>()),
        ];
        for (spans, row_span) in &cases {
            let rows = row_span.len();
            let q = Tensor::from_vec(random(rows * heads * hd, 3), (rows, heads, hd), &Device::Cpu).unwrap();
            let t = best_of(Duration::from_secs(1), || {
                std::hint::black_box(paged_attention(&q, &k, &v, spans, row_span, 0.125).unwrap());
            });
            // Pairs (row, visible slot) x heads x (q.k + p.v) multiply-adds x 2.
            let pairs: usize = (0..rows)
                .map(|r| {
                    let s = &spans[row_span[r] as usize];
                    s.first_pos + (r - s.query_start) + 1
                })
                .sum();
            let gflops = (pairs * heads * hd * 4) as f64 / t.as_secs_f64() / 1e9;
            println!(
                "| {ctx:5} | {rows:4} | {:8.2} | {gflops:6.1} |",
                t.as_secs_f64() * 1e3
            );
        }
    }
}
