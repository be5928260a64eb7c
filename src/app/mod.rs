//! The application layer: what a command does, as library functions that return reports, so
//! that tests and other programs call them without spawning the binary. `cli.rs` keeps the
//! clap types, progress and printing.

pub mod eval;
pub mod heal;
pub mod imatrix;
pub mod inspect;
pub mod merge;
pub mod naming;
pub mod prune;
pub mod quantize;
pub mod release;
pub mod targets;
pub mod text;
pub mod verify;

/// Where a command says what it does: summary lines and warnings (the CLI's stderr), its
/// result (the CLI's stdout: plans, llama-quantize commands) and its progress bars. The CLI
/// prints; a test or another program collects.
pub trait Reporter {
    /// A summary line (`wrote …`, `done in …`).
    fn say(&self, line: &str);
    /// A warning, shown even when summary lines are not.
    fn warn(&self, line: &str);
    /// The command's result text, printed as it comes.
    fn print(&self, text: &str) -> crate::error::Result<()>;
    /// Where progress bars go.
    fn display(&self) -> crate::progress::Display;
}

/// `wrote DIR/m-Q4_K_M.gguf (80.13 MiB, 4.83 bpw, 272 tensors)`.
pub fn wrote_line(r: &crate::write::OutputReport) -> String {
    format!(
        "wrote {} ({:.2} MiB, {:.2} bpw, {} tensors)",
        r.path.display(),
        r.bytes as f64 / (1 << 20) as f64,
        r.bits_per_weight(),
        r.n_tensors
    )
}
