//! The `quantize` job as llama-quantize defines it: options, layer pruning, metadata overrides
//! and imatrix bookkeeping around the per-tensor type plan, for any number of outputs.

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Metadata, Value, QUANTIZATION_VERSION};
use crate::quant::imatrix::Imatrix;
use crate::quant::mix::{self, FileType, MixOptions, ModelInfo, TensorRef};
use crate::split::{self, SplitKeys};
use crate::write::{llama_cpp_order, OutputFile, PlannedTensor, TensorProducer};
use std::path::PathBuf;

/// Everything llama-quantize lets a user choose, shared by every output of one run.
#[derive(Clone, Debug, Default)]
pub struct QuantizeOptions {
    pub mix: MixOptions,
    pub overrides: Vec<KvOverride>,
    /// The imatrix and the path as the user wrote it (recorded in the output).
    pub imatrix: Option<(Imatrix, String)>,
    pub prune_layers: Vec<u32>,
    /// Write each output as the input's split set (`--keep-split`).
    pub keep_split: bool,
    /// Write each output as a split set in llama-gguf-split's layout (`--split-max-size`,
    /// `--split-max-tensors`).
    pub split: Option<crate::split::SplitLimit>,
}

/// The plan for one run: the source tensors in output order and one file per type.
pub struct QuantizePlan {
    /// Store tensor indices, in llama.cpp's order, pruned layers left out.
    pub order: Vec<usize>,
    pub outputs: Vec<OutputFile>,
    /// Human-readable notes (re-quantization that gains nothing, fallbacks).
    pub warnings: Vec<String>,
}

/// Plan every output: per-tensor types, imatrix slices and metadata, exactly as llama-quantize
/// would write each file. `path_for` names the output of a file type.
pub fn plan(
    source: &dyn TensorProducer,
    file_types: &[FileType],
    opts: &QuantizeOptions,
    path_for: impl Fn(&FileType) -> PathBuf,
) -> Result<QuantizePlan> {
    let (n_tensors, source_metadata) = (source.n_tensors(), source.model_metadata());
    let names: Vec<&str> = (0..n_tensors).map(|i| source.name(i)).collect();
    let n_split = (0..n_tensors)
        .map(|i| source.split_of(i) + 1)
        .max()
        .unwrap_or(1);
    if opts.keep_split && opts.split.is_some() {
        return Err(Error::Invalid(
            "--keep-split keeps the input's files; it does not go with --split-max-size or --split-max-tensors".into(),
        ));
    }
    let keep_split = opts.keep_split && n_split > 1;
    // llama-quantize visits tensors in its name order, or with --keep-split in file order.
    let visit: Vec<usize> = if keep_split {
        (0..n_tensors).collect()
    } else {
        llama_cpp_order(&names)
    };
    let mut order = Vec::new();
    let mut out_names = Vec::new();
    for i in visit {
        if let Some(n) = pruned_name(names[i], &opts.prune_layers) {
            order.push(i);
            out_names.push(n);
        }
    }
    let model = ModelInfo::from_metadata(source_metadata);
    if let Some(&l) = opts
        .prune_layers
        .iter()
        .find(|&&l| l as usize >= model.n_layer)
    {
        return Err(Error::Invalid(format!(
            "--prune-layers: layer {l} does not exist ({} layers)",
            model.n_layer
        )));
    }
    let mut mix_opts = opts.mix.clone();
    mix_opts.has_imatrix = opts.imatrix.is_some();
    let refs: Vec<TensorRef> = order
        .iter()
        .zip(&out_names)
        .map(|(&i, n)| TensorRef {
            name: n,
            shape: source.shape(i),
            ty: source.source_type(i),
        })
        .collect();
    let mut warnings = Vec::new();
    let mut outputs = Vec::new();
    for &ft in file_types {
        let types = mix::plan_types(&model, ft, &mix_opts, &refs)?;
        let mut tensors = Vec::with_capacity(order.len());
        let mut coarser = None;
        for ((&i, name), &ty) in order.iter().zip(&out_names).zip(&types) {
            let (src_name, src_shape, src_ty) =
                (source.name(i), source.shape(i), source.source_type(i));
            let quantized_here = ty != src_ty;
            if quantized_here && !ty.can_quantize() {
                return Err(Error::Invalid(format!(
                    "{}: tensor `{name}` would be {ty}, which smelt cannot write yet",
                    ft.name()
                )));
            }
            if opts.imatrix.is_none()
                && mix::allows_quantization(name, src_shape, mix_opts.leave_output_tensor)
                && mix::requires_imatrix(name, ty, ft)
            {
                return Err(Error::Invalid(format!(
                    "{} requires an importance matrix (--imatrix): tensor `{name}` would be {ty}",
                    ft.name()
                )));
            }
            if quantized_here
                && src_ty.is_quantized()
                && ty.is_quantized()
                && src_ty.bits_per_weight() < ty.bits_per_weight()
            {
                coarser.get_or_insert((src_ty, ty));
            }
            let imatrix = match (&opts.imatrix, quantized_here) {
                (Some((im, _)), true) => {
                    let n_expert = src_shape.get(2).copied().unwrap_or(1) as usize;
                    im.for_tensor(src_name, src_shape[0] as usize, n_expert)?
                }
                _ => None,
            };
            tensors.push(Some(PlannedTensor {
                name: name.clone(),
                ty,
                imatrix,
            }));
        }
        if !ft.default_type().is_quantized() && !opts.mix.tensor_types.is_empty() {
            // llama-quantize applies --tensor-type only under a quantized file type.
            warnings.push(format!(
                "{}: --tensor-type is ignored for a {} output, as llama-quantize ignores it; quantize to a type and override tensors back to {} instead",
                ft.name(),
                ft.name(),
                ft.name()
            ));
        }
        if let Some((from, to)) = coarser {
            warnings.push(format!(
                "{}: the source holds {from} tensors; re-quantizing them to {to} cannot restore the precision they lost",
                ft.name()
            ));
        }
        let mut metadata = output_metadata(source_metadata, ft.id());
        apply_overrides(&mut metadata, &opts.overrides);
        if let Some((im, arg)) = &opts.imatrix {
            for (k, v) in im.metadata(arg) {
                metadata.set_last(k, v);
            }
        }
        if !opts.prune_layers.is_empty() {
            let arch = model.arch.clone();
            let kept = model.n_layer - opts.prune_layers.len();
            metadata.set_last(format!("{arch}.block_count"), Value::U32(kept as u32));
        }
        let file = OutputFile {
            path: path_for(&ft),
            metadata,
            tensors,
        };
        if keep_split {
            // One file per input split, as llama-quantize --keep-split writes them.
            let part_of: Vec<usize> = order.iter().map(|&i| source.split_of(i)).collect();
            outputs.extend(split::into_parts(
                file,
                &part_of,
                n_split,
                SplitKeys::LlamaQuantize,
            )?);
        } else {
            outputs.push(file);
        }
    }
    if let Some(limit) = opts.split {
        outputs = split::split_outputs(outputs, &order, source, limit)?;
    }
    Ok(QuantizePlan {
        order,
        outputs,
        warnings,
    })
}

/// The source's metadata as llama-quantize writes it: every key copied in order, then
/// `general.quantization_version` and `general.file_type` moved to the end, split keys dropped.
pub fn output_metadata(source: &Metadata, ftype: u32) -> Metadata {
    let mut m = source.clone();
    m.set_last(
        "general.quantization_version",
        Value::U32(QUANTIZATION_VERSION),
    );
    m.set_last("general.file_type", Value::U32(ftype));
    m.retain(|k, _| !matches!(k, "split.no" | "split.count" | "split.tensors.count"));
    m
}

/// `--override-kv KEY=TYPE:VALUE`, parsed as llama.cpp's `string_parse_kv_override` does.
#[derive(Clone, Debug, PartialEq)]
pub struct KvOverride {
    pub key: String,
    pub value: Value,
}

impl std::str::FromStr for KvOverride {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Invalid(format!("--override-kv `{s}`: {why}"));
        let (key, rest) = s
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=TYPE:VALUE"))?;
        if key.is_empty() || key.len() >= 128 {
            return Err(bad("the key must have 1 to 127 characters"));
        }
        let (ty, v) = rest
            .split_once(':')
            .ok_or_else(|| bad("expected TYPE:VALUE after ="))?;
        let value = match ty {
            // llama-quantize stores integers as u32 of the absolute value, floats as f32.
            "int" => {
                let n: i64 = v.trim().parse().map_err(|_| bad("not an integer"))?;
                Value::U32(n.unsigned_abs() as u32)
            }
            "float" => Value::F32(v.trim().parse::<f64>().map_err(|_| bad("not a number"))? as f32),
            "bool" => match v {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(bad("bool must be true or false")),
            },
            "str" if v.len() > 127 => {
                return Err(bad("a string value cannot exceed 127 characters"))
            }
            "str" => Value::String(v.to_string()),
            _ => return Err(bad("TYPE must be int, float, bool or str")),
        };
        Ok(KvOverride {
            key: key.to_string(),
            value,
        })
    }
}

/// `PATTERN=TYPE` of `--tensor-type` (the pattern is lower-cased, as llama-quantize does).
pub fn parse_tensor_type(s: &str) -> Result<(String, GgmlType)> {
    let (pattern, ty) = s
        .split_once('=')
        .filter(|(p, t)| !p.is_empty() && !t.is_empty())
        .ok_or_else(|| Error::Invalid(format!("--tensor-type `{s}`: expected PATTERN=TYPE")))?;
    let ty = ty
        .parse::<GgmlType>()
        .map_err(|e| Error::Invalid(format!("--tensor-type `{s}`: {e}")))?;
    Ok((pattern.to_lowercase(), ty))
}

/// A `--tensor-type-file`: `PATTERN=TYPE` entries separated by spaces or newlines.
pub fn read_tensor_type_file(path: &std::path::Path) -> Result<Vec<(String, GgmlType)>> {
    let text = crate::input::read_to_string(path)?;
    text.split_whitespace()
        .map(|entry| parse_tensor_type(entry).map_err(|e| Error::format(path, e.to_string())))
        .collect()
}

/// `--prune-layers 3,1,2`: sorted, without duplicates.
pub fn parse_prune_layers(s: &str) -> Result<Vec<u32>> {
    let mut ids = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| Error::Invalid(format!("--prune-layers: invalid layer id `{x}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// llama-quantize's layer renumbering for `--prune-layers`: the new name of a tensor, or
/// `None` when its layer is pruned. Layers keep their order and close up the gaps.
pub fn pruned_name(name: &str, prune: &[u32]) -> Option<String> {
    let Some((blk, rest)) = crate::arch::layer_index(name).map(|(b, r)| (b as u32, r)) else {
        return Some(name.to_string());
    };
    if prune.binary_search(&blk).is_ok() {
        return None;
    }
    let removed_below = prune.iter().filter(|&&p| p < blk).count() as u32;
    Some(format!("blk.{}.{rest}", blk - removed_below))
}

/// Apply `--override-kv` entries in order, as ggml's `gguf_set_val_*` do (each moves to the end).
pub fn apply_overrides(meta: &mut Metadata, overrides: &[KvOverride]) {
    for o in overrides {
        meta.set_last(o.key.clone(), o.value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_overrides_parse_like_llama_cpp() {
        let o: KvOverride = "llama.context_length=int:-4096".parse().unwrap();
        assert_eq!(o.value, Value::U32(4096));
        let o: KvOverride = "general.name=str:a=b:c".parse().unwrap();
        assert_eq!(
            (o.key.as_str(), o.value),
            ("general.name", Value::String("a=b:c".into()))
        );
        assert_eq!(
            "x=float:0.5".parse::<KvOverride>().unwrap().value,
            Value::F32(0.5)
        );
        assert_eq!(
            "x=bool:true".parse::<KvOverride>().unwrap().value,
            Value::Bool(true)
        );
        for bad in ["x", "x=int", "x=bool:yes", "x=u8:1", "=int:1"] {
            assert!(bad.parse::<KvOverride>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pruning_renumbers_layers() {
        let prune = parse_prune_layers("5,1,1").unwrap();
        assert_eq!(prune, [1, 5]);
        let names: Vec<Option<String>> = (0..7)
            .map(|l| pruned_name(&format!("blk.{l}.attn_q.weight"), &prune))
            .collect();
        let want = [Some(0), None, Some(1), Some(2), Some(3), None, Some(4)];
        for (got, want) in names.iter().zip(want) {
            assert_eq!(got.clone(), want.map(|n| format!("blk.{n}.attn_q.weight")));
        }
        assert_eq!(
            pruned_name("output.weight", &prune).as_deref(),
            Some("output.weight")
        );
    }

    #[test]
    fn tensor_types() {
        assert_eq!(
            parse_tensor_type("ATTN_V=q8_0").unwrap(),
            ("attn_v".into(), GgmlType::Q8_0)
        );
        assert!(parse_tensor_type("attn_v=").is_err());
        assert!(parse_tensor_type("attn_v=q9").is_err());
    }
}
