//! Dequantization of every ggml type to f32, block by block (ggml's `dequantize_row_*`).

use super::{float, QuantError};
use crate::gguf::GgmlType;

pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64 => float::dequantize_row(ty, src, dst),
        _ => Err(QuantError::Unsupported {
            ty,
            op: "dequantize (not yet implemented)",
        }),
    }
}
