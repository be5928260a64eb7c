//! The matrix writer: each source tensor is dequantized once, in row chunks, and fanned out
//! to every requested output file, each with its own target type per tensor.
//!
//! Memory is bounded by one chunk of f32 rows plus one quantized chunk per output, whatever
//! the model size; source pages are released as soon as a tensor is done.

use crate::error::{Error, Result};
use crate::gguf::writer::{FinishedFile, TensorDecl};
use crate::gguf::{GgmlType, GgufWriter, Metadata, Value};
use crate::progress::{Progress, Unit};
use crate::quant;
use crate::store::{RowOrder, Store};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// Upper bound on f32 values dequantized at once (16 MiB): large enough to keep every core
/// busy, small enough that peak memory does not depend on the model.
const CHUNK_VALUES: usize = 4 << 20;

/// Rows the writer asks a producer for at a time, for a tensor of `n_rows` rows of `row_len`.
pub fn rows_per_chunk(row_len: usize, n_rows: usize) -> usize {
    (CHUNK_VALUES / row_len.max(1)).clamp(1, n_rows.max(1))
}

/// Anything that yields tensors as f32 rows: a store, or a merge in progress.
pub trait TensorProducer: Sync {
    /// How many tensors it makes: indices `0..n_tensors()`.
    fn n_tensors(&self) -> usize;
    /// The model's metadata, which every output starts from.
    fn model_metadata(&self) -> &crate::gguf::Metadata;
    fn name(&self, i: usize) -> &str;
    fn shape(&self, i: usize) -> &[u64];
    /// The type the tensor is held in (its source type).
    fn source_type(&self, i: usize) -> GgmlType;
    /// Presented rows `first_row..` of tensor `i`, dequantized into `out`.
    fn read_rows(&self, i: usize, first_row: usize, out: &mut [f32]) -> Result<()>;
    /// The tensor's bytes as they would be written unchanged, when that is possible.
    fn raw(&self, i: usize) -> Option<&[u8]>;
    /// The producer is done with tensor `i`.
    fn release(&self, i: usize);
    /// Which input file (of a split set) holds tensor `i`.
    fn split_of(&self, _i: usize) -> usize {
        0
    }
    /// The consumer is done with rows `first_row..first_row + n_rows` of tensor `i` (lets a
    /// memory-mapped source drop them early, so huge tensors never sit in memory whole).
    fn release_rows(&self, _i: usize, _first_row: usize, _n_rows: usize) {}
    /// Every file read to produce the tensors (no output may replace one of them).
    fn input_files(&self) -> Vec<PathBuf>;
    /// Metadata whose values are known only at the end: computed on a thread of its own while
    /// the tensors are produced (a merge hashes its inputs there, so that they are read once,
    /// not in a pass before), then written over the values `model_metadata` holds for those
    /// keys, which must encode to the same length. Stops early, with an error, once `cancel`
    /// is set.
    fn deferred_metadata(&self, _cancel: &AtomicBool) -> Result<Vec<(String, Value)>> {
        Ok(Vec::new())
    }
}

impl TensorProducer for Store {
    fn n_tensors(&self) -> usize {
        self.tensors.len()
    }
    fn model_metadata(&self) -> &crate::gguf::Metadata {
        &self.metadata
    }
    fn name(&self, i: usize) -> &str {
        &self.tensors[i].name
    }
    fn shape(&self, i: usize) -> &[u64] {
        &self.tensors[i].shape
    }
    fn source_type(&self, i: usize) -> GgmlType {
        self.tensors[i].ty
    }
    fn read_rows(&self, i: usize, first_row: usize, out: &mut [f32]) -> Result<()> {
        Store::read_rows(self, i, first_row, out)
    }
    fn raw(&self, i: usize) -> Option<&[u8]> {
        self.passthrough(i)
    }
    fn release(&self, i: usize) {
        Store::release(self, i)
    }
    fn split_of(&self, i: usize) -> usize {
        self.tensors[i].file
    }
    fn release_rows(&self, i: usize, first_row: usize, n_rows: usize) {
        if self.tensors[i].rows == RowOrder::AsStored {
            self.release_range(i, first_row, n_rows)
        }
    }
    fn input_files(&self) -> Vec<PathBuf> {
        self.paths().into_iter().map(Path::to_path_buf).collect()
    }
}

/// One tensor of one output file.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    /// Output name (may differ from the source's, e.g. renumbered layers).
    pub name: String,
    pub ty: GgmlType,
    /// Importance weights, one per column (per row length).
    pub imatrix: Option<Arc<Vec<f32>>>,
}

/// One output file: its metadata and, for each tensor of the shared source order, what to write.
#[derive(Clone, Debug)]
pub struct OutputFile {
    pub path: PathBuf,
    pub metadata: Metadata,
    /// Parallel to the `order` given to `write_matrix`; `None` where a tensor is not in this
    /// file (one file of a split set).
    pub tensors: Vec<Option<PlannedTensor>>,
}

/// What `write_matrix` did, per output.
#[derive(Clone, Debug)]
pub struct OutputReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub n_tensors: usize,
    /// Values in the file's tensors (for bits per weight).
    pub n_weights: u64,
}

impl OutputReport {
    /// Bits per weight of the whole file, header included (as llama.cpp's loader reports it).
    pub fn bits_per_weight(&self) -> f64 {
        if self.n_weights == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.n_weights as f64
        }
    }
}

/// The tensors a file's header declares: its planned tensors, in `order`.
pub(crate) fn decls(
    o: &OutputFile,
    order: &[usize],
    producer: &dyn TensorProducer,
) -> Vec<TensorDecl> {
    order
        .iter()
        .zip(&o.tensors)
        .filter_map(|(&src, pt)| {
            pt.as_ref().map(|pt| TensorDecl {
                name: pt.name.clone(),
                shape: producer.shape(src).to_vec(),
                ty: pt.ty,
            })
        })
        .collect()
}

/// Write every output from one pass over the producer's tensors `order`.
pub fn write_matrix(
    producer: &dyn TensorProducer,
    order: &[usize],
    outputs: &[OutputFile],
    display: crate::progress::Display,
) -> Result<Vec<OutputReport>> {
    for o in outputs {
        if o.tensors.len() != order.len() {
            return Err(Error::Invalid(format!(
                "{}: plan has {} tensors for {} sources",
                o.path.display(),
                o.tensors.len(),
                order.len()
            )));
        }
    }
    let inputs = producer.input_files();
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let output_refs: Vec<&Path> = outputs.iter().map(|o| o.path.as_path()).collect();
    crate::output_files::check_outputs(&input_refs, &output_refs)?;
    let mut planned_bytes = Vec::with_capacity(outputs.len());
    for o in outputs {
        let mut bytes = 0u64;
        for (&src, pt) in order.iter().zip(&o.tensors) {
            if let Some(pt) = pt {
                let n: u64 = producer.shape(src).iter().product();
                bytes = bytes.saturating_add(pt.ty.bytes_for(n).unwrap_or(0));
            }
        }
        planned_bytes.push((o.path.as_path(), bytes));
    }
    crate::output_files::check_free_space(&planned_bytes)?;
    let mut headers: Vec<Vec<TensorDecl>> = Vec::with_capacity(outputs.len());
    for o in outputs {
        let d = decls(o, order, producer);
        if let Some(parent) = o.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(Error::io(
                    &o.path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "output folder does not exist",
                    ),
                ));
            }
        }
        GgufWriter::check(&o.path, &o.metadata, &d)?;
        headers.push(d);
    }
    let mut files = OpenFiles::new(outputs, &headers)?;

    let total: u64 = order
        .iter()
        .map(|&i| producer.shape(i).iter().product::<u64>())
        .sum();
    let bar = Progress::new(display, "writing", total, Unit::Weights);
    let started = Instant::now();
    // Compute and I/O overlap: this thread dequantizes and quantizes chunk k+1 while a writer
    // thread writes chunk k. The bounded channel caps the chunks in flight (memory stays flat):
    // two per output a tensor goes to (the files of a split set count once).
    let fan_out = (0..order.len())
        .map(|k| outputs.iter().filter(|o| o.tensors[k].is_some()).count())
        .max()
        .unwrap_or(0);
    let (to_writer, from_main) = mpsc::sync_channel::<Msg>(2 * fan_out.max(1));
    let (recycle, recycled) = mpsc::channel::<Vec<u8>>();
    let cancel = AtomicBool::new(false);
    let reports = std::thread::scope(|scope| -> Result<Vec<OutputReport>> {
        let deferred = scope.spawn(|| producer.deferred_metadata(&cancel));
        // However this closure returns, the deferred work stops (the scope waits for it).
        let _stop_deferred = CancelOnDrop(&cancel);
        let writer = scope.spawn(move || -> Result<OpenFiles> {
            for msg in from_main {
                match msg {
                    Msg::Data { outs, bytes } => {
                        for out in outs {
                            files.write(out, bytes.as_slice())?;
                        }
                        if let Chunk::Owned(v) = bytes {
                            let _ = recycle.send(v);
                        }
                    }
                    Msg::ReleaseRows { src, row, rows } => producer.release_rows(src, row, rows),
                    Msg::Release { src } => producer.release(src),
                }
            }
            Ok(files)
        });
        let produced = produce_chunks(producer, order, outputs, &bar, &to_writer, &recycled);
        drop(to_writer);
        let files = writer.join().expect("writer thread panicked")?;
        produced?;
        let finished = files.finish_all()?;
        if !deferred.is_finished() {
            bar.set_message("hashing inputs");
        }
        let deferred = deferred
            .join()
            .expect("deferred metadata thread panicked")?;
        rewrite_deferred_headers(outputs, &headers, &finished, &deferred)?;
        // Every file synced (as it was finished), then all renamed at once: an interrupted
        // run leaves the whole new set (a matrix, a split set) or none of it.
        let reports = outputs
            .iter()
            .zip(&finished)
            .map(|(o, f)| OutputReport {
                path: o.path.clone(),
                bytes: f.bytes,
                n_tensors: o.tensors.iter().flatten().count(),
                n_weights: order
                    .iter()
                    .zip(&o.tensors)
                    .filter(|(_, t)| t.is_some())
                    .map(|(&i, _)| producer.shape(i).iter().product::<u64>())
                    .sum(),
            })
            .collect();
        crate::gguf::writer::commit(finished)?;
        Ok(reports)
    })?;
    bar.finish();
    tracing::info!(
        "wrote {} file(s) in {:.2?}",
        reports.len(),
        started.elapsed()
    );
    Ok(reports)
}

/// Sets its flag when dropped.
struct CancelOnDrop<'a>(&'a AtomicBool);

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Write the deferred metadata values over each finished file whose header holds those keys
/// (in a split set, the first file). The new header must be exactly as long as the one written.
fn rewrite_deferred_headers(
    outputs: &[OutputFile],
    headers: &[Vec<TensorDecl>],
    finished: &[FinishedFile],
    deferred: &[(String, Value)],
) -> Result<()> {
    let mut found = vec![false; deferred.len()];
    for ((o, decls), f) in outputs.iter().zip(headers).zip(finished) {
        let mut metadata = o.metadata.clone();
        let mut changed = false;
        for ((key, value), found) in deferred.iter().zip(found.iter_mut()) {
            if metadata.get(key).is_some() {
                metadata.set(key.clone(), value.clone());
                (changed, *found) = (true, true);
            }
        }
        if !changed {
            continue;
        }
        let header = crate::gguf::writer::header_bytes(&metadata, decls)?;
        let written = crate::gguf::writer::header_len(&o.metadata, decls)?;
        if header.len() as u64 != written {
            return Err(Error::Invalid(format!(
                "{}: the final metadata changes the header's length ({written} to {} bytes)",
                o.path.display(),
                header.len()
            )));
        }
        f.rewrite_header(&header)?;
    }
    if let Some(k) = found.iter().position(|f| !f) {
        return Err(Error::Invalid(format!(
            "no output holds the metadata key `{}` to record",
            deferred[k].0
        )));
    }
    Ok(())
}

/// The writers of one run. Files that start with the first tensor (every unsplit output, the
/// first file of a split set) are created before any work, so that an unwritable folder stops
/// the run at once; later files of a split set are created when their first tensor comes and
/// finished (synced, closed) when their last is written: a set of hundreds of files holds one
/// open file and one buffer per output at a time.
struct OpenFiles<'a> {
    outputs: &'a [OutputFile],
    decls: &'a [Vec<TensorDecl>],
    open: Vec<Option<GgufWriter>>,
    done: Vec<Option<FinishedFile>>,
}

impl<'a> OpenFiles<'a> {
    fn new(outputs: &'a [OutputFile], decls: &'a [Vec<TensorDecl>]) -> Result<OpenFiles<'a>> {
        let mut files = OpenFiles {
            outputs,
            decls,
            open: (0..outputs.len()).map(|_| None).collect(),
            done: (0..outputs.len()).map(|_| None).collect(),
        };
        for (i, o) in outputs.iter().enumerate() {
            let starts_run = o.tensors.first().is_none_or(Option::is_some)
                || o.tensors.iter().all(Option::is_none);
            if starts_run {
                files.open[i] = Some(files.create(i)?);
            }
        }
        Ok(files)
    }

    fn create(&self, i: usize) -> Result<GgufWriter> {
        let o = &self.outputs[i];
        GgufWriter::create(&o.path, &o.metadata, &self.decls[i])
    }

    fn write(&mut self, i: usize, bytes: &[u8]) -> Result<()> {
        if self.open[i].is_none() {
            self.open[i] = Some(self.create(i)?);
        }
        let w = self.open[i].as_mut().expect("opened above");
        w.write_data(bytes)?;
        if w.next_tensor().is_none() {
            let w = self.open[i].take().expect("opened above");
            self.done[i] = Some(w.finish_pending()?);
        }
        Ok(())
    }

    /// Every file finished, in output order (files with no data to write still get written).
    fn finish_all(mut self) -> Result<Vec<FinishedFile>> {
        let mut finished = Vec::with_capacity(self.outputs.len());
        for i in 0..self.outputs.len() {
            let f = match (self.done[i].take(), self.open[i].take()) {
                (Some(f), _) => f,
                (None, Some(w)) => w.finish_pending()?,
                (None, None) => self.create(i)?.finish_pending()?,
            };
            finished.push(f);
        }
        Ok(finished)
    }
}

/// Bytes for one output, owned (quantized here) or borrowed (copied unchanged from the source).
enum Chunk<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl Chunk<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Borrowed(b) => b,
        }
    }
}

enum Msg<'a> {
    /// The same bytes for every output in `outs` (outputs that agree on a tensor's type and
    /// imatrix share one quantization).
    Data {
        outs: Vec<usize>,
        bytes: Chunk<'a>,
    },
    ReleaseRows {
        src: usize,
        row: usize,
        rows: usize,
    },
    Release {
        src: usize,
    },
}

/// The compute side of `write_matrix`: every tensor in row chunks, every output per chunk.
/// Returns early (with the error) when a kernel fails or the writer has stopped.
fn produce_chunks<'a>(
    producer: &'a dyn TensorProducer,
    order: &[usize],
    outputs: &[OutputFile],
    bar: &Progress,
    to_writer: &mpsc::SyncSender<Msg<'a>>,
    recycled: &mpsc::Receiver<Vec<u8>>,
) -> Result<()> {
    let writer_gone = || Error::Invalid("the output writer stopped".into());
    let mut f32_buf: Vec<f32> = Vec::new();
    for (k, &src) in order.iter().enumerate() {
        let name = producer.name(src);
        bar.set_message(name);
        let shape = producer.shape(src);
        let row_len = shape[0] as usize;
        let n_rows: usize = shape[1..].iter().product::<u64>() as usize;
        let src_ty = producer.source_type(src);
        let raw = producer.raw(src);
        let copies = |ty: GgmlType| ty == src_ty && raw.is_some();
        let needs_f32 = outputs
            .iter()
            .any(|o| o.tensors[k].as_ref().is_some_and(|pt| !copies(pt.ty)));
        let groups = same_bytes_groups(outputs, k);
        let rows_per_chunk = rows_per_chunk(row_len, n_rows);
        let mut row = 0;
        while row < n_rows {
            let rows = rows_per_chunk.min(n_rows - row);
            if needs_f32 {
                grow(&mut f32_buf, rows * row_len, name)?;
                producer.read_rows(src, row, &mut f32_buf)?;
                refuse_non_finite(name, &f32_buf, row, row_len)?;
            }
            for (pt, outs) in &groups {
                let bytes = match raw {
                    Some(raw) if copies(pt.ty) => {
                        let rb =
                            quant::row_bytes(src_ty, row_len).map_err(|e| Error::quant(name, e))?;
                        Chunk::Borrowed(&raw[row * rb..(row + rows) * rb])
                    }
                    _ => {
                        let rb =
                            quant::row_bytes(pt.ty, row_len).map_err(|e| Error::quant(name, e))?;
                        let mut buf = recycled.try_recv().unwrap_or_default();
                        grow(&mut buf, rows * rb, name)?;
                        quantize_chunk(pt, &f32_buf, row_len, row, n_rows, &mut buf)
                            .map_err(|e| Error::quant(name, e))?;
                        Chunk::Owned(buf)
                    }
                };
                to_writer
                    .send(Msg::Data {
                        outs: outs.clone(),
                        bytes,
                    })
                    .map_err(|_| writer_gone())?;
            }
            to_writer
                .send(Msg::ReleaseRows { src, row, rows })
                .map_err(|_| writer_gone())?;
            bar.inc((rows * row_len) as u64);
            row += rows;
        }
        to_writer
            .send(Msg::Release { src })
            .map_err(|_| writer_gone())?;
    }
    Ok(())
}

/// Resize `buf` to `len`, failing with an error naming the tensor instead of aborting the
/// process when memory runs out.
fn grow<T: Clone + Default>(buf: &mut Vec<T>, len: usize, tensor: &str) -> Result<()> {
    if len > buf.len() {
        buf.try_reserve_exact(len - buf.len()).map_err(|_| {
            Error::Invalid(format!(
                "tensor `{tensor}`: out of memory allocating {} MiB",
                (len * std::mem::size_of::<T>()) >> 20
            ))
        })?;
    }
    buf.resize(len, T::default());
    Ok(())
}

/// The index of the first NaN or infinity in `values`. A fold without early exit vectorizes;
/// chunks in parallel: the check costs no wall time beside the work it follows.
pub(crate) fn first_non_finite(values: &[f32]) -> Option<usize> {
    use rayon::prelude::*;
    const BLOCK: usize = 1 << 16;
    let block = (values.par_chunks(BLOCK))
        .position_first(|c| c.iter().fold(false, |bad, v| bad | !v.is_finite()))?;
    let rest = &values[block * BLOCK..];
    Some(block * BLOCK + rest.iter().position(|v| !v.is_finite())?)
}

/// A NaN or infinity in a tensor about to be written (a merge that divided by zero, an
/// overflow, a damaged input) is an error naming the tensor and row, never a silently broken
/// model; llama-quantize likewise refuses rows it cannot validate.
pub(crate) fn refuse_non_finite(
    tensor: &str,
    values: &[f32],
    first_row: usize,
    row_len: usize,
) -> Result<()> {
    let Some(at) = first_non_finite(values) else {
        return Ok(());
    };
    Err(Error::Invalid(format!(
        "tensor `{tensor}`: value {} at row {}, column {} is not finite; refusing to write it",
        values[at],
        first_row + at / row_len.max(1),
        at % row_len.max(1)
    )))
}

/// The outputs that hold tensor `k`, grouped by what decides its bytes (type and imatrix),
/// in output order: each group is quantized once and written to all its outputs.
fn same_bytes_groups(outputs: &[OutputFile], k: usize) -> Vec<(&PlannedTensor, Vec<usize>)> {
    let same_imatrix = |a: &Option<Arc<Vec<f32>>>, b: &Option<Arc<Vec<f32>>>| match (a, b) {
        (None, None) => true,
        // Bitwise, so that a NaN weight (if any) still matches itself.
        (Some(a), Some(b)) => {
            Arc::ptr_eq(a, b)
                || (a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|(x, y)| x.to_bits() == y.to_bits()))
        }
        _ => false,
    };
    let mut groups: Vec<(&PlannedTensor, Vec<usize>)> = Vec::new();
    for (out, o) in outputs.iter().enumerate() {
        let Some(pt) = &o.tensors[k] else { continue };
        match groups
            .iter_mut()
            .find(|(g, _)| g.ty == pt.ty && same_imatrix(&g.imatrix, &pt.imatrix))
        {
            Some((_, outs)) => outs.push(out),
            None => groups.push((pt, vec![out])),
        }
    }
    groups
}

/// Quantize rows `first_row..` of a tensor of `n_rows` rows. An imatrix longer than one row
/// holds one slice per expert (3-D MoE tensors): each row takes its expert's slice.
pub(crate) fn quantize_chunk(
    pt: &PlannedTensor,
    f32_rows: &[f32],
    row_len: usize,
    first_row: usize,
    n_rows: usize,
    out: &mut [u8],
) -> std::result::Result<(), quant::QuantError> {
    use rayon::prelude::*;
    let Some(imatrix) = pt.imatrix.as_deref() else {
        return quant::quantize_rows(pt.ty, f32_rows, row_len, out, None);
    };
    let n_expert = (imatrix.len() / row_len).max(1);
    if n_expert == 1 {
        return quant::quantize_rows(pt.ty, f32_rows, row_len, out, Some(imatrix));
    }
    let rows_per_expert = n_rows / n_expert;
    let rb = quant::row_bytes(pt.ty, row_len)?;
    f32_rows
        .par_chunks(row_len)
        .zip(out.par_chunks_mut(rb))
        .enumerate()
        .try_for_each(|(i, (x, q))| {
            let e = (first_row + i) / rows_per_expert;
            quant::quantize_row(pt.ty, x, q, Some(&imatrix[e * row_len..(e + 1) * row_len]))
        })
}

/// llama.cpp's tensor order (`weight_name_comparer`): tensors outside layers first, then layer
/// by layer, by name within each group. llama-quantize writes tensors in this order.
pub fn llama_cpp_order(names: &[&str]) -> Vec<usize> {
    let layer = |n: &str| -> i64 {
        n.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|d| d.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by(|&a, &b| (layer(names[a]), names[a]).cmp(&(layer(names[b]), names[b])));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One F32 tensor, with metadata known only at the end (`later`).
    struct DeferredKeys {
        metadata: Metadata,
        later: Vec<(String, Value)>,
    }

    impl TensorProducer for DeferredKeys {
        fn n_tensors(&self) -> usize {
            1
        }
        fn model_metadata(&self) -> &Metadata {
            &self.metadata
        }
        fn name(&self, _: usize) -> &str {
            "t"
        }
        fn shape(&self, _: usize) -> &[u64] {
            &[32, 2]
        }
        fn source_type(&self, _: usize) -> GgmlType {
            GgmlType::F32
        }
        fn read_rows(&self, _: usize, first_row: usize, out: &mut [f32]) -> Result<()> {
            for (j, v) in out.iter_mut().enumerate() {
                *v = (first_row * 32 + j) as f32;
            }
            Ok(())
        }
        fn raw(&self, _: usize) -> Option<&[u8]> {
            None
        }
        fn release(&self, _: usize) {}
        fn input_files(&self) -> Vec<PathBuf> {
            Vec::new()
        }
        fn deferred_metadata(&self, _: &AtomicBool) -> Result<Vec<(String, Value)>> {
            Ok(self.later.clone())
        }
    }

    fn write_deferred(dir: &Path, later: &str) -> Result<PathBuf> {
        let mut metadata = Metadata::new();
        metadata.set("general.architecture", Value::String("llama".into()));
        metadata.set("x.digest", Value::String("0000".into()));
        let producer = DeferredKeys {
            metadata: metadata.clone(),
            later: vec![("x.digest".into(), Value::String(later.into()))],
        };
        let path = dir.join(format!("{later}.gguf"));
        let outputs = [OutputFile {
            path: path.clone(),
            metadata,
            tensors: vec![Some(PlannedTensor {
                name: "t".into(),
                ty: GgmlType::F32,
                imatrix: None,
            })],
        }];
        write_matrix(&producer, &[0], &outputs, crate::progress::Display::Hidden)?;
        Ok(path)
    }

    #[test]
    fn deferred_metadata_is_written_over_its_placeholder_before_the_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_deferred(dir.path(), "abcd").unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.metadata.get_str("x.digest"), Some("abcd"));
        let mut values = vec![0f32; 64];
        store.read_rows(0, 0, &mut values).unwrap();
        assert!(values.iter().enumerate().all(|(j, &v)| v == j as f32));
        // Longer within the header's padding: the data stays where it was, the file is whole.
        let path = write_deferred(dir.path(), "abcde").unwrap();
        assert_eq!(
            Store::open(&path).unwrap().metadata.get_str("x.digest"),
            Some("abcde")
        );
        // Longer than the padding would move the data: an error, and no file.
        let long = "a".repeat(100);
        let err = write_deferred(dir.path(), &long).unwrap_err().to_string();
        assert!(err.contains("changes the header's length"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn order_matches_llama_cpp_comparer() {
        let names = [
            "blk.10.a",
            "output.weight",
            "blk.2.b",
            "blk.2.a",
            "token_embd.weight",
        ];
        let got: Vec<&str> = llama_cpp_order(&names)
            .into_iter()
            .map(|i| names[i])
            .collect();
        assert_eq!(
            got,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.a",
                "blk.2.b",
                "blk.10.a"
            ]
        );
    }
}
