//! Deterministic tiny llama-family models for tests and benchmarks, written as a Hugging Face
//! folder (config.json + safetensors, optionally sharded) and/or as GGUF, with a small
//! byte-level BPE tokenizer so llama.cpp can load the GGUF.
//!
//! Every tensor's values depend only on the seed and the tensor's name, so models of any size
//! stream out tensor by tensor and the same arguments always give the same bytes.

use crate::error::{Error, Result};
use crate::gguf::writer::TensorDecl;
use crate::gguf::{GgmlType, GgufWriter, Metadata, Value};
use crate::quant;
use crate::store::RowOrder;
use std::io::Write;
use std::path::Path;

/// Shape and seed of a generated llama model.
#[derive(Clone, Debug)]
pub struct TinyLlama {
    pub n_layer: usize,
    pub hidden: usize,
    pub ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub vocab: usize,
    /// Storage type of the 2-D weights (F32, F16 or BF16); norms are always F32.
    pub dtype: GgmlType,
    /// Without `lm_head.weight` / `output.weight` (tied embeddings).
    pub tied: bool,
    pub seed: u64,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            n_layer: 4,
            hidden: 64,
            ff: 128,
            n_head: 4,
            n_head_kv: 2,
            vocab: 512,
            dtype: GgmlType::F16,
            tied: false,
            seed: 1,
        }
    }
}

/// One generated tensor, described in Hugging Face terms.
pub struct HfTensor {
    pub hf_name: String,
    pub gguf_name: String,
    /// torch order (`[out, in]`).
    pub torch_shape: Vec<usize>,
    /// Standard deviation of the values (0 = norm weights around 1).
    std: f32,
    /// GGUF stores q/k rows permuted (see `RowOrder::HeadPermute`).
    permute_heads: Option<usize>,
}

/// SplitMix64: tiny, fast, and easy to reproduce anywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// The tensor's own stream: the model seed (scaled by the FNV prime) mixed with its name.
fn name_seed(seed: u64, name: &str) -> u64 {
    crate::seed::fnv1a(seed.wrapping_mul(0x100_0000_01b3), name)
}

impl TinyLlama {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.n_head
    }

    /// Every tensor, in Hugging Face order.
    pub fn tensors(&self) -> Vec<HfTensor> {
        let (h, hd) = (self.hidden, self.head_dim());
        let std = 0.02;
        let mut v = vec![HfTensor {
            hf_name: "model.embed_tokens.weight".into(),
            gguf_name: "token_embd.weight".into(),
            torch_shape: vec![self.vocab, h],
            std,
            permute_heads: None,
        }];
        for l in 0..self.n_layer {
            let t = |hf: &str, gg: &str, shape: Vec<usize>, std: f32, p: Option<usize>| HfTensor {
                hf_name: format!("model.layers.{l}.{hf}.weight"),
                gguf_name: format!("blk.{l}.{gg}.weight"),
                torch_shape: shape,
                std,
                permute_heads: p,
            };
            v.push(t("input_layernorm", "attn_norm", vec![h], 0.0, None));
            v.push(t(
                "self_attn.q_proj",
                "attn_q",
                vec![self.n_head * hd, h],
                std,
                Some(self.n_head),
            ));
            v.push(t(
                "self_attn.k_proj",
                "attn_k",
                vec![self.n_head_kv * hd, h],
                std,
                Some(self.n_head_kv),
            ));
            v.push(t(
                "self_attn.v_proj",
                "attn_v",
                vec![self.n_head_kv * hd, h],
                std,
                None,
            ));
            v.push(t(
                "self_attn.o_proj",
                "attn_output",
                vec![h, self.n_head * hd],
                std,
                None,
            ));
            v.push(t(
                "post_attention_layernorm",
                "ffn_norm",
                vec![h],
                0.0,
                None,
            ));
            v.push(t("mlp.gate_proj", "ffn_gate", vec![self.ff, h], std, None));
            v.push(t("mlp.up_proj", "ffn_up", vec![self.ff, h], std, None));
            v.push(t("mlp.down_proj", "ffn_down", vec![h, self.ff], std, None));
        }
        v.push(HfTensor {
            hf_name: "model.norm.weight".into(),
            gguf_name: "output_norm.weight".into(),
            torch_shape: vec![h],
            std: 0.0,
            permute_heads: None,
        });
        if !self.tied {
            v.push(HfTensor {
                hf_name: "lm_head.weight".into(),
                gguf_name: "output.weight".into(),
                torch_shape: vec![self.vocab, h],
                std,
                permute_heads: None,
            });
        }
        v
    }

    /// The tensor's values in Hugging Face row order.
    pub fn values(&self, t: &HfTensor) -> Vec<f32> {
        let n: usize = t.torch_shape.iter().product();
        let mut rng = SplitMix(name_seed(self.seed, &t.hf_name));
        if t.std == 0.0 {
            return (0..n).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
        }
        // Sum of 4 uniforms: close enough to a normal, plus rare outliers as real weights have.
        (0..n)
            .map(|_| {
                let s = rng.uniform() + rng.uniform() + rng.uniform() + rng.uniform();
                let x = s * t.std * 0.866;
                if rng.next() % 4096 == 0 {
                    x * 12.0
                } else {
                    x
                }
            })
            .collect()
    }

    fn storage_type(&self, t: &HfTensor) -> GgmlType {
        if t.torch_shape.len() == 1 {
            GgmlType::F32
        } else {
            self.dtype
        }
    }

    fn encode(&self, t: &HfTensor, values: &[f32]) -> Vec<u8> {
        let ty = self.storage_type(t);
        let mut out = vec![0u8; values.len() * ty.type_size()];
        quant::float::quantize_row(ty, values, &mut out).expect("float types always encode");
        out
    }

    /// The config.json of the Hugging Face folder.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.ff,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_head_kv,
            "head_dim": self.head_dim(),
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": self.tied,
            "torch_dtype": crate::formats::safetensors::torch_dtype(self.dtype).unwrap_or("float16"),
            "bos_token_id": self.vocab - 1,
            "eos_token_id": self.vocab - 1,
        })
    }

    /// Write a Hugging Face folder: config.json and `shards` safetensors files (with
    /// `model.safetensors.index.json` when more than one).
    pub fn write_hf(&self, dir: &Path, shards: usize) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let cfg = serde_json::to_string_pretty(&self.config_json()).expect("json");
        std::fs::write(dir.join("config.json"), cfg)
            .map_err(|e| Error::io(dir.join("config.json"), e))?;
        let tensors = self.tensors();
        let shards = shards.max(1);
        let per = tensors.len().div_ceil(shards);
        let mut weight_map = serde_json::Map::new();
        for (i, group) in tensors.chunks(per).enumerate() {
            let file = if shards == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, shards)
            };
            let encoded: Vec<(String, GgmlType, Vec<usize>, Vec<u8>)> = group
                .iter()
                .map(|t| {
                    let bytes = self.encode(t, &self.values(t));
                    (
                        t.hf_name.clone(),
                        self.storage_type(t),
                        t.torch_shape.clone(),
                        bytes,
                    )
                })
                .collect();
            for (name, ..) in &encoded {
                weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
            }
            write_safetensors(&dir.join(&file), &encoded)?;
        }
        if shards > 1 {
            let index =
                serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
            let p = dir.join("model.safetensors.index.json");
            std::fs::write(&p, serde_json::to_string_pretty(&index).expect("json"))
                .map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }

    /// GGUF metadata as llama.cpp's convert script would write it for this model.
    pub fn gguf_metadata(&self, name: &str) -> Metadata {
        let mut m = Metadata::new();
        m.set("general.architecture", Value::String("llama".into()));
        m.set("general.type", Value::String("model".into()));
        m.set("general.name", Value::String(name.into()));
        m.set("llama.block_count", Value::U32(self.n_layer as u32));
        m.set("llama.context_length", Value::U32(2048));
        m.set("llama.embedding_length", Value::U32(self.hidden as u32));
        m.set("llama.feed_forward_length", Value::U32(self.ff as u32));
        m.set("llama.attention.head_count", Value::U32(self.n_head as u32));
        m.set(
            "llama.attention.head_count_kv",
            Value::U32(self.n_head_kv as u32),
        );
        m.set("llama.rope.freq_base", Value::F32(10000.0));
        m.set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
        let ftype = match self.dtype {
            GgmlType::F32 => 0,
            GgmlType::BF16 => 32,
            _ => 1,
        };
        m.set("general.file_type", Value::U32(ftype));
        m.set("llama.vocab_size", Value::U32(self.vocab as u32));
        m.set(
            "llama.rope.dimension_count",
            Value::U32(self.head_dim() as u32),
        );
        let (tokens, types, merges) = byte_bpe_vocab(self.vocab);
        m.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        m.set("tokenizer.ggml.pre", Value::String("default".into()));
        m.set("tokenizer.ggml.tokens", Value::strings(tokens));
        m.set("tokenizer.ggml.token_type", Value::i32s(types));
        m.set("tokenizer.ggml.merges", Value::strings(merges));
        m.set(
            "tokenizer.ggml.bos_token_id",
            Value::U32(self.vocab as u32 - 1),
        );
        m.set(
            "tokenizer.ggml.eos_token_id",
            Value::U32(self.vocab as u32 - 1),
        );
        m.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        m.set("general.quantization_version", Value::U32(2));
        m
    }

    /// Write the model as GGUF (canonical names, q/k rows permuted as llama.cpp expects).
    pub fn write_gguf(&self, path: &Path) -> Result<()> {
        let tensors = self.tensors();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let decls: Vec<TensorDecl> = tensors
            .iter()
            .map(|t| TensorDecl {
                name: t.gguf_name.clone(),
                shape: t.torch_shape.iter().rev().map(|&d| d as u64).collect(),
                ty: self.storage_type(t),
            })
            .collect();
        let mut w = GgufWriter::create(path, &self.gguf_metadata(&name), &decls)?;
        for t in &tensors {
            let mut values = self.values(t);
            if let Some(n_head) = t.permute_heads {
                let row = t.torch_shape[1];
                let n_rows = t.torch_shape[0];
                let order = RowOrder::HeadPermute { n_head };
                let src = values.clone();
                for r in 0..n_rows {
                    let s = order.stored_row(r, n_rows);
                    values[r * row..(r + 1) * row].copy_from_slice(&src[s * row..(s + 1) * row]);
                }
            }
            w.write_data(&self.encode(t, &values))?;
        }
        w.finish()
    }
}

/// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 on.
pub fn gpt2_byte_char(b: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count();
    char::from_u32(256 + n as u32).expect("valid code point")
}

/// A byte-level BPE vocabulary of `vocab` tokens: 256 byte tokens, merges of letter pairs,
/// and `<|endoftext|>` last. Returns tokens, token types and merges.
pub fn byte_bpe_vocab(vocab: usize) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_byte_char(b).to_string()).collect();
    let mut types = vec![1i32; 256];
    let mut merges = Vec::new();
    let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    // Merges grow words one letter at a time: "Ġ a", "a b", then "ab c", ... until full.
    let mut prefixes: Vec<String> = std::iter::once(gpt2_byte_char(b' '))
        .chain('a'..='z')
        .map(String::from)
        .collect();
    'outer: while tokens.len() + 1 < vocab {
        let mut next = Vec::new();
        for a in &prefixes {
            for b in 'a'..='z' {
                if tokens.len() + 1 >= vocab {
                    break 'outer;
                }
                let merged = format!("{a}{b}");
                if seen.insert(merged.clone()) {
                    merges.push(format!("{a} {b}"));
                    tokens.push(merged.clone());
                    types.push(1);
                    next.push(merged);
                }
            }
        }
        prefixes = next;
    }
    tokens.push("<|endoftext|>".into());
    types.push(3);
    (tokens, types, merges)
}

/// Write a safetensors file: 8-byte header length, JSON header, then the tensors' bytes.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, GgmlType, Vec<usize>, Vec<u8>)],
) -> Result<()> {
    let shapes: Vec<Vec<u64>> = tensors
        .iter()
        .map(|t| t.2.iter().map(|&d| d as u64).collect())
        .collect();
    let decls: Vec<(&str, GgmlType, &[u64], u64)> = tensors
        .iter()
        .zip(&shapes)
        .map(|((name, ty, _, bytes), shape)| {
            (name.as_str(), *ty, shape.as_slice(), bytes.len() as u64)
        })
        .collect();
    let head = crate::formats::safetensors::encode_header(&[], &decls)?;
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e| Error::io(path, e);
    w.write_all(&head).map_err(io)?;
    for (.., bytes) in tensors {
        w.write_all(bytes).map_err(io)?;
    }
    w.flush().map_err(io)
}
