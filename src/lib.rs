//! smelt: merge and quantize large language models straight to GGUF.

pub mod arch;
pub mod error;
pub mod gguf;
pub mod quant;
pub mod safetensors;
pub mod store;

pub use error::{Error, Result};
