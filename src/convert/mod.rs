//! Hugging Face models (folders, sharded indexes, bare safetensors files) converted as
//! llama.cpp's `convert_hf_to_gguf.py` converts them, opened as a [`Store`] without copying:
//! the file format itself is [`crate::formats::safetensors`].
//!
//! Inputs:
//! - a Hugging Face folder: `config.json` plus `model.safetensors.index.json` (sharded) or
//!   `.safetensors` files. Other files (tokenizer files, generation config) are left alone:
//!   tokenizer metadata is added by the tokenizer module.
//! - a `.safetensors` file or a `*.safetensors.index.json` index: a `config.json` in the same
//!   folder is used when there is one.
//!
//! With a `config.json`, its `architectures[0]` picks the [`Architecture`](crate::arch) table:
//! names become llama.cpp's canonical names, q/k rows are presented in llama.cpp's head order
//! ([`RowOrder::HeadPermute`]), Gemma's norms get their `+ 1` as they are read
//! ([`Transform`]), MoE experts are stacked into one tensor whose rows come from each
//! expert's own bytes ([`StoreTensor::parts`]), 16-bit 1-D tensors, norms and routers present
//! as F32, and the metadata holds the hyper-parameters. Tensors come in the converter's order:
//! generated ones (RoPE factors) first, then shard by shard, each shard's tensors by name.
//!
//! Without a `config.json` (a bare file), when every tensor name matches an architecture's
//! table the names are converted and `general.architecture` is the only metadata; otherwise
//! the names are kept as they are and the metadata is empty. In both cases the rows are kept
//! in stored (Hugging Face) order: the head counts needed for the q/k permutation are not
//! known without `config.json`, so such a store is fine for tensor-wise work (merging two
//! bare files) but is not a runnable llama.cpp model.
//!
//! Supported dtypes are F32, F16 and BF16. Tensors the architecture ignores
//! (`rotary_emb.inv_freq`) are skipped whatever their dtype; any other dtype is an error.

mod config;
mod generated;
mod map;
mod stack;

use crate::error::{Error, Result};
use crate::formats::safetensors::{map_file, parse_header, read_index, Entry, INDEX_NAME};
use crate::store::{Store, StoreTensor};
use config::{read_config, Config};
use memmap2::Mmap;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tensor name of llama.cpp's llama3 RoPE frequency factors.
pub const ROPE_FREQS: &str = "rope_freqs.weight";
const TOKEN_EMBD: &str = "token_embd.weight";
/// Tensor names of Phi-3's long-context RoPE factors.
pub use crate::arch::{ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT};

/// Open a Hugging Face model folder.
pub fn open_hf_folder(path: &Path) -> Result<Store> {
    open_hf_folder_with(path, &crate::tokenizer::TokenizerOptions::default())
}

/// Open a Hugging Face model folder; `tok` steers its tokenizer metadata.
pub fn open_hf_folder_with(path: &Path, tok: &crate::tokenizer::TokenizerOptions) -> Result<Store> {
    let config = read_config(path)?;
    let index = path.join(INDEX_NAME);
    let files = if crate::input::exists(&index) {
        crate::input::check_inside(path, &index)?;
        read_index(&index)?
    } else {
        // Every `.safetensors` entry, whatever it is: one that is not a regular file is
        // refused when it is opened, not skipped.
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(".safetensors"))
            })
            .collect();
        found.sort();
        // Mistral folders may hold `consolidated.safetensors` beside the HF-named files.
        if found.len() > 1 {
            found.retain(|p| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("consolidated")
            });
        }
        if found.is_empty() {
            return Err(Error::format(
                path,
                format!("no {INDEX_NAME} and no .safetensors file in this folder (PyTorch .bin checkpoints are not supported)"),
            ));
        }
        for p in &found {
            crate::input::check_inside(path, p)?;
        }
        found.into_iter().map(|p| (p, Vec::new())).collect()
    };
    let mut store = build(path, files, config)?;
    let tokenizer = crate::tokenizer::metadata(path, tok)?;
    if tokenizer.is_empty() {
        store.warnings.push(format!(
            "{} has no tokenizer files (tokenizer.json or tokenizer.model): the GGUF has no vocabulary and llama.cpp will not load it",
            path.display()
        ));
    }
    for (k, v) in tokenizer.iter() {
        store.metadata.set(k, v.clone());
    }
    Ok(store)
}

/// Open one `.safetensors` file or a `*.safetensors.index.json` index.
pub fn open_file(path: &Path) -> Result<Store> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let config = read_config(&dir)?;
    let is_index = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().to_lowercase().ends_with(".index.json"));
    let files = if is_index {
        read_index(path)?
    } else {
        vec![(path.to_path_buf(), Vec::new())]
    };
    build(path, files, config)
}

/// Where a tensor goes in the store: `convert_hf_to_gguf.py`'s order. Generated tensors
/// (RoPE factors) first, then the shards in file-name order, each shard's tensors in name
/// order (as gguf-py's `SafetensorsLocal` lists them); a stacked tensor goes where its last
/// part is, its siblings in rule order.
type Key = (u8, usize, String, usize);

/// A tensor on its way into the store, with its sort key.
struct Pending {
    key: Key,
    tensor: StoreTensor,
}

/// One safetensors file opened: its path, map, file and header entries.
type Shard = (PathBuf, Arc<Mmap>, Arc<File>, Vec<Entry>);

/// Open the safetensors `files` (each with the tensors an index expects in it) as one store,
/// in the converter's steps: read the headers, resolve the architecture, map each shard's
/// tensors, stack experts, generate tensors, trim the embedding, order everything.
fn build(
    origin: &Path,
    files: Vec<(PathBuf, Vec<String>)>,
    config: Option<Config>,
) -> Result<Store> {
    let parsed = read_headers(files)?;
    let model = config::resolve(config, &parsed)?;
    let n_expert = match model.with_config() {
        Some((a, json, cp)) => a.n_expert(json).map_err(|m| Error::format(cp, m))?,
        None => None,
    };
    let map::Mapped {
        mut pending,
        mut generated,
        stacks,
        mut source_files,
    } = map::map_shards(parsed, &model)?;
    stack::stack_experts(stacks, n_expert, &mut pending)?;
    generated::generate_tensors(&model, &mut generated)?;
    generated::trim_embd(&model, &mut pending)?;
    if let Some((file, tensors)) = generated.into_file(origin, source_files.len())? {
        source_files.push(file);
        pending.extend(tensors);
    }
    pending.sort_by(|a, b| a.key.cmp(&b.key));
    let tensors: Vec<StoreTensor> = pending.into_iter().map(|p| p.tensor).collect();
    let metadata = match &model.config {
        Some(c) => {
            let folder = c.path.parent().unwrap_or(Path::new("."));
            config::with_general_metadata(model.metadata, &tensors, folder, &c.json)?
        }
        None => model.metadata,
    };
    Ok(Store {
        metadata,
        tensors,
        files: source_files,
        warnings: Vec::new(),
        adapters: Default::default(),
    })
}

/// Each file mapped and its header parsed; a tensor the index places in a file whose header
/// lacks it is an error.
fn read_headers(files: Vec<(PathBuf, Vec<String>)>) -> Result<Vec<Shard>> {
    let mut parsed = Vec::new();
    for (path, expected) in files {
        let (map, file) = map_file(&path)?;
        let entries = parse_header(&path, &map)?;
        let names: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        if let Some(missing) = expected.iter().find(|n| !names.contains(n.as_str())) {
            return Err(Error::format(
                &path,
                format!("the index places tensor `{missing}` in this shard but its header has no such tensor"),
            ));
        }
        drop(names);
        parsed.push((path, map, file, entries));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
