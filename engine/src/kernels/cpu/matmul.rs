//! Quantized weights times quantized activations on the CPU, for every weight format with a
//! kernel here ([`Q4_1`](super::q4_1), [`Q8_0`](super::q8_0)), with fused epilogues.
//!
//! Weights are stored in groups of [`WeightGroup::ROWS`] rows, interleaved block by block; a task
//! computes whole groups of output columns for every activation row, so each weight block is read
//! once per step. Every output element is computed by the same operations in the same order
//! whatever the number of rows, so a row's result does not depend on the batch around it
//! (batched == alone; see `attention` for why that matters).
//!
//! The epilogues write row-major outputs in place: split into several outputs (fused q/k/v),
//! added to a residual (attention output and down projections), or `silu(gate) * up` from
//! interleaved gate and up rows. Each is the same IEEE operations as the candle ops it replaces,
//! so fusing changes no bit of the result.

use candle_core::quantized::{GgmlDType, QTensor};
use rayon::prelude::*;

use super::acts::{ActRows, QuantizedActs, QK};
use crate::error::{EngineError, Result};

/// One block of `ROWS` consecutive weight rows, in a kernel's own layout: `BLOCKS` 32-value
/// activation blocks long (1, or 8 for a K-quant super-block of 256 values, whose scales are
/// then kept once per super-block as the file keeps them).
pub trait WeightGroup: Copy + Default + Send + Sync + 'static {
    const DTYPE: GgmlDType;
    /// Bytes of one GGML block of this type.
    const BLOCK_BYTES: usize;
    /// Weight rows per group (output columns a group computes).
    const ROWS: usize;
    /// 32-value blocks per group element.
    const BLOCKS: usize = 1;
    /// Sets lane `lane` (row `ROWS g + lane`) from a GGML block (of `32 BLOCKS` values).
    fn set_lane(&mut self, lane: usize, block: &[u8]);
    /// The group's `ROWS` weight rows (`w`: its blocks) against every activation row, row-major:
    /// `out[r * ROWS + lane]`, `out` of `m * ROWS` (each row's outputs one contiguous run, so the
    /// epilogues copy runs, not scattered elements).
    fn dot(w: &[Self], acts: &ActRows<'_>, out: &mut [f32]);
}

/// Activation rows per task (a multiple of 4; see [`GroupMatrix::for_each_unit`]).
const ROW_BLOCK: usize = 64;

pub struct GroupMatrix<W> {
    /// `ceil(n / ROWS)` groups of rows, each `k / (32 BLOCKS)` interleaved elements; missing rows
    /// of the last group are zeros (computed and dropped).
    groups: Vec<W>,
    n: usize,
    k: usize,
}

impl<W: WeightGroup> GroupMatrix<W> {
    /// From a GGML tensor of shape `(n, k)` in `W`'s type.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        if q.dtype() != W::DTYPE {
            return Err(EngineError::InvalidConfig(format!(
                "expected {:?}, got {:?}",
                W::DTYPE,
                q.dtype()
            )));
        }
        let (n, k) = q.shape().dims2()?;
        if !k.is_multiple_of(2 * QK) || !k.is_multiple_of(QK * W::BLOCKS) {
            return Err(EngineError::InvalidConfig(format!(
                "{:?} rows of {k} are not a multiple of 64 and of {}",
                W::DTYPE,
                QK * W::BLOCKS
            )));
        }
        let data = q.data()?;
        // One GGML block per element: 32 values, or a K-quant's 256-value super-block.
        let kb = Self::elems(k);
        if data.len() != n * kb * W::BLOCK_BYTES {
            return Err(EngineError::InvalidConfig(format!(
                "{:?} tensor has the wrong byte length",
                W::DTYPE
            )));
        }
        let mut groups = vec![W::default(); n.div_ceil(W::ROWS) * kb];
        for (i, b) in data.chunks_exact(W::BLOCK_BYTES).enumerate() {
            let (row, block) = (i / kb, i % kb);
            groups[(row / W::ROWS) * kb + block].set_lane(row % W::ROWS, b);
        }
        Ok(Self { groups, n, k })
    }

    /// From any per-row source of blocks: `fill(row, block, group, lane)` sets lane `lane` of
    /// `group` to element `block` (of `32 BLOCKS` values) of row `row` (formats whose GGML
    /// blocks are larger than 32 values, converted exactly).
    pub fn from_blocks(n: usize, k: usize, fill: impl Fn(usize, usize, &mut W, usize)) -> Result<Self> {
        if !k.is_multiple_of(2 * QK) || !k.is_multiple_of(QK * W::BLOCKS) {
            return Err(EngineError::InvalidConfig(format!(
                "{:?} rows of {k} are not a multiple of 64 and of {}",
                W::DTYPE,
                QK * W::BLOCKS
            )));
        }
        let kb = Self::elems(k);
        let mut groups = vec![W::default(); n.div_ceil(W::ROWS) * kb];
        for row in 0..n {
            for b in 0..kb {
                fill(row, b, &mut groups[(row / W::ROWS) * kb + b], row % W::ROWS);
            }
        }
        Ok(Self { groups, n, k })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Elements per row group for rows of `k` values.
    const fn elems(k: usize) -> usize {
        k / (QK * W::BLOCKS)
    }

    /// The blocks of weight group `g`.
    pub fn groups_of(&self, g: usize) -> &[W] {
        let kb = Self::elems(self.k);
        &self.groups[g * kb..(g + 1) * kb]
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The same matrix in another group type of the same layout (Q5_0 held as Q8_0).
    pub fn convert<V: WeightGroup + From<W>>(&self) -> GroupMatrix<V> {
        GroupMatrix {
            groups: self.groups.iter().map(|&g| V::from(g)).collect(),
            n: self.n,
            k: self.k,
        }
    }

    /// The rows of `parts` one after the other (q, k and v as one matrix). Every part but the
    /// last must have a multiple of `ROWS` rows, so that no group straddles two parts.
    pub fn concat(parts: &[&Self]) -> Option<Self> {
        let k = parts.first()?.k;
        let mut groups = Vec::new();
        let mut n = 0;
        for (i, p) in parts.iter().enumerate() {
            if p.k != k || (i + 1 < parts.len() && !p.n.is_multiple_of(W::ROWS)) {
                return None;
            }
            groups.extend_from_slice(&p.groups);
            n += p.n;
        }
        Some(Self { groups, n, k })
    }

    /// Groups of `a` and `b` alternating (gate and up), for [`matmul_silu_mul`]. Both must have
    /// the same shape and a multiple of `ROWS` rows.
    pub fn interleave(a: &Self, b: &Self) -> Option<Self> {
        if a.n != b.n || a.k != b.k || !a.n.is_multiple_of(W::ROWS) {
            return None;
        }
        let kb = Self::elems(a.k);
        let mut groups = Vec::with_capacity(a.groups.len() * 2);
        for (ga, gb) in a.groups.chunks(kb).zip(b.groups.chunks(kb)) {
            groups.extend_from_slice(ga);
            groups.extend_from_slice(gb);
        }
        Some(Self {
            groups,
            n: a.n * 2,
            k: a.k,
        })
    }

    /// Runs every (row block, unit) pair in parallel, a unit being `unit_groups` consecutive
    /// groups; `emit(unit, first_row, tiles)` gets the unit's groups' outputs for the block's rows
    /// (from `first_row` on), one `(rows, ROWS)` row-major tile per group
    /// (`tiles[(j * rows + r) * ROWS + lane]`).
    ///
    /// Rows are cut into blocks of [`ROW_BLOCK`] so that a task's outputs and the residual it reads
    /// stay in cache at prefill sizes; each output is the same operations whatever the cut.
    pub(super) fn for_each_unit(
        &self,
        acts: &QuantizedActs,
        unit_groups: usize,
        emit: impl Fn(usize, usize, &[f32]) + Sync,
    ) {
        self.for_each_unit_of(acts, unit_groups, None, emit)
    }

    /// [`for_each_unit`](Self::for_each_unit) over the units listed in `only` (ascending), or
    /// all of them.
    pub(super) fn for_each_unit_of(
        &self,
        acts: &QuantizedActs,
        unit_groups: usize,
        only: Option<&[usize]>,
        emit: impl Fn(usize, usize, &[f32]) + Sync,
    ) {
        // The epilogues build each row's run of ROWS outputs on the stack.
        const { assert!(W::ROWS <= 64) };
        let m = acts.m;
        let n_units = only.map_or(self.n.div_ceil(W::ROWS).div_ceil(unit_groups), <[usize]>::len);
        let n_blocks = m.div_ceil(ROW_BLOCK).max(1);
        let tasks = n_units * n_blocks;
        let per_task = (tasks / (4 * rayon::current_num_threads().max(1))).clamp(1, 64);
        let kb = Self::elems(self.k);
        (0..tasks).into_par_iter().with_min_len(per_task).for_each_init(
            || vec![0f32; unit_groups * W::ROWS * m.min(ROW_BLOCK)],
            |buf, t| {
                // Row block outermost: a task's neighbours share its activation rows.
                let (block, u) = (t / n_units, t % n_units);
                let u = only.map_or(u, |units| units[u]);
                let first = block * ROW_BLOCK;
                let rows = acts.rows(first, (m - first).min(ROW_BLOCK));
                let tile = W::ROWS * rows.m;
                for j in 0..unit_groups {
                    let g = u * unit_groups + j;
                    if g * W::ROWS < self.n {
                        let out = &mut buf[j * tile..(j + 1) * tile];
                        W::dot(&self.groups[g * kb..(g + 1) * kb], &rows, out);
                    }
                }
                emit(u, first, &buf[..unit_groups * tile]);
            },
        );
    }

    pub(super) fn check(&self, acts: &QuantizedActs) -> Result<()> {
        if acts.k != self.k {
            return Err(EngineError::InvalidBatch(format!(
                "{:?} matmul: input has {} columns, weight {}",
                W::DTYPE,
                acts.k,
                self.k
            )));
        }
        Ok(())
    }

    /// `acts W^T`, row-major `(m, n)`.
    pub fn matmul(&self, acts: &QuantizedActs) -> Result<Vec<f32>> {
        Ok(self.matmul_split(acts, &[self.n])?.swap_remove(0))
    }

    /// `acts W^T` cut by columns into outputs of `widths` columns each (row-major `(m, width)`),
    /// for a matrix made by [`concat`](Self::concat). Every width but the last is a multiple of
    /// `ROWS`.
    pub fn matmul_split(&self, acts: &QuantizedActs, widths: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.check(acts)?;
        if widths.iter().sum::<usize>() != self.n
            || widths[..widths.len().saturating_sub(1)]
                .iter()
                .any(|w| !w.is_multiple_of(W::ROWS))
        {
            return Err(EngineError::InvalidBatch(format!(
                "cannot split {} columns as {widths:?}",
                self.n
            )));
        }
        let m = acts.m;
        let mut outs: Vec<Vec<f32>> = widths.iter().map(|&w| vec![0f32; m * w]).collect();
        // The first group of each output.
        let starts: Vec<usize> = widths
            .iter()
            .scan(0, |acc, &w| {
                let s = *acc;
                *acc += w / W::ROWS;
                Some(s)
            })
            .collect();
        let sinks: Vec<Sink> = outs.iter_mut().map(|o| Sink::new(o)).collect();
        self.for_each_unit(acts, 1, |g, first, tile| {
            let part = starts.iter().rposition(|&s| s <= g).unwrap_or(0);
            let width = widths[part];
            let c0 = (g - starts[part]) * W::ROWS;
            let cols = W::ROWS.min(width.saturating_sub(c0));
            for (r, run) in (first..).zip(tile.chunks_exact(W::ROWS)) {
                // SAFETY: group g alone writes columns c0..c0+ROWS of these rows.
                unsafe { sinks[part].write_run(r * width + c0, &run[..cols]) };
            }
        });
        Ok(outs)
    }

    /// `residual + acts W^T`, row-major `(m, n)`: the residual connection in the epilogue, the
    /// same f32 addition as `x + y`.
    pub fn matmul_add(&self, acts: &QuantizedActs, residual: &[f32]) -> Result<Vec<f32>> {
        self.check(acts)?;
        let (m, n) = (acts.m, self.n);
        if residual.len() != m * n {
            return Err(EngineError::InvalidBatch("residual has the wrong size".into()));
        }
        let mut out = vec![0f32; m * n];
        let sink = Sink::new(&mut out);
        self.for_each_unit(acts, 1, |g, first, tile| {
            let c0 = g * W::ROWS;
            let cols = W::ROWS.min(n - c0);
            let mut run = [0f32; 64];
            for (r, t) in (first..).zip(tile.chunks_exact(W::ROWS)) {
                let at = r * n + c0;
                for ((o, &x), &y) in run.iter_mut().zip(&residual[at..at + cols]).zip(t) {
                    *o = x + y;
                }
                // SAFETY: group g alone writes its ROWS columns.
                unsafe { sink.write_run(at, &run[..cols]) };
            }
        });
        Ok(out)
    }

    /// `silu(gate) * up` for a matrix made by [`interleave`](Self::interleave)`(gate, up)`:
    /// row-major `(m, n / 2)`. `silu(g) = g / (1 + exp(-g))`, candle's expression.
    pub fn matmul_silu_mul(&self, acts: &QuantizedActs) -> Result<Vec<f32>> {
        self.check(acts)?;
        let (m, half) = (acts.m, self.n / 2);
        let mut out = vec![0f32; m * half];
        let sink = Sink::new(&mut out);
        self.for_each_unit(acts, 2, |u, first, tiles| {
            let (gate, up) = tiles.split_at(tiles.len() / 2);
            let mut run = [0f32; 64];
            for (r, (g, up)) in (first..).zip(gate.chunks_exact(W::ROWS).zip(up.chunks_exact(W::ROWS))) {
                #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
                if W::ROWS == 8 {
                    // SAFETY: AVX2/FMA compiled in; g, up and run hold at least eight.
                    unsafe { super::simd::silu_mul8(g, up, &mut run) };
                    // SAFETY: unit u alone writes its ROWS columns.
                    unsafe { sink.write_run(r * half + u * W::ROWS, &run[..W::ROWS]) };
                    continue;
                }
                for ((o, &g), &up) in run.iter_mut().zip(g).zip(up) {
                    let silu = g / (1.0 + (-g).exp());
                    *o = silu * up;
                }
                // SAFETY: unit u alone writes its ROWS columns.
                unsafe { sink.write_run(r * half + u * W::ROWS, &run[..W::ROWS]) };
            }
        });
        Ok(out)
    }
}

/// A row-major output that parallel tasks fill, each its own columns.
struct Sink {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks write disjoint elements (each a distinct group of columns), and the buffer
// outlives the parallel loop that writes it.
unsafe impl Send for Sink {}
unsafe impl Sync for Sink {}

impl Sink {
    fn new(out: &mut [f32]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// Writes `run` at elements `at..at + run.len()`.
    ///
    /// # Safety
    /// No other task may write those elements concurrently.
    #[inline(always)]
    unsafe fn write_run(&self, at: usize, run: &[f32]) {
        assert!(at + run.len() <= self.len);
        if let Ok(run) = <&[f32; 8]>::try_from(run) {
            // The common case as one vector move: the general copy is a call to memcpy (with a
            // vzeroupper) per row.
            std::ptr::write_unaligned(self.ptr.add(at) as *mut [f32; 8], *run);
        } else {
            std::ptr::copy_nonoverlapping(run.as_ptr(), self.ptr.add(at), run.len());
        }
    }
}

/// Quantizes a `(..., k)` f32 CPU tensor's rows ([`QuantizedActs`]).
pub fn quantize_input(x: &candle_core::Tensor) -> Result<QuantizedActs> {
    use candle_core::{CpuStorage, Storage};
    let k = x.dims().last().copied().unwrap_or(0);
    if !k.is_multiple_of(QK) {
        return Err(EngineError::InvalidBatch(format!(
            "quantized matmul: rows of {k} are not a multiple of {QK}"
        )));
    }
    let x = x.contiguous()?;
    let m = x.elem_count() / k.max(1);
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Err(EngineError::InvalidBatch(
            "quantized matmul needs f32 CPU input".into(),
        ));
    };
    let start = layout.start_offset();
    Ok(QuantizedActs::quantize(&data[start..start + m * k], m, k))
}

impl<W: WeightGroup> GroupMatrix<W> {
    /// `x W^T` for `x`: `(..., k)` f32 on the CPU. Returns `(..., n)`.
    pub fn forward(&self, x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        let mut dims = x.dims().to_vec();
        let k = dims.pop().unwrap_or(0);
        if k != self.k {
            return Err(EngineError::InvalidBatch(format!(
                "{:?} matmul: input has {k} columns, weight {}",
                W::DTYPE,
                self.k
            )));
        }
        dims.push(self.n);
        let acts = quantize_input(x)?;
        Ok(candle_core::Tensor::from_vec(
            self.matmul(&acts)?,
            dims,
            x.device(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::q4_1::Q41Group;
    use crate::kernels::cpu::q8_0::Q80Group;
    use crate::kernels::cpu::test_data::random;
    use candle_core::{Device, Tensor};

    fn quantized<W: WeightGroup>(n: usize, k: usize, seed: u64) -> GroupMatrix<W> {
        let t = Tensor::from_vec(random(n * k, seed), (n, k), &Device::Cpu).unwrap();
        GroupMatrix::from_qtensor(&QTensor::quantize(&t, W::DTYPE).unwrap()).unwrap()
    }

    /// The fused epilogues give exactly what the separate matmuls and candle's ops give.
    fn fused_equals_separate<W: WeightGroup>() {
        let k = 128;
        let (q, kk, v) = (
            quantized::<W>(16, k, 1),
            quantized::<W>(8, k, 2),
            quantized::<W>(8, k, 3),
        );
        let (gate, up) = (quantized::<W>(24, k, 4), quantized::<W>(24, k, 5));
        let qkv = GroupMatrix::concat(&[&q, &kk, &v]).unwrap();
        let gate_up = GroupMatrix::interleave(&gate, &up).unwrap();
        // 70 and 133: more than one row block, the last one partial.
        for m in [1, 2, 5, 8, 70, 133] {
            let acts = QuantizedActs::quantize(&random(m * k, 9 + m as u64), m, k);
            let parts = qkv.matmul_split(&acts, &[16, 8, 8]).unwrap();
            assert_eq!(parts[0], q.matmul(&acts).unwrap());
            assert_eq!(parts[1], kk.matmul(&acts).unwrap());
            assert_eq!(parts[2], v.matmul(&acts).unwrap());

            let residual = random(m * 16, 11);
            let added = q.matmul_add(&acts, &residual).unwrap();
            let x = Tensor::from_vec(residual.clone(), (m, 16), &Device::Cpu).unwrap();
            let y = Tensor::from_vec(q.matmul(&acts).unwrap(), (m, 16), &Device::Cpu).unwrap();
            assert_eq!(
                added,
                (x + y).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );

            let fused = gate_up.matmul_silu_mul(&acts).unwrap();
            let g = Tensor::from_vec(gate.matmul(&acts).unwrap(), (m, 24), &Device::Cpu).unwrap();
            let u = Tensor::from_vec(up.matmul(&acts).unwrap(), (m, 24), &Device::Cpu).unwrap();
            let want = (candle_nn::ops::silu(&g).unwrap() * u).unwrap();
            assert_eq!(
                fused,
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "m = {m}"
            );
        }
    }

    #[test]
    fn fused_epilogues_equal_separate_ops_q4_1() {
        fused_equals_separate::<Q41Group>();
    }

    #[test]
    fn fused_epilogues_equal_separate_ops_q8_0() {
        fused_equals_separate::<Q80Group>();
    }

    /// Rows cut into row blocks (and blocks spread over tasks) give each row what it gets alone.
    fn rows_equal_alone<W: WeightGroup>() {
        let (n, k) = (40, 128);
        let w = quantized::<W>(n, k, 3);
        let m = 2 * ROW_BLOCK + 5;
        let x = random(m * k, 4);
        let all = w.matmul(&QuantizedActs::quantize(&x, m, k)).unwrap();
        for r in 0..m {
            let alone = w
                .matmul(&QuantizedActs::quantize(&x[r * k..(r + 1) * k], 1, k))
                .unwrap();
            assert_eq!(alone, all[r * n..(r + 1) * n], "row {r} of {m}");
        }
    }

    #[test]
    fn row_blocks_equal_rows_alone() {
        rows_equal_alone::<Q41Group>();
        rows_equal_alone::<Q80Group>();
    }

    #[test]
    fn bad_splits_and_widths_are_errors() {
        let m = quantized::<Q41Group>(8, 64, 1);
        let acts = QuantizedActs::quantize(&random(64, 2), 1, 64);
        assert!(m.matmul_split(&acts, &[3, 5]).is_err());
        assert!(m.matmul_split(&acts, &[4, 4]).is_err());
        let wrong = QuantizedActs::quantize(&random(128, 2), 1, 128);
        assert!(m.matmul(&wrong).is_err());
        assert!(m.matmul_add(&acts, &[0.0; 3]).is_err());
    }
}
