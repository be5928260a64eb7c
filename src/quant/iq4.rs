//! IQ4_NL and IQ4_XS quantizers: a port of ggml's `quantize_iq4_nl` / `quantize_iq4_xs`
//! (both go through `quantize_row_iq4_nl_impl` with `ntry = 7`), byte-identical to ggml.
//!
//! Without an imatrix ggml still weights each value, by `x²`; with one the weight is
//! `qw[j] * sqrt(sigma2 + x²)`. Every f32 operation below is written in the same order as the
//! C source (no fused multiply-add, sequential sums), because the search compares candidate
//! scales by tiny differences and any reassociation can flip a decision.

use super::{check_sizes, QuantError, KVALUES_IQ4NL};
use crate::gguf::GgmlType;
use half::f16;

/// Values per IQ4_NL block and per IQ4_XS sub-block.
const QK4_NL: usize = 32;
/// Values per IQ4_XS super-block.
const QK_K: usize = 256;
/// Sub-blocks per IQ4_XS super-block.
const NSUB: usize = QK_K / QK4_NL;
/// Bytes of one IQ4_NL block: f16 scale + 16 bytes of nibbles.
const NL_BYTES: usize = 2 + QK4_NL / 2;
/// Bytes of one IQ4_XS block: f16 scale, u16 high scale bits, 4 low scale bytes, nibbles.
const XS_BYTES: usize = 2 + 2 + QK_K / 64 + QK_K / 2;
/// ggml's `GROUP_MAX_EPS`.
const GROUP_MAX_EPS: f32 = 1e-15;
/// ggml's `ntry` for both types in `quantize_iq4_nl` / `quantize_iq4_xs`.
const NTRY: i32 = 7;
// The block layout above, checked against the types table at compile time.
const _: () = assert!(
    NL_BYTES == GgmlType::IQ4_NL.type_size()
        && XS_BYTES == GgmlType::IQ4_XS.type_size()
        && QK4_NL == GgmlType::IQ4_NL.block_size()
        && QK_K == GgmlType::IQ4_XS.block_size()
);

/// `kvalues_iq4nl` as f32 (C promotes the int8 levels to float in every comparison).
const VALUES: [f32; 16] = {
    let mut v = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        v[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    v
};

/// Branch-free equivalent of ggml's `best_index_int8(16, kvalues_iq4nl, x)`: for every `x`
/// (including ±inf and NaN, which ggml maps to 0, 15 and 15) it returns the same index.
///
/// ggml's binary search finds `mu`, the first level with `x < v[mu]` (15 when none does, as
/// for NaN), then picks `mu - 1` when `x - v[mu-1] < v[mu] - x`. Its early returns for
/// `x <= v[0]` and `x >= v[15]` give the same answer as the general rule.
#[inline(always)]
fn best_index(x: f32) -> (usize, f32) {
    let mut mu = 1usize;
    let mut lo = VALUES[0];
    let mut hi = VALUES[15];
    let mut i = 1;
    while i < 15 {
        let above = x >= VALUES[i] || x.is_nan(); // !(x < v)
        mu += above as usize;
        lo = if above { VALUES[i] } else { lo };
        let j = 15 - i;
        hi = if x < VALUES[j] { VALUES[j] } else { hi };
        i += 1;
    }
    if x - lo < hi - x {
        (mu - 1, lo)
    } else {
        (mu, hi)
    }
}

/// ggml's `nearest_int`: round half to even via the 1.5·2²³ magic constant.
#[inline(always)]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Number of candidate inverse scales per block: ggml's first guess, then `itry = -7..=7`.
const NCAND: usize = 2 * NTRY as usize + 2;

/// Increments that walk `lo` and `hi` up the levels: when `x` is not below level `i`
/// (`1 <= i <= 14`), the bracket `[lo, hi]` moves from `[v[i-1], v[i]]` to `[v[i], v[i+1]]`.
/// The sums are of small integers, hence exact.
const STEP_LO: [f32; 15] = steps(0);
const STEP_HI: [f32; 15] = steps(1);

const fn steps(off: usize) -> [f32; 15] {
    let mut s = [0f32; 15];
    let mut i = 1;
    while i < 15 {
        s[i] = (KVALUES_IQ4NL[i + off] as i32 - KVALUES_IQ4NL[i + off - 1] as i32) as f32;
        i += 1;
    }
    s
}

/// `sum(w*q*x)` and `sum(w*q*q)` of one block for each of the `NCAND` inverse scales `ids`,
/// `q` being the level ggml's `best_index_int8` picks for `id*x`.
///
/// The candidates are independent, so they form the vector lanes: for each value the level
/// choice runs over all candidates at once, and every lane accumulates its sums in value
/// order, exactly as the C loop does for one candidate.
#[inline(always)]
fn candidate_sums(
    xb: &[f32; QK4_NL],
    weight: &[f32; QK4_NL],
    ids: &[f32; NCAND],
) -> ([f32; NCAND], [f32; NCAND]) {
    let mut sumqx = [0f32; NCAND];
    let mut sumq2 = [0f32; NCAND];
    for (&x, &w) in xb.iter().zip(weight) {
        let mut v = [0f32; NCAND];
        for (v, &id) in v.iter_mut().zip(ids) {
            *v = id * x;
        }
        // best_index: the bracket [lo, hi] around v, as ggml's binary search finds it
        let mut lo = [VALUES[0]; NCAND];
        let mut hi = [VALUES[1]; NCAND];
        for i in 1..15 {
            let (level, dlo, dhi) = (VALUES[i], STEP_LO[i], STEP_HI[i]);
            for ((lo, hi), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(&v) {
                // `!(v < level)`, so NaN walks to the top bracket as in ggml
                *lo += if v < level { 0.0 } else { dlo };
                *hi += if v < level { 0.0 } else { dhi };
            }
        }
        for (((sqx, sq2), (&lo, &hi)), &v) in sumqx
            .iter_mut()
            .zip(sumq2.iter_mut())
            .zip(lo.iter().zip(&hi))
            .zip(&v)
        {
            let q = if v - lo < hi - v { lo } else { hi };
            let wq = w * q;
            *sqx += wq * x;
            *sq2 += wq * q;
        }
    }
    (sumqx, sumq2)
}

/// The scale search of `quantize_row_iq4_nl_impl` for one 32-value block (`scales[ib]`).
fn best_scale(xb: &[f32; QK4_NL], weight: &[f32; QK4_NL]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &x in xb {
        let ax = x.abs();
        if ax > amax {
            amax = ax;
            max = x;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    // ntry > 0: first guess d = -max/v[0], then id = (itry + v[0])/max for itry in -7..=7
    let mut ids = [0f32; NCAND];
    ids[0] = 1.0 / (-max / VALUES[0]);
    for (k, id) in ids[1..].iter_mut().enumerate() {
        let itry = k as i32 - NTRY;
        *id = (itry + KVALUES_IQ4NL[0] as i32) as f32 / max;
    }
    let (sumqx, sumq2) = candidate_sums(xb, weight, &ids);
    let mut d = if sumq2[0] > 0.0 {
        sumqx[0] / sumq2[0]
    } else {
        0.0
    };
    let mut best = d * sumqx[0];
    for (&sqx, &sq2) in sumqx[1..].iter().zip(&sumq2[1..]) {
        if sq2 > 0.0 && sqx * sqx > best * sq2 {
            d = sqx / sq2;
            best = d * sqx;
        }
    }
    d
}

/// Per-value weights of one 32-value block: `x²`, or `qw * sqrt(sigma2 + x²)` with an imatrix.
#[inline(always)]
fn block_weights(xb: &[f32; QK4_NL], qw: Option<&[f32]>, sigma2: f32, weight: &mut [f32; QK4_NL]) {
    match qw {
        Some(qw) => {
            for ((w, &q), &x) in weight.iter_mut().zip(qw).zip(xb) {
                *w = q * (sigma2 + x * x).sqrt();
            }
        }
        None => {
            for (w, &x) in weight.iter_mut().zip(xb) {
                *w = x * x;
            }
        }
    }
}

/// `sigma2 = 2/n * sum(x²)`, summed in order as the C loop does.
#[inline(always)]
fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// Pack 32 level indices into 16 bytes: low nibbles hold values 0..16, high nibbles 16..32.
#[inline(always)]
fn pack_nibbles(l: &[u8; QK4_NL], q4: &mut [u8]) {
    for (j, q) in q4[..16].iter_mut().enumerate() {
        *q = l[j] | (l[16 + j] << 4);
    }
}

fn as_block(x: &[f32]) -> &[f32; QK4_NL] {
    x.try_into().expect("32-value block")
}

/// One IQ4_NL block (`quantize_row_iq4_nl_impl(QK4_NL, 32, ..., ntry = 7)`).
fn quantize_block_nl(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let x = as_block(x);
    let sigma2 = sigma2(x);
    let mut weight = [0f32; QK4_NL];
    block_weights(x, qw, sigma2, &mut weight);
    let scale = best_scale(x, &weight);
    out[0..2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut l = [0u8; QK4_NL];
    for (l, &v) in l.iter_mut().zip(x) {
        *l = best_index(id * v).0 as u8;
    }
    pack_nibbles(&l, &mut out[2..NL_BYTES]);
}

/// One IQ4_XS super-block (`quantize_row_iq4_nl_impl(QK_K, 32, ..., ntry = 7)`).
fn quantize_block_xs(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = sigma2(x);
    let mut scales = [0f32; NSUB];
    let mut weight = [0f32; QK4_NL];
    let mut max_scale = 0f32;
    let mut amax_scale = 0f32;
    for (ib, scale) in scales.iter_mut().enumerate() {
        let xb = as_block(&x[ib * QK4_NL..(ib + 1) * QK4_NL]);
        let qwb = qw.map(|w| &w[ib * QK4_NL..(ib + 1) * QK4_NL]);
        block_weights(xb, qwb, sigma2, &mut weight);
        let d = best_scale(xb, &weight);
        *scale = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    let d = -max_scale / 32.0;
    out[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let mut scales_l = [0u8; QK_K / 64];
    for (ib, &scale) in scales.iter().enumerate() {
        let ls = nearest_int(id * scale).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let xb = as_block(&x[ib * QK4_NL..(ib + 1) * QK4_NL]);
        let mut l = [0u8; QK4_NL];
        for (l, &v) in l.iter_mut().zip(xb) {
            *l = best_index(idl * v).0 as u8;
        }
        let q4 = 8 + ib * 16;
        pack_nibbles(&l, &mut out[q4..q4 + 16]);
        let ls = (ls + 32) as u8;
        scales_l[ib / 2] |= (ls & 0xf) << (4 * (ib % 2));
        scales_h |= u16::from(ls >> 4) << (2 * (ib % 8));
    }
    out[2..4].copy_from_slice(&scales_h.to_le_bytes());
    out[4..8].copy_from_slice(&scales_l);
}

/// Quantize one row to IQ4_NL or IQ4_XS. `imatrix`, when given, holds one importance weight
/// per value of the row.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    let (block, bytes): (usize, usize) = match ty {
        GgmlType::IQ4_NL => (QK4_NL, NL_BYTES),
        GgmlType::IQ4_XS => (QK_K, XS_BYTES),
        _ => {
            return Err(QuantError::Unsupported {
                ty,
                op: "IQ4 quantize",
            })
        }
    };
    check_sizes(ty, src.len(), dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != src.len() {
            return Err(QuantError::BufferSize {
                ty,
                what: format!("imatrix has {} weights for a row of {}", w.len(), src.len()),
            });
        }
    }
    for (ibl, (x, out)) in src
        .chunks_exact(block)
        .zip(dst.chunks_exact_mut(bytes))
        .enumerate()
    {
        let qw = imatrix.map(|w| &w[ibl * block..(ibl + 1) * block]);
        if block == QK4_NL {
            quantize_block_nl(x, qw, out);
        } else {
            quantize_block_xs(x, qw, out);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dequantization: ggml's `dequantize_row_*` for this family (helpers in `bytes.rs`).

/// Dequantize whole blocks of `ty`, a type of this family.
pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::IQ4_NL => dequant::iq4_nl(src, dst),
        GgmlType::IQ4_XS => dequant::iq4_xs(src, dst),
        _ => unreachable!("{ty} is not a type of this family (see the types table)"),
    }
}

mod dequant {
    use super::super::bytes::*;
    use super::super::KVALUES_IQ4NL;

    // Non-uniform 4-bit codebooks.

    /// IQ4_NL: Q4_0's layout with the codes looked up in `KVALUES_IQ4NL`; x = d * kv[q].
    pub(super) fn iq4_nl(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 18, dst, 32) {
            let d = f16_at(b, 0);
            for (j, &q) in b[2..18].iter().enumerate() {
                y[j] = d * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
                y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
            }
        }
    }

    /// IQ4_XS: f16 d, u16 of 2-bit scale tops, 4 bytes of 4-bit scale lows, 128 bytes of nibbles
    /// (16 per 32 values, IQ4_NL order). x = (d * (sc - 32)) * kv[q].
    pub(super) fn iq4_xs(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 136, dst, QK_K) {
            let d = f16_at(b, 0);
            let scales_h = u16_at(b, 2);
            let (scales_l, qs) = (&b[4..8], &b[8..136]);
            for (ib, y) in y.chunks_exact_mut(32).enumerate() {
                let lo = scales_l[ib / 2] >> (4 * (ib % 2)) & 0x0F;
                let hi = (scales_h >> (2 * ib) & 3) as u8;
                let dl = d * ((lo | hi << 4) as i32 - 32) as f32;
                for (j, &q) in qs[16 * ib..][..16].iter().enumerate() {
                    y[j] = dl * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
                    y[j + 16] = dl * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `best_index_int8`, verbatim, to check the branch-free version against.
    fn best_index_int8(val: &[i8; 16], x: f32) -> usize {
        if x <= val[0] as f32 {
            return 0;
        }
        if x >= val[15] as f32 {
            return 15;
        }
        let (mut ml, mut mu) = (0usize, 15usize);
        while mu - ml > 1 {
            let mav = (ml + mu) / 2;
            if x < val[mav] as f32 {
                mu = mav;
            } else {
                ml = mav;
            }
        }
        if x - (val[mu - 1] as f32) < val[mu] as f32 - x {
            mu - 1
        } else {
            mu
        }
    }

    // f32::next_up/next_down need Rust 1.86; these suffice for the finite non-zero levels.
    fn up(v: f32) -> f32 {
        if v > 0.0 {
            f32::from_bits(v.to_bits() + 1)
        } else {
            f32::from_bits(v.to_bits() - 1)
        }
    }
    fn down(v: f32) -> f32 {
        -up(-v)
    }

    #[test]
    fn best_index_matches_binary_search() {
        let mut xs = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
        for &v in &KVALUES_IQ4NL {
            let v = v as f32;
            xs.extend([v, up(v), down(v)]);
        }
        for w in KVALUES_IQ4NL.windows(2) {
            let mid = (w[0] as f32 + w[1] as f32) / 2.0;
            xs.extend([mid, up(mid), down(mid)]);
        }
        let mut i = -20000;
        while i <= 20000 {
            xs.push(i as f32 * 0.00731);
            i += 1;
        }
        for x in xs {
            assert_eq!(
                best_index(x).0,
                best_index_int8(&KVALUES_IQ4NL, x),
                "x = {x:?}"
            );
            assert_eq!(best_index(x).1, VALUES[best_index(x).0], "x = {x:?}");
        }
    }

    #[test]
    fn nearest_int_rounds_half_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(31.49), 31);
    }
}
