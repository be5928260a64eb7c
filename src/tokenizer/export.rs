//! The reverse of [`super::metadata`]: Hugging Face tokenizer files rebuilt from a GGUF's
//! `tokenizer.ggml.*` keys, so that `merge --format safetensors` from GGUF inputs gives a
//! folder `transformers` can load and `convert` can turn back into the same GGUF.
//!
//! - `gpt2` (byte-level BPE): `tokenizer.json` + `tokenizer_config.json`. The vocabulary,
//!   merges, special tokens and chat template are in the GGUF; the pre-tokenizer is only
//!   named (`tokenizer.ggml.pre`), so it is rebuilt from what the named family ships.
//!   Families whose pre-tokenizer is not known here are reported, not guessed.
//! - `llama` (SentencePiece): `tokenizer.model` (a protobuf `ModelProto` with the pieces,
//!   scores and types, byte fallback when there are byte pieces, the dummy prefix from
//!   `add_space_prefix`) + `tokenizer_config.json`.

use super::token_type;
use crate::gguf::{Metadata, Value};
use serde_json::{json, Map, Value as Json};

/// Llama 3's split regex (its tokenizer.json), also llama.cpp's `llama-bpe` pre-tokenizer.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (digits one by one), llama.cpp's `qwen2`.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_bytes(pattern: &str) -> Json {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

/// The `pre_tokenizer` of `tokenizer.json` for llama.cpp's pre-tokenizer `name`, as the
/// family's own tokenizer.json has it.
pub(super) fn pre_tokenizer(name: &str) -> Option<Json> {
    Some(match name {
        "gpt-2" | "gpt2" | "default" => byte_level(true),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "llama-bpe" | "llama3" => split_then_bytes(LLAMA3_SPLIT),
        "qwen2" => split_then_bytes(QWEN2_SPLIT),
        _ => return None,
    })
}

fn strings<'a>(md: &'a Metadata, key: &str) -> Option<Vec<&'a str>> {
    md.get(key)?.as_array()?.iter().map(Value::as_str).collect()
}

fn ints(md: &Metadata, key: &str) -> Option<Vec<i64>> {
    md.get(key)?
        .items()?
        .iter()
        .map(|v| match v {
            Value::I32(x) => Some(*x as i64),
            other => other.as_u64().map(|x| x as i64),
        })
        .collect()
}

fn flag(md: &Metadata, key: &str) -> Option<bool> {
    match md.get(key)? {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

/// An added token as tokenizer.json and tokenizer_config.json describe it.
fn added_token(id: usize, content: &str, special: bool) -> (Json, Json) {
    let fields = |m: &mut Map<String, Json>| {
        m.insert("content".into(), json!(content));
        m.insert("single_word".into(), json!(false));
        m.insert("lstrip".into(), json!(false));
        m.insert("rstrip".into(), json!(false));
        m.insert("normalized".into(), json!(!special));
        m.insert("special".into(), json!(special));
    };
    let mut in_json = Map::new();
    in_json.insert("id".into(), json!(id));
    fields(&mut in_json);
    let mut in_config = Map::new();
    fields(&mut in_config);
    (Json::Object(in_json), Json::Object(in_config))
}

/// The tokenizer files (file name, contents) for GGUF metadata `md`, or why they cannot be
/// rebuilt.
pub fn hf_tokenizer_files(md: &Metadata) -> Result<Vec<(String, Vec<u8>)>, String> {
    let model = md
        .get_str("tokenizer.ggml.model")
        .ok_or("the GGUF has no tokenizer")?;
    let files = match model {
        "gpt2" => bpe_files(md)?,
        "llama" => spm_files(md)?,
        _ => {
            return Err(format!(
                "rebuilding a `{model}` tokenizer is not supported (byte-level BPE `gpt2` and SentencePiece `llama` are)"
            ))
        }
    };
    Ok(files)
}

/// `tokenizer.json` and `tokenizer_config.json` for a byte-level BPE vocabulary.
fn bpe_files(md: &Metadata) -> Result<Vec<(String, Vec<u8>)>, String> {
    let pre_name = md.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        format!("the pre-tokenizer `{pre_name}` is not one smelt can rebuild (gpt2, smollm, llama-bpe, qwen2)")
    })?;
    let tokens = strings(md, "tokenizer.ggml.tokens").ok_or("no tokenizer.ggml.tokens")?;
    let types = ints(md, "tokenizer.ggml.token_type")
        .unwrap_or_else(|| vec![token_type::NORMAL as i64; tokens.len()]);
    if types.len() != tokens.len() {
        return Err("tokenizer.ggml.token_type and tokens differ in length".into());
    }
    let merges = strings(md, "tokenizer.ggml.merges").unwrap_or_default();
    let id_of = |key: &str| md.get_u64(key).map(|v| v as usize);

    let mut vocab = Map::new();
    let mut added = Vec::new();
    let mut decoder = Map::new();
    for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        // The converter's `[PAD{id}]` filler for ids the tokenizer lacks is made again by the
        // next conversion from config.json's vocab_size; it is no token of the tokenizer.
        if *ty == token_type::UNUSED as i64 && *tok == format!("[PAD{id}]") {
            continue;
        }
        vocab.insert((*tok).to_string(), json!(id));
        let special = *ty == token_type::CONTROL as i64;
        if special || *ty == token_type::USER_DEFINED as i64 {
            let (a, d) = added_token(id, tok, special);
            added.push(a);
            decoder.insert(id.to_string(), d);
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| format!("merge `{m}` is not two tokens"))
        })
        .collect::<Result<_, _>>()?;

    let (bos_flag, eos_flag) = (
        flag(md, "tokenizer.ggml.add_bos_token"),
        flag(md, "tokenizer.ggml.add_eos_token"),
    );
    let (add_bos, add_eos) = (bos_flag.unwrap_or(false), eos_flag.unwrap_or(false));
    let bos = id_of("tokenizer.ggml.bos_token_id").and_then(|i| tokens.get(i).copied());
    let eos = id_of("tokenizer.ggml.eos_token_id").and_then(|i| tokens.get(i).copied());
    // The post-processor gives back the flags the GGUF states, as gguf-py reads them: a
    // ByteLevel step states both (false unless a template adds the token), a template adds
    // BOS/EOS the way Llama 3's tokenizer.json does; with neither, tokenizer_config's flags
    // alone speak. (ByteLevel post-processing changes offsets only, never ids.)
    let template = ((add_bos && bos.is_some()) || (add_eos && eos.is_some())).then(|| {
        let mut single = Vec::new();
        let mut special_tokens = Map::new();
        let mut push = |tok: &str, single: &mut Vec<Json>| {
            single.push(json!({"SpecialToken": {"id": tok, "type_id": 0}}));
            let id = tokens.iter().position(|t| *t == tok).unwrap_or(0);
            special_tokens.insert(tok.into(), json!({"id": tok, "ids": [id], "tokens": [tok]}));
        };
        if let (true, Some(b)) = (add_bos, bos) {
            push(b, &mut single);
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if let (true, Some(e)) = (add_eos, eos) {
            push(e, &mut single);
        }
        let pair: Vec<Json> = single
            .iter()
            .cloned()
            .chain(single.iter().map(|p| match p.get("Sequence") {
                Some(_) => json!({"Sequence": {"id": "B", "type_id": 1}}),
                None => p.clone(),
            }))
            .collect();
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
    });
    let byte_level_post = (bos_flag.is_some() && eos_flag.is_some()).then(|| {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    });
    let post = match (byte_level_post, template) {
        (Some(b), Some(t)) => json!({"type": "Sequence", "processors": [b, t]}),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => Json::Null,
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": pre_name == "llama-bpe",
            "vocab": vocab,
            "merges": merges,
        },
    });

    let mut config = tokenizer_config(md, &tokens);
    config.insert("added_tokens_decoder".into(), Json::Object(decoder));
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(vec![
        ("tokenizer.json".into(), pretty(&tokenizer)),
        (
            "tokenizer_config.json".into(),
            pretty(&Json::Object(config)),
        ),
    ])
}

fn pretty(j: &Json) -> Vec<u8> {
    serde_json::to_string_pretty(j)
        .expect("JSON values serialize")
        .into_bytes()
}

/// The `tokenizer_config.json` entries every family shares: the `add_*_token` flags the GGUF
/// states (the converter writes each one the config has), the special tokens by text, the
/// chat template and the context length.
fn tokenizer_config(md: &Metadata, tokens: &[&str]) -> Map<String, Json> {
    let mut config = Map::new();
    for key in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = flag(md, &format!("tokenizer.ggml.{key}")) {
            config.insert(key.into(), json!(b));
        }
    }
    if let Some(b) = flag(md, "tokenizer.ggml.add_space_prefix") {
        config.insert("add_prefix_space".into(), json!(b));
    }
    for (name, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(t) = md.get_u64(key).and_then(|i| tokens.get(i as usize)) {
            config.insert(name.into(), json!(t));
        }
    }
    if let Some(t) = md.get_str("tokenizer.chat_template") {
        config.insert("chat_template".into(), json!(t));
    }
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    let arch = md.architecture().unwrap_or_default();
    if let Some(n) = md.get_u64(&format!("{arch}.context_length")) {
        config.insert("model_max_length".into(), json!(n));
    }
    config
}

/// `tokenizer.model` and `tokenizer_config.json` for a SentencePiece vocabulary.
fn spm_files(md: &Metadata) -> Result<Vec<(String, Vec<u8>)>, String> {
    let tokens = strings(md, "tokenizer.ggml.tokens").ok_or("no tokenizer.ggml.tokens")?;
    let n = tokens.len();
    // Numbers, not strings: `items` (arrays of numbers are stored as their bytes).
    let scores: Vec<f32> = match md.get("tokenizer.ggml.scores").and_then(Value::items) {
        Some(a) => a
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect::<Option<_>>()
            .ok_or("tokenizer.ggml.scores holds something other than numbers")?,
        None => vec![0.0; n],
    };
    let types =
        ints(md, "tokenizer.ggml.token_type").unwrap_or_else(|| vec![token_type::NORMAL as i64; n]);
    if scores.len() != n || types.len() != n {
        return Err("tokenizer.ggml.scores/token_type and tokens differ in length".into());
    }
    // The converter's trailing `[PAD{id}]` filler comes back from config.json's vocab_size.
    let mut kept = n;
    while kept > 0
        && types[kept - 1] == token_type::UNUSED as i64
        && tokens[kept - 1] == format!("[PAD{}]", kept - 1)
    {
        kept -= 1;
    }
    let mut pieces = Vec::new();
    let mut decoder = Map::new();
    for id in 0..kept {
        let ty = types[id];
        // An added (user-defined) token is restored through added_tokens_decoder, which is
        // how the converter gave it its type and its -1000 score; SentencePiece itself keeps
        // user-defined pieces, written with `▁` for spaces as it spells them.
        let piece = if ty == token_type::USER_DEFINED as i64 {
            let (_, d) = added_token(id, tokens[id], false);
            decoder.insert(id.to_string(), d);
            tokens[id].replace(' ', "\u{2581}")
        } else {
            tokens[id].to_string()
        };
        let mut p = Vec::new();
        proto::bytes(&mut p, 1, piece.as_bytes());
        proto::fixed32(&mut p, 2, scores[id].to_bits());
        proto::varint(&mut p, 3, ty as u64);
        pieces.push(p);
    }
    let id_or_none = |key: &str| md.get_u64(key).map_or(-1i64, |v| v as i64);
    let byte_fallback = types.contains(&(token_type::BYTE as i64));
    let mut trainer = Vec::new();
    proto::varint(&mut trainer, 3, 2); // model_type: BPE, as Llama's and Gemma's are
    proto::varint(&mut trainer, 4, kept as u64); // vocab_size
    proto::varint(&mut trainer, 35, byte_fallback as u64);
    for (field, key) in [
        (40, "tokenizer.ggml.unknown_token_id"),
        (41, "tokenizer.ggml.bos_token_id"),
        (42, "tokenizer.ggml.eos_token_id"),
        (43, "tokenizer.ggml.padding_token_id"),
    ] {
        // int32 fields: a negative id is its two's complement in ten varint bytes.
        proto::varint(&mut trainer, field, id_or_none(key) as u64);
    }
    let mut normalizer = Vec::new();
    proto::bytes(&mut normalizer, 1, b"identity");
    let dummy_prefix = flag(md, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
    proto::varint(&mut normalizer, 3, dummy_prefix as u64);
    proto::varint(&mut normalizer, 4, 0); // remove_extra_whitespaces
    proto::varint(&mut normalizer, 5, 1); // escape_whitespaces
    let mut model = Vec::new();
    for p in &pieces {
        proto::bytes(&mut model, 1, p);
    }
    proto::bytes(&mut model, 2, &trainer);
    proto::bytes(&mut model, 3, &normalizer);

    let mut config = tokenizer_config(md, &tokens);
    config.insert("added_tokens_decoder".into(), Json::Object(decoder));
    config.insert("legacy".into(), json!(true));
    config.insert("tokenizer_class".into(), json!("LlamaTokenizer"));
    Ok(vec![
        ("tokenizer.model".into(), model),
        (
            "tokenizer_config.json".into(),
            pretty(&Json::Object(config)),
        ),
    ])
}

/// Just enough protobuf encoding for a SentencePiece `ModelProto`.
mod proto {
    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        raw_varint(out, ((field as u64) << 3) | wire as u64);
    }

    fn raw_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn varint(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 0);
        raw_varint(out, v);
    }

    pub fn fixed32(out: &mut Vec<u8>, field: u32, bits: u32) {
        key(out, field, 5);
        out.extend_from_slice(&bits.to_le_bytes());
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(out, field, 2);
        raw_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}
