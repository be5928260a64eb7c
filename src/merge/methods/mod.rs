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

/// Σ x² in f64, in order.
pub(crate) fn norm2(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}
