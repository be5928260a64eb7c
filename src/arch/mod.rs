//! Architectures: one table each mapping Hugging Face tensor names to llama.cpp's canonical
//! names (with the row permutations llama.cpp applies) and config.json to GGUF hyper-parameters.
//! Adding an architecture is adding a table.

pub mod llama;

use crate::gguf::{Metadata, Value};
use crate::store::RowOrder;

/// How one architecture maps to GGUF.
pub struct ArchTable {
    /// `architectures[0]` values of config.json handled by this table.
    pub hf_architectures: &'static [&'static str],
    /// `general.architecture`.
    pub gguf_arch: &'static str,
    /// Whole-model tensors: HF name → canonical name.
    pub globals: &'static [(&'static str, &'static str)],
    /// Per-layer tensors: HF suffix after `model.layers.N.` → canonical suffix after `blk.N.`.
    pub layer: &'static [(&'static str, &'static str)],
    /// HF tensors that llama.cpp does not use (skipped, never an error).
    pub ignored_suffixes: &'static [&'static str],
    /// The permutation of a tensor's rows, given its canonical suffix and the config.
    pub row_order: fn(canonical_suffix: &str, cfg: &serde_json::Value) -> RowOrder,
    /// config.json → GGUF hyper-parameter keys, in convert_hf_to_gguf.py's order.
    pub hparams: fn(cfg: &serde_json::Value, meta: &mut Metadata),
}

/// Every architecture smelt reads from Hugging Face folders.
pub const ARCHITECTURES: &[&ArchTable] = &[&llama::LLAMA];

/// The table for config.json's `architectures[0]`.
pub fn find(hf_architecture: &str) -> Option<&'static ArchTable> {
    ARCHITECTURES
        .iter()
        .copied()
        .find(|a| a.hf_architectures.contains(&hf_architecture))
}

/// Names of every supported HF architecture, for error messages.
pub fn supported() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .flat_map(|a| a.hf_architectures.iter().copied())
        .collect()
}

/// What becomes of one HF tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    Tensor { name: String, rows: RowOrder },
    Ignored,
}

/// `blk.N.rest` → (N, rest).
pub fn layer_of(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

impl ArchTable {
    /// The canonical name (and row order) of an HF tensor, `Ignored`, or `None` if unknown.
    pub fn map_hf(&self, hf: &str, cfg: &serde_json::Value) -> Option<Mapped> {
        if self.ignored_suffixes.iter().any(|s| hf.ends_with(s)) {
            return Some(Mapped::Ignored);
        }
        if let Some(&(_, gg)) = self.globals.iter().find(|(h, _)| *h == hf) {
            return Some(Mapped::Tensor {
                name: gg.to_string(),
                rows: (self.row_order)(gg, cfg),
            });
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (n, suffix) = rest.split_once('.')?;
        let n: u32 = n.parse().ok()?;
        let &(_, gg) = self.layer.iter().find(|(h, _)| *h == suffix)?;
        Some(Mapped::Tensor {
            name: format!("blk.{n}.{gg}"),
            rows: (self.row_order)(gg, cfg),
        })
    }

    /// The HF name of a canonical tensor (for writing HF folders).
    pub fn to_hf(&self, canonical: &str) -> Option<String> {
        if let Some(&(h, _)) = self.globals.iter().find(|(_, g)| *g == canonical) {
            return Some(h.to_string());
        }
        let (n, suffix) = layer_of(canonical)?;
        let &(h, _) = self.layer.iter().find(|(_, g)| *g == suffix)?;
        Some(format!("model.layers.{n}.{h}"))
    }
}

/// Small helpers for hyper-parameter tables.
pub(crate) fn cfg_u64(cfg: &serde_json::Value, keys: &[&str]) -> Option<u64> {
    keys.iter()
        .find_map(|k| cfg.get(*k).and_then(|v| v.as_u64()))
}

pub(crate) fn cfg_f64(cfg: &serde_json::Value, key: &str) -> Option<f64> {
    cfg.get(key).and_then(|v| v.as_f64())
}

pub(crate) fn set_u32(meta: &mut Metadata, key: String, v: Option<u64>) {
    if let Some(v) = v {
        meta.set(key, Value::U32(v as u32));
    }
}
