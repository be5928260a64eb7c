//! ggml's shared scale searches (ggml-quants.c): `nearest_int`, the fp16 stores, and the
//! `make_q*_quants` family that the K-quants, the IQ types and the weighted legacy types call.
//!
//! Everything reproduces ggml byte for byte: f32 arithmetic evaluated in the same order as the
//! C source (no FMA contraction, left-associative products), `nearest_int` through the
//! 1.5·2^23 magic-number trick (round half to even), fp16 stores rounding to nearest even. The
//! searches work on groups of at most [`MAX_GROUP`] values and keep all scratch space on the
//! stack.

// Index loops mirror the C source line by line, which is what makes them auditable.
#![allow(clippy::needless_range_loop)]

use half::f16;

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
