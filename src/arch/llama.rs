//! Llama and Mistral (GGUF architecture `llama`), after `convert_hf_to_gguf.py`'s `LlamaModel`
//! and gguf-py's `tensor_mapping.py`.

use super::*;

pub static LLAMA: Architecture = Architecture {
    gguf_name: "llama",
    hf_architectures: &[
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
    ],
    tensors: &[
        rule("model.embed_tokens", "token_embd"),
        rule("model.layers.{N}.input_layernorm", "blk.{N}.attn_norm"),
        permuted(
            "model.layers.{N}.self_attn.q_proj",
            "blk.{N}.attn_q",
            Permute::Heads,
        ),
        permuted(
            "model.layers.{N}.self_attn.k_proj",
            "blk.{N}.attn_k",
            Permute::KvHeads,
        ),
        rule("model.layers.{N}.self_attn.v_proj", "blk.{N}.attn_v"),
        rule("model.layers.{N}.self_attn.o_proj", "blk.{N}.attn_output"),
        rule(
            "model.layers.{N}.post_attention_layernorm",
            "blk.{N}.ffn_norm",
        ),
        rule("model.layers.{N}.mlp.gate_proj", "blk.{N}.ffn_gate"),
        rule("model.layers.{N}.mlp.up_proj", "blk.{N}.ffn_up"),
        rule("model.layers.{N}.mlp.down_proj", "blk.{N}.ffn_down"),
        // Mixtral: the router, and each expert's w1/w2/w3 stacked into one 3-D tensor.
        rule(
            "model.layers.{N}.block_sparse_moe.gate",
            "blk.{N}.ffn_gate_inp",
        ),
        rule(
            "model.layers.{N}.block_sparse_moe.experts.{E}.w1",
            "blk.{N}.ffn_gate_exps",
        ),
        rule(
            "model.layers.{N}.block_sparse_moe.experts.{E}.w2",
            "blk.{N}.ffn_down_exps",
        ),
        rule(
            "model.layers.{N}.block_sparse_moe.experts.{E}.w3",
            "blk.{N}.ffn_up_exps",
        ),
        rule("model.norm", "output_norm"),
        rule("lm_head", "output"),
    ],
    ignored_suffixes: &[".rotary_emb.inv_freq"],
    hparams: &[
        hp("block_count", Source::U32(BLOCK_COUNT), true),
        hp("context_length", Source::U32(CONTEXT_LENGTH), false),
        hp("embedding_length", Source::U32(EMBEDDING_LENGTH), true),
        hp(
            "feed_forward_length",
            Source::U32(FEED_FORWARD_LENGTH),
            false,
        ),
        hp("attention.head_count", Source::U32(HEAD_COUNT), true),
        // HF's LlamaConfig defaults the key/value head count to the head count; llama.cpp's
        // converter sees that default through AutoConfig.
        hp(
            "attention.head_count_kv",
            Source::U32(&[
                "num_key_value_heads",
                "n_kv_heads",
                "num_attention_heads",
                "n_head",
                "n_heads",
            ]),
            false,
        ),
        hp("", Source::RopeScaling, false),
        hp_or("rope.freq_base", Source::RopeTheta(ROPE_THETA), 10000.0),
        hp_or(
            "attention.layer_norm_rms_epsilon",
            Source::F32(RMS_EPS),
            1e-6,
        ),
        hp("expert_count", Source::U32(EXPERT_COUNT), false),
        hp("expert_used_count", Source::U32(EXPERT_USED_COUNT), false),
        // transformers' LlamaConfig fills in head_dim; Mistral's and Mixtral's leave it None.
        hp(
            "attention.key_length",
            Source::KeyValueLengthComputedFor(&["LlamaForCausalLM"]),
            false,
        ),
        hp("vocab_size", Source::U32(&["vocab_size"]), true),
        hp("rope.dimension_count", Source::HeadDim, true),
    ],
    n_head_keys: &["n_heads", "num_attention_heads"],
    n_head_kv_keys: &["n_kv_heads", "num_key_value_heads"],
    n_expert_keys: &["num_local_experts"],
    hooks: Hooks {
        vocab: VocabRules::Llama,
        vocab_aliases: &["LLaMAForCausalLM", "LlamaModel"],
        ..NO_HOOKS
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;

    #[test]
    fn names_both_ways() {
        let cases = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.0.self_attn.q_proj.weight",
                "blk.0.attn_q.weight",
            ),
            (
                "model.layers.11.self_attn.k_proj.bias",
                "blk.11.attn_k.bias",
            ),
            (
                "model.layers.2.self_attn.v_proj.weight",
                "blk.2.attn_v.weight",
            ),
            (
                "model.layers.2.self_attn.o_proj.weight",
                "blk.2.attn_output.weight",
            ),
            (
                "model.layers.3.mlp.gate_proj.weight",
                "blk.3.ffn_gate.weight",
            ),
            ("model.layers.3.mlp.up_proj.weight", "blk.3.ffn_up.weight"),
            (
                "model.layers.3.mlp.down_proj.weight",
                "blk.3.ffn_down.weight",
            ),
            (
                "model.layers.4.input_layernorm.weight",
                "blk.4.attn_norm.weight",
            ),
            (
                "model.layers.4.post_attention_layernorm.weight",
                "blk.4.ffn_norm.weight",
            ),
        ];
        for (hf, gguf) in cases {
            assert_eq!(LLAMA.canonical(hf).unwrap().name, gguf, "{hf}");
            assert_eq!(LLAMA.hf_name(gguf).unwrap(), hf, "{gguf}");
        }
        assert_eq!(
            LLAMA
                .canonical("model.layers.1.self_attn.q_proj.weight")
                .unwrap()
                .permute,
            Permute::Heads
        );
        assert_eq!(
            LLAMA
                .canonical("model.layers.1.self_attn.k_proj.weight")
                .unwrap()
                .permute,
            Permute::KvHeads
        );
        assert!(LLAMA
            .canonical("model.layers.x.mlp.up_proj.weight")
            .is_none());
        assert!(LLAMA.canonical("model.other.weight").is_none());
        assert!(LLAMA.is_ignored("model.layers.0.self_attn.rotary_emb.inv_freq"));
        assert!(LLAMA.hf_name("blk.0.nonsense.weight").is_none());
        // Mixtral: the router renames; experts are parts of one stacked tensor.
        assert_eq!(
            LLAMA.hf_name("blk.2.ffn_gate_inp.weight").unwrap(),
            "model.layers.2.block_sparse_moe.gate.weight"
        );
        let m = LLAMA
            .canonical("model.layers.2.block_sparse_moe.experts.5.w2.weight")
            .unwrap();
        assert_eq!(
            (m.name.as_str(), m.block, m.expert),
            ("blk.2.ffn_down_exps.weight", Some(2), Some(5))
        );
        assert!(LLAMA.hf_name("blk.2.ffn_down_exps.weight").is_none());
        assert_eq!(
            LLAMA.hf_expert_name("blk.2.ffn_up_exps.weight", 7).unwrap(),
            "model.layers.2.block_sparse_moe.experts.7.w3.weight"
        );
        assert!(LLAMA.hf_expert_name("blk.2.attn_q.weight", 0).is_none());
        assert_eq!(
            super::super::by_hf_name("MistralForCausalLM")
                .unwrap()
                .gguf_name,
            "llama"
        );
    }

    #[test]
    fn metadata_order_and_types() {
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "vocab_size": 100,
            "rope_scaling": {"type": "linear", "factor": 2.0}
        });
        let md = LLAMA.metadata(&config, "tiny").unwrap();
        let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "general.architecture",
                "general.type",
                "general.name",
                "llama.block_count",
                "llama.context_length",
                "llama.embedding_length",
                "llama.feed_forward_length",
                "llama.attention.head_count",
                "llama.attention.head_count_kv",
                "llama.rope.scaling.type",
                "llama.rope.scaling.factor",
                "llama.rope.freq_base",
                "llama.attention.layer_norm_rms_epsilon",
                // transformers' LlamaConfig fills in head_dim, so the converter writes these.
                "llama.attention.key_length",
                "llama.attention.value_length",
                "llama.vocab_size",
                "llama.rope.dimension_count",
            ]
        );
        assert_eq!(md.get("llama.rope.dimension_count"), Some(&Value::U32(16)));
        assert_eq!(md.get("llama.rope.freq_base"), Some(&Value::F32(500000.0)));
        assert_eq!(
            md.get("llama.attention.layer_norm_rms_epsilon"),
            Some(&Value::F32(1e-5))
        );
        assert_eq!(md.get("llama.rope.scaling.factor"), Some(&Value::F32(2.0)));
        let heads = LLAMA.heads(&config).unwrap();
        assert_eq!((heads.n_head, heads.n_head_kv), (4, 2));

        let bad = serde_json::json!({"hidden_size": 64, "num_attention_heads": 4});
        assert!(LLAMA
            .metadata(&bad, "x")
            .unwrap_err()
            .contains("llama.block_count"));
    }
}
