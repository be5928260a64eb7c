//! `smelt merge --format safetensors`: Hugging Face folders that read back as the same model.

use smelt::fixture::TinyLlama;
use smelt::gguf::GgmlType;
use smelt::quant::float::f32_to_bf16_bits;
use smelt::store::Store;
use std::path::{Path, PathBuf};

use crate::common::{self, smelt};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tiny(seed: u64, dtype: GgmlType) -> TinyLlama {
    TinyLlama {
        seed,
        dtype,
        n_layer: 6,
        ..Default::default()
    }
}

/// The safetensors header of `file`: name → (dtype, shape, bytes).
fn tensors(file: &Path) -> Vec<(String, String, Vec<u64>, Vec<u8>)> {
    let data = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&data[8..8 + n]).unwrap();
    let mut out: Vec<_> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let off: Vec<usize> = serde_json::from_value(v["data_offsets"].clone()).unwrap();
            (
                k.clone(),
                v["dtype"].as_str().unwrap().to_string(),
                serde_json::from_value(v["shape"].clone()).unwrap(),
                data[8 + n + off[0]..8 + n + off[1]].to_vec(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn passthrough_of_an_hf_folder_gives_back_the_same_safetensors() {
    let d = common::scratch();
    tiny(1, GgmlType::BF16)
        .write_hf(&d.path().join("a"), 1)
        .unwrap();
    let r = write(
        d.path(),
        "r.yaml",
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 6]\n",
    );
    let log = smelt(
        d.path(),
        [
            "merge",
            r.to_str().unwrap(),
            "-o",
            "out",
            "--format",
            "safetensors",
            "--type",
            "BF16",
        ],
    )
    .unwrap();
    assert!(log.contains("wrote"), "{log}");
    let (src, dst) = (
        tensors(&d.path().join("a/model.safetensors")),
        tensors(&d.path().join("out/model.safetensors")),
    );
    // Same names, shapes and bytes: q/k rows went GGUF-ward and back. The fixture keeps its
    // norms in F32; `--type BF16` writes every tensor as BF16, as mergekit's out_dtype does.
    assert_eq!(src.len(), dst.len());
    for (s, o) in src.iter().zip(&dst) {
        assert_eq!((&s.0, &s.2), (&o.0, &o.2));
        assert_eq!(o.1, "BF16");
        if s.1 == "BF16" {
            assert_eq!(s.3, o.3, "tensor {}", s.0);
        } else {
            let bf16: Vec<u8> =
                s.3.chunks(4)
                    .flat_map(|c| {
                        f32_to_bf16_bits(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
                    })
                    .collect();
            assert_eq!(bf16, o.3, "tensor {}", s.0);
        }
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("out/config.json")).unwrap())
            .unwrap();
    let orig: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("a/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        cfg, orig,
        "config.json unchanged but for the dtype (same here)"
    );

    // At F32, every tensor comes back byte for byte.
    tiny(3, GgmlType::F32)
        .write_hf(&d.path().join("a"), 1)
        .unwrap();
    smelt(
        d.path(),
        [
            "merge",
            r.to_str().unwrap(),
            "-o",
            "out32",
            "--format",
            "safetensors",
            "--type",
            "F32",
        ],
    )
    .unwrap();
    assert_eq!(
        tensors(&d.path().join("a/model.safetensors")),
        tensors(&d.path().join("out32/model.safetensors"))
    );
    assert!(d.path().join("out/smelt-recipe.yaml").is_file());
    assert!(
        !std::fs::read_dir(d.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("smelt-tmp")),
        "no temporary folder left"
    );
}

#[test]
fn stacked_merge_from_gguf_matches_the_gguf_output_and_shards() {
    let d = common::scratch();
    tiny(1, GgmlType::F32)
        .write_gguf(&d.path().join("a.gguf"))
        .unwrap();
    tiny(2, GgmlType::F32)
        .write_gguf(&d.path().join("b.gguf"))
        .unwrap();
    let r = write(
        d.path(),
        "stack.yaml",
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a.gguf\n        layer_range: [0, 4]\n  - sources:\n      - model: b.gguf\n        layer_range: [2, 6]\n",
    );
    let rs = r.to_str().unwrap();
    smelt(d.path(), ["merge", rs, "-o", "g", "--type", "F32"]).unwrap();
    // Shards of at most 64 KiB force several files and an index.
    let log = smelt(
        d.path(),
        [
            "merge",
            rs,
            "-o",
            "hf",
            "--format",
            "safetensors",
            "--type",
            "F32",
            "--shard-size",
            "65536",
        ],
    )
    .unwrap();
    assert!(log.contains("rebuilt from GGUF metadata"), "{log}");
    let shards: Vec<_> = std::fs::read_dir(d.path().join("hf"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    assert!(d.path().join("hf/model.safetensors.index.json").is_file());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("hf/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["num_hidden_layers"], 8);
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["torch_dtype"], "float32");

    // Read back through the HF reader (names mapped, q/k permuted again): same model. The
    // tokenizer.json rebuilt from the fixture's tiny vocabulary has no known check-text hash,
    // so its pre-tokenizer is named, as a user would with --tokenizer-pre.
    let g = Store::open(d.path().join("g/stack-F32.gguf")).unwrap();
    let pre = g.metadata.get_str("tokenizer.ggml.pre").map(String::from);
    let opts = smelt::tokenizer::TokenizerOptions { pre: pre.clone() };
    let h = Store::open_with(d.path().join("hf"), &opts).unwrap();
    assert_eq!(h.metadata.get_str("tokenizer.ggml.pre"), pre.as_deref());
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
    ] {
        assert_eq!(h.metadata.get(key), g.metadata.get(key), "{key}");
    }
    assert_eq!(g.tensors.len(), h.tensors.len());
    for t in &g.tensors {
        let j = h.find(&t.name).unwrap_or_else(|| panic!("no {}", t.name));
        assert_eq!(h.tensors[j].shape, t.shape, "{}", t.name);
        assert_eq!(
            h.read_f32(j).unwrap(),
            g.read_f32(g.find(&t.name).unwrap()).unwrap(),
            "{}",
            t.name
        );
    }
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
    ] {
        assert_eq!(h.metadata.get(key), g.metadata.get(key), "{key}");
    }
}

#[test]
fn quantized_types_are_refused_before_anything_is_written() {
    let d = common::scratch();
    tiny(1, GgmlType::F32)
        .write_gguf(&d.path().join("a.gguf"))
        .unwrap();
    let r = write(
        d.path(),
        "r.yaml",
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a.gguf\n        layer_range: [0, 6]\n",
    );
    let err = smelt(
        d.path(),
        [
            "merge",
            r.to_str().unwrap(),
            "-o",
            "o",
            "--format",
            "safetensors",
            "--type",
            "Q4_K_M",
        ],
    )
    .unwrap_err();
    assert!(err.contains("F32, F16 or BF16"), "{err}");
    assert!(!d.path().join("o/model.safetensors").exists());
}

#[test]
fn an_input_folder_is_never_the_output() {
    let d = common::scratch();
    tiny(1, GgmlType::F32)
        .write_hf(&d.path().join("a"), 1)
        .unwrap();
    let before = std::fs::read(d.path().join("a/model.safetensors")).unwrap();
    let r = write(
        d.path(),
        "r.yaml",
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        layer_range: [0, 6]\n",
    );
    let args = [
        "merge",
        r.to_str().unwrap(),
        "-o",
        "a",
        "--format",
        "safetensors",
        "--type",
        "F16",
    ];
    // The folder holds weights: refused as any such folder is without --force ...
    let err = smelt(d.path(), args).unwrap_err();
    assert!(err.contains("already holds model weights"), "{err}");
    // ... and with it, because they are the input's.
    let err = smelt(d.path(), args.iter().chain(&["--force"])).unwrap_err();
    assert!(err.contains("is the input `a`"), "{err}");
    assert_eq!(
        std::fs::read(d.path().join("a/model.safetensors")).unwrap(),
        before
    );
}
