//! Unit tests on small in-test folders; the comparisons with llama.cpp's script, real
//! tokenizers and llama-tokenize are in tests/python/test_tokenizer.py.

use super::spm::{parse_model, Piece};
use super::*;
use crate::gguf::ValueType;
use serde_json::json;

fn folder(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

fn js(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec_pretty(&v).unwrap()
}

fn keys(md: &Metadata) -> Vec<&str> {
    md.iter().map(|(k, _)| k).collect()
}

fn strs(md: &Metadata, key: &str) -> Vec<String> {
    md.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no {key}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn i32s(md: &Metadata, key: &str) -> Vec<i32> {
    match md.get(key) {
        Some(v @ Value::Numbers(ValueType::I32, _)) => v
            .items()
            .unwrap()
            .iter()
            .map(|x| match x {
                Value::I32(i) => *i,
                _ => unreachable!(),
            })
            .collect(),
        other => panic!("{key}: {other:?}"),
    }
}

fn u32_of(md: &Metadata, key: &str) -> u32 {
    match md.get(key) {
        Some(Value::U32(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

fn bool_of(md: &Metadata, key: &str) -> bool {
    match md.get(key) {
        Some(Value::Bool(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

fn err_text(r: Result<Metadata>) -> String {
    r.expect_err("expected an error").to_string()
}

// ------------------------------------------------------------------ pre-tokenizer hash

#[test]
fn check_text_is_the_scripts() {
    // sha256 of the script's chktxt as UTF-8, computed with Python from conversion/base.py.
    use sha2::{Digest, Sha256};
    let h: String = Sha256::digest(CHECK_TEXT.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        h,
        "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
    );
    assert_eq!(CHECK_TEXT.chars().count(), 350);
}

#[test]
fn ids_hash_is_sha256_of_python_list_repr() {
    // Python: hashlib.sha256(str([1, 22, 333]).encode()).hexdigest()
    assert_eq!(
        pre::ids_hash(&[1, 22, 333]),
        "276d8737d9d5a80805e0731e8d5ae18972a8e3ba721f4988f67151c6e9159068"
    );
    // Python: hashlib.sha256(b"[]").hexdigest()
    assert_eq!(
        pre::ids_hash(&[]),
        "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
    );
    assert_eq!(
        pre_name("855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"),
        Some("smollm")
    );
    assert_eq!(
        pre_name("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"),
        Some("llama-bpe")
    );
    assert_eq!(pre_name("00"), None);
}

// ------------------------------------------------------------------ SentencePiece protobuf

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field_bytes(field: u64, body: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A `ModelProto` with these pieces (type omitted when NORMAL, as protobuf does for the
/// default) and a trainer_spec-like field 2 to skip.
fn spm_model(pieces: &[(&str, f32, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (text, score, kind) in pieces {
        let mut p = Vec::new();
        field_bytes(1, text.as_bytes(), &mut p);
        varint(2 << 3 | 5, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        if *kind != 1 {
            varint(3 << 3, &mut p);
            varint(*kind, &mut p);
        }
        field_bytes(1, &p, &mut out);
    }
    let mut trainer = Vec::new();
    varint(3 << 3, &mut trainer); // a varint field inside
    varint(300, &mut trainer);
    field_bytes(2, &trainer, &mut out);
    varint(5 << 3 | 5, &mut out); // a fixed32 field at the top level
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

const PIECES: &[(&str, f32, u64)] = &[
    ("<unk>", 0.0, 2),
    ("<s>", 0.0, 3),
    ("</s>", 0.0, 3),
    ("<0x0A>", 0.0, 6),
    ("▁t", -1.5, 1),
    ("he", -2.25, 1),
    ("<custom>", 0.0, 4),
    ("unused", 0.0, 5),
];

#[test]
fn protobuf_pieces_parse() {
    let pieces = parse_model(&spm_model(PIECES)).unwrap();
    assert_eq!(pieces.len(), PIECES.len());
    assert_eq!(
        pieces[4],
        Piece {
            piece: "▁t".into(),
            score: -1.5,
            kind: 1
        }
    );
    assert_eq!(pieces[3].kind, 6);
    assert_eq!(pieces[5].score, -2.25);
}

#[test]
fn truncated_protobuf_is_an_error_at_every_cut() {
    let bytes = spm_model(PIECES);
    // Every proper prefix either ends between top-level fields (fewer pieces, still a model)
    // or fails cleanly; none panics.
    let mut failures = 0;
    for cut in 1..bytes.len() {
        match parse_model(&bytes[..cut]) {
            Ok(p) => assert!(p.len() <= PIECES.len()),
            Err(m) => {
                assert!(
                    m.contains("truncated") || m.contains("no SentencePiece pieces"),
                    "{m}"
                );
                failures += 1;
            }
        }
    }
    assert!(failures > bytes.len() / 2);
    let e = parse_model(&bytes[..bytes.len() - 60]).unwrap_err();
    assert!(e.contains("truncated protobuf"), "{e}");
}

#[test]
fn garbage_protobuf_is_an_error() {
    // Wire type 3 (start group) is not used by sentencepiece.
    assert!(parse_model(&[0x0b, 0x00])
        .unwrap_err()
        .contains("wire type 3"));
    assert!(parse_model(b"")
        .unwrap_err()
        .contains("no SentencePiece pieces"));
    let mut bad_utf8 = Vec::new();
    let mut p = Vec::new();
    field_bytes(1, &[0xff, 0xfe], &mut p);
    field_bytes(1, &p, &mut bad_utf8);
    assert!(parse_model(&bad_utf8).unwrap_err().contains("UTF-8"));
    // A length that runs past the end.
    assert!(parse_model(&[0x0a, 0x7f, 0x01])
        .unwrap_err()
        .contains("truncated"));
    // A varint that never ends.
    let endless: Vec<u8> = [0x0a].into_iter().chain([0xff; 12]).collect();
    assert!(parse_model(&endless).is_err());
}

#[test]
fn sentencepiece_folder_metadata() {
    let dir = folder(&[
        ("tokenizer.model", spm_model(PIECES)),
        (
            "config.json",
            js(json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 11, "pad_token_id": 0})),
        ),
        ("added_tokens.json", js(json!({"<extra>": 8, "<far>": 40}))),
        (
            "tokenizer_config.json",
            js(json!({
                "add_bos_token": true,
                "add_eos_token": false,
                "add_prefix_space": true,
                "bos_token": "<s>",
                "eos_token": {"content": "</s>", "__type": "AddedToken"},
                "unk_token": "<unk>",
                "chat_template": "{{ messages }}",
                "added_tokens_decoder": {
                    "1": {"content": "<s>", "special": true},
                    "9": {"content": "▁user▁def", "special": false},
                    "10": {"content": "<|im_end|>", "special": false},
                    "99": {"content": "<skipped>", "special": true}
                }
            })),
        ),
    ]);
    let md = metadata(dir.path(), &TokenizerOptions::default()).unwrap();
    assert_eq!(
        keys(&md),
        [
            "tokenizer.ggml.add_space_prefix",
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token",
            "tokenizer.chat_template",
        ]
    );
    assert_eq!(md.get_str("tokenizer.ggml.model"), Some("llama"));
    assert_eq!(md.get_str("tokenizer.ggml.pre"), Some("default"));
    assert_eq!(
        strs(&md, "tokenizer.ggml.tokens"),
        [
            "<unk>",
            "<s>",
            "</s>",
            "<0x0A>",
            "▁t",
            "he",
            "<custom>",
            "unused",
            "<extra>",
            " user def",
            "<|im_end|>"
        ]
    );
    // unk, control, control, byte, normal, normal, user-defined piece -> NORMAL, unused,
    // added_tokens.json -> USER_DEFINED, non-special added -> USER_DEFINED, looks special.
    assert_eq!(
        i32s(&md, "tokenizer.ggml.token_type"),
        [2, 3, 3, 6, 1, 1, 1, 5, 4, 4, 3]
    );
    match md.get("tokenizer.ggml.scores") {
        Some(v @ Value::Numbers(ValueType::F32, _)) => assert_eq!(
            *v.items().unwrap(),
            [0.0, -1000.0, 0.0, 0.0, -1.5, -2.25, 0.0, 0.0, -1000.0, -1000.0, -1000.0]
                .map(Value::F32)
        ),
        other => panic!("{other:?}"),
    }
    // tokenizer.json is absent, so the `*_token` strings give no ids: only config.json's.
    assert_eq!(u32_of(&md, "tokenizer.ggml.padding_token_id"), 0);
    assert!(bool_of(&md, "tokenizer.ggml.add_bos_token"));
    assert!(!bool_of(&md, "tokenizer.ggml.add_eos_token"));
    assert!(bool_of(&md, "tokenizer.ggml.add_space_prefix"));
}

#[test]
fn sentencepiece_pads_to_config_vocab_size() {
    let dir = folder(&[
        ("tokenizer.model", spm_model(&PIECES[..3])),
        (
            "config.json",
            js(json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 5})),
        ),
    ]);
    let md = metadata(dir.path(), &TokenizerOptions::default()).unwrap();
    assert_eq!(
        strs(&md, "tokenizer.ggml.tokens"),
        ["<unk>", "<s>", "</s>", "[PAD3]", "[PAD4]"]
    );
    assert_eq!(i32s(&md, "tokenizer.ggml.token_type"), [2, 3, 3, 5, 5]);
}

#[test]
fn truncated_tokenizer_model_names_the_file() {
    let mut bytes = spm_model(PIECES);
    bytes.truncate(bytes.len() - 40);
    let dir = folder(&[("tokenizer.model", bytes)]);
    let e = err_text(metadata(dir.path(), &TokenizerOptions::default()));
    assert!(e.contains("tokenizer.model"), "{e}");
    assert!(e.contains("truncated protobuf"), "{e}");
}

// ------------------------------------------------------------------ byte-level BPE

fn bpe_tokenizer(merges: serde_json::Value) -> serde_json::Value {
    let added = |id: u32, content: &str, normalized: bool, special: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": normalized, "special": special})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            added(0, "<s>", false, true),
            added(7, "<tool>", true, false),
            added(8, "<|eot|>", false, false),
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4, "Ġab": 5, "c d": 6},
            "merges": merges
        }
    })
}

fn bpe_folder(merges: serde_json::Value, config_vocab: u64) -> tempfile::TempDir {
    folder(&[
        ("tokenizer.json", js(bpe_tokenizer(merges))),
        (
            "config.json",
            js(
                json!({"architectures": ["LlamaForCausalLM"], "vocab_size": config_vocab,
                      "bos_token_id": 0, "eos_token_id": 8}),
            ),
        ),
        (
            "tokenizer_config.json",
            js(
                json!({"bos_token": "<s>", "add_bos_token": false, "chat_template": [
                    {"name": "default", "template": "D"},
                    {"name": "tool use", "template": "T"},
                    {"name": "rag", "template": "R"}
                ]}),
            ),
        ),
    ])
}

#[test]
fn unknown_pre_hash_is_an_error_naming_the_override() {
    let dir = bpe_folder(json!(["a b", "Ġ ab"]), 10);
    let e = err_text(metadata(dir.path(), &TokenizerOptions::default()));
    assert!(e.contains("tokenizer.json"), "{e}");
    assert!(e.contains("not recognized"), "{e}");
    assert!(e.contains("--tokenizer-pre"), "{e}");
    assert!(e.contains("llama-bpe"), "{e}");
}

#[test]
fn bpe_folder_metadata() {
    let opts = TokenizerOptions {
        pre: Some("llama-bpe".into()),
    };
    let dir = bpe_folder(json!(["a b", "Ġ ab"]), 10);
    let md = metadata(dir.path(), &opts).unwrap();
    assert_eq!(
        keys(&md),
        [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_sep_token",
            "tokenizer.chat_template.tool_use",
            "tokenizer.chat_template.rag",
            "tokenizer.chat_templates",
            "tokenizer.chat_template",
        ]
    );
    assert_eq!(md.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(md.get_str("tokenizer.ggml.pre"), Some("llama-bpe"));
    assert_eq!(
        strs(&md, "tokenizer.ggml.tokens"),
        ["<s>", "a", "b", "ab", "Ġ", "Ġab", "c d", "<tool>", "<|eot|>", "[PAD9]"]
    );
    // special -> CONTROL, non-special added -> USER_DEFINED, `<|...|>` looks special.
    assert_eq!(
        i32s(&md, "tokenizer.ggml.token_type"),
        [3, 1, 1, 1, 1, 1, 1, 4, 3, 5]
    );
    assert_eq!(strs(&md, "tokenizer.ggml.merges"), ["a b", "Ġ ab"]);
    assert_eq!(u32_of(&md, "tokenizer.ggml.bos_token_id"), 0);
    // From config.json: tokenizer_config names no eos_token.
    assert_eq!(u32_of(&md, "tokenizer.ggml.eos_token_id"), 8);
    // The post-processor's template adds BOS: that wins over add_bos_token = false.
    assert!(bool_of(&md, "tokenizer.ggml.add_bos_token"));
    // The pair template's middle `<s>` is neither SEP nor EOS: add_sep_token = false, as
    // gguf-py's SpecialVocab writes for this folder (checked with the vendored copy).
    assert!(!bool_of(&md, "tokenizer.ggml.add_sep_token"));
    assert_eq!(md.get_str("tokenizer.chat_template"), Some("D"));
    assert_eq!(md.get_str("tokenizer.chat_template.tool_use"), Some("T"));
    assert_eq!(strs(&md, "tokenizer.chat_templates"), ["tool_use", "rag"]);
}

#[test]
fn merges_in_both_formats() {
    let opts = TokenizerOptions {
        pre: Some("gpt-2".into()),
    };
    let dir = bpe_folder(json!([["a", "b"], ["Ġ", "ab"]]), 10);
    let md = metadata(dir.path(), &opts).unwrap();
    assert_eq!(strs(&md, "tokenizer.ggml.merges"), ["a b", "Ġ ab"]);
    // Spaces inside a pair's parts become U+0120 (the byte-level space), as gguf-py does.
    let p = std::path::Path::new("tokenizer.json");
    let m = |merges| special::json_merges(p, &json!({"model": {"merges": merges}}));
    assert_eq!(
        m(json!([["c ", " d"], ["e", "f"]])).unwrap(),
        ["cĠ Ġd", "e f"]
    );
    assert_eq!(m(json!(["c d"])).unwrap(), ["c d"]);
    assert!(m(json!([1]))
        .unwrap_err()
        .to_string()
        .contains("unknown tokenizer merges format"));
    assert!(m(json!([["a", "b"], "c d"]))
        .unwrap_err()
        .to_string()
        .contains("model.merges[1]"));
}

#[test]
fn vocab_larger_than_config_is_an_error() {
    let opts = TokenizerOptions {
        pre: Some("gpt-2".into()),
    };
    let dir = bpe_folder(json!(["a b"]), 5);
    let e = err_text(metadata(dir.path(), &opts));
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab_size 5"),
        "{e}"
    );
}

#[test]
fn chat_template_jinja_file_is_used_when_the_config_has_none() {
    let opts = TokenizerOptions {
        pre: Some("gpt-2".into()),
    };
    let dir = bpe_folder(json!(["a b"]), 10);
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        js(json!({"eos_token": "<|eot|>"})),
    )
    .unwrap();
    std::fs::write(dir.path().join("chat_template.jinja"), "{{ jinja }}").unwrap();
    let md = metadata(dir.path(), &opts).unwrap();
    assert_eq!(md.get_str("tokenizer.chat_template"), Some("{{ jinja }}"));
    // eos from the added token named by tokenizer_config wins over config.json's.
    assert_eq!(u32_of(&md, "tokenizer.ggml.eos_token_id"), 8);
}

#[test]
fn folder_without_tokenizer_gives_no_metadata() {
    let dir = folder(&[(
        "config.json",
        js(json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 10})),
    )]);
    let md = metadata(dir.path(), &TokenizerOptions::default()).unwrap();
    assert!(md.is_empty());
}

#[test]
fn bad_files_are_errors_naming_them() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("tokenizer.json", b"{not json".to_vec(), "not valid JSON"),
        (
            "tokenizer.json",
            js(json!({"model": {"type": "Unigram", "vocab": []}})),
            "Unigram",
        ),
        ("vocab.json", js(json!({"a": 0})), "not supported"),
    ];
    for (name, bytes, want) in cases {
        let dir = folder(&[(name, bytes)]);
        let e = err_text(metadata(dir.path(), &TokenizerOptions::default()));
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    let dir = bpe_folder(json!(["a b"]), 10);
    std::fs::write(dir.path().join("tokenizer_config.json"), b"[1]").unwrap();
    let e = err_text(metadata(
        dir.path(),
        &TokenizerOptions {
            pre: Some("gpt-2".into()),
        },
    ));
    assert!(e.contains("tokenizer_config.json"), "{e}");
}

#[test]
fn merges_txt_when_tokenizer_json_has_none() {
    let opts = TokenizerOptions {
        pre: Some("gpt-2".into()),
    };
    let dir = bpe_folder(json!([]), 10);
    std::fs::write(
        dir.path().join("merges.txt"),
        "#version: 0.2\na b\nmalformed line here\n\nĠ ab\n",
    )
    .unwrap();
    let md = metadata(dir.path(), &opts).unwrap();
    assert_eq!(strs(&md, "tokenizer.ggml.merges"), ["a b", "Ġ ab"]);
}

#[test]
fn hf_folder_store_gets_tokenizer_keys_after_the_hyper_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = crate::fixture::TinyLlama {
        n_layer: 1,
        vocab: 300,
        ..Default::default()
    };
    tiny.write_hf(dir.path(), 1).unwrap();
    let plain = crate::store::Store::open(dir.path()).unwrap();
    assert!(!plain
        .metadata
        .iter()
        .any(|(k, _)| k.starts_with("tokenizer.")));
    std::fs::write(
        dir.path().join("tokenizer.json"),
        js(bpe_tokenizer(json!(["a b"]))),
    )
    .unwrap();
    // Not the Llama class AutoTokenizer would pick from model_type: that one adds its default
    // `<unk>` and `</s>` (checked against the script separately).
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        js(json!({"tokenizer_class": "PreTrainedTokenizerFast"})),
    )
    .unwrap();
    let opts = TokenizerOptions {
        pre: Some("gpt-2".into()),
    };
    let store = crate::store::Store::open_with(dir.path(), &opts).unwrap();
    let keys: Vec<&str> = store.metadata.iter().map(|(k, _)| k).collect();
    let n = plain.metadata.len();
    assert_eq!(
        keys[..n],
        plain.metadata.iter().map(|(k, _)| k).collect::<Vec<_>>()[..]
    );
    assert_eq!(keys[n], "tokenizer.ggml.model");
    assert_eq!(store.metadata.get_str("tokenizer.ggml.pre"), Some("gpt-2"));
    // Without the override the unknown hash is an error naming tokenizer.json.
    let e = crate::store::Store::open(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("--tokenizer-pre"),
        "{e}"
    );
}

#[test]
fn implausible_vocab_size_is_an_error() {
    let dir = folder(&[
        ("tokenizer.model", spm_model(PIECES)),
        ("config.json", js(json!({"vocab_size": 1u64 << 40}))),
    ]);
    let e = err_text(metadata(dir.path(), &TokenizerOptions::default()));
    assert!(
        e.contains("config.json") && e.contains("implausible"),
        "{e}"
    );
    let dir = bpe_folder(json!(["a b"]), 1 << 40);
    let e = err_text(metadata(
        dir.path(),
        &TokenizerOptions {
            pre: Some("gpt-2".into()),
        },
    ));
    assert!(
        e.contains("config.json") && e.contains("implausible"),
        "{e}"
    );
}

#[test]
fn chat_template_json_and_additional_templates() {
    let opts = TokenizerOptions {
        pre: Some("gpt-2".into()),
    };
    let dir = bpe_folder(json!(["a b"]), 10);
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        js(json!({"bos_token": "<s>"})),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("chat_template.json"),
        js(json!({"chat_template": "{{ from_json }}"})),
    )
    .unwrap();
    let md = metadata(dir.path(), &opts).unwrap();
    assert_eq!(
        md.get_str("tokenizer.chat_template"),
        Some("{{ from_json }}")
    );

    // chat_template.jinja wins over chat_template.json; extra templates make the named form.
    std::fs::write(dir.path().join("chat_template.jinja"), "{{ main }}").unwrap();
    let extra = dir.path().join("additional_chat_templates");
    std::fs::create_dir(&extra).unwrap();
    std::fs::write(extra.join("tool-use.jinja"), "{{ tools }}").unwrap();
    std::fs::write(extra.join("rag.jinja"), "{{ rag }}").unwrap();
    let md = metadata(dir.path(), &opts).unwrap();
    assert_eq!(md.get_str("tokenizer.chat_template"), Some("{{ main }}"));
    assert_eq!(md.get_str("tokenizer.chat_template.rag"), Some("{{ rag }}"));
    assert_eq!(
        md.get_str("tokenizer.chat_template.tool_use"),
        Some("{{ tools }}")
    );
    assert_eq!(strs(&md, "tokenizer.chat_templates"), ["rag", "tool_use"]);
}

// ------------------------------------------------------------------ damaged tokenizer files

/// `v` with each value (down to depth 4, first 3 items of each list) replaced in turn by
/// each hostile JSON value.
fn hostile_variants(v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    fn paths(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if !at.is_empty() {
            out.push(at.clone());
        }
        if at.len() >= 4 {
            return;
        }
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    at.push(k.clone());
                    paths(x, at, out);
                    at.pop();
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate().take(3) {
                    at.push(i.to_string());
                    paths(x, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let hostile = [
        json!(null),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(u64::MAX),
        json!(1u64 << 32),
        json!(u32::MAX),
        json!("\u{2581}x"),
        json!(""),
        json!(true),
        json!([]),
        json!({}),
        json!({"content": 5}),
    ];
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let mut out = Vec::new();
    for p in all {
        for h in &hostile {
            let mut w = v.clone();
            let mut slot = &mut w;
            for k in &p {
                slot = match slot {
                    serde_json::Value::Object(m) => m.get_mut(k).unwrap(),
                    serde_json::Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                    _ => unreachable!(),
                };
            }
            *slot = h.clone();
            out.push((format!("/{} = {h}", p.join("/")), w));
        }
    }
    out
}

#[test]
fn damaged_tokenizer_files_are_errors_not_panics() {
    // Every value of every JSON file of a SentencePiece and of a BPE folder swapped for a
    // hostile one, and the protobuf damaged byte by byte: metadata() returns Ok or an error
    // naming a file, and never panics.
    let spm_files: Vec<(&'static str, serde_json::Value)> = vec![
        (
            "config.json",
            json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 11, "pad_token_id": 0}),
        ),
        ("added_tokens.json", json!({"<extra>": 8, "<far>": 40})),
        (
            "tokenizer_config.json",
            json!({"add_bos_token": true, "add_eos_token": false, "add_prefix_space": true,
                "bos_token": "<s>", "eos_token": {"content": "</s>", "__type": "AddedToken"},
                "unk_token": "<unk>", "chat_template": "{{ messages }}",
                "added_tokens_decoder": {"6": {"content": "<custom>", "special": false},
                    "9": {"content": "<|x|>", "special": true}}}),
        ),
        (
            "special_tokens_map.json",
            json!({"pad_token": {"content": "<unk>"}, "additional_special_tokens": ["<custom>"]}),
        ),
    ];
    let bpe_files: Vec<(&'static str, serde_json::Value)> = vec![
        ("tokenizer.json", bpe_tokenizer(json!(["a b", "Ġ ab"]))),
        (
            "config.json",
            json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 10,
                "bos_token_id": 0, "eos_token_id": 8}),
        ),
        (
            "tokenizer_config.json",
            json!({"bos_token": "<s>", "add_bos_token": false, "chat_template": [
                {"name": "default", "template": "D"}, {"name": "rag", "template": "R"}],
                "added_tokens_decoder": {"7": {"content": "<tool>", "special": false}}}),
        ),
    ];
    let opts = TokenizerOptions {
        pre: Some("llama-bpe".into()),
    };
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut run = |label: String, files: Vec<(&str, Vec<u8>)>| {
        let dir = folder(&files);
        cases += 1;
        let r = std::panic::catch_unwind(|| metadata(dir.path(), &opts));
        match r {
            Err(_) => failures.push(format!("{label}: panic")),
            Ok(Err(e)) => {
                let e = e.to_string();
                let named = files.iter().any(|(n, _)| e.contains(n)) || e.contains("tokenizer");
                if !named {
                    failures.push(format!("{label}: error names no file: {e}"));
                }
            }
            Ok(Ok(_)) => {}
        }
    };
    for (kind, base, extra) in [
        (
            "spm",
            &spm_files,
            Some(("tokenizer.model", spm_model(PIECES))),
        ),
        ("bpe", &bpe_files, None),
    ] {
        let encode = |files: &[(&'static str, serde_json::Value)]| -> Vec<(&'static str, Vec<u8>)> {
            let mut out: Vec<(&'static str, Vec<u8>)> =
                files.iter().map(|(n, v)| (*n, js(v.clone()))).collect();
            out.extend(extra.clone());
            out
        };
        for (i, (name, v)) in base.iter().enumerate() {
            for (what, w) in hostile_variants(v) {
                let mut files = base.clone();
                files[i].1 = w;
                run(format!("{kind} {name} {what}"), encode(&files));
            }
        }
        if let Some((model_name, model)) = &extra {
            for at in 0..model.len() {
                for x in [0x00u8, 0xff, 0x80, 0x0a, 0x7f] {
                    let mut m = model.clone();
                    m[at] = x;
                    let mut files = encode(base);
                    let last = files.len() - 1;
                    files[last] = (model_name, m);
                    run(format!("{kind} {model_name} byte {at} = {x:#x}"), files);
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cases > 1000, "{cases}");
}

#[test]
fn merge_shorter_than_the_subword_prefix_is_an_error() {
    // The tokenizers crate used to panic (slicing `b[prefix.len()..]`) on this file.
    let mut tok = bpe_tokenizer(json!(["a b", "Ġ ab"]));
    tok["model"]["continuing_subword_prefix"] = json!("\u{2581}x");
    let dir = folder(&[
        ("tokenizer.json", js(tok)),
        (
            "config.json",
            js(json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 10})),
        ),
    ]);
    let opts = TokenizerOptions {
        pre: Some("llama-bpe".into()),
    };
    let e = err_text(metadata(dir.path(), &opts));
    assert!(
        e.contains("tokenizer.json")
            && e.contains("merge 0")
            && e.contains("continuing_subword_prefix"),
        "{e}"
    );
}
