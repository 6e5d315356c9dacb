//! Launches the fused paged-attention decode kernel (`paged_decode.cu` beside this file) on candle's
//! CUDA stream. The PTX is compiled by nvcc in `engine/build.rs` and embedded; the driver JIT-
//! compiles it for the GPU at first use and candle caches the module per device.
//! Shapes, block ids and rows were validated by `PagedDecodeOp::check` before we get here.

use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Shape, Storage};

use crate::kernels::paged_decode::{DecodeDims, PagedDecodeOp};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_decode.ptx"));
const MODULE: &str = "wick_paged_decode";
/// Must match `WARPS * 32` in the kernel.
const THREADS: u32 = 128;

fn view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("paged decode needs contiguous inputs"),
    }
}

/// Elements of the head dimension per lane, as compiled: 2, 4 or 8.
fn elements_per_lane(head_dim: usize) -> usize {
    head_dim.div_ceil(32).next_power_of_two().max(2)
}

fn run<T: CudaDType + DeviceRepr>(
    op: &PagedDecodeOp,
    dims: DecodeDims,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
    dtype_name: &str,
) -> candle_core::Result<CudaStorage> {
    let dev = q.0.device.clone();
    let (table_storage, table_layout) = op.table.storage_and_layout();
    let Storage::Cuda(table_storage) = &*table_storage else {
        candle_core::bail!("paged decode: the decode table is not on the GPU")
    };
    let table = view::<u32>(table_storage, table_layout)?;
    let (qv, kv, vv) = (view::<T>(q.0, q.1)?, view::<T>(k.0, k.1)?, view::<T>(v.0, v.1)?);

    let name = format!("paged_decode_{dtype_name}_e{}", elements_per_lane(dims.head_dim));
    let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
    let n = op.host.seqs * dims.heads * dims.head_dim;
    // SAFETY: every element is written by the kernel (one block per (head, sequence), its
    // threads cover the head dimension).
    let out = unsafe { dev.alloc::<T>(n)? };
    let cfg = LaunchConfig {
        grid_dim: (dims.heads as u32, op.host.seqs as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = func.builder();
    b.arg(&qv);
    b.arg(&kv);
    b.arg(&vv);
    b.arg(&table);
    b.arg(&out);
    candle_core::builder_arg!(
        b,
        dims.heads as u32,
        dims.kv_heads as u32,
        dims.head_dim as u32,
        dims.num_slots as u32,
        op.block_size as u32,
        op.host.stride as u32,
        op.scale
    );
    // SAFETY: the argument list matches the kernel's signature; `PagedDecodeOp::check` proved
    // that every row and block id the table holds lies inside q and the pool.
    unsafe { b.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

pub fn launch(
    op: &PagedDecodeOp,
    dims: DecodeDims,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let out = match q.0.dtype() {
        DType::F32 => run::<f32>(op, dims, q, k, v, "f32")?,
        DType::F16 => run::<half::f16>(op, dims, q, k, v, "f16")?,
        DType::BF16 => run::<half::bf16>(op, dims, q, k, v, "bf16")?,
        other => candle_core::bail!("paged decode: unsupported dtype {other:?}"),
    };
    Ok((out, Shape::from((op.host.seqs, dims.heads * dims.head_dim))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_cover_the_head_dim_with_a_compiled_variant() {
        for (hd, e) in [(1, 2), (64, 2), (65, 4), (80, 4), (128, 4), (129, 8), (256, 8)] {
            assert_eq!(elements_per_lane(hd), e, "head dim {hd}");
            assert!(e * 32 >= hd);
        }
        for name in ["f32", "f16", "bf16"] {
            for e in [2, 4, 8] {
                assert!(PTX.contains(&format!(".entry paged_decode_{name}_e{e}(")));
            }
        }
    }
}
