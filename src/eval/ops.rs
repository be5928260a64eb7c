//! The few places where llama.cpp's CPU backend rounds or tabulates, reproduced so that smelt's
//! float graph computes what llama.cpp computes: activations rounded to a weight type's
//! `vec_dot_type` before a matmul, GELU read from an f16 table, RoPE angles built by repeated
//! multiplication, and the causal (optionally sliding-window) mask.

use candle_core::{DType, Device, Tensor};

use crate::gguf::GgmlType;

/// How llama.cpp's CPU backend rounds the activations a weight type is multiplied with (its
/// `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    F32,
    F16,
    BF16,
    /// Blocks of 32 with an f16 scale (Q8_0).
    Q8_0,
    /// Q8_1: Q8_0's values plus each block's sum, stored as f16, which the dot products of
    /// weights with a per-block minimum (Q4_1, Q5_1) multiply the minimum by: see
    /// [`round_q8_1`].
    Q8_1,
    /// Blocks of 256 with an f32 scale (Q8_K).
    Q8K,
}

impl Activations {
    pub fn for_weights(ty: GgmlType) -> Activations {
        use GgmlType::*;
        match ty {
            F32 | F64 | I8 | I16 | I32 | I64 => Activations::F32,
            F16 => Activations::F16,
            BF16 => Activations::BF16,
            Q4_1 | Q5_1 => Activations::Q8_1,
            Q4_0 | Q5_0 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => Activations::Q8_0,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS
            | IQ3_S | IQ1_S | IQ1_M | IQ4_XS | TQ1_0 | TQ2_0 => Activations::Q8K,
        }
    }

    /// `x` (rows of activations) rounded as llama.cpp rounds it before the dot products.
    pub fn round(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activations::F32 => Ok(x.clone()),
            Activations::F16 => round_f16(x),
            Activations::BF16 => x.to_dtype(DType::BF16)?.to_dtype(DType::F32),
            Activations::Q8_0 | Activations::Q8_1 | Activations::Q8K => {
                let dims = x.dims().to_vec();
                let block = if self == Activations::Q8K { 256 } else { 32 };
                let row = *dims.last().expect("at least 1-D");
                if row % block != 0 {
                    return Ok(x.clone()); // ggml would not run this shape; leave it
                }
                use rayon::prelude::*;
                let mut v = x.flatten_all()?.to_vec1::<f32>()?;
                // Blocks are independent: rounded in parallel, the same values on any thread count.
                v.par_chunks_mut(block * 64).for_each(|run| {
                    for b in run.chunks_exact_mut(block) {
                        if self == Activations::Q8K {
                            round_q8_k(b)
                        } else {
                            round_q8_0(b);
                        }
                    }
                });
                Tensor::from_vec(v, dims, x.device())
            }
        }
    }
}

/// `x` through f16 and back (llama.cpp's F16 KV cache, and the f16 side of its F16 matmuls).
pub fn round_f16(x: &Tensor) -> candle_core::Result<Tensor> {
    x.to_dtype(DType::F16)?.to_dtype(DType::F32)
}

/// ggml's x86 (AVX) `quantize_row_q8_0` then dequantized: d = amax / 127 stored as f16,
/// q = x * (127 / amax) rounded half to even. (Its scalar reference multiplies by 1 / d and
/// rounds half away from zero; the AVX kernel is what llama.cpp runs on x86, and the one
/// tie or last-bit difference per few thousand values moves a perplexity measurably.)
/// Returns the block's f32 scale `d` and the sum of its codes (what Q8_1 also stores).
fn round_q8_0(b: &mut [f32]) -> (f32, i32) {
    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let d16 = half::f16::from_f32(d).to_f32();
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for v in b.iter_mut() {
        // ggml's magic-number rounding: ties to even like `_mm256_round_ps`, and inlined,
        // where `round_ties_even` is a libm call (`rintf`) on baseline x86-64.
        let q = crate::quant::search::nearest_int(*v * id);
        sum += q;
        *v = d16 * q as f32;
    }
    (d, sum)
}

/// `x` rounded to Q8_1 (Q8_0's values), and what its stored block sums add: for weights with
/// a per-block minimum `m` (Q4_1, Q5_1), llama.cpp's dot product adds `m · s` per block of 32,
/// `s` being the stored sum `f16(d · Σq)` (`d` the unrounded f32 scale), where a matmul over
/// the rounded activations adds `m · f16(d) · Σq`. The second tensor is `s - f16(d) · Σq` for
/// each block of each row (shape `x.dims()` with the last dimension divided by 32):
/// multiplied by the weights' minimums and added to the matmul, it makes the product
/// llama.cpp's. `None` for rows ggml would not quantize (not whole blocks), left unrounded.
pub fn round_q8_1(x: &Tensor) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let dims = x.dims().to_vec();
    let row = *dims.last().expect("at least 1-D");
    if row % 32 != 0 {
        return Ok((x.clone(), None));
    }
    use rayon::prelude::*;
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    let mut errors = vec![0f32; v.len() / 32];
    // Blocks are independent: rounded in parallel, the same values on any thread count.
    v.par_chunks_mut(32 * 64)
        .zip(errors.par_chunks_mut(64))
        .for_each(|(run, errs)| {
            for (b, err) in run.chunks_exact_mut(32).zip(errs) {
                let (d, sum) = round_q8_0(b);
                let stored = half::f16::from_f32(d * sum as f32).to_f32();
                // Exact: an f16 scale times at most 32 · 127 fits f32's mantissa.
                *err = stored - half::f16::from_f32(d).to_f32() * sum as f32;
            }
        });
    let mut error_dims = dims.clone();
    *error_dims.last_mut().expect("at least 1-D") = row / 32;
    Ok((
        Tensor::from_vec(v, dims, x.device())?,
        Some(Tensor::from_vec(errors, error_dims, x.device())?),
    ))
}

/// Each block's minimum of Q4_1 or Q5_1 bytes (both blocks begin with the f16 scale, then
/// the f16 minimum); `None` for other types.
pub fn block_mins(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1).then(|| {
        bytes
            .chunks_exact(ty.type_size())
            .map(|b| half::f16::from_le_bytes([b[2], b[3]]).to_f32())
            .collect()
    })
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

/// ggml's tanh-approximated GELU as its CPU backend computes it: outside (-10, 10) the
/// limits, inside a table indexed by the f16 of the input holding f16 results.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const COEF_A: f32 = 0.044715;
        (0..=u16::MAX)
            .map(|bits| {
                let f = half::f16::from_bits(bits).to_f32();
                let g = 0.5 * f * (1.0 + (SQRT_2_OVER_PI * f * (1.0 + COEF_A * f * f)).tanh());
                half::f16::from_f32(g).to_f32()
            })
            .collect()
    });
    let dims = x.dims().to_vec();
    let v: Vec<f32> = x
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| {
            if v <= -10.0 {
                0.0
            } else if v >= 10.0 {
                v
            } else {
                table[half::f16::from_f32(v).to_bits() as usize]
            }
        })
        .collect();
    Tensor::from_vec(v, dims, x.device())
}

/// How one group of layers rotates positions.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Rotated dimensions of each head (the first `n_rot`; the rest pass through).
    pub n_rot: usize,
    pub base: f32,
    /// Linear position scaling (1 / the scaling factor).
    pub freq_scale: f32,
    /// Per-pair divisors of the angle (llama3's `rope_freqs`, Phi-3's long/short factors).
    pub factors: Option<Vec<f32>>,
    /// Multiplies cos and sin (Phi-3's long-RoPE attention factor).
    pub mscale: f32,
}

impl Rope {
    /// (n, n_rot / 2) cosines and sines for positions `0..n`, as ggml builds its rope cache:
    /// theta starts at the position and is multiplied by base^(-2/n_rot) pair after pair.
    pub fn tables(&self, n: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.n_rot / 2;
        let theta_scale = self.base.powf(-2.0 / self.n_rot as f32);
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            let mut theta = pos as f32;
            for i in 0..half {
                let factor = self
                    .factors
                    .as_ref()
                    .and_then(|f| f.get(i).copied())
                    .unwrap_or(1.0);
                let angle = self.freq_scale * (theta / factor);
                cos.push(angle.cos() * self.mscale);
                sin.push(angle.sin() * self.mscale);
                theta *= theta_scale;
            }
        }
        let dev = &Device::Cpu;
        Ok((
            Tensor::from_vec(cos, (n, half), dev)?,
            Tensor::from_vec(sin, (n, half), dev)?,
        ))
    }
}

/// (n, n): 0 where query i may see key j (j <= i, and within `window` tokens when set), -inf
/// elsewhere. llama.cpp masks a key `window` or more positions behind the query.
pub fn causal_mask(n: usize, window: Option<usize>) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            let hidden = j > i || window.is_some_and(|w| i - j >= w);
            if hidden {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(values, (n, n), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_mask_hides_keys_a_window_behind() {
        let m = causal_mask(4, Some(2)).unwrap().to_vec2::<f32>().unwrap();
        let seen: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|v| v.is_finite()).collect())
            .collect();
        assert_eq!(
            seen,
            vec![
                vec![true, false, false, false],
                vec![true, true, false, false],
                vec![false, true, true, false],
                vec![false, false, true, true],
            ]
        );
    }

    #[test]
    fn gelu_matches_the_formula_within_f16_rounding() {
        let xs = [-12.0f32, -3.0, -0.5, 0.0, 0.25, 1.0, 2.5, 11.0];
        let t = Tensor::new(&xs, &Device::Cpu).unwrap();
        let got = gelu(&t).unwrap().to_vec1::<f32>().unwrap();
        for (x, g) in xs.iter().zip(got) {
            let exact = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044715 * x * x)).tanh());
            assert!(
                (g - exact).abs() <= 2e-3 * exact.abs().max(1.0),
                "{x}: {g} vs {exact}"
            );
        }
    }

    #[test]
    fn rope_angles_are_built_by_repeated_multiplication() {
        let rope = Rope {
            n_rot: 4,
            base: 10000.0,
            freq_scale: 0.5,
            factors: Some(vec![1.0, 2.0]),
            mscale: 1.0,
        };
        let (cos, _) = rope.tables(3).unwrap();
        let cos = cos.to_vec2::<f32>().unwrap();
        // position 2: pair 0 angle 0.5 * 2, pair 1 angle 0.5 * (2 * 10000^-0.5) / 2.
        assert!((cos[2][0] - 1.0f32.cos()).abs() < 1e-6);
        assert!((cos[2][1] - (0.5f32 * 0.02 / 2.0).cos()).abs() < 1e-6);
    }
}
