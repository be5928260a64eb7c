//! Byte helpers shared by the dequantizers of every family (ggml's `ggml-common.h` layouts).
//!
//! Dequantized values are bit-identical to the PyPI `gguf` package's `gguf.quants.dequantize`:
//! every product and sum is done in f32, one rounding per operation, in the order gguf-py
//! (numpy) evaluates it, e.g. Q4_1 is `(d * q) + m` and IQ2_XXS's scale is
//! `(d * (0.5 + s)) * 0.25`. Rust never fuses `a * b + c` into an FMA on its own, so writing the
//! same expression is enough. `src` and `dst` hold whole blocks (the dispatcher checked), so
//! each kernel simply walks `chunks_exact` of both.

use half::f16;

/// Elements per K-quant / IQ super-block.
pub(super) const QK_K: usize = 256;

/// Pairs each block of `src` (`bytes` long) with its `n` outputs in `dst`.
pub(super) fn blocks<'a>(
    src: &'a [u8],
    bytes: usize,
    dst: &'a mut [f32],
    n: usize,
) -> impl Iterator<Item = (&'a [u8], &'a mut [f32])> {
    src.chunks_exact(bytes).zip(dst.chunks_exact_mut(n))
}

/// The little-endian f16 at `b[at..at + 2]`, widened to f32.
#[inline]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline]
pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `x`, negated when bit `j` of `signs` is set (exactly `x * -1.0`).
#[inline]
pub(super) fn signed(x: f32, signs: u8, j: usize) -> f32 {
    if signs >> j & 1 != 0 {
        -x
    } else {
        x
    }
}
