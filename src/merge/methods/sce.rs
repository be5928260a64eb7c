//! `sce`: Select (keep the `select_topk` fraction of weights whose task vectors vary most
//! across models), Calculate (weight each task vector by its mean square), Erase (TIES sign
//! election), then the weighted mean of the surviving task vectors is added to the base.

use super::*;

pub struct Sce;

impl Method for Sce {
    fn name(&self) -> &'static str {
        "sce"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[
            param("int8_mask", Scope::Shared, Some(0.0)),
            param("select_topk", Scope::Shared, Some(1.0)),
        ];
        P
    }
    fn base(&self) -> Base {
        Base::Required
    }
    fn inputs(&self) -> (usize, usize) {
        (1, usize::MAX)
    }
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote> {
        let b = input.base.expect("sce has a base");
        let base = input.tensors[b];
        out.copy_from_slice(base);
        let tvs: Vec<Vec<f32>> = (0..input.tensors.len())
            .filter(|&i| i != b)
            .map(|i| {
                input.tensors[i]
                    .iter()
                    .zip(base)
                    .map(|(&x, &y)| x - y)
                    .collect()
            })
            .collect();
        if tvs.is_empty() {
            return Ok(MergeNote::default());
        }
        let n = base.len();
        let m = tvs.len() as f64;
        let topk = (input.shared)("select_topk");
        let mut keep = vec![true; n];
        if topk <= 0.0 {
            keep.fill(false);
        } else if topk < 1.0 {
            // Population variance across models, per weight; keep the top `topk` of the nonzero.
            let var: Vec<f64> = (0..n)
                .map(|j| {
                    let mean = tvs.iter().map(|t| t[j] as f64).sum::<f64>() / m;
                    tvs.iter()
                        .map(|t| (t[j] as f64 - mean).powi(2))
                        .sum::<f64>()
                        / m
                })
                .collect();
            let nonzero = var.iter().filter(|&&v| v != 0.0).count();
            let k = (nonzero as f64 * topk) as usize;
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &c| var[c].total_cmp(&var[a]).then(a.cmp(&c)));
            keep.fill(false);
            for &i in &idx[..k] {
                keep[i] = true;
            }
        }
        let tvs: Vec<Vec<f32>> = tvs
            .into_iter()
            .map(|t| {
                t.iter()
                    .zip(&keep)
                    .map(|(&x, &k)| if k { x } else { 0.0 })
                    .collect()
            })
            .collect();
        // Weights: mean square of each (masked) task vector, normalized to sum to 1.
        let ms: Vec<f64> = tvs
            .iter()
            .map(|t| t.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / n as f64)
            .collect();
        let total: f64 = ms.iter().sum();
        let w: Vec<f64> = if total.abs() < 1e-6 {
            vec![1.0 / m; tvs.len()]
        } else {
            ms.iter().map(|x| x / total).collect()
        };
        for (j, o) in out.iter_mut().enumerate() {
            let sum: f64 = tvs.iter().map(|t| t[j] as f64).sum();
            let elected = if sum >= 0.0 { 1.0 } else { -1.0 };
            let (mut num, mut den) = (0f64, 0f64);
            for (t, &wi) in tvs.iter().zip(&w) {
                let x = t[j] as f64;
                let sign = if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                if sign == elected {
                    num += x * wi;
                    den += wi;
                }
            }
            *o += (num / den.max(1e-6)) as f32;
        }
        Ok(MergeNote::default())
    }
}
