//! Bad input gives one clear error naming the file and tensor, a non-zero exit code, no panic
//! and no output file left behind.

use crate::common::{self, Smelt};
use std::path::{Path, PathBuf};

/// A one-layer test model with a 300-token vocabulary at `path` (`extra` arguments added).
fn tiny_model(path: &Path, extra: &[&str]) {
    let ok = Smelt::new(path.parent().unwrap())
        .args(["make-test-model", "--layers", "1", "--vocab", "300"])
        .args(extra)
        .arg("-o")
        .arg(path)
        .run()
        .status
        .success();
    assert!(ok, "make-test-model {}", path.display());
}

/// Run `smelt quantize INPUT -o OUT --type Q8_0`, expect failure; return stderr.
fn quantize_fails(input: &Path, out: &Path) -> String {
    let o = Smelt::new(out.parent().unwrap())
        .args(["quantize"])
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(["--type", "F16"])
        .run();
    let err = o.stderr;
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(!out.exists(), "output left behind after a failure");
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("smelt-tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    err
}

/// A hand-built GGUF: header, one string key, tensors as (name, dims, type id, offset), data.
fn gguf_bytes(version: u32, tensors: &[(&str, &[u64], u32, u64)], data_len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    for (name, dims, ty, off) in tensors {
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: common::scratch(),
        }
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("out.gguf")
    }
}

#[test]
fn wrong_magic() {
    let c = Case::new();
    let p = c.file("bad.gguf", b"GGML\x03\x00\x00\x00 and more bytes here");
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("bad.gguf") && err.contains("not a GGUF file"),
        "{err}"
    );
}

#[test]
fn unsupported_version() {
    let c = Case::new();
    let p = c.file("v9.gguf", &gguf_bytes(9, &[], 0));
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("v9.gguf") && err.contains("unsupported GGUF version 9"),
        "{err}"
    );
    let p = c.file("v1.gguf", &gguf_bytes(1, &[], 0));
    assert!(quantize_fails(&p, &c.out()).contains("version 1 is not supported"));
}

#[test]
fn truncated_header_and_data() {
    let c = Case::new();
    let full = gguf_bytes(3, &[("w.weight", &[32, 2], 0, 0)], 256);
    let p = c.file("trunc.gguf", &full[..40]);
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("trunc.gguf") && err.contains("truncated"),
        "{err}"
    );
    let p = c.file("short.gguf", &full[..full.len() - 200]);
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("short.gguf") && err.contains("`w.weight`") && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn unknown_tensor_type() {
    let c = Case::new();
    let p = c.file(
        "unk.gguf",
        &gguf_bytes(3, &[("blk.0.attn_q.weight", &[32, 2], 99, 0)], 256),
    );
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("unk.gguf")
            && err.contains("unsupported type id 99 in tensor `blk.0.attn_q.weight`"),
        "{err}"
    );
}

#[test]
fn misaligned_offset() {
    let c = Case::new();
    let p = c.file(
        "mis.gguf",
        &gguf_bytes(
            3,
            &[("a.weight", &[32, 2], 0, 0), ("b.weight", &[32, 2], 0, 260)],
            1024,
        ),
    );
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("`b.weight`") && err.contains("not aligned"),
        "{err}"
    );
}

#[test]
fn duplicate_tensor_names() {
    let c = Case::new();
    let p = c.file(
        "dup.gguf",
        &gguf_bytes(
            3,
            &[("a.weight", &[32, 2], 0, 0), ("a.weight", &[32, 2], 0, 256)],
            512,
        ),
    );
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("dup.gguf") && err.contains("duplicate tensor name `a.weight`"),
        "{err}"
    );
}

#[test]
fn block_size_mismatch() {
    let c = Case::new();
    // Q4_0 rows must be multiples of 32.
    let p = c.file(
        "rows.gguf",
        &gguf_bytes(3, &[("a.weight", &[33, 2], 2, 0)], 512),
    );
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("`a.weight`") && err.contains("block size"),
        "{err}"
    );
}

#[test]
fn missing_split() {
    let c = Case::new();
    let mut b = gguf_bytes(3, &[], 0);
    // Rewrite the header with split keys: count 2, no 0.
    b.truncate(0);
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    for (k, v) in [("split.no", 0u16), ("split.count", 2u16)] {
        b.extend_from_slice(&(k.len() as u64).to_le_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&v.to_le_bytes());
    }
    let p = c.file("m-00001-of-00002.gguf", &b);
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("m-00002-of-00002.gguf") && err.contains("missing split"),
        "{err}"
    );
}

#[test]
fn missing_input_and_unwritable_output() {
    let c = Case::new();
    let err = quantize_fails(&c.dir.path().join("nope.gguf"), &c.out());
    assert!(err.contains("nope.gguf"), "{err}");

    let model = c.dir.path().join("tiny.gguf");
    let ok = Smelt::new(c.dir.path())
        .args(["make-test-model", "-o"])
        .arg(&model)
        .run();
    assert!(ok.status.success());
    let bad_out = c.dir.path().join("no-such-dir").join("out.gguf");
    let o = Smelt::new(c.dir.path())
        .arg("quantize")
        .arg(&model)
        .arg("-o")
        .arg(&bad_out)
        .args(["--type", "F16"])
        .run();
    let err = o.stderr;
    assert!(
        !o.status.success() && err.contains("no-such-dir") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn fuzzed_headers_never_panic() {
    // Flip bytes of a valid header one at a time: every outcome is success or a clean error.
    let c = Case::new();
    let model = c.dir.path().join("tiny.gguf");
    tiny_model(&model, &[]);
    let bytes = std::fs::read(&model).unwrap();
    let header_len = 4096.min(bytes.len());
    let mut mutated = 0;
    for pos in (0..header_len).step_by(61) {
        for delta in [1u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[pos] = b[pos].wrapping_add(delta);
            if let Err(e) = smelt::store::Store::open_gguf(&c.file("f.gguf", &b)) {
                assert!(
                    e.to_string().contains("f.gguf") || e.to_string().contains("tensor"),
                    "{e}"
                );
            }
            mutated += 1;
        }
    }
    assert!(mutated > 100);
}

/// Run the binary in `dir` with `args`: it must fail without a panic; return stderr.
fn fails_in(dir: &Path, args: &[&std::ffi::OsStr]) -> String {
    let o = Smelt::new(dir).args(args).run();
    let err = o.stderr;
    assert!(!o.status.success(), "expected failure; stderr: {err}");
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(err.contains("error"), "{err}");
    err
}

#[test]
fn tensor_byte_size_overflow() {
    // 2^62 F64 elements need 2^65 bytes: formerly a multiply overflow (a panic in debug
    // builds, a wrapped-around size and a huge allocation in release).
    let c = Case::new();
    let p = c.file(
        "ovf.gguf",
        &gguf_bytes(3, &[("w.weight", &[1 << 62], 28, 0)], 64),
    );
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("ovf.gguf") && err.contains("`w.weight`") && err.contains("2^64 bytes"),
        "{err}"
    );
}

/// A GGUF header with one string-array key `key` of `n` claimed elements and `body` after it.
fn gguf_with_array(key: &str, elem_type: u32, n: u64, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&elem_type.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(body);
    b
}

#[test]
fn array_length_is_checked_against_the_element_size() {
    // 4096 strings claimed in 4096 bytes: each string takes at least 8 bytes, so this cannot
    // be real. Formerly accepted up to one element per byte and reserved 32 bytes per claimed
    // element before reading any (a 10 GB model with a corrupt count asked for 320 GB).
    let c = Case::new();
    let p = c.file(
        "arr.gguf",
        &gguf_with_array("tokenizer.ggml.tokens", 8, 4096, &[0u8; 4096]),
    );
    let err = smelt::gguf::GgufFile::open(&p).err().unwrap().to_string();
    assert!(
        err.contains("arr.gguf")
            && err.contains("`tokenizer.ggml.tokens`")
            && err.contains("array of 4096 String elements"),
        "{err}"
    );
    // Arrays of arrays: each inner array takes at least its 12-byte header.
    let p = c.file("nest.gguf", &gguf_with_array("k", 9, 100, &[0u8; 1199]));
    let err = smelt::gguf::GgufFile::open(&p).err().unwrap().to_string();
    assert!(err.contains("nest.gguf") && err.contains("`k`"), "{err}");
}

#[test]
fn many_metadata_keys_parse_in_linear_time() {
    // 200k distinct keys: the duplicate check used to scan every earlier key (2 * 10^10
    // comparisons, minutes); now a set makes it instant.
    let n = 200_000u64;
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&n.to_le_bytes());
    for i in 0..n {
        let key = format!("k{i:07}");
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key.as_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.push(1);
    }
    let c = Case::new();
    let p = c.file("keys.gguf", &b);
    let t0 = std::time::Instant::now();
    let f = smelt::gguf::GgufFile::open(&p).unwrap();
    assert_eq!(f.metadata.len(), n as usize);
    assert!(t0.elapsed().as_secs() < 10, "took {:?}", t0.elapsed());
    // A duplicate among them is still found, and named.
    let dup = b"k0000007";
    let at = b.len() - 21; // the last entry: length, key, type, value
    b[at + 8..at + 16].copy_from_slice(dup);
    let p = c.file("dupkeys.gguf", &b);
    let err = smelt::gguf::GgufFile::open(&p).err().unwrap().to_string();
    assert!(
        err.contains("dupkeys.gguf") && err.contains("duplicate metadata key `k0000007`"),
        "{err}"
    );
}

/// A tiny HF folder (config.json + two shards with an index).
fn hf_folder(c: &Case) -> PathBuf {
    let dir = c.dir.path().join("hf");
    smelt::fixture::TinyLlama {
        n_layer: 1,
        hidden: 32,
        ff: 64,
        n_head: 2,
        n_head_kv: 1,
        vocab: 260,
        ..Default::default()
    }
    .write_hf(&dir, 2)
    .unwrap();
    dir
}

#[test]
fn huge_head_dim_with_llama3_rope_is_an_error() {
    // llama3 RoPE scaling makes head_dim / 2 factors: head_dim 2^32 - 1 formerly allocated
    // 8 GiB (and aborted where that failed).
    let c = Case::new();
    let dir = hf_folder(&c);
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["head_dim"] = serde_json::json!(u32::MAX);
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let err = quantize_fails(&dir, &c.out());
    assert!(
        err.contains("config.json") && err.contains("head_dim 4294967295 is implausible"),
        "{err}"
    );
}

#[test]
fn index_shards_must_be_files_beside_the_index() {
    // A weight_map entry naming `/etc/passwd` or `../x` used to open that file (and report
    // its bytes as a bad safetensors header, without naming the index).
    let c = Case::new();
    let dir = hf_folder(&c);
    let index_path = dir.join("model.safetensors.index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    for shard in [
        "/etc/passwd",
        "../hf/model-00001-of-00002.safetensors",
        "sub/x.safetensors",
    ] {
        let mut v = index.clone();
        v["weight_map"]["model.norm.weight"] = serde_json::json!(shard);
        std::fs::write(&index_path, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = quantize_fails(&dir, &c.out());
        assert!(
            err.contains("model.safetensors.index.json")
                && err.contains("`model.norm.weight`")
                && err.contains(&format!("`{shard}` is not a file name")),
            "{err}"
        );
    }
}

#[test]
fn hostile_recipes_are_errors_naming_the_line() {
    let c = Case::new();
    let model = c.dir.path().join("m.gguf");
    tiny_model(&model, &[]);
    let cases = [
        // Formerly an index-out-of-bounds panic (`slices[0]`, `sources[0]`).
        ("empty-models.yaml", "merge_method: linear\nmodels: []\n", "empty-models.yaml:1"),
        ("empty-slices.yaml", "merge_method: passthrough\nslices: []\n", "empty-slices.yaml:1"),
        (
            "empty-globals.yaml",
            "merge_method: passthrough\nslices:\n  - sources:\n      - model: m.gguf\n        layer_range: [0, 1]\nglobals:\n  models: []\n",
            "empty-globals.yaml",
        ),
        // Formerly a u32 overflow (panic) or four billion planned layers (a hang).
        (
            "repeat.yaml",
            "merge_method: passthrough\nslices:\n  - sources:\n      - model: m.gguf\n        layer_range: [0, 1]\n    repeat: 4294967295\n",
            "repeat.yaml:6",
        ),
        // Formerly an overflow or a vocabulary padded to 2^62 rows.
        (
            "pad.yaml",
            "merge_method: linear\nmodels:\n  - model: m.gguf\n    parameters: {weight: 1}\ntokenizer:\n  source: base\n  pad_to_multiple_of: 4611686018427387904\n",
            "pad.yaml",
        ),
    ];
    for (file, text, needle) in cases {
        let r = c.file(file, text.as_bytes());
        let out = c.dir.path().join(format!("out-{file}"));
        let err = fails_in(
            c.dir.path(),
            &[
                "merge".as_ref(),
                r.as_os_str(),
                "-o".as_ref(),
                out.as_os_str(),
                "--types".as_ref(),
                "F16".as_ref(),
            ],
        );
        assert!(err.contains(needle), "{file}: {err}");
        let written = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
        assert_eq!(written, 0, "{file}: output written");
    }
}

#[test]
fn negative_imatrix_name_length_is_named() {
    // Formerly read as an empty name, then reported as a truncated call count.
    let c = Case::new();
    let mut b = 1i32.to_le_bytes().to_vec();
    b.extend_from_slice(&(-5i32).to_le_bytes());
    b.extend_from_slice(&[0u8; 64]);
    let p = c.file("neg.dat", &b);
    let err = smelt::quant::imatrix::Imatrix::load(&p)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("neg.dat") && err.contains("entry 1 has a name of -5 bytes"),
        "{err}"
    );
}

#[test]
fn damaged_files_fail_cleanly_in_inspect_and_quantize() {
    let c = Case::new();
    let model = c.dir.path().join("tiny.gguf");
    tiny_model(&model, &[]);
    let ok = std::fs::read(&model).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("half.gguf", ok[..ok.len() / 2].to_vec()),
        ("hdr.gguf", ok[..100].to_vec()),
    ];
    for (name, at, v) in [
        ("nt.gguf", 8, 1u64 << 62),
        ("kv.gguf", 16, 1 << 40),
        ("key.gguf", 24, u64::MAX),
    ] {
        let mut b = ok.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        cases.push((name, b));
    }
    for (name, bytes) in cases {
        let p = c.file(name, &bytes);
        let o = Smelt::new(c.dir.path()).arg("inspect").arg(&p).run();
        let err = o.stderr;
        assert!(
            !o.status.success() && err.contains("error: ") && err.contains(name),
            "inspect {name}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        let o = Smelt::new(c.dir.path())
            .arg("quantize")
            .arg(&p)
            .arg("-o")
            .arg(c.out())
            .args(["--type", "Q8_0"])
            .run();
        let err = o.stderr;
        assert!(
            !o.status.success() && err.contains("error: ") && err.contains(name),
            "quantize {name}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        let left: Vec<_> = std::fs::read_dir(c.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("out") || n.contains("smelt-tmp"))
            .collect();
        assert!(left.is_empty(), "{name}: left behind {left:?}");
    }
}

#[test]
fn zero_dimension_beside_a_huge_one() {
    // [2^62, 0] holds no data, but a row of 2^62 F64 values is 2^65 bytes: reading it used to
    // overflow computing the row size (a panic).
    let c = Case::new();
    let p = c.file(
        "zero.gguf",
        &gguf_bytes(3, &[("w.weight", &[1 << 62, 0], 28, 0)], 64),
    );
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("zero.gguf") && err.contains("`w.weight`") && err.contains("2^64 bytes"),
        "{err}"
    );
    let header = serde_json::json!({"w": {"dtype": "F32", "shape": [0, 1u64 << 62], "data_offsets": [0, 0]}});
    let text = serde_json::to_string(&header).unwrap();
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(text.as_bytes());
    let p = c.file("zero.safetensors", &b);
    let err = quantize_fails(&p, &c.out());
    assert!(
        err.contains("zero.safetensors") && err.contains("`w`") && err.contains("2^64 bytes"),
        "{err}"
    );
}

#[test]
fn hostile_method_parameters() {
    let c = Case::new();
    for (name, seed) in [("a.gguf", "1"), ("b.gguf", "2")] {
        tiny_model(&c.dir.path().join(name), &["--seed", seed]);
    }
    let run = |file: &str, text: &str| {
        let r = c.file(file, text.as_bytes());
        let out = c.dir.path().join(format!("out-{file}"));
        let o = Smelt::new(c.dir.path())
            .arg("merge")
            .arg(&r)
            .arg("-o")
            .arg(&out)
            .args(["--types", "F16"])
            .run();
        let err = o.stderr;
        assert!(!err.contains("panicked"), "{file}: {err}");
        (o.status.success(), err, out)
    };
    // Formerly `target + n_top` overflowed (a panic) when gamma cast to usize::MAX; now
    // gamma is checked against its domain when the plan is made.
    let (ok, err, _) = run(
        "gamma.yaml",
        "merge_method: breadcrumbs_ties\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n    parameters: {weight: 1, density: 0.5, gamma: 1e30}\n",
    );
    assert!(
        !ok && err.contains("gamma.yaml:5:") && err.contains("`gamma`"),
        "{err}"
    );
    // Formerly 2^60 iterations with nothing to stop them early (a hang).
    let (ok, err, out) = run(
        "karcher.yaml",
        "merge_method: karcher\nmodels:\n  - model: a.gguf\n  - model: b.gguf\nparameters:\n  max_iter: 1152921504606846976\n  tol: 0\n",
    );
    assert!(
        !ok && err.contains("tensor `")
            && err.contains("karcher: max_iter must be from 0 to 10000"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0), 0);
    // A method's parameter error names the tensor it was merging.
    let (ok, err, _) = run(
        "della.yaml",
        "merge_method: della\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n    parameters: {weight: 1, density: 0.5, epsilon: 2}\n",
    );
    assert!(
        !ok && err.contains("tensor `")
            && err.contains("della.yaml:5:")
            && err.contains("`epsilon`"),
        "{err}"
    );
}
