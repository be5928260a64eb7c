//! Dequantization of every ggml type to f32, block by block (ggml's `dequantize_row_*`).
//!
//! Results are bit-identical to the PyPI `gguf` package's `gguf.quants.dequantize`: every
//! product and sum is done in f32, one rounding per operation, in the order gguf-py (numpy)
//! evaluates it, e.g. Q4_1 is `(d * q) + m` and IQ2_XXS's scale is `(d * (0.5 + s)) * 0.25`.
//! Rust never fuses `a * b + c` into an FMA on its own, so writing the same expression is enough.
//! Block layouts follow ggml's `ggml-common.h`; `src` and `dst` hold whole blocks (the caller
//! checked), so each kernel simply walks `chunks_exact` of both.

use super::grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
    KVALUES_MXFP4,
};
use super::{float, QuantError, KVALUES_IQ4NL};
use crate::gguf::GgmlType;
use half::f16;

/// Elements per K-quant / IQ super-block.
const QK_K: usize = 256;

pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64 => {
            return float::dequantize_row(ty, src, dst)
        }
        Q4_0 => q4_0,
        Q4_1 => q4_1,
        Q5_0 => q5_0,
        Q5_1 => q5_1,
        Q8_0 => q8_0,
        Q8_1 => q8_1,
        Q2_K => q2_k,
        Q3_K => q3_k,
        Q4_K => q4_k,
        Q5_K => q5_k,
        Q6_K => q6_k,
        Q8_K => q8_k,
        IQ2_XXS => iq2_xxs,
        IQ2_XS => iq2_xs,
        IQ2_S => iq2_s,
        IQ3_XXS => iq3_xxs,
        IQ3_S => iq3_s,
        IQ1_S => iq1_s,
        IQ1_M => iq1_m,
        IQ4_NL => iq4_nl,
        IQ4_XS => iq4_xs,
        TQ1_0 => tq1_0,
        TQ2_0 => tq2_0,
        MXFP4 => mxfp4,
    };
    debug_assert_eq!(src.len() / ty.type_size(), dst.len() / ty.block_size());
    kernel(src, dst);
    Ok(())
}

/// Pairs each block of `src` (`bytes` long) with its `n` outputs in `dst`.
fn blocks<'a>(
    src: &'a [u8],
    bytes: usize,
    dst: &'a mut [f32],
    n: usize,
) -> impl Iterator<Item = (&'a [u8], &'a mut [f32])> {
    src.chunks_exact(bytes).zip(dst.chunks_exact_mut(n))
}

/// The little-endian f16 at `b[at..at + 2]`, widened to f32.
#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline]
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `x`, negated when bit `j` of `signs` is set (exactly `x * -1.0`).
#[inline]
fn signed(x: f32, signs: u8, j: usize) -> f32 {
    if signs >> j & 1 != 0 {
        -x
    } else {
        x
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy 32-element blocks. The 16 `qs` bytes hold element j in the low nibble and element
// j + 16 in the high nibble.

/// Q4_0: f16 d, 16 bytes of nibbles; x = d * (q - 8).
fn q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 18, dst, 32) {
        let d = f16_at(b, 0);
        for (j, &q) in b[2..18].iter().enumerate() {
            y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
            y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1: f16 d, f16 m, 16 bytes of nibbles; x = d * q + m.
fn q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 20, dst, 32) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (j, &q) in b[4..20].iter().enumerate() {
            y[j] = d * (q & 0x0F) as f32 + m;
            y[j + 16] = d * (q >> 4) as f32 + m;
        }
    }
}

/// Q5_0: f16 d, u32 of fifth bits (bit i for element i), nibbles; x = d * (q - 16).
fn q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 22, dst, 32) {
        let d = f16_at(b, 0);
        let qh = u32_at(b, 2);
        for (j, &q) in b[6..22].iter().enumerate() {
            let lo = (q & 0x0F) as u32 | (qh >> j & 1) << 4;
            let hi = (q >> 4) as u32 | (qh >> (j + 16) & 1) << 4;
            y[j] = d * (lo as i32 - 16) as f32;
            y[j + 16] = d * (hi as i32 - 16) as f32;
        }
    }
}

/// Q5_1: f16 d, f16 m, u32 of fifth bits, nibbles; x = d * q + m.
fn q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 24, dst, 32) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let qh = u32_at(b, 4);
        for (j, &q) in b[8..24].iter().enumerate() {
            let lo = (q & 0x0F) as u32 | (qh >> j & 1) << 4;
            let hi = (q >> 4) as u32 | (qh >> (j + 16) & 1) << 4;
            y[j] = d * lo as f32 + m;
            y[j + 16] = d * hi as f32 + m;
        }
    }
}

/// Q8_0: f16 d, 32 i8; x = d * q.
fn q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 34, dst, 32) {
        let d = f16_at(b, 0);
        for (y, &q) in y.iter_mut().zip(&b[2..34]) {
            *y = q as i8 as f32 * d;
        }
    }
}

/// Q8_1: f16 d, f16 s (= d * sum(q), only used by dot products), 32 i8; x = d * q.
/// gguf-py has no Q8_1; ggml defines the values the same way as Q8_0's.
fn q8_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 36, dst, 32) {
        let d = f16_at(b, 0);
        for (y, &q) in y.iter_mut().zip(&b[4..36]) {
            *y = q as i8 as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants: 256-element super-blocks split into sub-blocks with their own small scales.

/// Q2_K: 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit codes, f16 d,
/// f16 dmin. Each 32-byte half of `qs` yields 128 values: 4 shifts of 32.
/// x = (d * sc) * q - (dmin * m) per 16 values.
fn q2_k(src: &[u8], dst: &mut [f32]) {
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
fn q3_k(src: &[u8], dst: &mut [f32]) {
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
fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
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
fn q4_k(src: &[u8], dst: &mut [f32]) {
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
fn q5_k(src: &[u8], dst: &mut [f32]) {
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
fn q6_k(src: &[u8], dst: &mut [f32]) {
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
fn q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 292, dst, QK_K) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (y, &q) in y.iter_mut().zip(&b[4..260]) {
            *y = d * q as i8 as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IQ2 / IQ3: each group of 8 (IQ2) or 4 (IQ3) values is a point of a fixed grid of positive
// magnitudes, with signs stored separately. `ksigns` expands 7 stored sign bits to 8.

/// The 8 magnitudes of a u64 grid point.
#[inline]
fn grid8(point: u64) -> [u8; 8] {
    point.to_le_bytes()
}

/// IQ2_XXS: f16 d, then per 32 values two u32: four 8-bit grid indices, and four 7-bit sign
/// indices plus a 4-bit scale in the top bits. x = ((d * (0.5 + s)) * 0.25) * g * sign.
fn iq2_xxs(src: &[u8], dst: &mut [f32]) {
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
fn iq2_scale(d: f32, scales: &[u8], i: usize) -> f32 {
    let s = scales[i / 2] >> (4 * (i % 2)) & 0x0F;
    d * (0.5 + s as f32) * 0.25
}

/// IQ2_XS: f16 d, 32 u16 (9-bit grid index, 7-bit sign index), 8 bytes of 4-bit scales.
fn iq2_xs(src: &[u8], dst: &mut [f32]) {
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
fn iq2_s(src: &[u8], dst: &mut [f32]) {
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

/// IQ3_XXS: f16 d, 64 grid indices (4 values each), then per 32 values a u32 of four 7-bit
/// sign indices and a 4-bit scale. x = ((d * (0.5 + s)) * 0.5) * g * sign.
fn iq3_xxs(src: &[u8], dst: &mut [f32]) {
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
fn iq3_s(src: &[u8], dst: &mut [f32]) {
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

// ---------------------------------------------------------------------------------------------
// IQ1: grid points of {-1, 0, 1} shifted by ±1/8.

/// ggml's IQ1S_DELTA / IQ1M_DELTA.
const IQ1_DELTA: f32 = 0.125;

/// The 8 values of IQ1 grid point `idx`.
#[inline]
fn grid_iq1(idx: usize) -> [i8; 8] {
    IQ1S_GRID[idx].to_le_bytes().map(|v| v as i8)
}

/// IQ1_S: f16 d, 32 low bytes of 11-bit grid indices, 8 u16: four 3-bit index tops, a 3-bit
/// scale and the delta's sign, per 32 values. x = (d * (2s + 1)) * (g + delta).
fn iq1_s(src: &[u8], dst: &mut [f32]) {
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
fn iq1_m(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 56, dst, QK_K) {
        let (qs, qh) = (&b[0..32], &b[32..48]);
        let sc: [u16; 4] = std::array::from_fn(|i| u16_at(b, 48 + 2 * i));
        let d_bits = sc[0] >> 12 | (sc[1] >> 8 & 0x00F0) | (sc[2] >> 4 & 0x0F00) | (sc[3] & 0xF000);
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

// ---------------------------------------------------------------------------------------------
// Non-uniform 4-bit codebooks.

/// IQ4_NL: Q4_0's layout with the codes looked up in `KVALUES_IQ4NL`; x = d * kv[q].
fn iq4_nl(src: &[u8], dst: &mut [f32]) {
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
fn iq4_xs(src: &[u8], dst: &mut [f32]) {
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

/// ggml's `ggml_e8m0_to_fp32_half`: 2^(e - 128), i.e. half the E8M0 scale, built from bits
/// (subnormal for e < 2).
#[inline]
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// MXFP4: one E8M0 exponent byte, 16 bytes of E2M1 nibbles (IQ4_NL order).
/// x = half-scale * doubled E2M1 value.
fn mxfp4(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 17, dst, 32) {
        let d = e8m0_half(b[0]);
        for (j, &q) in b[1..17].iter().enumerate() {
            y[j] = d * KVALUES_MXFP4[(q & 0x0F) as usize] as f32;
            y[j + 16] = d * KVALUES_MXFP4[(q >> 4) as usize] as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ternary types: values in {-1, 0, 1} times an f16 d.

/// TQ1_0: 48 bytes of five base-3 digits each (stored as a fixed-point fraction of 3^5),
/// 4 bytes of four digits each, f16 d. Digit n of byte m is `((m * 3^n mod 256) * 3) >> 8`;
/// bytes 0..32 give 5 runs of 32 values, bytes 32..48 5 runs of 16, bytes 48..52 4 runs of 4.
fn tq1_0(src: &[u8], dst: &mut [f32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    fn trit(byte: u8, n: usize) -> f32 {
        let v = byte.wrapping_mul(POW3[n]) as u16;
        (((v * 3) >> 8) as i32 - 1) as f32
    }
    for (b, y) in blocks(src, 54, dst, QK_K) {
        let d = f16_at(b, 52);
        let (y0, rest) = y.split_at_mut(160);
        let (y1, y2) = rest.split_at_mut(80);
        for (bytes, out, digits) in [(&b[0..32], y0, 5), (&b[32..48], y1, 5), (&b[48..52], y2, 4)] {
            let w = bytes.len();
            for n in 0..digits {
                for (m, &q) in bytes.iter().enumerate() {
                    out[n * w + m] = d * trit(q, n);
                }
            }
        }
    }
}

/// TQ2_0: 64 bytes of 2-bit codes (4 runs of 32 values per 32 bytes), f16 d; x = d * (q - 1).
fn tq2_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks(src, 66, dst, QK_K) {
        let d = f16_at(b, 64);
        for (i, y) in y.iter_mut().enumerate() {
            let q = b[i / 128 * 32 + i % 32] >> (2 * (i / 32 % 4)) & 3;
            *y = d * (q as i32 - 1) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;
    use sha2::{Digest, Sha256};

    fn hex_decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn sha256_hex(values: &[f32]) -> String {
        let mut h = Sha256::new();
        for v in values {
            h.update(v.to_le_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn load_golden() -> Vec<serde_json::Value> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden/dequant.json");
        let text = std::fs::read_to_string(path).expect("read fixtures/golden/dequant.json");
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["types"].as_array().unwrap().clone()
    }

    /// Bit-exact against `gguf.quants.dequantize` (gguf 0.19.0), or, for the types gguf-py
    /// cannot dequantize (Q8_1, Q8_K, F64, I8..I64; `oracle: "ggml-definition"`), against
    /// numpy evaluating ggml's definition. Regenerate with scripts/gen-golden-dequant.py.
    #[test]
    fn golden_bit_exact_for_every_type() {
        let golden = load_golden();
        let mut failures = Vec::new();
        for t in &golden {
            let name = t["name"].as_str().unwrap();
            let ty: GgmlType = name.parse().unwrap();
            let src = hex_decode(t["hex"].as_str().unwrap());
            let mut dst = vec![0f32; t["n_values"].as_u64().unwrap() as usize];
            if let Err(e) = quant::dequantize_row(ty, &src, &mut dst) {
                failures.push(format!("{name}: {e}"));
                continue;
            }
            let want: Vec<String> = t["first_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().to_string())
                .collect();
            let got: Vec<String> = dst[..want.len()]
                .iter()
                .map(|v| format!("{:08x}", v.to_bits()))
                .collect();
            if got != want {
                failures.push(format!(
                    "{name}: first values {:?}, want {:?} (bits {got:?} vs {want:?})",
                    &dst[..want.len()],
                    t["first"]
                ));
            } else if sha256_hex(&dst) != t["sha256"].as_str().unwrap() {
                failures.push(format!(
                    "{name}: SHA-256 of the output differs (samples match)"
                ));
            }
        }
        assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));

        // Every type smelt knows must have a golden entry.
        for ty in GgmlType::ALL {
            assert!(
                golden.iter().any(|t| t["name"] == ty.name()),
                "{ty} has no golden entry"
            );
        }
        // ...and gguf-py must be the oracle wherever it can dequantize the type.
        for t in &golden {
            let by_hand = ["Q8_1", "Q8_K", "F64", "I8", "I16", "I32", "I64"];
            let name = t["name"].as_str().unwrap();
            let want = if by_hand.contains(&name) {
                "ggml-definition"
            } else {
                "gguf-py"
            };
            assert_eq!(t["oracle"], want, "{name}");
        }
    }

    /// Q8_1 and Q8_K are not in gguf-py: check a block worked out by hand from ggml's
    /// definition (x = d * q; the sums are ignored).
    #[test]
    fn q8_1_and_q8_k_by_hand() {
        // Q8_1: d = 0.5 (f16 0x3800), s = garbage, q = 0, 1, -1, 127, -128, then zeros.
        let mut b = vec![0x00, 0x38, 0xAB, 0xCD];
        let mut q = [0i8; 32];
        q[..5].copy_from_slice(&[0, 1, -1, 127, -128]);
        b.extend(q.iter().map(|&v| v as u8));
        let mut y = [9f32; 32];
        quant::dequantize_row(GgmlType::Q8_1, &b, &mut y).unwrap();
        assert_eq!(&y[..5], &[0.0, 0.5, -0.5, 63.5, -64.0]);
        assert!(y[5..].iter().all(|&v| v == 0.0));

        // Q8_K: d = -0.25 (f32), q[i] = i - 128, bsums garbage.
        let mut b = (-0.25f32).to_le_bytes().to_vec();
        b.extend((0..256).map(|i: i32| (i - 128) as i8 as u8));
        b.extend([0x7F; 32]);
        let mut y = vec![0f32; 256];
        quant::dequantize_row(GgmlType::Q8_K, &b, &mut y).unwrap();
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 128.0) * -0.25, "Q8_K value {i}");
        }
    }

    /// Arbitrary bytes (random, all ones, all zeros, alternating) and arbitrary lengths never
    /// panic: whole blocks dequantize, anything else is an error.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for &ty in GgmlType::ALL {
            let (block, size) = (ty.block_size(), ty.type_size());
            for n_blocks in [0usize, 1, 2, 5] {
                for pattern in 0..4 {
                    let src: Vec<u8> = (0..n_blocks * size)
                        .map(|i| match pattern {
                            0 => next() as u8,
                            1 => 0xFF,
                            2 => 0x00,
                            _ => [0x55, 0xAA, 0x80, 0x7F][i % 4],
                        })
                        .collect();
                    let mut dst = vec![0f32; n_blocks * block];
                    quant::dequantize_row(ty, &src, &mut dst).unwrap();
                }
            }
            // Mismatched sizes are rejected, not indexed out of bounds.
            let src = vec![0u8; size * 2 + 1];
            let mut dst = vec![0f32; block * 2];
            assert!(quant::dequantize_row(ty, &src, &mut dst).is_err(), "{ty}");
            if block > 1 {
                let src = vec![0u8; size];
                let mut dst = vec![0f32; block + 1];
                assert!(quant::dequantize_row(ty, &src, &mut dst).is_err(), "{ty}");
            }
        }
    }
}
