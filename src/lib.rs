//! smelt: merge and quantize large language models straight to GGUF.

pub mod app;
pub mod arch;
pub mod calibrate;
pub mod cli;
pub mod convert;
pub mod error;
pub mod eval;
pub mod fixture;
pub mod formats;
pub mod gguf;
pub mod heal;
pub mod hf_writer;
pub mod hub;
pub mod input;
pub mod layout;
pub mod lora;
pub mod merge;
pub mod model_card;
pub mod output_files;
pub mod plot;
pub mod progress;
pub mod quant;
pub mod quantize;
pub mod recipe;
pub mod seed;
pub mod shard;
pub mod split;
pub mod store;
pub mod target;
pub mod tokenizer;
pub mod write;

pub use error::{Error, Result};
