//! `smelt imatrix`: an importance matrix collected with smelt's forward pass, written in
//! llama-imatrix's GGUF or legacy `.dat` format.
//!
//! `smelt imatrix --combine`: partial importance matrices (e.g. `--chunks A..B` of one text,
//! computed by different machines) summed into one, as llama-imatrix combines its
//! `--in-file`s: the raw sums (f32, added in the order the files are given) and token counts
//! per weight, the datasets listed in order, the chunk count the largest count divided by the
//! chunk size.

use crate::error::{Error, Result};
use crate::eval::ImatrixEntry;
use crate::gguf::GgufFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file formats of `imatrix --output-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImatrixFormat {
    /// GGUF: `<tensor>.in_sum2` and `<tensor>.counts`, the `imatrix.*` keys.
    Gguf,
    /// llama-imatrix's legacy binary `.dat`.
    Dat,
}

/// What to collect, as `smelt imatrix`'s options say.
pub struct ImatrixRequest<'a> {
    /// A model, or a merge recipe merged in memory.
    pub model: &'a Path,
    /// `None`: the built-in calibration text.
    pub text: Option<&'a Path>,
    pub output: &'a Path,
    pub format: ImatrixFormat,
    pub n_ctx: usize,
    pub chunks: Option<ChunkRange>,
    pub batch: Option<usize>,
    pub display: crate::progress::Display,
}

/// What was collected: chunks and the dataset's name, as recorded in the file.
pub struct ImatrixRun {
    pub n_chunks: usize,
    pub dataset: String,
    pub elapsed: std::time::Duration,
}

/// Collect the statistics over the text's chunks and write them to `req.output`.
pub fn collect(req: &ImatrixRequest<'_>) -> Result<ImatrixRun> {
    use crate::eval::{collect_imatrix, tokenize, write_imatrix_gguf, EvalOptions};
    use crate::quant::imatrix::{write_legacy, ImatrixStats};
    let store = crate::eval::open(req.model)?;
    let mut inputs = store.input_files();
    inputs.extend(req.text.map(Path::to_path_buf));
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    crate::output_files::check_outputs(&inputs, &[req.output])?;
    let (text, dataset) = crate::app::text::eval_text(req.text)?;
    let all_tokens = tokenize(store.as_ref(), &text)?;
    let (tokens, max_chunks) = match req.chunks {
        Some(c) => c.slice(&all_tokens, req.n_ctx)?,
        None => (&all_tokens[..], None),
    };
    let opts = EvalOptions {
        n_ctx: req.n_ctx,
        max_chunks,
        batch: req.batch,
    };
    let n_tokens = (crate::eval::n_chunks(tokens.len(), &opts) * opts.n_ctx) as u64;
    let progress = crate::progress::Progress::new(
        req.display,
        "collecting",
        n_tokens * store.n_layer(),
        crate::progress::Unit::TokenLayers(store.n_layer()),
    );
    let started = std::time::Instant::now();
    let (stats, n_chunks) = collect_imatrix(store.as_ref(), tokens, &opts, &progress)?;
    progress.finish();
    match req.format {
        ImatrixFormat::Gguf => {
            write_imatrix_gguf(req.output, stats, &dataset, n_chunks, req.n_ctx)?
        }
        ImatrixFormat::Dat => {
            let stats = stats.into_entries();
            let entries: Vec<ImatrixStats> = stats
                .iter()
                .map(|(name, e)| ImatrixStats {
                    name,
                    sums: &e.sums,
                    counts: &e.counts,
                })
                .collect();
            write_legacy(req.output, &entries, req.n_ctx, n_chunks, &dataset)?
        }
    }
    Ok(ImatrixRun {
        n_chunks,
        dataset,
        elapsed: started.elapsed(),
    })
}

/// Sums of several imatrix files.
#[derive(Debug, Default)]
pub struct Combined {
    pub entries: BTreeMap<String, ImatrixEntry>,
    pub datasets: Vec<String>,
    pub chunk_size: usize,
    /// The largest token count of any weight, in chunks (llama-imatrix's `m_last_chunk`).
    pub chunk_count: usize,
}

/// `path`'s raw sums and counts, datasets and chunk size (GGUF imatrix files only: the legacy
/// `.dat` format keeps means, not sums).
fn load_raw(path: &Path) -> Result<(BTreeMap<String, ImatrixEntry>, Vec<String>, usize)> {
    let f = GgufFile::open(path)?;
    let md = &f.metadata;
    if md.get_str("general.type") != Some("imatrix") {
        return Err(Error::format(
            path,
            "not a GGUF imatrix (general.type is not `imatrix`); --combine takes the GGUF files of llama-imatrix or smelt imatrix",
        ));
    }
    let chunk_size = md.get_u64("imatrix.chunk_size").ok_or_else(|| {
        Error::format(path, "no imatrix.chunk_size: cannot combine it with others")
    })? as usize;
    let datasets: Vec<String> = md
        .get("imatrix.datasets")
        .and_then(|v| v.items())
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let f32s = |i: usize| -> Result<Vec<f32>> {
        let t = &f.tensors[i];
        if t.ty != crate::gguf::GgmlType::F32 {
            return Err(Error::format(
                path,
                format!("tensor `{}` is {}, not F32", t.name, t.ty),
            ));
        }
        Ok(f.tensor_data(i)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let mut entries = BTreeMap::new();
    for (i, t) in f.tensors.iter().enumerate() {
        let Some(name) = t.name.strip_suffix(".in_sum2") else {
            continue;
        };
        let counts_name = format!("{name}.counts");
        let c = f
            .tensors
            .iter()
            .position(|t| t.name == counts_name)
            .ok_or_else(|| Error::format(path, format!("`{}` has no `{counts_name}`", t.name)))?;
        let sums = f32s(i)?;
        let counts: Vec<u64> = f32s(c)?.iter().map(|&x| x as u64).collect();
        if counts.is_empty() || sums.len() % counts.len() != 0 {
            return Err(Error::format(
                path,
                format!("`{name}`: {} sums for {} counts", sums.len(), counts.len()),
            ));
        }
        entries.insert(name.to_string(), ImatrixEntry { sums, counts });
    }
    Ok((entries, datasets, chunk_size))
}

/// The files summed in the order given.
pub fn combine(paths: &[&Path]) -> Result<Combined> {
    if paths.len() < 2 {
        return Err(Error::Invalid(
            "--combine takes at least two imatrix files".into(),
        ));
    }
    let mut out = Combined::default();
    for (k, path) in paths.iter().enumerate() {
        let (entries, datasets, chunk_size) = load_raw(path)?;
        if k == 0 {
            out.chunk_size = chunk_size;
        } else if chunk_size != out.chunk_size {
            return Err(Error::format(
                path,
                format!(
                    "chunks of {chunk_size} tokens, {} has chunks of {}: partial matrices combine only at one --ctx",
                    paths[0].display(),
                    out.chunk_size
                ),
            ));
        }
        for (name, e) in entries {
            let acc = out.entries.entry(name.clone()).or_default();
            if acc.sums.is_empty() {
                acc.sums = vec![0.0; e.sums.len()];
                acc.counts = vec![0; e.counts.len()];
            }
            if acc.sums.len() != e.sums.len() || acc.counts.len() != e.counts.len() {
                return Err(Error::format(
                    path,
                    format!(
                        "`{name}` has {} sums and {} counts, the files before it {} and {}: not the same model",
                        e.sums.len(),
                        e.counts.len(),
                        acc.sums.len(),
                        acc.counts.len()
                    ),
                ));
            }
            for (a, v) in acc.sums.iter_mut().zip(&e.sums) {
                *a += v;
            }
            for (a, v) in acc.counts.iter_mut().zip(&e.counts) {
                *a += v;
            }
        }
        out.datasets.extend(datasets);
    }
    let max_count = out
        .entries
        .values()
        .flat_map(|e| e.counts.iter())
        .copied()
        .max()
        .unwrap_or(0);
    out.chunk_count = (max_count / out.chunk_size.max(1) as u64) as usize;
    Ok(out)
}

/// `--chunks N` (the first N) or `--chunks A..B` (chunks A to B-1, counting from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRange {
    First(usize),
    Range(usize, usize),
}

impl std::str::FromStr for ChunkRange {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let num = |t: &str| {
            t.trim().parse::<usize>().map_err(|_| {
                format!("`{t}` is not a whole number; give N or A..B (chunks A to B-1, from 0)")
            })
        };
        match s.split_once("..") {
            None => Ok(ChunkRange::First(num(s)?)),
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if b <= a {
                    return Err(format!("{a}..{b} holds no chunk (A..B is chunks A to B-1)"));
                }
                Ok(ChunkRange::Range(a, b))
            }
        }
    }
}

impl ChunkRange {
    /// The tokens of these chunks of `n_ctx` and how many chunks they are; a range past the
    /// text's end is an error naming how many chunks it holds.
    pub fn slice<'a>(&self, tokens: &'a [u32], n_ctx: usize) -> Result<(&'a [u32], Option<usize>)> {
        match *self {
            ChunkRange::First(n) => Ok((tokens, Some(n))),
            ChunkRange::Range(a, b) => {
                let available = tokens.len() / n_ctx.max(1);
                if b > available {
                    return Err(Error::Invalid(format!(
                        "--chunks {a}..{b}: the text holds {available} chunks of {n_ctx} tokens (0..{available})"
                    )));
                }
                Ok((&tokens[a * n_ctx..b * n_ctx], Some(b - a)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ranges_parse() {
        assert_eq!("8".parse::<ChunkRange>(), Ok(ChunkRange::First(8)));
        assert_eq!("2..5".parse::<ChunkRange>(), Ok(ChunkRange::Range(2, 5)));
        assert!("5..5".parse::<ChunkRange>().is_err());
        assert!("a..5".parse::<ChunkRange>().is_err());
        let tokens: Vec<u32> = (0..100).collect();
        let (s, n) = ChunkRange::Range(1, 3).slice(&tokens, 10).unwrap();
        assert_eq!((s.first(), s.len(), n), (Some(&10), 20, Some(2)));
        assert!(ChunkRange::Range(5, 11).slice(&tokens, 10).is_err());
    }
}
