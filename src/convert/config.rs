//! config.json: reading it, the architecture it names (or, for a bare file, the one whose
//! table names every tensor), head counts and hyper-parameters, and the converter's
//! `general.*` keys.

use super::Shard;
use crate::arch::{self, Architecture, Heads};
use crate::error::{Error, Result};
use crate::gguf::{Metadata, Value};
use crate::model_card::ParamCount;
use crate::store::StoreTensor;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// A parsed `config.json`.
pub(super) struct Config {
    pub path: PathBuf,
    pub json: Json,
}

pub(super) fn read_config(dir: &Path) -> Result<Option<Config>> {
    let path = dir.join("config.json");
    let Some(text) = crate::input::read_in(dir, &path)? else {
        return Ok(None);
    };
    let json: Json = serde_json::from_slice(&text)
        .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
    if !json.is_object() {
        return Err(Error::format(&path, "not a JSON object"));
    }
    Ok(Some(Config { path, json }))
}

fn folder_name(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// What config.json (or its absence) says about the model being opened.
pub(super) struct Model {
    pub arch: Option<&'static Architecture>,
    /// Head counts, for the q/k permutation (only with a config.json).
    pub heads: Option<Heads>,
    pub metadata: Metadata,
    pub config: Option<Config>,
}

impl Model {
    /// The architecture and config.json, when both are known.
    pub fn with_config(&self) -> Option<(&'static Architecture, &Json, &Path)> {
        match (self.arch, &self.config) {
            (Some(a), Some(c)) => Some((a, &c.json, c.path.as_path())),
            _ => None,
        }
    }
}

/// Architecture, head counts and metadata from `config`; without one, the architecture whose
/// table names every tensor of `shards`, if any.
pub(super) fn resolve(config: Option<Config>, shards: &[Shard]) -> Result<Model> {
    Ok(match config {
        Some(c) => {
            let hf_arch = c
                .json
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(Json::as_str)
                .ok_or_else(|| Error::format(&c.path, "no `architectures` list"))?;
            let arch = arch::by_hf_name(hf_arch).ok_or_else(|| {
                Error::format(
                    &c.path,
                    format!(
                        "unsupported architecture `{hf_arch}` (smelt handles {})",
                        arch::supported_hf_names().join(", ")
                    ),
                )
            })?;
            let heads = arch.heads(&c.json).map_err(|m| Error::format(&c.path, m))?;
            arch.check_config(&c.json)
                .map_err(|m| Error::format(&c.path, m))?;
            let md = arch
                .metadata(
                    &c.json,
                    &folder_name(c.path.parent().unwrap_or(Path::new("."))),
                )
                .map_err(|m| Error::format(&c.path, m))?;
            Model {
                arch: Some(arch),
                heads: Some(heads),
                metadata: md,
                config: Some(c),
            }
        }
        None => {
            let arch = arch::ARCHITECTURES.iter().copied().find(|a| {
                shards.iter().all(|(_, _, _, entries)| {
                    entries
                        .iter()
                        .all(|e| a.is_ignored(&e.name) || a.canonical(&e.name).is_some())
                })
            });
            let mut md = Metadata::new();
            if let Some(a) = arch {
                md.set("general.architecture", Value::String(a.gguf_name.into()));
            }
            Model {
                arch,
                heads: None,
                metadata: md,
                config: None,
            }
        }
    })
}

/// The converter's `general.*` keys (name, size label, model card, sampling defaults) for the
/// model of `tensors` in `folder`, right after `general.architecture` and `general.type`,
/// before the hyper-parameters (replacing the table's plain `general.name`).
pub(super) fn with_general_metadata(
    metadata: Metadata,
    tensors: &[StoreTensor],
    folder: &Path,
    config: &Json,
) -> Result<Metadata> {
    let params = ParamCount::of(
        tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice())),
    );
    let general = crate::model_card::general_metadata(folder, config, params)?;
    let mut md = Metadata::new();
    for key in ["general.architecture", "general.type"] {
        if let Some(v) = metadata.get(key) {
            md.set(key, v.clone());
        }
    }
    let table_keys = metadata.iter().filter(|(k, _)| *k != "general.name");
    for (k, v) in general.iter().chain(table_keys) {
        md.set(k, v.clone());
    }
    Ok(md)
}
