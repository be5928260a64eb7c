//! Q4_0, Q4_1, Q5_0, Q5_1 with importance weights: ggml's `quantize_row_*_impl`.
//!
//! Unlike the K-quants, `sigma2` here is the mean square over the whole row, and each block of
//! 32 goes through `make_qx_quants` (Q4_0/Q5_0) or `make_qkx3_quants` (Q4_1/Q5_1), shared with
//! `kquants`.

// Index loops mirror the C source line by line, which is what makes them auditable.
#![allow(clippy::needless_range_loop)]

use super::search::{fp32_to_fp16, make_qkx3_quants, make_qx_quants};
use super::QuantError;
use crate::gguf::GgmlType;

const QK: usize = 32;
const _: () = assert!(QK == GgmlType::Q4_0.block_size() && QK == GgmlType::Q5_1.block_size());

/// Quantize one row (a multiple of 32 values) with per-column importance weights `w`.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    w: &[f32],
) -> Result<(), QuantError> {
    if !matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1
    ) {
        return Err(QuantError::Unsupported {
            ty,
            op: "imatrix quantize",
        });
    }
    let bb = ty.type_size();
    if src.len() % QK != 0 {
        return Err(QuantError::RowNotBlockAligned {
            ty,
            n: src.len(),
            block: QK,
        });
    }
    if dst.len() != src.len() / QK * bb || w.len() != src.len() {
        return Err(QuantError::BufferSize {
            ty,
            what: format!(
                "{} values, {} bytes, {} weights",
                src.len(),
                dst.len(),
                w.len()
            ),
        });
    }
    let mut sum_x2 = 0.0f32;
    for &v in src {
        sum_x2 += v * v;
    }
    let sigma2 = sum_x2 / src.len() as f32;

    let mut weight = [0.0f32; QK];
    let mut l = [0u8; QK];
    for ((xb, qw), y) in src
        .chunks_exact(QK)
        .zip(w.chunks_exact(QK))
        .zip(dst.chunks_exact_mut(bb))
    {
        for j in 0..QK {
            weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
        }
        let qs_off = match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 => {
                let nmax = if ty == GgmlType::Q4_0 { 8 } else { 16 };
                let d = make_qx_quants(nmax, xb, &mut l, Some(&weight));
                y[0..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
                2
            }
            _ => {
                let nmax = if ty == GgmlType::Q4_1 { 15 } else { 31 };
                let (d, min) = make_qkx3_quants(nmax, xb, &weight, &mut l, -0.9, 0.05, 36, false);
                y[0..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
                y[2..4].copy_from_slice(&fp32_to_fp16(-min).to_le_bytes());
                4
            }
        };
        if matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1) {
            let qs = &mut y[qs_off..qs_off + 16];
            for j in 0..16 {
                qs[j] = l[j] | (l[j + 16] << 4);
            }
        } else {
            let mut qh = 0u32;
            let qs = &mut y[qs_off + 4..qs_off + 20];
            for j in 0..16 {
                let (a, b) = (l[j], l[j + 16]);
                qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
                qh |= (((a & 0x10) >> 4) as u32) << j;
                qh |= (((b & 0x10) >> 4) as u32) << (j + 16);
            }
            y[qs_off..qs_off + 4].copy_from_slice(&qh.to_le_bytes());
        }
    }
    Ok(())
}
