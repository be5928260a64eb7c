//! Layer pruning by a weight-space redundancy measure (`eval::ranking` ranks by activations
//! and writes its recipe with [`slices`]).
//!
//! The redundancy of layer `l` (for 0 < l < n−1; the first and last layers are never
//! proposed) is the mean cosine similarity between each of its weight matrices and the same
//! matrix of layer `l − 1`. A layer that nearly repeats the one below it adds the least new
//! transformation to the residual stream; duplicated layers score 1. The `k` highest-scoring
//! layers are the proposal, written as a passthrough recipe that keeps the rest in order.

use crate::error::Result;
use crate::store::Store;

/// Cosine similarity of two vectors, accumulated in f64.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += x as f64 * y as f64;
        na += x as f64 * x as f64;
        nb += y as f64 * y as f64;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// (layer, redundancy) for every layer but the first and last.
pub fn redundancy(store: &Store) -> Result<Vec<(u32, f64)>> {
    let n = store.hparam("block_count").unwrap_or(0) as u32;
    let mut scores = Vec::new();
    for l in 1..n.saturating_sub(1) {
        let prefix = format!("blk.{l}.");
        let (mut total, mut count) = (0f64, 0usize);
        for (i, t) in store.tensors.iter().enumerate() {
            let Some(suffix) = t.name.strip_prefix(&prefix) else {
                continue;
            };
            if t.shape.len() < 2 {
                continue;
            }
            let Some(j) = store.find(&format!("blk.{}.{suffix}", l - 1)) else {
                continue;
            };
            if store.tensors[j].shape != t.shape {
                continue;
            }
            total += cosine(&store.read_f32(i)?, &store.read_f32(j)?);
            count += 1;
            store.release(i);
            store.release(j);
        }
        scores.push((l, if count > 0 { total / count as f64 } else { 0.0 }));
    }
    Ok(scores)
}

/// The `count` most redundant layers, in ascending order.
pub fn most_redundant(scores: &[(u32, f64)], count: usize) -> Vec<u32> {
    let mut s = scores.to_vec();
    s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut drop: Vec<u32> = s.iter().take(count).map(|x| x.0).collect();
    drop.sort_unstable();
    drop
}

/// A passthrough recipe keeping every layer of `model` (which has `n_layer`) but `drop`.
pub fn recipe(model: &str, n_layer: u32, drop: &[u32], scores: &[(u32, f64)]) -> String {
    let mut text = format!(
        "# Layer pruning proposed by `smelt prune-plan`: drops {drop:?} of {n_layer} layers.\n\
         # Redundancy = mean cosine similarity of a layer's matrices with the layer below.\n"
    );
    for (l, s) in scores {
        text.push_str(&format!(
            "#   layer {l:>3}: {s:.6}{}\n",
            if drop.contains(l) { "  (dropped)" } else { "" }
        ));
    }
    text.push_str(&slices(model, n_layer, drop));
    text
}

/// The `merge_method: passthrough` and `slices:` of a recipe keeping all but `drop`.
pub fn slices(model: &str, n_layer: u32, drop: &[u32]) -> String {
    let mut text = String::from("merge_method: passthrough\nslices:\n");
    let mut start = 0;
    for cut in drop.iter().copied().chain(std::iter::once(n_layer)) {
        if cut > start {
            text.push_str(&format!(
                "  - sources:\n      - model: {model}\n        layer_range: [{start}, {cut}]\n"
            ));
        }
        start = cut + 1;
    }
    text
}
