//! `smelt calibrate`: tune a recipe's values by measured quality. The values to tune are
//! written as search ranges (`{search: [LOW, HIGH]}`, see [`ranges`]); each trial merges the
//! recipe with concrete values in memory ([`crate::eval::MergedWeights`], nothing written) and
//! measures it on a short text, perplexity or KL divergence against a reference; a
//! derivative-free search ([`search`]) picks the next values. A trial whose first chunk's
//! perplexity is far beyond the best first chunk so far stops there (a duplicated stack with
//! a wrong scale sends it past a billion; no need to finish measuring that).
//!
//! The result is the input recipe with each range replaced by its calibrated value (nothing
//! else of the text changes), the table of trials, and with `types`, the merged model.

pub mod ranges;
pub mod search;

use crate::error::{Error, Result};
use crate::eval::{EvalOptions, EvalReport, LogitsReader, LogitsWriter, Reference, Weights};
use crate::progress::{Display, Progress, Unit};
pub use ranges::{SearchRange, SearchRecipe};
use std::path::{Path, PathBuf};

/// What a trial is scored by (lower is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Perplexity on the text.
    Perplexity,
    /// Mean KL divergence from a reference model's token distributions.
    Kld,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Perplexity => "perplexity",
            Metric::Kld => "KL divergence",
        }
    }
}

/// How to calibrate.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    /// The calibrated recipe to write.
    pub output: PathBuf,
    /// The text (`None`: smelt's built-in calibration text).
    pub text: Option<PathBuf>,
    pub metric: Metric,
    /// The KL divergence's reference (default: the recipe's `base_model`, else its one input).
    pub reference: Option<PathBuf>,
    /// Trials at most (`None`: [`default_budget`]).
    pub budget: Option<usize>,
    /// Tokens per chunk and chunks per trial (short: every trial runs them all).
    pub n_ctx: usize,
    pub chunks: usize,
    /// A trial stops after its first chunk when that chunk's perplexity is above this many
    /// times the lowest first-chunk perplexity so far.
    pub abort_factor: f64,
    /// Also write the calibrated model in these types (beside the recipe, `<stem>-<TYPE>.gguf`).
    pub types: Vec<String>,
    /// Also write the table of trials here (tab-separated).
    pub table: Option<PathBuf>,
    pub display: Display,
}

impl CalibrateOptions {
    pub fn new(output: impl Into<PathBuf>) -> CalibrateOptions {
        CalibrateOptions {
            output: output.into(),
            text: None,
            metric: Metric::Perplexity,
            reference: None,
            budget: None,
            n_ctx: 128,
            chunks: 4,
            abort_factor: 10.0,
            types: Vec::new(),
            table: None,
            display: Display::Hidden,
        }
    }
}

/// Trials when not told: enough for golden-section search to narrow one value to about
/// 1/10000 of its range, and ten more per further value for Nelder–Mead.
pub fn default_budget(n_values: usize) -> usize {
    10 + 10 * n_values
}

/// One merge measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    /// One per search range, as written in the recipe.
    pub values: Vec<f64>,
    pub perplexity: f64,
    pub kld: Option<f64>,
    /// The value minimised (perplexity or KL divergence).
    pub metric: f64,
    /// Stopped after its first chunk (its figures are that chunk's).
    pub aborted: bool,
    /// What the early stop compares.
    pub first_chunk_perplexity: f64,
    pub chunks: usize,
    pub seconds: f64,
}

/// What a calibration did.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub recipe: SearchRecipe,
    pub metric: Metric,
    /// `golden-section` or `Nelder-Mead`.
    pub search: &'static str,
    pub budget: usize,
    pub trials: Vec<Trial>,
    /// Index of the best trial.
    pub best: usize,
    /// The calibrated recipe's text, as written.
    pub calibrated: String,
    pub text_name: String,
    pub n_ctx: usize,
    pub n_chunks: usize,
    pub reference: Option<PathBuf>,
    /// The models written with `types`.
    pub written: Vec<crate::write::OutputReport>,
    pub seconds: f64,
}

impl Calibration {
    pub fn best_trial(&self) -> &Trial {
        &self.trials[self.best]
    }

    /// The table of trials, tab-separated, a header line first.
    pub fn table_tsv(&self) -> String {
        self.table_with('\t', |t| t.to_string())
    }

    /// The table of trials aligned for a terminal.
    pub fn table(&self) -> String {
        let tsv = self.table_with('\t', |t| t.to_string());
        let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
        let width = |c: usize| rows.iter().map(|r| r[c].len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..rows[0].len()).map(width).collect();
        let mut out = String::new();
        for r in &rows {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    fn table_with(&self, sep: char, fmt: impl Fn(f64) -> String) -> String {
        let mut head = vec!["trial".to_string()];
        for r in &self.recipe.ranges {
            head.push(format!("{}@{}", r.parameter, r.line));
        }
        head.extend([
            "ppl".into(),
            "kld".into(),
            "aborted".into(),
            "seconds".into(),
        ]);
        let mut out = head.join(&sep.to_string());
        out.push('\n');
        for (k, t) in self.trials.iter().enumerate() {
            let mut row = vec![format!(
                "{}{}",
                k + 1,
                if k == self.best { "*" } else { "" }
            )];
            row.extend(t.values.iter().map(|&v| SearchRange::format(v)));
            row.push(format!("{:.4}", t.perplexity));
            row.push(t.kld.map_or("-".into(), |k| format!("{k:.6}")));
            row.push(if t.aborted { "yes" } else { "no" }.into());
            row.push(fmt((t.seconds * 100.0).round() / 100.0));
            out.push_str(&row.join(&sep.to_string()));
            out.push('\n');
        }
        out
    }
}

/// Calibrate the recipe at `recipe_path` and write the calibrated recipe (and the table and
/// models asked for). Every check runs before the first trial; nothing is written unless every
/// trial ran.
pub fn calibrate(recipe_path: &Path, opts: &CalibrateOptions) -> Result<Calibration> {
    let started = std::time::Instant::now();
    let text = crate::input::read_to_string(recipe_path)?;
    let origin = recipe_path.display().to_string();
    let recipe = SearchRecipe::parse(&text, &origin)?;
    let recipe_dir = recipe_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    if opts.abort_factor.is_nan() || opts.abort_factor <= 1.0 {
        return Err(Error::Invalid(format!(
            "the abort factor must be above 1, not {}",
            opts.abort_factor
        )));
    }
    if opts.chunks == 0 {
        return Err(Error::Invalid("--chunks must be at least 1".into()));
    }
    let budget = opts
        .budget
        .unwrap_or_else(|| default_budget(recipe.ranges.len()));
    if budget == 0 {
        return Err(Error::Invalid("--budget must be at least 1".into()));
    }

    // The recipe with every value mid-range: any mistake in the rest of the recipe shows here.
    let mid: Vec<f64> = recipe.ranges.iter().map(|r| r.at(0.5)).collect();
    let probe = Trials::weights(&recipe, &recipe_dir, &mid)?;
    let file_types = opts
        .types
        .iter()
        .map(|t| crate::quant::mix::FileType::parse(t))
        .collect::<Result<Vec<_>>>()?;
    let model_paths: Vec<PathBuf> = file_types
        .iter()
        .map(|ft| model_path(&opts.output, ft.name()))
        .collect();
    let reference_path = match opts.metric {
        Metric::Kld => Some(reference_of(&recipe, &mid, probe.plan(), opts)?),
        Metric::Perplexity if opts.reference.is_some() => {
            return Err(Error::Invalid(
                "--ref is the reference of --metric kld; perplexity needs none".into(),
            ))
        }
        Metric::Perplexity => None,
    };
    let mut inputs: Vec<PathBuf> = probe.input_files();
    inputs.push(recipe_path.to_path_buf());
    inputs.extend(opts.text.iter().cloned());
    inputs.extend(reference_path.iter().cloned());
    let mut outputs: Vec<&Path> = vec![&opts.output];
    outputs.extend(opts.table.as_deref());
    outputs.extend(model_paths.iter().map(PathBuf::as_path));
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    crate::output_files::check_outputs(&input_refs, &outputs)?;
    // Found out now, not after the last trial.
    for out in &outputs {
        let folder = out.parent().filter(|p| !p.as_os_str().is_empty());
        if folder.is_some_and(|f| !f.is_dir()) {
            return Err(Error::Invalid(format!(
                "{}: its folder does not exist",
                out.display()
            )));
        }
    }

    let (eval_text, text_name) = crate::app::text::eval_text(opts.text.as_deref())?;
    let tokens = crate::eval::tokenize(&probe, &eval_text)?;
    let eval_opts = EvalOptions {
        n_ctx: opts.n_ctx,
        max_chunks: Some(opts.chunks),
        batch: None,
    };
    let n_chunks = crate::eval::n_chunks(tokens.len(), &eval_opts);
    if n_chunks == 0 {
        return Err(Error::Invalid(format!(
            "{text_name}: {} tokens, fewer than one chunk of --ctx {}",
            tokens.len(),
            opts.n_ctx
        )));
    }
    drop(probe);

    // The reference's log-probabilities, computed once, in a temporary folder beside the
    // output (removed at the end, or on a signal).
    let scratch = match &reference_path {
        Some(_) => Some(ScratchDir(Some(crate::output_files::temp_dir_beside(
            &opts.output,
        )?))),
        None => None,
    };
    let reference_files = match (&reference_path, &scratch) {
        (Some(r), Some(dir)) => Some(save_reference(
            r,
            &tokens,
            &eval_text,
            opts,
            n_chunks,
            dir.path(),
        )?),
        _ => None,
    };

    let progress = Progress::new(opts.display, "calibrating", budget as u64, Unit::Steps);
    let mut trials = Trials {
        recipe: &recipe,
        recipe_dir: &recipe_dir,
        tokens: &tokens,
        n_ctx: opts.n_ctx,
        n_chunks,
        metric: opts.metric,
        abort_factor: opts.abort_factor,
        reference: reference_files.as_ref(),
        budget,
        calls: 0,
        done: Vec::new(),
        progress: &progress,
    };
    let search = if recipe.ranges.len() == 1 {
        search::golden_section(|u| trials.run(&[u]), GOLDEN_TOLERANCE)?;
        "golden-section"
    } else {
        let start = vec![0.5; recipe.ranges.len()];
        search::nelder_mead(|u| trials.run(u), &start, 0.25, SIMPLEX_TOLERANCE)?;
        "Nelder-Mead"
    };
    progress.finish();
    let done = trials.done;
    drop(scratch);
    let best = (0..done.len())
        .min_by(|&a, &b| {
            // A finished trial beats an aborted one with the same figure.
            (done[a].aborted, done[a].metric)
                .partial_cmp(&(done[b].aborted, done[b].metric))
                .expect("metrics are not NaN")
        })
        .expect("at least one trial ran");
    if !done[best].metric.is_finite() {
        return Err(Error::Invalid(format!(
            "{}: every one of {} trials measured an infinite {} (the merge overflows across the search ranges): nothing written; narrow the ranges",
            recipe.origin,
            done.len(),
            opts.metric.name()
        )));
    }
    let mut calibration = Calibration {
        calibrated: String::new(),
        recipe,
        metric: opts.metric,
        search,
        budget,
        trials: done,
        best,
        text_name,
        n_ctx: opts.n_ctx,
        n_chunks,
        reference: reference_path,
        written: Vec::new(),
        seconds: 0.0,
    };
    calibration.calibrated = header(&calibration)
        + &calibration
            .recipe
            .with_values(&calibration.best_trial().values);

    // The outputs: the recipe and table together, then the models merged from that recipe.
    crate::output_files::write_whole(&opts.output, calibration.calibrated.as_bytes())?;
    if let Some(t) = &opts.table {
        crate::output_files::write_whole(t, calibration.table_tsv().as_bytes())?;
    }
    if !file_types.is_empty() {
        calibration.written = write_models(&calibration, &recipe_dir, &file_types, opts)?;
    }
    calibration.seconds = started.elapsed().as_secs_f64();
    Ok(calibration)
}

/// Golden-section stops when the bracket is this narrow (of the range): about the precision
/// values are written with.
const GOLDEN_TOLERANCE: f64 = 1e-4;
/// Nelder–Mead stops when every vertex is this close to the best (in the unit cube).
const SIMPLEX_TOLERANCE: f64 = 1e-3;

/// `<output folder>/<output stem>-<TYPE>.gguf`.
fn model_path(output: &Path, type_name: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "calibrated".into());
    output.with_file_name(format!("{stem}-{type_name}.gguf"))
}

/// Comment lines that say where the values came from (the rest of the file is the input's).
fn header(c: &Calibration) -> String {
    let best = c.best_trial();
    let figure = match c.metric {
        Metric::Perplexity => format!("perplexity {:.4}", best.perplexity),
        Metric::Kld => format!(
            "KL divergence {:.6} (perplexity {:.4})",
            best.kld.unwrap_or(f64::NAN),
            best.perplexity
        ),
    };
    let mut out = format!(
        "# Calibrated by smelt calibrate from {}: {figure}, trial {} of {} ({} search), on {} ({} chunks of {} tokens).\n",
        c.recipe.origin,
        c.best + 1,
        c.trials.len(),
        c.search,
        c.text_name,
        c.n_chunks,
        c.n_ctx
    );
    for (r, v) in c.recipe.ranges.iter().zip(&best.values) {
        out.push_str(&format!(
            "# line {}: {} searched in [{}, {}] -> {}\n",
            r.line,
            r.parameter,
            SearchRange::format(r.low),
            SearchRange::format(r.high),
            SearchRange::format(*v)
        ));
    }
    out
}

/// The KL divergence's reference: `--ref`, else the recipe's `base_model`, else its one input.
fn reference_of(
    recipe: &SearchRecipe,
    values: &[f64],
    plan: &crate::merge::MergePlan,
    opts: &CalibrateOptions,
) -> Result<PathBuf> {
    if let Some(r) = &opts.reference {
        return Ok(r.clone());
    }
    // The plan was made from this text: it parses.
    let docs = crate::recipe::parse(&recipe.with_values(values), &recipe.origin)?;
    if let Some(b) = &docs[0].base_model {
        if let Some(i) = plan.inputs.iter().find(|i| i.reference == b.value) {
            return Ok(i.path.clone());
        }
    }
    match plan.inputs.as_slice() {
        [one] => Ok(one.path.clone()),
        _ => Err(Error::Invalid(format!(
            "{}: --metric kld needs a reference: the recipe has no base_model and {} inputs (pass --ref MODEL)",
            recipe.origin,
            plan.inputs.len()
        ))),
    }
}

/// A temporary folder, removed (and no longer the signal handler's to remove) when dropped.
struct ScratchDir(Option<tempfile::TempDir>);

impl ScratchDir {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("held until dropped").path()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let path = dir.path().to_path_buf();
            let _ = dir.close();
            crate::output_files::forget(&path);
        }
    }
}

/// The reference files of the first chunk and of the rest (a trial measures them apart, to
/// stop after the first).
struct ReferenceFiles {
    first: PathBuf,
    rest: Option<PathBuf>,
}

/// Run the reference once on the text and save its log-probabilities in `dir`.
fn save_reference(
    reference: &Path,
    tokens: &[u32],
    text: &str,
    opts: &CalibrateOptions,
    n_chunks: usize,
    dir: &Path,
) -> Result<ReferenceFiles> {
    let model = crate::eval::open(reference)?;
    if crate::eval::tokenize(model.as_ref(), text)? != tokens {
        return Err(Error::Invalid(format!(
            "{}: the reference tokenizes the text differently from the recipe's merge: KL divergence needs the same tokens",
            reference.display()
        )));
    }
    let progress = Progress::new(
        opts.display,
        "reference",
        (n_chunks * opts.n_ctx) as u64 * model.n_layer(),
        Unit::TokenLayers(model.n_layer()),
    );
    let save = |name: &str, from: usize, chunks: usize| -> Result<PathBuf> {
        let path = dir.join(name);
        let mut writer = LogitsWriter::create(&path)?;
        let eval_opts = EvalOptions {
            n_ctx: opts.n_ctx,
            max_chunks: Some(chunks),
            batch: None,
        };
        crate::eval::evaluate(
            model.as_ref(),
            None,
            Some(&mut writer),
            &tokens[from..],
            &eval_opts,
            &progress,
        )?;
        writer.finish()?;
        Ok(path)
    };
    let first = save("first.logits", 0, 1)?;
    let rest = (n_chunks > 1)
        .then(|| save("rest.logits", opts.n_ctx, n_chunks - 1))
        .transpose()?;
    progress.finish();
    Ok(ReferenceFiles { first, rest })
}

/// The objective the search minimises: one merge and evaluation per new point.
struct Trials<'a> {
    recipe: &'a SearchRecipe,
    recipe_dir: &'a Path,
    tokens: &'a [u32],
    n_ctx: usize,
    n_chunks: usize,
    metric: Metric,
    abort_factor: f64,
    reference: Option<&'a ReferenceFiles>,
    budget: usize,
    /// Points asked for, trials or not (a point already measured costs no trial).
    calls: usize,
    done: Vec<Trial>,
    progress: &'a Progress,
}

impl Trials<'_> {
    /// The merge of the recipe with `values`, ready to evaluate.
    fn weights(
        recipe: &SearchRecipe,
        recipe_dir: &Path,
        values: &[f64],
    ) -> Result<crate::eval::MergedWeights> {
        let text = recipe.with_values(values);
        let docs = crate::recipe::parse(&text, &recipe.origin)?;
        let opts = crate::merge::PlanOptions {
            dry_run: true,
            ..Default::default()
        };
        let plan = crate::merge::MergePlan::with_options(
            &docs[0],
            &text,
            &recipe.origin,
            recipe_dir,
            &[],
            &opts,
        )?;
        Ok(crate::eval::MergedWeights::new(plan))
    }

    /// The metric at the point `u` of the unit cube; `None` once the budget is spent.
    fn run(&mut self, u: &[f64]) -> Result<Option<f64>> {
        self.calls += 1;
        let values: Vec<f64> = self
            .recipe
            .ranges
            .iter()
            .zip(u)
            .map(|(r, &u)| r.at(u))
            .collect();
        if let Some(t) = self.done.iter().find(|t| t.values == values) {
            // Rounding to the written precision can bring the search back to a point; a
            // search stuck there ends.
            return Ok((self.calls <= 10 * self.budget).then_some(t.metric));
        }
        if self.done.len() >= self.budget {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let weights = Self::weights(self.recipe, self.recipe_dir, &values)?;
        let first_best = self
            .done
            .iter()
            .map(|t| t.first_chunk_perplexity)
            .fold(f64::INFINITY, f64::min);
        let first = self.evaluate(&weights, 0, 1)?;
        let first_ppl = first.perplexity;
        if first_ppl.is_nan() || first.kld.as_ref().is_some_and(|k| k.kld.value.is_nan()) {
            return Err(self.not_a_number(&values));
        }
        let within_bound = first_ppl <= first_best * self.abort_factor;
        let aborted = self.n_chunks > 1 && !within_bound;
        let report = if aborted || self.n_chunks == 1 {
            first
        } else {
            let rest = self.evaluate(&weights, self.n_ctx, self.n_chunks - 1)?;
            combine(&first, &rest)
        };
        let kld = report.kld.as_ref().map(|k| k.kld.value);
        let metric = match self.metric {
            Metric::Perplexity => report.perplexity,
            Metric::Kld => kld.unwrap_or(f64::NAN),
        };
        if metric.is_nan() {
            return Err(self.not_a_number(&values));
        }
        self.done.push(Trial {
            values,
            perplexity: report.perplexity,
            kld,
            metric,
            aborted,
            first_chunk_perplexity: first_ppl,
            chunks: report.n_chunks,
            seconds: started.elapsed().as_secs_f64(),
        });
        let best = self
            .done
            .iter()
            .map(|t| t.metric)
            .fold(f64::INFINITY, f64::min);
        self.progress
            .set_message(&format!("best {} {best:.4}", self.metric.name()));
        self.progress.inc(1);
        Ok(Some(metric))
    }

    /// `chunks` chunks of the text from token `from`, against the matching reference file.
    fn evaluate(&self, weights: &dyn Weights, from: usize, chunks: usize) -> Result<EvalReport> {
        let file = match self.reference {
            Some(r) if from == 0 => Some(&r.first),
            Some(r) => r.rest.as_ref(),
            None => None,
        };
        let mut saved = file.map(|p| LogitsReader::open(p)).transpose()?;
        let opts = EvalOptions {
            n_ctx: self.n_ctx,
            max_chunks: Some(chunks),
            batch: None,
        };
        let quiet = Progress::new(Display::Hidden, "", 0, Unit::Steps);
        crate::eval::evaluate(
            weights,
            saved.as_mut().map(Reference::Saved),
            None,
            &self.tokens[from..],
            &opts,
            &quiet,
        )
    }

    fn not_a_number(&self, values: &[f64]) -> Error {
        let at: Vec<String> = self
            .recipe
            .ranges
            .iter()
            .zip(values)
            .map(|(r, v)| {
                format!(
                    "{}: {} = {}",
                    r.location(&self.recipe.origin),
                    r.parameter,
                    SearchRange::format(*v)
                )
            })
            .collect();
        Error::Invalid(format!(
            "trial {}: the merge gives a NaN {} ({}): its activations overflow; narrow the search ranges. Nothing written",
            self.done.len() + 1,
            self.metric.name(),
            at.join(", ")
        ))
    }
}

/// One report of the first chunk and the rest, weighted by the tokens each scored.
fn combine(first: &EvalReport, rest: &EvalReport) -> EvalReport {
    let (a, b) = (first.n_scored as f64, rest.n_scored as f64);
    let log_ppl = (a * first.perplexity.ln() + b * rest.perplexity.ln()) / (a + b);
    let mut out = rest.clone();
    out.n_chunks += first.n_chunks;
    out.n_scored += first.n_scored;
    out.perplexity = log_ppl.exp();
    out.per_chunk = first
        .per_chunk
        .iter()
        .chain(&rest.per_chunk)
        .copied()
        .collect();
    if let (Some(f), Some(r)) = (&first.kld, out.kld.as_mut()) {
        let (fa, rb) = (f.scored as f64, r.scored as f64);
        r.kld.value = (fa * f.kld.value + rb * r.kld.value) / (fa + rb);
        r.scored += f.scored;
    }
    out
}

/// The calibrated recipe merged and written in each type, as `smelt merge` writes it.
fn write_models(
    c: &Calibration,
    recipe_dir: &Path,
    file_types: &[crate::quant::mix::FileType],
    opts: &CalibrateOptions,
) -> Result<Vec<crate::write::OutputReport>> {
    let docs = crate::recipe::parse(&c.calibrated, &opts.output.display().to_string())?;
    let plan_opts = crate::merge::PlanOptions {
        progress: Some(opts.display),
        ..Default::default()
    };
    let plan = crate::merge::MergePlan::with_options(
        &docs[0],
        &c.calibrated,
        &opts.output.display().to_string(),
        recipe_dir,
        &[],
        &plan_opts,
    )?;
    let qplan = crate::quantize::plan(&plan, file_types, &Default::default(), |ft| {
        model_path(&opts.output, ft.name())
    })?;
    crate::write::write_matrix(&plan, &qplan.order, &qplan.outputs, opts.display)
}
