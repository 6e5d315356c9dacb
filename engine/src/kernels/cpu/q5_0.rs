//! Q5_0 weights on the CPU (AVX2, and AVX-512 VNNI where the CPU has it), in their own 5-bit
//! layout: 24 bytes per 32 values, where holding them as Q8_0 took 36. At one stream the Qwen2
//! fallback's decode is bound by reading its weights, most of them Q5_0.
//!
//! Q4_1's layout ([`super::q4_1`]) for the low four bits (eight rows per group, each 32-byte
//! vector holding GGML bytes `4c .. 4c + 4` of every row), plus the fifth bits as one 32-bit
//! mask per such vector and half (bit `4r + t` of mask `2c` is the fifth bit of row r's value
//! `4c + t`, of mask `2c + 1` that of value `16 + 4c + t`). The kernel adds the fifth bits back
//! (an AVX-512 masked move, or a shuffle and compare on AVX2), multiplies the unsigned 5-bit
//! values `q` against the activations, and subtracts `16 * sum(a)`: exactly `sum((q - 16) a)`,
//! the integer Q5_0 defines. The float step is `sum += (sumi * d) * d_a`, as for Q8_0, so the
//! results are the bits the Q8_0 kernel gave on the same weights (tested).

use candle_core::quantized::GgmlDType;
use half::f16;

use super::acts::{ActRows, QK};
use super::matmul::{GroupMatrix, WeightGroup};
use super::q8_0::Q80Group;
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::simd::{dpbusd, store_rows};

const ROWS: usize = 8;

/// Block `b` of eight consecutive Q5_0 weight rows.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Q50Group {
    d: [f32; ROWS],
    /// Fifth bits: `hmask[2c]` for the low nibbles of `qs[c]`, `hmask[2c + 1]` for the high.
    hmask: [u32; 8],
    /// `qs[c][4 r + t]`: GGML byte `4c + t` of row r (values `4c + t` and `16 + 4c + t`).
    qs: [[u8; 32]; 4],
}

pub type Q50Matrix = GroupMatrix<Q50Group>;

impl Q50Group {
    /// Row `lane`'s value `j` as the signed integer Q5_0 defines (`q - 16`).
    fn value(&self, lane: usize, j: usize) -> i8 {
        let (c, t, high) = ((j % 16) / 4, j % 4, j >= 16);
        let byte = self.qs[c][4 * lane + t];
        let low = if high { byte >> 4 } else { byte & 0x0F };
        let bit = (self.hmask[2 * c + high as usize] >> (4 * lane + t)) & 1;
        (low | (bit as u8) << 4) as i8 - 16
    }
}

impl WeightGroup for Q50Group {
    const DTYPE: GgmlDType = GgmlDType::Q5_0;
    const BLOCK_BYTES: usize = 22;
    const ROWS: usize = ROWS;

    /// GGML's `block_q5_0`: f16 scale, 32 fifth bits (bit j for value j), 16 bytes of low
    /// nibbles (value j in the low nibble of byte j, value j + 16 in its high nibble).
    fn set_lane(&mut self, lane: usize, b: &[u8]) {
        self.d[lane] = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for c in 0..4 {
            self.qs[c][4 * lane..4 * lane + 4].copy_from_slice(&b[6 + 4 * c..10 + 4 * c]);
            for t in 0..4 {
                self.hmask[2 * c] |= ((qh >> (4 * c + t)) & 1) << (4 * lane + t);
                self.hmask[2 * c + 1] |= ((qh >> (16 + 4 * c + t)) & 1) << (4 * lane + t);
            }
        }
    }

    fn dot(w: &[Self], acts: &ActRows<'_>, out: &mut [f32]) {
        super::simd::dispatch_dot!(w, acts, out)
    }
}

/// The same weights as Q8_0 groups (to fuse with Q8_0 matrices: Qwen2's v projection).
impl From<Q50Group> for Q80Group {
    fn from(g: Q50Group) -> Self {
        let mut q = Q80Group::with_scales(g.d);
        for lane in 0..ROWS {
            for j in 0..QK {
                q.set_value(lane, j, g.value(lane, j));
            }
        }
        q
    }
}

macro_rules! q5_0_dot {
    ($name:ident, $vnni:expr, $(#[$attr:meta])*) => {
        /// # Safety
        /// The CPU must have the features the function is compiled for.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        $(#[$attr])*
        unsafe fn $name(w: &[Q50Group], acts: &ActRows<'_>, out: &mut [f32]) {
            use std::arch::x86_64::*;
            let m = acts.m;
            let nib = _mm256_set1_epi8(0x0F);
            // The eight vectors of unsigned 5-bit values of a block: lo[c] then hi[c].
            let unpack = |wg: &Q50Group| {
                let mut q5 = [_mm256_setzero_si256(); 8];
                for c in 0..4 {
                    let v = _mm256_load_si256(wg.qs[c].as_ptr() as *const __m256i);
                    q5[c] = _mm256_or_si256(_mm256_and_si256(v, nib), fifth_bits::<$vnni>(wg.hmask[2 * c]));
                    q5[4 + c] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(v, 4), nib),
                        fifth_bits::<$vnni>(wg.hmask[2 * c + 1]),
                    );
                }
                q5
            };
            // More than one row group (prefill): unpack every block once for all of them, not
            // once per four rows. The same integers either way.
            let unpacked: Vec<[__m256i; 8]> = if m > 4 { w.iter().map(unpack).collect() } else { Vec::new() };
            for rg in 0..m.div_ceil(4) {
                let a = acts.row_group(rg);
                let rows = (m - rg * 4).min(4);
                let mut sums = [_mm256_setzero_ps(); 4];
                for (b, (wg, ag)) in w.iter().zip(a).enumerate() {
                    let q5 = if unpacked.is_empty() { unpack(wg) } else { unpacked[b] };
                    let wd = _mm256_load_ps(wg.d.as_ptr());
                    for (j, sum) in sums.iter_mut().enumerate().take(rows) {
                        let q = ag.qs[j].as_ptr() as *const i32;
                        let s = if $vnni {
                            // Two chains of four, not one of eight (latency); the same integers.
                            let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                            for c in 0..4 {
                                s0 = dpbusd(s0, q5[c], _mm256_set1_epi32(q.add(c).read_unaligned()));
                                s1 = dpbusd(s1, q5[4 + c], _mm256_set1_epi32(q.add(4 + c).read_unaligned()));
                            }
                            _mm256_add_epi32(s0, s1)
                        } else {
                            // maddubs pairs are at most 2 * 31 * 127; four of them fit an i16.
                            let ones = _mm256_set1_epi16(1);
                            let mut s = _mm256_setzero_si256();
                            for half in 0..2 {
                                let mut p = _mm256_setzero_si256();
                                for c in 4 * half..4 * half + 4 {
                                    let av = _mm256_set1_epi32(q.add(c).read_unaligned());
                                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(q5[c], av));
                                }
                                s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
                            }
                            s
                        };
                        // q - 16: subtract 16 * sum(a), exactly.
                        let s = _mm256_sub_epi32(s, _mm256_set1_epi32(16 * ag.isum[j]));
                        let t = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), wd), _mm256_set1_ps(ag.d[j]));
                        *sum = _mm256_add_ps(*sum, t);
                    }
                }
                store_rows(&sums[..rows], out, rg * 4);
            }
        }
    };
}

q5_0_dot!(dot_avx2, false,);
q5_0_dot!(dot_vnni, true, #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]);

/// 0x10 in byte i where bit i of `mask` is set, else 0.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn fifth_bits<const VNNI: bool>(mask: u32) -> std::arch::x86_64::__m256i {
    if VNNI {
        fifth_bits_avx512(mask)
    } else {
        use std::arch::x86_64::*;
        // Byte i takes mask byte i / 8, then tests its own bit i % 8.
        let x = _mm256_set1_epi32(mask as i32);
        let spread = _mm256_shuffle_epi8(
            x,
            _mm256_setr_epi64x(
                0,
                0x0101_0101_0101_0101,
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn fifth_bits_avx512(mask: u32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_maskz_mov_epi8(mask, _mm256_set1_epi8(0x10))
}

/// Without AVX2: the same arithmetic, one output at a time.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
fn dot_portable(w: &[Q50Group], acts: &ActRows<'_>, out: &mut [f32]) {
    let m = acts.m;
    for r in 0..m {
        let (a, j) = (acts.row_group(r / 4), r % 4);
        for lane in 0..ROWS {
            let mut sum = 0f32;
            for (wg, ag) in w.iter().zip(a) {
                let sumi: i32 = (0..QK)
                    .map(|i| wg.value(lane, i) as i32 * ag.qs[j][i] as i32)
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
    use crate::kernels::cpu::q8_0::Q80Matrix;
    use crate::kernels::cpu::test_data::{quantized, random};

    /// The 5-bit layout holds candle's dequantized values; its kernel gives the bits the Q8_0
    /// kernel gives on the same values (both paths); rows are independent of the batch.
    #[test]
    fn native_layout_equals_q8_0_layout_bit_for_bit() {
        let (n, k) = (16, 128);
        let (q, deq) = quantized(n, k, 3, GgmlDType::Q5_0);
        let ours = Q50Matrix::from_qtensor(&q).unwrap();
        let as_q8: Q80Matrix = ours.convert();
        for row in 0..n {
            let g = &ours.groups_of(row / ROWS);
            for j in 0..k {
                let (b, i) = (j / QK, j % QK);
                assert_eq!(
                    g[b].value(row % ROWS, i) as f32 * g[b].d[row % ROWS],
                    deq[row * k + j]
                );
            }
        }
        for m in [1, 3, 4, 9] {
            let x = random(m * k, 5 + m as u64);
            let acts = QuantizedActs::quantize(&x, m, k);
            let out = ours.matmul(&acts).unwrap();
            assert_eq!(out, as_q8.matmul(&acts).unwrap(), "m = {m}");
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
            if crate::kernels::cpu::simd::vnni() {
                let (mut a, mut b) = (vec![0f32; 8 * m], vec![0f32; 8 * m]);
                // SAFETY: VNNI checked; AVX2 compiled in.
                unsafe {
                    dot_avx2(ours.groups_of(1), &acts.all(), &mut a);
                    dot_vnni(ours.groups_of(1), &acts.all(), &mut b);
                }
                assert_eq!(a, b, "paths, m = {m}");
            }
            for r in 0..m {
                let alone = ours
                    .matmul(&QuantizedActs::quantize(&x[r * k..(r + 1) * k], 1, k))
                    .unwrap();
                assert_eq!(alone, out[r * n..(r + 1) * n], "row {r} of {m}");
            }
        }
    }
}
