//! CPU kernels: [`q4_1_matmul`] (Q4_1 weights times f32 activations, SIMD, batch-independent
//! results) and [`attention`] (paged attention over the f32 KV pool).

pub mod attention;
pub mod q4_1_matmul;
