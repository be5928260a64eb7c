//! `sce`: Select (keep the `select_topk` fraction of weights whose task vectors vary most
//! across models), Calculate (weight each task vector by its mean square), Erase (TIES sign
//! election), then the weighted mean of the surviving task vectors is added to the base.

use super::stats::{largest_first, BlockSums, Select};
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
        let keep = if topk <= 0.0 {
            Keep::None
        } else if topk < 1.0 {
            // m is set once the first pass has counted the nonzero variances; until then the
            // selection must ask for its passes whatever n is (n = 1 too).
            let mut sel = Select::new(1, u64::MAX, 32);
            // A tensor in one chunk is held in memory: each weight's variance is computed once
            // (for every pass, and for the result), not once per pass.
            let whole = input.in_one_chunk();
            let mut var: Vec<f32> = Vec::new();
            if whole {
                input.pass(|_, x| {
                    var = (0..x[b].len())
                        .into_par_iter()
                        .with_min_len(1 << 12)
                        .map(|j| variance(x, b, &others, j))
                        .collect();
                    Ok(())
                })?;
            }
            let mut nonzero: Option<u64> = None;
            while sel.needs_pass() {
                let mut count = 0u64;
                if whole {
                    if nonzero.is_none() {
                        count = var.par_iter().filter(|&&v| v != 0.0).count() as u64;
                    }
                    sel.feed(0, var.len(), |j| largest_first(var[j]));
                } else {
                    input.pass(|first_row, x| {
                        let len = x[b].len();
                        let key = |j: usize| largest_first(variance(x, b, &others, j));
                        if nonzero.is_none() {
                            count += (0..len)
                                .into_par_iter()
                                .with_min_len(1 << 14)
                                .filter(|&j| variance(x, b, &others, j) != 0.0)
                                .count() as u64;
                        }
                        sel.feed((first_row * input.row_len) as u64, len, key);
                        Ok(())
                    })?;
                }
                if nonzero.is_none() {
                    nonzero = Some(count);
                    sel.set_m((count as f64 * topk) as u64, n);
                }
                sel.end_pass();
            }
            if whole {
                Keep::TopOf(sel, var)
            } else {
                Keep::Top(sel)
            }
        } else {
            Keep::All
        };
        // Calculate: each task vector's mean square (after the selection).
        let mut sums = BlockSums::new(m);
        input.pass(|first_row, x| {
            let start = (first_row * input.row_len) as u64;
            sums.feed(x[b].len(), |r, acc| {
                for j in r {
                    if keep.contains(x, b, &others, start + j as u64, j) {
                        for (a, &i) in acc.iter_mut().zip(&others) {
                            let t = (x[i][j] - x[b][j]) as f64;
                            *a += t * t;
                        }
                    }
                }
            });
            Ok(())
        })?;
        let ms: Vec<f64> = sums.values().iter().map(|s| s / n as f64).collect();
        let total: f64 = ms.iter().sum();
        let w: Vec<f64> = if total.abs() < 1e-6 {
            vec![1.0 / m as f64; m]
        } else {
            ms.iter().map(|x| x / total).collect()
        };
        let row = input.row_len;
        // Erase: TIES sign election per weight, then the weighted mean of the agreeing ones.
        Ok(Box::new(Elementwise(
            move |first_row: usize, x: &[&[f32]], out: &mut [f32]| {
                let start = (first_row * row) as u64;
                out.par_iter_mut().enumerate().for_each(|(j, o)| {
                    let base = x[b][j];
                    *o = base;
                    if !keep.contains(x, b, &others, start + j as u64, j) {
                        *o += 0.0;
                        return;
                    }
                    let tv = |i: usize| (x[i][j] - base) as f64;
                    let sum: f64 = others.iter().map(|&i| tv(i)).sum();
                    let elected = if sum >= 0.0 { 1.0 } else { -1.0 };
                    let (mut num, mut den) = (0f64, 0f64);
                    for (&i, &wi) in others.iter().zip(&w) {
                        let x = tv(i);
                        let sign = if x > 0.0 {
                            1.0
                        } else if x < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        if sign == elected {
                            num += x * wi;
                            den += wi;
                        }
                    }
                    *o += (num / den.max(1e-6)) as f32;
                });
                Ok(())
            },
        )))
    }
}

/// Which weights the selection keeps.
enum Keep {
    None,
    All,
    Top(Select),
    /// The selection, with every weight's variance (a tensor held whole).
    TopOf(Select, Vec<f32>),
}

impl Keep {
    #[inline]
    fn contains(&self, x: &[&[f32]], b: usize, others: &[usize], pos: u64, j: usize) -> bool {
        match self {
            Keep::None => false,
            Keep::All => true,
            Keep::Top(sel) => sel.contains(pos, largest_first(variance(x, b, others, j))),
            Keep::TopOf(sel, var) => sel.contains(pos, largest_first(var[pos as usize])),
        }
    }
}

/// The population variance across models of element `j`'s task vectors (computed in f64,
/// rounded to the f32 that is ranked).
#[inline]
fn variance(x: &[&[f32]], b: usize, others: &[usize], j: usize) -> f32 {
    let m = others.len() as f64;
    let tv = |i: usize| (x[i][j] - x[b][j]) as f64;
    let mean = others.iter().map(|&i| tv(i)).sum::<f64>() / m;
    (others.iter().map(|&i| (tv(i) - mean).powi(2)).sum::<f64>() / m) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

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
