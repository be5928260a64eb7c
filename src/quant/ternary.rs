//! Ternary TQ1_0 and TQ2_0 quantizers.

use super::QuantError;
use crate::gguf::GgmlType;

pub fn quantize_row(ty: GgmlType, _src: &[f32], _dst: &mut [u8]) -> Result<(), QuantError> {
    Err(QuantError::Unsupported {
        ty,
        op: "quantize (not yet implemented)",
    })
}
