//! Q4_0, Q4_1, Q5_0, Q5_1 with importance weights: ggml's `quantize_row_*_impl`.

use super::QuantError;
use crate::gguf::GgmlType;

pub fn quantize_row(
    ty: GgmlType,
    _src: &[f32],
    _dst: &mut [u8],
    _w: &[f32],
) -> Result<(), QuantError> {
    Err(QuantError::Unsupported {
        ty,
        op: "imatrix quantize (not yet implemented)",
    })
}
