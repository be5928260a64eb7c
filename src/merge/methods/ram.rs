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
                // Integer counts: any split into blocks gives the same totals.
                const BLOCK: usize = 4096;
                let n = x[b].len();
                let epsf = eps as f32;
                let part = (0..n.div_ceil(BLOCK))
                    .into_par_iter()
                    .fold(
                        || vec![(0u64, 0u64); others.len()],
                        |mut acc, blk| {
                            let (start, end) = (blk * BLOCK, ((blk + 1) * BLOCK).min(n));
                            let base = &x[b][start..end];
                            let mut count = [0u32; BLOCK];
                            count_changed(x, b, &others, epsf, start, &mut count[..end - start]);
                            for (a, &k) in acc.iter_mut().zip(&others) {
                                let (mut shared, mut unique) = (0u64, 0u64);
                                for ((&c, &v), &bv) in count.iter().zip(&x[k][start..end]).zip(base)
                                {
                                    let ch = ((v - bv).abs() > epsf) as u64;
                                    unique += ch & (c == 1) as u64;
                                    shared += ch & (c != 1) as u64;
                                }
                                a.0 += shared;
                                a.1 += unique;
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
                // Blocks of elements in parallel, each model's pass over a block written
                // branch-free so that it vectorizes; every element's sum takes the same terms
                // in the same order as the serial definition (models in source order).
                const BLOCK: usize = 4096;
                let eps = eps as f32;
                out.par_chunks_mut(BLOCK).enumerate().for_each(|(blk, o)| {
                    let (start, len) = (blk * BLOCK, o.len());
                    let base = &x[b][start..start + len];
                    let mut count = [0u32; BLOCK];
                    count_changed(x, b, &others, eps, start, &mut count[..len]);
                    let mut sum = [0f32; BLOCK];
                    for (&k, &lambda) in others.iter().zip(&lambdas) {
                        let lanes = sum
                            .iter_mut()
                            .zip(&count)
                            .zip(&x[k][start..start + len])
                            .zip(base);
                        for (((s, &c), &v), &bv) in lanes {
                            let tv = v - bv;
                            let add = if c == 1 { tv * lambda } else { tv / c as f32 };
                            *s = if tv.abs() > eps { *s + add } else { *s };
                        }
                    }
                    for ((o, &bv), &s) in o.iter_mut().zip(base).zip(&sum) {
                        *o = bv + s;
                    }
                });
                Ok(())
            },
        )))
    }
}

/// For local elements `start..start + count.len()`: how many of the inputs `others` change
/// the base `b` by more than `eps`, added to `count` (one branch-free pass per input, so that
/// it vectorizes).
fn count_changed(
    x: &[&[f32]],
    b: usize,
    others: &[usize],
    eps: f32,
    start: usize,
    count: &mut [u32],
) {
    let base = &x[b][start..start + count.len()];
    for &k in others {
        for ((c, &v), &bv) in count.iter_mut().zip(&x[k][start..]).zip(base) {
            *c += ((v - bv).abs() > eps) as u32;
        }
    }
}
