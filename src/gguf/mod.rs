//! The GGUF file format: type table, metadata values, reader and streaming writer.

pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use reader::{GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{Metadata, Value, ValueType};
pub use writer::GgufWriter;

/// `GGUF` as a little-endian u32.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// ggml's default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// File `no` (0-based) of a split set: `PREFIX-0000{no+1}-of-0000{count}.gguf`, as llama.cpp's
/// `llama_split_path` names it.
pub fn split_file_name(prefix: &str, no: u64, count: u64) -> String {
    format!("{prefix}-{:05}-of-{count:05}.gguf", no + 1)
}

/// The value llama.cpp writes to `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;
