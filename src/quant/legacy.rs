//! Legacy block quantizers Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: ggml's `quantize_row_*_ref`
//! (which the PyPI `gguf` package's numpy quantizers reproduce byte for byte).
//!
//! The scale is computed in f32 and quantization uses its f32 inverse; only the stored scale
//! is rounded to f16. Code values truncate toward zero after the +offset, as C's casts do.

use super::QuantError;
use crate::gguf::GgmlType;
use half::f16;

const QK: usize = 32;

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// Lane-wise folds over a 32-value block: eight independent lanes compile to vector
/// instructions, where one sequential accumulator cannot (float max/min are not reassociable).
#[inline(always)]
fn lanes(x: &[f32], init: f32, pick: impl Fn(f32, f32) -> f32, map: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    for c in x.chunks_exact(8) {
        for j in 0..8 {
            acc[j] = pick(map(c[j]), acc[j]);
        }
    }
    acc.iter().fold(init, |a, &b| pick(b, a))
}

/// ggml's scan `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`: the largest magnitude and
/// the first value that has it (0.0 for an all-zero block, as the scan's initial value).
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let amax = lanes(x, 0.0, |v, m| if v > m { v } else { m }, f32::abs);
    if amax == 0.0 {
        return (0.0, 0.0);
    }
    let max = *x
        .iter()
        .find(|v| v.abs() == amax)
        .expect("amax comes from x");
    (amax, max)
}

/// ggml's `if (v < min) min = v; if (v > max) max = v;` scan from (FLT_MAX, -FLT_MAX): the
/// extremes, each as its first occurrence (which fixes the sign of a zero extreme).
#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let min = lanes(x, f32::MAX, |v, m| if v < m { v } else { m }, |v| v);
    let max = lanes(x, -f32::MAX, |v, m| if v > m { v } else { m }, |v| v);
    let first = |t: f32| x.iter().copied().find(|&v| v == t).unwrap_or(t);
    (first(min), first(max))
}

/// C's `roundf` (halves away from zero) for |x| < 2^31, without a libm call: the truncation
/// and the remainder `x - trunc(x)` are exact, so the result is too.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let t = x as i32 as f32;
    let r = x - t;
    t + if r >= 0.5 {
        1.0
    } else if r <= -0.5 {
        -1.0
    } else {
        0.0
    }
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Pack the fifth bits of 32 codes into ggml's `qh` word: code j → bit j (first half) / j+16.
#[inline]
fn high_bits(codes: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        qh |= ((codes[j] as u32 & 0x10) >> 4) << j;
        qh |= ((codes[j + 16] as u32 & 0x10) >> 4) << (j + 16);
    }
    qh.to_le_bytes()
}

/// Nibbles: code j in the low half of byte j, code j+16 in the high half.
#[inline]
fn pack_nibbles(codes: &[u8; QK], out: &mut [u8]) {
    for j in 0..QK / 2 {
        out[j] = (codes[j] & 0x0f) | ((codes[j + 16] & 0x0f) << 4);
    }
}

/// Symmetric blocks (Q4_0, Q5_0): d = max / -(2^(bits-1)), codes = trunc(x/d + offset + 0.5).
fn symmetric_codes(x: &[f32], levels: f32, top: u8, codes: &mut [u8; QK]) -> f32 {
    let (_, max) = signed_absmax(x);
    let d = max / -levels;
    let id = inverse(d);
    // Through i32, not i8: the same value for every in-range code, and it vectorizes.
    let offset = levels + 0.5;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = ((v * id + offset) as i32).min(top as i32) as u8;
    }
    d
}

/// Asymmetric blocks (Q4_1, Q5_1): d = (max - min) / top, codes = trunc((x - min)/d + 0.5).
fn asymmetric_codes(x: &[f32], top: u8, clamp: bool, codes: &mut [u8; QK]) -> (f32, f32) {
    let (min, max) = min_max(x);
    let d = (max - min) / top as f32;
    let id = inverse(d);
    let top = if clamp { top as i32 } else { i32::MAX };
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (((v - min) * id + 0.5) as i32).min(top) as u8;
    }
    (d, min)
}

pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let bs = ty.type_size();
    let mut codes = [0u8; QK];
    for (x, out) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(bs)) {
        match ty {
            GgmlType::Q8_0 => {
                let (amax, _) = signed_absmax(x);
                let d = amax / 127.0;
                let id = inverse(d);
                out[..2].copy_from_slice(&f16_bytes(d));
                for (q, &v) in out[2..].iter_mut().zip(x) {
                    *q = round_half_away(v * id) as i32 as u8;
                }
            }
            GgmlType::Q4_0 => {
                let d = symmetric_codes(x, 8.0, 15, &mut codes);
                out[..2].copy_from_slice(&f16_bytes(d));
                pack_nibbles(&codes, &mut out[2..]);
            }
            GgmlType::Q4_1 => {
                let (d, min) = asymmetric_codes(x, 15, true, &mut codes);
                out[..2].copy_from_slice(&f16_bytes(d));
                out[2..4].copy_from_slice(&f16_bytes(min));
                pack_nibbles(&codes, &mut out[4..]);
            }
            GgmlType::Q5_0 => {
                let d = symmetric_codes(x, 16.0, 31, &mut codes);
                out[..2].copy_from_slice(&f16_bytes(d));
                out[2..6].copy_from_slice(&high_bits(&codes));
                pack_nibbles(&codes, &mut out[6..]);
            }
            GgmlType::Q5_1 => {
                // ggml does not clamp Q5_1 codes: (x - min)/d + 0.5 never exceeds 31.5.
                let (d, min) = asymmetric_codes(x, 31, false, &mut codes);
                out[..2].copy_from_slice(&f16_bytes(d));
                out[2..4].copy_from_slice(&f16_bytes(min));
                out[4..8].copy_from_slice(&high_bits(&codes));
                pack_nibbles(&codes, &mut out[8..]);
            }
            _ => {
                return Err(QuantError::Unsupported {
                    ty,
                    op: "legacy quantize",
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_half_away_matches_roundf() {
        let mut x = -130.0f32;
        while x < 130.0 {
            let h = x + 0.5;
            let (below, above) = (h - h.abs() * 1e-7, h + h.abs() * 1e-7);
            for v in [x, h, below, above, -h, -below] {
                assert_eq!(super::round_half_away(v), v.round(), "{v}");
            }
            x += 0.25;
        }
    }
}
