//! One model, whatever its source: ordered tensors (canonical name, shape, ggml type, where
//! the bytes live) plus GGUF metadata. Consumers read tensors as f32 row blocks and release
//! them when done, so no consumer ever needs the whole model in memory.

use crate::error::{Error, Result};
use crate::gguf::{reader::GgufFile, GgmlType, Metadata, Value};
use crate::quant;
use memmap2::Mmap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A memory-mapped input file.
pub struct SourceFile {
    pub path: PathBuf,
    pub map: Arc<Mmap>,
    /// The mapped file, kept open to check its current length before its bytes are read.
    pub file: Arc<std::fs::File>,
}

impl SourceFile {
    /// Bytes `offset..offset + len` of the map, once the file is checked to still hold them:
    /// touching a page of a map past the end of a file truncated since it was mapped raises
    /// SIGBUS, so a file shortened under smelt gives this error naming it instead.
    pub fn bytes(&self, offset: usize, len: usize) -> Result<&[u8]> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.map.len())
            .ok_or_else(|| {
                Error::format(
                    &self.path,
                    format!(
                        "bytes {offset}..+{len} lie outside the file ({} bytes)",
                        self.map.len()
                    ),
                )
            })?;
        let now = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        if (end as u64) > now {
            return Err(Error::format(
                &self.path,
                format!(
                    "the file is now {now} bytes but data is needed up to byte {end}: it was truncated while smelt was reading it"
                ),
            ));
        }
        Ok(&self.map[offset..end])
    }
}

// Layout transforms live in a leaf module so that the architecture tables can name them
// without importing the store (which opens folders through them).
pub use crate::layout::{RowOrder, Transform};

/// One tensor of a store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreTensor {
    /// llama.cpp canonical name (`blk.3.attn_q.weight`).
    pub name: String,
    /// ggml order: `shape[0]` is the row length.
    pub shape: Vec<u64>,
    /// The type the tensor presents: what copying it unchanged writes. Usually `stored`;
    /// F32 where llama.cpp's converter widens a 16-bit tensor (norms, biases, router).
    pub ty: GgmlType,
    /// The type of the bytes in the file.
    pub stored: GgmlType,
    /// Index into the store's files (of the first part, for a stacked tensor).
    pub file: usize,
    /// Absolute offset of the first byte in that file.
    pub offset: u64,
    /// Stored bytes, all parts together.
    pub n_bytes: u64,
    pub rows: RowOrder,
    pub transform: Transform,
    /// A tensor stacked from equal parts along its outermost dimension (MoE experts): the
    /// file and offset of each part, each `n_bytes / parts.len()` bytes in stored row order.
    /// Empty for a tensor stored in one piece at `file` / `offset`.
    pub parts: Vec<(usize, u64)>,
}

impl StoreTensor {
    /// A tensor stored in one piece, presented as stored.
    pub fn plain(
        name: String,
        shape: Vec<u64>,
        ty: GgmlType,
        file: usize,
        offset: u64,
        n_bytes: u64,
    ) -> StoreTensor {
        StoreTensor {
            name,
            shape,
            ty,
            stored: ty,
            file,
            offset,
            n_bytes,
            rows: RowOrder::AsStored,
            transform: Transform::None,
            parts: Vec::new(),
        }
    }
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
    pub fn row_len(&self) -> usize {
        self.shape[0] as usize
    }
    pub fn n_rows(&self) -> usize {
        self.shape[1..].iter().product::<u64>() as usize
    }
    /// Stored bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_len() / self.stored.block_size() * self.stored.type_size()
    }
    /// Whether the stored bytes are exactly what the tensor presents (no reordering, no
    /// transform, no widening, one piece), so they may be copied unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.rows == RowOrder::AsStored
            && self.transform == Transform::None
            && self.ty == self.stored
            && self.parts.is_empty()
    }
    /// The (file, offset) of every part, a one-piece tensor being one part.
    fn pieces(&self) -> Vec<(usize, u64)> {
        if self.parts.is_empty() {
            vec![(self.file, self.offset)]
        } else {
            self.parts.clone()
        }
    }
}

/// A model as an ordered list of tensors plus metadata.
pub struct Store {
    pub metadata: Metadata,
    pub tensors: Vec<StoreTensor>,
    pub files: Vec<SourceFile>,
    /// Things a user should know about this input (a folder without tokenizer files).
    pub warnings: Vec<String>,
    /// LoRA updates added to tensors as they are read (`BASE+ADAPTER` inputs), by tensor
    /// index; their adapter files are among `files`.
    pub adapters: std::collections::BTreeMap<usize, crate::lora::LoraDelta>,
}

impl Store {
    /// Open a GGUF file (or the first file of a split set), a safetensors file, a sharded
    /// safetensors index, or a Hugging Face model folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(path, &crate::tokenizer::TokenizerOptions::default())
    }

    /// [`Store::open`], with tokenizer options for a Hugging Face folder.
    pub fn open_with(
        path: impl AsRef<Path>,
        tok: &crate::tokenizer::TokenizerOptions,
    ) -> Result<Store> {
        let path = path.as_ref();
        if path.is_dir() {
            return crate::convert::open_hf_folder_with(path, tok);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") {
            return crate::convert::open_file(path);
        }
        let mut magic = [0u8; 4];
        let read = std::io::Read::read(&mut crate::input::open(path)?, &mut magic)
            .map_err(|e| Error::io(path, e))?;
        if read == 4 && magic == crate::gguf::MAGIC {
            return Self::open_gguf(path);
        }
        if name.ends_with(".gguf") {
            return Self::open_gguf(path); // reports the bad magic with its path
        }
        Err(Error::format(
            path,
            "not a GGUF file, a .safetensors file, a safetensors index or a model folder",
        ))
    }

    /// Open a GGUF file; a split set (`NAME-00001-of-0000N.gguf`) is read as one model.
    pub fn open_gguf(path: &Path) -> Result<Store> {
        let first = GgufFile::open(path)?;
        let split_count = first.metadata.get_u64("split.count").unwrap_or(1);
        let mut parts = vec![first];
        if split_count > 1 {
            if parts[0].metadata.get_u64("split.no").unwrap_or(0) != 0 {
                return Err(Error::format(
                    path,
                    "this is not the first file of its split set (split.no is not 0)",
                ));
            }
            for no in 1..split_count {
                let p = split_path(path, no, split_count)?;
                if !p.exists() {
                    return Err(Error::format(
                        &p,
                        format!(
                            "missing split {} of {split_count} of {}",
                            no + 1,
                            path.display()
                        ),
                    ));
                }
                let part = GgufFile::open(&p)?;
                if part.metadata.get_u64("split.no") != Some(no) {
                    return Err(Error::format(&p, format!("split.no is not {no}")));
                }
                parts.push(part);
            }
        }
        let mut metadata = parts[0].metadata.clone();
        if split_count > 1 {
            let declared = metadata.get_u64("split.tensors.count");
            let total: usize = parts.iter().map(|p| p.tensors.len()).sum();
            if declared.is_some_and(|d| d != total as u64) {
                return Err(Error::format(
                    path,
                    format!(
                        "split.tensors.count says {} tensors but the splits hold {total}",
                        declared.unwrap()
                    ),
                ));
            }
            metadata.retain(|k, _| !k.starts_with("split."));
        }
        // The split keys describe files, not the model: a one-file set
        // (`-00001-of-00001.gguf`) and llama-gguf-split --merge's output (split.count 0) keep
        // them too.
        for k in ["split.no", "split.count", "split.tensors.count"] {
            metadata.remove(k);
        }
        metadata.remove("general.alignment");
        let mut tensors = Vec::new();
        let mut files = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (fi, part) in parts.into_iter().enumerate() {
            for t in &part.tensors {
                if !seen.insert(t.name.clone()) {
                    return Err(Error::format(
                        &part.path,
                        format!("duplicate tensor name `{}` across splits", t.name),
                    ));
                }
                tensors.push(StoreTensor::plain(
                    t.name.clone(),
                    t.shape.clone(),
                    t.ty,
                    fi,
                    part.data_offset + t.offset,
                    t.n_bytes,
                ));
            }
            files.push(SourceFile {
                path: part.path,
                map: part.map,
                file: part.file,
            });
        }
        Ok(Store {
            metadata,
            tensors,
            files,
            warnings: Vec::new(),
            adapters: Default::default(),
        })
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// The paths of the files behind this store.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// The stored bytes of tensor `t`, in stored row order; `None` for a stacked tensor,
    /// whose parts do not lie in one range, and for a file truncated since it was opened
    /// (then [`Store::read_rows`] reports it).
    pub fn raw(&self, t: usize) -> Option<&[u8]> {
        let st = &self.tensors[t];
        // A LoRA update changes the values: the stored bytes are not the tensor.
        if !st.parts.is_empty() || self.adapters.contains_key(&t) {
            return None;
        }
        self.files[st.file]
            .bytes(st.offset as usize, st.n_bytes as usize)
            .ok()
    }

    /// The bytes of tensor `t` when they may be written unchanged (see
    /// [`StoreTensor::is_passthrough`]).
    pub fn passthrough(&self, t: usize) -> Option<&[u8]> {
        if self.tensors[t].is_passthrough() {
            self.raw(t)
        } else {
            None
        }
    }

    /// The stored bytes of part `k` of tensor `t` (the whole tensor for a one-piece tensor).
    fn part_bytes(&self, st: &StoreTensor, k: usize) -> Result<&[u8]> {
        let pieces = st.parts.len().max(1);
        let len = (st.n_bytes / pieces as u64) as usize;
        let (file, offset) = if st.parts.is_empty() {
            (st.file, st.offset)
        } else {
            st.parts[k]
        };
        self.files[file].bytes(offset as usize, len)
    }

    /// Dequantize presented rows `first_row..first_row + out.len() / row_len` of tensor `t`
    /// into `out`, rows in parallel.
    pub fn read_rows(&self, t: usize, first_row: usize, out: &mut [f32]) -> Result<()> {
        use rayon::prelude::*;
        let st = &self.tensors[t];
        let (row_len, n_rows, rb) = (st.row_len(), st.n_rows(), st.row_bytes());
        if row_len == 0 || out.len() % row_len != 0 || first_row + out.len() / row_len > n_rows {
            return Err(Error::Invalid(format!(
                "tensor `{}`: cannot read {} values from row {first_row} of {n_rows} rows of {row_len}",
                st.name,
                out.len()
            )));
        }
        let n_parts = st.parts.len().max(1);
        let part_rows = n_rows / n_parts;
        let result = match st.rows {
            RowOrder::AsStored => {
                // Contiguous runs of rows, one per part touched.
                let mut row = first_row;
                let mut done = 0;
                let mut result = Ok(());
                while done < out.len() && result.is_ok() {
                    let (k, local) = (row / part_rows, row % part_rows);
                    let n = (part_rows - local).min((out.len() - done) / row_len);
                    let raw = self.part_bytes(st, k)?;
                    result = quant::dequantize_rows(
                        st.stored,
                        &raw[local * rb..(local + n) * rb],
                        row_len,
                        &mut out[done..done + n * row_len],
                    );
                    row += n;
                    done += n * row_len;
                }
                result
            }
            order => {
                let raw = self.part_bytes(st, 0)?;
                out.par_chunks_mut(row_len)
                    .enumerate()
                    .try_for_each(|(i, dst)| {
                        let r = order.stored_row(first_row + i, n_rows);
                        quant::dequantize_row(st.stored, &raw[r * rb..(r + 1) * rb], dst)
                    })
            }
        };
        result.map_err(|e| Error::quant(&st.name, e))?;
        st.transform.apply_to(st.stored, out);
        if let Some(delta) = self.adapters.get(&t) {
            delta.add_rows(self, first_row, out)?;
        }
        Ok(())
    }

    /// The whole tensor as f32.
    pub fn read_f32(&self, t: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.tensors[t].n_elements() as usize];
        self.read_rows(t, 0, &mut out)?;
        Ok(out)
    }

    /// Drop the pages of tensor `t` from this process's memory once a consumer is done with it,
    /// so that resident memory stays bounded by the tensors in flight, not the model size.
    pub fn release(&self, t: usize) {
        let st = &self.tensors[t];
        let len = (st.n_bytes / st.parts.len().max(1) as u64) as usize;
        for (file, offset) in st.pieces() {
            self.release_bytes(file, offset as usize, len);
        }
    }

    /// Like `release`, for stored rows `first_row..first_row + n_rows` only (rows counted
    /// across the parts of a stacked tensor).
    pub fn release_range(&self, t: usize, first_row: usize, n_rows: usize) {
        let st = &self.tensors[t];
        let rb = st.row_bytes();
        let pieces = st.pieces();
        let part_rows = (st.n_rows() / pieces.len()).max(1);
        let (mut row, end) = (first_row, first_row + n_rows);
        while row < end {
            let (k, local) = (row / part_rows, row % part_rows);
            let Some(&(file, offset)) = pieces.get(k) else {
                break;
            };
            let n = (part_rows - local).min(end - row);
            self.release_bytes(file, offset as usize + local * rb, n * rb);
            row += n;
        }
    }

    /// Total size and SHA-256 of the files behind this store, concatenated in order. Pages are
    /// dropped as they are hashed, so hashing a model does not make it resident.
    pub fn sha256(&self) -> Result<(u64, String)> {
        self.sha256_with(&|_| {})
    }

    /// [`Store::sha256`], calling `hashed(n)` after each `n` bytes.
    pub fn sha256_with(&self, hashed: &(dyn Fn(u64) + Sync)) -> Result<(u64, String)> {
        self.sha256_unless(hashed, &std::sync::atomic::AtomicBool::new(false))
    }

    /// [`Store::sha256_with`] that stops with an error once `cancel` is set.
    pub fn sha256_unless(
        &self,
        hashed: &(dyn Fn(u64) + Sync),
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<(u64, String)> {
        use sha2::{Digest, Sha256};
        // Small steps: hashing beside a merge adds at most one step per input to its memory.
        const CHUNK: usize = 4 << 20;
        let mut h = Sha256::new();
        let mut size = 0u64;
        for (fi, f) in self.files.iter().enumerate() {
            let len = f.map.len();
            for start in (0..len).step_by(CHUNK) {
                if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(Error::Invalid(format!(
                        "{}: hashing stopped",
                        f.path.display()
                    )));
                }
                let n = CHUNK.min(len - start);
                h.update(f.bytes(start, n)?);
                self.release_bytes(fi, start, n);
                hashed(n as u64);
            }
            size += len as u64;
        }
        Ok((
            size,
            h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    fn release_bytes(&self, file: usize, offset: usize, len: usize) {
        let map = &self.files[file].map;
        // madvise needs a page-aligned start: release only the whole pages inside the range.
        let page = 4096usize;
        let start = offset.div_ceil(page) * page;
        let end = ((offset + len) / page) * page;
        if end > start {
            // SAFETY: the mapping is read-only and file-backed (MAP_PRIVATE, never written), so
            // MADV_DONTNEED only drops clean pages: a later access faults the same bytes back in
            // from the file. No data can be lost and existing slices stay valid.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    /// `general.architecture`, or an error naming the input.
    pub fn architecture(&self) -> Result<&str> {
        self.metadata.architecture().ok_or_else(|| {
            Error::format(
                self.files
                    .first()
                    .map(|f| f.path.as_path())
                    .unwrap_or(Path::new("<input>")),
                "metadata has no general.architecture",
            )
        })
    }

    /// An architecture hyper-parameter (`{arch}.{key}`) as an integer.
    pub fn hparam(&self, key: &str) -> Option<u64> {
        let arch = self.metadata.architecture()?;
        self.metadata
            .get(&format!("{arch}.{key}"))
            .and_then(Value::as_u64)
    }
}

/// `NAME-00001-of-00003.gguf` → `NAME-0000{no+1}-of-00003.gguf`.
fn split_path(first: &Path, no: u64, count: u64) -> Result<PathBuf> {
    let name = first
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let marker = crate::gguf::split_file_name("", 0, count);
    let prefix = name.strip_suffix(&marker).ok_or_else(|| {
        Error::format(
            first,
            format!("split.count is {count} but the file name does not end in `{marker}`"),
        )
    })?;
    Ok(first.with_file_name(crate::gguf::split_file_name(prefix, no, count)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_permute_matches_numpy_reshape_swapaxes() {
        // numpy: w.reshape(n_head, 2, half).swapaxes(1, 2).reshape(-1) for rows 0..n.
        let (n_head, half) = (2, 3);
        let n = n_head * 2 * half;
        let expect = [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11];
        let got: Vec<usize> = (0..n)
            .map(|r| RowOrder::HeadPermute { n_head }.stored_row(r, n))
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn inputs_truncated_after_opening_give_an_error_naming_the_file_not_sigbus() {
        let d = tempfile::tempdir().unwrap();
        let model = crate::fixture::TinyLlama {
            n_layer: 1,
            ..Default::default()
        };
        let gguf = d.path().join("m.gguf");
        model.write_gguf(&gguf).unwrap();
        model.write_hf(&d.path().join("hf"), 1).unwrap();
        let shard = d.path().join("hf").join("model.safetensors");
        for (input, file) in [(gguf.clone(), gguf.clone()), (d.path().join("hf"), shard)] {
            let store = Store::open(&input).unwrap();
            let (last, t) = (store.tensors.iter().enumerate())
                .filter(|(_, t)| store.files[t.file].path == file)
                .max_by_key(|(_, t)| t.offset)
                .unwrap();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            // Cut the file where the last tensor's data starts.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(t.offset)
                .unwrap();
            let err = store.read_f32(last).unwrap_err().to_string();
            assert!(err.contains(&name) && err.contains("truncated"), "{err}");
            assert!(store.raw(last).is_none());
            let err = store.sha256().unwrap_err().to_string();
            assert!(err.contains(&name) && err.contains("truncated"), "{err}");
        }
    }

    #[test]
    fn split_names() {
        let p = split_path(Path::new("/m/x-00001-of-00003.gguf"), 2, 3).unwrap();
        assert_eq!(p, Path::new("/m/x-00003-of-00003.gguf"));
        assert!(split_path(Path::new("/m/x.gguf"), 1, 3).is_err());
    }
}
