//! K-quants Q2_K..Q6_K, with and without importance weights (ggml-quants.c).
//!
//! Everything here reproduces ggml byte for byte: f32 arithmetic evaluated in the same order
//! as the C source (no FMA contraction, left-associative products), `nearest_int` through the
//! 1.5·2^23 magic-number trick (round half to even), fp16 stores rounding to nearest even, and
//! the same integer truncations (`int` stored into `uint8_t`/`int8_t`) as C.
//!
//! Without importance weights each type follows ggml's `quantize_row_q*_K_ref` (what
//! `quantize_q*_K` does with `quant_weights == NULL`); with them, `quantize_row_q*_K_impl`.
//!
//! The search helpers (`make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`,
//! `make_qkx3_quants`, `make_qp_quants`) are shared with `imatrix_legacy`. They work on groups
//! of at most [`MAX_GROUP`] values and keep all scratch space on the stack.

// Index loops mirror the C source line by line, which is what makes them auditable.
#![allow(clippy::needless_range_loop)]

use super::QuantError;
use crate::gguf::GgmlType;
use half::f16;

/// Values per K-quant super-block.
pub(crate) const QK_K: usize = 256;
/// Largest group the search helpers accept (ggml calls them with 16 or 32 values).
pub(crate) const MAX_GROUP: usize = 32;
/// ggml's `GROUP_MAX_EPS`: groups whose largest magnitude is below this quantize to zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: adds 1.5·2^23 so the FPU rounds (half to even) into the low mantissa
/// bits, then reads them back. Exact for |fval| <= 4194303; for larger inputs it returns the
/// same garbage as C.
#[inline(always)]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// `GGML_FP32_TO_FP16`: round to nearest even.
#[inline(always)]
pub(crate) fn fp32_to_fp16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// `GGML_FP16_TO_FP32` (exact).
#[inline(always)]
pub(crate) fn fp16_to_fp32(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// ggml's `make_qx_quants` with `rmse_type == 1` (the only variant any ggml quantizer uses):
/// symmetric quantization of `x` to `l` in `0..2*nmax` (stored as `q + nmax`), weights `qw` or
/// `x²`, searching 18 scales around `nmax/max` for the best weighted fit. Returns the scale.
#[inline(always)]
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8], qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    assert!(n <= MAX_GROUP && l.len() >= n);
    let l = &mut l[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let mut wbuf = [0.0f32; MAX_GROUP];
    let w = &mut wbuf[..n];
    match qw {
        Some(q) => w.copy_from_slice(&q[..n]),
        None => {
            for (w, &v) in w.iter_mut().zip(x) {
                *w = v * v;
            }
        }
    }
    let nmaxf = nmax as f32;
    let iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = (q + nmax) as u8;
        let qf = q as f32;
        sumlx += w[i] * x[i] * qf;
        suml2 += w[i] * qf * qf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    // The 18 trial scales (is = -9..=-1, 1..=9) are independent of each other (only the
    // comparison with `best` is sequential), so their sums run side by side in lanes: same
    // per-lane operation order as C, but vectorizable.
    let mut isc = [0.0f32; STEPS];
    for (k, v) in isc.iter_mut().enumerate() {
        let is = if k < 9 { k as i32 - 9 } else { k as i32 - 8 };
        *v = -(nmaxf + 0.1f32 * is as f32) / max;
    }
    let mut sumlx = [0.0f32; STEPS];
    let mut suml2 = [0.0f32; STEPS];
    #[cfg(target_arch = "x86_64")]
    let done = if super::use_avx2() {
        // SAFETY: the CPU has AVX2, the only requirement of `qx_sums`.
        unsafe { avx2::qx_sums(nmax, x, w, &isc, &mut sumlx, &mut suml2) };
        true
    } else {
        false
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        for i in 0..n {
            let (xi, wi) = (x[i], w[i]);
            let wx = wi * xi;
            for k in 0..STEPS {
                let q = nearest_int(isc[k] * xi).clamp(-nmax, nmax - 1) as f32;
                sumlx[k] += wx * q;
                suml2[k] += wi * q * q;
            }
        }
    }
    let mut winner = None;
    for k in 0..STEPS {
        if suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best * suml2[k] {
            winner = Some(k);
            scale = sumlx[k] / suml2[k];
            best = scale * sumlx[k];
        }
    }
    if let Some(k) = winner {
        for i in 0..n {
            l[i] = (nearest_int(isc[k] * x[i]).clamp(-nmax, nmax - 1) + nmax) as u8;
        }
    }
    scale
}

/// The trial scales of `make_qx_quants` (is = -9..=-1, 1..=9).
const STEPS: usize = 18;

/// ggml's `make_q3_quants`: symmetric quantization to `l` in `0..2*nmax` (stored as
/// `q + nmax`) with weights `x²`; with `do_rmse` a few rounds of coordinate descent.
#[inline(always)]
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [u8], do_rmse: bool) -> f32 {
    let n = x.len();
    assert!(n <= MAX_GROUP && l.len() >= n);
    let l = &mut l[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if do_rmse {
        let mut li = [0i32; MAX_GROUP];
        let li = &mut li[..n];
        let mut sumlx = 0.0f32;
        let mut suml2 = 0.0f32;
        for i in 0..n {
            let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            li[i] = q;
            let w = x[i] * x[i];
            let qf = q as f32;
            sumlx += w * x[i] * qf;
            suml2 += w * qf * qf;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let lf = li[i] as f32;
                let mut slx = sumlx - w * x[i] * lf;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * lf * lf;
                    let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != li[i] {
                        let nf = new_l as f32;
                        slx += w * x[i] * nf;
                        sl2 += w * nf * nf;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            li[i] = new_l;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for (d, &q) in l.iter_mut().zip(li.iter()) {
            *d = (q + nmax) as u8;
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = (q + nmax) as u8;
    }
    1.0 / iscale
}

/// Shared body of ggml's `make_qkx2_quants` and `make_qkx3_quants` (they differ only in
/// `max == min` versus `max <= min`, equivalent once `min` is clamped to `<= 0`, and in
/// qkx3's optional weights, which every caller supplies). Asymmetric quantization of `x` to
/// `l` in `0..=nmax`; returns `(scale, the_min)` where `x ≈ scale*l - the_min`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn make_qkx_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    assert!(n <= MAX_GROUP && l.len() >= n && weights.len() >= n && n > 0);
    let l = &mut l[..n];
    let weights = &weights[..n];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let iscale = nmaxf / (max - min);
    let scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut st = QkxState {
        l,
        scale,
        min,
        best_error,
    };
    if use_mad {
        qkx_search::<true>(
            &mut st, nmax, x, weights, max, sum_w, sum_x, rmin, rdelta, nstep,
        );
    } else {
        qkx_search::<false>(
            &mut st, nmax, x, weights, max, sum_w, sum_x, rmin, rdelta, nstep,
        );
    }
    (st.scale, -st.min)
}

/// The running best of `make_qkx_quants`' search.
struct QkxState<'a> {
    l: &'a mut [u8],
    scale: f32,
    min: f32,
    best_error: f32,
}

/// Trial scales evaluated side by side in `qkx_search`.
const QKX_LANES: usize = 8;

/// The `for (is = 0; is <= nstep; ++is)` search of `make_qkx2/3_quants`, evaluated
/// speculatively `QKX_LANES` steps at a time: each lane performs exactly C's operations in
/// C's order for its step, assuming `min` (which a winning step replaces) is unchanged. The
/// winners are then taken in step order; after a winner that changes `min`, the later lanes
/// are stale and the search restarts at the next step. Results are bit-identical to the
/// sequential loop.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn qkx_search<const MAD: bool>(
    st: &mut QkxState,
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    max: f32,
    sum_w: f32,
    sum_x: f32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) {
    let n = x.len();
    let nmaxf = nmax as f32;
    let mut ql = [[0.0f32; QKX_LANES]; MAX_GROUP];
    #[cfg(target_arch = "x86_64")]
    let avx2 = super::use_avx2();
    let mut is0 = 0i32;
    while is0 <= nstep {
        let min = st.min;
        let span = max - min;
        let mut iscale = [0.0f32; QKX_LANES];
        for (s, v) in iscale.iter_mut().enumerate() {
            *v = (rmin + rdelta * (is0 + s as i32) as f32 + nmaxf) / span;
        }
        let mut d = [0.0f32; QKX_LANES];
        let mut this_scale = [0.0f32; QKX_LANES];
        let mut this_min = [0.0f32; QKX_LANES];
        let mut err = [0.0f32; QKX_LANES];
        let mut out = QkxBatch {
            ql: &mut ql,
            d: &mut d,
            this_scale: &mut this_scale,
            this_min: &mut this_min,
            err: &mut err,
        };
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` is true only when the CPU has AVX2, the only requirement of
            // `qkx_batch`.
            unsafe {
                avx2::qkx_batch::<MAD>(nmax, x, weights, min, &iscale, sum_w, sum_x, &mut out)
            };
        } else {
            qkx_batch::<MAD>(nmax, x, weights, min, &iscale, sum_w, sum_x, &mut out);
        }
        #[cfg(not(target_arch = "x86_64"))]
        qkx_batch::<MAD>(nmax, x, weights, min, &iscale, sum_w, sum_x, &mut out);
        let mut advance = QKX_LANES as i32;
        for s in 0..QKX_LANES {
            if is0 + s as i32 > nstep {
                break;
            }
            if d[s] > 0.0 && err[s] < st.best_error {
                for i in 0..n {
                    st.l[i] = ql[i][s] as u8;
                }
                st.best_error = err[s];
                st.scale = this_scale[s];
                let changed = this_min[s] != st.min;
                st.min = this_min[s];
                if changed {
                    advance = s as i32 + 1;
                    break;
                }
            }
        }
        is0 += advance;
    }
}

/// One batch of `qkx_search`: per lane, the codes, the determinant `d`, the fitted scale and
/// min, and the weighted error.
struct QkxBatch<'a> {
    ql: &'a mut [[f32; QKX_LANES]; MAX_GROUP],
    d: &'a mut [f32; QKX_LANES],
    this_scale: &'a mut [f32; QKX_LANES],
    this_min: &'a mut [f32; QKX_LANES],
    err: &'a mut [f32; QKX_LANES],
}

/// `QKX_LANES` steps of the search from the same `min`, lane `s` with scale `iscale[s]`, each
/// in C's operation order.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn qkx_batch<const MAD: bool>(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    min: f32,
    iscale: &[f32; QKX_LANES],
    sum_w: f32,
    sum_x: f32,
    out: &mut QkxBatch,
) {
    let n = x.len();
    let ql = &mut *out.ql;
    let mut sum_l = [0.0f32; QKX_LANES];
    let mut sum_l2 = [0.0f32; QKX_LANES];
    let mut sum_xl = [0.0f32; QKX_LANES];
    for i in 0..n {
        let (xi, w) = (x[i], weights[i]);
        let xm = xi - min;
        let qi = &mut ql[i];
        for s in 0..QKX_LANES {
            let q = nearest_int(iscale[s] * xm).clamp(0, nmax) as f32;
            qi[s] = q;
            sum_l[s] += w * q;
            sum_l2[s] += w * q * q;
            sum_xl[s] += w * q * xi;
        }
    }
    // Branch-free per lane (vectorizes); lanes with d <= 0 get garbage that is never used.
    for s in 0..QKX_LANES {
        out.d[s] = sum_w * sum_l2[s] - sum_l[s] * sum_l[s];
        let sc = (sum_w * sum_xl[s] - sum_x * sum_l[s]) / out.d[s];
        let mn = (sum_l2[s] * sum_x - sum_l[s] * sum_xl[s]) / out.d[s];
        let clamp = mn > 0.0;
        out.this_scale[s] = if clamp { sum_xl[s] / sum_l2[s] } else { sc };
        out.this_min[s] = if clamp { 0.0 } else { mn };
    }
    for i in 0..n {
        let (xi, w) = (x[i], weights[i]);
        for s in 0..QKX_LANES {
            let diff = out.this_scale[s] * ql[i][s] + out.this_min[s] - xi;
            let diff = if MAD { diff.abs() } else { diff * diff };
            out.err[s] += w * diff;
        }
    }
}

/// AVX2 versions of the two lane loops that LLVM leaves scalar (it vectorizes the codes but
/// keeps the per-lane running sums in separate scalar registers). Each lane performs the
/// same IEEE-754 single-precision operations, in the same order, as the portable loop it
/// replaces: vector add/sub/mul/div round each lane exactly as the scalar instructions do,
/// no FMA is used, and `nearest_int` is the same magic-number bit trick. The bytes are the
/// same (`quant::tests::dispatched_kernels_match_baseline` and the golden tests check it).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{QkxBatch, MAX_GROUP, QKX_LANES, STEPS};
    use std::arch::x86_64::*;

    /// `nearest_int(v).clamp(lo, hi) as f32`, lane-wise.
    #[inline(always)]
    unsafe fn nearest_clamped(v: __m256, lo: __m256i, hi: __m256i) -> __m256 {
        let bits = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
        let q = _mm256_sub_epi32(
            _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x0040_0000),
        );
        _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(q, lo), hi))
    }

    /// The step sums of `make_qx_quants`: for each trial scale `isc[k]`, `sumlx[k]` and
    /// `suml2[k]` accumulated over `i` in order, as the portable loop does.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn qx_sums(
        nmax: i32,
        x: &[f32],
        w: &[f32],
        isc: &[f32; STEPS],
        sumlx: &mut [f32; STEPS],
        suml2: &mut [f32; STEPS],
    ) {
        // Three vectors of 8 lanes; lanes 18..24 repeat the last scale and are dropped.
        let mut scales = [isc[STEPS - 1]; 24];
        scales[..STEPS].copy_from_slice(isc);
        // SAFETY (all loads and stores here): unaligned accesses of 8 f32 inside arrays of
        // 24 (offsets 0, 8, 16).
        let sc = [
            _mm256_loadu_ps(scales.as_ptr()),
            _mm256_loadu_ps(scales.as_ptr().add(8)),
            _mm256_loadu_ps(scales.as_ptr().add(16)),
        ];
        let lo = _mm256_set1_epi32(-nmax);
        let hi = _mm256_set1_epi32(nmax - 1);
        let mut slx = [_mm256_setzero_ps(); 3];
        let mut sl2 = [_mm256_setzero_ps(); 3];
        for (&xi, &wi) in x.iter().zip(w) {
            let wx = _mm256_set1_ps(wi * xi);
            let xv = _mm256_set1_ps(xi);
            let wv = _mm256_set1_ps(wi);
            for k in 0..3 {
                let q = nearest_clamped(_mm256_mul_ps(sc[k], xv), lo, hi);
                // sumlx += (w*x)*q; suml2 += (w*q)*q
                slx[k] = _mm256_add_ps(slx[k], _mm256_mul_ps(wx, q));
                sl2[k] = _mm256_add_ps(sl2[k], _mm256_mul_ps(_mm256_mul_ps(wv, q), q));
            }
        }
        let mut a = [0.0f32; 24];
        let mut b = [0.0f32; 24];
        for k in 0..3 {
            _mm256_storeu_ps(a.as_mut_ptr().add(8 * k), slx[k]);
            _mm256_storeu_ps(b.as_mut_ptr().add(8 * k), sl2[k]);
        }
        sumlx.copy_from_slice(&a[..STEPS]);
        suml2.copy_from_slice(&b[..STEPS]);
    }

    /// `super::qkx_batch` with the 8 lanes in one vector.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn qkx_batch<const MAD: bool>(
        nmax: i32,
        x: &[f32],
        weights: &[f32],
        min: f32,
        iscale: &[f32; QKX_LANES],
        sum_w: f32,
        sum_x: f32,
        out: &mut QkxBatch,
    ) {
        const _: () = assert!(QKX_LANES == 8);
        let n = x.len().min(MAX_GROUP);
        // SAFETY (all loads and stores here): unaligned accesses of exactly 8 f32 to
        // `[f32; QKX_LANES]` arrays (QKX_LANES == 8).
        let isv = _mm256_loadu_ps(iscale.as_ptr());
        let lo = _mm256_setzero_si256();
        let hi = _mm256_set1_epi32(nmax);
        let mut sum_l = _mm256_setzero_ps();
        let mut sum_l2 = _mm256_setzero_ps();
        let mut sum_xl = _mm256_setzero_ps();
        for i in 0..n {
            let (xi, w) = (x[i], weights[i]);
            let xv = _mm256_set1_ps(xi);
            let wv = _mm256_set1_ps(w);
            let q = nearest_clamped(_mm256_mul_ps(isv, _mm256_set1_ps(xi - min)), lo, hi);
            _mm256_storeu_ps(out.ql[i].as_mut_ptr(), q);
            // sum_l += w*q; sum_l2 += (w*q)*q; sum_xl += (w*q)*x
            let wq = _mm256_mul_ps(wv, q);
            sum_l = _mm256_add_ps(sum_l, wq);
            sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wq, q));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wq, xv));
        }
        let swv = _mm256_set1_ps(sum_w);
        let sxv = _mm256_set1_ps(sum_x);
        // d = sum_w*sum_l2 - sum_l*sum_l
        let d = _mm256_sub_ps(_mm256_mul_ps(swv, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        // sc = (sum_w*sum_xl - sum_x*sum_l)/d; mn = (sum_l2*sum_x - sum_l*sum_xl)/d
        let sc = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(swv, sum_xl), _mm256_mul_ps(sxv, sum_l)),
            d,
        );
        let mn = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_l2, sxv), _mm256_mul_ps(sum_l, sum_xl)),
            d,
        );
        // mn > 0 (false for NaN, as in Rust and C): scale = sum_xl/sum_l2, min = 0.
        let clamp = _mm256_cmp_ps::<_CMP_GT_OQ>(mn, _mm256_setzero_ps());
        let this_scale = _mm256_blendv_ps(sc, _mm256_div_ps(sum_xl, sum_l2), clamp);
        let this_min = _mm256_blendv_ps(mn, _mm256_setzero_ps(), clamp);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut err = _mm256_setzero_ps();
        for i in 0..n {
            let (xi, w) = (x[i], weights[i]);
            let q = _mm256_loadu_ps(out.ql[i].as_ptr());
            // diff = scale*q + min - x
            let diff = _mm256_sub_ps(
                _mm256_add_ps(_mm256_mul_ps(this_scale, q), this_min),
                _mm256_set1_ps(xi),
            );
            let diff = if MAD {
                _mm256_and_ps(diff, abs_mask)
            } else {
                _mm256_mul_ps(diff, diff)
            };
            err = _mm256_add_ps(err, _mm256_mul_ps(_mm256_set1_ps(w), diff));
        }
        _mm256_storeu_ps(out.d.as_mut_ptr(), d);
        _mm256_storeu_ps(out.this_scale.as_mut_ptr(), this_scale);
        _mm256_storeu_ps(out.this_min.as_mut_ptr(), this_min);
        _mm256_storeu_ps(out.err.as_mut_ptr(), err);
    }
}

/// ggml's `make_qkx2_quants` (used by the weightless Q2_K/Q4_K/Q5_K paths).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx_quants(nmax, x, weights, l, rmin, rdelta, nstep, use_mad)
}

/// ggml's `make_qkx3_quants` with explicit weights (the importance-weighted paths).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx_quants(nmax, x, weights, l, rmin, rdelta, nstep, use_mad)
}

/// ggml's `make_qp_quants`: quantizes `x` (block scales or mins, or IQ2_XXS magnitudes, of
/// which a few may be negative) to `l` in `0..=nmax` with weights `qw`. Returns the scale.
/// Negative values wrap in `l` exactly as ggml's `uint8_t` store does.
#[inline(always)]
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    assert!(n <= MAX_GROUP && l.len() >= n && qw.len() >= n);
    let l = &mut l[..n];
    let mut max = 0.0f32;
    for &v in x {
        // MAX(max, v) = max > v ? max : v
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    // C stores `int` into `uint8_t` (wrapping) and reads it back unsigned.
    for i in 0..n {
        l[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        // C sums with the int, not the (wrapped) stored byte: they differ for negative x,
        // which IQ2_XXS passes (one value per group of 8 may carry a flipped sign).
        let qf = q as f32;
        sumlx += qw[i] * x[i] * qf;
        suml2 += qw[i] * qf * qf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let lf = l[i] as f32;
            let mut slx = sumlx - w * x[i] * lf;
            let mut sl2 = suml2 - w * lf * lf;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// The super-block size every K and IQ family file assumes, checked against the types table.
const _: () = assert!(
    QK_K == GgmlType::Q2_K.block_size()
        && QK_K == GgmlType::Q6_K.block_size()
        && QK_K == GgmlType::Q8_K.block_size()
);

/// Quantize one row (a multiple of 256 values) to a K type, exactly as ggml's
/// `quantize_q*_K` does for a single row.
#[inline(always)]
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    w: Option<&[f32]>,
) -> Result<(), QuantError> {
    if !matches!(
        ty,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
    ) {
        return Err(QuantError::Unsupported {
            ty,
            op: "k-quant quantize",
        });
    }
    let bb = ty.type_size();
    let nb = src.len() / QK_K;
    if src.len() % QK_K != 0 {
        return Err(QuantError::RowNotBlockAligned {
            ty,
            n: src.len(),
            block: QK_K,
        });
    }
    if dst.len() != nb * bb || w.is_some_and(|w| w.len() != src.len()) {
        return Err(QuantError::BufferSize {
            ty,
            what: format!(
                "{} values, {} bytes, {:?} weights",
                src.len(),
                dst.len(),
                w.map(<[f32]>::len)
            ),
        });
    }
    for (i, (x, y)) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(bb))
        .enumerate()
    {
        // A direct call (no function pointer), so the kernels inline into the caller and
        // take its target features (see `quant::quantize_row`).
        let w = w.map(|w| &w[i * QK_K..(i + 1) * QK_K]);
        match ty {
            GgmlType::Q2_K => q2_k_block(x, y, w),
            GgmlType::Q3_K => q3_k_block(x, y, w),
            GgmlType::Q4_K => q4_k_block(x, y, w),
            GgmlType::Q5_K => q5_k_block(x, y, w),
            _ => q6_k_block(x, y, w),
        }
    }
    Ok(())
}

/// Sum of squares in C order (one accumulator).
#[inline(always)]
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Packs 2-bit values `l[0..256]` the Q2_K/Q3_K way: byte `j/4 + k` of each 128-value half
/// holds values `k, k+32, k+64, k+96`.
#[inline(always)]
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for (half, q) in l.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for k in 0..32 {
            q[k] = half[k] | (half[k + 32] << 2) | (half[k + 64] << 4) | (half[k + 96] << 6);
        }
    }
}

#[inline(always)]
fn q2_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let mut weights = [0.0f32; 16];
    let (sc, rest) = y.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    let (d_bits, dmin_bits);
    match qw {
        None => {
            const Q4SCALE: f32 = 15.0;
            let mut max_scale = 0.0f32;
            let mut max_min = 0.0f32;
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                for (w, &v) in weights.iter_mut().zip(xs) {
                    *w = v.abs();
                }
                let (s, m) = make_qkx2_quants(
                    3,
                    xs,
                    &weights,
                    &mut l[16 * j..16 * j + 16],
                    -0.5,
                    0.1,
                    15,
                    true,
                );
                scales[j] = s;
                mins[j] = m;
                if s > max_scale {
                    max_scale = s;
                }
                if m > max_min {
                    max_min = m;
                }
            }
            if max_scale > 0.0 {
                let iscale = Q4SCALE / max_scale;
                for j in 0..16 {
                    sc[j] = nearest_int(iscale * scales[j]) as u8;
                }
                d_bits = fp32_to_fp16(max_scale / Q4SCALE);
            } else {
                sc.fill(0);
                d_bits = fp32_to_fp16(0.0);
            }
            if max_min > 0.0 {
                let iscale = Q4SCALE / max_min;
                for j in 0..16 {
                    let q = nearest_int(iscale * mins[j]);
                    sc[j] |= (q << 4) as u8;
                }
                dmin_bits = fp32_to_fp16(max_min / Q4SCALE);
            } else {
                dmin_bits = fp32_to_fp16(0.0);
            }
        }
        Some(qw) => {
            let mut sw = [0.0f32; 16];
            let mut ls = [0u8; 16];
            let mut lm = [0u8; 16];
            let sigma2 = sum_sq(x) / QK_K as f32;
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                let q = &qw[16 * j..16 * j + 16];
                for k in 0..16 {
                    weights[k] = q[k] * (sigma2 + xs[k] * xs[k]).sqrt();
                }
                let mut s = 0.0f32;
                for &w in &weights {
                    s += w;
                }
                sw[j] = s;
                let (s, m) = make_qkx3_quants(
                    3,
                    xs,
                    &weights,
                    &mut l[16 * j..16 * j + 16],
                    -0.9,
                    0.05,
                    36,
                    false,
                );
                scales[j] = s;
                mins[j] = m;
            }
            let dm = make_qp_quants(15, &scales, &mut ls, &sw);
            let mm = make_qp_quants(15, &mins, &mut lm, &sw);
            d_bits = fp32_to_fp16(dm);
            dmin_bits = fp32_to_fp16(mm);
            for j in 0..16 {
                sc[j] = ls[j] | (lm[j] << 4);
            }
        }
    }
    dd[0..2].copy_from_slice(&d_bits.to_le_bytes());
    dd[2..4].copy_from_slice(&dmin_bits.to_le_bytes());
    let dm = fp16_to_fp32(d_bits);
    let mm = fp16_to_fp32(dmin_bits);
    for j in 0..16 {
        let d = dm * (sc[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (sc[j] >> 4) as f32;
        for k in 0..16 {
            let q = nearest_int((x[16 * j + k] + m) / d).clamp(0, 3);
            l[16 * j + k] = q as u8;
        }
    }
    pack_2bit(&l, qs);
}

/// Writes 6-bit Q3_K scale `q` (already offset by 32) for sub-block `j` into `sc[12]`.
#[inline(always)]
fn q3_put_scale(sc: &mut [u8], j: usize, q: u8) {
    if j < 8 {
        sc[j] = q & 0xF;
    } else {
        sc[j - 8] |= (q & 0xF) << 4;
    }
    sc[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
}

/// Reads back the signed Q3_K scale of sub-block `j`.
#[inline(always)]
fn q3_get_scale(sc: &[u8], j: usize) -> i32 {
    let lo = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
    let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

#[inline(always)]
fn q3_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(12);
    sc.fill(0);
    let d_bits;
    match qw {
        None => {
            let mut max_scale = 0.0f32;
            let mut amax = 0.0f32;
            for j in 0..16 {
                let s = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..], true);
                scales[j] = s;
                let a = s.abs();
                if a > amax {
                    amax = a;
                    max_scale = s;
                }
            }
            if max_scale != 0.0 {
                let iscale = -32.0f32 / max_scale;
                for j in 0..16 {
                    // C: `int8_t l = nearest_int(...)` truncates before clamping.
                    let q = nearest_int(iscale * scales[j]) as i8 as i32;
                    let q = q.clamp(-32, 31) + 32;
                    q3_put_scale(sc, j, q as u8);
                }
                d_bits = fp32_to_fp16(1.0 / iscale);
            } else {
                d_bits = fp32_to_fp16(0.0);
            }
        }
        Some(qw) => {
            let mut weights = [0.0f32; 16];
            let mut sw = [0.0f32; 16];
            let mut ls = [0u8; 16];
            let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                let q = &qw[16 * j..16 * j + 16];
                for k in 0..16 {
                    weights[k] = q[k] * (sigma2 + xs[k] * xs[k]).sqrt();
                }
                let mut s = 0.0f32;
                for &w in &weights {
                    s += w;
                }
                sw[j] = s;
                scales[j] = make_qx_quants(4, xs, &mut l[16 * j..], Some(&weights));
            }
            let d_block = make_qx_quants(32, &scales, &mut ls, Some(&sw));
            for j in 0..16 {
                q3_put_scale(sc, j, ls[j]);
            }
            d_bits = fp32_to_fp16(d_block);
        }
    }
    dd.copy_from_slice(&d_bits.to_le_bytes());
    let df = fp16_to_fp32(d_bits);
    for j in 0..16 {
        let d = df * q3_get_scale(sc, j) as f32;
        if d == 0.0 {
            continue;
        }
        for k in 0..16 {
            let q = nearest_int(x[16 * j + k] / d).clamp(-4, 3);
            l[16 * j + k] = (q + 4) as u8;
        }
    }
    hmask.fill(0);
    for j in 0..QK_K {
        if l[j] > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            l[j] -= 4;
        }
    }
    pack_2bit(&l, qs);
}

/// Packs Q4_K/Q5_K 6-bit scale `ls` and min `lm` of sub-block `j` into `sc[12]`.
#[inline(always)]
fn k4_put_scale_min(sc: &mut [u8], j: usize, ls: u8, lm: u8) {
    if j < 4 {
        sc[j] = ls;
        sc[j + 4] = lm;
    } else {
        sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        sc[j - 4] |= (ls >> 4) << 6;
        sc[j] |= (lm >> 4) << 6;
    }
}

/// ggml's `get_scale_min_k4`.
#[inline(always)]
fn k4_get_scale_min(sc: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (sc[j] & 63, sc[j + 4] & 63)
    } else {
        (
            (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4),
            (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
        )
    }
}

/// Shared Q4_K/Q5_K front half: fills the 12 scale bytes and d/dmin, requantizes `l` with
/// the stored (rounded) scales. `nmax` is 15 or 31.
#[inline(always)]
fn k45_scales(
    x: &[f32],
    qw: Option<&[f32]>,
    nmax: i32,
    l: &mut [u8; QK_K],
    sc: &mut [u8],
    dd: &mut [u8],
) {
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut weights = [0.0f32; 32];
    sc.fill(0);
    let (d_bits, dmin_bits);
    match qw {
        None => {
            let (rmin, nstep) = if nmax == 15 { (-1.0, 20) } else { (-0.5, 15) };
            let mut max_scale = 0.0f32;
            let mut max_min = 0.0f32;
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let av_x = (sum_sq(xs) / 32.0).sqrt();
                for (w, &v) in weights.iter_mut().zip(xs) {
                    *w = av_x + v.abs();
                }
                let (s, m) = make_qkx2_quants(
                    nmax,
                    xs,
                    &weights,
                    &mut l[32 * j..32 * j + 32],
                    rmin,
                    0.1,
                    nstep,
                    false,
                );
                scales[j] = s;
                mins[j] = m;
                if s > max_scale {
                    max_scale = s;
                }
                if m > max_min {
                    max_min = m;
                }
            }
            let inv_scale = if max_scale > 0.0 {
                63.0 / max_scale
            } else {
                0.0
            };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            for j in 0..8 {
                // C: `uint8_t ls = nearest_int(...)` wraps, then MIN(63, ls).
                let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
                k4_put_scale_min(sc, j, ls, lm);
            }
            d_bits = fp32_to_fp16(max_scale / 63.0);
            dmin_bits = fp32_to_fp16(max_min / 63.0);
        }
        Some(qw) => {
            let mut sw = [0.0f32; 8];
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let q = &qw[32 * j..32 * j + 32];
                for k in 0..32 {
                    weights[k] = q[k] * (sigma2 + xs[k] * xs[k]).sqrt();
                }
                let mut s = 0.0f32;
                for &w in &weights {
                    s += w;
                }
                sw[j] = s;
                let (s, m) = make_qkx3_quants(
                    nmax,
                    xs,
                    &weights,
                    &mut l[32 * j..32 * j + 32],
                    -0.9,
                    0.05,
                    36,
                    false,
                );
                scales[j] = s;
                mins[j] = m;
            }
            let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
            let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
            for j in 0..8 {
                // Q5_K clamps to 63 here, Q4_K does not; make_qp_quants never exceeds 63.
                k4_put_scale_min(sc, j, ls[j].min(63), lm[j].min(63));
            }
            d_bits = fp32_to_fp16(d_block);
            dmin_bits = fp32_to_fp16(m_block);
        }
    }
    dd[0..2].copy_from_slice(&d_bits.to_le_bytes());
    dd[2..4].copy_from_slice(&dmin_bits.to_le_bytes());
    let df = fp16_to_fp32(d_bits);
    let mf = fp16_to_fp32(dmin_bits);
    for j in 0..8 {
        let (s, m) = k4_get_scale_min(sc, j);
        let d = df * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = mf * m as f32;
        for k in 0..32 {
            let q = nearest_int((x[32 * j + k] + dm) / d).clamp(0, nmax);
            l[32 * j + k] = q as u8;
        }
    }
}

#[inline(always)]
fn q4_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let (dd, rest) = y.split_at_mut(4);
    let (sc, qs) = rest.split_at_mut(12);
    k45_scales(x, qw, 15, &mut l, sc, dd);
    for (lc, q) in l.chunks_exact(64).zip(qs.chunks_exact_mut(32)) {
        for k in 0..32 {
            q[k] = lc[k] | (lc[k + 32] << 4);
        }
    }
}

#[inline(always)]
fn q5_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let (dd, rest) = y.split_at_mut(4);
    let (sc, rest) = rest.split_at_mut(12);
    let (qh, ql) = rest.split_at_mut(32);
    k45_scales(x, qw, 31, &mut l, sc, dd);
    qh.fill(0);
    for (n, (lc, q)) in l.chunks_exact(64).zip(ql.chunks_exact_mut(32)).enumerate() {
        let m1 = 1u8 << (2 * n);
        let m2 = 2u8 << (2 * n);
        for k in 0..32 {
            let mut l1 = lc[k];
            if l1 > 15 {
                l1 -= 16;
                qh[k] |= m1;
            }
            let mut l2 = lc[k + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[k] |= m2;
            }
            q[k] = l1 | (l2 << 4);
        }
    }
}

#[inline(always)]
fn q6_k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..16 {
        let s = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut l[16 * ib..16 * ib + 16],
            qw.map(|q| &q[16 * ib..16 * ib + 16]),
        );
        scales[ib] = s;
        let a = s.abs();
        if a > max_abs_scale {
            max_abs_scale = a;
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let (ql, rest) = y.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(16);
    let iscale = -128.0f32 / max_scale;
    let d_bits = fp32_to_fp16(1.0 / iscale);
    dd.copy_from_slice(&d_bits.to_le_bytes());
    for ib in 0..16 {
        // C: `int8_t scales[ib] = MIN(127, nearest_int(...))` (truncating store).
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let df = fp16_to_fp32(d_bits);
    for j in 0..16 {
        let d = df * sc[j] as i8 as f32;
        if d == 0.0 {
            continue;
        }
        for k in 0..16 {
            let q = nearest_int(x[16 * j + k] / d).clamp(-32, 31);
            l[16 * j + k] = (q + 32) as u8;
        }
    }
    for ((lc, ql), qh) in l
        .chunks_exact(128)
        .zip(ql.chunks_exact_mut(64))
        .zip(qh.chunks_exact_mut(32))
    {
        for k in 0..32 {
            let (a, b, c, d) = (lc[k], lc[k + 32], lc[k + 64], lc[k + 96]);
            ql[k] = (a & 0xF) | ((c & 0xF) << 4);
            ql[k + 32] = (b & 0xF) | ((d & 0xF) << 4);
            qh[k] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization: ggml's `dequantize_row_*` for this family (helpers in `bytes.rs`).

/// Dequantize whole blocks of `ty`, a type of this family.
pub(super) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::Q2_K => dequant::q2_k(src, dst),
        GgmlType::Q3_K => dequant::q3_k(src, dst),
        GgmlType::Q4_K => dequant::q4_k(src, dst),
        GgmlType::Q5_K => dequant::q5_k(src, dst),
        GgmlType::Q6_K => dequant::q6_k(src, dst),
        GgmlType::Q8_K => dequant::q8_k(src, dst),
        _ => unreachable!("{ty} is not a type of this family (see the types table)"),
    }
}

mod dequant {
    use super::super::bytes::*;

    // K-quants: 256-element super-blocks split into sub-blocks with their own small scales.

    /// Q2_K: 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit codes, f16 d,
    /// f16 dmin. Each 32-byte half of `qs` yields 128 values: 4 shifts of 32.
    /// x = (d * sc) * q - (dmin * m) per 16 values.
    pub(super) fn q2_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 84, dst, QK_K) {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for (i, y) in y.iter_mut().enumerate() {
                let (half, shift, l) = (i / 128, i / 32 % 4, i % 32);
                let sc = scales[i / 16];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let q = qs[half * 32 + l] >> (2 * shift) & 3;
                *y = dl * q as f32 - ml;
            }
        }
    }

    /// Q3_K: 32 bytes of high bits (`hmask`), 64 bytes of low 2 bits, 12 bytes of packed 6-bit
    /// scales, f16 d. A clear high bit means "subtract 4". x = (d * (sc - 32)) * q per 16 values.
    pub(super) fn q3_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 110, dst, QK_K) {
            let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            let d = f16_at(b, 108);
            // Scale i: low 4 bits from byte i % 8 (nibble i / 8), high 2 bits from byte
            // 8 + i % 4 (bit pair i / 4).
            let scales: [f32; 16] = std::array::from_fn(|i| {
                let lo = sc[i % 8] >> (4 * (i / 8)) & 0x0F;
                let hi = sc[8 + i % 4] >> (2 * (i / 4)) & 0x03;
                ((lo | hi << 4) as i32 - 32) as f32
            });
            for (i, y) in y.iter_mut().enumerate() {
                let (half, shift, l) = (i / 128, i / 32 % 4, i % 32);
                let low = (qs[half * 32 + l] >> (2 * shift) & 3) as i32;
                let high = hmask[l] >> (i / 32) & 1;
                let q = low - if high == 0 { 4 } else { 0 };
                *y = d * scales[i / 16] * q as f32;
            }
        }
    }

    /// The 6-bit scale and min of each of the 8 sub-blocks of Q4_K / Q5_K, from 12 packed bytes:
    /// sub-blocks 0..4 keep theirs in the low 6 bits of bytes 0..8, sub-blocks 4..8 split theirs
    /// between the nibbles of bytes 8..12 and the top 2 bits of bytes 0..8.
    pub(super) fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
        let mut sc = [0; 8];
        let mut m = [0; 8];
        for j in 0..4 {
            sc[j] = s[j] & 0x3F;
            m[j] = s[j + 4] & 0x3F;
            sc[j + 4] = (s[j + 8] & 0x0F) | (s[j] >> 2 & 0x30);
            m[j + 4] = (s[j + 8] >> 4) | (s[j + 4] >> 2 & 0x30);
        }
        (sc, m)
    }

    /// Q4_K: f16 d, f16 dmin, 12 scale bytes, 128 bytes of nibbles (32 bytes per pair of
    /// sub-blocks: low nibbles first). x = (d * sc) * q - (dmin * m) per 32 values.
    pub(super) fn q4_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 144, dst, QK_K) {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, m) = k_scale_min(&b[4..16]);
            let qs = &b[16..144];
            for (s, y) in y.chunks_exact_mut(32).enumerate() {
                let dl = d * sc[s] as f32;
                let ml = dmin * m[s] as f32;
                let q = &qs[s / 2 * 32..][..32];
                for (y, &q) in y.iter_mut().zip(q) {
                    *y = dl * (q >> (4 * (s % 2)) & 0x0F) as f32 - ml;
                }
            }
        }
    }

    /// Q5_K: Q4_K plus 32 bytes of fifth bits (bit s of byte l for sub-block s, element l).
    pub(super) fn q5_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 176, dst, QK_K) {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, m) = k_scale_min(&b[4..16]);
            let (qh, qs) = (&b[16..48], &b[48..176]);
            for (s, y) in y.chunks_exact_mut(32).enumerate() {
                let dl = d * sc[s] as f32;
                let ml = dmin * m[s] as f32;
                let ql = &qs[s / 2 * 32..][..32];
                for (l, y) in y.iter_mut().enumerate() {
                    let q = (ql[l] >> (4 * (s % 2)) & 0x0F) | (qh[l] >> s & 1) << 4;
                    *y = dl * q as f32 - ml;
                }
            }
        }
    }

    /// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2 bits, 16 i8 scales, f16 d.
    /// Each 128-value half uses 64 `ql` bytes (low nibbles, then high nibbles) and 32 `qh` bytes
    /// (4 bit pairs). x = (d * sc) * (q - 32) per 16 values.
    pub(super) fn q6_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 210, dst, QK_K) {
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for (i, y) in y.iter_mut().enumerate() {
                let (half, r) = (i / 128, i % 128);
                let lo = ql[half * 64 + r % 64] >> (4 * (r / 64)) & 0x0F;
                let hi = qh[half * 32 + r % 32] >> (2 * (r / 32)) & 0x03;
                let q = (lo | hi << 4) as i32 - 32;
                *y = d * scales[i / 16] as i8 as f32 * q as f32;
            }
        }
    }

    /// Q8_K: f32 d, 256 i8, 16 i16 block sums (only used by dot products); x = d * q.
    /// gguf-py has no Q8_K; this is ggml's `dequantize_row_q8_K`.
    pub(super) fn q8_k(src: &[u8], dst: &mut [f32]) {
        for (b, y) in blocks(src, 292, dst, QK_K) {
            let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            for (y, &q) in y.iter_mut().zip(&b[4..260]) {
                *y = d * q as i8 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::golden::{b64_decode, f32s, hex};
    use serde_json::Value;
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;

    /// Checks every golden case of `types`; returns how many were checked.
    pub(crate) fn check_golden(types: &[GgmlType]) -> usize {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/golden/quant_kquants.json"
        );
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let table = |k: &str| -> HashMap<String, Vec<f32>> {
            doc[k]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), f32s(v.as_str().unwrap())))
                .collect()
        };
        let inputs = table("inputs");
        let weights = table("weights");
        let mut failures = Vec::new();
        let mut checked = 0;
        for case in doc["cases"].as_array().unwrap() {
            let ty: GgmlType = case["type"].as_str().unwrap().parse().unwrap();
            if !types.contains(&ty) {
                continue;
            }
            let x = &inputs[case["input"].as_str().unwrap()];
            let w = case["imatrix"].as_str().map(|k| weights[k].as_slice());
            let expected = b64_decode(case["expected_b64"].as_str().unwrap());
            assert_eq!(
                hex(&Sha256::digest(&expected)),
                case["sha256"].as_str().unwrap(),
                "fixture corrupt"
            );
            assert_eq!(hex(&expected[..16]), case["head_hex"].as_str().unwrap());
            let n_per_row = case["n_per_row"].as_u64().unwrap() as usize;
            let mut got = vec![0u8; expected.len()];
            super::super::quantize_rows(ty, x, n_per_row, &mut got, w).unwrap();
            checked += 1;
            if hex(&Sha256::digest(&got)) != case["sha256"].as_str().unwrap() {
                let bb = ty.type_size();
                let first = (0..got.len()).find(|&i| got[i] != expected[i]).unwrap();
                let blk = first / bb;
                failures.push(format!(
                    "{ty} imatrix={:?} input={}: first differing block {blk} (byte {} in block)\n  got  {}\n  want {}",
                    case["imatrix"].as_str(),
                    case["input"].as_str().unwrap(),
                    first % bb,
                    hex(&got[blk * bb..(blk + 1) * bb]),
                    hex(&expected[blk * bb..(blk + 1) * bb]),
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {checked} cases differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
        checked
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.5, -2),
            (0.49999997, 0),
            (3.7, 4),
            (-3.7, -4),
            (4194303.0, 4194303),
            (-4194303.0, -4194303),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
    }

    #[test]
    fn golden_q2_k() {
        assert_eq!(check_golden(&[GgmlType::Q2_K]), 42);
    }

    #[test]
    fn golden_q3_k() {
        assert_eq!(check_golden(&[GgmlType::Q3_K]), 42);
    }

    #[test]
    fn golden_q4_k() {
        assert_eq!(check_golden(&[GgmlType::Q4_K]), 42);
    }

    #[test]
    fn golden_q5_k() {
        assert_eq!(check_golden(&[GgmlType::Q5_K]), 42);
    }

    #[test]
    fn golden_q6_k() {
        assert_eq!(check_golden(&[GgmlType::Q6_K]), 42);
    }

    #[test]
    fn golden_legacy_with_and_without_imatrix() {
        use GgmlType::*;
        // Q4_0..Q5_1 with and without weights, Q8_0 without (its quantizer ignores weights).
        assert_eq!(check_golden(&[Q4_0, Q4_1, Q5_0, Q5_1, Q8_0]), 84 + 5 * 21);
    }
}

/// Heavier checks, run by hand:
/// `cargo test --lib quant::kquants::slow -- --ignored --nocapture` (the test profile is
/// optimized).
#[cfg(test)]
mod slow {
    use super::*;
    use std::time::Instant;

    /// Deterministic pseudo-normal values (xorshift + sum of uniforms), no rand dependency.
    fn synth(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|_| (next() + next() + next() + next() - 2.0) * 0.02)
            .collect()
    }

    /// Single-threaded rows/s over a 4096x4096 matrix for every type, plain and weighted.
    #[test]
    #[ignore]
    fn bench_4096x4096() {
        use GgmlType::*;
        let (rows, cols) = (4096usize, 4096usize);
        let x = synth(rows * cols, 42);
        let w: Vec<f32> = synth(cols, 7).iter().map(|v| v * v * 1e4 + 0.1).collect();
        for ty in [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1] {
            let rb = super::super::row_bytes(ty, cols).unwrap();
            let mut out = vec![0u8; rb];
            let modes: &[bool] = if matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1) {
                &[true]
            } else {
                &[false, true]
            };
            for &weighted in modes {
                let wi = weighted.then_some(w.as_slice());
                let t = Instant::now();
                for r in x.chunks_exact(cols) {
                    super::super::quantize_row(ty, r, &mut out, wi).unwrap();
                }
                let s = t.elapsed().as_secs_f64();
                println!(
                    "{ty:5} imatrix={weighted:5}: {:8.0} rows/s ({s:.2} s for {rows} rows of {cols})",
                    rows as f64 / s
                );
            }
        }
    }

    /// Compares against raw dumps written by `scripts/kquant-oracle-dump.py` (libgguf) in
    /// `SMELT_KQ_ORACLE=dir`: `x.f32`,
    /// `w.f32`, `meta.txt` (`rows cols`) and `<TYPE>_<plain|imatrix>.bin`.
    #[test]
    #[ignore]
    fn oracle_dump() {
        let Ok(dir) = std::env::var("SMELT_KQ_ORACLE") else {
            eprintln!("SMELT_KQ_ORACLE not set, skipping");
            return;
        };
        let read_f32 = |p: &str| -> Vec<f32> {
            std::fs::read(format!("{dir}/{p}"))
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        };
        let x = read_f32("x.f32");
        let w = read_f32("w.f32");
        let meta = std::fs::read_to_string(format!("{dir}/meta.txt")).unwrap();
        let cols: usize = meta.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut bad = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(stem) = name.strip_suffix(".bin") else {
                continue;
            };
            // type names contain '_' too: the mode follows the last one
            let i = stem.rfind('_').unwrap();
            let (tyname, mode) = (&stem[..i], &stem[i + 1..]);
            let ty: GgmlType = tyname.parse().unwrap();
            let want = std::fs::read(format!("{dir}/{name}")).unwrap();
            let mut got = vec![0u8; want.len()];
            let wi = (mode == "imatrix").then_some(w.as_slice());
            super::super::quantize_rows(ty, &x, cols, &mut got, wi).unwrap();
            let bb = ty.type_size();
            let nbad = got
                .chunks_exact(bb)
                .zip(want.chunks_exact(bb))
                .filter(|(a, b)| a != b)
                .count();
            println!(
                "{ty:5} {mode:8}: {nbad} of {} blocks differ",
                got.len() / bb
            );
            bad += nbad;
        }
        assert_eq!(bad, 0);
    }
}
