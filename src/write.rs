//! The matrix writer: each source tensor is dequantized once, in row chunks, and fanned out
//! to every requested output file, each with its own target type per tensor.
//!
//! Memory is bounded by one chunk of f32 rows plus one quantized chunk per output, whatever
//! the model size; source pages are released as soon as a tensor is done.

use crate::error::{Error, Result};
use crate::gguf::writer::TensorDecl;
use crate::gguf::{GgmlType, GgufWriter, Metadata};
use crate::quant;
use crate::store::{RowOrder, Store};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Upper bound on f32 values dequantized at once (16 MiB): large enough to keep every core
/// busy, small enough that peak memory does not depend on the model.
const CHUNK_VALUES: usize = 4 << 20;

/// Anything that yields tensors as f32 rows: a store, or a merge in progress.
pub trait TensorProducer: Sync {
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
    /// The consumer is done with rows `first_row..first_row + n_rows` of tensor `i` (lets a
    /// memory-mapped source drop them early, so huge tensors never sit in memory whole).
    fn release_rows(&self, _i: usize, _first_row: usize, _n_rows: usize) {}
}

impl TensorProducer for Store {
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
        (self.tensors[i].rows == RowOrder::AsStored).then(|| Store::raw(self, i))
    }
    fn release(&self, i: usize) {
        Store::release(self, i)
    }
    fn release_rows(&self, i: usize, first_row: usize, n_rows: usize) {
        if self.tensors[i].rows == RowOrder::AsStored {
            self.release_range(i, first_row, n_rows)
        }
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
    /// Parallel to the `order` given to `write_matrix`.
    pub tensors: Vec<PlannedTensor>,
}

/// What `write_matrix` did, per output.
#[derive(Clone, Debug)]
pub struct OutputReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub n_tensors: usize,
}

/// Write every output from one pass over the producer's tensors `order`.
pub fn write_matrix(
    producer: &dyn TensorProducer,
    order: &[usize],
    outputs: &[OutputFile],
    show_progress: bool,
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
    let mut writers = Vec::with_capacity(outputs.len());
    for o in outputs {
        let decls: Vec<TensorDecl> = order
            .iter()
            .zip(&o.tensors)
            .map(|(&src, pt)| TensorDecl {
                name: pt.name.clone(),
                shape: producer.shape(src).to_vec(),
                ty: pt.ty,
            })
            .collect();
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
        writers.push(GgufWriter::create(&o.path, &o.metadata, &decls)?);
    }

    let total: u64 = order
        .iter()
        .map(|&i| producer.shape(i).iter().product::<u64>())
        .sum();
    let bar = if show_progress {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}",
            )
            .expect("static template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };

    let started = Instant::now();
    let mut f32_buf: Vec<f32> = Vec::new();
    let mut q_buf: Vec<u8> = Vec::new();
    for (k, &src) in order.iter().enumerate() {
        let name = producer.name(src).to_string();
        bar.set_message(name.clone());
        let shape = producer.shape(src);
        let row_len = shape[0] as usize;
        let n_rows: usize = shape[1..].iter().product::<u64>() as usize;
        let src_ty = producer.source_type(src);
        let raw = producer.raw(src);
        let needs_f32 = outputs
            .iter()
            .any(|o| !(o.tensors[k].ty == src_ty && raw.is_some()));
        let rows_per_chunk = (CHUNK_VALUES / row_len.max(1)).clamp(1, n_rows.max(1));
        let mut row = 0;
        while row < n_rows {
            let rows = rows_per_chunk.min(n_rows - row);
            if needs_f32 {
                f32_buf.resize(rows * row_len, 0.0);
                producer.read_rows(src, row, &mut f32_buf)?;
            }
            for (o, w) in outputs.iter().zip(writers.iter_mut()) {
                let pt = &o.tensors[k];
                match raw {
                    Some(bytes) if pt.ty == src_ty => {
                        let rb = quant::row_bytes(src_ty, row_len)
                            .map_err(|e| Error::quant(&name, e))?;
                        w.write_data(&bytes[row * rb..(row + rows) * rb])?;
                    }
                    _ => {
                        let rb =
                            quant::row_bytes(pt.ty, row_len).map_err(|e| Error::quant(&name, e))?;
                        q_buf.resize(rows * rb, 0);
                        let imatrix = pt.imatrix.as_ref().map(|v| v.as_slice());
                        quant::quantize_rows(pt.ty, &f32_buf, row_len, &mut q_buf, imatrix)
                            .map_err(|e| Error::quant(&name, e))?;
                        w.write_data(&q_buf)?;
                    }
                }
            }
            producer.release_rows(src, row, rows);
            bar.inc((rows * row_len) as u64);
            row += rows;
        }
        producer.release(src);
    }
    // Large buffers are not needed while files are synced.
    drop((f32_buf, q_buf));
    let mut reports = Vec::new();
    for (o, w) in outputs.iter().zip(writers) {
        w.finish()?;
        let bytes = std::fs::metadata(&o.path).map(|m| m.len()).unwrap_or(0);
        reports.push(OutputReport {
            path: o.path.clone(),
            bytes,
            n_tensors: order.len(),
        });
    }
    bar.finish_and_clear();
    tracing::info!(
        "wrote {} file(s) in {:.2?}",
        reports.len(),
        started.elapsed()
    );
    Ok(reports)
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
