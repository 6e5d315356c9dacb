//! Attention behind one interface. The model hands every layer's Q, K and V for all tokens of
//! the batch, with their rotation ([`Rope`]), to an [`AttentionBackend`]; the backend rotates,
//! stores K/V and attends (the paged CPU path rotates K as it writes it into the pool). The model
//! knows nothing else of where K/V live: the serving path's backend is the runner's
//! `PagedAttention` (the paged pool); [`ContiguousAttention`] here is the textbook formulation
//! for one sequence (K/V concatenated in plain tensors), the reference the paged path is tested
//! against.

use candle_core::Tensor;

use crate::error::Result;

pub trait AttentionBackend {
    /// `q`: `(tokens, heads, head_dim)`, `k`/`v`: `(tokens, kv_heads, head_dim)`, already rotated.
    /// Returns `(tokens, heads * head_dim)`.
    fn attend(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor>;

    /// As [`attend`](Self::attend), from `q` and `k` before their rotation by `rope`. A backend
    /// that stores K may rotate it on the way into its cache (the paged CPU path does).
    fn attend_rope(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: &Rope,
    ) -> Result<Tensor> {
        self.attend(layer, &rope.apply(q)?, &rope.apply(k)?, v)
    }
}

/// Rotary position embedding for one batch: each token's angles.
pub struct Rope {
    /// `(tokens, 1, head_dim / 2)`, the model's dtype.
    pub cos: Tensor,
    pub sin: Tensor,
    /// The same as flat f32 rows (`tokens * head_dim / 2`), for kernels that rotate as they
    /// copy; None unless the model computes in f32.
    pub cos_f32: Option<Vec<f32>>,
    pub sin_f32: Option<Vec<f32>>,
    /// Adjacent dimensions paired (candle's `rope_i`: GGUF Llama weights), else `i` with
    /// `i + head_dim / 2`.
    pub interleaved: bool,
}

impl Rope {
    /// Rotates `x` (`(tokens, heads, head_dim)`) by each token's position.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (t, heads, d) = x.dims3()?;
        // Each token is its own "batch" of length 1, so every token gets its own angle.
        let x4 = x.reshape((t, heads, 1, d))?;
        let out = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x4, &self.cos, &self.sin)?
        } else {
            candle_nn::rotary_emb::rope(&x4, &self.cos, &self.sin)?
        };
        Ok(out.reshape((t, heads, d))?)
    }
}

/// Reference attention for one sequence with a contiguous, growing KV cache.
#[derive(Default)]
pub struct ContiguousAttention {
    /// `(k, v)` per layer: `(kv_heads, tokens, head_dim)`.
    cache: Vec<Option<(Tensor, Tensor)>>,
}

impl ContiguousAttention {
    pub fn new(num_layers: usize) -> Self {
        Self {
            cache: vec![None; num_layers],
        }
    }

    pub fn len(&self) -> usize {
        self.cache
            .first()
            .and_then(|c| c.as_ref())
            .map_or(0, |(k, _)| k.dim(1).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AttentionBackend for ContiguousAttention {
    fn attend(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (l, heads, head_dim) = q.dims3()?;
        let kv_heads = k.dim(1)?;
        let k = k.transpose(0, 1)?.contiguous()?;
        let v = v.transpose(0, 1)?.contiguous()?;
        let (k, v) = match self.cache[layer].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
            None => (k, v),
        };
        self.cache[layer] = Some((k.clone(), v.clone()));
        let ctx = k.dim(1)?;
        let q_per_kv = heads / kv_heads;
        // (l, heads, hd) -> (kv_heads, q_per_kv * l, hd): each KV head with its query heads.
        let q = q
            .reshape((l, kv_heads, q_per_kv, head_dim))?
            .permute((1, 2, 0, 3))?
            .contiguous()?
            .reshape((kv_heads, q_per_kv * l, head_dim))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
        let offset = ctx - l;
        let mask: Vec<f32> = (0..l)
            .flat_map(|i| (0..ctx).map(move |j| if j <= offset + i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (l, ctx), q.device())?.to_dtype(q.dtype())?;
        let scores = scores
            .reshape((kv_heads, q_per_kv, l, ctx))?
            .broadcast_add(&mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((kv_heads, q_per_kv * l, ctx))?;
        let out = probs.matmul(&v)?.reshape((kv_heads, q_per_kv, l, head_dim))?;
        Ok(out
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((l, heads * head_dim))?)
    }
}
