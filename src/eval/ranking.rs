//! Layer ranking by activations: how little a block of consecutive layers changes the
//! residual stream, measured as in Gromov et al. 2024 ("The Unreasonable Ineffectiveness of
//! the Deeper Layers"): the angular distance `arccos(cos(x_l, x_{l+k})) / π` between the
//! hidden state entering layer `l` and the one leaving layer `l + k - 1`, averaged over every
//! token of the text. The block with the smallest distance is the one whose removal the rest
//! of the network notices least.

use super::model::Model;
use super::{chunks, group_size, EvalOptions, Weights};
use crate::error::{Error, Result};
use crate::progress::Progress;
use candle_core::Tensor;

/// The mean angular distances of one model on one text.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerDistances {
    pub n_layer: usize,
    /// Layers per block (`--count`).
    pub count: usize,
    /// Tokens averaged over.
    pub n_tokens: usize,
    /// `single[l]`: layer `l` alone (its input against its output).
    pub single: Vec<f64>,
    /// `blocks[l]`: layers `l..l + count` (the input of `l` against the output of
    /// `l + count - 1`), for every `l` in `0..=n_layer - count`.
    pub blocks: Vec<f64>,
}

impl LayerDistances {
    /// The first layer of the block with the smallest distance (the lowest on a tie).
    pub fn best_block(&self) -> usize {
        let mut best = 0;
        for (l, d) in self.blocks.iter().enumerate() {
            if d.total_cmp(&self.blocks[best]).is_lt() {
                best = l;
            }
        }
        best
    }

    /// The layers of the best block, ascending.
    pub fn dropped(&self) -> Vec<u32> {
        let first = self.best_block();
        (first..first + self.count).map(|l| l as u32).collect()
    }
}

/// The angular distance of each row of `a` to the same row of `b`, summed in f64 (row order).
fn angular_sum(a: &Tensor, b: &Tensor) -> Result<f64> {
    let err = |e: candle_core::Error| Error::Invalid(format!("layer ranking: {e}"));
    let a = a.to_vec2::<f32>().map_err(err)?;
    let b = b.to_vec2::<f32>().map_err(err)?;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(&b) {
        sum += angular_distance(x, y);
    }
    Ok(sum)
}

/// `arccos(cos(x, y)) / π`, in [0, 1]: 0 for the same direction. Two zero vectors are the
/// same (0), one zero vector against another is orthogonal (0.5).
pub fn angular_distance(x: &[f32], y: &[f32]) -> f64 {
    let (mut dot, mut nx, mut ny) = (0f64, 0f64, 0f64);
    for (&a, &b) in x.iter().zip(y) {
        dot += a as f64 * b as f64;
        nx += a as f64 * a as f64;
        ny += b as f64 * b as f64;
    }
    let cos = match (nx == 0.0, ny == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => (dot / (nx.sqrt() * ny.sqrt())).clamp(-1.0, 1.0),
    };
    cos.acos() / std::f64::consts::PI
}

/// The mean angular distances of `store` on `tokens` (chunked as `smelt eval` chunks them)
/// for blocks of `count` layers and for single layers.
pub fn layer_distances(
    store: &dyn Weights,
    tokens: &[u32],
    opts: &EvalOptions,
    count: usize,
    progress: &Progress,
) -> Result<LayerDistances> {
    let model = Model::new(store)?;
    let n_layer = model.n_layer();
    if count == 0 || count >= n_layer {
        return Err(Error::Invalid(format!(
            "--count {count}: a block of 1 to {} layers can be dropped from a model of {n_layer}",
            n_layer - 1
        )));
    }
    let chunks = chunks(store, tokens, opts)?;
    let mut single = vec![0f64; n_layer];
    let mut blocks = vec![0f64; n_layer - count + 1];
    // The states entering the last `count` layers: `window[d % (count + 1)]` holds depth d.
    let mut window: Vec<Vec<Tensor>> = vec![Vec::new(); count + 1];
    for group in chunks.chunks(group_size(opts, model.n_embd() * (count + 2))) {
        let mut observe = |depth: usize, xs: &[Tensor]| -> Result<()> {
            if depth > 0 {
                let prev = &window[(depth - 1) % (count + 1)];
                for (a, b) in prev.iter().zip(xs) {
                    single[depth - 1] += angular_sum(a, b)?;
                }
            }
            if depth >= count {
                let start = &window[(depth - count) % (count + 1)];
                for (a, b) in start.iter().zip(xs) {
                    blocks[depth - count] += angular_sum(a, b)?;
                }
            }
            window[depth % (count + 1)] = xs.to_vec();
            Ok(())
        };
        model.residual_stream(group, n_layer, progress, None, &mut observe)?;
    }
    let n_tokens = chunks.len() * opts.n_ctx;
    for d in single.iter_mut().chain(blocks.iter_mut()) {
        *d /= n_tokens as f64;
    }
    Ok(LayerDistances {
        n_layer,
        count,
        n_tokens,
        single,
        blocks,
    })
}

/// A passthrough recipe keeping every layer of `model` but `drop`, ranked by activations:
/// the comments give each candidate block's and each single layer's angular distance.
pub fn activation_recipe(model: &str, d: &LayerDistances, text_name: &str, drop: &[u32]) -> String {
    let n_layer = d.n_layer as u32;
    let k = d.count;
    let mut text = format!(
        "# Layer pruning proposed by `smelt prune-plan --rank activations`: drops {drop:?} of {n_layer} layers.\n\
         # Angular distance arccos(cos)/pi between the hidden state entering layer l and the one\n\
         # leaving layer l+{}, mean over {} tokens of {} (Gromov et al. 2024).\n\
         # Blocks of {k}:\n",
        k - 1,
        d.n_tokens,
        crate::error::printable(text_name)
    );
    let best = d.best_block();
    for (l, s) in d.blocks.iter().enumerate() {
        text.push_str(&format!(
            "#   layers {l:>3}..{:<3}: {s:.6}{}\n",
            l + k - 1,
            if l == best { "  (dropped)" } else { "" }
        ));
    }
    text.push_str("# Single layers:\n");
    for (l, s) in d.single.iter().enumerate() {
        text.push_str(&format!("#   layer {l:>3}: {s:.6}\n"));
    }
    text.push_str(&crate::merge::prune::slices(model, n_layer, drop));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angular_distance_of_known_vectors() {
        assert_eq!(angular_distance(&[1.0, 0.0], &[2.0, 0.0]), 0.0);
        assert!((angular_distance(&[1.0, 0.0], &[0.0, 3.0]) - 0.5).abs() < 1e-12);
        assert!((angular_distance(&[1.0, 0.0], &[-1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!((angular_distance(&[1.0, 0.0], &[1.0, 1.0]) - 0.25).abs() < 1e-12);
        assert_eq!(angular_distance(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
    }

    #[test]
    fn the_best_block_is_the_lowest_smallest() {
        let d = LayerDistances {
            n_layer: 5,
            count: 2,
            n_tokens: 1,
            single: vec![0.0; 5],
            blocks: vec![0.3, 0.1, 0.2, 0.1],
        };
        assert_eq!(d.best_block(), 1);
        assert_eq!(d.dropped(), vec![1, 2]);
    }
}
