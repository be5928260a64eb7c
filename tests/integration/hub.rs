//! Hub model ids in recipes: found in a pre-filled Hugging Face cache, downloaded from a
//! hub-shaped server on loopback (HF_ENDPOINT) into that cache (resuming a cut file, sending
//! HF_TOKEN, never fetching pickles), and refused with the recipe line when offline.

use crate::common::{self, Smelt};
use sha2::{Digest, Sha256};
use smelt::fixture::TinyLlama;
use smelt::gguf::GgmlType;
use smelt::store::Store;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn tiny(seed: u64) -> TinyLlama {
    TinyLlama {
        n_layer: 2,
        seed,
        dtype: GgmlType::F32,
        ..Default::default()
    }
}

/// Run `smelt merge recipe.yaml -o out` in `dir` with only the given HF_* variables set.
fn merge(dir: &Path, env: &[(&str, String)]) -> Result<String, String> {
    let mut cmd = Smelt::new(dir).args(["merge", "recipe.yaml", "-o", "out", "--types", "F32"]);
    for k in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "XDG_CACHE_HOME",
        // The loopback hub is reached directly, never through a proxy.
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd = cmd.env_remove(k);
    }
    // No token file of the user's is read.
    cmd = cmd.env("HOME", dir);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd.run().result()
}

fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let s = Store::open(path).unwrap();
    (0..s.tensors.len())
        .map(|i| (s.tensors[i].name.clone(), s.read_f32(i).unwrap()))
        .collect()
}

/// Output = 0.25 · A + 0.75 · B, tensor by tensor.
fn assert_quarter_mix(out: &Path, a: &Path, b: &Path) {
    let (out, a, b) = (tensors(out), tensors(a), tensors(b));
    assert_eq!(out.len(), a.len());
    for (name, o) in &out {
        for ((x, y), z) in a[name].iter().zip(&b[name]).zip(o) {
            let want = 0.25 * x + 0.75 * y;
            assert!((want - z).abs() <= 1e-6 * want.abs().max(1.0), "{name}");
        }
    }
}

const RECIPE: &str = "merge_method: linear
dtype: float32
models:
  - model: org/tiny
    parameters: {weight: 0.25}
  - model: org/tiny@v1
    parameters: {weight: 0.75}
";

/// A snapshot in the cache as the hub's clients lay it out: `refs/<rev>` holds the commit,
/// `snapshots/<commit>/` the files (symlinks into `blobs/` for the real clients; plain files
/// here, which the layout allows too).
fn fill_cache(cache: &Path, repo: &str, rev: &str, commit: &str, model: &TinyLlama) -> PathBuf {
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs").join(rev), commit).unwrap();
    let snap = folder.join("snapshots").join(commit);
    model.write_hf(&snap, 1).unwrap();
    snap
}

#[test]
fn hub_ids_resolve_from_a_prefilled_cache() {
    let dir = common::scratch();
    let cache = dir.path().join("hf/hub");
    let a = fill_cache(&cache, "org/tiny", "main", COMMIT_A, &tiny(1));
    let b = fill_cache(&cache, "org/tiny", "v1", COMMIT_B, &tiny(2));
    std::fs::write(dir.path().join("recipe.yaml"), RECIPE).unwrap();
    // HF_HOME/hub is the cache when HF_HUB_CACHE is unset; offline, nothing is fetched.
    let env = [
        ("HF_HOME", dir.path().join("hf").display().to_string()),
        ("HF_HUB_OFFLINE", "1".to_string()),
    ];
    merge(dir.path(), &env).unwrap();
    assert_quarter_mix(&dir.path().join("out/recipe-F32.gguf"), &a, &b);

    // A commit hash names its snapshot without a ref.
    std::fs::write(
        dir.path().join("recipe.yaml"),
        RECIPE
            .replace("org/tiny\n", &format!("org/tiny@{COMMIT_A}\n"))
            .replace("org/tiny@v1", &format!("org/tiny@{COMMIT_B}")),
    )
    .unwrap();
    std::fs::remove_dir_all(cache.join("models--org--tiny/refs")).unwrap();
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    let env = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "true".to_string()),
    ];
    merge(dir.path(), &env).unwrap();
    assert_quarter_mix(&dir.path().join("out/recipe-F32.gguf"), &a, &b);
}

#[test]
fn a_lora_adapter_named_by_hub_id_comes_from_the_cache_too() {
    let dir = common::scratch();
    let cache = dir.path().join("cache");
    let base = fill_cache(&cache, "org/tiny", "main", COMMIT_A, &tiny(1));
    // A PEFT adapter snapshot (no config.json): rank 1 on layer 0's v_proj (32 × 64).
    let snap = cache.join(format!("models--org--ad/snapshots/{COMMIT_B}"));
    std::fs::create_dir_all(cache.join("models--org--ad/refs")).unwrap();
    std::fs::write(cache.join("models--org--ad/refs/main"), COMMIT_B).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(
        snap.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 2}"#,
    )
    .unwrap();
    let bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let module = "base_model.model.model.layers.0.self_attn.v_proj";
    smelt::fixture::write_safetensors(
        &snap.join("adapter_model.safetensors"),
        &[
            (
                format!("{module}.lora_A.weight"),
                GgmlType::F32,
                vec![1, 64],
                bytes(vec![0.5; 64]),
            ),
            (
                format!("{module}.lora_B.weight"),
                GgmlType::F32,
                vec![32, 1],
                bytes(vec![0.25; 32]),
            ),
        ],
    )
    .unwrap();
    std::fs::write(
        dir.path().join("recipe.yaml"),
        "merge_method: passthrough
models:
  - model: org/tiny+org/ad
",
    )
    .unwrap();
    let env = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "1".to_string()),
    ];
    merge(dir.path(), &env).unwrap();
    let (out, base) = (
        tensors(&dir.path().join("out/recipe-F32.gguf")),
        tensors(&base),
    );
    for (name, want) in &base {
        // scale 2 / 1 · 0.25 · 0.5 on every element of the one targeted tensor.
        let delta = if name == "blk.0.attn_v.weight" {
            0.25
        } else {
            0.0
        };
        for (w, o) in want.iter().zip(&out[name]) {
            assert!((w + delta - o).abs() < 1e-6, "{name}");
        }
    }
}

#[test]
fn offline_and_missing_names_the_recipe_line() {
    let dir = common::scratch();
    let cache = dir.path().join("cache");
    fill_cache(&cache, "org/tiny", "main", COMMIT_A, &tiny(1));
    std::fs::write(dir.path().join("recipe.yaml"), RECIPE).unwrap();
    let env = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "1".to_string()),
    ];
    let err = merge(dir.path(), &env).unwrap_err();
    assert!(
        err.contains("recipe.yaml:6:")
            && err.contains("org/tiny@v1")
            && err.contains("HF_HUB_OFFLINE")
            && err.contains("not in the Hugging Face cache"),
        "{err}"
    );
    assert!(
        !dir.path().join("out").exists()
            || dir.path().join("out").read_dir().unwrap().next().is_none()
    );
    // A missing path that is no hub id stays a missing path.
    std::fs::write(
        dir.path().join("recipe.yaml"),
        RECIPE.replace("org/tiny@v1", "models/missing.gguf"),
    )
    .unwrap();
    let err = merge(dir.path(), &env).unwrap_err();
    assert!(
        err.contains("recipe.yaml:6:") && err.contains("no such file or folder"),
        "{err}"
    );
}

/// One repository on the loopback hub: its files, what it lists, its commit.
struct Repo {
    files: BTreeMap<String, Vec<u8>>,
    /// Listed in the repository's info but never to be fetched (pickles, other layouts).
    listed_only: Vec<String>,
    commit: String,
    /// Answer 401 without `Authorization: Bearer <token>`.
    token: Option<String>,
}

fn etag(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The requests a server saw: "GET path | range | authorization".
type Log = Arc<Mutex<Vec<String>>>;

/// A hub-shaped HTTP server on 127.0.0.1 (an ephemeral port), serving `repos` as the hub
/// does: `/api/models/<repo>/revision/<rev>` (JSON with `sha` and `siblings`) and
/// `/<repo>/resolve/<rev>/<file>` (with `Range`, `ETag`, `X-Repo-Commit`, `Content-Range`).
/// It answers at most 200 connections within 120 s, then stops by itself.
fn serve(repos: BTreeMap<String, Repo>) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut served = 0;
        while served < 200 && Instant::now() < deadline {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            served += 1;
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let _ = answer(stream, &repos, &seen);
        }
    });
    (url, log)
}

fn answer(
    mut stream: std::net::TcpStream,
    repos: &BTreeMap<String, Repo>,
    log: &Log,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let range = headers.get("range").cloned().unwrap_or_default();
    let auth = headers.get("authorization").cloned().unwrap_or_default();
    log.lock()
        .unwrap()
        .push(format!("GET {path} | {range} | {auth}"));
    let reply = |stream: &mut std::net::TcpStream,
                 status: &str,
                 extra: &[(String, String)],
                 body: &[u8]|
     -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()
    };
    fn find<'a, 'p>(repos: &'a BTreeMap<String, Repo>, p: &'p str) -> Option<(&'a Repo, &'p str)> {
        repos
            .iter()
            .find_map(|(id, r)| p.strip_prefix(id.as_str()).map(|rest| (r, rest)))
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        if let Some((repo, rest)) = find(repos, rest) {
            let rev = rest.strip_prefix("/revision/").unwrap_or("");
            if repo
                .token
                .as_ref()
                .is_some_and(|t| auth != format!("Bearer {t}"))
            {
                return reply(&mut stream, "401 Unauthorized", &[], b"");
            }
            if rev == "main" || rev == repo.commit {
                let siblings: Vec<_> = repo
                    .files
                    .keys()
                    .chain(&repo.listed_only)
                    .map(|f| serde_json::json!({ "rfilename": f }))
                    .collect();
                let body = serde_json::json!({"sha": repo.commit, "siblings": siblings});
                return reply(&mut stream, "200 OK", &[], body.to_string().as_bytes());
            }
        }
        return reply(&mut stream, "404 Not Found", &[], b"");
    }
    if let Some((repo, rest)) = find(repos, &path[1..]) {
        if repo
            .token
            .as_ref()
            .is_some_and(|t| auth != format!("Bearer {t}"))
        {
            return reply(&mut stream, "401 Unauthorized", &[], b"");
        }
        if let Some((rev, file)) = rest
            .strip_prefix("/resolve/")
            .and_then(|r| r.split_once('/'))
        {
            if let (true, Some(bytes)) = (rev == "main" || rev == repo.commit, repo.files.get(file))
            {
                let size = bytes.len();
                let (start, end) =
                    match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
                        Some((a, b)) => (
                            a.parse::<usize>().unwrap_or(0),
                            b.parse::<usize>().map_or(size - 1, |b| b.min(size - 1)),
                        ),
                        None => (0, size - 1),
                    };
                let extra = [
                    ("ETag".to_string(), format!("\"{}\"", etag(bytes))),
                    ("X-Repo-Commit".to_string(), repo.commit.clone()),
                    (
                        "Content-Range".to_string(),
                        format!("bytes {start}-{end}/{size}"),
                    ),
                ];
                return reply(
                    &mut stream,
                    "206 Partial Content",
                    &extra,
                    &bytes[start..=end],
                );
            }
        }
    }
    let mut sink = Vec::new();
    let _ = reader.take(0).read_to_end(&mut sink);
    reply(&mut stream, "404 Not Found", &[], b"")
}

/// The files of a model folder written by the fixture, by name.
fn folder_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn hub_ids_download_from_hf_endpoint_into_the_cache() {
    let dir = common::scratch();
    let (a, b) = (dir.path().join("src/a"), dir.path().join("src/b"));
    tiny(1).write_hf(&a, 2).unwrap();
    tiny(2).write_hf(&b, 1).unwrap();
    let mut files_a = folder_files(&a);
    // Another layout of the same weights, which the index does not name, and a tokenizer.
    files_a.insert(
        "consolidated.safetensors".into(),
        files_a["model-00001-of-00002.safetensors"].clone(),
    );
    let shard = files_a["model-00002-of-00002.safetensors"].clone();
    let repos = BTreeMap::from([
        (
            "org/tiny".to_string(),
            Repo {
                files: files_a,
                listed_only: vec![
                    "pytorch_model.bin".into(),
                    "original/consolidated.00.pth".into(),
                ],
                commit: COMMIT_A.into(),
                token: Some("hf_secret".into()),
            },
        ),
        (
            "org/other".to_string(),
            Repo {
                files: folder_files(&b),
                listed_only: vec![],
                commit: COMMIT_B.into(),
                token: Some("hf_secret".into()),
            },
        ),
    ]);
    let (url, log) = serve(repos);
    let cache = dir.path().join("cache");
    // A download cut short earlier: hf-hub resumes it from its `.part` file.
    let blobs = cache.join("models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let cut = shard.len() / 3;
    std::fs::write(blobs.join(format!("{}.part", etag(&shard))), &shard[..cut]).unwrap();
    std::fs::write(
        dir.path().join("recipe.yaml"),
        RECIPE.replace("org/tiny@v1", &format!("org/other@{COMMIT_B}")),
    )
    .unwrap();
    let env = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_ENDPOINT", url.clone()),
        ("HF_TOKEN", "hf_secret".to_string()),
    ];
    merge(dir.path(), &env).unwrap();
    assert_quarter_mix(&dir.path().join("out/recipe-F32.gguf"), &a, &b);
    let requests = log.lock().unwrap().clone();
    assert!(
        requests.iter().all(|r| r.ends_with("| Bearer hf_secret")),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| !r.contains(".bin") && !r.contains(".pth") && !r.contains("consolidated")),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.contains("model-00002-of-00002.safetensors")
                && r.contains(&format!("bytes={cut}-"))),
        "no resumed range request: {requests:#?}"
    );
    // The cache now holds both snapshots: offline, the same recipe runs without a request.
    let snap = cache.join(format!("models--org--tiny/snapshots/{COMMIT_A}"));
    assert_eq!(
        std::fs::read(snap.join("model-00002-of-00002.safetensors")).unwrap(),
        shard
    );
    assert!(!snap.join("consolidated.safetensors").exists());
    let n = requests.len();
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    let offline = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "1".to_string()),
    ];
    merge(dir.path(), &offline).unwrap();
    assert_eq!(log.lock().unwrap().len(), n);

    // Without the token: the gated repository's 401, named with HF_TOKEN and the line.
    std::fs::write(
        dir.path().join("recipe.yaml"),
        RECIPE.replace("org/tiny@v1", "org/other@v2"),
    )
    .unwrap();
    let err = merge(dir.path(), &env[..2]).unwrap_err();
    assert!(
        err.contains("recipe.yaml:6:") && err.contains("org/other@v2") && err.contains("HF_TOKEN"),
        "{err}"
    );
}

#[test]
fn pickle_only_hub_models_are_refused() {
    let dir = common::scratch();
    let a = dir.path().join("src/a");
    tiny(1).write_hf(&a, 1).unwrap();
    let mut files = folder_files(&a);
    let weights = files.remove("model.safetensors").unwrap();
    files.insert("pytorch_model.bin".into(), weights);
    let (url, log) = serve(BTreeMap::from([(
        "org/pickled".to_string(),
        Repo {
            files,
            listed_only: vec![],
            commit: COMMIT_A.into(),
            token: None,
        },
    )]));
    std::fs::write(
        dir.path().join("recipe.yaml"),
        "merge_method: passthrough\nmodels:\n  - model: org/pickled\n",
    )
    .unwrap();
    let env = [
        (
            "HF_HUB_CACHE",
            dir.path().join("cache").display().to_string(),
        ),
        ("HF_ENDPOINT", url),
    ];
    let err = merge(dir.path(), &env).unwrap_err();
    assert!(
        err.contains("recipe.yaml:3:")
            && err.contains("pytorch_model.bin")
            && err.contains("pickles"),
        "{err}"
    );
    assert!(log.lock().unwrap().iter().all(|r| !r.contains("/resolve/")));
}
