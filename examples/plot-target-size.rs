//! The plot of `scripts/bench-target-size`: for each model and imatrix setting of its
//! `results.jsonl`, file size against mean KLD and perplexity, llama.cpp's mixes as points and
//! smelt's `--target-size` files (one per mix, at the mix's size) as a curve. One PNG per
//! (model, imatrix) pair, named `OUT-<model>-<imatrix>.png`.
//!
//!     cargo run --example plot-target-size -- target/bench-target-size/results.jsonl OUT.png

use smelt::plot::{write_quality_png, QualityPoint};
use std::collections::BTreeMap;
use std::path::Path;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [results, out] = args.as_slice() else {
        return Err("usage: plot-target-size RESULTS.jsonl OUT.png".into());
    };
    let text = std::fs::read_to_string(results).map_err(|e| format!("{results}: {e}"))?;
    // (model, imatrix) -> points, and the reference perplexity.
    let mut groups: BTreeMap<(String, String), (Vec<QualityPoint>, f64)> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let r: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{results}:{}: {e}", i + 1))?;
        let field = |k: &str| r[k].as_f64().ok_or(format!("{results}:{}: no {k}", i + 1));
        let name = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let key = (name("model"), name("imatrix"));
        let entry = groups
            .entry(key)
            .or_insert((Vec::new(), field("base_ppl")?));
        let mix = name("mix");
        entry.0.push(QualityPoint {
            label: mix.clone(),
            bytes: field("mix_bytes")? as u64,
            bits_per_weight: f64::NAN,
            kld_mean: Some(field("mix_kld")?),
            perplexity: field("mix_ppl")?,
            optimised: false,
        });
        entry.0.push(QualityPoint {
            label: format!("at {mix}'s size"),
            bytes: field("target_bytes")? as u64,
            bits_per_weight: f64::NAN,
            kld_mean: Some(field("target_kld")?),
            perplexity: field("target_ppl")?,
            optimised: true,
        });
    }
    let stem = out.strip_suffix(".png").unwrap_or(out);
    for ((model, imatrix), (points, base_ppl)) in &groups {
        let path = format!("{stem}-{model}-{imatrix}.png");
        let title = format!("{model}, imatrix {imatrix}: mixes vs targets");
        write_quality_png(Path::new(&path), &title, points, Some(*base_ppl))?;
        println!("{path}");
    }
    Ok(())
}
