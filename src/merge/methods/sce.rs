//! `sce`: Select (keep the `select_topk` fraction of weights whose task vectors vary most
//! across models), Calculate (weight each task vector by its mean square), Erase (TIES sign
//! election), then the weighted mean of the surviving task vectors is added to the base.

use super::stats::{add_by_lane, lanes_total, largest_first, BlockSums, Select, SUM_LANES};
use super::*;
use rayon::prelude::*;

pub struct Sce;

impl Method for Sce {
    fn name(&self) -> &'static str {
        "sce"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[
            param("int8_mask", Scope::Shared, Some(0.0)),
            param("select_topk", Scope::Shared, Some(1.0)),
        ];
        P
    }
    fn base(&self) -> Base {
        Base::Required
    }
    fn inputs(&self) -> (usize, usize) {
        (1, usize::MAX)
    }
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let b = input.base.expect("sce has a base");
        let others = input.others();
        if others.is_empty() {
            return Ok(Box::new(Elementwise(
                move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                    out.copy_from_slice(x[b]);
                    Ok(())
                },
            )));
        }
        let n = input.n_elements() as u64;
        let m = others.len();
        let topk = (input.shared)("select_topk");
        // Select: the `topk` fraction of the weights with a nonzero variance, largest
        // variance first (ties: earlier weights first), found exactly by radix selection on
        // the variance's bits (descending: the complement of the bits, smallest first), the
        // count of nonzero variances gathered in the first pass. The variance is ranked as
        // an f32, as mergekit ranks it (torch.var in f32): 32-bit keys, two radix passes.
        // A tensor in one chunk is held in memory: each weight's variance is computed once
        // (for every pass, and for the result), not once per pass.
        let mut held_var: Option<Vec<f32>> = None;
        let keep = if topk <= 0.0 {
            Keep::None
        } else if topk < 1.0 {
            // m is set once the first pass has counted the nonzero variances; until then the
            // selection must ask for its passes whatever n is (n = 1 too).
            let mut sel = Select::new(1, u64::MAX, 32);
            if input.in_one_chunk() {
                input.pass(|_, x| {
                    let mut var = input.pool.take(x[b].len());
                    variances_in_parallel(x, b, &others, 0, &mut var);
                    held_var = Some(var);
                    Ok(())
                })?;
            }
            let mut chunk_var = input.pool.take(0);
            let mut nonzero: Option<u64> = None;
            while sel.needs_pass() {
                let mut count = 0u64;
                // The variances of tensor elements `pos..`.
                let mut feed = |pos: usize, var: &[f32]| {
                    if nonzero.is_none() {
                        count += var.par_iter().filter(|&&v| v != 0.0).count() as u64;
                    }
                    sel.feed(pos as u64, var.len(), |j| largest_first(var[j]));
                };
                match &held_var {
                    Some(var) => feed(0, var),
                    // A chunk's variances a piece at a time: memory for one piece, not one
                    // more chunk.
                    None => input.pass(|first_row, x| {
                        let len = x[b].len();
                        for lo in (0..len).step_by(VARIANCE_PIECE) {
                            chunk_var.resize(VARIANCE_PIECE.min(len - lo), 0.0);
                            variances_in_parallel(x, b, &others, lo, &mut chunk_var);
                            feed(first_row * input.row_len + lo, &chunk_var);
                        }
                        Ok(())
                    })?,
                }
                if nonzero.is_none() {
                    nonzero = Some(count);
                    sel.set_m((count as f64 * topk) as u64, n);
                }
                sel.end_pass();
            }
            input.pool.give([chunk_var]);
            Keep::Top(sel)
        } else {
            Keep::All
        };
        // Calculate: each task vector's mean square (after the selection), in SUM_LANES lanes
        // by element index per task vector.
        let mut sums = BlockSums::new(m * SUM_LANES);
        input.pass(|first_row, x| {
            let start = first_row * input.row_len;
            let held_var = held_var.as_deref();
            sums.feed(x[b].len(), |r, acc| {
                let mut var = [0f32; BLOCK];
                let mut kept = [0f32; BLOCK];
                for lo in r.clone().step_by(BLOCK) {
                    let len = BLOCK.min(r.end - lo);
                    let var = keep.variances(x, b, &others, held_var, start, lo, &mut var[..len]);
                    keep.mask(start + lo, var, &mut kept[..len]);
                    let xb = &x[b][lo..lo + len];
                    for (k, &i) in others.iter().enumerate() {
                        let xi = &x[i][lo..lo + len];
                        let lanes = &mut acc[k * SUM_LANES..(k + 1) * SUM_LANES];
                        add_by_lane((start + lo) as u64, len, lanes, |j| {
                            let t = (xi[j] - xb[j]) as f64;
                            // Adding +0.0 leaves a sum of squares unchanged.
                            t * t * kept[j] as f64
                        });
                    }
                }
            });
            Ok(())
        })?;
        let totals = sums.values();
        let ms: Vec<f64> = (totals.chunks(SUM_LANES))
            .map(|lanes| lanes_total(lanes) / n as f64)
            .collect();
        let total: f64 = ms.iter().sum();
        let w: Vec<f64> = if total.abs() < 1e-6 {
            vec![1.0 / m as f64; m]
        } else {
            ms.iter().map(|x| x / total).collect()
        };
        let row = input.row_len;
        // Erase: TIES sign election per weight, then the weighted mean of the agreeing ones,
        // in blocks whose per-model loops vectorize.
        Ok(Box::new(Erase {
            base: b,
            others,
            w,
            keep,
            held_var,
            row,
        }))
    }
}

/// Elements per block of the per-element work (stack arrays, loops that vectorize).
const BLOCK: usize = 4096;

/// Variances computed at a time for a selection pass over a tensor larger than one chunk.
const VARIANCE_PIECE: usize = 1 << 20;

/// Which weights the selection keeps.
enum Keep {
    None,
    All,
    Top(Select),
}

impl Keep {
    /// The variances of local elements `lo..lo + out.len()` of a chunk starting at tensor
    /// element `start`: the held ones, else computed into `out`; none when the selection
    /// does not look at them.
    #[allow(clippy::too_many_arguments)]
    fn variances<'a>(
        &self,
        x: &[&[f32]],
        b: usize,
        others: &[usize],
        held: Option<&'a [f32]>,
        start: usize,
        lo: usize,
        out: &'a mut [f32],
    ) -> &'a [f32] {
        match (self, held) {
            (Keep::None | Keep::All, _) => &out[..0],
            (Keep::Top(_), Some(var)) => &var[start + lo..start + lo + out.len()],
            (Keep::Top(_), None) => {
                variances(x, b, others, lo, out);
                out
            }
        }
    }

    /// 1.0 where tensor element `first + j` is kept, 0.0 where it is not (`var`: its
    /// variance, for a selection).
    fn mask(&self, first: usize, var: &[f32], kept: &mut [f32]) {
        match self {
            Keep::None => kept.fill(0.0),
            Keep::All => kept.fill(1.0),
            Keep::Top(sel) => {
                for (j, (k, &v)) in kept.iter_mut().zip(var).enumerate() {
                    *k = if sel.contains((first + j) as u64, largest_first(v)) {
                        1.0
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// SCE's result: the base plus, where kept, the weighted mean of the task vectors that agree
/// with the elected sign.
struct Erase {
    base: usize,
    others: Vec<usize>,
    /// Each task vector's weight (its share of the mean squares).
    w: Vec<f64>,
    keep: Keep,
    held_var: Option<Vec<f32>>,
    row: usize,
}

impl Apply for Erase {
    fn apply(&mut self, first_row: usize, x: &[&[f32]], out: &mut [f32]) -> Result<()> {
        let start = first_row * self.row;
        let (b, others, w) = (self.base, &self.others, &self.w);
        let (keep, held_var) = (&self.keep, self.held_var.as_deref());
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(k, o)| {
            let (lo, len) = (k * BLOCK, o.len());
            let mut var = [0f32; BLOCK];
            let mut kept = [0f32; BLOCK];
            let var = keep.variances(x, b, others, held_var, start, lo, &mut var[..len]);
            keep.mask(start + lo, var, &mut kept[..len]);
            let xb = &x[b][lo..lo + len];
            // Each weight's sign, elected from the sum of its task vectors (>= 0: positive).
            let mut sum = [0f64; BLOCK];
            for &i in others {
                for ((s, &xi), &base) in sum[..len].iter_mut().zip(&x[i][lo..]).zip(xb) {
                    *s += (xi - base) as f64;
                }
            }
            let mut num = [0f64; BLOCK];
            let mut den = [0f64; BLOCK];
            for (&i, &wi) in others.iter().zip(w) {
                let lanes = (num[..len].iter_mut())
                    .zip(&mut den[..len])
                    .zip(&sum[..len])
                    .zip(x[i][lo..].iter().zip(xb));
                for (((nu, de), &s), (&xi, &base)) in lanes {
                    let t = (xi - base) as f64;
                    // Only task vectors of the elected sign (never zeros) count: adding 0.0
                    // leaves the sums unchanged (they never hold -0.0).
                    let agree = (s >= 0.0 && t > 0.0) | (s < 0.0 && t < 0.0);
                    *nu += if agree { t * wi } else { 0.0 };
                    *de += if agree { wi } else { 0.0 };
                }
            }
            for j in 0..len {
                let merged = (num[j] / den[j].max(1e-6)) as f32;
                // Where not kept, the base plus 0.0 (as mergekit adds its zeroed mean).
                o[j] = xb[j] + if kept[j] != 0.0 { merged } else { 0.0 };
            }
        });
        Ok(())
    }

    fn into_buffers(self: Box<Self>) -> Vec<Vec<f32>> {
        self.held_var.into_iter().collect()
    }
}

/// `variances` of local elements `lo..lo + out.len()`, blocks in parallel.
fn variances_in_parallel(x: &[&[f32]], b: usize, others: &[usize], lo: usize, out: &mut [f32]) {
    (out.par_chunks_mut(BLOCK).enumerate())
        .for_each(|(k, o)| variances(x, b, others, lo + k * BLOCK, o));
}

/// The population variance across models of the task vectors of local elements
/// `lo..lo + out.len()`, each computed in f64 as the per-element definition does (the sum,
/// the mean, the sum of squared deviations, in model order) and rounded to the f32 that is
/// ranked, in loops over the elements that vectorize.
fn variances(x: &[&[f32]], b: usize, others: &[usize], lo: usize, out: &mut [f32]) {
    let m = others.len() as f64;
    for (k, o) in out.chunks_mut(BLOCK).enumerate() {
        let (lo, len) = (lo + k * BLOCK, o.len());
        let xb = &x[b][lo..lo + len];
        let mut mean = [0f64; BLOCK];
        for &i in others {
            for ((s, &xi), &base) in mean[..len].iter_mut().zip(&x[i][lo..]).zip(xb) {
                *s += (xi - base) as f64;
            }
        }
        mean[..len].iter_mut().for_each(|s| *s /= m);
        let mut squares = [0f64; BLOCK];
        for &i in others {
            let lanes = squares[..len].iter_mut().zip(&mean[..len]);
            for ((q, &mu), (&xi, &base)) in lanes.zip(x[i][lo..].iter().zip(xb)) {
                let d = (xi - base) as f64 - mu;
                *q += d * d;
            }
        }
        for (v, &q) in o.iter_mut().zip(&squares[..len]) {
            *v = (q / m) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_variances_are_the_per_element_definition_bit_for_bit() {
        // The definition: per element, the f64 mean of the task vectors, then the mean of the
        // squared deviations, in model order, rounded to f32.
        let n = 2 * BLOCK + 77;
        let model = |s: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|j| ((j.wrapping_mul(2654435761) ^ s) % 2001) as f32 * 1e-3 - 1.0)
                .collect()
        };
        let (base, a, b, c) = (model(1), model(2), model(3), model(4));
        let x: [&[f32]; 4] = [&a, &base, &b, &c];
        let others = [0, 2, 3];
        let want: Vec<f32> = (0..n)
            .map(|j| {
                let tv = |i: usize| (x[i][j] - x[1][j]) as f64;
                let mean = others.iter().map(|&i| tv(i)).sum::<f64>() / 3.0;
                (others.iter().map(|&i| (tv(i) - mean).powi(2)).sum::<f64>() / 3.0) as f32
            })
            .collect();
        let mut got = vec![0f32; n - 5];
        variances_in_parallel(&x, 1, &others, 5, &mut got);
        assert!(got
            .iter()
            .zip(&want[5..])
            .all(|(g, w)| g.to_bits() == w.to_bits()));
    }

    #[test]
    fn a_fraction_of_one_weight_selects_none() {
        // One weight, varying across models: 0.4 of one nonzero variance is 0 weights kept,
        // so the result is the base.
        let (base, a, b) = ([1.0f32], [2.0f32], [5.0f32]);
        let shared = |n: &str| if n == "select_topk" { 0.4 } else { 0.0 };
        let per = |_: usize, _: &str| 0.0;
        let tensors: [&[f32]; 3] = [&base, &a, &b];
        let (out, _) = merge_in_memory(&Sce, &tensors, Some(0), 1, &shared, &per, 0, 1, 1).unwrap();
        assert_eq!(out, [1.0]);
        // Of two weights, 0.6 keeps the one with the larger variance.
        let (base, a, b) = ([0.0f32, 0.0], [1.0f32, 1.0], [-1.0f32, 5.0]);
        let shared = |n: &str| if n == "select_topk" { 0.6 } else { 0.0 };
        let tensors: [&[f32]; 3] = [&base, &a, &b];
        let (out, _) = merge_in_memory(&Sce, &tensors, Some(0), 2, &shared, &per, 0, 1, 1).unwrap();
        assert_eq!(out[0], 0.0);
        assert_ne!(out[1], 0.0);
    }
}
