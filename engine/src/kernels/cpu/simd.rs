//! Which SIMD path the CPU kernels take, chosen once at run time.
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
