//! `nuslerp` and `multislerp`: spherical interpolation of two or more models, optionally of
//! their task vectors from a base (mergekit's definitions; norms and dot products in f64).

use super::*;

/// Slerp `v0 → v1` at `t` over each vector of length `len` taken with stride `step` from
/// `start` (whole tensor, rows or columns), as mergekit's `nuslerp`.
fn nuslerp_vectors(
    t: f64,
    v0: &[f64],
    v1: &[f64],
    out: &mut [f64],
    vectors: &[(usize, usize, usize)],
) {
    const EPS: f64 = 1e-8;
    for &(start, len, step) in vectors {
        let idx = |k: usize| start + k * step;
        let n0 = (0..len)
            .map(|k| v0[idx(k)] * v0[idx(k)])
            .sum::<f64>()
            .sqrt()
            .max(1e-7);
        let n1 = (0..len)
            .map(|k| v1[idx(k)] * v1[idx(k)])
            .sum::<f64>()
            .sqrt()
            .max(1e-7);
        let cos = (0..len)
            .map(|k| (v0[idx(k)] / n0) * (v1[idx(k)] / n1))
            .sum::<f64>()
            .clamp(-1.0, 1.0);
        let colinear = 1.0 - cos * cos <= EPS * EPS;
        let (a, b) = if colinear {
            (1.0 - t, t)
        } else {
            let theta = cos.acos();
            let s = theta.sin();
            (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
        };
        for k in 0..len {
            out[idx(k)] = a * v0[idx(k)] + b * v1[idx(k)];
        }
    }
}

pub struct NuSlerp;

impl Method for NuSlerp {
    fn name(&self) -> &'static str {
        "nuslerp"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[
            param("weight", Scope::NonBase, None),
            param("nuslerp_row_wise", Scope::Shared, Some(0.0)),
            param("nuslerp_flatten", Scope::Shared, Some(1.0)),
        ];
        P
    }
    fn base(&self) -> Base {
        Base::Optional
    }
    fn inputs(&self) -> (usize, usize) {
        (2, 3)
    }
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote> {
        let others: Vec<usize> = (0..input.tensors.len())
            .filter(|&i| Some(i) != input.base)
            .collect();
        if others.len() != 2 {
            return Err(Error::Invalid(format!(
                "nuslerp merges exactly two models besides the base, got {}",
                others.len()
            )));
        }
        let (w0, w1) = (
            (input.per_input)(others[0], "weight"),
            (input.per_input)(others[1], "weight"),
        );
        let total = w0 + w1;
        let t = if total.abs() < 1e-6 { 0.5 } else { w1 / total };
        let base: Option<Vec<f64>> = input
            .base
            .map(|b| input.tensors[b].iter().map(|&x| x as f64).collect());
        let delta = |i: usize| -> Vec<f64> {
            input.tensors[i]
                .iter()
                .enumerate()
                .map(|(j, &x)| x as f64 - base.as_ref().map_or(0.0, |b| b[j]))
                .collect()
        };
        let (v0, v1) = (delta(others[0]), delta(others[1]));
        let n = v0.len();
        let row = input.row_len.min(n).max(1);
        let rows = n / row;
        let vectors: Vec<(usize, usize, usize)> =
            if (input.shared)("nuslerp_flatten") != 0.0 || rows == 1 {
                vec![(0, n, 1)]
            } else if (input.shared)("nuslerp_row_wise") != 0.0 {
                // mergekit's dim=0: one vector per column (down the rows).
                (0..row).map(|c| (c, rows, row)).collect()
            } else {
                (0..rows).map(|r| (r * row, row, 1)).collect()
            };
        let mut res = vec![0f64; n];
        nuslerp_vectors(t, &v0, &v1, &mut res, &vectors);
        for (j, o) in out.iter_mut().enumerate() {
            *o = (res[j] + base.as_ref().map_or(0.0, |b| b[j])) as f32;
        }
        Ok(MergeNote::default())
    }
}

pub struct MultiSlerp;

impl Method for MultiSlerp {
    fn name(&self) -> &'static str {
        "multislerp"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[
            param("weight", Scope::NonBase, None),
            param("normalize_weights", Scope::Shared, Some(1.0)),
            param("eps", Scope::Shared, Some(1e-8)),
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
        let eps = (input.shared)("eps");
        let others: Vec<usize> = (0..input.tensors.len())
            .filter(|&i| Some(i) != input.base)
            .collect();
        if others.len() == 1 {
            out.copy_from_slice(input.tensors[others[0]]);
            return Ok(MergeNote::default());
        }
        let n = out.len();
        let base: Option<&[f32]> = input.base.map(|b| input.tensors[b]);
        let vs: Vec<Vec<f64>> = others
            .iter()
            .map(|&i| {
                input.tensors[i]
                    .iter()
                    .enumerate()
                    .map(|(j, &x)| x as f64 - base.map_or(0.0, |b| b[j] as f64))
                    .collect()
            })
            .collect();
        let mut w: Vec<f64> = others
            .iter()
            .map(|&i| (input.per_input)(i, "weight"))
            .collect();
        if (input.shared)("normalize_weights") != 0.0 {
            let s: f64 = w.iter().sum();
            w.iter_mut().for_each(|x| *x /= s);
        }
        let norms: Vec<f64> = vs
            .iter()
            .map(|v| v.iter().map(|x| x * x).sum::<f64>().sqrt())
            .collect();
        let units: Vec<Vec<f64>> = vs
            .iter()
            .zip(&norms)
            .map(|(v, &nm)| v.iter().map(|x| x / (nm + eps)).collect())
            .collect();
        let mut mean = vec![0f64; n];
        for (u, &wi) in units.iter().zip(&w) {
            for (m, x) in mean.iter_mut().zip(u) {
                *m += x * wi;
            }
        }
        let mean_norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
        let add_base = |j: usize, x: f64| (x + base.map_or(0.0, |b| b[j] as f64)) as f32;
        if mean_norm < eps {
            if vs.len() == 2 {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = add_base(j, vs[0][j] * w[0] + vs[1][j] * w[1]);
                }
                return Ok(MergeNote::default());
            }
            return Err(Error::Invalid(
                "multislerp: the weighted sum of the inputs is zero".into(),
            ));
        }
        mean.iter_mut().for_each(|x| *x /= mean_norm);
        let mut tangent = vec![0f64; n];
        for (u, &wi) in units.iter().zip(&w) {
            let dot: f64 = u.iter().zip(&mean).map(|(a, b)| a * b).sum();
            for ((t, &x), &m) in tangent.iter_mut().zip(u).zip(&mean) {
                *t += (x - dot * m) * wi;
            }
        }
        let tn = tangent.iter().map(|x| x * x).sum::<f64>().sqrt() + eps;
        let avg_norm: f64 = norms.iter().zip(&w).map(|(a, b)| a * b).sum();
        let (c, s) = (tn.cos(), tn.sin() / tn);
        for (j, o) in out.iter_mut().enumerate() {
            *o = add_base(j, (mean[j] * c + tangent[j] * s) * avg_norm);
        }
        Ok(MergeNote::default())
    }
}
