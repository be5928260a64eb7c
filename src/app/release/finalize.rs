//! `smelt release --finalize DIR`: the card, `release.json` and `SHA256SUMS` over split sets
//! that sharded runs (`quantize --shard`, `merge --shard`) wrote into one folder, once every
//! shard is done. Every split set must be complete, numbered as named, and every file must
//! carry the same plan hash (`smelt.shard_plan`): files of shards run with other flags or
//! another smelt build are refused, never published together.

use super::manifest::{
    Fingerprint, ImatrixInfo, Manifest, ReleasedType, SourceInfo, IMATRIX_FILE, MANIFEST_FILE,
    STATE_FILE,
};
use super::{entry, finish, ReleaseOptions};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::shard::PLAN_KEY;
use std::collections::BTreeMap;
use std::path::Path;

/// One file of a split set, as its name and header describe it.
struct Part {
    file: String,
    no: u64,
    count: u64,
    plan: Option<String>,
    tensors: u64,
    tensors_total: u64,
}

/// `STEM-0000K-of-0000N.gguf` -> (STEM, K, N) (K 1-based, as named).
fn split_name(name: &str) -> Option<(&str, u64, u64)> {
    let rest = name.strip_suffix(".gguf")?;
    let (head, n) = rest.rsplit_once("-of-")?;
    let (stem, k) = head.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(k) || !digits(n) {
        return None;
    }
    Some((stem, k.parse().ok()?, n.parse().ok()?))
}

/// The split sets of `dir` by stem, each checked complete and of one plan; the plan's hash.
fn collect_sets(dir: &Path) -> Result<(BTreeMap<String, Vec<Part>>, String)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".gguf") && n != IMATRIX_FILE)
        .collect();
    names.sort();
    let mut sets: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for name in &names {
        let Some((stem, k, n)) = split_name(name) else {
            return Err(Error::Invalid(format!(
                "{}: not a file of a split set (NAME-0000K-of-0000N.gguf); --finalize publishes the split sets of sharded runs",
                dir.join(name).display()
            )));
        };
        let path = dir.join(name);
        let f = GgufFile::open(&path)?;
        let md = &f.metadata;
        let (Some(no), Some(count), Some(total)) = (
            md.get_u64("split.no"),
            md.get_u64("split.count"),
            md.get_u64("split.tensors.count"),
        ) else {
            return Err(Error::format(
                &path,
                "no split.no / split.count keys: not a split file",
            ));
        };
        if no + 1 != k || count != n {
            return Err(Error::format(
                &path,
                format!(
                    "its header says file {} of {count}, its name file {k} of {n}",
                    no + 1
                ),
            ));
        }
        sets.entry(stem.to_string()).or_default().push(Part {
            file: name.clone(),
            no,
            count,
            plan: md.get_str(PLAN_KEY).map(str::to_string),
            tensors: f.tensors.len() as u64,
            tensors_total: total,
        });
    }
    if sets.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no split files to finalize",
            dir.display()
        )));
    }
    let mut plan: Option<(String, &str)> = None;
    for (stem, parts) in &sets {
        // Two runs of different layouts write the same stem with other counts.
        if let Some(other) = parts.iter().find(|p| p.count != parts[0].count) {
            return Err(Error::Invalid(format!(
                "{}: split {} is there twice, from sets of {} and {} files ({} and {}): remove the stale set",
                stem,
                other.no + 1,
                parts[0].count,
                other.count,
                parts[0].file,
                other.file
            )));
        }
        let count = parts[0].count;
        for no in 0..count {
            if !parts.iter().any(|p| p.no == no) {
                return Err(Error::Invalid(format!(
                    "{}: split set {stem} is incomplete: {} is missing (did shard of that file fail?)",
                    dir.display(),
                    crate::split::part_path(Path::new(&format!("{stem}.gguf")), no as usize, count as usize).display()
                )));
            }
        }
        let held: u64 = parts.iter().map(|p| p.tensors).sum();
        if held != parts[0].tensors_total {
            return Err(Error::Invalid(format!(
                "{stem}: the set holds {held} tensors, its split.tensors.count says {}",
                parts[0].tensors_total
            )));
        }
        for p in parts {
            let Some(h) = &p.plan else {
                return Err(Error::Invalid(format!(
                    "{}: no {PLAN_KEY} key: not written by a sharded run (--shard / --shards)",
                    dir.join(&p.file).display()
                )));
            };
            match &plan {
                None => plan = Some((h.clone(), &p.file)),
                Some((first, first_file)) if first != h => {
                    return Err(Error::Invalid(format!(
                        "{}: made with another plan than {first_file} ({} vs {}): shards of different runs (flags or smelt builds) cannot be published together",
                        p.file,
                        &h[..12.min(h.len())],
                        &first[..12.min(first.len())]
                    )))
                }
                _ => {}
            }
        }
    }
    let hash = plan.map(|(h, _)| h).unwrap_or_default();
    Ok((sets, hash))
}

/// What `--finalize` needs beyond the folder.
pub struct FinalizeOptions<'a> {
    pub dir: &'a Path,
    /// The model the shards were made from, when given: hashed for the card.
    pub source: Option<&'a Path>,
    pub base_model: Option<String>,
    pub quantized_by: Option<String>,
    pub command_line: Vec<String>,
    pub quiet: bool,
}

/// Publish the split sets in `dir`: checked (see the module), then the card, `release.json`
/// and `SHA256SUMS`. An earlier release record in the folder lends its quality figures to the
/// types whose files are unchanged.
pub fn finalize(fo: &FinalizeOptions) -> Result<Manifest> {
    let dir = fo.dir;
    let (sets, plan_hash) = collect_sets(dir)?;
    let earlier = [STATE_FILE, MANIFEST_FILE]
        .iter()
        .find_map(|f| Manifest::load(&dir.join(f)).ok());
    // Every set is NAME-TYPE: the name is the part before the last `-` (types have none).
    let mut name: Option<String> = None;
    let mut types = Vec::new();
    let mut first_md = None;
    for (stem, parts) in &sets {
        let (model, ty) = stem.rsplit_once('-').unwrap_or(("model", stem.as_str()));
        match &name {
            None => name = Some(model.to_string()),
            Some(n) if n != model => {
                return Err(Error::Invalid(format!(
                    "{}: holds sets of two models ({n} and {model})",
                    dir.display()
                )))
            }
            _ => {}
        }
        let mut ordered: Vec<&Part> = parts.iter().collect();
        ordered.sort_by_key(|p| p.no);
        let entries = ordered
            .iter()
            .map(|p| entry(dir, &p.file))
            .collect::<Result<Vec<_>>>()?;
        let first = GgufFile::open(dir.join(&ordered[0].file))?;
        let mut weights = 0u64;
        for p in &ordered {
            let f = GgufFile::open(dir.join(&p.file))?;
            weights += f.tensors.iter().map(|t| t.n_elements()).sum::<u64>();
        }
        let bytes: u64 = entries.iter().map(|e| e.bytes).sum();
        let quality = earlier
            .as_ref()
            .and_then(|m| m.released(ty))
            .filter(|r| r.parts == entries)
            .and_then(|r| r.quality.clone());
        types.push(ReleasedType {
            file_type: ty.to_string(),
            parts: entries,
            bytes,
            bits_per_weight: if weights == 0 {
                0.0
            } else {
                bytes as f64 * 8.0 / weights as f64
            },
            quality,
        });
        if first_md.is_none() {
            first_md = Some(first);
        }
    }
    let first = first_md.expect("at least one set");
    let md = &first.metadata;
    let name = name.unwrap_or_default();
    let (bytes, sha256, path) = match fo.source {
        Some(p) => {
            let (b, h) = crate::store::Store::open(p)?.sha256()?;
            (b, h, p.display().to_string())
        }
        None => (
            0,
            format!("not recorded (sharded run, plan {plan_hash})"),
            md.get_str("general.name").unwrap_or(&name).to_string(),
        ),
    };
    let mut params = 0u64;
    for parts in sets.values().take(1) {
        for p in parts {
            let f = GgufFile::open(dir.join(&p.file))?;
            params += f.tensors.iter().map(|t| t.n_elements()).sum::<u64>();
        }
    }
    let is_merge = md.get_str("smelt.recipe").is_some();
    let source_path = fo
        .source
        .map(Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from(&path));
    let mut state = Manifest {
        name: name.clone(),
        smelt_version: crate::cli::VERSION.to_string(),
        command_line: fo.command_line.clone(),
        fingerprint: Fingerprint {
            smelt_version: crate::cli::VERSION.to_string(),
            source_sha256: sha256.clone(),
            types: types.iter().map(|t| t.file_type.clone()).collect(),
            imatrix: "none".into(),
            split: Some(format!("sharded, plan {plan_hash}")),
            name: name.clone(),
            ..Default::default()
        },
        source: SourceInfo {
            path,
            kind: if is_merge { "recipe" } else { "gguf" }.into(),
            bytes,
            sha256,
            architecture: md.architecture().unwrap_or("").to_string(),
            parameters: params,
            base_models: super::card::base_models(
                is_merge,
                md,
                &source_path,
                fo.base_model.as_deref(),
            ),
            license: md.get_str("general.license").map(str::to_string),
            recipe: md.get_str("smelt.recipe").map(str::to_string),
        },
        types,
        ..Default::default()
    };
    if dir.join(IMATRIX_FILE).is_file() {
        let e = entry(dir, IMATRIX_FILE)?;
        state.imatrix = Some(ImatrixInfo {
            file: IMATRIX_FILE.into(),
            sha256: e.sha256.clone(),
            computed: false,
            dataset: String::new(),
            chunks: None,
            n_ctx: None,
        });
        state.fingerprint.imatrix = e.sha256.clone();
        state.other_files.push(e);
    }
    state.evaluation = earlier.and_then(|m| m.evaluation);
    let evaluated = state.evaluation.is_some() && state.types.iter().all(|t| t.quality.is_some());
    let opts = ReleaseOptions {
        source: source_path,
        out_dir: dir.to_path_buf(),
        types: Vec::new(),
        imatrix: super::ImatrixChoice::None,
        calibration_text: None,
        eval_text: None,
        n_ctx: 0,
        imatrix_chunks: None,
        eval_chunks: None,
        evaluate: evaluated,
        split: None,
        name: Some(name),
        base_model: fo.base_model.clone(),
        quantized_by: fo.quantized_by.clone(),
        force: false,
        command_line: fo.command_line.clone(),
        display: crate::progress::Display::for_stderr(true),
        quiet: fo.quiet,
    };
    finish(&opts, dir, &mut state, evaluated)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_parse() {
        assert_eq!(
            split_name("m-Q8_0-00002-of-00007.gguf"),
            Some(("m-Q8_0", 2, 7))
        );
        assert_eq!(split_name("m-Q8_0.gguf"), None);
        assert_eq!(split_name("m-Q8_0-2-of-7.gguf"), None);
    }
}
