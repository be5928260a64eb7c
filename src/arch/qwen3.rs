//! Qwen3 (GGUF architecture `qwen3`), after `convert_hf_to_gguf.py`'s `Qwen3Model`: Qwen2's
//! tensors plus per-head q/k RMS norms, no biases; `head_dim` gives the key/value lengths.

use super::qwen2::{qwen_hparams, qwen_tensors};
use super::*;

pub static QWEN3: Architecture = Architecture {
    gguf_name: "qwen3",
    hf_architectures: &["Qwen3ForCausalLM"],
    tensors: qwen_tensors!(
        rule("model.layers.{N}.self_attn.q_norm", "blk.{N}.attn_q_norm"),
        rule("model.layers.{N}.self_attn.k_norm", "blk.{N}.attn_k_norm"),
    ),
    ignored_suffixes: &[".rotary_emb.inv_freq"],
    hparams: qwen_hparams!(Some(128.0)),
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
    fn qk_norms_and_head_dim() {
        for (hf, gguf) in [
            (
                "model.layers.2.self_attn.q_norm.weight",
                "blk.2.attn_q_norm.weight",
            ),
            (
                "model.layers.2.self_attn.k_norm.weight",
                "blk.2.attn_k_norm.weight",
            ),
            ("model.norm.weight", "output_norm.weight"),
        ] {
            assert_eq!(QWEN3.canonical(hf).unwrap().name, gguf);
            assert_eq!(QWEN3.hf_name(gguf).unwrap(), hf);
        }
        let config = serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "head_dim": 32, "rope_theta": 1000000.0
        });
        let md = QWEN3.metadata(&config, "q").unwrap();
        assert_eq!(md.get("qwen3.attention.key_length"), Some(&Value::U32(32)));
        assert_eq!(
            md.get("qwen3.attention.value_length"),
            Some(&Value::U32(32))
        );
        assert_eq!(md.iter().last().unwrap().0, "qwen3.attention.value_length");
    }
}
