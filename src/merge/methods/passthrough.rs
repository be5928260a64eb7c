//! `passthrough`: one input, copied, optionally multiplied by `scale` (frankenmerges, layer
//! duplication with calibration scales).

use super::*;

pub struct Passthrough;

impl Method for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[param("scale", Scope::Input, Some(1.0))];
        P
    }
    fn base(&self) -> Base {
        Base::Optional
    }
    fn inputs(&self) -> (usize, usize) {
        (1, 1)
    }
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote> {
        let scale = (input.per_input)(0, "scale") as f32;
        for (o, &x) in out.iter_mut().zip(input.tensors[0]) {
            *o = x * scale;
        }
        Ok(MergeNote::default())
    }
}
