//! `model_stock`: interpolate from the base toward the fine-tunes' average by
//! t = k·cosθ / (1 + (k−1)·cosθ), θ the mean angle between the fine-tunes' offsets
//! (per row with `filter_wise`).

use super::spherical::symmetric;
use super::stats::BlockSums;
use super::*;
use rayon::prelude::*;

pub struct ModelStock;

/// The Gram matrix's upper triangle of the offsets `ws[i] − w0` over elements `r`, added to
/// `acc` in element order.
fn offset_gram(x: &[&[f32]], b: usize, ws: &[usize], r: std::ops::Range<usize>, acc: &mut [f64]) {
    super::spherical::gram_upper(x, Some(b), ws, r, acc);
}

/// The interpolation factor t from the offsets' Gram matrix (upper triangle).
fn stock_t(upper: &[f64], m: usize) -> f64 {
    let g = symmetric(upper, m);
    let mut cos = Vec::new();
    for i in 0..m {
        for j in i + 1..m {
            let na = g[i * m + i].sqrt();
            let nb = g[j * m + j].sqrt();
            let dot = g[i * m + j];
            cos.push((dot / (na * nb).max(1e-6)).clamp(-1.0, 1.0));
        }
    }
    let cos_theta = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
    let k = m as f64;
    let denom = 1.0 + (k - 1.0) * cos_theta;
    if denom.abs() < 1e-6 {
        0.0
    } else {
        k * cos_theta / denom
    }
}

/// t·avg + (1 − t)·w0 over elements `r` of `out` (local indices of the chunk).
fn interpolate(x: &[&[f32]], b: usize, ws: &[usize], t: f64, out: &mut [f32], off: usize) {
    let k = ws.len() as f64;
    for (c, o) in out.iter_mut().enumerate() {
        let j = off + c;
        let avg = ws.iter().map(|&i| x[i][j] as f64).sum::<f64>() / k;
        *o = (t * avg + (1.0 - t) * x[b][j] as f64) as f32;
    }
}

impl Method for ModelStock {
    fn name(&self) -> &'static str {
        "model_stock"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[param("filter_wise", Scope::Shared, Some(0.0))];
        P
    }
    fn base(&self) -> Base {
        Base::Required
    }
    fn inputs(&self) -> (usize, usize) {
        (3, usize::MAX)
    }
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let b = input.base.expect("model_stock has a base");
        let ws = input.others();
        let m = ws.len();
        let row = input.row_len;
        if (input.shared)("filter_wise") != 0.0 && input.n_rows > 1 {
            // Per row: each row's own angle, from that row alone.
            return Ok(Box::new(Elementwise(
                move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                    out.par_chunks_mut(row).enumerate().for_each(|(r, o)| {
                        let mut acc = vec![0f64; m * m];
                        offset_gram(x, b, &ws, r * row..(r + 1) * row, &mut acc);
                        interpolate(x, b, &ws, stock_t(&acc, m), o, r * row);
                    });
                    Ok(())
                },
            )));
        }
        let mut sums = BlockSums::new(m * m);
        input.pass(|_, x| {
            sums.feed(x[0].len(), |r, acc| offset_gram(x, b, &ws, r, acc));
            Ok(())
        })?;
        let t = stock_t(&sums.values(), m);
        Ok(Box::new(Elementwise(
            move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                out.par_chunks_mut(1 << 14).enumerate().for_each(|(c, o)| {
                    interpolate(x, b, &ws, t, o, c << 14);
                });
                Ok(())
            },
        )))
    }
}
