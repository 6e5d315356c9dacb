//! CPU kernels: quantized matmuls ([`matmul`], with the weight formats [`q4_0`], [`q4_1`], [`q4_k`], [`q5_0`], [`q8_0`] and [`q6_k`] and
//! the shared 8-bit activations of [`acts`]; SIMD, batch-independent results, fused epilogues)
//! [`dense_f32`] (f32 weights, no packing, batch-independent) and [`attention`] (paged
//! attention over the f32 KV pool); [`pool`], the thread pool they run in.

pub mod acts;
mod argmax;
pub mod attention;
mod attention_rows;
pub mod dense_f32;
pub mod kv_write;
pub mod matmul;
pub mod pool;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q6_k;
pub mod q8_0;
pub mod simd;

/// Deterministic inputs for the kernels' tests.
#[cfg(test)]
pub(crate) mod test_data {
    /// `n` values in [-0.5, 0.5), a fixed function of `seed`.
    pub fn random(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 10007) as f32 / 10007.0 - 0.5)
            .collect()
    }

    /// A `(n, k)` matrix of [`random`] values quantized to `dtype` on the CPU, and its values
    /// as candle dequantizes them.
    pub fn quantized(
        n: usize,
        k: usize,
        seed: u64,
        dtype: candle_core::quantized::GgmlDType,
    ) -> (candle_core::quantized::QTensor, Vec<f32>) {
        use candle_core::{Device, Tensor};
        let w = Tensor::from_vec(random(n * k, seed), (n, k), &Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&w, dtype).unwrap();
        let deq = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (q, deq)
    }
}
