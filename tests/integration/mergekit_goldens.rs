//! smelt's merges against mergekit 0.1.5's own results (fixtures/golden/merge, made by
//! scripts/gen-golden-merge.py): same recipes, same input models (rebuilt here with the
//! fixture generator as Hugging Face folders), per-tensor sums, L2 norms and samples.
//! Random methods (whose draws no other implementation can reproduce) are compared by the
//! fraction of deltas they drop per tensor, which mergekit's goldens give per seed.
//! Vocabulary recipes (`tokenizer_source`, `tokenizer:`) run on three models whose tokenizers
//! differ and are compared token by token: the output vocabulary, then each tensor with its
//! embedding and output rows taken in mergekit's token order.

use crate::common::{self, Smelt};
use serde_json::Value;
use smelt::fixture::TinyLlama;
use smelt::gguf::GgmlType;
use smelt::store::{RowOrder, Store};
use std::path::Path;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden/merge");

/// Every deterministic recipe of mergekit 0.1.5's registry.
const DETERMINISTIC: &[&str] = &[
    "linear",
    "linear_nonorm",
    "slerp",
    "slerp_gradient",
    "task_arithmetic",
    "ties",
    "model_stock",
    "model_stock_filter_wise",
    "nearswap",
    "passthrough",
    "breadcrumbs",
    "breadcrumbs_ties",
];
/// The other deterministic recipes (every method smelt has).
const MORE_DETERMINISTIC: &[&str] = &[
    "karcher",
    "multislerp",
    "multislerp_base",
    "nuslerp",
    "nuslerp_base_rowwise",
    "arcee_fusion",
    "ram",
    "ramplus_tl",
    "sce",
];
const RANDOM: &[&str] = &["dare_ties", "dare_linear", "della", "della_linear"];
/// The vocabulary recipes, on models V1, V2 and V3 (fixtures/golden/merge/vocab).
const VOCAB: &[&str] = &[
    "vocab_union_linear",
    "vocab_union_ties",
    "vocab_base",
    "vocab_model",
    "vocab_tokens",
    "vocab_pad",
];
/// Tensors indexed by token.
const VOCAB_TENSORS: &[&str] = &["token_embd.weight", "output.weight"];

fn setup(dir: &Path) {
    for (name, seed) in [("A", 1), ("B", 2), ("C", 3)] {
        TinyLlama {
            seed,
            dtype: GgmlType::F32,
            ..Default::default()
        }
        .write_hf(&dir.join("models").join(name), 1)
        .unwrap();
    }
}

/// Models V1, V2, V3: `smelt make-test-model` with the golden's arguments, plus the
/// committed tokenizer files.
fn setup_vocab(dir: &Path) {
    let inputs: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{GOLDEN}/vocab/inputs.json")).unwrap(),
    )
    .unwrap();
    for (name, m) in inputs["models"].as_object().unwrap() {
        let args: Vec<&str> = m["smelt_args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        Smelt::new(dir).args(args).run().ok();
        for f in m["tokenizer_files"].as_array().unwrap() {
            let f = Path::new(f.as_str().unwrap());
            let to = dir.join("models").join(name).join(f.file_name().unwrap());
            std::fs::copy(Path::new(GOLDEN).join(f), to).unwrap();
        }
    }
}

fn merged(dir: &Path, name: &str) -> (Store, Value) {
    let path = merge_with(dir, name, "out", None, None);
    (Store::open(path).unwrap(), golden(name))
}

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{GOLDEN}/{name}.json")).unwrap())
        .unwrap()
}

/// Merge golden recipe `name` into folder `out` (with a chunk size in bytes and a thread
/// count when given); the output file.
fn merge_with(
    dir: &Path,
    name: &str,
    out: &str,
    chunk_bytes: Option<usize>,
    threads: Option<usize>,
) -> std::path::PathBuf {
    let recipe = dir.join(format!("{name}.yaml"));
    std::fs::copy(format!("{GOLDEN}/{name}.yaml"), &recipe).unwrap();
    let mut cmd = Smelt::new(dir);
    if let Some(t) = threads {
        cmd = cmd.args(["--threads", &t.to_string()]);
    }
    cmd = cmd
        .arg("merge")
        .arg(&recipe)
        .args(["-o", out, "--types", "F32"]);
    if let Some(c) = chunk_bytes {
        cmd = cmd.args(["--chunk-bytes", &c.to_string()]);
    }
    let o = cmd.run();
    assert!(o.status.success(), "{name}: {}", o.stderr);
    dir.join(format!("{out}/{name}-F32.gguf"))
}

/// The tensor in Hugging Face row order (undoing llama.cpp's q/k permutation).
fn hf_values(s: &Store, gguf: &str) -> Vec<f32> {
    let i = s.find(gguf).unwrap_or_else(|| panic!("no {gguf}"));
    let v = s.read_f32(i).unwrap();
    let n_head = if gguf.ends_with("attn_q.weight") {
        4
    } else if gguf.ends_with("attn_k.weight") {
        2
    } else {
        return v;
    };
    let row = s.tensors[i].shape[0] as usize;
    let n_rows = v.len() / row;
    let mut out = vec![0f32; v.len()];
    for p in 0..n_rows {
        let h = RowOrder::HeadPermute { n_head }.stored_row(p, n_rows);
        out[h * row..(h + 1) * row].copy_from_slice(&v[p * row..(p + 1) * row]);
    }
    out
}

#[test]
fn deterministic_methods_match_mergekit() {
    let dir = common::scratch();
    setup(dir.path());
    let mut failures = Vec::new();
    for name in DETERMINISTIC {
        let (s, json) = merged(dir.path(), name);
        compare(name, &s, &json, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
}

/// Every recipe merged with chunks of one row, of rows that divide no tensor's row count, and
/// of many rows, at 1 to 3 threads: the same bytes every time, and (for the deterministic
/// methods) mergekit's values.
#[test]
fn chunked_merges_are_byte_identical_and_match_mergekit() {
    let dir = common::scratch();
    setup(dir.path());
    // Rows are 64 or 128 values (256 or 512 bytes of f32): 1 byte is one row; 3 rows of 64
    // or 1.5 of 128 rows divide neither 64, 128 nor 512 rows.
    let runs: &[(Option<usize>, Option<usize>)] = &[
        (Some(1), None),
        (Some(3 * 256), Some(1)),
        (Some(3 * 256), Some(3)),
        (Some(1), Some(2)),
        (Some(7 * 512 + 100), Some(1)),
    ];
    let mut failures = Vec::new();
    for name in DETERMINISTIC.iter().chain(MORE_DETERMINISTIC).chain(RANDOM) {
        let whole = std::fs::read(merge_with(dir.path(), name, "whole", None, None)).unwrap();
        for (k, &(chunk, threads)) in runs.iter().enumerate() {
            let out = format!("chunked{k}");
            let path = merge_with(dir.path(), name, &out, chunk, threads);
            if std::fs::read(&path).unwrap() != whole {
                failures.push(format!(
                    "{name}: chunks of {chunk:?} bytes at {threads:?} threads change the bytes"
                ));
            }
            // arcee_fusion is outside mergekit's tolerance before chunking too (it is not in
            // DETERMINISTIC): only its bytes are checked.
            if k == 0 && !RANDOM.contains(name) && *name != "arcee_fusion" {
                compare(
                    name,
                    &Store::open(&path).unwrap(),
                    &golden(name),
                    &mut failures,
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
}

/// Differences of merged model `s` from mergekit's golden `json`, into `failures`.
fn compare(name: &str, s: &Store, json: &Value, failures: &mut Vec<String>) {
    compare_rows(name, s, json, None, failures)
}

/// [`compare`], with the token-indexed tensors' rows taken in the order `rows` (row `i` of
/// mergekit's is smelt's `rows[i]`) when given.
fn compare_rows(
    name: &str,
    s: &Store,
    json: &Value,
    rows: Option<&[usize]>,
    failures: &mut Vec<String>,
) {
    {
        let tol = if name.contains("slerp") || name == "karcher" {
            1e-5
        } else {
            1e-6
        };
        let tensors = json["tensors"].as_array().unwrap();
        assert_eq!(s.tensors.len(), tensors.len(), "{name}: tensor count");
        for t in tensors {
            let gguf = t["gguf"].as_str().unwrap();
            let mut v = hf_values(s, gguf);
            let shape = &s.tensors[s.find(gguf).unwrap()].shape;
            let want: Vec<u64> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .map(|d| d.as_u64().unwrap())
                .collect();
            if *shape != want {
                failures.push(format!(
                    "{name} {gguf}: shape {shape:?} vs mergekit {want:?}"
                ));
                continue;
            }
            if let (Some(rows), true) = (rows, VOCAB_TENSORS.contains(&gguf)) {
                let width = shape[0] as usize;
                v = rows
                    .iter()
                    .flat_map(|&r| v[r * width..(r + 1) * width].to_vec())
                    .collect();
            }
            let l2: f64 = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let sum: f64 = v.iter().map(|&x| x as f64).sum();
            let (gl2, gsum) = (t["l2"].as_f64().unwrap(), t["sum"].as_f64().unwrap());
            if (l2 - gl2).abs() > 1e-5 * gl2.max(1e-12) {
                failures.push(format!("{name} {gguf}: l2 {l2} vs mergekit {gl2}"));
            }
            if (sum - gsum).abs() > 1e-6 * gl2 * (v.len() as f64).sqrt() + 1e-9 {
                failures.push(format!("{name} {gguf}: sum {sum} vs mergekit {gsum}"));
            }
            let stride = t["stride"].as_u64().unwrap() as usize;
            for (k, want) in t["samples"].as_array().unwrap().iter().enumerate() {
                let (got, want) = (v[k * stride] as f64, want.as_f64().unwrap());
                if (got - want).abs() > tol {
                    failures.push(format!(
                        "{name} {gguf}[{}]: {got} vs mergekit {want}",
                        k * stride
                    ));
                    break;
                }
            }
        }
    }
}

#[test]
fn random_methods_match_mergekit_statistics() {
    let dir = common::scratch();
    setup(dir.path());
    let base = Store::open(dir.path().join("models/A")).unwrap();
    let mut failures = Vec::new();
    for name in RANDOM {
        let (s, json) = merged(dir.path(), name);
        let gguf_of: std::collections::HashMap<&str, &str> = json["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap(), t["gguf"].as_str().unwrap()))
            .collect();
        for st in json["stats"].as_array().unwrap() {
            let numel = st["numel"].as_u64().unwrap();
            if numel < 4096 {
                continue; // too few weights for a tight statistic
            }
            let gguf = gguf_of[st["name"].as_str().unwrap()];
            let (out, b) = (hf_values(&s, gguf), hf_values(&base, gguf));
            let zero = out.iter().zip(&b).filter(|(o, b)| o == b).count() as f64 / out.len() as f64;
            let expected = st["zero_frac_expected"].as_f64().unwrap();
            if (zero - expected).abs() > 0.03 {
                failures.push(format!(
                    "{name} {gguf}: {zero:.4} of deltas dropped, mergekit expects {expected:.4}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The output vocabulary of merged model `s` against mergekit's: the groups the golden says
/// mergekit orders are in its order, the others hold the same tokens, and rows past the
/// tokens are `[PAD{i}]`. Returns, per mergekit row, smelt's row of the same token.
fn compare_vocab(
    name: &str,
    s: &Store,
    json: &Value,
    failures: &mut Vec<String>,
) -> Option<Vec<usize>> {
    let ours: Vec<String> = s
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let theirs: Vec<&str> = json["vocab"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let rows = json["vocab_rows"].as_u64().unwrap() as usize;
    let n = failures.len();
    if ours.len() != rows {
        failures.push(format!(
            "{name}: {} tokens, mergekit has {} and {rows} rows",
            ours.len(),
            theirs.len()
        ));
        return None;
    }
    for group in json["vocab_order"].as_array().unwrap() {
        let (a, b) = (
            group[0].as_u64().unwrap() as usize,
            group[1].as_u64().unwrap() as usize,
        );
        let (mine, want) = (&ours[a..b], &theirs[a..b]);
        if group[2] == "fixed" {
            if let Some(i) = (0..b - a).find(|&i| mine[i] != want[i]) {
                failures.push(format!(
                    "{name}: token {} is {:?}, mergekit's is {:?}",
                    a + i,
                    mine[i],
                    want[i]
                ));
            }
        } else {
            let mut x: Vec<&str> = mine.iter().map(String::as_str).collect();
            let mut y = want.to_vec();
            x.sort_unstable();
            y.sort_unstable();
            if x != y {
                failures.push(format!(
                    "{name}: tokens {a}..{b} are {mine:?}, mergekit's (in any order) {want:?}"
                ));
            }
        }
    }
    for (i, t) in ours.iter().enumerate().skip(theirs.len()) {
        if *t != format!("[PAD{i}]") {
            failures.push(format!("{name}: padding token {i} is {t:?}"));
        }
    }
    if let Some(n_vocab) = s.metadata.get("llama.vocab_size").and_then(|v| v.as_u64()) {
        if n_vocab != rows as u64 {
            failures.push(format!("{name}: llama.vocab_size {n_vocab}, not {rows}"));
        }
    }
    // The rows by token, when every token is there (even out of order: the tensors are
    // compared too).
    let index: std::collections::HashMap<&str, usize> = ours
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let rows: Option<Vec<usize>> = theirs
        .iter()
        .map(|t| index.get(t).copied())
        .chain((theirs.len()..rows).map(Some))
        .collect();
    if rows.is_none() && failures.len() == n {
        failures.push(format!("{name}: tokens missing"));
    }
    rows
}

/// mergekit's `tokenizer_source: union | base | MODEL` and `tokenizer:` block (tokens,
/// pad_to_multiple_of) on models with different vocabularies: the same vocabulary (up to
/// the token order mergekit leaves to chance), the same rows for every token.
#[test]
fn vocabulary_recipes_match_mergekit() {
    let dir = common::scratch();
    setup_vocab(dir.path());
    let mut failures = Vec::new();
    for name in VOCAB {
        let recipe = dir.path().join(format!("{name}.yaml"));
        std::fs::copy(format!("{GOLDEN}/{name}.yaml"), &recipe).unwrap();
        // The fixtures' BPE pre-tokenizer is GPT-2's, but their tiny vocabulary gives llama.cpp's
        // check text a hash its table lacks.
        let o = Smelt::new(dir.path())
            .arg("merge")
            .arg(&recipe)
            .args(["-o", "out", "--types", "F32", "--tokenizer-pre", "gpt-2"])
            .run();
        if !o.status.success() {
            failures.push(format!("{name}: smelt merge failed: {}", o.stderr));
            continue;
        }
        let s = Store::open(dir.path().join(format!("out/{name}-F32.gguf"))).unwrap();
        let json = golden(name);
        if let Some(rows) = compare_vocab(name, &s, &json, &mut failures) {
            compare_rows(name, &s, &json, Some(&rows), &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
}

/// A LoRA input (`model: models/A+lora/L`, the committed PEFT adapter on q_proj, v_proj and
/// down_proj) merged linearly with B: mergekit's values, which it makes through peft's
/// merge_and_unload.
#[test]
fn lora_input_matches_mergekit() {
    let dir = common::scratch();
    setup(dir.path());
    let adapter = dir.path().join("lora/L");
    std::fs::create_dir_all(&adapter).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(format!("{GOLDEN}/lora/L/{f}"), adapter.join(f)).unwrap();
    }
    let (s, json) = merged(dir.path(), "lora_linear");
    let mut failures = Vec::new();
    compare("lora_linear", &s, &json, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
