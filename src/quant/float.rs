//! Plain float types: F32, F16 and BF16 (ggml's round-to-nearest-even conversions).

use super::QuantError;
use crate::gguf::GgmlType;
use half::{bf16, f16};

/// f32 to bf16 exactly as ggml's `ggml_compute_fp32_to_bf16`: NaNs are forced quiet,
/// everything else rounds to nearest even (no flush of subnormals, as in the gguf package).
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// f16 to f32 exactly, keeping NaN payloads bit for bit (signalling NaNs included) as numpy,
/// and so the gguf package, does. Branch-free so that slices convert in vector registers:
/// the f16 exponent and mantissa, shifted into f32 position and scaled by 2^112, give every
/// finite value (subnormals included) exactly; infinities and NaNs keep all-ones exponents.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let shifted = (h & 0x7fff) << 13;
    let finite = (f32::from_bits(shifted) * f32::from_bits(0x7780_0000)).to_bits();
    let bits = if h & 0x7c00 == 0x7c00 {
        shifted | 0x7f80_0000
    } else {
        finite
    };
    f32::from_bits(bits | sign)
}

/// Write `src` as little-endian F32, F16 or BF16 into `dst`.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(*s).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f32_to_bf16_bits(*s).to_le_bytes());
            }
        }
        _ => {
            return Err(QuantError::Unsupported {
                ty,
                op: "float quantize",
            })
        }
    }
    Ok(())
}

/// Read F32, F16, BF16, F64 or integer values into `dst`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    macro_rules! conv {
        ($n:literal, $f:expr) => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact($n)) {
                *d = $f(s.try_into().unwrap());
            }
        };
    }
    match ty {
        GgmlType::F32 => conv!(4, f32::from_le_bytes),
        GgmlType::F16 => conv!(2, |b| f16_bits_to_f32(u16::from_le_bytes(b))),
        GgmlType::BF16 => conv!(2, |b| bf16::from_le_bytes(b).to_f32()),
        GgmlType::F64 => conv!(8, |b| f64::from_le_bytes(b) as f32),
        GgmlType::I8 => conv!(1, |b: [u8; 1]| b[0] as i8 as f32),
        GgmlType::I16 => conv!(2, |b| i16::from_le_bytes(b) as f32),
        GgmlType::I32 => conv!(4, |b| i32::from_le_bytes(b) as f32),
        GgmlType::I64 => conv!(8, |b| i64::from_le_bytes(b) as f32),
        _ => {
            return Err(QuantError::Unsupported {
                ty,
                op: "float dequantize",
            })
        }
    }
    Ok(())
}
