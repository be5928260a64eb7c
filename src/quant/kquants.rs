//! K-quants Q2_K..Q6_K, with and without importance weights (ggml-quants.c).
//!
//! Everything here reproduces ggml byte for byte: f32 arithmetic evaluated in the same order
//! as the C source (no FMA contraction, left-associative products), `nearest_int` through the
//! 1.5·2^23 magic-number trick (round half to even), fp16 stores rounding to nearest even, and
//! the same integer truncations (`int` stored into `uint8_t`/`int8_t`) as C.
//!
//! Without importance weights each type follows ggml's `quantize_row_q*_K_ref` (what
//! `quantize_q*_K` does with `quant_weights == NULL`); with them, `quantize_row_q*_K_impl`.
//!
//! The scale searches they share with the IQ and weighted legacy types live in `search.rs`.

// Index loops mirror the C source line by line, which is what makes them auditable.
#![allow(clippy::needless_range_loop)]

use super::search::{
    fp16_to_fp32, fp32_to_fp16, make_q3_quants, make_qkx2_quants, make_qkx3_quants, make_qp_quants,
    make_qx_quants, nearest_int, GROUP_MAX_EPS,
};
use super::QuantError;
use crate::gguf::GgmlType;

/// Values per K-quant super-block.
pub(crate) const QK_K: usize = 256;
// The super-block size every K and IQ family file assumes, checked against the types table.
const _: () = assert!(
    QK_K == GgmlType::Q2_K.block_size()
        && QK_K == GgmlType::Q6_K.block_size()
        && QK_K == GgmlType::Q8_K.block_size()
);

/// Quantize one row (a multiple of 256 values) to a K type, exactly as ggml's
/// `quantize_q*_K` does for a single row.
#[inline(always)]
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    w: Option<&[f32]>,
) -> Result<(), QuantError> {
    if !matches!(
        ty,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
    ) {
        return Err(QuantError::Unsupported {
            ty,
            op: "k-quant quantize",
        });
    }
    let bb = ty.type_size();
    let nb = src.len() / QK_K;
    if src.len() % QK_K != 0 {
        return Err(QuantError::RowNotBlockAligned {
            ty,
            n: src.len(),
            block: QK_K,
        });
    }
    if dst.len() != nb * bb || w.is_some_and(|w| w.len() != src.len()) {
        return Err(QuantError::BufferSize {
            ty,
            what: format!(
                "{} values, {} bytes, {:?} weights",
                src.len(),
                dst.len(),
                w.map(<[f32]>::len)
            ),
        });
    }
    for (i, (x, y)) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(bb))
        .enumerate()
    {
        // A direct call (no function pointer), so the kernels inline into the caller and
        // take its target features (see `quant::quantize_row`).
        let w = w.map(|w| &w[i * QK_K..(i + 1) * QK_K]);
        match ty {
            GgmlType::Q2_K => q2_k_block(x, y, w),
            GgmlType::Q3_K => q3_k_block(x, y, w),
            GgmlType::Q4_K => q4_k_block(x, y, w),
            GgmlType::Q5_K => q5_k_block(x, y, w),
            _ => q6_k_block(x, y, w),
        }
    }
    Ok(())
}

/// Sum of squares in C order (one accumulator).
#[inline(always)]
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Packs 2-bit values `l[0..256]` the Q2_K/Q3_K way: byte `j/4 + k` of each 128-value half
/// holds values `k, k+32, k+64, k+96`.
#[inline(always)]
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for (half, q) in l.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for k in 0..32 {
            q[k] = half[k] | (half[k + 32] << 2) | (half[k + 64] << 4) | (half[k + 96] << 6);
        }
    }
}

#[inline(always)]
fn q2_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let mut weights = [0.0f32; 16];
    let (sc, rest) = y.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    let (d_bits, dmin_bits);
    match qw {
        None => {
            const Q4SCALE: f32 = 15.0;
            let mut max_scale = 0.0f32;
            let mut max_min = 0.0f32;
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                for (w, &v) in weights.iter_mut().zip(xs) {
                    *w = v.abs();
                }
                let (s, m) = make_qkx2_quants(
                    3,
                    xs,
                    &weights,
                    &mut l[16 * j..16 * j + 16],
                    -0.5,
                    0.1,
                    15,
                    true,
                );
                scales[j] = s;
                mins[j] = m;
                if s > max_scale {
                    max_scale = s;
                }
                if m > max_min {
                    max_min = m;
                }
            }
            if max_scale > 0.0 {
                let iscale = Q4SCALE / max_scale;
                for j in 0..16 {
                    sc[j] = nearest_int(iscale * scales[j]) as u8;
                }
                d_bits = fp32_to_fp16(max_scale / Q4SCALE);
            } else {
                sc.fill(0);
                d_bits = fp32_to_fp16(0.0);
            }
            if max_min > 0.0 {
                let iscale = Q4SCALE / max_min;
                for j in 0..16 {
                    let q = nearest_int(iscale * mins[j]);
                    sc[j] |= (q << 4) as u8;
                }
                dmin_bits = fp32_to_fp16(max_min / Q4SCALE);
            } else {
                dmin_bits = fp32_to_fp16(0.0);
            }
        }
        Some(qw) => {
            let mut sw = [0.0f32; 16];
            let mut ls = [0u8; 16];
            let mut lm = [0u8; 16];
            let sigma2 = sum_sq(x) / QK_K as f32;
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                let q = &qw[16 * j..16 * j + 16];
                for k in 0..16 {
                    weights[k] = q[k] * (sigma2 + xs[k] * xs[k]).sqrt();
                }
                let mut s = 0.0f32;
                for &w in &weights {
                    s += w;
                }
                sw[j] = s;
                let (s, m) = make_qkx3_quants(
                    3,
                    xs,
                    &weights,
                    &mut l[16 * j..16 * j + 16],
                    -0.9,
                    0.05,
                    36,
                    false,
                );
                scales[j] = s;
                mins[j] = m;
            }
            let dm = make_qp_quants(15, &scales, &mut ls, &sw);
            let mm = make_qp_quants(15, &mins, &mut lm, &sw);
            d_bits = fp32_to_fp16(dm);
            dmin_bits = fp32_to_fp16(mm);
            for j in 0..16 {
                sc[j] = ls[j] | (lm[j] << 4);
            }
        }
    }
    dd[0..2].copy_from_slice(&d_bits.to_le_bytes());
    dd[2..4].copy_from_slice(&dmin_bits.to_le_bytes());
    let dm = fp16_to_fp32(d_bits);
    let mm = fp16_to_fp32(dmin_bits);
    for j in 0..16 {
        let d = dm * (sc[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (sc[j] >> 4) as f32;
        for k in 0..16 {
            let q = nearest_int((x[16 * j + k] + m) / d).clamp(0, 3);
            l[16 * j + k] = q as u8;
        }
    }
    pack_2bit(&l, qs);
}

/// Writes 6-bit Q3_K scale `q` (already offset by 32) for sub-block `j` into `sc[12]`.
#[inline(always)]
fn q3_put_scale(sc: &mut [u8], j: usize, q: u8) {
    if j < 8 {
        sc[j] = q & 0xF;
    } else {
        sc[j - 8] |= (q & 0xF) << 4;
    }
    sc[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
}

/// Reads back the signed Q3_K scale of sub-block `j`.
#[inline(always)]
fn q3_get_scale(sc: &[u8], j: usize) -> i32 {
    let lo = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
    let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

#[inline(always)]
fn q3_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(12);
    sc.fill(0);
    let d_bits;
    match qw {
        None => {
            let mut max_scale = 0.0f32;
            let mut amax = 0.0f32;
            for j in 0..16 {
                let s = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..], true);
                scales[j] = s;
                let a = s.abs();
                if a > amax {
                    amax = a;
                    max_scale = s;
                }
            }
            if max_scale != 0.0 {
                let iscale = -32.0f32 / max_scale;
                for j in 0..16 {
                    // C: `int8_t l = nearest_int(...)` truncates before clamping.
                    let q = nearest_int(iscale * scales[j]) as i8 as i32;
                    let q = q.clamp(-32, 31) + 32;
                    q3_put_scale(sc, j, q as u8);
                }
                d_bits = fp32_to_fp16(1.0 / iscale);
            } else {
                d_bits = fp32_to_fp16(0.0);
            }
        }
        Some(qw) => {
            let mut weights = [0.0f32; 16];
            let mut sw = [0.0f32; 16];
            let mut ls = [0u8; 16];
            let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                let q = &qw[16 * j..16 * j + 16];
                for k in 0..16 {
                    weights[k] = q[k] * (sigma2 + xs[k] * xs[k]).sqrt();
                }
                let mut s = 0.0f32;
                for &w in &weights {
                    s += w;
                }
                sw[j] = s;
                scales[j] = make_qx_quants(4, xs, &mut l[16 * j..], Some(&weights));
            }
            let d_block = make_qx_quants(32, &scales, &mut ls, Some(&sw));
            for j in 0..16 {
                q3_put_scale(sc, j, ls[j]);
            }
            d_bits = fp32_to_fp16(d_block);
        }
    }
    dd.copy_from_slice(&d_bits.to_le_bytes());
    let df = fp16_to_fp32(d_bits);
    for j in 0..16 {
        let d = df * q3_get_scale(sc, j) as f32;
        if d == 0.0 {
            continue;
        }
        for k in 0..16 {
            let q = nearest_int(x[16 * j + k] / d).clamp(-4, 3);
            l[16 * j + k] = (q + 4) as u8;
        }
    }
    hmask.fill(0);
    for j in 0..QK_K {
        if l[j] > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            l[j] -= 4;
        }
    }
    pack_2bit(&l, qs);
}

/// Packs Q4_K/Q5_K 6-bit scale `ls` and min `lm` of sub-block `j` into `sc[12]`.
#[inline(always)]
fn k4_put_scale_min(sc: &mut [u8], j: usize, ls: u8, lm: u8) {
    if j < 4 {
        sc[j] = ls;
        sc[j + 4] = lm;
    } else {
        sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        sc[j - 4] |= (ls >> 4) << 6;
        sc[j] |= (lm >> 4) << 6;
    }
}

/// ggml's `get_scale_min_k4`.
#[inline(always)]
fn k4_get_scale_min(sc: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (sc[j] & 63, sc[j + 4] & 63)
    } else {
        (
            (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4),
            (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
        )
    }
}

/// Shared Q4_K/Q5_K front half: fills the 12 scale bytes and d/dmin, requantizes `l` with
/// the stored (rounded) scales. `nmax` is 15 or 31.
#[inline(always)]
fn k45_scales(
    x: &[f32],
    qw: Option<&[f32]>,
    nmax: i32,
    l: &mut [u8; QK_K],
    sc: &mut [u8],
    dd: &mut [u8],
) {
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut weights = [0.0f32; 32];
    sc.fill(0);
    let (d_bits, dmin_bits);
    match qw {
        None => {
            let (rmin, nstep) = if nmax == 15 { (-1.0, 20) } else { (-0.5, 15) };
            let mut max_scale = 0.0f32;
            let mut max_min = 0.0f32;
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let av_x = (sum_sq(xs) / 32.0).sqrt();
                for (w, &v) in weights.iter_mut().zip(xs) {
                    *w = av_x + v.abs();
                }
                let (s, m) = make_qkx2_quants(
                    nmax,
                    xs,
                    &weights,
                    &mut l[32 * j..32 * j + 32],
                    rmin,
                    0.1,
                    nstep,
                    false,
                );
                scales[j] = s;
                mins[j] = m;
                if s > max_scale {
                    max_scale = s;
                }
                if m > max_min {
                    max_min = m;
                }
            }
            let inv_scale = if max_scale > 0.0 {
                63.0 / max_scale
            } else {
                0.0
            };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            for j in 0..8 {
                // C: `uint8_t ls = nearest_int(...)` wraps, then MIN(63, ls).
                let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
                k4_put_scale_min(sc, j, ls, lm);
            }
            d_bits = fp32_to_fp16(max_scale / 63.0);
            dmin_bits = fp32_to_fp16(max_min / 63.0);
        }
        Some(qw) => {
            let mut sw = [0.0f32; 8];
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let q = &qw[32 * j..32 * j + 32];
                for k in 0..32 {
                    weights[k] = q[k] * (sigma2 + xs[k] * xs[k]).sqrt();
                }
                let mut s = 0.0f32;
                for &w in &weights {
                    s += w;
                }
                sw[j] = s;
                let (s, m) = make_qkx3_quants(
                    nmax,
                    xs,
                    &weights,
                    &mut l[32 * j..32 * j + 32],
                    -0.9,
                    0.05,
                    36,
                    false,
                );
                scales[j] = s;
                mins[j] = m;
            }
            let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
            let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
            for j in 0..8 {
                // Q5_K clamps to 63 here, Q4_K does not; make_qp_quants never exceeds 63.
                k4_put_scale_min(sc, j, ls[j].min(63), lm[j].min(63));
            }
            d_bits = fp32_to_fp16(d_block);
            dmin_bits = fp32_to_fp16(m_block);
        }
    }
    dd[0..2].copy_from_slice(&d_bits.to_le_bytes());
    dd[2..4].copy_from_slice(&dmin_bits.to_le_bytes());
    let df = fp16_to_fp32(d_bits);
    let mf = fp16_to_fp32(dmin_bits);
    for j in 0..8 {
        let (s, m) = k4_get_scale_min(sc, j);
        let d = df * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = mf * m as f32;
        for k in 0..32 {
            let q = nearest_int((x[32 * j + k] + dm) / d).clamp(0, nmax);
            l[32 * j + k] = q as u8;
        }
    }
}

#[inline(always)]
fn q4_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let (dd, rest) = y.split_at_mut(4);
    let (sc, qs) = rest.split_at_mut(12);
    k45_scales(x, qw, 15, &mut l, sc, dd);
    for (lc, q) in l.chunks_exact(64).zip(qs.chunks_exact_mut(32)) {
        for k in 0..32 {
            q[k] = lc[k] | (lc[k + 32] << 4);
        }
    }
}

#[inline(always)]
fn q5_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let (dd, rest) = y.split_at_mut(4);
    let (sc, rest) = rest.split_at_mut(12);
    let (qh, ql) = rest.split_at_mut(32);
    k45_scales(x, qw, 31, &mut l, sc, dd);
    qh.fill(0);
    for (n, (lc, q)) in l.chunks_exact(64).zip(ql.chunks_exact_mut(32)).enumerate() {
        let m1 = 1u8 << (2 * n);
        let m2 = 2u8 << (2 * n);
        for k in 0..32 {
            let mut l1 = lc[k];
            if l1 > 15 {
                l1 -= 16;
                qh[k] |= m1;
            }
            let mut l2 = lc[k + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[k] |= m2;
            }
            q[k] = l1 | (l2 << 4);
        }
    }
}

#[inline(always)]
fn q6_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..16 {
        let s = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut l[16 * ib..16 * ib + 16],
            qw.map(|q| &q[16 * ib..16 * ib + 16]),
        );
        scales[ib] = s;
        let a = s.abs();
        if a > max_abs_scale {
            max_abs_scale = a;
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let (ql, rest) = y.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(16);
    let iscale = -128.0f32 / max_scale;
    let d_bits = fp32_to_fp16(1.0 / iscale);
    dd.copy_from_slice(&d_bits.to_le_bytes());
    for ib in 0..16 {
        // C: `int8_t scales[ib] = MIN(127, nearest_int(...))` (truncating store).
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let df = fp16_to_fp32(d_bits);
    for j in 0..16 {
        let d = df * sc[j] as i8 as f32;
        if d == 0.0 {
            continue;
        }
        for k in 0..16 {
            let q = nearest_int(x[16 * j + k] / d).clamp(-32, 31);
            l[16 * j + k] = (q + 32) as u8;
        }
    }
    for ((lc, ql), qh) in l
        .chunks_exact(128)
        .zip(ql.chunks_exact_mut(64))
        .zip(qh.chunks_exact_mut(32))
    {
        for k in 0..32 {
            let (a, b, c, d) = (lc[k], lc[k + 32], lc[k + 64], lc[k + 96]);
            ql[k] = (a & 0xF) | ((c & 0xF) << 4);
            ql[k + 32] = (b & 0xF) | ((d & 0xF) << 4);
            qh[k] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization: ggml's `dequantize_row_*` for this family (helpers in `bytes.rs`).

/// Dequantize whole blocks of `ty`, a type of this family.
pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::Q2_K => dequant::q2_k(src, dst),
        GgmlType::Q3_K => dequant::q3_k(src, dst),
        GgmlType::Q4_K => dequant::q4_k(src, dst),
        GgmlType::Q5_K => dequant::q5_k(src, dst),
        GgmlType::Q6_K => dequant::q6_k(src, dst),
        GgmlType::Q8_K => dequant::q8_k(src, dst),
        _ => unreachable!("{ty} is not a type of this family (see the types table)"),
    }
}

mod dequant {
    use super::super::bytes::*;

    // K-quants: 256-element super-blocks split into sub-blocks with their own small scales.

    /// Q2_K: 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit codes, f16 d,
    /// f16 dmin. Each 32-byte half of `qs` yields 128 values: 4 shifts of 32.
    /// x = (d * sc) * q - (dmin * m) per 16 values.
    pub(super) fn q2_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 84, dst, QK_K) {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for (i, y) in y.iter_mut().enumerate() {
                let (half, shift, l) = (i / 128, i / 32 % 4, i % 32);
                let sc = scales[i / 16];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let q = qs[half * 32 + l] >> (2 * shift) & 3;
                *y = dl * q as f32 - ml;
            }
        }
    }

    /// Q3_K: 32 bytes of high bits (`hmask`), 64 bytes of low 2 bits, 12 bytes of packed 6-bit
    /// scales, f16 d. A clear high bit means "subtract 4". x = (d * (sc - 32)) * q per 16 values.
    pub(super) fn q3_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 110, dst, QK_K) {
            let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            let d = f16_at(b, 108);
            // Scale i: low 4 bits from byte i % 8 (nibble i / 8), high 2 bits from byte
            // 8 + i % 4 (bit pair i / 4).
            let scales: [f32; 16] = std::array::from_fn(|i| {
                let lo = sc[i % 8] >> (4 * (i / 8)) & 0x0F;
                let hi = sc[8 + i % 4] >> (2 * (i / 4)) & 0x03;
                ((lo | hi << 4) as i32 - 32) as f32
            });
            for (i, y) in y.iter_mut().enumerate() {
                let (half, shift, l) = (i / 128, i / 32 % 4, i % 32);
                let low = (qs[half * 32 + l] >> (2 * shift) & 3) as i32;
                let high = hmask[l] >> (i / 32) & 1;
                let q = low - if high == 0 { 4 } else { 0 };
                *y = d * scales[i / 16] * q as f32;
            }
        }
    }

    /// The 6-bit scale and min of each of the 8 sub-blocks of Q4_K / Q5_K, from 12 packed bytes:
    /// sub-blocks 0..4 keep theirs in the low 6 bits of bytes 0..8, sub-blocks 4..8 split theirs
    /// between the nibbles of bytes 8..12 and the top 2 bits of bytes 0..8.
    pub(super) fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
        let mut sc = [0; 8];
        let mut m = [0; 8];
        for j in 0..4 {
            sc[j] = s[j] & 0x3F;
            m[j] = s[j + 4] & 0x3F;
            sc[j + 4] = (s[j + 8] & 0x0F) | (s[j] >> 2 & 0x30);
            m[j + 4] = (s[j + 8] >> 4) | (s[j + 4] >> 2 & 0x30);
        }
        (sc, m)
    }

    /// Q4_K: f16 d, f16 dmin, 12 scale bytes, 128 bytes of nibbles (32 bytes per pair of
    /// sub-blocks: low nibbles first). x = (d * sc) * q - (dmin * m) per 32 values.
    pub(super) fn q4_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 144, dst, QK_K) {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, m) = k_scale_min(&b[4..16]);
            let qs = &b[16..144];
            for (s, y) in y.chunks_exact_mut(32).enumerate() {
                let dl = d * sc[s] as f32;
                let ml = dmin * m[s] as f32;
                let q = &qs[s / 2 * 32..][..32];
                for (y, &q) in y.iter_mut().zip(q) {
                    *y = dl * (q >> (4 * (s % 2)) & 0x0F) as f32 - ml;
                }
            }
        }
    }

    /// Q5_K: Q4_K plus 32 bytes of fifth bits (bit s of byte l for sub-block s, element l).
    pub(super) fn q5_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 176, dst, QK_K) {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, m) = k_scale_min(&b[4..16]);
            let (qh, qs) = (&b[16..48], &b[48..176]);
            for (s, y) in y.chunks_exact_mut(32).enumerate() {
                let dl = d * sc[s] as f32;
                let ml = dmin * m[s] as f32;
                let ql = &qs[s / 2 * 32..][..32];
                for (l, y) in y.iter_mut().enumerate() {
                    let q = (ql[l] >> (4 * (s % 2)) & 0x0F) | (qh[l] >> s & 1) << 4;
                    *y = dl * q as f32 - ml;
                }
            }
        }
    }

    /// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2 bits, 16 i8 scales, f16 d.
    /// Each 128-value half uses 64 `ql` bytes (low nibbles, then high nibbles) and 32 `qh` bytes
    /// (4 bit pairs). x = (d * sc) * (q - 32) per 16 values.
    pub(super) fn q6_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 210, dst, QK_K) {
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for (i, y) in y.iter_mut().enumerate() {
                let (half, r) = (i / 128, i % 128);
                let lo = ql[half * 64 + r % 64] >> (4 * (r / 64)) & 0x0F;
                let hi = qh[half * 32 + r % 32] >> (2 * (r / 32)) & 0x03;
                let q = (lo | hi << 4) as i32 - 32;
                *y = d * scales[i / 16] as i8 as f32 * q as f32;
            }
        }
    }

    /// Q8_K: f32 d, 256 i8, 16 i16 block sums (only used by dot products); x = d * q.
    /// gguf-py has no Q8_K; this is ggml's `dequantize_row_q8_K`.
    pub(super) fn q8_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 292, dst, QK_K) {
            let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            for (y, &q) in y.iter_mut().zip(&b[4..260]) {
                *y = d * q as i8 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.5, -2),
            (0.49999997, 0),
            (3.7, 4),
            (-3.7, -4),
            (4194303.0, 4194303),
            (-4194303.0, -4194303),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
    }
}

/// The libgguf oracle check, run by hand (see `oracle_dump`). The speed benchmark that was here
/// is `examples/bench-kernels.rs`.
#[cfg(test)]
mod slow {
    use super::*;

    /// Compares against raw dumps written by `scripts/kquant-oracle-dump.py` (libgguf) in
    /// `SMELT_KQ_ORACLE=dir`: `x.f32`,
    /// `w.f32`, `meta.txt` (`rows cols`) and `<TYPE>_<plain|imatrix>.bin`.
    #[test]
    #[ignore = "needs SMELT_KQ_ORACLE, dumps made by scripts/kquant-oracle-dump.py"]
    fn oracle_dump() {
        let Ok(dir) = std::env::var("SMELT_KQ_ORACLE") else {
            eprintln!("SMELT_KQ_ORACLE not set, skipping");
            return;
        };
        let read_f32 = |p: &str| -> Vec<f32> {
            std::fs::read(format!("{dir}/{p}"))
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        };
        let x = read_f32("x.f32");
        let w = read_f32("w.f32");
        let meta = std::fs::read_to_string(format!("{dir}/meta.txt")).unwrap();
        let cols: usize = meta.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut bad = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(stem) = name.strip_suffix(".bin") else {
                continue;
            };
            // type names contain '_' too: the mode follows the last one
            let i = stem.rfind('_').unwrap();
            let (tyname, mode) = (&stem[..i], &stem[i + 1..]);
            let ty: GgmlType = tyname.parse().unwrap();
            let want = std::fs::read(format!("{dir}/{name}")).unwrap();
            let mut got = vec![0u8; want.len()];
            let wi = (mode == "imatrix").then_some(w.as_slice());
            super::super::quantize_rows(ty, &x, cols, &mut got, wi).unwrap();
            let bb = ty.type_size();
            let nbad = got
                .chunks_exact(bb)
                .zip(want.chunks_exact(bb))
                .filter(|(a, b)| a != b)
                .count();
            println!(
                "{ty:5} {mode:8}: {nbad} of {} blocks differ",
                got.len() / bb
            );
            bad += nbad;
        }
        assert_eq!(bad, 0);
    }
}
