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

use crate::arch::{self, Architecture, Heads, Permute};
use crate::error::{Error, Result};
use crate::formats::safetensors::{dtype_info, map_file, parse_header, read_index, INDEX_NAME};
use crate::gguf::reader::MAX_DIMS;
use crate::gguf::{GgmlType, Metadata, Value};
use crate::model_card::ParamCount;
use crate::store::{RowOrder, SourceFile, Store, StoreTensor, Transform};
use memmap2::Mmap;
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
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

/// The converter's `general.*` keys (name, size label, model card, sampling defaults) for the
/// model of `tensors` in `folder`, right after `general.architecture` and `general.type`,
/// before the hyper-parameters (replacing the table's plain `general.name`).
fn with_general_metadata(
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

/// A parsed `config.json`.
struct Config {
    path: PathBuf,
    json: Json,
}

fn read_config(dir: &Path) -> Result<Option<Config>> {
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

/// Tensors made at open time (permuted biases, llama3 RoPE factors), written to one
/// unlinked temporary file and mapped like the inputs.
#[derive(Default)]
struct Generated {
    bytes: Vec<u8>,
    tensors: Vec<Pending>,
}

impl Generated {
    fn push(&mut self, key: Key, name: String, shape: Vec<u64>, ty: GgmlType, data: &[u8]) {
        while self.bytes.len() % 32 != 0 {
            self.bytes.push(0);
        }
        let offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(data);
        self.tensors.push(Pending {
            key,
            // The file index is set once the file exists.
            tensor: StoreTensor::plain(name, shape, ty, usize::MAX, offset, data.len() as u64),
        });
    }

    /// Write the bytes to an unlinked temporary file and map it: pages stay file-backed, so
    /// [`Store::release`] may drop them like those of the inputs.
    fn into_file(self, origin: &Path, index: usize) -> Result<Option<(SourceFile, Vec<Pending>)>> {
        if self.tensors.is_empty() {
            return Ok(None);
        }
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = std::env::temp_dir().join(format!(
            "smelt-generated-{}-{}.bin",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<File> {
            std::fs::write(&tmp, &self.bytes)?;
            File::open(&tmp)
        };
        let file = write();
        let _ = std::fs::remove_file(&tmp);
        let file = file.map_err(|e| Error::io(&tmp, e))?;
        // SAFETY: read-only map of a private temporary file that nothing else can reach once
        // it is unlinked (above), so it cannot change underneath the map.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&tmp, e))?;
        let mut tensors = self.tensors;
        for p in &mut tensors {
            p.tensor.file = index;
        }
        let mut name = origin.as_os_str().to_owned();
        name.push(" (generated tensors)");
        Ok(Some((
            SourceFile {
                path: PathBuf::from(name),
                map: Arc::new(map),
                file: Arc::new(file),
            },
            tensors,
        )))
    }
}

/// Element-wise llama.cpp head permutation of a 1-D tensor (a q/k bias): value `(h, i, j)`
/// of the `(n_head, n/n_head/2, 2)` grid is stored value `(h, j, i)`.
fn permute_elements(raw: &[u8], elem: usize, order: RowOrder) -> Vec<u8> {
    let n = raw.len() / elem;
    let mut out = Vec::with_capacity(raw.len());
    for k in 0..n {
        let s = order.stored_row(k, n);
        out.extend_from_slice(&raw[s * elem..(s + 1) * elem]);
    }
    out
}

/// Open the safetensors `files` (each with the tensors an index expects in it) as one store.
fn build(
    origin: &Path,
    files: Vec<(PathBuf, Vec<String>)>,
    config: Option<Config>,
) -> Result<Store> {
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

    // Architecture, head counts and metadata.
    let config_path = config.as_ref().map(|c| c.path.clone());
    let (arch, heads, metadata, config_json): (
        Option<&Architecture>,
        Option<Heads>,
        Metadata,
        Option<Json>,
    ) = match config {
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
            (Some(arch), Some(heads), md, Some(c.json))
        }
        None => {
            let arch = arch::ARCHITECTURES.iter().copied().find(|a| {
                parsed.iter().all(|(_, _, _, entries)| {
                    entries
                        .iter()
                        .all(|e| a.is_ignored(&e.name) || a.canonical(&e.name).is_some())
                })
            });
            let mut md = Metadata::new();
            if let Some(a) = arch {
                md.set("general.architecture", Value::String(a.gguf_name.into()));
            }
            (arch, None, md, None)
        }
    };

    let n_expert = match (arch, &config_json, &config_path) {
        (Some(a), Some(json), Some(cp)) => a.n_expert(json).map_err(|m| Error::format(cp, m))?,
        _ => None,
    };
    let mut pending = Vec::new();
    let mut generated = Generated::default();
    let mut owner: HashMap<String, PathBuf> = HashMap::new();
    let mut stacks: HashMap<String, Stack> = HashMap::new();
    let mut source_files = Vec::new();
    let mut serial = 0usize;
    for (fi, (path, map, file, entries)) in parsed.into_iter().enumerate() {
        let mut entries = entries;
        if arch.is_some() {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
        }
        for e in entries {
            if arch.is_some_and(|a| a.is_ignored(&e.name)) {
                continue;
            }
            let bad = |m: String| Error::format(&path, format!("tensor `{}`: {m}", e.name));
            let stored = dtype_info(&e.dtype).0.ok_or_else(|| {
                Error::format(
                    &path,
                    format!(
                        "unsupported dtype {} in tensor `{}` (smelt reads F32, F16 and BF16)",
                        e.dtype, e.name
                    ),
                )
            })?;
            if e.shape.len() > MAX_DIMS {
                return Err(bad(format!(
                    "{} dimensions, ggml allows {MAX_DIMS}",
                    e.shape.len()
                )));
            }
            let mut shape: Vec<u64> = e.shape.iter().rev().copied().collect();
            if shape.is_empty() {
                shape.push(1);
            }
            let mapped = match arch {
                Some(a) => Some(a.canonical(&e.name).ok_or_else(|| {
                    bad(format!(
                        "no {} tensor is called this (the {} table has no rule for it)",
                        a.gguf_name, a.gguf_name
                    ))
                })?),
                None => None,
            };
            let key: Key = match &mapped {
                Some(_) => (1, fi, e.name.clone(), 0),
                None => (1, fi, String::new(), serial),
            };
            serial += 1;
            let name = mapped.as_ref().map_or(e.name.clone(), |m| m.name.clone());
            let ty = if mapped.is_some() {
                converted_type(&name, e.shape.len(), stored)
            } else {
                stored
            };
            let mut tensor = StoreTensor {
                ty,
                stored,
                transform: mapped.as_ref().map_or(Transform::None, |m| m.transform),
                ..StoreTensor::plain(name.clone(), shape, stored, fi, e.start, e.end - e.start)
            };
            if let Some(expert) = mapped.as_ref().and_then(|m| m.expert) {
                let rule = mapped.as_ref().map_or(0, |m| m.rule);
                let stack = stacks.entry(name.clone()).or_insert_with(|| Stack {
                    rule,
                    parts: Vec::new(),
                });
                if stack.parts.iter().any(|p| p.expert == expert) {
                    return Err(bad(format!("expert {expert} of `{name}` appears twice")));
                }
                stack.parts.push(StackPart {
                    expert,
                    key,
                    path: path.clone(),
                    hf_name: e.name.clone(),
                    tensor,
                });
                continue;
            }
            if let Some(prev) = owner.insert(name.clone(), path.clone()) {
                return Err(Error::format(
                    &path,
                    format!("tensor `{}` ({name}) is also in {}", e.name, prev.display()),
                ));
            }
            let permute = mapped.as_ref().map_or(Permute::None, |m| m.permute);
            if let (Some(a), Some(h)) = (arch, heads) {
                if permute != Permute::None {
                    let one_d = tensor.shape.len() == 1;
                    let n = if one_d {
                        tensor.shape[0] as usize
                    } else {
                        tensor.n_rows()
                    };
                    let order = a.row_order(permute, h, n).map_err(bad)?;
                    if one_d {
                        // Small: permuted (and widened to F32, exactly) at open time.
                        let raw = &map[e.start as usize..e.end as usize];
                        let data = permute_elements(raw, stored.type_size(), order);
                        let mut values = vec![0f32; data.len() / stored.type_size()];
                        crate::quant::dequantize_row(stored, &data, &mut values)
                            .map_err(|q| bad(q.to_string()))?;
                        tensor.transform.apply_to(stored, &mut values);
                        let (gty, bytes) = encode_presented(tensor.ty, &values);
                        generated.push(key, tensor.name, tensor.shape, gty, &bytes);
                        continue;
                    }
                    tensor.rows = order;
                }
            }
            pending.push(Pending { key, tensor });
        }
        source_files.push(SourceFile { path, map, file });
    }

    // Stacked tensors: every expert present once, all parts alike. The converter emits a
    // layer's stacks together once the layer's last expert tensor has been read.
    let mut stacks: Vec<(String, Stack)> = stacks.into_iter().collect();
    stacks.sort_by(|a, b| a.0.cmp(&b.0));
    let mut layer_last: HashMap<Option<usize>, Key> = HashMap::new();
    for (name, stack) in &stacks {
        let block = arch::layer_index(name).map(|(b, _)| b);
        for p in &stack.parts {
            let last = layer_last.entry(block).or_insert_with(|| p.key.clone());
            if p.key > *last {
                *last = p.key.clone();
            }
        }
    }
    for (name, mut stack) in stacks {
        stack.parts.sort_by_key(|p| p.expert);
        let first = &stack.parts[0];
        let want = n_expert.unwrap_or(stack.parts.len());
        let missing = (0..want).find(|&x| stack.parts.get(x).is_none_or(|p| p.expert != x));
        if missing.is_some() || stack.parts.len() != want {
            let what = match missing {
                Some(x) => format!("expert {x} is missing"),
                None => format!(
                    "it has {} experts, the config says {want}",
                    stack.parts.len()
                ),
            };
            return Err(Error::format(
                &first.path,
                format!("stacked tensor `{name}` (from `{}`): {what}", first.hf_name),
            ));
        }
        for p in &stack.parts[1..] {
            let (a, b) = (&first.tensor, &p.tensor);
            if (&a.shape, a.stored) != (&b.shape, b.stored) {
                return Err(Error::format(
                    &p.path,
                    format!(
                        "tensor `{}` is {} {:?} but expert 0 of `{name}` (`{}`) is {} {:?}; the experts of one tensor must match",
                        p.hf_name, b.stored, b.shape, first.hf_name, a.stored, a.shape
                    ),
                ));
            }
        }
        if first.tensor.shape.len() >= MAX_DIMS {
            return Err(Error::format(
                &first.path,
                format!(
                    "tensor `{}`: stacking {} dimensions of experts gives more than ggml's {MAX_DIMS}",
                    first.hf_name,
                    first.tensor.shape.len()
                ),
            ));
        }
        let block = arch::layer_index(&name).map(|(b, _)| b);
        let (k0, k1, k2, _) = layer_last.get(&block).cloned().unwrap_or_default();
        let key = (k0, k1, k2, stack.rule);
        let mut tensor = first.tensor.clone();
        tensor.shape.push(stack.parts.len() as u64);
        tensor.n_bytes *= stack.parts.len() as u64;
        tensor.parts = stack
            .parts
            .iter()
            .map(|p| (p.tensor.file, p.tensor.offset))
            .collect();
        pending.push(Pending { key, tensor });
    }

    if let (Some(a), Some(json), Some(cp)) = (arch, &config_json, &config_path) {
        let freqs = arch::llama3_rope_freqs(json, a).map_err(|m| Error::format(cp, m))?;
        if let Some(f) = freqs {
            let bytes: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
            generated.push(
                (0, 0, String::new(), 0),
                ROPE_FREQS.into(),
                vec![f.len() as u64],
                GgmlType::F32,
                &bytes,
            );
        }
        if let Some(hook) = a.hooks.generated_tensors {
            let tensors = hook(json, a).map_err(|m| Error::format(cp, m))?;
            for (k, (name, values)) in tensors.into_iter().enumerate() {
                let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                generated.push(
                    (0, 0, String::new(), k),
                    name.into(),
                    vec![values.len() as u64],
                    GgmlType::F32,
                    &bytes,
                );
            }
        }
    }
    if let (Some(a), Some(cp)) = (arch, &config_path) {
        if let Some(embd_rows) = a.hooks.embd_rows {
            if let Some(n) = embd_rows(cp.parent().unwrap_or(Path::new(".")))? {
                if let Some(p) = pending.iter_mut().find(|p| p.tensor.name == TOKEN_EMBD) {
                    let t = &mut p.tensor;
                    if t.shape.len() == 2 && t.parts.is_empty() && (n as u64) < t.shape[1] {
                        t.shape[1] = n as u64;
                        t.n_bytes = (n * t.row_bytes()) as u64;
                    }
                }
            }
        }
    }
    if let Some((file, tensors)) = generated.into_file(origin, source_files.len())? {
        source_files.push(file);
        pending.extend(tensors);
    }
    pending.sort_by(|a, b| a.key.cmp(&b.key));
    let tensors: Vec<StoreTensor> = pending.into_iter().map(|p| p.tensor).collect();
    let metadata = match (&config_json, &config_path) {
        (Some(json), Some(cp)) => {
            let folder = cp.parent().unwrap_or(Path::new("."));
            with_general_metadata(metadata, &tensors, folder, json)?
        }
        _ => metadata,
    };
    Ok(Store {
        metadata,
        tensors,
        files: source_files,
        warnings: Vec::new(),
        adapters: Default::default(),
    })
}

/// One expert's part of a stacked tensor.
struct StackPart {
    expert: usize,
    key: Key,
    path: PathBuf,
    hf_name: String,
    tensor: StoreTensor,
}

/// The parts of one stacked tensor found so far.
struct Stack {
    rule: usize,
    parts: Vec<StackPart>,
}

/// The type `convert_hf_to_gguf.py` gives tensor `name` (with `n_dims` dimensions) stored as
/// `stored`: 1-D tensors, norms, biases and MoE routers are widened to F32 whatever the output
/// type; the rest keep their type (and are converted by the output type later).
fn converted_type(name: &str, n_dims: usize, stored: GgmlType) -> GgmlType {
    let widened = n_dims <= 1
        || name.ends_with("_norm.weight")
        || !name.ends_with(".weight")
        || name.ends_with(".ffn_gate_inp.weight");
    if widened && matches!(stored, GgmlType::F16 | GgmlType::BF16) {
        GgmlType::F32
    } else {
        stored
    }
}

/// Values as bytes of `ty` (F32, or the 16-bit type they came from).
fn encode_presented(ty: GgmlType, values: &[f32]) -> (GgmlType, Vec<u8>) {
    let mut out = vec![0u8; values.len() * ty.type_size()];
    match crate::quant::float::quantize_row(ty, values, &mut out) {
        Ok(()) => (ty, out),
        Err(_) => (
            GgmlType::F32,
            values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    }
}

#[cfg(test)]
mod tests;
