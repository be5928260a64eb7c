//! The release's model card (`README.md` with the hub's front matter) and its plot, both made
//! from the manifest: what was measured is what the card says.

use super::manifest::{Manifest, ReleasedType, CHECKSUMS_FILE, IMATRIX_FILE, PLOT_FILE};
use crate::error::Result;
use crate::gguf::Metadata;
use std::fmt::Write as _;
use std::path::Path;

/// The hub ids (or names) of the models the release derives from: `--base-model`; for a merge,
/// its inputs (`general.base_model.N.*` as the merge records them); for an HF hub snapshot,
/// its repository; else what the file's `general.*` keys say.
pub fn base_models(
    is_recipe: bool,
    md: &Metadata,
    source: &Path,
    given: Option<&str>,
) -> Vec<String> {
    if let Some(g) = given {
        return vec![g.to_string()];
    }
    if is_recipe {
        let n = md.get_u64("general.base_model.count").unwrap_or(0);
        return (0..n)
            .filter_map(|i| {
                let key = |k: &str| md.get_str(&format!("general.base_model.{i}.{k}"));
                key("repo_url")
                    .map(hub_id_of_url)
                    .or_else(|| key("name").map(str::to_string))
            })
            .collect();
    }
    if let Some(id) = hub_snapshot_id(source) {
        return vec![id];
    }
    if let Some(url) = md.get_str("general.source.repo_url") {
        return vec![hub_id_of_url(url)];
    }
    // A GGUF made by convert_hf_to_gguf.py names its organization; with the model's own name
    // (the file stem without type suffixes) that is the hub id release makers use.
    match md.get_str("general.organization") {
        Some(org) if !org.contains(char::is_whitespace) => {
            vec![format!("{org}/{}", crate::app::naming::model_name(source))]
        }
        _ => Vec::new(),
    }
}

/// `https://huggingface.co/org/name` -> `org/name`; any other URL as it is.
fn hub_id_of_url(url: &str) -> String {
    url.strip_prefix("https://huggingface.co/")
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_string()
}

/// `org/name` of a folder `.../models--org--name/snapshots/<rev>`, or `_name_or_path` when it
/// is a hub id.
fn hub_snapshot_id(source: &Path) -> Option<String> {
    if !source.is_dir() {
        return None;
    }
    let dir = std::fs::canonicalize(source).ok()?;
    let repo = dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))?;
    let folder = repo.parent()?.file_name()?.to_str()?;
    let id = folder.strip_prefix("models--")?.replacen("--", "/", 1);
    Some(id)
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1 << 20) as f64;
    if m >= 10_240.0 {
        format!("{:.2} GiB", m / 1024.0)
    } else {
        format!("{m:.1} MiB")
    }
}

/// A YAML scalar that cannot be misread (JSON strings are YAML double-quoted scalars).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The one-line guide: the smallest file within a mean KLD of 0.1 of the reference (most
/// users), and the smallest within 0.01 (near-lossless), from the measurements.
fn pick_guide(types: &[ReleasedType]) -> String {
    let smallest_within = |limit: f64| {
        types
            .iter()
            .filter(|t| t.quality.as_ref().is_some_and(|q| q.kld_mean <= limit))
            .min_by_key(|t| t.bytes)
    };
    let line = |t: &ReleasedType| {
        let q = t.quality.as_ref().expect("filtered on quality");
        format!(
            "**{}** ({}, mean KLD {:.4}, same top token {:.1}%)",
            t.file_type,
            mib(t.bytes),
            q.kld_mean,
            q.same_top_percent
        )
    };
    match (smallest_within(0.1), smallest_within(0.01)) {
        (Some(a), Some(b)) if a.file_type != b.file_type => format!(
            "Which one? {} is the smallest file within a mean KL divergence of 0.1 of the original; {} the smallest near-lossless one (under 0.01).",
            line(a),
            line(b)
        ),
        (Some(a), _) => format!(
            "Which one? {}: the smallest file within a mean KL divergence of 0.1 of the original.",
            line(a)
        ),
        (None, _) => match types
            .iter()
            .filter(|t| t.quality.is_some())
            .min_by(|a, b| {
                let (qa, qb) = (a.quality.as_ref().expect("some"), b.quality.as_ref().expect("some"));
                qa.kld_mean.total_cmp(&qb.kld_mean)
            }) {
            Some(t) => format!(
                "Which one? No file here stays within a mean KL divergence of 0.1 of the original; {} comes closest.",
                line(t)
            ),
            None => "Which one? Nothing was measured; larger types lose less.".into(),
        },
    }
}

/// The card's Markdown.
pub fn render(m: &Manifest, quantized_by: Option<&str>, evaluated: bool) -> String {
    let mut s = String::from("---\n");
    let bases = &m.source.base_models;
    let is_merge = m.source.kind == "recipe";
    match bases.as_slice() {
        [] => {}
        [one] if !is_merge => {
            let _ = writeln!(s, "base_model: {}", yaml_str(one));
        }
        many => {
            s.push_str("base_model:\n");
            for b in many {
                let _ = writeln!(s, "- {}", yaml_str(b));
            }
        }
    }
    if !bases.is_empty() {
        let relation = if is_merge { "merge" } else { "quantized" };
        let _ = writeln!(s, "base_model_relation: {relation}");
    }
    if let Some(l) = &m.source.license {
        let _ = writeln!(s, "license: {}", yaml_str(l));
    }
    s.push_str("tags:\n- gguf\n");
    if m.imatrix.is_some() {
        s.push_str("- imatrix\n");
    }
    if is_merge {
        s.push_str("- merge\n- mergekit\n");
    }
    s.push_str("- smelt\n");
    let _ = writeln!(
        s,
        "quantized_by: {}",
        yaml_str(quantized_by.unwrap_or("smelt"))
    );
    s.push_str("pipeline_tag: text-generation\n---\n\n");

    let _ = writeln!(s, "# {} GGUF\n", m.name);
    match (bases.as_slice(), is_merge) {
        ([], _) => {}
        (b, true) => {
            let list: Vec<String> = b.iter().map(|x| format!("`{x}`")).collect();
            let _ = writeln!(
                s,
                "A merge of {}, as GGUF files for llama.cpp.\n",
                list.join(", ")
            );
        }
        ([one, ..], false) => {
            let link = if one.contains('/') {
                format!("[{one}](https://huggingface.co/{one})")
            } else {
                format!("`{one}`")
            };
            let _ = writeln!(s, "Quantizations of {link} for llama.cpp.\n");
        }
    }
    let _ = writeln!(
        s,
        "Made with smelt {} from `{}` ({} {} parameters, SHA-256 `{}`).\n",
        m.smelt_version,
        file_label(&m.source.path),
        m.source.architecture,
        crate::model_card::ParamCount {
            total: m.source.parameters,
            ..Default::default()
        }
        .size_label(),
        &m.source.sha256
    );

    s.push_str("## Files\n\n");
    if evaluated {
        s.push_str("| File | Type | Size | Bits/weight | Perplexity | Mean KLD | 99% KLD | Same top token |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    } else {
        s.push_str("| File | Type | Size | Bits/weight |\n|---|---|---:|---:|\n");
    }
    for t in &m.types {
        let file = match t.parts.as_slice() {
            [one] => format!("[{0}](./{0})", one.file),
            parts => format!(
                "[{}](./{}) (+{} more)",
                parts[0].file,
                parts[0].file,
                parts.len() - 1
            ),
        };
        let _ = write!(
            s,
            "| {file} | {} | {} | {:.2} |",
            t.file_type,
            mib(t.bytes),
            t.bits_per_weight
        );
        if evaluated {
            match &t.quality {
                Some(q) => {
                    let _ = write!(
                        s,
                        " {:.4} | {:.6} | {:.6} | {:.2}% |",
                        q.perplexity,
                        // The reference's 16-bit log-probabilities can make a lossless
                        // type's mean a hair below 0 (release.json keeps the raw figure).
                        q.kld_mean.max(0.0),
                        q.kld_p99.max(0.0),
                        q.same_top_percent
                    );
                }
                None => s.push_str(" – | – | – | – |"),
            }
        }
        s.push('\n');
    }
    s.push('\n');
    if let (true, Some(e)) = (evaluated, &m.evaluation) {
        let _ = writeln!(s, "{}\n", pick_guide(&m.types));
        let _ = writeln!(
            s,
            "Quality is measured by smelt's forward pass (llama-perplexity's method) against the source itself \
             (perplexity {:.4} ± {:.4}), on {} chunks of {} tokens of `{}` ({} tokens scored): \
             KLD is the KL divergence of each file's next-token distribution from the source's, \
             lower is better.\n",
            e.reference_perplexity,
            e.reference_perplexity_error,
            e.chunks,
            e.n_ctx,
            e.text,
            e.tokens_scored
        );
        let _ = writeln!(s, "![size against quality]({PLOT_FILE})\n");
    }
    if let Some(im) = &m.imatrix {
        s.push_str("## Importance matrix\n\n");
        if im.computed {
            let _ = writeln!(
                s,
                "The quantized files were made with an importance matrix computed by smelt on {} chunks of {} tokens of `{}`: [{IMATRIX_FILE}](./{IMATRIX_FILE}) (llama-imatrix's GGUF format), SHA-256 `{}`.\n",
                im.chunks.unwrap_or(0),
                im.n_ctx.unwrap_or(0),
                im.dataset,
                im.sha256
            );
        } else {
            let _ = writeln!(
                s,
                "The quantized files were made with the importance matrix `{}` (SHA-256 `{}`).\n",
                file_label(&im.file),
                im.sha256
            );
        }
    }
    if let Some(recipe) = &m.source.recipe {
        let _ = writeln!(
            s,
            "## Merge recipe\n\n```yaml\n{}\n```\n",
            recipe.trim_end()
        );
    }
    let pick = m
        .types
        .iter()
        .find(|t| t.file_type == "Q4_K_M")
        .or_else(|| m.types.first());
    if let Some(t) = pick {
        let f = &t.parts[0].file;
        s.push_str("## Use\n\n```sh\n");
        let _ = writeln!(s, "llama-cli -m {f} -cnv");
        let _ = writeln!(s, "llama-server -m {f} --port 8080");
        s.push_str("```\n\nA split file is loaded from its first part; llama.cpp finds the others beside it.\n\n");
    }
    let _ = writeln!(
        s,
        "## Checksums\n\n`sha256sum -c {CHECKSUMS_FILE}` checks every file of this folder; `smelt verify .` also checks every GGUF header and split set. `release.json` records every file, size, type and measurement.\n"
    );
    let _ = writeln!(s, "Command: `{}`", m.command_line.join(" "));
    s
}

/// A path as a card shows it: its file name (never this machine's folders).
fn file_label(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// `quality.png`: each type's size against its mean KLD and perplexity.
pub fn write_plot(dir: &Path, m: &Manifest) -> Result<()> {
    use crate::plot::{write_quality_png, QualityPoint};
    let points: Vec<QualityPoint> = m
        .types
        .iter()
        .filter_map(|t| {
            let q = t.quality.as_ref()?;
            Some(QualityPoint {
                label: t.file_type.clone(),
                bytes: t.bytes,
                bits_per_weight: t.bits_per_weight,
                kld_mean: Some(q.kld_mean),
                perplexity: q.perplexity,
                optimised: matches!(
                    crate::target::TypeSpec::parse(&t.file_type),
                    Ok(crate::target::TypeSpec::Target(_))
                ),
            })
        })
        .collect();
    let reference = m.evaluation.as_ref().map(|e| e.reference_perplexity);
    write_quality_png(
        &dir.join(PLOT_FILE),
        &format!("{}: size vs quality", m.name),
        &points,
        reference,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::release::manifest::{FileEntry, Quality};

    fn typed(name: &str, bytes: u64, kld: f64) -> ReleasedType {
        ReleasedType {
            file_type: name.into(),
            parts: vec![FileEntry {
                file: format!("m-{name}.gguf"),
                bytes,
                sha256: "0".repeat(64),
            }],
            bytes,
            bits_per_weight: 4.0,
            quality: Some(Quality {
                perplexity: 10.0,
                perplexity_error: 0.1,
                kld_mean: kld,
                kld_p99: kld * 5.0,
                kld_max: kld * 20.0,
                same_top_percent: 90.0,
            }),
        }
    }

    #[test]
    fn the_guide_picks_from_the_measurements() {
        let types = [
            typed("Q2_K", 100, 0.5),
            typed("Q4_K_M", 200, 0.05),
            typed("Q6_K", 300, 0.005),
            typed("Q8_0", 400, 0.001),
        ];
        let g = pick_guide(&types);
        assert!(g.contains("**Q4_K_M**") && g.contains("**Q6_K**"), "{g}");
        let g = pick_guide(&types[..1]);
        assert!(g.contains("No file") && g.contains("**Q2_K**"), "{g}");
    }

    #[test]
    fn hub_ids_from_urls_and_snapshot_folders() {
        assert_eq!(hub_id_of_url("https://huggingface.co/org/m/"), "org/m");
        let root = tempfile::tempdir().unwrap();
        let snap = root.path().join("models--org--Model-1B/snapshots/abc");
        std::fs::create_dir_all(&snap).unwrap();
        assert_eq!(hub_snapshot_id(&snap).as_deref(), Some("org/Model-1B"));
        assert_eq!(hub_snapshot_id(root.path()), None);
    }
}
