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

/// `text` with control characters other than newline and tab escaped (`\u{1b}`), so that a
/// name or value from a hostile file cannot move the cursor, recolour or retitle the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let is_bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(is_bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_bad(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            super::printable("blk.0\x1b[2J\x07"),
            "blk.0\\u{1b}[2J\\u{7}"
        );
        assert_eq!(super::printable("a\nb\tc é"), "a\nb\tc é");
    }
}
