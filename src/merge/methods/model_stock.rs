//! `model_stock`: interpolate from the base toward the fine-tunes' average by
//! t = k·cosθ / (1 + (k−1)·cosθ), θ the mean angle between the fine-tunes' offsets
//! (per row with `filter_wise`).

use super::*;

pub struct ModelStock;

fn stock(w0: &[f32], ws: &[&[f32]], out: &mut [f32]) {
    let offsets: Vec<Vec<f64>> = ws
        .iter()
        .map(|w| {
            w.iter()
                .zip(w0)
                .map(|(&a, &b)| a as f64 - b as f64)
                .collect()
        })
        .collect();
    let mut cos = Vec::new();
    for i in 0..offsets.len() {
        for j in i + 1..offsets.len() {
            let (a, b) = (&offsets[i], &offsets[j]);
            let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            cos.push((dot / (na * nb).max(1e-6)).clamp(-1.0, 1.0));
        }
    }
    let cos_theta = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
    let k = ws.len() as f64;
    let denom = 1.0 + (k - 1.0) * cos_theta;
    let t = if denom.abs() < 1e-6 {
        0.0
    } else {
        k * cos_theta / denom
    };
    for (idx, o) in out.iter_mut().enumerate() {
        let avg = ws.iter().map(|w| w[idx] as f64).sum::<f64>() / k;
        *o = (t * avg + (1.0 - t) * w0[idx] as f64) as f32;
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
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote> {
        let b = input.base.expect("model_stock has a base");
        let others: Vec<&[f32]> = input
            .tensors
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != b)
            .map(|(_, t)| *t)
            .collect();
        if (input.shared)("filter_wise") != 0.0 && input.row_len < out.len() {
            let r = input.row_len;
            for (row, o) in out.chunks_mut(r).enumerate() {
                let ws: Vec<&[f32]> = others.iter().map(|w| &w[row * r..(row + 1) * r]).collect();
                stock(&input.tensors[b][row * r..(row + 1) * r], &ws, o);
            }
        } else {
            stock(input.tensors[b], &others, out);
        }
        Ok(MergeNote::default())
    }
}
