//! Q4_K weights on the CPU (AVX2, and AVX-512 VNNI where the CPU has it), in the file's own
//! super-block structure.
//!
//! A Q4_K super-block holds 256 four-bit values in eight sub-blocks of 32, each with a 6-bit
//! scale and a 6-bit min, and two f16s `d`, `dmin`: `value = d sc q - dmin mn`. That is Q4_1's
//! `d' q + m'` per sub-block with `d' = d sc` and `m' = -(dmin mn)`, both exact in f32 (an f16
//! times a 6-bit integer), and the kernel computes them as it goes instead of storing them: a
//! group here is one super-block of eight rows, `d` and `-dmin` per super-block, the scales and
//! mins as bytes, the values as nibbles in [`super::q4_1`]'s byte order. 0.59 bytes a weight
//! (the file's 0.56) against 0.75 for the Q4_1 groups with per-block f32 `d'`, `m'` it was held
//! as before; one stream's decode reads every weight once, so bytes are time.
//!
//! The float step per block is two fused multiply-adds, `sum = fma(m', s_a, sum)` then
//! `sum = fma(sumi, d' d_a, sum)`, where the Q4_1 kernel rounds after every multiply and add
//! (`sum += sumi d' d_a + m' s_a`): four vector operations a block and row instead of six, which
//! at four rows (a speculative verification) is ~15% of the kernel's time, since there the
//! arithmetic, not the memory, bounds it. The results move from those of Q4_K held as Q4_1 by
//! the roundings saved, within `2 nb eps` of the sum of the blocks' magnitudes (tested); the
//! operations do not depend on the batch, so a row's result still does not.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::acts::ActRows;
use super::matmul::{GroupMatrix, WeightGroup};

const ROWS: usize = 8;
/// Bytes of a GGML Q4_K super-block (256 values).
const SB: usize = 144;
/// 32-value sub-blocks per super-block.
const SUB: usize = 8;

/// One super-block (256 values) of eight consecutive rows.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct Q4KGroup {
    d: [f32; ROWS],
    /// `-dmin`, so that `-dmin * mn` is `-(dmin * mn)` exactly (IEEE products are symmetric).
    neg_dmin: [f32; ROWS],
    /// `sc[j][r]`, `mn[j][r]`: row r's scale and min of sub-block j.
    sc: [[u8; ROWS]; SUB],
    mn: [[u8; ROWS]; SUB],
    /// `qs[j][c][4 r + t]`: row r's values `32 j + 4c + t` (low nibble) and `32 j + 16 + 4c + t`
    /// (high nibble).
    qs: [[[u8; 32]; 4]; SUB],
}

impl Default for Q4KGroup {
    fn default() -> Self {
        Self {
            d: [0.0; ROWS],
            neg_dmin: [0.0; ROWS],
            sc: [[0; ROWS]; SUB],
            mn: [[0; ROWS]; SUB],
            qs: [[[0; 32]; 4]; SUB],
        }
    }
}

pub type Q4KMatrix = GroupMatrix<Q4KGroup>;

impl WeightGroup for Q4KGroup {
    const DTYPE: GgmlDType = GgmlDType::Q4K;
    const BLOCK_BYTES: usize = SB;
    const ROWS: usize = ROWS;
    const BLOCKS: usize = SUB;

    /// Lane `lane` from a GGML super-block.
    fn set_lane(&mut self, lane: usize, sb: &[u8]) {
        self.d[lane] = f16::from_le_bytes([sb[0], sb[1]]).to_f32();
        self.neg_dmin[lane] = -f16::from_le_bytes([sb[2], sb[3]]).to_f32();
        for j in 0..SUB {
            let (scale, min) = scale_min(&sb[4..16], j);
            self.sc[j][lane] = scale;
            self.mn[j][lane] = min;
            let packed = sub_block_bytes(sb, j);
            for c in 0..4 {
                self.qs[j][c][4 * lane..4 * lane + 4].copy_from_slice(&packed[4 * c..4 * c + 4]);
            }
        }
    }

    fn dot(w: &[Self], acts: &ActRows<'_>, out: &mut [f32]) {
        super::simd::dispatch_dot!(w, acts, out)
    }
}

/// The 6-bit scale and min of sub-block `j` from a super-block's 12 packed bytes.
pub(super) fn scale_min(sc: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (sc[j] & 63, sc[j + 4] & 63)
    } else {
        (
            (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4),
            (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
        )
    }
}

/// Sub-block `j`'s 16 bytes in Q4_1's order (value i in the low nibble of byte i, value 16 + i
/// in its high nibble) from a super-block: the file keeps sub-blocks 2i and 2i + 1 as the low
/// and high nibbles of one 32-byte run.
pub(super) fn sub_block_bytes(sb: &[u8], j: usize) -> [u8; 16] {
    let bytes = &sb[16 + 32 * (j / 2)..][..32];
    let v = |i: usize| {
        if j.is_multiple_of(2) {
            bytes[i] & 0x0F
        } else {
            bytes[i] >> 4
        }
    };
    std::array::from_fn(|i| v(i) | (v(i + 16) << 4))
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod simd {
    use std::arch::x86_64::*;

    use super::super::acts::{ActGroup, ActRows};
    use super::super::simd::{nibbles_dot, store_rows, unpack_nibbles};
    use super::{Q4KGroup, SUB};

    /// One sub-block of eight rows, ready for the activation rows: the nibbles apart, `d'`, `m'`.
    #[derive(Clone, Copy)]
    pub(super) struct Prepared {
        lo: [__m256i; 4],
        hi: [__m256i; 4],
        wd: __m256,
        wm: __m256,
    }

    /// # Safety
    /// AVX2 (compiled in).
    #[inline(always)]
    unsafe fn prepare(wg: &Q4KGroup, j: usize) -> Prepared {
        let bytes = |b: &[u8; 8]| {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                _mm_loadl_epi64(b.as_ptr() as *const __m128i),
            ))
        };
        let (lo, hi) = unpack_nibbles(&wg.qs[j]);
        Prepared {
            lo,
            hi,
            wd: _mm256_mul_ps(_mm256_load_ps(wg.d.as_ptr()), bytes(&wg.sc[j])),
            wm: _mm256_mul_ps(_mm256_load_ps(wg.neg_dmin.as_ptr()), bytes(&wg.mn[j])),
        }
    }

    /// Adds one sub-block's terms to the sums of the `R` rows of a row group.
    ///
    /// # Safety
    /// AVX2 (compiled in); with `VNNI`, the CPU must have AVX-512 VNNI and VL.
    #[inline(always)]
    unsafe fn add_rows<const VNNI: bool, const R: usize>(
        p: &Prepared,
        ag: &ActGroup,
        sums: &mut [__m256; R],
    ) {
        for (j, sum) in sums.iter_mut().enumerate() {
            let sumi = nibbles_dot::<VNNI>(&p.lo, &p.hi, ag.qs[j].as_ptr() as *const i32);
            // The scalar reference's `mul_add`s, in its order (see the module's header).
            *sum = _mm256_fmadd_ps(p.wm, _mm256_set1_ps(ag.s[j]), *sum);
            *sum = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(sumi),
                _mm256_mul_ps(p.wd, _mm256_set1_ps(ag.d[j])),
                *sum,
            );
        }
    }

    /// The `R` rows of row group `rg` against every sub-block of `w`.
    ///
    /// # Safety
    /// As [`add_rows`].
    #[inline(always)]
    unsafe fn row_group<const VNNI: bool, const R: usize>(
        w: &[Q4KGroup],
        prepared: &[Prepared],
        acts: &ActRows<'_>,
        rg: usize,
        out: &mut [f32],
    ) {
        let a = acts.row_group(rg);
        let mut sums = [_mm256_setzero_ps(); R];
        for (e, wg) in w.iter().enumerate() {
            for j in 0..SUB {
                let b = SUB * e + j;
                let p = if prepared.is_empty() {
                    prepare(wg, j)
                } else {
                    prepared[b]
                };
                add_rows::<VNNI, R>(&p, &a[b], &mut sums);
            }
        }
        store_rows(&sums, out, rg * 4);
    }

    /// # Safety
    /// As [`add_rows`].
    #[inline(always)]
    pub(super) unsafe fn dot<const VNNI: bool>(w: &[Q4KGroup], acts: &ActRows<'_>, out: &mut [f32]) {
        let m = acts.m;
        // Past two row groups (prefill): prepare every sub-block once for all of them. Up to
        // eight rows (a speculative verification), preparing again per row group is cheaper
        // than the buffer.
        let prepared: Vec<Prepared> = if m > 8 {
            w.iter()
                .flat_map(|wg| (0..SUB).map(move |j| prepare(wg, j)))
                .collect()
        } else {
            Vec::new()
        };
        for rg in 0..m.div_ceil(4) {
            match m - rg * 4 {
                1 => row_group::<VNNI, 1>(w, &prepared, acts, rg, out),
                2 => row_group::<VNNI, 2>(w, &prepared, acts, rg, out),
                3 => row_group::<VNNI, 3>(w, &prepared, acts, rg, out),
                _ => row_group::<VNNI, 4>(w, &prepared, acts, rg, out),
            }
        }
    }
}

super::simd::dot_entries!(Q4KGroup, simd::dot);

/// The kernels' arithmetic in scalar code, one output at a time: the portable path, and the
/// tests' reference.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
fn reference_dot(w: &[Q4KGroup], acts: &ActRows<'_>, out: &mut [f32]) {
    for r in 0..acts.m {
        let (a, j4) = (acts.row_group(r / 4), r % 4);
        for lane in 0..ROWS {
            let mut sum = 0f32;
            for (e, wg) in w.iter().enumerate() {
                for j in 0..SUB {
                    let ag = &a[SUB * e + j];
                    let sumi = sub_block_sumi(wg, j, lane, &ag.qs[j4]);
                    let wd = wg.d[lane] * wg.sc[j][lane] as f32;
                    let wm = wg.neg_dmin[lane] * wg.mn[j][lane] as f32;
                    sum = wm.mul_add(ag.s[j4], sum);
                    sum = (sumi as f32).mul_add(wd * ag.d[j4], sum);
                }
            }
            out[r * ROWS + lane] = sum;
        }
    }
}

/// Row `lane`'s integer sum of sub-block `j` against 32 activation values.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
fn sub_block_sumi(wg: &Q4KGroup, j: usize, lane: usize, a: &[i8; 32]) -> i32 {
    let mut sumi = 0i32;
    for c in 0..4 {
        for t in 0..4 {
            let byte = wg.qs[j][c][4 * lane + t];
            sumi += (byte & 0x0F) as i32 * a[4 * c + t] as i32;
            sumi += (byte >> 4) as i32 * a[16 + 4 * c + t] as i32;
        }
    }
    sumi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::acts::QuantizedActs;
    use crate::kernels::cpu::q4_1::{Q41Group, Q41Matrix};
    use crate::kernels::cpu::test_data::random;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Per output (row-major, as `matmul`), the sum over its blocks of `|sumi d' d_a| + |m' s_a|`.
    fn block_magnitudes(w: &Q4KMatrix, acts: &QuantizedActs) -> Vec<f32> {
        let (n, m) = (w.n(), acts.m);
        let rows = acts.all();
        let mut out = vec![0f32; m * n];
        for g in 0..n / ROWS {
            for r in 0..m {
                let (a, j4) = (rows.row_group(r / 4), r % 4);
                for lane in 0..ROWS {
                    let mut total = 0f64;
                    for (e, wg) in w.groups_of(g).iter().enumerate() {
                        for j in 0..SUB {
                            let ag = &a[SUB * e + j];
                            let sumi = sub_block_sumi(wg, j, lane, &ag.qs[j4]);
                            let wd = (wg.d[lane] * wg.sc[j][lane] as f32) as f64;
                            let wm = (wg.neg_dmin[lane] * wg.mn[j][lane] as f32) as f64;
                            total +=
                                (sumi as f64 * wd * ag.d[j4] as f64).abs() + (wm * ag.s[j4] as f64).abs();
                        }
                    }
                    out[r * n + g * ROWS + lane] = total as f32;
                }
            }
        }
        out
    }

    /// Q4_K as the Q4_1 groups it was held as before: `d' = d sc`, `m' = -(dmin mn)` per block.
    fn as_q4_1(q: &QTensor) -> Q41Matrix {
        let (n, k) = q.shape().dims2().unwrap();
        let data = q.data().unwrap();
        Q41Matrix::from_blocks(n, k, |row, b, g: &mut Q41Group, lane| {
            let sb = &data[(row * (k / 256) + b / 8) * SB..][..SB];
            let j = b % 8;
            let d = f16::from_le_bytes([sb[0], sb[1]]).to_f32();
            let dmin = f16::from_le_bytes([sb[2], sb[3]]).to_f32();
            let (scale, min) = scale_min(&sb[4..16], j);
            g.set_lane_parts(
                lane,
                d * scale as f32,
                -(dmin * min as f32),
                &sub_block_bytes(sb, j),
            );
        })
        .unwrap()
    }

    /// Bit for bit the scalar reference, at every row count through the tiles and the
    /// prepared-once path; each row the same alone as in the batch; VNNI and AVX2 agree. And
    /// within the roundings the fused multiply-adds save of Q4_K held as Q4_1 (the arithmetic
    /// before them): each of the `2 nb` roundings of either is at most `eps / 2` of a partial
    /// sum, which is at most the sum of the blocks' magnitudes.
    #[test]
    fn equals_the_reference_and_moves_from_q4_1_by_roundings_only() {
        let (n, k) = (24, 768);
        let w = Tensor::from_vec(random(n * k, 5), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        let ours = Q4KMatrix::from_qtensor(&q).unwrap();
        let q4_1 = as_q4_1(&q);
        for m in [1, 2, 3, 4, 5, 7, 8, 9, 13] {
            let x = random(m * k, 30 + m as u64);
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
            let nb = (k / 32) as f32;
            let magnitude = block_magnitudes(&ours, &acts);
            for (i, (&a, &b)) in got.iter().zip(&q4_1.matmul(&acts).unwrap()).enumerate() {
                let bound = 2.0 * nb * f32::EPSILON * magnitude[i];
                assert!(
                    (a - b).abs() <= bound,
                    "m = {m}, output {i}: {a} vs {b} (bound {bound})"
                );
            }
            for r in [0, m - 1] {
                let alone = QuantizedActs::quantize(&x[r * k..(r + 1) * k], 1, k);
                assert_eq!(
                    ours.matmul(&alone).unwrap(),
                    got[r * n..(r + 1) * n],
                    "row {r} of {m}"
                );
            }
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
            if crate::kernels::cpu::simd::vnni() {
                let (mut a, mut b) = (vec![0f32; 8 * m], vec![0f32; 8 * m]);
                // SAFETY: VNNI checked; AVX2 compiled in.
                unsafe {
                    dot_avx2(ours.groups_of(1), &acts.all(), &mut a);
                    dot_vnni(ours.groups_of(1), &acts.all(), &mut b);
                }
                assert_eq!(a, b, "m = {m}");
            }
        }
    }

    #[test]
    fn rejects_other_formats_and_widths() {
        let w = Tensor::from_vec(random(8 * 256, 1), (8, 256), &Device::Cpu).unwrap();
        assert!(Q4KMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q6K).unwrap()).is_err());
    }
}
