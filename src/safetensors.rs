//! safetensors files, sharded checkpoints (`model.safetensors.index.json`) and Hugging Face
//! folders, memory-mapped and zero-copy: each tensor of the store points into its shard.
//!
//! In a folder, config.json picks the architecture table (`arch`), which renames tensors to
//! llama.cpp's canonical names, sets their row permutation and writes the hyper-parameters.
//! A bare file or index without config.json keeps its tensor names (and shapes) as stored.
//! Tokenizer metadata is added by the tokenizer module, not here.

use crate::arch::{self, ArchTable, Mapped};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Metadata, Value};
use crate::store::{RowOrder, SourceFile, Store, StoreTensor};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One tensor entry of a safetensors header.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub ty: GgmlType,
    /// torch order (`[out, in]`).
    pub torch_shape: Vec<u64>,
    /// Absolute file offset of the data.
    pub offset: u64,
    pub n_bytes: u64,
}

/// A parsed, memory-mapped safetensors file.
pub struct SafetensorsFile {
    pub path: PathBuf,
    pub map: Arc<Mmap>,
    /// In file order (by data offset).
    pub entries: Vec<Entry>,
    /// Unsupported dtypes seen, by tensor name (reported only if such a tensor is used).
    pub unsupported: BTreeMap<String, String>,
}

fn dtype(s: &str) -> Option<GgmlType> {
    match s {
        "F32" => Some(GgmlType::F32),
        "F16" => Some(GgmlType::F16),
        "BF16" => Some(GgmlType::BF16),
        _ => None,
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map; we rely on the file not changing while smelt runs (as every
        // mmap reader does), and bounds-check every offset against the length seen here.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let len = map.len() as u64;
        if len < 8 {
            return Err(Error::format(
                path,
                "truncated: no safetensors header length",
            ));
        }
        let header_len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
        if header_len > len - 8 {
            return Err(Error::format(
                path,
                format!("header length {header_len} runs past the end of the file ({len} bytes); truncated or not safetensors"),
            ));
        }
        let data_start = 8 + header_len;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&map[8..data_start as usize])
                .map_err(|e| Error::format(path, format!("bad safetensors JSON header: {e}")))?;
        let mut entries = Vec::new();
        let mut unsupported = BTreeMap::new();
        for (name, info) in &header {
            if name == "__metadata__" {
                continue;
            }
            let bad = |msg: &str| Error::format(path, format!("tensor `{name}`: {msg}"));
            let dt = info
                .get("dtype")
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad("no dtype"))?;
            let shape: Vec<u64> = info
                .get("shape")
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| {
                    d.as_u64()
                        .ok_or_else(|| bad("shape entries must be non-negative integers"))
                })
                .collect::<Result<_>>()?;
            let offs = info
                .get("data_offsets")
                .and_then(|v| v.as_array())
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
                .ok_or_else(|| bad("data_offsets must be [begin, end]"))?;
            if offs.1 < offs.0 || offs.1 > len - data_start {
                return Err(bad(&format!(
                    "data {}..{} runs past the end of the file's {} data bytes; truncated?",
                    offs.0,
                    offs.1,
                    len - data_start
                )));
            }
            let Some(ty) = dtype(dt) else {
                unsupported.insert(name.clone(), dt.to_string());
                continue;
            };
            let n: u64 = shape.iter().product();
            if n * ty.type_size() as u64 != offs.1 - offs.0 {
                return Err(bad(&format!(
                    "shape {shape:?} of {dt} needs {} bytes but data_offsets hold {}",
                    n * ty.type_size() as u64,
                    offs.1 - offs.0
                )));
            }
            entries.push(Entry {
                name: name.clone(),
                ty,
                torch_shape: shape,
                offset: data_start + offs.0,
                n_bytes: offs.1 - offs.0,
            });
        }
        entries.sort_by_key(|e| e.offset);
        for w in entries.windows(2) {
            if w[0].offset + w[0].n_bytes > w[1].offset {
                return Err(Error::format(
                    path,
                    format!("tensors `{}` and `{}` overlap", w[0].name, w[1].name),
                ));
            }
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map: Arc::new(map),
            entries,
            unsupported,
        })
    }
}

/// Shard files of an index, in weight_map order of first appearance, with their tensors.
fn read_index(index: &Path) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(index, format!("bad JSON: {e}")))?;
    let map = doc
        .get("weight_map")
        .and_then(|v| v.as_object())
        .ok_or_else(|| Error::format(index, "no weight_map"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::format(index, format!("weight_map[`{tensor}`] is not a file name"))
        })?;
        let p = dir.join(file);
        match shards.iter_mut().find(|(q, _)| *q == p) {
            Some((_, names)) => names.push(tensor.clone()),
            None => shards.push((p, vec![tensor.clone()])),
        }
    }
    shards.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(shards)
}

/// The safetensors files of a folder or index, each checked to exist (and to hold what the
/// index promises).
fn open_shards(path: &Path) -> Result<Vec<SafetensorsFile>> {
    let is_index = path.is_file() && path.to_string_lossy().ends_with(".index.json");
    let index = if is_index {
        Some(path.to_path_buf())
    } else {
        None
    }
    .or_else(|| Some(path.join("model.safetensors.index.json")).filter(|p| p.is_file()));
    if let Some(index) = index {
        let mut files = Vec::new();
        for (shard, names) in read_index(&index)? {
            if !shard.is_file() {
                return Err(Error::format(
                    &shard,
                    format!(
                        "missing shard named by {} (it should hold `{}`)",
                        index.display(),
                        names[0]
                    ),
                ));
            }
            let f = SafetensorsFile::open(&shard)?;
            let have: HashSet<&str> = f
                .entries
                .iter()
                .map(|e| e.name.as_str())
                .chain(f.unsupported.keys().map(|k| k.as_str()))
                .collect();
            if let Some(missing) = names.iter().find(|n| !have.contains(n.as_str())) {
                return Err(Error::format(
                    &shard,
                    format!("tensor `{missing}` named by the index is not in this shard"),
                ));
            }
            files.push(f);
        }
        return Ok(files);
    }
    if path.is_file() {
        return Ok(vec![SafetensorsFile::open(path)?]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(Error::format(
            path,
            "no .safetensors files and no model.safetensors.index.json",
        ));
    }
    found.iter().map(|p| SafetensorsFile::open(p)).collect()
}

/// A Hugging Face folder: config.json + safetensors (single or sharded).
pub fn open_hf_folder(dir: &Path) -> Result<Store> {
    let cfg_path = dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg: serde_json::Value = serde_json::from_str(&cfg_text)
        .map_err(|e| Error::format(&cfg_path, format!("bad JSON: {e}")))?;
    let hf_arch = cfg
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .ok_or_else(|| Error::format(&cfg_path, "no `architectures` entry"))?;
    let table = arch::find(hf_arch).ok_or_else(|| {
        Error::format(
            &cfg_path,
            format!(
                "unsupported architecture {hf_arch}; supported: {}",
                arch::supported().join(", ")
            ),
        )
    })?;
    let files = open_shards(dir)?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    build_store(files, Some((table, &cfg)), &name)
}

/// A single `.safetensors` file or a `model.safetensors.index.json`; with a config.json beside
/// it, read as the folder it belongs to.
pub fn open_file(path: &Path) -> Result<Store> {
    if let Some(dir) = path.parent().filter(|d| d.join("config.json").is_file()) {
        let is_the_folders = path
            .file_name()
            .is_some_and(|n| n == "model.safetensors.index.json")
            || !dir.join("model.safetensors.index.json").is_file();
        if is_the_folders {
            let files = open_shards(path)?;
            let cfg_path = dir.join("config.json");
            let cfg: serde_json::Value = std::fs::read_to_string(&cfg_path)
                .map_err(|e| Error::io(&cfg_path, e))
                .and_then(|t| {
                    serde_json::from_str(&t).map_err(|e| Error::format(&cfg_path, e.to_string()))
                })?;
            if let Some(table) = cfg
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|a| a.as_str())
                .and_then(arch::find)
            {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return build_store(files, Some((table, &cfg)), &stem);
            }
        }
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    build_store(open_shards(path)?, None, &stem)
}

fn build_store(
    files: Vec<SafetensorsFile>,
    arch: Option<(&ArchTable, &serde_json::Value)>,
    name: &str,
) -> Result<Store> {
    let mut metadata = Metadata::new();
    if let Some((table, cfg)) = arch {
        metadata.set(
            "general.architecture",
            Value::String(table.gguf_arch.into()),
        );
        metadata.set("general.type", Value::String("model".into()));
        metadata.set("general.name", Value::String(name.into()));
        (table.hparams)(cfg, &mut metadata);
    }
    let mut tensors = Vec::new();
    let mut seen = HashSet::new();
    let mut sources = Vec::new();
    for (fi, f) in files.into_iter().enumerate() {
        if let (Some((table, cfg)), Some((tname, dt))) = (arch, f.unsupported.iter().next()) {
            if table.map_hf(tname, cfg) != Some(Mapped::Ignored) {
                return Err(Error::format(
                    &f.path,
                    format!("unsupported dtype {dt} in tensor `{tname}`"),
                ));
            }
        } else if let Some((tname, dt)) = f.unsupported.iter().next() {
            return Err(Error::format(
                &f.path,
                format!("unsupported dtype {dt} in tensor `{tname}`"),
            ));
        }
        for e in &f.entries {
            let (name, rows) = match arch {
                None => (e.name.clone(), RowOrder::AsStored),
                Some((table, cfg)) => match table.map_hf(&e.name, cfg) {
                    Some(Mapped::Tensor { name, rows }) => (name, rows),
                    Some(Mapped::Ignored) => continue,
                    None => {
                        return Err(Error::format(
                            &f.path,
                            format!(
                                "tensor `{}` has no llama.cpp name in the {} table",
                                e.name, table.gguf_arch
                            ),
                        ))
                    }
                },
            };
            if !seen.insert(name.clone()) {
                return Err(Error::format(
                    &f.path,
                    format!("duplicate tensor `{}`", e.name),
                ));
            }
            let shape: Vec<u64> = if e.torch_shape.is_empty() {
                vec![1]
            } else {
                e.torch_shape.iter().rev().copied().collect()
            };
            if let RowOrder::HeadPermute { n_head } = rows {
                let n_rows: u64 = shape[1..].iter().product();
                if n_head == 0 || n_rows % (2 * n_head as u64) != 0 {
                    return Err(Error::format(
                        &f.path,
                        format!("tensor `{}`: {n_rows} rows do not split into {n_head} heads of two rotary halves", e.name),
                    ));
                }
            }
            tensors.push(StoreTensor {
                name,
                shape,
                ty: e.ty,
                file: fi,
                offset: e.offset,
                n_bytes: e.n_bytes,
                rows,
            });
        }
        sources.push(SourceFile {
            path: f.path,
            map: f.map,
        });
    }
    Ok(Store {
        metadata,
        tensors,
        files: sources,
    })
}
