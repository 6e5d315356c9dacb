//! Q8_0 weights on the CPU, with AVX2: the output head of the default model (49152 x 576, where
//! candle's repacked x86 kernel does not apply because 576 is not a multiple of 256, so it ran
//! row by row) and models stored or re-quantized in Q8_0.
//!
//! Activations are the shared 8-bit blocks of [`super::acts`] (`d` and `q`, as candle's Q8_0
//! activation block). Each block's integer dot is exact; the float step is
//! `sum += (sumi * d_w) * d_a`, the same operations for every output whatever the batch.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::acts::{ActGroup, QK};
use super::matmul::{GroupMatrix, WeightGroup};

/// Block `b` of four consecutive Q8_0 weight rows.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct Q80Group {
    d: [f32; 4],
    qs: [[i8; QK]; 4],
}

impl Default for Q80Group {
    fn default() -> Self {
        Self {
            d: [0.0; 4],
            qs: [[0; QK]; 4],
        }
    }
}

pub type Q80Matrix = GroupMatrix<Q80Group>;

/// Q5_0 weights, held as Q8_0 groups: each 5-bit value `q - 16` (-16..15) is stored as an i8
/// with the block's scale, which is exact (the same integer dot and the same scale as Q5_0's
/// own arithmetic), and the Q8_0 kernel runs on it. Candle's Q5_0 CPU kernel is scalar (42% of
/// the Qwen2 fallback's decode time); this costs 34 bytes per block instead of 22.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct Q50Group(Q80Group);

pub type Q50Matrix = GroupMatrix<Q50Group>;

impl WeightGroup for Q50Group {
    const DTYPE: GgmlDType = GgmlDType::Q5_0;
    const BLOCK_BYTES: usize = 22;

    /// GGML's `block_q5_0`: f16 scale, 32 high bits, 16 bytes of low nibbles (value j in the
    /// low nibble of byte j, value j + 16 in its high nibble).
    fn set_lane(&mut self, lane: usize, b: &[u8]) {
        self.0.d[lane] = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..16 {
            let lo = (b[6 + j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
            let hi = (b[6 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            self.0.qs[lane][j] = lo as i8 - 16;
            self.0.qs[lane][j + 16] = hi as i8 - 16;
        }
    }

    #[inline]
    fn dot_4_weights(w: &[Self], a: &[ActGroup], lane: usize) -> [f32; 4] {
        Q80Group::dot_4_weights(as_q8(w), a, lane)
    }

    #[inline]
    fn dot_16(w: &[Self], a: &[ActGroup]) -> [[f32; 4]; 4] {
        Q80Group::dot_16(as_q8(w), a)
    }
}

impl From<Q50Group> for Q80Group {
    fn from(g: Q50Group) -> Self {
        g.0
    }
}

fn as_q8(w: &[Q50Group]) -> &[Q80Group] {
    // SAFETY: Q50Group is a transparent wrapper of Q80Group: same size, alignment and layout.
    unsafe { std::slice::from_raw_parts(w.as_ptr() as *const Q80Group, w.len()) }
}

impl WeightGroup for Q80Group {
    const DTYPE: GgmlDType = GgmlDType::Q8_0;
    const BLOCK_BYTES: usize = 34;

    fn set_lane(&mut self, lane: usize, b: &[u8]) {
        self.d[lane] = f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (q, &v) in self.qs[lane].iter_mut().zip(&b[2..34]) {
            *q = v as i8;
        }
    }

    #[inline]
    fn dot_4_weights(w: &[Self], a: &[ActGroup], lane: usize) -> [f32; 4] {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        if super::simd::vnni() {
            // SAFETY: the CPU has the features (checked at run time).
            return unsafe { dot_4_weights_vnni(w, a, lane) };
        }
        dot_4_weights_portable(w, a, lane)
    }

    #[inline]
    fn dot_16(w: &[Self], a: &[ActGroup]) -> [[f32; 4]; 4] {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        if super::simd::vnni() {
            // SAFETY: as above.
            return unsafe { dot_16_vnni(w, a) };
        }
        dot_16_portable(w, a)
    }
}

/// The float bodies, generated once per integer dot (AVX2 or VNNI: the same exact sums).
macro_rules! q8_0_dots {
    ($dot4:ident, $dot16:ident, $int_dot:ident, $(#[$attr:meta])*) => {
        $(#[$attr])*
        fn $dot4(w: &[Q80Group], a: &[ActGroup], lane: usize) -> [f32; 4] {
            let mut sums = [0f32; 4];
            for (wg, ag) in w.iter().zip(a) {
                let sumi = $int_dot([&wg.qs[0], &wg.qs[1], &wg.qs[2], &wg.qs[3]], [&ag.qs[lane]; 4]);
                for i in 0..4 {
                    sums[i] += (sumi[i] as f32 * wg.d[i]) * ag.d[lane];
                }
            }
            sums
        }

        $(#[$attr])*
        fn $dot16(w: &[Q80Group], a: &[ActGroup]) -> [[f32; 4]; 4] {
            let mut sums = [[0f32; 4]; 4];
            for (wg, ag) in w.iter().zip(a) {
                for (i, row) in sums.iter_mut().enumerate() {
                    let sumi = $int_dot([&wg.qs[i]; 4], [&ag.qs[0], &ag.qs[1], &ag.qs[2], &ag.qs[3]]);
                    for j in 0..4 {
                        row[j] += (sumi[j] as f32 * wg.d[i]) * ag.d[j];
                    }
                }
            }
            sums
        }
    };
}

q8_0_dots!(dot_4_weights_portable, dot_16_portable, int_dot_4,);
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
q8_0_dots!(
    dot_4_weights_vnni,
    dot_16_vnni,
    int_dot_4_vnni,
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
);

/// [`int_dot_4`] with AVX-512 VNNI (`vpdpbusd`, |w| against a with w's sign, exact).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn int_dot_4_vnni(w: [&[i8; QK]; 4], a: [&[i8; QK]; 4]) -> [i32; 4] {
    use std::arch::x86_64::*;
    // SAFETY: each load reads exactly 32 bytes of a 32-byte array (unaligned loads).
    unsafe {
        let z = _mm256_setzero_si256();
        let product = |w: &[i8; QK], a: &[i8; QK]| {
            let wv = _mm256_loadu_si256(w.as_ptr() as *const __m256i);
            let av = _mm256_loadu_si256(a.as_ptr() as *const __m256i);
            _mm256_dpbusd_epi32(z, _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv))
        };
        let p = [
            product(w[0], a[0]),
            product(w[1], a[1]),
            product(w[2], a[2]),
            product(w[3], a[3]),
        ];
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        let mut out = [0i32; 4];
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s);
        out
    }
}

/// Four exact i8 x i8 block dots.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
fn int_dot_4(w: [&[i8; QK]; 4], a: [&[i8; QK]; 4]) -> [i32; 4] {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 is enabled at compile time (cfg above); each load reads exactly 32 bytes of a
    // 32-byte array (unaligned loads).
    unsafe {
        let ones = _mm256_set1_epi16(1);
        // maddubs takes an unsigned left operand: |w| times a with w's sign (exact: |w| <= 128,
        // |a| <= 127, so a pair sums to at most 32512, no i16 saturation).
        let product = |w: &[i8; QK], a: &[i8; QK]| {
            let wv = _mm256_loadu_si256(w.as_ptr() as *const __m256i);
            let av = _mm256_loadu_si256(a.as_ptr() as *const __m256i);
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv));
            _mm256_madd_epi16(p, ones)
        };
        let p = [
            product(w[0], a[0]),
            product(w[1], a[1]),
            product(w[2], a[2]),
            product(w[3], a[3]),
        ];
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        let mut out = [0i32; 4];
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s);
        out
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[inline(always)]
fn int_dot_4(w: [&[i8; QK]; 4], a: [&[i8; QK]; 4]) -> [i32; 4] {
    std::array::from_fn(|i| w[i].iter().zip(a[i]).map(|(&x, &y)| x as i32 * y as i32).sum())
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

    /// Q5_0 unpacks to exactly the values candle dequantizes, and the matmul equals the f64
    /// evaluation of those values against the same activations.
    #[test]
    fn q5_0_unpacks_exactly() {
        let (n, k) = (8, 128);
        let wt = Tensor::from_vec(random((n, k), 3), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wt, GgmlDType::Q5_0).unwrap();
        let deq = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ours = Q50Matrix::from_qtensor(&q).unwrap();
        let x = random((2, k), 5);
        let acts = QuantizedActs::quantize(&x, 2, k);
        let out = ours.matmul(&acts).unwrap();
        for r in 0..2 {
            for c in 0..n {
                let mut want = 0f64;
                for b in 0..k / QK {
                    let ag = &acts.row_group(0)[b];
                    for j in 0..QK {
                        want += deq[c * k + b * QK + j] as f64 * (ag.qs[r][j] as f64 * ag.d[r] as f64);
                    }
                }
                let got = out[r * n + c] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "row {r} col {c}: {got} vs {want}"
                );
            }
        }
    }

    /// The VNNI and AVX2 paths give the same bits (where this CPU has VNNI).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn vnni_and_avx2_paths_agree() {
        if !crate::kernels::cpu::simd::vnni() {
            eprintln!("no AVX-512 VNNI here (or WICK_CPU_KERNELS=avx2): nothing to compare");
            return;
        }
        let (n, k) = (8, 576);
        let wt = Tensor::from_vec(random((n, k), 1), (n, k), &Device::Cpu).unwrap();
        let w = Q80Matrix::from_qtensor(&QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap()).unwrap();
        let acts = QuantizedActs::quantize(&random((4, k), 2), 4, k);
        let (groups, a) = (w.groups_of(0), acts.row_group(0));
        // SAFETY: VNNI checked above.
        unsafe {
            assert_eq!(dot_16_portable(groups, a), dot_16_vnni(groups, a));
            for lane in 0..4 {
                assert_eq!(
                    dot_4_weights_portable(groups, a, lane),
                    dot_4_weights_vnni(groups, a, lane)
                );
            }
        }
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
                        let ag = &acts.row_group(r / 4)[b];
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
