//! Weight access for the model, whatever the file format. The model asks for tensors by their
//! GGUF names (`blk.3.attn_q.weight`); safetensors names are mapped from those.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};

use crate::error::{EngineError, Result};
use crate::kernels::cpu::acts::QuantizedActs;
use crate::kernels::cpu::dense_f32::DenseF32Matrix;
use crate::kernels::cpu::matmul::quantize_input;
use crate::kernels::cpu::q4_0::Q40Matrix;
use crate::kernels::cpu::q4_1::Q41Matrix;
use crate::kernels::cpu::q4_k::Q4KMatrix;
use crate::kernels::cpu::q5_0::Q50Matrix;
use crate::kernels::cpu::q6_k::Q6KMatrix;
use crate::kernels::cpu::q8_0::Q80Matrix;

/// A linear layer `y = x W^T`, quantized (GGUF kept as is) or dense.
pub enum Linear {
    /// candle's quantized or dense matmul.
    Candle(QMatMul),
    /// A format with a kernel of ours on the CPU (faster than candle's; see `kernels::cpu`).
    Cpu(CpuMatrix),
    /// Dense f32 on the CPU: our kernel, which never packs the weights and gives each row the
    /// same result whatever the batch (`kernels::cpu::dense_f32`).
    DenseF32(DenseF32Matrix),
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => Ok(m.forward(x)?),
            Linear::Cpu(m) => m.forward(x),
            Linear::DenseF32(m) => {
                let k = m.k();
                let dims = x.dims().to_vec();
                let data = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let rows = data.len() / k.max(1);
                let y = m.matmul(&data, rows)?;
                let mut shape = dims;
                if let Some(last) = shape.last_mut() {
                    *last = m.n();
                }
                Ok(Tensor::from_vec(y, shape, x.device())?)
            }
        }
    }

    /// Each row's greedy token (the column of its largest output) without the outputs, where
    /// this matrix has a CPU kernel; None where it has not (the caller takes the logits).
    /// `within`: only these columns are candidates (see
    /// [`GroupMatrix::matmul_argmax_within`](crate::kernels::cpu::matmul::GroupMatrix)).
    pub fn argmax(&self, x: &Tensor, within: Option<&[Range<u32>]>) -> Result<Option<Vec<u32>>> {
        match self {
            Linear::Cpu(m) => Ok(Some(m.matmul_argmax(&quantize_input(x)?, within)?)),
            Linear::Candle(_) | Linear::DenseF32(_) => Ok(None),
        }
    }

    pub fn as_cpu(&self) -> Option<&CpuMatrix> {
        match self {
            Linear::Cpu(m) => Some(m),
            Linear::Candle(_) | Linear::DenseF32(_) => None,
        }
    }
}

/// A matrix in one of the formats the CPU kernels take; all of them read the same quantized
/// activations, so one quantization of a layer input serves every matrix that reads it.
#[allow(non_camel_case_types)] // GGML's names: Q4_0, Q4_1, Q8_0, Q5_0, Q4_K, Q6_K
pub enum CpuMatrix {
    Q4_0(Q40Matrix),
    Q4_1(Q41Matrix),
    Q4_K(Q4KMatrix),
    Q8_0(Q80Matrix),
    Q5_0(Q50Matrix),
    Q6_K(Q6KMatrix),
}

macro_rules! each_format {
    ($m:expr, $x:ident => $e:expr) => {
        match $m {
            CpuMatrix::Q4_0($x) => $e,
            CpuMatrix::Q4_1($x) => $e,
            CpuMatrix::Q4_K($x) => $e,
            CpuMatrix::Q8_0($x) => $e,
            CpuMatrix::Q5_0($x) => $e,
            CpuMatrix::Q6_K($x) => $e,
        }
    };
}

impl CpuMatrix {
    /// The CPU kernels' form of a GGML matrix, where there is a kernel for its format and shape
    /// (rows a multiple of 64; 256 for the K-quants): None otherwise.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<CpuMatrix>> {
        let k = q.shape().dims().last().copied().unwrap_or(0);
        if !k.is_multiple_of(64) {
            return Ok(None);
        }
        Ok(Some(match q.dtype() {
            GgmlDType::Q4_0 => CpuMatrix::Q4_0(Q40Matrix::from_qtensor(q)?),
            GgmlDType::Q4_1 => CpuMatrix::Q4_1(Q41Matrix::from_qtensor(q)?),
            GgmlDType::Q8_0 => CpuMatrix::Q8_0(Q80Matrix::from_qtensor(q)?),
            GgmlDType::Q5_0 => CpuMatrix::Q5_0(Q50Matrix::from_qtensor(q)?),
            GgmlDType::Q4K if k.is_multiple_of(256) => CpuMatrix::Q4_K(Q4KMatrix::from_qtensor(q)?),
            GgmlDType::Q6K if k.is_multiple_of(256) => CpuMatrix::Q6_K(Q6KMatrix::from_qtensor(q)?),
            _ => return Ok(None),
        }))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        each_format!(self, m => m.forward(x))
    }

    pub fn n(&self) -> usize {
        each_format!(self, m => m.n())
    }

    pub fn matmul_split(&self, acts: &QuantizedActs, widths: &[usize]) -> Result<Vec<Vec<f32>>> {
        each_format!(self, m => m.matmul_split(acts, widths))
    }

    pub fn matmul_add(&self, acts: &QuantizedActs, residual: &[f32]) -> Result<Vec<f32>> {
        each_format!(self, m => m.matmul_add(acts, residual))
    }

    pub fn matmul_silu_mul(&self, acts: &QuantizedActs) -> Result<Vec<f32>> {
        each_format!(self, m => m.matmul_silu_mul(acts))
    }

    pub fn matmul_argmax(&self, acts: &QuantizedActs, within: Option<&[Range<u32>]>) -> Result<Vec<u32>> {
        each_format!(self, m => m.matmul_argmax_within(acts, within))
    }

    /// This matrix as Q8_0 groups, when its format has that layout (Q8_0, and Q5_0 exactly).
    fn to_q8_0(&self) -> Option<Q80Matrix> {
        match self {
            CpuMatrix::Q8_0(m) => Some(m.convert()),
            CpuMatrix::Q5_0(m) => Some(m.convert()),
            CpuMatrix::Q4_0(_) | CpuMatrix::Q4_1(_) | CpuMatrix::Q4_K(_) | CpuMatrix::Q6_K(_) => None,
        }
    }

    /// q, k and v as one matrix, when all three share a format (else None). Q5_0 and Q8_0 mix
    /// (Qwen2's Q4_K_M has Q5_0 q/k and a Q8_0 v in half its layers) as Q8_0 groups.
    pub fn concat(parts: &[&CpuMatrix]) -> Option<CpuMatrix> {
        // All in one format with its own kernel: concatenated as they are.
        macro_rules! all_in {
            ($variant:ident, $matrix:ty) => {
                let same: Option<Vec<&$matrix>> = parts
                    .iter()
                    .map(|p| match p {
                        CpuMatrix::$variant(m) => Some(m),
                        _ => None,
                    })
                    .collect();
                if let Some(ms) = same {
                    return <$matrix>::concat(&ms).map(CpuMatrix::$variant);
                }
            };
        }
        all_in!(Q4_0, Q40Matrix);
        all_in!(Q4_1, Q41Matrix);
        all_in!(Q4_K, Q4KMatrix);
        all_in!(Q5_0, Q50Matrix);
        all_in!(Q6_K, Q6KMatrix);
        let q8: Vec<Q80Matrix> = parts.iter().map(|p| p.to_q8_0()).collect::<Option<_>>()?;
        Q80Matrix::concat(&q8.iter().collect::<Vec<_>>()).map(CpuMatrix::Q8_0)
    }

    /// Gate and up interleaved for the fused `silu(gate) * up`, when in one format.
    pub fn interleave(gate: &CpuMatrix, up: &CpuMatrix) -> Option<CpuMatrix> {
        match (gate, up) {
            (CpuMatrix::Q4_0(g), CpuMatrix::Q4_0(u)) => Q40Matrix::interleave(g, u).map(CpuMatrix::Q4_0),
            (CpuMatrix::Q4_1(g), CpuMatrix::Q4_1(u)) => Q41Matrix::interleave(g, u).map(CpuMatrix::Q4_1),
            (CpuMatrix::Q4_K(g), CpuMatrix::Q4_K(u)) => Q4KMatrix::interleave(g, u).map(CpuMatrix::Q4_K),
            (CpuMatrix::Q6_K(g), CpuMatrix::Q6_K(u)) => Q6KMatrix::interleave(g, u).map(CpuMatrix::Q6_K),
            (CpuMatrix::Q8_0(g), CpuMatrix::Q8_0(u)) => Q80Matrix::interleave(g, u).map(CpuMatrix::Q8_0),
            (CpuMatrix::Q5_0(g), CpuMatrix::Q5_0(u)) => Q50Matrix::interleave(g, u).map(CpuMatrix::Q5_0),
            (g, u) => Q80Matrix::interleave(&g.to_q8_0()?, &u.to_q8_0()?).map(CpuMatrix::Q8_0),
        }
    }
}

/// How matrices are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// GGUF matrices stay in their stored quantization; safetensors load dense in f32.
    #[default]
    AsStored,
    /// Every matrix dense in this dtype; activations in it too.
    Dense(DType),
    /// Every matrix re-quantized to this GGML type at load (activations f32).
    Quantized(GgmlDType),
}

impl WeightFormat {
    /// `f32`, `f16`, `bf16` (dense) or `q8_0`, `q4_0` (re-quantized).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" => Self::Dense(DType::F32),
            "f16" => Self::Dense(DType::F16),
            "bf16" => Self::Dense(DType::BF16),
            "q8_0" => Self::Quantized(GgmlDType::Q8_0),
            "q4_0" => Self::Quantized(GgmlDType::Q4_0),
            other => {
                return Err(EngineError::InvalidConfig(format!(
                    "unknown weight format `{other}` (expected f32, f16, bf16, q8_0 or q4_0)"
                )))
            }
        })
    }

    /// The dtype activations are computed in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Self::Dense(dt) => dt,
            Self::AsStored | Self::Quantized(_) => DType::F32,
        }
    }
}

/// GGUF tensor types the engine accepts.
const SUPPORTED_GGML: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

pub enum Weights {
    Gguf {
        content: Content,
        file: File,
        path: PathBuf,
    },
    Safetensors {
        tensors: MmapedSafetensors,
        path: PathBuf,
    },
}

impl Weights {
    pub fn open_gguf(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|_| EngineError::MissingFile(path.to_path_buf()))?;
        let corrupt = |m: String| EngineError::CorruptFile {
            path: path.to_path_buf(),
            message: m,
        };
        let content = Content::read(&mut file).map_err(|e| corrupt(e.to_string()))?;
        // Catch truncation now rather than on the first read of the last tensor.
        let file_len = file.metadata()?.len();
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            let bytes = (elems / block) * info.ggml_dtype.type_size();
            let end = content.tensor_data_offset + info.offset + bytes as u64;
            if end > file_len {
                return Err(corrupt(format!(
                    "tensor `{name}` ends at byte {end} but the file has {file_len} bytes"
                )));
            }
        }
        Ok(Weights::Gguf {
            content,
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn open_safetensors(paths: &[PathBuf]) -> Result<Self> {
        for p in paths {
            if !p.is_file() {
                return Err(EngineError::MissingFile(p.clone()));
            }
        }
        // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on them not
        // being modified while the model is loaded.
        let tensors = unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| EngineError::CorruptFile {
            path: paths.first().cloned().unwrap_or_default(),
            message: e.to_string(),
        })?;
        Ok(Weights::Safetensors {
            tensors,
            path: paths.first().cloned().unwrap_or_default(),
        })
    }

    pub fn gguf_content(&self) -> Option<&Content> {
        match self {
            Weights::Gguf { content, .. } => Some(content),
            Weights::Safetensors { .. } => None,
        }
    }

    fn path(&self) -> &Path {
        match self {
            Weights::Gguf { path, .. } | Weights::Safetensors { path, .. } => path,
        }
    }

    pub fn contains(&self, gguf_name: &str) -> bool {
        match self {
            Weights::Gguf { content, .. } => content.tensor_infos.contains_key(gguf_name),
            Weights::Safetensors { tensors, .. } => {
                hf_name(gguf_name).is_some_and(|n| tensors.get(&n).is_ok())
            }
        }
    }

    fn qtensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        let Weights::Gguf { content, file, path } = self else {
            return Err(EngineError::InvalidConfig("not a GGUF model".into()));
        };
        let info = content.tensor_infos.get(name).ok_or_else(|| {
            EngineError::InvalidConfig(format!("tensor `{name}` missing from {}", path.display()))
        })?;
        if !SUPPORTED_GGML.contains(&info.ggml_dtype) {
            return Err(EngineError::UnsupportedTensorType {
                name: name.into(),
                dtype: format!("{:?}", info.ggml_dtype),
            });
        }
        content
            .tensor(file, name, device)
            .map_err(|e| EngineError::CorruptFile {
                path: path.clone(),
                message: format!("tensor `{name}`: {e}"),
            })
    }

    /// A dense tensor in `dtype` (dequantized if stored quantized).
    pub fn dense(&mut self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = match self {
            Weights::Gguf { .. } => self.qtensor(name, device)?.dequantize(device)?,
            Weights::Safetensors { tensors, path } => {
                let hf = hf_name(name)
                    .ok_or_else(|| EngineError::InvalidConfig(format!("no mapping for `{name}`")))?;
                tensors.load(&hf, device).map_err(|e| EngineError::CorruptFile {
                    path: path.clone(),
                    message: format!("tensor `{hf}`: {e}"),
                })?
            }
        };
        Ok(t.to_dtype(dtype)?)
    }

    /// A linear layer in the requested format. Safetensors weights are always dense.
    pub fn linear(&mut self, name: &str, format: WeightFormat, device: &Device) -> Result<Linear> {
        let is_gguf = matches!(self, Weights::Gguf { .. });
        match format {
            WeightFormat::AsStored if is_gguf => {
                let q = self.qtensor(name, device)?;
                match q.dtype() {
                    // Stored unquantized: QMatMul would dequantize these to f32 anyway.
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        Ok(Linear::Candle(QMatMul::Tensor(q.dequantize(device)?)))
                    }
                    _ => Self::quantized_linear(q, device),
                }
            }
            WeightFormat::Quantized(ty) => {
                let w = self.dense(name, DType::F32, device)?;
                let k = w.dims().last().copied().unwrap_or(0);
                if !k.is_multiple_of(ty.block_size()) {
                    return Err(EngineError::InvalidConfig(format!(
                        "`{name}` has rows of {k}, not a multiple of {ty:?}'s block of {}",
                        ty.block_size()
                    )));
                }
                Self::quantized_linear(QTensor::quantize(&w, ty)?, device)
            }
            other => {
                let w = self.dense(name, other.compute_dtype(), device)?;
                if device.is_cpu() && w.dtype() == DType::F32 {
                    if let Ok((n, k)) = w.dims2() {
                        let data = w.flatten_all()?.to_vec1::<f32>()?;
                        if let Some(m) = DenseF32Matrix::new(data, n, k) {
                            return Ok(Linear::DenseF32(m));
                        }
                    }
                }
                Ok(Linear::Candle(QMatMul::Tensor(w)))
            }
        }
    }

    /// Our CPU kernel where there is one for the format and the shape (rows a multiple of 64),
    /// candle's quantized matmul otherwise.
    fn quantized_linear(q: QTensor, device: &Device) -> Result<Linear> {
        if device.is_cpu() {
            if let Some(m) = CpuMatrix::from_qtensor(&q)? {
                return Ok(Linear::Cpu(m));
            }
        }
        Ok(Linear::Candle(QMatMul::from_arc(Arc::new(q))?))
    }

    pub fn check_shape(&self, name: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
        if t.dims() != expected {
            return Err(self.shape_error(name, t.dims(), expected));
        }
        Ok(())
    }

    pub fn shape_error(&self, name: &str, dims: &[usize], expected: &[usize]) -> EngineError {
        EngineError::CorruptFile {
            path: self.path().to_path_buf(),
            message: format!("tensor `{name}` has shape {dims:?}, expected {expected:?}"),
        }
    }

    /// Tensor `name` as the file stores it, where that is a quantized GGML type (not a float
    /// one); None for safetensors and float tensors.
    pub fn stored_quantized(&mut self, name: &str, device: &Device) -> Result<Option<QTensor>> {
        let Weights::Gguf { content, .. } = self else {
            return Ok(None);
        };
        let float = content
            .tensor_infos
            .get(name)
            .is_some_and(|info| matches!(info.ggml_dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16));
        if float {
            return Ok(None);
        }
        self.qtensor(name, device).map(Some)
    }
}

/// GGUF and Hugging Face names of each layer's tensors (`blk.N.attn_q.weight` is
/// `model.layers.N.self_attn.q_proj.weight`): the one table of the loader, the GGUF-to-HF
/// converter and the tests that convert.
pub const LAYER_PARTS: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Hugging Face (safetensors) name of a GGUF tensor name.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (stem, kind) = part.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, hf) = LAYER_PARTS.iter().find(|(g, _)| *g == stem)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}
