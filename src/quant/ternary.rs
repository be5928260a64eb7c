//! Ternary TQ1_0 and TQ2_0 quantizers: ports of ggml's `quantize_row_tq1_0_ref` and
//! `quantize_row_tq2_0_ref` (what `quantize_tq1_0` / `quantize_tq2_0` call; both ignore
//! importance weights). Each 256-value block stores `d = max|x|` as f16 and every value as
//! one trit `round(x/d) + 1`.

use super::{check_sizes, QuantError};
use crate::gguf::GgmlType;
use half::f16;

const QK_K: usize = 256;
/// TQ1_0: 48 bytes of 5 trits, 4 bytes of 4 trits, f16 scale.
const TQ1_QS: usize = (QK_K - 4 * QK_K / 64) / 5;
const TQ1_QH: usize = QK_K / 64;
const TQ1_BYTES: usize = TQ1_QS + TQ1_QH + 2;
/// TQ2_0: 64 bytes of 4 two-bit values, f16 scale.
const TQ2_QS: usize = QK_K / 4;
const TQ2_BYTES: usize = TQ2_QS + 2;
// The block layout above, checked against the types table at compile time.
const _: () = assert!(
    TQ1_BYTES == GgmlType::TQ1_0.type_size()
        && TQ2_BYTES == GgmlType::TQ2_0.type_size()
        && QK_K == GgmlType::TQ1_0.block_size()
);

/// C's `lroundf(v) + 1` as ggml then uses it: only the low byte matters, since it is added to
/// a `uint8_t`. Rounds half away from zero; NaN and |v| >= 2³¹ give `i32::MIN + 1` (x86's
/// invalid-conversion result, whose low byte, like glibc's for those inputs, is 1).
#[inline(always)]
fn trit(v: f32) -> u8 {
    if v.is_nan() || v.abs() >= 2_147_483_648.0 {
        return 1;
    }
    let i = v as i32; // truncates toward zero
    let f = v - i as f32; // exact
    let r = i + (f >= 0.5) as i32 - (f <= -0.5) as i32;
    (r + 1) as u8
}

/// `max|x|` and its inverse (`0` when the block is all zeros), as ggml computes them.
#[inline(always)]
fn scale(x: &[f32]) -> (f32, f32) {
    let mut amax = 0f32;
    for &v in x {
        // C's MAX(a, b) is `a > b ? a : b`
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
    (amax, id)
}

/// Base-3 pack `n` trits taken with stride `stride` from `x`, then map to a byte so that
/// `byte * 3^k >> 8` recovers trit k (ggml's ceiling division by 243).
#[inline(always)]
fn pack_trits(x: &[f32], id: f32, n: usize, stride: usize, extra_shift: bool) -> u8 {
    let mut q = 0u8;
    for k in 0..n {
        q = q.wrapping_mul(3).wrapping_add(trit(x[k * stride] * id));
    }
    if extra_shift {
        q = q.wrapping_mul(3);
    }
    // ceiling division: (q * 256 + 242) / 243
    (u16::from(q) * 256).div_ceil(243) as u8
}

fn quantize_block_tq1(x: &[f32], out: &mut [u8]) {
    let (d, id) = scale(x);
    let (qs, rest) = out.split_at_mut(TQ1_QS);
    let (qh, dh) = rest.split_at_mut(TQ1_QH);
    // 32 bytes of 5 values, strided by 32, from x[0..160]
    for (m, q) in qs[..32].iter_mut().enumerate() {
        *q = pack_trits(&x[m..], id, 5, 32, false);
    }
    // 16 bytes of 5 values, strided by 16, from x[160..240]
    for (m, q) in qs[32..].iter_mut().enumerate() {
        *q = pack_trits(&x[160 + m..], id, 5, 16, false);
    }
    // 4 bytes of 4 values, strided by 4, from x[240..256]
    for (j, q) in qh.iter_mut().enumerate() {
        *q = pack_trits(&x[240 + j..], id, 4, TQ1_QH, true);
    }
    dh.copy_from_slice(&f16::from_f32(d).to_le_bytes());
}

fn quantize_block_tq2(x: &[f32], out: &mut [u8]) {
    let (d, id) = scale(x);
    let (qs, dh) = out.split_at_mut(TQ2_QS);
    for (j, chunk) in qs.chunks_exact_mut(32).enumerate() {
        let xs = &x[j * 128..(j + 1) * 128];
        for (m, q) in chunk.iter_mut().enumerate() {
            let mut b = 0u8;
            for n in 0..4 {
                b = b.wrapping_add((trit(xs[m + n * 32] * id) & 3) << (2 * n));
            }
            *q = b;
        }
    }
    dh.copy_from_slice(&f16::from_f32(d).to_le_bytes());
}

type BlockFn = fn(&[f32], &mut [u8]);

/// Quantize one row to TQ1_0 or TQ2_0.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let (bytes, f): (usize, BlockFn) = match ty {
        GgmlType::TQ1_0 => (TQ1_BYTES, quantize_block_tq1),
        GgmlType::TQ2_0 => (TQ2_BYTES, quantize_block_tq2),
        _ => {
            return Err(QuantError::Unsupported {
                ty,
                op: "ternary quantize",
            })
        }
    };
    check_sizes(ty, src.len(), dst.len())?;
    for (x, out) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(bytes)) {
        f(x, out);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dequantization: ggml's `dequantize_row_*` for this family (helpers in `bytes.rs`).

/// Dequantize whole blocks of `ty`, a type of this family.
pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::TQ1_0 => dequant::tq1_0(src, dst),
        GgmlType::TQ2_0 => dequant::tq2_0(src, dst),
        _ => unreachable!("{ty} is not a type of this family (see the types table)"),
    }
}

mod dequant {
    use super::super::bytes::*;

    // Ternary types: values in {-1, 0, 1} times an f16 d.

    /// TQ1_0: 48 bytes of five base-3 digits each (stored as a fixed-point fraction of 3^5),
    /// 4 bytes of four digits each, f16 d. Digit n of byte m is `((m * 3^n mod 256) * 3) >> 8`;
    /// bytes 0..32 give 5 runs of 32 values, bytes 32..48 5 runs of 16, bytes 48..52 4 runs of 4.
    pub(super) fn tq1_0(src: &[u8], dst: &mut [f32]) {
        const POW3: [u8; 5] = [1, 3, 9, 27, 81];
        fn trit(byte: u8, n: usize) -> f32 {
            let v = byte.wrapping_mul(POW3[n]) as u16;
            (((v * 3) >> 8) as i32 - 1) as f32
        }
        for (b, y) in blocks(src, 54, dst, QK_K) {
            let d = f16_at(b, 52);
            let (y0, rest) = y.split_at_mut(160);
            let (y1, y2) = rest.split_at_mut(80);
            for (bytes, out, digits) in
                [(&b[0..32], y0, 5), (&b[32..48], y1, 5), (&b[48..52], y2, 4)]
            {
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
    pub(super) fn tq2_0(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 66, dst, QK_K) {
            let d = f16_at(b, 64);
            for (i, y) in y.iter_mut().enumerate() {
                let q = b[i / 128 * 32 + i % 32] >> (2 * (i / 32 % 4)) & 3;
                *y = d * (q as i32 - 1) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trit_rounds_half_away_from_zero() {
        assert_eq!(trit(0.5), 2);
        assert_eq!(trit(-0.5), 0);
        assert_eq!(trit(0.49999997), 1);
        assert_eq!(trit(-0.49999997), 1);
        assert_eq!(trit(1.0000001), 2);
        assert_eq!(trit(-1.0), 0);
        assert_eq!(trit(0.0), 1);
        assert_eq!(trit(f32::NAN), 1);
    }

    #[test]
    fn block_sizes() {
        assert_eq!(TQ1_BYTES, GgmlType::TQ1_0.type_size());
        assert_eq!(TQ2_BYTES, GgmlType::TQ2_0.type_size());
    }
}
