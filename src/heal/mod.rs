//! `smelt heal`: after layers are pruned, train a few projections of the layers around each
//! cut so that the pruned model's hidden state matches the original's again.
//!
//! Block-wise distillation: the frozen prefix (every layer before the first trained one) runs
//! once, without gradients, on the student; the teacher runs once up to the depth where the
//! last trained layer's output should land. Training then repeats only the window of layers
//! from the first to the last trained one, forward and backward, with the loss the mean
//! squared difference of the student's hidden state leaving the window and the teacher's at
//! the same depth (divided by the teacher's mean square, so the loss is scale-free: 1.0 is as
//! far as a zero state). The graph is the evaluation's in plain f32 (`Model::new_plain`).
//!
//! AdamW with a linear warm-up and gradient-norm clipping; a held-out part of the text is
//! scored every `val_every` steps and training stops when it has not improved `patience` times
//! in a row; the weights written are those of the best validation. The same seed, text and
//! thread count give the same bytes.

mod write;

pub use write::{heal_metadata, write_healed, Provenance};

use crate::error::{Error, Result};
use crate::eval::model::{Layer, Model};
use crate::eval::Weights;
use crate::store::Store;
use candle_core::{DType, Tensor, Var};
use candle_nn::Optimizer;
use std::collections::BTreeMap;

/// The projections `--train` may name.
pub const TRAINABLE: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

fn cerr(e: candle_core::Error) -> Error {
    Error::Invalid(format!("heal: {e}"))
}

/// How to heal.
#[derive(Clone, Debug, PartialEq)]
pub struct HealOptions {
    /// Projection suffixes to train (`ffn_gate`, `ffn_up`, `ffn_down`, ...).
    pub train: Vec<String>,
    /// The student's layers to train; `None`: the layers on both sides of each cut.
    pub layers: Option<Vec<usize>>,
    /// Optimizer steps at most.
    pub steps: usize,
    /// Peak learning rate (after the warm-up).
    pub lr: f64,
    /// Steps of linear warm-up from lr / warmup to lr.
    pub warmup: usize,
    /// Tokens per training sequence.
    pub seq: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Sequences taken from the text at most, spread over it (every fifth, and at least one,
    /// validates).
    pub max_sequences: usize,
    /// Validation every this many steps.
    pub val_every: usize,
    /// Stop after this many validations without improvement.
    pub patience: usize,
    /// Largest global gradient norm (larger gradients are scaled down to it).
    pub clip: f64,
    /// Order of the training sequences.
    pub seed: u64,
    /// What the student is trained to match.
    pub loss: HealLoss,
}

/// The heal's objective.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealLoss {
    /// The hidden state leaving the trained window against the teacher's at the same depth
    /// (mean squared difference over the teacher's mean square): backward through the window
    /// only.
    Block,
    /// End to end: the KL divergence of the student's next-token distribution from the
    /// teacher's, per token (nats), through every layer after the window and the head.
    Kl,
}

impl HealLoss {
    pub fn name(self) -> &'static str {
        match self {
            HealLoss::Block => "block",
            HealLoss::Kl => "kl",
        }
    }
}

impl Default for HealOptions {
    fn default() -> Self {
        HealOptions {
            train: vec!["ffn_gate".into(), "ffn_up".into(), "ffn_down".into()],
            layers: None,
            steps: 200,
            lr: 1e-3,
            warmup: 20,
            seq: 128,
            batch: 4,
            max_sequences: 80,
            val_every: 10,
            patience: 3,
            clip: 1.0,
            seed: 0,
            loss: HealLoss::Block,
        }
    }
}

/// What healing did.
#[derive(Clone, Debug, PartialEq)]
pub struct HealReport {
    /// `layer_map[i]`: the teacher layer the student's layer `i` comes from.
    pub layer_map: Vec<usize>,
    /// The student layers trained.
    pub layers: Vec<usize>,
    /// The window run with gradients: student layers `window.0..=window.1`.
    pub window: (usize, usize),
    /// The teacher depth matched: the state leaving teacher layer `teacher_depth - 1`.
    pub teacher_depth: usize,
    pub n_train: usize,
    pub n_val: usize,
    /// The student's frozen prefix is the teacher's: one pass computed both.
    pub shared_prefix: bool,
    /// Training loss of each step run.
    pub train_loss: Vec<f64>,
    /// (step, validation loss), step 0 before training.
    pub val_loss: Vec<(usize, f64)>,
    /// The step whose weights are kept (best validation).
    pub best_step: usize,
    pub stopped_early: bool,
    /// The trained tensors' values (ggml order), by GGUF name, as of `best_step`.
    pub trained: BTreeMap<String, Vec<f32>>,
}

impl HealReport {
    pub fn val_before(&self) -> f64 {
        self.val_loss.first().map_or(f64::NAN, |v| v.1)
    }

    pub fn val_best(&self) -> f64 {
        self.val_loss
            .iter()
            .find(|v| v.0 == self.best_step)
            .map_or(f64::NAN, |v| v.1)
    }
}

/// A layer's fingerprint: its norm weights (small, and kept in f32 by every quantization).
fn fingerprint(w: &dyn Weights, l: usize) -> Result<Vec<f32>> {
    let mut v = w.read(&format!("blk.{l}.attn_norm.weight"))?;
    v.extend(w.read(&format!("blk.{l}.ffn_norm.weight"))?);
    Ok(v)
}

/// Which teacher layer each student layer is: the nearest fingerprint, in order (a pruned
/// model keeps its layers' order). A student layer that matches no teacher layer is an error.
pub fn layer_map(student: &dyn Weights, teacher: &dyn Weights) -> Result<Vec<usize>> {
    let (n_s, n_t) = (student.n_layer() as usize, teacher.n_layer() as usize);
    if n_s >= n_t {
        return Err(Error::Invalid(format!(
            "the model has {n_s} layers, its teacher {n_t}: heal takes a model with layers pruned from the teacher"
        )));
    }
    let teacher_prints: Vec<Vec<f32>> = (0..n_t)
        .map(|l| fingerprint(teacher, l))
        .collect::<Result<_>>()?;
    let mut map = Vec::with_capacity(n_s);
    let mut next = 0;
    for i in 0..n_s {
        let s = fingerprint(student, i)?;
        let last = n_t - (n_s - i); // leave a teacher layer for each later student layer
        let mut best = (f64::INFINITY, next);
        for (j, t) in teacher_prints.iter().enumerate().take(last + 1).skip(next) {
            if t.len() != s.len() {
                continue;
            }
            let (mut diff, mut norm) = (0f64, 0f64);
            for (a, b) in s.iter().zip(t) {
                diff += ((a - b) as f64).powi(2);
                norm += (*b as f64).powi(2);
            }
            let rel = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
            if rel < best.0 {
                best = (rel, j);
            }
        }
        if best.0 > 1e-3 {
            return Err(Error::Invalid(format!(
                "layer {i} of the model matches no layer of the teacher (its norms differ by {:.3} from the nearest, layer {}): heal takes a model with layers pruned from the teacher",
                best.0, best.1
            )));
        }
        map.push(best.1);
        next = best.1 + 1;
    }
    Ok(map)
}

/// The student layers on both sides of each cut in `map` (a cut before the first layer or
/// after the last touches only one).
pub fn layers_around_cuts(map: &[usize], n_teacher: usize) -> Vec<usize> {
    let mut layers = std::collections::BTreeSet::new();
    let n = map.len();
    if map.first().is_some_and(|&f| f > 0) {
        layers.insert(0);
    }
    for i in 0..n.saturating_sub(1) {
        if map[i + 1] != map[i] + 1 {
            layers.insert(i);
            layers.insert(i + 1);
        }
    }
    if map.last().is_some_and(|&l| l + 1 < n_teacher) {
        layers.insert(n - 1);
    }
    layers.into_iter().collect()
}

/// Token sequences of one length.
type Sequences = Vec<Vec<u32>>;

/// `tokens` cut into sequences of `seq` (the first token BOS where the vocabulary adds one),
/// at most `max_sequences` spread evenly over the text: (training, validation), every fifth
/// (and at least one) for validation.
fn sequences(
    tokens: &[u32],
    bos: Option<u32>,
    opts: &HealOptions,
) -> Result<(Sequences, Sequences)> {
    let available = tokens.len() / opts.seq.max(1);
    let n = available.min(opts.max_sequences);
    if opts.seq < 4 || n < 2 {
        return Err(Error::Invalid(format!(
            "the text has {} tokens: --seq {} needs at least {} (a sequence to train on and one to validate)",
            tokens.len(),
            opts.seq,
            2 * opts.seq.max(4)
        )));
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for k in 0..n {
        let start = k * available / n * opts.seq;
        let mut c = tokens[start..start + opts.seq].to_vec();
        if let Some(b) = bos {
            c[0] = b;
        }
        if k % 5 == 4 || (n < 5 && k == n - 1) {
            val.push(c);
        } else {
            train.push(c);
        }
    }
    Ok((train, val))
}

/// Heal `student` (a model with layers pruned from `teacher`) on `tokens`.
pub fn heal(
    student: &Store,
    teacher: &Store,
    tokens: &[u32],
    opts: &HealOptions,
    progress: &crate::progress::Progress,
) -> Result<HealReport> {
    check_options(opts)?;
    let sm = Model::new_plain(student)?;
    let tm = Model::new_plain(teacher)?;
    if sm.n_embd() != tm.n_embd() || sm.n_vocab() != tm.n_vocab() {
        return Err(Error::Invalid(format!(
            "the teacher has width {} and {} tokens, the model width {} and {} tokens: heal needs a teacher the model was pruned from",
            tm.n_embd(),
            tm.n_vocab(),
            sm.n_embd(),
            sm.n_vocab()
        )));
    }
    let map = layer_map(student, teacher)?;
    let layers = match &opts.layers {
        Some(l) => {
            if let Some(bad) = l.iter().find(|&&l| l >= sm.n_layer()) {
                return Err(Error::Invalid(format!(
                    "--layers {bad}: the model has {} layers (0 to {})",
                    sm.n_layer(),
                    sm.n_layer() - 1
                )));
            }
            let mut l = l.clone();
            l.sort_unstable();
            l.dedup();
            l
        }
        None => layers_around_cuts(&map, tm.n_layer()),
    };
    let (first, last) = match (layers.first(), layers.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => return Err(Error::Invalid("no layer to train".into())),
    };
    let teacher_depth = map[last] + 1;
    let bos = crate::tokenizer::encode::bos_to_add(student.metadata())?;
    let (train, val) = sequences(tokens, bos, opts)?;

    // The frozen prefix of the student and the teacher up to the matched depth, once.
    let quiet = crate::progress::Progress::new(
        crate::progress::Display::Hidden,
        "",
        0,
        crate::progress::Unit::Steps,
    );
    let all: Vec<Vec<u32>> = train.iter().chain(&val).cloned().collect();
    progress.set_message("running the frozen layers");
    // When the student's prefix is the teacher's, byte for byte, one pass gives both.
    let shared = same_prefix(student, teacher, &map, first);
    let mut inputs = Vec::new();
    // Block: the teacher's state at the matched depth; KL: its state leaving its last layer
    // (its logits are made from it batch by batch: all of them at once would not fit).
    let kl = opts.loss == HealLoss::Kl;
    let target_depth = if kl { tm.n_layer() } else { teacher_depth };
    let targets = tm.residual_stream(&all, target_depth, &quiet, None, &mut |d, xs| {
        if shared && d == first {
            inputs = xs.to_vec();
        }
        Ok(())
    })?;
    if !shared {
        inputs = sm.residual_stream(&all, first, &quiet, None, &mut |_, _| Ok(()))?;
    }
    let (train_in, val_in) = inputs.split_at(train.len());
    let (train_out, val_out) = targets.split_at(train.len());
    // The loss divides by the teacher's mean square over the training set.
    let mut ms = 0f64;
    for t in train_out {
        ms += t
            .sqr()
            .and_then(|t| t.mean_all())
            .and_then(|t| t.to_scalar::<f32>())
            .map_err(cerr)? as f64;
    }
    let scale = (ms / train_out.len() as f64).max(f64::MIN_POSITIVE);

    // The window's layers, the trained projections swapped for variables.
    let mut window: Vec<Layer> = Vec::new();
    let mut vars: Vec<(String, Var)> = Vec::new();
    for l in first..=last {
        let mut layer = sm.layer(l)?;
        if layers.contains(&l) {
            for suffix in &opts.train {
                let w = layer.matrix_mut(suffix).ok_or_else(|| {
                    Error::Invalid(format!(
                        "--train {suffix}: layer {l} has no separate `{suffix}` matrix to train"
                    ))
                })?;
                let var = Var::from_tensor(w).map_err(cerr)?;
                *w = var.as_tensor().clone();
                vars.push((format!("blk.{l}.{suffix}.weight"), var));
            }
        }
        window.push(layer);
    }
    // KL: the frozen layers after the window and both heads, loaded once.
    let after: Vec<Layer> = if kl {
        (last + 1..sm.n_layer())
            .map(|l| sm.layer(l))
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let heads = if kl {
        Some((
            (sm.output_head()?, sm.output_norm()?),
            (tm.output_head()?, tm.output_norm()?),
        ))
    } else {
        None
    };
    let ctxs = sm.contexts(opts.seq)?;
    let forward = |x: &Tensor| -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (k, layer) in window.iter().chain(&after).enumerate() {
            x = sm.forward_block(layer, first + k, &x, &ctxs)?;
        }
        Ok(x)
    };
    let loss_of = |xs: &[Tensor], ys: &[Tensor]| -> candle_core::Result<Tensor> {
        let x = Tensor::cat(xs, 0)?;
        let y = Tensor::cat(ys, 0)?;
        match &heads {
            None => (forward(&x)? - y)?.sqr()?.mean_all()? / scale,
            Some(((s_head, s_norm), (t_head, t_norm))) => {
                use candle_nn::ops::log_softmax;
                let last_dim = candle_core::D::Minus1;
                let student =
                    log_softmax(&sm.head_logits(s_head, s_norm, &forward(&x)?)?, last_dim)?;
                let teacher = log_softmax(&tm.head_logits(t_head, t_norm, &y)?, last_dim)?.detach();
                (teacher.exp()? * (teacher - student)?)?
                    .sum(last_dim)?
                    .mean_all()
            }
        }
    };
    let validate = || -> Result<f64> {
        let mut total = 0f64;
        for (xs, ys) in val_in.chunks(opts.batch).zip(val_out.chunks(opts.batch)) {
            let l = loss_of(xs, ys)
                .and_then(|l| l.to_dtype(DType::F64))
                .and_then(|l| l.to_scalar::<f64>())
                .map_err(cerr)?;
            total += l * xs.len() as f64;
        }
        Ok(total / val_in.len() as f64)
    };
    let snapshot = || -> Result<BTreeMap<String, Vec<f32>>> {
        vars.iter()
            .map(|(name, v)| {
                let values = v.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>());
                Ok((name.clone(), values.map_err(cerr)?))
            })
            .collect()
    };

    let params = candle_nn::ParamsAdamW {
        lr: opts.lr,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut adam = candle_nn::AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), params)
        .map_err(cerr)?;
    let mut rng = {
        use rand_chacha::rand_core::SeedableRng;
        rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed)
    };
    let mut order: Vec<usize> = Vec::new();
    let mut val_loss = vec![(0, validate()?)];
    let mut best = (val_loss[0].1, 0usize, snapshot()?);
    let mut bad = 0;
    let mut train_loss = Vec::new();
    let mut stopped_early = false;
    progress.set_message(&format!("validation {:.5}", val_loss[0].1));
    for step in 1..=opts.steps {
        let mut batch = Vec::with_capacity(opts.batch);
        while batch.len() < opts.batch.min(train_in.len()) {
            if order.is_empty() {
                order = shuffled(train_in.len(), &mut rng);
            }
            batch.push(order.pop().expect("refilled"));
        }
        let xs: Vec<Tensor> = batch.iter().map(|&i| train_in[i].clone()).collect();
        let ys: Vec<Tensor> = batch.iter().map(|&i| train_out[i].clone()).collect();
        let loss = loss_of(&xs, &ys).map_err(cerr)?;
        let value = loss.to_scalar::<f32>().map_err(cerr)? as f64;
        if !value.is_finite() {
            return Err(Error::Invalid(format!(
                "training diverged at step {step} (loss {value}): lower --lr (now {}); nothing written",
                opts.lr
            )));
        }
        train_loss.push(value);
        let mut grads = loss.backward().map_err(cerr)?;
        clip_gradients(&mut grads, &vars, opts.clip)?;
        let warm = opts.warmup.max(1);
        adam.set_learning_rate(opts.lr * (step.min(warm) as f64 / warm as f64));
        adam.step(&grads).map_err(cerr)?;
        progress.inc(1);
        if step % opts.val_every.max(1) == 0 || step == opts.steps {
            let v = validate()?;
            if !v.is_finite() {
                return Err(Error::Invalid(format!(
                    "training diverged at step {step} (validation loss {v}): lower --lr (now {}); nothing written",
                    opts.lr
                )));
            }
            val_loss.push((step, v));
            progress.set_message(&format!("loss {value:.5}, validation {v:.5}"));
            if v < best.0 {
                best = (v, step, snapshot()?);
                bad = 0;
            } else {
                bad += 1;
                if bad >= opts.patience.max(1) {
                    stopped_early = step < opts.steps;
                    break;
                }
            }
        } else {
            progress.set_message(&format!("loss {value:.5}"));
        }
    }
    Ok(HealReport {
        layer_map: map,
        layers,
        window: (first, last),
        teacher_depth,
        n_train: train_in.len(),
        n_val: val_in.len(),
        shared_prefix: shared,
        train_loss,
        val_loss,
        best_step: best.1,
        stopped_early,
        trained: best.2,
    })
}

/// Whether the student's embeddings and layers `0..first` are the teacher's (same names,
/// types, shapes and bytes; the same hyper-parameters but the layer count), so that the
/// teacher's hidden state entering layer `first` is the student's.
fn same_prefix(student: &Store, teacher: &Store, map: &[usize], first: usize) -> bool {
    let arch = student.metadata.architecture().unwrap_or("");
    let count = format!("{arch}.block_count");
    let hparams = |s: &Store| -> Vec<(String, String)> {
        s.metadata
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{arch}.")) && *k != count)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    if teacher.metadata.architecture() != Some(arch) || hparams(student) != hparams(teacher) {
        return false;
    }
    if map.iter().take(first).enumerate().any(|(i, &j)| i != j) {
        return false;
    }
    let in_prefix = |name: &str| {
        name == "token_embd.weight" || (0..first).any(|l| name.starts_with(&format!("blk.{l}.")))
    };
    let mine: Vec<usize> = (0..student.tensors.len())
        .filter(|&i| in_prefix(&student.tensors[i].name))
        .collect();
    let theirs = teacher
        .tensors
        .iter()
        .filter(|t| in_prefix(&t.name))
        .count();
    mine.len() == theirs
        && mine.iter().all(|&i| {
            let t = &student.tensors[i];
            teacher.find(&t.name).is_some_and(|j| {
                let u = &teacher.tensors[j];
                u.ty == t.ty
                    && u.shape == t.shape
                    && student.raw(i).is_some()
                    && student.raw(i) == teacher.raw(j)
            })
        })
}

/// 0..n in the order of a Fisher–Yates shuffle drawn from `rng`.
fn shuffled(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<usize> {
    use rand_chacha::rand_core::Rng;
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Scale every gradient down so that their global L2 norm is at most `clip`.
fn clip_gradients(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[(String, Var)],
    clip: f64,
) -> Result<()> {
    let mut sq = 0f64;
    for (_, v) in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let s = g
                .sqr()
                .and_then(|g| g.sum_all())
                .and_then(|s| s.to_scalar::<f32>());
            sq += s.map_err(cerr)? as f64;
        }
    }
    let norm = sq.sqrt();
    if clip > 0.0 && norm > clip {
        let k = clip / norm;
        for (_, v) in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * k).map_err(cerr)?);
            }
        }
    }
    Ok(())
}

fn check_options(opts: &HealOptions) -> Result<()> {
    if opts.train.is_empty() {
        return Err(Error::Invalid("--train names no projection".into()));
    }
    for t in &opts.train {
        if !TRAINABLE.contains(&t.as_str()) {
            return Err(Error::Invalid(format!(
                "--train {t}: not a projection heal trains (one of {})",
                TRAINABLE.join(", ")
            )));
        }
    }
    if opts.steps == 0 || opts.batch == 0 {
        return Err(Error::Invalid(
            "--steps and --batch must be at least 1".into(),
        ));
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0) {
        return Err(Error::Invalid(format!(
            "--lr {}: a learning rate is a positive number",
            opts.lr
        )));
    }
    Ok(())
}

/// `--layers`: `auto` (None) or a comma-separated list of layer numbers.
pub fn parse_layers(s: &str) -> Result<Option<Vec<usize>>> {
    if s.trim() == "auto" {
        return Ok(None);
    }
    s.split(',')
        .map(|p| {
            p.trim().parse::<usize>().map_err(|_| {
                Error::Invalid(format!(
                    "--layers {s}: `auto` or layer numbers separated by commas"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layers_around_each_cut() {
        // 8 teacher layers, 2 and 5 dropped.
        assert_eq!(layers_around_cuts(&[0, 1, 3, 4, 6, 7], 8), vec![1, 2, 3, 4]);
        // The last two dropped: only the new last layer borders the cut.
        assert_eq!(layers_around_cuts(&[0, 1, 2, 3, 4, 5], 8), vec![5]);
        assert_eq!(layers_around_cuts(&[1, 2, 3], 4), vec![0]);
    }

    #[test]
    fn the_plain_graph_computes_what_the_parity_graph_computes() {
        // F32 weights: the graphs differ only by llama.cpp's f16 rounding of attention.
        let d = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let path = d.path().join("m.gguf");
        let tiny = crate::fixture::TinyLlama {
            n_layer: 2,
            dtype: crate::gguf::GgmlType::F32,
            ..Default::default()
        };
        tiny.write_gguf(&path).unwrap();
        let store = crate::store::Store::open(&path).unwrap();
        let chunks = vec![(0..48u32).map(|i| (i * 37) % 300).collect::<Vec<u32>>()];
        let quiet = crate::progress::Progress::new(
            crate::progress::Display::Hidden,
            "",
            0,
            crate::progress::Unit::Steps,
        );
        let run = |m: Model| {
            m.final_hidden(&chunks, &quiet, None).unwrap()[0]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let parity = run(Model::new(&store).unwrap());
        let plain = run(Model::new_plain(&store).unwrap());
        let (mut diff, mut norm) = (0f64, 0f64);
        for (a, b) in parity.iter().zip(&plain) {
            diff += ((a - b) as f64).powi(2);
            norm += (*a as f64).powi(2);
        }
        let rel = (diff / norm).sqrt();
        assert!(rel < 2e-3, "relative difference {rel}");
        assert!(
            rel > 0.0,
            "the parity graph rounds to f16, the plain one does not"
        );
    }

    #[test]
    fn sequences_spread_over_the_text_and_every_fifth_validates() {
        let tokens: Vec<u32> = (0..100).collect();
        let opts = HealOptions {
            seq: 10,
            max_sequences: 5,
            ..Default::default()
        };
        let (train, val) = sequences(&tokens, Some(999), &opts).unwrap();
        let firsts: Vec<u32> = train.iter().map(|s| s[1]).collect();
        assert_eq!(firsts, vec![1, 21, 41, 61]);
        assert_eq!(val.len(), 1);
        assert_eq!(val[0][0], 999);
        assert_eq!(&val[0][1..], &(81..90).collect::<Vec<u32>>()[..]);
        // Two sequences: one of each.
        let (train, val) = sequences(&tokens[..25], None, &opts).unwrap();
        assert_eq!((train.len(), val.len()), (1, 1));
        assert!(sequences(&tokens[..15], None, &opts).is_err());
    }

    #[test]
    fn layers_parse() {
        assert_eq!(parse_layers("auto").unwrap(), None);
        assert_eq!(parse_layers("3, 4").unwrap(), Some(vec![3, 4]));
        assert!(parse_layers("3;4").is_err());
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let a = Var::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap();
        let b = Var::new(&[3f32], &candle_core::Device::Cpu).unwrap();
        // loss = 3 a0 + 4 a1 + 12 b: gradients (3, 4) and (12), norm 13.
        let w = Tensor::new(&[3f32, 4.0], &candle_core::Device::Cpu).unwrap();
        let loss = ((a.as_tensor() * &w).unwrap().sum_all().unwrap()
            + (b.as_tensor() * 12.0).unwrap().sum_all().unwrap())
        .unwrap();
        let mut grads = loss.backward().unwrap();
        let vars = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        clip_gradients(&mut grads, &vars, 1.3).unwrap();
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            (ga[0] - 0.3).abs() < 1e-6 && (ga[1] - 0.4).abs() < 1e-6,
            "{ga:?}"
        );
        assert!((gb[0] - 1.2).abs() < 1e-6, "{gb:?}");
    }
}
