//! `smelt heal` (and `smelt prune --heal`): train a pruned model's projections against the
//! model it was pruned from, then write it with its provenance.

use crate::error::{Error, Result};
use crate::heal::{self as h, HealOptions, HealReport};
use crate::progress::{Display, Progress, Unit};
use crate::store::Store;
use crate::write::OutputReport;
use std::path::Path;
use std::time::Duration;

/// What a heal did: the training report, the file written and the training's wall time.
pub struct HealRun {
    pub report: HealReport,
    pub written: OutputReport,
    pub trained_in: Duration,
}

impl HealRun {
    /// `--json`: the layer map, the losses and the time.
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.report;
        serde_json::json!({
            "layer_map": r.layer_map, "layers": r.layers,
            "window": [r.window.0, r.window.1], "teacher_depth": r.teacher_depth,
            "train_sequences": r.n_train, "validation_sequences": r.n_val,
            "shared_prefix": r.shared_prefix,
            "train_loss": r.train_loss, "validation_loss": r.val_loss,
            "best_step": r.best_step, "stopped_early": r.stopped_early,
            "seconds": self.trained_in.as_secs_f64(), "output": self.written.path,
        })
    }

    /// The lines a terminal shows after training.
    pub fn summary(&self, opts: &HealOptions) -> Vec<String> {
        let r = &self.report;
        let mut lines = vec![format!(
            "trained {} of layers {:?} ({} sequences of {}, {} validating) for {} steps in {:.1?}",
            opts.train.join(","),
            r.layers,
            r.n_train,
            opts.seq,
            r.n_val,
            r.train_loss.len(),
            self.trained_in
        )];
        for (step, v) in &r.val_loss {
            lines.push(format!("  step {step:>5}: validation loss {v:.6}"));
        }
        lines.push(format!(
            "kept step {} (validation {:.6}, {:.6} before){}",
            r.best_step,
            r.val_best(),
            r.val_before(),
            if r.stopped_early {
                ", stopped early"
            } else {
                ""
            }
        ));
        lines
    }
}

/// Heal `student` against `teacher` (named `teacher_name` in the provenance) on `text` (the
/// built-in calibration text when `None`) and write the healed model to `output`. The caller
/// has checked that `output` replaces no input.
pub fn heal(
    student: &Store,
    teacher: &Store,
    teacher_name: &str,
    text: Option<&Path>,
    opts: &HealOptions,
    output: &Path,
    display: Display,
) -> Result<HealRun> {
    let (text, text_name) = crate::app::text::eval_text(text)?;
    let tokens = crate::eval::tokenize(student, &text)?;
    if crate::eval::tokenize(teacher, &text)? != tokens {
        return Err(Error::Invalid(format!(
            "{teacher_name}: the teacher tokenizes the text differently from the model: heal needs the same vocabulary"
        )));
    }
    let started = std::time::Instant::now();
    let progress = Progress::new(display, "healing", opts.steps as u64, Unit::Steps);
    let report = h::heal(student, teacher, &tokens, opts, &progress)?;
    progress.finish();
    let trained_in = started.elapsed();
    let text_sha256 = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(text.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let prov = h::Provenance {
        teacher_name,
        teacher_hash: teacher.sha256_with(&|_| {})?,
        student_hash: student.sha256_with(&|_| {})?,
        text_name: &text_name,
        text_sha256,
        threads: rayon::current_num_threads(),
    };
    let md = h::heal_metadata(&student.metadata, opts, &report, &prov);
    let written = h::write_healed(student, &report, md, output, display)?;
    Ok(HealRun {
        report,
        written,
        trained_in,
    })
}
