//! From a model and a llama-quantize type name to a per-tensor plan and the output metadata.
//! (Interim rules: the full llama-quantize port lands in `mix`.)

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Metadata, Value, QUANTIZATION_VERSION};
use crate::store::Store;
use crate::write::PlannedTensor;

/// The plan of one output file.
pub struct FilePlan {
    /// llama-quantize's name of the file type (`Q4_K_M`), used in output file names.
    pub file_type_name: String,
    pub metadata: Metadata,
    /// Parallel to the order given to `plan_file`.
    pub tensors: Vec<PlannedTensor>,
}

/// (name, llama_ftype id, default ggml type)
const FILE_TYPES: &[(&str, u32, GgmlType)] = &[
    ("F32", 0, GgmlType::F32),
    ("F16", 1, GgmlType::F16),
    ("Q4_0", 2, GgmlType::Q4_0),
    ("Q4_1", 3, GgmlType::Q4_1),
    ("Q8_0", 7, GgmlType::Q8_0),
    ("Q5_0", 8, GgmlType::Q5_0),
    ("Q5_1", 9, GgmlType::Q5_1),
    ("BF16", 32, GgmlType::BF16),
];

pub fn plan_file(store: &Store, order: &[usize], type_name: &str) -> Result<FilePlan> {
    let &(name, ftype, default) = FILE_TYPES
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(type_name))
        .ok_or_else(|| Error::Invalid(format!("unknown quantization type `{type_name}`")))?;
    let tensors = order
        .iter()
        .map(|&i| {
            let t = &store.tensors[i];
            let quantize = t.shape.len() >= 2 && t.name.ends_with("weight");
            let ty = if quantize && t.shape[0] % default.block_size() as u64 == 0 {
                default
            } else if quantize {
                GgmlType::F16
            } else {
                t.ty
            };
            PlannedTensor {
                name: t.name.clone(),
                ty,
                imatrix: None,
            }
        })
        .collect();
    Ok(FilePlan {
        file_type_name: name.to_string(),
        metadata: output_metadata(&store.metadata, ftype),
        tensors,
    })
}

/// The source's metadata as llama-quantize writes it: every key copied in order, then
/// `general.quantization_version` and `general.file_type` moved to the end, split keys dropped.
pub fn output_metadata(source: &Metadata, ftype: u32) -> Metadata {
    let mut m = source.clone();
    m.set_last(
        "general.quantization_version",
        Value::U32(QUANTIZATION_VERSION),
    );
    m.set_last("general.file_type", Value::U32(ftype));
    m.retain(|k, _| !matches!(k, "split.no" | "split.count" | "split.tensors.count"));
    m
}
