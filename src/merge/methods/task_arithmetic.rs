//! The task-vector family (mergekit's `GeneralizedTaskArithmeticMerge`): task_arithmetic,
//! ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, della, della_linear.
//!
//! Each non-base input's delta from the base is sparsified (by magnitude, at random, by
//! magnitude without the outliers, or DELLA's rank-weighted random drop), optionally rescaled
//! to keep its L1 norm, weighted, then combined: summed, or (TIES) only where its sign agrees
//! with the elected sign of the weighted sum (≥ 0 counts as positive), optionally normalized by
//! the weights that took part, times `lambda`, added to the base.

use super::*;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sparsify {
    Magnitude,
    Random,
    MagnitudeOutliers,
    DellaMagprune,
}

pub struct TaskArithmetic {
    name: &'static str,
    ties: bool,
    sparsify: Option<Sparsify>,
    params: &'static [ParamSpec],
}

macro_rules! gta {
    ($id:ident, $name:literal, $ties:expr, $sp:expr, $normalize:literal, $rescale:literal $(, $extra:expr)*) => {
        pub static $id: TaskArithmetic = TaskArithmetic {
            name: $name,
            ties: $ties,
            sparsify: $sp,
            params: &[
                param("int8_mask", Scope::Shared, Some(0.0)),
                param("normalize", Scope::Shared, Some($normalize)),
                param("rescale", Scope::Shared, Some($rescale)),
                param("lambda", Scope::Shared, Some(1.0)),
                param("weight", Scope::NonBase, None),
                param("density", Scope::NonBase, Some(1.0)),
                $($extra,)*
            ],
        };
    };
}

gta!(TASK_ARITHMETIC, "task_arithmetic", false, None, 0.0, 0.0);
gta!(TIES, "ties", true, Some(Sparsify::Magnitude), 1.0, 0.0);
gta!(
    DARE_TIES,
    "dare_ties",
    true,
    Some(Sparsify::Random),
    0.0,
    1.0
);
gta!(
    DARE_LINEAR,
    "dare_linear",
    false,
    Some(Sparsify::Random),
    0.0,
    1.0
);
gta!(
    BREADCRUMBS,
    "breadcrumbs",
    false,
    Some(Sparsify::MagnitudeOutliers),
    0.0,
    0.0,
    param("gamma", Scope::NonBase, Some(0.01))
);
gta!(
    BREADCRUMBS_TIES,
    "breadcrumbs_ties",
    true,
    Some(Sparsify::MagnitudeOutliers),
    0.0,
    0.0,
    param("gamma", Scope::NonBase, Some(0.01))
);
gta!(
    DELLA,
    "della",
    true,
    Some(Sparsify::DellaMagprune),
    1.0,
    1.0,
    param("epsilon", Scope::NonBase, Some(0.15))
);
gta!(
    DELLA_LINEAR,
    "della_linear",
    false,
    Some(Sparsify::DellaMagprune),
    0.0,
    1.0,
    param("epsilon", Scope::NonBase, Some(0.15))
);

/// Keep-mask by magnitude: the `k` largest |x|, ties at the cut broken by position (for
/// determinism). Linear time: a selection finds the cut, one pass marks the kept values.
fn top_k_mask(x: &[f32], k: usize) -> Vec<bool> {
    let k = k.min(x.len());
    if k == 0 {
        return vec![false; x.len()];
    }
    let mut mags: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let (_, cut, _) = mags.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let cut = *cut;
    let above = x.iter().filter(|v| v.abs().total_cmp(&cut).is_gt()).count();
    let mut at_cut = k - above;
    x.iter()
        .map(|v| match v.abs().total_cmp(&cut) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal if at_cut > 0 => {
                at_cut -= 1;
                true
            }
            _ => false,
        })
        .collect()
}

/// Elements per block of the random mask (each block seeks the stream on its own).
const RNG_BLOCK: usize = 1 << 16;

/// Uniform draw in [0, 1) from the stream, one per element in order.
fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u32() as f64) / 4_294_967_296.0
}

/// How one delta is thinned.
struct Sparsity {
    method: Sparsify,
    density: f64,
    gamma: f64,
    epsilon: f64,
    /// Keep the delta's L1 norm.
    rescale: bool,
}

/// mergekit's `sparsify` of one delta, in place.
fn sparsify(delta: &mut [f32], sp: &Sparsity, row_len: usize, rng: &mut ChaCha8Rng) -> Result<()> {
    let Sparsity {
        method,
        density,
        gamma,
        epsilon,
        rescale,
    } = *sp;
    if density >= 1.0 {
        return Ok(());
    }
    let n = delta.len();
    // The L1 norm to restore (only DARE-style rescaling needs it).
    let before = if rescale { l1(delta) } else { 0.0 };
    let keep: Vec<bool> = match method {
        Sparsify::Magnitude => {
            if density <= 0.0 || n == 0 {
                delta.fill(0.0);
                return Ok(());
            }
            top_k_mask(delta, ((density * n as f64) as usize).max(1))
        }
        Sparsify::Random => {
            // Element j draws word j of the tensor's ChaCha stream, kept when
            // word / 2^32 < density. Blocks seek straight to their first word, so this is the
            // serial stream computed in parallel: the same mask at any thread count. The mask
            // is applied as it is drawn.
            let first = rng.get_word_pos();
            let threshold = density * 4_294_967_296.0;
            delta
                .par_chunks_mut(RNG_BLOCK)
                .enumerate()
                .for_each(|(b, block)| {
                    let mut r = rng.clone();
                    r.set_word_pos(first + (b * RNG_BLOCK) as u128);
                    let mut words = [0u8; 4 * 1024];
                    for part in block.chunks_mut(1024) {
                        // fill_bytes takes whole words in stream order, as next_u32 would.
                        let bytes = &mut words[..4 * part.len()];
                        r.fill_bytes(bytes);
                        for (d, w) in part.iter_mut().zip(bytes.chunks_exact(4)) {
                            let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                            if (word as f64) >= threshold {
                                *d = 0.0;
                            }
                        }
                    }
                });
            return rescale_l1(delta, before, rescale);
        }
        Sparsify::MagnitudeOutliers => {
            let target = (density * n as f64) as usize;
            let n_top = (gamma * n as f64) as usize;
            // Saturating: a huge density or gamma casts to usize::MAX.
            let n_bot = n.saturating_sub(target.saturating_add(n_top));
            // Keep ranks n_bot..n_bot+target of the ascending order: the `n_bot + target`
            // smallest minus the `n_bot` smallest.
            let smallest = |m: usize| -> Vec<bool> {
                let mut keep = vec![false; n];
                if m == 0 {
                    return keep;
                }
                let mut mags: Vec<(f32, u32)> = delta.iter().map(|v| v.abs()).zip(0u32..).collect();
                mags.select_nth_unstable_by(m - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for &(_, i) in &mags[..m] {
                    keep[i as usize] = true;
                }
                keep
            };
            let upper = smallest(n_bot.saturating_add(target).min(n));
            let lower = smallest(n_bot.min(n));
            upper.iter().zip(&lower).map(|(&u, &l)| u && !l).collect()
        }
        Sparsify::DellaMagprune => {
            if density <= 0.0 {
                delta.fill(0.0);
                return Ok(());
            }
            if density + epsilon >= 1.0 || density - epsilon <= 0.0 {
                return Err(Error::Invalid(format!(
                    "della: epsilon {epsilon} must keep density ± epsilon inside (0, 1) (density {density})"
                )));
            }
            // Rank by magnitude within each row; keep with probability rising with the rank.
            // Row r draws words r*row_len.. of the stream (rows in parallel, same mask).
            let first = rng.get_word_pos();
            let row_len = row_len.max(1);
            let mut keep = vec![false; n];
            keep.par_chunks_mut(row_len)
                .zip(delta.par_chunks(row_len))
                .enumerate()
                .for_each(|(r, (keep, row))| {
                    let mut rng = rng.clone();
                    rng.set_word_pos(first + (r * row_len) as u128);
                    let mut idx: Vec<usize> = (0..row.len()).collect();
                    idx.sort_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs()).then(a.cmp(&b)));
                    let span = (row.len().max(2) - 1) as f64;
                    let mut rank = vec![0usize; row.len()];
                    for (pos, &i) in idx.iter().enumerate() {
                        rank[i] = pos;
                    }
                    for (k, &rk) in keep.iter_mut().zip(&rank) {
                        let p = (density - epsilon) + (rk as f64 / span) * 2.0 * epsilon;
                        *k = uniform(&mut rng) < p;
                    }
                });
            keep
        }
    };
    delta
        .par_iter_mut()
        .zip(keep.par_iter())
        .for_each(|(d, &k)| {
            if !k {
                *d = 0.0;
            }
        });
    rescale_l1(delta, before, rescale)
}

/// DARE's rescale: bring the thinned delta's L1 norm back to `before`.
fn rescale_l1(delta: &mut [f32], before: f64, rescale: bool) -> Result<()> {
    if rescale {
        let after = l1(delta);
        if before >= 1e-7 && after >= 1e-7 {
            let s = (before / after) as f32;
            delta.par_iter_mut().for_each(|d| *d *= s);
        }
    }
    Ok(())
}

/// Σ|x| in f64 over fixed-size blocks summed in order: parallel, yet the same value at any
/// thread count.
fn l1(x: &[f32]) -> f64 {
    let blocks: Vec<f64> = x
        .par_chunks(1 << 16)
        .map(|c| c.iter().map(|&v| v.abs() as f64).sum())
        .collect();
    blocks.iter().sum()
}

impl Method for TaskArithmetic {
    fn name(&self) -> &'static str {
        self.name
    }
    fn params(&self) -> &'static [ParamSpec] {
        self.params
    }
    fn base(&self) -> Base {
        Base::Required
    }
    fn inputs(&self) -> (usize, usize) {
        (1, usize::MAX)
    }
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote> {
        let b = input.base.expect("task arithmetic has a base");
        let base = input.tensors[b];
        let others: Vec<usize> = (0..input.tensors.len()).filter(|&i| i != b).collect();
        out.copy_from_slice(base);
        if others.is_empty() {
            return Ok(MergeNote::default());
        }
        let rescale = (input.shared)("rescale") != 0.0;
        let mut deltas = Vec::with_capacity(others.len());
        let mut weights = Vec::with_capacity(others.len());
        for &i in &others {
            let mut d: Vec<f32> = input.tensors[i]
                .par_iter()
                .zip(base.par_iter())
                .map(|(&x, &b)| x - b)
                .collect();
            if let Some(method) = self.sparsify {
                let get = |name: &str| (input.per_input)(i, name);
                let has = |name: &str| self.params.iter().any(|p| p.name == name);
                let mut rng = ChaCha8Rng::seed_from_u64(
                    input.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
                let sp = Sparsity {
                    method,
                    density: get("density"),
                    gamma: if has("gamma") { get("gamma") } else { 0.0 },
                    epsilon: if has("epsilon") { get("epsilon") } else { 0.0 },
                    rescale,
                };
                sparsify(&mut d, &sp, input.row_len, &mut rng)?;
            }
            let w = (input.per_input)(i, "weight") as f32;
            d.par_iter_mut().for_each(|v| *v *= w);
            deltas.push(d);
            weights.push(w);
        }
        let normalize = (input.shared)("normalize") != 0.0;
        let lambda = (input.shared)("lambda") as f32;
        // Each weight is independent: parallel over blocks of elements (the same bytes at any
        // thread count), with each block's per-model passes written so that they vectorize.
        const BLOCK: usize = 4096;
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(blk, o)| {
            let (start, len) = (blk * BLOCK, o.len());
            let mut mixed = [0f32; BLOCK];
            let mut divisor = [0f32; BLOCK];
            if self.ties {
                // Elect each weight's sign from the weighted deltas' sum (>= 0 is positive);
                // only deltas of that sign (never zeros) take part.
                let mut total = [0f32; BLOCK];
                for d in &deltas {
                    for (t, &x) in total[..len].iter_mut().zip(&d[start..start + len]) {
                        *t += x;
                    }
                }
                for (d, &w) in deltas.iter().zip(&weights) {
                    // Branch-free, so it vectorizes: adding 0.0 leaves a sum unchanged (the
                    // sums never hold -0.0: only non-zero deltas are ever added).
                    let lanes = mixed[..len]
                        .iter_mut()
                        .zip(&mut divisor[..len])
                        .zip(&total[..len])
                        .zip(&d[start..start + len]);
                    for (((m, dv), &t), &x) in lanes {
                        let agree = (t >= 0.0 && x > 0.0) | (t < 0.0 && x < 0.0);
                        *m += if agree { x } else { 0.0 };
                        *dv += if agree { w } else { 0.0 };
                    }
                }
                for v in divisor[..len].iter_mut() {
                    if *v == 0.0 {
                        *v = 1.0;
                    }
                }
            } else {
                for (d, &w) in deltas.iter().zip(&weights) {
                    for (m, &x) in mixed[..len].iter_mut().zip(&d[start..start + len]) {
                        *m += x;
                    }
                    for v in divisor[..len].iter_mut() {
                        *v += w;
                    }
                }
                for v in divisor[..len].iter_mut() {
                    if v.abs() < 1e-8 {
                        *v = 1.0;
                    }
                }
            }
            for jj in 0..len {
                let mut m = mixed[jj];
                if normalize {
                    m /= divisor[jj];
                }
                if lambda != 1.0 {
                    m *= lambda;
                }
                o[jj] += m;
            }
        });
        Ok(MergeNote::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        m: &TaskArithmetic,
        tensors: &[&[f32]],
        weight: f64,
        density: f64,
        seed: u64,
    ) -> Vec<f32> {
        let shared = |n: &str| {
            m.params
                .iter()
                .find(|p| p.name == n)
                .and_then(|p| p.default)
                .unwrap()
        };
        let per = |_: usize, n: &str| match n {
            "weight" => weight,
            "density" => density,
            other => m
                .params
                .iter()
                .find(|p| p.name == other)
                .and_then(|p| p.default)
                .unwrap(),
        };
        let mut out = vec![0.0; tensors[0].len()];
        let input = MergeInput {
            tensors,
            base: Some(0),
            row_len: tensors[0].len(),
            shared: &shared,
            per_input: &per,
            seed,
        };
        m.merge(&input, &mut out).unwrap();
        out
    }

    #[test]
    fn ties_elects_the_sign_of_the_weighted_sum() {
        let base = [0.0f32; 4];
        let a = [1.0f32, -2.0, 0.5, 0.0];
        let b = [-3.0f32, -1.0, 0.5, 0.0];
        // Sums: -2 (negative wins: only b), -3 (both), 1 (both), 0 (≥ 0 counts as positive,
        // but zero deltas have sign 0 and never take part: divisor falls back to 1).
        let out = run(&TIES, &[&base, &a, &b], 1.0, 1.0, 0);
        assert_eq!(out, [-3.0, -1.5, 0.5, 0.0]);
    }

    #[test]
    fn dare_keeps_the_l1_norm_and_is_seeded() {
        let base = vec![0.0f32; 1000];
        let a: Vec<f32> = (0..1000).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
        let out = run(&DARE_LINEAR, &[&base, &a], 1.0, 0.3, 42);
        let l1 = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
        assert!((l1(&out) - l1(&a)).abs() < 1e-4 * l1(&a));
        let kept = out.iter().filter(|&&x| x != 0.0).count();
        assert!((200..400).contains(&kept), "{kept}");
        assert_eq!(out, run(&DARE_LINEAR, &[&base, &a], 1.0, 0.3, 42));
        assert_ne!(out, run(&DARE_LINEAR, &[&base, &a], 1.0, 0.3, 43));
    }

    #[test]
    fn the_parallel_random_mask_is_the_serial_stream() {
        // Three RNG blocks and a bit: each block seeks the stream, the result must be the mask
        // a single serial pass over the stream draws.
        let n = 3 * RNG_BLOCK + 123;
        let base = vec![0.0f32; n];
        let a = vec![1.0f32; n];
        let out = run(&DARE_LINEAR, &[&base, &a], 1.0, 0.5, 7);
        let mut rng = ChaCha8Rng::seed_from_u64(7 ^ 0x9e37_79b9_7f4a_7c15);
        for (j, &v) in out.iter().enumerate() {
            assert_eq!(v != 0.0, uniform(&mut rng) < 0.5, "element {j}");
        }
    }

    #[test]
    fn task_arithmetic_adds_weighted_deltas() {
        let base = [1.0f32, 1.0];
        let a = [2.0f32, 0.0];
        let out = run(&TASK_ARITHMETIC, &[&base, &a], 0.5, 1.0, 0);
        assert_eq!(out, [1.5, 0.5]);
    }
}
