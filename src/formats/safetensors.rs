//! The safetensors file format: an 8-byte little-endian header length, a JSON header mapping
//! each tensor name to `{dtype, shape, data_offsets}`, then the data; and the sharded index
//! (`model.safetensors.index.json`). Files are memory-mapped and tensors point straight into
//! the map (zero-copy); the header is checked against the file size before any tensor is used,
//! so a damaged file gives an error naming the file and tensor, never a panic. Conversion of
//! what the files hold into llama.cpp's model is `crate::convert`'s.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use memmap2::Mmap;
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The index file name of a sharded Hugging Face model.
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// The shard files of an index, each with the tensors the index places in it.
pub(crate) fn read_index(path: &Path) -> Result<Vec<(PathBuf, Vec<String>)>> {
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
pub(crate) struct Entry {
    pub name: String,
    pub dtype: String,
    /// torch order (`[out, in]`).
    pub shape: Vec<u64>,
    pub start: u64,
    pub end: u64,
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
pub(crate) fn dtype_info(dtype: &str) -> (Option<GgmlType>, Option<u64>) {
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

pub(crate) fn map_file(path: &Path) -> Result<(Arc<Mmap>, Arc<File>)> {
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
pub(crate) fn parse_header(path: &Path, map: &[u8]) -> Result<Vec<Entry>> {
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
