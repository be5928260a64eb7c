//! `slerp`: spherical interpolation between the base and one other model, over the whole
//! tensor; linear interpolation when the two are (anti)collinear (|cos| > 0.9995).

use super::*;

pub struct Slerp;

/// `v0 → v1` at `t`; norms and the dot product are computed in f64.
pub fn slerp(t: f64, v0: &[f32], v1: &[f32], out: &mut [f32]) {
    const DOT_THRESHOLD: f64 = 0.9995;
    const EPS: f64 = 1e-8;
    let n0 = norm2(v0).sqrt();
    let n1 = norm2(v1).sqrt();
    let n0 = if n0 > EPS { n0 } else { 1.0 };
    let n1 = if n1 > EPS { n1 } else { 1.0 };
    let dot: f64 = v0
        .iter()
        .zip(v1)
        .map(|(&a, &b)| (a as f64 / n0) * (b as f64 / n1))
        .sum();
    let dot = dot.clamp(-1.0, 1.0);
    let (ca, cb) = if dot.abs() > DOT_THRESHOLD {
        (1.0 - t, t)
    } else {
        let theta = dot.acos();
        let s = theta.sin();
        (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
    };
    let (ca, cb) = (ca as f32, cb as f32);
    for ((o, &a), &b) in out.iter_mut().zip(v0).zip(v1) {
        *o = ca * a + cb * b;
    }
}

impl Method for Slerp {
    fn name(&self) -> &'static str {
        "slerp"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[param("t", Scope::Shared, None)];
        P
    }
    fn base(&self) -> Base {
        Base::Required
    }
    fn inputs(&self) -> (usize, usize) {
        (2, 2)
    }
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote> {
        let b = input.base.expect("slerp has a base");
        slerp(
            (input.shared)("t"),
            input.tensors[b],
            input.tensors[1 - b],
            out,
        );
        Ok(MergeNote::default())
    }
}
