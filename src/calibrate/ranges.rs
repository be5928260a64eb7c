//! Search ranges in a recipe: `{search: [LOW, HIGH]}` wherever a merge parameter takes a
//! number (a parameter's value, a conditional's `value:`, an element of a gradient list), in
//! any `parameters:` block (the recipe's, a model's, a slice's, a slice source's, `globals:`).
//!
//! The recipe stays text: each range is found with its byte span, and a trial's recipe is the
//! original text with every range replaced by a number, so the calibrated recipe keeps the
//! input's comments, order and layout.

use crate::error::{Error, Result};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Method parameters that are flags or counts: a search between two values means nothing.
const NOT_TUNABLE: &[&str] = &[
    "int8_mask",
    "normalize",
    "normalize_weights",
    "rescale",
    "nuslerp_row_wise",
    "nuslerp_flatten",
    "filter_wise",
    "max_iter",
];

/// One `{search: [LOW, HIGH]}` of a recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchRange {
    pub low: f64,
    pub high: f64,
    /// Where it is (1-based), for the table and errors.
    pub line: u64,
    pub column: u64,
    /// The parameter it sets, e.g. `scale` (with `[k]` for a gradient's element).
    pub parameter: String,
    /// The bytes of the recipe text it occupies.
    span: std::ops::Range<usize>,
    /// Decimals the calibrated value is written with (about 1/10000 of the range).
    decimals: usize,
}

impl SearchRange {
    /// `value` in the range, rounded to the decimals written in the recipe (a trial
    /// evaluates exactly what the calibrated recipe will say).
    pub fn snap(&self, value: f64) -> f64 {
        let v = value.clamp(self.low, self.high);
        let text = format!("{v:.*}", self.decimals);
        let rounded: f64 = text.parse().expect("a formatted f64 parses");
        rounded.clamp(self.low, self.high)
    }

    /// The value for a point `u` in [0, 1] of the range.
    pub fn at(&self, u: f64) -> f64 {
        self.snap(self.low + u * (self.high - self.low))
    }

    /// `value` as the recipe writes it: the shortest decimal that reads back as the same f64,
    /// always with a decimal point (a float in YAML).
    pub fn format(value: f64) -> String {
        let s = format!("{value}");
        if s.contains(['.', 'e', 'E']) || !value.is_finite() {
            s
        } else {
            s + ".0"
        }
    }

    /// `origin:line:column`.
    pub fn location(&self, origin: &str) -> String {
        format!("{origin}:{}:{}", self.line, self.column)
    }
}

/// A recipe with search ranges.
#[derive(Clone, Debug)]
pub struct SearchRecipe {
    pub text: String,
    pub origin: String,
    /// In the order they appear in the text.
    pub ranges: Vec<SearchRange>,
}

impl SearchRecipe {
    /// Find every search range of a one-document recipe; a range where no number is taken,
    /// or written wrong, is an error naming its line, and so is a recipe without one.
    pub fn parse(text: &str, origin: &str) -> Result<SearchRecipe> {
        let docs: Vec<Spanned<Node>> = serde_saphyr::from_multiple(text)
            .map_err(|e| Error::Invalid(format!("{origin}: {e}")))?;
        if docs.len() != 1 {
            return Err(Error::Invalid(format!(
                "{origin}: a recipe of {} documents; calibrate one document (merge the earlier ones first)",
                docs.len()
            )));
        }
        let mut finder = Finder {
            text,
            origin,
            ranges: Vec::new(),
        };
        finder.document(&docs[0])?;
        let mut ranges = finder.ranges;
        if ranges.is_empty() {
            return Err(Error::Invalid(format!(
                "{origin}: no search range to calibrate: write the values to tune as `{{search: [LOW, HIGH]}}`, e.g. `scale: [1.0, {{search: [0.1, 1.0]}}]`"
            )));
        }
        // An alias repeats its anchor's node: one value for both.
        ranges.sort_by_key(|r| r.span.start);
        ranges.dedup_by_key(|r| r.span.start);
        Ok(SearchRecipe {
            text: text.to_string(),
            origin: origin.to_string(),
            ranges,
        })
    }

    /// The recipe text with range `k` replaced by `values[k]` (as [`SearchRange::format`]).
    pub fn with_values(&self, values: &[f64]) -> String {
        assert_eq!(values.len(), self.ranges.len(), "one value per range");
        let mut out = String::with_capacity(self.text.len());
        let mut at = 0;
        for (r, &v) in self.ranges.iter().zip(values) {
            out.push_str(&self.text[at..r.span.start]);
            out.push_str(&SearchRange::format(v));
            at = r.span.end;
        }
        out.push_str(&self.text[at..]);
        out
    }
}

/// A YAML node with the location of each child (serde-saphyr's spans give the start of a
/// container and the whole of a scalar). Locations are where a node is defined: a node reached
/// through an alias (`*name`) is its anchor's, so one range used twice is one value.
#[derive(Debug)]
enum Node {
    Map(Vec<(String, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Num(f64),
    Other,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Node, E> {
                Ok(Node::Num(v))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Node, E> {
                Ok(Node::Num(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Node, E> {
                Ok(Node::Num(v as f64))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_unit<E>(self) -> std::result::Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_none<E>(self) -> std::result::Result<Node, E> {
                Ok(Node::Other)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Node::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = a.next_key::<KeyText>()? {
                    v.push((k.0, a.next_value()?));
                }
                Ok(Node::Map(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping key as text (`0.5: x` is a key too, if an odd one).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E>(self) -> std::result::Result<KeyText, E> {
                Ok(KeyText("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

fn get<'a>(map: &'a [(String, Spanned<Node>)], key: &str) -> Option<&'a Spanned<Node>> {
    map.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn string_at(text: &str, node: &Spanned<Node>) -> Option<String> {
    let s = node.referenced.span();
    let (o, l) = (s.byte_offset()? as usize, s.byte_len()? as usize);
    let raw = text.get(o..o + l)?.trim();
    Some(raw.trim_matches(['"', '\'']).to_string())
}

/// Walks a recipe document, collecting ranges where a number is taken, refusing them elsewhere.
struct Finder<'a> {
    text: &'a str,
    origin: &'a str,
    ranges: Vec<SearchRange>,
}

impl Finder<'_> {
    fn error(&self, at: &Spanned<Node>, msg: String) -> Error {
        Error::Invalid(format!(
            "{}:{}:{}: {msg}",
            self.origin,
            at.defined.line(),
            at.defined.column()
        ))
    }

    fn document(&mut self, doc: &Spanned<Node>) -> Result<()> {
        let Node::Map(top) = &doc.value else {
            return self.refuse_all(doc, "the recipe");
        };
        let text = self.text;
        let method = |map: &[(String, Spanned<Node>)]| {
            get(map, "merge_method")
                .or_else(|| get(top, "merge_method"))
                .and_then(|m| string_at(text, m))
        };
        let top_method = method(top);
        for (key, value) in top {
            match key.as_str() {
                "parameters" => self.parameters(value, top_method.as_deref(), true)?,
                "models" => self.models(value, top_method.as_deref())?,
                "slices" => {
                    for slice in seq(value) {
                        let Node::Map(s) = &slice.value else {
                            self.refuse_all(slice, "slices")?;
                            continue;
                        };
                        let m = method(s);
                        for (k, v) in s {
                            match k.as_str() {
                                "parameters" => self.parameters(v, m.as_deref(), false)?,
                                "sources" => self.models(v, m.as_deref())?,
                                _ => self.refuse_all(v, k)?,
                            }
                        }
                    }
                }
                "globals" => {
                    let Node::Map(g) = &value.value else {
                        return self.refuse_all(value, key);
                    };
                    let m = method(g);
                    for (k, v) in g {
                        match k.as_str() {
                            "parameters" => self.parameters(v, m.as_deref(), false)?,
                            "models" => self.models(v, m.as_deref())?,
                            _ => self.refuse_all(v, k)?,
                        }
                    }
                }
                _ => self.refuse_all(value, key)?,
            }
        }
        Ok(())
    }

    /// `models:` or `sources:`: a list of `{model, parameters, ...}`.
    fn models(&mut self, list: &Spanned<Node>, method: Option<&str>) -> Result<()> {
        for m in seq(list) {
            match &m.value {
                Node::Map(entries) => {
                    for (k, v) in entries {
                        match k.as_str() {
                            "parameters" => self.parameters(v, method, false)?,
                            _ => self.refuse_all(v, k)?,
                        }
                    }
                }
                _ => self.refuse_all(m, "models")?,
            }
        }
        Ok(())
    }

    /// A `parameters:` block read by `method`; `recipe_level`: the recipe's own (which also
    /// holds `seed`).
    fn parameters(
        &mut self,
        block: &Spanned<Node>,
        method: Option<&str>,
        recipe_level: bool,
    ) -> Result<()> {
        let Node::Map(params) = &block.value else {
            return self.refuse_all(block, "parameters");
        };
        // An unknown method is the merge planner's error to report; its parameters pass here.
        let takes: Option<Vec<&str>> = method
            .and_then(|m| crate::merge::methods::find(m).ok())
            .map(|m| m.params().iter().map(|p| p.name).collect());
        for (name, setting) in params {
            let name_is_read = match &takes {
                Some(t) => t.contains(&name.as_str()),
                None => !(recipe_level && name == "seed"),
            };
            let tunable = !NOT_TUNABLE.contains(&name.as_str()) && name_is_read;
            if tunable {
                self.setting(name, setting)?;
            } else if let Some(s) = find_search(setting) {
                let why = if NOT_TUNABLE.contains(&name.as_str()) || name == "seed" {
                    format!("`{name}` is a flag or a count, not a value to tune")
                } else {
                    format!(
                        "{} takes no parameter `{name}`",
                        method.unwrap_or("the merge method")
                    )
                };
                return Err(self.error(s, format!("a search range in `{name}`: {why}")));
            }
        }
        Ok(())
    }

    /// A parameter's setting: a number, a gradient, a conditional or a list of conditionals.
    fn setting(&mut self, name: &str, setting: &Spanned<Node>) -> Result<()> {
        if is_search(setting) {
            return self.range(setting, name.to_string());
        }
        match &setting.value {
            Node::Seq(items) => {
                for (k, item) in items.iter().enumerate() {
                    match &item.value {
                        Node::Map(c) if !is_search(item) => self.conditional(name, c)?,
                        _ => self.value_item(name, k, item)?,
                    }
                }
            }
            Node::Map(c) => self.conditional(name, c)?,
            _ => {}
        }
        Ok(())
    }

    /// `{filter: ..., value: ...}`.
    fn conditional(&mut self, name: &str, c: &[(String, Spanned<Node>)]) -> Result<()> {
        for (k, v) in c {
            match k.as_str() {
                "value" if is_search(v) => self.range(v, name.to_string())?,
                "value" => {
                    if let Node::Seq(items) = &v.value {
                        for (i, item) in items.iter().enumerate() {
                            self.value_item(name, i, item)?;
                        }
                    }
                }
                _ => self.refuse_all(v, k)?,
            }
        }
        Ok(())
    }

    /// Element `k` of a gradient list: a number or a range, nothing nested.
    fn value_item(&mut self, name: &str, k: usize, item: &Spanned<Node>) -> Result<()> {
        if is_search(item) {
            self.range(item, format!("{name}[{k}]"))
        } else {
            self.refuse_all(item, name)
        }
    }

    /// Refuse any search range inside `node`, which sits under `key`.
    fn refuse_all(&self, node: &Spanned<Node>, key: &str) -> Result<()> {
        match find_search(node) {
            Some(s) => Err(self.error(
                s,
                format!("a search range in `{key}`, which takes no number to tune: only merge parameters (`parameters:` values, conditionals' `value:`, gradient elements) can be searched"),
            )),
            None => Ok(()),
        }
    }

    fn range(&mut self, node: &Spanned<Node>, parameter: String) -> Result<()> {
        let Node::Map(m) = &node.value else {
            unreachable!("is_search checked a map")
        };
        let shape = "a search range is `{search: [LOW, HIGH]}` with numbers LOW < HIGH";
        if m.len() != 1 {
            return Err(self.error(node, format!("{shape}, no other key")));
        }
        let list = &m[0].1;
        let Node::Seq(bounds) = &list.value else {
            return Err(self.error(list, shape.into()));
        };
        let nums: Vec<f64> = bounds
            .iter()
            .filter_map(|b| match b.value {
                Node::Num(x) => Some(x),
                _ => None,
            })
            .collect();
        let [low, high] = nums[..] else {
            return Err(self.error(list, format!("{shape}; got {} bound(s)", bounds.len())));
        };
        if nums.len() != bounds.len() || !low.is_finite() || !high.is_finite() {
            return Err(self.error(list, format!("{shape} (finite)")));
        }
        if low >= high {
            let what = if low == high { "empty" } else { "reversed" };
            return Err(self.error(
                list,
                format!("the search range [{low}, {high}] is {what}: {shape}"),
            ));
        }
        let span = self
            .span_of(node, list, &bounds[1])
            .ok_or_else(|| self.error(node, format!("{shape}, written on its own: `{{search: [LOW, HIGH]}}` or `search: [LOW, HIGH]`")))?;
        let decimals = (4.0 - (high - low).log10().floor()).max(0.0) as usize;
        self.ranges.push(SearchRange {
            low,
            high,
            line: node.defined.line(),
            column: node.defined.column(),
            parameter,
            span,
            decimals,
        });
        Ok(())
    }

    /// The bytes of a search mapping: from its start to its closing `}` (flow style), or to
    /// the end of its bound list (block style).
    fn span_of(
        &self,
        map: &Spanned<Node>,
        list: &Spanned<Node>,
        last: &Spanned<Node>,
    ) -> Option<std::ops::Range<usize>> {
        let text = self.text.as_bytes();
        let start = map.defined.span().byte_offset()? as usize;
        let list_start = list.defined.span().byte_offset()? as usize;
        let s = last.defined.span();
        let mut end = (s.byte_offset()? + s.byte_len()?) as usize;
        let mut close = |c: u8| -> bool {
            while end < text.len() && text[end].is_ascii_whitespace() {
                end += 1;
            }
            if text.get(end) == Some(&c) {
                end += 1;
                true
            } else {
                false
            }
        };
        if text.get(list_start) == Some(&b'[') && !close(b']') {
            return None;
        }
        if text.get(start) == Some(&b'{') && !close(b'}') {
            return None;
        }
        Some(start..end)
    }
}

fn seq(node: &Spanned<Node>) -> &[Spanned<Node>] {
    match &node.value {
        Node::Seq(v) => v,
        _ => &[],
    }
}

fn is_search(node: &Spanned<Node>) -> bool {
    matches!(&node.value, Node::Map(m) if m.iter().any(|(k, _)| k == "search"))
}

/// The first search mapping in `node`, depth first.
fn find_search(node: &Spanned<Node>) -> Option<&Spanned<Node>> {
    if is_search(node) {
        return Some(node);
    }
    match &node.value {
        Node::Map(m) => m.iter().find_map(|(_, v)| find_search(v)),
        Node::Seq(v) => v.iter().find_map(find_search),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = "\
merge_method: passthrough  # kept
slices:
  - sources:
      - model: a.gguf
        layer_range: [0, 2]
    parameters:
      scale:
        - filter: o_proj
          value: [1.0, {search: [0.2, 1.0]}, { search : [ 0.1 , 0.9 ] }]
        - filter: down_proj
          value:
            search: [0.05, 1.5]
        - value: 1.0
";

    #[test]
    fn finds_ranges_and_replaces_only_them() {
        let r = SearchRecipe::parse(RECIPE, "r.yaml").unwrap();
        let got: Vec<_> = r
            .ranges
            .iter()
            .map(|r| (r.low, r.high, r.line, r.parameter.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (0.2, 1.0, 9, "scale[1]"),
                (0.1, 0.9, 9, "scale[2]"),
                (0.05, 1.5, 12, "scale"),
            ]
        );
        let text = r.with_values(&[0.5, 0.25, 1.0]);
        let want = RECIPE
            .replace("{search: [0.2, 1.0]}", "0.5")
            .replace("{ search : [ 0.1 , 0.9 ] }", "0.25")
            .replace("search: [0.05, 1.5]", "1.0");
        assert_eq!(text, want);
        // And the result is a recipe.
        let doc = &crate::recipe::parse(&text, "r.yaml").unwrap()[0];
        assert!(doc.slices.is_some());
    }

    #[test]
    fn a_range_used_twice_through_an_alias_is_one_value() {
        let text = "merge_method: passthrough\nslices:\n  - sources:\n      - model: a.gguf\n        layer_range: [0, 2]\n    parameters:\n      scale:\n        - filter: o_proj\n          value: &decay [{search: [0.0, 1.0]}, 0.5]\n        - filter: down_proj\n          value: *decay\n";
        let r = SearchRecipe::parse(text, "r.yaml").unwrap();
        assert_eq!(r.ranges.len(), 1);
        assert_eq!(r.ranges[0].line, 9);
        let out = r.with_values(&[0.25]);
        assert_eq!(out, text.replace("{search: [0.0, 1.0]}", "0.25"));
        let doc = &crate::recipe::parse(&out, "r.yaml").unwrap()[0];
        let scale = &doc.slices.as_ref().unwrap()[0].parameters["scale"].value;
        let down = crate::recipe::evaluate(scale, &["blk.0.ffn_down.weight", "down_proj"], 0.0);
        assert_eq!(down, Some(crate::recipe::Scalar::Num(0.25)));
    }

    #[test]
    fn values_snap_to_the_written_precision_inside_the_range() {
        let r = &SearchRecipe::parse(RECIPE, "r.yaml").unwrap().ranges[0];
        assert_eq!(r.snap(0.123456789), 0.2);
        assert_eq!(r.snap(0.4567891), 0.45679);
        assert_eq!(r.at(0.5), 0.6);
        assert_eq!(SearchRange::format(1.0), "1.0");
        assert_eq!(SearchRange::format(0.45679), "0.45679");
    }

    fn error_of(text: &str) -> String {
        SearchRecipe::parse(text, "r.yaml").unwrap_err().to_string()
    }

    #[test]
    fn a_range_where_no_number_is_taken_names_its_line() {
        let e = error_of("merge_method: passthrough\nslices:\n  - sources:\n      - model: a.gguf\n        layer_range: [0, {search: [1, 2]}]\n");
        assert!(
            e.starts_with("r.yaml:5:") && e.contains("layer_range"),
            "{e}"
        );
        let e = error_of("merge_method: linear\nmodels:\n  - model: a.gguf\n    parameters:\n      weight: 1\n      normalize: {search: [0, 1]}\n");
        assert!(e.starts_with("r.yaml:6:") && e.contains("flag"), "{e}");
        let e = error_of("merge_method: linear\nmodels:\n  - model: a.gguf\n    parameters:\n      wieght: {search: [0, 1]}\n");
        assert!(
            e.starts_with("r.yaml:5:") && e.contains("takes no parameter `wieght`"),
            "{e}"
        );
        let e = error_of("merge_method: slerp\nparameters:\n  t:\n    - filter: {search: [0, 1]}\n      value: 0.5\nmodels:\n  - model: a\n");
        assert!(e.starts_with("r.yaml:4:") && e.contains("`filter`"), "{e}");
    }

    #[test]
    fn malformed_ranges_are_refused_with_their_line() {
        let base = "merge_method: slerp\nmodels:\n  - model: a\nparameters:\n  t: ";
        for (range, says) in [
            ("{search: []}", "got 0 bound"),
            ("{search: [0.5]}", "got 1 bound"),
            ("{search: [0.9, 0.1]}", "reversed"),
            ("{search: [0.5, 0.5]}", "empty"),
            ("{search: [0, x]}", "LOW < HIGH"),
            ("{search: [0, 1], start: 0.5}", "no other key"),
            ("{search: 1}", "LOW < HIGH"),
        ] {
            let e = error_of(&format!("{base}{range}\n"));
            assert!(
                e.starts_with("r.yaml:5:") && e.contains(says),
                "{range}: {e}"
            );
        }
    }

    #[test]
    fn a_recipe_without_a_range_is_refused() {
        let e = error_of("merge_method: slerp\nmodels:\n  - model: a\nparameters:\n  t: 0.5\n");
        assert!(e.contains("no search range"), "{e}");
    }
}
