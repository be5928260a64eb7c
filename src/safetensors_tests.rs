//! Tests of safetensors / Hugging Face input: tiny files written by hand into a tempdir.

use crate::error::Error;
use crate::gguf::{GgmlType, Value};
use crate::store::{RowOrder, Store};
use half::{bf16, f16};
use std::path::Path;

/// One tensor to write: name, dtype, torch shape, raw little-endian bytes.
type T<'a> = (&'a str, &'a str, Vec<u64>, Vec<u8>);

/// A safetensors file holding `tensors` in the given order.
fn st_bytes(tensors: &[T]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    let mut entries = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        entries.push(format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":{},\"data_offsets\":[{start},{}]}}",
            serde_json::to_string(name).unwrap(),
            serde_json::to_string(shape).unwrap(),
            data.len()
        ));
    }
    let mut json = format!(
        "{{\"__metadata__\":{},{}}}",
        header["__metadata__"],
        entries.join(",")
    );
    while (8 + json.len()) % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(&data);
    out
}

fn f32s(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f16s(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter()
        .flat_map(|x| f16::from_f32(x).to_le_bytes())
        .collect()
}
fn bf16s(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter()
        .flat_map(|x| bf16::from_f32(x).to_le_bytes())
        .collect()
}
/// `n` values `base, base + 1, …`.
fn seq(base: f32, n: usize) -> impl Iterator<Item = f32> {
    (0..n).map(move |i| base + i as f32)
}

fn write(path: &Path, tensors: &[T]) {
    std::fs::write(path, st_bytes(tensors)).unwrap();
}

fn names(store: &Store) -> Vec<&str> {
    store.tensors.iter().map(|t| t.name.as_str()).collect()
}

fn tensor<'a>(store: &'a Store, name: &str) -> (usize, &'a crate::store::StoreTensor) {
    let i = store.find(name).unwrap_or_else(|| panic!("no {name}"));
    (i, &store.tensors[i])
}

fn err_text(r: crate::Result<Store>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

// Tiny llama: hidden 16, 2 heads of 8, 1 kv head, ffn 24, vocab 10, 2 layers.
const CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 2,
  "num_key_value_heads": 1, "num_hidden_layers": 2, "max_position_embeddings": 128,
  "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": 10,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16"
}"#;

/// The HF tensors of one layer of the tiny llama (q F32 with bias, k BF16, rest F16/F32).
fn layer(n: usize) -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
    let p = |s: &str| format!("model.layers.{n}.{s}");
    let b = 1000.0 * n as f32;
    vec![
        (
            p("input_layernorm.weight"),
            "F32",
            vec![16],
            f32s(seq(b, 16)),
        ),
        (
            p("self_attn.q_proj.weight"),
            "F32",
            vec![16, 16],
            f32s(seq(b, 256)),
        ),
        (
            p("self_attn.q_proj.bias"),
            "F32",
            vec![16],
            f32s(seq(b + 500.0, 16)),
        ),
        (
            p("self_attn.k_proj.weight"),
            "BF16",
            vec![8, 16],
            bf16s(seq(0.0, 128)),
        ),
        (
            p("self_attn.v_proj.weight"),
            "F16",
            vec![8, 16],
            f16s(seq(b, 128)),
        ),
        (
            p("self_attn.o_proj.weight"),
            "F16",
            vec![16, 16],
            f16s(seq(b, 256)),
        ),
        (
            p("self_attn.rotary_emb.inv_freq"),
            "I64",
            vec![4],
            vec![0; 32],
        ),
        (
            p("post_attention_layernorm.weight"),
            "F32",
            vec![16],
            f32s(seq(b, 16)),
        ),
        (
            p("mlp.gate_proj.weight"),
            "F16",
            vec![24, 16],
            f16s(seq(b, 384)),
        ),
        (
            p("mlp.up_proj.weight"),
            "F16",
            vec![24, 16],
            f16s(seq(b, 384)),
        ),
        (
            p("mlp.down_proj.weight"),
            "F16",
            vec![16, 24],
            f16s(seq(b, 384)),
        ),
    ]
}

fn globals() -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
    vec![
        (
            "model.embed_tokens.weight".into(),
            "F16",
            vec![10, 16],
            f16s(seq(0.0, 160)),
        ),
        (
            "model.norm.weight".into(),
            "F32",
            vec![16],
            f32s(seq(7.0, 16)),
        ),
    ]
}

fn as_t<'a>(v: &'a [(String, &'static str, Vec<u64>, Vec<u8>)]) -> Vec<T<'a>> {
    v.iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect()
}

/// Presented values of a `[rows, 16]` tensor stored as `base + stored_row * 16 + col`,
/// presented rows taken from the stored rows in `perm`.
fn permuted(base: f32, perm: &[usize], row_len: usize) -> Vec<f32> {
    perm.iter()
        .flat_map(|&r| (0..row_len).map(move |c| base + (r * row_len + c) as f32))
        .collect()
}

// numpy: w.reshape(n_head, 2, rows // n_head // 2, -1).swapaxes(1, 2).reshape(w.shape)
const Q_PERM: [usize; 16] = [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]; // n_head 2
const K_PERM: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7]; // n_head_kv 1

fn check_tiny_llama(store: &Store, name: &str) {
    let order = [
        "token_embd.weight",
        "blk.0.attn_norm.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_q.bias",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
        "blk.0.attn_output.weight",
        "blk.0.ffn_norm.weight",
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_up.weight",
        "blk.0.ffn_down.weight",
        "blk.1.attn_norm.weight",
        "blk.1.attn_q.weight",
        "blk.1.attn_q.bias",
        "blk.1.attn_k.weight",
        "blk.1.attn_v.weight",
        "blk.1.attn_output.weight",
        "blk.1.ffn_norm.weight",
        "blk.1.ffn_gate.weight",
        "blk.1.ffn_up.weight",
        "blk.1.ffn_down.weight",
        "output_norm.weight",
    ];
    assert_eq!(names(store), order);

    // Shapes (ggml order) and types.
    let (_, t) = tensor(store, "token_embd.weight");
    assert_eq!((t.shape.as_slice(), t.ty), (&[16, 10][..], GgmlType::F16));
    let (_, t) = tensor(store, "blk.0.ffn_down.weight");
    assert_eq!((t.shape.as_slice(), t.ty), (&[24, 16][..], GgmlType::F16));
    let (_, t) = tensor(store, "blk.0.attn_k.weight");
    assert_eq!((t.shape.as_slice(), t.ty), (&[16, 8][..], GgmlType::BF16));
    assert_eq!(t.rows, RowOrder::HeadPermute { n_head: 1 });
    let (_, t) = tensor(store, "blk.1.attn_q.weight");
    assert_eq!((t.shape.as_slice(), t.ty), (&[16, 16][..], GgmlType::F32));
    assert_eq!(t.rows, RowOrder::HeadPermute { n_head: 2 });
    let (_, t) = tensor(store, "output_norm.weight");
    assert_eq!((t.shape.as_slice(), t.ty), (&[16][..], GgmlType::F32));

    // Values: plain, permuted rows (q, k), permuted elements (q bias).
    let read = |n: &str| store.read_f32(tensor(store, n).0).unwrap();
    assert_eq!(read("token_embd.weight"), seq(0.0, 160).collect::<Vec<_>>());
    assert_eq!(read("output_norm.weight"), seq(7.0, 16).collect::<Vec<_>>());
    assert_eq!(
        read("blk.1.ffn_down.weight"),
        seq(1000.0, 384).collect::<Vec<_>>()
    );
    assert_eq!(read("blk.1.attn_q.weight"), permuted(1000.0, &Q_PERM, 16));
    assert_eq!(read("blk.0.attn_k.weight"), permuted(0.0, &K_PERM, 16));
    assert_eq!(read("blk.1.attn_q.bias"), permuted(1500.0, &Q_PERM, 1));
    let mut rows = vec![0f32; 32];
    let (qi, _) = tensor(store, "blk.0.attn_q.weight");
    store.read_rows(qi, 2, &mut rows).unwrap();
    assert_eq!(rows, permuted(0.0, &Q_PERM[2..4], 16));

    // Metadata: keys in convert_hf_to_gguf.py's order, values and types.
    let md = &store.metadata;
    let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "general.architecture",
            "general.type",
            "general.name",
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
        ]
    );
    assert_eq!(md.architecture(), Some("llama"));
    assert_eq!(md.get_str("general.name"), Some(name));
    for (k, v) in [
        ("llama.block_count", 2),
        ("llama.context_length", 128),
        ("llama.embedding_length", 16),
        ("llama.feed_forward_length", 24),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 1),
        ("llama.vocab_size", 10),
        ("llama.rope.dimension_count", 8),
    ] {
        assert_eq!(md.get(k), Some(&Value::U32(v)), "{k}");
    }
    assert_eq!(md.get("llama.rope.freq_base"), Some(&Value::F32(500000.0)));
    assert_eq!(
        md.get("llama.attention.layer_norm_rms_epsilon"),
        Some(&Value::F32(1e-5))
    );
    assert_eq!(store.hparam("block_count"), Some(2));
}

fn tiny_llama_tensors() -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
    let mut all = globals();
    all.extend(layer(1)); // out of order on purpose: the store sorts by block
    all.extend(layer(0));
    all
}

#[test]
fn hf_folder_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("Tiny-Llama");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), CONFIG).unwrap();
    // A tokenizer_config.json alone adds no tokenizer metadata (no tokenizer.json/.model).
    std::fs::write(model.join("tokenizer_config.json"), "{}").unwrap();
    write(
        &model.join("model.safetensors"),
        &as_t(&tiny_llama_tensors()),
    );
    let store = Store::open(&model).unwrap();
    check_tiny_llama(&store, "Tiny-Llama");
    // The file itself, with config.json beside it, gives the same store.
    let store = Store::open(model.join("model.safetensors")).unwrap();
    check_tiny_llama(&store, "Tiny-Llama");
    // Tensors point into the map (zero-copy), past the 8-byte length and the header.
    let (_, t) = tensor(&store, "blk.0.attn_norm.weight");
    assert_eq!(t.file, 0);
    let header_len = u64::from_le_bytes(store.files[0].map[..8].try_into().unwrap());
    assert!(t.offset >= 8 + header_len);
}

#[test]
fn hf_folder_sharded_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("sharded");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), CONFIG).unwrap();
    let mut a = globals();
    a.extend(layer(1));
    let b = layer(0);
    let mut weight_map = serde_json::Map::new();
    for (n, ..) in &a {
        weight_map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, ..) in &b {
        weight_map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 1}, "weight_map": weight_map});
    let index_path = model.join(super::INDEX_NAME);
    std::fs::write(&index_path, index.to_string()).unwrap();
    write(&model.join("model-00001-of-00002.safetensors"), &as_t(&a));
    write(&model.join("model-00002-of-00002.safetensors"), &as_t(&b));
    // A stray consolidated file is ignored when an index exists.
    std::fs::write(model.join("consolidated.safetensors"), b"junk").unwrap();

    let store = Store::open(&model).unwrap();
    check_tiny_llama(&store, "sharded");
    assert_eq!(store.files.len(), 3); // two shards + the generated q biases
    let store = Store::open(&index_path).unwrap();
    check_tiny_llama(&store, "sharded");

    // Missing shard: named, with a tensor it should hold.
    std::fs::remove_file(model.join("model-00002-of-00002.safetensors")).unwrap();
    let e = err_text(Store::open(&model));
    assert!(
        e.contains("missing shard `model-00002-of-00002.safetensors`"),
        "{e}"
    );
    assert!(e.contains("model.layers.0."), "{e}");

    // The index places a tensor in a shard that lacks it.
    let mut b2 = layer(0);
    b2.retain(|(n, ..)| !n.ends_with("mlp.up_proj.weight"));
    write(&model.join("model-00002-of-00002.safetensors"), &as_t(&b2));
    let e = err_text(Store::open(&model));
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    assert!(e.contains("model.layers.0.mlp.up_proj.weight"), "{e}");
}

#[test]
fn tensor_in_two_shards_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), CONFIG).unwrap();
    let g = globals();
    write(&dir.path().join("a.safetensors"), &as_t(&g));
    write(&dir.path().join("b.safetensors"), &as_t(&g[..1]));
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("model.embed_tokens.weight") && e.contains("a.safetensors"),
        "{e}"
    );
}

#[test]
fn bare_file_llama_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.safetensors");
    write(&path, &as_t(&tiny_llama_tensors()));
    let store = Store::open(&path).unwrap();
    let keys: Vec<&str> = store.metadata.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["general.architecture"]);
    assert_eq!(store.metadata.architecture(), Some("llama"));
    assert_eq!(store.tensors.len(), 22);
    // Without config.json the head counts are unknown: rows stay in stored order.
    let (qi, t) = tensor(&store, "blk.0.attn_q.weight");
    assert_eq!(t.rows, RowOrder::AsStored);
    assert_eq!(
        store.read_f32(qi).unwrap(),
        seq(0.0, 256).collect::<Vec<_>>()
    );
    let (bi, _) = tensor(&store, "blk.1.attn_q.bias");
    assert_eq!(
        store.read_f32(bi).unwrap(),
        seq(1500.0, 16).collect::<Vec<_>>()
    );
}

#[test]
fn bare_file_other_names_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    write(
        &path,
        &[
            ("encoder.w", "F32", vec![2, 3], f32s(seq(0.0, 6))),
            ("scalar", "F32", vec![], f32s([4.5])),
            ("model.norm.weight", "BF16", vec![4], bf16s(seq(1.0, 4))),
        ],
    );
    let store = Store::open(&path).unwrap();
    assert!(store.metadata.is_empty());
    assert_eq!(names(&store), ["encoder.w", "scalar", "model.norm.weight"]);
    assert_eq!(store.tensors[0].shape, [3, 2]);
    assert_eq!(store.tensors[1].shape, [1]);
    assert_eq!(store.read_f32(0).unwrap(), seq(0.0, 6).collect::<Vec<_>>());
    assert_eq!(store.read_f32(1).unwrap(), [4.5]);
    assert_eq!(store.read_f32(2).unwrap(), [1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn llama3_rope_freqs_and_mistral() {
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
    config["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    config["rope_scaling"] = serde_json::json!({
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    write(
        &dir.path().join("model.safetensors"),
        &as_t(&tiny_llama_tensors()),
    );
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.tensors[0].name, "rope_freqs.weight");
    assert_eq!(store.tensors[0].shape, [4]);
    // numpy float32 replica of LlamaModel.generate_extra_tensors for head_dim 8, theta 5e5.
    let expect = [1.0f32, 1.0, 2.694_53, 8.0];
    for (g, e) in store.read_f32(0).unwrap().iter().zip(expect) {
        assert!((g - e).abs() <= 1e-6 * e, "{g} vs {e}");
    }
    assert_eq!(store.metadata.architecture(), Some("llama"));
    // llama3 scaling writes no rope.scaling keys.
    assert!(!store.metadata.iter().any(|(k, _)| k.contains("scaling")));
    assert_eq!(store.tensors.len(), 23);
}

#[test]
fn untied_output_and_unknown_tensor() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), CONFIG).unwrap();
    let mut t = tiny_llama_tensors();
    t.push((
        "lm_head.weight".into(),
        "F32",
        vec![10, 16],
        f32s(seq(0.0, 160)),
    ));
    write(&dir.path().join("model.safetensors"), &as_t(&t));
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(*names(&store).last().unwrap(), "output.weight");
    assert_eq!(store.tensors.last().unwrap().shape, [16, 10]);

    t.push((
        "model.extra.weight".into(),
        "F32",
        vec![2],
        f32s(seq(0.0, 2)),
    ));
    write(&dir.path().join("model.safetensors"), &as_t(&t));
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("model.extra.weight") && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn config_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("model.safetensors"), &as_t(&globals()));
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("GPT2LMHeadModel") && e.contains("LlamaForCausalLM"),
        "{e}"
    );
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "num_attention_heads": 3, "num_hidden_layers": 1, "vocab_size": 10}"#,
    )
    .unwrap();
    let mut t = globals();
    t.extend(layer(0));
    write(&dir.path().join("model.safetensors"), &as_t(&t));
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("model.layers.0.self_attn.q_proj") && e.contains("3 heads"),
        "{e}"
    );
}

#[test]
fn empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), CONFIG).unwrap();
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("no .safetensors") || e.contains("no model.safetensors"),
        "{e}"
    );
}

/// Open `bytes` written as `bad.safetensors`; the error text.
fn open_bad(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let e = Store::open(&path);
    assert!(
        matches!(e, Err(Error::Format { .. })),
        "expected a format error"
    );
    let e = err_text(e);
    assert!(e.contains("bad.safetensors"), "{e}");
    e
}

#[test]
fn bad_inputs() {
    let good = st_bytes(&[
        ("a", "F32", vec![2, 2], f32s(seq(0.0, 4))),
        ("b", "F16", vec![3], f16s(seq(0.0, 3))),
    ]);
    // Truncated data.
    let e = open_bad(&good[..good.len() - 3]);
    assert!(
        e.contains("`b`") && e.contains("outside the data section"),
        "{e}"
    );
    // Shorter than the length field.
    for n in [0, 5] {
        let e = open_bad(&good[..n]);
        assert!(e.contains("truncated"), "{e}");
    }
    // Header length past EOF.
    let mut long = good.clone();
    long[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    let e = open_bad(&long);
    assert!(e.contains("header length 1000000 runs past the end"), "{e}");
    // Bad JSON.
    let mut j = 7u64.to_le_bytes().to_vec();
    j.extend_from_slice(b"{\"a\":[}");
    let e = open_bad(&j);
    assert!(e.contains("bad safetensors JSON header"), "{e}");
    let mut j = 2u64.to_le_bytes().to_vec();
    j.extend_from_slice(b"[]");
    assert!(open_bad(&j).contains("JSON"));
    // Shape/dtype mismatch: F32 [2, 3] in 16 bytes.
    let e = open_bad(&st_bytes(&[("w", "F32", vec![2, 3], f32s(seq(0.0, 4)))]));
    assert!(
        e.contains("`w`") && e.contains("needs 24 bytes") && e.contains("hold 16"),
        "{e}"
    );
    // Unsupported dtype.
    let e = open_bad(&st_bytes(&[("ids", "I64", vec![2], vec![0; 16])]));
    assert!(e.contains("unsupported dtype I64 in tensor `ids`"), "{e}");
    let e = open_bad(&st_bytes(&[("f8", "F8_E4M3", vec![2], vec![0; 2])]));
    assert!(
        e.contains("unsupported dtype F8_E4M3 in tensor `f8`"),
        "{e}"
    );
    // Duplicate names.
    let json = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut d = (json.len() as u64).to_le_bytes().to_vec();
    d.extend_from_slice(json.as_bytes());
    d.extend_from_slice(&[0; 8]);
    let e = open_bad(&d);
    assert!(e.contains("`a` appears twice"), "{e}");
    // Overlap.
    let json = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut d = (json.len() as u64).to_le_bytes().to_vec();
    d.extend_from_slice(json.as_bytes());
    d.extend_from_slice(&[0; 8]);
    let e = open_bad(&d);
    assert!(e.contains("`a` and `b` overlap"), "{e}");
    // Offsets reversed, missing fields, too many dims, absurd shapes: errors, no panics.
    for entry in [
        r#"{"dtype":"F32","shape":[1],"data_offsets":[4,0]}"#,
        r#"{"dtype":"F32","shape":[1]}"#,
        r#"{"shape":[1],"data_offsets":[0,4]}"#,
        r#"{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}"#,
        r#"{"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4]}"#,
        r#"{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}"#,
        r#"{"dtype":"WHAT","shape":[1],"data_offsets":[0,4]}"#,
        r#"7"#,
    ] {
        let json = format!(r#"{{"t":{entry}}}"#);
        let mut d = (json.len() as u64).to_le_bytes().to_vec();
        d.extend_from_slice(json.as_bytes());
        d.extend_from_slice(&[0; 8]);
        let e = open_bad(&d);
        assert!(e.contains("`t`"), "{entry}: {e}");
    }
}

/// Compares with `scripts/crosscheck-safetensors.py` (gguf-py's names, llama.cpp's own
/// `LlamaModel.permute`): run the script into DIR, then
/// `SMELT_HF_CROSSCHECK=DIR cargo test --lib python_crosscheck -- --ignored`.
#[test]
#[ignore]
fn python_crosscheck() {
    let dir = std::env::var("SMELT_HF_CROSSCHECK").expect("set SMELT_HF_CROSSCHECK");
    let dir = Path::new(&dir);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let store = Store::open(dir).unwrap();
    let expected = expected["tensors"].as_array().unwrap();
    assert_eq!(store.tensors.len(), expected.len());
    for e in expected {
        let name = e["name"].as_str().unwrap();
        let (i, t) = tensor(&store, name);
        let shape: Vec<u64> = serde_json::from_value(e["shape"].clone()).unwrap();
        assert_eq!(t.shape, shape, "{name}");
        let values: Vec<f32> = e["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(store.read_f32(i).unwrap(), values, "{name}");
    }
}
