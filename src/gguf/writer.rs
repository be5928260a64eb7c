//! GGUF writer (placeholder, being written).
pub struct GgufWriter;
