//! `slerp`: spherical interpolation between the base and one other model, over the whole
//! tensor; linear interpolation when the two are (anti)collinear (|cos| > 0.9995).

use super::stats::BlockSums;
use super::*;

pub struct Slerp;

/// The coefficients of `v0` and `v1` in the slerp `v0 → v1` at `t`, from Σv0², Σv1² and
/// Σv0·v1 (in f64).
pub fn slerp_coefficients(t: f64, n0_sq: f64, n1_sq: f64, dot: f64) -> (f32, f32) {
    const DOT_THRESHOLD: f64 = 0.9995;
    const EPS: f64 = 1e-8;
    let (n0, n1) = (n0_sq.sqrt(), n1_sq.sqrt());
    let n0 = if n0 > EPS { n0 } else { 1.0 };
    let n1 = if n1 > EPS { n1 } else { 1.0 };
    let dot = (dot / (n0 * n1)).clamp(-1.0, 1.0);
    let (ca, cb) = if dot.abs() > DOT_THRESHOLD {
        (1.0 - t, t)
    } else {
        let theta = dot.acos();
        let s = theta.sin();
        (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
    };
    (ca as f32, cb as f32)
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
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let b = input.base.expect("slerp has a base");
        let o = 1 - b;
        // One pass: Σv0², Σv1², Σv0·v1.
        let mut sums = BlockSums::new(3);
        input.pass(|_, x| {
            let (v0, v1) = (x[b], x[o]);
            sums.feed(v0.len(), |r, acc| {
                for (&a, &c) in v0[r.clone()].iter().zip(&v1[r]) {
                    let (a, c) = (a as f64, c as f64);
                    acc[0] += a * a;
                    acc[1] += c * c;
                    acc[2] += a * c;
                }
            });
            Ok(())
        })?;
        let s = sums.values();
        let (ca, cb) = slerp_coefficients((input.shared)("t"), s[0], s[1], s[2]);
        Ok(Box::new(Elementwise(
            move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                for ((o, &a), &c) in out.iter_mut().zip(x[b]).zip(x[o]) {
                    *o = ca * a + cb * c;
                }
                Ok(())
            },
        )))
    }
}
