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
    /// Every file read (no output may replace one of them).
    fn input_files(&self) -> Vec<std::path::PathBuf>;
    /// For a Q4_1 or Q5_1 tensor, each block's minimum (one per 32 values, in order), which
    /// llama.cpp's dot products treat apart from the scaled quants; `None` for other types.
    fn block_mins(&self, _name: &str) -> Result<Option<Vec<f32>>> {
        Ok(None)
    }
    /// `{arch}.block_count`, for progress.
    fn n_layer(&self) -> u64 {
        let md = self.metadata();
        md.architecture()
            .and_then(|a| md.get_u64(&format!("{a}.block_count")))
            .unwrap_or(0)
    }
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

    fn input_files(&self) -> Vec<std::path::PathBuf> {
        self.paths().into_iter().map(|p| p.to_path_buf()).collect()
    }

    fn block_mins(&self, name: &str) -> Result<Option<Vec<f32>>> {
        let i = self.find(name).ok_or_else(|| missing(name))?;
        let ty = self.tensors[i].ty;
        if !matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
            return Ok(None);
        }
        let bytes = self.passthrough(i).ok_or_else(|| {
            Error::Invalid(format!("{name}: the {ty} bytes cannot be read in place"))
        })?;
        Ok(super::ops::block_mins(ty, bytes))
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

    /// The merge plan (also what a writer reads the merged tensors from).
    pub fn plan(&self) -> &crate::merge::MergePlan {
        &self.plan
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

    fn input_files(&self) -> Vec<std::path::PathBuf> {
        use crate::write::TensorProducer;
        self.plan.input_files()
    }
}

/// The model `smelt eval` and `smelt imatrix` run: a merge recipe (`.yaml`/`.yml`, one
/// document), evaluated as merged without writing it, or any model file or folder.
pub fn open(path: &std::path::Path) -> Result<Box<dyn Weights>> {
    let is_recipe = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    if !is_recipe {
        return Ok(Box::new(Store::open(path)?));
    }
    let text = crate::input::read_to_string(path)?;
    let origin = path.display().to_string();
    let docs = crate::recipe::parse(&text, &origin)?;
    if docs.len() != 1 {
        return Err(Error::Invalid(format!(
            "{origin}: a recipe of {} documents; evaluate one document (merge the earlier ones first)",
            docs.len()
        )));
    }
    let opts = crate::merge::PlanOptions {
        // The inputs are read as the forward pass needs them; hashing them is a merge's
        // provenance, not needed to evaluate.
        dry_run: true,
        ..Default::default()
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let plan = crate::merge::MergePlan::with_options(&docs[0], &text, &origin, dir, &[], &opts)?;
    Ok(Box::new(MergedWeights::new(plan)))
}
