//! What sets each architecture's forward pass apart from Llama's, read from the GGUF
//! metadata as llama.cpp's `llama_model_<arch>::load_arch_hparams` and graph builders read it.
//! The graph in `model.rs` is one function; an architecture is one row here.

use crate::error::{Error, Result};
use crate::gguf::{Metadata, Value};

/// Which pairs of a head's dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// (2i, 2i+1): Llama, whose GGUF q/k rows are permuted for it.
    Interleaved,
    /// (i, i + n_rot/2): GPT-NeoX style; Qwen, Gemma, Phi-3.
    Neox,
}

/// The feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnAct {
    Silu,
    /// tanh-approximated GELU (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// An architecture's departures from the plain Llama graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Quirks {
    pub rope_style: RopeStyle,
    pub ffn_act: FfnAct,
    /// The embeddings are multiplied by sqrt(n_embd) (Gemma).
    pub embed_scale: bool,
    /// q is multiplied by this before attention and the softmax scale is 1 (Gemma, Phi-3);
    /// `None`: the softmax scales by 1/sqrt(head_dim) (Llama, Qwen).
    pub q_prescale: Option<f32>,
    /// tanh soft-capping of attention scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// tanh soft-capping of the logits (Gemma 2, some Gemma 3).
    pub final_softcap: Option<f32>,
    /// Sliding-window attention: the window and which layers use it.
    pub swa: Option<(usize, Vec<bool>)>,
    /// RoPE base and linear scale of the sliding-window layers when they differ (Gemma 3).
    pub swa_rope: Option<(f32, f32)>,
}

/// The sizes the quirks depend on.
pub struct Shape {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub head_dim: usize,
}

/// The quirks of `arch` (a GGUF `general.architecture`) with `n_layer` layers, or a clear
/// error for an architecture the forward pass does not run.
pub fn quirks(arch: &str, md: &Metadata, shape: &Shape) -> Result<Quirks> {
    let n_layer = shape.n_layer;
    let f32_key = |key: &str| -> Option<f32> {
        md.get(&format!("{arch}.{key}"))
            .and_then(Value::as_f64)
            .map(|v| v as f32)
    };
    let window = md
        .get_u64(&format!("{arch}.attention.sliding_window"))
        .filter(|&w| w > 0)
        .map(|w| w as usize);
    // llama.cpp's `set_swa_pattern(n)`: layer il slides unless il % n == n - 1; a
    // `sliding_window_pattern` key (a number, or one bool per layer) overrides the default.
    let pattern = |default: usize| -> Vec<bool> {
        let key = format!("{arch}.attention.sliding_window_pattern");
        if let Some(v) = md.get(&key) {
            let per_layer: Vec<bool> = v
                .items()
                .unwrap_or_default()
                .iter()
                .filter_map(|x| match x {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect();
            if per_layer.len() == n_layer {
                return per_layer;
            }
        }
        let n = md.get_u64(&key).map_or(default, |n| n as usize);
        (0..n_layer).map(|il| n == 0 || il % n < n - 1).collect()
    };
    let plain = Quirks {
        rope_style: RopeStyle::Interleaved,
        ffn_act: FfnAct::Silu,
        embed_scale: false,
        q_prescale: None,
        attn_softcap: None,
        final_softcap: None,
        swa: None,
        swa_rope: None,
    };
    let head_dim = shape.head_dim;
    // Gemma's query scale is 1/sqrt(query_pre_attn_scalar): the head size, except for the
    // 27B models (which llama.cpp knows by their layer count), where it is n_embd / n_head.
    let is_27b = (arch == "gemma2" && n_layer == 46) || (arch == "gemma3" && n_layer == 62);
    let gemma_q_scale = Some(if is_27b {
        1.0 / ((shape.n_embd / shape.n_head) as f32).sqrt()
    } else {
        1.0 / (head_dim as f32).sqrt()
    });
    Ok(match arch {
        "llama" => plain,
        "qwen2" | "qwen3" => Quirks {
            rope_style: RopeStyle::Neox,
            ..plain
        },
        "phi3" => Quirks {
            rope_style: RopeStyle::Neox,
            q_prescale: Some(1.0 / (head_dim as f32).sqrt()),
            // llama.cpp turns Phi-3's sliding window off (its converter's window is wrong).
            ..plain
        },
        "gemma2" => Quirks {
            rope_style: RopeStyle::Neox,
            ffn_act: FfnAct::GeluTanh,
            embed_scale: true,
            q_prescale: gemma_q_scale,
            attn_softcap: f32_key("attn_logit_softcapping").filter(|&c| c != 0.0),
            final_softcap: f32_key("final_logit_softcapping").filter(|&c| c != 0.0),
            swa: Some((window.unwrap_or(4096), pattern(2))),
            swa_rope: None,
        },
        "gemma3" => Quirks {
            rope_style: RopeStyle::Neox,
            ffn_act: FfnAct::GeluTanh,
            embed_scale: true,
            q_prescale: gemma_q_scale,
            attn_softcap: None,
            final_softcap: f32_key("final_logit_softcapping").filter(|&c| c != 0.0),
            swa: window.map(|w| (w, pattern(6))),
            swa_rope: window.map(|_| (f32_key("rope.freq_base_swa").unwrap_or(10000.0), 1.0)),
        },
        other => {
            return Err(Error::Invalid(format!(
                "smelt eval has no forward pass for the `{other}` architecture (it runs llama, \
                 Mistral and Mixtral as llama, qwen2, qwen3, gemma2, gemma3, phi3)"
            )))
        }
    })
}
