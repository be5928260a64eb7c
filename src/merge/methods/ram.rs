//! `ram` and `ramplus_tl` (Reinforced Agent Merging): task-vector elements changed by one
//! model only are kept whole, those changed by several are averaged; RAM+ (tensor-local)
//! boosts each model's unique elements by 1 + r·clamp(shared/unique, 0, α).

use super::*;

pub struct Ram {
    plus: bool,
}

pub static RAM: Ram = Ram { plus: false };
pub static RAMPLUS_TL: Ram = Ram { plus: true };

impl Method for Ram {
    fn name(&self) -> &'static str {
        if self.plus {
            "ramplus_tl"
        } else {
            "ram"
        }
    }
    fn params(&self) -> &'static [ParamSpec] {
        const RAM_P: &[ParamSpec] = &[param("epsilon", Scope::Shared, Some(1e-5))];
        const PLUS_P: &[ParamSpec] = &[
            param("r", Scope::Shared, Some(0.1)),
            param("alpha", Scope::Shared, Some(0.2)),
            param("epsilon", Scope::Shared, Some(1e-5)),
        ];
        if self.plus {
            PLUS_P
        } else {
            RAM_P
        }
    }
    fn base(&self) -> Base {
        Base::Required
    }
    fn inputs(&self) -> (usize, usize) {
        (1, usize::MAX)
    }
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote> {
        let b = input.base.expect("ram has a base");
        let base = input.tensors[b];
        let others: Vec<&[f32]> = (0..input.tensors.len())
            .filter(|&i| i != b)
            .map(|i| input.tensors[i])
            .collect();
        let eps = (input.shared)("epsilon");
        let changed = |k: usize, i: usize| (others[k][i] - base[i]).abs() > eps as f32;
        let count = |i: usize| (0..others.len()).filter(|&k| changed(k, i)).count();
        let lambdas: Vec<f32> = if self.plus {
            let (r, alpha) = ((input.shared)("r"), (input.shared)("alpha"));
            (0..others.len())
                .map(|k| {
                    let (mut shared, mut unique) = (0usize, 0usize);
                    for i in 0..base.len() {
                        if changed(k, i) {
                            match count(i) {
                                1 => unique += 1,
                                _ => shared += 1,
                            }
                        }
                    }
                    let rho = shared as f64 / (unique as f64).max(eps);
                    (1.0 + r * rho.clamp(0.0, alpha)) as f32
                })
                .collect()
        } else {
            vec![1.0; others.len()]
        };
        for (i, o) in out.iter_mut().enumerate() {
            let c = count(i);
            let mut sum = 0f32;
            for (k, other) in others.iter().enumerate() {
                if changed(k, i) {
                    let tv = other[i] - base[i];
                    sum += if c == 1 {
                        tv * lambdas[k]
                    } else {
                        tv / c as f32
                    };
                }
            }
            *o = base[i] + sum;
        }
        Ok(MergeNote::default())
    }
}
