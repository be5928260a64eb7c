//! `linear`: Σ wᵢ·xᵢ, divided by Σ wᵢ when `normalize` (mergekit's model soup).

use super::*;

pub struct Linear;

impl Method for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[
            param("weight", Scope::Input, None),
            param("normalize", Scope::Shared, Some(1.0)),
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
        let w: Vec<f32> = (0..input.tensors.len())
            .map(|i| (input.per_input)(i, "weight") as f32)
            .collect();
        out.fill(0.0);
        for (x, &wi) in input.tensors.iter().zip(&w) {
            for (o, &v) in out.iter_mut().zip(x.iter()) {
                *o += v * wi;
            }
        }
        if (input.shared)("normalize") != 0.0 {
            let total: f32 = w.iter().sum();
            for o in out.iter_mut() {
                *o /= total;
            }
        }
        Ok(MergeNote::default())
    }
}
