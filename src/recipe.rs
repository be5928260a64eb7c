//! Merge recipes: mergekit's YAML schema (`models:` or `slices:`, `base_model`, `merge_method`,
//! `parameters` with gradients and filters, `dtype`, `tokenizer_source`, `chat_template`) plus
//! smelt's additions: a per-slice `merge_method`, `repeat` on a slice, and `output: {name,
//! types}`. Unknown keys are errors, except at the top level where mergekit ignores them (a
//! warning there), and so are parameters no method of the recipe takes (a warning too, with the
//! nearest known name); every error and warning names the recipe line.

use crate::error::{Error, Result};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// A scalar parameter value.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Num(f64),
    Str(String),
}

/// `{filter: ..., value: ...}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Conditional {
    pub filter: Option<String>,
    pub value: ScalarOrGradient,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ScalarOrGradient {
    Scalar(Scalar),
    Gradient(Vec<Scalar>),
}

/// A parameter setting: scalar, gradient, a conditional, or a list of conditionals.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Setting {
    Scalar(Scalar),
    Gradient(Vec<Scalar>),
    Conditional(Conditional),
    Conditionals(Vec<Conditional>),
}

pub type Params = BTreeMap<String, Spanned<Setting>>;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputModel {
    pub model: Spanned<String>,
    #[serde(default)]
    pub parameters: Params,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSlice {
    pub model: Spanned<String>,
    pub layer_range: Spanned<[i64; 2]>,
    #[serde(default)]
    pub parameters: Params,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSlice {
    pub sources: Vec<InputSlice>,
    pub base_model: Option<Spanned<String>>,
    #[serde(default)]
    pub parameters: Params,
    /// smelt: this slice's method (mergekit has one per recipe).
    pub merge_method: Option<Spanned<String>>,
    /// smelt: emit the slice's layers this many times (layer duplication); gradients run over
    /// the whole repeated stack.
    pub repeat: Option<Spanned<u32>>,
    pub residual_weight: Option<f64>,
}

/// smelt: where and how to write.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The output files' stem: a plain file name (no folder, no `..`).
    pub name: Option<Spanned<String>>,
    pub types: Option<Vec<String>>,
}

/// One YAML document of a recipe. Unknown keys here are warnings (mergekit ignores them).
#[derive(Clone, Debug, Deserialize)]
pub struct Recipe {
    /// mergekit-multi: the name later documents use to refer to this result (a plain file
    /// name: it names the output file too).
    pub name: Option<Spanned<String>>,
    pub merge_method: Spanned<String>,
    pub base_model: Option<Spanned<String>>,
    pub models: Option<Vec<InputModel>>,
    pub slices: Option<Vec<OutputSlice>>,
    #[serde(default)]
    pub parameters: Params,
    pub dtype: Option<String>,
    pub out_dtype: Option<String>,
    pub tokenizer_source: Option<Spanned<String>>,
    pub tokenizer: Option<Spanned<TokenizerBlock>>,
    /// mergekit's `modules: {NAME: {slices | models, parameters}}`; smelt merges one module,
    /// moved into `slices` / `models` / `parameters` by `parse`.
    pub modules: Option<BTreeMap<String, Spanned<Module>>>,
    /// A Jinja template, `auto` (the template most inputs share) or a bundled template's name
    /// (see `chat_template::named`).
    pub chat_template: Option<Spanned<String>>,
    pub output: Option<OutputSpec>,
    /// smelt: how the tensors outside the layers (embeddings, final norm, output head) are
    /// made. By default, as in mergekit, from the first slice (embeddings) and the last
    /// (norm, head).
    pub globals: Option<Globals>,
    /// Remarks on the recipe (unknown top-level keys, unknown parameters), `origin:line: ...`.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The top-level keys of a recipe document (the fields of `Recipe`).
const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "modules",
    "chat_template",
    "output",
    "globals",
];

/// mergekit's `tokenizer:` block as written; the merge checks its keys where it reads it.
#[derive(Clone, Debug)]
pub struct TokenizerBlock {
    pub value: serde_json::Value,
    /// The keys of its `tokens:` mapping in the order written (serde_json's maps sort their
    /// keys): mergekit adds the tokens the output vocabulary lacks in this order.
    pub token_order: Vec<String>,
}

impl<'de> Deserialize<'de> for TokenizerBlock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Ordered::deserialize(d)?;
        let token_order = match &v {
            Ordered::Map(entries) => entries
                .iter()
                .filter(|(k, _)| k == "tokens")
                .find_map(|(_, t)| match t {
                    Ordered::Map(tokens) => Some(tokens.iter().map(|(k, _)| k.clone()).collect()),
                    _ => None,
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(TokenizerBlock {
            value: v.into_json(),
            token_order,
        })
    }
}

/// A YAML value whose mappings keep their keys' order.
enum Ordered {
    Scalar(serde_json::Value),
    Seq(Vec<Ordered>),
    Map(Vec<(String, Ordered)>),
}

impl Ordered {
    fn into_json(self) -> serde_json::Value {
        match self {
            Ordered::Scalar(v) => v,
            Ordered::Seq(items) => items.into_iter().map(Ordered::into_json).collect(),
            Ordered::Map(entries) => serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, v.into_json()))
                    .collect(),
            ),
        }
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_bool<E>(self, b: bool) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar(b.into()))
            }
            fn visit_i64<E>(self, n: i64) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> std::result::Result<Ordered, E> {
                // NaN and infinities become null, as in a serde_json::Value.
                Ok(Ordered::Scalar(n.into()))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar(s.into()))
            }
            fn visit_unit<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar(serde_json::Value::Null))
            }
            fn visit_none<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered::Scalar(serde_json::Value::Null))
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Ordered, D::Error> {
                Ordered::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = seq.next_element()? {
                    items.push(x);
                }
                Ok(Ordered::Seq(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut entries: Vec<(String, Ordered)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Ordered>()? {
                    // A repeated key: the last value, at the first place (serde_json's).
                    match entries.iter_mut().find(|(key, _)| *key == k) {
                        Some(e) => e.1 = v,
                        None => entries.push((k, v)),
                    }
                }
                Ok(Ordered::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// One module of mergekit's `modules:` (the text decoder of a single-module model).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    pub slices: Option<Vec<OutputSlice>>,
    pub models: Option<Vec<InputModel>>,
    #[serde(default)]
    pub parameters: Params,
}

/// A first document of a multi-document recipe that holds no merge, only settings the
/// documents after it share (each document's own value wins).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedSettings {
    base_model: Option<Spanned<String>>,
    dtype: Option<String>,
    out_dtype: Option<String>,
    tokenizer_source: Option<Spanned<String>>,
    chat_template: Option<Spanned<String>>,
    #[serde(default)]
    parameters: Params,
}

/// Keys of mergekit's other configuration files, which are not merge recipes: (key, what
/// the file is).
const OTHER_CONFIG_KEYS: &[(&str, &str)] = &[
    ("experts", "a mergekit-moe config"),
    ("gate_mode", "a mergekit-moe config"),
    ("experts_per_token", "a mergekit-moe config"),
    ("shared_experts", "a mergekit-moe config"),
    ("genome", "a mergekit-evolve config"),
    ("tasks", "a mergekit-evolve config"),
];

/// Parameters smelt itself reads, whatever the method.
const RECIPE_PARAMS: &[&str] = &["seed"];

/// smelt's `globals:` block: a `models:`-style merge for the non-layer tensors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Globals {
    pub merge_method: Option<Spanned<String>>,
    pub base_model: Option<Spanned<String>>,
    pub models: Vec<InputModel>,
    #[serde(default)]
    pub parameters: Params,
}

/// Parse every document of a recipe; errors carry the line.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Recipe>> {
    let keys: Vec<BTreeMap<String, Spanned<serde::de::IgnoredAny>>> =
        serde_saphyr::from_multiple(text).unwrap_or_default();
    reject_other_configs(text, &keys, origin)?;
    let (text, shared) = split_shared_settings(text, &keys, origin)?;
    let text = text.as_ref();
    let mut docs: Vec<Recipe> =
        serde_saphyr::from_multiple(text).map_err(|e| Error::Invalid(format!("{origin}: {e}")))?;
    if docs.is_empty() {
        return Err(Error::Invalid(format!("{origin}: empty recipe")));
    }
    for d in docs.iter_mut() {
        if let Some(shared) = &shared {
            shared.apply_to(d);
        }
        flatten_modules(d, text, origin)?;
    }
    for d in &docs {
        let line = d.merge_method.referenced.line();
        match (&d.models, &d.slices) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(Error::Invalid(format!(
                    "{origin}:{line}: exactly one of `models` or `slices` must be present"
                )))
            }
            _ => {}
        }
        if let (Some(_), Some(t)) = (&d.tokenizer_source, &d.tokenizer) {
            return Err(Error::Invalid(format!(
                "{origin}:{}: cannot specify both tokenizer_source and tokenizer",
                t.referenced.line()
            )));
        }
        // Output names become file names in the output folder.
        let names = [("name", d.name.as_ref())].into_iter().chain([(
            "output.name",
            d.output.as_ref().and_then(|o| o.name.as_ref()),
        )]);
        for (what, n) in names {
            if let Some(n) = n.filter(|n| !is_plain_file_name(&n.value)) {
                return Err(Error::Invalid(format!(
                    "{origin}:{}: {what} `{}` must be a plain file name (no folder, no `..`): it names the output file",
                    n.referenced.line(),
                    n.value.escape_debug()
                )));
            }
        }
        if let Some(ct) = &d.chat_template {
            crate::merge::chat_template::check(&ct.value)
                .map_err(|e| Error::Invalid(format!("{origin}:{}: {e}", ct.referenced.line())))?;
        }
    }
    // mergekit ignores keys it does not know at the top level: a warning, not an error.
    let keys: Vec<BTreeMap<String, Spanned<serde::de::IgnoredAny>>> =
        serde_saphyr::from_multiple(text).unwrap_or_default();
    for (k, d) in docs.iter_mut().enumerate() {
        for (key, at) in keys.get(k).into_iter().flatten() {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                d.warnings.push(format!(
                    "{origin}:{}: unknown key `{key}` is ignored{}",
                    at.referenced.line(),
                    suggestion(key, TOP_LEVEL_KEYS)
                ));
            }
        }
        let params = parameter_warnings(d, origin);
        d.warnings.extend(params);
        if d.slices
            .iter()
            .flatten()
            .any(|s| s.residual_weight.is_some())
        {
            d.warnings.push(format!(
                "{origin}: a slice's `residual_weight` is not implemented by smelt (nor used by mergekit's merge planner): it is ignored"
            ));
        }
    }
    Ok(docs)
}

/// The line of `key:` for a value that starts on line `value_line` (a block mapping or
/// list starts on the line after its key).
pub(crate) fn key_line(text: &str, key: &str, value_line: u64) -> u64 {
    let lines: Vec<&str> = text.lines().collect();
    let key = format!("{key}:");
    (1..=value_line.min(lines.len() as u64))
        .rev()
        .find(|&l| lines[l as usize - 1].trim_start().starts_with(&key))
        .unwrap_or(value_line)
}

/// mergekit-moe and mergekit-evolve files are not merge recipes: say so, naming the line.
fn reject_other_configs(
    text: &str,
    keys: &[BTreeMap<String, Spanned<serde::de::IgnoredAny>>],
    origin: &str,
) -> Result<()> {
    for doc in keys {
        // The first such key in the file.
        let found = OTHER_CONFIG_KEYS
            .iter()
            .filter_map(|(key, what)| {
                doc.get(*key)
                    .map(|at| (key_line(text, key, at.referenced.line()), key, what))
            })
            .min();
        if let Some((line, key, what)) = found {
            let hint = if what.contains("moe") {
                "`smelt merge` builds the mixture of experts it describes; this command takes merge recipes"
            } else {
                "evolutionary merge search is not supported by smelt (`smelt merge` takes mergekit-yaml recipes)"
            };
            return Err(Error::Invalid(format!(
                "{origin}:{line}: `{key}`: this is {what}, not a merge recipe: {hint}"
            )));
        }
    }
    Ok(())
}

impl SharedSettings {
    /// Fill what document `d` leaves unset.
    fn apply_to(&self, d: &mut Recipe) {
        if d.base_model.is_none() {
            d.base_model = self.base_model.clone();
        }
        if d.dtype.is_none() {
            d.dtype = self.dtype.clone();
        }
        if d.out_dtype.is_none() {
            d.out_dtype = self.out_dtype.clone();
        }
        if d.tokenizer_source.is_none() && d.tokenizer.is_none() {
            d.tokenizer_source = self.tokenizer_source.clone();
        }
        if d.chat_template.is_none() {
            d.chat_template = self.chat_template.clone();
        }
        for (k, v) in &self.parameters {
            d.parameters.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// A first document with no merge in it (no `merge_method`, `models`, `slices` or
/// `modules`) followed by others holds settings they share (`base_model` given once at the
/// top of a multi-document file). Returns the recipe text without that document (its lines
/// blanked, so every line keeps its number) and the settings.
fn split_shared_settings<'t>(
    text: &'t str,
    keys: &[BTreeMap<String, Spanned<serde::de::IgnoredAny>>],
    origin: &str,
) -> Result<(std::borrow::Cow<'t, str>, Option<SharedSettings>)> {
    let merge_keys = ["merge_method", "models", "slices", "modules"];
    let is_settings_only = |doc: &BTreeMap<String, _>| {
        !doc.is_empty() && !merge_keys.iter().any(|k| doc.contains_key(*k))
    };
    if keys.len() < 2 || !is_settings_only(&keys[0]) {
        return Ok((std::borrow::Cow::Borrowed(text), None));
    }
    // The first document ends at the first `---` after its first content line.
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let is_separator =
        |l: &str| l.starts_with("---") && l[3..].chars().next().is_none_or(char::is_whitespace);
    let mut seen_content = false;
    let mut end = None;
    for (i, l) in lines.iter().enumerate() {
        if is_separator(l) {
            if seen_content {
                end = Some(i);
                break;
            }
        } else if !l.trim().is_empty() && !l.trim_start().starts_with('#') && !l.starts_with('%') {
            seen_content = true;
        }
    }
    let Some(end) = end else {
        return Ok((std::borrow::Cow::Borrowed(text), None));
    };
    let head: String = lines[..end].concat();
    let shared: SharedSettings = serde_saphyr::from_str(&head).map_err(|e| {
        Error::Invalid(format!(
            "{origin}: the first document has no merge_method, so it holds settings the others share (base_model, dtype, out_dtype, tokenizer_source, chat_template, parameters): {e}"
        ))
    })?;
    let blanked: String = lines[..end]
        .iter()
        .map(|l| if l.ends_with('\n') { "\n" } else { "" })
        .chain(lines[end..].iter().copied())
        .collect();
    Ok((std::borrow::Cow::Owned(blanked), Some(shared)))
}

/// mergekit's `modules:` with one module: its slices or models and its parameters become
/// the recipe's (a module's parameters rank between a slice's and the recipe's, as in
/// mergekit's ConfigReader). Several modules (a vision tower beside the text decoder) are
/// refused.
fn flatten_modules(d: &mut Recipe, text: &str, origin: &str) -> Result<()> {
    let Some(modules) = d.modules.take() else {
        return Ok(());
    };
    let line = d.merge_method.referenced.line();
    if d.models.is_some() || d.slices.is_some() {
        return Err(Error::Invalid(format!(
            "{origin}:{line}: exactly one of `models`, `slices` or `modules` must be present"
        )));
    }
    let mut modules = modules.into_iter();
    let Some((_, first)) = modules.next() else {
        return Err(Error::Invalid(format!(
            "{origin}:{line}: `modules` is empty: the recipe names no model to merge"
        )));
    };
    if let Some((name, other)) = modules.next() {
        return Err(Error::Invalid(format!(
            "{origin}:{}: module `{name}`: smelt merges one module (a text model); mergekit's multi-module merges (a vision tower beside the text decoder) are not supported",
            key_line(text, &name, other.referenced.line())
        )));
    }
    let m = first.value;
    match (&m.models, &m.slices) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(Error::Invalid(format!(
                "{origin}:{}: a module needs exactly one of `models` or `slices`",
                first.referenced.line()
            )))
        }
        _ => {}
    }
    d.models = m.models;
    d.slices = m.slices;
    d.parameters.extend(m.parameters);
    Ok(())
}

/// A name that stays inside the folder it is joined to: one component, not `.` or `..`.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && std::path::Path::new(name).file_name() == Some(std::ffi::OsStr::new(name))
}

/// `; did you mean `x`?` for the known name nearest to `name` (by edit distance), if near.
fn suggestion(name: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|&(d, _)| d <= (name.chars().count() / 3).max(2))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Warnings for parameters that no method reading them declares (a misspelt `densty` would
/// otherwise leave `density` at its default without a word).
fn parameter_warnings(d: &Recipe, origin: &str) -> Vec<String> {
    use crate::merge::methods::{self, Method};
    let find = |m: &Spanned<String>| methods::find(&m.value).ok();
    let top = find(&d.merge_method);
    let own = |m: &Option<Spanned<String>>| match m {
        Some(m) => find(m),
        None => top,
    };
    // (the parameters, the methods that read them, whether they are one model's)
    let mut scopes: Vec<(&Params, Vec<&'static dyn Method>, bool)> = Vec::new();
    for m in d.models.iter().flatten() {
        scopes.push((&m.parameters, top.into_iter().collect(), true));
    }
    for s in d.slices.iter().flatten() {
        let m: Vec<_> = own(&s.merge_method).into_iter().collect();
        scopes.push((&s.parameters, m.clone(), false));
        for src in &s.sources {
            scopes.push((&src.parameters, m.clone(), true));
        }
    }
    if let Some(g) = &d.globals {
        let m: Vec<_> = own(&g.merge_method).into_iter().collect();
        scopes.push((&g.parameters, m.clone(), false));
        for src in &g.models {
            scopes.push((&src.parameters, m.clone(), true));
        }
    }
    // The recipe's own parameters feed every method of the recipe.
    let all: Vec<&'static dyn Method> = scopes
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .chain(top)
        .collect();
    let n_scopes = scopes.len();
    scopes.push((&d.parameters, all, false));
    let mut out: Vec<(u64, String)> = Vec::new();
    for (k, (params, readers, one_model)) in scopes.into_iter().enumerate() {
        // An unknown method is an error later; nothing to say about its parameters here.
        if readers.is_empty() {
            continue;
        }
        let mut known: Vec<&str> = if k == n_scopes {
            RECIPE_PARAMS.to_vec()
        } else {
            Vec::new()
        };
        // Parameters of the whole merge, which a model's own `parameters:` cannot set.
        let mut whole: Vec<&str> = Vec::new();
        for m in &readers {
            for p in m.params() {
                let list = if one_model && p.scope == methods::Scope::Shared {
                    &mut whole
                } else {
                    &mut known
                };
                if !list.contains(&p.name) {
                    list.push(p.name);
                }
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for m in &readers {
            if !names.contains(&m.name()) {
                names.push(m.name());
            }
        }
        for (name, setting) in params {
            if known.contains(&name.as_str()) {
                continue;
            }
            let line = setting.referenced.line();
            if whole.contains(&name.as_str()) {
                out.push((
                    line,
                    format!(
                        "{origin}:{line}: `{name}` is a parameter of the whole {} merge, not of one model: it is ignored here (set it under the recipe's or the slice's `parameters:`)",
                        names.join("/")
                    ),
                ));
                continue;
            }
            let takes: Vec<&str> = known
                .iter()
                .chain(&whole)
                .copied()
                .filter(|k| !RECIPE_PARAMS.contains(k))
                .collect();
            out.push((
                line,
                format!(
                "{origin}:{line}: {} takes no parameter `{name}`: it is ignored{} ({} takes: {})",
                names.join("/"),
                suggestion(name, &[known.as_slice(), whole.as_slice()].concat()),
                names.join("/"),
                if takes.is_empty() { "none".to_string() } else { takes.join(", ") }
            ),
            ));
        }
    }
    // In recipe order.
    out.sort_by_key(|w| w.0);
    out.into_iter().map(|w| w.1).collect()
}

impl Scalar {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Num(x) => Some(*x),
            Scalar::Bool(b) => Some(*b as u8 as f64),
            Scalar::Str(s) => s.trim().parse().ok(),
        }
    }
}

/// The parameter scopes one tensor's settings are looked up in, innermost first: a model's
/// `parameters`, then its slice's, then the recipe's (mergekit's precedence). A scope may be
/// absent (`None`).
pub struct ParamScopes<'a>(pub Vec<Option<&'a Params>>);

impl ParamScopes<'_> {
    /// Parameter `name` of the tensor called `names` (canonical and Hugging Face names) at
    /// layer fraction `t`: the first scope whose setting applies to the tensor gives it, with
    /// its recipe line. `None` when no scope sets it for this tensor; an error when the value
    /// is not a number or bool.
    pub fn value(&self, name: &str, names: &[&str], t: f64) -> Option<Result<(f64, u64), String>> {
        for p in self.0.iter().flatten() {
            if let Some(setting) = p.get(name) {
                if let Some(v) = evaluate(&setting.value, names, t) {
                    let line = setting.referenced.line();
                    return Some(
                        v.as_f64()
                            .map(|v| (v, line))
                            .ok_or_else(|| format!("line {line}: {name} must be a number or bool")),
                    );
                }
            }
        }
        None
    }
}

/// mergekit's `evaluate_setting`: resolve filters (substring of the tensor's name; HF and
/// canonical names both count) and gradients at `t` in [0, 1].
pub fn evaluate(setting: &Setting, names: &[&str], t: f64) -> Option<Scalar> {
    let matches = |f: &Option<String>| match f.as_deref() {
        None | Some("*") => true,
        Some(f) => names.iter().any(|n| n.contains(f)),
    };
    match setting {
        Setting::Scalar(s) => Some(s.clone()),
        Setting::Gradient(v) => gradient(v, t),
        Setting::Conditional(c) => matches(&c.filter)
            .then(|| eval_value(&c.value, t))
            .flatten(),
        Setting::Conditionals(list) => list
            .iter()
            .find(|c| matches(&c.filter))
            .and_then(|c| eval_value(&c.value, t)),
    }
}

fn eval_value(v: &ScalarOrGradient, t: f64) -> Option<Scalar> {
    match v {
        ScalarOrGradient::Scalar(s) => Some(s.clone()),
        ScalarOrGradient::Gradient(g) => gradient(g, t),
    }
}

/// Piecewise-linear interpolation over evenly spaced points (non-numeric lists select).
fn gradient(values: &[Scalar], t: f64) -> Option<Scalar> {
    if values.is_empty() {
        return None;
    }
    let nums: Option<Vec<f64>> = values
        .iter()
        .map(|v| match v {
            Scalar::Num(x) => Some(*x),
            _ => None,
        })
        .collect();
    let n = values.len();
    let Some(nums) = nums else {
        return Some(values[(t * (n - 1) as f64) as usize].clone());
    };
    let scaled = t * (n - 1) as f64;
    let i0 = scaled as usize;
    let i1 = (i0 + 1).min(n - 1);
    let frac = scaled - i0 as f64;
    Some(Scalar::Num((1.0 - frac) * nums[i0] + frac * nums[i1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_interpolate_like_mergekit() {
        let g = Setting::Gradient(vec![Scalar::Num(0.0), Scalar::Num(0.5), Scalar::Num(1.0)]);
        assert_eq!(evaluate(&g, &[], 0.25), Some(Scalar::Num(0.25)));
        assert_eq!(evaluate(&g, &[], 1.0), Some(Scalar::Num(1.0)));
        let g = Setting::Gradient(vec![Scalar::Num(1.5), Scalar::Num(4.0)]);
        assert_eq!(evaluate(&g, &[], 0.5), Some(Scalar::Num(2.75)));
    }

    #[test]
    fn filters_fall_through_to_the_default() {
        let text = "merge_method: slerp\nmodels:\n  - model: a\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 1]\n    - filter: mlp\n      value: 0.3\n    - value: 0.5\n";
        let r = parse(text, "r.yaml").unwrap();
        let t = &r[0].parameters["t"].value;
        let attn = [
            "model.layers.0.self_attn.o_proj.weight",
            "blk.0.attn_output.weight",
        ];
        assert_eq!(evaluate(t, &attn, 1.0), Some(Scalar::Num(1.0)));
        assert_eq!(
            evaluate(t, &["model.layers.0.mlp.up_proj.weight"], 0.0),
            Some(Scalar::Num(0.3))
        );
        assert_eq!(
            evaluate(t, &["model.norm.weight"], 0.0),
            Some(Scalar::Num(0.5))
        );
    }

    #[test]
    fn tokenizer_tokens_keep_their_order() {
        let text = "merge_method: linear\nmodels:\n  - model: a\ntokenizer:\n  source: union\n  tokens:\n    \"<z>\": {source: {kind: zero}}\n    a: {source: a, force: true}\n    \"<m>\": {}\n";
        let r = parse(text, "r.yaml").unwrap();
        let block = &r[0].tokenizer.as_ref().unwrap().value;
        assert_eq!(block.token_order, ["<z>", "a", "<m>"]);
        assert_eq!(
            block.value,
            serde_json::json!({"source": "union", "tokens": {
                "<z>": {"source": {"kind": "zero"}},
                "a": {"source": "a", "force": true},
                "<m>": {},
            }})
        );
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let err = parse(
            "merge_method: linear\nmodels:\n  - model: a\n    weigth: 1\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("weigth") && err.contains('4'), "{err}");
    }
}
