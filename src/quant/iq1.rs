//! IQ1_S and IQ1_M quantizers: ports of ggml's `quantize_row_iq1_s_impl` and
//! `quantize_row_iq1_m_impl`, byte-identical to ggml.
//!
//! Each sub-block (32 values for IQ1_S, 16 for IQ1_M) maps to three levels `{-1, 0, 1} + shift`
//! (shift `±DELTA`; IQ1_M picks one per half): ggml sorts the values, tries every split of the
//! sorted order into three runs with prefix sums, keeps the best weighted fit, then moves each
//! group of 8 levels that is not a grid point to its best neighbour. ggml requires an imatrix
//! for IQ1_S; IQ1_M without one weights by `x²`.

use super::kquants::QK_K;
use super::lattice::{self, c_max, sum_sq, Lattice, Lookup};
use super::search::{fp32_to_fp16, nearest_int};
use super::QuantError;
use crate::gguf::GgmlType;

const BLOCK: usize = 32;
const NSUB: usize = QK_K / BLOCK;
/// Bytes of one IQ1_S block: f16 d, 32 low index bytes, per sub-block a u16 of three 3-bit
/// index high parts, a 3-bit scale and the shift sign.
const S_BYTES: usize = 2 + QK_K / 8 + 2 * NSUB;
/// ggml's `IQ1S_DELTA`.
const DELTA: f32 = 0.125;
/// ggml's `GROUP_MAX_EPS_IQ1_S`.
const GROUP_MAX_EPS_IQ1_S: f32 = 1e-12;
/// Bytes of one IQ1_M block: 32 low index bytes, per 8 values 3 high index bits and a shift
/// bit, then 3-bit scales per 16 values with the f16 super-block scale spread over their top
/// nibbles.
const M_BYTES: usize = QK_K / 8 + QK_K / 16 + QK_K / 32;
/// ggml's `GROUP_MAX_EPS_IQ1_M`.
const GROUP_MAX_EPS_IQ1_M: f32 = 1e-7;
// The block layout above, checked against the types table at compile time.
const _: () =
    assert!(S_BYTES == GgmlType::IQ1_S.type_size() && M_BYTES == GgmlType::IQ1_M.type_size());
const X_P: [f32; 3] = [-1.0 + DELTA, DELTA, 1.0 + DELTA];
const X_M: [f32; 3] = [-1.0 - DELTA, -DELTA, 1.0 - DELTA];

/// Quantize one row to IQ1_S; `imatrix` (one weight per value of the row) is required.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    let bytes = match ty {
        GgmlType::IQ1_S => S_BYTES,
        GgmlType::IQ1_M => M_BYTES,
        _ => {
            return Err(QuantError::Unsupported {
                ty,
                op: "IQ1 quantize",
            })
        }
    };
    super::check_sizes(ty, src.len(), dst.len())?;
    if ty == GgmlType::IQ1_S && imatrix.is_none() {
        return Err(QuantError::NeedsImatrix { ty });
    }
    for (ibl, (x, out)) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(bytes))
        .enumerate()
    {
        let qw = imatrix.map(|w| &w[ibl * QK_K..(ibl + 1) * QK_K]);
        match qw {
            Some(qw) if ty == GgmlType::IQ1_S => block_s(x, qw, out),
            _ => block_m(x, qw, out),
        }
    }
    Ok(())
}

/// ggml's `qsort` of (value, index) pairs by value, as glibc (up to 2.36, which the reference
/// build uses) runs it: a top-down merge sort that takes from the left run on ties. Written
/// out so that NaN (equal to everything under ggml's comparator) orders exactly as there.
fn merge_sort(v: &mut [(f32, u8)], tmp: &mut [(f32, u8)]) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    let (a, b) = v.split_at_mut(n1);
    merge_sort(a, tmp);
    merge_sort(b, tmp);
    let (mut i, mut j, mut k) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        // iq1_sort_helper: -1 only when a < b, 1 only when a > b; glibc takes a on <= 0,
        // i.e. unless a > b (NaN on either side counts as equal)
        let a_after_b = a[i].0 > b[j].0;
        if !a_after_b {
            tmp[k] = a[i];
            i += 1;
        } else {
            tmp[k] = b[j];
            j += 1;
        }
        k += 1;
    }
    while i < a.len() {
        tmp[k] = a[i];
        i += 1;
        k += 1;
    }
    // what is left of b is already in place
    v[..k].copy_from_slice(&tmp[..k]);
}

/// ggml's `iq1_find_best_neighbour2`: the candidate with the least `sum w·(scale·xx[l] − x)²`.
/// ggml falls back to a scan of the whole grid that indexes out of bounds and then aborts when
/// nothing was found (every distance NaN); here the first candidate stands in.
fn best_neighbour(
    lat: &Lattice<8>,
    candidates: &[u16],
    x: &[f32],
    weight: &[f32],
    scale: f32,
    xx: &[f32; 3],
) -> u16 {
    let mut best_score = f32::MAX;
    let mut best = candidates.first().copied().unwrap_or(0);
    for &j in candidates {
        let l = lat.levels(j);
        let mut d2 = 0f32;
        for i in 0..8 {
            let q = xx[l[i] as usize];
            let diff = scale * q - x[i];
            d2 += weight[i] * diff * diff;
        }
        if d2 < best_score {
            best_score = d2;
            best = j;
        }
    }
    best
}

/// Levels from the best split of the sorted `pairs` (value, position): positions before `i1`
/// get 0, before `i2` 1, the rest 2; mirrored (`2 - l`) when the best scale was negative, so
/// the caller can make it positive. Returns whether it mirrored.
fn split_levels(pairs: &[(f32, u8)], i1: usize, i2: usize, negative: bool, l: &mut [u8]) -> bool {
    for (j, &(_, i)) in pairs.iter().enumerate() {
        let level = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
        l[i as usize] = if negative { 2 - level } else { level };
    }
    negative
}

fn block_s(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let lat = lattice::iq1s();
    out.fill(0);
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    let mut scales = [0f32; NSUB];
    let mut shifts = [1i8; NSUB];
    let mut qh = [0u16; NSUB];
    let mut max_scale = 0f32;
    let mut weight = [0f32; BLOCK];
    let mut pairs = [(0f32, 0u8); BLOCK];
    let mut tmp = [(0f32, 0u8); BLOCK];
    let mut sumx = [0f32; BLOCK + 1];
    let mut sumw = [0f32; BLOCK + 1];
    let mut l = [0u8; BLOCK];
    for ib in 0..NSUB {
        let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
        lattice::weights(xb, Some(&qw[ib * BLOCK..]), sigma2, &mut weight);
        let max = xb[1..].iter().fold(xb[0].abs(), |m, &v| c_max(m, v.abs()));
        if max < GROUP_MAX_EPS_IQ1_S {
            continue;
        }
        // Exhaustive search of the two boundaries splitting the sorted values into the three
        // levels, with prefix sums of w·x and w.
        for (j, p) in pairs.iter_mut().enumerate() {
            *p = (xb[j], j as u8);
        }
        merge_sort(&mut pairs, &mut tmp);
        for (j, &(_, i)) in pairs.iter().enumerate() {
            let i = i as usize;
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        let mut best_score = -f32::MAX;
        let mut scale = max;
        let mut best: Option<(usize, usize, i8)> = None;
        for i1 in 0..=BLOCK {
            for i2 in i1..=BLOCK {
                for (xs, shift) in [(&X_P, 1i8), (&X_M, -1)] {
                    let sumqx = (sumx[i1] - sumx[0]) * xs[0]
                        + (sumx[i2] - sumx[i1]) * xs[1]
                        + (sumx[BLOCK] - sumx[i2]) * xs[2];
                    let sumq2 = (sumw[i1] - sumw[0]) * xs[0] * xs[0]
                        + (sumw[i2] - sumw[i1]) * xs[1] * xs[1]
                        + (sumw[BLOCK] - sumw[i2]) * xs[2] * xs[2];
                    if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                        scale = sumqx / sumq2;
                        best_score = scale * sumqx;
                        best = Some((i1, i2, shift));
                    }
                }
            }
        }
        let Some((i1, i2, mut shift)) = best else {
            continue;
        };
        if split_levels(&pairs, i1, i2, scale < 0.0, &mut l) {
            scale = -scale;
            shift = -shift;
        }
        let xx = if shift == 1 { &X_P } else { &X_M };
        let mut index = [0u16; BLOCK / 8];
        let mut all_on_grid = true;
        for (k, idx) in index.iter_mut().enumerate() {
            let g = 8 * k..8 * (k + 1);
            *idx = match lat.lookup(lat.key(&l[g.clone()])) {
                Lookup::OnGrid(i) => i,
                Lookup::Near(c) => {
                    all_on_grid = false;
                    best_neighbour(lat, c, &xb[g.clone()], &weight[g], scale, xx)
                }
            };
        }
        if !all_on_grid {
            let mut sumqx = 0f32;
            let mut sumq2 = 0f32;
            for (k, &idx) in index.iter().enumerate() {
                let lv = lat.levels(idx);
                for j in 0..8 {
                    let w = weight[8 * k + j];
                    let q = xx[lv[j] as usize];
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
            if sumqx > 0.0 && sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        let mut h = 0u16;
        for (k, &idx) in index.iter().enumerate() {
            out[2 + (BLOCK / 8) * ib + k] = idx as u8;
            h |= (idx >> 8) << (3 * k);
        }
        qh[ib] = h;
        scales[ib] = scale;
        shifts[ib] = shift;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale != 0.0 {
        let d = max_scale / 15.0;
        // 1.125: ggml's fudge factor
        out[0..2].copy_from_slice(&fp32_to_fp16(d * 1.125).to_le_bytes());
        let id = 1.0 / d;
        for ib in 0..NSUB {
            let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
            if shifts[ib] == -1 {
                l |= 8;
            }
            qh[ib] |= l << 12;
        }
    }
    let qh_at = 2 + QK_K / 8;
    for (o, h) in out[qh_at..].chunks_exact_mut(2).zip(&qh) {
        o.copy_from_slice(&h.to_le_bytes());
    }
}

/// The shift levels of IQ1_M group `k` (0 or 1) of a sub-block with shift code `code`
/// (0: +,+  1: +,-  2: -,+  3: -,-).
#[inline(always)]
fn m_levels(code: i8, k: usize) -> &'static [f32; 3] {
    let plus = if k == 0 { code < 2 } else { code % 2 == 0 };
    if plus {
        &X_P
    } else {
        &X_M
    }
}

fn block_m(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    const BLOCK: usize = 16;
    const NSUB: usize = QK_K / BLOCK;
    const QH: usize = QK_K / 8;
    const SCALES: usize = QH + QK_K / 16;
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let lat = lattice::iq1s();
    out.fill(0);
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    let mut scales = [0f32; NSUB];
    let mut shifts = [0i8; NSUB];
    let mut max_scale = 0f32;
    let mut weight = [0f32; BLOCK];
    let mut pairs = [(0f32, 0u8); BLOCK];
    let mut tmp = [(0f32, 0u8); BLOCK];
    let mut l = [0u8; BLOCK];
    // ggml's coefficients: with v0 - v1 = v1 - v2 = -1, a split's sum collapses to
    // T·v2 − px[i1] − px[i2] (and likewise for the squares)
    let (p2, m2) = (X_P[2], X_M[2]);
    let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
    let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
    let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
    let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
    let sub_weights = |xb: &[f32], ib: usize, weight: &mut [f32; BLOCK]| {
        lattice::weights(xb, qw.map(|w| &w[ib * BLOCK..]), sigma2, weight)
    };
    for ib in 0..NSUB {
        let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
        sub_weights(xb, ib, &mut weight);
        let max = xb[1..].iter().fold(xb[0].abs(), |m, &v| c_max(m, v.abs()));
        if max < GROUP_MAX_EPS_IQ1_M {
            continue;
        }
        for (j, p) in pairs.iter_mut().enumerate() {
            *p = (xb[j], j as u8);
        }
        merge_sort(&mut pairs, &mut tmp);
        // prefix sums per half of the sub-block, as each half has its own shift
        let mut px = [[0f32; BLOCK + 1]; 2];
        let mut pw = [[0f32; BLOCK + 1]; 2];
        for (j, &(_, i)) in pairs.iter().enumerate() {
            let i = i as usize;
            let h = usize::from(i >= BLOCK / 2);
            px[h][j + 1] = px[h][j] + weight[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + weight[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        let txs = [px[0][BLOCK], px[1][BLOCK]];
        let tws = [pw[0][BLOCK], pw[1][BLOCK]];
        let mut best_score = -f32::MAX;
        let mut scale = max;
        let mut best: Option<(usize, usize, i8)> = None;
        for i1 in 0..=BLOCK {
            for i2 in i1..=BLOCK {
                let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) =
                    ([0f32; 2], [0f32; 2], [0f32; 2], [0f32; 2]);
                for h in 0..2 {
                    let sx = px[h][i1] + px[h][i2];
                    qx_p[h] = txs[h] * p2 - sx;
                    qx_m[h] = txs[h] * m2 - sx;
                    q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                    q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                }
                let sumqx = [
                    qx_p[0] + qx_p[1],
                    qx_p[0] + qx_m[1],
                    qx_m[0] + qx_p[1],
                    qx_m[0] + qx_m[1],
                ];
                let sumq2 = [
                    q2_p[0] + q2_p[1],
                    q2_p[0] + q2_m[1],
                    q2_m[0] + q2_p[1],
                    q2_m[0] + q2_m[1],
                ];
                for k in 0..4 {
                    if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                        scale = sumqx[k] / sumq2[k];
                        best_score = scale * sumqx[k];
                        best = Some((i1, i2, k as i8));
                    }
                }
            }
        }
        let Some((i1, i2, mut code)) = best else {
            continue;
        };
        if split_levels(&pairs, i1, i2, scale < 0.0, &mut l) {
            scale = -scale;
            code = 3 - code;
        }
        let mut index = [0u16; 2];
        let mut all_on_grid = true;
        for (k, idx) in index.iter_mut().enumerate() {
            let g = 8 * k..8 * (k + 1);
            *idx = match lat.lookup(lat.key(&l[g.clone()])) {
                Lookup::OnGrid(i) => i,
                Lookup::Near(c) => {
                    all_on_grid = false;
                    let xx = m_levels(code, k);
                    best_neighbour(lat, c, &xb[g.clone()], &weight[g], scale, xx)
                }
            };
        }
        if !all_on_grid {
            let mut sumqx = 0f32;
            let mut sumq2 = 0f32;
            for (k, &idx) in index.iter().enumerate() {
                let xx = m_levels(code, k);
                let lv = lat.levels(idx);
                for j in 0..8 {
                    let w = weight[8 * k + j];
                    let q = xx[lv[j] as usize];
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
            if sumqx > 0.0 && sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        out[2 * ib] = index[0] as u8;
        out[2 * ib + 1] = index[1] as u8;
        out[QH + ib] = ((index[0] >> 8) | (index[1] >> 8) << 4) as u8;
        scales[ib] = scale;
        shifts[ib] = code;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        return;
    }
    let mut sc = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let mut sumqx = 0f32;
    let mut sumq2 = 0f32;
    for ib in 0..NSUB {
        let ls = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        sc[ib / 4] |= (ls as u16) << (3 * (ib % 4));
        out[QH + ib] |= MASKS[shifts[ib] as usize];
        let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
        sub_weights(xb, ib, &mut weight);
        // refit the super-block scale to the stored indices and 3-bit scales
        let qh = out[QH + ib] as usize;
        for k in 0..2 {
            let xx = m_levels(shifts[ib], k);
            let idx = out[2 * ib + k] as usize + ((qh << (8 - 4 * k)) & 0x700);
            let lv = lat.levels(idx as u16);
            let mult = (2 * ls + 1) as f32;
            for j in 0..8 {
                let w = weight[8 * k + j];
                let q = xx[lv[j] as usize] * mult;
                sumqx += w * q * xb[8 * k + j];
                sumq2 += w * q * q;
            }
        }
    }
    if sumq2 > 0.0 {
        d = sumqx / sumq2;
    }
    // 1.1125: ggml's fudge factor
    let s = fp32_to_fp16(d * 1.1125);
    sc[0] |= (s & 0x000f) << 12;
    sc[1] |= (s & 0x00f0) << 8;
    sc[2] |= (s & 0x0f00) << 4;
    sc[3] |= s & 0xf000;
    for (o, v) in out[SCALES..].chunks_exact_mut(2).zip(&sc) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization: ggml's `dequantize_row_*` for this family (helpers in `bytes.rs`).

/// Dequantize whole blocks of `ty`, a type of this family.
pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::IQ1_S => dequant::iq1_s(src, dst),
        GgmlType::IQ1_M => dequant::iq1_m(src, dst),
        _ => unreachable!("{ty} is not a type of this family (see the types table)"),
    }
}

mod dequant {
    use super::super::bytes::*;
    use super::super::grids::IQ1S_GRID;
    use half::f16;

    // IQ1: grid points of {-1, 0, 1} shifted by ±1/8.

    /// ggml's IQ1S_DELTA / IQ1M_DELTA.
    pub(super) const IQ1_DELTA: f32 = 0.125;

    /// The 8 values of IQ1 grid point `idx`.
    #[inline]
    pub(super) fn grid_iq1(idx: usize) -> [i8; 8] {
        IQ1S_GRID[idx].to_le_bytes().map(|v| v as i8)
    }

    /// IQ1_S: f16 d, 32 low bytes of 11-bit grid indices, 8 u16: four 3-bit index tops, a 3-bit
    /// scale and the delta's sign, per 32 values. x = (d * (2s + 1)) * (g + delta).
    pub(super) fn iq1_s(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 50, dst, QK_K) {
            let d = f16_at(b, 0);
            let qs = &b[2..34];
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let qh = u16_at(b, 34 + 2 * ib);
                let dl = d * (2 * (qh >> 12 & 7) + 1) as f32;
                let delta = if qh & 0x8000 == 0 {
                    IQ1_DELTA
                } else {
                    -IQ1_DELTA
                };
                for (l, y) in y.chunks_exact_mut(8).enumerate() {
                    let idx = qs[4 * ib + l] as usize | ((qh >> (3 * l) & 7) as usize) << 8;
                    for (y, g) in y.iter_mut().zip(grid_iq1(idx)) {
                        *y = dl * (g as f32 + delta);
                    }
                }
            }
        }
    }

    /// IQ1_M: 32 low bytes of grid indices, 16 bytes of (3-bit index top, delta sign) nibbles,
    /// 4 u16 holding 3-bit scales (one per 16 values) in their low 12 bits and the f16 d spread
    /// over their top nibbles.
    pub(super) fn iq1_m(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 56, dst, QK_K) {
            let (qs, qh) = (&b[0..32], &b[32..48]);
            let sc: [u16; 4] = std::array::from_fn(|i| u16_at(b, 48 + 2 * i));
            let d_bits =
                sc[0] >> 12 | (sc[1] >> 8 & 0x00F0) | (sc[2] >> 4 & 0x0F00) | (sc[3] & 0xF000);
            let d = f16::from_bits(d_bits).to_f32();
            for (k, y) in y.chunks_exact_mut(8).enumerate() {
                let s = sc[k / 8] >> (3 * (k / 2 % 4)) & 7;
                let dl = d * (2 * s + 1) as f32;
                let h = qh[k / 2] >> (4 * (k % 2)) & 0x0F;
                let idx = qs[k] as usize | ((h & 7) as usize) << 8;
                let delta = if h & 8 == 0 { IQ1_DELTA } else { -IQ1_DELTA };
                for (y, g) in y.iter_mut().zip(grid_iq1(idx)) {
                    *y = dl * (g as f32 + delta);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On comparable values the merge sort is a stable sort by value (-0.0 equal to 0.0).
    #[test]
    fn merge_sort_is_stable_by_value() {
        let vals = [0.5f32, -1.0, 0.0, -0.0, 0.5, 3.0, -1.0, 0.0, 2.0, 0.5, -7.0];
        for n in 0..=vals.len() {
            let mut v: Vec<(f32, u8)> = vals[..n]
                .iter()
                .enumerate()
                .map(|(i, &x)| (x, i as u8))
                .collect();
            let mut want = v.clone();
            want.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            let mut tmp = vec![(0f32, 0u8); n];
            merge_sort(&mut v, &mut tmp);
            let key = |p: &[(f32, u8)]| p.iter().map(|x| x.1).collect::<Vec<_>>();
            assert_eq!(key(&v), key(&want));
        }
        let mut v = [(f32::NAN, 0u8), (1.0, 1), (0.0, 2), (f32::NAN, 3)];
        merge_sort(&mut v, &mut [(0.0, 0); 4]);
    }
}
