//! Byte-level BPE vocabularies from `tokenizer.json` (the script's `get_vocab_base` for
//! `_set_vocab_gpt2`): the tokens by id, padded to `config.json`'s `vocab_size`, and their
//! types from the added-token table.
//!
//! The script loads the folder with transformers' `AutoTokenizer`, a wrapper around HF's
//! `tokenizers` library; smelt loads `tokenizer.json` with the same library's Rust crate and
//! applies what transformers changes on load ([`hf_load`]), so the vocabulary, the added
//! tokens and the check-text encoding are the ones the script sees.

use super::{
    check_vocab_size, hf_load, looks_special, pre, read_json, token_type, unescape_spaces,
    TokenizerOptions,
};
use crate::error::{Error, Result};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::Tokenizer;

pub(super) struct BpeVocab {
    pub pre: String,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
}

pub(super) fn vocab(
    path: &Path,
    dir: &Path,
    config: Option<&Json>,
    tokenizer_config: Option<&Json>,
    opts: &TokenizerOptions,
) -> Result<BpeVocab> {
    let json = read_json(path)?.unwrap_or(Json::Null);
    check_model(path, &json)?;
    let model_type = config
        .and_then(|c| c.get("model_type"))
        .and_then(Json::as_str);
    let hf_load::Loaded { tok, clean_up } =
        hf_load::load(path, dir, json, tokenizer_config, model_type)?;
    let config_vocab = config
        .and_then(|c| c.get("vocab_size"))
        .and_then(Json::as_u64)
        .map(|n| check_vocab_size(&dir.join("config.json"), n))
        .transpose()?;
    let vocab = tok.get_vocab(true);
    let n_ids = vocab.len() as u64;
    let vocab_size = config_vocab.unwrap_or(n_ids);
    if let Some(max) = vocab.values().max() {
        if u64::from(*max) >= vocab_size {
            return Err(Error::format(
                path,
                format!(
                    "token id {max} is past config.json's vocab_size {vocab_size}; the vocabulary does not belong to this model"
                ),
            ));
        }
    }
    let pre = match &opts.pre {
        Some(p) => p.clone(),
        None => {
            let ids = tok
                .encode(pre::CHECK_TEXT, true)
                .map_err(|e| Error::format(path, format!("cannot encode the check text: {e}")))?
                .get_ids()
                .to_vec();
            let hash = pre::ids_hash(&ids);
            pre::pre_name(&hash).map(str::to_string).ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "BPE pre-tokenizer not recognized (check-text hash {hash} is not in llama.cpp's table); \
                         if its split regex is one llama.cpp knows, name it with --tokenizer-pre \
                         (e.g. `llama-bpe` for Llama 3's, `qwen2`, `gpt-2`)"
                    ),
                )
            })?
        }
    };

    let mut reverse: HashMap<u32, &str> = HashMap::with_capacity(vocab.len());
    for (t, id) in &vocab {
        reverse.insert(*id, t.as_str());
    }
    let decoder = tok.get_added_tokens_decoder();
    let added: HashMap<&str, u32> = decoder
        .iter()
        .map(|(id, t)| (t.content.as_str(), *id))
        .collect();
    let mut tokens = Vec::with_capacity(vocab_size as usize);
    let mut types = Vec::with_capacity(vocab_size as usize);
    for i in 0..vocab_size {
        let Some(token) = u32::try_from(i).ok().and_then(|i| reverse.get(&i)) else {
            tokens.push(format!("[PAD{i}]"));
            types.push(token_type::UNUSED);
            continue;
        };
        let mut token = token.to_string();
        let ty = match added.get(token.as_str()).and_then(|id| decoder.get(id)) {
            Some(info) => {
                // llama.cpp expects control and user-defined tokens pre-normalized: the script
                // replaces a non-normalized added token by its encode/decode round trip.
                if !info.normalized {
                    token = round_trip(path, &tok, &token, clean_up)?;
                }
                if info.special || looks_special(&token) {
                    token_type::CONTROL
                } else {
                    token = unescape_spaces(&token);
                    token_type::USER_DEFINED
                }
            }
            None => token_type::NORMAL,
        };
        tokens.push(token);
        types.push(ty);
    }
    Ok(BpeVocab { pre, tokens, types })
}

/// `tokenizer.json` must hold a BPE model; the SentencePiece-converted kind (byte fallback,
/// a `Sequence` decoder) goes through the script's `LlamaHfVocab`, which smelt lacks.
fn check_model(path: &Path, json: &Json) -> Result<()> {
    let model = json
        .get("model")
        .ok_or_else(|| Error::format(path, "no `model` object"))?;
    let ty = model.get("type").and_then(Json::as_str).unwrap_or("");
    if ty != "BPE" {
        return Err(Error::format(
            path,
            format!("tokenizer model type `{ty}` is not supported (smelt converts byte-level BPE tokenizer.json files and SentencePiece tokenizer.model files)"),
        ));
    }
    let flag = |k: &str| model.get(k).and_then(Json::as_bool);
    let is_llama3 =
        flag("ignore_merges").unwrap_or(false) && !flag("byte_fallback").unwrap_or(true);
    let spm_like = flag("byte_fallback").unwrap_or(false)
        && json.pointer("/decoder/type").and_then(Json::as_str) == Some("Sequence");
    if !is_llama3 && spm_like {
        return Err(Error::format(
            path,
            "a SentencePiece-style BPE (byte fallback) without its tokenizer.model is not supported; add the model's tokenizer.model to the folder",
        ));
    }
    // The tokenizers crate cuts `continuing_subword_prefix` off the second half of every merge
    // without a check, and panics on one shorter than the prefix (or cut inside a character).
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(Json::as_str)
        .unwrap_or("");
    if !prefix.is_empty() {
        let merges = model.get("merges").and_then(Json::as_array);
        for (i, m) in merges.into_iter().flatten().enumerate() {
            let second = match m {
                Json::String(s) => s.split_once(' ').map(|(_, b)| b),
                Json::Array(p) => p.get(1).and_then(Json::as_str),
                _ => None,
            };
            if second.is_some_and(|b| b.get(prefix.len()..).is_none()) {
                return Err(Error::format(
                    path,
                    format!(
                        "merge {i} ({m}) does not fit continuing_subword_prefix {prefix:?}: its second token is shorter"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// transformers' `decode(encode(token, add_special_tokens=False))`, with its
/// `clean_up_tokenization_spaces` pass when the tokenizer has it on.
fn round_trip(path: &Path, tok: &Tokenizer, token: &str, clean_up: bool) -> Result<String> {
    let enc = tok
        .encode(token, false)
        .map_err(|e| Error::format(path, format!("cannot encode added token {token:?}: {e}")))?;
    let text = tok
        .decode(enc.get_ids(), false)
        .map_err(|e| Error::format(path, format!("cannot decode added token {token:?}: {e}")))?;
    Ok(if clean_up {
        clean_up_spaces(&text)
    } else {
        text
    })
}

/// transformers' `clean_up_tokenization`: English-centric space removal before punctuation.
fn clean_up_spaces(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
