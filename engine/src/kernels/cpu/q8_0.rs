//! Q8_0 weights on the CPU (AVX2, and AVX-512 VNNI where the CPU has it): the output head of the
//! default model (49152 x 576, where candle's repacked x86 kernel does not apply because 576 is
//! not a multiple of 256, so it ran row by row) and models stored or re-quantized in Q8_0.
//!
//! Activations are the shared 8-bit blocks of [`super::acts`] (`d` and `q`, as candle's Q8_0
//! activation block). The layout is Q4_1's ([`super::q4_1`]): eight rows per group, each
//! 32-byte vector holding 4 bytes of every row (`qs[c][4r + t]` = row r's value `4c + t`), so
//! one broadcast of 4 activation bytes feeds all eight rows' block sums lane by lane. The
//! integer sums are exact (`|w|` against `a` with w's sign: at most 128 x 127 per product); the
//! float step is `sum += (sumi * d_w) * d_a`, the same operations for every output whatever the
//! batch.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::acts::{ActRows, QK};
use super::matmul::{GroupMatrix, WeightGroup};
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::simd::{dpbusd, store_rows};

/// Rows per group.
const ROWS: usize = 8;

/// Block `b` of eight consecutive Q8_0 weight rows.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct Q80Group {
    d: [f32; ROWS],
    /// `qs[c][4 r + t]`: row r's value `4c + t`.
    qs: [[i8; 32]; QK / 4],
}

impl Default for Q80Group {
    fn default() -> Self {
        Self {
            d: [0.0; ROWS],
            qs: [[0; 32]; QK / 4],
        }
    }
}

impl Q80Group {
    /// A group with these row scales and zero values.
    pub(super) fn with_scales(d: [f32; ROWS]) -> Self {
        Self { d, ..Self::default() }
    }

    /// Row `lane`'s value `j`.
    pub(super) fn set_value(&mut self, lane: usize, j: usize, v: i8) {
        self.qs[j / 4][4 * lane + j % 4] = v;
    }
}

pub type Q80Matrix = GroupMatrix<Q80Group>;

impl WeightGroup for Q80Group {
    const DTYPE: GgmlDType = GgmlDType::Q8_0;
    const BLOCK_BYTES: usize = 34;
    const ROWS: usize = ROWS;

    fn set_lane(&mut self, lane: usize, b: &[u8]) {
        self.d[lane] = f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (j, &v) in b[2..34].iter().enumerate() {
            self.set_value(lane, j, v as i8);
        }
    }

    fn dot(w: &[Self], acts: &ActRows<'_>, out: &mut [f32]) {
        super::simd::dispatch_dot!(w, acts, out)
    }
}

macro_rules! q8_0_dot {
    ($name:ident, $vnni:expr, $(#[$attr:meta])*) => {
        /// # Safety
        /// The CPU must have the features the function is compiled for.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        $(#[$attr])*
        unsafe fn $name(w: &[Q80Group], acts: &ActRows<'_>, out: &mut [f32]) {
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
                            // maddubs takes |w| against a with w's sign (i16 pairs cannot
                            // saturate: at most 2 * 128 * 127).
                            wabs[c] = _mm256_sign_epi8(wv[c], wv[c]);
                        }
                    }
                    let wd = _mm256_load_ps(wg.d.as_ptr());
                    // VNNI: (a + 128) against w, minus 128 * sum(w) (the sums of w come from
                    // the same instruction against ones): exact, and no sign fix-ups per row.
                    let bias = if $vnni {
                        let mut ws = _mm256_setzero_si256();
                        for c in 0..QK / 4 {
                            ws = dpbusd(ws, _mm256_set1_epi8(1), wv[c]);
                        }
                        _mm256_slli_epi32(ws, 7)
                    } else {
                        _mm256_setzero_si256()
                    };
                    for (j, sum) in sums.iter_mut().enumerate().take(rows) {
                        let mut s = _mm256_setzero_si256();
                        if $vnni {
                            let q = ag.qu[j].as_ptr() as *const i32;
                            // Two chains of four, not one of eight (latency); the same integers.
                            let mut s1 = _mm256_setzero_si256();
                            for c in 0..QK / 8 {
                                s = dpbusd(s, _mm256_set1_epi32(q.add(c).read_unaligned()), wv[c]);
                                let h = QK / 8 + c;
                                s1 = dpbusd(s1, _mm256_set1_epi32(q.add(h).read_unaligned()), wv[h]);
                            }
                            s = _mm256_sub_epi32(_mm256_add_epi32(s, s1), bias);
                        } else {
                            let q = ag.qs[j].as_ptr() as *const i32;
                            for c in 0..QK / 4 {
                                let av = _mm256_sign_epi8(_mm256_set1_epi32(q.add(c).read_unaligned()), wv[c]);
                                let p = _mm256_maddubs_epi16(wabs[c], av);
                                s = _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
                            }
                        }
                        let t = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), wd), _mm256_set1_ps(ag.d[j]));
                        *sum = _mm256_add_ps(*sum, t);
                    }
                }
                store_rows(&sums[..rows], out, rg * 4);
            }
        }
    };
}

q8_0_dot!(dot_avx2, false,);
q8_0_dot!(dot_vnni, true, #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]);

/// Without AVX2: the same arithmetic, one output at a time.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn dot_portable(w: &[Q80Group], acts: &ActRows<'_>, out: &mut [f32]) {
    let m = acts.m;
    for r in 0..m {
        let (a, j) = (acts.row_group(r / 4), r % 4);
        for lane in 0..ROWS {
            let mut sum = 0f32;
            for (wg, ag) in w.iter().zip(a) {
                let sumi: i32 = (0..QK)
                    .map(|i| wg.qs[i / 4][4 * lane + i % 4] as i32 * ag.qs[j][i] as i32)
                    .sum();
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
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    fn random(shape: (usize, usize), seed: u64) -> Vec<f32> {
        (0..shape.0 * shape.1)
            .map(|i| {
                let x = ((i as u64 * 2654435761 + seed * 97) % 10007) as f32 / 10007.0 - 0.5;
                if i % 97 == 0 {
                    x * 40.0
                } else {
                    x
                }
            })
            .collect()
    }

    /// Exact against a plain f64 evaluation of the same quantized operands (integer block dots,
    /// then scales), within f32 accumulation error; close to candle's Q8_0 matmul; and a row's
    /// result is the same alone or in any batch.
    #[test]
    fn matches_the_quantized_operands_and_is_independent_of_row_count() {
        let (n, k) = (70, 576);
        let wt = Tensor::from_vec(random((n, k), 1), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap();
        let ours = Q80Matrix::from_qtensor(&q).unwrap();
        let raw = q.data().unwrap().to_vec();
        let theirs = QMatMul::from_qtensor(q).unwrap();
        for m in [1, 3, 4, 9] {
            let x = random((m, k), m as u64 + 7);
            let acts = QuantizedActs::quantize(&x, m, k);
            let out = ours.matmul(&acts).unwrap();
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let candle = theirs
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for r in 0..m {
                for c in 0..n {
                    let mut want = 0f64;
                    for b in 0..k / QK {
                        let blk = &raw[(c * (k / QK) + b) * 34..][..34];
                        let dw = f16::from_le_bytes([blk[0], blk[1]]).to_f64();
                        let all = acts.all();
                        let ag = &all.row_group(r / 4)[b];
                        let sumi: i32 = (0..QK)
                            .map(|j| blk[2 + j] as i8 as i32 * ag.qs[r % 4][j] as i32)
                            .sum();
                        want += sumi as f64 * dw * ag.d[r % 4] as f64;
                    }
                    let got = out[r * n + c] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "m {m} row {r} col {c}: {got} vs {want}"
                    );
                    let cd = candle[r * n + c] as f64;
                    assert!(
                        (got - cd).abs() <= 1e-4 * (1.0 + cd.abs()),
                        "vs candle: {got} vs {cd}"
                    );
                }
                let alone = ours
                    .matmul(&QuantizedActs::quantize(&x[r * k..(r + 1) * k], 1, k))
                    .unwrap();
                assert_eq!(alone, out[r * n..(r + 1) * n], "row {r} of {m}");
            }
        }
    }
}
