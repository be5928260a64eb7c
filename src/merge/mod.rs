//! The merge engine: a recipe becomes a plan of output tensors (which input tensors, which
//! method, which parameters), and the plan is a `TensorProducer`, so the quant-matrix writer
//! pulls merged tensors one at a time and writes every requested type in one pass.
//!
//! Memory is bounded by the chunk size, not by the largest tensor: a method first gathers
//! what it needs of the whole tensor in streaming passes over row chunks of its inputs (each
//! input dequantized a chunk at a time, its pages dropped once read), then makes the rows the
//! writer asks for from the same rows of the inputs. At most one chunk of rows per input is
//! in memory (`chunk_bytes` of f32 each), plus the writer's chunk.

pub mod chat_template;
pub mod methods;
pub mod moe;
pub mod prune;
pub mod vocab;

use crate::arch;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Metadata, Value};
use crate::model_card::ParamCount;
use crate::recipe::{self, InputSlice, OutputSlice, ParamScopes, Params, Recipe, Scalar};
use crate::store::Store;
use crate::write::TensorProducer;
use methods::{Apply, Base, MergeInput, Method, Rows, Scope};
use serde_saphyr::Spanned;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use vocab::{InputVocab, VocabPlan, VocabRequest};

/// One model a recipe names.
pub struct Input {
    /// As written in the recipe.
    pub reference: String,
    pub path: PathBuf,
    pub store: Store,
}

impl Input {
    /// Bytes of the files behind it (what its SHA-256 covers).
    fn size(&self) -> u64 {
        self.store.files.iter().map(|f| f.map.len() as u64).sum()
    }
}

/// One output tensor of the plan.
pub struct OutTensor {
    pub name: String,
    pub shape: Vec<u64>,
    /// The first input's type (what "unchanged" means for the type planner).
    pub source_type: GgmlType,
    pub method: &'static dyn Method,
    /// (input, tensor index in that input's store), in source order.
    pub sources: Vec<(usize, usize)>,
    pub base: Option<usize>,
    pub shared: Vec<(&'static str, f64)>,
    pub per_input: Vec<Vec<(&'static str, f64)>>,
    pub seed: u64,
    /// Token-indexed rows laid out in the output vocabulary first (vocabularies differ).
    pub remap_vocab: bool,
}

/// A planned merge: inputs, output tensors and the output's metadata.
pub struct MergePlan {
    pub inputs: Vec<Input>,
    pub tensors: Vec<OutTensor>,
    pub metadata: Metadata,
    /// The input whose tokenizer and metadata the output carries (`tokenizer_source`, else
    /// the base model, else the first model).
    pub tokenizer_input: usize,
    /// Set when the inputs' vocabularies differ from the output's.
    pub vocab: Option<VocabPlan>,
    /// The merged tensor being written: its method, prepared on first use (dropped on
    /// release).
    current: Mutex<Option<Current>>,
    /// Rows per chunk: `chunk_bytes` of f32 per input.
    chunk_bytes: usize,
    /// Per-tensor remarks of methods (NearSwap's swap fractions), for the run summary.
    pub notes: Mutex<Vec<(String, String)>>,
    /// Buffers handed from each finished tensor to the next.
    pool: methods::BufferPool,
    /// Set when the inputs' SHA-256 are placeholders, hashed while the output is written
    /// (`PlanOptions::defer_input_hashes`), with this progress display.
    deferred_hashes: Option<crate::progress::Display>,
}

/// What `smelt.input.N.sha256` holds until a deferred hash is known: as long as a digest, so
/// the header keeps its length when the digest is written over it.
const SHA256_PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The tensor being merged.
struct Current {
    i: usize,
    apply: Box<dyn Apply>,
    /// Its inputs laid out in the output vocabulary (only when vocabularies differ: then the
    /// inputs are held whole).
    remapped: Option<Vec<Vec<f32>>>,
    /// Every input's whole tensor, when it fit in one chunk and the method's passes read it:
    /// the result's rows are made from it, without reading the inputs again.
    held: Option<Vec<Vec<f32>>>,
    bufs: Vec<Vec<f32>>,
}

/// Default f32 bytes per input in one chunk of rows (`SMELT_MERGE_CHUNK_BYTES` or
/// `merge --chunk-bytes` change it).
pub const DEFAULT_CHUNK_BYTES: usize = 64 << 20;

/// The chunk size in effect: the option, else `SMELT_MERGE_CHUNK_BYTES`, else the default.
pub fn chunk_bytes(option: Option<usize>) -> Result<usize> {
    if let Some(b) = option {
        return Ok(b.max(1));
    }
    match std::env::var("SMELT_MERGE_CHUNK_BYTES") {
        Ok(v) => v.trim().parse::<usize>().map(|b| b.max(1)).map_err(|_| {
            Error::Invalid(format!(
                "SMELT_MERGE_CHUNK_BYTES must be a number of bytes, not `{v}`"
            ))
        }),
        Err(_) => Ok(DEFAULT_CHUNK_BYTES),
    }
}

/// Tensors with one row per token.
const VOCAB_TENSORS: &[&str] = &["token_embd.weight", "output.weight"];

/// Most output layers a recipe may make (real models have at most a few hundred).
const MAX_OUT_LAYERS: u64 = 1 << 16;

/// Largest `tokenizer.pad_to_multiple_of`: padding to it adds at most this many embedding rows.
const MAX_PAD_MULTIPLE: u64 = 1 << 16;

/// `recipe.yaml:LINE: message`.
fn at<T>(origin: &str, s: &Spanned<T>, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{origin}:{}: {msg}", s.referenced.line()))
}

/// A slice's (or `globals:`') own `merge_method`, else the recipe's.
fn own_method<'a>(
    own: &'a Option<Spanned<String>>,
    recipe: &'a Recipe,
    origin: &str,
    top: &'static dyn Method,
) -> Result<(&'static dyn Method, &'a Spanned<String>)> {
    match own {
        Some(m) => Ok((methods::find(&m.value).map_err(|e| at(origin, m, e))?, m)),
        None => Ok((top, &recipe.merge_method)),
    }
}

/// Resolve a model reference: a named earlier result, else a path (relative to the working
/// folder, then to the recipe's folder), else a hub model id (`org/name[@revision]`) from the
/// Hugging Face cache or downloaded into it. The error is about the reference (the caller
/// names the recipe line).
fn resolve_model(
    reference: &str,
    recipe_dir: &Path,
    named: &[(String, PathBuf)],
    progress: crate::progress::Display,
) -> std::result::Result<PathBuf, String> {
    if let Some(p) = resolve_path(reference, recipe_dir, named) {
        return Ok(p);
    }
    match crate::hub::HubId::parse(reference) {
        Some(id) => crate::hub::resolve(&id, &crate::hub::HubOptions::from_env(progress)),
        None => Err(format!("model `{reference}`: no such file or folder")),
    }
}

/// Open the model a recipe line names: a path, an earlier result or a hub id, with
/// `BASE+ADAPTER` applying a LoRA adapter as the base is read (mergekit splits on `+` the same
/// way). Errors name the recipe line.
fn open_input(
    r: &Spanned<String>,
    origin: &str,
    recipe_dir: &Path,
    named: &[(String, PathBuf)],
    opts: &PlanOptions,
) -> Result<Input> {
    let progress = opts.progress.unwrap_or(crate::progress::Display::Hidden);
    let (base, adapter) = match r.value.split('+').collect::<Vec<_>>()[..] {
        [base] => (base, None),
        [base, adapter] if !base.is_empty() && !adapter.is_empty() => (base, Some(adapter)),
        _ => {
            return Err(at(
                origin,
                r,
                format!("model `{}`: expected MODEL or MODEL+LORA_ADAPTER", r.value),
            ))
        }
    };
    let path = resolve_model(base, recipe_dir, named, progress).map_err(|e| at(origin, r, e))?;
    let mut store = Store::open_with(&path, &opts.tokenizer)
        .map_err(|e| at(origin, r, format!("model `{base}`: {e}")))?;
    if let Some(adapter) = adapter {
        let dir = resolve_model(adapter, recipe_dir, named, progress)
            .map_err(|e| at(origin, r, format!("LoRA adapter: {e}")))?;
        crate::lora::attach(&mut store, &dir).map_err(|e| {
            at(
                origin,
                r,
                format!("LoRA adapter `{adapter}` on `{base}`: {e}"),
            )
        })?;
    }
    Ok(Input {
        reference: r.value.clone(),
        path,
        store,
    })
}

/// A named earlier result, else a path (relative to the working folder, then to the recipe's
/// folder).
fn resolve_path(
    reference: &str,
    recipe_dir: &Path,
    named: &[(String, PathBuf)],
) -> Option<PathBuf> {
    if let Some((_, p)) = named.iter().find(|(n, _)| n == reference) {
        return Some(p.clone());
    }
    let p = PathBuf::from(reference);
    if p.exists() {
        return Some(p);
    }
    let q = recipe_dir.join(reference);
    q.exists().then_some(q)
}

/// The model a recipe's `tokenizer_source` (or `tokenizer: {source}`) names, when it names
/// one (not `base` or `union`).
fn tokenizer_model(recipe: &Recipe) -> Option<Spanned<String>> {
    let named = match (&recipe.tokenizer_source, &recipe.tokenizer) {
        (Some(t), _) => t.clone(),
        (None, Some(block)) => {
            let source = block.value.value.get("source")?.as_str()?.to_string();
            Spanned::new(source, block.referenced, block.defined)
        }
        (None, None) => return None,
    };
    (!matches!(named.value.as_str(), "base" | "union")).then_some(named)
}

/// One source of a slice: input index, layer range, its parameters, its recipe entry and the
/// line of its range (for errors).
struct SliceSource<'a>(usize, [i64; 2], &'a Params, &'a Spanned<String>, u64);

/// The parameters of a source the recipe lists only as `base_model`.
static NO_PARAMS: Params = Params::new();

/// A slice after `models:` expansion: sources, base, parameters, method, repeat.
struct Slice<'a> {
    sources: Vec<SliceSource<'a>>,
    base: Option<usize>,
    params: Option<&'a Params>,
    method: &'static dyn Method,
    method_at: &'a Spanned<String>,
    repeat: u32,
}

/// How a plan is made, beyond the recipe.
#[derive(Default)]
pub struct PlanOptions<'a> {
    pub tokenizer: crate::tokenizer::TokenizerOptions,
    /// Plan only (`merge --dry-run`): the inputs are not hashed, so no tensor data is read;
    /// the plan's metadata then lacks the `smelt.input.*` keys.
    pub dry_run: bool,
    /// A replayed merge's metadata (`merge --from`): each input must still have the size and
    /// SHA-256 it recorded (`smelt.input.N.size` / `.sha256`).
    pub recorded: Option<&'a Metadata>,
    /// How the input-hashing pass shows its progress.
    pub progress: Option<crate::progress::Display>,
    /// f32 bytes per input in one chunk of rows (`None`: `SMELT_MERGE_CHUNK_BYTES`, else
    /// `DEFAULT_CHUNK_BYTES`).
    pub chunk_bytes: Option<usize>,
    /// Leave the `smelt.input.*` keys out without hashing the inputs: a shard that does not
    /// write the first file of its split sets (where all metadata lives) never needs them, and
    /// hashing would read every input whole.
    pub skip_input_hashes: bool,
    /// Hash the inputs while the output is written (`TensorProducer::deferred_metadata`, on
    /// threads beside the merge) instead of in a pass before it, so that each input is read
    /// once: the plan's `smelt.input.N.sha256` values are placeholders until then. Only for a
    /// plan written by `write::write_matrix`, and never with `recorded` (a replay checks its
    /// inputs before it merges).
    pub defer_input_hashes: bool,
}

impl MergePlan {
    /// Plan one recipe document. `named` maps earlier documents' names to their outputs.
    pub fn new(
        recipe: &Recipe,
        recipe_text: &str,
        origin: &str,
        recipe_dir: &Path,
        named: &[(String, PathBuf)],
        tokenizer: &crate::tokenizer::TokenizerOptions,
    ) -> Result<MergePlan> {
        let opts = PlanOptions {
            tokenizer: tokenizer.clone(),
            ..PlanOptions::default()
        };
        Self::with_options(recipe, recipe_text, origin, recipe_dir, named, &opts)
    }

    /// `new` with options. Every check of the recipe runs before the inputs are hashed (the
    /// one pass that reads them whole).
    pub fn with_options(
        recipe: &Recipe,
        recipe_text: &str,
        origin: &str,
        recipe_dir: &Path,
        named: &[(String, PathBuf)],
        opts: &PlanOptions,
    ) -> Result<MergePlan> {
        // The steps of mergekit's plan.py: normalize the recipe into slices (opening each
        // input once), validate them, then plan every output tensor.
        let mut inputs: Vec<Input> = Vec::new();
        let (mut slices, mut globals) =
            Self::normalize(recipe, &mut inputs, origin, recipe_dir, named, opts)?;
        Self::validate(&inputs, &mut slices, &mut globals, recipe, origin)?;
        let seed = match recipe.parameters.get("seed") {
            Some(s) => match &s.value {
                recipe::Setting::Scalar(Scalar::Num(x)) => *x as u64,
                _ => return Err(at(origin, s, "seed must be a number")),
            },
            None => 0,
        };
        let arch_table = inputs[slices[0].sources[0].0]
            .store
            .metadata
            .architecture()
            .and_then(arch::by_gguf_name);
        let (tokenizer_input, vocab) = Self::vocabulary(recipe, &inputs, &slices, origin)?;
        let mut plan = PlanBuilder {
            inputs: &inputs,
            recipe,
            origin,
            seed,
            arch_table,
            vocab: vocab.as_ref(),
            tensors: Vec::new(),
        };

        let out_layer = Self::plan_tensors(&mut plan, &inputs, &slices, globals.as_ref())?;
        let tensors = plan.tensors;

        let mut metadata = Self::metadata(
            recipe,
            recipe_text,
            &inputs,
            &slices,
            tokenizer_input,
            vocab.as_ref(),
            out_layer,
        )?;
        let deferred_hashes = Self::input_hashes(&inputs, &mut metadata, opts, origin)?;
        // The merge's own size, not its tokenizer source's (a stack of 20 + 20 layers of a
        // 30-layer model is a bigger model), labelled as convert_hf_to_gguf.py labels one.
        let params = ParamCount::of(
            tensors
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice())),
        );
        metadata.set("general.size_label", Value::String(params.size_label()));
        Ok(MergePlan {
            inputs,
            tensors,
            metadata,
            tokenizer_input,
            vocab,
            current: Mutex::new(None),
            chunk_bytes: chunk_bytes(opts.chunk_bytes)?,
            notes: Mutex::new(Vec::new()),
            pool: Default::default(),
            deferred_hashes,
        })
    }

    /// Step 1, normalize: the recipe's `models:` or `slices:` (and smelt's `globals:`) as
    /// slices of sources, each input opened once (into `inputs`).
    fn normalize<'a>(
        recipe: &'a Recipe,
        inputs: &mut Vec<Input>,
        origin: &str,
        recipe_dir: &Path,
        named: &[(String, PathBuf)],
        opts: &PlanOptions,
    ) -> Result<(Vec<Slice<'a>>, Option<Slice<'a>>)> {
        // Inputs, each opened once.
        let mut open = |r: &Spanned<String>| -> Result<usize> {
            if let Some(i) = inputs.iter().position(|x| x.reference == r.value) {
                return Ok(i);
            }
            inputs.push(open_input(r, origin, recipe_dir, named, opts)?);
            Ok(inputs.len() - 1)
        };
        let top_method = methods::find(&recipe.merge_method.value)
            .map_err(|e| at(origin, &recipe.merge_method, e))?;
        let top_base = recipe.base_model.as_ref().map(&mut open).transpose()?;
        let mut slices: Vec<Slice> = Vec::new();
        if let Some(models) = &recipe.models {
            let mut sources = Vec::new();
            for m in models {
                let i = open(&m.model)?;
                sources.push(SliceSource(
                    i,
                    [0, -1],
                    &m.parameters,
                    &m.model,
                    m.model.referenced.line(),
                ));
            }
            if let (Some(b), Some(bref)) = (top_base, &recipe.base_model) {
                if !sources.iter().any(|s| s.0 == b) {
                    sources.push(SliceSource(
                        b,
                        [0, -1],
                        &NO_PARAMS,
                        bref,
                        bref.referenced.line(),
                    ));
                }
            }
            let base = top_base.and_then(|b| sources.iter().position(|s| s.0 == b));
            slices.push(Slice {
                sources,
                base,
                params: None,
                method: top_method,
                method_at: &recipe.merge_method,
                repeat: 1,
            });
        } else {
            for s in recipe.slices.as_deref().unwrap_or_default() {
                slices.push(Self::slice(
                    s, recipe, &mut open, origin, top_method, top_base,
                )?);
            }
        }
        let mut globals: Option<Slice> = None;
        if let Some(g) = &recipe.globals {
            let (method, method_at) = own_method(&g.merge_method, recipe, origin, top_method)?;
            let base_input = g
                .base_model
                .as_ref()
                .map(&mut open)
                .transpose()?
                .or(top_base);
            let mut sources = Vec::new();
            for m in &g.models {
                let i = open(&m.model)?;
                sources.push(SliceSource(
                    i,
                    [0, -1],
                    &m.parameters,
                    &m.model,
                    m.model.referenced.line(),
                ));
            }
            let base = base_input.and_then(|b| sources.iter().position(|s| s.0 == b));
            globals = Some(Slice {
                sources,
                base,
                params: Some(&g.parameters),
                method,
                method_at,
                repeat: 1,
            });
        }
        // A tokenizer source that is not merged: opened for its tokenizer alone, as mergekit
        // reads any model's tokenizer.
        if let Some(donor) = tokenizer_model(recipe) {
            open(&donor)?;
        }
        Ok((slices, globals))
    }

    /// Step 2, validate: something to merge, one architecture, layer ranges inside each
    /// input (open ranges resolved), equal lengths within a slice, each method's input count
    /// and base, and a bounded number of output layers.
    fn validate<'a>(
        inputs: &[Input],
        slices: &mut [Slice<'a>],
        globals: &mut Option<Slice<'a>>,
        recipe: &Recipe,
        origin: &str,
    ) -> Result<()> {
        // `models: []`, `slices: []` or a `globals:` without models: nothing to merge.
        if slices.is_empty()
            || slices
                .iter()
                .chain(globals.iter())
                .any(|s| s.sources.is_empty())
        {
            return Err(at(
                origin,
                &recipe.merge_method,
                "the recipe names no model to merge (`models` or `slices` is empty)",
            ));
        }
        // Every input must be the same architecture.
        let arch_of = |i: usize| {
            inputs[i]
                .store
                .metadata
                .architecture()
                .unwrap_or("?")
                .to_string()
        };
        let first_arch = arch_of(slices[0].sources[0].0);
        for (i, inp) in inputs.iter().enumerate() {
            if arch_of(i) != first_arch {
                return Err(Error::Invalid(format!(
                    "{origin}: model `{}` is {} but `{}` is {first_arch}: one merge needs one architecture",
                    inp.reference,
                    arch_of(i),
                    inputs[slices[0].sources[0].0].reference
                )));
            }
        }
        // A bare safetensors file has no config.json, hence no block_count: count its blocks.
        let n_layer = |i: usize| match inputs[i].store.hparam("block_count") {
            Some(n) => n as i64,
            None => inputs[i]
                .store
                .tensors
                .iter()
                .filter_map(|t| arch::layer_index(&t.name))
                .map(|(l, _)| l as i64 + 1)
                .max()
                .unwrap_or(0),
        };
        // Resolve layer ranges (models: whole models) and check them.
        for sl in slices.iter_mut().chain(globals.iter_mut()) {
            for src in sl.sources.iter_mut() {
                if src.1[1] < 0 {
                    src.1 = [0, n_layer(src.0)];
                }
                let [a, b] = src.1;
                if a < 0 || b <= a || b > n_layer(src.0) {
                    return Err(Error::Invalid(format!(
                        "{origin}:{}: layer_range [{a}, {b}] is out of bounds for `{}` ({} layers)",
                        src.4,
                        inputs[src.0].reference,
                        n_layer(src.0)
                    )));
                }
            }
            let len = sl.sources[0].1[1] - sl.sources[0].1[0];
            if let Some(s) = sl.sources.iter().find(|s| s.1[1] - s.1[0] != len) {
                return Err(at(
                    origin,
                    s.3,
                    "all sources of a slice must have the same number of layers",
                ));
            }
            let (lo, hi) = sl.method.inputs();
            if sl.sources.len() < lo || sl.sources.len() > hi {
                return Err(at(
                    origin,
                    sl.method_at,
                    format!(
                        "{} takes {lo} to {hi} inputs, this slice has {}",
                        sl.method.name(),
                        sl.sources.len()
                    ),
                ));
            }
            if sl.method.base() == Base::Required && sl.base.is_none() {
                return Err(at(
                    origin,
                    sl.method_at,
                    format!("{} needs a base_model among its inputs", sl.method.name()),
                ));
            }
        }

        // Output layers, repeats included: bounded so that a typo (or a hostile `repeat` or
        // `block_count`) cannot plan billions of tensors.
        let out_layers: u64 = slices
            .iter()
            .map(|sl| (sl.sources[0].1[1] - sl.sources[0].1[0]) as u64 * u64::from(sl.repeat))
            .sum();
        if out_layers > MAX_OUT_LAYERS {
            return Err(at(
                origin,
                slices[0].method_at,
                format!("the recipe makes {out_layers} layers, more than the {MAX_OUT_LAYERS} smelt allows"),
            ));
        }
        Ok(())
    }

    /// Step 3, tensors: embeddings from the first slice (or `globals:`), then each slice's
    /// layers (repeats included, gradients over the whole repeated stack), then the final norm
    /// and output head from the last slice. Returns the number of output layers.
    fn plan_tensors(
        plan: &mut PlanBuilder,
        inputs: &[Input],
        slices: &[Slice],
        globals: Option<&Slice>,
    ) -> Result<u32> {
        // Embeddings from the first slice, then the layers, then norm/output from the last.
        let global_names = |i: usize| -> Vec<String> {
            inputs[i]
                .store
                .tensors
                .iter()
                .filter(|t| arch::layer_index(&t.name).is_none())
                .map(|t| t.name.clone())
                .collect()
        };
        let pre = globals.unwrap_or(&slices[0]);
        for g in global_names(pre.sources[0].0)
            .iter()
            .filter(|n| n.starts_with("token_embd"))
        {
            plan.tensor(g, pre, 0.0, |_| g.clone())?;
        }
        let mut out_layer = 0u32;
        for sl in slices {
            let len = (sl.sources[0].1[1] - sl.sources[0].1[0]) as u32;
            let total = len * sl.repeat;
            for idx in 0..total {
                let t = if total > 1 {
                    idx as f64 / (total - 1) as f64
                } else {
                    1.0
                };
                let offset = (idx % len) as i64;
                let SliceSource(s0, r0, ..) = sl.sources[0];
                let src_layer = r0[0] + offset;
                let prefix = format!("blk.{src_layer}.");
                let suffixes: Vec<String> = inputs[s0]
                    .store
                    .tensors
                    .iter()
                    .filter_map(|t| t.name.strip_prefix(&prefix).map(String::from))
                    .collect();
                for suffix in &suffixes {
                    let out_name = format!("blk.{out_layer}.{suffix}");
                    plan.tensor(&out_name, sl, t, |k| {
                        format!("blk.{}.{suffix}", sl.sources[k].1[0] + offset)
                    })?;
                }
                out_layer += 1;
            }
        }
        let post = globals.unwrap_or(slices.last().expect("at least one slice"));
        for g in global_names(post.sources[0].0)
            .iter()
            .filter(|n| !n.starts_with("token_embd"))
        {
            plan.tensor(g, post, 0.0, |_| g.clone())?;
        }
        Ok(out_layer)
    }

    fn slice<'a>(
        s: &'a OutputSlice,
        recipe: &'a Recipe,
        open: &mut impl FnMut(&Spanned<String>) -> Result<usize>,
        origin: &str,
        top_method: &'static dyn Method,
        top_base: Option<usize>,
    ) -> Result<Slice<'a>> {
        let (method, method_at) = own_method(&s.merge_method, recipe, origin, top_method)?;
        let base_input = s
            .base_model
            .as_ref()
            .map(&mut *open)
            .transpose()?
            .or(top_base);
        let mut sources = Vec::new();
        for src in &s.sources {
            let InputSlice {
                model,
                layer_range,
                parameters,
            } = src;
            let i = open(model)?;
            sources.push(SliceSource(
                i,
                layer_range.value,
                parameters,
                model,
                layer_range.referenced.line(),
            ));
        }
        if sources.is_empty() {
            return Err(at(origin, method_at, "a slice needs at least one source"));
        }
        let base = base_input.and_then(|b| sources.iter().position(|x| x.0 == b));
        let repeat = s.repeat.as_ref().map_or(1, |r| r.value);
        if repeat == 0 || u64::from(repeat) > MAX_OUT_LAYERS {
            return Err(at(
                origin,
                s.repeat.as_ref().expect("set"),
                format!("repeat must be from 1 to {MAX_OUT_LAYERS}, not {repeat}"),
            ));
        }
        Ok(Slice {
            sources,
            base,
            params: Some(&s.parameters),
            method,
            method_at,
            repeat,
        })
    }

    /// Which input's tokenizer the output carries, and the vocabulary plan when the inputs'
    /// vocabularies differ from it (mergekit's `tokenizer_source` and `tokenizer:` block).
    fn vocabulary(
        recipe: &Recipe,
        inputs: &[Input],
        slices: &[Slice],
        origin: &str,
    ) -> Result<(usize, Option<VocabPlan>)> {
        // The recipe's base model (mergekit's PermutedVocabulary.base_model), and the input
        // `base` and a union start from: it, else the first model (mergekit takes an
        // arbitrary one: the first of a Python set).
        let base_model = slices[0].base.map(|b| slices[0].sources[b].0);
        let base = base_model.unwrap_or(slices[0].sources[0].0);
        // (source as written, its line, tokens in recipe order, pad_to_multiple_of)
        let (written, spanned_line, tokens, pad) = match (
            &recipe.tokenizer_source,
            &recipe.tokenizer,
        ) {
            (Some(t), _) => (Some(t.value.clone()), t.referenced.line(), Vec::new(), None),
            (None, Some(block)) => {
                let line = block.referenced.line();
                let obj = block.value.value.as_object().ok_or_else(|| {
                    Error::Invalid(format!("{origin}:{line}: `tokenizer:` must be a mapping"))
                })?;
                for k in obj.keys() {
                    if !matches!(k.as_str(), "source" | "tokens" | "pad_to_multiple_of") {
                        return Err(Error::Invalid(format!(
                            "{origin}:{line}: unknown key `tokenizer.{k}` (source, tokens, pad_to_multiple_of)"
                        )));
                    }
                }
                let source = match obj.get("source") {
                    None => "union".to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => {
                        return Err(Error::Invalid(format!(
                            "{origin}:{line}: tokenizer.source must be base, union or a model, not {other}"
                        )))
                    }
                };
                let tokens: Vec<(String, serde_json::Value)> = match obj.get("tokens") {
                    None => Vec::new(),
                    Some(serde_json::Value::Object(m)) => block
                        .value
                        .token_order
                        .iter()
                        .filter_map(|k| Some((k.clone(), m.get(k)?.clone())))
                        .collect(),
                    Some(_) => {
                        return Err(Error::Invalid(format!(
                        "{origin}:{line}: tokenizer.tokens must be a mapping of token to settings"
                    )))
                    }
                };
                let pad = match obj.get("pad_to_multiple_of") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => Some(v.as_u64().filter(|&n| n > 0 && n <= MAX_PAD_MULTIPLE).ok_or_else(|| {
                        Error::Invalid(format!(
                            "{origin}:{line}: tokenizer.pad_to_multiple_of must be an integer from 1 to {MAX_PAD_MULTIPLE}, not {v}"
                        ))
                    })? as usize),
                };
                (Some(source), line, tokens, pad)
            }
            (None, None) => (None, 0, Vec::new(), None),
        };
        let source = match written.as_deref() {
            None | Some("base") => Some(base),
            Some("union") => None,
            Some(name) => Some(inputs.iter().position(|i| i.reference == name).ok_or_else(|| {
                Error::Invalid(format!(
                    "{origin}:{spanned_line}: tokenizer source `{name}` is not one of the recipe's models"
                ))
            })?),
        };
        let vocab_len = |i: usize| {
            inputs[i]
                .store
                .metadata
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|a| a.len())
        };
        if written.is_none() {
            // No tokenizer handling asked for: the vocabularies must already agree.
            for (i, inp) in inputs.iter().enumerate() {
                if let (Some(a), Some(b)) = (vocab_len(i), vocab_len(base)) {
                    if a != b {
                        return Err(Error::Invalid(format!(
                            "{origin}: `{}` has {a} tokens but `{}` has {b}: set `tokenizer_source` (base, a model or union) to merge different vocabularies",
                            inp.reference, inputs[base].reference
                        )));
                    }
                }
            }
            return Ok((base, None));
        }
        let rows = |i: usize| {
            let st = &inputs[i].store;
            st.find("token_embd.weight")
                .map(|t| st.tensors[t].n_rows())
                .or_else(|| vocab_len(i))
                .unwrap_or(0)
        };
        let views: Vec<InputVocab> = inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| InputVocab {
                name: &inp.reference,
                metadata: &inp.store.metadata,
                n_rows: rows(i),
            })
            .collect();
        let req = VocabRequest {
            source,
            base,
            base_model,
            tokens: &tokens,
            pad_to_multiple_of: pad,
        };
        let plan = VocabPlan::new(&views, &req)
            .map_err(|e| Error::Invalid(format!("{origin}:{spanned_line}: {e}")))?;
        Ok((source.unwrap_or(base), plan))
    }

    /// The output's metadata: the tokenizer source's metadata (with the planned vocabulary),
    /// the new block count, and provenance.
    fn metadata(
        recipe: &Recipe,
        recipe_text: &str,
        inputs: &[Input],
        slices: &[Slice],
        source: usize,
        vocab: Option<&VocabPlan>,
        n_layers: u32,
    ) -> Result<Metadata> {
        // A tokenizer donor that is not merged gives its tokenizer only: the architecture's
        // keys are the merged models' (the base's, else the first's).
        let merged = |i: usize| {
            slices
                .iter()
                .any(|s| s.sources.iter().any(|src| src.0 == i))
        };
        let mut m = if merged(source) {
            inputs[source].store.metadata.clone()
        } else {
            let base = slices[0]
                .base
                .map(|b| slices[0].sources[b].0)
                .unwrap_or(slices[0].sources[0].0);
            let mut m = inputs[base].store.metadata.clone();
            m.retain(|k, _| !k.starts_with("tokenizer."));
            for (k, v) in inputs[source].store.metadata.iter() {
                if k.starts_with("tokenizer.") {
                    m.set(k, v.clone());
                }
            }
            m
        };
        m.retain(|k, _| {
            !matches!(k, "general.file_type" | "general.quantization_version")
                && !k.starts_with("smelt.")
        });
        let arch = m.architecture().unwrap_or("llama").to_string();
        m.set(format!("{arch}.block_count"), Value::U32(n_layers));
        if let Some(v) = vocab {
            v.apply(&mut m);
            if m.get(&format!("{arch}.vocab_size")).is_some() {
                m.set(format!("{arch}.vocab_size"), Value::U32(v.n_rows as u32));
            }
        }
        let name = recipe
            .output
            .as_ref()
            .and_then(|o| o.name.as_ref())
            .or(recipe.name.as_ref());
        if let Some(n) = name {
            m.set("general.name", Value::String(n.value.clone()));
        }
        if let Some(ct) = &recipe.chat_template {
            let all = inputs.iter().map(|i| &i.store.metadata);
            if let Some(t) = chat_template::resolve(&ct.value, all) {
                m.set("tokenizer.chat_template", Value::String(t));
            }
        }
        m.retain(|k, _| !k.starts_with("general.base_model."));
        m.set("general.base_model.count", Value::U32(inputs.len() as u32));
        for (i, inp) in inputs.iter().enumerate() {
            let stem = inp
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            m.set(format!("general.base_model.{i}.name"), Value::String(stem));
        }
        m.set(
            "smelt.version",
            Value::String(env!("CARGO_PKG_VERSION").into()),
        );
        m.set("smelt.recipe", Value::String(recipe_text.to_string()));
        Ok(m)
    }

    /// Record the inputs' sizes and SHA-256 in `m` as `opts` asks (none for a dry run or a
    /// shard that skips them): hashed now, or (`defer_input_hashes`, not a replay) as
    /// placeholders, in which case the progress display for `hash_beside` is returned.
    pub(super) fn input_hashes(
        inputs: &[Input],
        m: &mut Metadata,
        opts: &PlanOptions,
        origin: &str,
    ) -> Result<Option<crate::progress::Display>> {
        let display = opts.progress.unwrap_or(crate::progress::Display::Hidden);
        if opts.dry_run || opts.skip_input_hashes {
            return Ok(None);
        }
        let defer = opts.defer_input_hashes && opts.recorded.is_none();
        let digests = match defer {
            // Each input's size now, its SHA-256 to come.
            true => inputs.iter().map(|inp| (inp.size(), None)).collect(),
            false => Self::hash_inputs(inputs, display)?,
        };
        Self::record_inputs(inputs, m, digests, opts.recorded, origin)?;
        Ok(defer.then_some(display))
    }

    /// Each input's size and SHA-256, inputs hashed in parallel (one per core), each read
    /// once, in order.
    fn hash_inputs(
        inputs: &[Input],
        display: crate::progress::Display,
    ) -> Result<Vec<(u64, Option<String>)>> {
        use crate::progress::{Progress, Unit};
        use rayon::prelude::*;
        let total = inputs.iter().map(Input::size).sum();
        let progress = Progress::new(display, "hashing inputs", total, Unit::Bytes);
        let digests = inputs
            .par_iter()
            .map(|inp| {
                let (size, sha) = inp.store.sha256_with(&|n| progress.inc(n))?;
                Ok((size, Some(sha)))
            })
            .collect::<Result<_>>()?;
        progress.finish();
        Ok(digests)
    }

    /// Record each input's size and SHA-256 in `m` (`smelt.input.N.*`; a SHA-256 not yet known
    /// as `SHA256_PLACEHOLDER`); with `recorded` (a replay), each must match what the earlier
    /// merge recorded.
    fn record_inputs(
        inputs: &[Input],
        m: &mut Metadata,
        digests: Vec<(u64, Option<String>)>,
        recorded: Option<&Metadata>,
        origin: &str,
    ) -> Result<()> {
        for (i, (inp, (size, sha))) in inputs.iter().zip(digests).enumerate() {
            if let (Some(r), Some(sha)) = (recorded, &sha) {
                let was_size = r.get_u64(&format!("smelt.input.{i}.size"));
                let was_sha = r.get_str(&format!("smelt.input.{i}.sha256"));
                let (Some(was_size), Some(was_sha)) = (was_size, was_sha) else {
                    return Err(Error::Invalid(format!(
                        "{origin}: input {i} `{}` has no recorded size and SHA-256 (smelt.input.{i}.*): cannot check it is the model merged then",
                        inp.reference
                    )));
                };
                if was_size != size || was_sha != sha {
                    return Err(Error::Invalid(format!(
                        "{origin}: input {i} `{}` ({}) has changed since it was merged: now {size} bytes, SHA-256 {sha}; recorded {was_size} bytes, SHA-256 {was_sha}",
                        inp.reference,
                        inp.path.display()
                    )));
                }
            }
            m.set(
                format!("smelt.input.{i}.file"),
                Value::String(inp.reference.clone()),
            );
            m.set(format!("smelt.input.{i}.size"), Value::U64(size));
            let sha = sha.unwrap_or_else(|| SHA256_PLACEHOLDER.to_string());
            m.set(format!("smelt.input.{i}.sha256"), Value::String(sha));
        }
        Ok(())
    }

    /// The inputs' SHA-256 as `smelt.input.N.sha256` values, inputs hashed in parallel on
    /// threads of their own (as many as the merge's), beside the merge writing the output.
    pub(super) fn hash_beside(
        inputs: &[Input],
        display: crate::progress::Display,
        cancel: &AtomicBool,
    ) -> Result<Vec<(String, Value)>> {
        use crate::progress::{Display, Progress, Unit};
        let n = inputs.len();
        let total = inputs.iter().map(Input::size).sum();
        // Lines in a log; no second bar on a terminal, where the writing bar is drawn.
        let display = match display {
            Display::Bar => Display::Hidden,
            d => d,
        };
        let progress = Progress::new(display, "hashing inputs", total, Unit::Bytes);
        let next = AtomicUsize::new(0);
        let digests: Vec<Mutex<Option<Result<String>>>> =
            (0..n).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..rayon::current_num_threads().clamp(1, n.max(1)) {
                scope.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = digests.get(k) else { break };
                    let digest = inputs[k].store.sha256_unless(&|b| progress.inc(b), cancel);
                    *slot.lock().expect("digest lock") = Some(digest.map(|(_, sha)| sha));
                });
            }
        });
        if !cancel.load(Ordering::Relaxed) {
            progress.finish();
        }
        digests
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let digest = d.into_inner().expect("digest lock");
                let sha = digest.expect("every input hashed")?;
                Ok((format!("smelt.input.{i}.sha256"), Value::String(sha)))
            })
            .collect()
    }

    /// `merge --dry-run`: each output tensor with its method, sources and output type per
    /// file (what would be written), computed from headers only.
    pub fn describe(&self, qplan: &crate::quantize::QuantizePlan) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "inputs:");
        for (i, inp) in self.inputs.iter().enumerate() {
            let _ = writeln!(out, "  {i}: {} ({})", inp.reference, inp.path.display());
        }
        for o in &qplan.outputs {
            let _ = writeln!(out, "{}:", o.path.display());
            for (&i, pt) in qplan.order.iter().zip(&o.tensors) {
                let Some(pt) = pt else { continue };
                let t = &self.tensors[i];
                let sources: Vec<String> = t
                    .sources
                    .iter()
                    .map(|&(inp, ti)| {
                        let base = if Some(inp) == t.base.map(|b| t.sources[b].0) {
                            " (base)"
                        } else {
                            ""
                        };
                        format!(
                            "{}:{}{base}",
                            self.inputs[inp].reference, self.inputs[inp].store.tensors[ti].name
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "  {} {:?} {} [{}] {} -> {}",
                    pt.name,
                    t.shape,
                    t.method.name(),
                    sources.join(", "),
                    t.source_type.name(),
                    pt.ty.name()
                );
            }
        }
        out
    }

    /// Human summary lines: method notes per tensor.
    pub fn summary(&self) -> Vec<String> {
        let notes = self.notes.lock().expect("notes lock");
        notes.iter().map(|(t, n)| format!("{t}: {n}")).collect()
    }

    /// Rows per chunk for tensor `i`.
    fn chunk_rows(&self, i: usize) -> usize {
        let row_len = (self.tensors[i].shape[0] as usize).max(1);
        (self.chunk_bytes / 4 / row_len).max(1)
    }

    /// Prepare tensor `i`'s method: the passes over its inputs that gather what it needs of
    /// the whole tensor.
    fn prepare(&self, i: usize) -> Result<Current> {
        let t = &self.tensors[i];
        let row_len = t.shape[0] as usize;
        let remapped = match (t.remap_vocab, &self.vocab) {
            (true, Some(v)) => {
                let data: Vec<Vec<f32>> = t
                    .sources
                    .iter()
                    .map(|&(inp, ti)| {
                        let v = self.inputs[inp].store.read_f32(ti);
                        self.inputs[inp].store.release(ti);
                        v
                    })
                    .collect::<Result<_>>()?;
                let tagged: Vec<(usize, Vec<f32>)> =
                    t.sources.iter().map(|s| s.0).zip(data).collect();
                Some(v.remap(&tagged, row_len))
            }
            _ => None,
        };
        // A method reads only the parameters it declares (what the recipe can set and what
        // the planner resolved); reading another name is a bug in the method, not a 0.
        let declared = |name: &str| {
            assert!(
                t.method.params().iter().any(|p| p.name == name),
                "{} read parameter `{name}`, which it does not declare",
                t.method.name()
            );
        };
        let shared = |name: &str| {
            declared(name);
            t.shared
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |p| p.1)
        };
        let per = |k: usize, name: &str| {
            declared(name);
            t.per_input[k]
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |p| p.1)
        };
        let rows = SourceRows {
            plan: self,
            t,
            remapped: remapped.as_deref(),
            row_len,
        };
        let n_rows = t.shape[1..].iter().product::<u64>() as usize;
        let input = MergeInput {
            n_inputs: t.sources.len(),
            base: t.base,
            row_len,
            n_rows,
            shared: &shared,
            per_input: &per,
            seed: t.seed,
            rows: &rows,
            chunk_rows: self.chunk_rows(i),
            apply_rows: crate::write::rows_per_chunk(row_len, n_rows),
            held: Default::default(),
            pool: &self.pool,
        };
        let apply = t
            .method
            .prepare(&input)
            .map_err(|e| self.name_tensor(i, e))?;
        let held = input.take_held();
        // Rows are read into `bufs` only when the passes did not hold the whole tensor.
        let n_bufs = if held.is_some() { 0 } else { t.sources.len() };
        let bufs = (0..n_bufs)
            .map(|_| self.pool.take(input.apply_len()))
            .collect();
        Ok(Current {
            i,
            apply,
            remapped,
            held,
            bufs,
        })
    }

    /// A tensor is done: its method's remark goes to the summary, its buffers to the pool.
    fn finish(&self, c: Current) {
        if let Some(text) = c.apply.note().text {
            self.notes
                .lock()
                .expect("notes lock")
                .push((self.tensors[c.i].name.clone(), text));
        }
        self.pool.give(c.bufs);
        self.pool.give(c.held.into_iter().flatten());
        self.pool.give(c.apply.into_buffers());
    }

    /// A method's complaint about its parameters names the tensor it was merging.
    fn name_tensor(&self, i: usize, e: Error) -> Error {
        match e {
            Error::Invalid(m) => Error::Invalid(format!("tensor `{}`: {m}", self.tensors[i].name)),
            other => other,
        }
    }
}

/// The rows of one output tensor's inputs, as its method's passes read them.
struct SourceRows<'a> {
    plan: &'a MergePlan,
    t: &'a OutTensor,
    remapped: Option<&'a [Vec<f32>]>,
    row_len: usize,
}

impl Rows for SourceRows<'_> {
    fn read(&self, first_row: usize, bufs: &mut [Vec<f32>]) -> Result<()> {
        for (k, buf) in bufs.iter_mut().enumerate() {
            match self.remapped {
                Some(r) => {
                    let start = first_row * self.row_len;
                    let n = buf.len();
                    buf.copy_from_slice(&r[k][start..start + n]);
                }
                None => {
                    let (inp, ti) = self.t.sources[k];
                    self.plan.inputs[inp].store.read_rows(ti, first_row, buf)?;
                }
            }
        }
        Ok(())
    }

    fn done(&self, first_row: usize, n_rows: usize) {
        if self.remapped.is_some() {
            return;
        }
        // Those rows' pages can go: a later pass faults them back in from the file.
        for &(inp, ti) in &self.t.sources {
            let store = &self.plan.inputs[inp].store;
            if store.tensors[ti].rows == crate::store::RowOrder::AsStored {
                store.release_range(ti, first_row, n_rows);
            }
        }
    }
}

struct PlanBuilder<'a> {
    inputs: &'a [Input],
    recipe: &'a Recipe,
    origin: &'a str,
    seed: u64,
    arch_table: Option<&'static arch::Architecture>,
    vocab: Option<&'a VocabPlan>,
    tensors: Vec<OutTensor>,
}

impl PlanBuilder<'_> {
    /// Add output tensor `out_name`, merged from each source's `source_name(k)` by the slice's
    /// method with parameters evaluated at `t`.
    fn tensor(
        &mut self,
        out_name: &str,
        sl: &Slice,
        t: f64,
        source_name: impl Fn(usize) -> String,
    ) -> Result<()> {
        let mut sources = Vec::new();
        let mut shape: Option<Vec<u64>> = None;
        // Token-indexed tensors are laid out in the output vocabulary when it differs; then
        // only their row length must agree.
        let remap_vocab = self.vocab.is_some() && VOCAB_TENSORS.contains(&out_name);
        for (k, src) in sl.sources.iter().enumerate() {
            let inp = &self.inputs[src.0];
            let name = source_name(k);
            let Some(ti) = inp.store.find(&name) else {
                return Err(Error::Invalid(format!(
                    "{}: tensor `{name}` is missing from `{}`",
                    self.origin, inp.reference
                )));
            };
            let s = &inp.store.tensors[ti].shape;
            if let Some(first) = &shape {
                let agree = if remap_vocab {
                    first.len() == 2 && s.len() == 2 && first[0] == s[0]
                } else {
                    first == s
                };
                if !agree {
                    return Err(Error::Invalid(format!(
                        "{}: tensor `{name}` has shape {s:?} in `{}` but {first:?} in `{}`",
                        self.origin, inp.reference, self.inputs[sl.sources[0].0].reference
                    )));
                }
            }
            shape = Some(s.clone());
            sources.push((src.0, ti));
        }
        let mut shape = shape.expect("a slice has sources");
        if let (true, Some(v)) = (remap_vocab, self.vocab) {
            shape[1] = v.n_rows as u64;
        }
        // Filters match the canonical name, and the Hugging Face name where the architecture
        // table knows it (`o_proj`, `self_attn`, `mlp` ...).
        let hf = self.arch_table.and_then(|a| a.hf_name(out_name));
        let names: Vec<&str> = std::iter::once(out_name).chain(hf.as_deref()).collect();
        let method = sl.method;
        let origin = self.origin;
        let resolve =
            |scopes: &ParamScopes, spec: &methods::ParamSpec, model: Option<&str>| -> Result<f64> {
                let for_model = || {
                    model
                        .map(|m| format!(" for model `{m}`"))
                        .unwrap_or_default()
                };
                match scopes.value(spec.name, &names, t) {
                    Some(Ok((v, line))) => {
                        methods::check_param(method.name(), spec.name, v).map_err(|e| {
                            Error::Invalid(format!(
                                "{origin}:{line}: {} parameter `{}`{} {e} (tensor `{out_name}`)",
                                method.name(),
                                spec.name,
                                for_model()
                            ))
                        })?;
                        Ok(v)
                    }
                    Some(Err(e)) => Err(Error::Invalid(format!("{origin}: {e}"))),
                    None => spec.default.ok_or_else(|| {
                        Error::Invalid(format!(
                            "{origin}:{}: {} needs parameter `{}`{} (tensor `{out_name}`)",
                            sl.method_at.referenced.line(),
                            method.name(),
                            spec.name,
                            for_model()
                        ))
                    }),
                }
            };
        let top = Some(&self.recipe.parameters);
        let shared_scopes = ParamScopes(vec![sl.params, top]);
        let mut shared = Vec::new();
        for spec in method.params().iter().filter(|p| p.scope == Scope::Shared) {
            shared.push((spec.name, resolve(&shared_scopes, spec, None)?));
        }
        let mut per_input = Vec::new();
        for (k, src) in sl.sources.iter().enumerate() {
            let scopes = ParamScopes(vec![Some(src.2), sl.params, top]);
            let mut vals = Vec::new();
            for spec in method.params().iter().filter(|p| p.scope != Scope::Shared) {
                if spec.scope == Scope::NonBase && sl.base == Some(k) {
                    continue;
                }
                vals.push((
                    spec.name,
                    resolve(&scopes, spec, Some(&self.inputs[src.0].reference))?,
                ));
            }
            per_input.push(vals);
        }
        methods::check_combination(method.name(), &shared, &per_input).map_err(|e| {
            Error::Invalid(format!(
                "{origin}:{}: {}: {e} (tensor `{out_name}`)",
                sl.method_at.referenced.line(),
                method.name()
            ))
        })?;
        let source_type = self.inputs[sources[0].0].store.tensors[sources[0].1].ty;
        self.tensors.push(OutTensor {
            name: out_name.to_string(),
            shape,
            source_type,
            method,
            sources,
            base: sl.base,
            shared,
            per_input,
            seed: crate::seed::fnv1a(self.seed, out_name),
            remap_vocab,
        });
        Ok(())
    }
}

impl MergePlan {
    /// A NaN or infinity in a model is never what a recipe asked for (weights summing to
    /// almost 0, huge weights or scales, non-finite inputs): merged rows `first_row..` of
    /// tensor `t` are checked.
    fn check_finite(
        &self,
        t: &OutTensor,
        first_row: usize,
        row_len: usize,
        o: &[f32],
    ) -> Result<()> {
        if let Some(j) = crate::write::first_non_finite(o) {
            return Err(Error::Invalid(format!(
                "tensor `{}`: the merged value at element {} is {} (check the recipe's weights and parameters, and the inputs)",
                t.name,
                first_row * row_len + j,
                o[j]
            )));
        }
        Ok(())
    }
}

impl TensorProducer for MergePlan {
    fn n_tensors(&self) -> usize {
        self.tensors.len()
    }
    fn model_metadata(&self) -> &crate::gguf::Metadata {
        &self.metadata
    }
    fn name(&self, i: usize) -> &str {
        &self.tensors[i].name
    }
    fn shape(&self, i: usize) -> &[u64] {
        &self.tensors[i].shape
    }
    fn source_type(&self, i: usize) -> GgmlType {
        self.tensors[i].source_type
    }
    fn read_rows(&self, i: usize, first_row: usize, out: &mut [f32]) -> Result<()> {
        let mut cur = self.current.lock().expect("merge cache lock");
        if cur.as_ref().map(|c| c.i) != Some(i) {
            if let Some(done) = cur.take() {
                self.finish(done);
            }
            *cur = Some(self.prepare(i)?);
        }
        let Current {
            apply,
            remapped,
            held,
            bufs,
            ..
        } = cur.as_mut().expect("just prepared");
        let t = &self.tensors[i];
        let row_len = t.shape[0] as usize;
        if let Some(held) = held {
            // The whole tensor is in memory: the rows asked for, in one go.
            let range = first_row * row_len..first_row * row_len + out.len();
            let x: Vec<&[f32]> = held.iter().map(|b| &b[range.clone()]).collect();
            apply
                .apply(first_row, &x, out)
                .map_err(|e| self.name_tensor(i, e))?;
            return self.check_finite(t, first_row, row_len, out);
        }
        let rows = SourceRows {
            plan: self,
            t,
            remapped: remapped.as_deref(),
            row_len,
        };
        // The rows asked for, a chunk at a time.
        let n_out = out.len() / row_len.max(1);
        let step = self.chunk_rows(i);
        let mut r = 0;
        while r < n_out {
            let n = step.min(n_out - r);
            for b in bufs.iter_mut() {
                b.resize(n * row_len, 0.0);
            }
            rows.read(first_row + r, bufs)?;
            let x: Vec<&[f32]> = bufs.iter().map(|b| b.as_slice()).collect();
            let o = &mut out[r * row_len..(r + n) * row_len];
            apply
                .apply(first_row + r, &x, o)
                .map_err(|e| self.name_tensor(i, e))?;
            rows.done(first_row + r, n);
            self.check_finite(t, first_row + r, row_len, o)?;
            r += n;
        }
        Ok(())
    }
    fn raw(&self, i: usize) -> Option<&[u8]> {
        // A method that copies its one input (an unscaled passthrough) is the source tensor.
        let t = &self.tensors[i];
        let copies = t.per_input.len() == 1 && t.method.copies_input(&t.per_input[0]);
        if !copies || t.remap_vocab {
            return None;
        }
        let (inp, ti) = t.sources[0];
        let store = &self.inputs[inp].store;
        store.passthrough(ti)
    }
    fn release(&self, i: usize) {
        // The writer releases a tensor when it has written it, which may be after the
        // producer has moved on to the next one: only tensor `i` itself is dropped.
        let done = {
            let mut cur = self.current.lock().expect("merge cache lock");
            if cur.as_ref().is_some_and(|c| c.i == i) {
                cur.take()
            } else {
                None
            }
        };
        if let Some(c) = done {
            self.finish(c);
        }
        for &(inp, ti) in &self.tensors[i].sources {
            self.inputs[inp].store.release(ti);
        }
    }
    fn deferred_metadata(&self, cancel: &AtomicBool) -> Result<Vec<(String, Value)>> {
        match self.deferred_hashes {
            Some(display) => Self::hash_beside(&self.inputs, display, cancel),
            None => Ok(Vec::new()),
        }
    }
    fn input_files(&self) -> Vec<std::path::PathBuf> {
        self.inputs
            .iter()
            .flat_map(|inp| inp.store.input_files())
            .collect()
    }
}
