//! K-quants Q2_K..Q6_K, with and without importance weights (ggml-quants.c).

use super::QuantError;
use crate::gguf::GgmlType;

pub fn quantize_row(
    ty: GgmlType,
    _src: &[f32],
    _dst: &mut [u8],
    _w: Option<&[f32]>,
) -> Result<(), QuantError> {
    Err(QuantError::Unsupported {
        ty,
        op: "quantize (not yet implemented)",
    })
}
