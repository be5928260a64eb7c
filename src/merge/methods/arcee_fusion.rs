//! `arcee_fusion`: take the other model's value where its importance — |Δ| times the KL
//! divergence between the two rows' softmaxes — reaches median + 1.5·IQR of all importances
//! (quantiles by index into the sorted values, sampled above 10⁶ values, as mergekit does).

use super::stats::{add_by_lane, lanes_total, SUM_LANES};
use super::*;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rayon::prelude::*;

pub struct ArceeFusion;

const QUANTILE_SAMPLE: usize = 1_000_000;

/// A row's softmax into `out`, its exponentials in f32 as mergekit's (torch's f32) are,
/// summed in f64 (in `SUM_LANES` lanes by position in the row).
fn softmax(x: &[f32], out: &mut Vec<f32>) {
    let m = row_max(x);
    out.clear();
    out.extend(x.iter().map(|&v| (v - m).exp()));
    let mut lanes = [0f64; SUM_LANES];
    add_by_lane(0, out.len(), &mut lanes, |j| out[j] as f64);
    let s = lanes_total(&lanes) as f32;
    out.iter_mut().for_each(|v| *v /= s);
}

/// The largest value of a row (of finite values), in eight running maxima that vectorize
/// where one `f32::max` chain does not; the maximum does not depend on the order.
fn row_max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut blocks = x.chunks_exact(8);
    for b in &mut blocks {
        for (m, &v) in lanes.iter_mut().zip(b) {
            *m = if v > *m { v } else { *m };
        }
    }
    (lanes.iter().chain(blocks.remainder())).fold(f32::NEG_INFINITY, |a, &b| a.max(b))
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
            sample_positions(input.seed, n as u64)
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
            let mut imp = input.pool.take(x[b].len());
            importance(x[o], x[b], row, &mut imp);
            let start = (first_row * row) as u64;
            if n > QUANTILE_SAMPLE && whole {
                // Random reads, which wait on memory: in parallel.
                sample.par_extend(picks.par_iter().map(|&p| imp[p as usize]));
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
            } else {
                input.pool.give([imp]);
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
            scratch: match kept {
                Some(_) => Vec::new(),
                None => input.pool.take(input.apply_len()),
            },
            kept,
        }))
    }
}

/// `QUANTILE_SAMPLE` positions below `n`: draw `k` is the `k`-th `next_u64` of a ChaCha8 stream
/// seeded with `seed`, modulo `n`. Blocks of draws are made in parallel, each seeking to its
/// first word (two words a draw), so the positions are the serial stream's.
fn sample_positions(seed: u64, n: u64) -> Vec<u64> {
    const BLOCK: usize = 1 << 14;
    let rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut picks = vec![0u64; QUANTILE_SAMPLE];
    picks
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, part)| {
            let mut r = rng.clone();
            r.set_word_pos(2 * (b * BLOCK) as u128);
            part.iter_mut().for_each(|p| *p = r.next_u64() % n);
        });
    picks
}

/// The values at sorted indices ⌊f·(len − 1)⌋ for f = 0.25, 0.5, 0.75 (`sample` not empty),
/// found by selection (the value at a sorted index does not depend on how the others are
/// ordered): the median first, then the quartiles within the halves it leaves.
fn quartiles(sample: &mut [f32]) -> (f32, f32, f32) {
    let at = |f: f64| (f * (sample.len() - 1) as f64) as usize;
    let (k25, k50, k75) = (at(0.25), at(0.5), at(0.75));
    // Selected as integers that order as `f32::total_cmp` orders the values: one compare
    // instruction instead of a call per comparison.
    let mut keys: Vec<u32> = sample.par_iter().map(|&v| total_order_key(v)).collect();
    let (lower, &mut median, upper) = keys.select_nth_unstable(k50);
    // The two halves are apart: both selections at once.
    let (q25, q75) = rayon::join(
        || match k25 < k50 {
            true => *lower.select_nth_unstable(k25).1,
            false => median,
        },
        || match k75 > k50 {
            true => *upper.select_nth_unstable(k75 - k50 - 1).1,
            false => median,
        },
    );
    (
        from_total_order_key(q25),
        from_total_order_key(median),
        from_total_order_key(q75),
    )
}

/// An f32's bits mapped so that unsigned order is `f32::total_cmp`'s: negatives (sign bit
/// set) reversed below the positives.
fn total_order_key(v: f32) -> u32 {
    let bits = v.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

/// The f32 of a `total_order_key`.
fn from_total_order_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & !(1 << 31) } else { !k })
}

/// The result's rows: the other model's value where its importance reaches the threshold.
struct Fusion {
    base: usize,
    other: usize,
    row: usize,
    threshold: f32,
    /// The whole tensor's importances, when its one pass kept them.
    kept: Option<Vec<f32>>,
    /// Else a chunk's importances, computed for each call.
    scratch: Vec<f32>,
}

impl Apply for Fusion {
    fn apply(&mut self, first_row: usize, x: &[&[f32]], out: &mut [f32]) -> Result<()> {
        let (base, other) = (x[self.base], x[self.other]);
        let imp = match &self.kept {
            Some(all) => {
                let start = first_row * self.row;
                &all[start..start + out.len()]
            }
            None => {
                importance(other, base, self.row, &mut self.scratch);
                &self.scratch[..]
            }
        };
        let threshold = self.threshold;
        const BLOCK: usize = 1 << 14;
        let blocks = (out.par_chunks_mut(BLOCK))
            .zip(base.par_chunks(BLOCK))
            .zip(other.par_chunks(BLOCK))
            .zip(imp.par_chunks(BLOCK));
        blocks.for_each(|(((out, base), other), imp)| {
            for ((o, (&x, &y)), &imp) in out.iter_mut().zip(base.iter().zip(other)).zip(imp) {
                *o = if imp >= threshold { x + (y - x) } else { x };
            }
        });
        Ok(())
    }

    fn into_buffers(self: Box<Self>) -> Vec<Vec<f32>> {
        self.kept.into_iter().chain([self.scratch]).collect()
    }
}

/// |Δ| times the KL divergence of the rows' softmaxes, per element of whole rows.
fn importance(other: &[f32], base: &[f32], row: usize, importance: &mut Vec<f32>) {
    importance.resize(other.len(), 0.0);
    // Rows are independent: computed in parallel, the same values at any thread count.
    let rows = (importance.par_chunks_mut(row.max(1)))
        .zip(other.par_chunks(row.max(1)))
        .zip(base.par_chunks(row.max(1)));
    // Each thread's two softmax rows, reused from row to row.
    rows.for_each_init(
        || (Vec::new(), Vec::new()),
        |(sp, sq), ((imp, p), q)| {
            softmax(p, sp);
            softmax(q, sq);
            // The terms in f32 (as torch's), their sum in f64 (in lanes by position).
            let mut lanes = [0f64; SUM_LANES];
            add_by_lane(0, sp.len(), &mut lanes, |j| {
                let (a, b) = (sp[j] + 1e-8, sq[j] + 1e-8);
                (a * (a / b).ln()) as f64
            });
            let kl = lanes_total(&lanes);
            for (i, (x, y)) in imp.iter_mut().zip(p.iter().zip(q)) {
                *i = ((x - y).abs() as f64 * kl) as f32;
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_positions_are_the_serial_stream() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        let n = 3_000_017u64;
        let serial: Vec<u64> = (0..QUANTILE_SAMPLE).map(|_| rng.next_u64() % n).collect();
        assert_eq!(sample_positions(42, n), serial);
    }

    #[test]
    fn total_order_keys_order_as_total_cmp_and_map_back() {
        let values = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-40,
            -0.0,
            0.0,
            1e-40,
            2.0,
            f32::INFINITY,
        ];
        for w in values.windows(2) {
            assert!(total_order_key(w[0]) < total_order_key(w[1]), "{w:?}");
        }
        for v in values {
            assert_eq!(
                from_total_order_key(total_order_key(v)).to_bits(),
                v.to_bits()
            );
        }
    }

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
