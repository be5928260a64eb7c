//! GGUF reader (placeholder, being written).
use super::{GgmlType, Metadata};
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    pub offset: u64,
}
pub struct GgufFile {
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
}
