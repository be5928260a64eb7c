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
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let w: Vec<f32> = (0..input.n_inputs)
            .map(|i| (input.per_input)(i, "weight") as f32)
            .collect();
        let normalize = (input.shared)("normalize") != 0.0;
        Ok(Box::new(Elementwise(
            move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                out.fill(0.0);
                for (x, &wi) in x.iter().zip(&w) {
                    for (o, &v) in out.iter_mut().zip(x.iter()) {
                        *o += v * wi;
                    }
                }
                if normalize {
                    let total: f32 = w.iter().sum();
                    for o in out.iter_mut() {
                        *o /= total;
                    }
                }
                Ok(())
            },
        )))
    }
}
