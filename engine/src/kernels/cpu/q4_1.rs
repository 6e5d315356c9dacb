//! Q4_1 weights on the CPU, with AVX2.
//!
//! candle 0.11 has no SIMD kernel for Q4_1 (its `vec_dot_unopt` took 86% of decode time) and
//! multiplies row by row. This kernel computes exactly what candle's does, bit for bit: the
//! activations are quantized to Q8_1 the same way ([`super::acts`]), each 32-value block's
//! integer dot product is exact (SIMD only speeds it up), and the float accumulation over blocks
//! uses candle's expression, `sum += sumi * d_w * d_a + m_w * s_a`, in candle's order. What
//! changes is speed: outputs are computed four at a time (four weight rows against one
//! activation row when decoding, four against four otherwise; see [`super::matmul`]), with the
//! integer dots in AVX2 `maddubs` and the float step done for the four lanes at once.
//!
//! Every output element is computed by the same operations (the same IEEE operations in the same
//! order, whichever lane it is in) whatever the number of rows, so a row's result does not depend
//! on the batch.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::acts::ActGroup;
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
use super::acts::QK;
use super::matmul::{GroupMatrix, WeightGroup};

/// Block `b` of four consecutive Q4_1 weight rows.
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
pub struct Q41Group {
    d: [f32; 4],
    m: [f32; 4],
    qs: [[u8; 16]; 4],
}

pub type Q41Matrix = GroupMatrix<Q41Group>;

impl WeightGroup for Q41Group {
    const DTYPE: GgmlDType = GgmlDType::Q4_1;
    const BLOCK_BYTES: usize = 20;

    fn set_lane(&mut self, lane: usize, b: &[u8]) {
        self.d[lane] = f16::from_le_bytes([b[0], b[1]]).to_f32();
        self.m[lane] = f16::from_le_bytes([b[2], b[3]]).to_f32();
        self.qs[lane].copy_from_slice(&b[4..20]);
    }

    #[inline]
    fn dot_4_weights(w: &[Self], a: &[ActGroup], lane: usize) -> [f32; 4] {
        dot_4_weights(w, a, lane)
    }

    #[inline]
    fn dot_16(w: &[Self], a: &[ActGroup]) -> [[f32; 4]; 4] {
        dot_16(w, a)
    }
}

/// The AVX2 bodies, generated once per integer-dot implementation: `maddubs` + `madd` (AVX2)
/// or `vpdpbusd` (AVX-512 VNNI), which give the same exact i32 block sums.
macro_rules! q4_1_dots {
    ($dot4:ident, $dot16:ident, $int_dot:ident, $(#[$attr:meta])*) => {
        /// Four outputs: the four weight rows of `w` against lane `lane` of the activation
        /// groups.
        ///
        /// # Safety
        /// The CPU must have the features the function is compiled for.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        $(#[$attr])*
        unsafe fn $dot4(w: &[Q41Group], a: &[ActGroup], lane: usize) -> [f32; 4] {
            use std::arch::x86_64::*;
            // Every load reads a field of exactly the loaded size (unaligned loads).
            let mut sums = _mm_setzero_ps();
            for (wg, ag) in w.iter().zip(a) {
                let av = _mm256_loadu_si256(ag.qs[lane].as_ptr() as *const __m256i);
                let wv = [
                    unpack(&wg.qs[0]),
                    unpack(&wg.qs[1]),
                    unpack(&wg.qs[2]),
                    unpack(&wg.qs[3]),
                ];
                let sumi = $int_dot(wv, [av; 4]);
                let wd = _mm_loadu_ps(wg.d.as_ptr());
                let wm = _mm_loadu_ps(wg.m.as_ptr());
                let ad = _mm_set1_ps(ag.d[lane]);
                let as_ = _mm_set1_ps(ag.s[lane]);
                sums = step(sums, sumi, wd, ad, wm, as_);
            }
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), sums);
            out
        }

        /// Sixteen outputs, `[weight lane][activation lane]`: the four weight rows of `w`
        /// against the four activation rows of `a`. Each weight block is unpacked once and each
        /// activation block loaded once for all sixteen.
        ///
        /// # Safety
        /// As for the four-output variant.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        $(#[$attr])*
        unsafe fn $dot16(w: &[Q41Group], a: &[ActGroup]) -> [[f32; 4]; 4] {
            use std::arch::x86_64::*;
            let mut sums = [_mm_setzero_ps(); 4];
            for (wg, ag) in w.iter().zip(a) {
                let av = [
                    _mm256_loadu_si256(ag.qs[0].as_ptr() as *const __m256i),
                    _mm256_loadu_si256(ag.qs[1].as_ptr() as *const __m256i),
                    _mm256_loadu_si256(ag.qs[2].as_ptr() as *const __m256i),
                    _mm256_loadu_si256(ag.qs[3].as_ptr() as *const __m256i),
                ];
                let ad = _mm_loadu_ps(ag.d.as_ptr());
                let as_ = _mm_loadu_ps(ag.s.as_ptr());
                for (i, sum) in sums.iter_mut().enumerate() {
                    let wv = unpack(&wg.qs[i]);
                    let sumi = $int_dot([wv; 4], av);
                    *sum = step(*sum, sumi, _mm_set1_ps(wg.d[i]), ad, _mm_set1_ps(wg.m[i]), as_);
                }
            }
            let mut out = [[0f32; 4]; 4];
            for (o, s) in out.iter_mut().zip(sums) {
                _mm_storeu_ps(o.as_mut_ptr(), s);
            }
            out
        }
    };
}

q4_1_dots!(dot_4_weights_avx2, dot_16_avx2, int_dot_4,);
q4_1_dots!(
    dot_4_weights_vnni,
    dot_16_vnni,
    int_dot_4_vnni,
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
);

/// Four outputs: VNNI where the CPU has it (see [`super::simd`]), AVX2 otherwise.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn dot_4_weights(w: &[Q41Group], a: &[ActGroup], lane: usize) -> [f32; 4] {
    // SAFETY: AVX2 is compiled in (cfg above); the VNNI variant runs only where the CPU has it.
    unsafe {
        if super::simd::vnni() {
            dot_4_weights_vnni(w, a, lane)
        } else {
            dot_4_weights_avx2(w, a, lane)
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
fn dot_16(w: &[Q41Group], a: &[ActGroup]) -> [[f32; 4]; 4] {
    // SAFETY: as in `dot_4_weights`.
    unsafe {
        if super::simd::vnni() {
            dot_16_vnni(w, a)
        } else {
            dot_16_avx2(w, a)
        }
    }
}

/// A weight block's 32 nibbles as 32 bytes: low nibbles first (values 0..16), then high.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn unpack(w: &[u8; 16]) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let packed = _mm_loadu_si128(w.as_ptr() as *const __m128i);
    let lo = _mm_and_si128(packed, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// `sums + ((sumi * wd) * ad + wm * as)` per lane: candle's expression, operation for operation
/// (no fused multiply-add, which would round differently).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn step(
    sums: std::arch::x86_64::__m128,
    sumi: std::arch::x86_64::__m128i,
    wd: std::arch::x86_64::__m128,
    ad: std::arch::x86_64::__m128,
    wm: std::arch::x86_64::__m128,
    as_: std::arch::x86_64::__m128,
) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    let t = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(sumi), wd), ad);
    _mm_add_ps(sums, _mm_add_ps(t, _mm_mul_ps(wm, as_)))
}

/// Four exact integer block dots (unpacked weight bytes 0..16 against 32 signed activation
/// bytes), as one vector of four i32.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn int_dot_4(
    w: [std::arch::x86_64::__m256i; 4],
    a: [std::arch::x86_64::__m256i; 4],
) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    // u8 x i8 -> pairwise i16 sums (at most 2 * 15 * 128: no saturation), then i32.
    let products = |w: __m256i, a: __m256i| _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), ones);
    let p = [
        products(w[0], a[0]),
        products(w[1], a[1]),
        products(w[2], a[2]),
        products(w[3], a[3]),
    ];
    // Two horizontal-add rounds leave each product's low-half sum in the low 128 bits and its
    // high-half sum in the high 128 bits, in order 0..4.
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
}

/// [`int_dot_4`] with AVX-512 VNNI: `vpdpbusd` sums the u8 x i8 products of each 4-byte lane
/// straight into i32 (exact, like maddubs + madd here, which cannot saturate).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn int_dot_4_vnni(
    w: [std::arch::x86_64::__m256i; 4],
    a: [std::arch::x86_64::__m256i; 4],
) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_si256();
    let p = [
        _mm256_dpbusd_epi32(z, w[0], a[0]),
        _mm256_dpbusd_epi32(z, w[1], a[1]),
        _mm256_dpbusd_epi32(z, w[2], a[2]),
        _mm256_dpbusd_epi32(z, w[3], a[3]),
    ];
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
}

/// Portable fallbacks (no AVX2): the same arithmetic, one lane at a time.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn dot_4_weights(w: &[Q41Group], a: &[ActGroup], lane: usize) -> [f32; 4] {
    let mut sums = [0f32; 4];
    for (wg, ag) in w.iter().zip(a) {
        for i in 0..4 {
            let sumi = int_dot(&wg.qs[i], &ag.qs[lane]) as f32;
            sums[i] += sumi * wg.d[i] * ag.d[lane] + wg.m[i] * ag.s[lane];
        }
    }
    sums
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn dot_16(w: &[Q41Group], a: &[ActGroup]) -> [[f32; 4]; 4] {
    let mut sums = [[0f32; 4]; 4];
    for (wg, ag) in w.iter().zip(a) {
        for (i, row) in sums.iter_mut().enumerate() {
            for (j, sum) in row.iter_mut().enumerate() {
                let sumi = int_dot(&wg.qs[i], &ag.qs[j]) as f32;
                *sum += sumi * wg.d[i] * ag.d[j] + wg.m[i] * ag.s[j];
            }
        }
    }
    sums
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn int_dot(w: &[u8; 16], a: &[i8; QK]) -> i32 {
    (0..16)
        .map(|j| (w[j] & 0x0F) as i32 * a[j] as i32 + (w[j] >> 4) as i32 * a[j + 16] as i32)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        // A deterministic spread of values with some outliers, like real activations.
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let x = ((i as u64 * 2654435761 + seed * 97) % 10007) as f32 / 10007.0 - 0.5;
                if i % 97 == 0 {
                    x * 40.0
                } else {
                    x
                }
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn bit_identical_to_candle_and_independent_of_row_count() {
        let (n, k) = (70, 576);
        let w = QTensor::quantize(&random((n, k), 1), GgmlDType::Q4_1).unwrap();
        let ours = Q41Matrix::from_qtensor(&w).unwrap();
        let theirs = QMatMul::from_qtensor(w).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for m in [1, 3, 4, 9] {
            let x = random((m, k), m as u64 + 7);
            let a = flat(ours.forward(&x).unwrap());
            let b = flat(theirs.forward(&x).unwrap());
            assert_eq!(a, b, "m = {m}: differs from candle");
            for r in 0..m {
                let alone = flat(ours.forward(&x.narrow(0, r, 1).unwrap()).unwrap());
                assert_eq!(alone, a[r * n..(r + 1) * n], "row {r} of {m}");
            }
        }
    }

    /// The VNNI and AVX2 paths give the same bits (where this CPU has VNNI).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn vnni_and_avx2_paths_agree() {
        use crate::kernels::cpu::acts::QuantizedActs;
        if !crate::kernels::cpu::simd::vnni() {
            eprintln!("no AVX-512 VNNI here (or WICK_CPU_KERNELS=avx2): nothing to compare");
            return;
        }
        let (n, k) = (8, 576);
        let w = Q41Matrix::from_qtensor(&QTensor::quantize(&random((n, k), 1), GgmlDType::Q4_1).unwrap())
            .unwrap();
        let x = random((4, k), 2).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let acts = QuantizedActs::quantize(&x, 4, k);
        let (groups, a) = (w.groups_of(0), acts.row_group(0));
        // SAFETY: VNNI checked above; AVX2 compiled in.
        unsafe {
            assert_eq!(dot_16_avx2(groups, a), dot_16_vnni(groups, a));
            for lane in 0..4 {
                assert_eq!(
                    dot_4_weights_avx2(groups, a, lane),
                    dot_4_weights_vnni(groups, a, lane)
                );
            }
        }
    }

    #[test]
    fn zero_rows_give_an_empty_result() {
        let w = QTensor::quantize(&random((8, 64), 3), GgmlDType::Q4_1).unwrap();
        let ours = Q41Matrix::from_qtensor(&w).unwrap();
        let out = ours
            .forward(&Tensor::zeros((0, 64), candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(out.dims(), &[0, 8]);
    }

    #[test]
    fn rejects_wrong_input_width() {
        let w = QTensor::quantize(&random((8, 64), 3), GgmlDType::Q4_1).unwrap();
        let ours = Q41Matrix::from_qtensor(&w).unwrap();
        assert!(ours.forward(&random((2, 32), 4)).is_err());
    }
}
