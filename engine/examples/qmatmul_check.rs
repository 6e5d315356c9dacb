//! Bisects candle's quantized matmul on CUDA (docs/gpu.md: Q4_1/Q8_0 models diverge by 1-6 nats
//! on a GPU): one `QMatMul` per weight type and row count on the device, against the same
//! quantized weights dequantized to f32 and multiplied on the CPU. candle picks its kernel by
//! row count (MMVQ up to 8 rows, MMQ above; `--dmmv` forces the older dequantize-mul-mat-vec
//! path), so the rows 1, 8, 13 and 64 separate the paths.
//!
//!     cargo run --release -p wick-engine --features cuda --example qmatmul_check [-- --dmmv]
//!
//! Prints the relative error max|dev - ref| / max|ref| per case. The activations go through Q8_1
//! on the GPU (not on the f32 reference), so ~1e-2 is expected; errors of order 1 are a bug.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let dmmv = std::env::args().any(|a| a == "--dmmv");
    let device = wick_engine::device_from_spec("cuda:0")?;
    #[cfg(feature = "cuda")]
    candle_core::quantized::cuda::set_force_dmmv(dmmv);
    println!("| weights | out x in | rows | rel. error (dmmv forced: {dmmv}) |");
    println!("|---|---|---|---|");
    // The default model's projections: 576 hidden, 1536 MLP.
    // ... and the output projection (vocabulary x hidden).
    for (n, k) in [(576usize, 576usize), (1536, 576), (576, 1536), (49152, 576)] {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu)?;
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
            let q_cpu = QTensor::quantize(&w, dtype)?;
            let w_ref = q_cpu.dequantize(&Device::Cpu)?;
            let q_dev = QMatMul::from_qtensor(QTensor::quantize_onto(&w, dtype, &device)?)?;
            for rows in [1usize, 8, 13, 64] {
                let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
                let want = x.matmul(&w_ref.t()?)?;
                let got = q_dev.forward(&x.to_device(&device)?)?.to_device(&Device::Cpu)?;
                let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
                println!("| {dtype:?} | {n} x {k} | {rows} | {:.2e} |", err / scale);
            }
        }
    }
    Ok(())
}
