//! `smelt merge`: a mergekit recipe (or the one embedded in a merged file, `--from`) merged
//! and written at every requested type in one pass, or as a Hugging Face folder; a
//! multi-document recipe runs its documents in order, each earlier one feeding later ones at
//! full precision; a mergekit-moe config builds a Mixtral-style MoE.

use super::quantize::{print_json, write_run, write_with_targets, PlanFormat};
use super::targets::{TargetSettings, TargetSource};
use super::{wrote_line, Reporter};
use crate::error::{Error, Result};
use crate::merge::{MergePlan, PlanOptions};
use crate::quant::mix::FileType;
use crate::shard::ShardSpec;
use crate::split::SplitLimit;
use crate::target::TypeSpec;
use std::path::{Path, PathBuf};

/// Where the recipe comes from.
pub enum RecipeSource<'a> {
    /// A recipe file.
    File(&'a Path),
    /// The recipe a merged GGUF file embeds (`--from`); its inputs are verified against it.
    Embedded(&'a Path),
}

/// How the merge is written.
#[derive(Clone, Copy)]
pub enum MergeOutput {
    /// GGUF files `<NAME>-<TYPE>.gguf` in the output folder.
    Gguf,
    /// A Hugging Face folder (config.json, safetensors shards of at most `shard_bytes`,
    /// tokenizer files); `force` replaces a model already there.
    Safetensors { shard_bytes: u64, force: bool },
}

/// One `merge` run, its options parsed.
pub struct MergeJob<'a> {
    pub recipe: RecipeSource<'a>,
    /// The output folder.
    pub output: &'a Path,
    pub format: MergeOutput,
    /// GGUF outputs as split sets (`--split-max-size`, `--split-max-tensors`, `--shards`).
    pub split: Option<SplitLimit>,
    /// Types and targets (`--types`); empty: the recipe's `output.types`, else F16.
    pub types: &'a [String],
    pub tokenizer: crate::tokenizer::TokenizerOptions,
    pub shard: Option<ShardSpec>,
    pub dry_run: Option<PlanFormat>,
    /// f32 bytes per input in one chunk of rows (`None`: the default).
    pub chunk_bytes: Option<usize>,
    /// `--imatrix` for the quantized outputs.
    pub imatrix: Option<&'a Path>,
    pub targets: TargetSettings,
}

/// Merge as `job` says, reporting to `out`; the output folder is created (unless a dry run).
pub fn merge(job: &MergeJob<'_>, out: &dyn Reporter) -> Result<()> {
    if matches!(job.format, MergeOutput::Safetensors { .. }) && job.split.is_some() {
        return Err(Error::Invalid(
            "--split-max-size and --split-max-tensors split GGUF outputs; --format safetensors writes shards of --shard-size bytes".into(),
        ));
    }
    if job.dry_run.is_some() {
        return merge_into(job, out); // writes nothing, creates nothing
    }
    crate::output_files::with_output_dir(job.output, || merge_into(job, out))
}

impl MergeJob<'_> {
    /// The recipe's text, where it came from (for messages), the folder its relative paths
    /// start from, and with `--from` the merged file's metadata.
    fn read_recipe(&self) -> Result<(String, String, PathBuf, Option<crate::gguf::Metadata>)> {
        match self.recipe {
            RecipeSource::File(r) => Ok((
                crate::input::read_to_string(r)?,
                r.display().to_string(),
                r.parent().map(Path::to_path_buf).unwrap_or_default(),
                None,
            )),
            RecipeSource::Embedded(g) => {
                let f = crate::gguf::GgufFile::open(g)?;
                let text = f
                    .metadata
                    .get_str("smelt.recipe")
                    .ok_or_else(|| {
                        Error::format(g, "no smelt.recipe key: not a file smelt merged")
                    })?
                    .to_string();
                Ok((
                    text,
                    format!("{} (embedded recipe)", g.display()),
                    PathBuf::from("."),
                    Some(f.metadata),
                ))
            }
        }
    }

    /// The recipe file's stem, which names the outputs of documents without a name.
    fn stem(&self) -> Option<String> {
        match self.recipe {
            RecipeSource::File(r) => r.file_stem().map(|s| s.to_string_lossy().into_owned()),
            RecipeSource::Embedded(_) => None,
        }
    }
}

fn merge_into(job: &MergeJob<'_>, out: &dyn Reporter) -> Result<()> {
    let (text, origin, recipe_dir, recorded) = job.read_recipe()?;
    if crate::merge::moe::is_moe_config(&text) {
        return merge_moe(job, &text, &origin, &recipe_dir, recorded.as_ref(), out);
    }
    let docs = crate::recipe::parse(&text, &origin)?;
    for w in docs.iter().flat_map(|d| &d.warnings) {
        out.warn(w);
    }
    if let (MergeOutput::Safetensors { force, .. }, None) = (&job.format, job.dry_run) {
        crate::hf_writer::check_output_dir(job.output, *force)?;
    }
    let stem = job.stem().unwrap_or_else(|| "merge".into());
    // Earlier named documents, as later ones name them, and the files they were written to.
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    for (k, doc) in docs.iter().enumerate() {
        let last = k + 1 == docs.len();
        let name = doc
            .output
            .as_ref()
            .and_then(|o| o.name.as_ref())
            .or(doc.name.as_ref())
            .map_or_else(|| stem.clone(), |n| n.value.clone());
        // Earlier documents of a multi-document recipe feed later ones at full precision.
        let types: Vec<String> = if !last {
            vec!["F32".into()]
        } else if !job.types.is_empty() {
            job.types.to_vec()
        } else {
            doc.output
                .as_ref()
                .and_then(|o| o.types.clone())
                .unwrap_or_else(|| vec!["F16".into()])
        };
        let opts = PlanOptions {
            tokenizer: job.tokenizer.clone(),
            dry_run: job.dry_run.is_some(),
            recorded: recorded.as_ref().filter(|_| last),
            progress: Some(out.display()),
            chunk_bytes: job.chunk_bytes,
            // Only shard 0 writes the first files, which hold the input hashes.
            skip_input_hashes: last && job.shard.is_some_and(|s| s.index != 0),
            // Hashed while the output is written, where `write_matrix` writes it: a GGUF
            // without targets (a target's measuring pass reads the merge before the writing).
            defer_input_hashes: job.shard.is_none()
                && (!last
                    || matches!(job.format, MergeOutput::Gguf)
                        && !types.iter().any(|t| {
                            TypeSpec::parse(t).is_ok_and(|s| super::targets::has_target(&[s]))
                        })),
        };
        let plan = MergePlan::with_options(doc, &text, &origin, &recipe_dir, &named, &opts)?;
        if last && job.dry_run.is_none() {
            if let MergeOutput::Safetensors { shard_bytes, force } = job.format {
                return write_merge_as_hf(job, doc, &plan, &text, shard_bytes, force, out);
            }
        }
        if let Some(path) = merge_document(job, plan, &name, &types, last, &origin, out)? {
            if let (Some(n), false) = (&doc.name, last) {
                named.push((n.value.clone(), path));
            }
        }
    }
    Ok(())
}

/// One recipe document's plan written as GGUF at `types` (or its plan printed); the path of
/// its first output.
fn merge_document(
    job: &MergeJob<'_>,
    plan: MergePlan,
    name: &str,
    types: &[String],
    last: bool,
    origin: &str,
    out: &dyn Reporter,
) -> Result<Option<PathBuf>> {
    let specs = types
        .iter()
        .map(|t| TypeSpec::parse(t))
        .collect::<Result<Vec<_>>>()?;
    job.targets.check_used(if last { &specs } else { &[] })?;
    let qopts = crate::quantize::QuantizeOptions {
        split: crate::shard::layout(job.split, job.shard, false)?,
        imatrix: match (job.imatrix, last) {
            (Some(p), true) => Some((
                crate::quant::imatrix::Imatrix::load(p)?,
                p.to_string_lossy().into_owned(),
            )),
            _ => None,
        },
        ..Default::default()
    };
    let path_for = |label: &str| job.output.join(format!("{name}-{label}.gguf"));
    if last && super::targets::has_target(&specs) {
        let merged = crate::eval::MergedWeights::new(plan);
        let plan = merged.plan();
        let source = TargetSource {
            producer: plan,
            weights: &merged,
        };
        let run = super::targets::plan(
            &source,
            &specs,
            &qopts,
            &job.targets,
            &path_for(&specs[0].label()),
            |spec: &TypeSpec| path_for(&spec.label()),
            out.display(),
        )?;
        // llama-quantize makes the same file from the merge written unquantized.
        let f32_file = path_for("F32");
        let f32_file = f32_file.to_string_lossy();
        write_with_targets(
            plan,
            &run,
            |alloc| {
                alloc.llama_quantize_command(
                    &f32_file,
                    &alloc.plan.outputs[0].path.to_string_lossy(),
                    &[],
                    &[],
                    false,
                )
            },
            job.dry_run.is_some(),
            None,
            out,
        )?;
        if job.dry_run.is_none() {
            for line in plan.summary() {
                out.say(&line);
            }
        }
        return Ok(None);
    }
    let file_types = specs
        .iter()
        .map(|s| match s {
            TypeSpec::Mix(ft) => Ok(*ft),
            TypeSpec::Target(t) => Err(Error::Invalid(format!(
                "{origin}: {} is a target; targets go with the last document of a recipe",
                t.label()
            ))),
        })
        .collect::<Result<Vec<FileType>>>()?;
    let plan = &plan;
    let mut qplan = crate::quantize::plan(plan, &file_types, &qopts, |ft| path_for(ft.name()))?;
    if !last && (job.shard.is_some() || matches!(job.split, Some(SplitLimit::Balanced(_)))) {
        return Err(Error::Invalid(format!(
            "{origin}: --shard and --shards take a one-document recipe; run the earlier documents first and name their outputs as inputs"
        )));
    }
    let sharded = crate::shard::plan_for(&mut qplan, plan, qopts.split, job.shard)?;
    match job.dry_run {
        Some(PlanFormat::Json) => {
            print_json(
                out,
                &crate::shard::plan_json(&qplan, plan, sharded.as_ref())?,
            )?;
            return Ok(None);
        }
        Some(PlanFormat::Text) => {
            out.print(&plan.describe(&qplan))?;
            return Ok(None);
        }
        None => {}
    }
    let started = std::time::Instant::now();
    if sharded.is_some() {
        write_run(plan, &qplan, sharded.as_ref(), job.shard, out, |w| w())?;
        for line in plan.summary() {
            out.say(&line);
        }
        out.say(&format!("done in {:.2?}", started.elapsed()));
        return Ok(None);
    }
    let reports = crate::write::write_matrix(plan, &qplan.order, &qplan.outputs, out.display())?;
    for line in plan.summary() {
        out.say(&line);
    }
    for r in &reports {
        out.say(&format!("{} in {:.2?}", wrote_line(r), started.elapsed()));
    }
    Ok(reports.into_iter().next().map(|r| r.path))
}

/// `merge` of a mergekit-moe config (the work is `merge::moe::build`'s).
fn merge_moe(
    job: &MergeJob<'_>,
    text: &str,
    origin: &str,
    dir: &Path,
    recorded: Option<&crate::gguf::Metadata>,
    out: &dyn Reporter,
) -> Result<()> {
    if job.shard.is_some() {
        return Err(Error::Invalid(format!(
            "{origin}: a mergekit-moe config is written by one process (not --shard)"
        )));
    }
    let done = crate::merge::moe::build(&crate::merge::moe::MoeRequest {
        text,
        origin,
        config_dir: dir,
        output: job.output,
        stem: &job.stem().unwrap_or_else(|| "moe".into()),
        types: job.types,
        split: job.split,
        plan: PlanOptions {
            tokenizer: job.tokenizer.clone(),
            dry_run: job.dry_run.is_some(),
            recorded,
            progress: Some(out.display()),
            // Hashed while the GGUF files are written (the Hugging Face writer hashes first).
            defer_input_hashes: matches!(job.format, MergeOutput::Gguf),
            ..Default::default()
        },
        safetensors: match job.format {
            MergeOutput::Safetensors { shard_bytes, force } => {
                Some(crate::merge::moe::HfSettings { shard_bytes, force })
            }
            MergeOutput::Gguf => None,
        },
        warn: &|w| out.warn(w),
    })?;
    if let Some(text) = &done.described {
        out.print(text)?;
    }
    for line in done.reports.iter().map(wrote_line).chain(done.summary) {
        out.say(&line);
    }
    Ok(())
}

/// The last recipe document written as a Hugging Face folder in the output folder.
fn write_merge_as_hf(
    job: &MergeJob<'_>,
    doc: &crate::recipe::Recipe,
    plan: &MergePlan,
    recipe_text: &str,
    shard_bytes: u64,
    force: bool,
    out: &dyn Reporter,
) -> Result<()> {
    use crate::hf_writer::{
        check_output_is_no_input, hf_folder_of, output_dtype, shard_provenance, write_hf_folder,
        HfOutput,
    };
    let dtype = output_dtype(
        job.types,
        doc.out_dtype
            .clone()
            .or_else(|| doc.dtype.clone())
            .unwrap_or_else(|| "bfloat16".into()),
    )?;
    let folder = |i: usize| hf_folder_of(&plan.inputs[i].path);
    check_output_is_no_input(
        job.output,
        plan.inputs
            .iter()
            .map(|i| (i.path.as_path(), i.reference.as_str())),
        "merge",
    )?;
    // config.json from the tokenizer source, else from any input that is an HF folder.
    let config_from =
        folder(plan.tokenizer_input).or_else(|| (0..plan.inputs.len()).find_map(folder));
    let hf = HfOutput {
        dir: job.output.to_path_buf(),
        dtype,
        shard_bytes,
        metadata: &plan.metadata,
        config_from,
        tokenizer_from: folder(plan.tokenizer_input),
        extra_files: vec![("smelt-recipe.yaml".into(), recipe_text.to_string())],
        shard_metadata: shard_provenance(&plan.metadata),
        force,
        display: out.display(),
    };
    let started = std::time::Instant::now();
    let report = write_hf_folder(plan, &hf)?;
    for line in plan.summary() {
        out.say(&line);
    }
    for w in &report.warnings {
        out.warn(w);
    }
    out.say(&format!(
        "wrote {} ({:.2} MiB, {} tensors: {}) in {:.2?}",
        report.dir.display(),
        report.bytes as f64 / (1 << 20) as f64,
        report.n_tensors,
        report.files.join(", "),
        started.elapsed()
    ));
    Ok(())
}
