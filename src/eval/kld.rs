//! KL divergence against a reference, with every statistic `llama-perplexity --kl-divergence`
//! prints, computed as it computes them.
//!
//! The reference side is always a compressed row of the reference file format
//! ([`super::logits_file`]): read from a saved file, or made from a reference model's logits
//! just before use. So `--reference MODEL` and `--ref-logits FILE` give the same numbers for
//! the same logits, and both match llama-perplexity, which only ever compares against such
//! rows. [`Baseline`] is what the evaluation loop talks to: it gets each chunk's reference rows
//! (and saves them when asked), then scores every row of the model against them.

use super::logits_file::{compress_row, row_len, BaseRow};
use super::logits_file::{LogitsReader, LogitsWriter};
use crate::error::Result;

/// A value and llama-perplexity's `±` (its standard-error estimate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub error: f64,
}

/// Order statistics of one per-token quantity, picked as llama-perplexity picks them (linear
/// interpolation between the two nearest sorted values, in f32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantiles {
    pub max: f64,
    pub p99_9: f64,
    pub p99: f64,
    pub p95: f64,
    pub p90: f64,
    pub p75: f64,
    pub median: f64,
    pub p25: f64,
    pub p10: f64,
    pub p5: f64,
    pub p1: f64,
    pub p0_1: f64,
    pub min: f64,
}

/// What `llama-perplexity --kl-divergence` reports, over every scored token.
#[derive(Clone, Debug, PartialEq)]
pub struct KldReport {
    pub scored: usize,
    /// PPL(Q): the model's perplexity (from f32 log-probabilities, as llama-perplexity's
    /// KL-divergence mode; within float noise of the main estimate).
    pub ppl: Estimate,
    /// PPL(base): the reference's perplexity, from its stored 16-bit log-probabilities.
    pub base_ppl: Estimate,
    /// Correlation of the per-token ln-probabilities' means: Cor(ln(PPL(Q)), ln(PPL(base))).
    pub ln_ppl_correlation: f64,
    /// Mean ln(PPL(Q)/PPL(base)).
    pub ln_ppl_ratio: Estimate,
    /// PPL(Q)/PPL(base).
    pub ppl_ratio: Estimate,
    /// PPL(Q) - PPL(base).
    pub ppl_diff: Estimate,
    /// KL(base ‖ Q) per token: mean, then its distribution.
    pub kld: Estimate,
    pub kld_quantiles: Quantiles,
    /// Δp = p_Q(token) - p_base(token) of the text's next token, as fractions (not percent).
    pub delta_p: Estimate,
    pub delta_p_quantiles: Quantiles,
    /// sqrt(mean Δp²).
    pub delta_p_rms: Estimate,
    /// How often both models' most likely token is the same, as a fraction.
    pub same_top: Estimate,
}

/// llama-perplexity's running sums, and the per-token values it sorts for the percentiles.
#[derive(Clone, Debug, Default)]
pub struct KldStats {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    n_same_top: usize,
    kld_values: Vec<f32>,
    p_diff_values: Vec<f32>,
}

impl KldStats {
    /// Score one position: the model's `logits`, the reference's stored row, and the text's
    /// next token. Floats and doubles mix exactly where llama-perplexity mixes them.
    pub fn add(&mut self, base: BaseRow<'_>, logits: &[f32], token: usize) {
        let Some(&first) = logits.first() else {
            return;
        };
        let (mut max, mut imax) = (first, 0);
        for (i, &v) in logits.iter().enumerate().skip(1) {
            if v > max {
                (max, imax) = (v, i);
            }
        }
        let sum_exp: f64 = logits.iter().map(|&v| f64::from((v - max).exp())).sum();
        let log_sum_exp = sum_exp.ln() as f32;
        let nll = max + log_sum_exp - logits[token];
        let nll_base = -base.log_prob(token);
        self.sum_nll += f64::from(nll);
        self.sum_nll2 += f64::from(nll * nll);
        self.sum_nll_base += f64::from(nll_base);
        self.sum_nll_base2 += f64::from(nll_base * nll_base);
        self.sum_nll_nll_base += f64::from(nll * nll_base);

        // KL(base ‖ Q) = Σ p_base (log p_base - log p_Q); tokens whose stored log-probability
        // sits at the 16-nat floor or below contribute nothing, as in llama-perplexity.
        let log_norm = max + log_sum_exp;
        let mut kld = 0.0f64;
        let (mut imax_base, mut top_base) = (0, f32::NEG_INFINITY);
        for (i, &v) in logits.iter().enumerate() {
            let lp_base = base.log_prob(i);
            if i == 0 || lp_base > top_base {
                (imax_base, top_base) = (i, lp_base);
            }
            if lp_base > -16.0 {
                kld += f64::from(lp_base.exp() * (lp_base - v + log_norm));
            }
        }
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        self.n_same_top += usize::from(imax == imax_base);

        let p_diff = (-nll).exp() - (-nll_base).exp();
        let p_diff2 = f64::from(p_diff * p_diff);
        self.sum_p_diff += f64::from(p_diff);
        self.sum_p_diff2 += p_diff2;
        self.sum_p_diff4 += p_diff2 * p_diff2;
        self.kld_values.push(kld as f32);
        self.p_diff_values.push(p_diff);
    }

    pub fn count(&self) -> usize {
        self.kld_values.len()
    }

    /// The statistics; `None` before any token was scored.
    pub fn report(mut self) -> Option<KldReport> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let log_ppl = mean_and_error(self.sum_nll, self.sum_nll2, n);
        let log_base = mean_and_error(self.sum_nll_base, self.sum_nll_base2, n);
        let cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n);
        let exp_of = |e: Estimate| {
            let v = e.value.exp();
            Estimate {
                value: v,
                error: v * e.error,
            }
        };
        let ppl = exp_of(log_ppl);
        let base_ppl = exp_of(log_base);
        let ln_ppl_ratio = Estimate {
            value: log_ppl.value - log_base.value,
            error: (log_ppl.error.powi(2) + log_base.error.powi(2) - 2.0 * cov).sqrt(),
        };
        let ppl_cov = ppl.value * base_ppl.value * cov;
        let ppl_diff = Estimate {
            value: ppl.value - base_ppl.value,
            error: (ppl.error.powi(2) + base_ppl.error.powi(2) - 2.0 * ppl_cov).sqrt(),
        };
        let mse = mean_and_error(self.sum_p_diff2, self.sum_p_diff4, n);
        let rms = mse.value.sqrt();
        let same = self.n_same_top as f64 / n as f64;
        self.kld_values.sort_by(f32::total_cmp);
        self.p_diff_values.sort_by(f32::total_cmp);
        Some(KldReport {
            scored: n,
            ppl,
            base_ppl,
            ln_ppl_correlation: cov / (log_ppl.error * log_base.error),
            ln_ppl_ratio,
            ppl_ratio: exp_of(ln_ppl_ratio),
            ppl_diff,
            kld: mean_and_error(self.sum_kld, self.sum_kld2, n),
            kld_quantiles: quantiles(&self.kld_values),
            delta_p: mean_and_error(self.sum_p_diff, self.sum_p_diff2, n),
            delta_p_quantiles: quantiles(&self.p_diff_values),
            delta_p_rms: Estimate {
                value: rms,
                // d sqrt(x) = dx / (2 sqrt(x)); llama-perplexity prints nan for identical
                // models (0/0), this says 0.
                error: if rms > 0.0 {
                    0.5 / rms * mse.error
                } else {
                    0.0
                },
            },
            same_top: Estimate {
                value: same,
                error: if n > 1 {
                    (same * (1.0 - same) / (n - 1) as f64).sqrt()
                } else {
                    0.0
                },
            },
        })
    }
}

/// Mean and standard error of a sum and sum of squares; the error is 0 for 10 values or
/// fewer (llama-perplexity's cut-off).
fn mean_and_error(sum: f64, sum2: f64, count: usize) -> Estimate {
    if count == 0 {
        return Estimate {
            value: 0.0,
            error: 0.0,
        };
    }
    let mean = sum / count as f64;
    let var = sum2 / count as f64 - mean * mean;
    let error = if var > 0.0 && count > 10 {
        (var / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    Estimate { value: mean, error }
}

/// The covariance of the means of two per-token quantities; 0 under 10 values.
fn covariance(sum_a: f64, sum_b: f64, sum_ab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1.0)
}

/// The value at `fraction` of sorted, non-empty `values`: interpolated between the values at
/// the floor of `fraction * (n - 1)` and the next, all in f32 (llama-perplexity's rule).
fn percentile(sorted: &[f32], fraction: f32) -> f32 {
    let last = sorted.len() - 1;
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[last];
    }
    let p = fraction * last as f32;
    let ip = p as usize;
    let t = p - ip as f32;
    (1.0 - t) * sorted[ip] + t * sorted[(ip + 1).min(last)]
}

/// The middle value, or the mean of the two middle values.
fn median(sorted: &[f32]) -> f32 {
    let n = sorted.len();
    if n % 2 == 0 {
        0.5 * (sorted[n / 2] + sorted[n / 2 - 1])
    } else {
        sorted[n / 2]
    }
}

fn quantiles(sorted: &[f32]) -> Quantiles {
    let p = |f: f32| f64::from(percentile(sorted, f));
    Quantiles {
        max: f64::from(sorted[sorted.len() - 1]),
        p99_9: p(0.999),
        p99: p(0.99),
        p95: p(0.95),
        p90: p(0.90),
        p75: p(0.75),
        median: f64::from(median(sorted)),
        p25: p(0.25),
        p10: p(0.10),
        p5: p(0.05),
        p1: p(0.01),
        p0_1: p(0.001),
        min: f64::from(sorted[0]),
    }
}

/// The reference side of one evaluation, chunk by chunk: where each chunk's reference rows
/// come from (a saved file, or logits handed in), where they go (`--save-logits`), and the
/// statistics of the model's rows against them.
pub struct Baseline<'a> {
    saved: Option<&'a mut LogitsReader>,
    save: Option<&'a mut LogitsWriter>,
    /// Whether there is a reference to compare with (a reference model or a saved file); a
    /// run that only saves its own rows has none.
    compare: bool,
    n_vocab: usize,
    rows: Vec<u16>,
    stats: KldStats,
}

impl<'a> Baseline<'a> {
    /// Check a saved file against this run (`tokens` the text's, `n_chunks` chunks of
    /// `n_ctx`), and write the header of the file to save; both before any forward pass.
    pub fn new(
        saved: Option<&'a mut LogitsReader>,
        save: Option<&'a mut LogitsWriter>,
        reference_model: bool,
        tokens: &[u32],
        n_ctx: usize,
        n_chunks: usize,
        n_vocab: usize,
    ) -> Result<Baseline<'a>> {
        if let Some(r) = &saved {
            r.check_run(tokens, n_ctx, n_chunks, n_vocab)?;
        }
        let mut save = save;
        if let Some(w) = save.as_deref_mut() {
            let evaluated = tokens.get(..n_chunks * n_ctx).unwrap_or(tokens);
            w.begin(n_ctx, n_vocab, evaluated)?;
        }
        Ok(Baseline {
            compare: reference_model || saved.is_some(),
            saved,
            save,
            n_vocab,
            rows: Vec::new(),
            stats: KldStats::default(),
        })
    }

    /// Whether this run needs reference rows at all.
    pub fn active(&self) -> bool {
        self.compare || self.save.is_some()
    }

    /// The next chunk's reference rows: from the saved file, else compressed from
    /// `reference_logits` (the reference model's, or the model's own when it only saves them:
    /// `rows_per_chunk(n_ctx)` rows of `n_vocab` logits); saved when asked.
    pub fn next_chunk(&mut self, reference_logits: &[f32]) -> Result<()> {
        if !self.active() {
            return Ok(());
        }
        if let Some(r) = self.saved.as_deref_mut() {
            r.read_chunk(&mut self.rows)?;
        } else {
            let (len, n_vocab) = (row_len(self.n_vocab), self.n_vocab);
            let n_rows = reference_logits.len() / n_vocab;
            self.rows.resize(n_rows * len, 0);
            for (out, logits) in self
                .rows
                .chunks_exact_mut(len)
                .zip(reference_logits.chunks_exact(n_vocab))
            {
                compress_row(logits, out);
            }
        }
        if let Some(w) = self.save.as_deref_mut() {
            w.write_rows(&self.rows)?;
        }
        Ok(())
    }

    /// Score row `j` of the current chunk: the model's `logits` and the text's next token.
    pub fn score(&mut self, j: usize, logits: &[f32], token: usize) {
        if !self.compare {
            return;
        }
        let len = row_len(self.n_vocab);
        if let Some(raw) = self.rows.get(j * len..(j + 1) * len) {
            self.stats
                .add(BaseRow::new(raw, self.n_vocab), logits, token);
        }
    }

    /// The statistics, when there was a reference.
    pub fn finish(self) -> Option<KldReport> {
        if self.compare {
            self.stats.report()
        } else {
            None
        }
    }
}

impl KldReport {
    /// llama-perplexity's closing tables (its layout and precision).
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let pm = |e: &Estimate| format!("{:10.6} ± {:10.6}", e.value, e.error);
        let _ = writeln!(s, "====== Perplexity statistics ======");
        let _ = writeln!(s, "Mean PPL(Q)                   : {}", pm(&self.ppl));
        let _ = writeln!(s, "Mean PPL(base)                : {}", pm(&self.base_ppl));
        let _ = writeln!(
            s,
            "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
            100.0 * self.ln_ppl_correlation
        );
        let _ = writeln!(
            s,
            "Mean ln(PPL(Q)/PPL(base))     : {}",
            pm(&self.ln_ppl_ratio)
        );
        let _ = writeln!(s, "Mean PPL(Q)/PPL(base)         : {}", pm(&self.ppl_ratio));
        let _ = writeln!(s, "Mean PPL(Q)-PPL(base)         : {}", pm(&self.ppl_diff));
        let _ = writeln!(s);
        let _ = writeln!(s, "====== KL divergence statistics ======");
        let _ = writeln!(s, "Mean    KLD: {}", pm(&self.kld));
        let q = &self.kld_quantiles;
        for (name, v) in [
            ("Maximum", q.max),
            ("99.9%  ", q.p99_9),
            ("99.0%  ", q.p99),
            ("95.0%  ", q.p95),
            ("90.0%  ", q.p90),
            ("Median ", q.median),
            ("10.0%  ", q.p10),
            (" 5.0%  ", q.p5),
            (" 1.0%  ", q.p1),
            (" 0.1%  ", q.p0_1),
            ("Minimum", q.min),
        ] {
            let _ = writeln!(s, "{name} KLD: {v:10.6}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "====== Token probability statistics ======");
        let pct = |e: &Estimate| format!("{:6.3} ± {:5.3} %", 100.0 * e.value, 100.0 * e.error);
        let _ = writeln!(s, "Mean    Δp: {}", pct(&self.delta_p));
        let q = &self.delta_p_quantiles;
        for (name, v) in [
            ("Maximum", q.max),
            ("99.9%  ", q.p99_9),
            ("99.0%  ", q.p99),
            ("95.0%  ", q.p95),
            ("90.0%  ", q.p90),
            ("75.0%  ", q.p75),
            ("Median ", q.median),
            ("25.0%  ", q.p25),
            ("10.0%  ", q.p10),
            (" 5.0%  ", q.p5),
            (" 1.0%  ", q.p1),
            (" 0.1%  ", q.p0_1),
            ("Minimum", q.min),
        ] {
            let _ = writeln!(s, "{name} Δp: {:6.3}%", 100.0 * v);
        }
        let _ = writeln!(s, "RMS Δp    : {}", pct(&self.delta_p_rms));
        let _ = writeln!(s, "Same top p: {}", pct(&self.same_top));
        s
    }

    /// The report as JSON. The KLD's keys sit at the top (`mean`, `p99`, `max`: the names
    /// smelt used before), Δp and same-top in percent as llama-perplexity prints them;
    /// `*_error` is the `±`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let put_quantiles = |m: &mut Map<String, Value>, q: &Quantiles, scale: f64| {
            for (k, v) in [
                ("max", q.max),
                ("p99.9", q.p99_9),
                ("p99", q.p99),
                ("p95", q.p95),
                ("p90", q.p90),
                ("p75", q.p75),
                ("median", q.median),
                ("p25", q.p25),
                ("p10", q.p10),
                ("p5", q.p5),
                ("p1", q.p1),
                ("p0.1", q.p0_1),
                ("min", q.min),
            ] {
                m.insert(k.into(), json!(v * scale));
            }
        };
        let mut delta_p = Map::new();
        delta_p.insert("mean".into(), json!(100.0 * self.delta_p.value));
        delta_p.insert("mean_error".into(), json!(100.0 * self.delta_p.error));
        put_quantiles(&mut delta_p, &self.delta_p_quantiles, 100.0);
        delta_p.insert("rms".into(), json!(100.0 * self.delta_p_rms.value));
        delta_p.insert("rms_error".into(), json!(100.0 * self.delta_p_rms.error));
        let mut m = Map::new();
        for (k, v) in [
            ("scored", json!(self.scored)),
            ("reference_perplexity", json!(self.base_ppl.value)),
            ("ppl", json!(self.ppl.value)),
            ("ppl_error", json!(self.ppl.error)),
            ("base_ppl", json!(self.base_ppl.value)),
            ("base_ppl_error", json!(self.base_ppl.error)),
            ("ln_ppl_correlation", json!(self.ln_ppl_correlation)),
            ("ln_ppl_ratio", json!(self.ln_ppl_ratio.value)),
            ("ln_ppl_ratio_error", json!(self.ln_ppl_ratio.error)),
            ("ppl_ratio", json!(self.ppl_ratio.value)),
            ("ppl_ratio_error", json!(self.ppl_ratio.error)),
            ("ppl_diff", json!(self.ppl_diff.value)),
            ("ppl_diff_error", json!(self.ppl_diff.error)),
            ("mean", json!(self.kld.value)),
            ("mean_error", json!(self.kld.error)),
        ] {
            m.insert(k.into(), v);
        }
        put_quantiles(&mut m, &self.kld_quantiles, 1.0);
        m.insert("delta_p_percent".into(), Value::Object(delta_p));
        m.insert(
            "same_top_percent".into(),
            json!(100.0 * self.same_top.value),
        );
        m.insert(
            "same_top_percent_error".into(),
            json!(100.0 * self.same_top.error),
        );
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(logits: &[f32]) -> Vec<u16> {
        let mut raw = vec![0u16; row_len(logits.len())];
        compress_row(logits, &mut raw);
        raw
    }

    #[test]
    fn percentiles_interpolate_as_llama_perplexity() {
        let v: Vec<f32> = (0..=10).map(|i| i as f32).collect();
        assert_eq!(percentile(&v, 0.999), 9.99);
        assert_eq!(percentile(&v, 0.95), 9.5);
        assert_eq!(percentile(&v, 0.05), 0.5);
        assert_eq!(percentile(&v, 0.0), 0.0);
        assert_eq!(percentile(&v, 1.0), 10.0);
        assert_eq!(median(&v), 5.0);
        assert_eq!(median(&v[..4]), 1.5);
        // 378 values (6 chunks of ctx 128): 0.999 × 377 = 376.623 → 0.377 of #376 + 0.623 of #377.
        let w: Vec<f32> = (0..378).map(|i| (i * i) as f32).collect();
        let want = 0.377f32 * 376.0 * 376.0 + 0.623 * 377.0 * 377.0;
        assert!(
            (percentile(&w, 0.999) - want).abs() < 0.1,
            "{}",
            percentile(&w, 0.999)
        );
        assert_eq!(percentile(&[3.0], 0.5), 3.0);
    }

    #[test]
    fn known_rows_give_known_statistics() {
        // Reference p = 0.1, 0.2, 0.3, 0.4; model uniform over 4 tokens.
        let reference = [0.0f32, 2f32.ln(), 3f32.ln(), 4f32.ln()];
        let raw = stored(&reference);
        let base = BaseRow::new(&raw, 4);
        let uniform = [0.0f32; 4];
        let mut stats = KldStats::default();
        for token in [3, 0] {
            stats.add(base, &uniform, token);
        }
        let r = stats.report().unwrap();
        let kld: f64 = [0.1f64, 0.2, 0.3, 0.4]
            .iter()
            .map(|p| p * (p / 0.25).ln())
            .sum();
        assert_eq!(r.scored, 2);
        assert!((r.kld.value - kld).abs() < 1e-4, "{} vs {kld}", r.kld.value);
        assert_eq!(r.kld.error, 0.0, "no error estimate under 11 values");
        assert!((r.kld_quantiles.max - kld).abs() < 1e-4);
        // Δp: 0.25 - 0.4 and 0.25 - 0.1.
        assert!((r.delta_p.value - 0.0).abs() < 1e-4);
        assert!((r.delta_p_quantiles.min + 0.15).abs() < 1e-4);
        assert!((r.delta_p_quantiles.max - 0.15).abs() < 1e-4);
        assert!((r.delta_p_rms.value - 0.15).abs() < 1e-4);
        // The uniform model's top token is token 0 (the first maximum), the reference's 3.
        assert_eq!(r.same_top.value, 0.0);
        assert!((r.ppl.value - 4.0).abs() < 1e-4);
        assert!((r.base_ppl.value - 1.0 / (0.4f64 * 0.1).sqrt()).abs() < 1e-3);
        assert!((r.ppl_diff.value - (r.ppl.value - r.base_ppl.value)).abs() < 1e-12);
    }

    #[test]
    fn identical_models_agree_everywhere() {
        let mut stats = KldStats::default();
        for r in 0..200usize {
            let logits: Vec<f32> = (0..50)
                .map(|i| ((i * 7 + r * 3) % 13) as f32 * 0.4)
                .collect();
            let raw = stored(&logits);
            stats.add(BaseRow::new(&raw, 50), &logits, r % 50);
        }
        let r = stats.report().unwrap();
        // Not 0: the reference side is the 16-bit row (steps of range/65535 nats).
        assert!(
            r.kld.value.abs() < 1e-4 && r.kld_quantiles.max < 1e-4,
            "{:?}",
            r.kld
        );
        assert_eq!(r.same_top.value, 1.0);
        assert!((r.ppl_ratio.value - 1.0).abs() < 1e-5);
        assert!(r.delta_p_rms.value < 1e-5 && r.delta_p_rms.error.is_finite());
        assert!(
            (r.ln_ppl_correlation - 1.0).abs() < 1e-3,
            "{}",
            r.ln_ppl_correlation
        );
        assert!(r.ppl.error > 0.0 && r.kld.error >= 0.0);
    }

    #[test]
    fn standard_errors_follow_llama_perplexity() {
        // 11 values: the first count with an error estimate.
        let e = mean_and_error(11.0 * 2.0, 11.0 * 5.0, 11);
        assert_eq!(e.value, 2.0);
        assert!((e.error - (1.0f64 / 10.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_and_error(10.0 * 2.0, 10.0 * 5.0, 10).error, 0.0);
        assert_eq!(covariance(1.0, 1.0, 1.0, 9), 0.0);
        assert!((covariance(10.0, 20.0, 30.0, 10) - (3.0 - 2.0) / 9.0).abs() < 1e-12);
    }

    #[test]
    fn baseline_saves_rows_that_score_the_same_when_read_back() {
        let (n_vocab, n_ctx) = (6, 16);
        let tokens: Vec<u32> = (0..2 * n_ctx as u32).map(|t| t % 6).collect();
        // Two chunks of 7 scored rows (enough for error estimates); the model is a squeezed copy
        // of the reference.
        let reference: Vec<Vec<f32>> = (0..2)
            .map(|c| {
                (0..7 * n_vocab)
                    .map(|i| ((i * 5 + c) % 11) as f32)
                    .collect()
            })
            .collect();
        let model = |c: usize| -> Vec<f32> { reference[c].iter().map(|v| v * 0.8 + 0.1).collect() };
        let run = |b: &mut Baseline<'_>| {
            for c in 0..2 {
                b.next_chunk(&reference[c]).unwrap();
                for (j, row) in model(c).chunks_exact(n_vocab).enumerate() {
                    b.score(j, row, tokens[c * n_ctx + n_ctx / 2 + j + 1] as usize);
                }
            }
        };
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ref.kld");
        let mut w = LogitsWriter::create(&path).unwrap();
        let mut b = Baseline::new(None, Some(&mut w), true, &tokens, n_ctx, 2, n_vocab).unwrap();
        assert!(b.active());
        run(&mut b);
        let from_model = b.finish().unwrap();
        w.finish().unwrap();
        assert_eq!(from_model.scored, 14);
        assert!(from_model.kld.error > 0.0 && from_model.ln_ppl_correlation.is_finite());
        assert!(from_model.kld.value > 0.01);

        let mut r = LogitsReader::open(&path).unwrap();
        assert_eq!(r.tokens, tokens);
        let mut b = Baseline::new(Some(&mut r), None, false, &tokens, n_ctx, 2, n_vocab).unwrap();
        run(&mut b);
        assert_eq!(b.finish().unwrap(), from_model);

        // Only saving (no reference): nothing to report.
        let idle = Baseline::new(None, None, false, &tokens, n_ctx, 2, n_vocab).unwrap();
        assert!(!idle.active() && idle.finish().is_none());
    }
}
