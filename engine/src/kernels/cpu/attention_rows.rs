//! The two inner loops of CPU attention over a block of K or V rows gathered contiguously:
//! one query's scores against each row, and `o += p * v` over the rows in order.
//!
//! Both give bit for bit the scalar forms they replace (kept as the portable path and as the
//! tests' reference): Rust never contracts `a + b * c` into an FMA, so neither do these (a
//! separate multiply and add), and the eight scores of one step are reduced across lanes with
//! the same pairing as [`dot`]'s `((0+4)+(1+5)) + ((2+6)+(3+7))`, only for eight rows at once.

/// Dot product with eight independent accumulators: vectorizes, and the order is fixed. Written
/// over exact chunks so that the compiler sees no bounds checks and keeps the eight
/// accumulators in one vector register (the indexed form it replaces stayed scalar).
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `scores[j] = dot(q, rows[j]) * scale` for the `scores.len()` rows of `rows` (`hd` floats each).
#[inline]
pub(super) fn scores(q: &[f32], rows: &[f32], scale: f32, scores: &mut [f32]) {
    let hd = q.len();
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if hd.is_multiple_of(8) {
        // SAFETY: AVX2 is compiled in; `scores_avx2` checks the lengths it relies on.
        unsafe { scores_avx2(q, rows, scale, scores) };
        return;
    }
    for (s, row) in scores.iter_mut().zip(rows.chunks_exact(hd)) {
        *s = dot(q, row) * scale;
    }
}

/// `o += p[j] * rows[j]` for j in order (`o.len()` floats per row).
#[inline]
pub(super) fn accumulate(o: &mut [f32], p: &[f32], rows: &[f32]) {
    let hd = o.len();
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    match hd {
        64 => return accumulate_regs::<8>(o, p, rows),
        128 => return accumulate_regs::<16>(o, p, rows),
        _ => {}
    }
    for (&p, row) in p.iter().zip(rows.chunks_exact(hd)) {
        for (o, &x) in o.iter_mut().zip(row) {
            *o += p * x;
        }
    }
}

/// Turns `scores` into `exp(score - max)` in place and returns `1 / sum` of them: the softmax,
/// its normalisation left to the caller (applied once to the output).
///
/// With AVX2 the max is taken over eight lanes (the same value as a sequential fold: max does
/// not round) and `exp` eight at a time by [`exp8`](super::simd::exp8), which gives glibc's `expf` bit for bit; the
/// sum stays sequential. So the weights are exactly those of the scalar loop, and a row's
/// result never depends on its neighbours (every row goes through this one function).
#[inline]
pub(super) fn softmax_unnormalized(scores: &mut [f32]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    // SAFETY: AVX2 and FMA are compiled in (x86-64-v3).
    unsafe {
        exp_minus_max_avx2(scores)
    };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    {
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
        }
    }
    let mut sum = 0f32;
    for &x in scores.iter() {
        sum += x;
    }
    1.0 / sum
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
unsafe fn exp_minus_max_avx2(scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = scores.len();
    let full = n - n % 8;
    let ptr = scores.as_mut_ptr();
    let mut maxv = _mm256_set1_ps(f32::NEG_INFINITY);
    for j in (0..full).step_by(8) {
        maxv = _mm256_max_ps(maxv, _mm256_loadu_ps(ptr.add(j)));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), maxv);
    let max = scores[full..]
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let m = _mm256_set1_ps(max);
    use super::simd::exp8;
    for j in (0..full).step_by(8) {
        _mm256_storeu_ps(ptr.add(j), exp8(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(j)), m)));
    }
    if full < n {
        let mut tail = [0f32; 8];
        tail[..n - full].copy_from_slice(&scores[full..]);
        _mm256_storeu_ps(
            tail.as_mut_ptr(),
            exp8(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), m)),
        );
        scores[full..].copy_from_slice(&tail[..n - full]);
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
unsafe fn scores_avx2(q: &[f32], rows: &[f32], scale: f32, scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = q.len();
    let n = scores.len();
    assert!(rows.len() >= n * hd && hd.is_multiple_of(8));
    let chunks = hd / 8;
    let row_acc = |j: usize| {
        let row = rows.as_ptr().add(j * hd);
        let mut acc = _mm256_setzero_ps();
        for c in 0..chunks {
            let x = _mm256_loadu_ps(q.as_ptr().add(8 * c));
            let y = _mm256_loadu_ps(row.add(8 * c));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
        }
        acc
    };
    let scale_v = _mm256_set1_ps(scale);
    let zero = _mm256_setzero_ps();
    let mut j = 0;
    while j + 8 <= n {
        let a: [__m256; 8] = std::array::from_fn(|s| row_acc(j + s));
        // Rows s and s + 4 side by side: [lanes 0-3 of s | lanes 0-3 of s+4] plus the same of
        // lanes 4-7 gives l0+l4, l1+l5, l2+l6, l3+l7 of each.
        let pair = |s: usize| {
            let lo = _mm256_permute2f128_ps(a[s], a[s + 4], 0x20);
            let hi = _mm256_permute2f128_ps(a[s], a[s + 4], 0x31);
            _mm256_add_ps(lo, hi)
        };
        let (e04, e15, e26, e37) = (pair(0), pair(1), pair(2), pair(3));
        // (0+4)+(1+5) and (2+6)+(3+7), then their sum: rows 0-3 in the low half, 4-7 high.
        let sums = _mm256_hadd_ps(_mm256_hadd_ps(e04, e15), _mm256_hadd_ps(e26, e37));
        // `+ tail` (0 here) as `dot` does: it turns a -0 sum into +0.
        let s = _mm256_mul_ps(_mm256_add_ps(sums, zero), scale_v);
        _mm256_storeu_ps(scores.as_mut_ptr().add(j), s);
        j += 8;
    }
    for (jj, s) in scores.iter_mut().enumerate().skip(j) {
        *s = dot(q, &rows[jj * hd..(jj + 1) * hd]) * scale;
    }
}

/// [`accumulate`] for `8 * C` floats per row, `o` held in registers over all rows.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline]
fn accumulate_regs<const C: usize>(o: &mut [f32], p: &[f32], rows: &[f32]) {
    use std::arch::x86_64::*;
    let hd = 8 * C;
    assert!(o.len() == hd && rows.len() >= p.len() * hd);
    // SAFETY: AVX2 is compiled in; every access is within `o` (hd floats) or within row j of
    // `rows` (checked above).
    unsafe {
        let mut acc: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(o.as_ptr().add(8 * c)));
        for (j, &pj) in p.iter().enumerate() {
            let pv = _mm256_set1_ps(pj);
            let row = rows.as_ptr().add(j * hd);
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(pv, _mm256_loadu_ps(row.add(8 * c))));
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.as_mut_ptr().add(8 * c), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_data::random;

    /// The softmax is the scalar loop's bit for bit, for lengths with and without a partial
    /// group of eight.
    #[test]
    fn softmax_is_the_scalar_loop() {
        for n in [1, 5, 8, 13, 64, 333] {
            let mut s: Vec<f32> = random(n, 5).iter().map(|x| x * 40.0).collect();
            let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let want: Vec<f32> = s.iter().map(|&x| (x - max).exp()).collect();
            let mut sum = 0f32;
            for &w in &want {
                sum += w;
            }
            let inv = softmax_unnormalized(&mut s);
            assert!(
                s.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "n {n}"
            );
            assert_eq!(inv.to_bits(), (1.0 / sum).to_bits(), "n {n}");
        }
    }

    /// Bit for bit the scalar loops, for head dims with and without a vector path, row counts
    /// with and without a partial group of eight.
    #[test]
    fn vector_paths_equal_the_scalar_loops() {
        for hd in [64, 128, 48, 20] {
            for n in [1, 7, 8, 29, 64] {
                let q = random(hd, 1);
                let rows = random(n * hd, 2);
                let mut got = vec![0f32; n];
                scores(&q, &rows, 0.125, &mut got);
                for (j, g) in got.iter().enumerate() {
                    let want = dot(&q, &rows[j * hd..(j + 1) * hd]) * 0.125;
                    assert_eq!(g.to_bits(), want.to_bits(), "scores hd {hd} n {n} row {j}");
                }
                let p = random(n, 3);
                let mut o = random(hd, 4);
                let mut want = o.clone();
                accumulate(&mut o, &p, &rows);
                for (j, &pj) in p.iter().enumerate() {
                    for (w, &x) in want.iter_mut().zip(&rows[j * hd..(j + 1) * hd]) {
                        *w += pj * x;
                    }
                }
                assert!(
                    o.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "accumulate hd {hd} n {n}"
                );
            }
        }
    }
}
