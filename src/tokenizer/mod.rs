//! Tokenizer metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`) for a Hugging Face
//! model folder, with the keys, values and key order llama.cpp's `convert_hf_to_gguf.py`
//! (llama-cpp-python 0.3.36) writes for the llama family:
//!
//! - `tokenizer.model` (SentencePiece, Llama 2 / Mistral / Gemma): [`spm`], model `llama`.
//! - else `tokenizer.json` with a byte-level BPE model (GPT-2 style: Llama 3, Qwen, SmolLM):
//!   [`bpe`], model `gpt2`, with the pre-tokenizer named by [`pre`].
//! - then the special tokens, `add_*_token` flags, merges and chat template: [`special`].
//!
//! A folder with none of the tokenizer files gives no metadata (not an error): such a GGUF
//! still loads in tools that do not tokenize. Everything else the script would reject, or
//! that smelt does not handle yet, is an error naming the file.
//!
//! The script's `set_vocab` differs per model class; this follows `LlamaModel.set_vocab`
//! (the llama family) and Gemma 2/3's `add_space_prefix = false`. Other classes get the same
//! common path (SentencePiece if `tokenizer.model`, else BPE); a new architecture whose script
//! class adds its own keys needs them here (fixtures/golden/convert checks every table's).

mod bpe;
pub mod encode;
pub mod export;
mod hf_load;
pub mod pre;
mod pre_table;
mod special;
mod spm;

#[cfg(test)]
mod tests;

use crate::arch::VocabRules;
use crate::error::{Error, Result};
use crate::gguf::{Metadata, Value};
use serde_json::Value as Json;
use std::path::Path;

pub use pre::{pre_name, CHECK_TEXT};

/// Choices the folder cannot make for itself.
#[derive(Debug, Clone, Default)]
pub struct TokenizerOptions {
    /// `tokenizer.ggml.pre` to write instead of looking the check-text hash up: for BPE
    /// tokenizers llama.cpp's table does not know (`llama-bpe` for a Llama 3 style regex).
    pub pre: Option<String>,
}

/// llama.cpp's token types (gguf-py `TokenType`, SentencePiece's piece types shifted to 1-based).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer metadata of HF folder `dir`, in the order the convert script writes it.
/// Empty when the folder has neither `tokenizer.model` nor `tokenizer.json`.
pub fn metadata(dir: &Path, opts: &TokenizerOptions) -> Result<Metadata> {
    let spm_path = dir.join("tokenizer.model");
    let json_path = dir.join("tokenizer.json");
    let mut md = Metadata::new();
    if !crate::input::exists(&spm_path) && !crate::input::exists(&json_path) {
        // The slow-tokenizer files alone are something the script can read but smelt can't:
        // silently writing a GGUF without a vocabulary would hide that.
        for other in ["vocab.json", "tekken.json"] {
            if dir.join(other).is_file() {
                return Err(Error::format(
                    dir.join(other),
                    "this tokenizer format is not supported (smelt reads tokenizer.model or tokenizer.json)",
                ));
            }
        }
        return Ok(md);
    }
    let config = read_json(&dir.join("config.json"))?;
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
    let hf_class = config
        .as_ref()
        .and_then(|c| c.get("architectures"))
        .and_then(|a| a.get(0))
        .and_then(Json::as_str);
    // Which of the converter's `set_vocab` variants: the architecture row says.
    let rules = hf_class.map_or(VocabRules::Common, crate::arch::vocab_rules);
    let is_llama = rules == VocabRules::Llama;
    let config_vocab = config
        .as_ref()
        .and_then(|c| c.get("vocab_size"))
        .and_then(Json::as_u64);

    if is_llama {
        if let Some(b) = tokenizer_config
            .as_ref()
            .and_then(|t| t.get("add_prefix_space"))
            .and_then(Json::as_bool)
        {
            md.set("tokenizer.ggml.add_space_prefix", Value::Bool(b));
        }
    }

    let special_types = special::DEFAULT_TYPES;
    if crate::input::exists(&spm_path) {
        // `vocab_size_per_layer_input` (Gemma 3n) first, as the script's find_hparam does;
        // 0 or absent means the model file's own size.
        let vocab_size = ["vocab_size_per_layer_input", "vocab_size"]
            .iter()
            .find_map(|k| {
                config
                    .as_ref()
                    .and_then(|c| c.get(*k))
                    .and_then(Json::as_u64)
            })
            .filter(|&n| n > 0)
            .map(|n| check_vocab_size(&dir.join("config.json"), n))
            .transpose()?;
        let vocab = spm::vocab(&spm_path, dir, vocab_size, tokenizer_config.as_ref())?;
        md.set("tokenizer.ggml.model", Value::String("llama".into()));
        md.set("tokenizer.ggml.pre", Value::String("default".into()));
        md.set("tokenizer.ggml.tokens", Value::strings(vocab.tokens));
        md.set("tokenizer.ggml.scores", Value::f32s(vocab.scores));
        md.set("tokenizer.ggml.token_type", Value::i32s(vocab.types));
        let n_vocab = md_len(&md, "tokenizer.ggml.tokens");
        let sv = special::SpecialVocab::load(dir, false, special_types, Some(n_vocab))?;
        sv.write(&mut md);
    } else {
        let vocab = bpe::vocab(
            &json_path,
            dir,
            config.as_ref(),
            tokenizer_config.as_ref(),
            opts,
        )?;
        md.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        md.set("tokenizer.ggml.pre", Value::String(vocab.pre));
        md.set("tokenizer.ggml.tokens", Value::strings(vocab.tokens));
        md.set("tokenizer.ggml.token_type", Value::i32s(vocab.types));
        let sv = special::SpecialVocab::load(dir, true, special_types, None)?;
        sv.write(&mut md);
    }

    if is_llama {
        let script_vocab = config_vocab.unwrap_or(32000);
        // CodeLlama: its infill tokens sit at fixed ids; of the four only `eot` has a GGUF key.
        if script_vocab == 32016 {
            let mut sv = special::SpecialVocab::load(
                dir,
                false,
                &["prefix", "suffix", "middle", "eot"],
                None,
            )?;
            for (typ, id) in [("prefix", 32007), ("suffix", 32008), ("middle", 32009)] {
                sv.set_special_token(typ, id);
            }
            sv.set_special_token("eot", 32010);
            sv.write(&mut md);
        }
        // Small Granite models (and SmolLM, which shares their 49152 vocabulary size): the
        // script forces `add_bos_token = false` whatever the tokenizer says.
        if script_vocab == 49152 {
            md.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        }
    }
    // Gemma 2 and 3 (`conversion/gemma.py`): a SentencePiece vocabulary, then
    // `add_space_prefix = false`.
    if rules == VocabRules::Gemma && crate::input::exists(&spm_path) {
        md.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    }
    Ok(md)
}

fn md_len(md: &Metadata, key: &str) -> u64 {
    md.get(key).and_then(Value::array_len).unwrap_or(0) as u64
}

/// Largest vocabulary accepted from config.json: far above any real model (Gemma 3 has
/// 262144), low enough that a corrupt `vocab_size` cannot make smelt allocate gigabytes of
/// `[PAD]` tokens.
const MAX_VOCAB: u64 = 1 << 24;

fn check_vocab_size(path: &Path, n: u64) -> Result<u64> {
    if n > MAX_VOCAB {
        return Err(Error::format(
            path,
            format!("vocab_size {n} is implausible (more than {MAX_VOCAB})"),
        ));
    }
    Ok(n)
}

/// A JSON file of the folder, `None` when absent; an error when it is not a regular file or
/// a link out of the folder.
fn read_json(path: &Path) -> Result<Option<Json>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(bytes) = crate::input::read_in(dir, path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

/// Python's truth value of a JSON value, for the script's `if not x:` tests.
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
    }
}

/// The script's `does_token_look_special`: added tokens some models forget to mark special.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// User-defined tokens are stored pre-normalized: SentencePiece's `▁` back to a space.
fn unescape_spaces(token: &str) -> String {
    token.replace('\u{2581}', " ")
}
