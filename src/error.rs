//! The crate's error type: every variant names the file, tensor or recipe line at fault.

use crate::quant::QuantError;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not what it claims to be (bad magic, truncated, inconsistent).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{}: unsupported type {ty} in tensor `{tensor}`", path.display())]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ty: String,
    },
    #[error("tensor `{tensor}`: {source}")]
    Quant { tensor: String, source: QuantError },
    /// Bad user input that is not a file's fault (options, names, types).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn quant(tensor: impl Into<String>, source: QuantError) -> Self {
        Error::Quant {
            tensor: tensor.into(),
            source,
        }
    }
}
