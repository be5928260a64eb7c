//! llama.cpp importance-matrix files: the legacy binary `.dat` and the GGUF format
//! (`<tensor>.in_sum2` / `<tensor>.counts`), normalized as llama-quantize normalizes them.

use crate::error::{Error, Result};
use crate::gguf::{reader::GgufFile, GgmlType, Value, MAGIC};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Importance weights per tensor name, ready for the quantizers.
#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    pub path: PathBuf,
    /// Mean squared activation per column (per expert, experts concatenated).
    pub entries: HashMap<String, Arc<Vec<f32>>>,
    pub datasets: Vec<String>,
    /// Chunks the statistics were computed on (0 when unknown).
    pub chunk_count: i64,
}

impl Imatrix {
    pub fn load(path: impl AsRef<Path>) -> Result<Imatrix> {
        let path = path.as_ref();
        let mut magic = [0u8; 4];
        let mut file = crate::input::open(path)?;
        let is_gguf = std::io::Read::read_exact(&mut file, &mut magic)
            .map(|_| magic == MAGIC)
            .map_err(|e| Error::io(path, e))?;
        let im = if is_gguf {
            Self::load_gguf(path)?
        } else {
            Self::load_legacy(path)?
        };
        im.check_values()?;
        Ok(im)
    }

    /// Importance weights are means of squares: a NaN, an infinity or a negative value (a
    /// damaged or hand-edited file) would quantize whole tensors to NaN. Refuse it, naming
    /// the entry.
    fn check_values(&self) -> Result<()> {
        let mut names: Vec<&String> = self.entries.keys().collect();
        names.sort(); // the first bad entry in name order: the same error every run
        for name in names {
            let values = &self.entries[name];
            if let Some(i) = values.iter().position(|v| !v.is_finite() || *v < 0.0) {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "entry `{}`: value {} at column {i} is not a finite non-negative number",
                        crate::error::printable(name),
                        values[i]
                    ),
                ));
            }
        }
        Ok(())
    }

    fn load_gguf(path: &Path) -> Result<Imatrix> {
        let f = GgufFile::open(path)?;
        let meta = &f.metadata;
        let has = |k: &str| meta.contains(k);
        if !(has("imatrix.datasets") && has("imatrix.chunk_count") && has("imatrix.chunk_size")) {
            return Err(Error::format(path, "missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size)"));
        }
        let datasets = meta
            .get("imatrix.datasets")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let chunk_count = meta.get_u64("imatrix.chunk_count").unwrap_or(0) as i64;
        let mut pairs: HashMap<String, (Option<usize>, Option<usize>)> = HashMap::new();
        for (i, t) in f.tensors.iter().enumerate() {
            if let Some(n) = t.name.strip_suffix(".in_sum2") {
                pairs.entry(n.to_string()).or_default().0 = Some(i);
            } else if let Some(n) = t.name.strip_suffix(".counts") {
                pairs.entry(n.to_string()).or_default().1 = Some(i);
            }
        }
        if pairs.is_empty() {
            return Err(Error::format(path, "no imatrix entries"));
        }
        let read = |i: usize| -> Result<Vec<f32>> {
            let t = &f.tensors[i];
            if t.ty != GgmlType::F32 {
                return Err(Error::format(
                    path,
                    format!("imatrix tensor `{}` must be F32, is {}", t.name, t.ty),
                ));
            }
            Ok(f.tensor_data(i)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect())
        };
        let mut entries = HashMap::new();
        for (name, (sums, counts)) in pairs {
            let (Some(s), Some(c)) = (sums, counts) else {
                return Err(Error::format(
                    path,
                    format!("mismatched sums and counts for `{name}`"),
                ));
            };
            let sums = read(s)?;
            let counts: Vec<i64> = read(c)?.iter().map(|&x| x.round() as i64).collect();
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                return Err(Error::format(
                    path,
                    format!(
                        "`{name}`: {} sums do not split into {} experts",
                        sums.len(),
                        counts.len()
                    ),
                ));
            }
            let per = sums.len() / counts.len();
            let mut values = vec![0f32; sums.len()];
            for (j, &count) in counts.iter().enumerate() {
                let count = count as f32;
                for i in j * per..(j + 1) * per {
                    values[i] = if count > 0.0 { sums[i] / count } else { 1.0 };
                }
            }
            entries.insert(name, Arc::new(values));
        }
        Ok(Imatrix {
            path: path.to_path_buf(),
            entries,
            datasets,
            chunk_count,
        })
    }

    fn load_legacy(path: &Path) -> Result<Imatrix> {
        let bytes = crate::input::read(path)?;
        let mut r = LegacyReader {
            bytes: &bytes,
            pos: 0,
            path,
        };
        let n_entries = r.i32("entry count")?;
        if n_entries < 1 {
            return Err(Error::format(
                path,
                "not an imatrix file (no GGUF magic and no legacy entries)",
            ));
        }
        let mut entries = HashMap::new();
        for i in 0..n_entries {
            let len = r.i32("name length")?;
            if len < 0 {
                return Err(Error::format(
                    path,
                    format!("entry {} has a name of {len} bytes", i + 1),
                ));
            }
            let name =
                String::from_utf8_lossy(r.take(len as usize, &format!("name of entry {}", i + 1))?)
                    .into_owned();
            let ncall = r.i32("call count")?;
            let nval = r.i32("value count")?;
            if nval < 1 {
                return Err(Error::format(
                    path,
                    format!("entry `{name}` has {nval} values"),
                ));
            }
            let data = r.take(4 * nval as usize, &format!("values of `{name}`"))?;
            // The file holds sums scaled by the call count: divide it back out, as llama-quantize does.
            let values: Vec<f32> = data
                .chunks_exact(4)
                .map(|b| {
                    let s = f32::from_le_bytes(b.try_into().unwrap());
                    if ncall > 0 {
                        s / ncall as f32
                    } else {
                        s
                    }
                })
                .collect();
            entries.insert(name, Arc::new(values));
        }
        let mut chunk_count = 0i64;
        let mut datasets = Vec::new();
        if let Ok(n) = r.i32("chunk count") {
            chunk_count = n as i64;
            if let Ok(len) = r.i32("dataset length") {
                if let Ok(d) = r.take(len.max(0) as usize, "dataset name") {
                    if !d.is_empty() {
                        datasets.push(
                            String::from_utf8_lossy(d)
                                .trim_end_matches('\0')
                                .to_string(),
                        );
                    }
                }
            }
        }
        Ok(Imatrix {
            path: path.to_path_buf(),
            entries,
            datasets,
            chunk_count,
        })
    }

    /// Keep only entries whose names contain one of `include` (if any), then drop those
    /// containing one of `exclude` — llama-quantize's `--include-weights` / `--exclude-weights`.
    pub fn filter(&mut self, include: &[String], exclude: &[String]) {
        self.entries
            .retain(|name, _| !exclude.iter().any(|x| name.contains(x.as_str())));
        if !include.is_empty() {
            self.entries
                .retain(|name, _| include.iter().any(|x| name.contains(x.as_str())));
        }
    }

    /// The weights for a tensor whose rows have `row_len` values and which holds `n_expert`
    /// experts (1 for plain matrices), as llama-quantize matches them: by name, with the size
    /// checked (a wrong size is an error except for the token embedding, which is skipped).
    pub fn for_tensor(
        &self,
        name: &str,
        row_len: usize,
        n_expert: usize,
    ) -> Result<Option<Arc<Vec<f32>>>> {
        let Some(v) = self.entries.get(name) else {
            return Ok(None);
        };
        if v.len() == row_len * n_expert {
            return Ok(Some(v.clone()));
        }
        if name.starts_with("token_embd.") {
            return Ok(None);
        }
        Err(Error::format(
            &self.path,
            format!(
                "imatrix size {} is different from tensor size {} for {name}",
                v.len(),
                row_len * n_expert
            ),
        ))
    }

    /// The `quantize.imatrix.*` keys llama-quantize records, in its order.
    pub fn metadata(&self, file_arg: &str) -> Vec<(&'static str, Value)> {
        // llama-quantize passes these through 128-byte override buffers.
        let clip = |s: &str| {
            s.chars()
                .scan(0, |n, c| {
                    *n += c.len_utf8();
                    (*n <= 127).then_some(c)
                })
                .collect::<String>()
        };
        let mut kv = vec![("quantize.imatrix.file", Value::String(clip(file_arg)))];
        if let Some(d) = self.datasets.first() {
            kv.push(("quantize.imatrix.dataset", Value::String(clip(d))));
        }
        kv.push((
            "quantize.imatrix.entries_count",
            Value::U32(self.entries.len() as u32),
        ));
        if self.chunk_count > 0 {
            kv.push((
                "quantize.imatrix.chunks_count",
                Value::U32(self.chunk_count as u32),
            ));
        }
        kv
    }
}

/// One weight's statistics as llama-imatrix collects them: per column, the sum of the squared
/// inputs over every row (token) it saw, and how many rows that was. An expert stack holds
/// `counts.len()` blocks of columns, one count per block (one expert).
#[derive(Clone, Copy, Debug)]
pub struct ImatrixStats<'a> {
    pub name: &'a str,
    pub sums: &'a [f32],
    pub counts: &'a [u64],
}

/// The legacy binary imatrix (llama-imatrix `--output-format dat`), byte for byte as
/// llama-imatrix writes it: the entry count; per entry in name order, the name's length and
/// bytes, `ncall` (the largest count over `chunk_size`, rounded up), the value count and the
/// mean squares times `ncall` (1 times `ncall` for an expert that saw no rows); then the chunk
/// count and the dataset name. All integers are little-endian i32. Entries that saw no rows at
/// all are left out, as llama-imatrix leaves them out.
pub fn encode_legacy(
    stats: &[ImatrixStats],
    chunk_size: usize,
    n_chunks: usize,
    dataset: &str,
) -> Result<Vec<u8>> {
    let i32_of = |n: u64, what: &str| {
        i32::try_from(n).map_err(|_| {
            Error::Invalid(format!(
                "legacy imatrix: {what} {n} does not fit the format's 32-bit integers"
            ))
        })
    };
    if chunk_size == 0 {
        return Err(Error::Invalid("legacy imatrix: chunk size 0".into()));
    }
    let mut kept: Vec<&ImatrixStats> = stats
        .iter()
        .filter(|s| s.counts.iter().any(|&c| c > 0))
        .collect();
    // llama-imatrix sorts std::strings: byte order.
    kept.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut out = Vec::new();
    out.extend_from_slice(&i32_of(kept.len() as u64, "entry count")?.to_le_bytes());
    for s in kept {
        if s.sums.is_empty() || s.sums.len() % s.counts.len() != 0 {
            return Err(Error::Invalid(format!(
                "legacy imatrix: `{}` has {} sums for {} counts",
                crate::error::printable(s.name),
                s.sums.len(),
                s.counts.len()
            )));
        }
        out.extend_from_slice(&i32_of(s.name.len() as u64, "name length")?.to_le_bytes());
        out.extend_from_slice(s.name.as_bytes());
        let max = s.counts.iter().copied().max().unwrap_or(0);
        let ncall = i32_of(max.div_ceil(chunk_size as u64), "call count")?;
        out.extend_from_slice(&ncall.to_le_bytes());
        out.extend_from_slice(&i32_of(s.sums.len() as u64, "value count")?.to_le_bytes());
        // In f32 as llama-imatrix computes it: (sum / count) * ncall, or 1 * ncall where the
        // expert saw nothing.
        let per = s.sums.len() / s.counts.len();
        for (block, &count) in s.sums.chunks_exact(per).zip(s.counts) {
            for &sum in block {
                let (v, c) = if count == 0 {
                    (1.0f32, 1.0f32)
                } else {
                    (sum, count as f32)
                };
                out.extend_from_slice(&((v / c) * ncall as f32).to_le_bytes());
            }
        }
    }
    out.extend_from_slice(&i32_of(n_chunks as u64, "chunk count")?.to_le_bytes());
    out.extend_from_slice(&i32_of(dataset.len() as u64, "dataset name length")?.to_le_bytes());
    out.extend_from_slice(dataset.as_bytes());
    Ok(out)
}

/// Write [`encode_legacy`]'s bytes to `path` through an exclusive temporary file beside it,
/// renamed into place only once complete and synced.
pub fn write_legacy(
    path: &Path,
    stats: &[ImatrixStats],
    chunk_size: usize,
    n_chunks: usize,
    dataset: &str,
) -> Result<()> {
    let bytes = encode_legacy(stats, chunk_size, n_chunks, dataset)?;
    crate::output_files::write_whole(path, &bytes)
}

/// Bounds-checked reads over a legacy imatrix file.
struct LegacyReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> LegacyReader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let b = self
            .pos
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or_else(|| {
                Error::format(
                    self.path,
                    format!("truncated legacy imatrix: {what} at offset {}", self.pos),
                )
            })?;
        self.pos += n;
        Ok(b)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_layout_is_llama_imatrix_s() {
        let sums = [2.0f32, 4.0];
        let stats = [
            ImatrixStats {
                name: "b.weight",
                sums: &sums,
                counts: &[300],
            },
            ImatrixStats {
                name: "unused.weight",
                sums: &sums,
                counts: &[0],
            },
        ];
        let bytes = encode_legacy(&stats, 128, 2, "calib.txt").unwrap();
        let mut want = Vec::new();
        for v in [1i32, 8] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(b"b.weight");
        // 300 rows in chunks of 128: ncall 3 (rounded up); values are mean squares times 3.
        for v in [3i32, 2] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        for v in [2.0f32 / 300.0 * 3.0, 4.0 / 300.0 * 3.0] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        for v in [2i32, 9] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(b"calib.txt");
        assert_eq!(bytes, want);
    }

    #[test]
    fn legacy_round_trips_through_the_reader() {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            (0..64).map(|i| i as f32 * 0.25).collect(),
            (0..32).map(|i| 1.0 + i as f32).collect(),
        );
        let stats = [
            ImatrixStats {
                name: "blk.0.ffn_down.weight",
                sums: &a,
                counts: &[512],
            },
            ImatrixStats {
                name: "blk.0.attn_q.weight",
                sums: &b,
                counts: &[500],
            },
        ];
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("imatrix.dat");
        write_legacy(&path, &stats, 128, 4, "smelt:calibration.txt").unwrap();
        let im = Imatrix::load(&path).unwrap();
        assert_eq!(im.chunk_count, 4);
        assert_eq!(im.datasets, vec!["smelt:calibration.txt".to_string()]);
        assert_eq!(im.entries.len(), 2);
        for s in &stats {
            let got = &im.entries[s.name];
            assert_eq!(got.len(), s.sums.len());
            for (g, sum) in got.iter().zip(s.sums) {
                let want = sum / s.counts[0] as f32;
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs(),
                    "{}: {g} vs {want}",
                    s.name
                );
            }
        }
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn legacy_experts_share_the_largest_call_count() {
        // Three experts of two columns: 256 rows, 100 rows, none.
        let sums = [4.0f32, 8.0, 1.0, 2.0, 0.0, 0.0];
        let stats = [ImatrixStats {
            name: "blk.0.ffn_down_exps.weight",
            sums: &sums,
            counts: &[256, 100, 0],
        }];
        let bytes = encode_legacy(&stats, 128, 2, "").unwrap();
        let at = 4 + 4 + stats[0].name.len();
        let i32_at = |o: usize| i32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert_eq!((i32_at(at), i32_at(at + 4)), (2, 6));
        let values: Vec<f32> = bytes[at + 8..at + 8 + 24]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let want = [
            4.0 / 256.0 * 2.0,
            8.0 / 256.0 * 2.0,
            0.01 * 2.0,
            0.02 * 2.0,
            2.0,
            2.0,
        ];
        for (v, w) in values.iter().zip(want) {
            assert!((v - w).abs() <= 1e-6, "{values:?}");
        }
    }

    #[test]
    fn legacy_refuses_what_it_cannot_write() {
        assert!(encode_legacy(&[], 0, 0, "").is_err());
        let stats = [ImatrixStats {
            name: "w",
            sums: &[1.0, 2.0, 3.0],
            counts: &[1, 1],
        }];
        assert!(encode_legacy(&stats, 128, 1, "").is_err());
    }
}
