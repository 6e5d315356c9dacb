//! Under the `cuda` feature, compiles `src/kernels/cuda/paged_decode.cu` to PTX with nvcc (found as
//! `$CUDA_HOME/bin/nvcc`, else on `PATH`), embedded by `src/kernels/cuda/paged_decode.rs`. Compiling at
//! build time (rather than with NVRTC at run time) makes a kernel error a build error, in CI
//! too, and keeps the GPU machine free of a compiler; the driver JIT-compiles the PTX.
//! Without the feature this does nothing, so CPU builds need no CUDA at all.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/kernels/cuda/paged_decode.cu");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("paged_decode.ptx");
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    // PTX for the oldest architecture the GPU may have: the driver JIT-compiles it for newer
    // ones. bf16 conversions need compute capability 8.0; CUDA_COMPUTE_CAP (as candle reads it)
    // overrides.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let status = Command::new(&nvcc)
        .args(["-ptx", "-O3", "-std=c++17"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("-o")
        .arg(&out)
        .arg("src/kernels/cuda/paged_decode.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} failed ({s}) compiling src/kernels/cuda/paged_decode.cu", nvcc.display()),
        Err(e) => panic!(
            "could not run {} ({e}): the cuda feature needs nvcc; `eval \"$(scripts/cuda-toolchain)\"` installs one",
            nvcc.display()
        ),
    }
}
