//! `smelt prune-plan` and `smelt prune`: rank the layers by redundancy, then write the recipe
//! that drops the K most redundant (`prune-plan`), or the pruned model itself, healed against
//! the original when asked (`prune --heal`).

use crate::error::{Error, Result};
use crate::gguf::Value;
use crate::progress::{Display, Progress, Unit};
use crate::store::Store;
use crate::write::OutputReport;
use std::path::{Path, PathBuf};

/// How layers are ranked.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rank {
    /// The layers whose matrices are most like the layer below's (any K layers).
    Weights,
    /// The block of K consecutive layers that changes the hidden state least on a text
    /// (angular distance, Gromov et al. 2024).
    Activations,
}

/// What to rank by, and how many layers to drop.
#[derive(Clone, Debug)]
pub struct RankOptions {
    pub count: usize,
    pub by: Rank,
    /// With `Activations`: the text (default: the built-in calibration text), tokens per
    /// chunk (default 512) and chunks (default 16).
    pub text: Option<PathBuf>,
    pub n_ctx: Option<usize>,
    pub chunks: Option<usize>,
}

/// The layers to drop (ascending) and the recipe that drops them, with the ranking's figures
/// in its comments.
pub struct Ranked {
    pub drop: Vec<u32>,
    pub recipe: String,
}

/// Rank `model`'s layers. `outputs` are the files the command will write: refused before any
/// work when one would replace an input.
pub fn rank(
    model: &Path,
    opts: &RankOptions,
    outputs: &[&Path],
    display: Display,
) -> Result<Ranked> {
    use crate::merge::prune;
    if opts.count == 0 {
        return Err(Error::Invalid("--count 0: nothing to drop".into()));
    }
    let model_name = model.to_string_lossy();
    match opts.by {
        Rank::Weights => {
            if opts.text.is_some() || opts.n_ctx.is_some() || opts.chunks.is_some() {
                return Err(Error::Invalid(
                    "--text, --ctx and --chunks go with --rank activations".into(),
                ));
            }
            let store = Store::open(model)?;
            crate::output_files::check_outputs(&store.paths(), outputs)?;
            let n = store.hparam("block_count").unwrap_or(0) as u32;
            let scores = prune::redundancy(&store)?;
            if opts.count > scores.len() {
                return Err(Error::Invalid(format!(
                    "--count {}: only {} layers can be dropped (never the first or last)",
                    opts.count,
                    scores.len()
                )));
            }
            let drop = prune::most_redundant(&scores, opts.count);
            let recipe = prune::recipe(&model_name, n, &drop, &scores);
            Ok(Ranked { drop, recipe })
        }
        Rank::Activations => {
            use crate::eval::{layer_distances, ranking, tokenize, EvalOptions};
            let weights = crate::eval::open(model)?;
            let mut inputs = weights.input_files();
            inputs.extend(opts.text.iter().cloned());
            let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
            crate::output_files::check_outputs(&inputs, outputs)?;
            let (text, text_name) = crate::app::text::eval_text(opts.text.as_deref())?;
            let tokens = tokenize(weights.as_ref(), &text)?;
            let eval_opts = EvalOptions {
                n_ctx: opts.n_ctx.unwrap_or(512),
                max_chunks: Some(opts.chunks.unwrap_or(16)),
                batch: None,
            };
            let n_layer = weights.n_layer();
            let n_tokens =
                (crate::eval::n_chunks(tokens.len(), &eval_opts) * eval_opts.n_ctx) as u64;
            let progress = Progress::new(
                display,
                "ranking",
                n_tokens * n_layer,
                Unit::TokenLayers(n_layer),
            );
            let d = layer_distances(weights.as_ref(), &tokens, &eval_opts, opts.count, &progress)?;
            progress.finish();
            let drop = d.dropped();
            let recipe = ranking::activation_recipe(&model_name, &d, &text_name, &drop);
            Ok(Ranked { drop, recipe })
        }
    }
}

/// `model` without the layers `drop`, every kept tensor byte for byte at its type (layers
/// renumbered as llama-quantize's `--prune-layers` does), the drop recorded as
/// `smelt.prune.layers` and `smelt.prune.rank`.
pub fn write_pruned(
    model: &Store,
    drop: &[u32],
    rank: Rank,
    path: &Path,
    display: Display,
) -> Result<OutputReport> {
    use crate::quantize::{self as q, QuantizeOptions};
    let opts = QuantizeOptions {
        prune_layers: drop.to_vec(),
        ..Default::default()
    };
    // F32 only to have a plan (names, order, metadata); every tensor then keeps its own type,
    // so the writer copies its bytes.
    let f32 = crate::quant::mix::FileType::parse("F32")?;
    let mut plan = q::plan(model, &[f32], &opts, |_| path.to_path_buf())?;
    let out = &mut plan.outputs[0];
    for (&i, t) in plan.order.iter().zip(&mut out.tensors) {
        if let Some(t) = t {
            t.ty = model.tensors[i].ty;
            t.imatrix = None;
        }
    }
    let md = &mut out.metadata;
    match model.metadata.get("general.file_type") {
        Some(v) => md.set_last("general.file_type", v.clone()),
        None => md.retain(|k, _| k != "general.file_type"),
    }
    let layers: Vec<String> = drop.iter().map(u32::to_string).collect();
    md.set("smelt.prune.layers", Value::String(layers.join(",")));
    md.set(
        "smelt.prune.rank",
        Value::String(match rank {
            Rank::Weights => "weights".into(),
            Rank::Activations => "activations".into(),
        }),
    );
    let mut reports = crate::write::write_matrix(model, &plan.order, &plan.outputs, display)?;
    Ok(reports.remove(0))
}
