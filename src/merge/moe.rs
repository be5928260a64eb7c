//! mergekit-moe configs: a Mixtral-style mixture of experts built from dense Llama/Mistral
//! models, written as llama.cpp's converter writes Mixtral (GGUF architecture `llama` with
//! `llama.expert_count` / `llama.expert_used_count`, a router `blk.N.ffn_gate_inp` of shape
//! [hidden, n_expert] and each layer's experts stacked into `ffn_gate_exps`, `ffn_up_exps`
//! and `ffn_down_exps`).
//!
//! As mergekit-moe's Mixtral output: attention, norms, embeddings and head come from
//! `base_model`; expert `e`'s MLP from its `source_model`; router row `e` of layer `l` from
//! the gate mode (see [`GateMode`]): a direction in the residual stream that the expert's
//! positive prompts point along (minus the negative prompts'), normalised to unit length.
//! Tensors stream to the quant-matrix writer one at a time; only the routers (n_layer ×
//! n_expert × hidden floats) are held whole.
//!
//! With one shared expert whose gate has prompts, the output is mergekit-moe's Qwen MoE,
//! written as llama.cpp's `qwen2moe`: the shared expert's MLP as `ffn_*_shexp`, its gate
//! (the router row computed after the experts') as `ffn_gate_inp_shexp`, the base's
//! hyper-parameters under the `qwen2moe.` prefix, and a Llama base's q/k rows back in Hugging
//! Face order, since Qwen's RoPE rotates the halves of each head rather than adjacent pairs.

use super::{at, open_input, Input, MergePlan, PlanOptions};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Metadata, Value};
use crate::recipe::OutputSpec;
use crate::store::Store;
use crate::write::{OutputReport, TensorProducer};
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One expert of a mergekit-moe config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expert {
    pub source_model: Spanned<String>,
    pub positive_prompts: Option<Vec<String>>,
    pub negative_prompts: Option<Vec<String>>,
    /// Standard deviation of Gaussian noise added to the expert's MLP weights.
    pub noise_scale: Option<f64>,
    /// Factor on the expert's `down_proj` (the MLP's contribution to the residual stream).
    pub residual_scale: Option<f64>,
}

/// A mergekit-moe config (`MoEMergeConfig`), plus smelt's `seed` and `output`.
#[derive(Clone, Debug, Deserialize)]
pub struct MoeConfig {
    pub base_model: Spanned<String>,
    pub experts: Vec<Spanned<Expert>>,
    pub gate_mode: Option<Spanned<String>>,
    pub dtype: Option<Spanned<String>>,
    pub experts_per_token: Option<Spanned<i64>>,
    pub shared_experts: Option<Spanned<Vec<Spanned<Expert>>>>,
    pub architecture: Option<Spanned<String>>,
    /// smelt: the seed of `random` / `uniform_random` gates and of `noise_scale` (default 0).
    pub seed: Option<Spanned<u64>>,
    /// smelt: output name and types, as in merge recipes.
    pub output: Option<OutputSpec>,
    /// Remarks (unknown top-level keys, all experts one model), `origin:line: ...`.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The output architecture, chosen by `parse` as mergekit-moe chooses it.
    #[serde(skip, default = "mixtral")]
    pub arch: MoeArch,
}

fn mixtral() -> MoeArch {
    MoeArch::Mixtral
}

/// The output architecture as mergekit-moe picks it: `architecture` (a prefix of the name),
/// else Mixtral without shared experts and Qwen MoE with one gated shared expert. mergekit's
/// DeepSeek output (an ungated shared expert) and several shared experts are refused.
fn output_arch(
    cfg: &MoeConfig,
    mode: GateMode,
    origin: &str,
    key_at: &dyn Fn(&str, u64) -> u64,
) -> Result<MoeArch> {
    let asked = cfg.architecture.as_ref().map(|a| {
        let name = a.value.to_lowercase();
        if "mixtral".starts_with(&name) {
            Ok(MoeArch::Mixtral)
        } else if "qwen moe".starts_with(&name) || name == "qwen2" || name == "qwen2_moe" {
            Ok(MoeArch::Qwen2)
        } else {
            Err(at(
                origin,
                a,
                format!(
                    "architecture `{}`: smelt writes Mixtral (architecture: mixtral) and Qwen MoE (architecture: qwen) mixtures",
                    a.value
                ),
            ))
        }
    });
    let shared = cfg.shared_experts.as_ref().filter(|s| !s.value.is_empty());
    let Some(shared) = shared else {
        return match asked {
            Some(Ok(MoeArch::Qwen2)) => Err(at(
                origin,
                cfg.architecture.as_ref().expect("asked"),
                "a Qwen MoE mixture has exactly one shared expert: add `shared_experts:` with one model and its positive_prompts",
            )),
            Some(a) => a,
            None => Ok(MoeArch::Mixtral),
        };
    };
    let line = key_at("shared_experts", shared.referenced.line());
    if shared.value.len() > 1 {
        return Err(Error::Invalid(format!(
            "{origin}:{line}: {} shared experts: smelt's Qwen MoE output takes exactly one (mergekit's DeepSeek output, which takes several, is not written by smelt)",
            shared.value.len()
        )));
    }
    if let Some(Ok(MoeArch::Mixtral)) = asked {
        return Err(Error::Invalid(format!(
            "{origin}:{line}: shared_experts: a Mixtral mixture has no shared expert (architecture: qwen writes one)"
        )));
    }
    let x = &shared.value[0].value;
    let prompted = x.positive_prompts.as_ref().is_some_and(|p| !p.is_empty());
    if !prompted && (mode.needs_prompts() || asked.is_none()) {
        return Err(Error::Invalid(format!(
            "{origin}:{}: the shared expert has no positive_prompts: an ungated shared expert is mergekit's DeepSeek output, which smelt does not write; give it the prompts its gate opens for (a Qwen MoE mixture)",
            x.source_model.referenced.line()
        )));
    }
    asked.unwrap_or(Ok(MoeArch::Qwen2))
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "base_model",
    "experts",
    "gate_mode",
    "dtype",
    "experts_per_token",
    "shared_experts",
    "architecture",
    "seed",
    "output",
];

/// Keys only a mergekit-moe config has.
const MOE_KEYS: &[&str] = &[
    "experts",
    "gate_mode",
    "experts_per_token",
    "shared_experts",
];

/// The mixture's output architecture: of mergekit-moe's, the two smelt writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeArch {
    /// Mixtral (GGUF architecture `llama` with experts): no shared expert.
    Mixtral,
    /// mergekit's "Qwen MoE" (GGUF architecture `qwen2moe`): one shared expert beside the
    /// routed ones, gated per token by its own router row (`ffn_gate_inp_shexp`).
    Qwen2,
}

/// How the router rows are made (mergekit-moe's `gate_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateMode {
    /// Standard normal values (mergekit: `torch.randn`), not normalised.
    Random,
    /// Uniform in ±1/√hidden (mergekit: torch.nn.Linear's default initialisation).
    UniformRandom,
    /// The sum of the prompts' token embeddings, normalised; the same for every layer.
    CheapEmbed,
    /// Each layer's input residual stream at the prompt's last token, averaged over the
    /// prompts (mergekit's `hidden` and `hidden_last`).
    HiddenLast,
    /// Each layer's input residual stream averaged over the prompt's tokens, then over the
    /// prompts (mergekit's `hidden_avg`).
    HiddenAvg,
}

impl GateMode {
    pub fn parse(name: &str) -> Option<GateMode> {
        Some(match name {
            "random" => GateMode::Random,
            "uniform_random" => GateMode::UniformRandom,
            "cheap_embed" => GateMode::CheapEmbed,
            "hidden" | "hidden_last" => GateMode::HiddenLast,
            "hidden_avg" => GateMode::HiddenAvg,
            _ => return None,
        })
    }

    fn needs_prompts(self) -> bool {
        !matches!(self, GateMode::Random | GateMode::UniformRandom)
    }
}

type TopKeys = Vec<BTreeMap<String, Spanned<serde::de::IgnoredAny>>>;

fn top_keys(text: &str) -> TopKeys {
    serde_saphyr::from_multiple(text).unwrap_or_default()
}

/// Whether `text` is a mergekit-moe config rather than a merge recipe: a key only such
/// configs have, and no `merge_method`.
pub fn is_moe_config(text: &str) -> bool {
    top_keys(text).iter().any(|doc| {
        !doc.contains_key("merge_method") && MOE_KEYS.iter().any(|k| doc.contains_key(*k))
    })
}

/// Parse and check a mergekit-moe config; every error names its line.
pub fn parse(text: &str, origin: &str) -> Result<MoeConfig> {
    let keys = top_keys(text);
    if keys.len() > 1 {
        return Err(Error::Invalid(format!(
            "{origin}: a mergekit-moe config is one YAML document, this file has {}",
            keys.len()
        )));
    }
    let mut cfg: MoeConfig = serde_saphyr::from_str(text)
        .map_err(|e| Error::Invalid(format!("{origin}: mergekit-moe config: {e}")))?;
    let key_at = |key: &str, value_line: u64| crate::recipe::key_line(text, key, value_line);
    for (key, spanned) in keys.first().into_iter().flatten() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            cfg.warnings.push(format!(
                "{origin}:{}: unknown key `{key}` of a mergekit-moe config is ignored",
                key_at(key, spanned.referenced.line())
            ));
        }
    }
    let mode_name = cfg
        .gate_mode
        .as_ref()
        .map_or("hidden", |m| m.value.as_str());
    let mode = GateMode::parse(mode_name).ok_or_else(|| {
        let m = cfg.gate_mode.as_ref().expect("the default is known");
        at(
            origin,
            m,
            format!(
                "gate_mode `{mode_name}` is not one of random, uniform_random, cheap_embed, hidden, hidden_avg, hidden_last"
            ),
        )
    })?;
    let experts_line = keys
        .first()
        .and_then(|k| k.get("experts"))
        .map_or(1, |s| key_at("experts", s.referenced.line()));
    if cfg.experts.is_empty() {
        return Err(Error::Invalid(format!(
            "{origin}:{experts_line}: `experts` is empty: a mixture needs at least one expert"
        )));
    }
    let k = cfg.experts_per_token.as_ref().map_or(2, |k| k.value);
    if k < 1 || k as usize > cfg.experts.len() {
        let line = cfg
            .experts_per_token
            .as_ref()
            .map_or(experts_line, |k| k.referenced.line());
        return Err(Error::Invalid(format!(
            "{origin}:{line}: experts_per_token is {k}: it must be from 1 to the number of experts ({})",
            cfg.experts.len()
        )));
    }
    cfg.arch = output_arch(&cfg, mode, origin, &key_at)?;
    if let Some(d) = &cfg.dtype {
        if dtype_rounding(&d.value).is_none() {
            return Err(at(
                origin,
                d,
                format!(
                    "dtype `{}` is not one of float32, float16, bfloat16",
                    d.value
                ),
            ));
        }
    }
    let shared = cfg.shared_experts.iter().flat_map(|s| s.value.iter());
    for (e, x) in cfg.experts.iter().chain(shared).enumerate() {
        let x_line = x.value.source_model.referenced.line();
        let empty = |p: &Option<Vec<String>>| p.as_ref().is_none_or(Vec::is_empty);
        if mode.needs_prompts() && empty(&x.value.positive_prompts) {
            return Err(Error::Invalid(format!(
                "{origin}:{x_line}: expert {e} has no positive_prompts, which gate_mode {mode_name} needs (the prompts that should be routed to it)"
            )));
        }
        for (what, v) in [
            ("noise_scale", x.value.noise_scale),
            ("residual_scale", x.value.residual_scale),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(Error::Invalid(format!(
                    "{origin}:{x_line}: expert {e}: {what} must be a finite number"
                )));
            }
        }
    }
    if mode.needs_prompts() && cfg.experts.len() > 1 {
        let prompts = |x: &Expert| (x.positive_prompts.clone(), x.negative_prompts.clone());
        let first = prompts(&cfg.experts[0].value);
        if cfg.experts[1..].iter().all(|x| prompts(&x.value) == first) {
            return Err(Error::Invalid(format!(
                "{origin}:{experts_line}: every expert has the same prompts, so the router cannot tell them apart: give each expert the prompts that should be routed to it"
            )));
        }
    }
    let first = &cfg.experts[0].value.source_model.value;
    if cfg.experts.len() > 1
        && cfg
            .experts
            .iter()
            .all(|x| &x.value.source_model.value == first)
    {
        cfg.warnings.push(format!(
            "{origin}:{experts_line}: every expert is `{first}`: the mixture computes what that model computes, with more memory (useful only to train further)"
        ));
    }
    Ok(cfg)
}

/// Rounding of the router values to the config's `dtype`, as mergekit stores them.
fn dtype_rounding(name: &str) -> Option<fn(f32) -> f32> {
    Some(match name {
        "float32" | "fp32" | "f32" => |v| v,
        "float16" | "fp16" | "f16" | "half" => |v| half::f16::from_f32(v).to_f32(),
        "bfloat16" | "bf16" => |v| half::bf16::from_f32(v).to_f32(),
        _ => return None,
    })
}

impl MoeConfig {
    pub fn gate_mode(&self) -> GateMode {
        self.gate_mode
            .as_ref()
            .and_then(|m| GateMode::parse(&m.value))
            .unwrap_or(GateMode::HiddenLast)
    }

    pub fn experts_per_token(&self) -> u32 {
        self.experts_per_token
            .as_ref()
            .map_or(2, |k| k.value as u32)
    }

    pub fn seed(&self) -> u64 {
        self.seed.as_ref().map_or(0, |s| s.value)
    }
}

/// Where an output tensor's rows come from.
enum Source {
    /// The base model's tensor, unchanged.
    Base(usize),
    /// One part per expert, each `part_rows` rows, stacked along the outermost dimension.
    Experts {
        part_rows: usize,
        parts: Vec<ExpertPart>,
    },
    /// The router of a layer (rows: experts).
    Router(usize),
    /// The shared expert's gate of a layer (one row: the router row after the experts').
    SharedGate(usize),
    /// A Llama q/k tensor of the base in Hugging Face row order (the GGUF head permutation
    /// undone), for an architecture whose RoPE takes the halves of each head (NeoX style).
    BaseUnpermuted { tensor: usize, n_head: usize },
}

struct ExpertPart {
    input: usize,
    tensor: usize,
    /// `residual_scale` on `ffn_down`, else 1.
    scale: f32,
    noise_scale: f32,
    /// The noise stream of this part (from the seed and the output tensor's name).
    noise_seed: u64,
}

pub struct MoeTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub source_type: GgmlType,
    source: Source,
}

/// A planned mixture: its inputs (0 is the base), output tensors, routers and metadata.
pub struct MoePlan {
    pub inputs: Vec<Input>,
    pub tensors: Vec<MoeTensor>,
    pub metadata: Metadata,
    /// Per layer, n_expert rows of `hidden` values.
    pub routers: Vec<Vec<f32>>,
    pub n_expert: usize,
    pub hidden: usize,
    /// The inputs' SHA-256 are placeholders, hashed while the output is written (with this
    /// progress display; `PlanOptions::defer_input_hashes`).
    deferred_hashes: Option<crate::progress::Display>,
}

/// The dense MLP tensors each expert contributes, and the stacked tensors they become.
const MLP: &[(&str, &str)] = &[
    ("ffn_gate", "ffn_gate_exps"),
    ("ffn_up", "ffn_up_exps"),
    ("ffn_down", "ffn_down_exps"),
];

impl MoePlan {
    /// Open the models, check they fit together, compute the routers and plan the tensors.
    /// Nothing is written.
    pub fn new(
        cfg: &MoeConfig,
        config_text: &str,
        origin: &str,
        config_dir: &Path,
        opts: &PlanOptions,
    ) -> Result<MoePlan> {
        let mut inputs: Vec<Input> = Vec::new();
        let mut open = |r: &Spanned<String>| -> Result<usize> {
            if let Some(i) = inputs.iter().position(|x| x.reference == r.value) {
                return Ok(i);
            }
            inputs.push(open_input(r, origin, config_dir, &[], opts)?);
            Ok(inputs.len() - 1)
        };
        open(&cfg.base_model)?;
        let expert_inputs: Vec<usize> = cfg
            .experts
            .iter()
            .map(|x| open(&x.value.source_model))
            .collect::<Result<_>>()?;
        // The shared expert (a Qwen MoE mixture's one), after the routed experts.
        let shared: Option<(&Spanned<Expert>, usize)> = match cfg.arch {
            MoeArch::Mixtral => None,
            MoeArch::Qwen2 => {
                let x = &cfg.shared_experts.as_ref().expect("parse checked").value[0];
                Some((x, open(&x.value.source_model)?))
            }
        };
        let base = &inputs[0].store;
        let base_ref = &cfg.base_model;
        let arch_of = |s: &Store| s.metadata.architecture().unwrap_or("?").to_string();
        let in_arch = arch_of(base);
        let takes: &[&str] = match cfg.arch {
            MoeArch::Mixtral => &["llama"],
            MoeArch::Qwen2 => &["llama", "qwen2"],
        };
        if !takes.contains(&in_arch.as_str()) {
            return Err(at(
                origin,
                base_ref,
                format!(
                    "base model `{}` is {in_arch}: smelt's {:?} output takes models of GGUF architecture {}",
                    base_ref.value,
                    cfg.arch,
                    takes.join(" or ")
                ),
            ));
        }
        let hp = |s: &Store, k: &str| s.hparam(k).unwrap_or(0);
        let n_layer = hp(base, "block_count") as usize;
        let hidden = hp(base, "embedding_length") as usize;
        if n_layer == 0 || hidden == 0 {
            return Err(at(
                origin,
                base_ref,
                format!(
                    "base model `{}` has no llama.block_count / llama.embedding_length",
                    base_ref.value
                ),
            ));
        }
        if base.find("blk.0.ffn_gate_inp.weight").is_some() {
            return Err(at(
                origin,
                base_ref,
                format!(
                    "base model `{}` is already a mixture of experts: the base and experts must be dense models",
                    base_ref.value
                ),
            ));
        }
        let routed = cfg.experts.iter().zip(expert_inputs.iter().copied());
        for (x, i) in routed.chain(shared) {
            let s = &inputs[i].store;
            let r = &x.value.source_model;
            let name = &r.value;
            if arch_of(s) != in_arch {
                return Err(at(
                    origin,
                    r,
                    format!(
                        "expert `{name}` is {} but the base is {in_arch}: every expert must have the base's architecture",
                        arch_of(s)
                    ),
                ));
            }
            for (what, key) in [
                ("hidden width", "embedding_length"),
                ("layer count", "block_count"),
            ] {
                let (a, b) = (hp(s, key), hp(base, key));
                if a != b {
                    return Err(at(
                        origin,
                        r,
                        format!(
                            "expert `{name}` has a {what} of {a} (llama.{key}) but the base `{}` has {b}: experts must match the base",
                            base_ref.value
                        ),
                    ));
                }
            }
        }

        let seed = cfg.seed();
        // Llama stores q/k rows permuted for its RoPE; Qwen MoE's RoPE takes them unpermuted.
        let unpermute = cfg.arch == MoeArch::Qwen2 && in_arch == "llama";
        let n_head = hp(base, "attention.head_count") as usize;
        let n_head_kv = base
            .hparam("attention.head_count_kv")
            .map_or(n_head, |n| n as usize);
        let mut tensors = Vec::new();
        for (ti, t) in base.tensors.iter().enumerate() {
            let heads = match crate::arch::layer_index(&t.name) {
                Some((_, "attn_q.weight")) if unpermute => Some(n_head),
                Some((_, "attn_k.weight")) if unpermute => Some(n_head_kv),
                _ => None,
            };
            if let Some(heads) = heads {
                if heads == 0 || t.n_rows() % (2 * heads) != 0 {
                    return Err(at(
                        origin,
                        base_ref,
                        format!(
                            "base model tensor `{}`: {} rows do not split into {heads} heads of pairs",
                            t.name,
                            t.n_rows()
                        ),
                    ));
                }
                tensors.push(MoeTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    source_type: t.ty,
                    source: Source::BaseUnpermuted {
                        tensor: ti,
                        n_head: heads,
                    },
                });
                continue;
            }
            let Some((layer, suffix)) = crate::arch::layer_index(&t.name) else {
                tensors.push(MoeTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    source_type: t.ty,
                    source: Source::Base(ti),
                });
                continue;
            };
            let suffix = suffix.to_string();
            let stem = suffix.strip_suffix(".weight").unwrap_or(&suffix);
            let Some(&(dense, stacked)) = MLP.iter().find(|(dense, _)| {
                stem == *dense
                    || suffix
                        .strip_prefix(dense)
                        .is_some_and(|r| r.starts_with('.'))
            }) else {
                tensors.push(MoeTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    source_type: t.ty,
                    source: Source::Base(ti),
                });
                continue;
            };
            if !suffix.ends_with(".weight") {
                return Err(at(
                    origin,
                    base_ref,
                    format!(
                        "base model tensor `{}`: MLP biases have no place in a Mixtral-style expert",
                        t.name
                    ),
                ));
            }
            let out_name = format!("blk.{layer}.{stacked}.weight");
            if stacked == "ffn_gate_exps" {
                tensors.push(MoeTensor {
                    name: format!("blk.{layer}.ffn_gate_inp.weight"),
                    shape: vec![hidden as u64, cfg.experts.len() as u64],
                    source_type: GgmlType::F32,
                    source: Source::Router(layer),
                });
                if shared.is_some() {
                    tensors.push(MoeTensor {
                        name: format!("blk.{layer}.ffn_gate_inp_shexp.weight"),
                        shape: vec![hidden as u64],
                        source_type: GgmlType::F32,
                        source: Source::SharedGate(layer),
                    });
                }
            }
            let mut parts = Vec::new();
            let routed = cfg.experts.iter().zip(expert_inputs.iter().copied());
            for (e, (x, i)) in routed.chain(shared).enumerate() {
                let s = &inputs[i].store;
                let r = &x.value.source_model;
                let Some(xi) = s.find(&t.name) else {
                    return Err(at(
                        origin,
                        r,
                        format!(
                            "expert `{}` has no tensor `{}`, which the base has",
                            r.value, t.name
                        ),
                    ));
                };
                if s.tensors[xi].shape != t.shape {
                    return Err(at(
                        origin,
                        r,
                        format!(
                            "expert `{}`: tensor `{}` has shape {:?} but the base's has {:?}: experts must have the base's MLP sizes",
                            r.value, t.name, s.tensors[xi].shape, t.shape
                        ),
                    ));
                }
                let scale = match (stacked, x.value.residual_scale) {
                    ("ffn_down_exps", Some(s)) => s as f32,
                    _ => 1.0,
                };
                parts.push(ExpertPart {
                    input: i,
                    tensor: xi,
                    scale,
                    noise_scale: x.value.noise_scale.unwrap_or(0.0) as f32,
                    noise_seed: crate::seed::fnv1a(seed, &format!("{out_name}/{e}")),
                });
            }
            if shared.is_some() {
                // The last part is the shared expert's: a tensor of its own.
                let part = parts.pop().expect("the shared expert's part");
                tensors.push(MoeTensor {
                    name: format!("blk.{layer}.{dense}_shexp.weight"),
                    shape: t.shape.clone(),
                    source_type: inputs[part.input].store.tensors[part.tensor].ty,
                    source: Source::Experts {
                        part_rows: t.n_rows(),
                        parts: vec![part],
                    },
                });
            }
            let mut shape = t.shape.clone();
            shape.push(cfg.experts.len() as u64);
            tensors.push(MoeTensor {
                name: out_name,
                shape,
                source_type: inputs[parts[0].input].store.tensors[parts[0].tensor].ty,
                source: Source::Experts {
                    part_rows: t.n_rows(),
                    parts,
                },
            });
        }
        let n_routers = tensors
            .iter()
            .filter(|t| matches!(t.source, Source::Router(_)))
            .count();
        if n_routers != n_layer {
            return Err(at(
                origin,
                base_ref,
                format!(
                    "base model `{}` has {n_routers} gated MLPs (ffn_gate) in its {n_layer} layers: a Mixtral-style expert is a SwiGLU MLP in every layer",
                    base_ref.value
                ),
            ));
        }

        // llama.cpp's Qwen MoE needs an output matrix: a model with tied embeddings gets a
        // copy of its token embeddings.
        if shared.is_some() && base.find("output.weight").is_none() {
            if let Some(ti) = base.find("token_embd.weight") {
                tensors.push(MoeTensor {
                    name: "output.weight".into(),
                    shape: base.tensors[ti].shape.clone(),
                    source_type: base.tensors[ti].ty,
                    source: Source::Base(ti),
                });
            }
        }
        // Router rows for the routed experts, then the shared expert's gate (as mergekit
        // computes them together).
        let gated: Vec<&Spanned<Expert>> =
            (cfg.experts.iter()).chain(shared.map(|(x, _)| x)).collect();
        let routers = router_rows(cfg, &gated, &inputs[0].store, n_layer, hidden, origin)?;

        let mut metadata = Self::metadata(cfg, config_text, &inputs, &tensors)?;
        let deferred_hashes = MergePlan::input_hashes(&inputs, &mut metadata, opts, origin)?;
        Ok(MoePlan {
            deferred_hashes,
            n_expert: cfg.experts.len(),
            hidden,
            inputs,
            tensors,
            metadata,
            routers,
        })
    }

    /// The base's metadata with the expert counts and the provenance of the mixture.
    fn metadata(
        cfg: &MoeConfig,
        config_text: &str,
        inputs: &[Input],
        tensors: &[MoeTensor],
    ) -> Result<Metadata> {
        let mut m = inputs[0].store.metadata.clone();
        m.retain(|k, _| {
            !matches!(k, "general.file_type" | "general.quantization_version")
                && !k.starts_with("smelt.")
                && !k.starts_with("general.base_model.")
        });
        let arch = match cfg.arch {
            MoeArch::Mixtral => "llama".to_string(),
            MoeArch::Qwen2 => {
                // The base's hyper-parameters under the new architecture's prefix.
                let from = format!("{}.", m.architecture().unwrap_or("llama"));
                let mut renamed = Metadata::new();
                for (k, v) in m.iter() {
                    let key = match k.strip_prefix(&from) {
                        Some(rest) => format!("qwen2moe.{rest}"),
                        None => k.to_string(),
                    };
                    renamed.set(key, v.clone());
                }
                m = renamed;
                m.set("general.architecture", Value::String("qwen2moe".into()));
                // Every expert, the shared one too, is a whole dense MLP (as mergekit's
                // moe_intermediate_size and shared_expert_intermediate_size).
                if let Some(ff) = m.get("qwen2moe.feed_forward_length").cloned() {
                    m.set("qwen2moe.expert_feed_forward_length", ff.clone());
                    m.set("qwen2moe.expert_shared_feed_forward_length", ff);
                }
                "qwen2moe".to_string()
            }
        };
        m.set(
            format!("{arch}.expert_count"),
            Value::U32(cfg.experts.len() as u32),
        );
        m.set(
            format!("{arch}.expert_used_count"),
            Value::U32(cfg.experts_per_token()),
        );
        if let Some(n) = cfg.output.as_ref().and_then(|o| o.name.as_ref()) {
            m.set("general.name", Value::String(n.value.clone()));
        }
        m.set("general.base_model.count", Value::U32(inputs.len() as u32));
        for (i, inp) in inputs.iter().enumerate() {
            let stem = inp
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            m.set(format!("general.base_model.{i}.name"), Value::String(stem));
        }
        let params = crate::model_card::ParamCount::of(
            tensors
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice())),
        );
        m.set("general.size_label", Value::String(params.size_label()));
        m.set(
            "smelt.version",
            Value::String(env!("CARGO_PKG_VERSION").into()),
        );
        m.set("smelt.recipe", Value::String(config_text.to_string()));
        Ok(m)
    }

    /// `merge --dry-run`: each output tensor with its sources.
    pub fn describe(&self, qplan: &crate::quantize::QuantizePlan) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("inputs:\n");
        for (i, inp) in self.inputs.iter().enumerate() {
            let _ = writeln!(out, "  {i}: {} ({})", inp.reference, inp.path.display());
        }
        for o in &qplan.outputs {
            let _ = writeln!(out, "{}:", o.path.display());
            for (&i, pt) in qplan.order.iter().zip(&o.tensors) {
                let Some(pt) = pt else { continue };
                let t = &self.tensors[i];
                let from = match &t.source {
                    Source::Base(_) => format!("{} (base)", self.inputs[0].reference),
                    Source::BaseUnpermuted { .. } => {
                        format!("{} (base, q/k heads unpermuted)", self.inputs[0].reference)
                    }
                    Source::Router(_) => "router".to_string(),
                    Source::SharedGate(_) => "shared expert gate".to_string(),
                    Source::Experts { parts, .. } => parts
                        .iter()
                        .map(|p| self.inputs[p.input].reference.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                let _ = writeln!(
                    out,
                    "  {} {:?} [{from}] {} -> {}",
                    pt.name,
                    t.shape,
                    t.source_type.name(),
                    pt.ty.name()
                );
            }
        }
        out
    }
}

/// The prompts' token ids as mergekit-moe tokenizes them: the BOS token's text, then the
/// prompt, without other special tokens (here: BOS when the vocabulary has one, then the
/// prompt as llama.cpp tokenizes it).
fn prompt_tokens(md: &Metadata, prompt: &str) -> Result<Vec<u32>> {
    let mut tokens: Vec<u32> = md
        .get_u64("tokenizer.ggml.bos_token_id")
        .map(|b| b as u32)
        .into_iter()
        .collect();
    tokens.extend(crate::tokenizer::encode::tokenize(md, prompt, false)?);
    Ok(tokens)
}

/// Every layer's router: one row of `hidden` values per gated expert (`gated`), per layer.
fn router_rows(
    cfg: &MoeConfig,
    gated: &[&Spanned<Expert>],
    base: &Store,
    n_layer: usize,
    hidden: usize,
    origin: &str,
) -> Result<Vec<Vec<f32>>> {
    let n_expert = gated.len();
    let mode = cfg.gate_mode();
    let round = cfg
        .dtype
        .as_ref()
        .and_then(|d| dtype_rounding(&d.value))
        .unwrap_or(|v| v);
    let mut routers = vec![vec![0f32; n_expert * hidden]; n_layer];
    match mode {
        GateMode::Random | GateMode::UniformRandom => {
            // Layer, then expert, then element: torch.randn((layers, experts, hidden))'s order.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed());
            let bound = 1.0 / (hidden as f64).sqrt();
            for r in routers.iter_mut() {
                for v in r.iter_mut() {
                    let x = match mode {
                        GateMode::Random => standard_normal(&mut rng),
                        _ => (unit_open(&mut rng) * 2.0 - 1.0) * bound,
                    };
                    *v = round(x as f32);
                }
            }
            return Ok(routers);
        }
        _ => {}
    }
    let state = PromptStates {
        base,
        mode,
        n_layer,
        hidden,
    };
    for (e, x) in gated.iter().enumerate() {
        let line = x.value.source_model.referenced.line();
        let named = |what: &str, err: Error| match err {
            Error::Invalid(m) => {
                Error::Invalid(format!("{origin}:{line}: expert {e}'s {what}: {m}"))
            }
            other => other,
        };
        let positive = x.value.positive_prompts.as_deref().unwrap_or_default();
        let mut v = state
            .of(positive)
            .map_err(|err| named("positive_prompts", err))?;
        if let Some(neg) = x
            .value
            .negative_prompts
            .as_deref()
            .filter(|n| !n.is_empty())
        {
            let n = state
                .of(neg)
                .map_err(|err| named("negative_prompts", err))?;
            for (a, b) in v.iter_mut().zip(&n) {
                for (p, q) in a.iter_mut().zip(b) {
                    *p -= q;
                }
            }
        }
        for (l, layer) in v.iter().enumerate() {
            let unit = normalised(layer);
            let row = &mut routers[l][e * hidden..(e + 1) * hidden];
            for (o, u) in row.iter_mut().zip(unit) {
                *o = round(u);
            }
        }
    }
    Ok(routers)
}

/// `v / max(‖v‖, 1e-8)` (mergekit's normalisation), in f64.
fn normalised(v: &[f64]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-8);
    v.iter().map(|x| (x / norm) as f32).collect()
}

/// Uniform in (0, 1], 53 bits.
fn unit_open(rng: &mut impl Rng) -> f64 {
    ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// One standard normal value (Box–Muller, the cosine half).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let (u1, u2) = (unit_open(rng), unit_open(rng));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// What a set of prompts says about each layer's input, per the gate mode.
struct PromptStates<'a> {
    base: &'a Store,
    mode: GateMode,
    n_layer: usize,
    hidden: usize,
}

impl PromptStates<'_> {
    /// Per layer, the prompts' vector: for cheap_embed the normalised sum of their tokens'
    /// embeddings (every layer alike); for hidden modes the mean over prompts of each one's
    /// last-token (or mean-over-tokens) residual stream entering the layer.
    fn of(&self, prompts: &[String]) -> Result<Vec<Vec<f64>>> {
        let tokens: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| prompt_tokens(&self.base.metadata, p))
            .collect::<Result<_>>()?;
        if let Some(k) = tokens.iter().position(Vec::is_empty) {
            return Err(Error::Invalid(format!(
                "prompt {k} has no tokens (and the vocabulary no BOS token)"
            )));
        }
        match self.mode {
            GateMode::CheapEmbed => {
                let embd = self.base.find("token_embd.weight").ok_or_else(|| {
                    Error::Invalid("the base model has no token_embd.weight".into())
                })?;
                let mut sum = vec![0f64; self.hidden];
                let mut row = vec![0f32; self.hidden];
                for &t in tokens.iter().flatten() {
                    if t as usize >= self.base.tensors[embd].n_rows() {
                        return Err(Error::Invalid(format!(
                            "token {t} is outside the embedding table"
                        )));
                    }
                    self.base.read_rows(embd, t as usize, &mut row)?;
                    for (s, &v) in sum.iter_mut().zip(&row) {
                        *s += v as f64;
                    }
                }
                let unit: Vec<f64> = normalised(&sum).into_iter().map(f64::from).collect();
                Ok(vec![unit; self.n_layer])
            }
            _ => self.hidden_states(&tokens),
        }
    }

    fn hidden_states(&self, tokens: &[Vec<u32>]) -> Result<Vec<Vec<f64>>> {
        use crate::eval::model::Model;
        let model = Model::new(self.base)?;
        let progress = crate::progress::Progress::new(
            crate::progress::Display::Hidden,
            "prompts",
            0,
            crate::progress::Unit::Steps,
        );
        let mut sums = vec![vec![0f64; self.hidden]; self.n_layer];
        // Prompts of one length run as one batch (the forward pass takes equal chunks).
        let mut by_len: BTreeMap<usize, Vec<Vec<u32>>> = BTreeMap::new();
        for t in tokens {
            by_len.entry(t.len()).or_default().push(t.clone());
        }
        for group in by_len.values() {
            let mut observe = |depth: usize, xs: &[candle_core::Tensor]| -> Result<()> {
                if depth >= self.n_layer {
                    return Ok(());
                }
                for x in xs {
                    let rows = x
                        .to_vec2::<f32>()
                        .map_err(|e| Error::Invalid(format!("forward pass: {e}")))?;
                    let sum = &mut sums[depth];
                    match self.mode {
                        GateMode::HiddenAvg => {
                            let n = rows.len() as f64;
                            for r in &rows {
                                for (s, &v) in sum.iter_mut().zip(r) {
                                    *s += v as f64 / n;
                                }
                            }
                        }
                        _ => {
                            let last = rows.last().expect("a prompt has tokens");
                            for (s, &v) in sum.iter_mut().zip(last) {
                                *s += v as f64;
                            }
                        }
                    }
                }
                Ok(())
            };
            model.residual_stream(group, self.n_layer, &progress, None, &mut observe)?;
        }
        let n = tokens.len() as f64;
        for s in sums.iter_mut().flatten() {
            *s /= n;
        }
        Ok(sums)
    }
}

impl TensorProducer for MoePlan {
    fn n_tensors(&self) -> usize {
        self.tensors.len()
    }
    fn model_metadata(&self) -> &crate::gguf::Metadata {
        &self.metadata
    }
    fn name(&self, i: usize) -> &str {
        &self.tensors[i].name
    }
    fn shape(&self, i: usize) -> &[u64] {
        &self.tensors[i].shape
    }
    fn source_type(&self, i: usize) -> GgmlType {
        self.tensors[i].source_type
    }
    fn read_rows(&self, i: usize, first_row: usize, out: &mut [f32]) -> Result<()> {
        let t = &self.tensors[i];
        let row_len = t.shape[0] as usize;
        match &t.source {
            Source::Base(ti) => self.inputs[0].store.read_rows(*ti, first_row, out),
            Source::Router(l) => {
                let start = first_row * row_len;
                let r = &self.routers[*l];
                out.copy_from_slice(&r[start..start + out.len()]);
                Ok(())
            }
            Source::SharedGate(l) => {
                let start = self.n_expert * self.hidden + first_row * row_len;
                let r = &self.routers[*l];
                out.copy_from_slice(&r[start..start + out.len()]);
                Ok(())
            }
            Source::BaseUnpermuted { tensor, n_head } => {
                let order = crate::layout::RowOrder::HeadPermute { n_head: *n_head };
                let n_rows = t.shape[1..].iter().product::<u64>() as usize;
                // Hugging Face row `r` is the GGUF row that the permutation stores there.
                for (k, row) in out.chunks_exact_mut(row_len).enumerate() {
                    let gguf_row = order.presented_row(first_row + k, n_rows);
                    self.inputs[0].store.read_rows(*tensor, gguf_row, row)?;
                }
                Ok(())
            }
            Source::Experts { part_rows, parts } => {
                let n = out.len() / row_len.max(1);
                let mut r = 0;
                while r < n {
                    let row = first_row + r;
                    let (e, within) = (row / part_rows, row % part_rows);
                    let here = (n - r).min(part_rows - within);
                    let p = &parts[e];
                    let o = &mut out[r * row_len..(r + here) * row_len];
                    self.inputs[p.input].store.read_rows(p.tensor, within, o)?;
                    if p.scale != 1.0 || p.noise_scale != 0.0 {
                        for (k, chunk) in o.chunks_exact_mut(row_len).enumerate() {
                            p.adjust(within + k, chunk);
                        }
                    }
                    r += here;
                }
                Ok(())
            }
        }
    }
    fn raw(&self, i: usize) -> Option<&[u8]> {
        match self.tensors[i].source {
            Source::Base(ti) => self.inputs[0].store.passthrough(ti),
            _ => None,
        }
    }
    fn release(&self, i: usize) {
        match &self.tensors[i].source {
            Source::Base(ti) | Source::BaseUnpermuted { tensor: ti, .. } => {
                self.inputs[0].store.release(*ti)
            }
            Source::Experts { parts, .. } => {
                for p in parts {
                    self.inputs[p.input].store.release(p.tensor);
                }
            }
            Source::Router(_) | Source::SharedGate(_) => {}
        }
    }
    fn input_files(&self) -> Vec<PathBuf> {
        self.inputs
            .iter()
            .flat_map(|inp| inp.store.input_files())
            .collect()
    }
    fn deferred_metadata(
        &self,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<(String, Value)>> {
        match self.deferred_hashes {
            Some(display) => MergePlan::hash_beside(&self.inputs, display, cancel),
            None => Ok(Vec::new()),
        }
    }
}

impl ExpertPart {
    /// mergekit's `noise_and_scale`: Gaussian noise (from a stream per row, so any row can
    /// be made alone), then the residual scale.
    fn adjust(&self, row: usize, values: &mut [f32]) {
        if self.noise_scale != 0.0 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.noise_seed ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            for v in values.iter_mut() {
                *v += (standard_normal(&mut rng) * self.noise_scale as f64) as f32;
            }
        }
        if self.scale != 1.0 {
            for v in values.iter_mut() {
                *v *= self.scale;
            }
        }
    }
}

/// What `smelt merge` asks of a mergekit-moe config.
pub struct MoeRequest<'a> {
    pub text: &'a str,
    /// The config's name in messages (its path).
    pub origin: &'a str,
    pub config_dir: &'a Path,
    pub output: &'a Path,
    /// Output file stem when the config has no `output.name`.
    pub stem: &'a str,
    /// `--types`; empty: the config's `output.types`, else F16.
    pub types: &'a [String],
    pub split: Option<crate::split::SplitLimit>,
    pub plan: PlanOptions<'a>,
    /// Write a Hugging Face folder (`--format safetensors`) instead of GGUF files.
    pub safetensors: Option<HfSettings>,
    /// Told each remark on the config (unknown keys, all experts one model) as it is found.
    pub warn: &'a dyn Fn(&str),
}

/// `--format safetensors`' settings.
pub struct HfSettings {
    pub shard_bytes: u64,
    /// Replace the model already in the output folder.
    pub force: bool,
}

/// What a mergekit-moe build did: the GGUF files written, the HF folder's summary line, or
/// (dry run) the plan.
pub struct MoeOutcome {
    pub reports: Vec<OutputReport>,
    pub summary: Option<String>,
    pub described: Option<String>,
}

/// `smelt merge MOE.yaml`: plan the mixture and write every requested type in one pass.
pub fn build(req: &MoeRequest) -> Result<MoeOutcome> {
    use crate::quant::mix::FileType;
    let cfg = parse(req.text, req.origin)?;
    for w in &cfg.warnings {
        (req.warn)(w);
    }
    if let (Some(hf), false) = (&req.safetensors, req.plan.dry_run) {
        crate::hf_writer::check_output_dir(req.output, hf.force)?;
    }
    if req.safetensors.is_some() && cfg.arch == MoeArch::Qwen2 {
        return Err(Error::Invalid(format!(
            "{}: a Qwen MoE mixture is written as GGUF (--format safetensors writes Mixtral mixtures only)",
            req.origin
        )));
    }
    let plan = MoePlan::new(&cfg, req.text, req.origin, req.config_dir, &req.plan)?;
    if let (Some(hf), false) = (&req.safetensors, req.plan.dry_run) {
        return write_hf(req, &cfg, &plan, hf);
    }
    let types: Vec<String> = if !req.types.is_empty() {
        req.types.to_vec()
    } else {
        cfg.output
            .as_ref()
            .and_then(|o| o.types.clone())
            .unwrap_or_else(|| vec!["F16".into()])
    };
    let file_types = types
        .iter()
        .map(|t| FileType::parse(t))
        .collect::<Result<Vec<_>>>()?;
    let name = cfg
        .output
        .as_ref()
        .and_then(|o| o.name.as_ref())
        .map_or(req.stem, |n| n.value.as_str());
    let qopts = crate::quantize::QuantizeOptions {
        split: req.split,
        ..Default::default()
    };
    let qplan = crate::quantize::plan(&plan, &file_types, &qopts, |ft| {
        req.output.join(format!("{name}-{}.gguf", ft.name()))
    })?;
    if req.plan.dry_run {
        return Ok(MoeOutcome {
            reports: Vec::new(),
            summary: None,
            described: Some(plan.describe(&qplan)),
        });
    }
    let display = req
        .plan
        .progress
        .unwrap_or(crate::progress::Display::Hidden);
    let reports = crate::write::write_matrix(&plan, &qplan.order, &qplan.outputs, display)?;
    Ok(MoeOutcome {
        reports,
        summary: None,
        described: None,
    })
}

/// The mixture as a Hugging Face folder: `config.json` a `MixtralConfig` rebuilt from the
/// GGUF hyper-parameters (as mergekit derives it from the base's), experts under
/// `block_sparse_moe.experts.E.w1/w2/w3`, the base's tokenizer.
fn write_hf(
    req: &MoeRequest,
    cfg: &MoeConfig,
    plan: &MoePlan,
    hf: &HfSettings,
) -> Result<MoeOutcome> {
    use crate::hf_writer::{
        check_output_is_no_input, hf_folder_of, output_dtype, shard_provenance, write_hf_folder,
        HfOutput,
    };
    let dtype = output_dtype(
        req.types,
        cfg.dtype
            .as_ref()
            .map_or_else(|| "bfloat16".to_string(), |d| d.value.clone()),
    )?;
    check_output_is_no_input(
        req.output,
        plan.inputs
            .iter()
            .map(|i| (i.path.as_path(), i.reference.as_str())),
        "mixture",
    )?;
    let provenance = shard_provenance(&plan.metadata);
    let out = HfOutput {
        dir: req.output.to_path_buf(),
        dtype,
        shard_bytes: hf.shard_bytes,
        metadata: &plan.metadata,
        config_from: None,
        tokenizer_from: hf_folder_of(&plan.inputs[0].path),
        extra_files: vec![("smelt-recipe.yaml".into(), req.text.to_string())],
        shard_metadata: provenance,
        force: hf.force,
        display: req
            .plan
            .progress
            .unwrap_or(crate::progress::Display::Hidden),
    };
    let report = write_hf_folder(plan, &out)?;
    for w in &report.warnings {
        (req.warn)(w);
    }
    Ok(MoeOutcome {
        reports: Vec::new(),
        summary: Some(format!(
            "wrote {} ({:.2} MiB, {} tensors: {})",
            report.dir.display(),
            report.bytes as f64 / (1 << 20) as f64,
            report.n_tensors,
            report.files.join(", ")
        )),
        described: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "base_model: a.gguf\ngate_mode: cheap_embed\nexperts:\n  - source_model: b.gguf\n    positive_prompts: [\"code\"]\n  - source_model: c.gguf\n    positive_prompts: [\"poems\"]\n";

    #[test]
    fn moe_configs_are_told_from_merge_recipes() {
        assert!(is_moe_config(CONFIG));
        assert!(is_moe_config("base_model: a\ngate_mode: random\n"));
        assert!(!is_moe_config(
            "merge_method: linear\nmodels:\n  - model: a\n"
        ));
        // `experts` beside a merge_method is a merge recipe with an unknown key.
        assert!(!is_moe_config(
            "merge_method: linear\nexperts: []\nmodels:\n  - model: a\n"
        ));
    }

    #[test]
    fn remarks_and_defaults_follow_mergekit() {
        let cfg = parse(&format!("{CONFIG}tokenizer_source: union\n"), "m.yaml").unwrap();
        assert_eq!(cfg.gate_mode(), GateMode::CheapEmbed);
        assert_eq!((cfg.experts_per_token(), cfg.seed()), (2, 0));
        assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
        assert!(cfg.warnings[0].starts_with("m.yaml:8: unknown key `tokenizer_source`"));
        // mergekit's default gate mode is `hidden`, the last token's state.
        let hidden = parse(&CONFIG.replace("gate_mode: cheap_embed\n", ""), "m.yaml").unwrap();
        assert_eq!(hidden.gate_mode(), GateMode::HiddenLast);
        let same = parse(&CONFIG.replace("c.gguf", "b.gguf"), "m.yaml").unwrap();
        assert!(
            same.warnings[0].contains("every expert is `b.gguf`"),
            "{:?}",
            same.warnings
        );
        let err = parse(&format!("{CONFIG}---\n{CONFIG}"), "m.yaml").unwrap_err();
        assert!(err.to_string().contains("one YAML document"), "{err}");
        let err = parse(&CONFIG.replace("poems", "code"), "m.yaml").unwrap_err();
        assert!(
            err.to_string()
                .contains("m.yaml:3: every expert has the same prompts"),
            "{err}"
        );
    }
}
