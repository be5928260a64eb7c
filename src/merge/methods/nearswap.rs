//! `nearswap`: keep the base except where base and secondary are within `t`:
//! w = clamp(t / |v0 − v1|, 0, 1) (|v0 − v1| floored at 1e-6, so equal values swap fully),
//! result = lerp(v0, v1, w). Several secondaries chain in order.

use super::*;

pub struct NearSwap;

impl Method for NearSwap {
    fn name(&self) -> &'static str {
        "nearswap"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[param("t", Scope::Shared, None)];
        P
    }
    fn base(&self) -> Base {
        Base::Required
    }
    fn inputs(&self) -> (usize, usize) {
        (2, usize::MAX)
    }
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote> {
        let b = input.base.expect("nearswap has a base");
        let t = (input.shared)("t") as f32;
        out.copy_from_slice(input.tensors[b]);
        let mut moved = 0f64;
        let mut full = 0usize;
        let mut rounds = 0usize;
        for (i, other) in input.tensors.iter().enumerate().filter(|(i, _)| *i != b) {
            let _ = i;
            rounds += 1;
            for (o, &v1) in out.iter_mut().zip(other.iter()) {
                let v0 = *o;
                let w = (t / (v0 - v1).abs().max(1e-6)).clamp(0.0, 1.0);
                let w = if w.is_nan() { 1.0 } else { w };
                moved += w as f64;
                full += (w >= 1.0) as usize;
                *o = w * v1 + (1.0 - w) * v0;
            }
        }
        let n = (out.len() * rounds.max(1)) as f64;
        Ok(MergeNote {
            text: Some(format!(
                "swapped {:.2}% fully, mean weight {:.4}",
                100.0 * full as f64 / n,
                moved / n
            )),
        })
    }
}
