//! `--split-max-size` / `--split-max-tensors`: GGUF outputs written as split sets in
//! llama-gguf-split's layout, read back as the unsplit output, refused when they cannot be
//! written safely. (tests/python/test_split_output.py checks the bytes against
//! llama-gguf-split itself and loads the sets in llama.cpp.)

use crate::common::{rewrite, scratch, smelt, tiny_model, Smelt};
use smelt::gguf::{GgufFile, Value};
use smelt::store::Store;
use std::path::{Path, PathBuf};

const SPLIT_KEYS: [&str; 3] = ["split.no", "split.tensors.count", "split.count"];

/// The files in `dir`, sorted by name.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Two stores hold the same model: metadata, tensor names, types, shapes and bytes in order.
fn assert_same_model(a: &Store, b: &Store) {
    assert_eq!(a.metadata, b.metadata);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (i, (x, y)) in a.tensors.iter().zip(&b.tensors).enumerate() {
        assert_eq!((&x.name, x.ty, &x.shape), (&y.name, y.ty, &y.shape));
        assert_eq!(a.raw(i).unwrap(), b.raw(i).unwrap(), "{}", x.name);
    }
}

/// The files of the split set `dir/stem-0000K-of-0000N.gguf`, checked to be exactly what
/// llama-gguf-split writes around the tensors: the unsplit file's metadata in the first file
/// only, the split keys in every file in its order, every tensor once in the unsplit order.
fn check_split_set(dir: &Path, stem: &str, unsplit: &Path) -> Vec<GgufFile> {
    let whole = GgufFile::open(unsplit).unwrap();
    let first = GgufFile::open(first_of(dir, stem)).unwrap();
    let count = first.metadata.get_u64("split.count").unwrap() as usize;
    let mut parts = vec![first];
    for k in 1..count {
        parts.push(
            GgufFile::open(dir.join(format!("{stem}-{:05}-of-{count:05}.gguf", k + 1))).unwrap(),
        );
    }
    let n = whole.tensors.len() as i32;
    for (k, p) in parts.iter().enumerate() {
        let keys: Vec<&str> = p.metadata.iter().map(|(k, _)| k).collect();
        let mut want: Vec<&str> = if k == 0 {
            whole.metadata.iter().map(|(k, _)| k).collect()
        } else {
            Vec::new()
        };
        want.extend(SPLIT_KEYS);
        assert_eq!(keys, want, "keys of file {}", k + 1);
        assert_eq!(p.metadata.get("split.no"), Some(&Value::U16(k as u16)));
        assert_eq!(
            p.metadata.get("split.count"),
            Some(&Value::U16(count as u16))
        );
        assert_eq!(p.metadata.get("split.tensors.count"), Some(&Value::I32(n)));
        if k == 0 {
            for (key, v) in whole.metadata.iter() {
                assert_eq!(p.metadata.get(key), Some(v), "{key}");
            }
        }
        assert!(!p.tensors.is_empty(), "file {} is empty", k + 1);
    }
    let names: Vec<&str> = parts
        .iter()
        .flat_map(|p| p.tensors.iter().map(|t| t.name.as_str()))
        .collect();
    let want: Vec<&str> = whole.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, want);
    parts
}

/// The first file of a set, by its name on disk.
fn first_of(dir: &Path, stem: &str) -> PathBuf {
    let name = listing(dir)
        .into_iter()
        .find(|n| n.starts_with(&format!("{stem}-00001-of-")))
        .unwrap_or_else(|| panic!("no first file of {stem} in {:?}", listing(dir)));
    dir.join(name)
}

/// Data bytes of a tensor as llama-gguf-split counts them (padded to 32).
fn padded(t: &smelt::gguf::TensorInfo) -> u64 {
    t.n_bytes.div_ceil(32) * 32
}

#[test]
fn split_by_tensors_reads_back_as_the_unsplit_matrix() {
    let d = scratch();
    tiny_model(d.path(), "tiny.gguf", &[]);
    smelt(
        d.path(),
        [
            "quantize",
            "tiny.gguf",
            "-o",
            "whole",
            "--types",
            "F16,Q8_0",
        ],
    )
    .unwrap();
    let log = smelt(
        d.path(),
        [
            "quantize",
            "tiny.gguf",
            "-o",
            "split",
            "--types",
            "F16,Q8_0",
            "--split-max-tensors",
            "8",
        ],
    )
    .unwrap();
    assert!(
        log.contains("wrote split/tiny-Q8_0-00003-of-00003.gguf"),
        "{log}"
    );
    // 21 tensors: 8 + 8 + 5, for both types, and nothing else in the folder.
    let mut want = Vec::new();
    for ty in ["F16", "Q8_0"] {
        for k in 1..=3 {
            want.push(format!("tiny-{ty}-{k:05}-of-00003.gguf"));
        }
    }
    assert_eq!(listing(&d.path().join("split")), want);
    for ty in ["F16", "Q8_0"] {
        let unsplit = d.path().join(format!("whole/tiny-{ty}.gguf"));
        let parts = check_split_set(&d.path().join("split"), &format!("tiny-{ty}"), &unsplit);
        let counts: Vec<usize> = parts.iter().map(|p| p.tensors.len()).collect();
        assert_eq!(counts, [8, 8, 5]);
        let back = Store::open(first_of(&d.path().join("split"), &format!("tiny-{ty}"))).unwrap();
        assert_eq!(back.files.len(), 3);
        assert_same_model(&back, &Store::open(&unsplit).unwrap());
    }
    // More tensors allowed than there are: one file, still named as a set (llama-gguf-split
    // does the same).
    smelt(
        d.path(),
        [
            "quantize",
            "tiny.gguf",
            "-o",
            "one.gguf",
            "--type",
            "Q8_0",
            "--split-max-tensors",
            "100",
        ],
    )
    .unwrap();
    check_split_set(d.path(), "one", &d.path().join("whole/tiny-Q8_0.gguf"));
    assert_same_model(
        &Store::open(d.path().join("one-00001-of-00001.gguf")).unwrap(),
        &Store::open(d.path().join("whole/tiny-Q8_0.gguf")).unwrap(),
    );
    // The dry run shows the files it would write.
    let out = Smelt::new(d.path())
        .args([
            "quantize",
            "tiny.gguf",
            "-o",
            "dry",
            "--types",
            "Q8_0",
            "--split-max-tensors",
            "8",
            "--dry-run",
        ])
        .run();
    let text = out.stdout_text();
    assert!(text.contains("dry-00002-of-00003.gguf:"), "{text}");
    assert!(!d.path().join("dry").exists() && !d.path().join("dry-00001-of-00003.gguf").exists());
}

#[test]
fn split_by_size_cuts_where_the_next_tensor_would_pass_the_limit() {
    let d = scratch();
    tiny_model(d.path(), "tiny.gguf", &[]);
    // token_embd in F32 (131072 bytes) is larger than the limit: a file of its own; in the
    // second run output.weight, the very first tensor, is too (llama-gguf-split refuses that
    // case; smelt puts it alone in the first file).
    for (name, extra) in [
        ("a", ["--token-embedding-type", "F32"]),
        ("b", ["--output-tensor-type", "F32"]),
    ] {
        let common = [
            "quantize",
            "tiny.gguf",
            "--type",
            "Q8_0",
            extra[0],
            extra[1],
        ];
        let unsplit = format!("{name}.gguf");
        smelt(d.path(), common.iter().copied().chain(["-o", &unsplit])).unwrap();
        let dir = d.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let target = format!("{name}/{name}.gguf");
        smelt(
            d.path(),
            common
                .iter()
                .copied()
                .chain(["-o", &target, "--split-max-size", "40K"]),
        )
        .unwrap();
        let parts = check_split_set(&dir, name, &d.path().join(&unsplit));
        assert!(parts.len() > 2, "{}", parts.len());
        let big = if name == "a" {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        for (k, p) in parts.iter().enumerate() {
            let used: u64 = p.tensors.iter().map(padded).sum();
            if p.tensors.iter().any(|t| t.name == big) {
                assert_eq!(p.tensors.len(), 1, "{big} shares file {}", k + 1);
                assert!(used > 40_000);
            } else {
                assert!(used <= 40_000, "file {} holds {used} bytes", k + 1);
            }
            // Greedy: the next file's first tensor did not fit in this one.
            if let Some(next) = parts.get(k + 1) {
                assert!(
                    used + padded(&next.tensors[0]) > 40_000,
                    "file {} could hold more",
                    k + 1
                );
            }
        }
        assert_same_model(
            &Store::open(first_of(&dir, name)).unwrap(),
            &Store::open(d.path().join(&unsplit)).unwrap(),
        );
    }
}

#[test]
fn merge_and_convert_write_split_sets_with_their_provenance() {
    let d = scratch();
    tiny_model(d.path(), "a.gguf", &["--seed", "1"]);
    tiny_model(d.path(), "b.gguf", &["--seed", "2"]);
    std::fs::write(
        d.path().join("mix.yaml"),
        "merge_method: linear\nmodels:\n  - model: a.gguf\n    parameters: {weight: 0.5}\n  - model: b.gguf\n    parameters: {weight: 0.5}\n",
    )
    .unwrap();
    smelt(
        d.path(),
        ["merge", "mix.yaml", "-o", "whole", "--types", "Q8_0"],
    )
    .unwrap();
    smelt(
        d.path(),
        [
            "merge",
            "mix.yaml",
            "-o",
            "split",
            "--types",
            "Q8_0",
            "--split-max-size",
            "30K",
        ],
    )
    .unwrap();
    let unsplit = d.path().join("whole/mix-Q8_0.gguf");
    let parts = check_split_set(&d.path().join("split"), "mix-Q8_0", &unsplit);
    assert!(parts.len() > 1);
    // Provenance (recipe, inputs, general.*) in the first file only, unchanged.
    assert!(parts[0].metadata.get_str("smelt.recipe").is_some());
    assert!(parts[1..].iter().all(|p| p.metadata.len() == 3));
    let back = Store::open(first_of(&d.path().join("split"), "mix-Q8_0")).unwrap();
    assert_same_model(&back, &Store::open(&unsplit).unwrap());
    // --from replays the recipe recorded in the first file.
    smelt(
        d.path(),
        [
            "merge",
            "--from",
            first_of(&d.path().join("split"), "mix-Q8_0")
                .to_str()
                .unwrap(),
            "-o",
            "again",
            "--types",
            "Q8_0",
        ],
    )
    .unwrap();
    assert_eq!(
        std::fs::read(d.path().join("again/merge-Q8_0.gguf")).unwrap(),
        std::fs::read(&unsplit).unwrap()
    );

    smelt(d.path(), ["make-test-model", "-o", "hf", "--layers", "2"]).unwrap();
    smelt(
        d.path(),
        [
            "convert", "hf", "-o", "cwhole", "--types", "F16", "--name", "c",
        ],
    )
    .unwrap();
    smelt(
        d.path(),
        [
            "convert",
            "hf",
            "-o",
            "csplit",
            "--types",
            "F16",
            "--name",
            "c",
            "--split-max-tensors",
            "10",
        ],
    )
    .unwrap();
    let unsplit = d.path().join("cwhole/c-F16.gguf");
    let parts = check_split_set(&d.path().join("csplit"), "c-F16", &unsplit);
    assert_eq!(parts.len(), 3);
    assert_same_model(
        &Store::open(first_of(&d.path().join("csplit"), "c-F16")).unwrap(),
        &Store::open(&unsplit).unwrap(),
    );
}

#[test]
fn bad_split_options_are_one_clear_error() {
    let d = scratch();
    tiny_model(d.path(), "tiny.gguf", &[]);
    let q = |extra: &[&str]| {
        let mut args = vec!["quantize", "tiny.gguf", "-o", "out", "--types", "Q8_0"];
        args.extend_from_slice(extra);
        smelt(d.path(), args).unwrap_err()
    };
    for (extra, says) in [
        (
            &["--split-max-size", "0M"][..],
            "a split must hold something",
        ),
        (&["--split-max-size", "4"], "K, M or G"),
        (&["--split-max-size", "4GB"], "unknown unit `B`"),
        (&["--split-max-size", "1.5G"], "not a whole number"),
        (&["--split-max-tensors", "0"], "at least one tensor"),
        (&["--split-max-tensors", "x"], "not a whole number"),
        (
            &["--split-max-size", "0G", "--split-max-tensors", "0"],
            "error",
        ),
        (
            &["--split-max-size", "1G", "--split-max-tensors", "4"],
            "cannot be used with",
        ),
        (
            &["--keep-split", "--split-max-tensors", "4"],
            "cannot be used with",
        ),
    ] {
        let err = q(extra);
        assert!(err.contains(says), "{extra:?}: {err}");
        assert_eq!(err.matches("error").count(), 1, "{extra:?}: {err}");
    }
    std::fs::write(
        d.path().join("r.yaml"),
        "merge_method: linear\nmodels:\n  - model: tiny.gguf\n",
    )
    .unwrap();
    let err = smelt(
        d.path(),
        [
            "merge",
            "r.yaml",
            "-o",
            "hf",
            "--format",
            "safetensors",
            "--split-max-size",
            "1G",
        ],
    )
    .unwrap_err();
    assert!(err.contains("--shard-size"), "{err}");
    assert_eq!(listing(d.path()), ["r.yaml", "tiny.gguf"]);
}

#[test]
fn a_split_file_named_as_an_input_is_refused_before_any_work() {
    let d = scratch();
    // A plain (unsplit) model whose name is that of the second file of the set to be written.
    tiny_model(d.path(), "m-00002-of-00003.gguf", &[]);
    let before = std::fs::read(d.path().join("m-00002-of-00003.gguf")).unwrap();
    let err = smelt(
        d.path(),
        [
            "quantize",
            "m-00002-of-00003.gguf",
            "-o",
            "m.gguf",
            "--type",
            "Q8_0",
            "--split-max-tensors",
            "8",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("m-00002-of-00003.gguf: the output is the input"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(d.path().join("m-00002-of-00003.gguf")).unwrap(),
        before
    );
    assert_eq!(listing(d.path()), ["m-00002-of-00003.gguf"]);
}

#[test]
fn a_failed_run_leaves_no_part_of_any_set() {
    let d = scratch();
    let src = tiny_model(d.path(), "tiny.gguf", &[]);
    // A NaN in the last tensor: the run fails after the earlier files of each set were
    // complete and synced.
    let bad = d.path().join("bad.gguf");
    let last = Store::open(&src)
        .unwrap()
        .tensors
        .last()
        .unwrap()
        .name
        .clone();
    rewrite(
        &src,
        &bad,
        |_| {},
        |name, v| {
            if *name == last {
                v[3] = f32::NAN;
            }
        },
    );
    let err = smelt(
        d.path(),
        [
            "quantize",
            "bad.gguf",
            "-o",
            "out/deep",
            "--types",
            "F16,Q8_0",
            "--split-max-tensors",
            "4",
        ],
    )
    .unwrap_err();
    assert!(err.contains("not finite"), "{err}");
    assert!(
        !d.path().join("out").exists(),
        "{:?}",
        listing(&d.path().join("out/deep"))
    );
    // Into an existing folder: nothing new in it, no temporary files.
    std::fs::create_dir(d.path().join("keep")).unwrap();
    std::fs::write(d.path().join("keep/notes.txt"), "mine").unwrap();
    smelt(
        d.path(),
        [
            "quantize",
            "bad.gguf",
            "-o",
            "keep",
            "--types",
            "F16,Q8_0",
            "--split-max-size",
            "20K",
        ],
    )
    .unwrap_err();
    assert_eq!(listing(&d.path().join("keep")), ["notes.txt"]);
}
