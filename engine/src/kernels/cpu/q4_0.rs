//! Q4_0 weights on the CPU (AVX2, and AVX-512 VNNI where the CPU has it): GGUF files stored in
//! Q4_0 (llama.cpp's most common 4-bit format), and models re-quantized to it at load
//! (`--dtype q4_0`, `--draft-dtype q4_0`: a draft model's forwards are bound by reading its
//! weights, so its bytes are its speed). Before this kernel they ran on candle's Q4_0 matmul.
//!
//! A Q4_0 block holds 32 values `q - 8` (`q` in 0..15) and one f16 `d`. A group here is two
//! blocks of eight rows: the `d`s as f16, as the file keeps them (converted in the kernel, 1
//! operation a block), and the nibbles in [`super::q4_1`]'s byte order (4 bytes of every row per
//! 32-byte vector): 0.5625 bytes a weight, the file's own, where f32 scales per block would take
//! 0.625. The kernel multiplies the unsigned `q` against the activations (`vpdpbusd`, or
//! `maddubs` on AVX2) and subtracts `8 sum(a)`: exactly `sum((q - 8) a)`. The float step is
//! `sum += (sumi d) d_a`, [`super::q5_0`]'s, the same operations for every output whatever the
//! batch, so a row's result does not depend on the rows around it.

use candle_core::quantized::GgmlDType;

use super::acts::ActRows;
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
use super::acts::QK;
use super::matmul::{GroupMatrix, WeightGroup};

const ROWS: usize = 8;
/// Q4_0 blocks per group: two, so that the f16 scales fill a 32-byte row of the group.
const PAIR: usize = 2;
/// Bytes of a GGML Q4_0 block.
const BLOCK: usize = 18;

/// Blocks `2e` and `2e + 1` of eight consecutive Q4_0 weight rows.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Q40Group {
    /// `d[h][r]`: row r's scale of block h, f16 bits.
    d: [[u16; ROWS]; PAIR],
    /// `qs[h][c][4 r + t]`: GGML byte `4c + t` of row r's block h (values `4c + t` and
    /// `16 + 4c + t`).
    qs: [[[u8; 32]; 4]; PAIR],
}

pub type Q40Matrix = GroupMatrix<Q40Group>;

impl Q40Group {
    /// Row `lane`'s scale of block `h`.
    #[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
    fn scale(&self, h: usize, lane: usize) -> f32 {
        half::f16::from_bits(self.d[h][lane]).to_f32()
    }

    /// Row `lane`'s value `j` of block `h`, `q` (0..15).
    #[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
    fn q(&self, h: usize, lane: usize, j: usize) -> i32 {
        let byte = self.qs[h][(j % 16) / 4][4 * lane + j % 4];
        (if j >= 16 { byte >> 4 } else { byte & 0x0F }) as i32
    }
}

impl WeightGroup for Q40Group {
    const DTYPE: GgmlDType = GgmlDType::Q4_0;
    const BLOCK_BYTES: usize = PAIR * BLOCK;
    const ROWS: usize = ROWS;
    const BLOCKS: usize = PAIR;

    /// Lane `lane` from two consecutive GGML `block_q4_0`s: f16 scale, then 16 bytes (value j in
    /// the low nibble of byte j, value j + 16 in its high nibble).
    fn set_lane(&mut self, lane: usize, b: &[u8]) {
        for h in 0..PAIR {
            let b = &b[BLOCK * h..BLOCK * (h + 1)];
            self.d[h][lane] = u16::from_le_bytes([b[0], b[1]]);
            for c in 0..4 {
                self.qs[h][c][4 * lane..4 * lane + 4].copy_from_slice(&b[2 + 4 * c..6 + 4 * c]);
            }
        }
    }

    fn dot(w: &[Self], acts: &ActRows<'_>, out: &mut [f32]) {
        super::simd::dispatch_dot!(w, acts, out)
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod simd {
    use std::arch::x86_64::*;

    use super::super::acts::{ActGroup, ActRows};
    use super::super::simd::{nibbles_dot, store_rows, unpack_nibbles};
    use super::{Q40Group, PAIR};

    /// Adds block `h` of `wg` to the sums of the `R` rows of a row group (`ag`: that block's
    /// activations).
    ///
    /// # Safety
    /// AVX2 and F16C (compiled in); with `VNNI`, the CPU must have AVX-512 VNNI and VL.
    #[inline(always)]
    unsafe fn add_block<const VNNI: bool, const R: usize>(
        wg: &Q40Group,
        h: usize,
        ag: &ActGroup,
        sums: &mut [__m256; R],
    ) {
        let (lo, hi) = unpack_nibbles(&wg.qs[h]);
        let wd = _mm256_cvtph_ps(_mm_load_si128(wg.d[h].as_ptr() as *const __m128i));
        for (j, sum) in sums.iter_mut().enumerate() {
            let s = nibbles_dot::<VNNI>(&lo, &hi, ag.qs[j].as_ptr() as *const i32);
            // q - 8: subtract 8 * sum(a), exactly.
            let s = _mm256_sub_epi32(s, _mm256_set1_epi32(8 * ag.isum[j]));
            let t = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), wd), _mm256_set1_ps(ag.d[j]));
            *sum = _mm256_add_ps(*sum, t);
        }
    }

    /// The `R` rows of row group `rg` against every block of `w`.
    ///
    /// # Safety
    /// As [`add_block`].
    #[inline(always)]
    unsafe fn row_group<const VNNI: bool, const R: usize>(
        w: &[Q40Group],
        acts: &ActRows<'_>,
        rg: usize,
        out: &mut [f32],
    ) {
        let a = acts.row_group(rg);
        let mut sums = [_mm256_setzero_ps(); R];
        for (e, wg) in w.iter().enumerate() {
            for h in 0..PAIR {
                add_block::<VNNI, R>(wg, h, &a[PAIR * e + h], &mut sums);
            }
        }
        store_rows(&sums, out, rg * 4);
    }

    /// Every row of the run, four at a time. (Unpacking a block again per row group costs less
    /// than a buffer up to eight rows; past that the weights come from cache after the first.)
    ///
    /// # Safety
    /// As [`add_block`].
    #[inline(always)]
    pub(super) unsafe fn dot<const VNNI: bool>(w: &[Q40Group], acts: &ActRows<'_>, out: &mut [f32]) {
        let m = acts.m;
        for rg in 0..m.div_ceil(4) {
            match m - rg * 4 {
                1 => row_group::<VNNI, 1>(w, acts, rg, out),
                2 => row_group::<VNNI, 2>(w, acts, rg, out),
                3 => row_group::<VNNI, 3>(w, acts, rg, out),
                _ => row_group::<VNNI, 4>(w, acts, rg, out),
            }
        }
    }
}

super::simd::dot_entries!(Q40Group, simd::dot);

/// The kernels' arithmetic in scalar code, one output at a time: the portable path, and the
/// tests' reference.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
fn reference_dot(w: &[Q40Group], acts: &ActRows<'_>, out: &mut [f32]) {
    for r in 0..acts.m {
        let (a, j) = (acts.row_group(r / 4), r % 4);
        for lane in 0..ROWS {
            let mut sum = 0f32;
            for (e, wg) in w.iter().enumerate() {
                for h in 0..PAIR {
                    let ag = &a[PAIR * e + h];
                    let sumi: i32 = (0..QK).map(|i| (wg.q(h, lane, i) - 8) * ag.qs[j][i] as i32).sum();
                    sum += (sumi as f32 * wg.scale(h, lane)) * ag.d[j];
                }
            }
            out[r * ROWS + lane] = sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::acts::QuantizedActs;
    use crate::kernels::cpu::test_data::{quantized, random};

    /// The layout holds candle's dequantized values; the kernel gives the scalar reference's
    /// bits at every row count (both SIMD paths), each row the same alone as in the batch; and
    /// the result is the dequantized weights' product with the dequantized activations, within
    /// f32 rounding.
    #[test]
    fn equals_the_reference_and_the_dequantized_product() {
        let (n, k) = (24, 192);
        let (q, deq) = quantized(n, k, 11, GgmlDType::Q4_0);
        let ours = Q40Matrix::from_qtensor(&q).unwrap();
        for row in 0..n {
            let g = ours.groups_of(row / ROWS);
            for col in 0..k {
                let (e, h, i) = (col / (PAIR * QK), (col / QK) % PAIR, col % QK);
                let lane = row % ROWS;
                assert_eq!(
                    (g[e].q(h, lane, i) - 8) as f32 * g[e].scale(h, lane),
                    deq[row * k + col],
                    "row {row}, col {col}"
                );
            }
        }
        for m in [1, 2, 3, 4, 5, 8, 9] {
            let x = random(m * k, 40 + m as u64);
            let acts = QuantizedActs::quantize(&x, m, k);
            let got = ours.matmul(&acts).unwrap();
            let mut want = vec![0f32; m * n];
            for g in 0..n / ROWS {
                let mut part = vec![0f32; m * ROWS];
                reference_dot(ours.groups_of(g), &acts.all(), &mut part);
                for r in 0..m {
                    want[r * n + g * ROWS..][..ROWS].copy_from_slice(&part[r * ROWS..][..ROWS]);
                }
            }
            assert_eq!(got, want, "m = {m}");
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
            if crate::kernels::cpu::simd::vnni() {
                let (mut a, mut b) = (vec![0f32; ROWS * m], vec![0f32; ROWS * m]);
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
                assert_eq!(alone, got[r * n..(r + 1) * n], "row {r} of {m}");
                // Against f64 over the dequantized weights and activations.
                let rows = acts.all();
                let ag = rows.row_group(r / 4);
                let a: Vec<f32> = (0..k)
                    .map(|i| ag[i / QK].d[r % 4] * ag[i / QK].qs[r % 4][i % QK] as f32)
                    .collect();
                for c in 0..n {
                    let exact: f64 = (0..k).map(|i| deq[c * k + i] as f64 * a[i] as f64).sum();
                    let scale: f64 = (0..k).map(|i| (deq[c * k + i] as f64 * a[i] as f64).abs()).sum();
                    assert!(
                        (got[r * n + c] as f64 - exact).abs() <= 1e-5 * scale.max(1e-3),
                        "row {r}, col {c}: {} vs {exact}",
                        got[r * n + c]
                    );
                }
            }
        }
    }
}
