//! `arcee_fusion`: take the other model's value where its importance — |Δ| times the KL
//! divergence between the two rows' softmaxes — reaches median + 1.5·IQR of all importances
//! (quantiles by index into the sorted values, sampled above 10⁶ values, as mergekit does).

use super::*;
use rand_chacha::rand_core::{Rng, SeedableRng};

pub struct ArceeFusion;

const QUANTILE_SAMPLE: usize = 1_000_000;

/// A row's softmax, its exponentials in f32 as mergekit's (torch's f32) are, summed in f64.
fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f32> = x.iter().map(|&v| (v - m).exp()).collect();
    let s = e.iter().map(|&v| v as f64).sum::<f64>() as f32;
    e.iter().map(|v| v / s).collect()
}

impl Method for ArceeFusion {
    fn name(&self) -> &'static str {
        "arcee_fusion"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &[]
    }
    fn base(&self) -> Base {
        Base::Required
    }
    fn inputs(&self) -> (usize, usize) {
        (2, 2)
    }
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let b = input.base.expect("arcee_fusion has a base");
        let o = 1 - b;
        let (n, row) = (input.n_elements(), input.row_len);
        // The importances whose quantiles set the threshold: all of them, or (above 10⁶) the
        // ones at the sampled positions, gathered as the passes reach them.
        let mut picks: Vec<u64> = if n > QUANTILE_SAMPLE {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(input.seed);
            (0..QUANTILE_SAMPLE)
                .map(|_| rng.next_u64() % n as u64)
                .collect()
        } else {
            Vec::new()
        };
        // A tensor read in one chunk keeps its importances for the result: the softmaxes
        // (most of the cost) are computed once, not once per pass.
        let whole = input.in_one_chunk();
        // Chunks gather the sampled positions in order; one chunk takes them as drawn (the
        // quantiles do not depend on the sample's order).
        if !whole {
            picks.sort_unstable();
        }
        let mut sample: Vec<f32> = Vec::with_capacity(n.min(QUANTILE_SAMPLE));
        let mut next = 0usize;
        let mut kept: Option<Vec<f32>> = None;
        input.pass(|first_row, x| {
            let imp = importance(x[o], x[b], row);
            let start = (first_row * row) as u64;
            if n > QUANTILE_SAMPLE && whole {
                sample.extend(picks.iter().map(|&p| imp[p as usize]));
            } else if n > QUANTILE_SAMPLE {
                let end = start + imp.len() as u64;
                while next < picks.len() && picks[next] < end {
                    sample.push(imp[(picks[next] - start) as usize]);
                    next += 1;
                }
            } else {
                sample.extend_from_slice(&imp);
            }
            if whole {
                kept = Some(imp);
            }
            Ok(())
        })?;
        let (q25, median, q75) = quartiles(&mut sample);
        let threshold = median + 1.5 * (q75 - q25);
        Ok(Box::new(Fusion {
            base: b,
            other: o,
            row,
            threshold,
            kept,
        }))
    }
}

/// The values at sorted indices ⌊f·(len − 1)⌋ for f = 0.25, 0.5, 0.75 (`sample` not empty),
/// found by selection (the value at a sorted index does not depend on how the others are
/// ordered): the median first, then the quartiles within the halves it leaves.
fn quartiles(sample: &mut [f32]) -> (f32, f32, f32) {
    let at = |f: f64| (f * (sample.len() - 1) as f64) as usize;
    let (k25, k50, k75) = (at(0.25), at(0.5), at(0.75));
    let cmp = |a: &f32, b: &f32| a.total_cmp(b);
    let (lower, &mut median, upper) = sample.select_nth_unstable_by(k50, cmp);
    let q25 = if k25 < k50 {
        *lower.select_nth_unstable_by(k25, cmp).1
    } else {
        median
    };
    let q75 = if k75 > k50 {
        *upper.select_nth_unstable_by(k75 - k50 - 1, cmp).1
    } else {
        median
    };
    (q25, median, q75)
}

/// The result's rows: the other model's value where its importance reaches the threshold.
struct Fusion {
    base: usize,
    other: usize,
    row: usize,
    threshold: f32,
    /// The whole tensor's importances, when its one pass kept them.
    kept: Option<Vec<f32>>,
}

impl Apply for Fusion {
    fn apply(&mut self, first_row: usize, x: &[&[f32]], out: &mut [f32]) -> Result<()> {
        let (base, other) = (x[self.base], x[self.other]);
        let computed;
        let imp = match &self.kept {
            Some(all) => {
                let start = first_row * self.row;
                &all[start..start + out.len()]
            }
            None => {
                computed = importance(other, base, self.row);
                &computed[..]
            }
        };
        let threshold = self.threshold;
        for ((o, (&x, &y)), &imp) in out.iter_mut().zip(base.iter().zip(other)).zip(imp) {
            *o = if imp >= threshold { x + (y - x) } else { x };
        }
        Ok(())
    }
}

/// |Δ| times the KL divergence of the rows' softmaxes, per element of whole rows.
fn importance(other: &[f32], base: &[f32], row: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut importance = vec![0f32; other.len()];
    // Rows are independent: computed in parallel, the same values at any thread count.
    importance
        .par_chunks_mut(row.max(1))
        .zip(
            other
                .par_chunks(row.max(1))
                .zip(base.par_chunks(row.max(1))),
        )
        .for_each(|(imp, (p, q))| {
            let (sp, sq) = (softmax(p), softmax(q));
            // The terms in f32 (as torch's), their sum in f64.
            let kl: f64 = sp
                .iter()
                .zip(&sq)
                .map(|(a, b)| {
                    let (a, b) = (a + 1e-8, b + 1e-8);
                    (a * (a / b).ln()) as f64
                })
                .sum();
            for (i, (x, y)) in imp.iter_mut().zip(p.iter().zip(q)) {
                *i = ((x - y).abs() as f64 * kl) as f32;
            }
        });
    importance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_by_selection_are_the_sorted_values() {
        for len in [1usize, 2, 3, 4, 5, 8, 101, 1000] {
            let sample: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 + 13) % 97) as f32 - 40.0)
                .collect();
            let mut sorted = sample.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let q = |f: f64| sorted[(f * (len - 1) as f64) as usize];
            let mut scratch = sample.clone();
            assert_eq!(
                quartiles(&mut scratch),
                (q(0.25), q(0.5), q(0.75)),
                "len {len}"
            );
        }
    }
}
