//! The grid search shared by the IQ1, IQ2 and IQ3 quantizers: ggml's `iq2xs_init_impl` /
//! `iq3xs_init_impl` tables (grid points, a map from every quantized group to its grid index,
//! and for groups off the grid a list of nearest grid points), built once per grid.
//!
//! A group of `D` values quantizes to levels `l` (0..=7 for IQ3, 0..=2 for IQ1/IQ2); ggml
//! searches in the space of `2l + 1` and packs the levels into a key, `bits` bits per value.
//! Only some level combinations are grid points; for the others ggml keeps the grid points at
//! the `nwant` smallest squared distances, in order of (distance, grid index).

use super::grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use super::search::nearest_int;
use std::sync::OnceLock;

/// One grid with its key map and neighbour lists.
pub(crate) struct Lattice<const D: usize> {
    /// Level of each coordinate of each grid point.
    levels: Vec<[u8; D]>,
    /// `2l + 1` of each coordinate, as the f32 the searches multiply by the scale.
    values: Vec<[f32; D]>,
    /// Per key: the grid index (>= 0), or `-(start + 1)` where `neighbours[start]` is the
    /// length of the neighbour list that follows it.
    map: Vec<i32>,
    neighbours: Vec<u16>,
    bits: u32,
}

/// Where a group of levels lands.
pub(crate) enum Lookup<'a> {
    OnGrid(u16),
    /// Off the grid: the candidate grid indices, nearest first (never empty for keys the
    /// quantizers build; empty only for a key no clamped level combination produces).
    Near(&'a [u16]),
}

impl<const D: usize> Lattice<D> {
    /// Builds the tables for grid points given as packed 8-bit coordinates (`grids.rs`
    /// entries); each distinct coordinate value is a level, in increasing (signed) order.
    fn build(packed: &[u64], bits: u32, nwant: usize) -> Self {
        let byte = |p: u64, k: usize| (p >> (8 * k)) as u8 as i8;
        let mut distinct: Vec<i8> = packed
            .iter()
            .flat_map(|&p| (0..D).map(move |k| byte(p, k)))
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        let level_of = |b: i8| distinct.iter().position(|&d| d == b).unwrap_or(0) as u8;
        let levels: Vec<[u8; D]> = packed
            .iter()
            .map(|&p| std::array::from_fn(|k| level_of(byte(p, k))))
            .collect();
        let values = levels
            .iter()
            .map(|l| l.map(|l| (2 * l as i32 + 1) as f32))
            .collect();
        let nlevels = distinct.len() as u8;

        let key_of = |l: &[u8; D]| {
            l.iter()
                .enumerate()
                .fold(0usize, |k, (i, &l)| k | (l as usize) << (bits as usize * i))
        };
        let mut map = vec![i32::MIN; 1 << (bits as usize * D)];
        for (i, l) in levels.iter().enumerate() {
            map[key_of(l)] = i as i32;
        }
        // Neighbour lists for every level combination off the grid (ggml also fills keys with
        // levels no quantizer produces; those are never looked up).
        let mut neighbours = Vec::new();
        let mut dist = vec![0i32; levels.len()];
        let combos = (nlevels as usize).pow(D as u32);
        for c in 0..combos {
            let mut l = [0u8; D];
            let mut rest = c;
            for v in l.iter_mut() {
                *v = (rest % nlevels as usize) as u8;
                rest /= nlevels as usize;
            }
            let key = key_of(&l);
            if map[key] >= 0 {
                continue;
            }
            for (d, g) in dist.iter_mut().zip(&levels) {
                *d = g
                    .iter()
                    .zip(&l)
                    .map(|(&a, &b)| {
                        let diff = 2 * (a as i32 - b as i32);
                        diff * diff
                    })
                    .sum();
            }
            // The nwant smallest distinct distances, then every grid point at one of them in
            // order of (distance, index): what ggml's qsort of (d2, j) pairs yields.
            let mut wanted: Vec<i32> = Vec::with_capacity(nwant);
            for &d in &dist {
                if wanted.contains(&d) {
                    continue;
                }
                if wanted.len() < nwant {
                    wanted.push(d);
                } else if let Some(m) = wanted.iter_mut().max().filter(|m| **m > d) {
                    *m = d;
                }
            }
            wanted.sort_unstable();
            let start = neighbours.len();
            neighbours.push(0u16);
            for &w in &wanted {
                neighbours.extend(
                    dist.iter()
                        .enumerate()
                        .filter(|&(_, &d)| d == w)
                        .map(|(j, _)| j as u16),
                );
            }
            neighbours[start] = (neighbours.len() - start - 1) as u16;
            map[key] = -(start as i32 + 1);
        }
        Lattice {
            levels,
            values,
            map,
            neighbours,
            bits,
        }
    }

    /// The key of a group of levels (each below `2^bits`).
    #[inline(always)]
    pub fn key(&self, l: &[u8]) -> usize {
        let mut k = 0usize;
        for (i, &l) in l[..D].iter().enumerate() {
            k |= (l as usize) << (self.bits as usize * i);
        }
        k
    }

    #[inline(always)]
    pub fn lookup(&self, key: usize) -> Lookup<'_> {
        let m = self.map.get(key).copied().unwrap_or(i32::MIN);
        if m >= 0 {
            Lookup::OnGrid(m as u16)
        } else if m == i32::MIN {
            Lookup::Near(&[])
        } else {
            let start = (-(m + 1)) as usize;
            let n = self.neighbours[start] as usize;
            Lookup::Near(&self.neighbours[start + 1..start + 1 + n])
        }
    }

    #[inline(always)]
    pub fn levels(&self, index: u16) -> &[u8; D] {
        &self.levels[index as usize]
    }

    #[inline(always)]
    pub fn values(&self, index: u16) -> &[f32; D] {
        &self.values[index as usize]
    }

    /// ggml's `iq2_find_best_neighbour` / `iq3_find_best_neighbour`: the candidate with the
    /// least `sum w·(scale·q − x)²` (first one on ties); its levels go to `l`. Falls back to
    /// the first candidate where ggml would abort (every distance NaN or infinite).
    #[inline(always)]
    pub fn best_neighbour(
        &self,
        candidates: &[u16],
        xval: &[f32],
        weight: &[f32],
        scale: f32,
        l: &mut [u8],
    ) -> u16 {
        let mut best_d2 = f32::MAX;
        let mut best = candidates.first().copied().unwrap_or(0);
        for &j in candidates {
            let q = self.values(j);
            let mut d2 = 0f32;
            for i in 0..D {
                let diff = scale * q[i] - xval[i];
                d2 += weight[i] * diff * diff;
            }
            if d2 < best_d2 {
                best_d2 = d2;
                best = j;
            }
        }
        l[..D].copy_from_slice(self.levels(best));
        best
    }
}

/// The grids by ggml type; built on first use (a few milliseconds each).
pub(crate) fn iq3xxs() -> &'static Lattice<4> {
    static L: OnceLock<Lattice<4>> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&widen(&IQ3XXS_GRID), 3, 2))
}

pub(crate) fn iq3s() -> &'static Lattice<4> {
    static L: OnceLock<Lattice<4>> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&widen(&IQ3S_GRID), 3, 3))
}

pub(crate) fn iq2xxs() -> &'static Lattice<8> {
    static L: OnceLock<Lattice<8>> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&IQ2XXS_GRID, 2, 2))
}

pub(crate) fn iq2xs() -> &'static Lattice<8> {
    static L: OnceLock<Lattice<8>> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&IQ2XS_GRID, 2, 2))
}

pub(crate) fn iq2s() -> &'static Lattice<8> {
    static L: OnceLock<Lattice<8>> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&IQ2S_GRID, 2, 1))
}

/// IQ1_S and IQ1_M share one grid.
pub(crate) fn iq1s() -> &'static Lattice<8> {
    static L: OnceLock<Lattice<8>> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&IQ1S_GRID, 2, 3))
}

/// How the refinement after the scale search treats the groups (the quantizers differ).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Refine {
    /// Requantize only the groups that fell off the grid at the chosen scale (IQ3_XXS,
    /// IQ2_XS, IQ2_S).
    OffGridGroups,
    /// Requantize every group, but only when some group fell off the grid (IQ3_S).
    AllIfAnyOffGrid,
    /// Always requantize every group (IQ2_XXS).
    All,
}

/// Parameters of the scale search of `quantize_row_iq{2,3}_*_impl`.
pub(crate) struct ScaleSearch {
    /// Levels run over `0..kmaxq`; candidate inverse scales are `(2·kmaxq − 1 + is·step) / divisor`.
    pub kmaxq: i32,
    /// `is` runs over `-steps..=steps`.
    pub steps: i32,
    pub step: f32,
    pub refine: Refine,
}

/// Largest sub-block any of these quantizers searches at once.
pub(crate) const MAX_BLOCK: usize = 32;

/// The scale search shared by the IQ2 and IQ3 quantizers, for one sub-block of non-negative
/// `xval` (signs already taken out) with weights `weight` (and their square roots `waux`, which
/// the neighbour search uses). `scale` is ggml's starting value, kept when no candidate has a
/// positive fit. Writes the chosen levels (always a grid point per group) to `l`; returns the
/// scale.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn search_scale<const D: usize>(
    lat: &Lattice<D>,
    p: &ScaleSearch,
    xval: &[f32],
    weight: &[f32],
    waux: &[f32],
    divisor: f32,
    mut scale: f32,
    l: &mut [u8],
) -> f32 {
    let n = xval.len();
    let groups = n / D;
    let mut laux = [0u8; MAX_BLOCK];
    let mut on_grid = [p.refine == Refine::OffGridGroups; MAX_BLOCK / 4];
    let mut on_grid_aux = [true; MAX_BLOCK / 4];
    l[..n].fill(0);
    let mut best = 0f32;
    let base = (2 * p.kmaxq - 1) as f32;
    for is in -p.steps..=p.steps {
        let id = (base + is as f32 * p.step) / divisor;
        let this_scale = 1.0 / id;
        for (k, aux) in on_grid_aux[..groups].iter_mut().enumerate() {
            let g = D * k..D * (k + 1);
            quantize_group(id, &xval[g.clone()], p.kmaxq, &mut laux[g.clone()]);
            *aux = match lat.lookup(lat.key(&laux[g.clone()])) {
                Lookup::OnGrid(_) => true,
                Lookup::Near(c) => {
                    let (x, w) = (&xval[g.clone()], &waux[g.clone()]);
                    lat.best_neighbour(c, x, w, this_scale, &mut laux[g]);
                    false
                }
            };
        }
        let (sumqx, sumq2) = fit(xval, weight, &laux[..n]);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l[..n].copy_from_slice(&laux[..n]);
            if p.refine != Refine::All {
                on_grid[..groups].copy_from_slice(&on_grid_aux[..groups]);
            }
        }
    }
    let any_off = on_grid[..groups].iter().any(|&g| !g);
    if any_off && scale > 0.0 {
        let id = 1.0 / scale;
        for (k, &on) in on_grid[..groups].iter().enumerate() {
            if p.refine == Refine::OffGridGroups && on {
                continue;
            }
            let g = D * k..D * (k + 1);
            quantize_group(id, &xval[g.clone()], p.kmaxq, &mut l[g.clone()]);
            if let Lookup::Near(c) = lat.lookup(lat.key(&l[g.clone()])) {
                let (x, w) = (&xval[g.clone()], &waux[g.clone()]);
                lat.best_neighbour(c, x, w, scale, &mut l[g]);
            }
        }
        let (sumqx, sumq2) = fit(xval, weight, &l[..n]);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    scale
}

/// Levels `clamp(nearest_int((id·x − 1)/2), 0, kmaxq − 1)` of one group.
#[inline(always)]
fn quantize_group(id: f32, x: &[f32], kmaxq: i32, l: &mut [u8]) {
    for (l, &x) in l.iter_mut().zip(x) {
        *l = nearest_int(0.5 * (id * x - 1.0)).clamp(0, kmaxq - 1) as u8;
    }
}

/// `sum w·x·q` and `sum w·q²` with `q = 2l + 1`, summed in order.
#[inline(always)]
fn fit(xval: &[f32], weight: &[f32], l: &[u8]) -> (f32, f32) {
    let mut sumqx = 0f32;
    let mut sumq2 = 0f32;
    for ((&x, &w), &l) in xval.iter().zip(weight).zip(l) {
        let q = (2 * l as i32 + 1) as f32;
        sumqx += w * x * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The grid index of a group of levels; the searches only produce grid points, so the
/// fallback (index 0) is never taken.
#[inline(always)]
pub(crate) fn grid_index<const D: usize>(lat: &Lattice<D>, l: &[u8]) -> u16 {
    match lat.lookup(lat.key(l)) {
        Lookup::OnGrid(i) => i,
        Lookup::Near(_) => 0,
    }
}

/// Splits the signs off one group of 8 values: `xval = |x|`, bit `i` set where `x[i]` is
/// negative (NaN counts as negative, as in ggml's `x >= 0` test).
#[inline(always)]
pub(crate) fn split_signs(x: &[f32], xval: &mut [f32]) -> u8 {
    let mut s = 0u8;
    for (i, (&x, v)) in x[..8].iter().zip(xval.iter_mut()).enumerate() {
        if x >= 0.0 {
            *v = x;
        } else {
            *v = -x;
            s |= 1 << i;
        }
    }
    s
}

/// `split_signs` for the grids whose 8th sign is implied by even parity (IQ2_XXS, IQ2_XS,
/// IQ3_XXS): with an odd count of negatives, the value with the least `w·x²` changes sign.
/// Returns the 7 stored sign bits.
#[inline(always)]
pub(crate) fn split_signs_even(x: &[f32], weight: &[f32], xval: &mut [f32]) -> u8 {
    let mut s = split_signs(x, xval);
    if s.count_ones() % 2 == 1 {
        let mut imin = 0;
        let mut min = weight[0] * x[0] * x[0];
        for i in 1..8 {
            let ax = weight[i] * x[i] * x[i];
            if ax < min {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= 1 << imin;
    }
    s & 127
}

/// `MAX(a, b)` as ggml's macro evaluates it: `a > b ? a : b`.
#[inline(always)]
pub(crate) fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// Per-value weights: `qw·sqrt(sigma2 + x²)` with an imatrix, else `x²`.
#[inline(always)]
pub(crate) fn weights(x: &[f32], qw: Option<&[f32]>, sigma2: f32, weight: &mut [f32]) {
    match qw {
        Some(qw) => {
            for ((w, &q), &x) in weight.iter_mut().zip(qw).zip(x) {
                *w = q * (sigma2 + x * x).sqrt();
            }
        }
        None => {
            for (w, &x) in weight.iter_mut().zip(x) {
                *w = x * x;
            }
        }
    }
}

/// `sum x²` of a super-block, in order.
#[inline(always)]
pub(crate) fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

fn widen(g: &[u32]) -> Vec<u64> {
    g.iter().map(|&v| v as u64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's construction, literally: sort all (d2, j) pairs, keep `nwant` distinct d2.
    fn reference_neighbours<const D: usize>(
        lat: &Lattice<D>,
        l: &[u8; D],
        nwant: usize,
    ) -> Vec<u16> {
        let mut d: Vec<(i32, usize)> = lat
            .levels
            .iter()
            .enumerate()
            .map(|(j, g)| {
                let d2 = g
                    .iter()
                    .zip(l)
                    .map(|(&a, &b)| {
                        let (pa, pb) = (2 * a as i32 + 1, 2 * b as i32 + 1);
                        (pa - pb) * (pa - pb)
                    })
                    .sum();
                (d2, j)
            })
            .collect();
        d.sort();
        let mut out = Vec::new();
        let (mut d2, mut nhave) = (d[0].0, 1);
        for &(dj, j) in &d {
            if dj > d2 {
                if nhave == nwant {
                    break;
                }
                d2 = dj;
                nhave += 1;
            }
            out.push(j as u16);
        }
        out
    }

    fn check<const D: usize>(lat: &Lattice<D>, nwant: usize, nlevels: u8) {
        let combos = (nlevels as usize).pow(D as u32);
        let mut on = 0;
        for c in 0..combos {
            let mut l = [0u8; D];
            let mut rest = c;
            for v in l.iter_mut() {
                *v = (rest % nlevels as usize) as u8;
                rest /= nlevels as usize;
            }
            match lat.lookup(lat.key(&l)) {
                Lookup::OnGrid(i) => {
                    assert_eq!(lat.levels(i), &l);
                    on += 1;
                }
                Lookup::Near(n) => {
                    if c % 7 == 0 {
                        assert_eq!(n, reference_neighbours(lat, &l, nwant).as_slice());
                    }
                    assert!(!n.is_empty());
                }
            }
        }
        assert_eq!(on, lat.levels.len());
    }

    #[test]
    fn neighbour_lists_match_ggml_construction() {
        check(iq3xxs(), 2, 8);
        check(iq3s(), 3, 8);
        check(iq2xxs(), 2, 3);
        check(iq2xs(), 2, 3);
        check(iq2s(), 1, 3);
        check(iq1s(), 3, 3);
    }
}
