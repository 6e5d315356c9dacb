//! Activations quantized to 8 bits per value, once per layer input and shared by every matrix
//! that reads it (q/k/v, gate/up), whatever their weight format.
//!
//! Q8_1 exactly as candle's `BlockQ8_1::from_float`: per 32-value block, `d = amax / 127` (kept as
//! f16), `q = round(x / d)` (half away from zero) and the scaled sum `s = f16(sum q) * d`. Q8_0
//! weights use `d` and `q` only: candle's Q8_0 activation block is the same `d` and `q`.
//! Rows are stored in groups of four, interleaved block by block, so that four rows' scales are
//! one load.

/// Values per quantization block.
pub const QK: usize = 32;

/// Block `b` of four consecutive activation rows.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct ActGroup {
    pub d: [f32; 4],
    pub s: [f32; 4],
    pub qs: [[i8; QK]; 4],
    /// `qs + 128` as unsigned bytes, for `vpdpbusd` against signed weights (Q8_0), which takes
    /// its unsigned operand first; the kernel subtracts `128 * sum(w)`, exactly.
    pub qu: [[u8; QK]; 4],
    /// The exact sum of `qs`, for weights stored with an offset (Q5_0's `q - 16`).
    pub isum: [i32; 4],
    /// 32 times the exact sums of the first and the last 16 of `qs`: Q6_K's weights are stored
    /// unsigned (`q`, not `q - 32`), and its scales apply per 16 values.
    pub half32: [[i32; 2]; 4],
}

impl Default for ActGroup {
    fn default() -> Self {
        Self {
            d: [0.0; 4],
            s: [0.0; 4],
            qs: [[0; QK]; 4],
            qu: [[128; QK]; 4],
            isum: [0; 4],
            half32: [[0; 2]; 4],
        }
    }
}

/// `m` rows of `k` values, quantized: `ceil(m / 4) * (k / 32)` groups (missing rows are zeros).
pub struct QuantizedActs {
    pub groups: Vec<ActGroup>,
    pub m: usize,
    pub k: usize,
}

impl QuantizedActs {
    /// `x`: `m * k` values, row-major; `k` a multiple of 32. Rows are quantized in parallel
    /// (each row's result is independent of the others).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        use rayon::prelude::*;
        debug_assert_eq!(x.len(), m * k);
        let kb = k / QK;
        let mut groups = vec![ActGroup::default(); m.div_ceil(4) * kb];
        let quantize_group = |(rg, out): (usize, &mut [ActGroup])| {
            for lane in 0..4 {
                let row = rg * 4 + lane;
                if row >= m {
                    break;
                }
                for (b, block) in x[row * k..(row + 1) * k].chunks_exact(QK).enumerate() {
                    quantize_block(block, &mut out[b], lane);
                }
            }
        };
        if m * k >= 64 * 1024 {
            groups
                .par_chunks_mut(kb.max(1))
                .enumerate()
                .for_each(quantize_group);
        } else {
            groups.chunks_mut(kb.max(1)).enumerate().for_each(quantize_group);
        }
        Self { groups, m, k }
    }

    /// All rows, as the kernels read them.
    pub fn all(&self) -> ActRows<'_> {
        self.rows(0, self.m)
    }

    /// Rows `first .. first + count` (`first` a multiple of 4, the range within `m`).
    pub fn rows(&self, first: usize, count: usize) -> ActRows<'_> {
        debug_assert!(first.is_multiple_of(4) && first + count <= self.m);
        let kb = self.k / QK;
        ActRows {
            groups: &self.groups[first / 4 * kb..(first + count).div_ceil(4) * kb],
            m: count,
            kb,
        }
    }
}

/// A run of consecutive activation rows: what a kernel call computes (a matmul's rows are cut
/// into blocks so that a task's outputs stay in cache).
#[derive(Clone, Copy)]
pub struct ActRows<'a> {
    groups: &'a [ActGroup],
    /// Rows in the run.
    pub m: usize,
    kb: usize,
}

impl ActRows<'_> {
    /// The groups of row group `rg` of the run (its rows `4 rg .. 4 rg + 4`).
    #[inline]
    pub fn row_group(&self, rg: usize) -> &[ActGroup] {
        &self.groups[rg * self.kb..(rg + 1) * self.kb]
    }
}

#[inline]
fn quantize_block(block: &[f32], g: &mut ActGroup, lane: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        let block: &[f32; QK] = block.try_into().expect("a block of 32");
        // SAFETY: AVX2 is compiled in.
        let d = unsafe { simd_quantize(block, &mut g.qs[lane]) };
        finish_block(g, lane, d);
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    scalar_quantize_block(block, g, lane);
}

/// `d = amax / 127` and its inverse (0 for an all-zero block).
#[inline(always)]
fn scales(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// What follows from a block's `qs`: `qu`, the sums, `d` and `s`.
#[inline(always)]
fn finish_block(g: &mut ActGroup, lane: usize, d: f32) {
    use half::f16;
    let dh = f16::from_f32(d);
    let mut sum = 0i32;
    for (u, &q) in g.qu[lane].iter_mut().zip(&g.qs[lane]) {
        *u = (q as u8) ^ 0x80;
        sum += q as i32;
    }
    g.isum[lane] = sum;
    let first: i32 = g.qs[lane][..QK / 2].iter().map(|&q| q as i32).sum();
    g.half32[lane] = [32 * first, 32 * (sum - first)];
    g.d[lane] = dh.to_f32();
    g.s[lane] = (f16::from_f32(sum as f32) * dh).to_f32();
}

/// The block's arithmetic one value at a time: the portable path, and the tests' reference.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "avx2"))))]
fn scalar_quantize_block(block: &[f32], g: &mut ActGroup, lane: usize) {
    let amax = block.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let (d, id) = scales(amax);
    for (q, &v) in g.qs[lane].iter_mut().zip(block) {
        *q = f32::round(v * id) as i8;
    }
    finish_block(g, lane, d);
}

/// `q = round(v / d)` for 32 values, eight at a time: the same IEEE product `v * id`, rounded
/// half away from zero as `f32::round` does (truncate, then step away from zero where the
/// dropped fraction, exact in f32, is at least one half); returns `d`. `|v * id| <= 127` up to a rounding, so the integers fit i8 as `as i8` would
/// give them (for finite values; a NaN activation is garbage either way). The scalar loop took
/// ~1.3 ns a value, ~3% of a four-row forward.
///
/// # Safety
/// AVX2 (compiled in).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
unsafe fn simd_quantize(block: &[f32; QK], qs: &mut [i8; QK]) -> f32 {
    use std::arch::x86_64::*;
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(block.as_ptr().add(8 * i)));
    let mut m = _mm256_and_ps(v[0], abs_mask);
    for x in &v[1..] {
        m = _mm256_max_ps(m, _mm256_and_ps(*x, abs_mask));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let amax = lanes.iter().fold(0f32, |a, &x| a.max(x));
    let (d, id) = scales(amax);
    let idv = _mm256_set1_ps(id);
    let half = _mm256_set1_ps(0.5);
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let one = _mm256_set1_ps(1.0);
    let q: [__m256i; 4] = std::array::from_fn(|i| {
        let x = _mm256_mul_ps(v[i], idv);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
        let frac = _mm256_and_ps(_mm256_sub_ps(x, t), abs_mask);
        let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), one);
        let r = _mm256_add_ps(t, _mm256_or_ps(up, _mm256_and_ps(x, sign)));
        _mm256_cvttps_epi32(r)
    });
    // i32 -> i16 -> i8 with saturation; the packs interleave 128-bit lanes, the permute undoes it.
    let w01 = _mm256_packs_epi32(q[0], q[1]);
    let w23 = _mm256_packs_epi32(q[2], q[3]);
    let b = _mm256_packs_epi16(w01, w23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, b);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector path gives the scalar code's bytes, sums and scales: random blocks, blocks
    /// whose values land on halves (ties round away from zero), zeros, one large value.
    #[test]
    fn the_vector_block_is_the_scalar_block() {
        let mut blocks: Vec<[f32; QK]> = Vec::new();
        let random = crate::kernels::cpu::test_data::random(QK * 64, 3);
        for (i, c) in random.chunks_exact(QK).enumerate() {
            blocks.push(std::array::from_fn(|j| c[j] * (1 + i) as f32 * 7.3));
        }
        // amax 127 gives d = 1: every `k + 0.5` is a tie.
        blocks.push(std::array::from_fn(|j| {
            if j == 0 {
                127.0
            } else {
                (j as f32 - 16.0) + 0.5
            }
        }));
        blocks.push(std::array::from_fn(|j| {
            if j == 0 {
                -127.0
            } else {
                -(j as f32) - 0.5
            }
        }));
        blocks.push([0.0; QK]);
        blocks.push(std::array::from_fn(
            |j| if j == 5 { 1e30 } else { 1e-30 * j as f32 },
        ));
        blocks.push(std::array::from_fn(|j| -2.0f32.powi(j as i32 - 20)));
        for (i, block) in blocks.iter().enumerate() {
            let (mut a, mut b) = (ActGroup::default(), ActGroup::default());
            scalar_quantize_block(block, &mut a, i % 4);
            quantize_block(block, &mut b, i % 4);
            let lane = i % 4;
            assert_eq!(a.qs[lane], b.qs[lane], "block {i}");
            assert_eq!(a.qu[lane], b.qu[lane], "block {i}");
            assert_eq!(
                (
                    a.isum[lane],
                    a.half32[lane],
                    a.d[lane].to_bits(),
                    a.s[lane].to_bits()
                ),
                (
                    b.isum[lane],
                    b.half32[lane],
                    b.d[lane].to_bits(),
                    b.s[lane].to_bits()
                ),
                "block {i}"
            );
        }
    }
}
