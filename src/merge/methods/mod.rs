//! Merge methods: one file each behind one trait, registered in `METHODS`. Every method works
//! on whole tensors as f32 slices, computes in a fixed order (results never depend on the
//! thread count) and accumulates reductions in f64.

mod arcee_fusion;
mod karcher;
mod linear;
mod model_stock;
mod nearswap;
mod passthrough;
mod ram;
mod sce;
mod slerp;
mod spherical;
mod task_arithmetic;

use crate::error::{Error, Result};

/// Where a parameter is read: once per tensor, or per input model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Shared,
    /// Per input, every input including the base.
    Input,
    /// Per input, the base model excluded (mergekit's NON_BASE).
    NonBase,
}

/// A parameter a method takes; `default: None` means required.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub scope: Scope,
    pub default: Option<f64>,
}

pub const fn param(name: &'static str, scope: Scope, default: Option<f64>) -> ParamSpec {
    ParamSpec {
        name,
        scope,
        default,
    }
}

/// Whether a method needs `base_model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Required,
    Optional,
}

/// Everything a method sees for one output tensor.
pub struct MergeInput<'a> {
    /// Input tensors in source order (all the same length).
    pub tensors: &'a [&'a [f32]],
    /// Index of the base model's tensor in `tensors`.
    pub base: Option<usize>,
    /// Row length (ggml `shape[0]`), for per-row methods.
    pub row_len: usize,
    /// Shared parameters, by `ParamSpec` order of `Scope::Shared` entries.
    pub shared: &'a dyn Fn(&str) -> f64,
    /// Per-input parameters: `(input index, name)`.
    pub per_input: &'a dyn Fn(usize, &str) -> f64,
    /// Seed for random methods, derived from the recipe's seed and the tensor's name.
    pub seed: u64,
}

/// What a method reports about one tensor (shown in the run summary).
#[derive(Clone, Debug, Default)]
pub struct MergeNote {
    pub text: Option<String>,
}

pub trait Method: Sync {
    fn name(&self) -> &'static str;
    fn params(&self) -> &'static [ParamSpec];
    fn base(&self) -> Base;
    /// (min, max) number of inputs, the base included.
    fn inputs(&self) -> (usize, usize);
    fn merge(&self, input: &MergeInput, out: &mut [f32]) -> Result<MergeNote>;
}

/// Every method smelt implements.
pub static METHODS: &[&dyn Method] = &[
    &passthrough::Passthrough,
    &linear::Linear,
    &slerp::Slerp,
    &spherical::NuSlerp,
    &spherical::MultiSlerp,
    &task_arithmetic::TASK_ARITHMETIC,
    &task_arithmetic::TIES,
    &task_arithmetic::DARE_TIES,
    &task_arithmetic::DARE_LINEAR,
    &task_arithmetic::BREADCRUMBS,
    &task_arithmetic::BREADCRUMBS_TIES,
    &task_arithmetic::DELLA,
    &task_arithmetic::DELLA_LINEAR,
    &model_stock::ModelStock,
    &karcher::Karcher,
    &sce::Sce,
    &ram::RAM,
    &ram::RAMPLUS_TL,
    &arcee_fusion::ArceeFusion,
    &nearswap::NearSwap,
];

pub fn find(name: &str) -> Result<&'static dyn Method> {
    METHODS
        .iter()
        .copied()
        .find(|m| m.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = METHODS.iter().map(|m| m.name()).collect();
            Error::Invalid(format!(
                "unknown merge method `{name}`; smelt has: {}",
                names.join(", ")
            ))
        })
}

/// A parameter's own domain, as mergekit defines it; the message says what it must be.
pub fn check_param(method: &str, name: &str, v: f64) -> std::result::Result<(), String> {
    // Methods compute in f32: every value must be finite there.
    if !v.is_finite() || v.abs() > f32::MAX as f64 {
        return Err(format!("must be a finite number, not {v:?}"));
    }
    let (ok, domain) = match (method, name) {
        (_, "density" | "select_topk") => (v > 0.0 && v <= 1.0, "in (0, 1]"),
        (_, "gamma") => ((0.0..1.0).contains(&v), "in [0, 1)"),
        ("della" | "della_linear", "epsilon") => ((0.0..1.0).contains(&v), "in [0, 1)"),
        (_, "epsilon" | "eps" | "tol") => (v >= 0.0, "at least 0"),
        _ => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("must be {domain}, not {v:?}"))
    }
}

/// One tensor's parameters checked against each other (each is already in its own domain):
/// the message says what is wrong.
pub fn check_combination(
    method: &str,
    shared: &[(&str, f64)],
    per_input: &[Vec<(&str, f64)>],
) -> std::result::Result<(), String> {
    let get = |list: &[(&str, f64)], name: &str| list.iter().find(|p| p.0 == name).map(|p| p.1);
    // The weights, summed in f32 as the methods sum them.
    let weight_sum: f32 = per_input
        .iter()
        .filter_map(|p| get(p, "weight"))
        .map(|w| w as f32)
        .sum();
    match method {
        "linear" if get(shared, "normalize") != Some(0.0) && weight_sum == 0.0 => {
            Err("the weights sum to 0 and `normalize` divides by their sum".into())
        }
        "multislerp" if get(shared, "normalize_weights") != Some(0.0) && weight_sum == 0.0 => {
            Err("the weights sum to 0 and `normalize_weights` divides by their sum".into())
        }
        "della" | "della_linear" => {
            for p in per_input {
                if let (Some(d), Some(e)) = (get(p, "density"), get(p, "epsilon")) {
                    if d < 1.0 && (d - e <= 0.0 || d + e >= 1.0) {
                        return Err(format!(
                            "density ± epsilon must stay inside (0, 1) (density {d}, epsilon {e})"
                        ));
                    }
                }
            }
            Ok(())
        }
        "breadcrumbs" | "breadcrumbs_ties" => {
            for p in per_input {
                if let (Some(d), Some(g)) = (get(p, "density"), get(p, "gamma")) {
                    if d < 1.0 && d + g > 1.0 {
                        return Err(format!(
                            "density + gamma must be at most 1 (density {d}, gamma {g})"
                        ));
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Σ x² in f64, in order.
pub(crate) fn norm2(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}
