//! `karcher`: the Karcher (Riemannian) mean of the models' directions on the unit sphere,
//! found by fixed-point iteration, scaled by their mean norm (mergekit's definition). The
//! iteration runs on coefficients over the inputs (the mean never leaves their span), from
//! their Gram matrix gathered in one streaming pass.

use super::spherical::symmetric;
use super::stats::BlockSums;
use super::*;
use rayon::prelude::*;

pub struct Karcher;

/// Most iterations a recipe may ask for (mergekit's default is 10).
const MAX_ITER: f64 = 10_000.0;

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
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let k = input.n_inputs;
        if k == 1 {
            return Ok(Box::new(Elementwise(
                |_: usize, x: &[&[f32]], out: &mut [f32]| {
                    out.copy_from_slice(x[0]);
                    Ok(())
                },
            )));
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
        // The mean stays in the span of the unit vectors uᵢ = vᵢ / ‖vᵢ‖, so it is kept as
        // coefficients over them, and every dot product the iteration needs comes from their
        // Gram matrix: one pass over the tensor, however many iterations.
        let mut sums = BlockSums::new(k * k);
        input.pass(|_, x| {
            sums.feed(x[0].len(), |r, acc| {
                for j in r {
                    for a in 0..k {
                        let va = x[a][j] as f64;
                        for b in a..k {
                            acc[a * k + b] += va * x[b][j] as f64;
                        }
                    }
                }
            });
            Ok(())
        })?;
        let g = symmetric(&sums.values(), k);
        let norms: Vec<f64> = (0..k).map(|i| g[i * k + i].sqrt()).collect();
        // Gram matrix of the units (a zero vector's unit is zero).
        let inv = |i: usize| if norms[i] == 0.0 { 0.0 } else { 1.0 / norms[i] };
        let u: Vec<f64> = (0..k * k).map(|p| g[p] * inv(p / k) * inv(p % k)).collect();
        let quad = |a: &[f64], b: &[f64]| -> f64 {
            let mut s = 0.0;
            for i in 0..k {
                for j in 0..k {
                    s += a[i] * u[i * k + j] * b[j];
                }
            }
            s
        };
        let valid: Vec<usize> = (0..k).filter(|&i| norms[i] > tol).collect();
        let coef: Vec<f64> = if valid.is_empty() {
            vec![0.0; k]
        } else {
            let w = 1.0 / valid.len() as f64;
            let mut mean = vec![0f64; k];
            for &i in &valid {
                mean[i] = w;
            }
            let mn = quad(&mean, &mean).max(0.0).sqrt();
            if mn < tol {
                mean = vec![0.0; k];
                mean[valid[0]] = 1.0;
            } else {
                mean.iter_mut().for_each(|x| *x /= mn);
            }
            for _ in 0..max_iter {
                let mut tangent = vec![0f64; k];
                let mut along = 0.0;
                for &i in &valid {
                    let mut e = vec![0f64; k];
                    e[i] = 1.0;
                    let d = quad(&mean, &e).clamp(-1.0, 1.0);
                    let theta = d.acos();
                    if theta < tol {
                        continue;
                    }
                    let f = w * theta / theta.sin();
                    tangent[i] += f;
                    along += f * d;
                }
                for (t, m) in tangent.iter_mut().zip(&mean) {
                    *t -= along * m;
                }
                let tn = quad(&tangent, &tangent).max(0.0).sqrt();
                if tn < tol {
                    break;
                }
                let (c, s) = (tn.cos(), tn.sin() / tn);
                for (m, t) in mean.iter_mut().zip(&tangent) {
                    *m = c * *m + s * t;
                }
                let un = quad(&mean, &mean).max(0.0).sqrt();
                if un > tol {
                    mean.iter_mut().for_each(|x| *x /= un);
                }
            }
            let scale: f64 = norms.iter().map(|nm| alpha * nm).sum();
            // out = scale · Σ meanᵢ uᵢ = Σ (scale · meanᵢ / ‖vᵢ‖) vᵢ
            (0..k).map(|i| scale * mean[i] * inv(i)).collect()
        };
        Ok(Box::new(Elementwise(
            move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                out.par_iter_mut().enumerate().for_each(|(j, o)| {
                    let mut v = 0f64;
                    for (c, t) in coef.iter().zip(x) {
                        v += c * t[j] as f64;
                    }
                    *o = v as f32;
                });
                Ok(())
            },
        )))
    }
}
