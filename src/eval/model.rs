//! The forward pass of the decoder architectures smelt converts, as llama.cpp's graphs compute
//! them: RMS norms, RoPE (interleaved for Llama, NeoX-style for the others), grouped-query
//! causal attention with an optional sliding window and soft-capping, SwiGLU or GELU feed-forward
//! networks, Mixtral's routed experts; each architecture's departures are its row in
//! `quirks.rs`.
//!
//! As llama.cpp with its default F16 KV cache, keys and values are rounded to f16, and so are
//! the queries and the attention probabilities that meet them in its F16 matmuls. Matmuls run on
//! candle in f32 over weights dequantized by smelt, after rounding the activations exactly as
//! llama.cpp's CPU kernels do (to the weight type's `vec_dot_type`, with Q8_1's f16 block sums
//! for Q4_1 / Q5_1); only the order of the sums differs. F32 perplexities agree to about 1e-4;
//! with quantized weights those last bits, grown through the f16 and Q8 roundings of 30
//! layers, move single chunks by tenths of a percent (README, "eval parity").

use super::ops::{self, Activations, Rope};
use super::quirks::{quirks, FfnAct, Quirks, RopeStyle, Shape};
use super::weights::{missing, Weights};
use crate::error::{Error, Result};
use crate::progress::Progress;
use candle_core::{DType, Device, Tensor, D};

/// Tokens whose chunks pass a layer's matmuls together.
const MICRO_BATCH: usize = 2048;

fn cerr(e: candle_core::Error) -> Error {
    Error::Invalid(format!("forward pass: {e}"))
}

/// Which per-pair RoPE divisors a model has.
#[derive(Clone, Debug)]
enum RopeFactors {
    None,
    /// llama3's `rope_freqs.weight`.
    Fixed(Vec<f32>),
    /// Phi-3's long-RoPE factors: `long` when the context exceeds the original one.
    LongShort {
        long: Vec<f32>,
        short: Vec<f32>,
        original_ctx: usize,
    },
}

/// Hyper-parameters and tensor lookup of one model.
pub struct Model<'a> {
    w: &'a dyn Weights,
    n_layer: usize,
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    n_vocab: usize,
    n_expert_used: usize,
    eps: f32,
    n_rot: usize,
    rope_base: f32,
    rope_freq_scale: f32,
    rope_mscale: f32,
    rope_factors: RopeFactors,
    quirks: Quirks,
    /// Plain f32 and differentiable (training): no llama.cpp rounding of activations, keys,
    /// values or probabilities, GELU by its formula, and the norm, softmax and RoPE built
    /// from candle's elementary ops, through which gradients flow.
    plain: bool,
}

impl<'a> Model<'a> {
    pub fn new(w: &'a dyn Weights) -> Result<Model<'a>> {
        let md = w.metadata();
        let arch = md
            .architecture()
            .ok_or_else(|| Error::Invalid("the model has no general.architecture".into()))?
            .to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let need = |k: &str| -> Result<usize> {
            md.get_u64(&key(k))
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| Error::Invalid(format!("the model has no `{}`", key(k))))
        };
        let f32_or = |k: &str, default: f32| -> f32 {
            md.get(&key(k))
                .and_then(crate::gguf::Value::as_f64)
                .map_or(default, |v| v as f32)
        };
        let n_embd = need("embedding_length")?;
        let n_head = need("attention.head_count")?;
        let n_layer = need("block_count")?;
        let n_head_kv = md
            .get_u64(&key("attention.head_count_kv"))
            .map_or(n_head, |v| v as usize);
        let head_dim = md
            .get_u64(&key("attention.key_length"))
            .map_or(n_embd / n_head, |v| v as usize);
        let n_rot = md
            .get_u64(&key("rope.dimension_count"))
            .map_or(head_dim, |v| v as usize);
        if n_head_kv == 0 || n_head % n_head_kv != 0 || n_rot % 2 != 0 || n_rot > head_dim {
            return Err(Error::Invalid(format!(
                "{n_head} heads, {n_head_kv} KV heads of {head_dim} ({n_rot} rotated): not a model llama.cpp runs"
            )));
        }
        let quirks = quirks(
            &arch,
            md,
            &Shape {
                n_layer,
                n_embd,
                n_head,
                head_dim,
            },
        )?;
        let embd = w
            .info("token_embd.weight")
            .ok_or_else(|| missing("token_embd.weight"))?;
        let n_vocab = embd.shape.get(1).copied().unwrap_or(0) as usize;
        let rope_factors = if w.info("rope_freqs.weight").is_some() {
            RopeFactors::Fixed(w.read("rope_freqs.weight")?)
        } else if w.info("rope_factors_long.weight").is_some() {
            RopeFactors::LongShort {
                long: w.read("rope_factors_long.weight")?,
                short: w.read("rope_factors_short.weight")?,
                original_ctx: md
                    .get_u64(&key("rope.scaling.original_context_length"))
                    .or_else(|| md.get_u64(&key("context_length")))
                    .unwrap_or(0) as usize,
            }
        } else {
            RopeFactors::None
        };
        let scaling = md.get_str(&key("rope.scaling.type")).unwrap_or("linear");
        let factor = f32_or("rope.scaling.factor", 0.0);
        let rope_freq_scale = match scaling {
            "linear" | "none" if factor != 0.0 => 1.0 / factor,
            "linear" | "none" => 1.0,
            // llama3's and long-RoPE's scaling live in the factors above.
            _ if matches!(rope_factors, RopeFactors::None) => {
                return Err(Error::Invalid(format!(
                    "RoPE scaling `{scaling}` is not supported by the forward pass yet"
                )))
            }
            _ => 1.0,
        };
        Ok(Model {
            w,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_expert_used: md.get_u64(&key("expert_used_count")).unwrap_or(0) as usize,
            eps: f32_or("attention.layer_norm_rms_epsilon", 1e-5),
            n_rot,
            rope_base: f32_or("rope.freq_base", 10000.0),
            rope_freq_scale,
            rope_mscale: f32_or("rope.scaling.attn_factor", 1.0),
            rope_factors,
            quirks,
            plain: false,
        })
    }

    /// The model's graph in plain f32 with gradients (see the `plain` field), for training.
    pub fn new_plain(w: &'a dyn Weights) -> Result<Model<'a>> {
        let mut m = Model::new(w)?;
        m.plain = true;
        Ok(m)
    }

    /// RMS norm: llama.cpp's (candle's fused kernel), or differentiable when plain.
    fn norm(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        if self.plain {
            candle_nn::ops::rms_norm_slow(x, w, self.eps)
        } else {
            candle_nn::ops::rms_norm(x, w, self.eps)
        }
    }

    /// `x` rounded to f16 as llama.cpp's KV cache and F16 matmuls do; unchanged when plain.
    fn round_f16(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.plain {
            Ok(x.clone())
        } else {
            ops::round_f16(x)
        }
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// A tensor as f32 with its ggml shape reversed (rows, columns).
    fn weight(&self, name: &str) -> Result<Tensor> {
        let info = self.w.info(name).ok_or_else(|| missing(name))?;
        let values = self.w.read(name)?;
        let dims: Vec<usize> = info.shape.iter().rev().map(|&d| d as usize).collect();
        Tensor::from_vec(values, dims, &Device::Cpu).map_err(cerr)
    }

    /// A Q4_1 / Q5_1 weight's block minimums, shaped as the weight with columns / 32, when
    /// its activations are rounded to Q8_1.
    fn block_mins(&self, name: &str, act: Activations) -> Result<Option<Tensor>> {
        if act != Activations::Q8_1 {
            return Ok(None);
        }
        let Some(mins) = self.w.block_mins(name)? else {
            return Ok(None);
        };
        let info = self.w.info(name).ok_or_else(|| missing(name))?;
        let mut dims: Vec<usize> = info.shape.iter().rev().map(|&d| d as usize).collect();
        *dims.last_mut().expect("a matrix") /= 32;
        Tensor::from_vec(mins, dims, &Device::Cpu)
            .map(Some)
            .map_err(cerr)
    }

    fn optional(&self, name: &str) -> Result<Option<Tensor>> {
        match self.w.info(name) {
            Some(_) => self.weight(name).map(Some),
            None => Ok(None),
        }
    }

    /// The embedding rows of `tokens` (read row by row: the table is never dequantized whole).
    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let mut values = vec![0f32; tokens.len() * self.n_embd];
        for (row, &tok) in values.chunks_exact_mut(self.n_embd).zip(tokens) {
            if tok as usize >= self.n_vocab {
                return Err(Error::Invalid(format!(
                    "token {tok} is outside the vocabulary of {}",
                    self.n_vocab
                )));
            }
            self.w.read_row("token_embd.weight", tok as usize, row)?;
        }
        let x =
            Tensor::from_vec(values, (tokens.len(), self.n_embd), &Device::Cpu).map_err(cerr)?;
        if self.quirks.embed_scale {
            return (x * (self.n_embd as f32).sqrt() as f64).map_err(cerr);
        }
        Ok(x)
    }

    /// The RoPE of the global layers and of the sliding-window ones, for chunks of `n_ctx`.
    fn ropes(&self, n_ctx: usize) -> (Rope, Rope) {
        let factors = match &self.rope_factors {
            RopeFactors::None => None,
            RopeFactors::Fixed(f) => Some(f.clone()),
            RopeFactors::LongShort {
                long,
                short,
                original_ctx,
            } => Some(if n_ctx > *original_ctx {
                long.clone()
            } else {
                short.clone()
            }),
        };
        let global = Rope {
            n_rot: self.n_rot,
            base: self.rope_base,
            freq_scale: self.rope_freq_scale,
            factors,
            mscale: self.rope_mscale,
        };
        let local = match self.quirks.swa_rope {
            Some((base, freq_scale)) => Rope {
                base,
                freq_scale,
                ..global.clone()
            },
            None => global.clone(),
        };
        (global, local)
    }

    /// Every chunk through every layer and the final norm: the hidden state (n_ctx, n_embd)
    /// of each chunk. Layer-outer, so each layer is dequantized once for all chunks.
    pub fn final_hidden(
        &self,
        chunks: &[Vec<u32>],
        progress: &Progress,
        stats: Option<&ActivationStats>,
    ) -> Result<Vec<Tensor>> {
        let all = self.n_layer;
        let xs = self.residual_stream(chunks, all, progress, stats, &mut |_, _| Ok(()))?;
        let norm = self.weight("output_norm.weight")?;
        xs.iter()
            .map(|x| self.norm(x, &norm).map_err(cerr))
            .collect()
    }

    /// Every chunk through the first `depth` layers (at most all), before the final norm.
    /// `observe(d, states)` sees the residual stream of every chunk entering layer `d` (0: the
    /// embeddings) and, last, leaving layer `depth - 1` (`d` = `depth`); it only reads, so the
    /// numbers are those of [`Model::final_hidden`].
    pub fn residual_stream(
        &self,
        chunks: &[Vec<u32>],
        depth: usize,
        progress: &Progress,
        stats: Option<&ActivationStats>,
        observe: &mut dyn FnMut(usize, &[Tensor]) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let mut xs: Vec<Tensor> = chunks
            .iter()
            .map(|c| self.embed(c))
            .collect::<Result<_>>()?;
        let n_ctx = chunks.first().map_or(0, Vec::len);
        let ctxs = self.contexts(n_ctx)?;
        let depth = depth.min(self.n_layer);
        for l in 0..depth {
            observe(l, &xs)?;
            progress.set_message(&format!("layer {l}"));
            let layer = Layer::load(self, l)?;
            let ctx = ctxs.for_layer(self, l);
            // Chunks go through the layer's matmuls together, up to MICRO_BATCH tokens (as
            // llama-perplexity packs n_batch / n_ctx sequences in a batch): bigger products
            // run faster, and attention still sees one chunk at a time.
            let per = (MICRO_BATCH / n_ctx.max(1)).max(1);
            for batch in xs.chunks_mut(per) {
                let x = if batch.len() == 1 {
                    batch[0].clone()
                } else {
                    Tensor::cat(batch, 0).map_err(cerr)?
                };
                let y = self.block(&layer, &x, ctx, stats).map_err(cerr)?;
                for (k, xk) in batch.iter_mut().enumerate() {
                    *xk = y.narrow(0, k * n_ctx, n_ctx).map_err(cerr)?;
                }
                progress.inc((batch.len() * n_ctx) as u64);
            }
        }
        observe(depth, &xs)?;
        Ok(xs)
    }

    /// Layer `l`'s weights, for [`Model::forward_block`] (training swaps some for variables).
    pub(crate) fn layer(&self, l: usize) -> Result<Layer> {
        if l >= self.n_layer {
            return Err(Error::Invalid(format!(
                "layer {l}: the model has {} layers",
                self.n_layer
            )));
        }
        Layer::load(self, l)
    }

    /// Layer `l` (with weights `layer`) on `x`: rows of whole sequences of the contexts'
    /// length, each attending only to itself.
    pub(crate) fn forward_block(
        &self,
        layer: &Layer,
        l: usize,
        x: &Tensor,
        ctxs: &Contexts,
    ) -> candle_core::Result<Tensor> {
        self.block(layer, x, ctxs.for_layer(self, l), None)
    }

    /// The attention contexts (RoPE tables, masks) of chunks of `n_ctx` tokens.
    pub(crate) fn contexts(&self, n_ctx: usize) -> Result<Contexts> {
        let (global, local) = self.ropes(n_ctx);
        let global = Context::new(&global, n_ctx, None)?;
        let local = match &self.quirks.swa {
            Some((window, _)) => Some(Context::new(&local, n_ctx, Some(*window))?),
            None => None,
        };
        Ok(Contexts { global, local })
    }

    /// One transformer block on one chunk `x` (n_ctx, n_embd).
    fn block(
        &self,
        w: &Layer,
        x: &Tensor,
        ctx: &Context,
        stats: Option<&ActivationStats>,
    ) -> candle_core::Result<Tensor> {
        let h = self.norm(x, &w.attn_norm)?;
        let mut o = self.attention(w, &h, ctx, stats)?;
        if let Some(norm) = &w.attn_post_norm {
            o = self.norm(&o, norm)?;
        }
        let x = (x + o)?;
        let h = self.norm(&x, &w.ffn_norm)?;
        let mut f = match &w.ffn {
            Ffn::Dense { gate, up, down } => {
                let a = match gate {
                    Some(gate) => {
                        let g = self.activate(&gate.forward(&h, stats)?)?;
                        (g * up.forward(&h, stats)?)?
                    }
                    // A fused gate and up (Phi-3): the first half is the gate.
                    None => {
                        let gu = up.forward(&h, stats)?;
                        let n_ff = gu.dim(D::Minus1)? / 2;
                        let g = self.activate(&gu.narrow(D::Minus1, 0, n_ff)?)?;
                        (g * gu.narrow(D::Minus1, n_ff, n_ff)?)?
                    }
                };
                down.forward(&a, stats)?
            }
            Ffn::Experts(moe) => self.experts(moe, &h, stats)?,
        };
        if let Some(norm) = &w.ffn_post_norm {
            f = self.norm(&f, norm)?;
        }
        x + f
    }

    fn activate(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.quirks.ffn_act {
            FfnAct::Silu => x.silu(),
            FfnAct::GeluTanh if self.plain => x.gelu(),
            FfnAct::GeluTanh => ops::gelu(x),
        }
    }

    /// Self-attention of one chunk's normed hidden state `h` (t, n_embd) -> (t, n_embd).
    fn attention(
        &self,
        w: &Layer,
        h: &Tensor,
        ctx: &Context,
        stats: Option<&ActivationStats>,
    ) -> candle_core::Result<Tensor> {
        let (hd, nh, nkv) = (self.head_dim, self.n_head, self.n_head_kv);
        let (q, k, v) = match &w.qkv {
            Qkv::Separate(q, k, v) => (
                q.forward(h, stats)?,
                k.forward(h, stats)?,
                v.forward(h, stats)?,
            ),
            Qkv::Fused(qkv) => {
                let all = qkv.forward(h, stats)?;
                (
                    all.narrow(1, 0, nh * hd)?,
                    all.narrow(1, nh * hd, nkv * hd)?,
                    all.narrow(1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        // The projections ran on every chunk of the batch at once; attention is per chunk.
        let t = ctx.mask.dim(0)?;
        let n_seq = h.dim(0)? / t;
        let mut out = Vec::with_capacity(n_seq);
        for s in 0..n_seq {
            let rows = |m: &Tensor| m.narrow(0, s * t, t);
            out.push(self.attend(w, rows(&q)?, rows(&k)?, rows(&v)?, ctx)?);
        }
        let attn = if n_seq == 1 {
            out.pop().expect("one chunk")
        } else {
            Tensor::cat(&out, 0)?
        };
        w.wo.forward(&attn, stats)
    }

    /// Causal attention of one chunk's projections q (t, nh * hd), k and v (t, nkv * hd).
    fn attend(
        &self,
        w: &Layer,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        ctx: &Context,
    ) -> candle_core::Result<Tensor> {
        let (t, _) = q.dims2()?;
        let (hd, nh, nkv) = (self.head_dim, self.n_head, self.n_head_kv);
        // (t, heads * hd) -> (t, heads, hd), per-head norms, then (1, heads, t, hd) for RoPE.
        let split = |m: Tensor, n: usize, norm: &Option<Tensor>| -> candle_core::Result<Tensor> {
            let mut m = m.reshape((t, n, hd))?;
            if let Some(norm) = norm {
                m = self.norm(&m.contiguous()?, norm)?;
            }
            m.transpose(0, 1)?.contiguous()?.unsqueeze(0)
        };
        let q = self.rope(&split(q, nh, &w.q_norm)?, ctx)?;
        let k = self.rope(&split(k, nkv, &w.k_norm)?, ctx)?;
        let v = v.reshape((t, nkv, hd))?.transpose(0, 1)?.contiguous()?;
        let q = match self.quirks.q_prescale {
            Some(s) => (q * s as f64)?,
            None => q,
        };
        // llama.cpp's F16 KV cache, and the f16 queries its F16 matmul converts.
        let q = self.round_f16(&q.squeeze(0)?)?;
        let k = self.round_f16(&k.squeeze(0)?)?;
        let v = self.round_f16(&v)?;
        // Grouped-query attention without copying K/V: query head h reads KV head h / rep,
        // and heads of one group are adjacent, so (nh, t, hd) is (nkv, rep * t, hd).
        let rep = nh / nkv;
        let mut scores = q
            .reshape((nkv, rep * t, hd))?
            .matmul(&k.t()?)?
            .reshape((nh, t, t))?;
        if let Some(cap) = self.quirks.attn_softcap {
            scores = ((scores / cap as f64)?.tanh()? * cap as f64)?;
        }
        if self.quirks.q_prescale.is_none() {
            scores = (scores * (1.0 / (hd as f64).sqrt()))?;
        }
        let scores = scores.broadcast_add(&ctx.mask)?;
        let probs = if self.plain {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            ops::round_f16(&candle_nn::ops::softmax_last_dim(&scores)?)?
        };
        let attn = probs
            .reshape((nkv, rep * t, t))?
            .matmul(&v)?
            .reshape((nh, t, hd))?
            .transpose(0, 1)?
            .reshape((t, nh * hd))?;
        Ok(attn)
    }

    /// RoPE of the first `n_rot` dimensions of each head of `x` (1, heads, t, hd).
    fn rope(&self, x: &Tensor, ctx: &Context) -> candle_core::Result<Tensor> {
        let hd = self.head_dim;
        use candle_nn::rotary_emb as re;
        let rotate = |x: &Tensor| match (self.quirks.rope_style, self.plain) {
            (RopeStyle::Interleaved, false) => re::rope_i(x, &ctx.cos, &ctx.sin),
            (RopeStyle::Neox, false) => re::rope(x, &ctx.cos, &ctx.sin),
            (RopeStyle::Interleaved, true) => re::rope_i_slow(x, &ctx.cos, &ctx.sin),
            (RopeStyle::Neox, true) => re::rope_slow(x, &ctx.cos, &ctx.sin),
        };
        if self.n_rot == hd {
            return rotate(x);
        }
        let head = rotate(&x.narrow(3, 0, self.n_rot)?.contiguous()?)?;
        Tensor::cat(&[head, x.narrow(3, self.n_rot, hd - self.n_rot)?], 3)
    }

    /// Mixtral's routed feed-forward network: softmax over the router's logits, the top
    /// `expert_used_count` experts per token, their weights renormalized to sum to 1.
    fn experts(
        &self,
        moe: &Moe,
        h: &Tensor,
        stats: Option<&ActivationStats>,
    ) -> candle_core::Result<Tensor> {
        let (t, n_embd) = h.dims2()?;
        let probs = candle_nn::ops::softmax_last_dim(&moe.router.forward(h, stats)?)?;
        let probs = probs.to_vec2::<f32>()?;
        let n_expert = moe.gate.w.dims3()?.0;
        let k = self.n_expert_used.clamp(1, n_expert);
        // For each expert, the tokens routed to it and their weights.
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); n_expert];
        for (tok, p) in probs.iter().enumerate() {
            let mut order: Vec<usize> = (0..n_expert).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let top = &order[..k];
            let sum: f32 = top.iter().map(|&e| p[e]).sum::<f32>().max(6.103_515_6e-5);
            for &e in top {
                routed[e].0.push(tok as u32);
                routed[e].1.push(p[e] / sum);
            }
        }
        let mut out = Tensor::zeros((t, n_embd), DType::F32, &Device::Cpu)?;
        for (e, (tokens, weights)) in routed.iter().enumerate() {
            if tokens.is_empty() {
                continue;
            }
            let idx = Tensor::new(tokens.as_slice(), &Device::Cpu)?;
            let x = h.index_select(&idx, 0)?;
            let gate = moe.gate.forward_expert(e, &x)?;
            let up = moe.up.forward_expert(e, &x)?;
            let a = (self.activate(&gate)? * up)?;
            if let Some(s) = stats {
                s.add_expert(&moe.gate.name, n_expert, e, &x)?;
                s.add_expert(&moe.up.name, n_expert, e, &x)?;
                s.add_expert(&moe.down.name, n_expert, e, &a)?;
            }
            let y = moe.down.forward_expert(e, &a)?;
            let wts = Tensor::from_vec(weights.clone(), (tokens.len(), 1), &Device::Cpu)?;
            out = out.index_add(&idx, &y.broadcast_mul(&wts)?, 0)?;
        }
        Ok(out)
    }

    /// The output matrix (the embeddings when tied), for [`Model::logits`].
    pub fn output_head(&self) -> Result<OutputHead> {
        let name = if self.w.info("output.weight").is_some() {
            "output.weight"
        } else {
            "token_embd.weight" // tied embeddings
        };
        Ok(OutputHead(Linear::load(self, name)?))
    }

    /// The whole head as one differentiable step: the residual stream leaving the last layer
    /// through the final norm (`output_norm`, from [`Model::output_norm`]) and the output
    /// matrix, to logits (rows, `n_vocab`). Training's end-to-end loss runs it with gradients.
    pub(crate) fn head_logits(
        &self,
        head: &OutputHead,
        output_norm: &Tensor,
        x: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let h = self.norm(x, output_norm)?;
        let mut logits = head.0.forward(&h, None)?;
        if let Some(cap) = self.quirks.final_softcap {
            logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
        }
        Ok(logits)
    }

    /// The final norm's weight, for [`Model::head_logits`].
    pub(crate) fn output_norm(&self) -> Result<Tensor> {
        self.weight("output_norm.weight")
    }

    /// Logits (row-major, `n_vocab` per row) of positions `from..to` of a final hidden state.
    pub fn logits(
        &self,
        head: &OutputHead,
        hidden: &Tensor,
        from: usize,
        to: usize,
    ) -> Result<Vec<f32>> {
        let out = &head.0;
        let rows = hidden.narrow(0, from, to - from).map_err(cerr)?;
        let mut logits = out.forward(&rows, None).map_err(cerr)?;
        if let Some(cap) = self.quirks.final_softcap {
            logits = ((logits / cap as f64).and_then(|l| l.tanh()).map_err(cerr)? * cap as f64)
                .map_err(cerr)?;
        }
        logits
            .flatten_all()
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(cerr)
    }
}

/// A model's output matrix, loaded once for many chunks.
pub struct OutputHead(Linear);

/// The contexts of the global layers and, with sliding-window attention, of the others.
pub(crate) struct Contexts {
    global: Context,
    local: Option<Context>,
}

impl Contexts {
    fn for_layer(&self, m: &Model, l: usize) -> &Context {
        let sliding = m.quirks.swa.as_ref().is_some_and(|(_, on)| on[l]);
        match (&self.local, sliding) {
            (Some(local), true) => local,
            _ => &self.global,
        }
    }
}

/// What attention needs per chunk length: RoPE tables and the mask.
struct Context {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl Context {
    fn new(rope: &Rope, n_ctx: usize, window: Option<usize>) -> Result<Context> {
        let (cos, sin) = rope.tables(n_ctx).map_err(cerr)?;
        let mask = ops::causal_mask(n_ctx, window).map_err(cerr)?;
        Ok(Context { cos, sin, mask })
    }
}

/// A weight matrix, its optional bias, and how its activations are rounded.
struct Linear {
    name: String,
    w: Tensor,
    bias: Option<Tensor>,
    act: Activations,
    /// Q4_1 / Q5_1 weights: each block's minimum (rows, columns / 32), for the Q8_1 sums.
    mins: Option<Tensor>,
}

impl Linear {
    fn load(m: &Model, name: &str) -> Result<Linear> {
        let info = m.w.info(name).ok_or_else(|| missing(name))?;
        let bias_name = name.replace(".weight", ".bias");
        let act = if m.plain {
            Activations::F32
        } else {
            Activations::for_weights(info.ty)
        };
        Ok(Linear {
            name: name.to_string(),
            w: m.weight(name)?,
            bias: m.optional(&bias_name)?,
            act,
            mins: m.block_mins(name, act)?,
        })
    }

    fn optional(m: &Model, name: &str) -> Result<Option<Linear>> {
        match m.w.info(name) {
            Some(_) => Linear::load(m, name).map(Some),
            None => Ok(None),
        }
    }

    /// x (rows, n_in) -> (rows, n_out); the f32 input goes to `stats` first, as llama-imatrix
    /// sees it (before the activation rounding).
    fn forward(&self, x: &Tensor, stats: Option<&ActivationStats>) -> candle_core::Result<Tensor> {
        if let Some(s) = stats {
            s.add(&self.name, x)?;
        }
        let y = rounded_matmul(self.act, x, &self.w, self.mins.as_ref())?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Expert `e` of a stacked (n_expert, rows, columns) matrix: x (rows, n_in) -> (rows,
    /// n_out). Without a bias: an `_exps.bias`, as before, is not applied.
    fn forward_expert(&self, e: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let mins = self.mins.as_ref().map(|m| m.get(e)).transpose()?;
        rounded_matmul(self.act, x, &self.w.get(e)?, mins.as_ref())
    }
}

/// `x · wᵀ` as llama.cpp's CPU kernels compute it: `x` rounded to the weights'
/// `vec_dot_type`, and for weights with block minimums (`mins`, rows × blocks) the Q8_1
/// sums' rounding added (see [`ops::round_q8_1`]).
fn rounded_matmul(
    act: Activations,
    x: &Tensor,
    w: &Tensor,
    mins: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    if let (Some(m), Activations::Q8_1) = (mins, act) {
        let (rounded, sum_errors) = ops::round_q8_1(x)?;
        let y = rounded.matmul(&w.t()?)?;
        return match sum_errors {
            Some(e) => y + e.matmul(&m.t()?)?,
            None => Ok(y),
        };
    }
    act.round(x)?.matmul(&w.t()?)
}

/// llama-imatrix's statistics: for each weight matrix (and each expert of a stacked one), the
/// sum over every token of each input column's square, and the number of tokens.
#[derive(Default)]
pub struct ActivationStats {
    sums: std::sync::Mutex<std::collections::BTreeMap<String, ImatrixEntry>>,
}

/// One weight's sums: `n_mat` (1, or the expert count) blocks of columns, a count per block.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImatrixEntry {
    pub sums: Vec<f32>,
    pub counts: Vec<u64>,
}

impl ActivationStats {
    fn add(&self, name: &str, x: &Tensor) -> candle_core::Result<()> {
        self.add_expert(name, 1, 0, x)
    }

    /// The rows of `x` routed to expert `e` of `n_mat`.
    fn add_expert(
        &self,
        name: &str,
        n_mat: usize,
        e: usize,
        x: &Tensor,
    ) -> candle_core::Result<()> {
        let (rows, cols) = x.dims2()?;
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        let mut sums = self.sums.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sums
            .entry(name.to_string())
            .or_insert_with(|| ImatrixEntry {
                sums: vec![0.0; cols * n_mat],
                counts: vec![0; n_mat],
            });
        let acc = &mut entry.sums[e * cols..(e + 1) * cols];
        for row in values.chunks_exact(cols) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v * v;
            }
        }
        entry.counts[e] += rows as u64;
        Ok(())
    }

    /// Each weight's sums and counts, by name.
    pub fn into_entries(self) -> std::collections::BTreeMap<String, ImatrixEntry> {
        self.sums.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

enum Qkv {
    Separate(Linear, Linear, Linear),
    Fused(Linear),
}

enum Ffn {
    Dense {
        /// `None` when `up` holds gate and up fused (Phi-3).
        gate: Option<Linear>,
        up: Linear,
        down: Linear,
    },
    Experts(Moe),
}

/// A layer's routed experts: the router and the stacked (n_expert, rows, cols) matrices.
struct Moe {
    router: Linear,
    /// (n_expert, rows, columns) each, expert `e`'s matrix at index `e`.
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// One layer's weights.
pub(crate) struct Layer {
    attn_norm: Tensor,
    qkv: Qkv,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    wo: Linear,
    attn_post_norm: Option<Tensor>,
    ffn_norm: Tensor,
    ffn: Ffn,
    ffn_post_norm: Option<Tensor>,
}

impl Layer {
    /// The matrix (rows, columns) of a dense projection by its GGUF suffix (`ffn_up`,
    /// `attn_output`, ...), to read or replace; `None` where the layer has no such matrix
    /// (fused or routed).
    pub(crate) fn matrix_mut(&mut self, suffix: &str) -> Option<&mut Tensor> {
        let lin = match (suffix, &mut self.qkv, &mut self.ffn) {
            ("attn_q", Qkv::Separate(q, _, _), _) => q,
            ("attn_k", Qkv::Separate(_, k, _), _) => k,
            ("attn_v", Qkv::Separate(_, _, v), _) => v,
            ("attn_output", _, _) => &mut self.wo,
            ("ffn_gate", _, Ffn::Dense { gate: Some(g), .. }) => g,
            ("ffn_up", _, Ffn::Dense { up, .. }) => up,
            ("ffn_down", _, Ffn::Dense { down, .. }) => down,
            _ => return None,
        };
        Some(&mut lin.w)
    }

    fn load(m: &Model, l: usize) -> Result<Layer> {
        let name = |n: &str| format!("blk.{l}.{n}.weight");
        let lin = |n: &str| Linear::load(m, &name(n));
        let qkv = match Linear::optional(m, &name("attn_qkv"))? {
            Some(fused) => Qkv::Fused(fused),
            None => Qkv::Separate(lin("attn_q")?, lin("attn_k")?, lin("attn_v")?),
        };
        let ffn = if m.w.info(&name("ffn_gate_inp")).is_some() {
            Ffn::Experts(Moe {
                router: lin("ffn_gate_inp")?,
                gate: lin("ffn_gate_exps")?,
                up: lin("ffn_up_exps")?,
                down: lin("ffn_down_exps")?,
            })
        } else {
            Ffn::Dense {
                gate: Linear::optional(m, &name("ffn_gate"))?,
                up: lin("ffn_up")?,
                down: lin("ffn_down")?,
            }
        };
        Ok(Layer {
            attn_norm: m.weight(&name("attn_norm"))?,
            qkv,
            q_norm: m.optional(&name("attn_q_norm"))?,
            k_norm: m.optional(&name("attn_k_norm"))?,
            wo: lin("attn_output")?,
            attn_post_norm: m.optional(&name("post_attention_norm"))?,
            ffn_norm: m.weight(&name("ffn_norm"))?,
            ffn,
            ffn_post_norm: m.optional(&name("post_ffw_norm"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::quant::golden::{b64_decode, f32s};

    /// `rounded_matmul` on the weights, activations and products of
    /// `fixtures/golden/matmul.json` (ggml_mul_mat on llama.cpp's CPU backend, made by
    /// `scripts/gen-golden-matmul.py`): equal up to the order of f32 sums. Returns the worst
    /// error of each case relative to `Σ|w·x|`, with and without the Q8_1 sums' correction.
    fn errors_against_ggml() -> Vec<(String, f64, f64)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden/matmul.json");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut out = Vec::new();
        for case in doc["cases"].as_array().unwrap() {
            let ty: GgmlType = case["type"].as_str().unwrap().parse().unwrap();
            let dim = |k: &str| case[k].as_u64().unwrap() as usize;
            let (rows, cols, n) = (dim("rows"), dim("cols"), dim("n"));
            let bytes = b64_decode(case["weights"].as_str().unwrap());
            let mut w = vec![0f32; rows * cols];
            crate::quant::dequantize_row(ty, &bytes, &mut w).unwrap();
            let x = f32s(case["x"].as_str().unwrap());
            let want = f32s(case["y"].as_str().unwrap());
            let mins = ops::block_mins(ty, &bytes)
                .map(|m| Tensor::from_vec(m, (rows, cols / 32), &Device::Cpu).unwrap());
            let wt = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
            let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).unwrap();
            let act = Activations::for_weights(ty);
            let worst = |mins: Option<&Tensor>| -> f64 {
                let got = rounded_matmul(act, &xt, &wt, mins).unwrap();
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let mut worst = 0f64;
                for i in 0..n {
                    for r in 0..rows {
                        let mag: f64 = (0..cols)
                            .map(|c| (w[r * cols + c] as f64 * x[i * cols + c] as f64).abs())
                            .sum();
                        let err = (got[i * rows + r] as f64 - want[i * rows + r] as f64).abs();
                        worst = worst.max(err / mag);
                    }
                }
                worst
            };
            out.push((ty.to_string(), worst(mins.as_ref()), worst(None)));
        }
        out
    }

    #[test]
    fn matmul_matches_ggml() {
        let errors = errors_against_ggml();
        assert_eq!(errors.len(), 5, "{errors:?}");
        for (ty, with_sums, without) in &errors {
            // f32 sums in another order: a few ulps of the magnitude.
            assert!(*with_sums < 1e-6, "{ty}: {with_sums:e} ({errors:?})");
            // Q4_1 and Q5_1 need the f16 block sums: without them the products are off by
            // the minimums times the sums' rounding.
            if ty == "Q4_1" || ty == "Q5_1" {
                assert!(*without > 1e-5, "{ty}: {without:e} without the Q8_1 sums");
            }
        }
    }
}
