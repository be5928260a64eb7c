//! Quantization kernels: every ggml type to f32 (`dequantize_row`) and f32 to the types we
//! write (`quantize_row`), one row at a time, optionally with importance weights.
//!
//! Each family lives in its own file; this module only dispatches. Rows are independent, so
//! callers parallelize over rows (`quantize_rows` / `dequantize_rows`).

pub mod dequant;
pub mod float;
#[cfg(test)]
mod golden;
#[cfg(test)]
mod golden_iq4;
pub mod grids;
pub mod imatrix;
pub mod imatrix_legacy;
pub mod iq4;
pub mod kquants;
pub mod legacy;
pub mod mix;
pub mod ternary;

use crate::gguf::GgmlType;
use rayon::prelude::*;

/// Errors raised by the kernels themselves (the caller adds file and tensor names).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("{op} is not supported for type {ty}")]
    Unsupported { ty: GgmlType, op: &'static str },
    #[error("row of {n} values does not divide into {ty} blocks of {block}")]
    RowNotBlockAligned {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    #[error("buffer size mismatch for {ty}: {what}")]
    BufferSize { ty: GgmlType, what: String },
}

/// The 16 non-uniform levels shared by IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Bytes one row of `n` values takes in type `ty`.
pub fn row_bytes(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    let block = ty.block_size();
    if n % block != 0 {
        return Err(QuantError::RowNotBlockAligned { ty, n, block });
    }
    Ok(n / block * ty.type_size())
}

fn check_sizes(ty: GgmlType, n: usize, bytes: usize) -> Result<(), QuantError> {
    let want = row_bytes(ty, n)?;
    if want != bytes {
        return Err(QuantError::BufferSize {
            ty,
            what: format!("{n} values need {want} bytes, buffer has {bytes}"),
        });
    }
    Ok(())
}

/// Dequantize one row: `src` holds whole blocks of `ty`, `dst` receives `dst.len()` values.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_sizes(ty, dst.len(), src.len())?;
    dequant::dequantize_row(ty, src, dst)
}

/// True when `quantize_row` can produce `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | IQ4_NL
            | IQ4_XS
            | TQ1_0
            | TQ2_0
    )
}

/// Quantize one row of `src` into `dst` (exactly `row_bytes(ty, src.len())` bytes).
///
/// `imatrix` holds one importance weight per column (llama.cpp's imatrix); types whose ggml
/// quantizer ignores weights (F16, BF16, Q8_0) ignore it too, as llama-quantize does.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    use GgmlType::*;
    check_sizes(ty, src.len(), dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != src.len() {
            return Err(QuantError::BufferSize {
                ty,
                what: format!("imatrix has {} weights for a row of {}", w.len(), src.len()),
            });
        }
    }
    match (ty, imatrix) {
        (F32 | F16 | BF16, _) => float::quantize_row(ty, src, dst),
        (Q8_0, _) | (Q4_0 | Q4_1 | Q5_0 | Q5_1, None) => legacy::quantize_row(ty, src, dst),
        (Q4_0 | Q4_1 | Q5_0 | Q5_1, Some(w)) => imatrix_legacy::quantize_row(ty, src, dst, w),
        (Q2_K | Q3_K | Q4_K | Q5_K | Q6_K, w) => kquants::quantize_row(ty, src, dst, w),
        (IQ4_NL | IQ4_XS, w) => iq4::quantize_row(ty, src, dst, w),
        (TQ1_0 | TQ2_0, _) => ternary::quantize_row(ty, src, dst),
        _ => Err(QuantError::Unsupported { ty, op: "quantize" }),
    }
}

/// Quantize `src` (rows of `n_per_row` values) into `dst`, rows in parallel.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    let rb = row_bytes(ty, n_per_row)?;
    if n_per_row == 0 || src.len() % n_per_row != 0 || src.len() / n_per_row * rb != dst.len() {
        return Err(QuantError::BufferSize {
            ty,
            what: format!(
                "{} values in rows of {n_per_row} do not fill {} bytes",
                src.len(),
                dst.len()
            ),
        });
    }
    src.par_chunks(n_per_row)
        .zip(dst.par_chunks_mut(rb))
        .try_for_each(|(s, d)| quantize_row(ty, s, d, imatrix))
}

/// Dequantize `src` (rows of `n_per_row` values of type `ty`) into `dst`, rows in parallel.
pub fn dequantize_rows(
    ty: GgmlType,
    src: &[u8],
    n_per_row: usize,
    dst: &mut [f32],
) -> Result<(), QuantError> {
    let rb = row_bytes(ty, n_per_row)?;
    if n_per_row == 0 || dst.len() % n_per_row != 0 || dst.len() / n_per_row * rb != src.len() {
        return Err(QuantError::BufferSize {
            ty,
            what: format!(
                "{} bytes do not hold {} values in rows of {n_per_row}",
                src.len(),
                dst.len()
            ),
        });
    }
    src.par_chunks(rb)
        .zip(dst.par_chunks_mut(n_per_row))
        .try_for_each(|(s, d)| dequantize_row(ty, s, d))
}
