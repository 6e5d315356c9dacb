//! Activations quantized to 8 bits per value, once per layer input and shared by every matrix
//! that reads it (q/k/v, gate/up), whatever their weight format.
//!
//! Q8_1 exactly as candle's `BlockQ8_1::from_float`: per 32-value block, `d = amax / 127` (kept as
//! f16), `q = round(x / d)` (half away from zero) and the scaled sum `s = f16(sum q) * d`. Q8_0
//! weights use `d` and `q` only: candle's Q8_0 activation block is the same `d` and `q`.
//! Rows are stored in groups of four, interleaved block by block, so that four rows' scales are
//! one load.

/// Values per quantization block.
pub const QK: usize = 32;

/// Block `b` of four consecutive activation rows.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct ActGroup {
    pub d: [f32; 4],
    pub s: [f32; 4],
    pub qs: [[i8; QK]; 4],
    /// `qs + 128` as unsigned bytes, for `vpdpbusd` against signed weights (Q8_0), which takes
    /// its unsigned operand first; the kernel subtracts `128 * sum(w)`, exactly.
    pub qu: [[u8; QK]; 4],
    /// The exact sum of `qs`, for weights stored with an offset (Q5_0's `q - 16`).
    pub isum: [i32; 4],
    /// 32 times the exact sums of the first and the last 16 of `qs`: Q6_K's weights are stored
    /// unsigned (`q`, not `q - 32`), and its scales apply per 16 values.
    pub half32: [[i32; 2]; 4],
}

impl Default for ActGroup {
    fn default() -> Self {
        Self {
            d: [0.0; 4],
            s: [0.0; 4],
            qs: [[0; QK]; 4],
            qu: [[128; QK]; 4],
            isum: [0; 4],
            half32: [[0; 2]; 4],
        }
    }
}

/// `m` rows of `k` values, quantized: `ceil(m / 4) * (k / 32)` groups (missing rows are zeros).
pub struct QuantizedActs {
    pub groups: Vec<ActGroup>,
    pub m: usize,
    pub k: usize,
}

impl QuantizedActs {
    /// `x`: `m * k` values, row-major; `k` a multiple of 32. Rows are quantized in parallel
    /// (each row's result is independent of the others).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        use rayon::prelude::*;
        debug_assert_eq!(x.len(), m * k);
        let kb = k / QK;
        let mut groups = vec![ActGroup::default(); m.div_ceil(4) * kb];
        let quantize_group = |(rg, out): (usize, &mut [ActGroup])| {
            for lane in 0..4 {
                let row = rg * 4 + lane;
                if row >= m {
                    break;
                }
                for (b, block) in x[row * k..(row + 1) * k].chunks_exact(QK).enumerate() {
                    quantize_block(block, &mut out[b], lane);
                }
            }
        };
        if m * k >= 64 * 1024 {
            groups
                .par_chunks_mut(kb.max(1))
                .enumerate()
                .for_each(quantize_group);
        } else {
            groups.chunks_mut(kb.max(1)).enumerate().for_each(quantize_group);
        }
        Self { groups, m, k }
    }

    /// All rows, as the kernels read them.
    pub fn all(&self) -> ActRows<'_> {
        self.rows(0, self.m)
    }

    /// Rows `first .. first + count` (`first` a multiple of 4, the range within `m`).
    pub fn rows(&self, first: usize, count: usize) -> ActRows<'_> {
        debug_assert!(first.is_multiple_of(4) && first + count <= self.m);
        let kb = self.k / QK;
        ActRows {
            groups: &self.groups[first / 4 * kb..(first + count).div_ceil(4) * kb],
            m: count,
            kb,
        }
    }
}

/// A run of consecutive activation rows: what a kernel call computes (a matmul's rows are cut
/// into blocks so that a task's outputs stay in cache).
#[derive(Clone, Copy)]
pub struct ActRows<'a> {
    groups: &'a [ActGroup],
    /// Rows in the run.
    pub m: usize,
    kb: usize,
}

impl ActRows<'_> {
    /// The groups of row group `rg` of the run (its rows `4 rg .. 4 rg + 4`).
    #[inline]
    pub fn row_group(&self, rg: usize) -> &[ActGroup] {
        &self.groups[rg * self.kb..(rg + 1) * self.kb]
    }
}

#[inline]
fn quantize_block(block: &[f32], g: &mut ActGroup, lane: usize) {
    use half::f16;
    let amax = block.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let dh = f16::from_f32(d);
    let mut sum = 0i32;
    for ((q, u), &v) in g.qs[lane].iter_mut().zip(g.qu[lane].iter_mut()).zip(block) {
        *q = f32::round(v * id) as i8;
        *u = (*q as u8) ^ 0x80;
        sum += *q as i32;
    }
    g.isum[lane] = sum;
    let first: i32 = g.qs[lane][..QK / 2].iter().map(|&q| q as i32).sum();
    g.half32[lane] = [32 * first, 32 * (sum - first)];
    g.d[lane] = dh.to_f32();
    g.s[lane] = (f16::from_f32(sum as f32) * dh).to_f32();
}
