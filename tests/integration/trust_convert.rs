//! Inputs smelt must not trust: links out of a model folder, impossible config.json values,
//! overlapping GGUF tensors, FIFOs, folders without a tokenizer, huge metadata arrays, and
//! output folders that already hold a user's model; and a config.json that transformers
//! reads as the GGUF's model.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, smelt, Smelt};

/// `smelt make-test-model -o DIR` (a llama HF folder: config.json + safetensors, no
/// tokenizer) with `extra` options.
fn make_model(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec!["make-test-model", "-o", name, "--layers", "2"];
    args.extend_from_slice(extra);
    smelt(dir, args).unwrap();
    dir.join(name)
}

fn edit_config(folder: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = folder.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(&p, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

/// Run smelt in `dir`, killed after `limit`: (exit status, or None when it had to be killed;
/// stderr).
fn smelt_with_timeout(dir: &Path, args: &[&str], limit: Duration) -> (Option<bool>, String) {
    let mut child = Smelt::new(dir).args(args).spawn();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s.success());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(!err.contains("panicked"), "{err}");
    (status, err)
}

fn recipe(dir: &Path, model: &str, layers: usize) -> PathBuf {
    let p = dir.join(format!("r-{}.yaml", model.replace(['/', '.'], "_")));
    std::fs::write(
        &p,
        format!(
            "merge_method: passthrough\nslices:\n  - sources:\n      - model: {model}\n        layer_range: [0, {layers}]\n"
        ),
    )
    .unwrap();
    p
}

/// An HF folder with tokenizer files (tokenizer.json, tokenizer_config.json): a GGUF test model
/// written back out with `merge --format safetensors`, which rebuilds them.
fn model_with_tokenizer(dir: &Path) -> PathBuf {
    smelt(dir, ["make-test-model", "-o", "t.gguf", "--layers", "2"]).unwrap();
    let r = recipe(dir, "t.gguf", 2);
    smelt(
        dir,
        [
            "merge",
            r.to_str().unwrap(),
            "-o",
            "tok",
            "--format",
            "safetensors",
            "--type",
            "F32",
        ],
    )
    .unwrap();
    let folder = dir.join("tok");
    assert!(folder.join("tokenizer.json").is_file());
    assert!(folder.join("tokenizer_config.json").is_file());
    folder
}

fn convert(dir: &Path, folder: &str) -> Result<String, String> {
    smelt(
        dir,
        [
            "convert",
            folder,
            "-o",
            "out",
            "--type",
            "F32",
            "--tokenizer-pre",
            "default",
        ],
    )
}

#[test]
fn files_linked_out_of_the_input_folder_are_refused() {
    let d = common::scratch();
    let folder = model_with_tokenizer(d.path());
    std::fs::write(d.path().join("secret.txt"), "{{ 'the secret' }}").unwrap();
    // The template comes from chat_template.jinja only when tokenizer_config.json has none.
    let tc_path = folder.join("tokenizer_config.json");
    let mut tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&tc_path).unwrap()).unwrap();
    tc.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&tc_path, serde_json::to_vec(&tc).unwrap()).unwrap();
    convert(d.path(), "tok").expect("the folder converts before any link is planted");

    for (name, target) in [
        ("chat_template.jinja", "../secret.txt"),
        ("README.md", "../secret.txt"),
        ("generation_config.json", "../secret.txt"),
    ] {
        let link = folder.join(name);
        std::os::unix::fs::symlink(target, &link).unwrap();
        let err = convert(d.path(), "tok").expect_err(name);
        assert!(
            err.contains(name) && err.contains("outside the model folder"),
            "{name}: {err}"
        );
        std::fs::remove_file(&link).unwrap();
    }

    // config.json, tokenizer files and shards moved out and linked back in.
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        std::fs::rename(folder.join(name), elsewhere.join(name)).unwrap();
        std::os::unix::fs::symlink(elsewhere.join(name), folder.join(name)).unwrap();
        let err = convert(d.path(), "tok").expect_err(name);
        assert!(
            err.contains(name) && err.contains("outside the model folder"),
            "{name}: {err}"
        );
        std::fs::remove_file(folder.join(name)).unwrap();
        std::fs::rename(elsewhere.join(name), folder.join(name)).unwrap();
    }
    // A shard named by an index, linked out.
    let sharded = make_model(d.path(), "sharded", &["--shards", "2"]);
    let shard = "model-00002-of-00002.safetensors";
    std::fs::rename(sharded.join(shard), elsewhere.join(shard)).unwrap();
    std::os::unix::fs::symlink(elsewhere.join(shard), sharded.join(shard)).unwrap();
    let err = smelt(
        d.path(),
        ["quantize", "sharded", "-o", "x.gguf", "--type", "F32"],
    )
    .expect_err("linked shard");
    assert!(err.contains(shard) && err.contains("outside"), "{err}");

    // Links that stay inside the folder are fine.
    std::fs::rename(folder.join("config.json"), folder.join("real-config.json")).unwrap();
    std::os::unix::fs::symlink("real-config.json", folder.join("config.json")).unwrap();
    convert(d.path(), "tok").expect("a link inside the folder");
}

#[test]
fn hub_cache_snapshot_links_into_its_blobs_still_convert() {
    // models--org--name/snapshots/<rev>/<file> -> ../../blobs/<hash>: every file of a Hugging
    // Face cache snapshot resolves outside the snapshot folder, into the same repository.
    let d = common::scratch();
    let src = make_model(d.path(), "src", &[]);
    let repo = d.path().join("models--org--tiny");
    let snap = repo.join("snapshots").join("abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    for (k, e) in std::fs::read_dir(&src).unwrap().enumerate() {
        let e = e.unwrap();
        let blob = repo.join("blobs").join(format!("blob{k}"));
        std::fs::copy(e.path(), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{k}"), snap.join(e.file_name()))
            .unwrap();
    }
    smelt(
        d.path(),
        [
            "quantize",
            snap.to_str().unwrap(),
            "-o",
            "x.gguf",
            "--type",
            "F32",
        ],
    )
    .unwrap();
}

#[test]
fn impossible_config_values_are_refused_naming_the_key() {
    use serde_json::json;
    let d = common::scratch();
    // hidden 64, 4 heads of 16, 2 key/value heads.
    let folder = make_model(d.path(), "m", &[]);
    let orig = std::fs::read(folder.join("config.json")).unwrap();
    let llama3 = |k: &str, v: serde_json::Value| {
        let mut r = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        r[k] = v;
        r
    };
    let cases: Vec<(&str, Vec<(&str, serde_json::Value)>)> = vec![
        (
            "num_attention_heads",
            vec![("num_attention_heads", json!(0))],
        ),
        // 64 is not 3 heads of one size, and no head_dim says otherwise.
        (
            "num_attention_heads",
            vec![
                ("num_attention_heads", json!(3)),
                ("num_key_value_heads", json!(1)),
                ("head_dim", json!(null)),
            ],
        ),
        (
            "num_key_value_heads",
            vec![("num_key_value_heads", json!(3))],
        ),
        // Qwen2 has no q/k row permutation to trip over bad head counts later.
        (
            "num_attention_heads",
            vec![
                ("architectures", json!(["Qwen2ForCausalLM"])),
                ("num_attention_heads", json!(3)),
                ("num_key_value_heads", json!(1)),
                ("head_dim", json!(null)),
            ],
        ),
        (
            "num_key_value_heads",
            vec![
                ("architectures", json!(["Qwen2ForCausalLM"])),
                ("num_key_value_heads", json!(3)),
            ],
        ),
        ("hidden_size", vec![("hidden_size", json!(0))]),
        ("head_dim", vec![("head_dim", json!(0))]),
        ("intermediate_size", vec![("intermediate_size", json!(0))]),
        ("rope_theta", vec![("rope_theta", json!(0.0))]),
        (
            "factor",
            vec![("rope_scaling", llama3("factor", json!(0.0)))],
        ),
        (
            "low_freq_factor",
            vec![("rope_scaling", llama3("low_freq_factor", json!(0.0)))],
        ),
        (
            "high_freq_factor",
            vec![("rope_scaling", llama3("high_freq_factor", json!(-4.0)))],
        ),
        (
            "low_freq_factor",
            vec![("rope_scaling", llama3("high_freq_factor", json!(1.0)))],
        ),
        (
            "factor",
            vec![(
                "rope_scaling",
                json!({"rope_type": "linear", "factor": 0.0}),
            )],
        ),
    ];
    for (key, edits) in cases {
        std::fs::write(folder.join("config.json"), &orig).unwrap();
        edit_config(&folder, |c| {
            for (k, v) in &edits {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(*k);
                } else {
                    c[*k] = v.clone();
                }
            }
        });
        let err = smelt(d.path(), ["quantize", "m", "-o", "x.gguf", "--type", "F32"])
            .expect_err(&format!("{edits:?} must be refused"));
        assert!(
            err.contains("config.json") && err.contains(&format!("`{key}`")),
            "{edits:?}: {err}"
        );
    }
    // The same folder as written converts.
    std::fs::write(folder.join("config.json"), &orig).unwrap();
    smelt(d.path(), ["quantize", "m", "-o", "x.gguf", "--type", "F32"]).unwrap();
}

/// A GGUF of two F32 tensors, each (values, data offset), and 128 bytes of data.
fn two_tensor_gguf(tensors: [(u64, u64); 2]) -> Vec<u8> {
    let mut g = Vec::new();
    g.extend_from_slice(b"GGUF");
    g.extend_from_slice(&3u32.to_le_bytes());
    g.extend_from_slice(&2u64.to_le_bytes()); // tensors
    g.extend_from_slice(&0u64.to_le_bytes()); // metadata keys
    for (name, (n, off)) in ["first.weight", "second.weight"].into_iter().zip(tensors) {
        g.extend_from_slice(&(name.len() as u64).to_le_bytes());
        g.extend_from_slice(name.as_bytes());
        g.extend_from_slice(&1u32.to_le_bytes());
        g.extend_from_slice(&n.to_le_bytes());
        g.extend_from_slice(&0u32.to_le_bytes()); // F32
        g.extend_from_slice(&off.to_le_bytes());
    }
    while g.len() % 32 != 0 {
        g.push(0);
    }
    g.extend(std::iter::repeat_n(0u8, 128));
    g
}

#[test]
fn gguf_tensors_sharing_data_bytes_are_refused() {
    let d = common::scratch();
    std::fs::write(d.path().join("ok.gguf"), two_tensor_gguf([(8, 0), (8, 32)])).unwrap();
    smelt(d.path(), ["inspect", "ok.gguf"]).unwrap();
    // The same bytes, and the second starting inside the first's 64 bytes.
    for tensors in [[(8, 0), (8, 0)], [(16, 0), (8, 32)], [(8, 64), (16, 32)]] {
        std::fs::write(d.path().join("bad.gguf"), two_tensor_gguf(tensors)).unwrap();
        let err = smelt(d.path(), ["inspect", "bad.gguf"]).unwrap_err();
        assert!(
            err.contains("bad.gguf")
                && err.contains("`first.weight`")
                && err.contains("`second.weight`")
                && err.contains("overlap"),
            "{tensors:?}: {err}"
        );
    }
}

#[test]
fn convert_without_tokenizer_files_warns_that_llama_cpp_will_not_load_it() {
    let d = common::scratch();
    make_model(d.path(), "bare", &[]);
    let log = smelt(d.path(), ["convert", "bare", "-o", "out", "--type", "F32"]).unwrap();
    assert!(
        log.contains("warning: bare has no tokenizer files")
            && log.contains("llama.cpp will not load"),
        "{log}"
    );
    // A folder with a tokenizer gets no such warning.
    model_with_tokenizer(d.path());
    let log = convert(d.path(), "tok").unwrap();
    assert!(!log.contains("no tokenizer files"), "{log}");
}

#[test]
fn config_json_from_gguf_uses_the_keys_transformers_reads() {
    let d = common::scratch();
    smelt(
        d.path(),
        [
            "make-test-model",
            "-o",
            "t.gguf",
            "--layers",
            "3",
            "--hidden",
            "96",
            "--ff",
            "160",
            "--heads",
            "6",
            "--kv-heads",
            "2",
        ],
    )
    .unwrap();
    smelt(
        d.path(),
        [
            "quantize",
            "t.gguf",
            "-o",
            "u.gguf",
            "--type",
            "F32",
            "--override-kv",
            "llama.rope.freq_base=float:100000",
            "--override-kv",
            "llama.context_length=int:8192",
            "--override-kv",
            "llama.attention.layer_norm_rms_epsilon=float:0.000001",
        ],
    )
    .unwrap();
    let r = recipe(d.path(), "u.gguf", 3);
    smelt(
        d.path(),
        [
            "merge",
            r.to_str().unwrap(),
            "-o",
            "hf",
            "--format",
            "safetensors",
            "--type",
            "F32",
        ],
    )
    .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("hf/config.json")).unwrap()).unwrap();
    for (k, v) in [
        ("model_type", serde_json::json!("llama")),
        ("architectures", serde_json::json!(["LlamaForCausalLM"])),
        ("intermediate_size", serde_json::json!(160)),
        ("hidden_size", serde_json::json!(96)),
        ("num_hidden_layers", serde_json::json!(3)),
        ("num_attention_heads", serde_json::json!(6)),
        ("num_key_value_heads", serde_json::json!(2)),
        ("max_position_embeddings", serde_json::json!(8192)),
        ("rope_theta", serde_json::json!(100000.0)),
        ("rms_norm_eps", serde_json::json!(1e-6)),
    ] {
        assert_eq!(cfg.get(k), Some(&v), "{k} in {cfg:#}");
    }
    for k in [
        "prefix_dense_intermediate_size",
        "n_layers",
        "global_rope_theta",
        "n_heads",
        "n_kv_heads",
    ] {
        assert!(cfg.get(k).is_none(), "{k} in {cfg:#}");
    }
}

#[test]
fn merge_into_a_folder_holding_a_users_model_needs_force() {
    let d = common::scratch();
    make_model(d.path(), "a", &[]);
    let r = recipe(d.path(), "a", 2);
    // The user's own model, sharded, plus a file of theirs.
    let mine = make_model(d.path(), "mine", &["--shards", "2", "--seed", "7"]);
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let before: Vec<(String, Vec<u8>)> = {
        let mut v: Vec<_> = std::fs::read_dir(&mine)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let args = |force: bool| {
        let mut a = vec![
            "merge",
            r.to_str().unwrap(),
            "-o",
            "mine",
            "--format",
            "safetensors",
            "--type",
            "F32",
        ];
        if force {
            a.push("--force");
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let err = smelt(d.path(), args(false)).unwrap_err();
    assert!(
        err.contains("mine") && err.contains("model weights") && err.contains("--force"),
        "{err}"
    );
    let after: Vec<(String, Vec<u8>)> = {
        let mut v: Vec<_> = std::fs::read_dir(&mine)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert!(before == after, "the user's folder was changed");

    // With --force the old model is replaced: its stale shards and index go, other files stay.
    smelt(d.path(), args(true)).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&mine)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.contains(&"model.safetensors".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"notes.txt".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("model-000"))
            && !names.iter().any(|n| n.ends_with(".index.json")),
        "{names:?}"
    );

    // A fresh folder (or one without weights) needs no --force.
    std::fs::create_dir(d.path().join("fresh")).unwrap();
    std::fs::write(d.path().join("fresh/notes.txt"), "x").unwrap();
    let mut a = args(false);
    a[3] = "fresh".into();
    smelt(d.path(), a).unwrap();
    assert_eq!(
        std::fs::read(d.path().join("fresh/notes.txt")).unwrap(),
        b"x"
    );
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

#[test]
fn fifo_inputs_are_refused_not_waited_on() {
    let limit = Duration::from_secs(30);
    let d = common::scratch();
    let dir = d.path();
    model_with_tokenizer(dir);
    smelt(dir, ["make-test-model", "-o", "t.gguf", "--layers", "2"]).unwrap();
    mkfifo(&dir.join("fifo.gguf"));
    mkfifo(&dir.join("fifo.safetensors"));
    mkfifo(&dir.join("fifo.dat"));
    mkfifo(&dir.join("fifo.yaml"));
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["inspect", "fifo.gguf"], "fifo.gguf"),
        (
            vec!["quantize", "fifo.gguf", "-o", "x.gguf", "--type", "F32"],
            "fifo.gguf",
        ),
        (vec!["inspect", "fifo.safetensors"], "fifo.safetensors"),
        (
            vec![
                "quantize",
                "t.gguf",
                "-o",
                "x.gguf",
                "--type",
                "Q4_0",
                "--imatrix",
                "fifo.dat",
            ],
            "fifo.dat",
        ),
        (vec!["merge", "fifo.yaml", "-o", "mo"], "fifo.yaml"),
    ];
    for (args, named) in cases.drain(..) {
        let (status, err) = smelt_with_timeout(dir, &args, limit);
        assert_eq!(status, Some(false), "{args:?} hung or succeeded: {err}");
        assert!(
            err.contains(named) && err.contains("FIFO"),
            "{args:?}: {err}"
        );
    }
    // Files of an HF folder that are FIFOs: config.json, the weights, tokenizer files.
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "generation_config.json",
    ] {
        let model = dir.join("tok");
        let real = model.join(name);
        let moved = dir.join(format!("moved-{name}"));
        if real.exists() {
            std::fs::rename(&real, &moved).unwrap();
        }
        mkfifo(&real);
        let (status, err) = smelt_with_timeout(
            dir,
            &[
                "convert",
                "tok",
                "-o",
                "out",
                "--type",
                "F32",
                "--tokenizer-pre",
                "default",
            ],
            limit,
        );
        assert_eq!(status, Some(false), "{name} hung or succeeded: {err}");
        assert!(err.contains(name) && err.contains("FIFO"), "{name}: {err}");
        std::fs::remove_file(&real).unwrap();
        if moved.exists() {
            std::fs::rename(&moved, &real).unwrap();
        }
    }
}

#[test]
fn a_large_numeric_metadata_array_costs_its_size_not_64_times_it() {
    // 64 MiB of U8 metadata: a `Value` per element took 32 bytes and more, and aborted.
    let n: u64 = 64 << 20;
    let d = common::scratch();
    let mut g = Vec::with_capacity(n as usize + 64);
    g.extend_from_slice(b"GGUF");
    g.extend_from_slice(&3u32.to_le_bytes());
    g.extend_from_slice(&0u64.to_le_bytes()); // tensors
    g.extend_from_slice(&1u64.to_le_bytes()); // metadata keys
    let key = b"test.bytes";
    g.extend_from_slice(&(key.len() as u64).to_le_bytes());
    g.extend_from_slice(key);
    g.extend_from_slice(&9u32.to_le_bytes()); // array
    g.extend_from_slice(&0u32.to_le_bytes()); // of U8
    g.extend_from_slice(&n.to_le_bytes());
    g.extend((0..n).map(|i| (i % 251) as u8));
    std::fs::write(d.path().join("big.gguf"), &g).unwrap();
    // 1 GiB of address space: the file's map and one copy of the array fit, 32 bytes an
    // element do not.
    let o = Smelt::new(d.path())
        .ulimit("-v 1048576")
        .args(["inspect", "--json", "big.gguf"])
        .run();
    let err = &o.stderr;
    assert!(o.status.success(), "{:?}: {err}", o.status);
    let doc = o.json();
    let v = &doc["metadata"]["test.bytes"];
    assert_eq!(v["array_len"], n);
    assert_eq!(v["head"], serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7]));
}
