//! Sharded runs: one run's split outputs written by N independent processes (Slurm array
//! tasks, Kubernetes indexed Jobs, Ray tasks), each writing only its own split files, byte for
//! byte the files the single-process run writes.
//!
//! Every process computes the same plan from the inputs' headers alone: the output tensors in
//! order, cut into N contiguous parts of balanced work (values to produce, the same for every
//! type), and the split files of every output. Shard K writes the files whose first tensor lies
//! in part K, so it reads only (about) 1/N of the input. With `--shards N` the files are the
//! parts themselves: file K+1 of every type is shard K's.
//!
//! The plan's SHA-256 goes into every file as `smelt.shard_plan`, so that `release --finalize`
//! can refuse a set assembled from shards of different plans (another smelt build, other
//! flags). The single-process run of a sharded layout carries the key too (`--shards N`, or
//! `--shard 0/1` with `--split-max-size`), so its files are the shards' files; plain
//! `--split-max-size` runs keep llama-gguf-split's layout exactly, without it.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::quantize::QuantizePlan;
use crate::write::{decls, OutputFile, TensorProducer};
use std::path::Path;

/// The metadata key holding the plan's SHA-256 (hex) in every file of a sharded split set.
pub const PLAN_KEY: &str = "smelt.shard_plan";

/// Which shard of how many this process is (0-based: `0/4` .. `3/4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// `--shard K/N`, `--shard slurm` or `--shard k8s/N`, the engines' variables read through
/// `env` (the process environment in the CLI; a map in tests).
pub fn parse_spec(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<ShardSpec, String> {
    let number = |what: &str, v: &str| -> std::result::Result<usize, String> {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("{what} `{v}` is not a whole number"))
    };
    let var = |name: &str| -> std::result::Result<String, String> {
        env(name).ok_or_else(|| format!("{name} is not set: is this running as an array task?"))
    };
    let spec = if text == "slurm" {
        // Arrays may start anywhere (--array=1-8): the index counts from the array's first task.
        let id = number("SLURM_ARRAY_TASK_ID", &var("SLURM_ARRAY_TASK_ID")?)?;
        let count = number("SLURM_ARRAY_TASK_COUNT", &var("SLURM_ARRAY_TASK_COUNT")?)?;
        let min = match env("SLURM_ARRAY_TASK_MIN") {
            Some(v) => number("SLURM_ARRAY_TASK_MIN", &v)?,
            None => 0,
        };
        if let Some(step) = env("SLURM_ARRAY_TASK_STEP").filter(|s| s.trim() != "1") {
            return Err(format!(
                "SLURM_ARRAY_TASK_STEP is {step}: submit the array as consecutive tasks (--array=0-{})",
                count.saturating_sub(1)
            ));
        }
        let index = id.checked_sub(min).ok_or_else(|| {
            format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")
        })?;
        ShardSpec { index, count }
    } else if let Some(n) = text.strip_prefix("k8s/") {
        let index = number("JOB_COMPLETION_INDEX", &var("JOB_COMPLETION_INDEX")?)?;
        ShardSpec {
            index,
            count: number("the shard count", n)?,
        }
    } else if text == "k8s" {
        return Err("k8s/N: give the Job's completions as the count (--shard k8s/4)".into());
    } else {
        let (k, n) = text
            .split_once('/')
            .ok_or("expected K/N (0-based: 0/4 .. 3/4), slurm, or k8s/N")?;
        ShardSpec {
            index: number("K", k)?,
            count: number("N", n)?,
        }
    };
    if spec.count == 0 {
        return Err("the shard count must be at least 1".into());
    }
    if spec.index >= spec.count {
        return Err(format!(
            "shard {} of {}: shards count from 0, so K must be below N ({}..{})",
            spec.index,
            spec.count,
            0,
            spec.count - 1
        ));
    }
    Ok(spec)
}

/// Contiguous parts of balanced work: the part (0-based, of `n`) of each item given its work,
/// every part non-empty. Item `i` goes to the part its middle falls in, then the parts are
/// kept contiguous and none is left empty.
pub fn balanced_parts(work: &[u64], n: usize) -> Result<Vec<usize>> {
    if n == 0 || n > work.len() {
        return Err(Error::Invalid(format!(
            "{n} shards of {} tensors: every shard needs at least one tensor",
            work.len()
        )));
    }
    let total: u128 = work.iter().map(|&w| w as u128).sum::<u128>().max(1);
    let mut parts = Vec::with_capacity(work.len());
    let mut before = 0u128;
    let mut prev = 0usize;
    for (i, &w) in work.iter().enumerate() {
        let middle = before * 2 + w as u128;
        let by_work = ((middle * n as u128) / (total * 2)) as usize;
        // Never skip a part, and leave enough items for the parts still to come.
        let lowest = (n + i).saturating_sub(work.len()).max(prev);
        let highest = if i == 0 { 0 } else { prev + 1 };
        let p = by_work.clamp(lowest, highest.max(lowest)).min(n - 1);
        parts.push(p);
        prev = p;
        before += w as u128;
    }
    Ok(parts)
}

/// The work of each tensor of `order`: the values it holds (what every type's quantizer and
/// the reader go through).
pub fn work_of(order: &[usize], producer: &dyn TensorProducer) -> Vec<u64> {
    order
        .iter()
        .map(|&i| producer.shape(i).iter().product::<u64>())
        .collect()
}

/// The sharded plan of a run: its hash, the part of every tensor, and each file's shard.
#[derive(Clone, Debug)]
pub struct ShardPlan {
    pub count: usize,
    /// SHA-256 (hex) of the plan, as written under [`PLAN_KEY`].
    pub hash: String,
    /// Part (shard) of each position of the run's order.
    pub part_of: Vec<usize>,
    /// Shard of each output file, parallel to the plan's outputs.
    pub file_shard: Vec<usize>,
}

/// The shard of each output file: the part its first tensor lies in (a file with no tensors
/// goes to shard 0).
fn file_shards(outputs: &[OutputFile], part_of: &[usize]) -> Vec<usize> {
    outputs
        .iter()
        .map(|o| {
            o.tensors
                .iter()
                .position(Option::is_some)
                .map_or(0, |k| part_of[k])
        })
        .collect()
}

/// Make `plan` (already split) a sharded plan of `count` shards: hash it and put the hash in
/// every file's metadata, before the split keys (which stay last, in their order).
///
/// The hash covers the smelt build, the shard count, and every file: its name, its header
/// (metadata and tensor infos, so every flag that changes a byte of it; a merge's
/// `smelt.input.N.*` keys left out) and the imatrix weights of its tensors. It is computed
/// before the key is added.
pub fn shard_plan(
    plan: &mut QuantizePlan,
    producer: &dyn TensorProducer,
    count: usize,
) -> Result<ShardPlan> {
    use sha2::{Digest, Sha256};
    let part_of = balanced_parts(&work_of(&plan.order, producer), count)?;
    let mut h = Sha256::new();
    h.update(b"smelt shard plan v1\0");
    h.update(crate::cli::VERSION.as_bytes());
    h.update((count as u64).to_le_bytes());
    for o in &plan.outputs {
        let name = o.path.file_name().unwrap_or_default().as_encoded_bytes();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        // A merge's input hashes are left out: only shard 0 computes them (see
        // `merge::PlanOptions::skip_input_hashes`); the inputs' tensors stay in.
        let mut metadata = o.metadata.clone();
        metadata.retain(|k, _| !is_input_hash_key(k));
        let header =
            crate::gguf::writer::header_bytes(&metadata, &decls(o, &plan.order, producer))?;
        h.update((header.len() as u64).to_le_bytes());
        h.update(&header);
        for pt in o.tensors.iter().flatten() {
            match &pt.imatrix {
                Some(w) => {
                    h.update((w.len() as u64).to_le_bytes());
                    for v in w.iter() {
                        h.update(v.to_bits().to_le_bytes());
                    }
                }
                None => h.update(u64::MAX.to_le_bytes()),
            }
        }
    }
    let hash: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    for o in &mut plan.outputs {
        let split_keys: Vec<(String, Value)> = o
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("split."))
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        o.metadata.set_last(PLAN_KEY, Value::String(hash.clone()));
        for (k, v) in split_keys {
            o.metadata.set_last(k, v);
        }
    }
    let file_shard = file_shards(&plan.outputs, &part_of);
    Ok(ShardPlan {
        count,
        hash,
        part_of,
        file_shard,
    })
}

/// `smelt.input.N.file`, `.size` and `.sha256`: what a merge records of its inputs after
/// hashing them whole.
fn is_input_hash_key(key: &str) -> bool {
    key.strip_prefix("smelt.input.")
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(n, what)| {
            n.bytes().all(|b| b.is_ascii_digit()) && matches!(what, "file" | "size" | "sha256")
        })
}

/// What one shard writes, and what it leaves to the others.
#[derive(Clone, Debug)]
pub struct ShardSelection {
    /// Files of this shard already written by an earlier run of it (same plan, header and
    /// size): kept as they are.
    pub already_done: Vec<std::path::PathBuf>,
    /// Files of this shard.
    pub n_files: usize,
    /// Files of every shard.
    pub n_files_total: usize,
    /// Values this shard reads, of the run's total.
    pub work: u64,
    pub work_total: u64,
}

/// Keep only shard `index`'s files in `plan`, and only the tensors they hold in its order (so
/// that nothing else is read). Files an earlier run of the same shard finished (see
/// [`finished_earlier`]) are dropped from the plan too.
pub fn select(
    plan: &mut QuantizePlan,
    producer: &dyn TensorProducer,
    sp: &ShardPlan,
    index: usize,
) -> Result<ShardSelection> {
    let work = work_of(&plan.order, producer);
    let n_files_total = plan.outputs.len();
    let mut mine = Vec::new();
    let mut already_done = Vec::new();
    for (o, &s) in std::mem::take(&mut plan.outputs)
        .into_iter()
        .zip(&sp.file_shard)
    {
        if s != index {
            continue;
        }
        if finished_earlier(&o, &plan.order, producer)? {
            already_done.push(o.path.clone());
        } else {
            mine.push(o);
        }
    }
    let n_files = mine.len() + already_done.len();
    let needed: Vec<bool> = (0..plan.order.len())
        .map(|k| mine.iter().any(|o| o.tensors[k].is_some()))
        .collect();
    let order: Vec<usize> = plan
        .order
        .iter()
        .zip(&needed)
        .filter(|(_, &n)| n)
        .map(|(&i, _)| i)
        .collect();
    for o in &mut mine {
        o.tensors = std::mem::take(&mut o.tensors)
            .into_iter()
            .zip(&needed)
            .filter(|(_, &n)| n)
            .map(|(t, _)| t)
            .collect();
    }
    let work_mine = work
        .iter()
        .zip(&needed)
        .filter(|(_, &n)| n)
        .map(|(w, _)| w)
        .sum();
    plan.order = order;
    plan.outputs = mine;
    Ok(ShardSelection {
        already_done,
        n_files,
        n_files_total,
        work: work_mine,
        work_total: work.iter().sum(),
    })
}

/// Whether `o` is already on disk as this run would write it: it parses, its header is the
/// planned header byte for byte (the plan's hash included) and its size is the planned size.
/// The tensor data is not read again: the plan's hash pins the build and every input to the
/// bytes, and a file appears under its name only once complete (temp file and rename).
pub fn finished_earlier(
    o: &OutputFile,
    order: &[usize],
    producer: &dyn TensorProducer,
) -> Result<bool> {
    if !o.path.is_file() {
        return Ok(false);
    }
    let d = decls(o, order, producer);
    let header = crate::gguf::writer::header_bytes(&o.metadata, &d)?;
    let align = crate::gguf::writer::alignment(&o.metadata)?;
    let mut size = header.len() as u64;
    for t in &d {
        size += t.n_bytes()?.div_ceil(align) * align;
    }
    let on_disk = match std::fs::metadata(&o.path) {
        Ok(m) => m.len(),
        Err(_) => return Ok(false),
    };
    if on_disk != size {
        return Ok(false);
    }
    let mut head = vec![0u8; header.len()];
    let read =
        std::fs::File::open(&o.path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
    Ok(read.is_ok() && head == header)
}

/// The plan's hash a split file carries, if any.
pub fn plan_hash_of(path: &Path) -> Result<Option<String>> {
    let f = GgufFile::open(path)?;
    Ok(f.metadata.get_str(PLAN_KEY).map(str::to_string))
}

/// The split layout a run with `--shard` and the split flags gets: `--shards N` when no
/// other layout is given (the shard count names it), refused when they disagree.
pub fn layout(
    split: Option<crate::split::SplitLimit>,
    shard: Option<ShardSpec>,
    keep_split: bool,
) -> Result<Option<crate::split::SplitLimit>> {
    use crate::split::SplitLimit;
    let Some(s) = shard else {
        return Ok(split);
    };
    if keep_split {
        return Err(Error::Invalid(
            "--shard writes a split set of --shards N, --split-max-size or --split-max-tensors, not --keep-split".into(),
        ));
    }
    match split {
        None => Ok(Some(SplitLimit::Balanced(s.count))),
        Some(SplitLimit::Balanced(n)) if n != s.count => Err(Error::Invalid(format!(
            "--shards {n} and --shard {s} disagree on the number of shards"
        ))),
        other => Ok(other),
    }
}

/// A planned run made sharded when its flags ask for it (`--shards`, `--shard`): the plan
/// hashed and marked (see [`shard_plan`]); `None` for an unsharded run.
pub fn plan_for(
    plan: &mut QuantizePlan,
    producer: &dyn TensorProducer,
    split: Option<crate::split::SplitLimit>,
    shard: Option<ShardSpec>,
) -> Result<Option<ShardPlan>> {
    let count = match (split, shard) {
        (_, Some(s)) => s.count,
        (Some(crate::split::SplitLimit::Balanced(n)), None) => n,
        _ => return Ok(None),
    };
    shard_plan(plan, producer, count).map(Some)
}

/// One line on what a shard did: files, share of the work, bytes read.
pub fn summary(
    spec: ShardSpec,
    sel: &ShardSelection,
    hash: &str,
    io: Option<(u64, u64)>,
) -> String {
    let mut line = format!(
        "shard {spec}: {} of {} files (plan {}), {:.1}% of the values",
        sel.n_files,
        sel.n_files_total,
        &hash[..12.min(hash.len())],
        100.0 * sel.work as f64 / sel.work_total.max(1) as f64
    );
    if !sel.already_done.is_empty() {
        line += &format!(
            "; {} already written by an earlier run, kept",
            sel.already_done.len()
        );
    }
    if let Some((rchar, read_bytes)) = io {
        line += &format!(
            "; read {read_bytes} bytes from storage, {rchar} through read calls (/proc/self/io)"
        );
    }
    line
}

/// `--dry-run --json` of a sharded (or plain split) plan: every file with its shard, tensors
/// and size, and each shard's share of the work.
pub fn plan_json(
    plan: &QuantizePlan,
    producer: &dyn TensorProducer,
    sp: Option<&ShardPlan>,
) -> Result<serde_json::Value> {
    use serde_json::json;
    let work = work_of(&plan.order, producer);
    let mut files = Vec::new();
    for (f, o) in plan.outputs.iter().enumerate() {
        let d = decls(o, &plan.order, producer);
        let header = crate::gguf::writer::header_bytes(&o.metadata, &d)?;
        let align = crate::gguf::writer::alignment(&o.metadata)?;
        let mut bytes = header.len() as u64;
        for t in &d {
            bytes += t.n_bytes()?.div_ceil(align) * align;
        }
        let tensors: Vec<serde_json::Value> = d
            .iter()
            .map(|t| json!({"name": t.name, "type": t.ty.name(), "shape": t.shape}))
            .collect();
        files.push(json!({
            "file": o.path,
            "shard": sp.map(|s| s.file_shard[f]),
            "bytes": bytes,
            "tensors": tensors,
        }));
    }
    let shards: Vec<serde_json::Value> = match sp {
        Some(sp) => (0..sp.count)
            .map(|s| {
                let w: u64 = work
                    .iter()
                    .zip(&sp.part_of)
                    .filter(|(_, &p)| p == s)
                    .map(|(w, _)| w)
                    .sum();
                let first = sp.part_of.iter().position(|&p| p == s);
                let n = sp.part_of.iter().filter(|&&p| p == s).count();
                json!({
                    "shard": s,
                    "values": w,
                    "tensors": n,
                    "first_tensor": first.map(|k| producer.name(plan.order[k]).to_string()),
                    "files": sp.file_shard.iter().filter(|&&x| x == s).count(),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(json!({
        "smelt": crate::cli::VERSION,
        "plan_hash": sp.map(|s| s.hash.clone()),
        "shard_count": sp.map(|s| s.count),
        "values": work.iter().sum::<u64>(),
        "shards": shards,
        "files": files,
    }))
}

/// This process's I/O counters from `/proc/self/io` (Linux): `(rchar, read_bytes)`: bytes
/// passed through read calls, and bytes fetched from storage (page faults on mapped inputs
/// included, page-cache hits not).
pub fn io_counters() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("rchar:")?, field("read_bytes:")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec(text: &str, vars: &[(&str, &str)]) -> std::result::Result<ShardSpec, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_spec(text, &|k| map.get(k).cloned())
    }

    #[test]
    fn shard_specs_parse_from_flags_and_engines() {
        assert_eq!(spec("2/4", &[]), Ok(ShardSpec { index: 2, count: 4 }));
        assert!(spec("4/4", &[]).unwrap_err().contains("below N"));
        assert!(spec("0/0", &[]).unwrap_err().contains("at least 1"));
        assert!(spec("x/4", &[]).is_err() && spec("3", &[]).is_err());
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
        ];
        assert_eq!(spec("slurm", &slurm), Ok(ShardSpec { index: 2, count: 4 }));
        assert_eq!(
            spec("slurm", &slurm[..2]).unwrap_err(),
            "shard 5 of 4: shards count from 0, so K must be below N (0..3)"
        );
        assert!(spec("slurm", &[])
            .unwrap_err()
            .contains("SLURM_ARRAY_TASK_ID is not set"));
        let stepped = [slurm[0], slurm[1], slurm[2], ("SLURM_ARRAY_TASK_STEP", "2")];
        assert!(spec("slurm", &stepped).unwrap_err().contains("STEP"));
        let k8s = [("JOB_COMPLETION_INDEX", "3")];
        assert_eq!(spec("k8s/4", &k8s), Ok(ShardSpec { index: 3, count: 4 }));
        assert!(spec("k8s/3", &k8s).is_err() && spec("k8s", &k8s).is_err());
        assert!(spec("k8s/4", &[])
            .unwrap_err()
            .contains("JOB_COMPLETION_INDEX"));
    }

    #[test]
    fn only_a_merges_input_records_are_left_out_of_the_hash() {
        for k in [
            "smelt.input.0.sha256",
            "smelt.input.12.size",
            "smelt.input.3.file",
        ] {
            assert!(is_input_hash_key(k), "{k}");
        }
        for k in [
            "smelt.input.x.sha256",
            "smelt.recipe",
            "smelt.input.0.weight",
            "general.name",
        ] {
            assert!(!is_input_hash_key(k), "{k}");
        }
    }

    #[test]
    fn parts_are_contiguous_balanced_and_never_empty() {
        assert_eq!(balanced_parts(&[1; 6], 3).unwrap(), [0, 0, 1, 1, 2, 2]);
        assert_eq!(
            balanced_parts(&[5, 1, 1, 1, 1, 1], 2).unwrap(),
            [0, 1, 1, 1, 1, 1]
        );
        // One huge tensor first still leaves every part a tensor.
        assert_eq!(balanced_parts(&[100, 1, 1], 3).unwrap(), [0, 1, 2]);
        assert_eq!(balanced_parts(&[1, 1, 100], 3).unwrap(), [0, 1, 2]);
        assert_eq!(balanced_parts(&[3, 3, 3], 1).unwrap(), [0, 0, 0]);
        assert!(balanced_parts(&[1, 1], 3).is_err());
        for n in 1..=7 {
            let work: Vec<u64> = (0..40).map(|i| (i * 37 % 11 + 1) as u64).collect();
            let p = balanced_parts(&work, n).unwrap();
            assert_eq!(p[0], 0);
            assert_eq!(*p.last().unwrap(), n - 1);
            assert!(
                p.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
                "{p:?}"
            );
        }
    }
}
