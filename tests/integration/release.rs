//! `smelt release` and `smelt verify` on tiny generated models: the folder's files, checksums
//! and card; resuming after a lost or damaged file; refusing another release's folder; splits;
//! and bad input that must leave nothing behind. (llama.cpp loading each file, and
//! llama-gguf-split's merge of the split files, are tests/python/test_release.py.)

use crate::common::{self, Smelt};
use std::path::Path;

/// `release model.gguf -o rel` on a tiny model, small chunks; extra args appended.
fn release(d: &Path, extra: &[&str]) -> Result<String, String> {
    let mut args = vec![
        "release",
        "model.gguf",
        "-o",
        "rel",
        "--text",
        "calib.txt",
        "--eval-text",
        "eval.txt",
        "--ctx",
        "64",
        "--imatrix-chunks",
        "4",
        "--eval-chunks",
        "3",
    ];
    args.extend_from_slice(extra);
    common::smelt(d, &args)
}

fn setup(d: &Path) {
    common::tiny_model(d, "model.gguf", &["--dtype", "F32", "--seed", "3"]);
    common::word_text(d, "calib.txt", 0);
    common::word_text(d, "eval.txt", 5);
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("release.json")).unwrap()).unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sha256_hex(path: &Path) -> String {
    smelt::app::verify::sha256_file(path).unwrap()
}

#[test]
fn a_release_holds_every_type_its_measurements_card_and_checksums() {
    let dir = common::scratch();
    let d = dir.path();
    setup(d);
    release(d, &["--types", "Q4_0,Q8_0,F16"]).unwrap();
    let rel = d.join("rel");
    assert_eq!(
        listing(&rel),
        [
            "README.md",
            "SHA256SUMS",
            "imatrix.gguf",
            "model-F16.gguf",
            "model-Q4_0.gguf",
            "model-Q8_0.gguf",
            "quality.png",
            "release.json",
        ]
    );
    // Every file but the list itself is listed, with its hash.
    let sums = std::fs::read_to_string(rel.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 7);
    for line in sums.lines() {
        let (hex, name) = line.split_once("  ").unwrap();
        assert_eq!(sha256_hex(&rel.join(name)), hex, "{name}");
    }
    // Each type equals `smelt quantize` of the same source with the release's imatrix.
    common::smelt(
        d,
        [
            "quantize",
            "model.gguf",
            "-o",
            "q4.gguf",
            "--type",
            "Q4_0",
            "--imatrix",
            "rel/imatrix.gguf",
        ],
    )
    .unwrap();
    let m = manifest(&rel);
    let q4 = &m["types"][0];
    assert_eq!(q4["type"], "Q4_0");
    // The same tensors and values; only the recorded imatrix path differs.
    let a = smelt::store::Store::open(d.join("q4.gguf")).unwrap();
    let b = smelt::store::Store::open(rel.join("model-Q4_0.gguf")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for i in 0..a.tensors.len() {
        assert_eq!(a.raw(i), b.raw(i), "{}", a.tensors[i].name);
    }
    // The quality figures are smelt eval's against the source.
    let out = Smelt::new(d)
        .args([
            "eval",
            "rel/model-Q4_0.gguf",
            "--reference",
            "model.gguf",
            "--text",
            "eval.txt",
        ])
        .args(["--ctx", "64", "--chunks", "3", "--json"])
        .run();
    assert!(out.status.success());
    let e = out.json();
    let q = &q4["quality"];
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        (a - b).abs() <= 1e-6 * b.abs().max(1e-3)
    };
    assert!(close(&q["perplexity"], &e["perplexity"]), "{q} {e}");
    // The saved reference holds 16-bit log-probabilities (llama-perplexity's file), a live
    // one f32: the KLD agrees to the file's precision.
    let (k1, k2) = (
        q["kld_mean"].as_f64().unwrap(),
        e["kld"]["mean"].as_f64().unwrap(),
    );
    assert!((k1 - k2).abs() <= 0.02 * k2 + 1e-5, "{k1} {k2}");
    // Lower precision loses more.
    let kld = |k: usize| m["types"][k]["quality"]["kld_mean"].as_f64().unwrap();
    assert!(kld(0) > kld(1) && kld(1) > kld(2), "{m}");
    assert_eq!(m["imatrix"]["computed"], true);
    assert_eq!(m["evaluation"]["chunks"], 3);
    // The card: front matter, the table from the measurements, the command.
    let card = std::fs::read_to_string(rel.join("README.md")).unwrap();
    assert!(card.starts_with("---\n"), "{card}");
    assert!(card.contains("tags:\n- gguf\n- imatrix\n"), "{card}");
    assert!(card.contains("quantized_by: \"smelt\""), "{card}");
    let row = format!(
        "| [model-Q4_0.gguf](./model-Q4_0.gguf) | Q4_0 | {:.1} MiB |",
        q4["bytes"].as_u64().unwrap() as f64 / (1 << 20) as f64
    );
    assert!(card.contains(&row), "{row}\n{card}");
    assert!(card.contains(&format!("{:.6}", kld(0))), "{card}");
    assert!(card.contains("llama-cli -m model-"), "{card}");
    assert!(card.contains("Which one?"), "{card}");
    // Verify passes, and fails after one flipped byte.
    let ok = common::smelt(d, ["verify", "rel"]).unwrap();
    assert!(ok.contains("all 7 checks passed"), "{ok}");
    assert!(
        card.contains("![size against quality](quality.png)"),
        "{card}"
    );
    let victim = rel.join("model-Q8_0.gguf");
    let mut bytes = std::fs::read(&victim).unwrap();
    let k = bytes.len() - 100;
    bytes[k] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    let err = common::smelt(d, ["verify", "rel"]).unwrap_err();
    assert!(
        err.contains("1 of 7 checks failed (first: model-Q8_0.gguf: checksum differs)"),
        "{err}"
    );
}

#[test]
fn an_interrupted_or_damaged_release_redoes_only_what_is_missing() {
    let dir = common::scratch();
    let d = dir.path();
    setup(d);
    release(d, &["--types", "Q4_0,Q8_0", "--no-eval"]).unwrap();
    let rel = d.join("rel");
    let before: Vec<(String, String)> = listing(&rel)
        .into_iter()
        .map(|n| (sha256_hex(&rel.join(&n)), n))
        .collect();
    let q8 = rel.join("model-Q8_0.gguf");
    let q8_modified = std::fs::metadata(&q8).unwrap().modified().unwrap();
    // One file lost, one damaged: both are made again, the rest is kept as it was.
    std::fs::remove_file(rel.join("model-Q4_0.gguf")).unwrap();
    let im = rel.join("imatrix.gguf");
    let mut b = std::fs::read(&im).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x40;
    std::fs::write(&im, &b).unwrap();
    let log = release(d, &["--types", "Q4_0,Q8_0", "--no-eval"]).unwrap();
    assert!(log.contains("Q8_0: done earlier, verified"), "{log}");
    assert!(!log.contains("Q4_0: done earlier"), "{log}");
    assert_eq!(
        std::fs::metadata(&q8).unwrap().modified().unwrap(),
        q8_modified
    );
    let after: Vec<(String, String)> = listing(&rel)
        .into_iter()
        .map(|n| (sha256_hex(&rel.join(&n)), n))
        .collect();
    assert_eq!(before, after, "the same bytes again");
    common::smelt(d, ["verify", "rel"]).unwrap();
}

#[test]
fn a_folder_holding_something_else_is_refused_unless_forced() {
    let dir = common::scratch();
    let d = dir.path();
    setup(d);
    // Somebody's files: refused, untouched.
    std::fs::create_dir(d.join("rel")).unwrap();
    std::fs::write(d.join("rel/notes.txt"), "mine").unwrap();
    let err = release(d, &["--types", "Q8_0", "--no-eval"]).unwrap_err();
    assert!(
        err.contains("is not empty") && err.contains("notes.txt"),
        "{err}"
    );
    assert_eq!(listing(&d.join("rel")), ["notes.txt"]);
    std::fs::remove_file(d.join("rel/notes.txt")).unwrap();
    // Another release (other types): refused; with --force replaced, its files removed.
    release(d, &["--types", "Q8_0", "--no-eval"]).unwrap();
    let err = release(d, &["--types", "Q4_0", "--no-eval"]).unwrap_err();
    assert!(
        err.contains("holds another release") && err.contains("--force"),
        "{err}"
    );
    assert!(d.join("rel/model-Q8_0.gguf").exists());
    release(d, &["--types", "Q4_0", "--no-eval", "--force"]).unwrap();
    let names = listing(&d.join("rel"));
    assert!(names.contains(&"model-Q4_0.gguf".to_string()), "{names:?}");
    assert!(!names.contains(&"model-Q8_0.gguf".to_string()), "{names:?}");
    common::smelt(d, ["verify", "rel"]).unwrap();
}

#[test]
fn split_releases_verify_and_a_missing_part_is_found() {
    let dir = common::scratch();
    let d = dir.path();
    setup(d);
    release(
        d,
        &[
            "--types",
            "Q8_0,F16",
            "--no-eval",
            "--split-max-tensors",
            "7",
        ],
    )
    .unwrap();
    let rel = d.join("rel");
    let names = listing(&rel);
    let parts: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("model-F16-"))
        .collect();
    assert!(parts.len() >= 2, "{names:?}");
    let m = manifest(&rel);
    assert_eq!(
        m["types"][1]["parts"].as_array().unwrap().len(),
        parts.len()
    );
    let ok = common::smelt(d, ["verify", "rel"]).unwrap();
    assert!(ok.contains("passed"), "{ok}");
    // The set read as one model equals the unsplit F16 smelt quantize writes.
    common::smelt(
        d,
        ["quantize", "model.gguf", "-o", "f16.gguf", "--types", "F16"],
    )
    .unwrap();
    let whole = smelt::store::Store::open(d.join("f16.gguf")).unwrap();
    let split = smelt::store::Store::open(rel.join(parts[0])).unwrap();
    assert_eq!(whole.tensors.len(), split.tensors.len());
    for i in 0..whole.tensors.len() {
        assert_eq!(whole.raw(i), split.raw(i));
    }
    // A part gone, and its line taken out of SHA256SUMS too: still found.
    let gone = parts[1].clone();
    std::fs::remove_file(rel.join(&gone)).unwrap();
    let sums = std::fs::read_to_string(rel.join("SHA256SUMS")).unwrap();
    let kept: String = sums
        .lines()
        .filter(|l| !l.ends_with(&gone))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(rel.join("SHA256SUMS"), kept).unwrap();
    let err = common::smelt(d, ["verify", "rel"]).unwrap_err();
    assert!(err.contains("split set incomplete"), "{err}");
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let dir = common::scratch();
    let d = dir.path();
    setup(d);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--types", "IQ2_XXS", "--imatrix", "none"],
            "needs an importance matrix",
        ),
        (
            &["--types", "Q8_0", "--split-max-size", "1K"],
            "smaller than tensor",
        ),
        (&["--types", "Q8_0,Q8_0"], "listed twice"),
        (&["--types", "Q9_9"], "Q9_9"),
        (
            &["--types", "Q4_0", "--imatrix", "missing.gguf"],
            "missing.gguf",
        ),
    ];
    for (extra, says) in cases {
        let err = release(d, extra).unwrap_err();
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!d.join("rel").exists(), "{extra:?} left a folder behind");
    }
    // A source without a tokenizer: a loud warning, the files, no quality table.
    common::rewrite(
        &d.join("model.gguf"),
        &d.join("bare.gguf"),
        |md| md.retain(|k, _| !k.starts_with("tokenizer.")),
        |_, _| {},
    );
    let log = common::smelt(d, ["release", "bare.gguf", "-o", "bare", "--types", "Q8_0"]).unwrap();
    assert!(log.contains("has no tokenizer"), "{log}");
    assert_eq!(
        listing(&d.join("bare")),
        ["README.md", "SHA256SUMS", "bare-Q8_0.gguf", "release.json"]
    );
}

#[test]
fn verify_refuses_a_checksum_list_that_points_outside_the_folder() {
    let dir = common::scratch();
    let d = dir.path();
    std::fs::create_dir(d.join("rel")).unwrap();
    std::fs::write(d.join("secret"), "x").unwrap();
    std::fs::write(
        d.join("rel/SHA256SUMS"),
        format!("{}  ../secret\n", "0".repeat(64)),
    )
    .unwrap();
    let err = common::smelt(d, ["verify", "rel"]).unwrap_err();
    assert!(err.contains("not a file of this folder"), "{err}");
}
