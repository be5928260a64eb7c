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
