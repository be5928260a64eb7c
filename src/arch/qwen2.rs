//! Qwen2 (GGUF architecture `qwen2`), after `convert_hf_to_gguf.py`'s `Qwen2Model`: llama's
//! tensors without the q/k row permutation, q/k/v biases, and `TextModel`'s generic
//! hyper-parameters (no vocabulary size, no rope dimension count). Tied embeddings simply
//! have no `lm_head.weight`, so no `output.weight` is written.

use super::*;

/// Llama's tensor names, none permuted (shared by the Qwen tables).
macro_rules! qwen_tensors {
    ($($extra:expr),* $(,)?) => {
        &[
            rule("model.embed_tokens", "token_embd"),
            rule("model.layers.{N}.input_layernorm", "blk.{N}.attn_norm"),
            rule("model.layers.{N}.self_attn.q_proj", "blk.{N}.attn_q"),
            rule("model.layers.{N}.self_attn.k_proj", "blk.{N}.attn_k"),
            rule("model.layers.{N}.self_attn.v_proj", "blk.{N}.attn_v"),
            rule("model.layers.{N}.self_attn.o_proj", "blk.{N}.attn_output"),
            $($extra,)*
            rule(
                "model.layers.{N}.post_attention_layernorm",
                "blk.{N}.ffn_norm",
            ),
            rule("model.layers.{N}.mlp.gate_proj", "blk.{N}.ffn_gate"),
            rule("model.layers.{N}.mlp.up_proj", "blk.{N}.ffn_up"),
            rule("model.layers.{N}.mlp.down_proj", "blk.{N}.ffn_down"),
            rule("model.norm", "output_norm"),
            rule("lm_head", "output"),
        ]
    };
}
pub(crate) use qwen_tensors;

/// `TextModel.set_gguf_parameters` in its order, for a model without experts, with the
/// defaults of transformers' Qwen2/Qwen3 configs (`head_dim`: the key/value length default).
macro_rules! qwen_hparams {
    ($head_dim:expr) => {
        &[
            hp("block_count", Source::U32(BLOCK_COUNT), true),
            hp_or("context_length", Source::U32(CONTEXT_LENGTH), 32768.0),
            hp("embedding_length", Source::U32(EMBEDDING_LENGTH), false),
            hp(
                "feed_forward_length",
                Source::U32(FEED_FORWARD_LENGTH),
                false,
            ),
            hp("attention.head_count", Source::U32(HEAD_COUNT), false),
            hp_or("attention.head_count_kv", Source::U32(HEAD_COUNT_KV), 32.0),
            hp("", Source::RopeScaling, false),
            hp_or("rope.freq_base", Source::RopeTheta(ROPE_THETA), 10000.0),
            hp(
                "rope.freq_base_swa",
                Source::RopeThetaSwa(ROPE_THETA_SWA),
                false,
            ),
            hp_or(
                "attention.layer_norm_rms_epsilon",
                Source::F32(RMS_EPS),
                1e-6,
            ),
            hp("expert_count", Source::U32(EXPERT_COUNT), false),
            hp("expert_used_count", Source::U32(EXPERT_USED_COUNT), false),
            HParam {
                key: "attention.key_length",
                source: Source::KeyValueLength,
                default: $head_dim,
                required: false,
            },
        ]
    };
}
pub(crate) use qwen_hparams;

pub static QWEN2: Architecture = Architecture {
    gguf_name: "qwen2",
    hf_architectures: &["Qwen2ForCausalLM"],
    tensors: qwen_tensors!(),
    ignored_suffixes: &[".rotary_emb.inv_freq"],
    hparams: qwen_hparams!(None),
    n_head_keys: &["n_heads", "num_attention_heads"],
    n_head_kv_keys: &["n_kv_heads", "num_key_value_heads"],
    n_expert_keys: &[],
    hooks: NO_HOOKS,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;

    #[test]
    fn names_biases_and_no_permutation() {
        for (hf, gguf) in [
            ("model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias"),
            (
                "model.layers.3.self_attn.k_proj.weight",
                "blk.3.attn_k.weight",
            ),
            (
                "model.layers.1.post_attention_layernorm.weight",
                "blk.1.ffn_norm.weight",
            ),
            ("lm_head.weight", "output.weight"),
        ] {
            let m = QWEN2.canonical(hf).unwrap();
            assert_eq!(m.name, gguf);
            assert_eq!(m.permute, Permute::None);
            assert_eq!(QWEN2.hf_name(gguf).unwrap(), hf);
        }
        assert_eq!(by_hf_name("Qwen2ForCausalLM").unwrap().gguf_name, "qwen2");
    }

    #[test]
    fn metadata_is_text_models() {
        let config = serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
            "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "vocab_size": 100, "sliding_window": 4096
        });
        let md = QWEN2.metadata(&config, "q").unwrap();
        let keys: Vec<&str> = md.iter().map(|(k, _)| k).skip(3).collect();
        assert_eq!(
            keys,
            [
                "qwen2.block_count",
                "qwen2.context_length",
                "qwen2.embedding_length",
                "qwen2.feed_forward_length",
                "qwen2.attention.head_count",
                "qwen2.attention.head_count_kv",
                "qwen2.rope.freq_base",
                "qwen2.attention.layer_norm_rms_epsilon",
            ]
        );
        assert_eq!(md.get("qwen2.rope.freq_base"), Some(&Value::F32(1e6)));
    }
}
