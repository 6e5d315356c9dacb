//! Q4_1 matrix x f32 activations on the CPU, with AVX2.
//!
//! candle 0.11 has no SIMD kernel for Q4_1 (its `vec_dot_unopt` took 86% of decode time) and
//! multiplies row by row. This kernel computes exactly what candle's does, bit for bit: the
//! activations are quantized to Q8_1 the same way, each 32-value block's integer dot product is
//! exact (SIMD only speeds it up), and the float accumulation over blocks uses candle's
//! expression in candle's order. What changes is speed: the integer dots use AVX2
//! `maddubs`, four outputs are reduced together (four weight rows against one activation row
//! when decoding, one weight row against four activation rows in prefill).
//!
//! Every output element is computed by the same operations whatever the number of rows, so a
//! row's result does not depend on the batch (see `cpu_attention` for why that matters).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, Storage, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{EngineError, Result};

const QK: usize = 32;
/// From this many activation rows on, outputs are grouped by rows rather than by columns.
const ROW_TILE: usize = 4;

#[derive(Clone, Copy)]
struct WeightBlock {
    d: f32,
    m: f32,
    qs: [u8; 16],
}

struct ActBlock {
    d: f32,
    s: f32,
    qs: [i8; QK],
}

pub struct Q41Matrix {
    /// `n` rows of `k / 32` blocks.
    blocks: Vec<WeightBlock>,
    n: usize,
    k: usize,
}

impl Q41Matrix {
    /// From a Q4_1 tensor of shape `(n, k)`.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        if q.dtype() != GgmlDType::Q4_1 {
            return Err(EngineError::InvalidConfig(format!(
                "expected Q4_1, got {:?}",
                q.dtype()
            )));
        }
        let (n, k) = q.shape().dims2()?;
        if !k.is_multiple_of(2 * QK) {
            return Err(EngineError::InvalidConfig(format!(
                "Q4_1 rows of {k} are not a multiple of 64"
            )));
        }
        let data = q.data()?;
        let blocks: Vec<WeightBlock> = data
            .chunks_exact(20)
            .map(|b| WeightBlock {
                d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
                qs: b[4..20].try_into().unwrap_or([0; 16]),
            })
            .collect();
        if blocks.len() != n * k / QK {
            return Err(EngineError::InvalidConfig(
                "Q4_1 tensor has the wrong byte length".into(),
            ));
        }
        Ok(Self { blocks, n, k })
    }

    /// `x`: `(m, k)` f32 (any leading dims, contiguous). Returns `(..., n)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out_dims = x.dims().to_vec();
        let k = out_dims.pop().unwrap_or(0);
        if k != self.k {
            return Err(EngineError::InvalidBatch(format!(
                "Q4_1 matmul: input has {k} columns, weight {}",
                self.k
            )));
        }
        out_dims.push(self.n);
        let x = x.contiguous()?;
        let m = x.elem_count() / k.max(1);
        if m == 0 {
            // A batch that samples nothing (all prefill chunks): no rows to multiply.
            return Ok(Tensor::zeros(out_dims, candle_core::DType::F32, x.device())?);
        }
        let acts = {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                return Err(EngineError::InvalidBatch(
                    "Q4_1 matmul needs f32 CPU input".into(),
                ));
            };
            let start = layout.start_offset();
            quantize_rows(&data[start..start + m * k], m, k)
        };
        let kb = k / QK;
        let n = self.n;
        // Column-major result (one contiguous chunk per group of weight rows), transposed below.
        let mut out_t = vec![0f32; n * m];
        let cols_per_task = (n / (4 * rayon::current_num_threads().max(1))).clamp(8, 256) / 4 * 4;
        out_t
            .par_chunks_mut(cols_per_task * m)
            .enumerate()
            .for_each(|(task, chunk)| {
                let first = task * cols_per_task;
                let cols = chunk.len() / m;
                let w_row = |c: usize| &self.blocks[(first + c) * kb..(first + c + 1) * kb];
                let a_row = |r: usize| &acts[r * kb..(r + 1) * kb];
                if m < ROW_TILE {
                    // Few rows (decode): four weight rows share each activation block.
                    let mut c = 0;
                    while c + 4 <= cols {
                        for r in 0..m {
                            let sums = dot_4(
                                [w_row(c), w_row(c + 1), w_row(c + 2), w_row(c + 3)],
                                [a_row(r), a_row(r), a_row(r), a_row(r)],
                            );
                            for (i, v) in sums.into_iter().enumerate() {
                                chunk[(c + i) * m + r] = v;
                            }
                        }
                        c += 4;
                    }
                    for c in c..cols {
                        for r in 0..m {
                            chunk[c * m + r] = dot_1(w_row(c), a_row(r));
                        }
                    }
                } else {
                    // Many rows (prefill, big batches): one weight row against four activation rows.
                    for c in 0..cols {
                        let w = w_row(c);
                        let mut r = 0;
                        while r + 4 <= m {
                            let sums = dot_4([w; 4], [a_row(r), a_row(r + 1), a_row(r + 2), a_row(r + 3)]);
                            chunk[c * m + r..c * m + r + 4].copy_from_slice(&sums);
                            r += 4;
                        }
                        for r in r..m {
                            chunk[c * m + r] = dot_1(w, a_row(r));
                        }
                    }
                }
            });
        let mut out = vec![0f32; m * n];
        for (c, col) in out_t.chunks(m).enumerate() {
            for (r, &v) in col.iter().enumerate() {
                out[r * n + c] = v;
            }
        }
        Ok(Tensor::from_vec(out, out_dims, x.device())?)
    }
}

/// Q8_1 quantization of each row, exactly as candle's `BlockQ8_1::from_float` (f16 scale and
/// sum, rounding half away from zero).
fn quantize_rows(x: &[f32], m: usize, k: usize) -> Vec<ActBlock> {
    let mut out = Vec::with_capacity(m * k / QK);
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let dh = f16::from_f32(d);
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(block) {
            *q = f32::round(v * id) as i8;
            sum += *q as i32;
        }
        out.push(ActBlock {
            d: dh.to_f32(),
            s: (f16::from_f32(sum as f32) * dh).to_f32(),
            qs,
        });
    }
    out
}

/// One output: a weight row against an activation row, block by block. The float expression
/// and its order are candle's: `sum += sumi * dx * dy + mx * sy`.
fn dot_1(w: &[WeightBlock], a: &[ActBlock]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        sum += int_dot(&wb.qs, &ab.qs) as f32 * wb.d * ab.d + wb.m * ab.s;
    }
    sum
}

/// Four outputs at once (four weight rows, or four activation rows): the same per-output
/// arithmetic as [`dot_1`], with the integer dots reduced together.
fn dot_4(w: [&[WeightBlock]; 4], a: [&[ActBlock]; 4]) -> [f32; 4] {
    let mut sums = [0f32; 4];
    for b in 0..w[0].len() {
        let wb = [&w[0][b], &w[1][b], &w[2][b], &w[3][b]];
        let ab = [&a[0][b], &a[1][b], &a[2][b], &a[3][b]];
        let sumi = int_dot_4(
            [&wb[0].qs, &wb[1].qs, &wb[2].qs, &wb[3].qs],
            [&ab[0].qs, &ab[1].qs, &ab[2].qs, &ab[3].qs],
        );
        for i in 0..4 {
            sums[i] += sumi[i] as f32 * wb[i].d * ab[i].d + wb[i].m * ab[i].s;
        }
    }
    sums
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline]
fn int_dot_4(w: [&[u8; 16]; 4], a: [&[i8; QK]; 4]) -> [i32; 4] {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 is enabled at compile time (cfg above); loads are unaligned loads of 16 and
    // 32 bytes from arrays of exactly those sizes.
    unsafe {
        let mask = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let products = |w: &[u8; 16], a: &[i8; QK]| {
            let packed = _mm_loadu_si128(w.as_ptr() as *const __m128i);
            let lo = _mm_and_si128(packed, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
            let av = _mm256_loadu_si256(a.as_ptr() as *const __m256i);
            _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), av), ones)
        };
        let p = [
            products(w[0], a[0]),
            products(w[1], a[1]),
            products(w[2], a[2]),
            products(w[3], a[3]),
        ];
        // Two horizontal-add rounds leave each product's low-half sum in the low 128 bits and its
        // high-half sum in the high 128 bits, in order 0..4.
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        let mut out = [0i32; 4];
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s);
        out
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[inline]
fn int_dot_4(w: [&[u8; 16]; 4], a: [&[i8; QK]; 4]) -> [i32; 4] {
    [
        int_dot(w[0], a[0]),
        int_dot(w[1], a[1]),
        int_dot(w[2], a[2]),
        int_dot(w[3], a[3]),
    ]
}

/// Exact integer dot product of one block: weight nibbles (low nibbles are values 0..16, high
/// nibbles 16..32) with 32 signed activation bytes.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
#[inline]
fn int_dot(w: &[u8; 16], a: &[i8; QK]) -> i32 {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 is enabled at compile time (cfg above); the loads are unaligned loads of 16
    // and 32 bytes from arrays of exactly those sizes.
    unsafe {
        let packed = _mm_loadu_si128(w.as_ptr() as *const __m128i);
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(packed, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
        let wv = _mm256_set_m128i(hi, lo);
        let av = _mm256_loadu_si256(a.as_ptr() as *const __m256i);
        // u8 x i8 -> pairwise i16 sums (at most 2 * 15 * 128: no saturation), then i32.
        let p16 = _mm256_maddubs_epi16(wv, av);
        let p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        let s = _mm_add_epi32(_mm256_castsi256_si128(p32), _mm256_extracti128_si256(p32, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
#[inline]
fn int_dot(w: &[u8; 16], a: &[i8; QK]) -> i32 {
    (0..16)
        .map(|j| (w[j] & 0x0F) as i32 * a[j] as i32 + (w[j] >> 4) as i32 * a[j + 16] as i32)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module};

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        // A deterministic spread of values with some outliers, like real activations.
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let x = ((i as u64 * 2654435761 + seed * 97) % 10007) as f32 / 10007.0 - 0.5;
                if i % 97 == 0 {
                    x * 40.0
                } else {
                    x
                }
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn bit_identical_to_candle_and_independent_of_row_count() {
        let (n, k) = (70, 576);
        let w = QTensor::quantize(&random((n, k), 1), GgmlDType::Q4_1).unwrap();
        let ours = Q41Matrix::from_qtensor(&w).unwrap();
        let theirs = QMatMul::from_qtensor(w).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for m in [1, 3, 4, 9] {
            let x = random((m, k), m as u64 + 7);
            let a = flat(ours.forward(&x).unwrap());
            let b = flat(theirs.forward(&x).unwrap());
            assert_eq!(a, b, "m = {m}: differs from candle");
            for r in 0..m {
                let alone = flat(ours.forward(&x.narrow(0, r, 1).unwrap()).unwrap());
                assert_eq!(alone, a[r * n..(r + 1) * n], "row {r} of {m}");
            }
        }
    }

    #[test]
    fn zero_rows_give_an_empty_result() {
        let w = QTensor::quantize(&random((8, 64), 3), GgmlDType::Q4_1).unwrap();
        let ours = Q41Matrix::from_qtensor(&w).unwrap();
        let out = ours
            .forward(&Tensor::zeros((0, 64), candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(out.dims(), &[0, 8]);
    }

    #[test]
    fn rejects_wrong_input_width() {
        let w = QTensor::quantize(&random((8, 64), 3), GgmlDType::Q4_1).unwrap();
        let ours = Q41Matrix::from_qtensor(&w).unwrap();
        assert!(ours.forward(&random((2, 32), 4)).is_err());
    }
}
