//! Each shard's tensors mapped to llama.cpp's names and presentation: canonical names, the
//! converter's types (norms and routers widened to F32), q/k rows in llama.cpp's head order
//! (1-D ones permuted at open time), experts set aside for stacking.

use super::config::Model;
use super::generated::{permute_elements, Generated};
use super::stack::{Stack, StackPart};
use super::{Key, Pending, Shard};
use crate::arch::Permute;
use crate::error::{Error, Result};
use crate::formats::safetensors::dtype_info;
use crate::gguf::reader::MAX_DIMS;
use crate::gguf::GgmlType;
use crate::store::{SourceFile, StoreTensor, Transform};
use std::collections::HashMap;
use std::path::PathBuf;

/// What mapping the shards gives: the tensors, the generated ones, the expert parts to stack,
/// and the shards as the store's files (in the same order as the tensors' file indexes).
#[derive(Default)]
pub(super) struct Mapped {
    pub pending: Vec<Pending>,
    pub generated: Generated,
    pub stacks: HashMap<String, Stack>,
    pub source_files: Vec<SourceFile>,
}

pub(super) fn map_shards(parsed: Vec<Shard>, model: &Model) -> Result<Mapped> {
    let (arch, heads) = (model.arch, model.heads);
    let mut pending = Vec::new();
    let mut generated = Generated::default();
    let mut owner: HashMap<String, PathBuf> = HashMap::new();
    let mut stacks: HashMap<String, Stack> = HashMap::new();
    let mut source_files = Vec::new();
    let mut serial = 0usize;
    for (fi, (path, map, file, entries)) in parsed.into_iter().enumerate() {
        let mut entries = entries;
        if arch.is_some() {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
        }
        for e in entries {
            if arch.is_some_and(|a| a.is_ignored(&e.name)) {
                continue;
            }
            let bad = |m: String| Error::format(&path, format!("tensor `{}`: {m}", e.name));
            let stored = dtype_info(&e.dtype).0.ok_or_else(|| {
                Error::format(
                    &path,
                    format!(
                        "unsupported dtype {} in tensor `{}` (smelt reads F32, F16 and BF16)",
                        e.dtype, e.name
                    ),
                )
            })?;
            if e.shape.len() > MAX_DIMS {
                return Err(bad(format!(
                    "{} dimensions, ggml allows {MAX_DIMS}",
                    e.shape.len()
                )));
            }
            let mut shape: Vec<u64> = e.shape.iter().rev().copied().collect();
            if shape.is_empty() {
                shape.push(1);
            }
            let mapped = match arch {
                Some(a) => Some(a.canonical(&e.name).ok_or_else(|| {
                    bad(format!(
                        "no {} tensor is called this (the {} table has no rule for it)",
                        a.gguf_name, a.gguf_name
                    ))
                })?),
                None => None,
            };
            let key: Key = match &mapped {
                Some(_) => (1, fi, e.name.clone(), 0),
                None => (1, fi, String::new(), serial),
            };
            serial += 1;
            let name = mapped.as_ref().map_or(e.name.clone(), |m| m.name.clone());
            let ty = if mapped.is_some() {
                converted_type(&name, e.shape.len(), stored)
            } else {
                stored
            };
            let mut tensor = StoreTensor {
                ty,
                stored,
                transform: mapped.as_ref().map_or(Transform::None, |m| m.transform),
                ..StoreTensor::plain(name.clone(), shape, stored, fi, e.start, e.end - e.start)
            };
            if let Some(expert) = mapped.as_ref().and_then(|m| m.expert) {
                let rule = mapped.as_ref().map_or(0, |m| m.rule);
                let stack = stacks.entry(name.clone()).or_insert_with(|| Stack {
                    rule,
                    parts: Vec::new(),
                });
                if stack.parts.iter().any(|p| p.expert == expert) {
                    return Err(bad(format!("expert {expert} of `{name}` appears twice")));
                }
                stack.parts.push(StackPart {
                    expert,
                    key,
                    path: path.clone(),
                    hf_name: e.name.clone(),
                    tensor,
                });
                continue;
            }
            if let Some(prev) = owner.insert(name.clone(), path.clone()) {
                return Err(Error::format(
                    &path,
                    format!("tensor `{}` ({name}) is also in {}", e.name, prev.display()),
                ));
            }
            let permute = mapped.as_ref().map_or(Permute::None, |m| m.permute);
            if let (Some(a), Some(h)) = (arch, heads) {
                if permute != Permute::None {
                    let one_d = tensor.shape.len() == 1;
                    let n = if one_d {
                        tensor.shape[0] as usize
                    } else {
                        tensor.n_rows()
                    };
                    let order = a.row_order(permute, h, n).map_err(bad)?;
                    if one_d {
                        // Small: permuted (and widened to F32, exactly) at open time.
                        let raw = &map[e.start as usize..e.end as usize];
                        let data = permute_elements(raw, stored.type_size(), order);
                        let mut values = vec![0f32; data.len() / stored.type_size()];
                        crate::quant::dequantize_row(stored, &data, &mut values)
                            .map_err(|q| bad(q.to_string()))?;
                        tensor.transform.apply_to(stored, &mut values);
                        let (gty, bytes) = encode_presented(tensor.ty, &values);
                        generated.push(key, tensor.name, tensor.shape, gty, &bytes);
                        continue;
                    }
                    tensor.rows = order;
                }
            }
            pending.push(Pending { key, tensor });
        }
        source_files.push(SourceFile { path, map, file });
    }
    Ok(Mapped {
        pending,
        generated,
        stacks,
        source_files,
    })
}

/// The type `convert_hf_to_gguf.py` gives tensor `name` (with `n_dims` dimensions) stored as
/// `stored`: 1-D tensors, norms, biases and MoE routers are widened to F32 whatever the output
/// type; the rest keep their type (and are converted by the output type later).
fn converted_type(name: &str, n_dims: usize, stored: GgmlType) -> GgmlType {
    let widened = n_dims <= 1
        || name.ends_with("_norm.weight")
        || !name.ends_with(".weight")
        || name.ends_with(".ffn_gate_inp.weight");
    if widened && matches!(stored, GgmlType::F16 | GgmlType::BF16) {
        GgmlType::F32
    } else {
        stored
    }
}

/// Values as bytes of `ty` (F32, or the 16-bit type they came from).
fn encode_presented(ty: GgmlType, values: &[f32]) -> (GgmlType, Vec<u8>) {
    let mut out = vec![0u8; values.len() * ty.type_size()];
    match crate::quant::float::quantize_row(ty, values, &mut out) {
        Ok(()) => (ty, out),
        Err(_) => (
            GgmlType::F32,
            values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    }
}
