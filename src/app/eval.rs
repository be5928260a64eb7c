//! `smelt eval`: perplexity of a model (or a merge recipe, merged in memory) on a text, and
//! with a reference model or its saved log-probabilities, llama-perplexity's KL-divergence
//! statistics; `eval --combine` joins the runs of consecutive chunk ranges.

use crate::app::imatrix::ChunkRange;
use crate::error::{Error, Result};
use crate::eval::{EvalOptions, EvalReport, LogitsReader, LogitsWriter, Reference};
use crate::progress::{Display, Progress, Unit};
use std::path::{Path, PathBuf};

/// What to evaluate, as `smelt eval`'s options say.
pub struct EvalRequest<'a> {
    pub model: &'a Path,
    /// A reference model (KL divergence against it).
    pub reference: Option<&'a Path>,
    /// A reference's saved log-probabilities (instead of `reference`).
    pub ref_logits: Option<&'a Path>,
    /// Save this model's log-probabilities here (it is then a reference for later runs).
    pub save_logits: Option<&'a Path>,
    /// `None`: the built-in calibration text.
    pub text: Option<&'a Path>,
    pub n_ctx: usize,
    pub chunks: Option<ChunkRange>,
    pub batch: Option<usize>,
    pub display: Display,
}

/// What an evaluation measured.
pub struct EvalRun {
    pub report: EvalReport,
    pub text_name: String,
    pub n_tokens: usize,
    /// The first chunk of a `--chunks A..B` range (0 otherwise).
    pub first_chunk: usize,
    /// The saved log-probabilities' file and size.
    pub saved_logits: Option<(PathBuf, u64)>,
    pub elapsed: std::time::Duration,
}

pub fn evaluate(req: &EvalRequest<'_>) -> Result<EvalRun> {
    use crate::eval::tokenize;
    let range = match req.chunks {
        Some(ChunkRange::Range(a, b)) => {
            if req.ref_logits.is_some() || req.save_logits.is_some() {
                return Err(Error::Invalid(
                    "--chunks A..B does not go with --ref-logits or --save-logits (their files hold every chunk from 0)".into(),
                ));
            }
            Some((a, b))
        }
        _ => None,
    };
    let store = crate::eval::open(req.model)?;
    let reference = req.reference.map(crate::eval::open).transpose()?;
    // Opened first: a file that is not one, truncated or garbled is refused before any work.
    let mut saved = req.ref_logits.map(LogitsReader::open).transpose()?;
    if let Some(out) = req.save_logits {
        let mut inputs = store.input_files();
        inputs.extend(req.text.map(Path::to_path_buf));
        if let Some(r) = &reference {
            inputs.extend(r.input_files());
        }
        let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        crate::output_files::check_outputs(&inputs, &[out])?;
    }
    let (text, text_name) = crate::app::text::eval_text(req.text)?;
    let all_tokens = tokenize(store.as_ref(), &text)?;
    let (tokens, max_chunks) = match req.chunks {
        Some(c) => c.slice(&all_tokens, req.n_ctx)?,
        None => (&all_tokens[..], None),
    };
    let tokens = tokens.to_vec();
    if let (Some(r), Some(path)) = (&reference, req.reference) {
        if tokenize(r.as_ref(), &text)? != tokens {
            return Err(Error::Invalid(format!(
                "{}: the reference tokenizes the text differently from the model: KL divergence needs the same tokens",
                path.display()
            )));
        }
    }
    let opts = EvalOptions {
        n_ctx: req.n_ctx,
        // Against a saved file, as many chunks as it holds unless told otherwise.
        max_chunks: max_chunks.or(saved.as_ref().map(|s| s.header.n_chunk)),
        batch: req.batch,
    };
    let n_layer = store.n_layer();
    let passes = 1 + u64::from(reference.is_some());
    let n_tokens = (crate::eval::n_chunks(tokens.len(), &opts) * opts.n_ctx) as u64;
    let progress = Progress::new(
        req.display,
        "evaluating",
        n_tokens * n_layer * passes,
        Unit::TokenLayers(n_layer),
    );
    let started = std::time::Instant::now();
    let mut writer = req.save_logits.map(LogitsWriter::create).transpose()?;
    let against = match (&reference, saved.as_mut()) {
        (Some(r), _) => Some(Reference::Model(r.as_ref())),
        (None, Some(f)) => Some(Reference::Saved(f)),
        (None, None) => None,
    };
    let report = crate::eval::evaluate(
        store.as_ref(),
        against,
        writer.as_mut(),
        &tokens,
        &opts,
        &progress,
    )?;
    progress.finish();
    let saved_logits = match writer {
        Some(w) => {
            let path = w.target().to_path_buf();
            let bytes = w.finish()?;
            Some((path, bytes))
        }
        None => None,
    };
    Ok(EvalRun {
        report,
        text_name,
        n_tokens: tokens.len(),
        first_chunk: range.map_or(0, |(a, _)| a),
        saved_logits,
        elapsed: started.elapsed(),
    })
}

impl EvalRun {
    /// `eval --json` (the input of `eval --combine`).
    pub fn to_json(&self, model: &Path, reference: Option<&Path>) -> serde_json::Value {
        let report = &self.report;
        serde_json::json!({
            "model": model, "text": self.text_name, "tokens": self.n_tokens,
            "n_ctx": report.n_ctx, "chunks": report.n_chunks, "scored": report.n_scored,
            "perplexity": report.perplexity, "perplexity_error": report.perplexity_error,
            "per_chunk": report.per_chunk, "reference": reference,
            "kld": report.kld.as_ref().map(|k| k.to_json()),
            "saved_logits": self.saved_logits.as_ref().map(|(p, _)| p),
            "first_chunk": self.first_chunk,
            "chunk_sums": report.chunk_sums,
        })
    }

    /// As llama-perplexity prints it: the per-chunk line, the final estimate, and against a
    /// reference its KL-divergence table.
    pub fn to_text(&self, reference: Option<&Path>) -> String {
        use std::fmt::Write as _;
        let report = &self.report;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} tokens, {} chunks of {}, {} scored",
            self.n_tokens, report.n_chunks, report.n_ctx, report.n_scored
        );
        let _ = writeln!(out, "{}", per_chunk_line(&report.per_chunk, 0));
        let _ = writeln!(
            out,
            "Final estimate: PPL = {:.4} +/- {:.5}",
            report.perplexity, report.perplexity_error
        );
        if let (Some(k), Some(name)) = (&report.kld, reference) {
            let _ = writeln!(
                out,
                "\nagainst {} ({} tokens scored)\n",
                crate::error::printable(&name.display().to_string()),
                k.scored
            );
            out.push_str(&k.table());
        }
        out
    }
}

/// llama-perplexity's `[1]23.4567,[2]...` line, numbered from `first + 1`.
fn per_chunk_line(per_chunk: &[f64], first: usize) -> String {
    per_chunk
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[{}]{p:.4}", first + i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// `eval --combine`: the perplexity of consecutive chunk ranges evaluated apart.
pub struct Combined {
    pub report: EvalReport,
    pub text: String,
    pub first_chunk: usize,
}

/// Join `eval --chunks A..B --json` outputs: one text and context, ranges that follow each
/// other without gap or overlap (in any order on the command line).
pub fn combine(paths: &[PathBuf]) -> Result<Combined> {
    #[derive(serde::Deserialize)]
    struct Part {
        n_ctx: usize,
        text: String,
        first_chunk: usize,
        chunk_sums: Vec<crate::eval::ChunkSums>,
    }
    let mut parts = Vec::new();
    for p in paths {
        let part: Part = serde_json::from_slice(&crate::input::read(p)?).map_err(|e| {
            Error::format(
                p,
                format!("not the JSON of `smelt eval --chunks A..B --json` ({e})"),
            )
        })?;
        parts.push((p, part));
    }
    parts.sort_by_key(|(_, part)| part.first_chunk);
    let (first_path, first) = &parts[0];
    let mut next = first.first_chunk;
    let mut sums = Vec::new();
    for (p, part) in &parts {
        if part.n_ctx != first.n_ctx || part.text != first.text {
            return Err(Error::format(
                p,
                format!(
                    "evaluated on {} with --ctx {}, {} on {} with --ctx {}: only runs of one text and context combine",
                    part.text,
                    part.n_ctx,
                    first_path.display(),
                    first.text,
                    first.n_ctx
                ),
            ));
        }
        if part.first_chunk != next {
            return Err(Error::format(
                p,
                format!(
                    "starts at chunk {}, but the files before it end at chunk {next}: {}",
                    part.first_chunk,
                    if part.first_chunk < next {
                        "ranges overlap"
                    } else {
                        "chunks are missing"
                    }
                ),
            ));
        }
        next += part.chunk_sums.len();
        sums.extend_from_slice(&part.chunk_sums);
    }
    Ok(Combined {
        report: crate::eval::combine_chunks(&sums, first.n_ctx),
        text: first.text.clone(),
        first_chunk: first.first_chunk,
    })
}

impl Combined {
    pub fn to_json(&self) -> serde_json::Value {
        let report = &self.report;
        serde_json::json!({
            "text": self.text, "n_ctx": report.n_ctx, "chunks": report.n_chunks,
            "scored": report.n_scored, "perplexity": report.perplexity,
            "perplexity_error": report.perplexity_error, "per_chunk": report.per_chunk,
            "first_chunk": self.first_chunk, "chunk_sums": report.chunk_sums,
        })
    }

    pub fn to_text(&self) -> String {
        let report = &self.report;
        format!(
            "{} chunks of {} combined, {} scored\n{}\nFinal estimate: PPL = {:.4} +/- {:.5}\n",
            report.n_chunks,
            report.n_ctx,
            report.n_scored,
            per_chunk_line(&report.per_chunk, self.first_chunk),
            report.perplexity,
            report.perplexity_error
        )
    }
}
