//! `karcher`: the Karcher (Riemannian) mean of the models' directions on the unit sphere,
//! found by fixed-point iteration, scaled by their mean norm (mergekit's definition).

use super::*;

pub struct Karcher;

/// Most iterations a recipe may ask for (mergekit's default is 10).
const MAX_ITER: f64 = 10_000.0;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Method for Karcher {
    fn name(&self) -> &'static str {
        "karcher"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[
            param("max_iter", Scope::Shared, Some(10.0)),
            param("tol", Scope::Shared, Some(1e-5)),
        ];
        P
    }
    fn base(&self) -> Base {
        Base::Optional
    }
    fn inputs(&self) -> (usize, usize) {
        (1, usize::MAX)
    }
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote> {
        let k = input.tensors.len();
        if k == 1 {
            out.copy_from_slice(input.tensors[0]);
            return Ok(MergeNote::default());
        }
        let (max_iter, tol) = ((input.shared)("max_iter"), (input.shared)("tol"));
        // Each iteration is a pass over every input: with `tol: 0` nothing stops the loop
        // early, so a huge `max_iter` would never finish.
        if !(0.0..=MAX_ITER).contains(&max_iter) {
            return Err(Error::Invalid(format!(
                "karcher: max_iter must be from 0 to {MAX_ITER}, not {max_iter}"
            )));
        }
        let max_iter = max_iter as usize;
        let alpha = 1.0 / k as f64;
        let vs: Vec<Vec<f64>> = input
            .tensors
            .iter()
            .map(|t| t.iter().map(|&x| x as f64).collect())
            .collect();
        let norms: Vec<f64> = vs.iter().map(|v| dot(v, v).sqrt()).collect();
        let units: Vec<Vec<f64>> = vs
            .iter()
            .zip(&norms)
            .map(|(v, &n)| {
                if n == 0.0 {
                    vec![0.0; v.len()]
                } else {
                    v.iter().map(|x| x / n).collect()
                }
            })
            .collect();
        let valid: Vec<usize> = (0..k).filter(|&i| norms[i] > tol).collect();
        if valid.is_empty() {
            out.fill(0.0);
            return Ok(MergeNote::default());
        }
        let w = 1.0 / valid.len() as f64;
        let n = out.len();
        let mut mean = vec![0f64; n];
        for &i in &valid {
            for (m, u) in mean.iter_mut().zip(&units[i]) {
                *m += w * u;
            }
        }
        let mn = dot(&mean, &mean).sqrt();
        if mn < tol {
            mean = units[valid[0]].clone();
        } else {
            mean.iter_mut().for_each(|x| *x /= mn);
        }
        for _ in 0..max_iter {
            let mut tangent = vec![0f64; n];
            for &i in &valid {
                let d = dot(&mean, &units[i]).clamp(-1.0, 1.0);
                let theta = d.acos();
                if theta < tol {
                    continue;
                }
                let f = w * theta / theta.sin();
                for ((t, u), m) in tangent.iter_mut().zip(&units[i]).zip(&mean) {
                    *t += f * (u - d * m);
                }
            }
            let tn = dot(&tangent, &tangent).sqrt();
            if tn < tol {
                break;
            }
            let (c, s) = (tn.cos(), tn.sin() / tn);
            for (m, t) in mean.iter_mut().zip(&tangent) {
                *m = c * *m + s * t;
            }
            let un = dot(&mean, &mean).sqrt();
            if un > tol {
                mean.iter_mut().for_each(|x| *x /= un);
            }
        }
        let scale: f64 = norms.iter().map(|nm| alpha * nm).sum();
        for (o, m) in out.iter_mut().zip(&mean) {
            *o = (scale * m) as f32;
        }
        Ok(MergeNote::default())
    }
}
