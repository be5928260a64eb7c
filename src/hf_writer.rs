//! Hugging Face folder output (`--format safetensors`): the same tensors the GGUF writer
//! would write, under their Hugging Face names and row order, as F32/F16/BF16 safetensors
//! shards with `model.safetensors.index.json`, plus a `config.json` and the tokenizer files,
//! so that a merge can be fine-tuned or loaded by `transformers` afterwards.
//!
//! - Names come from the architecture table in reverse ([`Architecture::hf_name`]); q/k rows
//!   are put back into Hugging Face's order (the inverse of the converter's head permutation).
//! - `config.json` is the template folder's (the tokenizer source, else the base model) with
//!   `num_hidden_layers` and `torch_dtype` updated; when every input is a GGUF it is rebuilt
//!   from the GGUF hyper-parameters through the same table.
//! - Each shard's header is known before any data (names, shapes and the dtype fix every
//!   offset), so tensors stream in one at a time; memory holds one tensor at most.
//! - Everything is written into a temporary folder beside the target and moved into place
//!   only when complete: an interrupted run leaves no partial model behind.
//! - A target folder that already holds model weights (`*.safetensors`, an index) is refused
//!   unless `force`: then, and only then, the weights the new model does not name are
//!   removed, so `transformers` never loads a mix.

use crate::arch::{self, Architecture, Permute};
use crate::convert::{ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT, ROPE_FREQS};
use crate::error::{Error, Result};
use crate::formats::safetensors::{dtype_name, torch_dtype, INDEX_NAME};
use crate::gguf::{GgmlType, Metadata, Value};
use crate::quant::float;
use crate::store::{RowOrder, Transform};
use crate::write::TensorProducer;
use serde_json::{json, Map, Value as Json};
use std::io::Write;
use std::path::{Path, PathBuf};

/// mergekit's default `--out-shard-size` (5B bytes).
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// Files of a Hugging Face folder that describe the tokenizer and generation, copied as they
/// are from the tokenizer source.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// What to write besides the tensors.
pub struct HfOutput<'a> {
    /// The model folder to create (or fill).
    pub dir: PathBuf,
    /// F32, F16 or BF16.
    pub dtype: GgmlType,
    pub shard_bytes: u64,
    /// The output's GGUF metadata (architecture, hyper-parameters, block count).
    pub metadata: &'a Metadata,
    /// An HF folder whose `config.json` is the template.
    pub config_from: Option<PathBuf>,
    /// An HF folder whose tokenizer files are copied.
    pub tokenizer_from: Option<PathBuf>,
    /// Extra text files (name, contents), e.g. the recipe.
    pub extra_files: Vec<(String, String)>,
    /// Key/values for each shard's `__metadata__` (besides `format: pt`).
    pub shard_metadata: Vec<(String, String)>,
    /// Replace the weights of a model already in `dir` (else such a folder is refused).
    pub force: bool,
    /// How the writing progress is shown.
    pub display: crate::progress::Display,
}

/// What was written.
#[derive(Debug)]
pub struct HfReport {
    pub dir: PathBuf,
    pub bytes: u64,
    pub n_tensors: usize,
    pub files: Vec<String>,
    /// Things a user should know (no tokenizer files, dropped tensors).
    pub warnings: Vec<String>,
}

/// The Hugging Face model folder behind a model path: the folder itself, or the folder of a
/// safetensors file or index when it has a `config.json`.
pub fn hf_folder_of(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        return Some(path.to_path_buf());
    }
    let dir = path.parent()?;
    let is_safetensors = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .is_some_and(|n| n.ends_with(".safetensors") || n.ends_with(".index.json"));
    (is_safetensors && dir.join("config.json").is_file()).then(|| dir.to_path_buf())
}

/// The one dtype `--format safetensors` writes: the single `--types` entry, else `default`
/// (the recipe's). F32, F16 or BF16 only.
pub fn output_dtype(types: &[String], default: String) -> Result<GgmlType> {
    let name = match types {
        [] => default,
        [one] => one.clone(),
        more => {
            return Err(Error::Invalid(format!(
                "--format safetensors writes one dtype, got {}",
                more.join(",")
            )))
        }
    };
    crate::formats::safetensors::float_type_named(&name).ok_or_else(|| {
        Error::Invalid(format!(
            "--format safetensors writes F32, F16 or BF16, not `{name}`"
        ))
    })
}

/// Refuse an output folder that is the HF folder of an input (writing there would replace
/// the weights being read). `inputs`: each input's path and the name the recipe gives it;
/// `what` names the output in the message ("merge", "mixture").
pub fn check_output_is_no_input<'a>(
    output: &Path,
    inputs: impl IntoIterator<Item = (&'a Path, &'a str)>,
    what: &str,
) -> Result<()> {
    let Ok(out) = std::fs::canonicalize(output) else {
        return Ok(()); // not there yet: it holds nothing
    };
    for (path, reference) in inputs {
        if hf_folder_of(path).and_then(|f| std::fs::canonicalize(f).ok()) == Some(out.clone()) {
            return Err(Error::Invalid(format!(
                "{}: the output folder is the input `{reference}`: write the {what} elsewhere",
                output.display()
            )));
        }
    }
    Ok(())
}

/// The output's `smelt.*` provenance (the recipe aside, which goes in a file of its own) as
/// text, for each shard's metadata.
pub fn shard_provenance(metadata: &Metadata) -> Vec<(String, String)> {
    metadata
        .iter()
        .filter(|(k, _)| k.starts_with("smelt.") && *k != "smelt.recipe")
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.to_string(), text)
        })
        .collect()
}

/// One tensor as it goes to a shard: rows `first_row..first_row + n_rows` of producer tensor
/// `index` (all of them, or one expert of a stacked tensor).
struct Planned {
    index: usize,
    first_row: usize,
    n_rows: usize,
    hf_name: String,
    /// torch order (outermost first).
    shape: Vec<u64>,
    n_bytes: u64,
    rows: RowOrder,
    /// Undone on the way out (Gemma's norms are stored `+ 1` in GGUF).
    undo: Transform,
}

/// Write every tensor of `producer` as a Hugging Face folder.
pub fn write_hf_folder(producer: &dyn TensorProducer, out: &HfOutput) -> Result<HfReport> {
    let n = producer.n_tensors();
    if dtype_name(out.dtype).is_none() {
        return Err(Error::Invalid(format!(
            "--format safetensors writes F32, F16 or BF16, not {}",
            out.dtype
        )));
    }
    let arch_name = out.metadata.architecture().unwrap_or_default().to_string();
    let table = arch::by_gguf_name(&arch_name).ok_or_else(|| {
        Error::Invalid(format!(
            "cannot write a Hugging Face folder for architecture `{arch_name}` (supported: {})",
            arch::ARCHITECTURES
                .iter()
                .map(|a| a.gguf_name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    check_output_dir(&out.dir, out.force)?;
    let mut warnings = Vec::new();
    let planned = plan_tensors(producer, n, table, out, &mut warnings)?;
    let shards = assign_shards(&planned, out.shard_bytes);

    let tmp_dir = crate::output_files::temp_dir_beside(&out.dir)?;
    let tmp = tmp_dir.path().to_path_buf();
    let total: u64 = planned
        .iter()
        .map(|p| (p.n_rows * producer.shape(p.index)[0] as usize) as u64)
        .sum();
    let progress = crate::progress::Progress::new(
        out.display,
        "writing",
        total,
        crate::progress::Unit::Weights,
    );
    let result = (|| -> Result<HfReport> {
        let n_shards = shards.len();
        let mut files = Vec::new();
        let mut weight_map = Map::new();
        let mut total = 0u64;
        for (k, shard) in shards.iter().enumerate() {
            let file = if n_shards == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, n_shards)
            };
            let tensors: Vec<&Planned> = shard.iter().map(|&p| &planned[p]).collect();
            write_shard(producer, &tmp.join(&file), &tensors, out, &progress)?;
            for t in &tensors {
                weight_map.insert(t.hf_name.clone(), Json::String(file.clone()));
                total += t.n_bytes;
            }
            files.push(file);
        }
        if n_shards > 1 {
            let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            write_text(&tmp.join(INDEX_NAME), pretty(&index))?;
            files.push(INDEX_NAME.into());
        }
        let has_output = planned
            .iter()
            .any(|p| producer.name(p.index) == "output.weight");
        // The embedding's rows: the vocabulary size transformers checks the weights against.
        let n_vocab = (0..n)
            .find(|&i| producer.name(i) == "token_embd.weight")
            .and_then(|i| producer.shape(i).get(1).copied());
        let config = config_json(table, out, has_output, n_vocab, &mut warnings)?;
        write_text(&tmp.join("config.json"), pretty(&config))?;
        files.push("config.json".into());
        match &out.tokenizer_from {
            Some(dir) => {
                for name in TOKENIZER_FILES {
                    let src = dir.join(name);
                    if let Some(bytes) = crate::input::read_in(dir, &src)? {
                        write_text(&tmp.join(name), bytes)?;
                        files.push((*name).into());
                    }
                }
            }
            // A GGUF source: the tokenizer files rebuilt from its `tokenizer.*` keys.
            None => match crate::tokenizer::export::hf_tokenizer_files(out.metadata) {
                Ok(rebuilt) => {
                    for (name, text) in rebuilt {
                        write_text(&tmp.join(&name), &text)?;
                        files.push(name);
                    }
                }
                Err(why) => warnings.push(format!("no tokenizer files written: {why}")),
            },
        }
        for (name, text) in &out.extra_files {
            write_text(&tmp.join(name), text)?;
            files.push(name.clone());
        }
        Ok(HfReport {
            dir: out.dir.clone(),
            bytes: total,
            n_tensors: planned.len(),
            files,
            warnings: Vec::new(),
        })
    })()
    .and_then(|mut report| {
        crate::output_files::commit(|| move_into_place(&tmp, &out.dir, &report.files, out.force))?;
        report.warnings = std::mem::take(&mut warnings);
        Ok(report)
    });
    progress.finish();
    let _ = tmp_dir.close();
    crate::output_files::forget(&tmp);
    result
}

/// Names, shapes and row orders of every tensor, checked before anything is written.
fn plan_tensors(
    producer: &dyn TensorProducer,
    n: usize,
    table: &Architecture,
    out: &HfOutput,
    warnings: &mut Vec<String>,
) -> Result<Vec<Planned>> {
    let arch_name = table.gguf_name;
    let head_count = |key: &str| {
        out.metadata
            .get_u64(&format!("{arch_name}.attention.{key}"))
    };
    let n_head = head_count("head_count");
    let n_head_kv = head_count("head_count_kv").or(n_head);
    let mut planned = Vec::with_capacity(n);
    for i in 0..n {
        let name = producer.name(i);
        if [ROPE_FREQS, ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT].contains(&name) {
            // Generated by the converter from config.json's RoPE parameters, which the config
            // template carries; not Hugging Face tensors.
            warnings.push(format!(
                "`{name}` is not written (config.json's RoPE parameters hold it)"
            ));
            continue;
        }
        let gguf_shape = producer.shape(i);
        let rule = table.rule_for_canonical(name).map(|(r, _)| r);
        let undo = rule.map_or(Transform::None, |r| r.transform);
        let permute = rule.map_or(Permute::None, |r| r.permute);
        let row_len = gguf_shape[0];
        let n_rows = gguf_shape[1..].iter().product::<u64>() as usize;
        // A stacked expert tensor (ggml [cols, rows, n_expert]) is one HF tensor per expert.
        let parts: Vec<(String, usize, usize, Vec<u64>)> =
            match (table.hf_name(name), gguf_shape.len()) {
                (Some(hf), _) => {
                    let shape: Vec<u64> = gguf_shape.iter().rev().copied().collect();
                    vec![(hf, 0, n_rows, shape)]
                }
                (None, 3) if table.hf_expert_name(name, 0).is_some() => {
                    let (rows, n_expert) = (gguf_shape[1] as usize, gguf_shape[2] as usize);
                    (0..n_expert)
                        .map(|e| {
                            let hf = table.hf_expert_name(name, e).expect("an expert rule");
                            (hf, e * rows, rows, vec![rows as u64, row_len])
                        })
                        .collect()
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "tensor `{name}` has no Hugging Face name in the `{arch_name}` table"
                    )))
                }
            };
        for (hf_name, first_row, part_rows, shape) in parts {
            let heads = match permute {
                Permute::None => None,
                Permute::Heads => n_head,
                Permute::KvHeads => n_head_kv,
            };
            let rows = match (permute, heads) {
                (Permute::None, _) => RowOrder::AsStored,
                (_, Some(h)) if h > 0 && part_rows % (2 * h as usize) == 0 => {
                    RowOrder::HeadPermute { n_head: h as usize }
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "tensor `{name}`: cannot undo the q/k head permutation ({part_rows} rows, head counts {n_head:?}/{n_head_kv:?})"
                    )))
                }
            };
            let n_elements: u64 = shape.iter().product();
            planned.push(Planned {
                index: i,
                first_row,
                n_rows: part_rows,
                hf_name,
                shape,
                n_bytes: n_elements * out.dtype.type_size() as u64,
                rows,
                undo,
            });
        }
    }
    Ok(planned)
}

/// Tensors in order, cut into shards of at most `limit` bytes (a bigger tensor gets a shard
/// of its own), as mergekit and `transformers` shard.
fn assign_shards(planned: &[Planned], limit: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (k, p) in planned.iter().enumerate() {
        let last = shards.last_mut().expect("one shard");
        if !last.is_empty() && size + p.n_bytes > limit {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(k);
        size += p.n_bytes;
    }
    shards
}

/// One safetensors file: header, then each tensor streamed in row chunks.
fn write_shard(
    producer: &dyn TensorProducer,
    path: &Path,
    tensors: &[&Planned],
    out: &HfOutput,
    progress: &crate::progress::Progress,
) -> Result<()> {
    let mut metadata = vec![("format".to_string(), "pt".to_string())];
    metadata.extend(out.shard_metadata.iter().cloned());
    let decls: Vec<(&str, GgmlType, &[u64], u64)> = tensors
        .iter()
        .map(|t| (t.hf_name.as_str(), out.dtype, t.shape.as_slice(), t.n_bytes))
        .collect();
    let head = crate::formats::safetensors::encode_header(&metadata, &decls)?;
    let io = |e| Error::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(8 << 20, file);
    w.write_all(&head).map_err(io)?;
    let elem = out.dtype.type_size();
    for (k, t) in tensors.iter().enumerate() {
        let i = t.index;
        let row_len = producer.shape(i)[0] as usize;
        let name = producer.name(i).to_string();
        let undo = |v: &mut [f32]| {
            if t.undo == Transform::AddOne {
                v.iter_mut().for_each(|x| *x -= 1.0);
            }
        };
        match t.rows {
            RowOrder::AsStored => {
                // Row chunks of at most 16 MiB of f32.
                let chunk_rows = ((4 << 20) / row_len.max(1)).clamp(1, t.n_rows.max(1));
                let mut values = vec![0f32; chunk_rows * row_len];
                let mut bytes = vec![0u8; chunk_rows * row_len * elem];
                let mut done = 0;
                while done < t.n_rows {
                    let rows = chunk_rows.min(t.n_rows - done);
                    let (v, b) = (
                        &mut values[..rows * row_len],
                        &mut bytes[..rows * row_len * elem],
                    );
                    producer.read_rows(i, t.first_row + done, v)?;
                    undo(v);
                    float::quantize_row(out.dtype, v, b).map_err(|e| Error::quant(&name, e))?;
                    w.write_all(b).map_err(io)?;
                    producer.release_rows(i, t.first_row + done, rows);
                    done += rows;
                }
            }
            order => {
                // Presented (GGUF) row r is Hugging Face row order.stored_row(r).
                let mut values = vec![0f32; row_len * t.n_rows];
                producer.read_rows(i, t.first_row, &mut values)?;
                undo(&mut values);
                let mut hf = vec![0f32; values.len()];
                for (r, row) in values.chunks_exact(row_len).enumerate() {
                    let s = order.stored_row(r, t.n_rows);
                    hf[s * row_len..(s + 1) * row_len].copy_from_slice(row);
                }
                let mut bytes = vec![0u8; hf.len() * elem];
                float::quantize_row(out.dtype, &hf, &mut bytes)
                    .map_err(|e| Error::quant(&name, e))?;
                w.write_all(&bytes).map_err(io)?;
            }
        }
        // The last part of a tensor releases it (the experts of a tensor are consecutive).
        if tensors.get(k + 1).is_none_or(|next| next.index != i) {
            producer.release(i);
        }
        progress.inc((t.n_rows * row_len) as u64);
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(io)
}

/// `config.json`: the template's with the layer count and dtype updated, else one rebuilt
/// from the GGUF hyper-parameters.
fn config_json(
    table: &Architecture,
    out: &HfOutput,
    has_output: bool,
    n_vocab: Option<u64>,
    warnings: &mut Vec<String>,
) -> Result<Json> {
    let md = out.metadata;
    let arch_name = table.gguf_name;
    let mut config = match &out.config_from {
        Some(dir) => {
            let path = dir.join("config.json");
            let text = crate::input::read_in(dir, &path)?
                .ok_or_else(|| Error::format(&path, "no such file"))?;
            let json: Json = serde_json::from_slice(&text)
                .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
            match json {
                Json::Object(m) => m,
                _ => return Err(Error::format(&path, "not a JSON object")),
            }
        }
        None => {
            warnings.push(
                "config.json rebuilt from GGUF metadata (no input is a Hugging Face folder): check rope_scaling and other keys the GGUF does not carry"
                    .into(),
            );
            config_from_gguf(table, md, has_output, n_vocab)
        }
    };
    if let Some(n) = md.get_u64(&format!("{arch_name}.block_count")) {
        for key in ["num_hidden_layers", "n_layer", "n_layers", "num_layers"] {
            if config.contains_key(key) || key == "num_hidden_layers" {
                config.insert(key.into(), json!(n));
                break;
            }
        }
    }
    config.insert("torch_dtype".into(), json!(torch_dtype(out.dtype)));
    Ok(Json::Object(config))
}

/// The `config.json` key transformers' config classes (`LlamaConfig`, `Qwen2Config`,
/// `Gemma2Config`, `Gemma3TextConfig`, `Phi3Config`, `MixtralConfig`) read for each GGUF
/// hyper-parameter (`{arch}.` + the first). The converter accepts other spellings too
/// (`n_layers`, `prefix_dense_intermediate_size`, `global_rope_theta`), but transformers does
/// not: it would load its own defaults instead.
const HF_CONFIG_KEYS: &[(&str, &str)] = &[
    ("vocab_size", "vocab_size"),
    ("context_length", "max_position_embeddings"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("block_count", "num_hidden_layers"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.key_length", "head_dim"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("rope.freq_base", "rope_theta"),
    ("rope.freq_base_swa", "rope_local_base_freq"),
    (
        "rope.scaling.original_context_length",
        "original_max_position_embeddings",
    ),
    ("attention.sliding_window", "sliding_window"),
    ("attn_logit_softcapping", "attn_logit_softcapping"),
    ("final_logit_softcapping", "final_logit_softcapping"),
    ("expert_count", "num_local_experts"),
    ("expert_used_count", "num_experts_per_tok"),
];

/// A GGUF number as JSON; an f32 by its shortest decimal form (`1e-5`, not
/// `9.999999747378752e-6`), which is the value the converter read from `config.json`.
fn json_number(v: &Value) -> Option<Json> {
    match v {
        Value::F32(x) => x
            .to_string()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map(|x| json!(x)),
        Value::F64(x) => Some(json!(*x)),
        other => other.as_u64().map(|n| json!(n)),
    }
}

/// A `config.json` from GGUF hyper-parameters, under the keys transformers reads;
/// `vocab_size` is the embedding's row count `n_vocab` when known.
fn config_from_gguf(
    table: &Architecture,
    md: &Metadata,
    has_output: bool,
    n_vocab: Option<u64>,
) -> Map<String, Json> {
    let arch = table.gguf_name;
    let get = |k: &str| md.get(&format!("{arch}.{k}"));
    let moe = get("expert_count").and_then(Value::as_u64).unwrap_or(0) > 0;
    let (class, model_type) = match arch {
        "llama" if moe => ("MixtralForCausalLM", "mixtral"),
        // `gemma3` is the multimodal config, whose text keys sit under `text_config`.
        "gemma3" => ("Gemma3ForCausalLM", "gemma3_text"),
        _ => (
            table.hf_architectures.first().copied().unwrap_or_default(),
            arch,
        ),
    };
    let mut c = Map::new();
    c.insert("architectures".into(), json!([class]));
    c.insert("model_type".into(), json!(model_type));
    for (gguf_key, hf_key) in HF_CONFIG_KEYS {
        let Some(v) = get(gguf_key).and_then(json_number) else {
            continue;
        };
        // Phi-3 writes a window of 0 for none; transformers' is null.
        if *hf_key == "sliding_window" && v.as_f64() == Some(0.0) {
            continue;
        }
        c.insert(hf_key.to_string(), v);
    }
    // What the architecture adds (Phi-3's partial rotation, Gemma's query scale).
    if let Some(hook) = table.hooks.hf_config {
        hook(&|k: &str| get(k).and_then(Value::as_u64), &mut c);
    }
    // Linear and YaRN RoPE scaling (llama3's is in `rope_freqs`, not carried over).
    let scaling = get("rope.scaling.type").and_then(Value::as_str);
    if let (Some(ty @ ("linear" | "yarn")), Some(f)) =
        (scaling, get("rope.scaling.factor").and_then(json_number))
    {
        let mut r = Map::new();
        r.insert("rope_type".into(), json!(ty));
        r.insert("factor".into(), f);
        if ty == "yarn" {
            for (gguf_key, hf_key) in [
                (
                    "rope.scaling.original_context_length",
                    "original_max_position_embeddings",
                ),
                ("rope.scaling.yarn_ext_factor", "extrapolation_factor"),
                ("rope.scaling.yarn_attn_factor", "attention_factor"),
                ("rope.scaling.yarn_beta_fast", "beta_fast"),
                ("rope.scaling.yarn_beta_slow", "beta_slow"),
            ] {
                if let Some(v) = get(gguf_key).and_then(json_number) {
                    r.insert(hf_key.into(), v);
                }
            }
        }
        c.insert("rope_scaling".into(), Json::Object(r));
    }
    if let Some(n) = n_vocab {
        c.insert("vocab_size".into(), json!(n));
    } else if let Some(n) = md
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(|a| a.len())
    {
        c.entry("vocab_size").or_insert(json!(n));
    }
    // unk too: a rebuilt SentencePiece folder has no tokenizer.json whose added tokens would
    // name it, and this is where the converter looks next.
    for (gguf_key, hf_key) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.unknown_token_id", "unk_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(v) = md.get_u64(gguf_key) {
            c.insert(hf_key.into(), json!(v));
        }
    }
    c.insert("tie_word_embeddings".into(), json!(!has_output));
    c
}

fn pretty(j: &Json) -> String {
    let mut s = serde_json::to_string_pretty(j).expect("JSON serializes");
    s.push('\n');
    s
}

fn write_text(path: &Path, text: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// The model weights (`*.safetensors`, the index) already in `dir`, sorted.
fn existing_weights(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors") || n == INDEX_NAME)
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Refuse an output folder that already holds model weights, unless `force`: they are some
/// model's, and writing there would replace or delete them.
pub fn check_output_dir(dir: &Path, force: bool) -> Result<()> {
    let found = existing_weights(dir);
    if found.is_empty() || force {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{}: the folder already holds model weights ({}); smelt will not replace or delete them: write elsewhere, or pass --force to replace that model",
        dir.display(),
        found.join(", ")
    )))
}

/// Move the finished files into `dir`: shards first, `config.json` last, so a folder that has
/// a new `config.json` has all of its new weights. Weights already in `dir` are refused unless
/// `force`; with it, those the new index does not name are removed, so `transformers` never
/// loads a mix. Nothing else already in `dir` is touched, but for files of the same name.
fn move_into_place(tmp: &Path, dir: &Path, files: &[String], force: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    check_output_dir(dir, force)?;
    for name in existing_weights(dir) {
        if !files.contains(&name) {
            let p = dir.join(&name);
            std::fs::remove_file(&p).map_err(|err| Error::io(&p, err))?;
        }
    }
    let mut ordered: Vec<&String> = files.iter().filter(|f| *f != "config.json").collect();
    ordered.extend(files.iter().filter(|f| *f == "config.json"));
    for f in ordered {
        let (from, to) = (tmp.join(f), dir.join(f));
        std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(sizes: &[u64]) -> Vec<Planned> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Planned {
                index: i,
                first_row: 0,
                n_rows: 1,
                undo: Transform::None,
                hf_name: format!("t{i}"),
                shape: vec![n],
                n_bytes: n,
                rows: RowOrder::AsStored,
            })
            .collect()
    }

    #[test]
    fn shards_fill_up_to_the_limit_and_big_tensors_stand_alone() {
        let p = planned(&[4, 4, 4, 20, 1, 1]);
        assert_eq!(
            assign_shards(&p, 10),
            vec![vec![0, 1], vec![2], vec![3], vec![4, 5]]
        );
        assert_eq!(assign_shards(&p, 1000), vec![vec![0, 1, 2, 3, 4, 5]]);
    }
}
