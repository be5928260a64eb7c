//! MoE experts stacked into one tensor per projection, as the converter stacks them: every
//! expert present once, all parts alike, the stack placed where its layer's last part is.

use super::{Key, Pending};
use crate::arch;
use crate::error::{Error, Result};
use crate::gguf::reader::MAX_DIMS;
use crate::store::StoreTensor;
use std::collections::HashMap;
use std::path::PathBuf;

/// One expert's part of a stacked tensor.
pub(super) struct StackPart {
    pub expert: usize,
    pub key: Key,
    pub path: PathBuf,
    pub hf_name: String,
    pub tensor: StoreTensor,
}

/// The parts of one stacked tensor found so far.
pub(super) struct Stack {
    pub rule: usize,
    pub parts: Vec<StackPart>,
}

/// Each stack checked and made one tensor, into `pending`. `n_expert`: the config's count.
pub(super) fn stack_experts(
    stacks: HashMap<String, Stack>,
    n_expert: Option<usize>,
    pending: &mut Vec<Pending>,
) -> Result<()> {
    // The converter emits a layer's stacks together once the layer's last expert tensor has
    // been read.
    let mut stacks: Vec<(String, Stack)> = stacks.into_iter().collect();
    stacks.sort_by(|a, b| a.0.cmp(&b.0));
    let mut layer_last: HashMap<Option<usize>, Key> = HashMap::new();
    for (name, stack) in &stacks {
        let block = arch::layer_index(name).map(|(b, _)| b);
        for p in &stack.parts {
            let last = layer_last.entry(block).or_insert_with(|| p.key.clone());
            if p.key > *last {
                *last = p.key.clone();
            }
        }
    }
    for (name, mut stack) in stacks {
        stack.parts.sort_by_key(|p| p.expert);
        let first = &stack.parts[0];
        let want = n_expert.unwrap_or(stack.parts.len());
        let missing = (0..want).find(|&x| stack.parts.get(x).is_none_or(|p| p.expert != x));
        if missing.is_some() || stack.parts.len() != want {
            let what = match missing {
                Some(x) => format!("expert {x} is missing"),
                None => format!(
                    "it has {} experts, the config says {want}",
                    stack.parts.len()
                ),
            };
            return Err(Error::format(
                &first.path,
                format!("stacked tensor `{name}` (from `{}`): {what}", first.hf_name),
            ));
        }
        for p in &stack.parts[1..] {
            let (a, b) = (&first.tensor, &p.tensor);
            if (&a.shape, a.stored) != (&b.shape, b.stored) {
                return Err(Error::format(
                    &p.path,
                    format!(
                        "tensor `{}` is {} {:?} but expert 0 of `{name}` (`{}`) is {} {:?}; the experts of one tensor must match",
                        p.hf_name, b.stored, b.shape, first.hf_name, a.stored, a.shape
                    ),
                ));
            }
        }
        if first.tensor.shape.len() >= MAX_DIMS {
            return Err(Error::format(
                &first.path,
                format!(
                    "tensor `{}`: stacking {} dimensions of experts gives more than ggml's {MAX_DIMS}",
                    first.hf_name,
                    first.tensor.shape.len()
                ),
            ));
        }
        let block = arch::layer_index(&name).map(|(b, _)| b);
        let (k0, k1, k2, _) = layer_last.get(&block).cloned().unwrap_or_default();
        let key = (k0, k1, k2, stack.rule);
        let mut tensor = first.tensor.clone();
        tensor.shape.push(stack.parts.len() as u64);
        tensor.n_bytes *= stack.parts.len() as u64;
        tensor.parts = stack
            .parts
            .iter()
            .map(|p| (p.tensor.file, p.tensor.offset))
            .collect();
        pending.push(Pending { key, tensor });
    }
    Ok(())
}
