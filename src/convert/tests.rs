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
    let mut got = names(store);
    got.sort();
    let mut want = tiny_llama_order(&["0", "1"]);
    want.sort();
    assert_eq!(got, want);

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
            "general.size_label",
            "llama.block_count",
            "llama.context_length",
            "llama.embedding_length",
            "llama.feed_forward_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon",
            // transformers' LlamaConfig fills in head_dim, so the converter writes these.
            "llama.attention.key_length",
            "llama.attention.value_length",
            "llama.vocab_size",
            "llama.rope.dimension_count",
        ]
    );
    assert_eq!(md.architecture(), Some("llama"));
    // The folder's name as the converter titles it (`tiny-llama` → `Tiny Llama`).
    assert_eq!(
        md.get_str("general.name"),
        Some(crate::model_card::id_to_title(name).as_str())
    );
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

/// convert_hf_to_gguf.py's order for the tiny llama's tensors in one file: sorted by Hugging
/// Face name (`blocks` in string order).
fn tiny_llama_order(blocks: &[&str]) -> Vec<&'static str> {
    let mut order = vec!["token_embd.weight"];
    for l in blocks {
        for t in [
            "attn_norm.weight",
            "ffn_down.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            "ffn_norm.weight",
            "attn_k.weight",
            "attn_output.weight",
            "attn_q.bias",
            "attn_q.weight",
            "attn_v.weight",
        ] {
            order.push(&*Box::leak(format!("blk.{l}.{t}").into_boxed_str()));
        }
    }
    order.push("output_norm.weight");
    order
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
    assert_eq!(names(&store), tiny_llama_order(&["0", "1"]));
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
    // Shard by shard, each in name order (blk.0 lives in the second shard).
    let mut order = tiny_llama_order(&["1"]);
    order.extend(tiny_llama_order(&["0"]).into_iter().skip(1));
    order.retain(|n| *n != "output_norm.weight");
    order.insert(11, "output_norm.weight");
    assert_eq!(names(&store), order);
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
    // convert_hf_to_gguf.py's order: `lm_head.weight` sorts first.
    assert_eq!(names(&store)[0], "output.weight");
    assert_eq!(store.tensors[0].shape, [16, 10]);

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
    // 16 is not 3 heads of one size: config.json says so before any tensor is read.
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("config.json") && e.contains("`num_attention_heads` (3)"),
        "{e}"
    );
    // With a head_dim, the rows that do not split into the heads are named.
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "num_attention_heads": 3, "head_dim": 4, "num_hidden_layers": 1, "vocab_size": 10}"#,
    )
    .unwrap();
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("model.layers.0.self_attn.k_proj") && e.contains("3 heads"),
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
#[ignore = "needs SMELT_HF_CROSSCHECK, a folder made by scripts/crosscheck-safetensors.py"]
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

/// A Mixtral folder: the tiny llama's layers with the MLP replaced by 3 experts of
/// ffn 4 (experts in two shards, one expert's w2 in the other shard).
fn tiny_mixtral(dir: &Path, tweak: impl Fn(&mut Vec<(String, &'static str, Vec<u64>, Vec<u8>)>)) {
    let mut config: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
    config["architectures"] = serde_json::json!(["MixtralForCausalLM"]);
    config["num_local_experts"] = serde_json::json!(3);
    config["num_experts_per_tok"] = serde_json::json!(2);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut t = globals();
    for l in 0..2 {
        t.extend(layer(l).into_iter().filter(|(n, ..)| !n.contains(".mlp.")));
        let p = |s: &str| format!("model.layers.{l}.block_sparse_moe.{s}");
        t.push((p("gate.weight"), "BF16", vec![3, 16], bf16s(seq(0.0, 48))));
        for e in 0..3 {
            let b = 100.0 * (10 * l + e) as f32;
            t.push((
                p(&format!("experts.{e}.w1.weight")),
                "BF16",
                vec![4, 16],
                bf16s(seq(b, 64)),
            ));
            t.push((
                p(&format!("experts.{e}.w2.weight")),
                "F16",
                vec![16, 4],
                f16s(seq(b + 1.0, 64)),
            ));
            t.push((
                p(&format!("experts.{e}.w3.weight")),
                "BF16",
                vec![4, 16],
                bf16s(seq(b + 2.0, 64)),
            ));
        }
    }
    tweak(&mut t);
    let (a, b): (Vec<_>, Vec<_>) = t
        .into_iter()
        .partition(|(n, ..)| !n.contains("experts.2.w2") && !n.starts_with("model.layers.1"));
    write(&dir.join("model-00001-of-00002.safetensors"), &as_t(&a));
    write(&dir.join("model-00002-of-00002.safetensors"), &as_t(&b));
}

#[test]
fn mixtral_experts_are_stacked() {
    let dir = tempfile::tempdir().unwrap();
    tiny_mixtral(dir.path(), |_| {});
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.hparam("expert_count"), Some(3));
    assert_eq!(store.hparam("expert_used_count"), Some(2));
    let (i, t) = tensor(&store, "blk.0.ffn_down_exps.weight");
    assert_eq!((t.shape.as_slice(), t.ty), (&[4, 16, 3][..], GgmlType::F16));
    assert_eq!(t.parts.len(), 3);
    assert_ne!(
        t.parts[2].0, t.parts[0].0,
        "expert 2's w2 lives in the other shard"
    );
    assert!(store.raw(i).is_none() && store.passthrough(i).is_none());
    // Whole tensor: the experts one after the other.
    let want: Vec<f32> = (0..3)
        .flat_map(|e| seq(100.0 * e as f32 + 1.0, 64))
        .collect();
    assert_eq!(store.read_f32(i).unwrap(), want);
    // Rows across a part boundary (expert 0's last rows, expert 1's first).
    let mut rows = vec![0f32; 4 * 3];
    store.read_rows(i, 14, &mut rows).unwrap();
    assert_eq!(rows, want[14 * 4..17 * 4]);
    store.release_range(i, 14, 3);
    store.release(i);
    // Gate/up stacked the same way; the router is widened to F32 like the converter does.
    let (g, t) = tensor(&store, "blk.1.ffn_gate_exps.weight");
    assert_eq!(t.shape, [16, 4, 3]);
    let v = store.read_f32(g).unwrap();
    let b = |x: f32| bf16::from_f32(x).to_f32();
    // Expert e of layer 1 holds 1000 + 100 e + k (as bf16).
    assert_eq!(
        (v[0], v[3], v[64], v[129]),
        (b(1000.0), b(1003.0), b(1100.0), b(1201.0))
    );
    let (_, t) = tensor(&store, "blk.0.ffn_gate_inp.weight");
    assert_eq!((t.ty, t.stored), (GgmlType::F32, GgmlType::BF16));
    // convert_hf_to_gguf.py's order: a layer's stacks together where the layer's last expert
    // tensor is (layer 0's expert 2 w2 is in the second shard), w1, w2, w3.
    let n = names(&store);
    let pos = |x: &str| n.iter().position(|m| *m == x).unwrap();
    // Shard 1 ends with output_norm; shard 2 starts with layer 0's expert 2 w2.
    assert_eq!(
        pos("blk.0.ffn_gate_exps.weight"),
        pos("output_norm.weight") + 1
    );
    assert_eq!(
        pos("blk.0.ffn_down_exps.weight"),
        pos("blk.0.ffn_gate_exps.weight") + 1
    );
    assert_eq!(
        pos("blk.0.ffn_up_exps.weight"),
        pos("blk.0.ffn_gate_exps.weight") + 2
    );
    assert!(pos("blk.1.ffn_up_exps.weight") < pos("blk.1.ffn_gate_inp.weight"));
}

#[test]
fn mixtral_expert_errors_name_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // An expert of another shape.
    tiny_mixtral(dir.path(), |t| {
        let e = t
            .iter_mut()
            .find(|(n, ..)| n == "model.layers.0.block_sparse_moe.experts.1.w1.weight")
            .unwrap();
        e.2 = vec![2, 16];
        e.3.truncate(64);
    });
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("experts.1.w1.weight")
            && e.contains("blk.0.ffn_gate_exps.weight")
            && e.contains("model-00001-of-00002.safetensors"),
        "{e}"
    );
    // An expert of another dtype.
    let dir = tempfile::tempdir().unwrap();
    tiny_mixtral(dir.path(), |t| {
        let e = t
            .iter_mut()
            .find(|(n, ..)| n == "model.layers.1.block_sparse_moe.experts.1.w2.weight")
            .unwrap();
        e.1 = "BF16";
    });
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("experts.1.w2.weight") && e.contains("must match"),
        "{e}"
    );
    // A missing expert.
    let dir = tempfile::tempdir().unwrap();
    tiny_mixtral(dir.path(), |t| {
        t.retain(|(n, ..)| n != "model.layers.1.block_sparse_moe.experts.1.w3.weight")
    });
    let e = err_text(Store::open(dir.path()));
    assert!(
        e.contains("blk.1.ffn_up_exps.weight") && e.contains("expert 1 is missing"),
        "{e}"
    );
    // More experts than the config says.
    let dir = tempfile::tempdir().unwrap();
    tiny_mixtral(dir.path(), |t| {
        t.push((
            "model.layers.0.block_sparse_moe.experts.3.w1.weight".into(),
            "BF16",
            vec![4, 16],
            bf16s(seq(0.0, 64)),
        ))
    });
    let e = err_text(Store::open(dir.path()));
    assert!(e.contains("the config says 3"), "{e}");
}

#[test]
fn gemma_norms_get_plus_one_as_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "architectures": ["Gemma2ForCausalLM"], "hidden_size": 16, "intermediate_size": 24,
        "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1,
        "head_dim": 8, "vocab_size": 10
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let small = [0.25f32, -0.5, 1e-4, 3.0];
    let t: Vec<(String, &'static str, Vec<u64>, Vec<u8>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            "BF16",
            vec![10, 16],
            bf16s(seq(0.0, 160)),
        ),
        ("model.norm.weight".into(), "F16", vec![4], f16s(small)),
        (
            "model.layers.0.input_layernorm.weight".into(),
            "BF16",
            vec![4],
            bf16s(small),
        ),
        (
            "model.layers.0.post_feedforward_layernorm.weight".into(),
            "F32",
            vec![4],
            f32s(small),
        ),
        // Tied: a stray lm_head is dropped, as the converter drops it.
        (
            "lm_head.weight".into(),
            "BF16",
            vec![10, 16],
            bf16s(seq(0.0, 160)),
        ),
    ];
    write(&dir.path().join("model.safetensors"), &as_t(&t));
    let store = Store::open(dir.path()).unwrap();
    assert!(store.find("output.weight").is_none());
    // F16: the sum rounds to f16 (torch adds in the tensor's dtype); 1 + 1e-4 -> 1.0.
    let (i, t) = tensor(&store, "output_norm.weight");
    assert_eq!((t.ty, t.stored), (GgmlType::F32, GgmlType::F16));
    assert!(store.passthrough(i).is_none());
    assert_eq!(store.read_f32(i).unwrap(), [1.25, 0.5, 1.0, 4.0]);
    // BF16 is widened first, then shifted in f32.
    let (i, _) = tensor(&store, "blk.0.attn_norm.weight");
    let bf = bf16::from_f32(1e-4).to_f32();
    assert_eq!(store.read_f32(i).unwrap(), [1.25, 0.5, 1.0 + bf, 4.0]);
    // F32 passthrough is off for a shifted tensor even though the types agree.
    let (i, t) = tensor(&store, "blk.0.post_ffw_norm.weight");
    assert_eq!((t.ty, t.stored), (GgmlType::F32, GgmlType::F32));
    assert!(store.passthrough(i).is_none() && store.raw(i).is_some());
    assert_eq!(store.read_f32(i).unwrap(), [1.25, 0.5, 1.0001, 4.0]);
    // The 2-D embedding is untouched and may be copied as stored.
    let (i, _) = tensor(&store, "token_embd.weight");
    assert!(store.passthrough(i).is_some());
}

#[test]
fn gemma3_token_embd_trimmed_to_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"], "hidden_size": 16, "intermediate_size": 24,
        "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1,
        "head_dim": 8, "vocab_size": 10
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let t: Vec<(String, &'static str, Vec<u64>, Vec<u8>)> = vec![(
        "model.embed_tokens.weight".into(),
        "BF16",
        vec![10, 16],
        bf16s(seq(0.0, 160)),
    )];
    write(&dir.path().join("model.safetensors"), &as_t(&t));
    let open = || Store::open(dir.path()).unwrap();
    // No tokenizer files: all rows.
    assert_eq!(open().tensors[0].shape, [16, 10]);
    // tokenizer.json: model.vocab (6) + added_tokens (1) rows, as Gemma3Model counts them.
    // A complete tokenizer.json (the tokenizer module loads it); `pre` is named, so no
    // check-text hash is needed for this made-up vocabulary.
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 6, "content": "<x>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false,
                  "vocab": {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "f": 5}, "merges": []}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
    let named_pre = crate::tokenizer::TokenizerOptions {
        pre: Some("gpt-2".into()),
    };
    let store = Store::open_with(dir.path(), &named_pre).unwrap();
    assert_eq!(store.tensors[0].shape, [16, 7]);
    assert_eq!(store.tensors[0].n_bytes, 7 * 16 * 2);
    assert_eq!(
        store.read_f32(0).unwrap(),
        seq(0.0, 112)
            .map(|x| bf16::from_f32(x).to_f32())
            .collect::<Vec<_>>()
    );
    // With tokenizer.model the converter pads the vocabulary to vocab_size: nothing trimmed.
    // A SentencePiece ModelProto of 7 pieces: field 1 { 1: piece, 2: score, 3: type }.
    let mut proto = Vec::new();
    for (k, piece) in ["<unk>", "<s>", "</s>", "a", "b", "c", "d"]
        .iter()
        .enumerate()
    {
        let ty: u8 = match k {
            0 => 2,
            1 | 2 => 3,
            _ => 1,
        };
        let mut m = vec![0x0a, piece.len() as u8];
        m.extend_from_slice(piece.as_bytes());
        m.push(0x15);
        m.extend_from_slice(&(-(k as f32)).to_le_bytes());
        m.extend_from_slice(&[0x18, ty]);
        proto.extend_from_slice(&[0x0a, m.len() as u8]);
        proto.extend_from_slice(&m);
    }
    std::fs::write(dir.path().join("tokenizer.model"), proto).unwrap();
    assert_eq!(open().tensors[0].shape, [16, 10]);
}
