//! What a release folder holds, as `release.json` records it and as the progress file of an
//! unfinished release records the part already done: the same document, filled in as the
//! steps complete.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The progress file of a release under way (removed when the release is complete; a rerun of
/// the same release reads it and skips what it lists as done and still verifies).
pub const STATE_FILE: &str = ".smelt-release-state.json";
/// The finished release's record.
pub const MANIFEST_FILE: &str = "release.json";
pub const CHECKSUMS_FILE: &str = "SHA256SUMS";
pub const CARD_FILE: &str = "README.md";
pub const PLOT_FILE: &str = "quality.png";
pub const IMATRIX_FILE: &str = "imatrix.gguf";
/// The reference's log-probabilities while the release is measured (not published).
pub const REFERENCE_LOGITS_FILE: &str = ".smelt-release-reference.logits";

/// Everything that decides a release's bytes: a folder made with another fingerprint is
/// another release, not one to resume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub smelt_version: String,
    pub source_sha256: String,
    pub types: Vec<String>,
    /// `auto`, `none`, or the SHA-256 of the file given.
    pub imatrix: String,
    pub calibration_sha256: String,
    pub evaluation_sha256: String,
    pub n_ctx: usize,
    pub imatrix_chunks: Option<usize>,
    pub eval_chunks: Option<usize>,
    pub split: Option<String>,
    pub name: String,
}

/// One file of the release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's name inside the release folder.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What the source was.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// As given on the command line.
    pub path: String,
    /// `gguf`, `safetensors`, `hf-folder` or `recipe`.
    pub kind: String,
    pub bytes: u64,
    pub sha256: String,
    pub architecture: String,
    pub parameters: u64,
    pub base_models: Vec<String>,
    pub license: Option<String>,
    /// The recipe's text, for a merge.
    pub recipe: Option<String>,
}

/// The importance matrix the quantized types were made with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImatrixInfo {
    /// In the release folder (computed by this release) or the path given.
    pub file: String,
    pub sha256: String,
    /// Computed here (`smelt imatrix`), or given with `--imatrix FILE`.
    pub computed: bool,
    pub dataset: String,
    pub chunks: Option<usize>,
    pub n_ctx: Option<usize>,
}

/// The quality of one type against the reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub perplexity: f64,
    pub perplexity_error: f64,
    pub kld_mean: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    /// How often the type's most likely token is the reference's, in percent.
    pub same_top_percent: f64,
}

/// The evaluation every quality figure comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationInfo {
    pub text: String,
    pub text_sha256: String,
    pub n_ctx: usize,
    pub chunks: usize,
    pub tokens_scored: usize,
    /// The reference (the source itself, at its own precision).
    pub reference: String,
    pub reference_perplexity: f64,
    pub reference_perplexity_error: f64,
}

/// One quantization type of the release: its file (or split set) and how good it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleasedType {
    #[serde(rename = "type")]
    pub file_type: String,
    /// One file, or the files of a split set in order.
    pub parts: Vec<FileEntry>,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub quality: Option<Quality>,
}

/// `release.json`, and the progress file while the release is made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub smelt_version: String,
    pub command_line: Vec<String>,
    pub fingerprint: Fingerprint,
    pub source: SourceInfo,
    pub imatrix: Option<ImatrixInfo>,
    pub evaluation: Option<EvaluationInfo>,
    pub types: Vec<ReleasedType>,
    /// The other published files (imatrix, plot, card), with their hashes.
    pub other_files: Vec<FileEntry>,
    /// Written for the reference logits while the evaluation is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_logits: Option<FileEntry>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let bytes = crate::input::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::format(
                path,
                format!("not a smelt release record ({e}); remove it or use --force"),
            )
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).expect("plain data serializes");
        text.push('\n');
        crate::output_files::write_whole(path, text.as_bytes())
    }

    pub fn released(&self, file_type: &str) -> Option<&ReleasedType> {
        self.types.iter().find(|t| t.file_type == file_type)
    }

    /// Every file of the release this record names (its GGUFs, imatrix, plot and card).
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.types
            .iter()
            .flat_map(|t| &t.parts)
            .chain(&self.other_files)
    }
}
