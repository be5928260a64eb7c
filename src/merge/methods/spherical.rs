//! `nuslerp` and `multislerp`: spherical interpolation of two or more models, optionally of
//! their task vectors from a base (mergekit's definitions; norms and dot products in f64).

use super::stats::BlockSums;
use super::*;
use rayon::prelude::*;

/// nuslerp's coefficients of `v0` and `v1` at `t`, from Σv0², Σv1² and Σv0·v1 of one vector.
fn nuslerp_coefficients(t: f64, n0_sq: f64, n1_sq: f64, dot: f64) -> (f64, f64) {
    const EPS: f64 = 1e-8;
    let n0 = n0_sq.sqrt().max(1e-7);
    let n1 = n1_sq.sqrt().max(1e-7);
    let cos = (dot / (n0 * n1)).clamp(-1.0, 1.0);
    let colinear = 1.0 - cos * cos <= EPS * EPS;
    if colinear {
        (1.0 - t, t)
    } else {
        let theta = cos.acos();
        let s = theta.sin();
        (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
    }
}

/// Element `j` of the delta of input `i` from the base (the input itself without a base).
#[inline]
fn delta(x: &[&[f32]], base: Option<usize>, i: usize, j: usize) -> f64 {
    x[i][j] as f64 - base.map_or(0.0, |b| x[b][j] as f64)
}

/// The upper triangle of the Gram matrix of the deltas `x[i] - x[base]` (`i` in `others`; no
/// base: the inputs themselves) over local elements `r`, added to `acc` (`m × m`, row-major)
/// element by element in order, in f64.
pub(crate) fn gram_upper(
    x: &[&[f32]],
    base: Option<usize>,
    others: &[usize],
    r: std::ops::Range<usize>,
    acc: &mut [f64],
) {
    let m = others.len();
    match m {
        2 => gram_part::<2>(x, base, others, r, acc),
        3 => gram_part::<3>(x, base, others, r, acc),
        4 => gram_part::<4>(x, base, others, r, acc),
        _ => {
            let mut d = vec![0f64; m];
            for j in r {
                for (dk, &i) in d.iter_mut().zip(others) {
                    *dk = delta(x, base, i, j);
                }
                for a in 0..m {
                    for b in a..m {
                        acc[a * m + b] += d[a] * d[b];
                    }
                }
            }
        }
    }
}

/// `gram_upper` with `M` known, so that the sums sit in registers (the same additions in the
/// same order).
#[inline]
fn gram_part<const M: usize>(
    x: &[&[f32]],
    base: Option<usize>,
    others: &[usize],
    r: std::ops::Range<usize>,
    acc: &mut [f64],
) {
    let mut g = [[0f64; M]; M];
    for a in 0..M {
        for b in a..M {
            g[a][b] = acc[a * M + b];
        }
    }
    let rows: [&[f32]; M] = std::array::from_fn(|k| x[others[k]]);
    for j in r {
        let bv = base.map_or(0.0, |b| x[b][j] as f64);
        let d: [f64; M] = std::array::from_fn(|k| rows[k][j] as f64 - bv);
        for a in 0..M {
            for b in a..M {
                g[a][b] += d[a] * d[b];
            }
        }
    }
    for a in 0..M {
        for b in a..M {
            acc[a * M + b] = g[a][b];
        }
    }
}

/// How nuslerp cuts the tensor into vectors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vectors {
    Whole,
    Rows,
    Columns,
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
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let others = input.others();
        if others.len() != 2 {
            return Err(Error::Invalid(format!(
                "nuslerp merges exactly two models besides the base, got {}",
                others.len()
            )));
        }
        let (i0, i1) = (others[0], others[1]);
        let (w0, w1) = (
            (input.per_input)(i0, "weight"),
            (input.per_input)(i1, "weight"),
        );
        let total = w0 + w1;
        let t = if total.abs() < 1e-6 { 0.5 } else { w1 / total };
        let base = input.base;
        let (row, rows) = (input.row_len, input.n_rows);
        let mode = if (input.shared)("nuslerp_flatten") != 0.0 || rows == 1 {
            Vectors::Whole
        } else if (input.shared)("nuslerp_row_wise") != 0.0 {
            // mergekit's dim=0: one vector per column (down the rows).
            Vectors::Columns
        } else {
            Vectors::Rows
        };
        // Coefficients per vector: one for the whole tensor, or one per column (summed down
        // the rows in row order); rows are done one by one as they come.
        let coefficients: Vec<(f64, f64)> = match mode {
            Vectors::Rows => Vec::new(),
            Vectors::Whole => {
                let mut sums = BlockSums::new(3);
                input.pass(|_, x| {
                    sums.feed(x[0].len(), |r, acc| {
                        for j in r {
                            let (a, b) = (delta(x, base, i0, j), delta(x, base, i1, j));
                            acc[0] += a * a;
                            acc[1] += b * b;
                            acc[2] += a * b;
                        }
                    });
                    Ok(())
                })?;
                let s = sums.values();
                vec![nuslerp_coefficients(t, s[0], s[1], s[2])]
            }
            Vectors::Columns => {
                let mut sums = vec![[0f64; 3]; row];
                input.pass(|_, x| {
                    sums.par_iter_mut().enumerate().for_each(|(c, acc)| {
                        for j in (c..x[0].len()).step_by(row) {
                            let (a, b) = (delta(x, base, i0, j), delta(x, base, i1, j));
                            acc[0] += a * a;
                            acc[1] += b * b;
                            acc[2] += a * b;
                        }
                    });
                    Ok(())
                })?;
                sums.iter()
                    .map(|s| nuslerp_coefficients(t, s[0], s[1], s[2]))
                    .collect()
            }
        };
        Ok(Box::new(Elementwise(
            move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                out.par_chunks_mut(row).enumerate().for_each(|(r, o)| {
                    let off = r * row;
                    let row_coefficients = (mode == Vectors::Rows).then(|| {
                        let mut s = [0f64; 3];
                        for j in off..off + o.len() {
                            let (a, b) = (delta(x, base, i0, j), delta(x, base, i1, j));
                            s[0] += a * a;
                            s[1] += b * b;
                            s[2] += a * b;
                        }
                        nuslerp_coefficients(t, s[0], s[1], s[2])
                    });
                    for (c, v) in o.iter_mut().enumerate() {
                        let j = off + c;
                        let (ca, cb) = match mode {
                            Vectors::Whole => coefficients[0],
                            Vectors::Columns => coefficients[c],
                            Vectors::Rows => row_coefficients.expect("per row"),
                        };
                        let res = ca * delta(x, base, i0, j) + cb * delta(x, base, i1, j);
                        *v = (res + base.map_or(0.0, |b| x[b][j] as f64)) as f32;
                    }
                });
                Ok(())
            },
        )))
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
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let eps = (input.shared)("eps");
        let others = input.others();
        let base = input.base;
        if others.len() == 1 {
            let only = others[0];
            return Ok(Box::new(Elementwise(
                move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                    out.copy_from_slice(x[only]);
                    Ok(())
                },
            )));
        }
        let m = others.len();
        let mut w: Vec<f64> = others
            .iter()
            .map(|&i| (input.per_input)(i, "weight"))
            .collect();
        if (input.shared)("normalize_weights") != 0.0 {
            let s: f64 = w.iter().sum();
            w.iter_mut().for_each(|x| *x /= s);
        }
        // Everything below is a combination of the deltas vᵢ: one pass gathers their Gram
        // matrix Gᵢₖ = vᵢ·vₖ, and the mean direction, the tangent and their norms follow from
        // it (unit uᵢ = vᵢ / (‖vᵢ‖ + eps)).
        let mut sums = BlockSums::new(m * m);
        input.pass(|_, x| {
            sums.feed(x[0].len(), |r, acc| gram_upper(x, base, &others, r, acc));
            Ok(())
        })?;
        let g = symmetric(&sums.values(), m);
        let norms: Vec<f64> = (0..m).map(|i| g[i * m + i].sqrt()).collect();
        let quad = |a: &[f64], b: &[f64]| -> f64 {
            let mut s = 0.0;
            for i in 0..m {
                for k in 0..m {
                    s += a[i] * g[i * m + k] * b[k];
                }
            }
            s
        };
        // mean = Σ wᵢ uᵢ, as coefficients of the vᵢ.
        let mean: Vec<f64> = (0..m).map(|i| w[i] / (norms[i] + eps)).collect();
        let mean_norm = quad(&mean, &mean).max(0.0).sqrt();
        let coef = if mean_norm < eps {
            if m != 2 {
                return Err(Error::Invalid(
                    "multislerp: the weighted sum of the inputs is zero".into(),
                ));
            }
            w.clone()
        } else {
            let unit_mean: Vec<f64> = mean.iter().map(|c| c / mean_norm).collect();
            // tangent = Σ wᵢ (uᵢ − (uᵢ·m̂) m̂)
            let mut tangent = vec![0f64; m];
            let mut along = 0.0;
            for i in 0..m {
                let mut e = vec![0f64; m];
                e[i] = 1.0 / (norms[i] + eps);
                let dot = quad(&e, &unit_mean);
                tangent[i] += w[i] * e[i];
                along += w[i] * dot;
            }
            for (t, um) in tangent.iter_mut().zip(&unit_mean) {
                *t -= along * um;
            }
            let tn = quad(&tangent, &tangent).max(0.0).sqrt() + eps;
            let avg_norm: f64 = norms.iter().zip(&w).map(|(a, b)| a * b).sum();
            let (c, s) = (tn.cos(), tn.sin() / tn);
            unit_mean
                .iter()
                .zip(&tangent)
                .map(|(um, t)| (um * c + t * s) * avg_norm)
                .collect()
        };
        Ok(Box::new(Elementwise(
            move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                out.par_iter_mut().enumerate().for_each(|(j, o)| {
                    let mut v = 0f64;
                    for (&c, &i) in coef.iter().zip(&others) {
                        v += c * delta(x, base, i, j);
                    }
                    *o = (v + base.map_or(0.0, |b| x[b][j] as f64)) as f32;
                });
                Ok(())
            },
        )))
    }
}

/// The full symmetric matrix from its upper triangle (row-major `m × m`, lower part unset).
pub(crate) fn symmetric(upper: &[f64], m: usize) -> Vec<f64> {
    let mut g = upper.to_vec();
    for a in 0..m {
        for b in 0..a {
            g[a * m + b] = g[b * m + a];
        }
    }
    g
}
