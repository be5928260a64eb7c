//! Phi-3 (GGUF architecture `phi3`), after `convert_hf_to_gguf.py`'s `Phi3MiniModel`: the
//! fused `qkv_proj` and `gate_up_proj` are kept fused as llama.cpp's `attn_qkv` and `ffn_up`;
//! long-context checkpoints get `rope_factors_long` / `rope_factors_short` tensors and the
//! long-RoPE attention factor. The hyper-parameters are `Phi3MiniModel`'s own list.

use super::*;

pub static PHI3: Architecture = Architecture {
    gguf_name: "phi3",
    hf_architectures: &["Phi3ForCausalLM"],
    tensors: &[
        rule("model.embed_tokens", "token_embd"),
        rule("model.layers.{N}.input_layernorm", "blk.{N}.attn_norm"),
        rule("model.layers.{N}.self_attn.qkv_proj", "blk.{N}.attn_qkv"),
        rule("model.layers.{N}.self_attn.q_proj", "blk.{N}.attn_q"),
        rule("model.layers.{N}.self_attn.k_proj", "blk.{N}.attn_k"),
        rule("model.layers.{N}.self_attn.v_proj", "blk.{N}.attn_v"),
        rule("model.layers.{N}.self_attn.o_proj", "blk.{N}.attn_output"),
        rule(
            "model.layers.{N}.post_attention_layernorm",
            "blk.{N}.ffn_norm",
        ),
        rule("model.layers.{N}.mlp.gate_up_proj", "blk.{N}.ffn_up"),
        rule("model.layers.{N}.mlp.down_proj", "blk.{N}.ffn_down"),
        rule("model.norm", "output_norm"),
        rule("lm_head", "output"),
    ],
    ignored_suffixes: &[".rotary_emb.inv_freq"],
    hparams: &[
        // Written while the extra tensors are made, before everything else.
        hp(
            "rope.scaling.attn_factor",
            Source::LongRopeAttnFactor,
            false,
        ),
        hp(
            "context_length",
            Source::U32(&["n_positions", "max_position_embeddings"]),
            true,
        ),
        hp_or(
            "rope.scaling.original_context_length",
            Source::RopeOriginalContext,
            4096.0,
        ),
        hp(
            "embedding_length",
            Source::U32(&["hidden_size", "n_embd"]),
            true,
        ),
        hp(
            "feed_forward_length",
            Source::U32(&["intermediate_size"]),
            true,
        ),
        hp("block_count", Source::U32(BLOCK_COUNT), true),
        hp(
            "attention.head_count",
            Source::U32(&["num_attention_heads", "n_head"]),
            true,
        ),
        // Phi3Config defaults the key/value head count to the head count.
        hp(
            "attention.head_count_kv",
            Source::U32(&["num_key_value_heads", "n_head_kv", "num_attention_heads"]),
            true,
        ),
        hp_or(
            "attention.layer_norm_rms_epsilon",
            Source::F32(&["rms_norm_eps"]),
            1e-5,
        ),
        hp("rope.dimension_count", Source::PartialRopeDim, true),
        hp_or(
            "rope.freq_base",
            Source::RopeTheta(&["rope_theta"]),
            10000.0,
        ),
        hp_or(
            "attention.sliding_window",
            Source::U32(&["sliding_window"]),
            0.0,
        ),
    ],
    n_head_keys: &["num_attention_heads", "n_head"],
    n_head_kv_keys: &["num_key_value_heads", "n_head_kv"],
    n_expert_keys: &[],
    hooks: Hooks {
        generated_tensors: Some(longrope_factor_tensors),
        hf_config: Some(partial_rotary_factor),
        ..NO_HOOKS
    },
};

/// Phi-3 rotates `int(partial_rotary_factor * n_embd) // n_head` dimensions of each head:
/// the factor back from the GGUF's rope dimension count, when not every dimension rotates.
fn partial_rotary_factor(n: &dyn Fn(&str) -> Option<u64>, c: &mut serde_json::Map<String, Json>) {
    let head = n("attention.head_count").filter(|&h| h > 0);
    if let (Some(dims), Some(e), Some(h)) = (n("rope.dimension_count"), n("embedding_length"), head)
    {
        if dims * h != e {
            c.insert(
                "partial_rotary_factor".into(),
                serde_json::json!(dims as f64 * h as f64 / e as f64),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;

    #[test]
    fn fused_names() {
        for (hf, gguf) in [
            (
                "model.layers.0.self_attn.qkv_proj.weight",
                "blk.0.attn_qkv.weight",
            ),
            (
                "model.layers.0.mlp.gate_up_proj.weight",
                "blk.0.ffn_up.weight",
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.ffn_norm.weight",
            ),
        ] {
            assert_eq!(PHI3.canonical(hf).unwrap().name, gguf);
            assert_eq!(PHI3.hf_name(gguf).unwrap(), hf);
        }
    }

    #[test]
    fn longrope_metadata_and_factors() {
        let config = serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_theta": 10000.0, "sliding_window": 262144,
            "rope_scaling": {"type": "longrope", "long_factor": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                             "short_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5]}
        });
        let md = PHI3.metadata(&config, "p").unwrap();
        let keys: Vec<&str> = md.iter().map(|(k, _)| k).skip(3).collect();
        assert_eq!(keys[0], "phi3.rope.scaling.attn_factor");
        assert_eq!(keys[2], "phi3.rope.scaling.original_context_length");
        assert_eq!(*keys.last().unwrap(), "phi3.attention.sliding_window");
        let want = (1.0 + (32.0f64).ln() / 4096f64.ln()).sqrt() as f32;
        assert_eq!(
            md.get("phi3.rope.scaling.attn_factor"),
            Some(&Value::F32(want))
        );
        assert_eq!(md.get("phi3.rope.dimension_count"), Some(&Value::U32(16)));
        let (long, short) = longrope_factors(&config, &PHI3).unwrap().unwrap();
        assert_eq!((long.len(), short[7]), (8, 1.5));
        let mut bad = config.clone();
        bad["rope_scaling"]["short_factor"] = serde_json::json!([1.0]);
        assert!(longrope_factors(&bad, &PHI3).is_err());
    }
}
