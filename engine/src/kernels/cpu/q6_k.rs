//! Q6_K weights on the CPU (AVX2, and AVX-512 VNNI where the CPU has it), so that models with
//! Q6_K matrices (Qwen2's Q4_K_M keeps half its `ffn_down` and its output head in Q6_K) give a
//! row the same result alone or in a batch: candle's Q6_K kernel does not (its results for one
//! row and for many differ).
//!
//! A Q6_K super-block holds 256 six-bit values `q - 32` (`q` in 0..63) in sixteen sub-blocks of
//! 16, each with an i8 scale, and one f16 `d`: `value = d * sc * (q - 32)`. A group here is one
//! super-block of eight rows: `q` as one byte each (the [`super::q8_0`] order: 4 bytes of every
//! row per 32-byte vector), the sub-block scales as i8 and `d` once per super-block (as f32,
//! exact): 1.08 bytes a weight, against 1.375 for the i8 values with i32 scales and per-block
//! `d` this replaced (one stream's decode reads every weight once, so bytes are time), and the
//! file's 0.82. Keeping the six bits packed as the file does measured slower out of memory (the
//! unpacking, about 36 vector operations a block, made the one-row kernel compute-bound:
//! 151936 x 1536 at one row, 12.6 ms packed against 7.7 ms as bytes).
//!
//! A block's integer sum is `sc0 * (sum(q a, first 16) - 32 sum(a, first 16)) + sc1 * (the same
//! for the last 16)`: `q` is unsigned, so `vpdpbusd` takes it as is, and `32 sum(a)` per half
//! comes with the activations ([`ActGroup::half32`]). Exact in i32, so the float step sees the
//! same integer as `(q - 32) . a` would give. That step is one fused multiply-add,
//! `sum = fma(sumi, d d_a, sum)`, where the i8 layout this replaced rounded `sumi d`, its
//! product with `d_a` and the sum apart: one rounding a block less (within the f64 evaluation's
//! tolerance, tested), a vector operation less a block and row.
//!
//! Rows are computed in tiles of up to four, each reading the group's blocks (from cache after
//! the first tile); at four rows the kernel runs ~2.4x the one-row time for 4x the work, where
//! the i8 layout's took 3.4x.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::acts::ActRows;
use super::matmul::{GroupMatrix, WeightGroup};
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
use super::simd::{dpbusd, store_rows};

const ROWS: usize = 8;
/// Bytes of a GGML Q6_K super-block (256 values).
const SB: usize = 210;
/// 32-value blocks per super-block.
const SUB: usize = 8;

/// One super-block (256 values) of eight consecutive rows.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct Q6KGroup {
    d: [f32; ROWS],
    /// `sc[j][h][r]`: row r's scale of values `32 j + 16 h ..` (16 of them).
    sc: [[[i8; ROWS]; 2]; SUB],
    /// `q[j][c][4 r + t]`: row r's value `32 j + 4c + t`, `q` (0..63) unsigned.
    q: [[[u8; 32]; 8]; SUB],
}

impl Default for Q6KGroup {
    fn default() -> Self {
        Self {
            d: [0.0; ROWS],
            sc: [[[0; ROWS]; 2]; SUB],
            q: [[[0; 32]; 8]; SUB],
        }
    }
}

pub type Q6KMatrix = GroupMatrix<Q6KGroup>;

impl WeightGroup for Q6KGroup {
    const DTYPE: GgmlDType = GgmlDType::Q6K;
    const BLOCK_BYTES: usize = SB;
    const ROWS: usize = ROWS;
    const BLOCKS: usize = SUB;

    /// Lane `lane` from a GGML super-block.
    fn set_lane(&mut self, lane: usize, sb: &[u8]) {
        let (q, sc, d) = unpack_super_block(sb);
        self.d[lane] = d;
        for j in 0..SUB {
            for h in 0..2 {
                self.sc[j][h][lane] = sc[2 * j + h];
            }
            for c in 0..8 {
                for t in 0..4 {
                    self.q[j][c][4 * lane + t] = q[32 * j + 4 * c + t];
                }
            }
        }
    }

    fn dot(w: &[Self], acts: &ActRows<'_>, out: &mut [f32]) {
        super::simd::dispatch_dot!(w, acts, out)
    }
}

impl Q6KGroup {
    /// Row `lane`'s value `i` of sub-block `j`, `q` (0..63).
    #[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
    fn q(&self, j: usize, lane: usize, i: usize) -> i32 {
        self.q[j][i / 4][4 * lane + i % 4] as i32
    }
}

/// The 256 values `q` (0..63), 16 scales and `d` of a Q6_K super-block, in value order.
fn unpack_super_block(sb: &[u8]) -> ([u8; 256], [i8; 16], f32) {
    let (ql, qh, sc) = (&sb[..128], &sb[128..192], &sb[192..208]);
    let d = f16::from_le_bytes([sb[208], sb[209]]).to_f32();
    let mut v = [0u8; 256];
    for h in 0..2 {
        let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
        for l in 0..32 {
            let q = |low: u8, shift: u32| low | (((qh[l] >> shift) & 3) << 4);
            v[128 * h + l] = q(ql[l] & 0xF, 0);
            v[128 * h + l + 32] = q(ql[l + 32] & 0xF, 2);
            v[128 * h + l + 64] = q(ql[l] >> 4, 4);
            v[128 * h + l + 96] = q(ql[l + 32] >> 4, 6);
        }
    }
    (v, std::array::from_fn(|i| sc[i] as i8), d)
}

/// Rows `first .. first + R` (one row group, `R` <= 4) of the run against every super-block of
/// `w`: per 32-value block, one integer dot and float step per row.
///
/// # Safety
/// AVX2 (compiled in); with `VNNI`, the CPU must have AVX-512 VNNI and VL.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn tile<const VNNI: bool, const R: usize>(
    w: &[Q6KGroup],
    acts: &ActRows<'_>,
    first: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let groups = acts.row_group(first / 4);
    let mut sums = [_mm256_setzero_ps(); R];
    for (e, wg) in w.iter().enumerate() {
        let wd = _mm256_load_ps(wg.d.as_ptr());
        for j in 0..SUB {
            let sc0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(wg.sc[j][0].as_ptr() as *const __m128i));
            let sc1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(wg.sc[j][1].as_ptr() as *const __m128i));
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for c in 0..4 {
                lo[c] = _mm256_load_si256(wg.q[j][c].as_ptr() as *const __m256i);
                hi[c] = _mm256_load_si256(wg.q[j][4 + c].as_ptr() as *const __m256i);
            }
            for (r, sum) in sums.iter_mut().enumerate() {
                let ag = &groups[SUB * e + j];
                let lane = r;
                let q = ag.qs[lane].as_ptr() as *const i32;
                let a = |c: usize| _mm256_set1_epi32(q.add(c).read_unaligned());
                let (s0, s1) = if VNNI {
                    let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                    for c in 0..4 {
                        s0 = dpbusd(s0, lo[c], a(c));
                        s1 = dpbusd(s1, hi[c], a(4 + c));
                    }
                    (s0, s1)
                } else {
                    // 63 * 127 * 2 per i16 pair, two of them summed: no saturation.
                    let pair = |w0, a0, w1, a1| {
                        let p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, a0), _mm256_maddubs_epi16(w1, a1));
                        _mm256_madd_epi16(p, ones)
                    };
                    (
                        _mm256_add_epi32(pair(lo[0], a(0), lo[1], a(1)), pair(lo[2], a(2), lo[3], a(3))),
                        _mm256_add_epi32(pair(hi[0], a(4), hi[1], a(5)), pair(hi[2], a(6), hi[3], a(7))),
                    )
                };
                let h0 = _mm256_sub_epi32(s0, _mm256_set1_epi32(ag.half32[lane][0]));
                let h1 = _mm256_sub_epi32(s1, _mm256_set1_epi32(ag.half32[lane][1]));
                let sumi = _mm256_add_epi32(_mm256_mullo_epi32(h0, sc0), _mm256_mullo_epi32(h1, sc1));
                // The scalar reference's `mul_add`.
                *sum = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(sumi),
                    _mm256_mul_ps(wd, _mm256_set1_ps(ag.d[lane])),
                    *sum,
                );
            }
        }
    }
    store_rows(&sums, out, first);
}

/// Every row of the run, in tiles of up to four.
///
/// # Safety
/// As [`tile`].
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn tiles<const VNNI: bool>(w: &[Q6KGroup], acts: &ActRows<'_>, out: &mut [f32]) {
    let mut first = 0;
    while first < acts.m {
        match acts.m - first {
            1 => tile::<VNNI, 1>(w, acts, first, out),
            2 => tile::<VNNI, 2>(w, acts, first, out),
            3 => tile::<VNNI, 3>(w, acts, first, out),
            _ => tile::<VNNI, 4>(w, acts, first, out),
        }
        first += 4;
    }
}

super::simd::dot_entries!(Q6KGroup, tiles);

/// The kernels' arithmetic in scalar code: the portable path, and the tests' reference.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
fn reference_dot(w: &[Q6KGroup], acts: &ActRows<'_>, out: &mut [f32]) {
    for r in 0..acts.m {
        let (a, j4) = (acts.row_group(r / 4), r % 4);
        for lane in 0..ROWS {
            let mut sum = 0f32;
            for (e, wg) in w.iter().enumerate() {
                for j in 0..SUB {
                    let ag = &a[SUB * e + j];
                    let half = |h: usize| -> i32 {
                        (16 * h..16 * h + 16)
                            .map(|i| (wg.q(j, lane, i) - 32) * ag.qs[j4][i] as i32)
                            .sum()
                    };
                    let sumi = half(0) * wg.sc[j][0][lane] as i32 + half(1) * wg.sc[j][1][lane] as i32;
                    sum = (sumi as f32).mul_add(wg.d[lane] * ag.d[j4], sum);
                }
            }
            out[r * ROWS + lane] = sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::acts::{QuantizedActs, QK};
    use crate::kernels::cpu::q4_k::Q4KMatrix;
    use crate::kernels::cpu::test_data::quantized;
    use candle_core::quantized::QTensor;
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

    /// Q6_K and Q4_K keep exactly candle's dequantized weights; the matmuls equal the
    /// f64 evaluation (Q4_1 up to its approximate activation sums); a row's result is the same
    /// alone as in a batch; the VNNI and AVX2 paths agree bit for bit.
    #[test]
    fn k_quants_convert_exactly_and_rows_are_independent() {
        let (n, k) = (16, 512);
        let (q6, deq6) = quantized(n, k, 1, GgmlDType::Q6K);
        let m6 = Q6KMatrix::from_qtensor(&q6).unwrap();
        let (q4, deq4) = quantized(n, k, 1, GgmlDType::Q4K);
        let m4 = Q4KMatrix::from_qtensor(&q4).unwrap();
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

    /// The SIMD kernels compute exactly the scalar reference, for every tile size and a tail
    /// past eight rows.
    #[test]
    fn kernels_equal_the_scalar_reference_bit_for_bit() {
        let (n, k) = (16, 768);
        let w = Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).unwrap();
        let m6 = Q6KMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q6K).unwrap()).unwrap();
        for m in 1..=12 {
            let x = random(m * k, 20 + m as u64);
            let acts = QuantizedActs::quantize(&x, m, k);
            for g in 0..2 {
                let mut want = vec![0f32; 8 * m];
                reference_dot(m6.groups_of(g), &acts.all(), &mut want);
                let mut got = vec![0f32; 8 * m];
                Q6KGroup::dot(m6.groups_of(g), &acts.all(), &mut got);
                assert_eq!(got, want, "m = {m}, group {g}");
            }
        }
    }
}
