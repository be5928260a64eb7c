//! Llama family (Llama 2/3/3.x, Mistral, SOLAR): convert_hf_to_gguf.py's `LlamaModel`.

use super::{cfg_f64, cfg_u64, set_u32, ArchTable};
use crate::gguf::{Metadata, Value};
use crate::store::RowOrder;

pub static LLAMA: ArchTable = ArchTable {
    hf_architectures: &["LlamaForCausalLM", "MistralForCausalLM"],
    gguf_arch: "llama",
    globals: &[
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ],
    layer: &[
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("self_attn.q_proj.bias", "attn_q.bias"),
        ("self_attn.k_proj.bias", "attn_k.bias"),
        ("self_attn.v_proj.bias", "attn_v.bias"),
        ("self_attn.o_proj.bias", "attn_output.bias"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ],
    ignored_suffixes: &["rotary_emb.inv_freq"],
    row_order,
    hparams,
};

fn heads(cfg: &serde_json::Value) -> (u64, u64) {
    let n_head = cfg_u64(cfg, &["num_attention_heads"]).unwrap_or(1);
    (
        n_head,
        cfg_u64(cfg, &["num_key_value_heads"]).unwrap_or(n_head),
    )
}

/// llama.cpp stores q and k with each head's rotary halves interleaved (`LlamaModel.permute`).
fn row_order(suffix: &str, cfg: &serde_json::Value) -> RowOrder {
    let (n_head, n_head_kv) = heads(cfg);
    match suffix {
        "attn_q.weight" | "attn_q.bias" => RowOrder::HeadPermute {
            n_head: n_head as usize,
        },
        "attn_k.weight" | "attn_k.bias" => RowOrder::HeadPermute {
            n_head: n_head_kv as usize,
        },
        _ => RowOrder::AsStored,
    }
}

fn hparams(cfg: &serde_json::Value, m: &mut Metadata) {
    let a = "llama";
    let (n_head, n_head_kv) = heads(cfg);
    let n_embd = cfg_u64(cfg, &["hidden_size", "n_embd"]);
    set_u32(
        m,
        format!("{a}.block_count"),
        cfg_u64(cfg, &["num_hidden_layers", "n_layer"]),
    );
    set_u32(
        m,
        format!("{a}.context_length"),
        cfg_u64(
            cfg,
            &[
                "max_position_embeddings",
                "n_ctx",
                "n_positions",
                "max_length",
                "max_sequence_length",
            ],
        ),
    );
    set_u32(m, format!("{a}.embedding_length"), n_embd);
    set_u32(
        m,
        format!("{a}.feed_forward_length"),
        cfg_u64(cfg, &["intermediate_size", "n_inner"]),
    );
    m.set(
        format!("{a}.attention.head_count"),
        Value::U32(n_head as u32),
    );
    m.set(
        format!("{a}.attention.head_count_kv"),
        Value::U32(n_head_kv as u32),
    );
    if let Some(theta) = cfg_f64(cfg, "rope_theta") {
        m.set(format!("{a}.rope.freq_base"), Value::F32(theta as f32));
    }
    if let Some(eps) = cfg_f64(cfg, "rms_norm_eps") {
        m.set(
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(eps as f32),
        );
    }
    set_u32(m, format!("{a}.vocab_size"), cfg_u64(cfg, &["vocab_size"]));
    let head_dim = cfg_u64(cfg, &["head_dim"]).or_else(|| n_embd.map(|e| e / n_head.max(1)));
    set_u32(m, format!("{a}.rope.dimension_count"), head_dim);
    if let Some(rs) = cfg.get("rope_scaling").filter(|v| v.is_object()) {
        let kind = rs
            .get("rope_type")
            .or_else(|| rs.get("type"))
            .and_then(|v| v.as_str());
        if kind == Some("linear") {
            m.set(
                format!("{a}.rope.scaling.type"),
                Value::String("linear".into()),
            );
            if let Some(f) = rs.get("factor").and_then(|v| v.as_f64()) {
                m.set(format!("{a}.rope.scaling.factor"), Value::F32(f as f32));
            }
        }
    }
}
