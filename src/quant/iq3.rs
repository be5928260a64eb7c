//! IQ3_XXS and IQ3_S quantizers: ports of ggml's `quantize_row_iq3_xxs_impl` and
//! `quantize_row_iq3_s_impl`, byte-identical to ggml.
//!
//! Each 32-value sub-block is split into signs and magnitudes; the magnitudes quantize to
//! groups of four 3-bit levels that must form a point of the type's grid (256 points for
//! IQ3_XXS, 512 for IQ3_S), searched over a range of scales (see `lattice::search_scale`).
//! The f32 operations follow the C source in order; without an imatrix the weights are `x²`.

use super::kquants::QK_K;
use super::lattice::{
    self, c_max, grid_index, search_scale, split_signs, split_signs_even, sum_sq, weights, Refine,
    ScaleSearch,
};
use super::search::{fp32_to_fp16, nearest_int};
use super::QuantError;
use crate::gguf::GgmlType;

/// Values per sub-block (one scale each).
const BLOCK: usize = 32;
const NSUB: usize = QK_K / BLOCK;
/// Bytes of one IQ3_XXS block: f16 d, 64 grid indices, 8 u32 of signs and scale.
const XXS_BYTES: usize = 2 + QK_K / 4 + 4 * NSUB;
/// Bytes of one IQ3_S block: f16 d, 64 low index bytes, 8 high-bit bytes, 32 sign bytes,
/// 4 bytes of 4-bit scales.
const S_BYTES: usize = 2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64;
/// ggml's `GROUP_MAX_EPS_IQ3_XXS`.
const GROUP_MAX_EPS_IQ3_XXS: f32 = 1e-8;
const KMAXQ: i32 = 8;
// The block layout above, checked against the types table at compile time.
const _: () =
    assert!(XXS_BYTES == GgmlType::IQ3_XXS.type_size() && S_BYTES == GgmlType::IQ3_S.type_size());

const XXS_SEARCH: ScaleSearch = ScaleSearch {
    kmaxq: KMAXQ,
    steps: 15,
    step: 0.2,
    refine: Refine::OffGridGroups,
};
const S_SEARCH: ScaleSearch = ScaleSearch {
    kmaxq: KMAXQ,
    steps: 9,
    step: 0.2,
    refine: Refine::AllIfAnyOffGrid,
};

/// Quantize one row to IQ3_XXS or IQ3_S; `imatrix` holds one weight per value of the row.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    let bytes = match ty {
        GgmlType::IQ3_XXS => XXS_BYTES,
        GgmlType::IQ3_S => S_BYTES,
        _ => {
            return Err(QuantError::Unsupported {
                ty,
                op: "IQ3 quantize",
            })
        }
    };
    super::check_sizes(ty, src.len(), dst.len())?;
    for (ibl, (x, out)) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(bytes))
        .enumerate()
    {
        let qw = imatrix.map(|w| &w[ibl * QK_K..(ibl + 1) * QK_K]);
        if ty == GgmlType::IQ3_XXS {
            block_xxs(x, qw, out);
        } else {
            block_s(x, qw, out);
        }
    }
    Ok(())
}

/// The 4-bit super-block-relative scale of one sub-block.
#[inline(always)]
fn sub_scale(id: f32, scale: f32) -> u32 {
    nearest_int(0.5 * (id * scale - 1.0)).clamp(0, 15) as u32
}

fn block_xxs(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = lattice::iq3xxs();
    out.fill(0);
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    let mut scales = [0f32; NSUB];
    let mut signs_and_scales = [0u32; NSUB];
    let mut max_scale = 0f32;
    let (mut weight, mut waux, mut xval) = ([0f32; BLOCK], [0f32; BLOCK], [0f32; BLOCK]);
    let mut l = [0u8; BLOCK];
    for ib in 0..NSUB {
        let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
        weights(xb, qw.map(|w| &w[ib * BLOCK..]), sigma2, &mut weight);
        for (a, &w) in waux.iter_mut().zip(&weight) {
            *a = w.sqrt();
        }
        let mut signs = [0u8; 4];
        for (k, s) in signs.iter_mut().enumerate() {
            let g = 8 * k..8 * (k + 1);
            *s = split_signs_even(&xb[g.clone()], &weight[g.clone()], &mut xval[g]);
        }
        let max = xval[1..].iter().fold(xval[0], |m, &v| c_max(m, v));
        if max < GROUP_MAX_EPS_IQ3_XXS {
            scales[ib] = 0.0;
            continue;
        }
        let start = max / (2 * KMAXQ - 1) as f32;
        let mut scale = search_scale(lat, &XXS_SEARCH, &xval, &weight, &waux, max, start, &mut l);
        if scale < 0.0 {
            // ggml: cannot happen with non-negative weights; flip so the scale is positive
            scale = -scale;
            for s in &mut signs {
                *s = !*s & 127;
            }
        }
        for k in 0..BLOCK / 4 {
            out[2 + 8 * ib + k] = grid_index(lat, &l[4 * k..4 * k + 4]) as u8;
        }
        signs_and_scales[ib] = signs[0] as u32
            | (signs[1] as u32) << 7
            | (signs[2] as u32) << 14
            | (signs[3] as u32) << 21;
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        out.fill(0);
        return;
    }
    let d = max_scale / 31.0;
    // 1.0125: ggml's fudge factor
    out[0..2].copy_from_slice(&fp32_to_fp16(d * 1.0125).to_le_bytes());
    let id = 1.0 / d;
    let ss = 2 + QK_K / 4;
    for (ib, (&scale, &s)) in scales.iter().zip(&signs_and_scales).enumerate() {
        let v = s | sub_scale(id, scale) << 28;
        out[ss + 4 * ib..ss + 4 * ib + 4].copy_from_slice(&v.to_le_bytes());
    }
}

fn block_s(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = lattice::iq3s();
    out.fill(0);
    // offsets of qs, qh, signs and scales
    const QS: usize = 2;
    const QH: usize = QS + QK_K / 4;
    const SIGNS: usize = QH + QK_K / 32;
    const SCALES: usize = SIGNS + QK_K / 8;
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    let mut scales = [0f32; NSUB];
    let mut max_scale = 0f32;
    let (mut weight, mut waux, mut xval) = ([0f32; BLOCK], [0f32; BLOCK], [0f32; BLOCK]);
    let mut l = [0u8; BLOCK];
    // ggml advances its index and sign pointers only past sub-blocks it encodes: after an
    // all-zero sub-block the later ones land one slot earlier. Kept for identical bytes.
    let (mut qs_at, mut signs_at) = (0, 0);
    for ib in 0..NSUB {
        let xb = &x[ib * BLOCK..(ib + 1) * BLOCK];
        weights(xb, qw.map(|w| &w[ib * BLOCK..]), sigma2, &mut weight);
        for (a, &w) in waux.iter_mut().zip(&weight) {
            *a = w.sqrt();
        }
        let mut signs = [0u8; 4];
        for (k, s) in signs.iter_mut().enumerate() {
            let g = 8 * k..8 * (k + 1);
            *s = split_signs(&xb[g.clone()], &mut xval[g]);
        }
        let max = xval[1..].iter().fold(xval[0], |m, &v| c_max(m, v));
        if max == 0.0 {
            scales[ib] = 0.0;
            continue;
        }
        let start = max / (2 * KMAXQ - 1) as f32;
        let mut scale = search_scale(lat, &S_SEARCH, &xval, &weight, &waux, max, start, &mut l);
        if scale < 0.0 {
            scale = -scale;
            for s in &mut signs {
                *s = !*s;
            }
        }
        for k in 0..BLOCK / 4 {
            let index = grid_index(lat, &l[4 * k..4 * k + 4]);
            out[QS + qs_at + k] = index as u8;
            let slot = ib * (BLOCK / 4) + k;
            out[QH + slot / 8] |= ((index >> 8) as u8) << (slot % 8);
        }
        qs_at += BLOCK / 4;
        out[SIGNS + signs_at..SIGNS + signs_at + 4].copy_from_slice(&signs);
        signs_at += 4;
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    out[0..2].copy_from_slice(&fp32_to_fp16(d * 1.033).to_le_bytes());
    let id = 1.0 / d;
    for (j, pair) in scales.chunks_exact(2).enumerate() {
        out[SCALES + j] = (sub_scale(id, pair[0]) | sub_scale(id, pair[1]) << 4) as u8;
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization: ggml's `dequantize_row_*` for this family (helpers in `bytes.rs`).

/// Dequantize whole blocks of `ty`, a type of this family.
pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::IQ3_XXS => dequant::iq3_xxs(src, dst),
        GgmlType::IQ3_S => dequant::iq3_s(src, dst),
        _ => unreachable!("{ty} is not a type of this family (see the types table)"),
    }
}

mod dequant {
    use super::super::bytes::*;
    use super::super::grids::{IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS};

    /// IQ3_XXS: f16 d, 64 grid indices (4 values each), then per 32 values a u32 of four 7-bit
    /// sign indices and a 4-bit scale. x = ((d * (0.5 + s)) * 0.5) * g * sign.
    pub(super) fn iq3_xxs(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 98, dst, QK_K) {
            let d = f16_at(b, 0);
            let qs = &b[2..66];
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let aux = u32_at(b, 66 + 4 * ib);
                let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
                for (l, y) in y.chunks_exact_mut(8).enumerate() {
                    let signs = KSIGNS_IQ2XS[(aux >> (7 * l) & 127) as usize];
                    let g1 = IQ3XXS_GRID[qs[8 * ib + 2 * l] as usize].to_le_bytes();
                    let g2 = IQ3XXS_GRID[qs[8 * ib + 2 * l + 1] as usize].to_le_bytes();
                    for j in 0..4 {
                        y[j] = signed(db * g1[j] as f32, signs, j);
                        y[j + 4] = signed(db * g2[j] as f32, signs, j + 4);
                    }
                }
            }
        }
    }

    /// IQ3_S: f16 d, 64 low bytes of 9-bit grid indices, 8 bytes of their top bits, 32 bytes of
    /// explicit signs, 4 bytes of 4-bit scales (one per 32 values). x = (d * (1 + 2s)) * g * sign.
    pub(super) fn iq3_s(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 110, dst, QK_K) {
            let d = f16_at(b, 0);
            let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let s = scales[ib / 2] >> (4 * (ib % 2)) & 0x0F;
                let db = d * (1 + 2 * s as u32) as f32;
                for (k, y) in y.chunks_exact_mut(4).enumerate() {
                    let n = 8 * ib + k; // grid index number within the block
                    let idx = qs[n] as usize | ((qh[n / 8] >> (n % 8) & 1) as usize) << 8;
                    let g = IQ3S_GRID[idx].to_le_bytes();
                    for j in 0..4 {
                        y[j] = signed(db * g[j] as f32, signs[n / 2], 4 * (n % 2) + j);
                    }
                }
            }
        }
    }
}
