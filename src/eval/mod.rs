//! `smelt eval`: run a model on a text and measure it as llama.cpp's `llama-perplexity` does:
//! perplexity over chunks of `n_ctx` tokens (the first half of each chunk is context, only the
//! second half is scored), and, against a reference model, the KL divergence of the token
//! distributions and how often both pick the same top token.
//!
//! The forward pass (`model.rs`, with each architecture's quirks in `quirks.rs`) runs on candle's CPU tensors, layer by layer over every
//! chunk: each layer's weights are dequantized once, with smelt's own bit-exact dequantizers,
//! and dropped before the next layer, so memory holds one layer, the chunks' hidden states and
//! one chunk's logits, never the whole model as f32.
//!
//! The KL-divergence statistics (`kld.rs`) compare against the reference's log-probabilities
//! in llama-perplexity's `--kl-divergence-base` format (`logits_file.rs`), made from a reference
//! model's logits or read, chunk by chunk, from a file saved earlier.

mod kld;
pub mod logits_file;
pub(crate) mod model;
mod ops;
mod quirks;
pub mod ranking;
mod weights;

pub use kld::{Estimate, KldReport, Quantiles};
pub use logits_file::{LogitsReader, LogitsWriter};
pub use model::{ActivationStats, ImatrixEntry};
pub use ranking::{layer_distances, LayerDistances};
pub use weights::{open, MergedWeights, WeightInfo, Weights};

use crate::error::{Error, Result};

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Tokens per chunk (llama-perplexity's `-c`, default 512).
    pub n_ctx: usize,
    /// At most this many chunks (llama-perplexity's `--chunks`); `None`: every whole chunk.
    pub max_chunks: Option<usize>,
    /// Tokens evaluated together (whole chunks): each group of chunks goes through every layer
    /// before the next group, so memory holds one group's hidden states and each layer's
    /// weights are dequantized once per group. `None`: as many as fit in [`GROUP_BYTES`].
    pub batch: Option<usize>,
}

/// The hidden states held at once by default (all groups' activations beside one layer).
pub const GROUP_BYTES: usize = 1 << 30;

/// How many chunks `tokens` tokens give under `opts` (before any error `evaluate` reports).
pub fn n_chunks(n_tokens: usize, opts: &EvalOptions) -> usize {
    let available = n_tokens / opts.n_ctx.max(1);
    opts.max_chunks.map_or(available, |m| m.min(available))
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            n_ctx: 512,
            max_chunks: None,
            batch: None,
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
    /// Against a reference: llama-perplexity's KL-divergence statistics.
    pub kld: Option<KldReport>,
    /// Each chunk's sums of the scored tokens' negative log-likelihood and its square, and
    /// their count: what [`combine_chunks`] needs to join the runs of consecutive chunk ranges.
    pub chunk_sums: Vec<ChunkSums>,
}

/// One chunk's negative log-likelihood sums.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChunkSums {
    pub nll: f64,
    pub nll2: f64,
    pub count: usize,
}

/// llama-perplexity's final estimate and its `±` from the sums over `count` tokens.
fn perplexity_and_error(nll: f64, nll2: f64, count: usize) -> (f64, f64) {
    let mean = nll / count as f64;
    let mean2 = nll2 / count as f64;
    let ppl = mean.exp();
    // llama-perplexity's error estimate: sqrt(var / (n - 1)) of the NLL, scaled by the ppl.
    let err = if count > 1 {
        ((mean2 - mean * mean).max(0.0) / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    (ppl, err)
}

/// The perplexity of consecutive chunk ranges evaluated apart (`eval --chunks A..B`), as one
/// run over all of them: the chunks' sums in order, the running estimate after each chunk.
/// (Sums of whole chunks rather than of every token in turn: the figures agree with one run's
/// to the last printed digit, not always in the last bit.)
pub fn combine_chunks(chunks: &[ChunkSums], n_ctx: usize) -> EvalReport {
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut per_chunk = Vec::with_capacity(chunks.len());
    for c in chunks {
        nll += c.nll;
        nll2 += c.nll2;
        count += c.count;
        per_chunk.push((nll / count.max(1) as f64).exp());
    }
    let (perplexity, perplexity_error) = perplexity_and_error(nll, nll2, count);
    EvalReport {
        n_chunks: chunks.len(),
        n_ctx,
        n_scored: count,
        perplexity,
        perplexity_error,
        per_chunk,
        kld: None,
        chunk_sums: chunks.to_vec(),
    }
}

/// What the model is compared with.
pub enum Reference<'a> {
    /// Another model (e.g. the F16 original) run on the same chunks.
    Model(&'a dyn Weights),
    /// A reference's log-probabilities saved earlier (`--save-logits`, or llama-perplexity's
    /// `--kl-divergence-base`).
    Saved(&'a mut LogitsReader),
}

/// The token ids of `text` as llama.cpp tokenizes it for llama-perplexity (BOS first when
/// the vocabulary asks for one), from the model's own `tokenizer.*` metadata.
pub fn tokenize(model: &dyn Weights, text: &str) -> Result<Vec<u32>> {
    crate::tokenizer::encode::tokenize(model.metadata(), text, true)
}

/// The chunks llama-perplexity evaluates: `n_ctx` tokens each, the first replaced by BOS when
/// the vocabulary adds one.
fn chunks(store: &dyn Weights, tokens: &[u32], opts: &EvalOptions) -> Result<Vec<Vec<u32>>> {
    if opts.n_ctx < 4 {
        return Err(Error::Invalid(format!(
            "--ctx {} is too small (at least 4 tokens)",
            opts.n_ctx
        )));
    }
    let md = store.metadata();
    let trained = md
        .architecture()
        .and_then(|a| md.get_u64(&format!("{a}.context_length")))
        .unwrap_or(0) as usize;
    if trained > 0 && opts.n_ctx > trained {
        // llama.cpp only warns; positions past the trained context measure RoPE
        // extrapolation, not the model, and quietly give a meaningless perplexity.
        return Err(Error::Invalid(format!(
            "--ctx {} is longer than the model's context ({trained} tokens)",
            opts.n_ctx
        )));
    }
    let n = n_chunks(tokens.len(), opts);
    if n == 0 {
        return Err(Error::Invalid(format!(
            "the text has {} tokens: at least {} are needed for one chunk of --ctx {}",
            tokens.len(),
            opts.n_ctx,
            opts.n_ctx
        )));
    }
    let bos = crate::tokenizer::encode::bos_to_add(store.metadata())?;
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

/// Chunks per group: `--batch` tokens, else as many as keep `width` floats per token (the
/// hidden states of every model run) within [`GROUP_BYTES`].
fn group_size(opts: &EvalOptions, width: usize) -> usize {
    let n = match opts.batch {
        Some(tokens) => tokens / opts.n_ctx,
        None => GROUP_BYTES / (opts.n_ctx * width.max(1) * 4),
    };
    n.max(1)
}

/// `log p(token)` from one row of logits, in f64 as llama-perplexity's `log_softmax`.
fn log_prob(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (logits[token] - max) as f64 - sum.ln()
}

/// Perplexity (and, with `reference`, KL divergence) of `store` on `tokens`; with
/// `save_logits`, the reference's log-probabilities (the model's own without a reference) are
/// written there chunk by chunk.
pub fn evaluate(
    store: &dyn Weights,
    reference: Option<Reference<'_>>,
    save_logits: Option<&mut LogitsWriter>,
    tokens: &[u32],
    opts: &EvalOptions,
    progress: &crate::progress::Progress,
) -> Result<EvalReport> {
    let model = model::Model::new(store)?;
    let (reference, saved) = match reference {
        Some(Reference::Model(r)) => (Some(r), None),
        Some(Reference::Saved(f)) => (None, Some(f)),
        None => (None, None),
    };
    let reference_model = reference.map(model::Model::new).transpose()?;
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
    let mut baseline = kld::Baseline::new(
        saved,
        save_logits,
        reference_model.is_some(),
        tokens,
        opts.n_ctx,
        chunks.len(),
        model.n_vocab(),
    )?;
    let first = opts.n_ctx / 2;
    let passes = 1 + usize::from(reference_model.is_some());
    let group = group_size(opts, model.n_embd() * passes);
    let mut nll = 0.0f64;
    let mut nll2 = 0.0f64;
    let mut count = 0usize;
    let mut per_chunk = Vec::with_capacity(chunks.len());
    let mut chunk_sums = Vec::with_capacity(chunks.len());
    for group in chunks.chunks(group) {
        let hidden = model.final_hidden(group, progress, None)?;
        let ref_hidden = match &reference_model {
            Some(r) => Some(r.final_hidden(group, progress, None)?),
            None => None,
        };
        // The output matrices, dequantized once per group.
        let head = model.output_head()?;
        let ref_head = reference_model
            .as_ref()
            .map(|r| r.output_head())
            .transpose()?;
        for (c, chunk) in group.iter().enumerate() {
            // Positions first..n_ctx-1 predict tokens first+1..n_ctx.
            let logits = model.logits(&head, &hidden[c], first, opts.n_ctx - 1)?;
            let ref_logits = match (&reference_model, &ref_hidden, &ref_head) {
                (Some(r), Some(h), Some(head)) => {
                    Some(r.logits(head, &h[c], first, opts.n_ctx - 1)?)
                }
                _ => None,
            };
            // The reference's rows of this chunk (without a reference, the model's own, to save).
            baseline.next_chunk(ref_logits.as_deref().unwrap_or(&logits))?;
            let n_vocab = model.n_vocab();
            let mut sums = ChunkSums {
                nll: 0.0,
                nll2: 0.0,
                count: 0,
            };
            for (j, row) in logits.chunks_exact(n_vocab).enumerate() {
                let target = chunk[first + j + 1] as usize;
                let lp = log_prob(row, target);
                nll -= lp;
                nll2 += lp * lp;
                count += 1;
                sums.nll -= lp;
                sums.nll2 += lp * lp;
                sums.count += 1;
                baseline.score(j, row, target);
            }
            chunk_sums.push(sums);
            per_chunk.push((nll / count as f64).exp());
        }
    }
    let (ppl, err) = perplexity_and_error(nll, nll2, count);
    Ok(EvalReport {
        n_chunks: chunks.len(),
        n_ctx: opts.n_ctx,
        n_scored: count,
        perplexity: ppl,
        perplexity_error: err,
        per_chunk,
        kld: baseline.finish(),
        chunk_sums,
    })
}

/// llama-imatrix's importance matrix of `store` on `tokens`: every chunk through every layer,
/// the squares of each weight matrix's inputs summed over all tokens.
pub fn collect_imatrix(
    store: &dyn Weights,
    tokens: &[u32],
    opts: &EvalOptions,
    progress: &crate::progress::Progress,
) -> Result<(ActivationStats, usize)> {
    let model = model::Model::new(store)?;
    let chunks = chunks(store, tokens, opts)?;
    let stats = ActivationStats::default();
    for group in chunks.chunks(group_size(opts, model.n_embd())) {
        model.final_hidden(group, progress, Some(&stats))?;
    }
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
    write_imatrix_entries(
        path,
        &stats.into_entries(),
        &[dataset.to_string()],
        n_chunks,
        n_ctx,
    )
}

/// [`write_imatrix_gguf`] of sums already collected (or combined), with every dataset they
/// come from.
pub fn write_imatrix_entries(
    path: &std::path::Path,
    entries: &std::collections::BTreeMap<String, ImatrixEntry>,
    datasets: &[String],
    n_chunks: usize,
    n_ctx: usize,
) -> Result<()> {
    use crate::gguf::writer::TensorDecl;
    use crate::gguf::{GgmlType, GgufWriter, Metadata, Value};
    let mut md = Metadata::new();
    md.set("general.type", Value::String("imatrix".into()));
    md.set("imatrix.datasets", Value::strings(datasets.iter().cloned()));
    md.set("imatrix.chunk_count", Value::U32(n_chunks as u32));
    md.set("imatrix.chunk_size", Value::U32(n_ctx as u32));
    // llama-imatrix's tensors are [n, n_mat] and [1, n_mat], written with ggml_n_dims, which
    // drops trailing 1s: a dense weight's are 1-D, an expert stack's 2-D.
    let dims = |inner: u64, n_mat: u64| {
        if n_mat == 1 {
            vec![inner]
        } else {
            vec![inner, n_mat]
        }
    };
    let mut decls = Vec::new();
    for (name, e) in entries {
        let n_mat = e.counts.len() as u64;
        decls.push(TensorDecl {
            name: format!("{name}.in_sum2"),
            shape: dims(e.sums.len() as u64 / n_mat, n_mat),
            ty: GgmlType::F32,
        });
        decls.push(TensorDecl {
            name: format!("{name}.counts"),
            shape: dims(1, n_mat),
            ty: GgmlType::F32,
        });
    }
    let mut w = GgufWriter::create(path, &md, &decls)?;
    for e in entries.values() {
        let bytes: Vec<u8> = e.sums.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_data(&bytes)?;
        let counts: Vec<u8> = e
            .counts
            .iter()
            .flat_map(|&c| (c as f32).to_le_bytes())
            .collect();
        w.write_data(&counts)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_of_known_row() {
        let row = [0.0f32, (2.0f32).ln(), (3.0f32).ln(), (4.0f32).ln()];
        assert!((log_prob(&row, 3) - (0.4f64).ln()).abs() < 1e-6);
        assert!((log_prob(&row, 0) - (0.1f64).ln()).abs() < 1e-6);
    }
}
