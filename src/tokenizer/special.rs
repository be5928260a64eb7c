//! Special tokens, `add_*_token` flags, merges, chat template and normalizer flags: gguf-py's
//! `SpecialVocab`, with its sources and precedence.
//!
//! - `tokenizer.json`: merges (either format), the normalizer, and the post-processor, which
//!   says whether BOS/EOS/SEP are added (and can name BOS/EOS itself).
//! - `tokenizer_config.json`: `add_*_token`, the `*_token` strings (looked up in
//!   `tokenizer.json`'s added tokens to get ids), the chat template.
//! - `chat_template.jinja` (+ `additional_chat_templates/*.jinja`) or `chat_template.json`
//!   when `tokenizer_config.json` has no `chat_template`.
//! - `config.json`: `*_token_id`, only for types still unset (the first source wins).
//! - `merges.txt` when `tokenizer.json` has no merges.
//!
//! `generation_config.json` is not read: the script takes only sampling settings from it.

use super::{read_json, truthy};
use crate::error::{Error, Result};
use crate::gguf::{Metadata, Value, ValueType};
use serde_json::{Map, Value as Json};
use std::path::Path;

pub(super) const DEFAULT_TYPES: &[&str] = &["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

/// GGUF key of a special token id; types without one (cls, prefix, ...) are not written.
fn id_key(typ: &str) -> Option<&'static str> {
    Some(match typ {
        "bos" => "tokenizer.ggml.bos_token_id",
        "eos" => "tokenizer.ggml.eos_token_id",
        "unk" => "tokenizer.ggml.unknown_token_id",
        "sep" => "tokenizer.ggml.seperator_token_id",
        "pad" => "tokenizer.ggml.padding_token_id",
        "mask" => "tokenizer.ggml.mask_token_id",
        "eot" => "tokenizer.ggml.eot_token_id",
        "eom" => "tokenizer.ggml.eom_token_id",
        _ => return None,
    })
}

fn add_key(typ: &str) -> Option<&'static str> {
    Some(match typ {
        "bos" => "tokenizer.ggml.add_bos_token",
        "eos" => "tokenizer.ggml.add_eos_token",
        "sep" => "tokenizer.ggml.add_sep_token",
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum ChatTemplate {
    One(String),
    /// `[{name, template}, ...]`; `default` becomes `tokenizer.chat_template`.
    Named(Vec<(String, String)>),
}

#[derive(Debug, Default)]
pub(super) struct SpecialVocab {
    types: Vec<String>,
    n_vocab: Option<u64>,
    pub merges: Vec<String>,
    /// In the order found: the GGUF keys follow it.
    pub ids: Vec<(String, u32)>,
    pub add: Vec<(String, bool)>,
    pub chat_template: Option<ChatTemplate>,
    pub lowercase: Option<bool>,
    pub strip_accents: Option<bool>,
}

impl SpecialVocab {
    pub fn load(
        dir: &Path,
        load_merges: bool,
        types: &[&str],
        n_vocab: Option<u64>,
    ) -> Result<SpecialVocab> {
        let mut sv = SpecialVocab {
            types: types.iter().map(|t| t.to_string()).collect(),
            n_vocab,
            ..Default::default()
        };
        sv.read_tokenizer_files(dir, load_merges)?;
        sv.read_config(dir)?;
        if load_merges && sv.merges.is_empty() {
            sv.merges = merges_txt(&dir.join("merges.txt"))?;
        }
        Ok(sv)
    }

    /// Append (or update in place) the keys, in `SpecialVocab.add_to_gguf`'s order.
    pub fn write(&self, md: &mut Metadata) {
        if !self.merges.is_empty() {
            md.set(
                "tokenizer.ggml.merges",
                Value::Array(
                    ValueType::String,
                    self.merges.iter().cloned().map(Value::String).collect(),
                ),
            );
        }
        for (typ, id) in &self.ids {
            if let Some(k) = id_key(typ) {
                md.set(k, Value::U32(*id));
            }
        }
        for (typ, b) in &self.add {
            if let Some(k) = add_key(typ) {
                md.set(k, Value::Bool(*b));
            }
        }
        match &self.chat_template {
            None => {}
            Some(ChatTemplate::One(t)) => {
                md.set("tokenizer.chat_template", Value::String(t.clone()))
            }
            Some(ChatTemplate::Named(list)) => {
                // gguf-py's add_chat_template: names reduced to [A-Za-z0-9_], each non-default
                // one as `tokenizer.chat_template.NAME`, their list, then the default.
                let mut names: Vec<String> = Vec::new();
                let mut default = None;
                for (name, template) in list {
                    let name: String = name
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    if name.is_empty() {
                        continue;
                    }
                    if name == "default" {
                        default = Some(template.clone());
                    } else {
                        md.set(
                            format!("tokenizer.chat_template.{name}"),
                            Value::String(template.clone()),
                        );
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                if !names.is_empty() {
                    md.set(
                        "tokenizer.chat_templates",
                        Value::Array(
                            ValueType::String,
                            names.into_iter().map(Value::String).collect(),
                        ),
                    );
                }
                if let Some(t) = default {
                    md.set("tokenizer.chat_template", Value::String(t));
                }
            }
        }
        if let Some(b) = self.lowercase {
            md.set("tokenizer.ggml.normalizer.lowercase", Value::Bool(b));
        }
        if let Some(b) = self.strip_accents {
            md.set("tokenizer.ggml.normalizer.strip_accents", Value::Bool(b));
        }
    }

    /// `_set_special_token`: the first id found for a type wins; ids past the vocabulary are
    /// skipped.
    pub fn set_special_token(&mut self, typ: &str, id: u64) {
        if self.n_vocab.is_some_and(|n| id >= n) || self.ids.iter().any(|(t, _)| t == typ) {
            return;
        }
        if let Ok(id) = u32::try_from(id) {
            self.ids.push((typ.to_string(), id));
        }
    }

    fn set_special_json(&mut self, path: &Path, typ: &str, id: Option<&Json>) -> Result<()> {
        match id {
            Some(Json::Number(n)) => {
                if let Some(id) = n.as_u64() {
                    self.set_special_token(typ, id);
                } else if n.as_i64().is_some() {
                    return Err(Error::format(
                        path,
                        format!("invalid value for special token type {typ}: {n}"),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn add_default(&mut self, typ: &str, value: bool) {
        if !self.add.iter().any(|(t, _)| t == typ) {
            self.add.push((typ.to_string(), value));
        }
    }

    fn add_set(&mut self, typ: &str, value: bool) {
        match self.add.iter_mut().find(|(t, _)| t == typ) {
            Some(slot) => slot.1 = value,
            None => self.add.push((typ.to_string(), value)),
        }
    }

    fn has_type(&self, typ: &str) -> bool {
        self.types.iter().any(|t| t == typ)
    }

    fn read_tokenizer_files(&mut self, dir: &Path, load_merges: bool) -> Result<()> {
        let tj_path = dir.join("tokenizer.json");
        let tokenizer = read_json(&tj_path)?;
        let mut added_tokens: Vec<(String, Option<u64>)> = Vec::new();
        if let Some(tj) = &tokenizer {
            if load_merges {
                self.merges = json_merges(&tj_path, tj)?;
            }
            if let Some(n) = tj.get("normalizer").filter(|n| truthy(Some(n))) {
                self.parse_normalizer(n);
            }
            if let Some(list) = tj.get("added_tokens").and_then(Json::as_array) {
                for t in list {
                    if let Some(c) = t.get("content").and_then(Json::as_str) {
                        added_tokens.push((c.to_string(), t.get("id").and_then(Json::as_u64)));
                    }
                }
            }
        }
        let tc_path = dir.join("tokenizer_config.json");
        let mut tc: Map<String, Json> = match read_json(&tc_path)? {
            Some(Json::Object(m)) => m,
            Some(_) => return Err(Error::format(&tc_path, "not a JSON object")),
            None => Map::new(),
        };
        // `tokenizer_config or {}` / `if tokenizer_config:`: an empty object counts as none.
        let has_tc = !tc.is_empty();
        if let Some(tj) = tokenizer.as_ref().filter(|t| truthy(Some(t))) {
            self.post_processor(tj, &mut tc, has_tc);
        }
        if !has_tc {
            return Ok(());
        }

        self.chat_template = chat_template(dir, &tc)?;
        let types = self.types.clone();
        for typ in &types {
            if let Some(Json::Bool(b)) = tc.get(&format!("add_{typ}_token")) {
                // The post-processor's answer wins over tokenizer_config's.
                self.add_default(typ, *b);
            }
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Object(o)) => match o.get("content") {
                    Some(Json::String(s)) => s.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            // The first added token with that text, as the script's `next(...)`.
            let id = added_tokens
                .iter()
                .find(|(c, _)| *c == content)
                .and_then(|(_, id)| *id);
            if let Some(id) = id {
                self.set_special_token(typ, id);
            }
        }
        Ok(())
    }

    /// What the post-processor says about BOS/EOS/SEP (the script's "crude parsing": simple
    /// templates only). `tc` is tokenizer_config.json, which the script amends as it goes.
    fn post_processor(&mut self, tj: &Json, tc: &mut Map<String, Json>, has_tc: bool) {
        let s = |v: Option<&Json>| v.cloned().unwrap_or(Json::Null);
        let mut special_bos = s(tc.get("bos_token"));
        let mut special_cls = s(tc.get("cls_token"));
        let mut special_eos = s(tc.get("eos_token"));
        let mut special_sep = s(tc.get("sep_token"));
        if !truthy(Some(&special_bos)) && truthy(Some(&special_cls)) && has_tc {
            special_bos = special_cls.clone();
            tc.insert("bos_token".into(), special_bos.clone());
        }
        if !truthy(Some(&special_eos)) && truthy(Some(&special_sep)) && has_tc {
            special_eos = special_sep.clone();
            tc.insert("eos_token".into(), special_eos.clone());
        }
        let Some(pp) = tj.get("post_processor").filter(|p| truthy(Some(p))) else {
            return;
        };
        let processors: Vec<&Json> = match pp.get("processors").and_then(Json::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![pp],
        };
        let tok_id = |v: Option<&Json>| -> Option<String> {
            v.and_then(|e| e.pointer("/SpecialToken/id"))
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        for p in processors {
            match p.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    self.add_default("bos", false);
                    self.add_default("eos", false);
                }
                Some("RobertaProcessing") => {
                    self.add_set("bos", true);
                    self.add_set("eos", true);
                    self.add_set("sep", true);
                    if !truthy(Some(&special_cls)) && has_tc {
                        special_cls = p.pointer("/cls/0").cloned().unwrap_or(special_bos.clone());
                        tc.insert("cls_token".into(), special_cls.clone());
                    }
                    if !truthy(Some(&special_sep)) && has_tc {
                        special_sep = p.pointer("/sep/0").cloned().unwrap_or(special_eos.clone());
                        tc.insert("sep_token".into(), special_sep.clone());
                    }
                }
                Some("TemplateProcessing") => {
                    let empty = Vec::new();
                    let single = p.get("single").and_then(Json::as_array).unwrap_or(&empty);
                    let pair = p.get("pair").and_then(Json::as_array).unwrap_or(&empty);
                    let mut first: Option<String> = None;
                    let mut last: Option<String> = None;
                    if single.len() > 1 {
                        first = tok_id(single.first());
                        if let Some(f) = &first {
                            let fj = Json::String(f.clone());
                            if !has_tc {
                                special_bos = fj.clone();
                            } else if fj != special_bos && fj != special_cls {
                                if !truthy(Some(&special_bos)) {
                                    special_bos = fj.clone();
                                    tc.insert("bos_token".into(), fj.clone());
                                }
                                if !truthy(Some(&special_cls)) {
                                    special_cls = fj.clone();
                                    tc.insert("cls_token".into(), fj.clone());
                                }
                            }
                            self.add_set("bos", fj == special_bos || fj == special_cls);
                        }
                        last = tok_id(single.last());
                        if let Some(l) = &last {
                            let lj = Json::String(l.clone());
                            if !has_tc {
                                special_eos = lj.clone();
                            } else if lj != special_eos {
                                // The template's last token replaces EOS; the old EOS becomes
                                // EOT (or EOM) so it is not lost.
                                if !self.has_type("eot") {
                                    self.types.push("eot".into());
                                    tc.insert("eot_token".into(), special_eos.clone());
                                } else if !self.has_type("eom") {
                                    self.types.push("eom".into());
                                    tc.insert("eom_token".into(), special_eos.clone());
                                }
                                special_eos = lj.clone();
                                tc.insert("eos_token".into(), lj.clone());
                            }
                            self.add_set("eos", lj == special_eos);
                        }
                    }
                    if pair.is_empty() {
                        continue;
                    }
                    let start = usize::from(
                        first.is_some() && tok_id(pair.first()).as_ref() == first.as_ref(),
                    );
                    let stop = if last.is_some() && tok_id(pair.last()).as_ref() == last.as_ref() {
                        pair.len().saturating_sub(1)
                    } else {
                        pair.len()
                    };
                    if start >= stop {
                        continue;
                    }
                    let mid = &pair[start..stop];
                    let seq = |e: &Json| {
                        e.pointer("/Sequence/id")
                            .and_then(Json::as_str)
                            .map(str::to_string)
                    };
                    let (a, b) = (seq(&mid[0]), seq(&mid[mid.len() - 1]));
                    if a.as_deref() != Some("A") || b.as_deref() != Some("B") || mid.len() < 3 {
                        continue;
                    }
                    let mid = &mid[1..mid.len() - 1];
                    let is_sep = |id: &str| {
                        let j = Json::String(id.to_string());
                        j == special_sep || j == special_eos
                    };
                    let mut add_sep = false;
                    if let Some(e) = tok_id(mid.first()) {
                        if is_sep(&e) && last.is_none() {
                            add_sep = true;
                        }
                    }
                    if mid.len() == 2 {
                        if let Some(e) = tok_id(mid.get(1)) {
                            if is_sep(&e) {
                                add_sep = true;
                            }
                        }
                    }
                    self.add_set("sep", add_sep);
                    if add_sep && !truthy(Some(&special_sep)) && has_tc {
                        tc.insert("sep_token".into(), special_eos.clone());
                    }
                }
                _ => {}
            }
        }
    }

    fn parse_normalizer(&mut self, n: &Json) {
        match n.get("type").and_then(Json::as_str) {
            Some("Lowercase") => self.lowercase = Some(true),
            Some("StripAccents") => self.strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = n.get("lowercase") {
                    self.lowercase = v.as_bool();
                }
                if let Some(v) = n.get("strip_accents") {
                    self.strip_accents = v.as_bool();
                }
            }
            Some("Sequence") => {
                for m in n
                    .get("normalizers")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.parse_normalizer(m);
                }
            }
            _ => {}
        }
    }

    fn read_config(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("config.json");
        let Some(config) = read_json(&path)? else {
            return Ok(());
        };
        let types = self.types.clone();
        for typ in &types {
            let key = format!("{typ}_token_id");
            let id = match config.get(&key) {
                Some(v) if !v.is_null() => Some(v),
                _ => config.get("text_config").and_then(|t| t.get(&key)),
            };
            self.set_special_json(&path, typ, id)?;
        }
        Ok(())
    }
}

/// `model.merges` of tokenizer.json: `"a b"` strings as they are; `[a, b]` pairs (since
/// transformers 4.45, which allows spaces inside a part) joined with a space after mapping
/// each space inside a part to U+0120, the byte-level alphabet's space.
pub(super) fn json_merges(path: &Path, tj: &Json) -> Result<Vec<String>> {
    let Some(list) = tj.pointer("/model/merges").and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    let Some(first) = list.first() else {
        return Ok(Vec::new());
    };
    let bad = |i: usize| {
        Error::format(
            path,
            format!("model.merges[{i}] is not like the first entry"),
        )
    };
    if first.is_string() {
        list.iter()
            .enumerate()
            .map(|(i, m)| m.as_str().map(str::to_string).ok_or_else(|| bad(i)))
            .collect()
    } else if first
        .as_array()
        .is_some_and(|p| p.len() == 2 && p[0].is_string())
    {
        let enc = |s: &str| s.replace(' ', "\u{120}");
        list.iter()
            .enumerate()
            .map(|(i, m)| match m.as_array().map(Vec::as_slice) {
                Some([Json::String(a), Json::String(b)]) => Ok(format!("{} {}", enc(a), enc(b))),
                _ => Err(bad(i)),
            })
            .collect()
    } else {
        Err(Error::format(path, "unknown tokenizer merges format"))
    }
}

/// `merges.txt`: one `a b` pair a line, an optional `#` header line, malformed lines skipped.
fn merges_txt(path: &Path) -> Result<Vec<String>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(text) = crate::input::read_in_to_string(dir, path)? else {
        return Ok(Vec::new());
    };
    let mut lines = text.lines().peekable();
    if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
        lines.next();
    }
    Ok(lines
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            match parts.as_slice() {
                [a, b] => Some(format!("{a} {b}")),
                _ => None,
            }
        })
        .collect())
}

/// The chat template: tokenizer_config.json's `chat_template` key when present (even null),
/// else `chat_template.jinja` (a named list with `additional_chat_templates/*.jinja`), else
/// `chat_template.json`'s.
fn chat_template(dir: &Path, tc: &Map<String, Json>) -> Result<Option<ChatTemplate>> {
    let value = match tc.get("chat_template") {
        Some(v) => v.clone(),
        None => {
            let jinja = dir.join("chat_template.jinja");
            let json = dir.join("chat_template.json");
            if let Some(default) = crate::input::read_in_to_string(dir, &jinja)? {
                let extra_dir = dir.join("additional_chat_templates");
                let mut extra: Vec<std::path::PathBuf> = match std::fs::read_dir(&extra_dir) {
                    Ok(rd) => rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                if extra.is_empty() {
                    Json::String(default)
                } else {
                    // The script takes glob order; sorted here so output never depends on it.
                    extra.sort();
                    let mut list =
                        vec![serde_json::json!({"name": "default", "template": default})];
                    for p in extra {
                        let t = crate::input::read_in_to_string(dir, &p)?
                            .ok_or_else(|| Error::format(&p, "no such file"))?;
                        let name = p
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        list.push(serde_json::json!({"name": name, "template": t}));
                    }
                    Json::Array(list)
                }
            } else if let Some(j) = read_json(&json)? {
                j.get("chat_template").cloned().unwrap_or(Json::Null)
            } else {
                Json::Null
            }
        }
    };
    Ok(match value {
        Json::String(s) => Some(ChatTemplate::One(s)),
        Json::Array(list) => Some(ChatTemplate::Named(
            list.iter()
                .filter_map(|c| {
                    let name = c.get("name").and_then(Json::as_str).unwrap_or("");
                    let t = c.get("template").and_then(Json::as_str)?;
                    Some((name.to_string(), t.to_string()))
                })
                .collect(),
        )),
        // The script ignores any other type (with a warning).
        _ => None,
    })
}
