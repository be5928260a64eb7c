//! safetensors files, sharded indexes and Hugging Face model folders, opened as a [`Store`].
//!
//! A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
//! tensor name to `{dtype, shape, data_offsets}`, then the data. Every file is memory-mapped
//! and tensors point straight into the map (zero-copy); the header is checked against the file
//! size before any tensor is used, so a damaged file gives an error naming the file and
//! tensor, never a panic.
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

/// The index file name of a sharded Hugging Face model.
pub const INDEX_NAME: &str = "model.safetensors.index.json";
/// Tensor name of llama.cpp's llama3 RoPE frequency factors.
pub const ROPE_FREQS: &str = "rope_freqs.weight";
const TOKEN_EMBD: &str = "token_embd.weight";
/// Tensor names of Phi-3's long-context RoPE factors.
pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";
pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";

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

/// The shard files of an index, each with the tensors the index places in it.
fn read_index(path: &Path) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let text = crate::input::read(path)?;
    let json: Json = serde_json::from_slice(&text)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::format(path, "no `weight_map` object"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<(String, Vec<String>)> = Vec::new();
    // Shard name → its index in `shards` (a linear search is quadratic in a hostile index).
    let mut by_shard: HashMap<&str, usize> = HashMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            Error::format(
                path,
                format!("weight_map entry `{tensor}` is {shard}, not a file name"),
            )
        })?;
        // A shard is a file beside the index: no folders, no `..`, no absolute paths.
        let plain = Path::new(shard)
            .file_name()
            .is_some_and(|n| n == std::ffi::OsStr::new(shard));
        if !plain {
            return Err(Error::format(
                path,
                format!("weight_map entry `{tensor}`: `{shard}` is not a file name in the index's folder"),
            ));
        }
        match by_shard.get(shard) {
            Some(&i) => shards[i].1.push(tensor.clone()),
            None => {
                by_shard.insert(shard, shards.len());
                shards.push((shard.to_string(), vec![tensor.clone()]));
            }
        }
    }
    if shards.is_empty() {
        return Err(Error::format(path, "weight_map is empty"));
    }
    shards.sort();
    let mut out = Vec::new();
    for (shard, mut names) in shards {
        names.sort();
        let p = dir.join(&shard);
        if !crate::input::exists(&p) {
            return Err(Error::format(
                &p,
                format!(
                    "missing shard `{shard}` listed in {} (it should hold tensor `{}`)",
                    path.display(),
                    names[0]
                ),
            ));
        }
        // A plain name may still be a link out of the folder.
        crate::input::check_inside(dir, &p)?;
        out.push((p, names));
    }
    Ok(out)
}

/// One header entry, offsets absolute in the file.
struct Entry {
    name: String,
    dtype: String,
    /// torch order (`[out, in]`).
    shape: Vec<u64>,
    start: u64,
    end: u64,
}

/// The safetensors dtype of a float type (`F32`, `F16`, `BF16`); `None` for other types.
pub fn dtype_name(ty: GgmlType) -> Option<&'static str> {
    match ty {
        GgmlType::F32 => Some("F32"),
        GgmlType::F16 => Some("F16"),
        GgmlType::BF16 => Some("BF16"),
        _ => None,
    }
}

/// `config.json`'s `torch_dtype` of a float type (`float32`, `float16`, `bfloat16`).
pub fn torch_dtype(ty: GgmlType) -> Option<&'static str> {
    match ty {
        GgmlType::F32 => Some("float32"),
        GgmlType::F16 => Some("float16"),
        GgmlType::BF16 => Some("bfloat16"),
        _ => None,
    }
}

/// A float type from its torch or ggml name, any case (`bfloat16`, `BF16`, `f32`).
pub fn float_type_named(name: &str) -> Option<GgmlType> {
    [GgmlType::F32, GgmlType::F16, GgmlType::BF16]
        .into_iter()
        .find(|&ty| {
            dtype_name(ty).is_some_and(|n| n.eq_ignore_ascii_case(name))
                || torch_dtype(ty).is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
}

/// The head of a safetensors file whose tensors (name, type, torch shape, bytes) follow it
/// back to back in this order: the 8-byte header length, then the JSON header (with
/// `__metadata__` when `metadata` is not empty), padded with spaces so the data starts
/// 8-byte aligned, as the reference writer pads it.
pub fn encode_header(
    metadata: &[(String, String)],
    tensors: &[(&str, GgmlType, &[u64], u64)],
) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, Json> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), Json::Object(meta));
    }
    let mut offset = 0u64;
    for &(name, ty, shape, n_bytes) in tensors {
        let dtype = dtype_name(ty).ok_or_else(|| {
            Error::Invalid(format!("tensor `{name}`: safetensors cannot hold {ty}"))
        })?;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n_bytes]}),
        );
        offset += n_bytes;
    }
    let mut text = serde_json::to_string(&header).expect("a JSON map serializes");
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    Ok(out)
}

/// ggml type and element size of a safetensors dtype (`None` type: not supported).
fn dtype_info(dtype: &str) -> (Option<GgmlType>, Option<u64>) {
    match dtype {
        "F32" => (Some(GgmlType::F32), Some(4)),
        "F16" => (Some(GgmlType::F16), Some(2)),
        "BF16" => (Some(GgmlType::BF16), Some(2)),
        "F64" | "I64" | "U64" => (None, Some(8)),
        "I32" | "U32" => (None, Some(4)),
        "I16" | "U16" => (None, Some(2)),
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => (None, Some(1)),
        _ => (None, None),
    }
}

fn map_file(path: &Path) -> Result<(Arc<Mmap>, Arc<File>)> {
    let file = crate::input::open(path)?;
    // SAFETY: as in `GgufFile::open`: a read-only map read as plain bytes, bounds-checked
    // against the length seen here, the file's current length checked again right before
    // tensor bytes are read (`SourceFile::bytes`). The header is read right after mapping.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok((Arc::new(map), Arc::new(file)))
}

/// The JSON header's entries in file order, keeping duplicates so they can be reported.
struct Pairs(Vec<(String, Json)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, Json>()? {
                    out.push(kv);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parse and check the header of safetensors file `path` mapped as `map`.
fn parse_header(path: &Path, map: &[u8]) -> Result<Vec<Entry>> {
    let file_len = map.len() as u64;
    if file_len < 8 {
        return Err(Error::format(
            path,
            format!("truncated safetensors file: {file_len} bytes, too short for the 8-byte header length"),
        ));
    }
    let header_len = u64::from_le_bytes(map[..8].try_into().unwrap());
    if header_len > file_len - 8 {
        return Err(Error::format(
            path,
            format!(
                "safetensors header length {header_len} runs past the end of the file ({file_len} bytes); truncated or not a safetensors file"
            ),
        ));
    }
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let Pairs(pairs) = serde_json::from_slice(&map[8..data_start as usize])
        .map_err(|e| Error::format(path, format!("bad safetensors JSON header: {e}")))?;
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for (name, v) in pairs {
        if !seen.insert(name.clone()) {
            return Err(Error::format(
                path,
                format!("tensor `{name}` appears twice in the header"),
            ));
        }
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| Error::format(path, format!("tensor `{name}`: {what}"));
        let dtype = v
            .get("dtype")
            .and_then(Json::as_str)
            .ok_or_else(|| bad("no string `dtype`"))?
            .to_string();
        let shape: Vec<u64> = v
            .get("shape")
            .and_then(Json::as_array)
            .and_then(|a| a.iter().map(Json::as_u64).collect())
            .ok_or_else(|| bad("`shape` is not a list of non-negative integers"))?;
        let offsets: Vec<u64> = v
            .get("data_offsets")
            .and_then(Json::as_array)
            .and_then(|a| a.iter().map(Json::as_u64).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad("`data_offsets` is not a pair of non-negative integers"))?;
        let (begin, end) = (offsets[0], offsets[1]);
        if begin > end || end > data_len {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] lie outside the data section ({data_len} bytes); truncated file?"
            )));
        }
        if let (_, Some(size)) = dtype_info(&dtype) {
            // Zero dimensions aside, the size must fit: then so does a row's, even in a tensor
            // with a zero dimension and no data.
            if (shape.iter())
                .try_fold(size, |acc, &d| acc.checked_mul(d.max(1)))
                .is_none()
            {
                return Err(bad(&format!(
                    "shape {shape:?} of dtype {dtype} needs more than 2^64 bytes"
                )));
            }
            let need = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
            if need != Some(end - begin) {
                return Err(bad(&format!(
                    "shape {shape:?} of dtype {dtype} needs {} bytes but data_offsets [{begin}, {end}] hold {}",
                    need.map_or("more than 2^64".to_string(), |n| n.to_string()),
                    end - begin
                )));
            }
        }
        entries.push(Entry {
            name,
            dtype,
            shape,
            start: data_start + begin,
            end: data_start + end,
        });
    }
    let mut by_offset: Vec<&Entry> = entries.iter().filter(|e| e.end > e.start).collect();
    by_offset.sort_by_key(|e| (e.start, e.end));
    for w in by_offset.windows(2) {
        if w[1].start < w[0].end {
            return Err(Error::format(
                path,
                format!(
                    "tensors `{}` and `{}` overlap in the data section",
                    w[0].name, w[1].name
                ),
            ));
        }
    }
    Ok(entries)
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
        if a.longrope_factors {
            let factors = arch::longrope_factors(json, a).map_err(|m| Error::format(cp, m))?;
            if let Some((long, short)) = factors {
                for (k, (name, values)) in [(ROPE_FACTORS_LONG, long), (ROPE_FACTORS_SHORT, short)]
                    .into_iter()
                    .enumerate()
                {
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
    }
    if let (Some(a), Some(cp)) = (arch, &config_path) {
        if a.trim_embd_to_tokenizer {
            if let Some(n) = tokenizer_vocab_len(cp)? {
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
    })
}

/// The real vocabulary size as `Gemma3Model.modify_tensors` counts it: `None` when the folder
/// has a `tokenizer.model` (the converter pads that vocabulary to `vocab_size`, so nothing is
/// trimmed) or no `tokenizer.json`.
fn tokenizer_vocab_len(config_path: &Path) -> Result<Option<usize>> {
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let path = dir.join("tokenizer.json");
    if crate::input::exists(&dir.join("tokenizer.model")) {
        return Ok(None);
    }
    let Some(text) = crate::input::read_in(dir, &path)? else {
        return Ok(None);
    };
    let json: Json = serde_json::from_slice(&text)
        .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
    let vocab = json
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(|v| {
            v.as_object()
                .map(|o| o.len())
                .or(v.as_array().map(Vec::len))
        })
        .ok_or_else(|| Error::format(&path, "no `model.vocab`"))?;
    let added = json
        .get("added_tokens")
        .and_then(Json::as_array)
        .map_or(0, Vec::len);
    Ok(Some(vocab + added))
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
#[path = "safetensors_tests.rs"]
mod tests;
