//! smelt: merge and quantize large language models straight to GGUF.

pub mod gguf;
pub mod quant;
