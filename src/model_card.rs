//! The `general.*` metadata llama.cpp's `convert_hf_to_gguf.py` derives for a Hugging Face
//! folder (gguf-py's `Metadata.load` and `size_label`): name, basename, finetune, version and
//! size label parsed from the model id, licence, tags, languages, base models and datasets
//! from the model card's YAML front matter, sampling defaults from `generation_config.json`,
//! and the size label from the parameter count when the name gives none.
//!
//! The heuristics are gguf-py's, rule for rule, so a llama.cpp user sees the same
//! `general.name` and `general.size_label` whichever tool converted the folder.

use std::path::Path;

use regex::Regex;
use serde_json::Value as Json;

use crate::gguf::{Metadata, Value};

/// Parameter counts as gguf-py's `GGUFWriter.get_total_parameter_count` makes them from the
/// written tensors: experts are counted once per expert in `expert`, everything else in
/// `shared`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ParamCount {
    pub total: u64,
    pub shared: u64,
    pub expert: u64,
    pub expert_count: u64,
}

impl ParamCount {
    /// Count the tensors `(name, ggml shape)` of a model.
    pub fn of<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [u64])>) -> Self {
        let mut c = ParamCount::default();
        let (mut expert_sum, mut n_expert_tensors) = (0u64, 0u64);
        for (name, shape) in tensors {
            let size: u64 = shape.iter().product();
            if name.contains("_exps.") && shape.len() >= 3 {
                // numpy's shape[-3] (shape[-2] for a bias) is ggml's dimension 2 (1).
                let experts = if name.contains(".bias") {
                    shape[1]
                } else {
                    shape[2]
                };
                c.expert += size.checked_div(experts).unwrap_or(0);
                expert_sum += experts;
                n_expert_tensors += 1;
            } else {
                c.shared += size;
            }
            c.total += size;
        }
        c.expert_count = expert_sum.checked_div(n_expert_tensors).unwrap_or(0);
        c
    }

    /// gguf-py's `size_label`: `135M`, `7.2B`, or `8x7.2B` for a mixture of experts.
    pub fn size_label(&self) -> String {
        if self.expert_count > 0 {
            let each = rounded_notation(self.shared + self.expert, 2);
            format!("{}x{each}", self.expert_count)
        } else {
            rounded_notation(self.total, 2)
        }
    }
}

/// gguf-py's `model_weight_count_rounded_notation`: at least `min_digits` significant digits
/// before the suffix (`0.50M`, `1.5B`, `135M`).
fn rounded_notation(count: u64, min_digits: usize) -> String {
    let n = count as f64;
    // Multiplied by the reciprocal, as gguf-py does, so the float agrees to the last bit.
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let whole = format!("{}", scaled.round_ties_even() as u64);
    let digits = whole.trim_start_matches('0').len();
    let fix = min_digits.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// The parts of a model id (`org/Name-7B-Instruct-v0.2`), as gguf-py's
/// `get_model_id_components` finds them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelId {
    pub full_name: Option<String>,
    pub org: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Basename,
    SizeLabel,
    Finetune,
    Version,
    Type,
}

struct Patterns {
    version: Regex,
    quant_type: Regex,
    size: Regex,
    finetune: Regex,
    title_exempt: Regex,
    hub_url: Regex,
}

fn patterns() -> &'static Patterns {
    static P: std::sync::OnceLock<Patterns> = std::sync::OnceLock::new();
    P.get_or_init(|| Patterns {
        version: Regex::new(r"(?i)^(?:v|iter)?\d+(?:[.]\d+)*$").unwrap(),
        quant_type: Regex::new(r"(?i)^(?:i?q\d(?:_\w)*|b?fp?(?:16|32))$").unwrap(),
        size: Regex::new(
            r"(?i)^(?:(?:[A]|\d+[x])?\d+(?:[._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)$",
        )
        .unwrap(),
        finetune: Regex::new(r"(?i)^(?:chat|instruct|vision|lora)$").unwrap(),
        title_exempt: Regex::new(r"^(?:v\d+(?:\.\d+)*|\d.*)$").unwrap(),
        hub_url: Regex::new(r"^https?://huggingface.co/([^/]+/[^/]+)$").unwrap(),
    })
}

/// Python's `str.isdecimal` for one character of a model id.
fn is_decimal(c: char) -> bool {
    c.is_ascii_digit()
}

/// Split a model id into its named parts; `total_params` tells a size label from a context
/// length (`Phi-3-mini-4k` is not a 4000-parameter model).
pub fn model_id_components(model_id: &str, total_params: u64) -> ModelId {
    if model_id.contains(' ') {
        // A sentence, not a hub id: the name as it is.
        return ModelId {
            full_name: Some(model_id.to_string()),
            ..ModelId::default()
        };
    }
    let (mut org, full) = match model_id.split_once('/') {
        Some((o, n)) => (Some(o.to_string()), n.to_string()),
        None => (None, model_id.to_string()),
    };
    if org.as_deref().is_some_and(|o| o.starts_with('.')) {
        org = None;
    }
    let p = patterns();
    let mut parts: Vec<String> = full
        .split('-')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mut kinds: Vec<Vec<Part>> = vec![Vec::new(); parts.len()];
    let add = |k: &mut Vec<Part>, p: Part| {
        if !k.contains(&p) {
            k.push(p)
        }
    };
    for i in 0..parts.len() {
        let part = parts[i].clone();
        if p.version.is_match(&part) {
            add(&mut kinds[i], Part::Version);
        } else if p.quant_type.is_match(&part) {
            add(&mut kinds[i], Part::Type);
            parts[i] = part.to_uppercase();
        } else if i > 0 && p.size.is_match(&part) {
            let mut s: Vec<char> = part.replace('_', ".").chars().collect();
            // bloom-7b1 says 7.1B.
            if s.last().copied().is_some_and(is_decimal) {
                let n = s.len();
                let (a, b) = (s[n - 2], s[n - 1]);
                s.truncate(n - 2);
                s.extend(['.', b, a]);
            }
            let n = s.len();
            if n > 1 && is_decimal(s[n - 2]) && "kmbt".contains(s[n - 1]) {
                s[n - 1] = s[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 {
                let unit = s[n - 1];
                let number: String = s[..n - 1].iter().collect();
                // Python's float() of the digits; a label like 8x7B is used as it is.
                if let Ok(v) = number.parse::<f64>() {
                    let power = " KMBT".find(unit).map_or(-1, |k| k as i32);
                    let label = v * 1000f64.powi(power);
                    let total = total_params as f64;
                    if (label - total).abs() > (7 * total_params / 8) as f64 {
                        // Far from the model's size: a context length, lower-cased.
                        add(&mut kinds[i], Part::Finetune);
                        s[n - 1] = s[n - 1].to_ascii_lowercase();
                    }
                }
            }
            if kinds[i].is_empty() {
                add(&mut kinds[i], Part::SizeLabel);
            }
            parts[i] = s.into_iter().collect();
        } else if i > 0 && p.finetune.is_match(&part) {
            add(&mut kinds[i], Part::Finetune);
        }
    }
    // Word sizes (`mini`) give way to a numeric one.
    let numeric_size = parts
        .iter()
        .zip(&kinds)
        .any(|(n, k)| k.contains(&Part::SizeLabel) && n.chars().any(is_decimal));
    if numeric_size {
        for (n, k) in parts.iter().zip(kinds.iter_mut()) {
            if k.contains(&Part::SizeLabel) && n.chars().all(char::is_alphabetic) {
                k.retain(|&x| x != Part::SizeLabel);
            }
        }
    }
    let mut at_start = true;
    for (part, k) in parts.iter().zip(kinds.iter_mut()) {
        let starts_alpha = part.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((k.is_empty() && starts_alpha) || k.contains(&Part::Version)) {
            add(k, Part::Basename);
        } else {
            at_start = false;
            if k.is_empty() {
                add(k, Part::Finetune);
            }
        }
    }
    // A trailing version is not part of the basename.
    for k in kinds.iter_mut().rev() {
        if k.contains(&Part::Basename) && k.len() > 1 {
            k.retain(|&x| x != Part::Basename);
        } else {
            break;
        }
    }
    let join = |want: Part, unless: Option<Part>, dedup: bool| -> Option<String> {
        let mut picked: Vec<&str> = Vec::new();
        for (n, k) in parts.iter().zip(&kinds) {
            if k.contains(&want) && unless.is_none_or(|u| !k.contains(&u)) {
                if dedup && picked.contains(&n.as_str()) {
                    continue;
                }
                picked.push(n);
            }
        }
        (!picked.is_empty()).then(|| picked.join("-"))
    };
    let mut basename = join(Part::Basename, None, false);
    let size_label = join(Part::SizeLabel, None, true);
    let finetune = join(Part::Finetune, None, false);
    let version = join(Part::Version, Some(Part::Basename), false);
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        // Too ambiguous to name a basename.
        basename = None;
    }
    ModelId {
        full_name: Some(full),
        org,
        basename,
        finetune,
        version,
        size_label,
    }
}

/// Python's `str.title()`: each run of letters capitalized, the rest lower-cased.
fn python_title(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut prev_cased = false;
    for c in word.chars() {
        let cased = c.is_lowercase() || c.is_uppercase();
        if cased && !prev_cased {
            out.extend(c.to_uppercase());
        } else if cased {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
        prev_cased = cased;
    }
    out
}

/// gguf-py's `id_to_title`: `smollm2-135m-instruct` → `Smollm2 135m Instruct`; words with
/// capitals, versions and numbers stay as they are.
pub fn id_to_title(id: &str) -> String {
    let p = patterns();
    id.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase);
            if lower && !p.title_exempt.is_match(w) {
                python_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One entry of `general.base_model.N.*` or `general.dataset.N.*`.
type Entry = Vec<(&'static str, String)>;

const ENTRY_FIELDS: [&str; 9] = [
    "name",
    "author",
    "version",
    "organization",
    "description",
    "url",
    "doi",
    "uuid",
    "repo_url",
];

#[derive(Default)]
struct General {
    name: Option<String>,
    author: Option<String>,
    version: Option<String>,
    organization: Option<String>,
    finetune: Option<String>,
    basename: Option<String>,
    description: Option<String>,
    quantized_by: Option<String>,
    size_label: Option<String>,
    license: Option<String>,
    license_name: Option<String>,
    license_link: Option<String>,
    source_url: Option<String>,
    source_doi: Option<String>,
    source_uuid: Option<String>,
    source_repo_url: Option<String>,
    base_models: Option<Vec<Entry>>,
    datasets: Option<Vec<Entry>>,
    tags: Option<Vec<String>>,
    languages: Option<Vec<String>>,
}

/// A scalar of the card as the string gguf-py would write (strings as they are; numbers and
/// booleans in their YAML spelling).
fn scalar(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        _ => None,
    }
}

/// The model card's YAML front matter (README.md between `---` lines), as gguf-py reads it.
/// A card that is missing, not text or not valid YAML gives nothing (the convert script
/// would stop); one that is not a regular file or links out of the folder is an error.
fn read_card(folder: &Path) -> crate::Result<serde_json::Map<String, Json>> {
    let path = folder.join("README.md");
    let Some(text) = crate::input::read_in(folder, &path)? else {
        return Ok(Default::default());
    };
    let Ok(text) = String::from_utf8(text) else {
        return Ok(Default::default());
    };
    let mut lines = text.lines();
    if lines.next() != Some("---") {
        return Ok(Default::default());
    }
    let mut yaml = String::new();
    for line in lines {
        if line == "---" {
            break;
        }
        yaml.push_str(line);
        yaml.push('\n');
    }
    // gguf-py's own fixes: Norway's language code is not a boolean, tabs are two spaces.
    let yaml = yaml.replace("- no\n", "- \"no\"\n").replace('\t', "  ");
    Ok(match serde_saphyr::from_str::<Json>(&yaml) {
        Ok(Json::Object(m)) => m,
        Ok(_) => Default::default(),
        Err(e) => {
            tracing::warn!(
                "{}: model card front matter is not valid YAML, ignored: {e}",
                folder.join("README.md").display()
            );
            Default::default()
        }
    })
}

/// A JSON object file of `folder`: nothing when missing or not a JSON object; an error when
/// not a regular file or a link out of the folder.
fn read_json(folder: &Path, path: &Path) -> crate::Result<serde_json::Map<String, Json>> {
    Ok(crate::input::read_in(folder, path)?
        .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
        .and_then(|j| match j {
            Json::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default())
}

/// A base model or dataset named by the card: a hub id, a URL, or a mapping of fields.
fn card_entry(v: &Json, total_params: u64) -> Option<Entry> {
    let mut e: Entry = Vec::new();
    match v {
        Json::String(id) => {
            let is_url = ["http://", "https://", "ssh://"]
                .iter()
                .any(|p| id.starts_with(p));
            let parsed = if is_url {
                e.push(("repo_url", id.clone()));
                patterns()
                    .hub_url
                    .captures(id)
                    .map(|c| model_id_components(&c[1], total_params))
            } else {
                Some(model_id_components(id, total_params))
            };
            if let Some(m) = parsed {
                if let Some(n) = &m.full_name {
                    e.push(("name", id_to_title(n)));
                }
                if let Some(o) = &m.org {
                    e.push(("organization", id_to_title(o)));
                }
                if let Some(v) = &m.version {
                    e.push(("version", v.clone()));
                }
                if !is_url {
                    if let (Some(o), Some(n)) = (&m.org, &m.full_name) {
                        e.push(("repo_url", format!("https://huggingface.co/{o}/{n}")));
                    }
                }
            }
        }
        Json::Object(m) => {
            for f in ENTRY_FIELDS {
                if let Some(s) = m.get(f).and_then(scalar) {
                    e.push((f, s));
                }
            }
        }
        _ => return None,
    }
    Some(e)
}

fn list_of(v: Option<&Json>) -> Vec<Json> {
    match v {
        Some(Json::Array(a)) => a.clone(),
        Some(Json::Null) | None => Vec::new(),
        Some(other) => vec![other.clone()],
    }
}

/// The `general.*` keys (after `general.architecture` and `general.type`) for the HF folder
/// `folder` with `config.json` = `config` and parameter count `params`, in gguf-py's order.
pub fn general_metadata(
    folder: &Path,
    config: &Json,
    params: ParamCount,
) -> crate::Result<Metadata> {
    let total = params.total;
    let card = read_card(folder)?;
    let mut g = General::default();

    // The card's own keys: llama.cpp's names, then `model_`-prefixed ones, then TheBloke's.
    let from_card = |slot: &mut Option<String>, key: &str| {
        if slot.is_none() {
            if let Some(s) = card.get(key).and_then(scalar) {
                *slot = Some(s);
            }
        }
    };
    for prefix in ["", "model_"] {
        let k = |s: &str| format!("{prefix}{s}");
        from_card(&mut g.name, &k("name"));
        from_card(&mut g.author, &k("author"));
        from_card(&mut g.version, &k("version"));
        from_card(&mut g.organization, &k("organization"));
        from_card(&mut g.description, &k("description"));
        from_card(&mut g.finetune, &k("finetune"));
        from_card(&mut g.basename, &k("basename"));
        from_card(&mut g.size_label, &k("size_label"));
        from_card(&mut g.source_url, &k("url"));
        from_card(&mut g.source_doi, &k("doi"));
        from_card(&mut g.source_uuid, &k("uuid"));
        from_card(&mut g.source_repo_url, &k("repo_url"));
    }
    from_card(&mut g.author, "model_creator");
    from_card(&mut g.basename, "model_type");

    let first_of = |keys: [&str; 3]| keys.iter().find_map(|k| card.get(*k));
    if ["base_model", "base_models", "base_model_sources"]
        .iter()
        .any(|k| card.contains_key(*k))
    {
        let models = list_of(first_of([
            "base_model",
            "base_models",
            "base_model_sources",
        ]));
        let entries = models.iter().filter_map(|m| card_entry(m, total)).collect();
        g.base_models = Some(entries);
    }
    if ["datasets", "dataset", "dataset_sources"]
        .iter()
        .any(|k| card.contains_key(*k))
    {
        let sets = list_of(first_of(["datasets", "dataset", "dataset_sources"]));
        g.datasets = Some(sets.iter().filter_map(|d| card_entry(d, total)).collect());
    }
    g.license = match card.get("license") {
        Some(Json::Array(a)) => Some(a.iter().filter_map(scalar).collect::<Vec<_>>().join(",")),
        Some(v) => scalar(v),
        None => None,
    };
    from_card(&mut g.license_name, "license_name");
    from_card(&mut g.license_link, "license_link");
    let strings = |keys: &[&str]| -> Option<Vec<String>> {
        let mut out: Option<Vec<String>> = None;
        for k in keys {
            match card.get(*k) {
                Some(Json::Array(a)) => out
                    .get_or_insert_with(Vec::new)
                    .extend(a.iter().filter_map(scalar)),
                Some(Json::String(s)) => out.get_or_insert_with(Vec::new).push(s.clone()),
                _ => {}
            }
        }
        out
    };
    g.tags = strings(&["tags", "pipeline_tag"]);
    g.languages = strings(&["languages", "language"]);

    // The model id: config's `_name_or_path` when it is a hub id, then the folder's name.
    let mut fill = |m: ModelId| {
        let fill_one = |slot: &mut Option<String>, v: Option<String>| {
            if slot.is_none() {
                *slot = v;
            }
        };
        fill_one(&mut g.name, m.full_name.as_deref().map(id_to_title));
        fill_one(&mut g.organization, m.org.as_deref().map(id_to_title));
        fill_one(&mut g.basename, m.basename);
        fill_one(&mut g.finetune, m.finetune);
        fill_one(&mut g.version, m.version);
        fill_one(&mut g.size_label, m.size_label);
    };
    if let Some(id) = config.get("_name_or_path").and_then(Json::as_str) {
        if id.matches('/').count() <= 1 {
            fill(model_id_components(id, total));
        }
    }
    let dir = folder
        .canonicalize()
        .unwrap_or_else(|_| folder.to_path_buf());
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    fill(model_id_components(&dir_name, total));
    let name = g.name.clone().unwrap_or(dir_name);
    if g.size_label.is_none() && total > 0 {
        g.size_label = Some(params.size_label());
    }

    let mut md = Metadata::new();
    let generation = read_json(folder, &folder.join("generation_config.json"))?;
    sampling(&generation, &mut md);
    md.set("general.name", Value::String(name));
    let mut put = |key: &str, v: &Option<String>| {
        if let Some(s) = v {
            md.set(key, Value::String(s.clone()));
        }
    };
    put("general.author", &g.author);
    put("general.version", &g.version);
    put("general.organization", &g.organization);
    put("general.finetune", &g.finetune);
    put("general.basename", &g.basename);
    put("general.description", &g.description);
    put("general.quantized_by", &g.quantized_by);
    put("general.size_label", &g.size_label);
    put("general.license", &g.license);
    put("general.license.name", &g.license_name);
    put("general.license.link", &g.license_link);
    put("general.source.url", &g.source_url);
    put("general.source.doi", &g.source_doi);
    put("general.source.uuid", &g.source_uuid);
    put("general.source.repo_url", &g.source_repo_url);
    for (what, entries) in [("base_model", &g.base_models), ("dataset", &g.datasets)] {
        if let Some(list) = entries {
            md.set(
                format!("general.{what}.count"),
                Value::U32(list.len() as u32),
            );
            for (i, e) in list.iter().enumerate() {
                for f in ENTRY_FIELDS {
                    if let Some((_, v)) = e.iter().find(|(k, _)| *k == f) {
                        md.set(format!("general.{what}.{i}.{f}"), Value::String(v.clone()));
                    }
                }
            }
        }
    }
    if let Some(t) = &g.tags {
        md.set("general.tags", Value::strings(t.iter().cloned()));
    }
    if let Some(l) = &g.languages {
        md.set("general.languages", Value::strings(l.iter().cloned()));
    }
    Ok(md)
}

/// `general.sampling.*` from generation_config.json, typed as gguf-py writes them.
fn sampling(gen: &serde_json::Map<String, Json>, md: &mut Metadata) {
    let int = |k: &str| {
        gen.get(k)
            .and_then(Json::as_i64)
            .map(|v| Value::I32(v as i32))
    };
    let float = |k: &str| {
        gen.get(k)
            .and_then(Json::as_f64)
            .map(|v| Value::F32(v as f32))
    };
    let entries = [
        (
            "sequence",
            gen.get("sequence")
                .and_then(Json::as_str)
                .map(|s| Value::String(s.into())),
        ),
        ("top_k", int("top_k")),
        ("top_p", float("top_p")),
        ("min_p", float("min_p")),
        ("xtc_probability", float("xtc_probability")),
        ("xtc_threshold", float("xtc_threshold")),
        ("temp", float("temperature")),
        ("penalty_last_n", int("penalty_last_n")),
        (
            "penalty_repeat",
            float("penalty_repeat").or_else(|| float("repetition_penalty")),
        ),
        ("mirostat", int("mirostat")),
        ("mirostat_tau", float("mirostat_tau")),
        ("mirostat_eta", float("mirostat_eta")),
    ];
    for (k, v) in entries {
        if let Some(v) = v {
            md.set(format!("general.sampling.{k}"), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(id: &str, total: u64) -> [Option<String>; 4] {
        let m = model_id_components(id, total);
        [m.basename, m.size_label, m.finetune, m.version]
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn model_ids_split_as_gguf_py_splits_them() {
        // Expected values printed by gguf-py's Metadata.get_model_id_components.
        assert_eq!(
            parts("SmolLM2-135M-Instruct", 134_515_008),
            [s("SmolLM2"), s("135M"), s("Instruct"), None]
        );
        assert_eq!(
            parts("Mistral-7B-Instruct-v0.2", 7_241_732_096),
            [s("Mistral"), s("7B"), s("Instruct"), s("v0.2")]
        );
        assert_eq!(
            parts("Phi-3-mini-4k-instruct", 3_821_079_552),
            [s("Phi-3"), s("mini"), s("4k-instruct"), None]
        );
        assert_eq!(
            parts("bloom-7b1", 7_069_016_064),
            [s("bloom"), s("7.1B"), None, None]
        );
        assert_eq!(parts("gpt2", 0), [None, None, None, None]);
    }

    #[test]
    fn titles_and_size_labels_follow_gguf_py() {
        assert_eq!(
            id_to_title("smollm2-135m-instruct"),
            "Smollm2 135m Instruct"
        );
        assert_eq!(id_to_title("Mistral-7B-v0.1"), "Mistral 7B v0.1");
        assert_eq!(id_to_title("gemma-2-2b-it"), "Gemma 2 2b It");
        let dense = ParamCount::of([("token_embd.weight", &[576u64, 49152][..])]);
        assert_eq!(dense.size_label(), "28M");
        assert_eq!(rounded_notation(500, 2), "0.50K");
        assert_eq!(rounded_notation(1_500_000_000, 2), "1.5B");
        let moe = ParamCount::of([
            ("blk.0.ffn_up_exps.weight", &[64u64, 96, 8][..]),
            ("blk.0.attn_q.weight", &[64u64, 64][..]),
        ]);
        assert_eq!((moe.expert_count, moe.expert, moe.shared), (8, 6144, 4096));
        assert_eq!(moe.size_label(), "8x10K");
    }
}
