//! What release makers call a model's files: its name from the input path (an HF hub
//! snapshot's repository, a file's stem without split, format or type suffixes), and the check
//! that a user-given name is a plain file name.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use std::path::Path;

/// A model's name for output files: the file stem without split, format or type suffixes
/// (`SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`).
pub fn model_stem(input: &Path) -> String {
    let mut name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    for suffix in [".gguf", ".safetensors", ".index.json", ".json"] {
        if let Some(s) = name.strip_suffix(suffix) {
            name = s.to_string();
        }
    }
    if let Some(i) = name.rfind("-00001-of-") {
        name.truncate(i);
    }
    if let Some(i) = name.rfind(['.', '-']) {
        let tail = name[i + 1..].to_ascii_uppercase();
        let is_type = tail.parse::<GgmlType>().is_ok()
            || ["_S", "_M", "_L", "_XS", "_XXS"].iter().any(|m| {
                tail.strip_suffix(m)
                    .is_some_and(|t| t.parse::<GgmlType>().is_ok())
            });
        if is_type && i > 0 {
            name.truncate(i);
        }
    }
    name
}

/// The model's name for output files. An HF hub snapshot (`.../models--org--Name/snapshots/
/// <sha>`) is named by config.json's `_name_or_path`, else by its repository folder, not by
/// the commit hash; other folders and files by their own name ([`model_stem`]).
pub fn model_name(input: &Path) -> String {
    if input.is_dir() {
        let config = std::fs::read(input.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let from_config = config
            .as_ref()
            .and_then(|c| c.get("_name_or_path"))
            .and_then(|v| v.as_str())
            .and_then(|p| p.trim_end_matches('/').rsplit('/').next())
            .filter(|n| plain_file_name(n, "").is_ok())
            .map(str::to_string);
        let dir = std::fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf());
        let in_snapshot = dir
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "snapshots");
        if in_snapshot {
            let repo = dir
                .parent()
                .and_then(Path::parent)
                .and_then(|r| r.file_name())
                .map(|n| n.to_string_lossy().into_owned());
            let from_repo = repo.and_then(|r| {
                r.strip_prefix("models--")
                    .and_then(|r| r.rsplit("--").next())
                    .map(str::to_string)
            });
            if let Some(name) = from_config.or(from_repo) {
                return name;
            }
        }
    }
    model_stem(input)
}

/// `name` as a plain file name: not empty, no folder separators, not `.` or `..`; `what`
/// names the option or recipe key for the error.
pub fn plain_file_name<'a>(name: &'a str, what: &str) -> Result<&'a str> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(Error::Invalid(format!(
            "{what} `{}` must be a plain file name (no folders, no `..`)",
            crate::error::printable(name)
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_stems() {
        let stem = |p: &str| model_stem(Path::new(p));
        assert_eq!(
            stem("m/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct"
        );
        assert_eq!(stem("synth-F16.gguf"), "synth");
        assert_eq!(stem("llama-7b-Q4_K_M-00001-of-00003.gguf"), "llama-7b");
        assert_eq!(stem("model.safetensors"), "model");
        assert_eq!(stem("dir/Mistral-7B"), "Mistral-7B");
    }
}
