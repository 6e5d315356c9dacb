//! Devices: parsing `cpu` / `cuda:N` with errors a user can act on, and sizing the KV pool from
//! the free memory of a GPU.

use candle_core::Device;

use crate::error::{EngineError, Result};

/// Default memory left free on a GPU when the KV pool is sized from free memory: activations of
/// a step (logits alone are `max_num_batched_tokens x vocab x 4` bytes), cuBLAS workspaces, the
/// kernels' modules, and some slack for other processes.
pub const DEFAULT_GPU_HEADROOM_BYTES: usize = 2 << 30;

/// candle's CPU device, or CUDA device `n` when built with the `cuda` feature.
pub fn device_from_spec(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map_or(Ok(0), |n| n.parse::<usize>())
                .map_err(|_| {
                    EngineError::InvalidConfig(format!("bad device `{s}` (expected cpu, cuda or cuda:N)"))
                })?;
            cuda_device(s, ordinal)
        }
        other => Err(EngineError::InvalidConfig(format!(
            "unknown device `{other}` (expected cpu, cuda or cuda:N)"
        ))),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(spec: &str, _ordinal: usize) -> Result<Device> {
    Err(EngineError::Device(format!(
        "`{spec}` needs wick built with `--features cuda`; this build runs on the CPU only (use `--device cpu`)"
    )))
}

#[cfg(feature = "cuda")]
fn cuda_device(spec: &str, ordinal: usize) -> Result<Device> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    // Ask the driver first, so "no driver" and "no such GPU" read as such rather than as a bare
    // CUDA error code from context creation.
    let count = CudaContext::device_count().map_err(|e| {
        EngineError::Device(format!(
            "`{spec}`: the NVIDIA driver could not be initialised ({e}); is a GPU present and the driver loaded (nvidia-smi)?"
        ))
    })?;
    if ordinal >= count.max(0) as usize {
        return Err(EngineError::Device(format!(
            "`{spec}`: no such GPU, the driver sees {count} CUDA device(s){}",
            if count > 0 {
                format!(" (cuda:0..cuda:{})", count - 1)
            } else {
                String::new()
            }
        )));
    }
    let device = Device::new_cuda(ordinal)
        .map_err(|e| EngineError::Device(format!("`{spec}`: could not open the GPU: {e}")))?;
    // Quantized weights: candle's older dequantize-then-multiply kernels (DMMV; cuBLAS above 8
    // rows) rather than its MMVQ/MMQ kernels, which quantize activations to Q8_1. Measured on an
    // H200 (docs/gpu.md): MMVQ/MMQ gave non-finite logits for a Q8_0 model on a golden prompt and
    // 1-2.5 nat differences from the CPU; DMMV matches f32 matmuls to 1e-6 and served as fast.
    // The switch is process-wide in candle; WICK_CUDA_QMATMUL=mmq restores candle's default.
    let mmq = std::env::var("WICK_CUDA_QMATMUL").is_ok_and(|v| v == "mmq");
    candle_core::quantized::cuda::set_force_dmmv(!mmq);
    Ok(device)
}

/// `(free, total)` bytes of a CUDA device's memory; `None` on the CPU.
pub fn gpu_memory(device: &Device) -> Result<Option<(usize, usize)>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let info = d
                .cuda_stream()
                .context()
                .mem_get_info()
                .map_err(|e| EngineError::Device(format!("could not read the GPU's free memory: {e}")))?;
            Ok(Some(info))
        }
        _ => Ok(None),
    }
}

/// The KV pool's budget: `configured` bytes, or on a GPU with a `headroom`, `share` of the free
/// memory less the headroom (several engines in one process each take their part). Fails when
/// that leaves no room for even one block.
pub fn kv_cache_budget(
    gpu: Option<(usize, usize)>,
    configured: usize,
    headroom: Option<usize>,
    share: f64,
    bytes_per_block: usize,
) -> Result<usize> {
    let (Some((free, total)), Some(headroom)) = (gpu, headroom) else {
        return Ok(configured);
    };
    let budget = (free.saturating_sub(headroom) as f64 * share.clamp(0.0, 1.0)) as usize;
    if budget < bytes_per_block.max(1) {
        let mib = |b: usize| b >> 20;
        return Err(EngineError::InvalidConfig(format!(
            "no GPU memory left for the KV cache: {} MiB free of {} MiB after loading the model, headroom {} MiB, this engine's share {:.2}, one block needs {} MiB; lower the headroom or use a smaller model",
            mib(free),
            mib(total),
            mib(headroom),
            share,
            mib(bytes_per_block).max(1)
        )));
    }
    Ok(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_free_memory_less_headroom_on_a_gpu_only() {
        let gib = 1usize << 30;
        // CPU: the configured bytes, whatever the headroom.
        assert_eq!(
            kv_cache_budget(None, 3 * gib, Some(gib), 1.0, 1000).unwrap(),
            3 * gib
        );
        // GPU without a headroom: configured.
        assert_eq!(
            kv_cache_budget(Some((70 * gib, 80 * gib)), 3 * gib, None, 0.5, 1000).unwrap(),
            3 * gib
        );
        // GPU with a headroom: free - headroom, regardless of the configured bytes.
        assert_eq!(
            kv_cache_budget(Some((70 * gib, 80 * gib)), 3 * gib, Some(2 * gib), 1.0, 1000).unwrap(),
            68 * gib
        );
        // Several engines: each its share of that.
        assert_eq!(
            kv_cache_budget(Some((70 * gib, 80 * gib)), 3 * gib, Some(2 * gib), 0.25, 1000).unwrap(),
            17 * gib
        );
        let err = kv_cache_budget(Some((gib, 80 * gib)), 3 * gib, Some(2 * gib), 1.0, 1000).unwrap_err();
        assert!(err.to_string().contains("1024 MiB free of 81920 MiB"), "{err}");
        // Less than one block left is an error, not an empty pool.
        assert!(kv_cache_budget(Some((2 * gib + 999, 80 * gib)), 0, Some(2 * gib), 1.0, 1000).is_err());
    }

    #[test]
    fn device_specs() {
        assert!(matches!(device_from_spec("cpu"), Ok(Device::Cpu)));
        for bad in ["gpu", "cuda:x", "cuda:-1", "CPU"] {
            assert!(
                matches!(device_from_spec(bad), Err(EngineError::InvalidConfig(_))),
                "{bad}"
            );
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let err = device_from_spec("cuda:0").unwrap_err().to_string();
        assert!(
            err.contains("--features cuda") && err.contains("--device cpu"),
            "{err}"
        );
    }
}
