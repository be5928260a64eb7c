//! LoRA adapters on a base model (`model: BASE+ADAPTER` in a recipe, as in mergekit): a PEFT
//! folder (`adapter_config.json`, `adapter_model.safetensors`) whose `lora_A` / `lora_B` pairs
//! add `scale · B·A` to the base's targeted projections as their rows are read, with
//! `scale = lora_alpha / r` (`lora_alpha / √r` under `use_rslora`) and `alpha_pattern`
//! overriding `lora_alpha` per module, as PEFT's `merge_and_unload` (what mergekit runs) does.
//! The adapter file stays mapped: each read decodes `A` (r × in) and the `B` rows of the rows
//! asked for, so memory stays bounded by the chunk being read.
//!
//! PEFT names modules as Hugging Face does (`base_model.model.model.layers.3.self_attn.q_proj
//! .lora_A.weight`); the base's architecture table maps them to its tensors, on a safetensors
//! folder or a GGUF (quantized too), and llama.cpp's q/k row permutation is applied to `B`'s
//! rows like to the weight's.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::store::RowOrder;
use crate::store::{SourceFile, Store};
use std::collections::BTreeMap;
use std::path::Path;

/// One stored adapter matrix: its bytes in the adapter file and torch shape `[rows, cols]`.
#[derive(Clone, Debug)]
struct Matrix {
    ty: GgmlType,
    offset: u64,
    rows: usize,
    cols: usize,
}

/// The low-rank update of one base tensor.
#[derive(Clone, Debug)]
pub struct LoraDelta {
    /// The adapter's file among the store's files.
    file: usize,
    /// `[r, in]`.
    a: Matrix,
    /// `[out, r]`, in Hugging Face row order.
    b: Matrix,
    scale: f64,
    /// Presented row → Hugging Face row (llama.cpp's q/k permutation).
    rows: RowOrder,
}

impl LoraDelta {
    fn read(
        store: &Store,
        file: usize,
        m: &Matrix,
        first_row: usize,
        n_rows: usize,
    ) -> Result<Vec<f32>> {
        let f: &SourceFile = &store.files[file];
        let row_bytes = m.cols * m.ty.type_size();
        let bytes = f.bytes(
            m.offset as usize + first_row * row_bytes,
            n_rows * row_bytes,
        )?;
        let mut out = vec![0f32; n_rows * m.cols];
        crate::quant::dequantize_rows(m.ty, bytes, m.cols, &mut out)
            .map_err(|e| Error::quant(format!("{} (LoRA)", f.path.display()), e))?;
        Ok(out)
    }

    /// Add `scale · (B·A)[rows]` to presented rows `first_row..` of the base tensor in `out`.
    pub fn add_rows(&self, store: &Store, first_row: usize, out: &mut [f32]) -> Result<()> {
        use rayon::prelude::*;
        let (rank, row_len, n_out) = (self.a.rows, self.a.cols, self.b.rows);
        let a = Self::read(store, self.file, &self.a, 0, rank)?;
        let n_rows = out.len() / row_len;
        // B's rows for the rows asked for: one run when the order is kept, else one by one.
        let b = match self.rows {
            RowOrder::AsStored => Self::read(store, self.file, &self.b, first_row, n_rows)?,
            order => (0..n_rows)
                .map(|i| {
                    let hf_row = order.stored_row(first_row + i, n_out);
                    Self::read(store, self.file, &self.b, hf_row, 1)
                })
                .collect::<Result<Vec<_>>>()?
                .concat(),
        };
        let a: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        out.par_chunks_mut(row_len)
            .zip(b.par_chunks(rank))
            .for_each(|(dst, b)| {
                // (B·A) in f64, a row of A at a time (contiguous), then scaled and added in
                // f32, as PEFT adds its f32 delta.
                let mut row = vec![0f64; row_len];
                for (k, &bk) in b.iter().enumerate() {
                    let bk = bk as f64;
                    for (r, &x) in row.iter_mut().zip(&a[k * row_len..(k + 1) * row_len]) {
                        *r += bk * x;
                    }
                }
                for (d, r) in dst.iter_mut().zip(&row) {
                    *d += (r * self.scale) as f32;
                }
            });
        Ok(())
    }
}

/// PEFT's `alpha_pattern` / `rank_pattern` lookup: the first key matching module `name` as
/// `(.*\.)?KEY$`.
fn pattern_value(patterns: Option<&serde_json::Value>, name: &str) -> Option<f64> {
    let map = patterns?.as_object()?;
    map.iter().find_map(|(key, v)| {
        let re = regex::Regex::new(&format!("^(.*\\.)?(?:{key})$")).ok()?;
        re.is_match(name).then(|| v.as_f64()).flatten()
    })
}

/// Attach the adapter in folder `dir` to `store`; errors name the adapter and the tensor.
/// `dir` may also be the adapter's `.safetensors` file, beside its `adapter_config.json`.
pub fn attach(store: &mut Store, dir: &Path) -> Result<()> {
    let (dir, weights) = if dir.is_dir() {
        (dir.to_path_buf(), dir.join("adapter_model.safetensors"))
    } else {
        (
            dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
            dir.to_path_buf(),
        )
    };
    let config_path = dir.join("adapter_config.json");
    let config: serde_json::Value = match crate::input::read_in(&dir, &config_path)? {
        Some(text) => serde_json::from_slice(&text)
            .map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?,
        None => {
            let pickled = dir.join("adapter_model.bin");
            return Err(Error::format(
                &dir,
                if pickled.exists() {
                    "no adapter_config.json; and adapter_model.bin is a pickle, which smelt never loads".to_string()
                } else {
                    "not a PEFT LoRA adapter: no adapter_config.json".to_string()
                },
            ));
        }
    };
    let bad = |msg: String| Error::format(&config_path, msg);
    let peft_type = config
        .get("peft_type")
        .and_then(|v| v.as_str())
        .unwrap_or("LORA");
    if !peft_type.eq_ignore_ascii_case("lora") {
        return Err(bad(format!(
            "peft_type is {peft_type}: only LORA adapters are supported"
        )));
    }
    for (key, why) in [
        ("use_dora", "DoRA adapters (use_dora) are not supported"),
        (
            "fan_in_fan_out",
            "fan_in_fan_out (GPT-2 Conv1D layers) is not supported",
        ),
    ] {
        if config.get(key).and_then(|v| v.as_bool()) == Some(true) {
            return Err(bad(why.to_string()));
        }
    }
    if config
        .get("modules_to_save")
        .and_then(|v| v.as_array())
        .is_some_and(|a| !a.is_empty())
    {
        return Err(bad(
            "modules_to_save (whole tensors the adapter replaces) is not supported".to_string(),
        ));
    }
    let alpha = config
        .get("lora_alpha")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| bad("no numeric lora_alpha".to_string()))?;
    let rslora = config.get("use_rslora").and_then(|v| v.as_bool()) == Some(true);

    if !crate::input::exists(&weights) {
        return Err(Error::format(
            &dir,
            "no adapter_model.safetensors (a PyTorch adapter_model.bin is a pickle, which smelt never loads)",
        ));
    }
    crate::input::check_inside(&dir, &weights)?;
    let (map, file) = crate::formats::safetensors::map_file(&weights)?;
    let entries = crate::formats::safetensors::parse_header(&weights, &map)?;
    let arch_name = store.architecture()?.to_string();
    let arch = crate::arch::by_gguf_name(&arch_name).ok_or_else(|| {
        Error::format(
            &weights,
            format!("no tensor-name table for architecture `{arch_name}`"),
        )
    })?;
    let n_head = store.hparam("attention.head_count").unwrap_or(0) as usize;
    let heads = crate::arch::Heads {
        n_head,
        n_head_kv: store
            .hparam("attention.head_count_kv")
            .map_or(n_head, |n| n as usize),
    };

    // module → (A, B)
    let mut pairs: BTreeMap<String, [Option<Matrix>; 2]> = BTreeMap::new();
    for e in &entries {
        let tensor_err =
            |msg: String| Error::format(&weights, format!("tensor `{}`: {msg}", e.name));
        let name = e.name.strip_prefix("base_model.model.").unwrap_or(&e.name);
        let (module, which) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else if name.contains("lora_embedding_") {
            return Err(tensor_err(
                "LoRA on embeddings (lora_embedding_A/B) is not supported".to_string(),
            ));
        } else if name.contains("lora_magnitude_vector") {
            return Err(tensor_err("DoRA adapters are not supported".to_string()));
        } else {
            return Err(tensor_err(
                "not a LoRA matrix (`.lora_A.weight` / `.lora_B.weight`); whole replaced tensors are not supported".to_string(),
            ));
        };
        let ty = match crate::formats::safetensors::dtype_info(&e.dtype).0 {
            Some(ty) => ty,
            None => {
                return Err(tensor_err(format!(
                    "dtype {} is not F32, F16 or BF16",
                    e.dtype
                )))
            }
        };
        if e.shape.len() != 2 || e.shape.contains(&0) {
            return Err(tensor_err(format!("shape {:?} is not a matrix", e.shape)));
        }
        pairs.entry(module.to_string()).or_default()[which] = Some(Matrix {
            ty,
            offset: e.start,
            rows: e.shape[0] as usize,
            cols: e.shape[1] as usize,
        });
    }
    if pairs.is_empty() {
        return Err(Error::format(&weights, "holds no LoRA matrices"));
    }
    let file_index = store.files.len();
    let mut deltas = BTreeMap::new();
    for (module, [a, b]) in pairs {
        let err = |msg: String| Error::format(&weights, format!("module `{module}`: {msg}"));
        let (Some(a), Some(b)) = (a, b) else {
            return Err(err("has only one of lora_A and lora_B".to_string()));
        };
        let hf = format!("{module}.weight");
        let mapped = arch
            .canonical(&hf)
            .filter(|m| m.expert.is_none())
            .and_then(|m| store.find(&m.name).map(|t| (m, t)));
        let Some((mapped, t)) = mapped else {
            return Err(err(format!(
                "the base model has no tensor `{hf}` for this target module"
            )));
        };
        let shape = &store.tensors[t].shape;
        let (n_in, n_out) = (
            shape[0] as usize,
            shape.get(1).copied().unwrap_or(1) as usize,
        );
        if shape.len() != 2 || a.cols != n_in || b.rows != n_out || a.rows != b.cols {
            return Err(err(format!(
                "lora_A is [{}, {}] and lora_B [{}, {}], which do not fit the base's `{}` ([{n_out}, {n_in}] as [out, in])",
                a.rows, a.cols, b.rows, b.cols, mapped.name
            )));
        }
        let rank = a.rows as f64;
        let alpha = pattern_value(config.get("alpha_pattern"), &module).unwrap_or(alpha);
        let scale = if rslora {
            alpha / rank.sqrt()
        } else {
            alpha / rank
        };
        if mapped.permute != crate::arch::Permute::None && heads.n_head == 0 {
            return Err(err(format!(
                "base tensor `{}` has permuted rows but the base has no attention.head_count",
                mapped.name
            )));
        }
        let rows = arch
            .row_order(mapped.permute, heads, n_out)
            .map_err(|e| err(format!("base tensor `{}`: {e}", mapped.name)))?;
        deltas.insert(
            t,
            LoraDelta {
                file: file_index,
                a,
                b,
                scale,
                rows,
            },
        );
    }
    store.files.push(SourceFile {
        path: weights,
        map,
        file,
    });
    store.adapters.extend(deltas);
    Ok(())
}
