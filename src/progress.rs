//! Progress on stderr that tells the truth wherever stderr goes: a bar with rate and ETA on a
//! terminal, a plain line every few seconds when it is a file or a pipe (a batch job's log),
//! nothing with `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// A redrawn bar (stderr is a terminal).
    Bar,
    /// A line at most every [`LINE_INTERVAL`] and one at the end (logs, pipes).
    Lines,
    Hidden,
}

impl Display {
    /// The display for stderr: a bar on a terminal, lines otherwise, nothing when quiet.
    pub fn for_stderr(quiet: bool) -> Display {
        if quiet {
            Display::Hidden
        } else if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Tensor values.
    Weights,
    Bytes,
    /// Tokens through a forward pass of this many layers, counted a layer of a token at a
    /// time and shown as tokens (tokens/s is what users compare with llama.cpp).
    TokenLayers(u64),
    /// Training steps.
    Steps,
}

/// Time between two progress lines when stderr is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

struct LineState {
    pos: u64,
    last: Instant,
    message: String,
}

/// One task's progress (writing a matrix, hashing the inputs).
pub struct Progress {
    display: Display,
    label: String,
    total: u64,
    unit: Unit,
    started: Instant,
    bar: Option<ProgressBar>,
    lines: Mutex<LineState>,
}

/// `12.3 M` / `4.56 GiB`.
fn amount(n: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => {
            let (v, u) = scaled(n, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB"]);
            format!("{v:.2} {u}")
        }
        Unit::Weights => {
            let (v, u) = scaled(n, 1000.0, &["", "K", "M", "G", "T"]);
            format!("{v:.2}{u} weights")
        }
        // Whole steps done, and a rate below one a second still readable.
        Unit::Steps if n.fract() == 0.0 => format!("{n:.0} steps"),
        Unit::Steps => format!("{n:.2} steps"),
        Unit::TokenLayers(layers) => {
            let (v, u) = scaled(n / layers.max(1) as f64, 1000.0, &["", "K", "M", "G"]);
            // Whole tokens below a thousand (a layer of a token is not a unit users count).
            let digits = if u.is_empty() { 0 } else { 1 };
            format!("{v:.digits$}{u} tokens")
        }
    }
}

fn scaled(mut n: f64, step: f64, units: &'static [&'static str]) -> (f64, &'static str) {
    let mut i = 0;
    while n >= step && i + 1 < units.len() {
        n /= step;
        i += 1;
    }
    (n, units[i])
}

impl Progress {
    pub fn new(display: Display, label: &str, total: u64, unit: Unit) -> Progress {
        let bar = (display == Display::Bar).then(|| {
            let b = ProgressBar::new(total);
            let counts = match unit {
                Unit::Bytes => "{binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                Unit::Weights => "{human_pos}/{human_len} weights, {per_sec}",
                Unit::TokenLayers(_) => "{tokens}, {tokens_per_sec}",
                Unit::Steps => "{pos}/{len} steps",
            };
            let template = format!(
                "{label} [{{elapsed_precise}}] {{wide_bar}} {{percent}}% {counts}, ETA {{eta}} {{msg}}"
            );
            let style = ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            let style = match unit {
                Unit::TokenLayers(layers) => {
                    let per_token = layers.max(1) as f64;
                    style
                        .with_key(
                            "tokens",
                            move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                                let done = s.pos() as f64 / per_token;
                                let all = s.len().unwrap_or(0) as f64 / per_token;
                                let _ = write!(w, "{done:.0}/{all:.0} tokens");
                            },
                        )
                        .with_key(
                            "tokens_per_sec",
                            move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                                let _ = write!(w, "{:.1} tokens/s", s.per_sec() / per_token);
                            },
                        )
                }
                _ => style,
            };
            b.set_style(style);
            b
        });
        Progress {
            display,
            label: label.to_string(),
            total,
            unit,
            started: Instant::now(),
            bar,
            lines: Mutex::new(LineState {
                pos: 0,
                last: Instant::now(),
                message: String::new(),
            }),
        }
    }

    /// What is being worked on (a tensor's name).
    pub fn set_message(&self, message: &str) {
        if let Some(b) = &self.bar {
            b.set_message(message.to_string());
        } else if self.display == Display::Lines {
            if let Ok(mut s) = self.lines.lock() {
                s.message = message.to_string();
            }
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
            return;
        }
        if self.display != Display::Lines {
            return;
        }
        let Ok(mut s) = self.lines.lock() else { return };
        s.pos += n;
        if s.last.elapsed() >= LINE_INTERVAL {
            s.last = Instant::now();
            eprintln!("{}", self.line(s.pos, &s.message));
        }
    }

    /// `label: 35% (1.20G/3.40G weights), 85.3M weights/s, ETA 26s, blk.3.ffn_up.weight`.
    fn line(&self, pos: u64, message: &str) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = pos as f64 / secs;
        let percent = if self.total > 0 {
            100.0 * pos as f64 / self.total as f64
        } else {
            100.0
        };
        let eta = if rate > 0.0 {
            format!("{:.0}s", self.total.saturating_sub(pos) as f64 / rate)
        } else {
            "?".into()
        };
        format!(
            "{}: {percent:.0}% ({} of {}), {}/s, ETA {eta}{}{}",
            self.label,
            amount(pos as f64, self.unit),
            amount(self.total as f64, self.unit),
            amount(rate, self.unit),
            if message.is_empty() { "" } else { ", " },
            message
        )
    }

    /// Done: clear the bar, or print the final line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        } else if self.display == Display::Lines {
            if let Ok(s) = self.lines.lock() {
                eprintln!(
                    "{}: done, {} in {:.1?}",
                    self.label,
                    amount(s.pos as f64, self.unit),
                    self.started.elapsed()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_percent_rate_and_eta() {
        let p = Progress::new(Display::Lines, "writing", 2_000_000, Unit::Weights);
        let line = p.line(1_000_000, "blk.0.attn_q.weight");
        assert!(line.starts_with("writing: 50% (1.00M weights of 2.00M weights), "));
        assert!(line.contains("weights/s, ETA "), "{line}");
        assert!(line.ends_with(", blk.0.attn_q.weight"), "{line}");
        assert_eq!(amount(3.0 * (1u64 << 30) as f64, Unit::Bytes), "3.00 GiB");
        assert_eq!(amount(150.0, Unit::Steps), "150 steps");
        assert_eq!(amount(0.4321, Unit::Steps), "0.43 steps");
    }
}
