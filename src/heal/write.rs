//! The healed model written through the matrix writer: the student's tensors unchanged (their
//! bytes copied) but the trained ones, quantized back to the type they had, and the heal's
//! provenance in `smelt.heal.*` keys.

use super::{HealOptions, HealReport};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Metadata, Value};
use crate::store::Store;
use crate::write::{OutputFile, OutputReport, PlannedTensor, TensorProducer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The student with the trained tensors' new values.
struct Healed<'a> {
    store: &'a Store,
    trained: HashMap<usize, &'a [f32]>,
}

impl TensorProducer for Healed<'_> {
    fn n_tensors(&self) -> usize {
        self.store.tensors.len()
    }
    fn model_metadata(&self) -> &crate::gguf::Metadata {
        &self.store.metadata
    }
    fn name(&self, i: usize) -> &str {
        &self.store.tensors[i].name
    }
    fn shape(&self, i: usize) -> &[u64] {
        &self.store.tensors[i].shape
    }
    fn source_type(&self, i: usize) -> GgmlType {
        self.store.tensors[i].ty
    }
    fn read_rows(&self, i: usize, first_row: usize, out: &mut [f32]) -> Result<()> {
        match self.trained.get(&i) {
            Some(values) => {
                let row = self.store.tensors[i].shape[0] as usize;
                let start = first_row * row;
                let src = values.get(start..start + out.len()).ok_or_else(|| {
                    Error::Invalid(format!("{}: rows out of range", self.name(i)))
                })?;
                out.copy_from_slice(src);
                Ok(())
            }
            None => self.store.read_rows(i, first_row, out),
        }
    }
    fn raw(&self, i: usize) -> Option<&[u8]> {
        if self.trained.contains_key(&i) {
            None
        } else {
            self.store.passthrough(i)
        }
    }
    fn release(&self, i: usize) {
        self.store.release(i)
    }
    fn split_of(&self, i: usize) -> usize {
        self.store.tensors[i].file
    }
    fn input_files(&self) -> Vec<PathBuf> {
        self.store
            .paths()
            .into_iter()
            .map(Path::to_path_buf)
            .collect()
    }
}

/// Where the healed model came from, for its metadata.
pub struct Provenance<'a> {
    pub teacher_name: &'a str,
    /// (size, SHA-256) of the teacher's files.
    pub teacher_hash: (u64, String),
    pub student_hash: (u64, String),
    pub text_name: &'a str,
    pub text_sha256: String,
    pub threads: usize,
}

/// The student's metadata with the heal's provenance under `smelt.heal.*`.
pub fn heal_metadata(
    student: &Metadata,
    opts: &HealOptions,
    report: &HealReport,
    prov: &Provenance,
) -> Metadata {
    let mut m = student.clone();
    m.retain(|k, _| !k.starts_with("smelt.heal."));
    let s = |v: &str| Value::String(v.to_string());
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    m.set(
        "smelt.version",
        Value::String(env!("CARGO_PKG_VERSION").into()),
    );
    m.set("smelt.heal.teacher.file", s(prov.teacher_name));
    m.set("smelt.heal.teacher.size", Value::U64(prov.teacher_hash.0));
    m.set("smelt.heal.teacher.sha256", s(&prov.teacher_hash.1));
    m.set("smelt.heal.student.size", Value::U64(prov.student_hash.0));
    m.set("smelt.heal.student.sha256", s(&prov.student_hash.1));
    m.set("smelt.heal.text", s(prov.text_name));
    m.set("smelt.heal.text.sha256", s(&prov.text_sha256));
    m.set("smelt.heal.layer_map", s(&list(&report.layer_map)));
    m.set("smelt.heal.layers", s(&list(&report.layers)));
    m.set("smelt.heal.train", s(&opts.train.join(",")));
    m.set("smelt.heal.loss", s(opts.loss.name()));
    let params = format!(
        "steps={} lr={} warmup={} seq={} batch={} max_sequences={} val_every={} patience={} clip={} seed={} threads={}",
        opts.steps,
        opts.lr,
        opts.warmup,
        opts.seq,
        opts.batch,
        opts.max_sequences,
        opts.val_every,
        opts.patience,
        opts.clip,
        opts.seed,
        prov.threads
    );
    m.set("smelt.heal.params", s(&params));
    m.set(
        "smelt.heal.steps_run",
        Value::U32(report.train_loss.len() as u32),
    );
    m.set("smelt.heal.best_step", Value::U32(report.best_step as u32));
    m.set(
        "smelt.heal.loss.train_last",
        Value::F64(report.train_loss.last().copied().unwrap_or(f64::NAN)),
    );
    m.set(
        "smelt.heal.loss.val_before",
        Value::F64(report.val_before()),
    );
    m.set("smelt.heal.loss.val_best", Value::F64(report.val_best()));
    m
}

/// Write the healed `student` to `path` (GGUF), each tensor at the type it has in `student`.
pub fn write_healed(
    student: &Store,
    report: &HealReport,
    metadata: Metadata,
    path: &Path,
    display: crate::progress::Display,
) -> Result<OutputReport> {
    let mut trained = HashMap::new();
    for (name, values) in &report.trained {
        let i = student
            .find(name)
            .ok_or_else(|| Error::Invalid(format!("heal: the model has no `{name}`")))?;
        trained.insert(i, values.as_slice());
    }
    let healed = Healed {
        store: student,
        trained,
    };
    let order: Vec<usize> = (0..student.tensors.len()).collect();
    let tensors = student
        .tensors
        .iter()
        .map(|t| {
            Some(PlannedTensor {
                name: t.name.clone(),
                ty: t.ty,
                imatrix: None,
            })
        })
        .collect();
    let out = OutputFile {
        path: path.to_path_buf(),
        metadata,
        tensors,
    };
    let mut reports = crate::write::write_matrix(&healed, &order, &[out], display)?;
    Ok(reports.remove(0))
}
