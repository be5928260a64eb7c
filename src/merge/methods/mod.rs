//! Merge methods: one file each behind one trait, registered in `METHODS`. A method never
//! holds a whole tensor: what it needs of the whole tensor (norms, dot products, a magnitude
//! threshold) it gathers in streaming passes over row chunks (`MergeInput::pass`), then it
//! makes the result chunk by chunk (`Apply`). Reductions are in f64 over fixed blocks of the
//! tensor's elements (`stats::BlockSums`), so results never depend on the thread count or the
//! chunk size.

mod arcee_fusion;
pub(crate) mod buffers;
mod karcher;
mod linear;
mod model_stock;
mod nearswap;
mod passthrough;
mod ram;
mod sce;
mod slerp;
mod spherical;
pub(crate) mod stats;
mod task_arithmetic;

use crate::error::{Error, Result};
pub use buffers::BufferPool;

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

/// Everything a method sees for one output tensor: its shape, parameters, and its inputs'
/// rows, read chunk by chunk (never whole).
pub struct MergeInput<'a> {
    /// Number of inputs, the base included, in source order.
    pub n_inputs: usize,
    /// Index of the base model's tensor among the inputs.
    pub base: Option<usize>,
    /// Row length (ggml `shape[0]`), for per-row methods.
    pub row_len: usize,
    /// Number of rows (the tensor has `row_len * n_rows` elements).
    pub n_rows: usize,
    /// Shared parameters, by `ParamSpec` order of `Scope::Shared` entries.
    pub shared: &'a dyn Fn(&str) -> f64,
    /// Per-input parameters: `(input index, name)`.
    pub per_input: &'a dyn Fn(usize, &str) -> f64,
    /// Seed for random methods, derived from the recipe's seed and the tensor's name.
    pub seed: u64,
    /// The inputs' rows, for the passes that gather a statistic of the whole tensor.
    pub rows: &'a dyn Rows,
    /// Rows per chunk of a pass (at least 1).
    pub chunk_rows: usize,
    /// Rows of the result asked for at a time (the writer's chunk; at least 1), which sizes
    /// the buffers an `Apply` keeps.
    pub apply_rows: usize,
    /// A tensor that fits in one chunk is read once: its rows, held for the later passes (and
    /// for the rows of the result, see [`MergeInput::take_held`]).
    pub held: std::cell::RefCell<Option<Vec<Vec<f32>>>>,
    /// Where buffers come from and go back to (see `Apply::into_buffers`).
    pub pool: &'a BufferPool,
}

impl MergeInput<'_> {
    /// Elements in the tensor.
    pub fn n_elements(&self) -> usize {
        self.row_len * self.n_rows
    }

    /// Elements of one input in a chunk of a pass (the whole tensor when it is one chunk).
    pub fn chunk_len(&self) -> usize {
        self.chunk_rows.max(1).min(self.n_rows) * self.row_len
    }

    /// Elements of one input in a call of `Apply::apply` (at most; for sizing buffers).
    pub fn apply_len(&self) -> usize {
        self.apply_rows.min(self.chunk_rows).max(1).min(self.n_rows) * self.row_len
    }

    /// Whether the whole tensor is one chunk: a pass then reads it once and holds it, so a
    /// method may keep per-element results of its passes for the result's rows too.
    pub fn in_one_chunk(&self) -> bool {
        self.n_rows <= self.chunk_rows.max(1)
    }

    /// One pass over the whole tensor, chunk by chunk in row order: `f(first_row, chunks)`,
    /// `chunks[k]` holding those rows of input `k`. At most one chunk per input is in memory.
    pub fn pass(&self, mut f: impl FnMut(usize, &[&[f32]]) -> Result<()>) -> Result<()> {
        if self.n_rows > 0 && self.in_one_chunk() {
            // One chunk: read (dequantized) once, whatever the number of passes.
            let mut held = self.held.borrow_mut();
            if held.is_none() {
                let mut bufs: Vec<Vec<f32>> = (0..self.n_inputs)
                    .map(|_| self.pool.take(self.n_elements()))
                    .collect();
                self.rows.read(0, &mut bufs)?;
                self.rows.done(0, self.n_rows);
                *held = Some(bufs);
            }
            let bufs = held.as_ref().expect("just read");
            let refs: Vec<&[f32]> = bufs.iter().map(|b| b.as_slice()).collect();
            return f(0, &refs);
        }
        let mut bufs: Vec<Vec<f32>> = (0..self.n_inputs)
            .map(|_| self.pool.take(self.chunk_len()))
            .collect();
        let mut row = 0;
        let mut passed = Ok(());
        while row < self.n_rows && passed.is_ok() {
            let n = self.chunk_rows.max(1).min(self.n_rows - row);
            for b in bufs.iter_mut() {
                b.resize(n * self.row_len, 0.0);
            }
            passed = self.rows.read(row, &mut bufs).and_then(|()| {
                let refs: Vec<&[f32]> = bufs.iter().map(|b| b.as_slice()).collect();
                f(row, &refs)
            });
            self.rows.done(row, n);
            row += n;
        }
        self.pool.give(bufs);
        passed
    }

    /// The whole tensor's rows of every input, when a pass read them in one chunk.
    pub fn take_held(&self) -> Option<Vec<Vec<f32>>> {
        self.held.borrow_mut().take()
    }

    /// The inputs other than the base, in source order.
    pub fn others(&self) -> Vec<usize> {
        (0..self.n_inputs)
            .filter(|&i| Some(i) != self.base)
            .collect()
    }
}

/// Where a method's passes read the inputs' rows.
pub trait Rows: Sync {
    /// Rows `first_row..first_row + bufs[k].len() / row_len` of every input `k` into `bufs[k]`.
    fn read(&self, first_row: usize, bufs: &mut [Vec<f32>]) -> Result<()>;
    /// Those rows are done with (a memory-mapped input can drop their pages).
    fn done(&self, _first_row: usize, _n_rows: usize) {}
}

/// Whole tensors in memory as `Rows` (unit tests, small tensors).
pub struct InMemory<'a> {
    pub tensors: &'a [&'a [f32]],
    pub row_len: usize,
}

impl Rows for InMemory<'_> {
    fn read(&self, first_row: usize, bufs: &mut [Vec<f32>]) -> Result<()> {
        for (b, t) in bufs.iter_mut().zip(self.tensors) {
            let start = first_row * self.row_len;
            let n = b.len();
            b.copy_from_slice(&t[start..start + n]);
        }
        Ok(())
    }
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
    /// Gather what the method needs of the whole tensor (streaming passes over
    /// `input.rows`, none for element-wise methods) and return what makes its rows.
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>>;
    /// Whether the result is its one input's values unchanged, given that input's parameter
    /// values (`per_input[0]` of the plan): the writer may then copy the stored bytes.
    fn copies_input(&self, _per_input: &[(&'static str, f64)]) -> bool {
        false
    }
}

/// A method ready to produce one tensor's rows: any rows, in any chunks, always the same
/// values (a row depends only on the same rows of the inputs and the prepared statistics).
pub trait Apply: Send {
    /// Rows `first_row..first_row + out.len() / row_len` of the result, from the same rows of
    /// every input (`x[k]`, as long as `out`).
    fn apply(&mut self, first_row: usize, x: &[&[f32]], out: &mut [f32]) -> Result<()>;
    /// A remark for the run summary, once every row is done.
    fn note(&self) -> MergeNote {
        MergeNote::default()
    }
    /// The buffers it holds, for the next tensor's (`BufferPool`); called once every row is
    /// done.
    fn into_buffers(self: Box<Self>) -> Vec<Vec<f32>> {
        Vec::new()
    }
}

/// Merge whole in-memory tensors: prepare with chunks of `chunk_rows`, then apply in chunks of
/// `apply_rows` (unit tests and the chunking tests use this).
#[allow(clippy::too_many_arguments)]
pub fn merge_in_memory(
    method: &dyn Method,
    tensors: &[&[f32]],
    base: Option<usize>,
    row_len: usize,
    shared: &dyn Fn(&str) -> f64,
    per_input: &dyn Fn(usize, &str) -> f64,
    seed: u64,
    chunk_rows: usize,
    apply_rows: usize,
) -> Result<(Vec<f32>, MergeNote)> {
    let n = tensors[0].len();
    let row_len = row_len.clamp(1, n.max(1));
    let rows = InMemory { tensors, row_len };
    let pool = BufferPool::default();
    let input = MergeInput {
        n_inputs: tensors.len(),
        base,
        row_len,
        n_rows: n / row_len,
        shared,
        per_input,
        seed,
        rows: &rows,
        chunk_rows,
        apply_rows,
        held: Default::default(),
        pool: &pool,
    };
    let mut apply = method.prepare(&input)?;
    let mut out = vec![0f32; n];
    let step = apply_rows.max(1) * row_len;
    for (c, o) in out.chunks_mut(step).enumerate() {
        let start = c * step;
        let x: Vec<&[f32]> = tensors.iter().map(|t| &t[start..start + o.len()]).collect();
        apply.apply(c * apply_rows.max(1), &x, o)?;
    }
    Ok((out, apply.note()))
}

/// An element-wise method's `Apply` from a closure.
pub(crate) struct Elementwise<F>(pub F);

impl<F> Apply for Elementwise<F>
where
    F: FnMut(usize, &[&[f32]], &mut [f32]) -> Result<()> + Send,
{
    fn apply(&mut self, first_row: usize, x: &[&[f32]], out: &mut [f32]) -> Result<()> {
        (self.0)(first_row, x, out)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs for every method: four tensors of 700 rows of 101 values (more than one
    /// summation block, rows that no chunk below divides), with repeated values (ties for
    /// the magnitude selections) and with zeros.
    fn inputs() -> Vec<Vec<f32>> {
        let mut x = 0x9e37_79b9u32;
        (0..4)
            .map(|k| {
                (0..700 * 101)
                    .map(|j| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        match j % 5 {
                            // Repeated magnitudes, equal across inputs sometimes.
                            0 => ((x % 7) as f32 - 3.0) * 0.01,
                            1 if k == 0 => 0.0,
                            _ => (x as f32 / u32::MAX as f32 - 0.5) * 0.1,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Parameters that exercise each method's passes.
    fn param_value(method: &str, name: &str, k: usize) -> Option<f64> {
        Some(match name {
            "weight" => [0.2, 0.5, 0.3, 0.4][k],
            "density" => [0.3, 0.5, 0.7, 0.4][k],
            "t" => 0.3,
            "select_topk" => 0.4,
            "gamma" => 0.05,
            "epsilon" if method.starts_with("della") => 0.1,
            "nuslerp_row_wise" => 1.0,
            "nuslerp_flatten" => 0.0,
            "filter_wise" => 0.0,
            "scale" => 0.5,
            _ => return None,
        })
    }

    #[test]
    fn every_method_gives_the_same_bits_at_any_chunk_size_and_thread_count() {
        let data = inputs();
        for m in METHODS {
            let (lo, hi) = m.inputs();
            let n_inputs = 4.clamp(lo, hi);
            let tensors: Vec<&[f32]> = data[..n_inputs].iter().map(|v| v.as_slice()).collect();
            let spec = |name: &str| {
                m.params()
                    .iter()
                    .find(|p| p.name == name)
                    .unwrap_or_else(|| panic!("{} has no {name}", m.name()))
            };
            let shared = |name: &str| {
                param_value(m.name(), name, 0)
                    .or(spec(name).default)
                    .unwrap()
            };
            let per = |k: usize, name: &str| {
                param_value(m.name(), name, k)
                    .or(spec(name).default)
                    .unwrap()
            };
            let run = |chunk: usize, apply: usize, threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    merge_in_memory(*m, &tensors, Some(0), 101, &shared, &per, 42, chunk, apply)
                })
                .unwrap_or_else(|e| panic!("{}: {e}", m.name()))
                .0
            };
            let whole = run(700, 700, 1);
            assert!(whole.iter().all(|v| v.is_finite()), "{}", m.name());
            assert!(
                whole.iter().zip(tensors[0]).any(|(a, b)| a != b) || m.name() == "passthrough",
                "{}: the merge changed nothing",
                m.name()
            );
            for (chunk, apply, threads) in [(1, 1, 1), (3, 7, 2), (650, 1, 3), (64, 700, 4)] {
                let got = run(chunk, apply, threads);
                let same = got
                    .iter()
                    .zip(&whole)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{}: chunks of {chunk} rows (applied {apply} at a time) at {threads} threads change the result",
                    m.name()
                );
            }
        }
    }
}
