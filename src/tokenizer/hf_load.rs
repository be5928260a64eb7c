//! `tokenizer.json` as transformers' `AutoTokenizer.from_pretrained` presents it to the
//! convert script (transformers 4.57.6, the version llama.cpp's requirements pin).
//!
//! The script never reads `tokenizer.json`'s vocabulary itself: it asks the loaded tokenizer.
//! On load, transformers changes the `tokenizers` object in ways that reach the GGUF:
//! - special tokens named in tokenizer_config.json (or special_tokens_map.json, or the class
//!   defaults) that are not added tokens yet are added, as special tokens: they become
//!   CONTROL, and a token the vocabulary lacks gets a new id;
//! - a ByteLevel pre-tokenizer's `add_prefix_space` is set to tokenizer_config's (default
//!   false), which changes the check-text ids and so `tokenizer.ggml.pre`;
//! - the Llama, GPT-NeoX and Gemma classes rebuild the post-processor from `add_bos_token` /
//!   `add_eos_token` (with their own defaults), which also changes the check-text ids.
//!
//! Other class-specific behavior (CodeLlama's infill tokens, `from_slow` rebuilds from a
//! SentencePiece model) is not reproduced.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value as Json};
use std::path::Path;
use tokenizers::{AddedToken, Tokenizer};

/// Special-token attributes in transformers' order (`SPECIAL_TOKENS_ATTRIBUTES`).
const ATTRS: &[&str] = &[
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A transformers fast-tokenizer class that rewrites the post-processor on load.
struct Class {
    add_bos: bool,
    add_eos: bool,
    /// Special tokens the class's `__init__` defaults to.
    defaults: &'static [(&'static str, &'static str)],
}

const LLAMA: Class = Class {
    add_bos: true,
    add_eos: false,
    defaults: &[
        ("unk_token", "<unk>"),
        ("bos_token", "<s>"),
        ("eos_token", "</s>"),
    ],
};
const GPT_NEOX: Class = Class {
    add_bos: false,
    add_eos: false,
    defaults: &[
        ("unk_token", "<|endoftext|>"),
        ("bos_token", "<|endoftext|>"),
        ("eos_token", "<|endoftext|>"),
    ],
};
const GEMMA: Class = Class {
    add_bos: true,
    add_eos: false,
    defaults: &[
        ("unk_token", "<unk>"),
        ("bos_token", "<bos>"),
        ("eos_token", "<eos>"),
        ("pad_token", "<pad>"),
    ],
};

/// The class AutoTokenizer picks: tokenizer_config's `tokenizer_class`, else the one mapped
/// to config.json's `model_type`.
fn class(tc: &Map<String, Json>, model_type: Option<&str>) -> Option<&'static Class> {
    let name = match tc.get("tokenizer_class").and_then(Json::as_str) {
        Some(n) => n.strip_suffix("Fast").unwrap_or(n),
        None => match model_type? {
            "llama" | "mistral" | "mixtral" => "LlamaTokenizer",
            "gpt_neox" => "GPTNeoXTokenizer",
            "gemma" | "gemma2" => "GemmaTokenizer",
            _ => return None,
        },
    };
    match name {
        "LlamaTokenizer" => Some(&LLAMA),
        "GPTNeoXTokenizer" => Some(&GPT_NEOX),
        "GemmaTokenizer" => Some(&GEMMA),
        _ => None,
    }
}

/// An `AddedToken` dict as transformers builds it (`AddedToken(**dict)`): flags it lacks
/// take the `tokenizers` defaults (not special; normalized unless special).
fn token_dict(v: &Json) -> Option<AddedToken> {
    let o = v.as_object()?;
    let content = o.get("content")?.as_str()?;
    let flag = |k: &str| o.get(k).and_then(Json::as_bool);
    let special = flag("special").unwrap_or(false);
    let mut t = AddedToken::from(content.to_string(), special);
    t.single_word = flag("single_word").unwrap_or(false);
    t.lstrip = flag("lstrip").unwrap_or(false);
    t.rstrip = flag("rstrip").unwrap_or(false);
    t.normalized = flag("normalized").unwrap_or(!special);
    Some(t)
}

/// A special-token attribute's value: a plain string or an `AddedToken` dict. transformers
/// treats them differently when deciding what to add.
enum Spec {
    Str(String),
    Tok(AddedToken),
}

impl Spec {
    fn parse(v: &Json) -> Option<Spec> {
        match v {
            Json::String(s) if !s.is_empty() => Some(Spec::Str(s.clone())),
            Json::Object(_) => token_dict(v).map(Spec::Tok),
            _ => None,
        }
    }

    fn content(&self) -> &str {
        match self {
            Spec::Str(s) => s,
            Spec::Tok(t) => &t.content,
        }
    }
}

pub(super) struct Loaded {
    pub tok: Tokenizer,
    /// transformers' `clean_up_tokenization_spaces` for decode.
    pub clean_up: bool,
}

/// Load `tokenizer.json` (already parsed as `json`) as transformers would.
pub(super) fn load(
    path: &Path,
    dir: &Path,
    mut json: Json,
    tokenizer_config: Option<&Json>,
    model_type: Option<&str>,
) -> Result<Loaded> {
    let empty = Map::new();
    let tc = tokenizer_config.and_then(Json::as_object).unwrap_or(&empty);
    let class = class(tc, model_type);

    // The ByteLevel pre-tokenizer's add_prefix_space follows tokenizer_config's (a null there
    // makes transformers' rebuild fail, which it ignores).
    let want_prefix = match tc.get("add_prefix_space") {
        None => Some(false),
        Some(Json::Bool(b)) => Some(*b),
        Some(_) => None,
    };
    if let (Some(want), Some(pre)) = (
        want_prefix,
        json.get_mut("pre_tokenizer").and_then(Json::as_object_mut),
    ) {
        if pre.get("type").and_then(Json::as_str) == Some("ByteLevel")
            && pre
                .get("add_prefix_space")
                .is_some_and(|v| *v != Json::Bool(want))
        {
            pre.insert("add_prefix_space".into(), Json::Bool(want));
        }
    }

    let mut tok: Tokenizer = json
        .to_string()
        .parse()
        .map_err(|e| Error::format(path, format!("cannot load this tokenizer: {e}")))?;

    // Special-token attributes: tokenizer_config's, else the class defaults; without an
    // `added_tokens_decoder`, special_tokens_map.json's override them (transformers' legacy
    // path).
    let mut specials: Map<String, Json> = Map::new();
    for (k, v) in class.map(|c| c.defaults).unwrap_or(&[]) {
        specials.insert(k.to_string(), json!(v));
    }
    for k in ATTRS.iter().chain(&["additional_special_tokens"]) {
        if let Some(v) = tc.get(*k) {
            specials.insert(k.to_string(), v.clone());
        }
    }
    if !tc.contains_key("added_tokens_decoder") {
        let stm = dir.join("special_tokens_map.json");
        if let Some(Json::Object(m)) = super::read_json(&stm)? {
            for (k, v) in m {
                specials.insert(k, v);
            }
        }
    }
    let mut extended: Vec<Spec> = ATTRS
        .iter()
        .filter_map(|k| specials.get(*k).and_then(Spec::parse))
        .collect();
    if let Some(list) = specials
        .get("additional_special_tokens")
        .and_then(Json::as_array)
    {
        extended.extend(list.iter().filter_map(Spec::parse));
    }
    let mut seen: Vec<String> = Vec::new();
    extended.retain(|t| {
        let new = !seen.iter().any(|s| s == t.content());
        seen.push(t.content().to_string());
        new
    });
    let special_names = seen;

    // tokenizer_config's added_tokens_decoder entries that differ from the added tokens (by
    // content or flags), then the special tokens still missing, all through `add_tokens` as
    // transformers does. A plain-string special token is skipped when its text is already
    // added; an AddedToken one is compared as a whole (Python compares it with strings and
    // never finds it), and `add_tokens` then only updates its flags.
    let existing: Vec<AddedToken> = tok.get_added_tokens_decoder().into_values().collect();
    let mut to_add: Vec<AddedToken> = Vec::new();
    if let Some(dec) = tc.get("added_tokens_decoder").and_then(Json::as_object) {
        let mut entries: Vec<(u64, &Json)> = dec
            .iter()
            .filter_map(|(k, v)| k.parse().ok().map(|k| (k, v)))
            .collect();
        entries.sort_by_key(|(k, _)| *k);
        for t in entries.into_iter().filter_map(|(_, v)| token_dict(v)) {
            if !existing.contains(&t) {
                to_add.push(t);
            }
        }
    }
    let known: Vec<String> = existing
        .iter()
        .chain(&to_add)
        .map(|t| t.content.clone())
        .collect();
    for spec in extended {
        match spec {
            Spec::Str(s) => {
                if !known.contains(&s) {
                    to_add.push(AddedToken::from(s, true));
                }
            }
            Spec::Tok(t) => {
                if !to_add.contains(&t) {
                    to_add.push(t);
                }
            }
        }
    }
    for t in &mut to_add {
        t.special = t.special || special_names.contains(&t.content);
    }
    if !to_add.is_empty() {
        tok.add_tokens(&to_add);
    }

    if let Some(c) = class {
        let flag = |k: &str, d: bool| tc.get(k).and_then(Json::as_bool).unwrap_or(d);
        let (add_bos, add_eos) = (
            flag("add_bos_token", c.add_bos),
            flag("add_eos_token", c.add_eos),
        );
        let name = |k: &str| {
            specials
                .get(k)
                .and_then(Spec::parse)
                .map(|t| t.content().to_string())
        };
        let (bos, eos) = (name("bos_token"), name("eos_token"));
        let piece = |t: &Option<String>, k: &str, seq: u32| -> Result<Json> {
            let t = t.as_ref().ok_or_else(|| {
                Error::format(path, format!("add_{k}_token = true but {k}_token = None"))
            })?;
            Ok(json!({"SpecialToken": {"id": t, "type_id": seq}}))
        };
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut special_tokens = Map::new();
        for (seq, out) in [(0u32, &mut single), (1, &mut pair)] {
            if add_bos {
                out.push(piece(&bos, "bos", seq)?);
            }
            out.push(json!({"Sequence": {"id": if seq == 0 { "A" } else { "B" }, "type_id": seq}}));
            if add_eos {
                out.push(piece(&eos, "eos", seq)?);
            }
        }
        let pair: Vec<Json> = single.iter().cloned().chain(pair).collect();
        for (on, t) in [(add_bos, &bos), (add_eos, &eos)] {
            if let (true, Some(t)) = (on, t) {
                // An id transformers cannot find is its unk id; here the token is always
                // known (it was added above if missing).
                let id = tok.token_to_id(t).unwrap_or(0);
                special_tokens.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        }
        let pp = json!({"type": "TemplateProcessing", "single": single, "pair": pair,
                        "special_tokens": special_tokens});
        let pp: tokenizers::processors::PostProcessorWrapper = serde_json::from_value(pp)
            .map_err(|e| Error::format(path, format!("cannot build the post-processor: {e}")))?;
        tok.with_post_processor(Some(pp));
    }

    // Llama and Gemma default to no clean-up; so does the base class in this version.
    let clean_up = tc
        .get("clean_up_tokenization_spaces")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    Ok(Loaded { tok, clean_up })
}
