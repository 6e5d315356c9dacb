//! Q6_K weights on the CPU (AVX2, and AVX-512 VNNI where the CPU has it), so that models with
//! Q6_K matrices (Qwen2's Q4_K_M keeps half its `ffn_down` in Q6_K) give a row the same result
//! alone or in a batch: candle's Q6_K kernel does not (its results for one row and for many
//! differ).
//!
//! A Q6_K super-block holds 256 six-bit values `q - 32` (-32..31) in sixteen sub-blocks of 16,
//! each with an i8 scale, and one f16 `d`: `value = d * sc * (q - 32)`. Here each 32-value
//! block keeps its values as i8 (the [`super::q8_0`] layout: eight rows, 4 bytes of each per
//! 32-byte vector) with its two sub-block scales; the block's integer sum is
//! `sc0 * sum(q a, first 16) + sc1 * sum(q a, last 16)`, exact in i32, and the float step is
//! `sum += (sumi * d) * d_a`. The dequantized weights are exactly Q6_K's.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::acts::{ActRows, QK};
use super::matmul::{GroupMatrix, WeightGroup};
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::simd::{dpbusd, store_rows};
use crate::error::{EngineError, Result};

const ROWS: usize = 8;
/// Bytes of a GGML Q6_K super-block (256 values).
const SB: usize = 210;

#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct Q6KGroup {
    d: [f32; ROWS],
    /// Scales of the first and the second 16 values of the block, per row.
    sc: [[i32; ROWS]; 2],
    /// `qs[c][4 r + t]`: row r's value `4c + t` (`q - 32`).
    qs: [[i8; 32]; QK / 4],
}

impl Default for Q6KGroup {
    fn default() -> Self {
        Self {
            d: [0.0; ROWS],
            sc: [[0; ROWS]; 2],
            qs: [[0; 32]; QK / 4],
        }
    }
}

pub type Q6KMatrix = GroupMatrix<Q6KGroup>;

impl WeightGroup for Q6KGroup {
    const DTYPE: GgmlDType = GgmlDType::Q6K;
    const BLOCK_BYTES: usize = SB;
    const ROWS: usize = ROWS;

    /// Not used: Q6_K blocks hold 256 values; see [`from_q6_k`].
    fn set_lane(&mut self, _lane: usize, _block: &[u8]) {}

    fn dot(w: &[Self], acts: &ActRows<'_>, out: &mut [f32]) {
        super::simd::dispatch_dot!(w, acts, out)
    }
}

/// The 256 values (`q - 32`) and 16 scales of a Q6_K super-block, in value order.
fn unpack_super_block(sb: &[u8]) -> ([i8; 256], [i8; 16], f32) {
    let (ql, qh, sc) = (&sb[..128], &sb[128..192], &sb[192..208]);
    let d = f16::from_le_bytes([sb[208], sb[209]]).to_f32();
    let mut v = [0i8; 256];
    for h in 0..2 {
        let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
        for l in 0..32 {
            let q = |low: u8, shift: u32| ((low | (((qh[l] >> shift) & 3) << 4)) as i8) - 32;
            v[128 * h + l] = q(ql[l] & 0xF, 0);
            v[128 * h + l + 32] = q(ql[l + 32] & 0xF, 2);
            v[128 * h + l + 64] = q(ql[l] >> 4, 4);
            v[128 * h + l + 96] = q(ql[l + 32] >> 4, 6);
        }
    }
    (v, std::array::from_fn(|i| sc[i] as i8), d)
}

/// A Q6_K tensor of shape `(n, k)`, `k` a multiple of 256.
pub fn from_q6_k(q: &QTensor) -> Result<Q6KMatrix> {
    let (n, k) = q.shape().dims2()?;
    if q.dtype() != GgmlDType::Q6K || !k.is_multiple_of(256) {
        return Err(EngineError::InvalidConfig(format!(
            "expected Q6_K rows of 256s, got {:?} x {k}",
            q.dtype()
        )));
    }
    let data = q.data()?;
    if data.len() != n * (k / 256) * SB {
        return Err(EngineError::InvalidConfig(
            "Q6_K tensor has the wrong byte length".into(),
        ));
    }
    Q6KMatrix::from_blocks(n, k, |row, b, g, lane| {
        let (v, sc, d) = unpack_super_block(&data[(row * (k / 256) + b / 8) * SB..][..SB]);
        let j = b % 8;
        g.d[lane] = d;
        g.sc[0][lane] = sc[2 * j] as i32;
        g.sc[1][lane] = sc[2 * j + 1] as i32;
        for i in 0..QK {
            g.qs[i / 4][4 * lane + i % 4] = v[32 * j + i];
        }
    })
}

macro_rules! q6_k_dot {
    ($name:ident, $vnni:expr, $(#[$attr:meta])*) => {
        /// # Safety
        /// The CPU must have the features the function is compiled for.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        $(#[$attr])*
        unsafe fn $name(w: &[Q6KGroup], acts: &ActRows<'_>, out: &mut [f32]) {
            use std::arch::x86_64::*;
            let m = acts.m;
            for rg in 0..m.div_ceil(4) {
                let a = acts.row_group(rg);
                let rows = (m - rg * 4).min(4);
                let mut sums = [_mm256_setzero_ps(); 4];
                for (wg, ag) in w.iter().zip(a) {
                    let mut wv = [_mm256_setzero_si256(); QK / 4];
                    let mut wabs = [_mm256_setzero_si256(); QK / 4];
                    for c in 0..QK / 4 {
                        wv[c] = _mm256_load_si256(wg.qs[c].as_ptr() as *const __m256i);
                        if !$vnni {
                            wabs[c] = _mm256_sign_epi8(wv[c], wv[c]);
                        }
                    }
                    let wd = _mm256_load_ps(wg.d.as_ptr());
                    let sc0 = _mm256_load_si256(wg.sc[0].as_ptr() as *const __m256i);
                    let sc1 = _mm256_load_si256(wg.sc[1].as_ptr() as *const __m256i);
                    // VNNI: (a + 128) against w, minus 128 * sum(w) per half (exact).
                    let mut bias = [_mm256_setzero_si256(); 2];
                    if $vnni {
                        for c in 0..QK / 4 {
                            bias[c / 4] = dpbusd(bias[c / 4], _mm256_set1_epi8(1), wv[c]);
                        }
                        bias = bias.map(|b| _mm256_slli_epi32(b, 7));
                    }
                    for (j, sum) in sums.iter_mut().enumerate().take(rows) {
                        let mut half = [_mm256_setzero_si256(); 2];
                        if $vnni {
                            let q = ag.qu[j].as_ptr() as *const i32;
                            for c in 0..QK / 4 {
                                half[c / 4] = dpbusd(half[c / 4], _mm256_set1_epi32(q.add(c).read_unaligned()), wv[c]);
                            }
                            half = [_mm256_sub_epi32(half[0], bias[0]), _mm256_sub_epi32(half[1], bias[1])];
                        } else {
                            let q = ag.qs[j].as_ptr() as *const i32;
                            for c in 0..QK / 4 {
                                let av = _mm256_sign_epi8(_mm256_set1_epi32(q.add(c).read_unaligned()), wv[c]);
                                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[c], av), _mm256_set1_epi16(1));
                                half[c / 4] = _mm256_add_epi32(half[c / 4], p);
                            }
                        }
                        let sumi = _mm256_add_epi32(_mm256_mullo_epi32(half[0], sc0), _mm256_mullo_epi32(half[1], sc1));
                        let t = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sumi), wd), _mm256_set1_ps(ag.d[j]));
                        *sum = _mm256_add_ps(*sum, t);
                    }
                }
                store_rows(&sums[..rows], out, rg * 4);
            }
        }
    };
}

q6_k_dot!(dot_avx2, false,);
q6_k_dot!(dot_vnni, true, #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]);

/// Without AVX2: the same arithmetic, one output at a time.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn dot_portable(w: &[Q6KGroup], acts: &ActRows<'_>, out: &mut [f32]) {
    let m = acts.m;
    for r in 0..m {
        let (a, j) = (acts.row_group(r / 4), r % 4);
        for lane in 0..ROWS {
            let mut sum = 0f32;
            for (wg, ag) in w.iter().zip(a) {
                let half = |h: usize| -> i32 {
                    (16 * h..16 * h + 16)
                        .map(|i| wg.qs[i / 4][4 * lane + i % 4] as i32 * ag.qs[j][i] as i32)
                        .sum()
                };
                let sumi = half(0) * wg.sc[0][lane] + half(1) * wg.sc[1][lane];
                sum += (sumi as f32 * wg.d[lane]) * ag.d[j];
            }
            out[r * ROWS + lane] = sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::acts::QuantizedActs;
    use crate::kernels::cpu::q4_1::{from_q4_k, Q41Matrix};
    use candle_core::{Device, Tensor};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = ((i as u64 * 2654435761 + seed * 97) % 10007) as f32 / 10007.0 - 0.5;
                if i % 97 == 0 {
                    x * 20.0
                } else {
                    x
                }
            })
            .collect()
    }

    /// `out` against an f64 evaluation (relative tolerance `tol`) of the dequantized weights and the quantized activations.
    fn check_against_dequantized(
        deq: &[f32],
        out: &[f32],
        acts: &QuantizedActs,
        n: usize,
        k: usize,
        tol: f64,
    ) {
        for r in 0..acts.m {
            for c in 0..n {
                let mut want = 0f64;
                for b in 0..k / QK {
                    let all = acts.all();
                    let ag = &all.row_group(r / 4)[b];
                    for i in 0..QK {
                        want += deq[c * k + b * QK + i] as f64 * ag.qs[r % 4][i] as f64 * ag.d[r % 4] as f64;
                    }
                }
                let got = out[r * n + c] as f64;
                assert!(
                    (got - want).abs() <= tol * (1.0 + want.abs()),
                    "row {r} col {c}: {got} vs {want}"
                );
            }
        }
    }

    /// Q6_K and Q4_K (as Q4_1) keep exactly candle's dequantized weights; the matmuls equal the
    /// f64 evaluation (Q4_1 up to its approximate activation sums); a row's result is the same
    /// alone as in a batch; the VNNI and AVX2 paths agree bit for bit.
    #[test]
    fn k_quants_convert_exactly_and_rows_are_independent() {
        let (n, k) = (16, 512);
        let w = Tensor::from_vec(random(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let q6 = QTensor::quantize(&w, GgmlDType::Q6K).unwrap();
        let deq6 = q6
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let m6 = from_q6_k(&q6).unwrap();
        let q4 = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        let deq4 = q4
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let m4: Q41Matrix = from_q4_k(&q4).unwrap();
        for m in [1, 3, 5] {
            let x = random(m * k, 7 + m as u64);
            let acts = QuantizedActs::quantize(&x, m, k);
            let out6 = m6.matmul(&acts).unwrap();
            check_against_dequantized(&deq6, &out6, &acts, n, k, 1e-4);
            let out4 = m4.matmul(&acts).unwrap();
            // Q4_1's min term uses the f16-rounded activation sum (as candle's Q4_1 does).
            check_against_dequantized(&deq4, &out4, &acts, n, k, 5e-3);
            for r in 0..m {
                let alone = QuantizedActs::quantize(&x[r * k..(r + 1) * k], 1, k);
                assert_eq!(
                    m6.matmul(&alone).unwrap(),
                    out6[r * n..(r + 1) * n],
                    "Q6_K row {r} of {m}"
                );
                assert_eq!(
                    m4.matmul(&alone).unwrap(),
                    out4[r * n..(r + 1) * n],
                    "Q4_K row {r} of {m}"
                );
            }
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
            if crate::kernels::cpu::simd::vnni() {
                let (mut a, mut b) = (vec![0f32; 8 * m], vec![0f32; 8 * m]);
                // SAFETY: VNNI checked; AVX2 compiled in.
                unsafe {
                    dot_avx2(m6.groups_of(1), &acts.all(), &mut a);
                    dot_vnni(m6.groups_of(1), &acts.all(), &mut b);
                }
                assert_eq!(a, b);
            }
        }
    }
}
