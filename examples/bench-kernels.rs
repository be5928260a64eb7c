//! Single-threaded quantization kernel speed: rows per second over a 4096x4096 matrix of
//! pseudo-normal weights, each type plain and with an importance matrix (the legacy types
//! with one only). The kernels alone, no file I/O; `scripts/bench-quantize` times whole runs
//! against llama-quantize.
//!
//!     cargo run --release --example bench-kernels [-- Q4_K,IQ4_XS,...]

use smelt::gguf::GgmlType;
use smelt::quant::{quantize_row, row_bytes};
use std::time::Instant;

/// The K and legacy types, and IQ4_XS (formerly two ignored tests, in kquants.rs and the IQ4
/// golden tests).
const DEFAULT_TYPES: &str = "Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q4_0,Q4_1,Q5_0,Q5_1,IQ4_XS";

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

fn main() {
    let types = std::env::args().nth(1);
    let types = types.as_deref().unwrap_or(DEFAULT_TYPES);
    let (rows, cols) = (4096usize, 4096usize);
    let x = synth(rows * cols, 42);
    let w: Vec<f32> = synth(cols, 7).iter().map(|v| v * v * 1e4 + 0.1).collect();
    for name in types.split(',') {
        let ty: GgmlType = match name.parse() {
            Ok(ty) => ty,
            Err(e) => {
                eprintln!("error: {name}: {e}");
                std::process::exit(2);
            }
        };
        let rb = row_bytes(ty, cols).unwrap_or_else(|e| {
            eprintln!("error: {name}: {e}");
            std::process::exit(2);
        });
        let mut out = vec![0u8; rb];
        // Without an imatrix the legacy types take ggml's plain rounding (no search): only the
        // weighted path is worth timing.
        let legacy = matches!(
            ty,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1
        );
        let modes: &[bool] = if legacy { &[true] } else { &[false, true] };
        for &weighted in modes {
            let imatrix = weighted.then_some(w.as_slice());
            let t = Instant::now();
            for row in x.chunks_exact(cols) {
                if let Err(e) = quantize_row(ty, row, &mut out, imatrix) {
                    eprintln!("error: {name}: {e}");
                    std::process::exit(1);
                }
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "{:7} imatrix={weighted:5}: {:8.0} rows/s ({s:.2} s for {rows} rows of {cols})",
                ty.to_string(),
                rows as f64 / s
            );
        }
    }
}
