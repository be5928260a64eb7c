//! IQ4_NL and IQ4_XS quantizers (ggml's `quantize_row_iq4_*` search).

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
