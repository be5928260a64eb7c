//! The task-vector family (mergekit's `GeneralizedTaskArithmeticMerge`): task_arithmetic,
//! ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, della, della_linear.
//!
//! Each non-base input's delta from the base is sparsified (by magnitude, at random, by
//! magnitude without the outliers, or DELLA's rank-weighted random drop), optionally rescaled
//! to keep its L1 norm, weighted, then combined: summed, or (TIES) only where its sign agrees
//! with the elected sign of the weighted sum (≥ 0 counts as positive), optionally normalized by
//! the weights that took part, times `lambda`, added to the base.

use super::stats::{
    add_abs_by_lane, lanes_total, largest_first, smallest_first, BlockSums, Select, SUM_LANES,
};
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

/// Elements per block of the random mask (each block seeks the stream on its own).
const RNG_BLOCK: usize = 1 << 16;

/// Uniform draw in [0, 1) from the stream, one per element in order.
#[cfg(test)]
fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u32() as f64) / 4_294_967_296.0
}

/// How one delta is thinned (mergekit's `sparsify`), ready to apply to any chunk.
enum Mask {
    /// Kept whole (density ≥ 1, or no sparsification).
    All,
    /// Dropped whole (density ≤ 0).
    Nothing,
    /// The k largest |δ|, ties at the cut broken by position (earlier first).
    Top(Select),
    /// Ranks n_bot..n_bot+target of the ascending |δ| order (ties by position): the
    /// `upper` smallest but not the `lower` smallest.
    Band { upper: Select, lower: Select },
    /// Element j draws word `first + j` of the tensor's ChaCha stream, kept when
    /// word / 2^32 < density (`threshold` = density·2^32).
    Random {
        rng: ChaCha8Rng,
        first: u128,
        threshold: f64,
    },
    /// DELLA: rank by magnitude within each row, keep with probability rising with the rank;
    /// row r draws words `first + r·row_len..`.
    Della {
        rng: ChaCha8Rng,
        first: u128,
        density: f64,
        epsilon: f64,
    },
}

impl Mask {
    /// Whether the mask still needs a selection pass.
    fn needs_pass(&self) -> bool {
        match self {
            Mask::Top(s) => s.needs_pass(),
            Mask::Band { upper, lower } => upper.needs_pass() || lower.needs_pass(),
            _ => false,
        }
    }

    /// Feed one chunk of the delta (first element `pos` of the tensor) to the selections.
    fn feed(&mut self, pos: u64, d: &(impl Fn(usize) -> f32 + Sync), n: usize) {
        match self {
            Mask::Top(s) => s.feed(pos, n, |j| largest_first(d(j))),
            Mask::Band { upper, lower } => {
                upper.feed(pos, n, |j| smallest_first(d(j)));
                lower.feed(pos, n, |j| smallest_first(d(j)));
            }
            _ => {}
        }
    }

    fn end_pass(&mut self) {
        match self {
            Mask::Top(s) => s.end_pass(),
            Mask::Band { upper, lower } => {
                upper.end_pass();
                lower.end_pass();
            }
            _ => {}
        }
    }

    /// Elements per parallel block of `apply_block` for rows of `row_len`: whole rows for
    /// DELLA (it ranks within rows), about `RNG_BLOCK` for the others.
    fn block_len(&self, row_len: usize) -> usize {
        match self {
            Mask::Della { .. } => row_len.max(1) * (RNG_BLOCK / row_len.max(1)).max(1),
            _ => RNG_BLOCK,
        }
    }

    /// Zero the dropped elements of `d`, one block of the delta on this thread: `d` starts at
    /// element `start` (for DELLA, at a row's start, and holds whole rows). Every element's
    /// fate depends only on its position and value, so any split into blocks gives the same
    /// mask.
    fn apply_block(&self, d: &mut [f32], start: u64, row_len: usize) {
        match self {
            Mask::All => {}
            Mask::Nothing => d.fill(0.0),
            Mask::Top(s) => d.iter_mut().enumerate().for_each(|(j, v)| {
                if !s.contains(start + j as u64, largest_first(*v)) {
                    *v = 0.0;
                }
            }),
            Mask::Band { upper, lower } => d.iter_mut().enumerate().for_each(|(j, v)| {
                let (pos, key) = (start + j as u64, smallest_first(*v));
                if !upper.contains(pos, key) || lower.contains(pos, key) {
                    *v = 0.0;
                }
            }),
            Mask::Random {
                rng,
                first,
                threshold,
            } => {
                // The block seeks straight to its first word, so blocks computed in parallel
                // are the serial stream: the same mask at any thread count or chunking.
                let mut r = rng.clone();
                r.set_word_pos(first + start as u128);
                // word ≥ threshold (as reals) is word ≥ ⌈threshold⌉ (as integers): one
                // 32-bit integer compare, branch-free so that it vectorizes. A cut above every
                // word drops nothing.
                let Ok(cut) = u32::try_from(threshold.ceil() as u64) else {
                    return;
                };
                let mut words = [0u8; 4 * 1024];
                for part in d.chunks_mut(1024) {
                    // fill_bytes takes whole words in stream order, as next_u32 would.
                    let bytes = &mut words[..4 * part.len()];
                    r.fill_bytes(bytes);
                    for (d, w) in part.iter_mut().zip(bytes.chunks_exact(4)) {
                        let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                        *d = if word >= cut { 0.0 } else { *d };
                    }
                }
            }
            Mask::Della {
                rng,
                first,
                density,
                epsilon,
            } => {
                let (density, epsilon) = (*density, *epsilon);
                let first_row = start / row_len as u64;
                let span = (row_len.max(2) - 1) as f64;
                let mut scratch = RankScratch::default();
                for (r, row) in d.chunks_mut(row_len).enumerate() {
                    let mut rng = rng.clone();
                    rng.set_word_pos(first + ((first_row + r as u64) * row_len as u64) as u128);
                    della_row(row, &mut rng, (density, epsilon, span), &mut scratch);
                }
            }
        }
    }
}

/// DELLA's mask on one row: ascending |v| ranks (ties by position), element kept with
/// probability `density - epsilon + rank / span · 2·epsilon`, one word of `rng` per element.
fn della_row(
    row: &mut [f32],
    rng: &mut ChaCha8Rng,
    (density, epsilon, span): (f64, f64, f64),
    scratch: &mut RankScratch,
) {
    scratch.ranks(row);
    let (rank, words) = (&scratch.rank, &mut scratch.words);
    // One word of the stream per element, in order (fill_bytes takes whole words in stream
    // order, as next_u32 would).
    words.resize(4 * row.len(), 0);
    rng.fill_bytes(words);
    for ((v, &rk), w) in row.iter_mut().zip(rank.iter()).zip(words.chunks_exact(4)) {
        let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let u = (word as f64) / 4_294_967_296.0;
        let p = (density - epsilon) + (rk as f64 / span) * 2.0 * epsilon;
        if u >= p {
            *v = 0.0;
        }
    }
}

/// Buffers for ranking rows, reused from row to row.
#[derive(Default)]
struct RankScratch {
    order: Vec<u32>,
    spare: Vec<u32>,
    rank: Vec<u32>,
    words: Vec<u8>,
}

impl RankScratch {
    /// Each element's rank in ascending |v| order, ties by position (earlier first): a stable
    /// LSD radix sort on |v|'s bits (never negative, so they order as the value), a byte per
    /// pass, skipping bytes every element shares.
    fn ranks(&mut self, row: &[f32]) -> &[u32] {
        let n = row.len();
        let key = |i: u32| row[i as usize].abs().to_bits();
        let mut counts = [[0u32; 256]; 4];
        for v in row {
            let k = v.abs().to_bits();
            for (d, c) in counts.iter_mut().enumerate() {
                c[(k >> (8 * d)) as usize & 0xff] += 1;
            }
        }
        self.order.clear();
        self.order.extend(0..n as u32);
        self.spare.resize(n, 0);
        for (d, c) in counts.iter().enumerate() {
            if c.iter().any(|&k| k as usize == n) {
                continue; // every key has this byte: the order stands.
            }
            let mut next = [0u32; 256];
            let mut at = 0;
            for (slot, &k) in next.iter_mut().zip(c) {
                *slot = at;
                at += k;
            }
            for &i in &self.order {
                let b = (key(i) >> (8 * d)) as usize & 0xff;
                self.spare[next[b] as usize] = i;
                next[b] += 1;
            }
            std::mem::swap(&mut self.order, &mut self.spare);
        }
        self.rank.resize(n, 0);
        for (pos, &i) in self.order.iter().enumerate() {
            self.rank[i as usize] = pos as u32;
        }
        &self.rank
    }
}

/// How one delta is thinned.
struct Sparsity {
    method: Sparsify,
    density: f64,
    gamma: f64,
    epsilon: f64,
}

/// The mask of one delta of `n` elements (before its selection passes).
fn mask(sp: &Sparsity, n: usize, seed: u64) -> Result<Mask> {
    let Sparsity {
        method,
        density,
        gamma,
        epsilon,
    } = *sp;
    if density >= 1.0 {
        return Ok(Mask::All);
    }
    let rng = ChaCha8Rng::seed_from_u64(seed);
    let first = rng.get_word_pos();
    let nn = n as u64;
    Ok(match method {
        Sparsify::Magnitude => {
            if density <= 0.0 || n == 0 {
                return Ok(Mask::Nothing);
            }
            let k = ((density * n as f64) as usize).max(1);
            Mask::Top(Select::new(k as u64, nn, 32))
        }
        Sparsify::Random => Mask::Random {
            rng,
            first,
            threshold: density * 4_294_967_296.0,
        },
        Sparsify::MagnitudeOutliers => {
            let target = (density * n as f64) as usize;
            let n_top = (gamma * n as f64) as usize;
            // Saturating: a huge density or gamma casts to usize::MAX.
            let n_bot = n.saturating_sub(target.saturating_add(n_top));
            Mask::Band {
                upper: Select::new(n_bot.saturating_add(target).min(n) as u64, nn, 32),
                lower: Select::new(n_bot.min(n) as u64, nn, 32),
            }
        }
        Sparsify::DellaMagprune => {
            if density <= 0.0 {
                return Ok(Mask::Nothing);
            }
            if density + epsilon >= 1.0 || density - epsilon <= 0.0 {
                return Err(Error::Invalid(format!(
                    "della: epsilon {epsilon} must keep density ± epsilon inside (0, 1) (density {density})"
                )));
            }
            Mask::Della {
                rng,
                first,
                density,
                epsilon,
            }
        }
    })
}

/// One input's thinned, rescaled and weighted delta from the base.
struct Delta {
    input: usize,
    mask: Mask,
    /// DARE's rescale: the factor bringing the thinned delta's L1 norm back.
    scale: Option<f32>,
    weight: f32,
    /// The whole thinned delta, when the tensor was read in one chunk and the rescale pass
    /// made it (so the result does not draw the mask again).
    thinned: Option<Vec<f32>>,
}

impl Delta {
    /// This delta over a chunk starting at element `start`, into `d`: the difference, the
    /// mask, the rescale and the weight in one sweep per block.
    fn compute(&self, x: &[&[f32]], b: usize, start: u64, row_len: usize, d: &mut Vec<f32>) {
        let n = x[b].len();
        d.resize(n, 0.0);
        let block = self.mask.block_len(row_len);
        let (xi, xb) = (x[self.input], x[b]);
        let (scale, w) = (self.scale, self.weight);
        let thinned = self
            .thinned
            .as_ref()
            .map(|t| &t[start as usize..start as usize + n]);
        d.par_chunks_mut(block).enumerate().for_each(|(k, blk)| {
            let off = k * block;
            match thinned {
                Some(t) => blk.copy_from_slice(&t[off..off + blk.len()]),
                None => self.thin_block(xi, xb, off, start, row_len, blk),
            }
            if let Some(s) = scale {
                blk.iter_mut().for_each(|v| *v *= s);
            }
            blk.iter_mut().for_each(|v| *v *= w);
        });
    }

    /// The thinned delta (difference, then mask) of a chunk starting at element `start`, into
    /// `d`, in parallel blocks.
    fn thin(&self, x: &[&[f32]], b: usize, start: u64, row_len: usize, d: &mut Vec<f32>) {
        let (xi, xb) = (x[self.input], x[b]);
        d.resize(xb.len(), 0.0);
        let block = self.mask.block_len(row_len);
        d.par_chunks_mut(block)
            .enumerate()
            .for_each(|(k, blk)| self.thin_block(xi, xb, k * block, start, row_len, blk));
    }

    /// `thin` for the block of local elements `off..off + blk.len()`, on this thread.
    fn thin_block(
        &self,
        xi: &[f32],
        xb: &[f32],
        off: usize,
        start: u64,
        row_len: usize,
        blk: &mut [f32],
    ) {
        for (v, (&x, &b)) in blk.iter_mut().zip(xi[off..].iter().zip(&xb[off..])) {
            *v = x - b;
        }
        self.mask.apply_block(blk, start + off as u64, row_len);
    }
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
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let b = input.base.expect("task arithmetic has a base");
        let n = input.n_elements();
        let row_len = input.row_len;
        let rescale = (input.shared)("rescale") != 0.0;
        let mut deltas = Vec::new();
        for i in input.others() {
            let get = |name: &str| (input.per_input)(i, name);
            let has = |name: &str| self.params.iter().any(|p| p.name == name);
            let mask = match self.sparsify {
                None => Mask::All,
                Some(method) => {
                    let sp = Sparsity {
                        method,
                        density: get("density"),
                        gamma: if has("gamma") { get("gamma") } else { 0.0 },
                        epsilon: if has("epsilon") { get("epsilon") } else { 0.0 },
                    };
                    let seed = input.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    mask(&sp, n, seed)?
                }
            };
            deltas.push(Delta {
                input: i,
                mask,
                scale: None,
                weight: get("weight") as f32,
                thinned: None,
            });
        }
        // Magnitude thresholds: exact, by radix selection over passes.
        while deltas.iter().any(|d| d.mask.needs_pass()) {
            input.pass(|first_row, x| {
                let pos = (first_row * row_len) as u64;
                for d in deltas.iter_mut().filter(|d| d.mask.needs_pass()) {
                    let (xi, xb) = (x[d.input], x[b]);
                    d.mask.feed(pos, &|j: usize| xi[j] - xb[j], xb.len());
                }
                Ok(())
            })?;
            for d in deltas.iter_mut() {
                d.mask.end_pass();
            }
        }
        // DARE's rescale: the L1 norms of each delta before and after thinning.
        let rescaled: Vec<usize> = (0..deltas.len())
            .filter(|&k| rescale && !matches!(deltas[k].mask, Mask::All | Mask::Nothing))
            .collect();
        if !rescaled.is_empty() {
            let mut sums: Vec<BlockSums> = rescaled
                .iter()
                .map(|_| BlockSums::new(2 * SUM_LANES))
                .collect();
            // A tensor in one chunk keeps each thinned delta for the result.
            let whole = input.in_one_chunk();
            let mut kept: Vec<Vec<f32>> = (rescaled.iter())
                .map(|_| input.pool.take(input.chunk_len()))
                .collect();
            input.pass(|first_row, x| {
                let start = (first_row * row_len) as u64;
                for ((s, &k), thinned) in sums.iter_mut().zip(&rescaled).zip(kept.iter_mut()) {
                    let d = &deltas[k];
                    let (xi, xb) = (x[d.input], x[b]);
                    d.thin(x, b, start, row_len, thinned);
                    let thinned = &*thinned;
                    s.feed(xb.len(), |r, acc| {
                        let (before, after) = acc.split_at_mut(SUM_LANES);
                        let first = start + r.start as u64;
                        add_abs_by_lane(first, &xi[r.clone()], Some(&xb[r.clone()]), before);
                        add_abs_by_lane(first, &thinned[r], None, after);
                    });
                }
                Ok(())
            })?;
            for ((s, &k), thinned) in sums.iter().zip(&rescaled).zip(kept) {
                if whole {
                    deltas[k].thinned = Some(thinned);
                } else {
                    input.pool.give([thinned]);
                }
                let v = s.values();
                let (before, after) = v.split_at(SUM_LANES);
                let (before, after) = (lanes_total(before), lanes_total(after));
                if before >= 1e-7 && after >= 1e-7 {
                    deltas[k].scale = Some((before / after) as f32);
                }
            }
        }
        Ok(Box::new(Combine {
            base: b,
            row_len,
            ties: self.ties,
            normalize: (input.shared)("normalize") != 0.0,
            lambda: (input.shared)("lambda") as f32,
            bufs: (deltas.iter())
                .map(|_| input.pool.take(input.apply_len()))
                .collect(),
            deltas,
        }))
    }
}

/// The combination of the prepared deltas, chunk by chunk.
struct Combine {
    base: usize,
    row_len: usize,
    ties: bool,
    normalize: bool,
    lambda: f32,
    deltas: Vec<Delta>,
    bufs: Vec<Vec<f32>>,
}

impl Apply for Combine {
    fn apply(&mut self, first_row: usize, x: &[&[f32]], out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(x[self.base]);
        if self.deltas.is_empty() {
            return Ok(());
        }
        let start = (first_row * self.row_len) as u64;
        for (d, buf) in self.deltas.iter().zip(self.bufs.iter_mut()) {
            d.compute(x, self.base, start, self.row_len, buf);
        }
        let deltas = &self.bufs;
        let weights: Vec<f32> = self.deltas.iter().map(|d| d.weight).collect();
        let (ties, normalize, lambda) = (self.ties, self.normalize, self.lambda);
        // Each weight is independent: parallel over blocks of elements (the same bytes at any
        // thread count), with each block's per-model passes written so that they vectorize.
        const BLOCK: usize = 4096;
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(blk, o)| {
            let (start, len) = (blk * BLOCK, o.len());
            let mut mixed = [0f32; BLOCK];
            let mut divisor = [0f32; BLOCK];
            if ties {
                // Elect each weight's sign from the weighted deltas' sum (>= 0 is positive);
                // only deltas of that sign (never zeros) take part.
                let mut total = [0f32; BLOCK];
                for d in deltas {
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
        Ok(())
    }

    fn into_buffers(self: Box<Self>) -> Vec<Vec<f32>> {
        let thinned = self.deltas.into_iter().filter_map(|d| d.thinned);
        self.bufs.into_iter().chain(thinned).collect()
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
        let n = tensors[0].len();
        merge_in_memory(m, tensors, Some(0), n, &shared, &per, seed, 1, 1)
            .unwrap()
            .0
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
    fn radix_ranks_are_the_sorted_order_with_ties_by_position() {
        let mut row: Vec<f32> = (0..2000)
            .map(|i| (((i * 7919) % 613) as f32 - 300.0) * 1e-3)
            .collect();
        row.extend([0.0, -0.0, 1e-30, -1e-30, 5.0, -5.0, f32::MIN_POSITIVE]);
        let mut keys: Vec<(u32, usize)> = row
            .iter()
            .enumerate()
            .map(|(i, v)| (v.abs().to_bits(), i))
            .collect();
        keys.sort();
        let mut want = vec![0u32; row.len()];
        for (pos, &(_, i)) in keys.iter().enumerate() {
            want[i] = pos as u32;
        }
        let mut scratch = RankScratch::default();
        assert_eq!(scratch.ranks(&row), &want[..]);
        // Reused scratch, a row whose keys all share their top bytes.
        let small: Vec<f32> = (0..300).map(|i| 1.0 + (i % 7) as f32 * 1e-7).collect();
        let mut keys: Vec<(u32, usize)> = small
            .iter()
            .enumerate()
            .map(|(i, v)| (v.to_bits(), i))
            .collect();
        keys.sort();
        let mut want = vec![0u32; small.len()];
        for (pos, &(_, i)) in keys.iter().enumerate() {
            want[i] = pos as u32;
        }
        assert_eq!(scratch.ranks(&small), &want[..]);
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
