//! IQ2_XXS, IQ2_XS and IQ2_S quantizers: ports of ggml's `quantize_row_iq2_xxs_impl`,
//! `quantize_row_iq2_xs_impl` and `quantize_row_iq2_s_impl`, byte-identical to ggml.
//!
//! Sub-blocks (32 values for IQ2_XXS, 16 for the others) are split into signs and magnitudes;
//! the magnitudes quantize to groups of eight 2-bit levels that must form a point of the
//! type's grid (256, 512 or 1024 points), searched over a range of scales
//! (`lattice::search_scale`). IQ2_XXS and IQ2_XS need an imatrix (ggml asserts one); IQ2_S
//! without one weights by `sigma2/4 + x²`.

use super::kquants::QK_K;
use super::lattice::{
    self, c_max, grid_index, search_scale, split_signs, split_signs_even, sum_sq, weights, Refine,
    ScaleSearch,
};
use super::search::{fp32_to_fp16, make_qp_quants, nearest_int, GROUP_MAX_EPS};
use super::QuantError;
use crate::gguf::GgmlType;

/// Bytes of one IQ2_XXS block: f16 d, per 32 values a u32 of four grid indices and a u32 of
/// four 7-bit sign groups plus a 4-bit scale.
const XXS_BYTES: usize = 2 + QK_K / 4;
/// Bytes of one IQ2_XS block: f16 d, per 8 values a u16 (9-bit index, 7 sign bits), then
/// 4-bit scales per 16 values.
const XS_BYTES: usize = 2 + QK_K / 4 + QK_K / 32;
/// Bytes of one IQ2_S block: f16 d, 32 low index bytes, 32 sign bytes, 8 bytes of index high
/// bits, 4-bit scales per 16 values.
const S_BYTES: usize = 2 + QK_K / 4 + QK_K / 32 + QK_K / 32;
/// ggml's `GROUP_MAX_EPS_IQ2_S`.
const GROUP_MAX_EPS_IQ2_S: f32 = 1e-8;
const KMAXQ: i32 = 3;
// The block layout above, checked against the types table at compile time.
const _: () = assert!(
    XXS_BYTES == GgmlType::IQ2_XXS.type_size()
        && XS_BYTES == GgmlType::IQ2_XS.type_size()
        && S_BYTES == GgmlType::IQ2_S.type_size()
);

const XXS_SEARCH: ScaleSearch = ScaleSearch {
    kmaxq: KMAXQ,
    steps: 6,
    step: 0.1,
    refine: Refine::All,
};
const XS_SEARCH: ScaleSearch = ScaleSearch {
    kmaxq: KMAXQ,
    steps: 9,
    step: 0.1,
    refine: Refine::OffGridGroups,
};

/// Quantize one row to IQ2_XXS, IQ2_XS or IQ2_S; `imatrix` holds one weight per value of the
/// row and is required for IQ2_XXS and IQ2_XS.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    let bytes = match ty {
        GgmlType::IQ2_XXS => XXS_BYTES,
        GgmlType::IQ2_XS => XS_BYTES,
        GgmlType::IQ2_S => S_BYTES,
        _ => {
            return Err(QuantError::Unsupported {
                ty,
                op: "IQ2 quantize",
            })
        }
    };
    super::check_sizes(ty, src.len(), dst.len())?;
    if imatrix.is_none() && ty != GgmlType::IQ2_S {
        return Err(QuantError::NeedsImatrix { ty });
    }
    for (ibl, (x, out)) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(bytes))
        .enumerate()
    {
        let qw = imatrix.map(|w| &w[ibl * QK_K..(ibl + 1) * QK_K]);
        match (ty, qw) {
            (GgmlType::IQ2_XXS, Some(qw)) => block_xxs(x, qw, out),
            (GgmlType::IQ2_XS, Some(qw)) => block_xs(x, qw, out),
            _ => block_s(x, qw, out),
        }
    }
    Ok(())
}

/// The 4-bit super-block-relative scale of one sub-block.
#[inline(always)]
fn sub_scale(id: f32, scale: f32) -> u8 {
    nearest_int(0.5 * (id * scale - 1.0)).clamp(0, 15) as u8
}

fn block_xxs(x: &[f32], qw: &[f32], out: &mut [u8]) {
    const BLOCK: usize = 32;
    const NSUB: usize = QK_K / BLOCK;
    let lat = lattice::iq2xxs();
    out.fill(0);
    let sigma2 = sum_sq(x) / QK_K as f32;
    let mut scales = [0f32; NSUB];
    let mut q2 = [0u32; 2 * NSUB];
    let mut max_scale = 0f32;
    let (mut weight, mut waux, mut xval) = ([0f32; BLOCK], [0f32; BLOCK], [0f32; BLOCK]);
    let mut l = [0u8; BLOCK];
    for ib in 0..NSUB {
        let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
        weights(xb, Some(&qw[ib * BLOCK..]), sigma2, &mut weight);
        for (a, &w) in waux.iter_mut().zip(&weight) {
            *a = w.sqrt();
        }
        let mut signs = [0u8; 4];
        for (k, s) in signs.iter_mut().enumerate() {
            let g = 8 * k..8 * (k + 1);
            *s = split_signs_even(&xb[g.clone()], &weight[g.clone()], &mut xval[g]);
        }
        let max = xval[1..].iter().fold(xval[0], |m, &v| c_max(m, v));
        if max < GROUP_MAX_EPS {
            continue;
        }
        let mut lqp = [0u8; BLOCK];
        let start = make_qp_quants(KMAXQ + 1, &xval, &mut lqp, &weight);
        let eff_max = start * KMAXQ as f32;
        if eff_max <= 0.0 {
            continue;
        }
        let mut scale = search_scale(
            lat,
            &XXS_SEARCH,
            &xval,
            &weight,
            &waux,
            eff_max,
            start,
            &mut l,
        );
        if scale < 0.0 {
            // ggml: cannot happen with non-negative weights; flip so the scale is positive
            scale = -scale;
            for s in &mut signs {
                *s = !*s & 127;
            }
        }
        for k in 0..4 {
            let index = grid_index(lat, &l[8 * k..8 * k + 8]) as u32;
            q2[2 * ib] |= index << (8 * k);
            q2[2 * ib + 1] |= (signs[k] as u32) << (7 * k);
        }
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    out[0..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
    let id = 1.0 / d;
    for (ib, &scale) in scales.iter().enumerate() {
        q2[2 * ib + 1] |= (sub_scale(id, scale) as u32) << 28;
    }
    for (o, q) in out[2..].chunks_exact_mut(4).zip(&q2) {
        o.copy_from_slice(&q.to_le_bytes());
    }
}

/// The shared sub-block loop of IQ2_XS and IQ2_S (16 values, two groups of 8): returns the
/// sub-block scales; `put` stores the two grid indices and sign bytes of sub-block `ib`.
fn blocks16(
    x: &[f32],
    lat: &lattice::Lattice<8>,
    sub_weights: impl Fn(&[f32], usize, &mut [f32; 16]),
    even_signs: bool,
    eps: f32,
    mut put: impl FnMut(usize, [u16; 2], [u8; 2]),
) -> ([f32; QK_K / 16], f32) {
    const BLOCK: usize = 16;
    let mut scales = [0f32; QK_K / BLOCK];
    let mut max_scale = 0f32;
    let (mut weight, mut waux, mut xval) = ([0f32; BLOCK], [0f32; BLOCK], [0f32; BLOCK]);
    let mut l = [0u8; BLOCK];
    for ib in 0..QK_K / BLOCK {
        let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
        sub_weights(xb, ib, &mut weight);
        for (a, &w) in waux.iter_mut().zip(&weight) {
            *a = w.sqrt();
        }
        let mut signs = [0u8; 2];
        for (k, s) in signs.iter_mut().enumerate() {
            let g = 8 * k..8 * (k + 1);
            *s = if even_signs {
                split_signs_even(&xb[g.clone()], &weight[g.clone()], &mut xval[g])
            } else {
                split_signs(&xb[g.clone()], &mut xval[g])
            };
        }
        let max = xval[1..].iter().fold(xval[0], |m, &v| c_max(m, v));
        if max < eps {
            continue;
        }
        let start = max / (2 * KMAXQ - 1) as f32;
        let mut scale = search_scale(lat, &XS_SEARCH, &xval, &weight, &waux, max, start, &mut l);
        if scale < 0.0 {
            scale = -scale;
            let mask = if even_signs { 127 } else { 255 };
            for s in &mut signs {
                *s = !*s & mask;
            }
        }
        let index = [grid_index(lat, &l[..8]), grid_index(lat, &l[8..])];
        put(ib, index, signs);
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    (scales, max_scale)
}

/// Packs 4-bit scales, two per byte (even sub-block in the low nibble).
fn put_scales(scales: &[f32; QK_K / 16], id: f32, out: &mut [u8]) {
    for (o, pair) in out.iter_mut().zip(scales.chunks_exact(2)) {
        *o = sub_scale(id, pair[0]) | sub_scale(id, pair[1]) << 4;
    }
}

fn block_xs(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let lat = lattice::iq2xs();
    out.fill(0);
    let sigma2 = sum_sq(x) / QK_K as f32;
    let mut q2 = [0u16; QK_K / 8];
    let (scales, max_scale) = blocks16(
        x,
        lat,
        |xb, ib, w| weights(xb, Some(&qw[ib * 16..]), sigma2, w),
        true,
        GROUP_MAX_EPS,
        |ib, index, signs| {
            for k in 0..2 {
                q2[2 * ib + k] = index[k] | (signs[k] as u16) << 9;
            }
        },
    );
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    out[0..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
    put_scales(&scales, 1.0 / d, &mut out[2 + QK_K / 4..]);
    for (o, q) in out[2..2 + QK_K / 4].chunks_exact_mut(2).zip(&q2) {
        o.copy_from_slice(&q.to_le_bytes());
    }
}

fn block_s(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    const QS: usize = 2;
    const SIGNS: usize = QS + QK_K / 8;
    const QH: usize = QS + QK_K / 4;
    const SCALES: usize = QH + QK_K / 32;
    let lat = lattice::iq2s();
    out.fill(0);
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    let sub_weights = |xb: &[f32], ib: usize, w: &mut [f32; 16]| match qw {
        Some(qw) => weights(xb, Some(&qw[ib * 16..]), sigma2, w),
        None => {
            for (w, &x) in w.iter_mut().zip(xb) {
                *w = 0.25 * sigma2 + x * x;
            }
        }
    };
    let (scales, max_scale) = blocks16(
        x,
        lat,
        sub_weights,
        false,
        GROUP_MAX_EPS_IQ2_S,
        |ib, index, signs| {
            for k in 0..2 {
                let i8 = 2 * ib + k;
                out[QS + i8] = index[k] as u8;
                out[QH + i8 / 4] |= ((index[k] >> 8) as u8) << (2 * (i8 % 4));
                out[SIGNS + i8] = signs[k];
            }
        },
    );
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    // 0.9875: ggml's fudge factor
    out[0..2].copy_from_slice(&fp32_to_fp16(d * 0.9875).to_le_bytes());
    put_scales(&scales, 1.0 / d, &mut out[SCALES..]);
}

// ---------------------------------------------------------------------------------------------
// Dequantization: ggml's `dequantize_row_*` for this family (helpers in `bytes.rs`).

/// Dequantize whole blocks of `ty`, a type of this family.
pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::IQ2_XXS => dequant::iq2_xxs(src, dst),
        GgmlType::IQ2_XS => dequant::iq2_xs(src, dst),
        GgmlType::IQ2_S => dequant::iq2_s(src, dst),
        _ => unreachable!("{ty} is not a type of this family (see the types table)"),
    }
}

mod dequant {
    use super::super::bytes::*;
    use super::super::grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, KSIGNS_IQ2XS};

    // IQ2 / IQ3: each group of 8 (IQ2) or 4 (IQ3) values is a point of a fixed grid of positive
    // magnitudes, with signs stored separately. `ksigns` expands 7 stored sign bits to 8.

    /// The 8 magnitudes of a u64 grid point.
    #[inline]
    pub(super) fn grid8(point: u64) -> [u8; 8] {
        point.to_le_bytes()
    }

    /// IQ2_XXS: f16 d, then per 32 values two u32: four 8-bit grid indices, and four 7-bit sign
    /// indices plus a 4-bit scale in the top bits. x = ((d * (0.5 + s)) * 0.25) * g * sign.
    pub(super) fn iq2_xxs(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 66, dst, QK_K) {
            let d = f16_at(b, 0);
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let idx = &b[2 + 8 * ib..][..4];
                let aux = u32_at(b, 2 + 8 * ib + 4);
                let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
                for (l, y) in y.chunks_exact_mut(8).enumerate() {
                    let g = grid8(IQ2XXS_GRID[idx[l] as usize]);
                    let signs = KSIGNS_IQ2XS[(aux >> (7 * l) & 127) as usize];
                    for j in 0..8 {
                        y[j] = signed(db * g[j] as f32, signs, j);
                    }
                }
            }
        }
    }

    /// 4-bit scales of IQ2_XS / IQ2_S, one per 16 values: low nibble first.
    #[inline]
    pub(super) fn iq2_scale(d: f32, scales: &[u8], i: usize) -> f32 {
        let s = scales[i / 2] >> (4 * (i % 2)) & 0x0F;
        d * (0.5 + s as f32) * 0.25
    }

    /// IQ2_XS: f16 d, 32 u16 (9-bit grid index, 7-bit sign index), 8 bytes of 4-bit scales.
    pub(super) fn iq2_xs(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 74, dst, QK_K) {
            let d = f16_at(b, 0);
            let scales = &b[66..74];
            for (k, y) in y.chunks_exact_mut(8).enumerate() {
                let q = u16_at(b, 2 + 2 * k);
                let db = iq2_scale(d, scales, k / 2);
                let g = grid8(IQ2XS_GRID[(q & 511) as usize]);
                let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
                for j in 0..8 {
                    y[j] = signed(db * g[j] as f32, signs, j);
                }
            }
        }
    }

    /// IQ2_S: f16 d, 32 low bytes of 10-bit grid indices, 32 bytes of explicit signs, 8 bytes of
    /// the indices' top 2 bits, 8 bytes of 4-bit scales.
    pub(super) fn iq2_s(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 82, dst, QK_K) {
            let d = f16_at(b, 0);
            let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
            for (k, y) in y.chunks_exact_mut(8).enumerate() {
                let high = (qh[k / 4] >> (2 * (k % 4)) & 3) as usize;
                let g = grid8(IQ2S_GRID[qs[k] as usize | high << 8]);
                let db = iq2_scale(d, scales, k / 2);
                for j in 0..8 {
                    y[j] = signed(db * g[j] as f32, signs[k], j);
                }
            }
        }
    }
}
