//! Quantization kernels: every ggml type to f32 (`dequantize_row`) and f32 to the types we
//! write (`quantize_row`), one row at a time, optionally with importance weights.
//!
//! Each family lives in its own file, its dequantizer beside its quantizer; this module only
//! dispatches, by the family and quantizer columns of the types table (`gguf/types.rs`). Rows
//! are independent, so callers parallelize over rows (`quantize_rows` / `dequantize_rows`).

mod bytes;
pub mod float;
#[cfg(test)]
pub(crate) mod golden;
#[cfg(test)]
mod golden_dequant;
pub mod grids;
pub mod imatrix;
pub mod imatrix_legacy;
pub mod iq1;
pub mod iq2;
pub mod iq3;
pub mod iq4;
pub mod kquants;
pub(crate) mod lattice;
pub mod legacy;
pub mod mix;
pub mod mxfp4;
pub(crate) mod search;
pub mod ternary;

use crate::gguf::types::{Family, Quantizer};
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
    #[error("quantizing to {ty} requires an importance matrix (imatrix)")]
    NeedsImatrix { ty: GgmlType },
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
    match ty.family() {
        Family::Float => return float::dequantize_row(ty, src, dst),
        Family::Legacy => legacy::dequantize_row(ty, src, dst),
        Family::KQuant => kquants::dequantize_row(ty, src, dst),
        Family::Iq1 => iq1::dequantize_row(ty, src, dst),
        Family::Iq2 => iq2::dequantize_row(ty, src, dst),
        Family::Iq3 => iq3::dequantize_row(ty, src, dst),
        Family::Iq4 => iq4::dequantize_row(ty, src, dst),
        Family::Ternary => ternary::dequantize_row(ty, src, dst),
        Family::Mxfp4 => mxfp4::dequantize_row(ty, src, dst),
    }
    Ok(())
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
    check_sizes(ty, src.len(), dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != src.len() {
            return Err(QuantError::BufferSize {
                ty,
                what: format!("imatrix has {} weights for a row of {}", w.len(), src.len()),
            });
        }
    }
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: `quantize_row_avx2` only requires AVX2 (and the SSE/AVX levels it
        // implies), which the CPU has just been checked for.
        return unsafe { quantize_row_avx2(ty, src, dst, imatrix) };
    }
    quantize_row_checked(ty, src, dst, imatrix)
}

/// Whether the AVX2 kernels may run: the CPU has AVX2 (detected once, then a cached load),
/// and, in tests, the calling thread has not asked for the portable code.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn use_avx2() -> bool {
    #[cfg(test)]
    if tests::PORTABLE.with(|p| p.get()) {
        return false;
    }
    std::is_x86_feature_detected!("avx2")
}

/// The same kernels compiled for AVX2: the block kernels are `#[inline(always)]` down to
/// their inner loops, so they are compiled again here with 8-lane vectors. Rust never fuses
/// `a * b + c` into an FMA on its own (and the feature set here has no FMA), so every f32
/// operation rounds exactly as in the baseline build: the bytes are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    quantize_row_checked(ty, src, dst, imatrix)
}

/// `quantize_row` with the portable code only (no AVX2 anywhere), on this thread; the tests
/// compare it with the dispatched path.
#[cfg(test)]
pub(crate) fn quantize_row_baseline(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    tests::PORTABLE.with(|p| p.set(true));
    let r = quantize_row_checked(ty, src, dst, imatrix);
    tests::PORTABLE.with(|p| p.set(false));
    r
}

/// The kernel dispatch of `quantize_row`, sizes already checked.
#[inline(always)]
fn quantize_row_checked(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    let weights = match (ty.quantizer(), imatrix) {
        (Quantizer::None, _) => return Err(QuantError::Unsupported { ty, op: "quantize" }),
        (Quantizer::NeedsImatrix, None) => return Err(QuantError::NeedsImatrix { ty }),
        (Quantizer::Plain, _) => None,
        (Quantizer::Weighted | Quantizer::NeedsImatrix, w) => w,
    };
    match ty.family() {
        Family::Float => float::quantize_row(ty, src, dst),
        Family::Legacy => match weights {
            None => legacy::quantize_row(ty, src, dst),
            Some(w) => imatrix_legacy::quantize_row(ty, src, dst, w),
        },
        Family::KQuant => kquants::quantize_row(ty, src, dst, weights),
        Family::Iq1 => iq1::quantize_row(ty, src, dst, weights),
        Family::Iq2 => iq2::quantize_row(ty, src, dst, weights),
        Family::Iq3 => iq3::quantize_row(ty, src, dst, weights),
        Family::Iq4 => iq4::quantize_row(ty, src, dst, weights),
        Family::Ternary => ternary::quantize_row(ty, src, dst),
        Family::Mxfp4 => Err(QuantError::Unsupported { ty, op: "quantize" }),
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

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Set while `quantize_row_baseline` runs: no AVX2 kernels on this thread.
        pub(super) static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Pseudo-normal values with a few outliers, zeros and repeated magnitudes per block.
    fn synth(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|i| match i % 97 {
                0 => 0.0,
                13 => 0.5,
                14 => -0.5,
                _ => (next() + next() + next() - 1.5) * if i % 31 == 0 { 3.0 } else { 0.05 },
            })
            .collect()
    }

    /// The run-time dispatched kernels (AVX2 where the CPU has it) write the same bytes as
    /// the baseline build of the same code, for every type, with and without weights.
    #[test]
    fn dispatched_kernels_match_baseline() {
        use GgmlType::*;
        let cols = 1024;
        let rows = 48;
        let x = synth(rows * cols, 3);
        let w: Vec<f32> = synth(cols, 9).iter().map(|v| v * v * 1e3 + 0.01).collect();
        for &ty in GgmlType::ALL
            .iter()
            .filter(|t| t.can_quantize() && **t != F32)
        {
            let rb = row_bytes(ty, cols).unwrap();
            for wi in [None, Some(w.as_slice())] {
                if wi.is_none() && ty.quantizer() == Quantizer::NeedsImatrix {
                    continue;
                }
                for (r, row) in x.chunks_exact(cols).enumerate() {
                    // Scaled rows reach the tiny and the large ends of the ranges too.
                    let scale = [1.0f32, 1e-3, 1e3, 1e-20][r % 4];
                    let row: Vec<f32> = row.iter().map(|v| v * scale).collect();
                    let mut a = vec![0u8; rb];
                    let mut b = vec![0u8; rb];
                    quantize_row(ty, &row, &mut a, wi).unwrap();
                    quantize_row_baseline(ty, &row, &mut b, wi).unwrap();
                    assert_eq!(a, b, "{ty} row {r} weighted={}", wi.is_some());
                }
            }
        }
    }

    /// The legacy fast paths fall back to the portable loops for blocks they cannot convert
    /// exactly (NaN, infinities, huge quotients): same bytes there too.
    #[test]
    fn legacy_fast_paths_match_baseline_on_special_values() {
        use GgmlType::*;
        let mut x = synth(32 * 64, 5);
        for (b, block) in x.chunks_exact_mut(32).enumerate() {
            match b % 8 {
                0 => block[b % 32] = f32::NAN,
                1 => block[3] = f32::INFINITY,
                2 => block[7] = f32::NEG_INFINITY,
                3 => block.iter_mut().for_each(|v| *v *= 1e-38),
                4 => block.iter_mut().for_each(|v| *v = -0.0),
                5 => block[1] = f32::MAX,
                6 => block
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = j as f32 - 16.0),
                _ => {}
            }
        }
        for ty in [Q8_0, Q4_0, Q4_1, Q5_0, Q5_1] {
            let rb = row_bytes(ty, 32).unwrap();
            for block in x.chunks_exact(32) {
                let mut a = vec![0u8; rb];
                let mut b = vec![0u8; rb];
                quantize_row(ty, block, &mut a, None).unwrap();
                quantize_row_baseline(ty, block, &mut b, None).unwrap();
                assert_eq!(a, b, "{ty} {block:?}");
            }
        }
    }

    /// The IQ1-3 quantizers never panic, whatever the input (ggml aborts on some of these),
    /// and the types ggml quantizes only with an imatrix refuse to quantize without one.
    #[test]
    fn iq_quantizers_take_any_input() {
        let n = 512;
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for special in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            1e30,
            1e-45,
        ] {
            let mut r = synth(n, 11);
            r[7] = special;
            rows.push(r);
            rows.push(vec![special; n]);
        }
        rows.push(vec![0.0; n]);
        let weights = [
            synth(n, 3)
                .iter()
                .map(|v| v * v + 1e-3)
                .collect::<Vec<f32>>(),
            vec![0.0; n],
            vec![-1.0; n],
            vec![f32::NAN; n],
        ];
        let iq123 = GgmlType::ALL
            .iter()
            .filter(|t| matches!(t.family(), Family::Iq1 | Family::Iq2 | Family::Iq3));
        for &ty in iq123 {
            let mut out = vec![0u8; row_bytes(ty, n).unwrap()];
            for row in &rows {
                for w in &weights {
                    quantize_row(ty, row, &mut out, Some(w)).unwrap();
                }
                let r = quantize_row(ty, row, &mut out, None);
                if ty.quantizer() == Quantizer::NeedsImatrix {
                    assert_eq!(r, Err(QuantError::NeedsImatrix { ty }));
                } else {
                    r.unwrap();
                }
            }
        }
    }
}
