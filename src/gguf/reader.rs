//! GGUF reader: one memory-mapped file, v2 or v3, every metadata type, tensor infos.
//!
//! Every length and offset read from the file is checked against the file size before it
//! is used, so a truncated or hostile file gives an error naming the file, never a panic
//! or a huge allocation.

use super::{GgmlType, Metadata, Value, ValueType, DEFAULT_ALIGNMENT, MAGIC};
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `shape[0]` is the row length (the fastest-varying dimension).
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    pub map: Arc<Mmap>,
    /// The mapped file, kept open so that readers can check its current length.
    pub file: Arc<File>,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = crate::input::open(path)?;
        // SAFETY: the map is read-only and only ever read as plain bytes, every read
        // bounds-checked against the length seen here. Another process may still change the
        // file: bytes rewritten in place only change the values read; a truncation makes a
        // page past the new end raise SIGBUS when touched, so the store checks the file's
        // current length through the handle kept with the map right before it reads tensor
        // bytes (`SourceFile::bytes`). A truncation between that check and the read cannot be
        // excluded, as in every mmap-based reader (llama.cpp's included).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Arc::new(map), Arc::new(file))
    }

    /// The raw bytes of tensor `i`.
    pub fn tensor_data(&self, i: usize) -> &[u8] {
        let t = &self.tensors[i];
        let start = (self.data_offset + t.offset) as usize;
        &self.map[start..start + t.n_bytes as usize]
    }

    fn parse(path: &Path, map: Arc<Mmap>, file: Arc<File>) -> Result<GgufFile> {
        let mut c = Cursor {
            buf: &map,
            pos: 0,
            path,
        };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::format(
                path,
                format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"),
            ));
        }
        let version = c.u32("version")?;
        if version == 1 {
            return Err(Error::format(
                path,
                "GGUF version 1 is not supported (v2 and v3 are)",
            ));
        }
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(Error::format(path, "big-endian GGUF is not supported"));
        }
        if version != 2 && version != 3 {
            return Err(Error::format(
                path,
                format!("unsupported GGUF version {version}"),
            ));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Each entry takes at least 8 bytes, so bigger counts cannot be real.
        for (n, what) in [(n_tensors, "tensor count"), (n_kv, "metadata count")] {
            if n > (c.buf.len() as u64) / 8 {
                return Err(Error::format(
                    path,
                    format!("{what} {n} is larger than the file allows"),
                ));
            }
        }

        let mut metadata = Metadata::new();
        // A set for the duplicate check: `Metadata` looks keys up linearly, which is quadratic
        // in a (hostile) file with hundreds of thousands of keys.
        let mut keys = HashSet::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata type")?;
            let value = c
                .value(ty, 0)
                .map_err(|e| rename_err(e, &format!("metadata key `{key}`")))?;
            if !keys.insert(key.clone()) {
                return Err(Error::format(
                    path,
                    format!("duplicate metadata key `{key}`"),
                ));
            }
            metadata.push_new(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(Error::format(
                        path,
                        format!("general.alignment must be a power of two, got {v}"),
                    ))
                }
            },
        };

        // A tensor entry takes at least 32 bytes (name length, one dimension, type, offset):
        // reserve no more than the rest of the file can describe.
        let room = (c.buf.len() - c.pos) / 32;
        let mut tensors = Vec::with_capacity((n_tensors as usize).min(room));
        let mut names = HashSet::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor {i}"))?;
            let n_dims = c.u32(&format!("dimension count of tensor `{name}`"))? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::format(
                    path,
                    format!("tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                ));
            }
            let mut shape = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                shape.push(c.u64(&format!("shape of tensor `{name}`"))?);
            }
            let type_id = c.u32(&format!("type of tensor `{name}`"))?;
            let offset = c.u64(&format!("offset of tensor `{name}`"))?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| Error::UnsupportedType {
                path: path.to_path_buf(),
                tensor: name.clone(),
                ty: format!("id {type_id}"),
            })?;
            let n_elements = shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    Error::format(path, format!("tensor `{name}`: shape {shape:?} overflows"))
                })?;
            if shape[0] % ty.block_size() as u64 != 0 {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor `{name}`: row length {} is not a multiple of the {ty} block size {}",
                        shape[0],
                        ty.block_size()
                    ),
                ));
            }
            // Zero dimensions aside, the byte size must fit in u64: then so does every part of
            // it (a row's bytes), even in a tensor with a zero dimension and no data.
            (shape.iter())
                .try_fold(1u64, |acc, &d| acc.checked_mul(d.max(1)))
                .and_then(|n| (n / ty.block_size() as u64).checked_mul(ty.type_size() as u64))
                .ok_or_else(|| {
                    Error::format(
                        path,
                        format!(
                            "tensor `{name}`: shape {shape:?} of {ty} needs more than 2^64 bytes"
                        ),
                    )
                })?;
            let n_bytes = n_elements / ty.block_size() as u64 * ty.type_size() as u64;
            if offset % alignment != 0 {
                return Err(Error::format(
                    path,
                    format!("tensor `{name}`: data offset {offset} is not aligned to {alignment}"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(Error::format(
                    path,
                    format!("duplicate tensor name `{name}`"),
                ));
            }
            tensors.push(TensorInfo {
                name,
                shape,
                ty,
                offset,
                n_bytes,
            });
        }

        let data_offset = c.pos.div_ceil(alignment as usize) as u64 * alignment;
        let file_len = map.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes));
            if end.is_none_or(|e| e > file_len) {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor `{}`: data ({} bytes at offset {}) runs past the end of the file ({} bytes); the file is truncated",
                        t.name,
                        t.n_bytes,
                        data_offset + t.offset,
                        file_len
                    ),
                ));
            }
        }
        // Two tensors sharing bytes are a corrupt (or hostile) file, as the safetensors reader
        // holds too: writing to one would change the other, and no writer produces them.
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
        by_offset.sort_by_key(|t| (t.offset, t.n_bytes));
        for w in by_offset.windows(2) {
            if w[1].offset < w[0].offset + w[0].n_bytes {
                return Err(Error::format(
                    path,
                    format!(
                        "tensors `{}` and `{}` overlap in the data section",
                        w[0].name, w[1].name
                    ),
                ));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            map,
            file,
        })
    }
}

fn rename_err(e: Error, context: &str) -> Error {
    match e {
        Error::Format { path, msg } => Error::Format {
            path,
            msg: format!("{context}: {msg}"),
        },
        other => other,
    }
}

/// A bounds-checked little-endian reader over the mapped header.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                Error::format(
                    self.path,
                    format!(
                        "truncated: {what} needs {n} bytes at offset {} but the file has {}",
                        self.pos,
                        self.buf.len()
                    ),
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self
            .take(N, what)?
            .try_into()
            .expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .map_err(|_| Error::format(self.path, format!("{what}: length {len} too large")))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::format(self.path, format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, type_id: u32, depth: usize) -> Result<Value> {
        let ty = ValueType::from_id(type_id).ok_or_else(|| {
            Error::format(self.path, format!("unknown metadata value type {type_id}"))
        })?;
        let w = "metadata value";
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(w)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(w)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(w)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(w)?)),
            ValueType::U32 => Value::U32(self.u32(w)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(w)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(w)?)),
            ValueType::U64 => Value::U64(self.u64(w)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(w)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(w)?)),
            ValueType::Bool => match self.array::<1>(w)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::format(self.path, format!("invalid bool byte {b}"))),
            },
            ValueType::String => Value::String(self.string(w)?),
            ValueType::Array => {
                if depth >= 8 {
                    return Err(Error::format(
                        self.path,
                        "arrays nested deeper than 8 levels",
                    ));
                }
                let elem_id = self.u32("array element type")?;
                let elem = ValueType::from_id(elem_id).ok_or_else(|| {
                    Error::format(self.path, format!("unknown array element type {elem_id}"))
                })?;
                let n = self.u64("array length")?;
                // Reject lengths the rest of the file cannot hold, counting each element's
                // smallest encoding (a string is at least its 8-byte length, an array its
                // 12-byte header).
                let min_size: u64 = match elem {
                    ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
                    ValueType::U16 | ValueType::I16 => 2,
                    ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
                    ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
                    ValueType::Array => 12,
                };
                let left = (self.buf.len() - self.pos) as u64;
                if n > left / min_size {
                    return Err(Error::format(
                        self.path,
                        format!(
                            "truncated: array of {n} {elem:?} elements at offset {} needs at least {} bytes but the file has {left} left",
                            self.pos,
                            n.saturating_mul(min_size)
                        ),
                    ));
                }
                // Numbers and bools are kept as their bytes (checked to fit above).
                if let Some(size) = elem.scalar_size() {
                    let bytes = self.take(n as usize * size, "array")?;
                    if let Some(b) = bytes.iter().find(|&&b| elem == ValueType::Bool && b > 1) {
                        return Err(Error::format(self.path, format!("invalid bool byte {b}")));
                    }
                    return Ok(Value::Numbers(elem, bytes.to_vec()));
                }
                // A `Value` is larger than most encodings: grow as elements are read rather
                // than reserving for a length that a later element may prove false.
                let mut items = Vec::with_capacity((n as usize).min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(elem_id, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}
