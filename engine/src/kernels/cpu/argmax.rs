//! Greedy decoding's token straight from the output head: each row's largest output of
//! `acts W^T`, found as the head's tiles are computed and never stored. At 64 sequences the
//! default model's head writes 12 MiB of logits a step, which the sampler then copies and scans
//! only to take their argmax.

use std::ops::Range;

use super::acts::QuantizedActs;
use super::matmul::{GroupMatrix, WeightGroup};
use crate::error::Result;

/// Weight groups per task: 512 columns with eight-row groups, so a row's candidates are a
/// hundred or so per vocabulary, not one per group.
const UNIT_GROUPS: usize = 64;

/// A row's best output so far: its value and column (`u32::MAX`: none yet).
#[derive(Clone, Copy)]
struct Best {
    value: f32,
    column: u32,
}

impl Best {
    const NONE: Best = Best {
        value: f32::NEG_INFINITY,
        column: u32::MAX,
    };

    /// Keeps the first of equal values (columns come in ascending order), as
    /// [`crate::sample::sampler::argmax`] does; NaN counts as -inf, as the sampler makes it.
    #[inline(always)]
    fn offer(&mut self, value: f32, column: u32) {
        let value = if value.is_nan() { f32::NEG_INFINITY } else { value };
        if self.column == u32::MAX || value > self.value {
            *self = Best { value, column };
        }
    }
}

/// Each task's per-row bests, written by that task alone.
struct BestSink(*mut Best);
// SAFETY: task u writes only `best[u * m..(u + 1) * m]`, and nothing reads until all are done.
unsafe impl Sync for BestSink {}

impl<W: WeightGroup> GroupMatrix<W> {
    /// The column of each row's largest output, exactly the sampler's greedy `argmax` of the
    /// logits [`matmul`](Self::matmul) would give: the same outputs (the same kernel computes
    /// them), NaN as -inf, the lowest column among equal values.
    pub fn matmul_argmax(&self, acts: &QuantizedActs) -> Result<Vec<u32>> {
        self.matmul_argmax_within(acts, None)
    }

    /// [`matmul_argmax`](Self::matmul_argmax) over the columns in `within` (ranges, in any
    /// order) alone, or all of them: only the weight groups those columns need are read, so a
    /// draft model's head restricted to the vocabulary it may propose costs that share of
    /// itself. A row with no column gets `u32::MAX`.
    pub fn matmul_argmax_within(
        &self,
        acts: &QuantizedActs,
        within: Option<&[Range<u32>]>,
    ) -> Result<Vec<u32>> {
        self.check(acts)?;
        let (m, n) = (acts.m, self.n());
        let unit_cols = UNIT_GROUPS * W::ROWS;
        let n_units = n.div_ceil(unit_cols);
        // The units holding wanted columns, ascending.
        let units: Option<Vec<usize>> = within.map(|ranges| {
            let mut units: Vec<usize> = ranges
                .iter()
                .filter(|r| r.start < r.end && (r.start as usize) < n)
                .flat_map(|r| {
                    r.start as usize / unit_cols..=(r.end as usize).min(n).saturating_sub(1) / unit_cols
                })
                .collect();
            units.sort_unstable();
            units.dedup();
            units
        });
        let wanted = |c: usize| within.is_none_or(|ranges| ranges.iter().any(|r| r.contains(&(c as u32))));
        let mut best = vec![Best::NONE; n_units * m];
        let sink = BestSink(best.as_mut_ptr());
        let sink = &sink;
        self.for_each_unit_of(acts, UNIT_GROUPS, units.as_deref(), |u, first, tiles| {
            let rows = tiles.len() / (UNIT_GROUPS * W::ROWS);
            // Whether every column of the unit is wanted (then none is checked one by one).
            let (lo, hi) = (u * unit_cols, ((u + 1) * unit_cols).min(n));
            let whole = within.is_none_or(|ranges| {
                ranges
                    .iter()
                    .any(|r| r.start as usize <= lo && hi <= r.end as usize)
            });
            for r in 0..rows {
                let mut b = Best::NONE;
                for j in 0..UNIT_GROUPS {
                    let first_col = (u * UNIT_GROUPS + j) * W::ROWS;
                    // Columns past n are padding (and their groups are never computed).
                    let lanes = n.saturating_sub(first_col).min(W::ROWS);
                    let tile = &tiles[(j * rows + r) * W::ROWS..][..lanes];
                    for (lane, &v) in tile.iter().enumerate() {
                        if whole || wanted(first_col + lane) {
                            b.offer(v, (first_col + lane) as u32);
                        }
                    }
                }
                // SAFETY: (u, first + r) is this task's entry alone (see BestSink); it lies in
                // `best` as u < n_units and first + r < m.
                unsafe { *sink.0.add(u * m + first + r) = b };
            }
        });
        Ok((0..m)
            .map(|r| {
                let mut b = Best::NONE;
                for u in (0..n_units).map(|u| best[u * m + r]) {
                    if u.column != u32::MAX && (b.column == u32::MAX || u.value > b.value) {
                        b = u;
                    }
                }
                b.column
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::kernels::cpu::q4_1::Q41Group;
    use crate::kernels::cpu::q8_0::Q80Group;
    use crate::kernels::cpu::test_data::random;
    use crate::sample::sampler::argmax;

    fn argmax_equals_matmul<W: WeightGroup>() {
        // 1100 columns: several tasks, the last one partial; 70 rows: two row blocks.
        let (n, k) = (1100, 64);
        let t = Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).unwrap();
        let w = GroupMatrix::<W>::from_qtensor(&QTensor::quantize(&t, W::DTYPE).unwrap()).unwrap();
        for m in [1, 3, 70] {
            let x = random(m * k, 5 + m as u64);
            let acts = QuantizedActs::quantize(&x, m, k);
            let logits = w.matmul(&acts).unwrap();
            let want: Vec<u32> = logits.chunks_exact(n).map(argmax).collect();
            assert_eq!(w.matmul_argmax(&acts).unwrap(), want, "m {m}");
            // Restricted to some columns: a prefix, a range inside one task, one column in the
            // last (partial) task; the argmax of the logits with every other column -inf.
            let within = [0..700, 1090..1091, 530..540];
            let want: Vec<u32> = logits
                .chunks_exact(n)
                .map(|row| {
                    let masked: Vec<f32> = row
                        .iter()
                        .enumerate()
                        .map(|(c, &v)| {
                            if within.iter().any(|r| r.contains(&(c as u32))) {
                                v
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                        .collect();
                    argmax(&masked)
                })
                .collect();
            assert_eq!(
                w.matmul_argmax_within(&acts, Some(&within)).unwrap(),
                want,
                "m {m}"
            );
            assert_eq!(
                w.matmul_argmax_within(&acts, Some(std::slice::from_ref(&(1090..1091))))
                    .unwrap(),
                vec![1090; m],
                "m {m}: the only column"
            );
        }
        // Equal maxima in different tasks (a row of zeros: every output 0) go to column 0.
        let acts = QuantizedActs::quantize(&vec![0.0; k], 1, k);
        assert_eq!(w.matmul_argmax(&acts).unwrap(), [0]);
    }

    #[test]
    fn argmax_is_the_samplers_argmax_of_the_outputs() {
        argmax_equals_matmul::<Q41Group>();
        argmax_equals_matmul::<Q80Group>();
    }

    #[test]
    fn offer_keeps_the_first_maximum_and_skips_nan() {
        let mut b = Best::NONE;
        for (c, v) in [f32::NAN, -1.0, 2.0, 2.0, f32::NAN, 1.0].into_iter().enumerate() {
            b.offer(v, c as u32);
        }
        assert_eq!(b.column, 2);
        let mut b = Best::NONE;
        b.offer(f32::NAN, 0);
        b.offer(f32::NEG_INFINITY, 1);
        assert_eq!(b.column, 0, "all -inf: the first, as argmax");
    }
}
