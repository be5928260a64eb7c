//! The reverse of [`super::metadata`] for byte-level BPE: Hugging Face tokenizer files
//! (`tokenizer.json`, `tokenizer_config.json`) rebuilt from a GGUF's `tokenizer.ggml.*` keys,
//! so that `merge --format safetensors` from GGUF inputs gives a folder `transformers` can load
//! and `convert` can turn back into the same GGUF.
//!
//! The vocabulary, merges, special tokens and chat template are in the GGUF; the
//! pre-tokenizer is only named (`tokenizer.ggml.pre`), so it is rebuilt from what the named
//! model family ships. Families whose pre-tokenizer is not known here, and SentencePiece
//! (`llama`) vocabularies, are reported as not rebuildable rather than guessed.

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
fn pre_tokenizer(name: &str) -> Option<Json> {
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
        .as_array()?
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

/// `tokenizer.json` and `tokenizer_config.json` (file name, text) for GGUF metadata `md`, or
/// why they cannot be rebuilt.
pub fn hf_tokenizer_files(md: &Metadata) -> Result<Vec<(String, String)>, String> {
    let model = md
        .get_str("tokenizer.ggml.model")
        .ok_or("the GGUF has no tokenizer")?;
    if model != "gpt2" {
        return Err(format!(
            "rebuilding a `{model}` tokenizer is not supported (only byte-level BPE, `gpt2`)"
        ));
    }
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

    let mut config = Map::new();
    // Only the flags the GGUF states: the converter writes each one the config has.
    for key in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = flag(md, &format!("tokenizer.ggml.{key}")) {
            config.insert(key.into(), json!(b));
        }
    }
    if let Some(b) = flag(md, "tokenizer.ggml.add_space_prefix") {
        config.insert("add_prefix_space".into(), json!(b));
    }
    config.insert("added_tokens_decoder".into(), Json::Object(decoder));
    for (name, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(t) = id_of(key).and_then(|i| tokens.get(i)) {
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
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    let pretty = |j: &Json| serde_json::to_string_pretty(j).expect("JSON values serialize");
    Ok(vec![
        ("tokenizer.json".into(), pretty(&tokenizer)),
        (
            "tokenizer_config.json".into(),
            pretty(&Json::Object(config)),
        ),
    ])
}
