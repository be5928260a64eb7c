//! `quantize --target-bpw` / `--target-size`: every quantizable tensor's type chosen to
//! minimise the summed imatrix-weighted squared quantization error under a byte budget.
//!
//! 1. **Eligibility** is llama-quantize's own: one `--pure` plan per candidate type with the
//!    pattern `.*` (after the user's patterns), so which tensors are quantized, the row/block
//!    fallback and the token_embd/output options are the planner's, never re-derived here.
//! 2. **Measure**: for each tensor with a choice, on up to [`SAMPLE_ROWS`] evenly spaced rows,
//!    Σ_j w_j (x_j − dequant(quant(x))_j)² with the writer's quantizer call (imatrix included),
//!    scaled to the whole tensor; w is the tensor's imatrix (1 without one).
//! 3. **Solve**: a Lagrangian sweep (each tensor takes argmin error + λ·bytes, λ bisected),
//!    then a greedy pass spending the bytes left on the best error reduction per byte.
//! 4. **Plan**: a `--pure` plan of the most common type with one anchored `--tensor-type` per
//!    tensor that differs, so llama-quantize given the same arguments writes the same bytes.

use crate::error::{Error, Result};
use crate::gguf::types::Quantizer;
use crate::gguf::writer::{header_len, TensorDecl};
use crate::gguf::GgmlType;
use crate::progress::{Display, Progress, Unit};
use crate::quant;
use crate::quant::mix::FileType;
use crate::quantize::{self, KvOverride, QuantizeOptions, QuantizePlan};
use crate::write::{PlannedTensor, TensorProducer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub mod sensitivity;
pub use sensitivity::SensitivityText;

/// Rows measured per tensor (all of them when it has fewer).
pub const SAMPLE_ROWS: usize = 256;

/// Candidates when `--candidates` is not given (IQ4_XS joins them with an imatrix).
pub fn default_candidates(has_imatrix: bool) -> Vec<GgmlType> {
    use GgmlType::*;
    let mut c = vec![Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0];
    if has_imatrix {
        c.push(IQ4_XS);
    }
    c
}

/// What the file must fit.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Bits per weight of the whole file (header included), as `smelt quantize` reports it.
    Bpw(f64),
    /// File size in bytes, and the text the user gave.
    Size(u64, String),
}

impl Target {
    pub fn bpw(v: f64) -> Result<Target> {
        if !v.is_finite() || v <= 0.0 {
            return Err(Error::Invalid(format!(
                "--target-bpw {v}: expected a positive number of bits per weight"
            )));
        }
        Ok(Target::Bpw(v))
    }

    /// `5.5G`, `800M`, `123456` (bytes); K, M, G, T are powers of 1024 (KiB … TiB).
    pub fn size(s: &str) -> Result<Target> {
        let bad = || {
            Error::Invalid(format!(
                "--target-size `{s}`: expected a size such as 5.5G, 800M, 1024K or a byte count"
            ))
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let v: f64 = num.parse().map_err(|_| bad())?;
        let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1.0,
            "K" | "KB" | "KIB" => 1024.0,
            "M" | "MB" | "MIB" => 1024.0 * 1024.0,
            "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
            "T" | "TB" | "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return Err(bad()),
        };
        let bytes = (v * mult).floor();
        if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(Target::Size(bytes as u64, t.to_string()))
    }

    /// A short name: `4.25bpw`, `5.5G` (output file names, messages).
    pub fn label(&self) -> String {
        match self {
            Target::Bpw(v) => format!("{v}bpw"),
            Target::Size(_, s) => s.clone(),
        }
    }

    fn flag(&self) -> String {
        match self {
            Target::Bpw(v) => format!("--target-bpw {v}"),
            Target::Size(_, s) => format!("--target-size {s}"),
        }
    }

    /// The metadata the output records it in (an `--override-kv`, so llama-quantize given the
    /// same argument writes the same key).
    fn record(&self) -> KvOverride {
        let s = match self {
            Target::Bpw(v) => format!("smelt.target.bpw=float:{v}"),
            Target::Size(_, s) => format!("smelt.target.size=str:{s}"),
        };
        s.parse().expect("a well-formed override")
    }
}

/// One entry of `--types`: one of llama.cpp's mixes, or a size for smelt to fill
/// (`Q8_0,4.25bpw,3.5bpw,5.5G`).
#[derive(Clone, Debug, PartialEq)]
pub enum TypeSpec {
    Mix(FileType),
    Target(Target),
}

impl TypeSpec {
    /// `4.25bpw` is a bits-per-weight target, an entry starting with a digit a size
    /// (`5.5G`, `800M`, bytes); anything else a mix's name. No mix name starts with a digit.
    pub fn parse(s: &str) -> Result<TypeSpec> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        if let Some(num) = lower.strip_suffix("bpw") {
            let v: f64 = num.trim().parse().map_err(|_| {
                Error::Invalid(format!(
                    "--types `{s}`: expected bits per weight such as 4.25bpw"
                ))
            })?;
            return Ok(TypeSpec::Target(Target::bpw(v)?));
        }
        if t.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            return Ok(TypeSpec::Target(Target::size(t)?));
        }
        Ok(TypeSpec::Mix(FileType::parse(t)?))
    }

    /// The name in output file names: the mix's (`Q4_K_M`) or the target's (`4.25bpw`).
    pub fn label(&self) -> String {
        match self {
            TypeSpec::Mix(ft) => ft.name().to_string(),
            TypeSpec::Target(t) => t.label(),
        }
    }
}

/// A matrix of mixes and targets planned for one write: the mixes' plan with each target's
/// output appended, and the targets' allocations (for their reports and llama-quantize
/// commands), in the order the targets were given.
pub struct MatrixPlan {
    pub plan: QuantizePlan,
    pub allocations: Vec<(Target, Allocation)>,
}

/// Plans every entry of `specs` for one pass of the writer. The targets share one
/// measurement: `cached` when given, else the first target's, so a matrix of targets costs
/// one measurement however many it holds.
#[allow(clippy::too_many_arguments)]
pub fn plan_matrix(
    source: &dyn TensorProducer,
    specs: &[TypeSpec],
    opts: &QuantizeOptions,
    candidates: &[GgmlType],
    mut cached: Option<Measurement>,
    sensitivity: Option<&SensitivityText<'_>>,
    path_for: impl Fn(&TypeSpec) -> PathBuf,
    display: Display,
) -> Result<MatrixPlan> {
    let mixes: Vec<FileType> = specs
        .iter()
        .filter_map(|s| match s {
            TypeSpec::Mix(ft) => Some(*ft),
            TypeSpec::Target(_) => None,
        })
        .collect();
    for (i, a) in specs.iter().enumerate() {
        if specs[..i].iter().any(|b| path_for(b) == path_for(a)) {
            return Err(Error::Invalid(format!(
                "--types names {} twice (one output file each)",
                a.label()
            )));
        }
    }
    let mut plan = if mixes.is_empty() {
        None
    } else {
        Some(quantize::plan(source, &mixes, opts, |ft| {
            path_for(&TypeSpec::Mix(*ft))
        })?)
    };
    let mut allocations = Vec::new();
    for spec in specs {
        let TypeSpec::Target(target) = spec else {
            continue;
        };
        let alloc = allocate(
            source,
            opts,
            target,
            candidates,
            cached.clone(),
            sensitivity,
            path_for(spec),
            display,
        )?;
        cached = Some(alloc.measurement.clone());
        match &mut plan {
            None => {
                plan = Some(QuantizePlan {
                    order: alloc.plan.order.clone(),
                    outputs: alloc.plan.outputs.clone(),
                    warnings: alloc.plan.warnings.clone(),
                })
            }
            Some(p) => {
                // Every plan of one source and options visits the tensors in llama.cpp's
                // order; the writer needs one order for all its outputs.
                if p.order != alloc.plan.order {
                    return Err(Error::Invalid(format!(
                        "{}: the target's tensor order differs from the other types'",
                        target.label()
                    )));
                }
                p.outputs.extend(alloc.plan.outputs.iter().cloned());
                for w in &alloc.plan.warnings {
                    if !p.warnings.contains(w) {
                        p.warnings.push(w.clone());
                    }
                }
            }
        }
        allocations.push((target.clone(), alloc));
    }
    let plan = plan.ok_or_else(|| Error::Invalid("no types given".into()))?;
    Ok(MatrixPlan { plan, allocations })
}

/// `--candidates Q4_K,Q6_K`: types smelt can write; those that need an imatrix only with one.
pub fn check_candidates(types: &[GgmlType], has_imatrix: bool) -> Result<Vec<GgmlType>> {
    let mut out: Vec<GgmlType> = Vec::new();
    for &t in types {
        if !t.can_quantize() {
            return Err(Error::Invalid(format!(
                "--candidates: smelt cannot write {t}"
            )));
        }
        if t.quantizer() == Quantizer::NeedsImatrix && !has_imatrix {
            return Err(Error::Invalid(format!(
                "--candidates: {t} needs an importance matrix (--imatrix)"
            )));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid("--candidates: no types given".into()));
    }
    Ok(out)
}

/// The measurement cache (`--measurement FILE`): per tensor, per type, bytes and error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Measurement {
    pub format: String,
    pub model: ModelId,
    /// sha256 of the importance weights used (after include/exclude), none without.
    pub imatrix_sha256: Option<String>,
    pub sample_rows: usize,
    pub tensors: Vec<MeasuredTensor>,
    /// Measured sensitivity factors (`--sensitivity`), when they were asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Sensitivity>,
}

/// Per tensor, ΔKLD per unit of measured error on a text ([`sensitivity`]): the allocation
/// minimises Σ factor × error, a prediction of the KL divergence.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sensitivity {
    pub text: String,
    /// Digest of the text's tokens and its cut (ctx, chunks): what a cached one must match.
    pub text_sha256: String,
    pub ctx: usize,
    pub chunks: usize,
    pub factors: Vec<(String, f64)>,
}

const FORMAT: &str = "smelt-measurement-1";

/// Which model a measurement belongs to: its first file's name, the inputs' total size and a
/// digest of every tensor's name, shape and type (cheap, unlike hashing the weights).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelId {
    pub name: String,
    pub bytes: u64,
    pub layout_sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MeasuredTensor {
    pub name: String,
    pub rows: usize,
    pub sampled_rows: usize,
    pub types: Vec<MeasuredType>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MeasuredType {
    #[serde(rename = "type")]
    pub ty: String,
    /// Tensor data bytes (before alignment padding).
    pub bytes: u64,
    pub error: f64,
}

impl Measurement {
    pub fn from_json(path: &std::path::Path, text: &str) -> Result<Measurement> {
        let m: Measurement = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("not a smelt measurement file: {e}")))?;
        if m.format != FORMAT {
            return Err(Error::format(
                path,
                format!("measurement format `{}`, expected `{FORMAT}`", m.format),
            ));
        }
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("plain data serializes");
        s.push('\n');
        s
    }

    fn factor_of(&self, name: &str) -> f64 {
        self.sensitivity
            .as_ref()
            .and_then(|s| s.factors.iter().find(|(n, _)| n == name))
            .map_or(1.0, |(_, f)| *f)
    }

    fn error_of(&self, name: &str, ty: GgmlType) -> Option<f64> {
        let t = self.tensors.iter().find(|t| t.name == name)?;
        t.types.iter().find(|m| m.ty == ty.name()).map(|m| m.error)
    }
}

/// One tensor's row in the allocation.
#[derive(Clone, Debug)]
pub struct AllocRow {
    pub name: String,
    pub ty: GgmlType,
    /// Bytes in the file, alignment padding included.
    pub bytes: u64,
    /// Measured error of the chosen type; `None` when the tensor had no choice.
    pub error: Option<f64>,
}

/// The solved allocation and the plan that writes it.
pub struct Allocation {
    pub plan: QuantizePlan,
    pub base: FileType,
    /// The `--tensor-type` entries (anchored patterns) beside `--pure` and the base type.
    pub tensor_types: Vec<(String, GgmlType)>,
    pub rows: Vec<AllocRow>,
    /// Predicted file size (header and padding included) and its weights.
    pub file_bytes: u64,
    pub n_weights: u64,
    pub budget: u64,
    pub total_error: f64,
    /// The measurement used (new, or the cache's).
    pub measurement: Measurement,
    pub measured_now: bool,
    /// The options the final plan was made with (for the llama-quantize command line).
    pub options: QuantizeOptions,
}

/// Measure (or take `cached`), solve, and plan the one output at `path`.
#[allow(clippy::too_many_arguments)]
pub fn allocate(
    source: &dyn TensorProducer,
    opts: &QuantizeOptions,
    target: &Target,
    candidates: &[GgmlType],
    cached: Option<Measurement>,
    sensitivity: Option<&SensitivityText<'_>>,
    path: PathBuf,
    display: Display,
) -> Result<Allocation> {
    if opts.keep_split {
        return Err(Error::Invalid(format!(
            "{} cannot be combined with --keep-split",
            target.flag()
        )));
    }
    let mut opts = opts.clone();
    opts.overrides.push(target.record());
    // One plan per candidate: what each tensor becomes when that type is asked of it.
    let plans = candidates
        .iter()
        .map(|&c| {
            let mut o = opts.clone();
            o.mix.pure = true;
            o.mix.tensor_types.push((".*".into(), c));
            quantize::plan(source, &[FileType::Q8_0], &o, |_| path.clone())
        })
        .collect::<Result<Vec<_>>>()?;
    let order = plans[0].order.clone();
    let planned = |c: usize, k: usize| -> &PlannedTensor {
        plans[c].outputs[0].tensors[k]
            .as_ref()
            .expect("one output holds every tensor")
    };
    // Per tensor: its distinct types (candidate order), the first plan giving each.
    let choices: Vec<Vec<usize>> = (0..order.len())
        .map(|k| {
            let mut seen: Vec<usize> = Vec::new();
            for c in 0..plans.len() {
                if !seen.iter().any(|&s| planned(s, k).ty == planned(c, k).ty) {
                    seen.push(c);
                }
            }
            seen
        })
        .collect();
    let model = model_id(source)?;
    let imatrix_sha256 = opts.imatrix.as_ref().map(|(im, _)| imatrix_digest(im));
    let (mut measurement, mut measured_now) = match cached {
        Some(m) => {
            if m.model != model
                || m.imatrix_sha256 != imatrix_sha256
                || m.sample_rows != SAMPLE_ROWS
            {
                let why = if m.model != model {
                    format!(
                        "model {} ({} bytes), not {} ({} bytes)",
                        m.model.name, m.model.bytes, model.name, model.bytes
                    )
                } else if m.imatrix_sha256 != imatrix_sha256 {
                    "another importance matrix (or none)".to_string()
                } else {
                    format!("{} sampled rows, not {SAMPLE_ROWS}", m.sample_rows)
                };
                return Err(Error::Invalid(format!(
                    "--measurement: the file was measured on {why}; name another file to measure this one"
                )));
            }
            (m, false)
        }
        None => {
            let tensors = measure(source, &order, &choices, &planned, display)?;
            let m = Measurement {
                format: FORMAT.into(),
                model,
                imatrix_sha256,
                sample_rows: SAMPLE_ROWS,
                tensors,
                sensitivity: None,
            };
            (m, true)
        }
    };

    // Sizes: every tensor's bytes padded to the alignment, plus the header.
    let out0 = &plans[0].outputs[0];
    let align = crate::gguf::writer::alignment(&out0.metadata)?;
    let decls: Vec<TensorDecl> = order
        .iter()
        .enumerate()
        .map(|(k, &i)| TensorDecl {
            name: planned(0, k).name.clone(),
            shape: source.shape(i).to_vec(),
            ty: planned(0, k).ty,
        })
        .collect();
    let header = header_len(&out0.metadata, &decls)?;
    let n_weights: u64 = order
        .iter()
        .map(|&i| source.shape(i).iter().product::<u64>())
        .sum();
    let padded = |k: usize, ty: GgmlType| -> Result<u64> {
        let n: u64 = source.shape(order[k]).iter().product();
        let b = ty.bytes_for(n).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor `{}`: {n} values do not fill {ty} blocks",
                decls[k].name
            ))
        })?;
        Ok(b.div_ceil(align) * align)
    };
    // Options per tensor, sorted by bytes; tensors without a choice are fixed bytes.
    let mut fixed = header;
    let mut items: Vec<(usize, Vec<Opt>)> = Vec::new();
    for (k, ch) in choices.iter().enumerate() {
        if ch.len() == 1 {
            fixed += padded(k, planned(ch[0], k).ty)?;
            continue;
        }
        let mut opts_k = Vec::with_capacity(ch.len());
        for &c in ch {
            let pt = planned(c, k);
            let error = measurement.error_of(&pt.name, pt.ty).ok_or_else(|| {
                Error::Invalid(format!(
                    "--measurement: the file has no {} measurement of `{}` (other candidates or options); name another file to measure again",
                    pt.ty, pt.name
                ))
            })?;
            opts_k.push(Opt {
                c,
                bytes: padded(k, pt.ty)?,
                error,
            });
        }
        opts_k.sort_by_key(|o| o.bytes);
        items.push((k, opts_k));
    }
    // Measured sensitivity: each tensor's errors scaled by its factor (measured now unless
    // the measurement already holds factors for this text).
    if let Some(text) = sensitivity {
        let current = measurement
            .sensitivity
            .as_ref()
            .is_some_and(|s| s.text_sha256 == text.digest());
        if !current {
            let probes: Vec<sensitivity::Probe> = items
                .iter()
                .map(|(k, o)| sensitivity::Probe {
                    source_index: order[*k],
                    planned: planned(o[0].c, *k),
                    error: o[0].error,
                })
                .collect();
            measurement.sensitivity = Some(sensitivity::measure(text, source, &probes, display)?);
            measured_now = true;
        }
    }
    if sensitivity.is_some() {
        for (k, o) in &mut items {
            let f = measurement.factor_of(&planned(o[0].c, *k).name);
            for opt in o.iter_mut() {
                opt.error *= f;
            }
        }
    }
    let min: u64 = fixed + items.iter().map(|(_, o)| o[0].bytes).sum::<u64>();
    let max: u64 = fixed + items.iter().map(|(_, o)| o[o.len() - 1].bytes).sum::<u64>();
    let bpw = |b: u64| b as f64 * 8.0 / n_weights.max(1) as f64;
    let budget = match target {
        Target::Bpw(v) => (v * n_weights as f64 / 8.0).floor() as u64,
        Target::Size(b, _) => *b,
    };
    if budget < min {
        return Err(Error::Invalid(format!(
            "{}: the smallest file these candidates make is {min} bytes ({:.4} bpw); ask for at least that",
            target.flag(),
            bpw(min)
        )));
    }
    if budget > max && !items.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the largest file these candidates make is {max} bytes ({:.4} bpw); ask for at most that, or use --type",
            target.flag(),
            bpw(max)
        )));
    }
    let pick = solve(
        &items.iter().map(|(_, o)| o.as_slice()).collect::<Vec<_>>(),
        budget - fixed,
    );
    // The chosen candidate plan per tensor (fixed tensors: the first).
    let mut chosen_c: Vec<usize> = choices.iter().map(|ch| ch[0]).collect();
    for ((k, o), &j) in items.iter().zip(&pick) {
        chosen_c[*k] = o[j].c;
    }
    let chosen: Vec<GgmlType> = (0..order.len())
        .map(|k| planned(chosen_c[k], k).ty)
        .collect();

    // The base type: the most common choice among tensors that had one.
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for (k, _) in &items {
        match counts.iter_mut().find(|(t, _)| *t == chosen[*k]) {
            Some((_, n)) => *n += 1,
            None => counts.push((chosen[*k], 1)),
        }
    }
    let base_ty = counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .map(|(t, _)| *t)
        .unwrap_or(GgmlType::Q8_0);
    let base = FileType::ALL
        .iter()
        .copied()
        .find(|f| f.default_type() == base_ty)
        .unwrap_or(FileType::Q8_0);
    let mut final_opts = opts.clone();
    final_opts.mix.pure = true;
    final_opts.mix.tensor_types.clear();
    let pure = quantize::plan(source, &[base], &final_opts, |_| path.clone())?;
    let mut tensor_types = Vec::new();
    for (k, pt) in pure.outputs[0].tensors.iter().enumerate() {
        let pt = pt.as_ref().expect("one output holds every tensor");
        if pt.ty != chosen[k] {
            // Lower-cased as llama-quantize lower-cases every pattern.
            tensor_types.push((
                format!("^{}$", regex_escape(&pt.name)).to_lowercase(),
                chosen[k],
            ));
        }
    }
    final_opts.mix.tensor_types = tensor_types.clone();
    let plan = quantize::plan(source, &[base], &final_opts, |_| path.clone())?;
    for (k, pt) in plan.outputs[0].tensors.iter().enumerate() {
        let pt = pt.as_ref().expect("one output holds every tensor");
        if pt.ty != chosen[k] {
            return Err(Error::Invalid(format!(
                "tensor `{}`: llama-quantize's rules give it {} where {} was chosen (a tensor name its patterns cannot single out?)",
                pt.name, pt.ty, chosen[k]
            )));
        }
    }
    let mut rows = Vec::with_capacity(order.len());
    let mut file_bytes = header;
    let mut total_error = 0.0;
    for (k, &ty) in chosen.iter().enumerate() {
        let bytes = padded(k, ty)?;
        file_bytes += bytes;
        let error = (choices[k].len() > 1)
            .then(|| measurement.error_of(&decls[k].name, ty))
            .flatten();
        total_error += error.unwrap_or(0.0);
        rows.push(AllocRow {
            name: decls[k].name.clone(),
            ty,
            bytes,
            error,
        });
    }
    debug_assert!(file_bytes <= budget);
    Ok(Allocation {
        plan,
        base,
        tensor_types,
        rows,
        file_bytes,
        n_weights,
        budget,
        total_error,
        measurement,
        measured_now,
        options: final_opts,
    })
}

/// One type a tensor may take: the candidate plan giving it, its padded bytes and error.
#[derive(Clone, Copy, Debug)]
struct Opt {
    c: usize,
    bytes: u64,
    error: f64,
}

/// Escape regex metacharacters the way both Rust's `regex` and C++'s ECMAScript `std::regex`
/// read them (a backslash before each), so one pattern names exactly one tensor in both.
fn regex_escape(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// For each item (options sorted by bytes, at least one), the option index: minimal summed
/// error with summed bytes at most `budget`, which the smallest options must fit.
/// Deterministic: plain loops, ties to fewer bytes and earlier tensors.
fn solve(items: &[&[Opt]], budget: u64) -> Vec<usize> {
    let pick = |lambda: f64| -> Vec<usize> {
        items
            .iter()
            .map(|o| {
                let mut best = 0;
                for j in 1..o.len() {
                    let cost = |x: &Opt| x.error + lambda * x.bytes as f64;
                    if cost(&o[j]) < cost(&o[best]) {
                        best = j;
                    }
                }
                best
            })
            .collect()
    };
    let bytes = |p: &[usize]| -> u64 { items.iter().zip(p).map(|(o, &j)| o[j].bytes).sum() };
    let mut p = pick(0.0);
    if bytes(&p) > budget {
        // Bytes fall as λ grows; the smallest options fit, so a large enough λ does too.
        let (mut lo, mut hi) = (0.0f64, 1e-12f64);
        let mut at_hi = pick(hi);
        let mut steps = 0;
        while bytes(&at_hi) > budget && steps < 2000 {
            lo = hi;
            hi *= 2.0;
            at_hi = pick(hi);
            steps += 1;
        }
        if bytes(&at_hi) > budget {
            at_hi = vec![0; items.len()];
        }
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            let at = pick(mid);
            if bytes(&at) <= budget {
                hi = mid;
                at_hi = at;
            } else {
                lo = mid;
            }
        }
        p = at_hi;
    }
    // Greedy exchange: spend what is left on the upgrade with the best error saved per byte.
    let mut left = budget - bytes(&p);
    loop {
        let mut best: Option<(usize, usize, f64)> = None;
        for (i, o) in items.iter().enumerate() {
            let cur = o[p[i]];
            for (j, x) in o.iter().enumerate() {
                let extra = x.bytes.saturating_sub(cur.bytes);
                if x.bytes <= cur.bytes || x.error >= cur.error || extra > left {
                    continue;
                }
                let gain = (cur.error - x.error) / extra as f64;
                if best.is_none_or(|(_, _, g)| gain > g) {
                    best = Some((i, j, gain));
                }
            }
        }
        let Some((i, j, _)) = best else { break };
        left -= items[i][j].bytes - items[i][p[i]].bytes;
        p[i] = j;
    }
    p
}

/// Rows measured of a tensor of `n_rows`: all, or [`SAMPLE_ROWS`] evenly spaced.
fn sample_rows(n_rows: usize) -> Vec<usize> {
    if n_rows <= SAMPLE_ROWS {
        return (0..n_rows).collect();
    }
    (0..SAMPLE_ROWS)
        .map(|i| ((2 * i + 1) * n_rows) / (2 * SAMPLE_ROWS))
        .collect()
}

/// The error of each distinct type of each tensor with a choice, one tensor at a time.
fn measure<'p>(
    source: &dyn TensorProducer,
    order: &[usize],
    choices: &[Vec<usize>],
    planned: &dyn Fn(usize, usize) -> &'p PlannedTensor,
    display: Display,
) -> Result<Vec<MeasuredTensor>> {
    use rayon::prelude::*;
    let total: u64 = order
        .iter()
        .zip(choices)
        .filter(|(_, c)| c.len() > 1)
        .map(|(&i, _)| source.shape(i).iter().product::<u64>())
        .sum();
    let bar = Progress::new(display, "measuring", total, Unit::Weights);
    let mut out = Vec::new();
    for (k, &src) in order.iter().enumerate() {
        if choices[k].len() < 2 {
            continue;
        }
        let name = planned(choices[k][0], k).name.clone();
        bar.set_message(&name);
        let shape = source.shape(src);
        let row_len = shape[0] as usize;
        let n_rows = (shape[1..].iter().product::<u64>()) as usize;
        let src_ty = source.source_type(src);
        let copied = source.raw(src).is_some();
        let pts: Vec<&PlannedTensor> = choices[k].iter().map(|&c| planned(c, k)).collect();
        let rows = sample_rows(n_rows);
        // Per row, per type: errors summed in a fixed order below, whatever the threads.
        let per_row = rows
            .par_iter()
            .map(|&r| -> Result<Vec<f64>> {
                let mut x = vec![0f32; row_len];
                source.read_rows(src, r, &mut x)?;
                crate::write::refuse_non_finite(&name, &x, r, row_len)?;
                let mut y = vec![0f32; row_len];
                pts.iter()
                    .map(|pt| {
                        if pt.ty == src_ty && copied {
                            return Ok(0.0); // written unchanged
                        }
                        let q_err = |e| Error::quant(&name, e);
                        let mut q = vec![0u8; quant::row_bytes(pt.ty, row_len).map_err(q_err)?];
                        crate::write::quantize_chunk(pt, &x, row_len, r, n_rows, &mut q)
                            .map_err(q_err)?;
                        quant::dequantize_row(pt.ty, &q, &mut y).map_err(q_err)?;
                        let w = pt.imatrix.as_deref().map(|im| {
                            let n_expert = (im.len() / row_len).max(1);
                            let e = (r / (n_rows / n_expert).max(1)).min(n_expert - 1);
                            &im[e * row_len..(e + 1) * row_len]
                        });
                        let mut s = 0.0f64;
                        for j in 0..row_len {
                            let d = (x[j] - y[j]) as f64;
                            s += w.map_or(1.0, |w| w[j] as f64) * d * d;
                        }
                        Ok(s)
                    })
                    .collect()
            })
            .collect::<Result<Vec<_>>>();
        source.release(src);
        let per_row = per_row?;
        let scale = n_rows as f64 / rows.len().max(1) as f64;
        let n: u64 = shape.iter().product();
        let types = pts
            .iter()
            .enumerate()
            .map(|(t, pt)| MeasuredType {
                ty: pt.ty.name().to_string(),
                bytes: pt.ty.bytes_for(n).unwrap_or(0),
                error: per_row.iter().map(|e| e[t]).sum::<f64>() * scale,
            })
            .collect();
        out.push(MeasuredTensor {
            name,
            rows: n_rows,
            sampled_rows: rows.len(),
            types,
        });
        bar.inc(n);
    }
    bar.finish();
    Ok(out)
}

fn model_id(source: &dyn TensorProducer) -> Result<ModelId> {
    let n_tensors = source.n_tensors();
    use sha2::{Digest, Sha256};
    let files = source.input_files();
    let mut bytes = 0u64;
    for f in &files {
        bytes += std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len();
    }
    let name = files
        .first()
        .and_then(|f| f.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut h = Sha256::new();
    for i in 0..n_tensors {
        h.update(source.name(i).as_bytes());
        h.update([0]);
        for d in source.shape(i) {
            h.update(d.to_le_bytes());
        }
        h.update(source.source_type(i).id().to_le_bytes());
    }
    Ok(ModelId {
        name,
        bytes,
        layout_sha256: hex(&h.finalize()),
    })
}

fn imatrix_digest(im: &crate::quant::imatrix::Imatrix) -> String {
    use sha2::{Digest, Sha256};
    let mut names: Vec<&String> = im.entries.keys().collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        h.update(n.as_bytes());
        h.update([0]);
        for v in im.entries[n].iter() {
            h.update(v.to_le_bytes());
        }
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Quote a shell word when it needs it.
fn shell_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Allocation {
    /// The llama-quantize command line that writes the same file from `input`.
    pub fn llama_quantize_command(
        &self,
        input: &str,
        output: &str,
        include: &[String],
        exclude: &[String],
        requantize: bool,
    ) -> String {
        let o = &self.options;
        let mut w: Vec<String> = vec!["llama-quantize".into()];
        if requantize {
            w.push("--allow-requantize".into());
        }
        if let Some((_, p)) = &o.imatrix {
            w.extend(["--imatrix".into(), shell_word(p)]);
        }
        for x in include {
            w.extend(["--include-weights".into(), shell_word(x)]);
        }
        for x in exclude {
            w.extend(["--exclude-weights".into(), shell_word(x)]);
        }
        if let Some(t) = o.mix.output_tensor_type {
            w.extend(["--output-tensor-type".into(), t.name().into()]);
        }
        if let Some(t) = o.mix.token_embedding_type {
            w.extend(["--token-embedding-type".into(), t.name().into()]);
        }
        if o.mix.leave_output_tensor {
            w.push("--leave-output-tensor".into());
        }
        if !o.prune_layers.is_empty() {
            let l: Vec<String> = o.prune_layers.iter().map(|l| l.to_string()).collect();
            w.extend(["--prune-layers".into(), l.join(",")]);
        }
        w.push("--pure".into());
        for kv in &o.overrides {
            w.extend(["--override-kv".into(), shell_word(&override_text(kv))]);
        }
        for (p, t) in &self.tensor_types {
            w.extend([
                "--tensor-type".into(),
                shell_word(&format!("{p}={}", t.name())),
            ]);
        }
        w.extend([
            shell_word(input),
            shell_word(output),
            self.base.name().into(),
        ]);
        w.join(" ")
    }

    /// `--dry-run`'s table: tensor, type, bytes, error; then the totals.
    pub fn report(&self, target: &Target) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  {:<40} {:<8} {:>12} {:>14}",
            "tensor", "type", "bytes", "error"
        );
        for r in &self.rows {
            let e = r.error.map_or("-".to_string(), |e| format!("{e:.6e}"));
            let _ = writeln!(
                s,
                "  {:<40} {:<8} {:>12} {:>14}",
                r.name,
                r.ty.name(),
                r.bytes,
                e
            );
        }
        let bpw = self.file_bytes as f64 * 8.0 / self.n_weights.max(1) as f64;
        let _ = writeln!(
            s,
            "  predicted: {} bytes ({:.2} MiB, {:.4} bpw, header included); budget {} bytes ({}); total error {:.6e}",
            self.file_bytes,
            self.file_bytes as f64 / (1 << 20) as f64,
            bpw,
            self.budget,
            target.label(),
            self.total_error
        );
        s
    }
}

fn override_text(kv: &KvOverride) -> String {
    use crate::gguf::Value;
    let v = match &kv.value {
        Value::F32(x) => format!("float:{x}"),
        Value::U32(x) => format!("int:{x}"),
        Value::Bool(b) => format!("bool:{b}"),
        Value::String(s) => format!("str:{s}"),
        other => format!("str:{other}"),
    };
    format!("{}={v}", kv.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(bytes: u64, error: f64) -> Opt {
        Opt { c: 0, bytes, error }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(
            Target::size("5.5G").unwrap(),
            Target::Size(5905580032, "5.5G".into())
        );
        assert_eq!(
            Target::size("1024k").unwrap(),
            Target::Size(1 << 20, "1024k".into())
        );
        assert_eq!(
            Target::size("123").unwrap(),
            Target::Size(123, "123".into())
        );
        for bad in ["", "G", "5.5X", "-1G", "1e3", "0", "abc"] {
            assert!(Target::size(bad).is_err(), "{bad}");
        }
        assert!(Target::bpw(f64::NAN).is_err());
        assert!(Target::bpw(0.0).is_err());
    }

    #[test]
    fn solver_meets_the_budget_and_spends_it() {
        let a = [o(10, 100.0), o(20, 30.0), o(30, 10.0)];
        let b = [o(10, 50.0), o(20, 45.0), o(40, 0.0)];
        let items: Vec<&[Opt]> = vec![&a, &b];
        assert_eq!(solve(&items, 20), [0, 0]);
        // 40 bytes: a's best type and b's smallest beat both middle types.
        assert_eq!(solve(&items, 40), [2, 0]);
        assert_eq!(solve(&items, 70), [2, 2]);
        for budget in 20..=70 {
            let p = solve(&items, budget);
            let used: u64 = items.iter().zip(&p).map(|(o, &j)| o[j].bytes).sum();
            assert!(used <= budget);
        }
    }

    #[test]
    fn patterns_name_one_tensor() {
        let re = regex::Regex::new(&format!("^{}$", regex_escape("blk.1.attn_q.weight"))).unwrap();
        assert!(re.is_match("blk.1.attn_q.weight"));
        assert!(!re.is_match("blk.11.attn_q.weight"));
        assert!(!re.is_match("blk.1xattn_q.weight"));
    }
}
