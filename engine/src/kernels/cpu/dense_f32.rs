//! Dense f32 weights times f32 activations on the CPU, for models loaded dequantized (`--dtype
//! f32`, and safetensors checkpoints, which load dense).
//!
//! Why not candle's matmul: its gemm packs the weight matrix on every call with more than one
//! row, so a 2-row step costs about three 1-row steps (measured on the default model dequantized:
//! 41 ms for one row, ~120 ms for 2 to 8), which made batched decoding and speculative
//! verification slower than one sequence alone. And it rounds a row differently depending on how
//! many rows the matmul has, so batched output was not bit-identical to one sequence alone.
//!
//! Here each output `y[m][n] = dot(x[m], w[n])` is summed the same way whatever the batch: eight
//! lanes of fused multiply-adds over `k` in order, then one fixed horizontal sum. A task takes four
//! weight rows and every activation row of its block, two at a time, so the weights are read from
//! memory once per step and the two rows share their loads.

use rayon::prelude::*;

use crate::error::{EngineError, Result};

/// Weight rows per task unit (a multiple of the kernel's 4).
const UNIT_ROWS: usize = 16;
/// Activation rows per task, so a task's activations stay in cache at prefill sizes.
const ROW_BLOCK: usize = 64;

pub struct DenseF32Matrix {
    /// `(n_padded, k)` row-major; rows past `n` are zeros.
    w: Vec<f32>,
    n: usize,
    k: usize,
}

impl DenseF32Matrix {
    /// From `(n, k)` row-major weights; `k` must be a multiple of 8 (None otherwise: the caller
    /// keeps candle's matmul).
    pub fn new(mut w: Vec<f32>, n: usize, k: usize) -> Option<Self> {
        if k == 0 || !k.is_multiple_of(8) || w.len() != n * k {
            return None;
        }
        w.resize(n.div_ceil(UNIT_ROWS) * UNIT_ROWS * k, 0.0);
        Some(Self { w, n, k })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// `x W^T` for `m` rows of `x` (row-major, `m * k`): row-major `(m, n)`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let (n, k) = (self.n, self.k);
        if x.len() != m * k {
            return Err(EngineError::InvalidBatch(format!(
                "f32 matmul: {} values for {m} rows of {k}",
                x.len()
            )));
        }
        let mut out = vec![0f32; m * n];
        let units = n.div_ceil(UNIT_ROWS);
        let blocks = m.div_ceil(ROW_BLOCK).max(1);
        let sink = Sink(out.as_mut_ptr());
        (0..units * blocks).into_par_iter().for_each(|t| {
            let (block, unit) = (t / units, t % units);
            let rows = block * ROW_BLOCK..((block + 1) * ROW_BLOCK).min(m);
            let mut tile = [0f32; 8 * 4];
            for w0 in (unit * UNIT_ROWS..(unit + 1) * UNIT_ROWS).step_by(4) {
                if w0 >= n {
                    break;
                }
                let w = &self.w[w0 * k..(w0 + 4) * k];
                let mut r = rows.start;
                while r < rows.end {
                    let pair = (rows.end - r).min(2);
                    dot_4xr(w, &x[r * k..(r + pair) * k], k, pair, &mut tile);
                    for j in 0..pair {
                        let cols = 4.min(n - w0);
                        // SAFETY: this task alone writes columns w0..w0 + 4 of its rows.
                        unsafe { sink.write((r + j) * n + w0, &tile[j * 4..j * 4 + cols]) };
                    }
                    r += pair;
                }
            }
        });
        Ok(out)
    }
}

/// The output buffer, shared by tasks that write disjoint elements.
struct Sink(*mut f32);
unsafe impl Sync for Sink {}
unsafe impl Send for Sink {}

impl Sink {
    /// # Safety
    /// No other task may write `at..at + values.len()`, which must be inside the buffer.
    unsafe fn write(&self, at: usize, values: &[f32]) {
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(at), values.len());
    }
}

/// Four weight rows (`w`, `4 * k`) against `rows` (1 or 2) activation rows (`x`): writes
/// `out[r * 4 + i] = dot(x[r], w[i])`.
fn dot_4xr(w: &[f32], x: &[f32], k: usize, rows: usize, out: &mut [f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: AVX2 and FMA are compiled in (cfg); slices are checked by the callers' shapes.
        unsafe { dot_4xr_avx2(w, x, k, rows, out) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    dot_4xr_portable(w, x, k, rows, out)
}

/// The horizontal sum every path uses: lanes `j` and `j + 4`, then `(0 + 2) + (1 + 3)`.
#[inline(always)]
fn hsum8(l: [f32; 8]) -> f32 {
    let s = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
unsafe fn dot_4xr_avx2(w: &[f32], x: &[f32], k: usize, rows: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let store = |acc: __m256| {
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), acc);
        hsum8(l)
    };
    if rows == 2 {
        let mut a = [_mm256_setzero_ps(); 8];
        for i in (0..k).step_by(8) {
            let x0 = _mm256_loadu_ps(xp.add(i));
            let x1 = _mm256_loadu_ps(xp.add(k + i));
            for (j, acc) in a.chunks_exact_mut(2).enumerate() {
                let wv = _mm256_loadu_ps(wp.add(j * k + i));
                acc[0] = _mm256_fmadd_ps(x0, wv, acc[0]);
                acc[1] = _mm256_fmadd_ps(x1, wv, acc[1]);
            }
        }
        for j in 0..4 {
            out[j] = store(a[2 * j]);
            out[4 + j] = store(a[2 * j + 1]);
        }
    } else {
        let mut a = [_mm256_setzero_ps(); 4];
        for i in (0..k).step_by(8) {
            let x0 = _mm256_loadu_ps(xp.add(i));
            for (j, acc) in a.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(x0, _mm256_loadu_ps(wp.add(j * k + i)), *acc);
            }
        }
        for j in 0..4 {
            out[j] = store(a[j]);
        }
    }
}

/// The same arithmetic as the AVX2 path, lane by lane (`mul_add` is the fused operation).
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"),
    allow(dead_code)
)]
fn dot_4xr_portable(w: &[f32], x: &[f32], k: usize, rows: usize, out: &mut [f32]) {
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        for j in 0..4 {
            let wr = &w[j * k..(j + 1) * k];
            let mut lanes = [0f32; 8];
            for (xc, wc) in xr.chunks_exact(8).zip(wr.chunks_exact(8)) {
                for l in 0..8 {
                    lanes[l] = xc[l].mul_add(wc[l], lanes[l]);
                }
            }
            out[r * 4 + j] = hsum8(lanes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_data::random;

    #[test]
    fn each_row_is_the_same_whatever_the_batch_and_matches_the_portable_path() {
        let (n, k) = (37, 96);
        let w = random(n * k, 1);
        let mat = DenseF32Matrix::new(w.clone(), n, k).unwrap();
        let x = random(9 * k, 2);
        let all = mat.matmul(&x, 9).unwrap();
        for r in 0..9 {
            let alone = mat.matmul(&x[r * k..(r + 1) * k], 1).unwrap();
            assert_eq!(alone, all[r * n..(r + 1) * n], "row {r}");
            for c in 0..n {
                let mut out = [0f32; 8];
                let w4: Vec<f32> = (0..4)
                    .flat_map(|j| {
                        let row = (c + j).min(n - 1);
                        w[row * k..(row + 1) * k].to_vec()
                    })
                    .collect();
                dot_4xr_portable(&w4, &x[r * k..(r + 1) * k], k, 1, &mut out);
                assert_eq!(out[0], all[r * n + c], "row {r}, column {c}");
                let exact: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64).sum();
                assert!((out[0] as f64 - exact).abs() < 1e-4, "{} vs {exact}", out[0]);
            }
        }
        // A batch past one row block.
        let x = random(130 * k, 3);
        let all = mat.matmul(&x, 130).unwrap();
        let last = mat.matmul(&x[129 * k..], 1).unwrap();
        assert_eq!(last, all[129 * n..]);
    }

    #[test]
    fn shapes_it_cannot_take() {
        assert!(DenseF32Matrix::new(vec![0.0; 12], 2, 6).is_none());
        let mat = DenseF32Matrix::new(vec![0.0; 16], 2, 8).unwrap();
        assert!(mat.matmul(&[0.0; 7], 1).is_err());
    }
}
