//! MXFP4 (OCP microscaling FP4): dequantization only; ggml writes it for gpt-oss experts, and
//! llama-quantize has no quantizer for it.

use crate::gguf::GgmlType;

// ---------------------------------------------------------------------------------------------
// Dequantization: ggml's `dequantize_row_*` for this family (helpers in `bytes.rs`).

/// Dequantize whole blocks of `ty`, a type of this family.
pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::MXFP4 => dequant::mxfp4(src, dst),
        _ => unreachable!("{ty} is not a type of this family (see the types table)"),
    }
}

mod dequant {
    use super::super::bytes::*;
    use super::super::grids::KVALUES_MXFP4;

    /// ggml's `ggml_e8m0_to_fp32_half`: 2^(e - 128), i.e. half the E8M0 scale, built from bits
    /// (subnormal for e < 2).
    #[inline]
    pub(super) fn e8m0_half(e: u8) -> f32 {
        let bits = if e < 2 {
            0x0020_0000u32 << e
        } else {
            (e as u32 - 1) << 23
        };
        f32::from_bits(bits)
    }

    /// MXFP4: one E8M0 exponent byte, 16 bytes of E2M1 nibbles (IQ4_NL order).
    /// x = half-scale * doubled E2M1 value.
    pub(super) fn mxfp4(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 17, dst, 32) {
            let d = e8m0_half(b[0]);
            for (j, &q) in b[1..17].iter().enumerate() {
                y[j] = d * KVALUES_MXFP4[(q & 0x0F) as usize] as f32;
                y[j + 16] = d * KVALUES_MXFP4[(q >> 4) as usize] as f32;
            }
        }
    }
}
