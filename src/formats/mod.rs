//! File formats other than GGUF (which has its own module, `gguf`).

pub mod safetensors;
