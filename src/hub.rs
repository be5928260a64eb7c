//! Hugging Face hub model ids in recipes (`model: org/name`, `org/name@revision`): found in the
//! local Hugging Face cache, laid out as the hub's own clients write it
//! (`models--org--name/refs/<revision>` holds a commit, `snapshots/<commit>/` the files), and
//! when missing, downloaded into that cache with the `hf-hub` crate (resumable: a file cut short
//! goes on from its `.part` file). Only safetensors weights and JSON / `tokenizer.model` files
//! are fetched, never pickles (`*.bin`, `*.pt`), which can run code when loaded.
//!
//! Environment, as the hub's Python client reads it: `HF_HUB_CACHE` (else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), `HF_ENDPOINT`, `HF_TOKEN` (else the `token` file of `HF_HOME`),
//! `HF_HUB_OFFLINE` (cache only).

use crate::progress::{Display, Progress, Unit};
use std::path::{Path, PathBuf};

/// A model on the hub: `org/name`, optionally at a revision (branch, tag or commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: Option<String>,
}

impl HubId {
    /// `org/name` or `org/name@revision`, as the hub spells repository ids (letters, digits,
    /// `-`, `_`, `.`; no `--` or `..`; not starting or ending with `-` or `.`). Names that end
    /// like a model file (`.gguf`, `.safetensors`) are paths, never hub ids.
    pub fn parse(reference: &str) -> Option<HubId> {
        let (repo, revision) = match reference.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() && !rev.contains('@') => {
                (repo, Some(rev.to_string()))
            }
            Some(_) => return None,
            None => (reference, None),
        };
        let (org, name) = repo.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.contains("--")
                && !p.contains("..")
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        let file_like = [".gguf", ".safetensors", ".json", ".bin", ".yaml", ".yml"]
            .iter()
            .any(|ext| name.to_ascii_lowercase().ends_with(ext));
        let rev_ok = revision.as_deref().is_none_or(|r| {
            !r.contains("..")
                && !r.starts_with('/')
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        });
        (part_ok(org) && part_ok(name) && !file_like && rev_ok).then(|| HubId {
            repo: repo.to_string(),
            revision,
        })
    }

    /// The revision asked for (`main` when none is given).
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repository's folder in the cache (`models--org--name`).
    pub fn cache_folder(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}", self.repo.replace('/', "--")))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{r}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// Where models are found and downloaded to, and how.
#[derive(Clone, Debug)]
pub struct HubOptions {
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE`: the cache only.
    pub offline: bool,
    pub endpoint: String,
    pub token: Option<String>,
    pub progress: Display,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    if let Some(h) = env("HF_HOME") {
        return PathBuf::from(h);
    }
    let cache = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface")
}

impl HubOptions {
    /// From the environment, as the hub's Python client reads it.
    pub fn from_env(progress: Display) -> HubOptions {
        let cache = env("HF_HUB_CACHE")
            .or_else(|| env("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home().join("hub"));
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "on" | "yes" | "true"
            )
        });
        let endpoint = env("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".to_string())
            .trim_end_matches('/')
            .to_string();
        let token = env("HF_TOKEN").or_else(|| {
            let path = env("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home().join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        HubOptions {
            cache,
            offline,
            endpoint,
            token,
            progress,
        }
    }
}

/// Whether a file of a repository is one smelt fetches: weights as safetensors, and the
/// JSON and tokenizer files a model folder needs. Top-level files only (`original/`, `onnx/`
/// hold other formats of the same model).
fn wanted(file: &str) -> bool {
    !file.contains('/')
        && (file.ends_with(".safetensors") || file.ends_with(".json") || file == "tokenizer.model")
}

/// Pickled weights, which smelt never loads.
fn is_pickle(file: &str) -> bool {
    [".bin", ".pt", ".pth", ".ckpt", ".pkl"]
        .iter()
        .any(|e| file.ends_with(e))
}

/// The weight files a model folder's index names, or `None` without an index.
fn indexed_shards(index: &Path) -> Result<Option<Vec<String>>, String> {
    let text = match std::fs::read_to_string(index) {
        Ok(t) => t,
        Err(_) => return Ok(None),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{}: no `weight_map`", index.display()))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(Some(shards))
}

/// Whether snapshot `dir` holds a whole safetensors model: `config.json` and the weights
/// (every shard its index names, else at least one `.safetensors` file).
fn complete(dir: &Path) -> bool {
    // A PEFT adapter (`BASE+ADAPTER` names one by hub id too).
    if dir.join("adapter_config.json").is_file() {
        return dir.join("adapter_model.safetensors").is_file();
    }
    if !dir.join("config.json").is_file() {
        return false;
    }
    match indexed_shards(&dir.join("model.safetensors.index.json")) {
        Ok(Some(shards)) => {
            !shards.is_empty()
                && shards
                    .iter()
                    .all(|s| wanted(s) && s.ends_with(".safetensors") && dir.join(s).is_file())
        }
        Ok(None) => std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        }),
        Err(_) => false,
    }
}

/// The cached snapshot of `id`, when one is there (complete or not).
pub fn cached_snapshot(id: &HubId, cache: &Path) -> Option<PathBuf> {
    let repo = id.cache_folder(cache);
    let rev = id.revision();
    let by_ref = std::fs::read_to_string(repo.join("refs").join(rev))
        .ok()
        .map(|commit| repo.join("snapshots").join(commit.trim()));
    // A commit hash names its snapshot directly (the hub's clients write no ref for it).
    let by_commit = (rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| repo.join("snapshots").join(rev));
    by_ref.into_iter().chain(by_commit).find(|p| p.is_dir())
}

/// Shows one file's download on smelt's progress display.
struct DownloadProgress {
    display: Display,
    current: Option<Progress>,
}

impl hf_hub::api::Progress for DownloadProgress {
    fn init(&mut self, size: usize, filename: &str) {
        // Called again when a download resumes: the new bar starts where the file is.
        self.current = Some(Progress::new(
            self.display,
            &format!("downloading {filename}"),
            size as u64,
            Unit::Bytes,
        ));
    }
    fn update(&mut self, size: usize) {
        if let Some(p) = &self.current {
            p.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(p) = self.current.take() {
            p.finish();
        }
    }
}

/// The local folder of hub model `id`: its cached snapshot when whole, else (network allowed)
/// downloaded into the cache first. Errors are one sentence about `id`, for the caller to
/// prefix with the recipe line.
pub fn resolve(id: &HubId, opts: &HubOptions) -> Result<PathBuf, String> {
    let cached = cached_snapshot(id, &opts.cache);
    if let Some(dir) = cached.as_ref().filter(|d| complete(d)) {
        return Ok(dir.clone());
    }
    if opts.offline {
        let what = match &cached {
            Some(d) => format!(
                "its snapshot {} lacks config.json or safetensors weights",
                d.display()
            ),
            None => format!(
                "it is not in the Hugging Face cache ({})",
                id.cache_folder(&opts.cache).display()
            ),
        };
        return Err(format!(
            "hub model `{id}`: {what}, and HF_HUB_OFFLINE forbids downloading it (download it, or unset HF_HUB_OFFLINE)"
        ));
    }
    download(id, opts)
}

/// Download `id`'s safetensors model into the cache; its snapshot folder.
fn download(id: &HubId, opts: &HubOptions) -> Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};
    let api = ApiBuilder::from_cache(Cache::new(opts.cache.clone()))
        .with_endpoint(opts.endpoint.clone())
        .with_token(opts.token.clone())
        .with_progress(false)
        // A dropped connection resumes where the file stopped.
        .with_retries(2)
        .build()
        .map_err(|e| format!("hub model `{id}`: {e}"))?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision().to_string(),
    ));
    let fail = |what: &str, e: hf_hub::api::sync::ApiError| {
        let hint = match &e {
            hf_hub::api::sync::ApiError::RequestError(r) => match r.as_ref() {
                ureq::Error::Status(401 | 403, _) => {
                    " (a gated or private model: set HF_TOKEN to a token with access)"
                }
                ureq::Error::Status(404, _) => " (no such model or revision on the hub)",
                _ => "",
            },
            _ => "",
        };
        format!("hub model `{id}`: {what} from {}: {e}{hint}", opts.endpoint)
    };
    let info = repo.info().map_err(|e| fail("cannot list its files", e))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let has_weights = files
        .iter()
        .any(|f| wanted(f) && f.ends_with(".safetensors"));
    if !has_weights {
        let pickles: Vec<&str> = files
            .iter()
            .map(String::as_str)
            .filter(|f| is_pickle(f))
            .collect();
        return Err(if pickles.is_empty() {
            format!("hub model `{id}` has no safetensors weights")
        } else {
            format!(
                "hub model `{id}` has only pickled weights ({}): smelt never loads pickles, which can run code; use a revision or a copy of the model with safetensors weights",
                pickles.join(", ")
            )
        });
    }
    let get = |f: &str| -> Result<PathBuf, String> {
        let progress = DownloadProgress {
            display: opts.progress,
            current: None,
        };
        repo.download_with_progress(f, progress)
            .map_err(|e| fail(&format!("cannot download {f}"), e))
    };
    // Files already in the snapshot are not fetched again. The JSON files first: the index says which weight files make the model (a repository
    // may also carry the same weights in another layout, like Mistral's
    // consolidated.safetensors).
    let mut snapshot: Option<PathBuf> = None;
    for f in files
        .iter()
        .filter(|f| wanted(f) && !f.ends_with(".safetensors"))
    {
        let path = present(id, opts, f).map_or_else(|| get(f.as_str()), Ok)?;
        snapshot.get_or_insert_with(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    }
    let index = snapshot
        .as_ref()
        .map(|d| indexed_shards(&d.join("model.safetensors.index.json")))
        .transpose()?
        .flatten();
    let weights: Vec<String> = match index {
        Some(shards) => {
            if let Some(bad) = shards.iter().find(|s| !wanted(s) || !files.contains(s)) {
                return Err(format!(
                    "hub model `{id}`: its index names `{bad}`, which is not a safetensors file of the repository"
                ));
            }
            shards
        }
        None if files.iter().any(|f| f == "model.safetensors") => {
            vec!["model.safetensors".to_string()]
        }
        None => files
            .iter()
            .filter(|f| wanted(f) && f.ends_with(".safetensors"))
            .cloned()
            .collect(),
    };
    for f in &weights {
        let path = present(id, opts, f).map_or_else(|| get(f.as_str()), Ok)?;
        snapshot.get_or_insert_with(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    }
    let dir = snapshot.ok_or_else(|| format!("hub model `{id}`: nothing was downloaded"))?;
    if !complete(&dir) {
        return Err(format!(
            "hub model `{id}`: the download in {} lacks config.json or some of its weights",
            dir.display()
        ));
    }
    Ok(dir)
}

/// File `f` of `id`'s cached snapshot, when it is already there.
fn present(id: &HubId, opts: &HubOptions, f: &str) -> Option<PathBuf> {
    cached_snapshot(id, &opts.cache)
        .map(|d| d.join(f))
        .filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_paths() {
        let id = HubId::parse("HuggingFaceTB/SmolLM2-135M-Instruct@v1.0").unwrap();
        assert_eq!(id.repo, "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(id.revision(), "v1.0");
        assert_eq!(HubId::parse("org/name").unwrap().revision(), "main");
        for path in [
            "models/A.gguf",
            "name",
            "a/b/c",
            "../x",
            "./x",
            "org/",
            "/abs",
            "org/na me",
            "org/name@",
            "org/a--b",
            "org/name@rev@x",
            "org/x.safetensors",
        ] {
            assert_eq!(HubId::parse(path), None, "{path}");
        }
        assert_eq!(
            HubId::parse("o/n").unwrap().cache_folder(Path::new("/c")),
            Path::new("/c/models--o--n")
        );
    }
}
