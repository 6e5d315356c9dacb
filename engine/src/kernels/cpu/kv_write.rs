//! New K and V rows straight into their pool slots, K rotated on the way (RoPE): one pass over
//! the rows where the portable path rotates K into a fresh tensor, transposes K and V, converts
//! them to the pool's dtype and scatters them.
//!
//! The rotation is candle's `rope` / `rope_i` expression by expression (`x1 * cos - x2 * sin`,
//! `x1 * sin + x2 * cos`; Rust contracts neither into an FMA) and the f16 conversion is
//! candle's (`half`'s `from_f32`), so the pool holds bit for bit what the portable path writes
//! (tested).

use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};
use half::f16;

use crate::error::{EngineError, Result};

/// Each new token's rotation: `cos`/`sin` rows of `head_dim / 2`, one per token.
pub struct RopeRows<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    /// Adjacent dimensions paired (candle's `rope_i`, GGUF Llama weights); else `i` with
    /// `i + head_dim / 2` (`rope`).
    pub interleaved: bool,
}

/// Writes `rows` (`(tokens, kv_heads, head_dim)`, f32, contiguous) into `pool`
/// (`(kv_heads, slots, head_dim)`, f32 or f16) at `slots[t]` for token t, rotated by `rope`.
pub fn write_rows(pool: &Tensor, rows: &Tensor, slots: &[u32], rope: Option<&RopeRows<'_>>) -> Result<()> {
    let (tokens, kv_heads, head_dim) = rows.dims3()?;
    let (pool_heads, num_slots, pool_dim) = pool.dims3()?;
    if tokens != slots.len() || kv_heads != pool_heads || head_dim != pool_dim || head_dim % 2 != 0 {
        return Err(EngineError::InvalidBatch(format!(
            "K/V write of {:?} rows into a {:?} pool at {} slots",
            rows.dims(),
            pool.dims(),
            slots.len()
        )));
    }
    if let Some(&slot) = slots.iter().find(|&&s| s as usize >= num_slots) {
        return Err(EngineError::InvalidBatch(format!(
            "slot {slot} outside the pool of {num_slots}"
        )));
    }
    if let Some(r) = rope {
        let half = head_dim / 2;
        if r.cos.len() != tokens * half || r.sin.len() != tokens * half {
            return Err(EngineError::InvalidBatch(
                "RoPE rows do not match the tokens".into(),
            ));
        }
    }
    let op = WriteRows {
        slots,
        rope,
        kv_heads,
        head_dim,
        num_slots,
    };
    Ok(pool.inplace_op2(rows, &op)?)
}

struct WriteRows<'a> {
    slots: &'a [u32],
    rope: Option<&'a RopeRows<'a>>,
    kv_heads: usize,
    head_dim: usize,
    num_slots: usize,
}

impl WriteRows<'_> {
    /// Row `src` rotated for token `t` (or as it is) into `dst`, converted by `conv`.
    #[inline(always)]
    fn write<T>(&self, t: usize, src: &[f32], dst: &mut [T], conv: impl Fn(f32) -> T) {
        let Some(r) = self.rope else {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = conv(x);
            }
            return;
        };
        let half = self.head_dim / 2;
        let (cos, sin) = (&r.cos[t * half..][..half], &r.sin[t * half..][..half]);
        for i in 0..half {
            let (i1, i2) = if r.interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (x1, x2) = (src[i1], src[i2]);
            dst[i1] = conv(x1 * cos[i] - x2 * sin[i]);
            dst[i2] = conv(x1 * sin[i] + x2 * cos[i]);
        }
    }

    fn run<T>(&self, pool: &mut [T], rows: &[f32], conv: impl Fn(f32) -> T + Copy) {
        let hd = self.head_dim;
        for (t, &slot) in self.slots.iter().enumerate() {
            for h in 0..self.kv_heads {
                let src = &rows[(t * self.kv_heads + h) * hd..][..hd];
                let at = (h * self.num_slots + slot as usize) * hd;
                self.write(t, src, &mut pool[at..at + hd], conv);
            }
        }
    }
}

impl InplaceOp2 for WriteRows<'_> {
    fn name(&self) -> &'static str {
        "wick-kv-write-rows"
    }

    fn cpu_fwd(
        &self,
        pool: &mut CpuStorage,
        l1: &Layout,
        rows: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((r0, r1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("the K/V write needs contiguous tensors");
        };
        let CpuStorage::F32(rows) = rows else {
            candle_core::bail!("the K/V write needs f32 rows");
        };
        let rows = &rows[r0..r1];
        match pool {
            CpuStorage::F32(p) => self.run(&mut p[p0..p1], rows, |x| x),
            CpuStorage::F16(p) => self.run(&mut p[p0..p1], rows, f16::from_f32),
            _ => candle_core::bail!("the K/V write needs an f32 or f16 pool"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::kernels::cpu::test_data::random;

    /// The portable path: candle's rope, a transpose, the pool's dtype, `scatter_set`.
    fn portable(pool: &Tensor, rows: &Tensor, slots: &[u32], cos: &Tensor, sin: &Tensor, interleaved: bool) {
        let (t, heads, d) = rows.dims3().unwrap();
        let rotated = if cos.elem_count() == 0 {
            rows.clone()
        } else {
            let x4 = rows.reshape((t, heads, 1, d)).unwrap();
            let r = if interleaved {
                candle_nn::rotary_emb::rope_i(&x4, cos, sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope(&x4, cos, sin).unwrap()
            };
            r.reshape((t, heads, d)).unwrap()
        };
        let index = Tensor::from_vec(slots.to_vec(), (1, t, 1), &Device::Cpu)
            .unwrap()
            .broadcast_as((heads, t, d))
            .unwrap()
            .contiguous()
            .unwrap();
        let src = rotated
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .to_dtype(pool.dtype())
            .unwrap();
        pool.scatter_set(&index, &src, 1).unwrap();
    }

    #[test]
    fn rotated_rows_land_as_the_portable_path_writes_them() {
        let (t, heads, d, num_slots) = (5, 3, 64, 40);
        let rows = Tensor::from_vec(random(t * heads * d, 1), (t, heads, d), &Device::Cpu).unwrap();
        let angles: Vec<f32> = random(t * d / 2, 2).iter().map(|a| a * 40.0).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let (cos_t, sin_t) = (
            Tensor::from_vec(cos.clone(), (t, 1, d / 2), &Device::Cpu).unwrap(),
            Tensor::from_vec(sin.clone(), (t, 1, d / 2), &Device::Cpu).unwrap(),
        );
        let slots = [7u32, 0, 39, 12, 13];
        for dtype in [DType::F32, DType::F16] {
            for (rope, interleaved) in [(true, false), (true, true), (false, false)] {
                let ours = Tensor::zeros((heads, num_slots, d), dtype, &Device::Cpu).unwrap();
                let theirs = ours.copy().unwrap();
                let r = RopeRows {
                    cos: &cos,
                    sin: &sin,
                    interleaved,
                };
                write_rows(&ours, &rows, &slots, rope.then_some(&r)).unwrap();
                let empty = Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap();
                let (c, s) = if rope { (&cos_t, &sin_t) } else { (&empty, &empty) };
                portable(&theirs, &rows, &slots, c, s, interleaved);
                let bits = |x: &Tensor| -> Vec<u32> {
                    x.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                assert_eq!(
                    bits(&ours),
                    bits(&theirs),
                    "{dtype:?} rope {rope} interleaved {interleaved}"
                );
            }
        }
        // A slot outside the pool is an error, not a write out of bounds.
        let pool = Tensor::zeros((heads, num_slots, d), DType::F32, &Device::Cpu).unwrap();
        assert!(write_rows(&pool, &rows, &[0, 1, 2, 3, 40], None).is_err());
    }
}
