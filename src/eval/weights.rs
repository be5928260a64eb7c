//! Where the forward pass gets its weights: any source that can name its tensors and
//! dequantize one of them (or one row of one) to f32. A [`Store`] is one (GGUF of any type,
//! safetensors, HF folder); a merge recipe evaluated without writing it is another.

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Metadata};
use crate::store::Store;

/// A tensor's ggml shape (innermost first) and the type its bytes have.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightInfo {
    pub shape: Vec<u64>,
    pub ty: GgmlType,
}

/// The model a forward pass runs: metadata plus tensors by their GGUF names.
pub trait Weights: Sync {
    fn metadata(&self) -> &Metadata;
    fn info(&self, name: &str) -> Option<WeightInfo>;
    /// The whole tensor dequantized to f32 (ggml order); its source pages may be released.
    fn read(&self, name: &str) -> Result<Vec<f32>>;
    /// Row `row` (of `shape[0]` values) into `out`.
    fn read_row(&self, name: &str, row: usize, out: &mut [f32]) -> Result<()>;
}

impl Weights for Store {
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    fn info(&self, name: &str) -> Option<WeightInfo> {
        self.find(name).map(|i| WeightInfo {
            shape: self.tensors[i].shape.clone(),
            ty: self.tensors[i].ty,
        })
    }

    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let i = self.find(name).ok_or_else(|| missing(name))?;
        let values = self.read_f32(i)?;
        // Each weight is read once per evaluation: its pages need not stay resident.
        self.release(i);
        Ok(values)
    }

    fn read_row(&self, name: &str, row: usize, out: &mut [f32]) -> Result<()> {
        let i = self.find(name).ok_or_else(|| missing(name))?;
        self.read_rows(i, row, out)
    }
}

pub(crate) fn missing(name: &str) -> Error {
    Error::Invalid(format!(
        "the model has no `{name}`, which the forward pass needs"
    ))
}

/// A merge recipe's output, computed tensor by tensor as the forward pass asks for it and
/// never written: `smelt eval RECIPE.yaml`.
pub struct MergedWeights {
    plan: crate::merge::MergePlan,
    index: std::collections::HashMap<String, usize>,
}

impl MergedWeights {
    pub fn new(plan: crate::merge::MergePlan) -> MergedWeights {
        let index = plan
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        MergedWeights { plan, index }
    }

    fn find(&self, name: &str) -> Result<usize> {
        self.index.get(name).copied().ok_or_else(|| missing(name))
    }
}

impl Weights for MergedWeights {
    fn metadata(&self) -> &Metadata {
        &self.plan.metadata
    }

    fn info(&self, name: &str) -> Option<WeightInfo> {
        let t = &self.plan.tensors[*self.index.get(name)?];
        Some(WeightInfo {
            shape: t.shape.clone(),
            // The merge's f32 result is what the forward pass multiplies with.
            ty: GgmlType::F32,
        })
    }

    fn read(&self, name: &str) -> Result<Vec<f32>> {
        use crate::write::TensorProducer;
        let i = self.find(name)?;
        let t = &self.plan.tensors[i];
        let mut out = vec![0f32; t.shape.iter().product::<u64>() as usize];
        self.plan.read_rows(i, 0, &mut out)?;
        self.plan.release(i);
        Ok(out)
    }

    fn read_row(&self, name: &str, row: usize, out: &mut [f32]) -> Result<()> {
        use crate::write::TensorProducer;
        // The plan keeps the last merged tensor: reading a table row by row merges it once.
        self.plan.read_rows(self.find(name)?, row, out)
    }
}
