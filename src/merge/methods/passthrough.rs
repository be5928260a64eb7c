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
    fn copies_input(&self, per_input: &[(&'static str, f64)]) -> bool {
        per_input
            .iter()
            .find(|(name, _)| *name == "scale")
            .is_none_or(|(_, scale)| *scale == 1.0)
    }
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let scale = (input.per_input)(0, "scale") as f32;
        Ok(Box::new(Elementwise(
            move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                for (o, &v) in out.iter_mut().zip(x[0]) {
                    *o = v * scale;
                }
                Ok(())
            },
        )))
    }
}
