//! Statistics of a whole tensor gathered chunk by chunk, with results that depend neither on
//! the chunk size nor on the thread count:
//!
//! - `BlockSums`: sums in f64 over fixed blocks of `SUM_BLOCK` elements of the tensor (block
//!   `b` is elements `b·SUM_BLOCK..`, wherever the chunks cut), each block summed in element
//!   order, the block sums added in block order. A block cut by a chunk boundary carries its
//!   partial sum into the next chunk, so the additions are the same ones in the same order.
//! - `Select`: the `m` smallest keys of the tensor (ties: earlier elements first), exactly, by
//!   radix selection on the keys' bits: one pass per 16-bit digit, plus one pass to find the
//!   last tie taken when only some of the keys equal to the cut are in.

use rayon::prelude::*;
use std::ops::Range;

/// The radix key of |x| for "the k largest first": the complement of its bits (|x| is never
/// negative, so its bits order as its value), smallest first.
#[inline]
pub fn largest_first(x: f32) -> u64 {
    (u32::MAX - x.abs().to_bits()) as u64
}

/// The radix key of |x| for "the smallest first".
#[inline]
pub fn smallest_first(x: f32) -> u64 {
    x.abs().to_bits() as u64
}

/// Elements per summation block.
pub const SUM_BLOCK: usize = 1 << 16;

/// `width` sums over a tensor's elements, fed chunk by chunk.
pub struct BlockSums {
    /// Elements fed so far.
    pos: u64,
    /// The current (partial) block's sums.
    carry: Vec<f64>,
    /// The finished blocks' sums, added in order.
    total: Vec<f64>,
}

impl BlockSums {
    pub fn new(width: usize) -> BlockSums {
        BlockSums {
            pos: 0,
            carry: vec![0.0; width],
            total: vec![0.0; width],
        }
    }

    /// Feed the next `n` elements. `part(range, acc)` adds the terms of local elements
    /// `range` (of this chunk) to `acc`, element by element in order.
    pub fn feed(&mut self, n: usize, part: impl Fn(Range<usize>, &mut [f64]) + Sync) {
        let width = self.carry.len();
        let mut local = 0;
        let in_block = (self.pos % SUM_BLOCK as u64) as usize;
        if in_block != 0 {
            let take = (SUM_BLOCK - in_block).min(n);
            part(0..take, &mut self.carry);
            local = take;
            self.pos += take as u64;
            if self.pos % SUM_BLOCK as u64 == 0 {
                self.close_block();
            }
        }
        let full = (n - local) / SUM_BLOCK;
        let sums: Vec<Vec<f64>> = (0..full)
            .into_par_iter()
            .map(|b| {
                let mut acc = vec![0.0; width];
                let a = local + b * SUM_BLOCK;
                part(a..a + SUM_BLOCK, &mut acc);
                acc
            })
            .collect();
        for s in sums {
            for (t, x) in self.total.iter_mut().zip(s) {
                *t += x;
            }
        }
        local += full * SUM_BLOCK;
        self.pos += (full * SUM_BLOCK) as u64;
        if local < n {
            part(local..n, &mut self.carry);
            self.pos += (n - local) as u64;
            if self.pos % SUM_BLOCK as u64 == 0 {
                self.close_block();
            }
        }
    }

    fn close_block(&mut self) {
        for (t, c) in self.total.iter_mut().zip(self.carry.iter_mut()) {
            *t += *c;
            *c = 0.0;
        }
    }

    /// The sums of everything fed.
    pub fn values(&self) -> Vec<f64> {
        if self.pos % SUM_BLOCK as u64 == 0 {
            return self.total.clone();
        }
        self.total
            .iter()
            .zip(&self.carry)
            .map(|(t, c)| t + c)
            .collect()
    }
}

/// Lanes of a vectorized sum (`add_abs_by_lane`).
pub const SUM_LANES: usize = 8;

/// Add |a[j] − b[j]| (|a[j]| without `b`) as f64 to `lanes[(first + j) % SUM_LANES]`, where
/// `first` is the tensor index of `a[0]`. Eight independent running sums vectorize where one
/// is a chain of dependent additions; each lane still adds its elements in tensor order, so
/// the sums (fed through `BlockSums`, whose blocks are whole lanes) do not depend on where
/// chunks are cut. `lanes_total` adds the lanes up in lane order.
pub fn add_abs_by_lane(first: u64, a: &[f32], b: Option<&[f32]>, lanes: &mut [f64]) {
    let lanes: &mut [f64; SUM_LANES] = lanes.try_into().expect("SUM_LANES sums");
    let term = |j: usize| match b {
        Some(b) => (a[j] - b[j]).abs() as f64,
        None => a[j].abs() as f64,
    };
    // Up to the next element whose tensor index is a multiple of SUM_LANES, one at a time.
    let head = ((SUM_LANES - (first % SUM_LANES as u64) as usize) % SUM_LANES).min(a.len());
    for j in 0..head {
        lanes[(first as usize + j) % SUM_LANES] += term(j);
    }
    let body = (a.len() - head) / SUM_LANES * SUM_LANES;
    let (a_body, a_tail) = a[head..].split_at(body);
    match b {
        Some(b) => {
            for (xa, xb) in a_body
                .chunks_exact(SUM_LANES)
                .zip(b[head..head + body].chunks_exact(SUM_LANES))
            {
                for l in 0..SUM_LANES {
                    lanes[l] += (xa[l] - xb[l]).abs() as f64;
                }
            }
        }
        None => {
            for xa in a_body.chunks_exact(SUM_LANES) {
                for l in 0..SUM_LANES {
                    lanes[l] += xa[l].abs() as f64;
                }
            }
        }
    }
    for j in 0..a_tail.len() {
        lanes[j % SUM_LANES] += term(head + body + j);
    }
}

/// Add `term(j)` for local elements `j` in `0..n` to `lanes[(first + j) % SUM_LANES]`, where
/// `first` is the tensor index of element 0: `add_abs_by_lane` for any term. (DARE's rescale
/// keeps `add_abs_by_lane`, whose slices need no bounds check per term: this closure form
/// measured 0.2 s of CPU slower there.)
pub fn add_by_lane(first: u64, n: usize, lanes: &mut [f64], term: impl Fn(usize) -> f64) {
    let lanes: &mut [f64; SUM_LANES] = lanes.try_into().expect("SUM_LANES sums");
    let head = ((SUM_LANES - (first % SUM_LANES as u64) as usize) % SUM_LANES).min(n);
    for j in 0..head {
        lanes[(first as usize + j) % SUM_LANES] += term(j);
    }
    let mut j = head;
    while j + SUM_LANES <= n {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += term(j + l);
        }
        j += SUM_LANES;
    }
    for (l, j) in (j..n).enumerate() {
        lanes[l] += term(j);
    }
}

/// The lanes of `add_abs_by_lane` added up, in lane order.
pub fn lanes_total(lanes: &[f64]) -> f64 {
    lanes.iter().sum()
}

/// Bits of one radix digit.
const DIGIT: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// Nothing is in (m = 0).
    None,
    /// Everything is in (m ≥ n).
    All,
    /// Keys below `cut` are in, and those equal to it at positions up to `last_tie`.
    Cut { cut: u64, last_tie: u64 },
}

/// The `m` smallest of a tensor's keys (`key_bits` wide), ties broken by position (earlier
/// first), found in passes: call `feed` for every chunk in order, then `end_pass`, while
/// `needs_pass`; then `contains` says whether an element is in.
pub struct Select {
    key_bits: u32,
    m: u64,
    /// Digits fixed so far (from the top), and their value (high bits of the cut).
    depth: u32,
    prefix: u64,
    /// Keys known to be below the prefix's range.
    below: u64,
    hist: Vec<u64>,
    /// The tie pass: keys equal to the cut still to take, and elements seen.
    tie_need: u64,
    tie_seen: u64,
    tie_found: Option<u64>,
    found: Option<Found>,
}

impl Select {
    /// `m` of `n` keys; `key_bits` a multiple of 16 (32 or 64).
    pub fn new(m: u64, n: u64, key_bits: u32) -> Select {
        let found = if m == 0 {
            Some(Found::None)
        } else if m >= n {
            Some(Found::All)
        } else {
            None
        };
        Select {
            key_bits,
            m,
            depth: 0,
            prefix: 0,
            below: 0,
            hist: Vec::new(),
            tie_need: 0,
            tie_seen: 0,
            tie_found: None,
            found,
        }
    }

    /// Change `m` (before the first `end_pass`; for counts known only after the first pass).
    pub fn set_m(&mut self, m: u64, n: u64) {
        debug_assert_eq!(self.depth, 0);
        self.m = m;
        self.found = if m == 0 {
            Some(Found::None)
        } else if m >= n {
            Some(Found::All)
        } else {
            None
        };
    }

    pub fn needs_pass(&self) -> bool {
        self.found.is_none()
    }

    fn shift(&self) -> u32 {
        self.key_bits - DIGIT * (self.depth + 1)
    }

    /// The keys of the next chunk (`key(j)` for local element `j` of `n`), whose first element
    /// is element `pos` of the tensor.
    pub fn feed(&mut self, pos: u64, n: usize, key: impl Fn(usize) -> u64 + Sync) {
        if self.found.is_some() {
            return;
        }
        if self.depth * DIGIT == self.key_bits {
            // The tie pass: the position of the `tie_need`-th key equal to the cut.
            if self.tie_found.is_some() {
                return;
            }
            let cut = self.prefix;
            // Keys equal to the cut counted per block in parallel, then the block holding the
            // last tie taken scanned in order.
            const TIE_BLOCK: usize = 1 << 16;
            let counts: Vec<u64> = (0..n.div_ceil(TIE_BLOCK))
                .into_par_iter()
                .map(|blk| {
                    let r = blk * TIE_BLOCK..((blk + 1) * TIE_BLOCK).min(n);
                    r.filter(|&j| key(j) == cut).count() as u64
                })
                .collect();
            let mut seen = self.tie_seen;
            for (blk, &c) in counts.iter().enumerate() {
                if seen + c < self.tie_need {
                    seen += c;
                    continue;
                }
                for j in blk * TIE_BLOCK..((blk + 1) * TIE_BLOCK).min(n) {
                    if key(j) == cut {
                        seen += 1;
                        if seen == self.tie_need {
                            self.tie_found = Some(pos + j as u64);
                            return;
                        }
                    }
                }
            }
            self.tie_seen = seen;
            return;
        }
        let shift = self.shift();
        // Keys whose digits above this one equal the prefix's.
        let high_shift = shift + DIGIT;
        let high = if high_shift >= 64 {
            0
        } else {
            self.prefix >> high_shift
        };
        let matches = |k: u64| high_shift >= 64 || k >> high_shift == high;
        let mask = (1u64 << DIGIT) - 1;
        if self.hist.is_empty() {
            self.hist = vec![0u64; 1 << DIGIT];
        }
        if n < 1 << 16 {
            for j in 0..n {
                let k = key(j);
                if matches(k) {
                    self.hist[((k >> shift) & mask) as usize] += 1;
                }
            }
            return;
        }
        // Counts are integers: histograms of parts add up to the same at any thread count.
        // One part per thread (of at least 2^15 keys), each with its own 32-bit histogram.
        let per = n.div_ceil(rayon::current_num_threads().max(1)).max(1 << 15);
        let hists: Vec<Vec<u32>> = (0..n.div_ceil(per))
            .into_par_iter()
            .map(|p| {
                let mut h = vec![0u32; 1 << DIGIT];
                for j in p * per..((p + 1) * per).min(n) {
                    let k = key(j);
                    if matches(k) {
                        h[((k >> shift) & mask) as usize] += 1;
                    }
                }
                h
            })
            .collect();
        for h in hists {
            for (x, y) in self.hist.iter_mut().zip(h) {
                *x += y as u64;
            }
        }
    }

    /// A pass is over.
    pub fn end_pass(&mut self) {
        if self.found.is_some() {
            return;
        }
        if self.depth * DIGIT == self.key_bits {
            let last = self
                .tie_found
                .expect("the tie pass finds the last tie taken");
            self.found = Some(Found::Cut {
                cut: self.prefix,
                last_tie: last,
            });
            return;
        }
        let shift = self.shift();
        let mut acc = self.below;
        let mut bucket = 0usize;
        for (b, &c) in self.hist.iter().enumerate() {
            if acc + c >= self.m {
                bucket = b;
                break;
            }
            acc += c;
        }
        let equal = self.hist[bucket];
        self.prefix |= (bucket as u64) << shift;
        self.below = acc;
        self.depth += 1;
        self.hist.fill(0);
        if self.depth * DIGIT == self.key_bits {
            // `equal` keys equal the cut; `m - below` of them are in.
            self.tie_need = self.m - self.below;
            if self.tie_need == equal {
                self.found = Some(Found::Cut {
                    cut: self.prefix,
                    last_tie: u64::MAX,
                });
            }
        }
    }

    /// Whether element `pos` with `key` is among the `m` smallest.
    #[inline]
    pub fn contains(&self, pos: u64, key: u64) -> bool {
        match self.found.expect("selection finished") {
            Found::None => false,
            Found::All => true,
            Found::Cut { cut, last_tie } => key < cut || (key == cut && pos <= last_tie),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The m smallest by (key, position), by sorting.
    fn by_sorting(keys: &[u64], m: usize) -> Vec<bool> {
        let mut idx: Vec<usize> = (0..keys.len()).collect();
        idx.sort_by_key(|&i| (keys[i], i));
        let mut keep = vec![false; keys.len()];
        for &i in &idx[..m] {
            keep[i] = true;
        }
        keep
    }

    fn by_radix(keys: &[u64], m: usize, bits: u32, chunk: usize) -> Vec<bool> {
        let mut s = Select::new(m as u64, keys.len() as u64, bits);
        let mut passes = 0;
        while s.needs_pass() {
            for (c, part) in keys.chunks(chunk).enumerate() {
                s.feed((c * chunk) as u64, part.len(), |j| part[j]);
            }
            s.end_pass();
            passes += 1;
            assert!(passes <= bits / DIGIT + 1);
        }
        keys.iter()
            .enumerate()
            .map(|(i, &k)| s.contains(i as u64, k))
            .collect()
    }

    #[test]
    fn radix_selection_is_the_sorted_order_at_any_chunk_size() {
        // Many ties (keys from a small set), values spread over both digits, and 64-bit keys.
        let mut x = 0x1234_5678u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let small: Vec<u64> = (0..5000).map(|_| next() % 37 * 0x0101_0101).collect();
        let wide: Vec<u64> = (0..5000).map(|_| next() >> 32).collect();
        let long: Vec<u64> = (0..3000)
            .map(|_| ((next() % 1000) << 40) | (next() % 3))
            .collect();
        for (keys, bits) in [(&small, 32), (&wide, 32), (&long, 64)] {
            for m in [0, 1, 7, 1234, keys.len() - 1, keys.len()] {
                let want = by_sorting(keys, m);
                for chunk in [1, 999, keys.len()] {
                    assert_eq!(by_radix(keys, m, bits, chunk), want, "m {m} chunk {chunk}");
                }
            }
        }
    }

    #[test]
    fn lane_sums_do_not_depend_on_the_chunks() {
        let a: Vec<f32> = (0..2 * SUM_BLOCK + 1001)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.3)
            .collect();
        let b: Vec<f32> = a.iter().map(|v| v * 0.7 + 0.01).collect();
        let sum = |chunk: usize, with_b: bool| {
            let mut s = BlockSums::new(SUM_LANES);
            for (c, (pa, pb)) in a.chunks(chunk).zip(b.chunks(chunk)).enumerate() {
                let first = (c * chunk) as u64;
                s.feed(pa.len(), |r, acc| {
                    let pb = with_b.then(|| &pb[r.clone()]);
                    add_abs_by_lane(first + r.start as u64, &pa[r], pb, acc)
                });
            }
            lanes_total(&s.values())
        };
        for with_b in [false, true] {
            // The definition: lane l sums elements l, l + 8, ... per block, in order.
            let mut lanes = [0f64; SUM_LANES];
            for (blk_a, blk_b) in a.chunks(SUM_BLOCK).zip(b.chunks(SUM_BLOCK)) {
                let mut blk = [0f64; SUM_LANES];
                for (j, (&x, &y)) in blk_a.iter().zip(blk_b).enumerate() {
                    blk[j % SUM_LANES] += if with_b { (x - y).abs() } else { x.abs() } as f64;
                }
                for (l, v) in lanes.iter_mut().zip(blk) {
                    *l += v;
                }
            }
            let want = lanes_total(&lanes);
            for chunk in [1, 3, 100, SUM_BLOCK - 1, SUM_BLOCK + 5, a.len()] {
                assert_eq!(
                    sum(chunk, with_b).to_bits(),
                    want.to_bits(),
                    "chunk {chunk}"
                );
            }
            // add_by_lane with the same term adds the same terms to the same lanes.
            for first in [0u64, 5, 8, 13] {
                let (mut by_abs, mut by_term) = ([0f64; SUM_LANES], [0f64; SUM_LANES]);
                let pb = with_b.then_some(&b[..1001]);
                add_abs_by_lane(first, &a[..1001], pb, &mut by_abs);
                add_by_lane(first, 1001, &mut by_term, |j| match pb {
                    Some(pb) => (a[j] - pb[j]).abs() as f64,
                    None => a[j].abs() as f64,
                });
                assert_eq!(by_abs, by_term, "first {first}");
            }
        }
    }

    #[test]
    fn block_sums_do_not_depend_on_the_chunks() {
        let x: Vec<f32> = (0..3 * SUM_BLOCK + 777)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.3)
            .collect();
        let sum = |chunk: usize| {
            let mut s = BlockSums::new(2);
            for part in x.chunks(chunk) {
                s.feed(part.len(), |r, acc| {
                    for &v in &part[r] {
                        acc[0] += v as f64;
                        acc[1] += (v as f64).powi(2);
                    }
                });
            }
            s.values()
        };
        // The serial definition: blocks summed in order, block sums added in order.
        let want: Vec<f64> = (0..2)
            .map(|p| {
                let mut t = 0.0;
                for b in x.chunks(SUM_BLOCK) {
                    let mut acc = 0.0;
                    for &v in b {
                        acc += (v as f64).powi(p + 1);
                    }
                    t += acc;
                }
                t
            })
            .collect();
        for chunk in [1, 100, SUM_BLOCK - 1, SUM_BLOCK, 2 * SUM_BLOCK + 5, x.len()] {
            assert_eq!(sum(chunk), want, "chunk {chunk}");
        }
    }
}
