//! Legacy block quantizers Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: ggml's `quantize_row_*_ref`.

use super::QuantError;
use crate::gguf::GgmlType;

pub fn quantize_row(ty: GgmlType, _src: &[f32], _dst: &mut [u8]) -> Result<(), QuantError> {
    Err(QuantError::Unsupported {
        ty,
        op: "quantize (not yet implemented)",
    })
}
