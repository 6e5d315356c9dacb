//! Q4_1 weights on the CPU: AVX2, and AVX-512 VNNI where the CPU has it.
//!
//! candle 0.11 has no SIMD kernel for Q4_1 (its `vec_dot_unopt` took 86% of decode time) and
//! multiplies row by row. This kernel computes exactly what candle's does, bit for bit: the
//! activations are quantized to Q8_1 the same way ([`super::acts`]), each 32-value block's
//! integer dot product is exact (SIMD only speeds it up), and the float accumulation over blocks
//! uses candle's expression, `sum += sumi * d_w * d_a + m_w * s_a`, in candle's order.
//!
//! What changes is speed. A group holds eight weight rows, and each 32-byte vector of a block
//! holds 4 bytes of every row (`qs[c][4r + t]`: row r's values `4c + t` in the low nibbles and
//! `16 + 4c + t` in the high ones, which is GGML's own byte order). Broadcasting 4 activation bytes
//! against it, one `vpdpbusd` (or `maddubs` on AVX2) adds to all eight rows' block sums at once,
//! lane by lane, so no horizontal reduction is needed and the float step runs for eight outputs
//! in one vector. Each lane is one output computed by the same operations whatever the batch,
//! so a row's result does not depend on the rows around it.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::acts::ActRows;
use super::matmul::{GroupMatrix, WeightGroup};
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::simd::{nibbles_dot, store_rows, unpack_nibbles};

/// Rows per group.
const ROWS: usize = 8;

/// Block `b` of eight consecutive Q4_1 weight rows.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Q41Group {
    d: [f32; ROWS],
    m: [f32; ROWS],
    /// `qs[c][4 r + t]`: GGML byte `4c + t` of row r (values `4c + t` and `16 + 4c + t`).
    qs: [[u8; 32]; 4],
}

pub type Q41Matrix = GroupMatrix<Q41Group>;

impl WeightGroup for Q41Group {
    const DTYPE: GgmlDType = GgmlDType::Q4_1;
    const BLOCK_BYTES: usize = 20;
    const ROWS: usize = ROWS;

    fn set_lane(&mut self, lane: usize, b: &[u8]) {
        self.d[lane] = f16::from_le_bytes([b[0], b[1]]).to_f32();
        self.m[lane] = f16::from_le_bytes([b[2], b[3]]).to_f32();
        for c in 0..4 {
            self.qs[c][4 * lane..4 * lane + 4].copy_from_slice(&b[4 + 4 * c..8 + 4 * c]);
        }
    }

    fn dot(w: &[Self], acts: &ActRows<'_>, out: &mut [f32]) {
        super::simd::dispatch_dot!(w, acts, out)
    }
}

#[cfg(test)]
impl Q41Group {
    /// Lane `lane` from dequantization parameters (`value = d q + m`) and Q4_1's 16 bytes.
    pub(super) fn set_lane_parts(&mut self, lane: usize, d: f32, m: f32, bytes: &[u8; 16]) {
        self.d[lane] = d;
        self.m[lane] = m;
        for c in 0..4 {
            self.qs[c][4 * lane..4 * lane + 4].copy_from_slice(&bytes[4 * c..4 * c + 4]);
        }
    }
}

/// The SIMD body, once per integer-dot implementation (`vpdpbusd`, or `maddubs` + `madd`: the
/// same exact i32 sums; values 0..15 times |a| <= 127 cannot saturate the i16 pairs, nor eight
/// of them summed in i16).
macro_rules! q4_1_dot {
    ($name:ident, $vnni:expr, $(#[$attr:meta])*) => {
        /// # Safety
        /// The CPU must have the features the function is compiled for.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        $(#[$attr])*
        unsafe fn $name(w: &[Q41Group], acts: &ActRows<'_>, out: &mut [f32]) {
            use std::arch::x86_64::*;
            let m = acts.m;
            // The low and high nibbles of a block: four vectors each.
            let unpack = |wg: &Q41Group| unpack_nibbles(&wg.qs);
            // Past two row groups (prefill): unpack every block once for all of them. Up to
            // eight rows (a speculative verification), unpacking again per row group is cheaper
            // than the buffer (5 rows took 2.3x the time of 4 with it).
            let unpacked: Vec<_> = if m > 8 { w.iter().map(unpack).collect() } else { Vec::new() };
            for rg in 0..m.div_ceil(4) {
                let a = acts.row_group(rg);
                let rows = (m - rg * 4).min(4);
                let mut sums = [_mm256_setzero_ps(); 4];
                for (b, (wg, ag)) in w.iter().zip(a).enumerate() {
                    let (lo, hi) = if unpacked.is_empty() { unpack(wg) } else { unpacked[b] };
                    let wd = _mm256_load_ps(wg.d.as_ptr());
                    let wm = _mm256_load_ps(wg.m.as_ptr());
                    for (j, sum) in sums.iter_mut().enumerate().take(rows) {
                        let sumi = nibbles_dot::<{ $vnni }>(&lo, &hi, ag.qs[j].as_ptr() as *const i32);
                        // candle's expression, operation for operation (no fused multiply-add).
                        let t = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sumi), wd), _mm256_set1_ps(ag.d[j]));
                        *sum = _mm256_add_ps(*sum, _mm256_add_ps(t, _mm256_mul_ps(wm, _mm256_set1_ps(ag.s[j]))));
                    }
                }
                store_rows(&sums[..rows], out, rg * 4);
            }
        }
    };
}

q4_1_dot!(dot_avx2, false,);
q4_1_dot!(dot_vnni, true, #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]);

/// Without AVX2: the same arithmetic, one output at a time.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn dot_portable(w: &[Q41Group], acts: &ActRows<'_>, out: &mut [f32]) {
    let m = acts.m;
    for r in 0..m {
        let a = acts.row_group(r / 4);
        let j = r % 4;
        for lane in 0..ROWS {
            let mut sum = 0f32;
            for (wg, ag) in w.iter().zip(a) {
                let mut sumi = 0i32;
                for c in 0..4 {
                    for t in 0..4 {
                        let byte = wg.qs[c][4 * lane + t];
                        sumi += (byte & 0x0F) as i32 * ag.qs[j][4 * c + t] as i32;
                        sumi += (byte >> 4) as i32 * ag.qs[j][16 + 4 * c + t] as i32;
                    }
                }
                sum += sumi as f32 * wg.d[lane] * ag.d[j] + wg.m[lane] * ag.s[j];
            }
            out[r * ROWS + lane] = sum;
        }
    }
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
        for m in [1, 3, 4, 9] {
            let x = random((m, k), 2).flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let acts = QuantizedActs::quantize(&x, m, k);
            let (mut a, mut b) = (vec![0f32; 8 * m], vec![0f32; 8 * m]);
            // SAFETY: VNNI checked above; AVX2 compiled in.
            unsafe {
                dot_avx2(w.groups_of(0), &acts.all(), &mut a);
                dot_vnni(w.groups_of(0), &acts.all(), &mut b);
            }
            assert_eq!(a, b, "m = {m}");
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
