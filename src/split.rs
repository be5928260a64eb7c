//! GGUF outputs written as split sets, in llama-gguf-split's layout
//! (`tools/gguf-split/gguf-split.cpp`): the same tensors in the same order, cut where it cuts
//! them; `split.no`, `split.tensors.count` and `split.count` in every file, in the order it
//! leaves them; every other key in the first file only; files named `NAME-0000K-of-0000N.gguf`.
//! Splitting smelt's unsplit output with llama-gguf-split gives the same bytes.

use crate::error::{Error, Result};
use crate::gguf::{Metadata, Value, DEFAULT_ALIGNMENT};
use crate::write::{OutputFile, TensorProducer};
use std::path::{Path, PathBuf};

/// How big one file of a split set may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitLimit {
    /// Tensor data bytes per file (`--split-max-size`); headers are not counted, as in
    /// llama-gguf-split.
    Bytes(u64),
    /// Tensors per file (`--split-max-tensors`).
    Tensors(usize),
    /// `--shards N`: N files of balanced work (values), cut at the same tensors for every
    /// type (see `crate::shard`).
    Balanced(usize),
}

/// `--split-max-size`: a whole number with the unit K, M or G, decimal (1M = 1,000,000 bytes)
/// as llama-gguf-split reads its M and G. Anything else is refused rather than guessed at:
/// llama-gguf-split reads `1.5G` as 1 GB, and a bare `4` would mean 4-byte files.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let bad = |why: String| {
        format!("{why}; give a whole number with a unit K, M or G (decimal: 1M = 1000000 bytes, as llama-gguf-split)")
    };
    let (digits, unit) = match text.char_indices().last() {
        Some((i, 'K')) => (&text[..i], 1_000u64),
        Some((i, 'M')) => (&text[..i], 1_000_000),
        Some((i, 'G')) => (&text[..i], 1_000_000_000),
        Some((_, c)) if !c.is_ascii_digit() => return Err(bad(format!("unknown unit `{c}`"))),
        _ => return Err(bad("no unit".into())),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("`{digits}` is not a whole number")));
    }
    let n: u64 = digits.parse().map_err(|_| bad("too large".into()))?;
    if n == 0 {
        return Err(bad("a split must hold something".into()));
    }
    n.checked_mul(unit).ok_or_else(|| bad("too large".into()))
}

/// `--split-max-tensors`: a whole number of at least 1.
pub fn parse_tensors(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("a split must hold at least one tensor".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a whole number of tensors".into()),
    }
}

/// The split (0-based) of each tensor, given each tensor's data size in file order.
///
/// llama-gguf-split's rule: by tensors, a new file every `n` tensors; by size, a new file
/// when the tensors so far plus the next (each padded to 32 bytes, whatever the file's
/// alignment) would pass the limit. So a tensor larger than the limit gets a file of its own.
/// One difference: llama-gguf-split stops with an error when the very first tensor is larger
/// than the limit (it would leave the first file empty); here it goes alone in the first file.
pub fn assign(sizes: &[u64], limit: SplitLimit) -> Vec<usize> {
    let mut parts = Vec::with_capacity(sizes.len());
    let (mut part, mut used) = (0usize, 0u64);
    for (i, &n) in sizes.iter().enumerate() {
        let padded = n
            .div_ceil(DEFAULT_ALIGNMENT)
            .saturating_mul(DEFAULT_ALIGNMENT);
        let new_file = i > 0
            && match limit {
                SplitLimit::Bytes(max) => used.saturating_add(padded) > max,
                SplitLimit::Tensors(max) => i % max.max(1) == 0,
                // Cut by values, not bytes: `split_outputs` calls `crate::shard`.
                SplitLimit::Balanced(_) => false,
            };
        if new_file {
            part += 1;
            used = padded;
        } else {
            used = used.saturating_add(padded);
        }
        parts.push(part);
    }
    parts
}

/// The order of the split keys, which differs between the two llama.cpp tools that write
/// split sets (ggml's setters move a key they overwrite to the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitKeys {
    /// llama-quantize --keep-split: `split.no`, `split.count`, `split.tensors.count`.
    LlamaQuantize,
    /// llama-gguf-split: `split.no`, `split.tensors.count`, `split.count` (it sets the count
    /// last, once it knows it).
    GgufSplit,
}

/// File `no` (0-based) of `count` of the split set of `target`: `NAME-0000K-of-0000N.gguf` for
/// a target `NAME.gguf` (any other name keeps its extension before the suffix, as
/// llama-quantize --keep-split names it).
pub fn part_path(target: &Path, no: usize, count: usize) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let name = target.file_name().unwrap_or_default().as_bytes();
    let stem = name.strip_suffix(b".gguf").unwrap_or(name);
    let mut part = std::ffi::OsStr::from_bytes(stem).to_os_string();
    part.push(crate::gguf::split_file_name("", no as u64, count as u64));
    target.with_file_name(part)
}

/// `file` as a split set of `count` files: tensor `k` of the file (counting only the tensors it
/// holds) goes to file `part_of[k]`. The first file keeps the metadata; every file gets the
/// split keys.
pub fn into_parts(
    file: OutputFile,
    part_of: &[usize],
    count: usize,
    keys: SplitKeys,
) -> Result<Vec<OutputFile>> {
    let n_tensors = file.tensors.iter().flatten().count();
    if part_of.len() != n_tensors {
        return Err(Error::Invalid(format!(
            "{}: split plan has {} tensors for {n_tensors}",
            file.path.display(),
            part_of.len()
        )));
    }
    if part_of.iter().any(|&p| p >= count) {
        return Err(Error::Invalid(format!(
            "{}: split plan names a file past {count}",
            file.path.display()
        )));
    }
    // The format's counters: split.no and split.count are u16, split.tensors.count i32.
    let (Ok(count16), Ok(tensors32)) = (u16::try_from(count), i32::try_from(n_tensors)) else {
        return Err(Error::Invalid(format!(
            "{}: {count} files of {n_tensors} tensors is more than a GGUF split set can count \
             (at most 65535 files): raise --split-max-size or --split-max-tensors",
            file.path.display()
        )));
    };
    let mut parts: Vec<OutputFile> = (0..count)
        .map(|no| {
            let mut metadata = if no == 0 {
                file.metadata.clone()
            } else {
                Metadata::new()
            };
            let no = Value::U16(no as u16);
            let (count, tensors) = (Value::U16(count16), Value::I32(tensors32));
            metadata.set_last("split.no", no);
            match keys {
                SplitKeys::LlamaQuantize => {
                    metadata.set_last("split.count", count);
                    metadata.set_last("split.tensors.count", tensors);
                }
                SplitKeys::GgufSplit => {
                    metadata.set_last("split.tensors.count", tensors);
                    metadata.set_last("split.count", count);
                }
            }
            OutputFile {
                path: PathBuf::new(),
                metadata,
                tensors: vec![None; file.tensors.len()],
            }
        })
        .collect();
    for (k, p) in parts.iter_mut().enumerate() {
        p.path = part_path(&file.path, k, count);
    }
    let mut held = part_of.iter();
    for (pos, t) in file.tensors.into_iter().enumerate() {
        if let Some(t) = t {
            let part = *held
                .next()
                .expect("one part per held tensor, checked above");
            parts[part].tensors[pos] = Some(t);
        }
    }
    Ok(parts)
}

/// Every output of a plan as llama-gguf-split would split it under `limit`; `order` maps the
/// outputs' tensor positions to the producer's tensors (for their shapes).
pub fn split_outputs(
    outputs: Vec<OutputFile>,
    order: &[usize],
    producer: &dyn TensorProducer,
    limit: SplitLimit,
) -> Result<Vec<OutputFile>> {
    let mut split = Vec::with_capacity(outputs.len());
    for o in outputs {
        let mut sizes = Vec::with_capacity(o.tensors.len());
        for (&src, t) in order.iter().zip(&o.tensors) {
            let Some(t) = t else { continue };
            let n: u64 = producer.shape(src).iter().product();
            sizes.push(t.ty.bytes_for(n).ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor `{}`: {n} values do not fill whole {} blocks",
                    t.name, t.ty
                ))
            })?);
        }
        let part_of = match limit {
            SplitLimit::Balanced(n) => {
                let held: Vec<usize> = order
                    .iter()
                    .zip(&o.tensors)
                    .filter(|(_, t)| t.is_some())
                    .map(|(&i, _)| i)
                    .collect();
                crate::shard::balanced_parts(&crate::shard::work_of(&held, producer), n)
                    .map_err(|e| Error::Invalid(format!("--shards: {e}")))?
            }
            _ => assign(&sizes, limit),
        };
        let count = part_of.last().map_or(1, |&p| p + 1);
        split.extend(into_parts(o, &part_of, count, SplitKeys::GgufSplit)?);
    }
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_llama_gguf_split_reads_them() {
        assert_eq!(parse_size("1K"), Ok(1_000));
        assert_eq!(parse_size("128M"), Ok(128_000_000));
        assert_eq!(parse_size("4G"), Ok(4_000_000_000));
        for bad in [
            "0M",
            "4",
            "4GB",
            "4GiB",
            "1.5G",
            "-1G",
            "G",
            "",
            "4g",
            " 4G",
            "99999999999999G",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("K, M or G"), "{bad}: {err}");
        }
        assert_eq!(parse_tensors("3"), Ok(3));
        assert!(parse_tensors("0").is_err() && parse_tensors("x").is_err());
    }

    #[test]
    fn splits_start_where_llama_gguf_split_starts_them() {
        // By count: every n tensors.
        assert_eq!(
            assign(&[1; 7], SplitLimit::Tensors(3)),
            [0, 0, 0, 1, 1, 1, 2]
        );
        assert_eq!(assign(&[1; 3], SplitLimit::Tensors(5)), [0, 0, 0]);
        // By size, each tensor padded to 32 bytes: 32 + 32 + 64 = 128 fits, one more does not.
        assert_eq!(
            assign(&[10, 32, 64, 1], SplitLimit::Bytes(128)),
            [0, 0, 0, 1]
        );
        // A tensor over the limit goes alone, also first.
        assert_eq!(
            assign(&[500, 10, 400, 10, 10], SplitLimit::Bytes(100)),
            [0, 1, 2, 3, 3]
        );
        assert_eq!(assign(&[], SplitLimit::Bytes(100)), Vec::<usize>::new());
    }

    #[test]
    fn part_names_follow_llama_split_path() {
        assert_eq!(
            part_path(Path::new("d/m-Q8_0.gguf"), 0, 3),
            Path::new("d/m-Q8_0-00001-of-00003.gguf")
        );
        assert_eq!(
            part_path(Path::new("m"), 11, 12),
            Path::new("m-00012-of-00012.gguf")
        );
        assert_eq!(
            part_path(Path::new("m.bin"), 0, 2),
            Path::new("m.bin-00001-of-00002.gguf")
        );
    }
}
