//! Targets among a run's types (`--types Q4_K_M,4.25bpw,5.5G`, `--target-bpw`,
//! `--target-size`), the same for every command that writes GGUF from a tensor source
//! (`quantize` and `convert` from a store, `merge` and `release` from a merge plan): measure
//! once (or read the cached measurement), solve each target, and plan every output for one
//! pass of the matrix writer.

use crate::error::{Error, Result};
use crate::eval::Weights;
use crate::gguf::GgmlType;
use crate::progress::Display;
use crate::quantize::QuantizeOptions;
use crate::target::{self as t, MatrixPlan, Measurement, TypeSpec};
use crate::write::TensorProducer;
use std::path::{Path, PathBuf};

/// How targets are measured, as the command line gives it.
#[derive(Clone, Debug, Default)]
pub struct TargetSettings {
    /// The types a target may choose from; empty: [`t::default_candidates`].
    pub candidates: Vec<GgmlType>,
    /// The measurement cache: read when it exists, else written after measuring.
    pub measurement: Option<PathBuf>,
    /// Weight each tensor's error by its measured effect on the output.
    pub sensitivity: Option<SensitivitySettings>,
}

/// `--sensitivity`'s text and cut.
#[derive(Clone, Debug)]
pub struct SensitivitySettings {
    /// `None`: the first half of the built-in calibration text (the second half is what
    /// quality is measured on).
    pub text: Option<PathBuf>,
    pub ctx: usize,
    pub chunks: usize,
}

impl TargetSettings {
    /// Settings that only a target uses, given without one, are refused rather than ignored.
    pub fn check_used(&self, specs: &[TypeSpec]) -> Result<()> {
        let any_set =
            !self.candidates.is_empty() || self.measurement.is_some() || self.sensitivity.is_some();
        if any_set && !has_target(specs) {
            return Err(Error::Invalid(
                "--candidates, --measurement and --sensitivity go with a target (--target-bpw, --target-size, or 4.25bpw / 5.5G in --types)".into(),
            ));
        }
        Ok(())
    }
}

/// Whether any entry is a target.
pub fn has_target(specs: &[TypeSpec]) -> bool {
    specs.iter().any(|s| matches!(s, TypeSpec::Target(_)))
}

/// A planned matrix with targets, and the measurement file written on the way (if any).
pub struct TargetRun {
    pub matrix: MatrixPlan,
    pub measurement_written: Option<PathBuf>,
}

/// The source a target run reads: the tensors the writer quantizes and, for
/// `--sensitivity`, the same model as a forward pass sees it.
pub struct TargetSource<'a> {
    pub producer: &'a dyn TensorProducer,
    pub weights: &'a dyn Weights,
}

/// Plan every entry of `specs` (mixes and targets) for one write. `beside` is a path in the
/// output folder: `--sensitivity`'s scratch folder goes next to it and is removed when done.
pub fn plan(
    source: &TargetSource<'_>,
    specs: &[TypeSpec],
    opts: &QuantizeOptions,
    settings: &TargetSettings,
    beside: &Path,
    path_for: impl Fn(&TypeSpec) -> PathBuf,
    display: Display,
) -> Result<TargetRun> {
    if opts
        .split
        .is_some_and(|l| matches!(l, crate::split::SplitLimit::Balanced(_)))
    {
        return Err(Error::Invalid(
            "targets (--target-bpw, --target-size, 4.25bpw / 5.5G in --types) write whole files; they do not go with --shards or --shard".into(),
        ));
    }
    let candidates = if settings.candidates.is_empty() {
        t::default_candidates(opts.imatrix.is_some())
    } else {
        t::check_candidates(&settings.candidates, opts.imatrix.is_some())?
    };
    let cached = match &settings.measurement {
        Some(p) if p.exists() => Some(Measurement::from_json(
            p,
            &crate::input::read_to_string(p)?,
        )?),
        _ => None,
    };
    // --sensitivity: the text, tokenized as llama-perplexity would, and a scratch folder
    // beside the output for the reference's log-probabilities (removed when done).
    let scratch = settings
        .sensitivity
        .as_ref()
        .map(|_| crate::output_files::temp_dir_beside(beside))
        .transpose()?;
    let sensitivity = match (&settings.sensitivity, &scratch) {
        (Some(s), Some(dir)) => {
            let (text, name) = match &s.text {
                Some(p) => crate::app::text::eval_text(Some(p))?,
                None => (
                    crate::app::text::calibration_halves().0.to_string(),
                    format!("{} (first half)", crate::app::text::CALIBRATION_NAME),
                ),
            };
            Some(t::SensitivityText {
                weights: source.weights,
                tokens: crate::eval::tokenize(source.weights, &text)?,
                name,
                ctx: s.ctx,
                chunks: s.chunks,
                scratch: dir.path().to_path_buf(),
            })
        }
        _ => None,
    };
    let matrix = t::plan_matrix(
        source.producer,
        specs,
        opts,
        &candidates,
        cached,
        sensitivity.as_ref(),
        path_for,
        display,
    )?;
    drop(scratch);
    // The last target's measurement holds everything measured (the sensitivity too).
    let measured = matrix.allocations.iter().any(|(_, a)| a.measured_now);
    let mut measurement_written = None;
    if let (Some(p), true, Some((_, last))) =
        (&settings.measurement, measured, matrix.allocations.last())
    {
        let inputs = source.producer.input_files();
        let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        crate::output_files::check_outputs(&inputs, &[p])?;
        crate::output_files::write_whole(p, last.measurement.to_json().as_bytes())?;
        measurement_written = Some(p.clone());
    }
    Ok(TargetRun {
        matrix,
        measurement_written,
    })
}
