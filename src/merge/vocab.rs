//! Merging models whose vocabularies differ, as mergekit's `tokenizer_source` / `tokenizer:`
//! do it (mergekit 0.1.5 `tokenizer/build.py` and `tokenizer/embed.py`).
//!
//! The output vocabulary is one model's (`base` or a named model) or the union: the base's
//! tokens (the base model's, else the first model's), then the other models' ordinary tokens
//! it lacks, then their added (control or user-defined) tokens it lacks, each in model order.
//! `tokens:` entries it lacks are then added, in recipe order. (mergekit 0.1.5 orders the
//! union's additions by hash-map iteration, a different order each run, but always ordinary
//! before added tokens; fixtures/golden/merge/README.md.) Each input's embedding and output
//! rows are then laid out in that vocabulary before the merge method runs:
//! - a token the input has keeps the input's row (unless a `tokens:` entry forces a source);
//! - a token some inputs lack gets, in those inputs, the embedding of its one donor when only
//!   one input has it, the base model's when several do and the recipe's `base_model` is one
//!   of them, else their average; a token no input has gets zeros; a `tokens:` entry may
//!   name the source (`{source: MODEL}`, `{source: {kind: zero}}`,
//!   `{source: {kind: model_token, model: M, token: T | token_id: N}}`, `force: true`);
//! - `pad_to_multiple_of` pads the vocabulary with the mean embedding.
//!
//! Tokens are the GGUF `tokenizer.ggml.tokens` strings (for Hugging Face inputs, the
//! tokenizer module's), so the same token spelled the same way matches across models.

use crate::error::{Error, Result};
use crate::gguf::{Metadata, Value};
use std::collections::{HashMap, HashSet};

use crate::tokenizer::token_type;

/// Where the inputs lacking a token take its row from.
#[derive(Clone, Debug, PartialEq)]
enum Fill {
    /// Every input has the token and nothing is forced.
    None,
    Zero,
    /// Input `input`'s row `row`.
    Row {
        input: usize,
        row: usize,
    },
    /// The mean over the inputs that have the token.
    Average,
}

/// The output vocabulary and, per input, where each output token's row comes from.
#[derive(Debug)]
pub struct VocabPlan {
    /// Output tokens, with types and scores when the source vocabulary has them.
    pub tokens: Vec<String>,
    token_types: Option<Vec<i32>>,
    scores: Option<Vec<f32>>,
    /// Rows of the output embedding (tokens, plus padding).
    pub n_rows: usize,
    /// `perm[input][token]`: the input's row for the token, if it has one (and it is not
    /// forced to another source).
    perm: Vec<Vec<Option<usize>>>,
    fills: Vec<Fill>,
}

/// One input's vocabulary.
pub struct InputVocab<'a> {
    pub name: &'a str,
    pub metadata: &'a Metadata,
    /// Rows of its embedding (tokens past it are ignored, as mergekit ignores ids past
    /// `vocab_size`).
    pub n_rows: usize,
}

/// What the recipe asks for.
pub struct VocabRequest<'a> {
    /// `Some(i)`: input `i`'s vocabulary; `None`: the union.
    pub source: Option<usize>,
    /// The input whose vocabulary `base` means and a union starts with.
    pub base: usize,
    /// The recipe's `base_model`: a token some inputs lack takes its row when it has it.
    pub base_model: Option<usize>,
    /// `tokens:` entries of the `tokenizer:` block, in recipe order.
    pub tokens: &'a [(String, serde_json::Value)],
    pub pad_to_multiple_of: Option<usize>,
}

fn tokens_of(v: &InputVocab) -> Result<Vec<String>> {
    let arr = v
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "`{}` has no tokenizer (tokenizer.ggml.tokens): its vocabulary cannot be matched",
                v.name
            ))
        })?;
    let mut tokens: Vec<String> = arr
        .iter()
        .take(v.n_rows)
        .map(|t| match t {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    // The converter's `[PAD{id}]` fillers up to config.json's vocab_size are no tokens of the
    // tokenizer: mergekit's vocabulary is the tokenizer's (`get_vocab()`), so they are left
    // out, and with them the embedding rows past the real vocabulary.
    let types = i32_array(v.metadata, "tokenizer.ggml.token_type");
    while let Some(last) = tokens.last() {
        let id = tokens.len() - 1;
        let unused = types
            .as_ref()
            .is_none_or(|t| t.get(id) == Some(&token_type::UNUSED));
        if !(unused && *last == format!("[PAD{id}]")) {
            break;
        }
        tokens.pop();
    }
    Ok(tokens)
}

fn i32_array(md: &Metadata, key: &str) -> Option<Vec<i32>> {
    md.get(key)?.items().map(|a| {
        a.iter()
            .map(|v| match v {
                Value::I32(x) => *x,
                other => other.as_u64().unwrap_or(0) as i32,
            })
            .collect()
    })
}

fn f32_array(md: &Metadata, key: &str) -> Option<Vec<f32>> {
    md.get(key)?.items().map(|a| {
        a.iter()
            .map(|v| match v {
                Value::F32(x) => *x,
                _ => 0.0,
            })
            .collect()
    })
}

impl VocabPlan {
    /// Plan the output vocabulary. `Ok(None)` when every input already has exactly the
    /// output vocabulary and nothing is forced or padded: the embeddings merge as they are.
    pub fn new(inputs: &[InputVocab], req: &VocabRequest) -> Result<Option<VocabPlan>> {
        let vocabs: Vec<Vec<String>> = inputs.iter().map(tokens_of).collect::<Result<_>>()?;
        let source = req.source.unwrap_or(req.base);
        let src_md = inputs[source].metadata;
        let mut tokens = vocabs[source].clone();
        let mut token_types = i32_array(src_md, "tokenizer.ggml.token_type");
        let mut scores = f32_array(src_md, "tokenizer.ggml.scores");
        if let Some(t) = token_types.as_mut() {
            t.truncate(tokens.len());
        }
        if let Some(s) = scores.as_mut() {
            s.truncate(tokens.len());
        }
        let mut seen: HashSet<String> = tokens.iter().cloned().collect();
        let mut push = |tok: &str, ty: i32| {
            if seen.insert(tok.to_string()) {
                tokens.push(tok.to_string());
                if let Some(t) = token_types.as_mut() {
                    t.push(ty);
                }
                if let Some(s) = scores.as_mut() {
                    s.push(0.0);
                }
            }
        };
        if req.source.is_none() {
            // Union: the base's tokens, then each model's new ordinary ones, then its new
            // added ones (with their token types).
            for added in [false, true] {
                for (i, vocab) in vocabs.iter().enumerate() {
                    let types = i32_array(inputs[i].metadata, "tokenizer.ggml.token_type");
                    for (id, tok) in vocab.iter().enumerate() {
                        let ty = types.as_ref().and_then(|t| t.get(id).copied());
                        let is_added = matches!(
                            ty,
                            Some(
                                token_type::CONTROL
                                    | token_type::USER_DEFINED
                                    | token_type::UNKNOWN
                            )
                        );
                        if is_added == added {
                            push(tok, ty.unwrap_or(token_type::USER_DEFINED));
                        }
                    }
                }
            }
        }
        // `tokens:` entries the vocabulary lacks: new user-defined tokens (mergekit's
        // `add_tokens`), in recipe order.
        for (tok, _) in req.tokens {
            push(tok, token_type::USER_DEFINED);
        }
        let index: Vec<HashMap<&str, usize>> = vocabs
            .iter()
            .map(|v| {
                let mut m = HashMap::with_capacity(v.len());
                for (i, t) in v.iter().enumerate() {
                    m.entry(t.as_str()).or_insert(i);
                }
                m
            })
            .collect();
        let mut perm: Vec<Vec<Option<usize>>> = index
            .iter()
            .map(|ix| tokens.iter().map(|t| ix.get(t.as_str()).copied()).collect())
            .collect();

        // Explicit `tokens:` entries.
        let input_named = |name: &str| -> Result<usize> {
            inputs.iter().position(|v| v.name == name).ok_or_else(|| {
                Error::Invalid(format!(
                    "tokenizer.tokens: `{name}` is not one of the recipe's models"
                ))
            })
        };
        let mut fills = vec![Fill::None; tokens.len()];
        let mut configured = vec![false; tokens.len()];
        let out_index: HashMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        for (tok, cfg) in req.tokens {
            let id = out_index[tok.as_str()];
            let force = cfg.get("force").and_then(|f| f.as_bool()).unwrap_or(false);
            let fill = match cfg.get("source") {
                // A new token needs a source (mergekit fails on one without).
                None | Some(serde_json::Value::Null) if perm.iter().all(|p| p[id].is_none()) => {
                    return Err(Error::Invalid(format!(
                        "tokenizer.tokens: token {tok:?} is in no model's vocabulary: give it a `source`"
                    )))
                }
                None | Some(serde_json::Value::Null) => Fill::None,
                Some(serde_json::Value::String(m)) => {
                    let i = input_named(m)?;
                    let row = perm[i][id].ok_or_else(|| {
                        Error::Invalid(format!(
                            "tokenizer.tokens: token {tok:?} is not in model `{m}`"
                        ))
                    })?;
                    Fill::Row { input: i, row }
                }
                Some(obj) => match obj.get("kind").and_then(|k| k.as_str()) {
                    Some("zero") => Fill::Zero,
                    Some("model_token") => {
                        let m = obj.get("model").and_then(|m| m.as_str()).ok_or_else(|| {
                            Error::Invalid(format!(
                                "tokenizer.tokens.{tok}: model_token needs `model`"
                            ))
                        })?;
                        let i = input_named(m)?;
                        let row = match (obj.get("token_id"), obj.get("token")) {
                            (Some(n), None) => n.as_u64().map(|n| n as usize),
                            (None, Some(t)) => t.as_str().and_then(|t| index[i].get(t).copied()),
                            _ => {
                                return Err(Error::Invalid(format!(
                                    "tokenizer.tokens.{tok}: give exactly one of token_id or token"
                                )))
                            }
                        }
                        .filter(|&r| r < inputs[i].n_rows)
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "tokenizer.tokens.{tok}: the source token is not in model `{m}`"
                            ))
                        })?;
                        Fill::Row { input: i, row }
                    }
                    _ => {
                        return Err(Error::Invalid(format!(
                            "tokenizer.tokens.{tok}: source must be a model, {{kind: zero}} or {{kind: model_token, ...}}"
                        )))
                    }
                },
            };
            if force {
                for p in perm.iter_mut() {
                    p[id] = None;
                }
            }
            fills[id] = fill;
            configured[id] = true;
        }

        // mergekit's assign_embedding_sources for the rest.
        let mut any_missing = false;
        for id in 0..tokens.len() {
            let have: Vec<usize> = (0..inputs.len())
                .filter(|&i| perm[i][id].is_some())
                .collect();
            if have.len() == inputs.len() {
                continue;
            }
            any_missing = true;
            if configured[id] && fills[id] != Fill::None {
                continue;
            }
            fills[id] = match have.as_slice() {
                [] => Fill::Zero,
                [one] => Fill::Row {
                    input: *one,
                    row: perm[*one][id].expect("has the token"),
                },
                _ if req.base_model.is_some_and(|b| perm[b][id].is_some()) => {
                    let b = req.base_model.expect("checked");
                    Fill::Row {
                        input: b,
                        row: perm[b][id].expect("has the token"),
                    }
                }
                _ => Fill::Average,
            };
        }
        let n_rows = match req.pad_to_multiple_of {
            Some(m) if m > 0 => tokens.len().div_ceil(m) * m,
            _ => tokens.len(),
        };
        let identical = !any_missing
            && req.tokens.is_empty()
            && n_rows == tokens.len()
            && inputs
                .iter()
                .zip(&vocabs)
                .all(|(v, voc)| voc.len() == tokens.len() && v.n_rows == tokens.len());
        if identical {
            return Ok(None);
        }
        Ok(Some(VocabPlan {
            tokens,
            token_types,
            scores,
            n_rows,
            perm,
            fills,
        }))
    }

    /// Lay out each input's embedding (`(input, values)`, rows of `row_len`) in the output
    /// vocabulary.
    pub fn remap(&self, data: &[(usize, Vec<f32>)], row_len: usize) -> Vec<Vec<f32>> {
        let row = |input: usize, r: usize| -> Option<&[f32]> {
            data.iter()
                .find(|(i, _)| *i == input)
                .map(|(_, v)| &v[r * row_len..(r + 1) * row_len])
        };
        let n_tok = self.tokens.len();
        // Fill rows shared by every input that lacks the token.
        let fill_rows: Vec<Option<Vec<f32>>> = self
            .fills
            .iter()
            .enumerate()
            .map(|(id, f)| match f {
                Fill::None => None,
                Fill::Zero => Some(vec![0.0; row_len]),
                Fill::Row { input, row: r } => Some(
                    row(*input, *r)
                        .map(<[f32]>::to_vec)
                        // The named input does not feed this tensor: fall back to zeros.
                        .unwrap_or_else(|| vec![0.0; row_len]),
                ),
                Fill::Average => {
                    let mut acc = vec![0f32; row_len];
                    let mut count = 0usize;
                    for (i, _) in data {
                        if let Some(r) = self.perm[*i][id] {
                            for (a, x) in acc.iter_mut().zip(row(*i, r).expect("present")) {
                                *a += x;
                            }
                            count += 1;
                        }
                    }
                    if count > 0 {
                        acc.iter_mut().for_each(|a| *a /= count as f32);
                    }
                    Some(acc)
                }
            })
            .collect();
        data.iter()
            .map(|(i, v)| {
                let mut out = vec![0f32; self.n_rows * row_len];
                for id in 0..n_tok {
                    let dst = &mut out[id * row_len..(id + 1) * row_len];
                    match (self.perm[*i][id], &fill_rows[id]) {
                        (Some(r), _) => dst.copy_from_slice(&v[r * row_len..(r + 1) * row_len]),
                        (None, Some(f)) => dst.copy_from_slice(f),
                        (None, None) => {}
                    }
                }
                if self.n_rows > n_tok {
                    // Padding rows: the mean of the real ones.
                    let mut mean = vec![0f64; row_len];
                    for r in out[..n_tok * row_len].chunks_exact(row_len) {
                        for (m, x) in mean.iter_mut().zip(r) {
                            *m += *x as f64;
                        }
                    }
                    let mean: Vec<f32> = mean.iter().map(|m| (m / n_tok as f64) as f32).collect();
                    for r in out[n_tok * row_len..].chunks_exact_mut(row_len) {
                        r.copy_from_slice(&mean);
                    }
                }
                out
            })
            .collect()
    }

    /// Write the output vocabulary into `md` (tokens, types, scores; padding as unused
    /// `[PAD{i}]` tokens, as llama.cpp's converter pads).
    pub fn apply(&self, md: &mut Metadata) {
        let mut tokens = self.tokens.clone();
        let mut types = self.token_types.clone();
        let mut scores = self.scores.clone();
        for i in self.tokens.len()..self.n_rows {
            tokens.push(format!("[PAD{i}]"));
            if let Some(t) = types.as_mut() {
                t.push(token_type::UNUSED);
            }
            if let Some(s) = scores.as_mut() {
                s.push(0.0);
            }
        }
        md.set("tokenizer.ggml.tokens", Value::strings(tokens));
        if let Some(s) = scores {
            md.set("tokenizer.ggml.scores", Value::f32s(s));
        }
        if let Some(t) = types {
            md.set("tokenizer.ggml.token_type", Value::i32s(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(tokens: &[&str]) -> Metadata {
        let mut m = Metadata::new();
        m.set(
            "tokenizer.ggml.tokens",
            Value::strings(tokens.iter().copied()),
        );
        m
    }

    #[test]
    fn converter_padding_is_no_token_of_the_vocabulary() {
        // A model converted with vocab_size 5 for a tokenizer of 3 tokens, and one without.
        let mut a = md(&["x", "y", "z", "[PAD3]", "[PAD4]"]);
        a.set(
            "tokenizer.ggml.token_type",
            Value::i32s([1, 1, 1, token_type::UNUSED, token_type::UNUSED]),
        );
        let b = md(&["x", "y", "q"]);
        let inputs = [
            InputVocab {
                name: "a",
                metadata: &a,
                n_rows: 5,
            },
            InputVocab {
                name: "b",
                metadata: &b,
                n_rows: 3,
            },
        ];
        let none = Vec::new();
        let req = |source| VocabRequest {
            source,
            base: 0,
            base_model: Some(0),
            tokens: &none,
            pad_to_multiple_of: None,
        };
        // As mergekit: the union is the tokenizers' tokens, no fillers, no filler rows.
        let union = VocabPlan::new(&inputs, &req(None)).unwrap().unwrap();
        assert_eq!(union.tokens, ["x", "y", "z", "q"]);
        assert_eq!(union.n_rows, 4);
        // The base's vocabulary: its three tokens; the two filler rows are dropped.
        let base = VocabPlan::new(&inputs, &req(Some(0))).unwrap().unwrap();
        assert_eq!(base.tokens, ["x", "y", "z"]);
        assert_eq!(base.n_rows, 3);
    }

    #[test]
    fn missing_tokens_take_the_donor_the_base_or_the_average() {
        let (a, b, c) = (
            md(&["x", "y", "p"]),
            md(&["x", "q", "y", "p"]),
            md(&["y", "x", "q"]),
        );
        let inputs = [
            InputVocab {
                name: "a",
                metadata: &a,
                n_rows: 3,
            },
            InputVocab {
                name: "b",
                metadata: &b,
                n_rows: 4,
            },
            InputVocab {
                name: "c",
                metadata: &c,
                n_rows: 3,
            },
        ];
        let none = Vec::new();
        let req = VocabRequest {
            source: None,
            base: 0,
            base_model: Some(0),
            tokens: &none,
            pad_to_multiple_of: Some(3),
        };
        let plan = VocabPlan::new(&inputs, &req).unwrap().unwrap();
        assert_eq!(plan.tokens, ["x", "y", "p", "q"]);
        assert_eq!(plan.n_rows, 6);
        // One value per row: the row's token index times 10 plus the input number.
        let data = vec![
            (0, vec![0.0, 10.0, 20.0]),
            (1, vec![1.0, 11.0, 21.0, 31.0]),
            (2, vec![2.0, 12.0, 22.0]),
        ];
        let out = plan.remap(&data, 1);
        // p: a and b have it, base a does: c gets a's row. q: b and c have it, base does not:
        // a gets their average.
        assert_eq!(out[0][..4], [0.0, 10.0, 20.0, (11.0 + 22.0) / 2.0]);
        assert_eq!(out[1][..4], [1.0, 21.0, 31.0, 11.0]);
        assert_eq!(out[2][..4], [12.0, 2.0, 20.0, 22.0]);
        let mean = (0.0 + 10.0 + 20.0 + 16.5) / 4.0;
        assert_eq!(out[0][4..], [mean, mean]);
    }

    /// mergekit's union and `tokens:` order, and its rule without a base model.
    #[test]
    fn union_order_new_tokens_and_no_base_model() {
        let a = md(&["x", "y"]);
        let mut b = md(&["<c>", "x", "q", "y"]);
        b.set(
            "tokenizer.ggml.token_type",
            Value::i32s([token_type::CONTROL, 1, 1, 1]),
        );
        let c = md(&["x", "q", "r"]);
        let inputs = [
            InputVocab {
                name: "a",
                metadata: &a,
                n_rows: 2,
            },
            InputVocab {
                name: "b",
                metadata: &b,
                n_rows: 4,
            },
            InputVocab {
                name: "c",
                metadata: &c,
                n_rows: 3,
            },
        ];
        let tokens = vec![
            (
                "z".to_string(),
                serde_json::json!({"source": {"kind": "zero"}}),
            ),
            ("r".to_string(), serde_json::json!({"source": "c"})),
            (
                "n".to_string(),
                serde_json::json!({"source": {"kind": "model_token", "model": "b", "token": "q"}}),
            ),
        ];
        let req = VocabRequest {
            source: None,
            base: 0,
            base_model: None,
            tokens: &tokens,
            pad_to_multiple_of: None,
        };
        let plan = VocabPlan::new(&inputs, &req).unwrap().unwrap();
        // b's control token after every ordinary one (c's `r` too); then the new `tokens:`
        // entries in recipe order.
        assert_eq!(plan.tokens, ["x", "y", "q", "r", "<c>", "z", "n"]);
        let data = vec![
            (0, vec![0.0, 10.0]),
            (1, vec![1.0, 11.0, 21.0, 31.0]),
            (2, vec![2.0, 12.0, 22.0]),
        ];
        let out = plan.remap(&data, 1);
        // q: b and c have it and there is no base model: a gets their mean, not b's row.
        assert_eq!(out[0], [0.0, 10.0, 16.5, 22.0, 1.0, 0.0, 21.0]);
        assert_eq!(out[1], [11.0, 31.0, 21.0, 22.0, 1.0, 0.0, 21.0]);
        assert_eq!(out[2], [2.0, 20.5, 12.0, 22.0, 1.0, 0.0, 21.0]);
        // A new token without a source is an error.
        let bad = vec![("w".to_string(), serde_json::json!({"force": true}))];
        let req = VocabRequest {
            tokens: &bad,
            ..req
        };
        let err = VocabPlan::new(&inputs, &req).unwrap_err().to_string();
        assert!(err.contains("\"w\"") && err.contains("source"), "{err}");
    }

    #[test]
    fn identical_vocabularies_need_no_plan_and_forced_tokens_do() {
        let a = md(&["x", "y"]);
        let inputs = [
            InputVocab {
                name: "a",
                metadata: &a,
                n_rows: 2,
            },
            InputVocab {
                name: "b",
                metadata: &a,
                n_rows: 2,
            },
        ];
        let none = Vec::new();
        let req = VocabRequest {
            source: Some(1),
            base: 0,
            base_model: Some(0),
            tokens: &none,
            pad_to_multiple_of: None,
        };
        assert!(VocabPlan::new(&inputs, &req).unwrap().is_none());
        let forced = vec![(
            "y".to_string(),
            serde_json::json!({"source": {"kind": "zero"}, "force": true}),
        )];
        let req = VocabRequest {
            source: Some(1),
            base: 0,
            base_model: Some(0),
            tokens: &forced,
            pad_to_multiple_of: None,
        };
        let plan = VocabPlan::new(&inputs, &req).unwrap().unwrap();
        let out = plan.remap(&[(0, vec![1.0, 2.0]), (1, vec![3.0, 4.0])], 1);
        assert_eq!(out, [vec![1.0, 0.0], vec![3.0, 0.0]]);
        let bad = vec![("zz".to_string(), serde_json::json!({"source": "a"}))];
        let req = VocabRequest {
            source: Some(1),
            base: 0,
            base_model: Some(0),
            tokens: &bad,
            pad_to_multiple_of: None,
        };
        assert!(VocabPlan::new(&inputs, &req)
            .unwrap_err()
            .to_string()
            .contains("zz"));
    }
}
