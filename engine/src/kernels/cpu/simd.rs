//! Which SIMD path the CPU kernels take, chosen once at run time, and the vector helpers they share
//! (glibc's `expf` eight at a time, `silu(g) * up`).
//!
//! The binary is built for x86-64-v3 (AVX2 + FMA), which every machine here has. AVX-512 VNNI
//! (`vpdpbusd`: u8 x i8 products summed into i32 in one instruction) is used where the CPU
//! reports it; it gives the same exact integer sums as the AVX2 path, so results do not depend on
//! the path. AMX is never used (some of these machines advertise it and fault when it runs).
//! `WICK_CPU_KERNELS=avx2` forces the AVX2 path (tests run both).

use std::sync::OnceLock;

static VNNI: OnceLock<bool> = OnceLock::new();

/// True when the AVX-512 VNNI kernels run.
pub fn vnni() -> bool {
    *VNNI.get_or_init(|| {
        let forced_avx2 = std::env::var("WICK_CPU_KERNELS").is_ok_and(|v| v == "avx2");
        !forced_avx2 && detected()
    })
}

#[cfg(target_arch = "x86_64")]
fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> bool {
    false
}

/// What the kernels run on, for logs and benchmarks.
pub fn describe() -> &'static str {
    if vnni() {
        "avx512-vnni"
    } else {
        "avx2"
    }
}

/// A format kernel's entry: `dot_vnni` where the CPU has VNNI, else `dot_avx2` (both compiled
/// in with AVX2), `dot_portable` in a build without AVX2; the three are the caller's.
macro_rules! dispatch_dot {
    ($w:expr, $acts:expr, $out:expr) => {{
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        {
            // SAFETY: AVX2 is compiled in (cfg); the VNNI variant runs only where the CPU has it.
            unsafe {
                if $crate::kernels::cpu::simd::vnni() {
                    dot_vnni($w, $acts, $out)
                } else {
                    dot_avx2($w, $acts, $out)
                }
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
        dot_portable($w, $acts, $out)
    }};
}
pub(super) use dispatch_dot;

/// The three entries [`dispatch_dot!`] calls, for a format whose SIMD body is one function
/// generic over VNNI (`BODY::<VNNI>(w, acts, out)`) and whose scalar arithmetic, the portable
/// path, is its `reference_dot`.
macro_rules! dot_entries {
    ($group:ty, $($body:tt)+) => {
        /// # Safety
        /// AVX2 (compiled in).
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        unsafe fn dot_avx2(w: &[$group], acts: &ActRows<'_>, out: &mut [f32]) {
            $($body)+::<false>(w, acts, out)
        }

        /// # Safety
        /// The CPU must have AVX-512 VNNI and VL.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn dot_vnni(w: &[$group], acts: &ActRows<'_>, out: &mut [f32]) {
            $($body)+::<true>(w, acts, out)
        }

        /// Without AVX2: the kernels' arithmetic in scalar code.
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
        fn dot_portable(w: &[$group], acts: &ActRows<'_>, out: &mut [f32]) {
            reference_dot(w, acts, out)
        }
    };
}
pub(super) use dot_entries;

/// `vpdpbusd` (u8 x i8 products of each 4-byte lane summed into i32, added to `acc`). Inlined
/// into the kernels' VNNI variants, which are compiled with these features; the AVX2 variants
/// never reach it.
///
/// # Safety
/// The CPU must have AVX-512 VNNI and VL ([`vnni`]).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(super) unsafe fn dpbusd(
    acc: std::arch::x86_64::__m256i,
    u: std::arch::x86_64::__m256i,
    s: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    dpbusd_vnni(acc, u, s)
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn dpbusd_vnni(
    acc: std::arch::x86_64::__m256i,
    u: std::arch::x86_64::__m256i,
    s: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    std::arch::x86_64::_mm256_dpbusd_epi32(acc, u, s)
}

/// A 4-bit block of eight rows in Q4_1's byte order (`qs[c][4 r + t]`: row r's values `4c + t`
/// in the low nibbles, `16 + 4c + t` in the high ones) as unsigned bytes: the low nibbles, then
/// the high. Q4_0, Q4_1 and Q4_K hold their nibbles this way.
///
/// # Safety
/// AVX2 (compiled in); `qs` 32-byte aligned.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(super) unsafe fn unpack_nibbles(
    qs: &[[u8; 32]; 4],
) -> ([std::arch::x86_64::__m256i; 4], [std::arch::x86_64::__m256i; 4]) {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(0x0F);
    let mut lo = [_mm256_setzero_si256(); 4];
    let mut hi = [_mm256_setzero_si256(); 4];
    for c in 0..4 {
        let v = _mm256_load_si256(qs[c].as_ptr() as *const __m256i);
        lo[c] = _mm256_and_si256(v, mask);
        hi[c] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
    }
    (lo, hi)
}

/// Each of the eight rows' exact integer dot of an [`unpack_nibbles`] block with 32 activation
/// bytes `q` (values 0..15 against i8). With VNNI, two chains of four `vpdpbusd` (low and high
/// nibbles): one chain of eight leaves each waiting on the latency of the one before; integer
/// addition is exact, so the sum is the same either way.
///
/// # Safety
/// AVX2 (compiled in); with `VNNI`, the CPU must have AVX-512 VNNI and VL; `q` points to 32
/// bytes.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(super) unsafe fn nibbles_dot<const VNNI: bool>(
    lo: &[std::arch::x86_64::__m256i; 4],
    hi: &[std::arch::x86_64::__m256i; 4],
    q: *const i32,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let a = |c: usize| _mm256_set1_epi32(q.add(c).read_unaligned());
    if VNNI {
        let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for c in 0..4 {
            s0 = dpbusd(s0, lo[c], a(c));
            s1 = dpbusd(s1, hi[c], a(4 + c));
        }
        _mm256_add_epi32(s0, s1)
    } else {
        // 15 * 127 * 2 per i16 pair, eight of them summed: no saturation.
        let mut s = _mm256_setzero_si256();
        for c in 0..4 {
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(lo[c], a(c)));
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(hi[c], a(4 + c)));
        }
        _mm256_madd_epi16(s, _mm256_set1_epi16(1))
    }
}

/// Writes eight outputs per activation row, row-major: `sums[j]` (the group's eight weight rows
/// against activation row `first_row + j`) to `out[8 (first_row + j) ..][..8]`, one store each.
/// The tail of every kernel in this directory.
///
/// # Safety
/// AVX (compiled in with AVX2).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(super) unsafe fn store_rows(sums: &[std::arch::x86_64::__m256], out: &mut [f32], first_row: usize) {
    let out = &mut out[8 * first_row..8 * (first_row + sums.len())];
    for (j, sum) in sums.iter().enumerate() {
        std::arch::x86_64::_mm256_storeu_ps(out[8 * j..].as_mut_ptr(), *sum);
    }
}

/// glibc's `expf` (sysdeps/ieee754/flt-32/e_expf.c, as its FMA build computes it), eight at a
/// time: in double precision, `2^(k/32)` from a 32-entry table times a cubic in `r`, where
/// `x * 32 / ln 2 = k + r`; below `ln 2^-149` the subnormal or zero glibc returns. Bit for bit
/// libm's result (tested over the softmax's range), so vectorizing changes no weight.
///
/// # Safety
/// AVX2 and FMA (compiled in).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(super) unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // 2^(i/32) as bits, less i << 47 (added back with k << 47: the table's exponent carry).
    const TABLE: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];
    let half = |xd: __m256d| {
        let inv_ln2_n = _mm256_set1_pd(f64::from_bits(0x4047_1547_652b_82fe)); // 32 / ln 2
        let shift = _mm256_set1_pd(f64::from_bits(0x4338_0000_0000_0000)); // 1.5 * 2^52
        let kd = _mm256_fmadd_pd(inv_ln2_n, xd, shift);
        let ki = _mm256_castpd_si256(kd);
        let kd = _mm256_sub_pd(kd, shift);
        let r = _mm256_fmsub_pd(inv_ln2_n, xd, kd);
        let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        let t = _mm256_i64gather_epi64::<8>(TABLE.as_ptr() as *const i64, idx);
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let c0 = _mm256_set1_pd(f64::from_bits(0x3ebc_6af8_4b91_2394));
        let c1 = _mm256_set1_pd(f64::from_bits(0x3f2e_bfce_50fa_c4f3));
        let c2 = _mm256_set1_pd(f64::from_bits(0x3f96_2e42_ff0c_52d6));
        let z = _mm256_fmadd_pd(r, c0, c1);
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(r, c2, _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    };
    let lo = half(_mm256_cvtps_pd(_mm256_castps256_ps128(x)));
    let hi = half(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)));
    let e = _mm256_set_m128(hi, lo);
    // glibc's underflow branches: below log(2^-150) zero, below log(2^-149) the least subnormal.
    let zero = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(f32::from_bits(0xc2cf_f1b4)));
    let least = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(f32::from_bits(0xc2ce_8ecf)));
    let e = _mm256_blendv_ps(e, _mm256_set1_ps(f32::from_bits(1)), least);
    _mm256_blendv_ps(e, _mm256_setzero_ps(), zero)
}

/// `silu(g) * up` for eight lanes, `silu(g) = g / (1 + exp(-g))` (candle's expression): the
/// same IEEE operations as the scalar form, with [`exp8`] for libm's `expf`, so the same bits.
///
/// # Safety
/// AVX2 and FMA (compiled in).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline(always)]
pub(super) unsafe fn silu_mul8(g: &[f32], up: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(g.len() >= 8 && up.len() >= 8 && out.len() >= 8);
    let g = _mm256_loadu_ps(g.as_ptr());
    let neg = _mm256_xor_ps(g, _mm256_set1_ps(-0.0));
    let silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), exp8(neg)));
    _mm256_storeu_ps(
        out.as_mut_ptr(),
        _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr())),
    );
}

#[cfg(all(test, target_arch = "x86_64", target_feature = "avx2"))]
mod tests {
    use super::*;

    /// The vector exp is libm's expf bit for bit over the softmax's range (every float from
    /// -110 to 0, every 97th, the underflow branches included) and a little above 0. (Against
    /// glibc 2.27 or later on an FMA CPU, the libm `f32::exp` calls here and in CI.)
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[test]
    fn vector_exp_is_libm_expf_bit_for_bit() {
        use std::arch::x86_64::*;
        // Negative floats' bits run from 0x8000_0000 (-0) up to -110's.
        let negatives = (0x8000_0000..=(-110f32).to_bits())
            .step_by(97)
            .map(f32::from_bits);
        let positives = (0u32..4_000).map(|i| i as f32 * 1e-3);
        let xs: Vec<f32> = negatives.chain(positives).collect();
        for chunk in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: AVX2/FMA compiled in.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(chunk.as_ptr()))) };
            for (g, &x) in got.iter().zip(chunk) {
                assert_eq!(
                    g.to_bits(),
                    x.exp().to_bits(),
                    "exp({x:e}) = {g:e}, libm {:e}",
                    x.exp()
                );
            }
        }
    }

    /// The eight-lane silu(g) * up is the scalar expression bit for bit.
    #[test]
    fn silu_mul8_is_the_scalar_expression() {
        let g = crate::kernels::cpu::test_data::random(8 * 64, 7);
        let up = crate::kernels::cpu::test_data::random(8 * 64, 8);
        for (g, up) in g.chunks_exact(8).zip(up.chunks_exact(8)) {
            let g: Vec<f32> = g.iter().map(|x| x * 30.0).collect();
            let mut got = [0f32; 8];
            // SAFETY: AVX2/FMA compiled in.
            unsafe { silu_mul8(&g, up, &mut got) };
            for ((o, &g), &u) in got.iter().zip(&g).zip(up) {
                assert_eq!(o.to_bits(), (g / (1.0 + (-g).exp()) * u).to_bits(), "g {g}");
            }
        }
    }
}
