//! `ram` and `ramplus_tl` (Reinforced Agent Merging): task-vector elements changed by one
//! model only are kept whole, those changed by several are averaged; RAM+ (tensor-local)
//! boosts each model's unique elements by 1 + r·clamp(shared/unique, 0, α).

use super::*;
use rayon::prelude::*;

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
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        let b = input.base.expect("ram has a base");
        let others = input.others();
        let eps = (input.shared)("epsilon");
        let lambdas: Vec<f32> = if self.plus {
            let (r, alpha) = ((input.shared)("r"), (input.shared)("alpha"));
            // Per model: elements it changes alone (unique) and with others (shared), counted
            // in one pass.
            let mut counts = vec![(0u64, 0u64); others.len()];
            input.pass(|_, x| {
                let part = (0..x[b].len())
                    .into_par_iter()
                    .with_min_len(1 << 14)
                    .fold(
                        || vec![(0u64, 0u64); others.len()],
                        |mut acc, i| {
                            let c = changed_count(x, b, &others, eps, i);
                            for (k, &o) in others.iter().enumerate() {
                                if changed(x, b, o, eps, i) {
                                    match c {
                                        1 => acc[k].1 += 1,
                                        _ => acc[k].0 += 1,
                                    }
                                }
                            }
                            acc
                        },
                    )
                    .reduce(
                        || vec![(0u64, 0u64); others.len()],
                        |mut a, c| {
                            for (x, y) in a.iter_mut().zip(c) {
                                x.0 += y.0;
                                x.1 += y.1;
                            }
                            a
                        },
                    );
                for (x, y) in counts.iter_mut().zip(part) {
                    x.0 += y.0;
                    x.1 += y.1;
                }
                Ok(())
            })?;
            counts
                .iter()
                .map(|&(shared, unique)| {
                    let rho = shared as f64 / (unique as f64).max(eps);
                    (1.0 + r * rho.clamp(0.0, alpha)) as f32
                })
                .collect()
        } else {
            vec![1.0; others.len()]
        };
        Ok(Box::new(Elementwise(
            move |_: usize, x: &[&[f32]], out: &mut [f32]| {
                out.par_iter_mut().enumerate().for_each(|(i, o)| {
                    let c = changed_count(x, b, &others, eps, i);
                    let mut sum = 0f32;
                    for (k, &other) in others.iter().enumerate() {
                        if changed(x, b, other, eps, i) {
                            let tv = x[other][i] - x[b][i];
                            sum += if c == 1 {
                                tv * lambdas[k]
                            } else {
                                tv / c as f32
                            };
                        }
                    }
                    *o = x[b][i] + sum;
                });
                Ok(())
            },
        )))
    }
}

/// Whether input `k` changes element `i` of the base `b` by more than `eps`.
#[inline]
fn changed(x: &[&[f32]], b: usize, k: usize, eps: f64, i: usize) -> bool {
    (x[k][i] - x[b][i]).abs() > eps as f32
}

/// How many inputs change element `i`.
#[inline]
fn changed_count(x: &[&[f32]], b: usize, others: &[usize], eps: f64, i: usize) -> usize {
    others.iter().filter(|&&k| changed(x, b, k, eps, i)).count()
}
