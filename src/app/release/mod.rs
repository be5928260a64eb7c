//! `smelt release`: from a model or a merge recipe to a folder a publisher uploads as it is —
//! the importance matrix, every type in one pass of the matrix writer (split when asked), each
//! type's quality against the source on a held-out text (one reference pass, its
//! log-probabilities saved and read back per type), a plot, the model card, `release.json` and
//! `SHA256SUMS`.
//!
//! The steps record what they finished in a progress file (the manifest, filled in as they go),
//! so a release interrupted half-way and started again redoes only what is missing: a file is
//! skipped only when it is still there with the SHA-256 recorded for it. Every file appears
//! under its final name whole or not at all (the writers' temp-and-rename).

mod card;
mod finalize;
pub mod manifest;

pub use finalize::{finalize, FinalizeOptions};

pub use manifest::{
    Manifest, CARD_FILE, CHECKSUMS_FILE, IMATRIX_FILE, MANIFEST_FILE, PLOT_FILE,
    REFERENCE_LOGITS_FILE, STATE_FILE,
};

use crate::app::verify::sha256_file;
use crate::error::{Error, Result};
use crate::eval::{EvalOptions, Weights};
use crate::progress::{Display, Progress, Unit};
use crate::quant::imatrix::Imatrix;
use crate::quant::mix::FileType;
use crate::split::SplitLimit;
use crate::store::Store;
use crate::target::TypeSpec;
use crate::write::TensorProducer;
use manifest::{
    EvaluationInfo, FileEntry, Fingerprint, ImatrixInfo, Quality, ReleasedType, SourceInfo,
};
use std::path::{Path, PathBuf};

/// `--preset standard`: the types most releases publish, from 2.6 to 16 bits per weight.
pub const PRESET_STANDARD: &[&str] = &[
    "Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "IQ4_XS", "Q5_K_M", "Q6_K", "Q8_0", "F16",
];
/// `--preset full`: every type a large release offers, the imatrix-only ones included.
pub const PRESET_FULL: &[&str] = &[
    "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_M", "Q2_K", "IQ3_XXS", "IQ3_M", "Q3_K_S", "Q3_K_M",
    "Q3_K_L", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
    "F16",
];

/// Where the importance matrix comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ImatrixChoice {
    /// Computed on the calibration text when a chosen type needs one or gains from one.
    Auto,
    File(PathBuf),
    None,
}

/// How to make the release.
#[derive(Clone, Debug)]
pub struct ReleaseOptions {
    pub source: PathBuf,
    pub out_dir: PathBuf,
    /// Mixes and targets (`Q4_K_M`, `4.25bpw`, `5.5G`).
    pub types: Vec<TypeSpec>,
    pub imatrix: ImatrixChoice,
    /// The imatrix's text; default: the first half of the built-in calibration text.
    pub calibration_text: Option<PathBuf>,
    /// The quality table's text; default: the second half of the built-in text.
    pub eval_text: Option<PathBuf>,
    pub n_ctx: usize,
    pub imatrix_chunks: Option<usize>,
    pub eval_chunks: Option<usize>,
    /// Measure each type against the source (the quality table, the plot).
    pub evaluate: bool,
    pub split: Option<SplitLimit>,
    pub name: Option<String>,
    pub base_model: Option<String>,
    pub quantized_by: Option<String>,
    pub force: bool,
    pub command_line: Vec<String>,
    pub display: Display,
    /// Where progress notes go (`say("wrote …")`); the CLI prints them unless quiet.
    pub quiet: bool,
}

impl ReleaseOptions {
    fn say(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{}", crate::error::printable(&line.to_string()));
        }
    }
}

/// `--types` or `--preset`, as mixes and targets.
pub fn parse_types(types: &[String], preset: Option<&str>) -> Result<Vec<TypeSpec>> {
    let names: Vec<String> = match (types.is_empty(), preset) {
        (false, None) => types
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        (true, None | Some("standard")) => PRESET_STANDARD.iter().map(|s| s.to_string()).collect(),
        (true, Some("full")) => PRESET_FULL.iter().map(|s| s.to_string()).collect(),
        (true, Some(p)) => {
            return Err(Error::Invalid(format!(
                "--preset `{}`: standard or full",
                crate::error::printable(p)
            )))
        }
        (false, Some(_)) => {
            return Err(Error::Invalid(
                "--types and --preset: give one of them".into(),
            ))
        }
    };
    let mut out: Vec<TypeSpec> = Vec::new();
    for n in &names {
        let spec = TypeSpec::parse(n)?;
        if out.iter().any(|s| s.label() == spec.label()) {
            return Err(Error::Invalid(format!(
                "--types: {} is listed twice",
                spec.label()
            )));
        }
        out.push(spec);
    }
    Ok(out)
}

/// Whether a type's quantization uses an importance matrix when one is given (every quantized
/// type but Q8_0: llama.cpp's kernels for the others weigh their search by it; a target also
/// weighs each tensor's measured error by it, and may choose IQ4_XS with one).
fn gains_from_imatrix(spec: &TypeSpec) -> bool {
    use crate::gguf::GgmlType::*;
    match spec {
        TypeSpec::Mix(ft) => !matches!(ft.default_type(), F32 | F16 | BF16 | Q8_0),
        TypeSpec::Target(_) => true,
    }
}

/// Whether a type cannot be made without one (a target chooses among types that need none).
fn needs_imatrix(spec: &TypeSpec) -> bool {
    match spec {
        TypeSpec::Mix(ft) => {
            crate::quant::mix::requires_imatrix("blk.0.ffn_down.weight", ft.default_type(), *ft)
        }
        TypeSpec::Target(_) => false,
    }
}

/// The model the release is made from.
enum Source {
    Model(Store),
    Recipe(Box<crate::eval::MergedWeights>),
}

impl Source {
    fn open(path: &Path) -> Result<(Source, &'static str)> {
        let is_recipe = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if !is_recipe {
            let kind = if path.is_dir() {
                "hf-folder"
            } else if path
                .to_string_lossy()
                .to_lowercase()
                .contains(".safetensors")
            {
                "safetensors"
            } else {
                "gguf"
            };
            return Ok((Source::Model(Store::open(path)?), kind));
        }
        let text = crate::input::read_to_string(path)?;
        let origin = path.display().to_string();
        let docs = crate::recipe::parse(&text, &origin)?;
        if docs.len() != 1 {
            return Err(Error::Invalid(format!(
                "{origin}: a recipe of {} documents; release one document (merge the earlier ones first)",
                docs.len()
            )));
        }
        for w in &docs[0].warnings {
            eprintln!("warning: {}", crate::error::printable(w));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        // Not a dry run: the inputs are hashed, as a merge records them.
        let opts = crate::merge::PlanOptions::default();
        let plan =
            crate::merge::MergePlan::with_options(&docs[0], &text, &origin, dir, &[], &opts)?;
        Ok((
            Source::Recipe(Box::new(crate::eval::MergedWeights::new(plan))),
            "recipe",
        ))
    }

    fn weights(&self) -> &dyn Weights {
        match self {
            Source::Model(s) => s,
            Source::Recipe(m) => m.as_ref(),
        }
    }

    fn producer(&self) -> &dyn TensorProducer {
        match self {
            Source::Model(s) => s,
            Source::Recipe(m) => m.plan(),
        }
    }

    /// Size and SHA-256 of what the release is made from: the model's files, or for a recipe
    /// the recipe's text and every input's recorded hash.
    fn sha256(&self) -> Result<(u64, String)> {
        match self {
            Source::Model(s) => s.sha256(),
            Source::Recipe(m) => {
                use sha2::{Digest, Sha256};
                let md = &m.plan().metadata;
                let mut h = Sha256::new();
                h.update(md.get_str("smelt.recipe").unwrap_or("").as_bytes());
                let mut size = 0;
                for i in 0.. {
                    let Some(sha) = md.get_str(&format!("smelt.input.{i}.sha256")) else {
                        break;
                    };
                    h.update(sha.as_bytes());
                    size += md.get_u64(&format!("smelt.input.{i}.size")).unwrap_or(0);
                }
                Ok((
                    size,
                    h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
                ))
            }
        }
    }

    fn has_tokenizer(&self) -> bool {
        self.producer()
            .model_metadata()
            .get("tokenizer.ggml.tokens")
            .is_some()
    }
}

/// A text to run on: the file's text, or one half of the built-in calibration text.
struct Text {
    text: String,
    name: String,
    sha256: String,
}

impl Text {
    fn load(arg: Option<&Path>, builtin_half: usize) -> Result<Text> {
        let (text, name) = match arg {
            Some(p) => crate::app::text::eval_text(Some(p))?,
            None => {
                let halves = crate::app::text::calibration_halves();
                let text = if builtin_half == 0 {
                    halves.0
                } else {
                    halves.1
                };
                let name = format!(
                    "{} ({} half)",
                    crate::app::text::CALIBRATION_NAME,
                    if builtin_half == 0 { "first" } else { "second" }
                );
                (text.to_string(), name)
            }
        };
        let sha256 = {
            use sha2::{Digest, Sha256};
            Sha256::digest(text.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        Ok(Text { text, name, sha256 })
    }
}

/// A name inside the release folder.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn entry(dir: &Path, name: &str) -> Result<FileEntry> {
    let path = dir.join(name);
    let bytes = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    Ok(FileEntry {
        file: name.to_string(),
        bytes,
        sha256: sha256_file(&path)?,
    })
}

/// A recorded file still there with its recorded hash.
fn still_valid(dir: &Path, e: &FileEntry) -> bool {
    let path = dir.join(&e.file);
    std::fs::metadata(&path).is_ok_and(|m| m.len() == e.bytes)
        && sha256_file(&path).is_ok_and(|h| h == e.sha256)
}

/// Make (or finish) the release `opts` describes.
pub fn release(opts: &ReleaseOptions) -> Result<Manifest> {
    if opts.types.is_empty() {
        return Err(Error::Invalid("no types to release".into()));
    }
    let name = match &opts.name {
        Some(n) => crate::app::naming::plain_file_name(n, "--name")?.to_string(),
        None => crate::app::naming::model_name(&opts.source),
    };
    if opts.imatrix == ImatrixChoice::None {
        if let Some(ft) = opts.types.iter().find(|t| needs_imatrix(t)) {
            return Err(Error::Invalid(format!(
                "{} needs an importance matrix, and --imatrix none was given (use --imatrix auto or a file)",
                ft.label()
            )));
        }
    }
    let (source, kind) = Source::open(&opts.source)?;
    if let Source::Model(s) = &source {
        for w in &s.warnings {
            eprintln!("warning: {}", crate::error::printable(w));
        }
    }
    let has_tokenizer = source.has_tokenizer();
    if !has_tokenizer {
        eprintln!(
            "warning: {} has no tokenizer: llama.cpp cannot load the files of this release, and nothing can be measured (no imatrix, no quality table)",
            opts.source.display()
        );
    }
    let calibration = Text::load(opts.calibration_text.as_deref(), 0)?;
    let evaluation = Text::load(opts.eval_text.as_deref(), 1)?;
    let wants_imatrix = match &opts.imatrix {
        ImatrixChoice::None => false,
        ImatrixChoice::File(_) => true,
        ImatrixChoice::Auto => opts.types.iter().any(gains_from_imatrix),
    };
    if wants_imatrix && opts.imatrix == ImatrixChoice::Auto && !has_tokenizer {
        if let Some(ft) = opts.types.iter().find(|t| needs_imatrix(t)) {
            return Err(Error::Invalid(format!(
                "{} needs an importance matrix, which cannot be computed without a tokenizer; give one with --imatrix FILE",
                ft.label()
            )));
        }
    }
    opts.say(format_args!("hashing {}", opts.source.display()));
    let (source_bytes, source_sha) = source.sha256()?;
    let fingerprint = Fingerprint {
        smelt_version: crate::cli::VERSION.to_string(),
        source_sha256: source_sha.clone(),
        types: opts.types.iter().map(TypeSpec::label).collect(),
        imatrix: match &opts.imatrix {
            ImatrixChoice::Auto => "auto".into(),
            ImatrixChoice::None => "none".into(),
            ImatrixChoice::File(p) => sha256_file(p)?,
        },
        calibration_sha256: calibration.sha256.clone(),
        evaluation_sha256: evaluation.sha256.clone(),
        n_ctx: opts.n_ctx,
        imatrix_chunks: opts.imatrix_chunks,
        eval_chunks: opts.eval_chunks,
        split: opts.split.map(|l| match l {
            SplitLimit::Bytes(b) => format!("{b} bytes"),
            SplitLimit::Tensors(n) => format!("{n} tensors"),
            SplitLimit::Balanced(n) => format!("{n} shards"),
        }),
        name: name.clone(),
    };
    let dir = opts.out_dir.as_path();
    let mut inputs: Vec<PathBuf> = source.producer().input_files();
    inputs.extend(opts.calibration_text.iter().cloned());
    inputs.extend(opts.eval_text.iter().cloned());
    if let ImatrixChoice::File(p) = &opts.imatrix {
        inputs.push(p.clone());
    }
    if let Some(SplitLimit::Bytes(limit)) = opts.split {
        // Checked before the folder exists: the types that need no imatrix, planned without
        // one, tell whether a tensor outgrows the limit (quantize_step checks the rest).
        let plain: Vec<FileType> = opts
            .types
            .iter()
            .filter_map(|t| match t {
                TypeSpec::Mix(ft) if !needs_imatrix(t) => Some(*ft),
                _ => None,
            })
            .collect();
        let plan = crate::quantize::plan(source.producer(), &plain, &Default::default(), |ft| {
            dir.join(format!("{name}-{}.gguf", ft.name()))
        })?;
        check_split_size(source.producer(), &plan, limit)?;
    }
    crate::output_files::with_output_dir(dir, || {
        let mut state = prepare(dir, &fingerprint, opts.force)?;
        state.name = name.clone();
        state.smelt_version = crate::cli::VERSION.to_string();
        state.command_line = opts.command_line.clone();
        state.fingerprint = fingerprint.clone();
        state.source = source_info(&source, kind, opts, source_bytes, &source_sha);
        let state_path = dir.join(STATE_FILE);
        state.save(&state_path)?;
        let paths = |spec: &TypeSpec| dir.join(format!("{name}-{}.gguf", spec.label()));
        let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        let planned: Vec<PathBuf> = opts.types.iter().map(paths).collect();
        let planned_refs: Vec<&Path> = planned.iter().map(PathBuf::as_path).collect();
        crate::output_files::check_outputs(&input_refs, &planned_refs)?;

        let imatrix =
            if wants_imatrix && (has_tokenizer || matches!(opts.imatrix, ImatrixChoice::File(_))) {
                Some(imatrix_step(
                    &source,
                    opts,
                    dir,
                    &calibration,
                    &mut state,
                    &state_path,
                )?)
            } else {
                None
            };
        quantize_step(&source, opts, dir, imatrix, &mut state, &state_path, &paths)?;
        let evaluated = opts.evaluate && has_tokenizer;
        if evaluated {
            evaluate_step(&source, opts, dir, &evaluation, &mut state, &state_path)?;
        }
        finish(opts, dir, &mut state, evaluated)?;
        Ok(state)
    })
}

/// The folder's record: a release under way with the same fingerprint is resumed; anything
/// else in the folder stops the release unless `force` (then the files an earlier release
/// recorded are removed, nothing else).
fn prepare(dir: &Path, fingerprint: &Fingerprint, force: bool) -> Result<Manifest> {
    crate::output_files::remove_stale_temps(dir);
    let state_path = dir.join(STATE_FILE);
    let manifest_path = dir.join(MANIFEST_FILE);
    let earlier = if state_path.exists() {
        Some(Manifest::load(&state_path))
    } else if manifest_path.exists() {
        Some(Manifest::load(&manifest_path))
    } else {
        None
    };
    match earlier {
        Some(Ok(m)) if m.fingerprint == *fingerprint => return Ok(m),
        Some(Ok(m)) if force => {
            for f in m.files().chain(m.reference_logits.as_ref()) {
                let _ = std::fs::remove_file(dir.join(&f.file));
            }
            for f in [CHECKSUMS_FILE, MANIFEST_FILE, STATE_FILE] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        Some(Ok(m)) => {
            return Err(Error::Invalid(format!(
                "{} holds another release ({}, made {}); --force replaces it",
                dir.display(),
                m.name,
                describe_difference(&m.fingerprint, fingerprint)
            )))
        }
        Some(Err(e)) if !force => return Err(e),
        Some(Err(_)) => {}
        None => {
            let foreign = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .next();
            if let (Some(f), false) = (foreign, force) {
                return Err(Error::Invalid(format!(
                    "{} is not empty (it holds {}) and holds no smelt release; give an empty or new folder, or --force to write into it",
                    dir.display(),
                    crate::error::printable(&f)
                )));
            }
        }
    }
    Ok(Manifest::default())
}

/// The first fingerprint field that differs, for the error message.
fn describe_difference(a: &Fingerprint, b: &Fingerprint) -> String {
    let (ja, jb) = (
        serde_json::to_value(a).expect("plain data"),
        serde_json::to_value(b).expect("plain data"),
    );
    let (Some(oa), Some(ob)) = (ja.as_object(), jb.as_object()) else {
        return String::new();
    };
    oa.iter()
        .find(|(k, v)| ob.get(*k) != Some(*v))
        .map(|(k, v)| format!("with {k} {v}, not {}", ob[k]))
        .unwrap_or_default()
}

fn source_info(
    source: &Source,
    kind: &str,
    opts: &ReleaseOptions,
    bytes: u64,
    sha256: &str,
) -> SourceInfo {
    let md = source.producer().model_metadata();
    let shapes: Vec<(String, Vec<u64>)> = (0..source.producer().n_tensors())
        .map(|i| {
            let p = source.producer();
            (p.name(i).to_string(), p.shape(i).to_vec())
        })
        .collect();
    let params =
        crate::model_card::ParamCount::of(shapes.iter().map(|(n, s)| (n.as_str(), s.as_slice())));
    SourceInfo {
        path: opts.source.display().to_string(),
        kind: kind.to_string(),
        bytes,
        sha256: sha256.to_string(),
        architecture: md.architecture().unwrap_or("").to_string(),
        parameters: params.total,
        base_models: card::base_models(
            kind == "recipe",
            md,
            &opts.source,
            opts.base_model.as_deref(),
        ),
        license: md.get_str("general.license").map(str::to_string),
        recipe: md
            .get_str("smelt.recipe")
            .filter(|_| kind == "recipe")
            .map(str::to_string),
    }
}

/// The importance matrix: the recorded one if it is still there, else computed (or the
/// given file, hashed).
fn imatrix_step(
    source: &Source,
    opts: &ReleaseOptions,
    dir: &Path,
    calibration: &Text,
    state: &mut Manifest,
    state_path: &Path,
) -> Result<(Imatrix, String)> {
    if let ImatrixChoice::File(p) = &opts.imatrix {
        // Loaded now so a bad file is refused before any work.
        let im = Imatrix::load(p)?;
        // Recorded by name when it lies in the release, not by this machine's path.
        let recorded = if p.starts_with(dir) {
            file_name(p)
        } else {
            p.display().to_string()
        };
        state.imatrix = Some(ImatrixInfo {
            file: p.display().to_string(),
            sha256: sha256_file(p)?,
            computed: false,
            dataset: String::new(),
            chunks: None,
            n_ctx: None,
        });
        state.save(state_path)?;
        return Ok((im, recorded));
    }
    let path = dir.join(IMATRIX_FILE);
    if let Some(info) = &state.imatrix {
        let recorded = state.other_files.iter().find(|f| f.file == IMATRIX_FILE);
        if recorded.is_some_and(|e| still_valid(dir, e)) && info.computed {
            opts.say(format_args!("{IMATRIX_FILE}: done earlier, verified"));
            return Ok((Imatrix::load(&path)?, IMATRIX_FILE.into()));
        }
    }
    let weights = source.weights();
    let tokens = crate::eval::tokenize(weights, &calibration.text)?;
    let eval_opts = EvalOptions {
        n_ctx: opts.n_ctx,
        max_chunks: opts.imatrix_chunks,
        batch: None,
    };
    let n_chunks = crate::eval::n_chunks(tokens.len(), &eval_opts);
    let n_layer = weights.n_layer();
    let progress = Progress::new(
        opts.display,
        "imatrix",
        (n_chunks * opts.n_ctx) as u64 * n_layer,
        Unit::TokenLayers(n_layer),
    );
    let (stats, n_chunks) = crate::eval::collect_imatrix(weights, &tokens, &eval_opts, &progress)?;
    progress.finish();
    crate::eval::write_imatrix_gguf(&path, stats, &calibration.name, n_chunks, opts.n_ctx)?;
    let e = entry(dir, IMATRIX_FILE)?;
    state.other_files.retain(|f| f.file != IMATRIX_FILE);
    state.other_files.push(e.clone());
    state.imatrix = Some(ImatrixInfo {
        file: IMATRIX_FILE.into(),
        sha256: e.sha256,
        computed: true,
        dataset: calibration.name.clone(),
        chunks: Some(n_chunks),
        n_ctx: Some(opts.n_ctx),
    });
    state.save(state_path)?;
    opts.say(format_args!(
        "wrote {} ({n_chunks} chunks of {} from {})",
        path.display(),
        opts.n_ctx,
        calibration.name
    ));
    Ok((Imatrix::load(&path)?, IMATRIX_FILE.into()))
}

/// Every type not already released and verified, in one pass of the matrix writer.
fn quantize_step(
    source: &Source,
    opts: &ReleaseOptions,
    dir: &Path,
    imatrix: Option<(Imatrix, String)>,
    state: &mut Manifest,
    state_path: &Path,
    path_for: &dyn Fn(&TypeSpec) -> PathBuf,
) -> Result<()> {
    let mut todo = Vec::new();
    for spec in &opts.types {
        match state.released(&spec.label()) {
            Some(r) if r.parts.iter().all(|p| still_valid(dir, p)) => {
                opts.say(format_args!("{}: done earlier, verified", spec.label()))
            }
            _ => todo.push(spec.clone()),
        }
    }
    state
        .types
        .retain(|t| !todo.iter().any(|spec| spec.label() == t.file_type));
    if todo.is_empty() {
        return Ok(());
    }
    let qopts = crate::quantize::QuantizeOptions {
        imatrix,
        split: opts.split,
        ..Default::default()
    };
    let producer = source.producer();
    // Targets are solved on one measurement of the source (its error at each candidate type,
    // weighted by the imatrix), planned beside the mixes for the same single pass.
    let target_source = crate::app::targets::TargetSource {
        producer,
        weights: source.weights(),
    };
    let plan = crate::app::targets::plan(
        &target_source,
        &todo,
        &qopts,
        &Default::default(),
        &path_for(&todo[0]),
        path_for,
        opts.display,
    )?
    .matrix
    .plan;
    for w in &plan.warnings {
        eprintln!("warning: {}", crate::error::printable(w));
    }
    if let Some(SplitLimit::Bytes(limit)) = opts.split {
        check_split_size(producer, &plan, limit)?;
    }
    let reports = crate::write::write_matrix(producer, &plan.order, &plan.outputs, opts.display)?;
    for spec in &todo {
        let target = path_for(spec);
        let mine: Vec<&crate::write::OutputReport> = reports
            .iter()
            .filter(|r| r.path == target || is_part_of(&r.path, &target))
            .collect();
        let mut parts = Vec::new();
        for r in &mine {
            parts.push(entry(dir, &file_name(&r.path))?);
        }
        let bytes: u64 = mine.iter().map(|r| r.bytes).sum();
        let weights: u64 = mine.iter().map(|r| r.n_weights).sum();
        state.types.push(ReleasedType {
            file_type: spec.label(),
            parts,
            bytes,
            bits_per_weight: if weights == 0 {
                0.0
            } else {
                bytes as f64 * 8.0 / weights as f64
            },
            quality: None,
        });
        opts.say(format_args!(
            "wrote {} ({:.2} MiB, {} file{})",
            target.display(),
            bytes as f64 / (1 << 20) as f64,
            mine.len(),
            if mine.len() == 1 { "" } else { "s" }
        ));
    }
    // In the order asked for, whatever was done earlier.
    state
        .types
        .sort_by_key(|t| opts.types.iter().position(|s| s.label() == t.file_type));
    state.save(state_path)
}

/// Whether `path` is one file of the split set of `target` (`NAME-0000K-of-0000N.gguf`).
fn is_part_of(path: &Path, target: &Path) -> bool {
    let (Some(name), Some(stem)) = (
        path.file_name().and_then(|n| n.to_str()),
        target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".gguf")),
    ) else {
        return false;
    };
    let Some(rest) = name
        .strip_prefix(stem)
        .and_then(|r| r.strip_suffix(".gguf"))
    else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 15
        && b[0] == b'-'
        && &rest[6..10] == "-of-"
        && rest[1..6].bytes().all(|c| c.is_ascii_digit())
        && rest[10..].bytes().all(|c| c.is_ascii_digit())
}

/// A split size a tensor does not fit in would leave that tensor alone in a file over the
/// limit (llama-gguf-split stops there): refused before writing.
fn check_split_size(
    producer: &dyn TensorProducer,
    plan: &crate::quantize::QuantizePlan,
    limit: u64,
) -> Result<()> {
    for o in &plan.outputs {
        for (&src, t) in plan.order.iter().zip(&o.tensors) {
            let Some(t) = t else { continue };
            let n: u64 = producer.shape(src).iter().product();
            let bytes = t.ty.bytes_for(n).unwrap_or(0);
            if bytes > limit {
                return Err(Error::Invalid(format!(
                    "--split-max-size {limit} bytes is smaller than tensor `{}` ({bytes} bytes as {}) of {}",
                    t.name,
                    t.ty,
                    o.path.display()
                )));
            }
        }
    }
    Ok(())
}

/// One reference pass over the evaluation text (the source itself, its log-probabilities
/// saved beside the release), then each type measured against the saved file.
fn evaluate_step(
    source: &Source,
    opts: &ReleaseOptions,
    dir: &Path,
    text: &Text,
    state: &mut Manifest,
    state_path: &Path,
) -> Result<()> {
    use crate::eval::{evaluate, LogitsReader, LogitsWriter, Reference};
    let eval_opts = EvalOptions {
        n_ctx: opts.n_ctx,
        max_chunks: opts.eval_chunks,
        batch: None,
    };
    let weights = source.weights();
    let tokens = crate::eval::tokenize(weights, &text.text)?;
    let n_chunks = crate::eval::n_chunks(tokens.len(), &eval_opts);
    let n_layer = weights.n_layer();
    let pass_total = (n_chunks * opts.n_ctx) as u64 * n_layer;
    let logits_path = dir.join(REFERENCE_LOGITS_FILE);
    let reference_done = state.evaluation.is_some()
        && state
            .reference_logits
            .as_ref()
            .is_some_and(|e| still_valid(dir, e));
    if !reference_done {
        let progress = Progress::new(
            opts.display,
            "reference",
            pass_total,
            Unit::TokenLayers(n_layer),
        );
        let mut writer = LogitsWriter::create(&logits_path)?;
        let report = evaluate(
            weights,
            None,
            Some(&mut writer),
            &tokens,
            &eval_opts,
            &progress,
        )?;
        progress.finish();
        writer.finish()?;
        state.reference_logits = Some(entry(dir, REFERENCE_LOGITS_FILE)?);
        state.evaluation = Some(EvaluationInfo {
            text: text.name.clone(),
            text_sha256: text.sha256.clone(),
            n_ctx: opts.n_ctx,
            chunks: report.n_chunks,
            tokens_scored: report.n_scored,
            reference: format!(
                "{} (the source, at its own precision)",
                opts.source.display()
            ),
            reference_perplexity: report.perplexity,
            reference_perplexity_error: report.perplexity_error,
        });
        for t in &mut state.types {
            t.quality = None; // measured against another reference file
        }
        state.save(state_path)?;
        opts.say(format_args!(
            "reference: PPL {:.4} +/- {:.5} on {} chunks of {}",
            report.perplexity, report.perplexity_error, report.n_chunks, opts.n_ctx
        ));
    }
    for k in 0..state.types.len() {
        if state.types[k].quality.is_some() {
            continue;
        }
        let first = dir.join(&state.types[k].parts[0].file);
        let label = state.types[k].file_type.clone();
        let model = Store::open(&first)?;
        let mut saved = LogitsReader::open(&logits_path)?;
        let progress = Progress::new(opts.display, &label, pass_total, Unit::TokenLayers(n_layer));
        let report = evaluate(
            &model,
            Some(Reference::Saved(&mut saved)),
            None,
            &tokens,
            &eval_opts,
            &progress,
        )?;
        progress.finish();
        let kld = report.kld.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{label}: no KL divergence against the saved reference"
            ))
        })?;
        let q = Quality {
            perplexity: report.perplexity,
            perplexity_error: report.perplexity_error,
            kld_mean: kld.kld.value,
            kld_p99: kld.kld_quantiles.p99,
            kld_max: kld.kld_quantiles.max,
            same_top_percent: kld.same_top.value * 100.0,
        };
        opts.say(format_args!(
            "{label}: PPL {:.4}, mean KLD {:.6}, 99% KLD {:.6}, same top {:.2}%",
            q.perplexity, q.kld_mean, q.kld_p99, q.same_top_percent
        ));
        state.types[k].quality = Some(q);
        state.save(state_path)?;
    }
    Ok(())
}

/// The plot, the card, `release.json` and `SHA256SUMS`; then the progress file and the saved
/// reference logits go.
fn finish(opts: &ReleaseOptions, dir: &Path, state: &mut Manifest, evaluated: bool) -> Result<()> {
    state.other_files.retain(|f| f.file == IMATRIX_FILE);
    if evaluated {
        card::write_plot(dir, state)?;
        state.other_files.push(entry(dir, PLOT_FILE)?);
    }
    let card_text = card::render(state, opts.quantized_by.as_deref(), evaluated);
    crate::output_files::write_whole(&dir.join(CARD_FILE), card_text.as_bytes())?;
    state.other_files.push(entry(dir, CARD_FILE)?);
    let logits = state.reference_logits.take();
    state.save(&dir.join(MANIFEST_FILE))?;
    let mut sums: Vec<FileEntry> = state.files().cloned().collect();
    sums.push(entry(dir, MANIFEST_FILE)?);
    sums.sort_by(|a, b| a.file.cmp(&b.file));
    let text: String = sums
        .iter()
        .map(|e| format!("{}  {}\n", e.sha256, e.file))
        .collect();
    crate::output_files::write_whole(&dir.join(CHECKSUMS_FILE), text.as_bytes())?;
    if logits.is_some() {
        let _ = std::fs::remove_file(dir.join(REFERENCE_LOGITS_FILE));
    }
    let _ = std::fs::remove_file(dir.join(STATE_FILE));
    opts.say(format_args!(
        "release of {} in {}: {} types, {CARD_FILE}, {MANIFEST_FILE}, {CHECKSUMS_FILE}",
        state.name,
        dir.display(),
        state.types.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parts_are_recognised_by_name() {
        let t = Path::new("d/m-Q4_K.gguf");
        assert!(is_part_of(Path::new("d/m-Q4_K-00001-of-00003.gguf"), t));
        assert!(!is_part_of(Path::new("d/m-Q4_K_M-00001-of-00003.gguf"), t));
        assert!(!is_part_of(Path::new("d/m-Q4_K.gguf"), t));
        assert!(!is_part_of(Path::new("d/m-Q4_K-0001-of-00003.gguf"), t));
    }

    #[test]
    fn presets_and_type_lists_parse() {
        assert_eq!(parse_types(&[], None).unwrap().len(), PRESET_STANDARD.len());
        assert_eq!(
            parse_types(&[], Some("full")).unwrap().len(),
            PRESET_FULL.len()
        );
        let t = parse_types(&["Q4_K_M,Q8_0".into(), "F16".into()], None).unwrap();
        assert_eq!(
            t.iter().map(TypeSpec::label).collect::<Vec<_>>(),
            ["Q4_K_M", "Q8_0", "F16"]
        );
        assert!(parse_types(&["Q8_0,Q8_0".into()], None).is_err());
        assert!(parse_types(&[], Some("huge")).is_err());
        assert!(parse_types(&["Q8_0".into()], Some("full")).is_err());
        for n in PRESET_FULL {
            FileType::parse(n).unwrap();
        }
    }
}
