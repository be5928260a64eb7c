//! `smelt eval`: run a model on a text and measure it as llama.cpp's `llama-perplexity` does:
//! perplexity over chunks of `n_ctx` tokens (the first half of each chunk is context, only the
//! second half is scored), and, against a reference model, the KL divergence of the token
//! distributions and how often both pick the same top token.
//!
//! The forward pass (`llama.rs`) runs on candle's CPU tensors, layer by layer over every
//! chunk: each layer's weights are dequantized once, with smelt's own bit-exact dequantizers,
//! and dropped before the next layer, so memory holds one layer, the chunks' hidden states and
//! one chunk's logits, never the whole model as f32.

mod llama;

pub use llama::ActivationStats;

use crate::error::{Error, Result};
use crate::store::Store;

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Tokens per chunk (llama-perplexity's `-c`, default 512).
    pub n_ctx: usize,
    /// At most this many chunks (llama-perplexity's `--chunks`); `None`: every whole chunk.
    pub max_chunks: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            n_ctx: 512,
            max_chunks: None,
        }
    }
}

/// What an evaluation measured.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    pub n_chunks: usize,
    pub n_ctx: usize,
    /// Tokens scored (the second half of each chunk, less one).
    pub n_scored: usize,
    /// exp(mean negative log-likelihood), as llama-perplexity's final estimate.
    pub perplexity: f64,
    /// llama-perplexity's `±` (its standard-error estimate of the perplexity).
    pub perplexity_error: f64,
    /// Perplexity after each chunk (llama-perplexity's `[1]23.4,[2]...` line).
    pub per_chunk: Vec<f64>,
    /// Against a reference model: mean and 99th percentile KL divergence, same top token %.
    pub kld: Option<KldReport>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KldReport {
    pub reference_perplexity: f64,
    pub mean: f64,
    pub p99: f64,
    pub max: f64,
    pub same_top_percent: f64,
}

/// The token ids of `text` as llama.cpp tokenizes it for llama-perplexity (BOS first when
/// the vocabulary asks for one), from the model's own `tokenizer.*` metadata.
pub fn tokenize(store: &Store, text: &str) -> Result<Vec<u32>> {
    crate::tokenizer::encode::tokenize(&store.metadata, text, true)
}

/// Whether chunks start with BOS; an error the vocabulary gives is [`bos`]'s to report.
fn add_bos(store: &Store) -> bool {
    !matches!(
        crate::tokenizer::encode::bos_to_add(&store.metadata),
        Ok(None)
    )
}

fn bos(store: &Store) -> Result<u32> {
    crate::tokenizer::encode::bos_to_add(&store.metadata)?
        .ok_or_else(|| Error::Invalid("the vocabulary adds no BOS".into()))
}

/// The chunks llama-perplexity evaluates: `n_ctx` tokens each, the first replaced by BOS when
/// the vocabulary adds one.
fn chunks(store: &Store, tokens: &[u32], opts: &EvalOptions) -> Result<Vec<Vec<u32>>> {
    if opts.n_ctx < 4 {
        return Err(Error::Invalid(format!(
            "--ctx {} is too small (at least 4 tokens)",
            opts.n_ctx
        )));
    }
    let available = tokens.len() / opts.n_ctx;
    let n = opts.max_chunks.map_or(available, |m| m.min(available));
    if n == 0 {
        return Err(Error::Invalid(format!(
            "the text has {} tokens: at least {} are needed for one chunk of --ctx {}",
            tokens.len(),
            opts.n_ctx,
            opts.n_ctx
        )));
    }
    let bos = if add_bos(store) {
        Some(bos(store)?)
    } else {
        None
    };
    Ok((0..n)
        .map(|c| {
            let mut chunk = tokens[c * opts.n_ctx..(c + 1) * opts.n_ctx].to_vec();
            if let Some(b) = bos {
                chunk[0] = b;
            }
            chunk
        })
        .collect())
}

/// `log p(token)` from one row of logits, in f64 as llama-perplexity's `log_softmax`.
fn log_prob(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (logits[token] - max) as f64 - sum.ln()
}

/// Perplexity (and, with `reference`, KL divergence) of `store` on `tokens`.
pub fn evaluate(
    store: &Store,
    reference: Option<&Store>,
    tokens: &[u32],
    opts: &EvalOptions,
    progress: &crate::progress::Progress,
) -> Result<EvalReport> {
    let model = llama::Model::new(store)?;
    let reference_model = reference.map(llama::Model::new).transpose()?;
    if let Some(r) = &reference_model {
        if r.n_vocab() != model.n_vocab() {
            return Err(Error::Invalid(format!(
                "the reference has {} tokens in its vocabulary, the model {}: KL divergence needs the same vocabulary",
                r.n_vocab(),
                model.n_vocab()
            )));
        }
    }
    let chunks = chunks(store, tokens, opts)?;
    let first = opts.n_ctx / 2;
    let hidden = model.final_hidden(&chunks, progress, None)?;
    let ref_hidden = match &reference_model {
        Some(r) => Some(r.final_hidden(&chunks, progress, None)?),
        None => None,
    };
    let mut nll = 0.0f64;
    let mut nll2 = 0.0f64;
    let mut count = 0usize;
    let mut per_chunk = Vec::with_capacity(chunks.len());
    let mut ref_nll = 0.0f64;
    let mut klds: Vec<f64> = Vec::new();
    let mut same_top = 0usize;
    for (c, chunk) in chunks.iter().enumerate() {
        // Positions first..n_ctx-1 predict tokens first+1..n_ctx.
        let logits = model.logits(&hidden[c], first, opts.n_ctx - 1)?;
        let ref_logits = match (&reference_model, &ref_hidden) {
            (Some(r), Some(h)) => Some(r.logits(&h[c], first, opts.n_ctx - 1)?),
            _ => None,
        };
        let n_vocab = model.n_vocab();
        for (j, row) in logits.chunks_exact(n_vocab).enumerate() {
            let target = chunk[first + j + 1] as usize;
            let lp = log_prob(row, target);
            nll -= lp;
            nll2 += lp * lp;
            count += 1;
            if let Some(rl) = &ref_logits {
                let rrow = &rl[j * n_vocab..(j + 1) * n_vocab];
                ref_nll -= log_prob(rrow, target);
                let (kld, same) = kl_divergence(rrow, row);
                klds.push(kld);
                same_top += usize::from(same);
            }
        }
        per_chunk.push((nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let mean2 = nll2 / count as f64;
    let ppl = mean.exp();
    // llama-perplexity's error estimate: sqrt(var / (n - 1)) of the NLL, scaled by the ppl.
    let err = if count > 1 {
        ((mean2 - mean * mean).max(0.0) / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    let kld = (!klds.is_empty()).then(|| {
        let mut sorted = klds.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted[((sorted.len() - 1) as f64 * 0.99).round() as usize];
        KldReport {
            reference_perplexity: (ref_nll / count as f64).exp(),
            mean: klds.iter().sum::<f64>() / klds.len() as f64,
            p99,
            max: *sorted.last().expect("not empty"),
            same_top_percent: 100.0 * same_top as f64 / klds.len() as f64,
        }
    });
    Ok(EvalReport {
        n_chunks: chunks.len(),
        n_ctx: opts.n_ctx,
        n_scored: count,
        perplexity: ppl,
        perplexity_error: err,
        per_chunk,
        kld,
    })
}

/// KL(reference ‖ model) of the two softmaxed rows, in f64, and whether both rows have the
/// same top token.
fn kl_divergence(reference: &[f32], model: &[f32]) -> (f64, bool) {
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let log_sum = sum.ln();
        row.iter().map(|&v| v as f64 - max - log_sum).collect()
    };
    let (lr, lm) = (log_softmax(reference), log_softmax(model));
    let kld: f64 = lr.iter().zip(&lm).map(|(r, m)| r.exp() * (r - m)).sum();
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0
    };
    (kld.max(0.0), argmax(reference) == argmax(model))
}

/// llama-imatrix's importance matrix of `store` on `tokens`: every chunk through every layer,
/// the squares of each weight matrix's inputs summed over all tokens.
pub fn collect_imatrix(
    store: &Store,
    tokens: &[u32],
    opts: &EvalOptions,
    progress: &crate::progress::Progress,
) -> Result<(ActivationStats, usize)> {
    let model = llama::Model::new(store)?;
    let chunks = chunks(store, tokens, opts)?;
    let stats = ActivationStats::default();
    model.final_hidden(&chunks, progress, Some(&stats))?;
    Ok((stats, chunks.len()))
}

/// The imatrix GGUF llama-imatrix writes: `general.type = imatrix`, the datasets, chunk count
/// and size, then per weight (by name) `NAME.in_sum2` (F32, one row) and `NAME.counts`.
pub fn write_imatrix_gguf(
    path: &std::path::Path,
    stats: ActivationStats,
    dataset: &str,
    n_chunks: usize,
    n_ctx: usize,
) -> Result<()> {
    use crate::gguf::writer::TensorDecl;
    use crate::gguf::{GgmlType, GgufWriter, Metadata, Value};
    let mut md = Metadata::new();
    md.set("general.type", Value::String("imatrix".into()));
    md.set(
        "imatrix.datasets",
        Value::strings(vec![dataset.to_string()]),
    );
    md.set("imatrix.chunk_count", Value::U32(n_chunks as u32));
    md.set("imatrix.chunk_size", Value::U32(n_ctx as u32));
    let sums = stats.into_sums();
    let mut decls = Vec::new();
    for (name, (acc, _)) in &sums {
        decls.push(TensorDecl {
            name: format!("{name}.in_sum2"),
            // ggml_n_dims drops trailing 1s: llama-imatrix's [n, 1] is written 1-D.
            shape: vec![acc.len() as u64],
            ty: GgmlType::F32,
        });
        decls.push(TensorDecl {
            name: format!("{name}.counts"),
            shape: vec![1],
            ty: GgmlType::F32,
        });
    }
    let mut w = GgufWriter::create(path, &md, &decls)?;
    for (acc, count) in sums.values() {
        let bytes: Vec<u8> = acc.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_data(&bytes)?;
        w.write_data(&(*count as f32).to_le_bytes())?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_and_kld_of_known_rows() {
        let row = [0.0f32, (2.0f32).ln(), (3.0f32).ln(), (4.0f32).ln()];
        assert!((log_prob(&row, 3) - (0.4f64).ln()).abs() < 1e-6);
        let (kld, same) = kl_divergence(&row, &row);
        assert!(kld.abs() < 1e-12 && same);
        let uniform = [0.0f32; 4];
        let (kld, same) = kl_divergence(&row, &uniform);
        let want: f64 = [0.1f64, 0.2, 0.3, 0.4]
            .iter()
            .map(|p| p * (p / 0.25).ln())
            .sum();
        assert!((kld - want).abs() < 1e-6, "{kld} vs {want}");
        assert!(!same);
    }
}
