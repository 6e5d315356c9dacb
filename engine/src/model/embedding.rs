//! The token embedding: a row of the `(vocab, hidden)` table per input token.
//!
//! A GGUF keeps the table quantized like the matrices (Q4_K, Q6_K, Q8_0, ...). Dequantized to
//! f32 at load it is the largest tensor in memory: 151936 x 1536 x 4 bytes = 933 MB for
//! Qwen2.5-1.5B, against 131 MB as the file holds it, for a step that reads a few rows. On the
//! CPU it stays as stored and each step dequantizes the rows of its tokens: the same blocks
//! through the same `to_float`, so the same values as the whole table dequantized at load.
//! (Other devices, and tables stored as floats, keep the dense tensor.)

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::model::weights::Weights;

pub enum Embedding {
    Dense(Tensor),
    /// The table as stored, one row dequantized per token.
    QuantizedRows(Box<QuantizedRows>),
}

pub struct QuantizedRows {
    table: QTensor,
    vocab: usize,
    hidden: usize,
    /// Bytes of one row (a whole number of blocks: `hidden` is a multiple of the block size).
    row_bytes: usize,
    dtype: DType,
    device: Device,
}

impl Embedding {
    /// Tensor `name`, checked to be `(vocab, hidden)`, looked up as `dtype`.
    pub fn load(
        weights: &mut Weights,
        name: &str,
        (vocab, hidden): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if device.is_cpu() {
            if let Some(table) = weights.stored_quantized(name, device)? {
                let dims = table.shape().dims().to_vec();
                if dims != [vocab, hidden] {
                    return Err(weights.shape_error(name, &dims, &[vocab, hidden]));
                }
                let (block_values, block_bytes) = block_layout(table.dtype());
                if hidden % block_values == 0 {
                    return Ok(Self::QuantizedRows(Box::new(QuantizedRows {
                        row_bytes: hidden / block_values * block_bytes,
                        table,
                        vocab,
                        hidden,
                        dtype,
                        device: device.clone(),
                    })));
                }
            }
        }
        let t = weights.dense(name, dtype, device)?;
        weights.check_shape(name, &t, &[vocab, hidden])?;
        Ok(Self::Dense(t))
    }

    /// `(tokens.len(), hidden)`: the rows of `tokens` (a 1-D u32 tensor).
    pub fn lookup(&self, tokens: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(t) => Ok(t.index_select(tokens, 0)?),
            Self::QuantizedRows(rows) => rows.lookup(&tokens.to_vec1::<u32>()?),
        }
    }
}

impl QuantizedRows {
    fn lookup(&self, ids: &[u32]) -> Result<Tensor> {
        let data = self.table.data()?;
        let mut out = Vec::with_capacity(ids.len() * self.hidden);
        for &id in ids {
            let id = id as usize;
            if id >= self.vocab {
                return Err(EngineError::InvalidBatch(format!(
                    "token id {id} is past the embedding's {} rows",
                    self.vocab
                )));
            }
            let row = &data[id * self.row_bytes..(id + 1) * self.row_bytes];
            let blocks = self.table.dtype().from_data(Cow::Borrowed(row));
            match blocks.dequantize(self.hidden)? {
                CpuStorage::F32(values) => out.extend_from_slice(&values),
                _ => return Err(EngineError::InvalidBatch("a dequantized row is not f32".into())),
            }
        }
        let rows = Tensor::from_vec(out, (ids.len(), self.hidden), &self.device)?;
        Ok(rows.to_dtype(self.dtype)?)
    }
}

/// Values and bytes per block of a quantized GGML type.
fn block_layout(dtype: GgmlDType) -> (usize, usize) {
    (dtype.block_size(), dtype.type_size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::test_data::quantized;

    /// Each format's rows, looked up one per token from the table as stored, are the rows of
    /// the table dequantized whole (as it was held before), bit for bit; an id past the table
    /// is an error, not a panic.
    #[test]
    fn rows_as_stored_are_the_dequantized_table_rows() {
        let (vocab, hidden) = (40, 512);
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let (table, dense) = quantized(vocab, hidden, 11, dtype);
            let (block_values, block_bytes) = block_layout(dtype);
            let rows = QuantizedRows {
                row_bytes: hidden / block_values * block_bytes,
                table,
                vocab,
                hidden,
                dtype: DType::F32,
                device: Device::Cpu,
            };
            let ids = [0u32, 39, 7, 7, 20];
            let got = rows
                .lookup(&ids)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&i| dense[i as usize * hidden..(i as usize + 1) * hidden].to_vec())
                .collect();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{dtype:?}"
            );
            assert!(rows.lookup(&[40]).is_err(), "{dtype:?}");
        }
    }
}
