//! `smelt quantize` and `smelt convert`: one read of a model, every requested type (mixes and
//! size targets) written in one pass; with `--shard`, this process's share of a split run; with
//! `--dry-run`, the plan. The writers for a planned run (`write_run`, `write_with_targets`)
//! serve `merge` too.

use super::naming::{model_name, plain_file_name};
use super::targets::{TargetRun, TargetSettings, TargetSource};
use super::{wrote_line, Reporter};
use crate::error::Result;
use crate::quant::mix::FileType;
use crate::quantize::{QuantizeOptions, QuantizePlan};
use crate::shard::{ShardPlan, ShardSpec};
use crate::store::Store;
use crate::target::{Allocation, TypeSpec};
use crate::write::{self, OutputReport, TensorProducer};
use std::path::{Path, PathBuf};

/// What `--dry-run` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanFormat {
    /// Each output's tensors, types and sizes (targets: their allocations).
    Text,
    /// The split plan (files, shards, tensors, hash) as JSON.
    Json,
}

/// One `quantize` (or `convert`) run, its options parsed.
pub struct QuantizeJob<'a> {
    pub input: &'a Path,
    /// A file (one type) or a folder (`<NAME>-<TYPE>.gguf` per type).
    pub output: &'a Path,
    /// `<NAME>` in output file names; default: the input's model name.
    pub name: Option<&'a str>,
    /// The types and size targets, in order.
    pub specs: Vec<TypeSpec>,
    pub options: QuantizeOptions,
    pub tokenizer: crate::tokenizer::TokenizerOptions,
    pub targets: TargetSettings,
    /// `convert`: the output is always a folder.
    pub to_folder: bool,
    /// `--include-weights` / `--exclude-weights`, repeated in the printed llama-quantize
    /// commands of targets.
    pub include_weights: &'a [String],
    pub exclude_weights: &'a [String],
    pub shard: Option<ShardSpec>,
    pub dry_run: Option<PlanFormat>,
}

/// Quantize (or convert) as `job` says, reporting to `out`.
pub fn quantize(job: &QuantizeJob<'_>, out: &dyn Reporter) -> Result<()> {
    let store = Store::open_with(job.input, &job.tokenizer)?;
    for w in &store.warnings {
        out.warn(w);
    }
    let specs = &job.specs;
    let file_types: Vec<FileType> = specs
        .iter()
        .filter_map(|s| match s {
            TypeSpec::Mix(ft) => Some(*ft),
            TypeSpec::Target(_) => None,
        })
        .collect();
    let multiple = job.to_folder || specs.len() > 1 || job.output.is_dir();
    let stem = match job.name {
        Some(n) => plain_file_name(n, "--name")?.to_string(),
        None => model_name(job.input),
    };
    let path_for = |label: &str| -> PathBuf {
        if multiple {
            job.output.join(format!("{stem}-{label}.gguf"))
        } else {
            job.output.to_path_buf()
        }
    };
    job.targets.check_used(specs)?;
    if super::targets::has_target(specs) {
        let source = TargetSource {
            producer: &store,
            weights: &store,
        };
        let run = super::targets::plan(
            &source,
            specs,
            &job.options,
            &job.targets,
            job.output,
            |spec: &TypeSpec| path_for(&spec.label()),
            out.display(),
        )?;
        let requantize = store.tensors.iter().any(|t| t.ty.is_quantized());
        let input = job.input.to_string_lossy();
        return write_with_targets(
            &store,
            &run,
            |alloc| {
                alloc.llama_quantize_command(
                    &input,
                    &alloc.plan.outputs[0].path.to_string_lossy(),
                    job.include_weights,
                    job.exclude_weights,
                    requantize,
                )
            },
            job.dry_run.is_some(),
            multiple.then_some(job.output),
            out,
        );
    }
    let mut plan =
        crate::quantize::plan(&store, &file_types, &job.options, |ft| path_for(ft.name()))?;
    for w in &plan.warnings {
        out.warn(w);
    }
    let sharded = crate::shard::plan_for(&mut plan, &store, job.options.split, job.shard)?;
    match job.dry_run {
        Some(PlanFormat::Json) => {
            return print_json(
                out,
                &crate::shard::plan_json(&plan, &store, sharded.as_ref())?,
            )
        }
        Some(PlanFormat::Text) => return out.print(&dry_run_report(&store, &plan)),
        None => {}
    }
    let started = std::time::Instant::now();
    write_run(&store, &plan, sharded.as_ref(), job.shard, out, |w| {
        if multiple {
            crate::output_files::with_output_dir(job.output, w)
        } else {
            w()
        }
    })?;
    out.say(&format!("done in {:.2?}", started.elapsed()));
    Ok(())
}

/// Pretty JSON as the command's result.
pub(crate) fn print_json(out: &dyn Reporter, doc: &serde_json::Value) -> Result<()> {
    out.print(&(serde_json::to_string_pretty(doc).expect("json values serialize") + "\n"))
}

/// Write a planned run, or with `--shard` only this process's files of it (files an earlier
/// run of the shard finished are kept), and say what was written. `in_dir` wraps the write
/// (creating the output folder where one is needed).
pub(crate) fn write_run(
    producer: &dyn TensorProducer,
    plan: &QuantizePlan,
    sharded: Option<&ShardPlan>,
    shard: Option<ShardSpec>,
    out: &dyn Reporter,
    in_dir: impl FnOnce(&dyn Fn() -> Result<Vec<OutputReport>>) -> Result<Vec<OutputReport>>,
) -> Result<Vec<OutputReport>> {
    let display = out.display();
    let (Some(sp), Some(spec)) = (sharded, shard) else {
        let reports =
            in_dir(&|| write::write_matrix(producer, &plan.order, &plan.outputs, display))?;
        for r in &reports {
            out.say(&wrote_line(r));
        }
        return Ok(reports);
    };
    let mut mine = QuantizePlan {
        order: plan.order.clone(),
        outputs: plan.outputs.clone(),
        warnings: Vec::new(),
    };
    let sel = crate::shard::select(&mut mine, producer, sp, spec.index)?;
    let mut reports = Vec::new();
    if !mine.outputs.is_empty() {
        reports = in_dir(&|| write::write_matrix(producer, &mine.order, &mine.outputs, display))?;
        for r in &reports {
            out.say(&wrote_line(r));
        }
    }
    out.say(&crate::shard::summary(
        spec,
        &sel,
        &sp.hash,
        crate::shard::io_counters(),
    ));
    Ok(reports)
}

/// Write a matrix planned with targets (quantize, convert, merge) in one pass, or with
/// `dry_run` print each target's allocation; then print, per target, the llama-quantize
/// command that makes the same file (`command_for`).
pub(crate) fn write_with_targets(
    producer: &dyn TensorProducer,
    run: &TargetRun,
    command_for: impl Fn(&Allocation) -> String,
    dry_run: bool,
    out_dir: Option<&Path>,
    out: &dyn Reporter,
) -> Result<()> {
    let matrix = &run.matrix;
    for w in &matrix.plan.warnings {
        out.warn(w);
    }
    if let Some(p) = &run.measurement_written {
        out.say(&format!("wrote measurement {}", p.display()));
    }
    let commands: Vec<String> = matrix
        .allocations
        .iter()
        .map(|(_, alloc)| command_for(alloc))
        .collect();
    if dry_run {
        let mut text = String::new();
        for ((target, alloc), command) in matrix.allocations.iter().zip(&commands) {
            text.push_str(&format!(
                "{}:\n{}{command}\n",
                alloc.plan.outputs[0].path.display(),
                alloc.report(target)
            ));
        }
        return out.print(&text);
    }
    let started = std::time::Instant::now();
    let plan = &matrix.plan;
    let display = out.display();
    let write = || write::write_matrix(producer, &plan.order, &plan.outputs, display);
    let reports = match out_dir {
        Some(dir) => crate::output_files::with_output_dir(dir, write)?,
        None => write()?,
    };
    for r in &reports {
        out.say(&wrote_line(r));
        let planned = matrix
            .allocations
            .iter()
            .find(|(_, a)| a.plan.outputs[0].path == r.path);
        if let Some((target, alloc)) = planned {
            if r.bytes != alloc.file_bytes {
                out.warn(&format!(
                    "{}: {} bytes written where {} were planned",
                    r.path.display(),
                    r.bytes,
                    alloc.file_bytes
                ));
            }
            out.say(&format!(
                "{}: total error {:.6e}",
                target.label(),
                alloc.total_error
            ));
        }
    }
    out.say(&format!("done in {:.2?}", started.elapsed()));
    out.print(&format!("{}\n", commands.join("\n")))
}

/// `--dry-run`: each output's tensor types and sizes, nothing written.
fn dry_run_report(store: &Store, plan: &QuantizePlan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let src_bytes: u64 = plan.order.iter().map(|&i| store.tensors[i].n_bytes).sum();
    for o in &plan.outputs {
        let _ = writeln!(out, "{}:", o.path.display());
        let mut total = 0u64;
        for (&i, pt) in plan.order.iter().zip(&o.tensors) {
            let Some(pt) = pt else { continue };
            let t = &store.tensors[i];
            let bytes = pt.ty.bytes_for(t.n_elements()).unwrap_or(0);
            total += bytes;
            let _ = writeln!(
                out,
                "  {:<40} {:>8} -> {:<8} {:>12} bytes",
                pt.name,
                t.ty.name(),
                pt.ty.name(),
                bytes
            );
        }
        let _ = writeln!(
            out,
            "  total: {:.2} MiB (source {:.2} MiB)",
            total as f64 / (1 << 20) as f64,
            src_bytes as f64 / (1 << 20) as f64
        );
    }
    out
}
