//! Table-driven model architectures: how Hugging Face tensor names and `config.json`
//! hyper-parameters become llama.cpp's canonical tensor names and GGUF metadata.
//!
//! Each architecture is one [`Architecture`] value (see [`llama`]): the HF class names it
//! handles, its tensor-name rules, the tensors it ignores and its hyper-parameter table.
//! Adding an architecture means adding one such table to [`ARCHITECTURES`].
//!
//! Only the model's tensors and hyper-parameters are described here; tokenizer metadata
//! (`tokenizer.ggml.*`) is added by the tokenizer module.

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

use crate::gguf::{Metadata, Value};
use crate::layout::{RowOrder, Transform};
use serde_json::Value as Json;

/// Every architecture smelt knows, searched in order.
pub static ARCHITECTURES: &[&Architecture] = &[
    &llama::LLAMA,
    &qwen2::QWEN2,
    &qwen3::QWEN3,
    &gemma2::GEMMA2,
    &gemma3::GEMMA3,
    &phi3::PHI3,
];

/// How a tensor's rows are reordered on the way from Hugging Face to GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permute {
    None,
    /// llama.cpp's rotary head permutation with `n_head` heads (attention q).
    Heads,
    /// The same permutation with `n_head_kv` heads (attention k).
    KvHeads,
}

/// One tensor-name rule. Both names leave out the `.weight` / `.bias` suffix, which is kept
/// as is; `{N}` stands for the block index. An HF name with `{E}` (the expert index) names one
/// part of a stacked tensor: the parts `{E} = 0..n_expert` become one GGUF tensor with one more
/// (outermost) dimension, as `torch.stack(parts)` in `convert_hf_to_gguf.py`.
#[derive(Clone, Copy, Debug)]
pub struct TensorRule {
    pub hf: &'static str,
    pub gguf: &'static str,
    pub permute: Permute,
    /// Applied to the values as they are read.
    pub transform: Transform,
}

/// A rule that renames only.
pub const fn rule(hf: &'static str, gguf: &'static str) -> TensorRule {
    TensorRule {
        hf,
        gguf,
        permute: Permute::None,
        transform: Transform::None,
    }
}

/// A rule whose rows are permuted (llama's q and k).
pub const fn permuted(hf: &'static str, gguf: &'static str, permute: Permute) -> TensorRule {
    TensorRule {
        hf,
        gguf,
        permute,
        transform: Transform::None,
    }
}

/// A rule whose values get `+ 1` (Gemma's norms).
pub const fn shifted(hf: &'static str, gguf: &'static str) -> TensorRule {
    TensorRule {
        hf,
        gguf,
        permute: Permute::None,
        transform: Transform::AddOne,
    }
}

/// A hyper-parameter without a default.
pub const fn hp(key: &'static str, source: Source, required: bool) -> HParam {
    HParam {
        key,
        source,
        default: None,
        required,
    }
}

/// A hyper-parameter written with `default` when the config has no value.
pub const fn hp_or(key: &'static str, source: Source, default: f64) -> HParam {
    HParam {
        key,
        source,
        default: Some(default),
        required: false,
    }
}

/// `config.json` keys `TextModel.set_gguf_parameters` reads, in its order of preference.
pub const BLOCK_COUNT: &[&str] = &["n_layers", "num_hidden_layers", "n_layer", "num_layers"];
pub const CONTEXT_LENGTH: &[&str] = &[
    "max_position_embeddings",
    "n_ctx",
    "n_positions",
    "max_length",
    "max_sequence_length",
    "model_max_length",
];
pub const EMBEDDING_LENGTH: &[&str] = &["hidden_size", "n_embd", "dim"];
pub const FEED_FORWARD_LENGTH: &[&str] = &[
    "prefix_dense_intermediate_size",
    "dense_intermediate_size",
    "intermediate_size",
    "n_inner",
    "hidden_dim",
];
pub const HEAD_COUNT: &[&str] = &["num_attention_heads", "n_head", "n_heads"];
pub const HEAD_COUNT_KV: &[&str] = &["num_key_value_heads", "n_kv_heads"];
pub const ROPE_THETA: &[&str] = &[
    "global_rope_theta",
    "rope_global_theta",
    "rope_theta_global",
    "rope_theta",
    "rotary_emb_base",
];
pub const ROPE_THETA_SWA: &[&str] = &[
    "local_rope_theta",
    "rope_local_theta",
    "rope_theta_local",
    "swa_rope_theta",
    "rope_local_base_freq",
];
pub const RMS_EPS: &[&str] = &["rms_norm_eps", "norm_eps"];
pub const EXPERT_COUNT: &[&str] = &["num_local_experts", "num_experts", "n_routed_experts"];
pub const EXPERT_USED_COUNT: &[&str] = &[
    "num_experts_per_tok",
    "num_experts_per_token",
    "top_k_experts",
];

/// Where one hyper-parameter comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// The first of these `config.json` keys that is present, as a GGUF u32.
    U32(&'static [&'static str]),
    /// The first of these `config.json` keys that is present, as a GGUF f32.
    F32(&'static [&'static str]),
    /// `head_dim`, else `hidden_size / num_attention_heads` (u32).
    HeadDim,
    /// The RoPE base: `rope_theta` inside `rope_parameters` / `rope_scaling`, else the
    /// top-level keys given (f32).
    RopeTheta(&'static [&'static str]),
    /// `rope.scaling.*` keys from `rope_scaling` / `rope_parameters` (linear, yarn, longrope);
    /// the key of the [`HParam`] is not used.
    RopeScaling,
    /// `head_dim`, else the [`HParam`]'s default, written under the key and under
    /// `attention.value_length`; nothing when neither is there.
    KeyValueLength,
    /// Like [`Source::KeyValueLength`], with `hidden_size / num_attention_heads` when
    /// `architectures[0]` is one of these (HF config classes that always fill in `head_dim`,
    /// which the converter sees through `AutoConfig`).
    KeyValueLengthComputedFor(&'static [&'static str]),
    /// The sliding-window RoPE base: `rope_theta` of `rope_parameters.sliding_attention`, else
    /// the first of these top-level keys (f32); nothing when absent.
    RopeThetaSwa(&'static [&'static str]),
    /// A f32 written only when present and not zero (Python's `if value:`).
    F32NonZero(&'static [&'static str]),
    /// A u32 written unless the config key `.1` holds the integer `.2` (Gemma 3's
    /// `sliding_window` unless `sliding_window_pattern == 1`).
    U32Unless(&'static [&'static str], &'static str, u64),
    /// `original_max_position_embeddings` of the RoPE parameters, else the top-level key (u32).
    RopeOriginalContext,
    /// `int(partial_rotary_factor * n_embd) // n_head` (Phi-3's rope dimension count;
    /// `partial_rotary_factor` defaults to 1).
    PartialRopeDim,
    /// Phi-3's long-RoPE attention factor, written when the RoPE parameters hold
    /// `long_factor` (f32).
    LongRopeAttnFactor,
}

/// One GGUF hyper-parameter key (`{arch}.` + `key`), written in table order.
#[derive(Clone, Copy, Debug)]
pub struct HParam {
    pub key: &'static str,
    pub source: Source,
    /// Written when the config has no value (HF's `PretrainedConfig` default).
    pub default: Option<f64>,
    /// An error when the config has no value and there is no default.
    pub required: bool,
}

/// One architecture's table.
#[derive(Debug)]
pub struct Architecture {
    /// `general.architecture` and the prefix of the hyper-parameter keys.
    pub gguf_name: &'static str,
    /// `config.json` `architectures[0]` values handled.
    pub hf_architectures: &'static [&'static str],
    /// Tensor rules, tried in order (the first match wins). The store presents tensors in
    /// `convert_hf_to_gguf.py`'s order, not the table's (see `convert/`).
    pub tensors: &'static [TensorRule],
    /// HF tensor-name suffixes dropped without a look (e.g. `.rotary_emb.inv_freq`).
    pub ignored_suffixes: &'static [&'static str],
    /// Hyper-parameters in the order `convert_hf_to_gguf.py` writes them.
    pub hparams: &'static [HParam],
    /// `config.json` keys for the attention head count and the key/value head count.
    pub n_head_keys: &'static [&'static str],
    pub n_head_kv_keys: &'static [&'static str],
    /// `config.json` keys for the number of experts a `{E}` rule stacks.
    pub n_expert_keys: &'static [&'static str],
    /// What this architecture's conversion does beyond the table, each an optional hook.
    pub hooks: Hooks,
}

/// An architecture's departures from the common conversion, as `convert_hf_to_gguf.py`'s
/// model class overrides them. Each is `None` (or the default) for most architectures; the
/// converter and the tokenizer call them and never test an architecture's name.
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    /// F32 tensors generated from config.json, in the order they are written (Phi-3's
    /// `rope_factors_long` / `rope_factors_short`); llama3's `rope_freqs` is generated for any
    /// architecture whose config asks for llama3 scaling.
    pub generated_tensors: Option<GeneratedTensors>,
    /// The rows of `token_embd` to keep, from the folder's tokenizer files (Gemma 3 keeps only
    /// the real vocabulary); `None` from the hook keeps them all.
    pub embd_rows: Option<EmbdRowsHook>,
    /// Which of the converter's `set_vocab` variants writes the tokenizer metadata.
    pub vocab: VocabRules,
    /// `config.json` keys the architecture adds when a GGUF is written back as a Hugging Face
    /// folder, from its integer hyper-parameters (`n("block_count")`, keys without the
    /// `{arch}.` prefix).
    pub hf_config: Option<HfConfigHook>,
    /// Further HF classes whose tokenizer is converted by these rules, though smelt does not
    /// convert their weights (`LlamaModel`, the old `LLaMAForCausalLM`).
    pub vocab_aliases: &'static [&'static str],
}

/// No departures.
pub const NO_HOOKS: Hooks = Hooks {
    generated_tensors: None,
    embd_rows: None,
    vocab: VocabRules::Common,
    vocab_aliases: &[],
    hf_config: None,
};

/// Phi-3's long-RoPE factor tensors (llama.cpp's `LLM_TENSOR_ROPE_FACTORS_*`).
pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";
pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";

/// See [`Hooks::embd_rows`]: the folder in, the rows to keep out.
pub type EmbdRowsHook = fn(&std::path::Path) -> crate::error::Result<Option<usize>>;

/// See [`Hooks::hf_config`].
pub type HfConfigHook = fn(&dyn Fn(&str) -> Option<u64>, &mut serde_json::Map<String, Json>);

/// Generated tensors: (name, values) for a config, or a message naming the bad config key.
pub type GeneratedTensors =
    fn(&Json, &Architecture) -> Result<Vec<(&'static str, Vec<f32>)>, String>;

/// The converter's tokenizer rules for a class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VocabRules {
    /// The common path.
    #[default]
    Common,
    /// `LlamaModel.set_vocab`: `add_space_prefix` from the tokenizer config, the CodeLlama and
    /// small-Granite special cases.
    Llama,
    /// `conversion/gemma.py`: a SentencePiece vocabulary, then `add_space_prefix = false`.
    Gemma,
}

/// The tokenizer rules for HF class `hf_class`.
pub fn vocab_rules(hf_class: &str) -> VocabRules {
    ARCHITECTURES
        .iter()
        .find(|a| {
            a.hf_architectures.contains(&hf_class) || a.hooks.vocab_aliases.contains(&hf_class)
        })
        .map_or(VocabRules::Common, |a| a.hooks.vocab)
}

/// A Hugging Face tensor name resolved by an [`Architecture`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// Canonical name (`blk.3.attn_q.weight`).
    pub name: String,
    pub block: Option<usize>,
    /// Index of the rule in [`Architecture::tensors`].
    pub rule: usize,
    pub permute: Permute,
    pub transform: Transform,
    /// The expert index of one part of a stacked tensor (`{E}` rules).
    pub expert: Option<usize>,
}

/// Attention head counts, for the q/k permutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub n_head: usize,
    pub n_head_kv: usize,
}

/// The architecture handling HF class `hf_arch` (`LlamaForCausalLM`).
pub fn by_hf_name(hf_arch: &str) -> Option<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .copied()
        .find(|a| a.hf_architectures.contains(&hf_arch))
}

/// The architecture with GGUF name `name` (`llama`).
pub fn by_gguf_name(name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().copied().find(|a| a.gguf_name == name)
}

/// Every HF class name smelt handles, for error messages.
pub fn supported_hf_names() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .flat_map(|a| a.hf_architectures.iter().copied())
        .collect()
}

/// The block index of a canonical layer tensor name (`blk.12.attn_q.weight` → 12) and the
/// rest of the name (`attn_q.weight`); `None` for non-layer tensors.
pub fn layer_index(canonical: &str) -> Option<(usize, &str)> {
    let rest = canonical.strip_prefix("blk.")?;
    let (digits, tail) = rest.split_once('.')?;
    Some((parse_index(digits)?, tail))
}

/// A decimal block index without sign or leading zeros.
fn parse_index(s: &str) -> Option<usize> {
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if ok {
        s.parse().ok()
    } else {
        None
    }
}

/// Indices found by [`match_indices`]: the block (`{N}`) and the expert (`{E}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Indices {
    block: Option<usize>,
    expert: Option<usize>,
}

/// Match `name` against a pattern with at most one `{N}` and at most one `{E}`.
fn match_indices(pattern: &str, name: &str) -> Option<Indices> {
    let mut found = Indices::default();
    let (mut pat, mut rest) = (pattern, name);
    loop {
        let next = [("{N}", 0), ("{E}", 1)]
            .into_iter()
            .filter_map(|(p, which)| pat.find(p).map(|at| (at, which)))
            .min();
        let Some((at, which)) = next else {
            return (pat == rest).then_some(found);
        };
        rest = rest.strip_prefix(&pat[..at])?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n = parse_index(&rest[..digits])?;
        match which {
            0 => found.block = Some(n),
            _ => found.expert = Some(n),
        }
        rest = &rest[digits..];
        pat = &pat[at + 3..];
    }
}

/// Match `name` against a pattern with at most one `{N}`: `Some(None)` for a match without
/// an index, `Some(Some(n))` with one.
#[cfg(test)]
fn match_pattern(pattern: &str, name: &str) -> Option<Option<usize>> {
    match_indices(pattern, name).map(|i| i.block)
}

fn fill_pattern(pattern: &str, block: Option<usize>) -> Option<String> {
    match (pattern.contains("{N}"), block) {
        (true, Some(n)) => Some(pattern.replace("{N}", &n.to_string())),
        (false, None) => Some(pattern.to_string()),
        _ => None,
    }
}

/// `x.weight` → (`x`, `.weight`); names without one of the two suffixes have none.
fn split_suffix(name: &str) -> (&str, &str) {
    for suffix in [".weight", ".bias"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return (base, suffix);
        }
    }
    (name, "")
}

/// The first of `keys` present in `config` (and not null).
pub fn find<'a>(config: &'a Json, keys: &[&str]) -> Option<(&'a str, &'a Json)> {
    let obj = config.as_object()?;
    keys.iter()
        .find_map(|k| obj.get_key_value(*k).filter(|(_, v)| !v.is_null()))
        .map(|(k, v)| (k.as_str(), v))
}

impl Architecture {
    /// The canonical name of HF tensor `hf`, or `None` when no rule matches.
    pub fn canonical(&self, hf: &str) -> Option<Mapped> {
        let (base, suffix) = split_suffix(hf);
        self.tensors.iter().enumerate().find_map(|(i, rule)| {
            let idx = match_indices(rule.hf, base)?;
            Some(Mapped {
                name: format!("{}{suffix}", fill_pattern(rule.gguf, idx.block)?),
                block: idx.block,
                rule: i,
                permute: rule.permute,
                transform: rule.transform,
                expert: idx.expert,
            })
        })
    }

    /// The rule and block index behind canonical name `canonical`.
    pub fn rule_for_canonical(&self, canonical: &str) -> Option<(&TensorRule, Option<usize>)> {
        let (base, _) = split_suffix(canonical);
        self.tensors.iter().find_map(|rule| {
            let idx = match_indices(rule.gguf, base)?;
            Some((rule, idx.block))
        })
    }

    /// The Hugging Face name of canonical tensor `canonical` (`blk.0.attn_q.weight` →
    /// `model.layers.0.self_attn.q_proj.weight`), for writing HF folders. The rows of a
    /// tensor whose rule has a [`Permute`] must be un-permuted too, and a [`Transform`]
    /// undone. `None` for a stacked tensor (see [`Architecture::hf_expert_name`]).
    pub fn hf_name(&self, canonical: &str) -> Option<String> {
        let (_, suffix) = split_suffix(canonical);
        let (rule, block) = self.rule_for_canonical(canonical)?;
        if rule.hf.contains("{E}") {
            return None;
        }
        Some(format!("{}{suffix}", fill_pattern(rule.hf, block)?))
    }

    /// The Hugging Face name of expert `expert`'s part of stacked tensor `canonical`
    /// (`blk.0.ffn_gate_exps.weight`, 3 → `model.layers.0.block_sparse_moe.experts.3.w1.weight`).
    pub fn hf_expert_name(&self, canonical: &str, expert: usize) -> Option<String> {
        let (_, suffix) = split_suffix(canonical);
        let (rule, block) = self.rule_for_canonical(canonical)?;
        if !rule.hf.contains("{E}") {
            return None;
        }
        let name = fill_pattern(rule.hf, block)?.replace("{E}", &expert.to_string());
        Some(format!("{name}{suffix}"))
    }

    /// Whether HF tensor `hf` is one llama.cpp's converter drops.
    pub fn is_ignored(&self, hf: &str) -> bool {
        self.ignored_suffixes.iter().any(|s| hf.ends_with(s))
    }

    /// Head counts from `config.json` (`n_head_kv` defaults to `n_head`, as in HF).
    pub fn heads(&self, config: &Json) -> Result<Heads, String> {
        let get = |keys: &[&str]| -> Result<Option<usize>, String> {
            match find(config, keys) {
                None => Ok(None),
                Some((k, v)) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| format!("`{k}` is {v}, expected a positive integer")),
            }
        };
        let n_head = get(self.n_head_keys)?
            .ok_or_else(|| format!("no head count (one of {:?})", self.n_head_keys))?;
        let n_head_kv = get(self.n_head_kv_keys)?.unwrap_or(n_head);
        Ok(Heads { n_head, n_head_kv })
    }

    /// Refuse `config.json` values no model can have, naming the key: head counts that do not
    /// divide (the width into heads, the heads into key/value groups), sizes of 0, RoPE bases
    /// and factors that are not finite and positive (they would give NaN frequencies).
    pub fn check_config(&self, config: &Json) -> Result<(), String> {
        let heads = self.heads(config)?;
        let head_key = find(config, self.n_head_keys).map_or("num_attention_heads", |(k, _)| k);
        if let Some((k, _)) = find(config, self.n_head_kv_keys) {
            if heads.n_head % heads.n_head_kv != 0 {
                return Err(format!(
                    "`{k}` is {}, which does not divide `{head_key}` ({}): the query heads do not split into key/value groups",
                    heads.n_head_kv, heads.n_head
                ));
            }
        }
        let keys = [
            EMBEDDING_LENGTH,
            FEED_FORWARD_LENGTH,
            &["head_dim"],
            &["vocab_size"],
        ];
        for keys in keys {
            if let Some((k, v)) = find(config, keys) {
                if v.as_u64() == Some(0) || v.as_f64() == Some(0.0) {
                    return Err(format!("`{k}` is 0"));
                }
            }
        }
        let head_dim_given = find(config, &["head_dim"]).is_some()
            || self
                .hparams
                .iter()
                .any(|hp| matches!(hp.source, Source::KeyValueLength) && hp.default.is_some());
        if let (Some((k, v)), false) = (find(config, EMBEDDING_LENGTH), head_dim_given) {
            if let Some(width) = v.as_u64() {
                if width % heads.n_head as u64 != 0 {
                    return Err(format!(
                        "`{k}` ({width}) does not split into `{head_key}` ({}) heads of one size, and there is no `head_dim`",
                        heads.n_head
                    ));
                }
            }
        }
        let positive = |k: &str, v: &Json| -> Result<(), String> {
            match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 && (x as f32).is_finite() => Ok(()),
                _ => Err(format!("`{k}` is {v}, expected a finite number above 0")),
            }
        };
        if let Some((k, v)) = find(config, ROPE_THETA) {
            positive(k, v)?;
        }
        if let Some(r) = rope_parameters(config) {
            for key in [
                "rope_theta",
                "factor",
                "low_freq_factor",
                "high_freq_factor",
                "original_max_position_embeddings",
            ] {
                if let Some((k, v)) = find(r, &[key]) {
                    positive(k, v).map_err(|m| format!("rope scaling: {m}"))?;
                }
            }
            for key in ["long_factor", "short_factor"] {
                if let Some(list) = r.get(key).and_then(Json::as_array) {
                    for v in list {
                        positive(key, v).map_err(|m| format!("rope scaling: {m}"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The row order for a tensor of `n_rows` rows under rule permutation `permute`, or an
    /// error when the rows do not split into the heads.
    pub fn row_order(
        &self,
        permute: Permute,
        heads: Heads,
        n_rows: usize,
    ) -> Result<RowOrder, String> {
        let n_head = match permute {
            Permute::None => return Ok(RowOrder::AsStored),
            Permute::Heads => heads.n_head,
            Permute::KvHeads => heads.n_head_kv,
        };
        if n_head.checked_mul(2).is_none_or(|h| n_rows % h != 0) {
            return Err(format!(
                "{n_rows} rows do not split into {n_head} heads of an even size"
            ));
        }
        Ok(RowOrder::HeadPermute { n_head })
    }

    /// GGUF metadata from `config.json`: `general.architecture`, `general.type`,
    /// `general.name` (`name`), then the hyper-parameter table in order.
    pub fn metadata(&self, config: &Json, name: &str) -> Result<Metadata, String> {
        let mut md = Metadata::new();
        md.set("general.architecture", Value::String(self.gguf_name.into()));
        md.set("general.type", Value::String("model".into()));
        md.set("general.name", Value::String(name.into()));
        let rope = rope_parameters(config);
        for hp in self.hparams {
            let key = format!("{}.{}", self.gguf_name, hp.key);
            let missing = || -> Result<(), String> {
                if hp.required {
                    Err(format!(
                        "config.json has no value for `{key}` ({:?})",
                        hp.source
                    ))
                } else {
                    Ok(())
                }
            };
            match hp.source {
                Source::U32(keys) => match (find(config, keys), hp.default) {
                    (Some((k, v)), _) => md.set(key, Value::U32(as_u32(k, v)?)),
                    (None, Some(d)) => md.set(key, Value::U32(d as u32)),
                    (None, None) => missing()?,
                },
                Source::F32(keys) => match (find(config, keys), hp.default) {
                    (Some((k, v)), _) => md.set(key, Value::F32(as_f32(k, v)?)),
                    (None, Some(d)) => md.set(key, Value::F32(d as f32)),
                    (None, None) => missing()?,
                },
                Source::RopeTheta(keys) => {
                    let found = match rope.and_then(|r| find(r, &["rope_theta"])) {
                        Some(kv) => Some(kv),
                        None => find(config, keys),
                    };
                    match (found, hp.default) {
                        (Some((k, v)), _) => md.set(key, Value::F32(as_f32(k, v)?)),
                        (None, Some(d)) => md.set(key, Value::F32(d as f32)),
                        (None, None) => missing()?,
                    }
                }
                Source::HeadDim => match head_dim(config, self)? {
                    Some(d) => md.set(key, Value::U32(d)),
                    None => missing()?,
                },
                Source::RopeScaling => {
                    if let Some(r) = rope {
                        rope_scaling(self.gguf_name, r, &mut md)?;
                    }
                }
                Source::KeyValueLength | Source::KeyValueLengthComputedFor(_) => {
                    let computed = match hp.source {
                        Source::KeyValueLengthComputedFor(archs) => {
                            let hf = config
                                .get("architectures")
                                .and_then(|a| a.get(0))
                                .and_then(Json::as_str);
                            hf.is_some_and(|h| archs.contains(&h))
                        }
                        _ => false,
                    };
                    let d = match (find(config, &["head_dim"]), hp.default) {
                        (Some((k, v)), _) => Some(as_u32(k, v)?),
                        (None, Some(d)) => Some(d as u32),
                        (None, None) if computed => head_dim(config, self)?,
                        (None, None) => None,
                    };
                    if let Some(d) = d {
                        md.set(key, Value::U32(d));
                        md.set(
                            format!("{}.attention.value_length", self.gguf_name),
                            Value::U32(d),
                        );
                    }
                }
                Source::RopeThetaSwa(keys) => {
                    let swa = find(config, &["rope_parameters", "rope_scaling"])
                        .map(|(_, r)| r)
                        .filter(|r| {
                            r.get("full_attention").is_some()
                                || r.get("sliding_attention").is_some()
                        });
                    let found = match swa {
                        Some(r) => r
                            .get("sliding_attention")
                            .and_then(|s| find(s, &["rope_theta"])),
                        None => find(config, keys),
                    };
                    match (found, hp.default) {
                        (Some((k, v)), _) => md.set(key, Value::F32(as_f32(k, v)?)),
                        (None, Some(d)) => md.set(key, Value::F32(d as f32)),
                        (None, None) => {}
                    }
                }
                Source::F32NonZero(keys) => {
                    if let Some((k, v)) = find(config, keys) {
                        let x = as_f32(k, v)?;
                        if x != 0.0 {
                            md.set(key, Value::F32(x));
                        }
                    }
                }
                Source::U32Unless(keys, cond, value) => {
                    let skip = find(config, &[cond]).and_then(|(_, v)| v.as_u64()) == Some(value);
                    if !skip {
                        match (find(config, keys), hp.default) {
                            (Some((k, v)), _) => md.set(key, Value::U32(as_u32(k, v)?)),
                            (None, Some(d)) => md.set(key, Value::U32(d as u32)),
                            (None, None) => missing()?,
                        }
                    }
                }
                Source::RopeOriginalContext => {
                    let found = rope
                        .and_then(|r| find(r, &["original_max_position_embeddings"]))
                        .or_else(|| find(config, &["original_max_position_embeddings"]));
                    match found {
                        Some((k, v)) => md.set(key, Value::U32(as_u32(k, v)?)),
                        None => missing()?,
                    }
                }
                Source::PartialRopeDim => {
                    md.set(key, Value::U32(partial_rope_dim(config, self)?));
                }
                Source::LongRopeAttnFactor => {
                    if let Some(f) = longrope_attn_factor(config, self)? {
                        md.set(key, Value::F32(f));
                    }
                }
            }
        }
        Ok(md)
    }

    /// The number of parts a stacked (`{E}`) tensor must have.
    pub fn n_expert(&self, config: &Json) -> Result<Option<usize>, String> {
        match find(config, self.n_expert_keys) {
            None => Ok(None),
            Some((k, v)) => as_u32(k, v).map(|n| Some(n as usize)),
        }
    }
}

/// A number from the RoPE parameters, else from the top level of the config.
fn rope_number(config: &Json, key: &str) -> Option<f64> {
    rope_parameters(config)
        .and_then(|r| find(r, &[key]))
        .or_else(|| find(config, &[key]))
        .and_then(|(_, v)| v.as_f64())
}

/// `int(partial_rotary_factor * n_embd) // n_head`.
fn partial_rope_dim(config: &Json, arch: &Architecture) -> Result<u32, String> {
    let pct = rope_number(config, "partial_rotary_factor").unwrap_or(1.0);
    let (ek, e) = find(config, &["hidden_size", "n_embd"]).ok_or("no `hidden_size`")?;
    let (hk, h) = find(config, arch.n_head_keys).ok_or("no head count")?;
    let (e, h) = (as_u32(ek, e)?, as_u32(hk, h)?);
    if h == 0 {
        return Err(format!("`{hk}` is 0"));
    }
    Ok(((pct * e as f64) as u64 / h as u64) as u32)
}

/// Phi-3's long-RoPE attention factor (`Phi3MiniModel.generate_extra_tensors`), computed in
/// f64 like Python; `None` without `long_factor`.
fn longrope_attn_factor(config: &Json, _arch: &Architecture) -> Result<Option<f32>, String> {
    let Some(r) = rope_parameters(config) else {
        return Ok(None);
    };
    if r.get("long_factor")
        .and_then(Json::as_array)
        .is_none_or(|a| a.is_empty())
    {
        return Ok(None);
    }
    let ctx = find(config, &["n_positions", "max_position_embeddings"])
        .and_then(|(_, v)| v.as_f64())
        .ok_or("long-RoPE factors without `max_position_embeddings`")?;
    let orig = rope_number(config, "original_max_position_embeddings")
        .ok_or("long-RoPE factors without `original_max_position_embeddings`")?;
    let scale = ctx / orig;
    let ty = find(r, &["rope_type", "type"])
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let f = match ty.as_str() {
        "su" | "longrope" if scale > 1.0 => (1.0 + scale.ln() / orig.ln()).sqrt(),
        "yarn" if scale > 1.0 => 0.1 * scale.ln() + 1.0,
        "su" | "longrope" | "yarn" => 1.0,
        "" => return Err("long-RoPE factors without a rope `type`".into()),
        t => {
            return Err(format!(
                "rope scaling type `{t}` with long factors is not supported"
            ))
        }
    };
    Ok(Some(f as f32))
}

/// The long and the short RoPE factors.
pub type LongRopeFactors = (Vec<f32>, Vec<f32>);

/// Phi-3's generated tensors: `rope_factors_long` and `rope_factors_short` from the config's
/// long-RoPE factors (none without them).
pub fn longrope_factor_tensors(
    config: &Json,
    arch: &Architecture,
) -> Result<Vec<(&'static str, Vec<f32>)>, String> {
    Ok(match longrope_factors(config, arch)? {
        Some((long, short)) => vec![(ROPE_FACTORS_LONG, long), (ROPE_FACTORS_SHORT, short)],
        None => Vec::new(),
    })
}

/// Phi-3's `rope_factors_long` and `rope_factors_short` values (`None` without
/// `long_factor`), checked against the rope dimension count as the converter checks them.
pub fn longrope_factors(
    config: &Json,
    arch: &Architecture,
) -> Result<Option<LongRopeFactors>, String> {
    let Some(r) = rope_parameters(config) else {
        return Ok(None);
    };
    let list = |k: &str| -> Result<Option<Vec<f32>>, String> {
        match r.get(k).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(Json::Array(a)) => a
                .iter()
                .map(|v| as_f32(k, v))
                .collect::<Result<Vec<f32>, String>>()
                .map(Some),
            Some(v) => Err(format!("`{k}` is {v}, expected a list of numbers")),
        }
    };
    let Some(long) = list("long_factor")?.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let short = list("short_factor")?.ok_or("`long_factor` without `short_factor`")?;
    let dims = partial_rope_dim(config, arch)? as usize;
    if long.len() != short.len() || 2 * long.len() != dims {
        return Err(format!(
            "the rope long and short factors must hold {} values each, not {} and {}",
            dims / 2,
            long.len(),
            short.len()
        ));
    }
    Ok(Some((long, short)))
}

/// `rope_parameters` (transformers 5) or `rope_scaling`, the `full_attention` entry when
/// there is one; `None` when absent or null.
pub fn rope_parameters(config: &Json) -> Option<&Json> {
    let (_, r) = find(config, &["rope_parameters", "rope_scaling"])?;
    let r = r.get("full_attention").unwrap_or(r);
    r.is_object().then_some(r)
}

/// `{arch}.rope.scaling.*` as `convert_hf_to_gguf.py` writes them. `llama3` scaling is
/// carried by the `rope_freqs.weight` tensor instead, `dynamic` by nothing.
fn rope_scaling(arch: &str, r: &Json, md: &mut Metadata) -> Result<(), String> {
    let Some((_, ty)) = find(r, &["rope_type", "type"]) else {
        return Ok(());
    };
    let ty = ty.as_str().unwrap_or_default().to_ascii_lowercase();
    let factor = match find(r, &["factor"]) {
        Some((k, v)) => Some(as_f32(k, v)?),
        None => None,
    };
    let key = |k: &str| format!("{arch}.rope.scaling.{k}");
    match (ty.as_str(), factor) {
        ("linear", Some(f)) => {
            md.set(key("type"), Value::String("linear".into()));
            md.set(key("factor"), Value::F32(f));
        }
        ("yarn", Some(f)) => {
            md.set(key("type"), Value::String("yarn".into()));
            md.set(key("factor"), Value::F32(f));
            let (k, v) = find(r, &["original_max_position_embeddings"]).ok_or(
                "yarn rope scaling without `original_max_position_embeddings`".to_string(),
            )?;
            md.set(key("original_context_length"), Value::U32(as_u32(k, v)?));
            for (hf, gguf) in [
                (&["extrapolation_factor"][..], "yarn_ext_factor"),
                (&["attention_factor", "attn_factor"][..], "yarn_attn_factor"),
                (&["beta_fast"][..], "yarn_beta_fast"),
                (&["beta_slow"][..], "yarn_beta_slow"),
            ] {
                if let Some((k, v)) = find(r, hf) {
                    md.set(key(gguf), Value::F32(as_f32(k, v)?));
                }
            }
        }
        ("su" | "longrope", _) => md.set(key("type"), Value::String("longrope".into())),
        _ => {}
    }
    Ok(())
}

/// The llama3 RoPE frequency factors (`rope_freqs.weight`, `head_dim / 2` values) exactly as
/// `LlamaModel.generate_extra_tensors` computes them; `None` unless the config asks for
/// `llama3` scaling.
pub fn llama3_rope_freqs(config: &Json, arch: &Architecture) -> Result<Option<Vec<f32>>, String> {
    let Some(r) = rope_parameters(config) else {
        return Ok(None);
    };
    let ty = find(r, &["rope_type", "type"]).and_then(|(_, v)| v.as_str());
    if !ty.is_some_and(|t| t.eq_ignore_ascii_case("llama3")) {
        return Ok(None);
    }
    let num = |keys: &[&str], default: f64| -> Result<f32, String> {
        match find(r, keys) {
            Some((k, v)) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| format!("`{k}` is {v}, expected a number")),
            None => Ok(default as f32),
        }
    };
    // `rope_parameters` gets the top-level `rope_theta` mirrored in when it has none.
    let base = match (find(r, &["rope_theta"]), find(config, &["rope_theta"])) {
        (Some((k, v)), _) | (None, Some((k, v))) => as_f32(k, v)?,
        (None, None) => 10000.0,
    };
    let dim = head_dim(config, arch)?.ok_or("no head_dim for llama3 rope scaling")? as usize;
    if dim > MAX_HEAD_DIM {
        // One factor per pair of dimensions: a corrupt head_dim must not allocate gigabytes.
        return Err(format!(
            "head_dim {dim} is implausible for llama3 rope scaling (more than {MAX_HEAD_DIM})"
        ));
    }
    let factor = num(&["factor"], 8.0)?;
    let low = num(&["low_freq_factor"], 1.0)?;
    let high = num(&["high_freq_factor"], 4.0)?;
    let old_ctx = num(&["original_max_position_embeddings"], 8192.0)?;
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    if low_wavelen == high_wavelen {
        // The converter asserts the same: the smoothing between them divides by zero.
        return Err(format!(
            "rope scaling: `low_freq_factor` and `high_freq_factor` are both {low}"
        ));
    }
    // torch does all of this in f32 (the frequencies are an f32 tensor).
    let out = (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 / base.powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect();
    Ok(Some(out))
}

/// Largest head dimension accepted where one is used to size a buffer: far above any real model
/// (256 and 512 are the largest in use).
const MAX_HEAD_DIM: usize = 1 << 16;

fn head_dim(config: &Json, arch: &Architecture) -> Result<Option<u32>, String> {
    if let Some((k, v)) = find(config, &["head_dim"]) {
        return as_u32(k, v).map(Some);
    }
    let (Some((hk, h)), Some((nk, n))) = (
        find(config, &["hidden_size", "n_embd", "dim"]),
        find(config, arch.n_head_keys),
    ) else {
        return Ok(None);
    };
    let (h, n) = (as_u32(hk, h)?, as_u32(nk, n)?);
    if n == 0 {
        return Err(format!("`{nk}` is 0"));
    }
    Ok(Some(h / n))
}

fn as_u32(k: &str, v: &Json) -> Result<u32, String> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("`{k}` is {v}, expected an integer that fits in u32"))
}

fn as_f32(k: &str, v: &Json) -> Result<f32, String> {
    v.as_f64()
        .map(|x| x as f32)
        .ok_or_else(|| format!("`{k}` is {v}, expected a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_index_parsing() {
        assert_eq!(
            layer_index("blk.12.attn_q.weight"),
            Some((12, "attn_q.weight"))
        );
        assert_eq!(
            layer_index("blk.0.ffn_norm.weight"),
            Some((0, "ffn_norm.weight"))
        );
        assert_eq!(layer_index("token_embd.weight"), None);
        assert_eq!(layer_index("blk.x.attn_q.weight"), None);
        assert_eq!(layer_index("blk.01.attn_q.weight"), None);
        assert_eq!(layer_index("blk.3"), None);
    }

    #[test]
    fn expert_patterns() {
        let p = "model.layers.{N}.block_sparse_moe.experts.{E}.w1";
        assert_eq!(
            match_indices(p, "model.layers.12.block_sparse_moe.experts.3.w1"),
            Some(Indices {
                block: Some(12),
                expert: Some(3)
            })
        );
        assert_eq!(
            match_indices(p, "model.layers.1.block_sparse_moe.experts.03.w1"),
            None
        );
        assert_eq!(
            match_indices(p, "model.layers.1.block_sparse_moe.experts.3.w2"),
            None
        );
    }

    #[test]
    fn pattern_matching() {
        assert_eq!(match_pattern("a.{N}.b", "a.7.b"), Some(Some(7)));
        assert_eq!(match_pattern("a.{N}.b", "a..b"), None);
        assert_eq!(match_pattern("a.{N}.b", "a.7.c"), None);
        assert_eq!(match_pattern("lm_head", "lm_head"), Some(None));
    }
}
