//! Hugging Face folders (single file and sharded) read as the same model llama.cpp's convert
//! script would write: canonical names, ggml shapes, q/k rows permuted, hyper-parameters.

use crate::common::{self, Smelt};
use smelt::fixture::{write_safetensors, TinyLlama};
use smelt::gguf::GgmlType;
use smelt::store::Store;
use std::path::Path;

fn assert_same_model(hf: &Store, gguf: &Store) {
    assert_eq!(hf.tensors.len(), gguf.tensors.len());
    for (i, t) in gguf.tensors.iter().enumerate() {
        let j = hf
            .find(&t.name)
            .unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!(hf.tensors[j].shape, t.shape, "{}", t.name);
        assert_eq!(hf.tensors[j].ty, t.ty, "{}", t.name);
        assert_eq!(
            hf.read_f32(j).unwrap(),
            gguf.read_f32(i).unwrap(),
            "{}",
            t.name
        );
    }
}

#[test]
fn hf_folder_single_and_sharded_equal_the_gguf_model() {
    let dir = common::scratch();
    let model = TinyLlama::default();
    model.write_gguf(&dir.path().join("m.gguf")).unwrap();
    let gguf = Store::open(dir.path().join("m.gguf")).unwrap();
    for shards in [1, 3] {
        let hf_dir = dir.path().join(format!("hf{shards}"));
        model.write_hf(&hf_dir, shards).unwrap();
        let hf = Store::open(&hf_dir).unwrap();
        assert_eq!(hf.files.len(), shards);
        assert_same_model(&hf, &gguf);
        // The hyper-parameters match what the convert script (and our GGUF fixture) writes.
        for key in [
            "general.architecture",
            "llama.block_count",
            "llama.context_length",
            "llama.embedding_length",
            "llama.feed_forward_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon",
            "llama.vocab_size",
            "llama.rope.dimension_count",
        ] {
            assert_eq!(hf.metadata.get(key), gguf.metadata.get(key), "{key}");
        }
        // The index file and a shard path open the same model.
        if shards > 1 {
            let via_index = Store::open(hf_dir.join("model.safetensors.index.json")).unwrap();
            assert_same_model(&via_index, &gguf);
        }
    }
}

#[test]
fn hf_folder_quantizes_like_the_gguf_model() {
    let dir = common::scratch();
    let model = TinyLlama {
        dtype: GgmlType::BF16,
        ..Default::default()
    };
    model.write_hf(&dir.path().join("hf"), 1).unwrap();
    model.write_gguf(&dir.path().join("m.gguf")).unwrap();
    let run = |input: &Path, out: &Path| {
        Smelt::new(dir.path())
            .arg("quantize")
            .arg(input)
            .arg("-o")
            .arg(out)
            .args(["--type", "Q8_0"])
            .run()
            .ok();
    };
    run(&dir.path().join("hf"), &dir.path().join("a.gguf"));
    run(&dir.path().join("m.gguf"), &dir.path().join("b.gguf"));
    let a = Store::open(dir.path().join("a.gguf")).unwrap();
    let b = Store::open(dir.path().join("b.gguf")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (i, t) in a.tensors.iter().enumerate() {
        assert_eq!(t.name, b.tensors[i].name);
        assert_eq!(a.raw(i).unwrap(), b.raw(i).unwrap(), "{}", t.name);
    }
}

fn expect_err(path: &Path, needles: &[&str]) {
    let err = match Store::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(err.contains(n), "`{err}` lacks `{n}`");
    }
}

#[test]
fn bad_safetensors_inputs_name_file_and_tensor() {
    let dir = common::scratch();
    let d = dir.path();
    let t = |name: &str, ty, shape: Vec<usize>, n| (name.to_string(), ty, shape, vec![0u8; n]);
    write_safetensors(
        &d.join("ok.safetensors"),
        &[t("w", GgmlType::F16, vec![2, 4], 16)],
    )
    .unwrap();
    let ok = std::fs::read(d.join("ok.safetensors")).unwrap();

    std::fs::write(d.join("trunc.safetensors"), &ok[..ok.len() - 4]).unwrap();
    expect_err(
        &d.join("trunc.safetensors"),
        &["trunc.safetensors", "`w`", "truncated"],
    );

    std::fs::write(
        d.join("hdr.safetensors"),
        [&1000u64.to_le_bytes()[..], b"{}"].concat(),
    )
    .unwrap();
    expect_err(
        &d.join("hdr.safetensors"),
        &["hdr.safetensors", "header length 1000"],
    );

    std::fs::write(d.join("tiny.safetensors"), b"abc").unwrap();
    expect_err(
        &d.join("tiny.safetensors"),
        &["tiny.safetensors", "truncated"],
    );

    // Shape says 2x4 F16 (16 bytes) but the offsets hold 12.
    let mut bad = ok.clone();
    let text = String::from_utf8_lossy(&bad[8..]).into_owned();
    let pos = text.find("[0,16]").unwrap() + 8;
    bad[pos..pos + 6].copy_from_slice(b"[0,12]");
    std::fs::write(d.join("shape.safetensors"), &bad).unwrap();
    expect_err(
        &d.join("shape.safetensors"),
        &["shape.safetensors", "`w`", "needs 16 bytes"],
    );

    let header = br#"{"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend_from_slice(&[0u8; 16]);
    std::fs::write(d.join("i64.safetensors"), &f).unwrap();
    expect_err(
        &d.join("i64.safetensors"),
        &["i64.safetensors", "unsupported dtype I64 in tensor `w`"],
    );

    let hf = d.join("hf");
    TinyLlama::default().write_hf(&hf, 2).unwrap();
    std::fs::remove_file(hf.join("model-00002-of-00002.safetensors")).unwrap();
    expect_err(&hf, &["model-00002-of-00002.safetensors", "missing shard"]);

    let hf = d.join("hf-arch");
    TinyLlama::default().write_hf(&hf, 1).unwrap();
    let cfg = std::fs::read_to_string(hf.join("config.json"))
        .unwrap()
        .replace("LlamaForCausalLM", "GPTBigCodeForCausalLM");
    std::fs::write(hf.join("config.json"), cfg).unwrap();
    expect_err(
        &hf,
        &[
            "config.json",
            "unsupported architecture `GPTBigCodeForCausalLM`",
            "LlamaForCausalLM",
        ],
    );
}

#[test]
fn bare_file_keeps_its_names() {
    let dir = common::scratch();
    let p = dir.path().join("x.safetensors");
    let vals: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_safetensors(&p, &[("a.weight".into(), GgmlType::F32, vec![2, 3], vals)]).unwrap();
    let s = Store::open(&p).unwrap();
    assert_eq!(s.tensors[0].name, "a.weight");
    assert_eq!(s.tensors[0].shape, [3, 2]);
    assert_eq!(s.read_f32(0).unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(s.metadata.get("general.architecture").is_none());
}
