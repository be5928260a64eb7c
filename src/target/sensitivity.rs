//! Measured sensitivity (`--sensitivity`): how much each tensor's quantization error moves the
//! model's output, so that the allocation minimises predicted KL divergence rather than raw
//! weighted squared error, which treats an error in `attn_v` like the same error in `attn_q`.
//!
//! A tensor's factor is ΔKLD per unit of its measured error: quantize a group of tensors to
//! their cheapest candidate, run the forward pass on a short text, and take the mean KL
//! divergence against the unquantized model. One tensor at a time would take a forward pass
//! per tensor (hundreds); instead each layer is probed once (all its tensors) and each kind
//! once (`attn_v` of every layer), and the factor is modelled as layer × kind,
//! `s = a_layer · b_kind`, fitted to both sets of sums by alternating scaling (as iterative
//! proportional fitting does). Tensors outside the layers (`token_embd`, `output`) are probed
//! alone. That is `layers + kinds + others + 1` forward passes on the text.

use super::Sensitivity;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalOptions, Reference};
use crate::eval::{LogitsReader, LogitsWriter, WeightInfo, Weights};
use crate::gguf::Metadata;
use crate::progress::{Display, Progress, Unit};
use crate::quant;
use crate::write::PlannedTensor;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The text the factors are measured on, and how it is cut.
pub struct SensitivityText<'a> {
    /// The unquantized model the forward pass runs (the quantize source).
    pub weights: &'a dyn Weights,
    pub tokens: Vec<u32>,
    /// What the text was (recorded; the digest of `tokens` is what must match).
    pub name: String,
    pub ctx: usize,
    pub chunks: usize,
    /// Where the reference's log-probabilities may go while measuring (a temporary folder).
    pub scratch: PathBuf,
}

impl SensitivityText<'_> {
    /// The digest a cached measurement must carry to be reused for this text and cut.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for t in &self.tokens {
            h.update(t.to_le_bytes());
        }
        h.update((self.ctx as u64).to_le_bytes());
        h.update((self.chunks as u64).to_le_bytes());
        super::hex(&h.finalize())
    }
}

/// One probed tensor: its name and the cheapest candidate's plan (type and imatrix).
pub struct Probe<'p> {
    pub source_index: usize,
    pub planned: &'p PlannedTensor,
    /// Its measured error at that type (the allocation's own objective).
    pub error: f64,
}

/// Where a tensor sits: `blk.N.KIND` → (Some(N), KIND); anything else is its own group.
fn layer_and_kind(name: &str) -> (Option<usize>, String) {
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((n, kind)) = rest.split_once('.') {
            if let Ok(n) = n.parse() {
                return (Some(n), kind.to_string());
            }
        }
    }
    (None, name.to_string())
}

/// The model with some tensors replaced by their quantized-and-dequantized values.
struct Perturbed<'a> {
    inner: &'a dyn Weights,
    replaced: HashMap<String, Vec<f32>>,
}

impl Weights for Perturbed<'_> {
    fn metadata(&self) -> &Metadata {
        self.inner.metadata()
    }
    fn info(&self, name: &str) -> Option<WeightInfo> {
        let mut info = self.inner.info(name)?;
        if self.replaced.contains_key(name) {
            info.ty = crate::gguf::GgmlType::F32;
        }
        Some(info)
    }
    fn read(&self, name: &str) -> Result<Vec<f32>> {
        match self.replaced.get(name) {
            Some(v) => Ok(v.clone()),
            None => self.inner.read(name),
        }
    }
    fn read_row(&self, name: &str, row: usize, out: &mut [f32]) -> Result<()> {
        match self.replaced.get(name) {
            Some(v) => {
                let n = out.len();
                let src = v
                    .get(row * n..(row + 1) * n)
                    .ok_or_else(|| Error::Invalid(format!("`{name}`: row {row} out of range")))?;
                out.copy_from_slice(src);
                Ok(())
            }
            None => self.inner.read_row(name, row, out),
        }
    }
    fn input_files(&self) -> Vec<PathBuf> {
        self.inner.input_files()
    }
}

/// The tensor's values after quantizing to its probe type and back (rows in parallel).
fn quantized_values(
    source: &dyn crate::write::TensorProducer,
    probe: &Probe<'_>,
) -> Result<Vec<f32>> {
    use rayon::prelude::*;
    let i = probe.source_index;
    let pt = probe.planned;
    let shape = source.shape(i);
    let row_len = shape[0] as usize;
    let n_rows = shape[1..].iter().product::<u64>() as usize;
    let mut x = vec![0f32; row_len * n_rows];
    source.read_rows(i, 0, &mut x)?;
    source.release(i);
    let q_err = |e| Error::quant(&pt.name, e);
    let row_bytes = quant::row_bytes(pt.ty, row_len).map_err(q_err)?;
    x.par_chunks_mut(row_len)
        .enumerate()
        .try_for_each(|(r, row)| -> Result<()> {
            let mut q = vec![0u8; row_bytes];
            crate::write::quantize_chunk(pt, row, row_len, r, n_rows, &mut q).map_err(q_err)?;
            quant::dequantize_row(pt.ty, &q, row).map_err(q_err)
        })?;
    Ok(x)
}

/// Measures every probed tensor's factor (ΔKLD per unit of measured error).
pub fn measure(
    text: &SensitivityText<'_>,
    source: &dyn crate::write::TensorProducer,
    probes: &[Probe<'_>],
    display: Display,
) -> Result<Sensitivity> {
    // Groups: each layer, each kind, each tensor outside the layers.
    let mut layers: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut kinds: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut singles: Vec<usize> = Vec::new();
    for (p, probe) in probes.iter().enumerate() {
        match layer_and_kind(&probe.planned.name) {
            (Some(l), kind) => {
                layers.entry(l).or_default().push(p);
                kinds.entry(kind).or_default().push(p);
            }
            (None, _) => singles.push(p),
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    groups.extend(layers.values().cloned());
    groups.extend(kinds.values().cloned());
    groups.extend(singles.iter().map(|&p| vec![p]));

    let opts = EvalOptions {
        n_ctx: text.ctx,
        max_chunks: Some(text.chunks),
        batch: None,
    };
    let n_layer = text.weights.n_layer().max(1);
    let tokens_per_pass = (text.ctx * text.chunks) as u64;
    let progress = Progress::new(
        display,
        "sensitivity",
        tokens_per_pass * n_layer * (groups.len() as u64 + 1),
        Unit::TokenLayers(n_layer),
    );
    // The unquantized model's log-probabilities, once.
    let base_path: &Path = &text.scratch.join("base.kld");
    let mut writer = LogitsWriter::create(base_path)?;
    evaluate(
        text.weights,
        None,
        Some(&mut writer),
        &text.tokens,
        &opts,
        &progress,
    )?;
    writer.finish()?;

    let mut delta = Vec::with_capacity(groups.len());
    for group in &groups {
        let mut replaced = HashMap::new();
        for &p in group {
            let probe = &probes[p];
            let name = source.name(probe.source_index).to_string();
            progress.set_message(&probe.planned.name);
            replaced.insert(name, quantized_values(source, probe)?);
        }
        let perturbed = Perturbed {
            inner: text.weights,
            replaced,
        };
        let mut reader = LogitsReader::open(base_path)?;
        let report = evaluate(
            &perturbed,
            Some(Reference::Saved(&mut reader)),
            None,
            &text.tokens,
            &opts,
            &progress,
        )?;
        let kld = report.kld.map_or(f64::NAN, |k| k.kld.value);
        if !kld.is_finite() {
            return Err(Error::Invalid(format!(
                "--sensitivity: the probe of `{}` gave no finite KL divergence",
                probes[group[0]].planned.name
            )));
        }
        delta.push(kld);
    }
    progress.finish();

    let factors = fit(probes, &layers, &kinds, &singles, &delta);
    Ok(Sensitivity {
        text: text.name.clone(),
        text_sha256: text.digest(),
        ctx: text.ctx,
        chunks: text.chunks,
        factors: probes
            .iter()
            .zip(factors)
            .map(|(p, f)| (p.planned.name.clone(), f))
            .collect(),
    })
}

/// A ΔKLD below this counts as this (noise can make a probe's KLD tiny or zero; a factor of
/// zero would make its tensor free to ruin).
const MIN_DELTA: f64 = 1e-7;

/// Factors from the groups' ΔKLD: layer × kind by alternating scaling (each layer's factor
/// makes its predicted sum match its probe given the kinds', then each kind's), 50 rounds;
/// the others directly.
fn fit(
    probes: &[Probe<'_>],
    layers: &BTreeMap<usize, Vec<usize>>,
    kinds: &BTreeMap<String, Vec<usize>>,
    singles: &[usize],
    delta: &[f64],
) -> Vec<f64> {
    let n_layers = layers.len();
    let layer_delta = &delta[..n_layers];
    let kind_delta = &delta[n_layers..n_layers + kinds.len()];
    let single_delta = &delta[n_layers + kinds.len()..];
    // Which layer and kind (by position) each probe belongs to.
    let mut layer_of = vec![usize::MAX; probes.len()];
    let mut kind_of = vec![usize::MAX; probes.len()];
    for (li, members) in layers.values().enumerate() {
        for &p in members {
            layer_of[p] = li;
        }
    }
    for (ki, members) in kinds.values().enumerate() {
        for &p in members {
            kind_of[p] = ki;
        }
    }
    let error = |p: usize| probes[p].error.max(f64::MIN_POSITIVE);
    let mut a = vec![1.0f64; layers.len()];
    let mut b = vec![1.0f64; kinds.len()];
    for _ in 0..50 {
        for (li, members) in layers.values().enumerate() {
            let predicted: f64 = members.iter().map(|&p| b[kind_of[p]] * error(p)).sum();
            a[li] = layer_delta[li].max(MIN_DELTA) / predicted;
        }
        for (ki, members) in kinds.values().enumerate() {
            let predicted: f64 = members.iter().map(|&p| a[layer_of[p]] * error(p)).sum();
            b[ki] = kind_delta[ki].max(MIN_DELTA) / predicted;
        }
    }
    let mut out = vec![0.0; probes.len()];
    for p in 0..probes.len() {
        if layer_of[p] != usize::MAX {
            out[p] = a[layer_of[p]] * b[kind_of[p]];
        }
    }
    for (&p, &d) in singles.iter().zip(single_delta) {
        out[p] = d.max(MIN_DELTA) / error(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_layer_and_kind() {
        assert_eq!(
            layer_and_kind("blk.12.attn_v.weight"),
            (Some(12), "attn_v.weight".to_string())
        );
        assert_eq!(
            layer_and_kind("token_embd.weight"),
            (None, "token_embd.weight".to_string())
        );
        assert_eq!(layer_and_kind("blk.x.y"), (None, "blk.x.y".to_string()));
    }

    #[test]
    fn a_separable_truth_is_recovered() {
        // Two layers, two kinds, true factors a·b; the probes' sums are exact.
        let pt = |name: &str| PlannedTensor {
            name: name.into(),
            ty: crate::gguf::GgmlType::Q4_0,
            imatrix: None,
        };
        let names = [
            "blk.0.attn_v.weight",
            "blk.0.ffn_down.weight",
            "blk.1.attn_v.weight",
            "blk.1.ffn_down.weight",
            "token_embd.weight",
        ];
        let planned: Vec<PlannedTensor> = names.iter().map(|n| pt(n)).collect();
        let errors = [2.0, 3.0, 5.0, 7.0, 4.0];
        let probes: Vec<Probe> = planned
            .iter()
            .zip(errors)
            .enumerate()
            .map(|(i, (p, e))| Probe {
                source_index: i,
                planned: p,
                error: e,
            })
            .collect();
        let (a, b) = ([1.0, 3.0], [0.5, 2.0]);
        let truth = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1], 0.25];
        let mut layers = BTreeMap::new();
        layers.insert(0, vec![0, 1]);
        layers.insert(1, vec![2, 3]);
        let mut kinds = BTreeMap::new();
        kinds.insert("attn_v.weight".to_string(), vec![0, 2]);
        kinds.insert("ffn_down.weight".to_string(), vec![1, 3]);
        let sum = |ps: &[usize]| ps.iter().map(|&p| truth[p] * errors[p]).sum::<f64>();
        let delta = [
            sum(&[0, 1]),
            sum(&[2, 3]),
            sum(&[0, 2]),
            sum(&[1, 3]),
            truth[4] * errors[4],
        ];
        let got = fit(&probes, &layers, &kinds, &[4], &delta);
        for (g, t) in got.iter().zip(truth) {
            assert!((g - t).abs() < 1e-6 * t, "{got:?} vs {truth:?}");
        }
    }
}
