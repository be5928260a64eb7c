//! Gemma 2 (GGUF architecture `gemma2`), after `convert_hf_to_gguf.py`'s `Gemma2Model`: every
//! RMS norm weight is stored `+ 1` (HF's Gemma norm multiplies by `1 + w`), norms after
//! attention and after the feed-forward, logit soft-capping and the sliding window. The
//! embeddings are always tied: `lm_head.weight` is dropped when a checkpoint has it.
//!
//! The hyper-parameters are `Gemma2Model.set_gguf_parameters`' own list (not `TextModel`'s):
//! no RoPE base, no vocabulary size. Defaults are `Gemma2Config`'s, which the converter sees
//! through `AutoConfig`.

use super::*;

/// Gemma's tensors: `{extra}` rules go after the attention projections.
macro_rules! gemma_tensors {
    ($($extra:expr),* $(,)?) => {
        &[
            rule("model.embed_tokens", "token_embd"),
            shifted("model.layers.{N}.input_layernorm", "blk.{N}.attn_norm"),
            rule("model.layers.{N}.self_attn.q_proj", "blk.{N}.attn_q"),
            rule("model.layers.{N}.self_attn.k_proj", "blk.{N}.attn_k"),
            rule("model.layers.{N}.self_attn.v_proj", "blk.{N}.attn_v"),
            rule("model.layers.{N}.self_attn.o_proj", "blk.{N}.attn_output"),
            $($extra,)*
            shifted(
                "model.layers.{N}.post_attention_layernorm",
                "blk.{N}.post_attention_norm",
            ),
            shifted(
                "model.layers.{N}.pre_feedforward_layernorm",
                "blk.{N}.ffn_norm",
            ),
            rule("model.layers.{N}.mlp.gate_proj", "blk.{N}.ffn_gate"),
            rule("model.layers.{N}.mlp.up_proj", "blk.{N}.ffn_up"),
            rule("model.layers.{N}.mlp.down_proj", "blk.{N}.ffn_down"),
            shifted(
                "model.layers.{N}.post_feedforward_layernorm",
                "blk.{N}.post_ffw_norm",
            ),
            shifted("model.norm", "output_norm"),
        ]
    };
}
pub(crate) use gemma_tensors;

pub static GEMMA2: Architecture = Architecture {
    gguf_name: "gemma2",
    hf_architectures: &["Gemma2ForCausalLM"],
    tensors: gemma_tensors!(),
    ignored_suffixes: &[".rotary_emb.inv_freq", "lm_head.weight"],
    hparams: &[
        hp_or(
            "context_length",
            Source::U32(&["max_position_embeddings"]),
            8192.0,
        ),
        hp_or("embedding_length", Source::U32(&["hidden_size"]), 2304.0),
        hp("block_count", Source::U32(BLOCK_COUNT), true),
        hp_or(
            "feed_forward_length",
            Source::U32(&["intermediate_size"]),
            9216.0,
        ),
        hp_or(
            "attention.head_count",
            Source::U32(&["num_attention_heads"]),
            8.0,
        ),
        hp_or(
            "attention.head_count_kv",
            Source::U32(&["num_key_value_heads", "num_attention_heads"]),
            4.0,
        ),
        hp_or(
            "attention.layer_norm_rms_epsilon",
            Source::F32(&["rms_norm_eps"]),
            1e-6,
        ),
        hp_or("attention.key_length", Source::KeyValueLength, 256.0),
        hp_or(
            "attn_logit_softcapping",
            Source::F32(&["attn_logit_softcapping"]),
            50.0,
        ),
        hp_or(
            "final_logit_softcapping",
            Source::F32(&["final_logit_softcapping"]),
            30.0,
        ),
        hp_or(
            "attention.sliding_window",
            Source::U32(&["sliding_window"]),
            4096.0,
        ),
    ],
    n_head_keys: &["num_attention_heads"],
    n_head_kv_keys: &["num_key_value_heads"],
    n_expert_keys: &[],
    hooks: Hooks {
        vocab: VocabRules::Gemma,
        hf_config: Some(query_pre_attn_scalar::<46>),
        ..NO_HOOKS
    },
};

/// Gemma scales queries by 1/sqrt(query_pre_attn_scalar); llama.cpp takes the head size,
/// except for the 27B models (`BIG_LAYERS` layers: 46 for Gemma 2, 62 for Gemma 3), which use
/// n_embd / n_head.
pub(crate) fn query_pre_attn_scalar<const BIG_LAYERS: u64>(
    n: &dyn Fn(&str) -> Option<u64>,
    c: &mut serde_json::Map<String, Json>,
) {
    let big = n("block_count") == Some(BIG_LAYERS);
    let head = n("attention.head_count").filter(|&h| h > 0);
    let scalar = match (big, n("embedding_length"), head) {
        (true, Some(e), Some(h)) => Some(e / h),
        _ => n("attention.key_length"),
    };
    if let Some(s) = scalar {
        c.insert("query_pre_attn_scalar".into(), serde_json::json!(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;
    use crate::layout::Transform;

    #[test]
    fn norms_are_shifted_and_lm_head_dropped() {
        for (hf, gguf, shifted) in [
            ("model.norm.weight", "output_norm.weight", true),
            (
                "model.layers.1.post_feedforward_layernorm.weight",
                "blk.1.post_ffw_norm.weight",
                true,
            ),
            (
                "model.layers.1.post_attention_layernorm.weight",
                "blk.1.post_attention_norm.weight",
                true,
            ),
            (
                "model.layers.1.pre_feedforward_layernorm.weight",
                "blk.1.ffn_norm.weight",
                true,
            ),
            (
                "model.layers.1.self_attn.q_proj.weight",
                "blk.1.attn_q.weight",
                false,
            ),
        ] {
            let m = GEMMA2.canonical(hf).unwrap();
            assert_eq!(m.name, gguf);
            assert_eq!(m.transform == Transform::AddOne, shifted, "{hf}");
            assert_eq!(GEMMA2.hf_name(gguf).unwrap(), hf);
        }
        assert!(GEMMA2.is_ignored("lm_head.weight"));
    }

    #[test]
    fn metadata_order_with_defaults() {
        let config = serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 128, "head_dim": 16, "sliding_window": 32
        });
        let md = GEMMA2.metadata(&config, "g").unwrap();
        let keys: Vec<&str> = md.iter().map(|(k, _)| k).skip(3).collect();
        assert_eq!(
            keys,
            [
                "gemma2.context_length",
                "gemma2.embedding_length",
                "gemma2.block_count",
                "gemma2.feed_forward_length",
                "gemma2.attention.head_count",
                "gemma2.attention.head_count_kv",
                "gemma2.attention.layer_norm_rms_epsilon",
                "gemma2.attention.key_length",
                "gemma2.attention.value_length",
                "gemma2.attn_logit_softcapping",
                "gemma2.final_logit_softcapping",
                "gemma2.attention.sliding_window",
            ]
        );
        assert_eq!(md.get("gemma2.context_length"), Some(&Value::U32(8192)));
        assert_eq!(
            md.get("gemma2.attention.head_count_kv"),
            Some(&Value::U32(4))
        );
        assert_eq!(
            md.get("gemma2.attn_logit_softcapping"),
            Some(&Value::F32(50.0))
        );
        assert_eq!(
            md.get("gemma2.attention.sliding_window"),
            Some(&Value::U32(32))
        );
    }
}
