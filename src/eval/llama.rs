//! The forward pass of llama.cpp's `llama` architecture (Llama 2/3, Mistral, SmolLM2, the
//! fixtures): RMS norm, rotary positions on adjacent pairs (GGUF's q/k rows are permuted for
//! exactly that), grouped-query causal attention, SwiGLU, optional llama3 `rope_freqs`.
//!
//! As llama.cpp with its default F16 KV cache, keys and values are rounded to f16 before
//! attention. Matmuls run on candle in f32 over weights dequantized by smelt; llama.cpp's CPU
//! kernels instead round activations to the weight's block type (Q8_0/Q8_K, F16) before each
//! dot product, so perplexities agree to about 0.1%, not bit for bit (see the README).

use crate::error::{Error, Result};
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
            Error::Invalid(format!("the model has no `{name}`, which the forward pass needs"))
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
                let mut theta = pos as f32
                    * self
                        .rope_base
                        .powf(-2.0 * i as f32 / self.head_dim as f32);
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
    pub fn final_hidden(&self, chunks: &[Vec<u32>], progress: &Progress) -> Result<Vec<Tensor>> {
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
                *x = self.block(&layer, x, &cos, &sin, &mask).map_err(cerr)?;
            }
            progress.inc(1);
        }
        let norm = self.weight("output_norm.weight")?;
        xs.iter()
            .map(|x| candle_nn::ops::rms_norm(x, &norm, self.eps).map_err(cerr))
            .collect()
    }

    /// One transformer block on one chunk `x` (n_ctx, n_embd).
    fn block(
        &self,
        w: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (t, _) = x.dims2()?;
        let (hd, nh, nkv) = (self.head_dim, self.n_head, self.n_head_kv);
        let h = candle_nn::ops::rms_norm(x, &w.attn_norm, self.eps)?;
        let heads = |m: Tensor, n: usize| -> candle_core::Result<Tensor> {
            m.reshape((1, t, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(h.matmul(&w.wq.t()?)?, nh)?;
        let k = heads(h.matmul(&w.wk.t()?)?, nkv)?;
        let v = heads(h.matmul(&w.wv.t()?)?, nkv)?;
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
        let x = (x + attn.matmul(&w.wo.t()?)?)?;
        let h = candle_nn::ops::rms_norm(&x, &w.ffn_norm, self.eps)?;
        let gate = h.matmul(&w.gate.t()?)?.silu()?;
        let up = h.matmul(&w.up.t()?)?;
        x + (gate * up)?.matmul(&w.down.t()?)?
    }

    /// Logits (row-major, `n_vocab` per row) of positions `from..to` of a final hidden state.
    pub fn logits(&self, hidden: &Tensor, from: usize, to: usize) -> Result<Vec<f32>> {
        let out = match self.store.find("output.weight") {
            Some(_) => self.weight("output.weight")?,
            None => self.weight("token_embd.weight")?, // tied embeddings
        };
        let rows = hidden.narrow(0, from, to - from).map_err(cerr)?;
        rows.matmul(&out.t().map_err(cerr)?)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(cerr)
    }
}

/// One layer's weights as f32 tensors.
struct Layer {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

impl Layer {
    fn load(m: &Model, l: usize) -> Result<Layer> {
        let w = |name: &str| m.weight(&format!("blk.{l}.{name}.weight"));
        Ok(Layer {
            attn_norm: w("attn_norm")?,
            wq: w("attn_q")?,
            wk: w("attn_k")?,
            wv: w("attn_v")?,
            wo: w("attn_output")?,
            ffn_norm: w("ffn_norm")?,
            gate: w("ffn_gate")?,
            up: w("ffn_up")?,
            down: w("ffn_down")?,
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

