//! llama-quantize's per-tensor type choice (llama.cpp `src/llama-quant.cpp`): file types and
//! their default types, which tensors may be quantized, the mixes' per-tensor rules (attn_v,
//! ffn_down, output, token embedding, layer position), user overrides, and the fallback for rows
//! that do not divide into blocks. Every rule mirrors the reference; a test compares whole
//! files with llama-quantize's.

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Metadata, Value};
use regex::Regex;

macro_rules! file_types {
    ($( $variant:ident = $id:literal => $ty:ident ),* $(,)?) => {
        /// A llama.cpp file type (`llama_ftype`): what `--type Q4_K_M` names. An enum, so that
        /// the mix rules below are compile-checked matches, not string comparisons.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum FileType { $( $variant, )* }

        impl FileType {
            /// Every file type smelt knows, in llama.cpp's id order.
            pub const ALL: &'static [FileType] = &[ $( FileType::$variant, )* ];

            /// llama-quantize's canonical name.
            pub const fn name(self) -> &'static str {
                match self { $( FileType::$variant => stringify!($variant), )* }
            }

            /// `general.file_type`.
            pub const fn id(self) -> u32 {
                match self { $( FileType::$variant => $id, )* }
            }

            /// The type most tensors get.
            pub const fn default_type(self) -> GgmlType {
                match self { $( FileType::$variant => GgmlType::$ty, )* }
            }
        }
    };
}

file_types! {
    F32 = 0 => F32, F16 = 1 => F16, Q4_0 = 2 => Q4_0, Q4_1 = 3 => Q4_1, Q8_0 = 7 => Q8_0,
    Q5_0 = 8 => Q5_0, Q5_1 = 9 => Q5_1, Q2_K = 10 => Q2_K, Q3_K_S = 11 => Q3_K,
    Q3_K_M = 12 => Q3_K, Q3_K_L = 13 => Q3_K, Q4_K_S = 14 => Q4_K, Q4_K_M = 15 => Q4_K,
    Q5_K_S = 16 => Q5_K, Q5_K_M = 17 => Q5_K, Q6_K = 18 => Q6_K, IQ2_XXS = 19 => IQ2_XXS,
    IQ2_XS = 20 => IQ2_XS, Q2_K_S = 21 => Q2_K, IQ3_XS = 22 => IQ3_S, IQ3_XXS = 23 => IQ3_XXS,
    IQ1_S = 24 => IQ1_S, IQ4_NL = 25 => IQ4_NL, IQ3_S = 26 => IQ3_S, IQ3_M = 27 => IQ3_S,
    IQ2_S = 28 => IQ2_XS, IQ2_M = 29 => IQ2_S, IQ4_XS = 30 => IQ4_XS, IQ1_M = 31 => IQ1_M,
    BF16 = 32 => BF16, TQ1_0 = 36 => TQ1_0, TQ2_0 = 37 => TQ2_0,
}

/// llama-quantize's short aliases.
const ALIASES: &[(&str, FileType)] = &[
    ("Q3_K", FileType::Q3_K_M),
    ("Q4_K", FileType::Q4_K_M),
    ("Q5_K", FileType::Q5_K_M),
];

impl FileType {
    /// Parse a llama-quantize type name (any case) or file-type number.
    pub fn parse(s: &str) -> Result<FileType> {
        let upper = s.trim().to_ascii_uppercase();
        if let Some((_, ft)) = ALIASES.iter().find(|(a, _)| *a == upper) {
            return Ok(*ft);
        }
        FileType::ALL
            .iter()
            .find(|f| f.name() == upper || upper.parse::<u32>().is_ok_and(|id| id == f.id()))
            .copied()
            .ok_or_else(|| {
                let names: Vec<&str> = FileType::ALL.iter().map(|f| f.name()).collect();
                Error::Invalid(format!(
                    "unknown quantization type `{s}`; known: {}",
                    names.join(", ")
                ))
            })
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the rules need to know about the model (llama.cpp's hparams).
#[derive(Clone, Debug, Default)]
pub struct ModelInfo {
    pub arch: String,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_expert: usize,
}

impl ModelInfo {
    pub fn from_metadata(meta: &Metadata) -> ModelInfo {
        let arch = meta.architecture().unwrap_or("").to_string();
        // Per-layer arrays (some architectures) count by their first layer, as hparams do.
        let get = |key: &str| -> Option<usize> {
            let v = meta.get(&format!("{arch}.{key}"))?;
            match v.array_len() {
                Some(_) => v.item(0).as_ref().and_then(Value::as_u64),
                None => v.as_u64(),
            }
            .map(|x| x as usize)
        };
        let n_head = get("attention.head_count").unwrap_or(0);
        ModelInfo {
            n_layer: get("block_count").unwrap_or(0),
            n_head,
            n_head_kv: get("attention.head_count_kv").unwrap_or(n_head),
            n_expert: get("expert_count").unwrap_or(0),
            arch,
        }
    }

    fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }

    /// llama.cpp's LLM_TYPE_70B (80-layer llama with grouped-query attention).
    fn is_llama_70b(&self) -> bool {
        self.arch == "llama" && self.n_layer == 80 && self.n_head != self.n_head_kv
    }
}

/// llama-quantize's options that affect type choice.
#[derive(Clone, Debug, Default)]
pub struct MixOptions {
    pub output_tensor_type: Option<GgmlType>,
    pub token_embedding_type: Option<GgmlType>,
    /// `--tensor-type PATTERN=TYPE`, first match wins (regex search on the tensor name).
    pub tensor_types: Vec<(String, GgmlType)>,
    pub pure: bool,
    pub leave_output_tensor: bool,
    pub has_imatrix: bool,
}

/// One tensor as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    /// ggml order.
    pub shape: &'a [u64],
    pub ty: GgmlType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        return Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return TokenEmbd;
    }
    let table = [
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ];
    table
        .iter()
        .find(|(pat, _)| name.contains(pat))
        .map(|&(_, c)| c)
        .unwrap_or(Other)
}

fn is_attn_v_like(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// ggml_n_dims: trailing dimensions of size 1 do not count.
fn n_dims(shape: &[u64]) -> usize {
    shape.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// llama.cpp's `tensor_allows_quantization`.
pub fn allows_quantization(name: &str, shape: &[u64], leave_output_tensor: bool) -> bool {
    if n_dims(shape) < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
        return false;
    }
    if leave_output_tensor && name == "output.weight" {
        return false;
    }
    const NEVER: &[&str] = &[
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    !NEVER.iter().any(|p| name.contains(p))
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// llama.cpp's `tensor_requires_imatrix`.
pub fn requires_imatrix(name: &str, ty: GgmlType, ft: FileType) -> bool {
    use GgmlType::*;
    if matches!(
        name,
        "token_embd.weight" | "per_layer_token_embd.weight" | "output.weight"
    ) {
        return false;
    }
    match ty {
        IQ3_XXS | IQ2_XXS | IQ2_XS | IQ2_S | IQ1_M | IQ1_S => true,
        Q2_K => ft == FileType::Q2_K_S,
        _ => false,
    }
}

/// The fallback when rows do not divide into the target's blocks (`tensor_type_fallback`).
fn fallback(row_len: u64, target: GgmlType) -> Result<GgmlType> {
    use GgmlType::*;
    let block = target.block_size() as u64;
    if row_len % block == 0 {
        return Ok(target);
    }
    let t = match target {
        IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ4_XS => IQ4_NL,
        Q2_K | Q3_K | TQ1_0 | TQ2_0 => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        t if block <= 32 => t,
        t => {
            return Err(Error::Invalid(format!(
                "no tensor type fallback is defined for type {t}"
            )))
        }
    };
    Ok(if row_len % t.block_size() as u64 != 0 {
        F16
    } else {
        t
    })
}

/// The running counters of llama-quantize's `quantize_state_impl`.
struct State<'a> {
    model: &'a ModelInfo,
    ft: FileType,
    opts: &'a MixOptions,
    patterns: Vec<(Regex, GgmlType)>,
    has_tied_embeddings: bool,
    n_attention_wv: usize,
    i_attention_wv: usize,
    i_ffn_down: usize,
    i_ffn_gate: usize,
    i_ffn_up: usize,
}

fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl State<'_> {
    /// Layer index for per-layer rules: the counter, or (with experts) the `blk.N.` number.
    fn layer_info(&self, counter: usize, name: &str) -> Result<(usize, usize)> {
        let n_layer = self.model.n_layer;
        if self.model.n_expert > 1 {
            let layer = crate::arch::layer_index(name)
                .map(|(l, _)| l)
                .ok_or_else(|| {
                    Error::Invalid(format!("failed to determine layer for tensor {name}"))
                })?;
            if layer >= n_layer {
                return Err(Error::Invalid(format!(
                    "bad layer {layer} for tensor {name}: must be in [0, {n_layer})"
                )));
            }
            return Ok((layer, n_layer));
        }
        Ok((counter, n_layer))
    }

    /// `llama_tensor_get_type_impl`: the mix's rule for one tensor.
    fn mix_type(&mut self, mut t: GgmlType, tensor: &TensorRef, cat: Category) -> Result<GgmlType> {
        use Category as C;
        use FileType as F;
        use GgmlType::*;
        let ft = self.ft;
        let m = self.model;
        let iq2_family = matches!(
            ft,
            F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
        );

        if cat == C::Output || (self.has_tied_embeddings && cat == C::TokenEmbd) {
            if let Some(o) = self.opts.output_tensor_type {
                return Ok(o);
            }
            let nx = tensor.shape[0];
            if m.is_falcon() || nx % t.block_size() as u64 != 0 {
                t = Q8_0;
            } else if matches!(
                ft,
                F::IQ2_XXS | F::IQ2_XS | F::IQ3_XXS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
            ) {
                t = Q5_K;
            } else if t != Q8_0 {
                t = Q6_K;
            }
        } else if cat == C::TokenEmbd {
            if let Some(e) = self.opts.token_embedding_type {
                t = e;
            } else if matches!(ft, F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ1_M) {
                t = Q2_K;
            } else if matches!(ft, F::IQ2_S | F::IQ2_M | F::IQ3_XXS) {
                t = IQ3_S;
            } else if matches!(ft, F::TQ1_0 | F::TQ2_0) {
                t = Q4_K;
            }
        } else if iq2_family {
            let iq2s_or_m = matches!(ft, F::IQ2_S | F::IQ2_M);
            if is_attn_v_like(cat) {
                t = if m.n_gqa() >= 4 || m.n_expert >= 4 {
                    Q4_K
                } else if iq2s_or_m {
                    IQ3_S
                } else {
                    Q2_K
                };
                self.i_attention_wv += 1;
            } else if m.n_expert == 8 && cat == C::AttnK {
                t = Q4_K;
            } else if cat == C::FfnDown {
                if self.i_ffn_down < m.n_layer / 8 {
                    t = if iq2s_or_m { IQ3_S } else { Q2_K };
                }
                self.i_ffn_down += 1;
            } else if cat == C::AttnOutput {
                if m.n_expert == 8 {
                    t = Q5_K;
                } else if matches!(ft, F::IQ1_S | F::IQ1_M) {
                    t = IQ2_XXS;
                } else if iq2s_or_m {
                    t = IQ3_S;
                }
            }
        } else if is_attn_v_like(cat) {
            let gqa4 = m.n_gqa() >= 4;
            if ft == F::Q2_K {
                t = if gqa4 { Q4_K } else { Q3_K };
            } else if ft == F::Q2_K_S && gqa4 {
                t = Q4_K;
            } else if ft == F::IQ3_XXS {
                t = if gqa4 {
                    Q4_K
                } else if !self.opts.has_imatrix {
                    IQ3_S
                } else {
                    IQ3_XXS
                };
            } else if (matches!(ft, F::IQ3_XS | F::IQ3_S) && gqa4) || ft == F::IQ3_M {
                t = Q4_K;
            } else if ft == F::Q3_K_M {
                t = if self.i_attention_wv < 2 { Q5_K } else { Q4_K };
            } else if ft == F::Q3_K_L || (matches!(ft, F::IQ4_NL | F::IQ4_XS) && gqa4) {
                t = Q5_K;
            } else if matches!(ft, F::Q4_K_M | F::Q5_K_M)
                && use_more_bits(self.i_attention_wv, self.n_attention_wv)
            {
                t = Q6_K;
            } else if ft == F::Q4_K_S && self.i_attention_wv < 4 {
                t = Q5_K;
            }
            if m.is_llama_70b() && (t == Q3_K || t == Q4_K) {
                t = Q5_K;
            }
            if m.n_expert == 8 {
                t = Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == C::AttnK {
            if m.n_expert == 8 {
                t = Q8_0;
            } else if ft == F::IQ3_XS {
                t = IQ3_XXS;
            } else if ft == F::IQ3_XXS {
                t = IQ2_S;
            }
        } else if cat == C::AttnQ {
            if ft == F::IQ3_XS {
                t = IQ3_XXS;
            } else if ft == F::IQ3_XXS {
                t = IQ2_S;
            }
        } else if cat == C::FfnDown {
            let (i, n) = self.layer_info(self.i_ffn_down, tensor.name)?;
            let falcon = m.is_falcon();
            if ft == F::Q2_K {
                t = Q3_K;
            } else if ft == F::Q2_K_S {
                if i < n / 8 {
                    t = Q4_K;
                }
            } else if ft == F::IQ3_XXS && !self.opts.has_imatrix {
                t = if i < n / 8 { Q4_K } else { Q3_K };
            } else if ft == F::Q3_K_M {
                t = if i < n / 16 {
                    Q5_K
                } else if !falcon || use_more_bits(i, n) {
                    Q4_K
                } else {
                    Q3_K
                };
            } else if ft == F::IQ3_M && (i < n / 8 || (m.n_expert == 8 && use_more_bits(i, n))) {
                t = Q4_K;
            } else if ft == F::Q3_K_L {
                t = if falcon { Q4_K } else { Q5_K };
            } else if ft == F::Q4_K_M {
                if falcon {
                    t = if i < n / 16 {
                        Q6_K
                    } else if use_more_bits(i, n) {
                        Q5_K
                    } else {
                        Q4_K
                    };
                } else if use_more_bits(i, n) {
                    t = Q6_K;
                }
            } else if i < n / 8 && matches!(ft, F::IQ4_NL | F::IQ4_XS) && !self.opts.has_imatrix {
                t = Q5_K;
            } else if ft == F::Q5_K_M && use_more_bits(i, n) {
                t = Q6_K;
            } else if ft == F::Q4_K_S && !falcon && i < n / 8 {
                t = Q5_K;
            } else if matches!(ft, F::Q4_0 | F::Q5_0) && self.opts.has_imatrix && i < n / 8 {
                t = if ft == F::Q4_0 { Q4_1 } else { Q5_1 };
            }
            self.i_ffn_down += 1;
        } else if cat == C::AttnOutput {
            if !m.is_falcon() {
                if m.n_expert == 8 {
                    let bump = matches!(
                        ft,
                        F::Q2_K
                            | F::IQ3_XS
                            | F::IQ3_XXS
                            | F::Q3_K_S
                            | F::Q3_K_M
                            | F::IQ4_NL
                            | F::Q4_K_S
                            | F::Q4_K_M
                            | F::IQ3_S
                            | F::IQ3_M
                            | F::IQ4_XS
                    );
                    if bump {
                        t = Q5_K;
                    }
                } else if ft == F::Q2_K {
                    t = Q3_K;
                } else if ft == F::IQ3_XXS {
                    t = IQ3_S;
                } else if matches!(ft, F::Q3_K_M | F::IQ3_M) {
                    t = Q4_K;
                } else if ft == F::Q3_K_L {
                    t = Q5_K;
                }
            } else if ft == F::Q3_K_L {
                t = Q4_K;
            }
        } else if cat == C::AttnQkv {
            // attn_qkv is attn_v-like, so this branch is reached only by name patterns that are
            // not; kept for parity with the reference.
            if matches!(ft, F::Q3_K_M | F::Q3_K_L | F::IQ3_M) {
                t = Q4_K;
            } else if ft == F::Q4_K_M {
                t = Q5_K;
            } else if ft == F::Q5_K_M {
                t = Q6_K;
            }
        } else if cat == C::FfnGate || cat == C::FfnUp {
            let counter = if cat == C::FfnGate {
                self.i_ffn_gate
            } else {
                self.i_ffn_up
            };
            let (i, n) = self.layer_info(counter, tensor.name)?;
            if ft == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
                t = IQ3_XXS;
            }
            if cat == C::FfnGate {
                self.i_ffn_gate += 1;
            } else {
                self.i_ffn_up += 1;
            }
        }
        Ok(t)
    }

    /// `llama_tensor_get_type`: options first, then the mix, then the fallback.
    fn tensor_type(&mut self, tensor: &TensorRef) -> Result<GgmlType> {
        if !allows_quantization(tensor.name, tensor.shape, self.opts.leave_output_tensor) {
            return Ok(tensor.ty);
        }
        let cat = category(tensor.name);
        if let (Some(t), Category::TokenEmbd) = (self.opts.token_embedding_type, cat) {
            let named = tensor.name == "per_layer_token_embd.weight"
                && self.patterns.iter().any(|(re, _)| re.is_match(tensor.name));
            if !named {
                return Ok(t);
            }
        }
        if let (Some(t), Category::Output) = (self.opts.output_tensor_type, cat) {
            return Ok(t);
        }
        let mut t = self.ft.default_type();
        if t.is_quantized() {
            let manual = self
                .patterns
                .iter()
                .find(|(re, _)| re.is_match(tensor.name))
                .map(|&(_, t)| t);
            if let Some(m) = manual {
                t = m;
            } else if !self.opts.pure {
                t = self.mix_type(t, tensor, cat)?;
            }
            t = fallback(tensor.shape[0], t)?;
        }
        Ok(t)
    }
}

/// The type of every tensor, in the order given (which must be llama.cpp's order, as the
/// per-layer counters depend on it).
pub fn plan_types(
    model: &ModelInfo,
    ft: FileType,
    opts: &MixOptions,
    tensors: &[TensorRef],
) -> Result<Vec<GgmlType>> {
    let patterns = opts
        .tensor_types
        .iter()
        .map(|(p, t)| {
            Regex::new(p)
                .map(|re| (re, *t))
                .map_err(|e| Error::Invalid(format!("--tensor-type pattern `{p}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut state = State {
        model,
        ft,
        opts,
        patterns,
        has_tied_embeddings: !tensors.iter().any(|t| category(t.name) == Category::Output),
        n_attention_wv: tensors
            .iter()
            .filter(|t| is_attn_v_like(category(t.name)))
            .count(),
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
    };
    tensors.iter().map(|t| state.tensor_type(t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    fn llama(
        n_layer: usize,
        hidden: u64,
        ff: u64,
        kv: u64,
        vocab: u64,
        tied: bool,
    ) -> (ModelInfo, Vec<(String, Vec<u64>)>) {
        let mut t = vec![("token_embd.weight".to_string(), vec![hidden, vocab])];
        if !tied {
            t.insert(0, ("output.weight".to_string(), vec![hidden, vocab]));
        }
        t.insert(0, ("output_norm.weight".to_string(), vec![hidden]));
        for l in 0..n_layer {
            for (n, s) in [
                ("attn_k.weight", vec![hidden, kv]),
                ("attn_norm.weight", vec![hidden]),
                ("attn_output.weight", vec![hidden, hidden]),
                ("attn_q.weight", vec![hidden, hidden]),
                ("attn_v.weight", vec![hidden, kv]),
                ("ffn_down.weight", vec![ff, hidden]),
                ("ffn_gate.weight", vec![hidden, ff]),
                ("ffn_norm.weight", vec![hidden]),
                ("ffn_up.weight", vec![hidden, ff]),
            ] {
                t.push((format!("blk.{l}.{n}"), s));
            }
        }
        let info = ModelInfo {
            arch: "llama".into(),
            n_layer,
            n_head: 32,
            n_head_kv: (32 * kv / hidden) as usize,
            n_expert: 0,
        };
        (info, t)
    }

    fn plan(ft: &str, info: &ModelInfo, tensors: &[(String, Vec<u64>)]) -> Vec<(String, GgmlType)> {
        let refs: Vec<TensorRef> = tensors
            .iter()
            .map(|(n, s)| TensorRef {
                name: n,
                shape: s,
                ty: F16,
            })
            .collect();
        let types = plan_types(
            info,
            FileType::parse(ft).unwrap(),
            &MixOptions::default(),
            &refs,
        )
        .unwrap();
        tensors.iter().map(|(n, _)| n.clone()).zip(types).collect()
    }

    fn ty(p: &[(String, GgmlType)], name: &str) -> GgmlType {
        p.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn q4_k_m_on_a_llama_8b_shape() {
        let (info, t) = llama(32, 4096, 14336, 1024, 128256, false);
        let p = plan("q4_k_m", &info, &t);
        assert_eq!(ty(&p, "output.weight"), Q6_K);
        assert_eq!(ty(&p, "token_embd.weight"), Q4_K);
        assert_eq!(
            ty(&p, "output_norm.weight"),
            F16,
            "1-D tensors keep their type"
        );
        // use_more_bits: first and last eighth, and every third layer in between.
        let more: Vec<usize> = (0..32)
            .filter(|&l| ty(&p, &format!("blk.{l}.ffn_down.weight")) == Q6_K)
            .collect();
        assert_eq!(
            more,
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        let v: Vec<usize> = (0..32)
            .filter(|&l| ty(&p, &format!("blk.{l}.attn_v.weight")) == Q6_K)
            .collect();
        assert_eq!(v, more);
        assert_eq!(ty(&p, "blk.5.attn_q.weight"), Q4_K);
    }

    #[test]
    fn smollm2_widths_fall_back() {
        // 576 wide, 9 heads / 3 kv heads, tied embeddings: rows of 576 do not divide into 256.
        let (mut info, t) = llama(30, 576, 1536, 192, 49152, true);
        info.n_head = 9;
        info.n_head_kv = 3;
        let p = plan("Q4_K_M", &info, &t);
        assert_eq!(
            ty(&p, "token_embd.weight"),
            Q8_0,
            "tied output rule, 576 % 256 != 0"
        );
        assert_eq!(
            ty(&p, "blk.3.attn_q.weight"),
            Q5_0,
            "Q4_K falls back to Q5_0"
        );
        assert_eq!(
            ty(&p, "blk.0.ffn_down.weight"),
            Q6_K,
            "ffn_down rows are 1536 wide: no fallback"
        );
        let p = plan("Q2_K", &info, &t);
        assert_eq!(ty(&p, "blk.3.attn_q.weight"), Q4_0);
        let p = plan("IQ4_XS", &info, &t);
        assert_eq!(ty(&p, "blk.3.attn_q.weight"), IQ4_NL);
    }

    #[test]
    fn names_and_ids() {
        assert_eq!(FileType::parse("q4_k").unwrap().name(), "Q4_K_M");
        assert_eq!(FileType::parse("15").unwrap().name(), "Q4_K_M");
        assert_eq!(FileType::parse("Q8_0").unwrap().id(), 7);
        assert!(FileType::parse("Q9_K").is_err());
        assert_eq!(fallback(576, Q6_K).unwrap(), Q8_0);
        assert_eq!(fallback(100, Q6_K).unwrap(), F16);
        assert_eq!(fallback(100, Q8_0).unwrap(), F16);
    }
}
