//! The forward pass of llama.cpp's `llama` architecture (Llama 2/3, Mistral, SmolLM2, the
//! fixtures): RMS norm, rotary positions on adjacent pairs (GGUF's q/k rows are permuted for
//! exactly that), grouped-query causal attention, SwiGLU, optional llama3 `rope_freqs`.
//!
//! As llama.cpp with its default F16 KV cache, keys and values are rounded to f16 before
//! attention. Matmuls run on candle in f32 over weights dequantized by smelt, after rounding
//! the activations exactly as llama.cpp's CPU kernels do before their dot products (to the
//! weight type's `vec_dot_type`: Q8_0 blocks for the legacy types, Q8_K for the K and IQ
//! types, f16 for F16 weights); only the order of the sums differs, so perplexities agree to
//! about 1e-4, not bit for bit.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::progress::Progress;
use crate::store::Store;
use candle_core::{DType, Device, Tensor};

fn cerr(e: candle_core::Error) -> Error {
    Error::Invalid(format!("forward pass: {e}"))
}

/// Hyper-parameters and tensor lookup of one model.
pub struct Model<'a> {
    store: &'a Store,
    n_layer: usize,
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_vocab: usize,
    eps: f32,
    rope_base: f32,
    /// llama3's per-dimension divisors of the RoPE frequencies (`rope_freqs.weight`).
    rope_factors: Option<Vec<f32>>,
}

impl<'a> Model<'a> {
    pub fn new(store: &'a Store) -> Result<Model<'a>> {
        let arch = store.architecture()?;
        if arch != "llama" {
            return Err(Error::Invalid(format!(
                "smelt eval runs the `llama` architecture so far (Llama, Mistral, SmolLM2); this model is `{arch}`"
            )));
        }
        let md = &store.metadata;
        let need = |key: &str| -> Result<usize> {
            md.get_u64(&format!("{arch}.{key}"))
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| Error::Invalid(format!("the model has no `{arch}.{key}`")))
        };
        let f32_key = |key: &str, default: f32| -> f32 {
            match md.get(&format!("{arch}.{key}")) {
                Some(crate::gguf::Value::F32(v)) => *v,
                Some(v) => v.as_u64().map_or(default, |x| x as f32),
                None => default,
            }
        };
        let n_embd = need("embedding_length")?;
        let n_head = need("attention.head_count")?;
        let n_head_kv = md
            .get_u64(&format!("{arch}.attention.head_count_kv"))
            .map_or(n_head, |v| v as usize);
        let head_dim = md
            .get_u64(&format!("{arch}.attention.key_length"))
            .map_or(n_embd / n_head, |v| v as usize);
        if n_head_kv == 0 || n_head % n_head_kv != 0 || head_dim % 2 != 0 {
            return Err(Error::Invalid(format!(
                "{n_head} heads, {n_head_kv} KV heads of {head_dim}: not a model llama.cpp runs"
            )));
        }
        let embd = store
            .find("token_embd.weight")
            .ok_or_else(|| Error::Invalid("the model has no token_embd.weight".into()))?;
        let n_vocab = store.tensors[embd].shape[1] as usize;
        let rope_factors = match store.find("rope_freqs.weight") {
            Some(i) => Some(store.read_f32(i)?),
            None => None,
        };
        Ok(Model {
            store,
            n_layer: need("block_count")?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            eps: f32_key("attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: f32_key("rope.freq_base", 10000.0),
            rope_factors,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// A tensor of the model as f32 with its ggml shape reversed (rows, columns).
    fn weight(&self, name: &str) -> Result<Tensor> {
        let i = self.store.find(name).ok_or_else(|| {
            Error::Invalid(format!(
                "the model has no `{name}`, which the forward pass needs"
            ))
        })?;
        let t = &self.store.tensors[i];
        let values = self.store.read_f32(i)?;
        self.store.release(i);
        let dims: Vec<usize> = t.shape.iter().rev().map(|&d| d as usize).collect();
        Tensor::from_vec(values, dims, &Device::Cpu).map_err(cerr)
    }

    /// The embedding rows of `tokens` (read row by row: the table is never dequantized whole).
    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let i = self
            .store
            .find("token_embd.weight")
            .expect("checked in new");
        let mut values = vec![0f32; tokens.len() * self.n_embd];
        for (row, &tok) in values.chunks_exact_mut(self.n_embd).zip(tokens) {
            if tok as usize >= self.n_vocab {
                return Err(Error::Invalid(format!(
                    "token {tok} is outside the vocabulary of {}",
                    self.n_vocab
                )));
            }
            self.store.read_rows(i, tok as usize, row)?;
        }
        Tensor::from_vec(values, (tokens.len(), self.n_embd), &Device::Cpu).map_err(cerr)
    }

    /// RoPE tables for positions `0..n`: (n, head_dim / 2) cosines and sines.
    fn rope_tables(&self, n: usize) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for i in 0..half {
                // ggml: theta = pos * base^(-2i/d), divided by llama3's factor for dim i.
                let mut theta =
                    pos as f32 * self.rope_base.powf(-2.0 * i as f32 / self.head_dim as f32);
                if let Some(f) = &self.rope_factors {
                    theta /= f.get(i).copied().unwrap_or(1.0);
                }
                cos.push(theta.cos());
                sin.push(theta.sin());
            }
        }
        let dev = &Device::Cpu;
        Ok((
            Tensor::from_vec(cos, (n, half), dev).map_err(cerr)?,
            Tensor::from_vec(sin, (n, half), dev).map_err(cerr)?,
        ))
    }

    /// Every chunk through every layer and the final norm: the hidden state (n_ctx, n_embd)
    /// of each chunk. Layer-outer, so each layer is dequantized once for all chunks.
    pub fn final_hidden(
        &self,
        chunks: &[Vec<u32>],
        progress: &Progress,
        stats: Option<&ActivationStats>,
    ) -> Result<Vec<Tensor>> {
        let mut xs: Vec<Tensor> = chunks
            .iter()
            .map(|c| self.embed(c))
            .collect::<Result<_>>()?;
        let n_ctx = chunks.first().map_or(0, Vec::len);
        let (cos, sin) = self.rope_tables(n_ctx)?;
        let mask = causal_mask(n_ctx)?;
        for l in 0..self.n_layer {
            progress.set_message(&format!("layer {l}"));
            let layer = Layer::load(self, l)?;
            for x in xs.iter_mut() {
                *x = self
                    .block(&layer, x, &cos, &sin, &mask, stats)
                    .map_err(cerr)?;
            }
            progress.inc(1);
        }
        let norm = self.weight("output_norm.weight")?;
        xs.iter()
            .map(|x| candle_nn::ops::rms_norm(x, &norm, self.eps).map_err(cerr))
            .collect()
    }

    /// One transformer block on one chunk `x` (n_ctx, n_embd).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        w: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        stats: Option<&ActivationStats>,
    ) -> candle_core::Result<Tensor> {
        let (t, _) = x.dims2()?;
        let (hd, nh, nkv) = (self.head_dim, self.n_head, self.n_head_kv);
        let h = candle_nn::ops::rms_norm(x, &w.attn_norm, self.eps)?;
        let heads = |m: Tensor, n: usize| -> candle_core::Result<Tensor> {
            m.reshape((1, t, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(w.wq.forward(&h, stats)?, nh)?;
        let k = heads(w.wk.forward(&h, stats)?, nkv)?;
        let v = heads(w.wv.forward(&h, stats)?, nkv)?;
        let q = candle_nn::rotary_emb::rope_i(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, cos, sin)?;
        // llama.cpp's default KV cache holds f16.
        let k = k.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
        let v = v.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
        // Grouped-query attention: query head h reads KV head h / (nh / nkv).
        let rep = nh / nkv;
        let expand = |m: Tensor| -> candle_core::Result<Tensor> {
            if rep == 1 {
                return Ok(m);
            }
            m.unsqueeze(2)?
                .expand((1, nkv, rep, t, hd))?
                .reshape((1, nh, t, hd))
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let attn = probs
            .matmul(&v.contiguous()?)?
            .transpose(1, 2)?
            .reshape((t, nh * hd))?;
        let x = (x + w.wo.forward(&attn, stats)?)?;
        let h = candle_nn::ops::rms_norm(&x, &w.ffn_norm, self.eps)?;
        let gate = w.gate.forward(&h, stats)?.silu()?;
        let up = w.up.forward(&h, stats)?;
        x + w.down.forward(&(gate * up)?, stats)?
    }

    /// Logits (row-major, `n_vocab` per row) of positions `from..to` of a final hidden state.
    pub fn logits(&self, hidden: &Tensor, from: usize, to: usize) -> Result<Vec<f32>> {
        let out = match self.store.find("output.weight") {
            Some(_) => Linear::load(self, "output.weight")?,
            None => Linear::load(self, "token_embd.weight")?, // tied embeddings
        };
        let rows = hidden.narrow(0, from, to - from).map_err(cerr)?;
        out.forward(&rows, None)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(cerr)
    }
}

/// How llama.cpp's CPU backend rounds the activations a weight type is multiplied with (its
/// `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activations {
    F32,
    F16,
    BF16,
    /// Blocks of 32 with an f16 scale (Q8_0; Q8_1 holds the same values).
    Q8_0,
    /// Blocks of 256 with an f32 scale (Q8_K).
    Q8K,
}

impl Activations {
    fn for_weights(ty: GgmlType) -> Activations {
        use GgmlType::*;
        match ty {
            F32 | F64 | I8 | I16 | I32 | I64 => Activations::F32,
            F16 => Activations::F16,
            BF16 => Activations::BF16,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => Activations::Q8_0,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS
            | IQ3_S | IQ1_S | IQ1_M | IQ4_XS | TQ1_0 | TQ2_0 => Activations::Q8K,
        }
    }

    /// `x` (rows of activations) rounded as llama.cpp rounds it before the dot products.
    fn round(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activations::F32 => Ok(x.clone()),
            Activations::F16 => x.to_dtype(DType::F16)?.to_dtype(DType::F32),
            Activations::BF16 => x.to_dtype(DType::BF16)?.to_dtype(DType::F32),
            Activations::Q8_0 | Activations::Q8K => {
                let dims = x.dims().to_vec();
                let mut v = x.flatten_all()?.to_vec1::<f32>()?;
                let block = if self == Activations::Q8_0 { 32 } else { 256 };
                let row = *dims.last().expect("2-D");
                if row % block != 0 {
                    return Ok(x.clone()); // ggml would not run this shape; leave it
                }
                for b in v.chunks_exact_mut(block) {
                    if self == Activations::Q8_0 {
                        round_q8_0(b)
                    } else {
                        round_q8_k(b)
                    }
                }
                Tensor::from_vec(v, dims, &Device::Cpu)
            }
        }
    }
}

/// ggml's `quantize_row_q8_0` then dequantized: d = amax / 127 stored as f16, q = round(x / d).
fn round_q8_0(b: &mut [f32]) {
    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let d16 = half::f16::from_f32(d).to_f32();
    for v in b.iter_mut() {
        *v = d16 * (*v * id).round();
    }
}

/// ggml's `quantize_row_q8_K_ref` then dequantized: the signed value of largest magnitude
/// maps to -127, d = 1 / iscale in f32, q = min(127, nearest_int(iscale * x)).
fn round_q8_k(b: &mut [f32]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &x in b.iter() {
        if x.abs() > amax {
            amax = x.abs();
            max = x;
        }
    }
    if amax == 0.0 {
        b.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let iscale = -127.0 / max;
    let d = 1.0 / iscale;
    for v in b.iter_mut() {
        let q = crate::quant::search::nearest_int(iscale * *v).min(127);
        *v = d * q as f32;
    }
}

/// A weight matrix and how its activations are rounded.
struct Linear {
    name: String,
    w: Tensor,
    act: Activations,
}

impl Linear {
    fn load(m: &Model, name: &str) -> Result<Linear> {
        let ty = m
            .store
            .find(name)
            .map_or(GgmlType::F32, |i| m.store.tensors[i].ty);
        Ok(Linear {
            name: name.to_string(),
            w: m.weight(name)?,
            act: Activations::for_weights(ty),
        })
    }

    /// x (rows, n_in) -> (rows, n_out); the f32 input goes to `stats` first, as llama-imatrix
    /// sees it (before the activation rounding).
    fn forward(&self, x: &Tensor, stats: Option<&ActivationStats>) -> candle_core::Result<Tensor> {
        if let Some(s) = stats {
            s.add(&self.name, x)?;
        }
        self.act.round(x)?.matmul(&self.w.t()?)
    }
}

/// llama-imatrix's statistics: for each weight matrix, the sum over every token of each
/// input column's square, and the number of tokens, accumulated in f32 row by row in the
/// order llama.cpp adds them.
#[derive(Default)]
pub struct ActivationStats {
    sums: std::sync::Mutex<std::collections::BTreeMap<String, (Vec<f32>, u64)>>,
}

impl ActivationStats {
    fn add(&self, name: &str, x: &Tensor) -> candle_core::Result<()> {
        let (rows, cols) = x.dims2()?;
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        let mut sums = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        let (acc, count) = sums
            .entry(name.to_string())
            .or_insert_with(|| (vec![0.0; cols], 0));
        for row in values.chunks_exact(cols) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v * v;
            }
        }
        *count += rows as u64;
        Ok(())
    }

    /// Each weight's (sums of squares, token count), by name.
    pub fn into_sums(self) -> std::collections::BTreeMap<String, (Vec<f32>, u64)> {
        self.sums.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// One layer's weights.
struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn load(m: &Model, l: usize) -> Result<Layer> {
        let name = |n: &str| format!("blk.{l}.{n}.weight");
        let lin = |n: &str| Linear::load(m, &name(n));
        Ok(Layer {
            attn_norm: m.weight(&name("attn_norm"))?,
            wq: lin("attn_q")?,
            wk: lin("attn_k")?,
            wv: lin("attn_v")?,
            wo: lin("attn_output")?,
            ffn_norm: m.weight(&name("ffn_norm"))?,
            gate: lin("ffn_gate")?,
            up: lin("ffn_up")?,
            down: lin("ffn_down")?,
        })
    }
}

/// (n, n): 0 on and below the diagonal, -inf above (a token sees itself and its past).
fn causal_mask(n: usize) -> Result<Tensor> {
    let values: Vec<f32> = (0..n * n)
        .map(|i| {
            if i % n > i / n {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(values, (n, n), &Device::Cpu).map_err(cerr)
}
