//! Legacy block quantizers Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: ggml's `quantize_row_*_ref`
//! (which the PyPI `gguf` package's numpy quantizers reproduce byte for byte).
//!
//! The scale is computed in f32 and quantization uses its f32 inverse; only the stored scale
//! is rounded to f16. Code values truncate toward zero after the +offset, as C's casts do.

use super::QuantError;
use crate::gguf::GgmlType;
use half::f16;

const QK: usize = 32;
const _: () = assert!(QK == GgmlType::Q8_0.block_size() && QK == GgmlType::Q4_1.block_size());

#[inline(always)]
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

/// The largest magnitude of a block (0.0 for an all-zero block).
#[inline(always)]
fn absmax(x: &[f32]) -> f32 {
    lanes(x, 0.0, |v, m| if v > m { v } else { m }, f32::abs)
}

/// Bit j set where `pred(x[j])` holds (a branch-free scan that vectorizes; blocks have 32
/// values).
#[inline(always)]
fn mask(x: &[f32], pred: impl Fn(f32) -> bool) -> u32 {
    let mut m = 0u32;
    for (j, &v) in x.iter().enumerate().take(32) {
        m |= (pred(v) as u32) << j;
    }
    m
}

/// ggml's scan `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`: the largest magnitude and
/// the first value that has it (0.0 for an all-zero block, as the scan's initial value).
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let amax = absmax(x);
    if amax == 0.0 {
        return (0.0, 0.0);
    }
    // amax is the magnitude of some x[j] (the folds only ever pick an input), so the mask
    // has a bit set; its lowest is the scan's first hit.
    let hits = mask(x, |v| v.abs() == amax);
    (amax, x[hits.trailing_zeros() as usize])
}

/// ggml's `if (v < min) min = v; if (v > max) max = v;` scan from (FLT_MAX, -FLT_MAX): the
/// extremes, each as its first occurrence (which fixes the sign of a zero extreme).
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let min = lanes(x, f32::MAX, |v, m| if v < m { v } else { m }, |v| v);
    let max = lanes(x, -f32::MAX, |v, m| if v > m { v } else { m }, |v| v);
    // Nonzero values that compare equal have the same bits, so only a zero extreme (+0.0 or
    // -0.0, which compare equal) needs the first occurrence to fix its sign.
    let first = |t: f32| {
        if t != 0.0 {
            return t;
        }
        let hits = mask(x, |v| v == t);
        if hits == 0 {
            t
        } else {
            x[hits.trailing_zeros() as usize]
        }
    };
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

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Pack the fifth bits of 32 codes into ggml's `qh` word: code j → bit j (first half) / j+16.
#[inline(always)]
fn high_bits(codes: &[u8; QK]) -> [u8; 4] {
    #[cfg(target_arch = "x86_64")]
    if super::use_avx2() {
        // SAFETY: the CPU has AVX2, the only requirement of `avx2::high_bits`.
        return unsafe { avx2::high_bits(codes) };
    }
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        qh |= ((codes[j] as u32 & 0x10) >> 4) << j;
        qh |= ((codes[j + 16] as u32 & 0x10) >> 4) << (j + 16);
    }
    qh.to_le_bytes()
}

/// Nibbles: code j in the low half of byte j, code j+16 in the high half.
#[inline(always)]
fn pack_nibbles(codes: &[u8; QK], out: &mut [u8]) {
    for j in 0..QK / 2 {
        out[j] = (codes[j] & 0x0f) | ((codes[j + 16] & 0x0f) << 4);
    }
}

/// Symmetric blocks (Q4_0, Q5_0): d = max / -(2^(bits-1)), codes = trunc(x/d + offset + 0.5).
#[inline(always)]
fn symmetric_codes(x: &[f32], levels: f32, top: u8, codes: &mut [u8; QK]) -> f32 {
    let (_, max) = signed_absmax(x);
    let d = max / -levels;
    let id = inverse(d);
    // Through i32, not i8: the same value for every in-range code, and it vectorizes.
    let offset = levels + 0.5;
    // `v - 0.0` is `v`, bit for bit (signed zeros and NaNs included).
    if !trunc_codes_fast(x, 0.0, id, offset, top as i32, codes) {
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = ((v * id + offset) as i32).min(top as i32) as u8;
        }
    }
    d
}

/// Asymmetric blocks (Q4_1, Q5_1): d = (max - min) / top, codes = trunc((x - min)/d + 0.5).
#[inline(always)]
fn asymmetric_codes(x: &[f32], top: u8, clamp: bool, codes: &mut [u8; QK]) -> (f32, f32) {
    let (min, max) = min_max(x);
    let d = (max - min) / top as f32;
    let id = inverse(d);
    let top = if clamp { top as i32 } else { i32::MAX };
    if !trunc_codes_fast(x, min, id, 0.5, top, codes) {
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = (((v - min) * id + 0.5) as i32).min(top) as u8;
        }
    }
    (d, min)
}

/// `codes[j] = (((x[j] - sub) * id + add) as i32).min(top) as u8` with AVX2 where the CPU has
/// it; false (nothing written) where it does not or the fast path cannot prove itself exact.
#[inline(always)]
fn trunc_codes_fast(
    x: &[f32],
    sub: f32,
    id: f32,
    add: f32,
    top: i32,
    codes: &mut [u8; QK],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Ok(x), true) = (<&[f32; QK]>::try_from(x), super::use_avx2()) {
        // SAFETY: the CPU has AVX2, the only requirement of `avx2::trunc_codes`.
        return unsafe { avx2::trunc_codes(x, sub, id, add, top, codes) };
    }
    let _ = (x, sub, id, add, top, codes);
    false
}

/// Q8_0's `round_half_away(x[j] * id) as i32 as u8` with AVX2 where the CPU has it; false
/// (nothing written) where it does not or the fast path cannot prove itself exact.
#[inline(always)]
fn q8_codes_fast(x: &[f32], id: f32, out: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Ok(x), Ok(out), true) = (
        <&[f32; QK]>::try_from(x),
        <&mut [u8; QK]>::try_from(&mut *out),
        super::use_avx2(),
    ) {
        // SAFETY: the CPU has AVX2, the only requirement of `avx2::q8_codes`.
        return unsafe { avx2::q8_codes(x, id, out) };
    }
    let _ = (x, id, out);
    false
}

/// The float-to-code loops with 8 lanes per instruction. LLVM does not vectorize them itself
/// because Rust's saturating `as i32` needs NaN and overflow fix-ups per lane. Here every
/// lane is converted with `cvttps2dq` (truncation toward zero, the same as `as i32` for any
/// value that is not NaN and has magnitude below 2^31) and the whole block is checked to be
/// in that range; a block that is not returns false and takes the portable loop. The f32
/// arithmetic before the conversion is the same IEEE operations in the same order (no FMA),
/// so the codes are the same.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::QK;
    use std::arch::x86_64::*;

    /// 2^31: below it (and not NaN) `cvttps2dq` truncates exactly as `as i32` does.
    const LIMIT: f32 = 2_147_483_648.0;

    /// All-ones lanes where `|y| < 2^31` (false for NaN).
    #[inline(always)]
    unsafe fn in_range(y: __m256) -> __m256 {
        let abs = _mm256_and_ps(y, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)));
        _mm256_cmp_ps::<_CMP_LT_OQ>(abs, _mm256_set1_ps(LIMIT))
    }

    /// `super::high_bits` (bit k of the word is bit 4 of code k): shifting each 16-bit lane
    /// left by 3 moves bit 4 of every byte to that byte's top bit (the bits carried from a
    /// low byte land in the high byte's bits 0..2), and `movemask` gathers the 32 top bits.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn high_bits(codes: &[u8; QK]) -> [u8; 4] {
        // SAFETY: an unaligned load of exactly the 32 bytes of `codes`.
        let v = _mm256_loadu_si256(codes.as_ptr().cast());
        (_mm256_movemask_epi8(_mm256_slli_epi16::<3>(v)) as u32).to_le_bytes()
    }

    /// See `super::trunc_codes_fast`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn trunc_codes(
        x: &[f32; QK],
        sub: f32,
        id: f32,
        add: f32,
        top: i32,
        codes: &mut [u8; QK],
    ) -> bool {
        let (subv, idv, addv, topv) = (
            _mm256_set1_ps(sub),
            _mm256_set1_ps(id),
            _mm256_set1_ps(add),
            _mm256_set1_epi32(top),
        );
        let mut ok = 0xffi32;
        let mut q = [0i32; QK];
        for k in 0..QK / 8 {
            // SAFETY: 8 f32 / i32 at offset 8k < 32 of 32-element arrays.
            let v = _mm256_loadu_ps(x.as_ptr().add(8 * k));
            // (v - sub) * id + add
            let y = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, subv), idv), addv);
            ok &= _mm256_movemask_ps(in_range(y));
            let t = _mm256_min_epi32(_mm256_cvttps_epi32(y), topv);
            _mm256_storeu_si256(q.as_mut_ptr().add(8 * k).cast(), t);
        }
        if ok != 0xff {
            return false;
        }
        for (c, &v) in codes.iter_mut().zip(&q) {
            *c = v as u8;
        }
        true
    }

    /// See `super::q8_codes_fast`: `round_half_away(v * id) as i32 as u8`, where
    /// `round_half_away(y) = t + (1 if y - t >= 0.5, -1 if y - t <= -0.5, else 0)` with
    /// `t = y as i32 as f32`. In range, `t` is exact and so is `t ± 1` whenever it is taken
    /// (then |y| < 2^23), so adding ±1 to the truncated integer gives the same code.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn q8_codes(x: &[f32; QK], id: f32, out: &mut [u8; QK]) -> bool {
        let idv = _mm256_set1_ps(id);
        let (half, neg_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
        let mut ok = 0xffi32;
        let mut q = [0i32; QK];
        for k in 0..QK / 8 {
            // SAFETY: 8 f32 / i32 at offset 8k < 32 of 32-element arrays.
            let y = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * k)), idv);
            ok &= _mm256_movemask_ps(in_range(y));
            let ti = _mm256_cvttps_epi32(y);
            let r = _mm256_sub_ps(y, _mm256_cvtepi32_ps(ti));
            // Compare masks are -1 where true: subtracting `up` adds 1, adding `down` subtracts 1.
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(r, half));
            let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(r, neg_half));
            let t = _mm256_add_epi32(_mm256_sub_epi32(ti, up), down);
            _mm256_storeu_si256(q.as_mut_ptr().add(8 * k).cast(), t);
        }
        if ok != 0xff {
            return false;
        }
        for (c, &v) in out.iter_mut().zip(&q) {
            *c = v as u8;
        }
        true
    }
}

#[inline(always)]
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let bs = ty.type_size();
    let mut codes = [0u8; QK];
    for (x, out) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(bs)) {
        match ty {
            GgmlType::Q8_0 => {
                let amax = absmax(x);
                let d = amax / 127.0;
                let id = inverse(d);
                out[..2].copy_from_slice(&f16_bytes(d));
                if !q8_codes_fast(x, id, &mut out[2..]) {
                    for (q, &v) in out[2..].iter_mut().zip(x) {
                        *q = round_half_away(v * id) as i32 as u8;
                    }
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

// ---------------------------------------------------------------------------------------------
// Dequantization: ggml's `dequantize_row_*` for this family (helpers in `bytes.rs`).

/// Dequantize whole blocks of `ty`, a type of this family.
pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => dequant::q4_0(src, dst),
        GgmlType::Q4_1 => dequant::q4_1(src, dst),
        GgmlType::Q5_0 => dequant::q5_0(src, dst),
        GgmlType::Q5_1 => dequant::q5_1(src, dst),
        GgmlType::Q8_0 => dequant::q8_0(src, dst),
        GgmlType::Q8_1 => dequant::q8_1(src, dst),
        _ => unreachable!("{ty} is not a type of this family (see the types table)"),
    }
}

mod dequant {
    use super::super::bytes::*;

    // Legacy 32-element blocks. The 16 `qs` bytes hold element j in the low nibble and element
    // j + 16 in the high nibble.

    /// Q4_0: f16 d, 16 bytes of nibbles; x = d * (q - 8).
    pub(super) fn q4_0(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 18, dst, 32) {
            let d = f16_at(b, 0);
            for (j, &q) in b[2..18].iter().enumerate() {
                y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }
    }

    /// Q4_1: f16 d, f16 m, 16 bytes of nibbles; x = d * q + m.
    pub(super) fn q4_1(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 20, dst, 32) {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for (j, &q) in b[4..20].iter().enumerate() {
                y[j] = d * (q & 0x0F) as f32 + m;
                y[j + 16] = d * (q >> 4) as f32 + m;
            }
        }
    }

    /// Q5_0: f16 d, u32 of fifth bits (bit i for element i), nibbles; x = d * (q - 16).
    pub(super) fn q5_0(src: &[u8], dst: &mut [f32]) {
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
    pub(super) fn q5_1(src: &[u8], dst: &mut [f32]) {
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
    pub(super) fn q8_0(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 34, dst, 32) {
            let d = f16_at(b, 0);
            for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                *y = q as i8 as f32 * d;
            }
        }
    }

    /// Q8_1: f16 d, f16 s (= d * sum(q), only used by dot products), 32 i8; x = d * q.
    /// gguf-py has no Q8_1; ggml defines the values the same way as Q8_0's.
    pub(super) fn q8_1(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 36, dst, 32) {
            let d = f16_at(b, 0);
            for (y, &q) in y.iter_mut().zip(&b[4..36]) {
                *y = q as i8 as f32 * d;
            }
        }
    }
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
