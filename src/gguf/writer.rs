//! Streaming GGUF v3 writer.
//!
//! The header (metadata and tensor infos) is written first, from the tensors' declared types
//! and shapes; tensor data then streams in, in declaration order, in chunks of any size, so a
//! model larger than RAM can be written. Everything goes to an exclusive temporary file beside
//! the target (`crate::output_files`), which is flushed and synced by `finish` and renamed over
//! the target by `commit`: a failed or interrupted run leaves no partial `.gguf` behind
//! (dropping an unfinished writer deletes the temporary file; signals delete it too).

use super::{GgmlType, Metadata, Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Largest `general.alignment` accepted: alignment serves mmap and SIMD loads, which need at
/// most a page; a huge value only pads every tensor (2^30 wrote tens of GB of zeros).
pub const MAX_ALIGNMENT: u64 = 4096;

/// A tensor as declared in the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDecl {
    pub name: String,
    /// ggml order (`shape[0]` = row length).
    pub shape: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorDecl {
    pub fn n_bytes(&self) -> Result<u64> {
        let n: u64 = self.shape.iter().product();
        self.ty.bytes_for(n).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor `{}`: {} values do not fill whole {} blocks",
                self.name, n, self.ty
            ))
        })
    }
}

pub struct GgufWriter {
    target: PathBuf,
    /// Deletes the temporary file when dropped, unless `commit` renamed it.
    tmp: Option<tempfile::TempPath>,
    out: Option<BufWriter<File>>,
    alignment: u64,
    sizes: Vec<(String, u64)>,
    /// Index of the tensor whose data is being written, and bytes of it written so far.
    current: usize,
    current_written: u64,
}

fn write_str(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn write_value(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => out.write_all(&[*x]),
        Value::I8(x) => out.write_all(&x.to_le_bytes()),
        Value::U16(x) => out.write_all(&x.to_le_bytes()),
        Value::I16(x) => out.write_all(&x.to_le_bytes()),
        Value::U32(x) => out.write_all(&x.to_le_bytes()),
        Value::I32(x) => out.write_all(&x.to_le_bytes()),
        Value::F32(x) => out.write_all(&x.to_le_bytes()),
        Value::Bool(x) => out.write_all(&[*x as u8]),
        Value::String(s) => write_str(out, s),
        Value::Array(elem, items) => {
            out.write_all(&(*elem as u32).to_le_bytes())?;
            out.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| write_value(out, item))
        }
        Value::Numbers(elem, bytes) => {
            let n = bytes.len() / elem.scalar_size().unwrap_or(1);
            out.write_all(&(*elem as u32).to_le_bytes())?;
            out.write_all(&(n as u64).to_le_bytes())?;
            out.write_all(bytes)
        }
        Value::U64(x) => out.write_all(&x.to_le_bytes()),
        Value::I64(x) => out.write_all(&x.to_le_bytes()),
        Value::F64(x) => out.write_all(&x.to_le_bytes()),
    }
}

/// Check that array elements match their declared type (the format cannot express otherwise).
fn check_value(key: &str, v: &Value) -> Result<()> {
    if let Value::Numbers(elem, bytes) = v {
        if elem.scalar_size().is_none_or(|n| bytes.len() % n != 0) {
            return Err(Error::Invalid(format!(
                "metadata `{key}`: {} bytes are not an array of {elem:?}",
                bytes.len()
            )));
        }
    }
    if let Value::Array(elem, items) = v {
        for item in items {
            if item.value_type() != *elem {
                return Err(Error::Invalid(format!(
                    "metadata `{key}`: array of {elem:?} holds a {:?}",
                    item.value_type()
                )));
            }
            check_value(key, item)?;
        }
    }
    Ok(())
}

impl GgufWriter {
    /// Refuse what `create` would refuse (a bad `general.alignment`, array values of the
    /// wrong type, no file name, tensors that are not whole blocks) without creating anything.
    pub fn check(target: &Path, metadata: &Metadata, tensors: &[TensorDecl]) -> Result<u64> {
        let alignment = alignment(metadata)?;
        for (k, v) in metadata.iter() {
            check_value(k, v)?;
        }
        if target.file_name().is_none() {
            return Err(Error::Invalid(format!(
                "output path {} has no file name",
                target.display()
            )));
        }
        for t in tensors {
            t.n_bytes()?;
        }
        Ok(alignment)
    }

    /// Start writing `target`: writes the whole header to a temporary file beside it.
    pub fn create(
        target: impl AsRef<Path>,
        metadata: &Metadata,
        tensors: &[TensorDecl],
    ) -> Result<GgufWriter> {
        let target = target.as_ref().to_path_buf();
        let alignment = Self::check(&target, metadata, tensors)?;
        let (file, tmp) = crate::output_files::temp_file_beside(&target)?;
        let mut w = GgufWriter {
            target,
            tmp: Some(tmp),
            // Small enough that quantized chunks (usually larger) go straight from their buffer to
            // the file instead of being copied into this one first.
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            alignment,
            sizes: Vec::with_capacity(tensors.len()),
            current: 0,
            current_written: 0,
        };
        for t in tensors {
            w.sizes.push((t.name.clone(), t.n_bytes()?));
        }
        w.write_header(metadata, tensors)
            .map_err(|e| Error::io(&w.target, e))?;
        Ok(w)
    }

    fn write_header(&mut self, metadata: &Metadata, tensors: &[TensorDecl]) -> std::io::Result<()> {
        let out = self.out.as_mut().expect("writer is open");
        write_header_to(out, metadata, tensors, &self.sizes, self.alignment)?;
        Ok(())
    }

    /// The tensor whose data comes next, if any.
    pub fn next_tensor(&self) -> Option<&str> {
        self.sizes.get(self.current).map(|(n, _)| n.as_str())
    }

    /// Append data for the current tensor; a tensor is complete once all its bytes came in.
    pub fn write_data(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some((name, size)) = self.sizes.get(self.current) else {
                return Err(Error::Invalid(format!(
                    "{}: more tensor data than the header declares",
                    self.target.display()
                )));
            };
            let take = ((size - self.current_written) as usize).min(bytes.len());
            let out = self.out.as_mut().expect("writer is open");
            out.write_all(&bytes[..take])
                .map_err(|e| Error::io(&self.target, e))?;
            self.current_written += take as u64;
            bytes = &bytes[take..];
            if self.current_written == *size {
                let pad = size.div_ceil(self.alignment) * self.alignment - size;
                out.write_all(&vec![0u8; pad as usize])
                    .map_err(|e| Error::io(&self.target, e))?;
                self.current += 1;
                self.current_written = 0;
            } else if self.current_written > *size {
                unreachable!("take is bounded by the tensor's remaining size ({name})");
            }
        }
        Ok(())
    }

    /// Flush, sync and move the finished file over the target.
    pub fn finish(self) -> Result<()> {
        commit(vec![self.finish_pending()?])
    }

    /// Flush and sync the finished file; `commit` then moves it over the target together with
    /// the other files of its set.
    pub fn finish_pending(mut self) -> Result<FinishedFile> {
        // Zero-sized tensors need no data call: step over them.
        while self.sizes.get(self.current).is_some_and(|(_, s)| *s == 0) {
            self.current += 1;
        }
        if let Some((name, size)) = self.sizes.get(self.current) {
            return Err(Error::Invalid(format!(
                "{}: tensor `{name}` got {} of {size} bytes before the writer was finished",
                self.target.display(),
                self.current_written
            )));
        }
        FinishedFile::seal(
            std::mem::take(&mut self.target),
            self.out.take().expect("writer is open"),
            self.tmp.take().expect("writer is open"),
        )
    }
}

/// A complete, synced output waiting to be moved into place (deleted if dropped instead).
pub struct FinishedFile {
    target: PathBuf,
    tmp: tempfile::TempPath,
    pub bytes: u64,
}

impl FinishedFile {
    /// Flush `out` (the temporary file `tmp` for `target`), sync it and take its size.
    pub fn seal(
        target: PathBuf,
        out: BufWriter<std::fs::File>,
        tmp: tempfile::TempPath,
    ) -> Result<FinishedFile> {
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&target, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&target, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(&target, e))?.len();
        Ok(FinishedFile { target, tmp, bytes })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Overwrite the start of the file with `header` (a header of the same length with values
    /// known only once the data was written, see `write::TensorProducer::deferred_metadata`),
    /// then sync it again.
    pub fn rewrite_header(&self, header: &[u8]) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.tmp)
            .map_err(|e| Error::io(&self.target, e))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(header))
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&self.target, e))
    }
}

/// Move finished files over their targets, all of them or (on a signal) none: the renames
/// run under `output_files::commit`, which the signal handler waits for.
pub fn commit(files: Vec<FinishedFile>) -> Result<()> {
    crate::output_files::commit(|| {
        for f in files {
            let tmp_path = f.tmp.to_path_buf();
            f.tmp
                .persist(&f.target)
                .map_err(|e| Error::io(&f.target, e.error))?;
            crate::output_files::forget(&tmp_path);
        }
        Ok(())
    })
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        self.out.take();
        if let Some(tmp) = self.tmp.take() {
            let path = tmp.to_path_buf();
            let _ = tmp.close(); // deletes the temporary file
            crate::output_files::forget(&path);
        }
    }
}

/// The header (magic, metadata, tensor infos) and its padding to `align`; returns its length.
fn write_header_to(
    out: &mut impl Write,
    metadata: &Metadata,
    tensors: &[TensorDecl],
    sizes: &[(String, u64)],
    align: u64,
) -> std::io::Result<u64> {
    let mut pos = 0u64;
    let mut counted = CountingWriter {
        inner: out,
        count: &mut pos,
    };
    counted.write_all(&MAGIC)?;
    counted.write_all(&3u32.to_le_bytes())?;
    counted.write_all(&(tensors.len() as u64).to_le_bytes())?;
    counted.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (k, v) in metadata.iter() {
        write_str(&mut counted, k)?;
        counted.write_all(&(v.value_type() as u32).to_le_bytes())?;
        write_value(&mut counted, v)?;
    }
    let mut offset = 0u64;
    for (t, (_, n_bytes)) in tensors.iter().zip(sizes) {
        write_str(&mut counted, &t.name)?;
        counted.write_all(&(t.shape.len() as u32).to_le_bytes())?;
        for d in &t.shape {
            counted.write_all(&d.to_le_bytes())?;
        }
        counted.write_all(&t.ty.id().to_le_bytes())?;
        counted.write_all(&offset.to_le_bytes())?;
        offset += n_bytes.div_ceil(align) * align;
    }
    let pad = pos.div_ceil(align) * align - pos;
    out.write_all(&vec![0u8; pad as usize])?;
    Ok(pos + pad)
}

/// The file's `general.alignment` (or GGUF's default), checked as the writer checks it.
pub fn alignment(metadata: &Metadata) -> Result<u64> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(v) => v
            .as_u64()
            .filter(|a| *a > 0 && a.is_power_of_two() && *a <= MAX_ALIGNMENT)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "general.alignment must be a power of two of at most {MAX_ALIGNMENT}, got {v}"
                ))
            }),
    }
}

/// Bytes the header of a file with this metadata and these tensors takes, padding included:
/// it does not depend on the tensors' types (each info holds a fixed-size type id and offset),
/// so a file's size is this plus each tensor's bytes rounded up to the alignment.
pub fn header_len(metadata: &Metadata, tensors: &[TensorDecl]) -> Result<u64> {
    let sizes = vec![(String::new(), 0u64); tensors.len()];
    write_header_to(
        &mut std::io::sink(),
        metadata,
        tensors,
        &sizes,
        alignment(metadata)?,
    )
    .map_err(|e| Error::Invalid(format!("GGUF header: {e}")))
}

/// The header bytes (padding included) of a file with this metadata and these tensors, as
/// `GgufWriter::create` writes them.
pub fn header_bytes(metadata: &Metadata, tensors: &[TensorDecl]) -> Result<Vec<u8>> {
    let sizes = tensors
        .iter()
        .map(|t| Ok((t.name.clone(), t.n_bytes()?)))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::new();
    write_header_to(&mut out, metadata, tensors, &sizes, alignment(metadata)?)
        .map_err(|e| Error::Invalid(format!("GGUF header: {e}")))?;
    Ok(out)
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    count: &'a mut u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::reader::GgufFile;
    use crate::gguf::ValueType;

    #[test]
    fn number_arrays_are_kept_as_bytes_and_written_as_before() {
        use ValueType::*;
        let arrays: Vec<(ValueType, Vec<Value>)> = vec![
            (U8, vec![Value::U8(0), Value::U8(255)]),
            (I8, vec![Value::I8(-1), Value::I8(7)]),
            (U16, vec![Value::U16(65535)]),
            (I16, vec![Value::I16(-300)]),
            (U32, vec![Value::U32(1), Value::U32(70000)]),
            (I32, vec![Value::I32(-5)]),
            (F32, vec![Value::F32(1.5), Value::F32(-0.0)]),
            (Bool, vec![Value::Bool(true), Value::Bool(false)]),
            (U64, vec![Value::U64(u64::MAX)]),
            (I64, vec![Value::I64(i64::MIN)]),
            (F64, vec![Value::F64(0.1)]),
            (U32, vec![]),
        ];
        let d = tempfile::tempdir().unwrap();
        let write = |name: &str, md: &Metadata| {
            let p = d.path().join(name);
            GgufWriter::create(&p, md, &[]).unwrap().finish().unwrap();
            std::fs::read(&p).unwrap()
        };
        // One value per element (as before), and the compact form.
        let (mut old, mut new) = (Metadata::new(), Metadata::new());
        for (k, (ty, items)) in arrays.iter().enumerate() {
            old.set(format!("a{k}"), Value::Array(*ty, items.clone()));
            let mut bytes = Vec::new();
            for v in items {
                write_value(&mut bytes, v).unwrap();
            }
            new.set(format!("a{k}"), Value::Numbers(*ty, bytes));
        }
        let bytes = write("old.gguf", &old);
        assert_eq!(bytes, write("new.gguf", &new));
        let read = GgufFile::open(d.path().join("old.gguf")).unwrap().metadata;
        assert_eq!(read, new);
        for (k, (_, items)) in arrays.iter().enumerate() {
            let v = read.get(&format!("a{k}")).unwrap();
            assert_eq!(*v.items().unwrap(), items[..]);
            assert_eq!(v.array_len(), Some(items.len()));
        }
    }
}
