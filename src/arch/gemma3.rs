//! Gemma 3 text models (GGUF architecture `gemma3`), after `convert_hf_to_gguf.py`'s
//! `Gemma3Model`: Gemma 2's tensors plus per-head q/k norms, every `*norm.weight` stored
//! `+ 1`. The hyper-parameters are `TextModel`'s followed by `Gemma3Model`'s own, which
//! overwrite some of them in place; the table lists each key where it is first written, with
//! the value it ends with. Defaults are `Gemma3TextConfig`'s.

use super::gemma2::gemma_tensors;
use super::*;

pub static GEMMA3: Architecture = Architecture {
    gguf_name: "gemma3",
    hf_architectures: &["Gemma3ForCausalLM"],
    tensors: gemma_tensors!(
        shifted("model.layers.{N}.self_attn.q_norm", "blk.{N}.attn_q_norm"),
        shifted("model.layers.{N}.self_attn.k_norm", "blk.{N}.attn_k_norm"),
        rule("lm_head", "output"),
    ),
    ignored_suffixes: &[".rotary_emb.inv_freq"],
    hparams: &[
        hp("block_count", Source::U32(BLOCK_COUNT), true),
        hp_or(
            "context_length",
            Source::U32(&["max_position_embeddings"]),
            131072.0,
        ),
        hp("embedding_length", Source::U32(EMBEDDING_LENGTH), false),
        hp(
            "feed_forward_length",
            Source::U32(FEED_FORWARD_LENGTH),
            false,
        ),
        hp_or(
            "attention.head_count",
            Source::U32(&["num_attention_heads"]),
            8.0,
        ),
        hp_or(
            "attention.head_count_kv",
            Source::U32(&["num_key_value_heads"]),
            4.0,
        ),
        hp("", Source::RopeScaling, false),
        hp_or("rope.freq_base", Source::RopeTheta(&["rope_theta"]), 1e6),
        hp_or(
            "rope.freq_base_swa",
            Source::RopeThetaSwa(ROPE_THETA_SWA),
            10000.0,
        ),
        hp_or(
            "attention.layer_norm_rms_epsilon",
            Source::F32(&["rms_norm_eps"]),
            1e-6,
        ),
        hp_or("attention.key_length", Source::KeyValueLength, 256.0),
        hp(
            "final_logit_softcapping",
            Source::F32NonZero(&["final_logit_softcapping"]),
            false,
        ),
        hp_or(
            "attention.sliding_window",
            Source::U32Unless(&["sliding_window"], "sliding_window_pattern", 1),
            4096.0,
        ),
    ],
    n_head_keys: &["num_attention_heads"],
    n_head_kv_keys: &["num_key_value_heads"],
    n_expert_keys: &[],
    hooks: Hooks {
        embd_rows: Some(tokenizer_vocab_len),
        vocab: VocabRules::Gemma,
        hf_config: Some(super::gemma2::query_pre_attn_scalar::<62>),
        ..NO_HOOKS
    },
};

/// Gemma 3 keeps the rows of `token_embd` of its real vocabulary, as
/// `Gemma3Model.modify_tensors` counts it: `None` when the folder
/// has a `tokenizer.model` (the converter pads that vocabulary to `vocab_size`, so nothing is
/// trimmed) or no `tokenizer.json`.
pub fn tokenizer_vocab_len(dir: &std::path::Path) -> crate::error::Result<Option<usize>> {
    use crate::error::Error;
    let path = dir.join("tokenizer.json");
    if crate::input::exists(&dir.join("tokenizer.model")) {
        return Ok(None);
    }
    let Some(text) = crate::input::read_in(dir, &path)? else {
        return Ok(None);
    };
    let json: Json = serde_json::from_slice(&text)
        .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
    let vocab = json
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(|v| {
            v.as_object()
                .map(|o| o.len())
                .or(v.as_array().map(Vec::len))
        })
        .ok_or_else(|| Error::format(&path, "no `model.vocab`"))?;
    let added = json
        .get("added_tokens")
        .and_then(Json::as_array)
        .map_or(0, Vec::len);
    Ok(Some(vocab + added))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;
    use crate::layout::Transform;

    #[test]
    fn qk_norms_shifted() {
        let m = GEMMA3
            .canonical("model.layers.0.self_attn.k_norm.weight")
            .unwrap();
        assert_eq!(m.name, "blk.0.attn_k_norm.weight");
        assert_eq!(m.transform, Transform::AddOne);
        assert_eq!(
            GEMMA3.hf_name("blk.0.attn_q_norm.weight").unwrap(),
            "model.layers.0.self_attn.q_norm.weight"
        );
    }

    #[test]
    fn metadata() {
        let config = serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1,
            "num_hidden_layers": 2, "intermediate_size": 128, "head_dim": 16,
            "sliding_window": 32, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "final_logit_softcapping": null,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}
        });
        let md = GEMMA3.metadata(&config, "g").unwrap();
        let keys: Vec<&str> = md.iter().map(|(k, _)| k).skip(3).collect();
        assert_eq!(
            keys,
            [
                "gemma3.block_count",
                "gemma3.context_length",
                "gemma3.embedding_length",
                "gemma3.feed_forward_length",
                "gemma3.attention.head_count",
                "gemma3.attention.head_count_kv",
                "gemma3.rope.scaling.type",
                "gemma3.rope.scaling.factor",
                "gemma3.rope.freq_base",
                "gemma3.rope.freq_base_swa",
                "gemma3.attention.layer_norm_rms_epsilon",
                "gemma3.attention.key_length",
                "gemma3.attention.value_length",
                "gemma3.attention.sliding_window",
            ]
        );
        assert_eq!(md.get("gemma3.context_length"), Some(&Value::U32(131072)));
        assert_eq!(
            md.get("gemma3.rope.freq_base_swa"),
            Some(&Value::F32(10000.0))
        );
        let mut c = config.clone();
        c["sliding_window_pattern"] = serde_json::json!(1);
        c["final_logit_softcapping"] = serde_json::json!(30.0);
        let md = GEMMA3.metadata(&c, "g").unwrap();
        assert!(md.get("gemma3.attention.sliding_window").is_none());
        assert_eq!(
            md.get("gemma3.final_logit_softcapping"),
            Some(&Value::F32(30.0))
        );
    }
}
