//! Command-line interface: argument parsing, progress and exit codes. No logic of its own.

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Value};
use crate::store::Store;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

pub use crate::app::text::{CALIBRATION_NAME, CALIBRATION_TEXT};

/// `0.1.0 (commit 1a2b3c4d5e6f)`: the version with the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SMELT_GIT_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "smelt",
    version = VERSION,
    about = "Merge and quantize LLMs straight to GGUF"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Worker threads (default: all cores). Never changes the output bytes.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// More log output (-v: info, -vv: debug); RUST_LOG, if set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors and warnings: no progress, no summary lines.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl Cli {
    /// The clap command with help text computed at run time (the quantization types table).
    pub fn command_with_help() -> clap::Command {
        use clap::CommandFactory;
        let types = types_help();
        Cli::command()
            .mut_subcommand("quantize", |c| c.after_long_help(types.clone()))
            .mut_subcommand("convert", |c| c.after_long_help(types))
    }

    /// Parse the process's arguments (exits with clap's message on bad arguments).
    pub fn parse_args() -> Cli {
        use clap::FromArgMatches;
        let matches = Cli::command_with_help().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// `--type` values with the bits per weight of their main tensor type.
fn types_help() -> String {
    use crate::quant::mix::{requires_imatrix, FileType};
    use std::fmt::Write as _;
    let mut s = String::from(
        "Types (--type): bits per weight of the type most tensors get; mixes give some tensors more.\n",
    );
    for ft in FileType::ALL {
        let needs = if requires_imatrix("blk.0.ffn_down.weight", ft.default_type(), *ft) {
            "  needs --imatrix"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {:<8} {:>6.2} bpw  ({}){needs}",
            ft.name(),
            ft.default_type().bits_per_weight(),
            ft.default_type()
        );
    }
    s
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show metadata and tensors of a GGUF file, split GGUF, safetensors file or HF folder.
    Inspect {
        path: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Print long arrays and strings in full (with --json).
        #[arg(long)]
        full: bool,
    },
    /// Perplexity of a model on a text, as llama-perplexity measures it; with --reference (or
    /// saved --ref-logits), llama-perplexity's KL-divergence, Δp and same-top-token statistics.
    Eval(EvalArgs),
    /// Compute an importance matrix on a text, as llama-imatrix does (its GGUF or legacy .dat
    /// format), for `quantize --imatrix`.
    Imatrix(ImatrixArgs),
    /// Quantize a model (GGUF of any type, safetensors or HF folder) to GGUF, as
    /// llama-quantize does: one file per type, all from one read of the input.
    Quantize(QuantizeArgs),
    /// Convert a Hugging Face folder to GGUF, as convert_hf_to_gguf.py then llama-quantize.
    #[command(
        long_about = "Convert a Hugging Face folder (config.json, safetensors, tokenizer files) to GGUF, \
as llama.cpp's convert_hf_to_gguf.py does, at every type of --types in one pass into the folder \
OUTPUT (`<name>-<TYPE>.gguf`; the name comes from config.json's _name_or_path or the folder, \
or --name). Takes quantize's options."
    )]
    Convert(QuantizeArgs),
    /// Merge models as a YAML recipe (mergekit's schema) says, straight to GGUF.
    Merge(MergeArgs),
    /// Propose the K most redundant layers to prune, as a passthrough recipe.
    PrunePlan(PrunePlanArgs),
    /// Drop the K most redundant layers and write the pruned model (GGUF, every kept tensor at
    /// its type); with --heal, train it against the original as `smelt heal` does.
    Prune(PruneArgs),
    /// Tune a recipe's `{search: [LOW, HIGH]}` values by measured perplexity (or KL
    /// divergence), merging each trial in memory, and write the recipe with the best values.
    Calibrate(CalibrateArgs),
    /// Train a few projections of a pruned model's layers around each cut to match the
    /// original's hidden states again (block-wise distillation), and write it as GGUF.
    Heal(HealArgs),
    /// Generate a deterministic random llama-family model (test fixtures, benchmarks).
    MakeTestModel(MakeTestModelArgs),
    /// The token ids of a text as llama.cpp gives them (llama-tokenize, llama-perplexity).
    ///
    /// As `smelt eval` and llama-perplexity tokenize: control tokens written in the text are
    /// plain text, user-defined ones are split out (llama-tokenize --no-parse-special).
    Tokenize(TokenizeArgs),
    /// Make a publishable GGUF release of a model or recipe: imatrix, every type in one pass,
    /// splits, a quality table against the source, a plot, README.md model card, release.json
    /// and SHA256SUMS. Rerun the same command to resume an interrupted release.
    Release(ReleaseArgs),
    /// Check a release folder: every file against SHA256SUMS, every GGUF header, every split
    /// set complete. Exit status 1 on any mismatch.
    Verify {
        /// The release folder.
        dir: PathBuf,
    },
    /// Print a shell completion script (`smelt completions bash > /etc/bash_completion.d/smelt`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args, Debug)]
pub struct PrunePlanArgs {
    pub model: PathBuf,
    /// Write the recipe here (default: stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub rank: RankArgs,
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The model (GGUF of any type, safetensors or HF folder).
    pub model: PathBuf,
    /// The pruned (or healed) GGUF.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Train the layers around each cut against MODEL (on --text) before writing.
    #[arg(long)]
    pub heal: bool,
    #[command(flatten)]
    pub training: HealTrainingArgs,
    /// With --heal: print the heal's report (losses, layers) as JSON on stdout.
    #[arg(long, requires = "heal")]
    pub json: bool,
}

/// Which layers to drop.
#[derive(clap::Args, Debug)]
pub struct RankArgs {
    /// How many layers to drop.
    #[arg(long)]
    pub count: usize,
    /// `weights`: the layers whose matrices are most similar to the layer below's (any
    /// K layers); `activations`: the block of K consecutive layers that changes the hidden
    /// state least on a text (angular distance, Gromov et al. 2024).
    #[arg(long = "rank", value_enum, default_value_t = Rank::Weights)]
    pub by: Rank,
    /// The text: with --rank activations the ranking's, with --heal the training's (default:
    /// the built-in calibration text).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// With --rank activations: tokens per chunk.
    #[arg(long = "ctx")]
    pub n_ctx: Option<usize>,
    /// With --rank activations: at most this many chunks (default 16).
    #[arg(long)]
    pub chunks: Option<usize>,
}

impl RankArgs {
    fn options(&self) -> crate::app::prune::RankOptions {
        crate::app::prune::RankOptions {
            count: self.count,
            by: self.by,
            text: self.text.clone(),
            n_ctx: self.n_ctx,
            chunks: self.chunks,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct HealArgs {
    /// The pruned model (GGUF), e.g. merged from a `prune-plan` recipe.
    pub pruned: PathBuf,
    /// The model it was pruned from.
    #[arg(long)]
    pub teacher: PathBuf,
    /// The training text; every fifth sequence validates (default: the built-in calibration
    /// text).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// The healed GGUF, each tensor at the type it has in the pruned model.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub training: HealTrainingArgs,
    /// Print the report (losses, layers) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub use crate::app::prune::Rank;

/// How `heal` and `prune --heal` train.
#[derive(clap::Args, Debug)]
pub struct HealTrainingArgs {
    /// Projections to train (ffn_gate, ffn_up, ffn_down, attn_q, attn_k, attn_v, attn_output).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ffn_gate,ffn_up,ffn_down"
    )]
    pub train: Vec<String>,
    /// `auto` (the layers on both sides of each cut) or layer numbers, comma-separated.
    #[arg(long, default_value = "auto")]
    pub layers: String,
    /// Optimizer steps at most (fewer when validation stops improving).
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Peak learning rate of AdamW.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Steps of linear warm-up (default: a tenth of --steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Sequences of the text used at most (train and validation), spread over the text.
    #[arg(long, default_value_t = 80)]
    pub sequences: usize,
    /// Validate every this many steps.
    #[arg(long, default_value_t = 10)]
    pub val_every: usize,
    /// Stop after this many validations without improvement.
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// Largest global gradient norm.
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Seed of the order of the training sequences.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `block`: the hidden state leaving the trained layers against the teacher's at the same
    /// depth (cheap: backward through those layers only); `kl`: end to end, the KL divergence
    /// of the next-token distributions (backward through every later layer and the head).
    #[arg(long, value_enum, default_value_t = crate::heal::HealLoss::Block)]
    pub loss: crate::heal::HealLoss,
}

impl HealTrainingArgs {
    fn options(&self) -> Result<crate::heal::HealOptions> {
        Ok(crate::heal::HealOptions {
            train: self.train.clone(),
            layers: crate::heal::parse_layers(&self.layers)?,
            steps: self.steps,
            lr: self.lr,
            warmup: self.warmup.unwrap_or(self.steps / 10),
            seq: self.seq,
            batch: self.batch,
            max_sequences: self.sequences,
            val_every: self.val_every,
            patience: self.patience,
            clip: self.clip,
            seed: self.seed,
            loss: self.loss,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The model: GGUF of any type, safetensors or HF folder.
    #[arg(required_unless_present = "combine")]
    pub model: Option<PathBuf>,
    /// Join the `eval --chunks A..B --json` outputs of consecutive chunk ranges (run on other
    /// machines) into the perplexity of all their chunks, as one run gives it.
    #[arg(long, num_args = 2.., value_name = "JSON", conflicts_with_all = ["model", "reference", "ref_logits", "save_logits"])]
    pub combine: Vec<PathBuf>,
    /// The evaluation text (UTF-8), e.g. wikitext-2's test set; default: the built-in one.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(long = "ctx", default_value_t = 512)]
    pub n_ctx: usize,
    /// At most N chunks (default: every whole chunk of the text), or `A..B`: chunks A to B-1
    /// (from 0) only, for `--combine` (with --json).
    #[arg(long, value_name = "N|A..B")]
    pub chunks: Option<crate::app::imatrix::ChunkRange>,
    /// Tokens evaluated together, in whole chunks: each group of chunks passes every layer
    /// before the next (memory: one group's hidden states; each layer is dequantized once per
    /// group). Default: as many chunks as keep the hidden states under 1 GiB.
    #[arg(long)]
    pub batch: Option<usize>,
    /// A reference model (e.g. the F16 original) for KL divergence and same-top-token %.
    #[arg(long, visible_alias = "ref", conflicts_with = "ref_logits")]
    pub reference: Option<PathBuf>,
    /// Compare with reference log-probabilities saved earlier (by --save-logits, or
    /// llama-perplexity --kl-divergence-base) instead of running a reference model; the text,
    /// --ctx and vocabulary must be the file's (--chunks defaults to the file's).
    #[arg(long, value_name = "FILE")]
    pub ref_logits: Option<PathBuf>,
    /// Save the reference's log-probabilities (the model's own without --reference) in
    /// llama-perplexity's --kl-divergence-base format, for later --ref-logits runs.
    #[arg(long, value_name = "FILE", conflicts_with = "ref_logits")]
    pub save_logits: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// The recipe (one YAML document) with values to tune written as `{search: [LOW, HIGH]}`.
    pub recipe: PathBuf,
    /// The calibrated recipe to write (the input's text with each range replaced by its value).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The text trials are measured on (default: the built-in calibration text).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// What to minimise: `ppl` (perplexity) or `kld` (KL divergence from --ref).
    #[arg(long, value_enum, default_value_t = CalibrateMetric::Ppl)]
    pub metric: CalibrateMetric,
    /// The reference of --metric kld (default: the recipe's base_model, else its one input).
    #[arg(long = "ref", visible_alias = "reference")]
    pub reference: Option<PathBuf>,
    /// Trials at most (default: 20 for one value, 10 more per further value).
    #[arg(long)]
    pub budget: Option<usize>,
    /// Tokens per chunk.
    #[arg(long = "ctx", default_value_t = 128)]
    pub n_ctx: usize,
    /// Chunks each trial measures (every trial runs them all: keep it short).
    #[arg(long, default_value_t = 4)]
    pub chunks: usize,
    /// Stop a trial after its first chunk when that chunk's perplexity is above this many times
    /// the lowest first-chunk perplexity so far.
    #[arg(long, default_value_t = 10.0)]
    pub abort_factor: f64,
    /// Also write the calibrated model in these types, beside the recipe
    /// (`<OUTPUT stem>-<TYPE>.gguf`).
    #[arg(long = "types", visible_alias = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Also write the table of trials here (tab-separated).
    #[arg(long, value_name = "FILE")]
    pub table: Option<PathBuf>,
}

/// `calibrate --metric`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibrateMetric {
    Ppl,
    Kld,
}

#[derive(clap::Args, Debug)]
pub struct ImatrixArgs {
    /// The model: GGUF of any type, safetensors or HF folder.
    #[arg(required_unless_present = "combine")]
    pub model: Option<PathBuf>,
    /// Sum these imatrix files (GGUF) into -o, as llama-imatrix --in-file a --in-file b ...
    /// combines them (e.g. the `--chunks A..B` parts of one text); no model is run.
    #[arg(long, num_args = 2.., value_name = "IMATRIX", conflicts_with_all = ["model", "text", "chunks"])]
    pub combine: Vec<PathBuf>,
    /// The calibration text (UTF-8). Default: the one built into smelt (data/calibration.txt:
    /// prose in 20 languages, source code, maths), recorded as `smelt:calibration.txt`.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Output imatrix file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// gguf (llama-imatrix's default format) or dat (its legacy binary format). Like
    /// llama-imatrix, smelt writes GGUF unless told, whatever the output's name.
    #[arg(long, value_enum)]
    pub output_format: Option<ImatrixFormat>,
    /// Tokens per chunk (llama-imatrix's -c).
    #[arg(long = "ctx", default_value_t = 512)]
    pub n_ctx: usize,
    /// At most N chunks (default: every whole chunk of the text), or `A..B`: chunks A to B-1
    /// (from 0) only, a partial matrix for `--combine`.
    #[arg(long, value_name = "N|A..B")]
    pub chunks: Option<crate::app::imatrix::ChunkRange>,
    /// Tokens evaluated together, in whole chunks: each group of chunks passes every layer
    /// before the next (memory: one group's hidden states; each layer is dequantized once per
    /// group). Default: as many chunks as keep the hidden states under 1 GiB.
    #[arg(long)]
    pub batch: Option<usize>,
}

pub use crate::app::imatrix::ImatrixFormat;

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The recipe (YAML, one or more documents).
    #[arg(required_unless_present = "from")]
    pub recipe: Option<PathBuf>,
    /// Output folder: one `<name>-<TYPE>.gguf` per type.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Output types (llama-quantize's names); default: the recipe's `output.types`, else F16.
    #[arg(long = "types", visible_alias = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Re-run the recipe embedded in a GGUF that smelt merged (its inputs must be present).
    #[arg(long, conflicts_with = "recipe")]
    pub from: Option<PathBuf>,
    /// `gguf` (default), or `safetensors`: a Hugging Face folder in OUTPUT (config.json,
    /// shards, tokenizer files) at one of F32/F16/BF16 (default: the recipe's
    /// `out_dtype`/`dtype`, else BF16), for fine-tuning afterwards.
    #[arg(long, value_enum, default_value_t = OutputFormat::Gguf)]
    pub format: OutputFormat,
    /// Largest safetensors shard, in bytes (with --format safetensors; default 5e9 as mergekit).
    #[arg(long, default_value_t = crate::hf_writer::DEFAULT_SHARD_BYTES)]
    pub shard_size: u64,
    #[command(flatten)]
    pub split: SplitArgs,
    /// `tokenizer.ggml.pre` for HF folder inputs whose BPE pre-tokenizer llama.cpp's hash
    /// table does not know (as `quantize --tokenizer-pre`).
    #[arg(long)]
    pub tokenizer_pre: Option<String>,
    /// Write only this process's share of a sharded split run: `K/N` (0-based, 0/4 .. 3/4),
    /// `slurm` (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) or
    /// `k8s/N` (JOB_COMPLETION_INDEX of N). Without another split flag, the layout is
    /// `--shards N`; the files are byte for byte the single-process run's.
    #[arg(long, value_name = "SPEC", value_parser = parse_shard)]
    pub shard: Option<crate::shard::ShardSpec>,
    /// With --dry-run: print the split plan (files, shards, tensors, hash) as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Print the plan (each output tensor's method, sources and type) and stop: no tensor
    /// data is read, nothing is written.
    #[arg(long)]
    pub dry_run: bool,
    /// With --format safetensors: replace the model already in OUTPUT (its `*.safetensors`
    /// and index); without it, a folder holding model weights is refused.
    #[arg(long)]
    pub force: bool,
    /// f32 bytes per input in one chunk of rows while merging (default 64 MiB; also
    /// `SMELT_MERGE_CHUNK_BYTES`). Bounds the merge's memory; never changes the output bytes.
    #[arg(long, hide = true, value_name = "BYTES")]
    pub chunk_bytes: Option<usize>,
    /// Importance matrix for the quantized outputs (of the merged model: `smelt imatrix
    /// RECIPE.yaml`), as `quantize --imatrix`.
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `--split-max-size` / `--split-max-tensors`: GGUF outputs as split sets, as llama-gguf-split
/// writes them.
#[derive(clap::Args, Debug, Default)]
pub struct SplitArgs {
    /// Write each GGUF output as a split set (`NAME-00001-of-0000N.gguf`, ...) of at most SIZE
    /// bytes of tensor data per file, as llama-gguf-split --split-max-size: K, M or G, decimal
    /// (1G = 1000000000 bytes). A tensor larger than SIZE gets a file of its own.
    #[arg(long, value_name = "SIZE", value_parser = crate::split::parse_size,
          conflicts_with = "split_max_tensors")]
    pub split_max_size: Option<u64>,
    /// Write each GGUF output as a split set of at most N tensors per file, as
    /// llama-gguf-split --split-max-tensors.
    #[arg(long, value_name = "N", value_parser = crate::split::parse_tensors,
          conflicts_with = "shards")]
    pub split_max_tensors: Option<usize>,
    /// Write each GGUF output as N split files of balanced work, cut at the same tensors for
    /// every type; every file carries the plan's hash (`smelt.shard_plan`). With
    /// `--shard K/N`, one process writes only file K+1 of every type.
    #[arg(long, value_name = "N", value_parser = crate::split::parse_tensors,
          conflicts_with = "split_max_size")]
    pub shards: Option<usize>,
}

impl SplitArgs {
    pub fn limit(&self) -> Option<crate::split::SplitLimit> {
        use crate::split::SplitLimit;
        match (self.split_max_size, self.split_max_tensors, self.shards) {
            (Some(b), _, _) => Some(SplitLimit::Bytes(b)),
            (None, Some(n), _) => Some(SplitLimit::Tensors(n)),
            (None, None, Some(n)) => Some(SplitLimit::Balanced(n)),
            (None, None, None) => None,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ReleaseArgs {
    /// The model (HF folder, safetensors, GGUF or split GGUF) or a one-document merge recipe;
    /// with --finalize optional (hashed for the card when given).
    #[arg(required_unless_present = "finalize")]
    pub source: Option<PathBuf>,
    /// The release folder (new, empty, or an earlier run of the same release to resume).
    #[arg(
        short,
        long,
        required_unless_present = "finalize",
        conflicts_with = "finalize"
    )]
    pub output: Option<PathBuf>,
    /// Publish the split sets that sharded runs (`quantize --shard`, `merge --shard`) wrote
    /// into DIR: every set checked complete and of one plan, then the card, release.json and
    /// SHA256SUMS. Run once, after every shard finished.
    #[arg(long, value_name = "DIR")]
    pub finalize: Option<PathBuf>,
    /// Types to release, comma-separated or repeated (default: --preset standard).
    #[arg(long = "types", visible_alias = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// `standard` (Q2_K, Q3_K_M, Q4_K_S, Q4_K_M, IQ4_XS, Q5_K_M, Q6_K, Q8_0, F16) or `full`
    /// (20 types from IQ1_M up, the imatrix-only ones included).
    #[arg(long, conflicts_with = "types")]
    pub preset: Option<String>,
    /// `auto` (computed when a type needs or gains from one), `none`, or an imatrix file.
    #[arg(long, default_value = "auto")]
    pub imatrix: String,
    /// The imatrix's calibration text (default: the first half of the built-in text).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// The quality table's text (default: the second half of the built-in text, which the
    /// imatrix never saw).
    #[arg(long, value_name = "FILE")]
    pub eval_text: Option<PathBuf>,
    /// Tokens per chunk for the imatrix and the evaluation.
    #[arg(long = "ctx", default_value_t = 512)]
    pub n_ctx: usize,
    /// Chunks of calibration text for the imatrix (default: every whole chunk).
    #[arg(long)]
    pub imatrix_chunks: Option<usize>,
    /// Chunks of evaluation text per type (each type and the reference run them all).
    #[arg(long, default_value_t = 20)]
    pub eval_chunks: usize,
    /// No quality table, no plot: only the files, card and checksums.
    #[arg(long)]
    pub no_eval: bool,
    #[command(flatten)]
    pub split: SplitArgs,
    /// File names `NAME-TYPE.gguf` (default: from the source's name).
    #[arg(long)]
    pub name: Option<String>,
    /// The card's `base_model` (a hub id); default: from the source.
    #[arg(long)]
    pub base_model: Option<String>,
    /// The card's `quantized_by`.
    #[arg(long)]
    pub quantized_by: Option<String>,
    /// Write into a folder holding another release or other files (removing only the files an
    /// earlier release recorded).
    #[arg(long)]
    pub force: bool,
    /// Print release.json to stdout when done.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Gguf,
    Safetensors,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "prompt"])))]
pub struct TokenizeArgs {
    /// The model whose vocabulary tokenizes: GGUF, safetensors or HF folder.
    pub model: PathBuf,
    /// The text: this file's bytes as they are (UTF-8; no escapes, a final newline kept).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// The text, as given (no escape processing).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Print only the ids, as a list: `[1, 2, 3]` (llama-tokenize --ids).
    #[arg(long)]
    pub ids: bool,
    /// Add no BOS (and so no EOS) even where the vocabulary asks for them.
    #[arg(long)]
    pub no_bos: bool,
}

#[derive(clap::Args, Debug)]
pub struct MakeTestModelArgs {
    /// Output: a `.gguf` file, or a folder for the Hugging Face layout.
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    #[arg(long, default_value_t = 128)]
    pub ff: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 512)]
    pub vocab: usize,
    /// F32, F16 or BF16.
    #[arg(long, default_value = "F16")]
    pub dtype: GgmlType,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tied embeddings (no output.weight).
    #[arg(long)]
    pub tied: bool,
    /// Safetensors shards of a Hugging Face folder.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
}

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Input: GGUF file (first of a split set), .safetensors, index.json or HF folder.
    pub input: PathBuf,
    /// Output: a .gguf file (one --type) or a folder (several types, and always for convert).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Model name in output file names (`<NAME>-<TYPE>.gguf`); default: config.json's
    /// `_name_or_path`, else the input's file or folder name.
    #[arg(long)]
    pub name: Option<String>,
    /// Target type, llama-quantize's names (Q8_0, Q4_K_M, F16, ...), or a size for smelt to
    /// fill as --target-bpw/--target-size do (4.25bpw, 5.5G). Repeat or comma-separate for
    /// several outputs from one read.
    #[arg(
        long = "type",
        visible_alias = "types",
        value_delimiter = ',',
        required_unless_present_any = ["target_bpw", "target_size"]
    )]
    pub types: Vec<String>,
    /// Instead of --type: choose each tensor's type to minimise the imatrix-weighted
    /// quantization error with the whole file at most this many bits per weight.
    #[arg(long, conflicts_with_all = ["types", "target_size"])]
    pub target_bpw: Option<f64>,
    /// Instead of --type: as --target-bpw, with the whole file at most this size (5.5G, 800M,
    /// 1024K or bytes; K, M, G are powers of 1024).
    #[arg(long, conflicts_with = "types")]
    pub target_size: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Type of output.weight.
    #[arg(long)]
    pub output_tensor_type: Option<GgmlType>,
    /// Type of token_embd.weight.
    #[arg(long)]
    pub token_embedding_type: Option<GgmlType>,
    /// PATTERN=TYPE: tensors whose name matches the regex PATTERN get TYPE (repeatable).
    #[arg(long = "tensor-type")]
    pub tensor_types: Vec<String>,
    /// A file of PATTERN=TYPE entries separated by spaces or newlines.
    #[arg(long)]
    pub tensor_type_file: Option<PathBuf>,
    /// Every quantizable tensor gets the file type's default type (no mix rules).
    #[arg(long)]
    pub pure: bool,
    /// Keep output.weight as it is.
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// KEY=TYPE:VALUE metadata override (TYPE: int, float, bool, str), repeatable.
    #[arg(long = "override-kv")]
    pub overrides: Vec<String>,
    /// Importance matrix from llama-imatrix (GGUF or legacy .dat).
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Use the imatrix only for tensors whose names contain this (repeatable).
    #[arg(long = "include-weights", conflicts_with = "exclude_weights")]
    pub include_weights: Vec<String>,
    /// Do not use the imatrix for tensors whose names contain this (repeatable).
    #[arg(long = "exclude-weights")]
    pub exclude_weights: Vec<String>,
    /// Comma-separated layer numbers to remove (layers are renumbered).
    #[arg(long)]
    pub prune_layers: Option<String>,
    /// Print each output's tensor types and sizes without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Write each output as a split set like the input's (`<OUT>-0000K-of-0000N.gguf`).
    #[arg(long, conflicts_with_all = ["split_max_size", "split_max_tensors"])]
    pub keep_split: bool,
    #[command(flatten)]
    pub split: SplitArgs,
    /// Write only this process's share of a sharded split run: `K/N` (0-based, 0/4 .. 3/4),
    /// `slurm` (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) or
    /// `k8s/N` (JOB_COMPLETION_INDEX of N). Without another split flag, the layout is
    /// `--shards N`; the files are byte for byte the single-process run's.
    #[arg(long, value_name = "SPEC", value_parser = parse_shard)]
    pub shard: Option<crate::shard::ShardSpec>,
    /// With --dry-run: print the split plan (files, shards, tensors, hash) as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Accepted for llama-quantize compatibility: smelt always allows re-quantizing (and warns
    /// when the source is coarser than the target).
    #[arg(long)]
    pub allow_requantize: bool,
    /// `tokenizer.ggml.pre` for an HF folder whose BPE pre-tokenizer llama.cpp's hash table
    /// does not know (e.g. llama-bpe, qwen2, gpt-2).
    #[arg(long)]
    pub tokenizer_pre: Option<String>,
}

/// How targets (`4.25bpw`, `5.5G` among the types) are measured: quantize, convert and merge.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    /// Types a target may choose from (default Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_0, and IQ4_XS with
    /// --imatrix).
    #[arg(long, value_delimiter = ',')]
    pub candidates: Vec<GgmlType>,
    /// With a target: weight each tensor's error by its measured effect on the output (KL
    /// divergence against the unquantized model on --text; default: the first half of the
    /// built-in calibration text), so the allocation minimises predicted KLD. Costs one
    /// forward pass per layer, per tensor kind and per other tensor, on a short text.
    #[arg(long)]
    pub sensitivity: bool,
    /// The text --sensitivity measures on (llama.cpp's `-f` reading).
    #[arg(long, requires = "sensitivity")]
    pub text: Option<PathBuf>,
    /// Tokens per chunk of the --sensitivity passes.
    #[arg(long, default_value_t = 128, requires = "sensitivity")]
    pub sensitivity_ctx: usize,
    /// Chunks of the --sensitivity passes.
    #[arg(long, default_value_t = 4, requires = "sensitivity")]
    pub sensitivity_chunks: usize,
    /// JSON cache of a target's per-tensor measurements: read when it exists (it must match
    /// the model and imatrix), else written after measuring.
    #[arg(long)]
    pub measurement: Option<PathBuf>,
}

impl TargetArgs {
    pub fn settings(&self) -> crate::app::targets::TargetSettings {
        crate::app::targets::TargetSettings {
            candidates: self.candidates.clone(),
            measurement: self.measurement.clone(),
            sensitivity: self
                .sensitivity
                .then(|| crate::app::targets::SensitivitySettings {
                    text: self.text.clone(),
                    ctx: self.sensitivity_ctx,
                    chunks: self.sensitivity_chunks,
                }),
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    // Started here, not lazily on first use, so that threads the system refuses are an error
    // before any output exists (rayon panics when its lazy start fails).
    let n_threads = match cli.threads {
        Some(n) => n.max(1),
        None => 0, // rayon's default: one per core
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n_threads)
        .build_global()
        .map_err(|e| Error::Invalid(format!("cannot start worker threads: {e}")))?;
    let display = crate::progress::Display::for_stderr(cli.quiet);
    let ui = Ui {
        display,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Inspect { path, json, full } => inspect(&path, json, full),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command_with_help(), "smelt", &mut out);
            print_stdout(&String::from_utf8_lossy(&out))
        }
        Command::Quantize(args) => quantize(&args, false, ui),
        Command::Eval(args) => eval(&args, ui),
        Command::Imatrix(args) => imatrix(&args, ui),
        Command::Convert(args) => {
            if !args.input.is_dir() {
                return Err(Error::Invalid(format!(
                    "{}: convert takes a Hugging Face folder (config.json + safetensors); use `smelt quantize` for files",
                    args.input.display()
                )));
            }
            quantize(&args, true, ui)
        }
        Command::Merge(args) => merge(&args, ui),
        Command::PrunePlan(args) => prune_plan(&args, ui),
        Command::Prune(args) => prune(&args, ui),
        Command::Calibrate(args) => calibrate(&args, ui),
        Command::Heal(args) => heal(&args, ui),
        Command::Tokenize(args) => tokenize(&args),
        Command::Release(args) => release(&args, ui),
        Command::Verify { dir } => {
            let report = crate::app::verify::verify(&dir)?;
            print_stdout(&report.lines())?;
            let failed: Vec<_> = report.checks.iter().filter(|(_, p)| p.is_some()).collect();
            if let Some((file, Some(why))) = failed.first() {
                return Err(Error::Invalid(format!(
                    "{}: {} of {} checks failed (first: {}: {why})",
                    dir.display(),
                    failed.len(),
                    report.checks.len(),
                    crate::error::printable(file)
                )));
            }
            ui.say(format_args!(
                "{}: all {} checks passed",
                dir.display(),
                report.checks.len()
            ));
            Ok(())
        }
        Command::MakeTestModel(a) => {
            let model = crate::fixture::TinyLlama {
                n_layer: a.layers,
                hidden: a.hidden,
                ff: a.ff,
                n_head: a.heads,
                n_head_kv: a.kv_heads,
                vocab: a.vocab,
                dtype: a.dtype,
                tied: a.tied,
                seed: a.seed,
            };
            if !matches!(a.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                return Err(Error::Invalid(format!(
                    "--dtype must be F32, F16 or BF16, not {}",
                    a.dtype
                )));
            }
            if a.hidden % a.heads != 0 || a.heads % a.kv_heads.max(1) != 0 || a.vocab < 258 {
                return Err(Error::Invalid(
                    "hidden must divide into heads, heads into kv-heads, and vocab be at least 258"
                        .into(),
                ));
            }
            if a.output.extension().is_some_and(|e| e == "gguf") {
                model.write_gguf(&a.output)
            } else {
                model.write_hf(&a.output, a.shards)
            }
        }
    }
}

/// `prune-plan`: the recipe dropping the most redundant layers, by weights or activations.
fn prune_plan(args: &PrunePlanArgs, ui: Ui) -> Result<()> {
    let outputs: Vec<&Path> = args.output.iter().map(PathBuf::as_path).collect();
    let ranked = crate::app::prune::rank(&args.model, &args.rank.options(), &outputs, ui.display)?;
    match &args.output {
        Some(p) => write_text_output(p, &ranked.recipe, &[&args.model]),
        None => print_stdout(&ranked.recipe),
    }
}

/// `prune`: rank, write the pruned model, and with --heal train it against the original (the
/// pruned model lives in a temporary folder beside the output until the healed one is written).
fn prune(args: &PruneArgs, ui: Ui) -> Result<()> {
    use crate::app::prune as p;
    let training = args.heal.then(|| args.training.options()).transpose()?;
    let mut rank = args.rank.options();
    if args.heal && rank.by == Rank::Weights {
        rank.text = None; // the heal's text, not the ranking's
    }
    let ranked = p::rank(&args.model, &rank, &[&args.output], ui.display)?;
    ui.say(format_args!(
        "dropping layers {:?} ({:?} ranking)",
        ranked.drop, args.rank.by
    ));
    let model = Store::open(&args.model)?;
    let Some(opts) = training else {
        let written =
            p::write_pruned(&model, &ranked.drop, args.rank.by, &args.output, ui.display)?;
        ui.say(crate::app::wrote_line(&written));
        return Ok(());
    };
    let scratch = crate::output_files::temp_dir_beside(&args.output)?;
    let pruned_path = scratch.path().join("pruned.gguf");
    p::write_pruned(
        &model,
        &ranked.drop,
        args.rank.by,
        &pruned_path,
        crate::progress::Display::Hidden,
    )?;
    let pruned = Store::open(&pruned_path)?;
    let run = crate::app::heal::heal(
        &pruned,
        &model,
        &args.model.to_string_lossy(),
        args.rank.text.as_deref(),
        &opts,
        &args.output,
        ui.display,
    )?;
    drop(pruned);
    drop(scratch);
    if args.json {
        print_json(&run.to_json())?;
    }
    for line in run.summary(&opts) {
        ui.say(line);
    }
    ui.say(crate::app::wrote_line(&run.written));
    Ok(())
}

/// `heal`: train, then write the healed model with its provenance.
fn heal(args: &HealArgs, ui: Ui) -> Result<()> {
    let student = Store::open(&args.pruned)?;
    let teacher = Store::open(&args.teacher)?;
    let mut inputs: Vec<&Path> = student.paths();
    inputs.extend(teacher.paths());
    inputs.extend(args.text.as_deref());
    crate::output_files::check_outputs(&inputs, &[&args.output])?;
    let opts = args.training.options()?;
    let run = crate::app::heal::heal(
        &student,
        &teacher,
        &args.teacher.to_string_lossy(),
        args.text.as_deref(),
        &opts,
        &args.output,
        ui.display,
    )?;
    if args.json {
        print_json(&run.to_json())?;
    }
    for line in run.summary(&opts) {
        ui.say(line);
    }
    ui.say(crate::app::wrote_line(&run.written));
    Ok(())
}

fn inspect(path: &Path, json: bool, full: bool) -> Result<()> {
    let store = Store::open(path)?;
    if json {
        let doc = crate::app::inspect::json(&store, full);
        let text = serde_json::to_string_pretty(&doc).expect("json values serialize");
        return print_stdout(&(text + "\n"));
    }
    print_stdout(&crate::app::inspect::text(&store))
}

/// `calibrate`: the search's table, the best values, the files written.
fn calibrate(args: &CalibrateArgs, ui: Ui) -> Result<()> {
    use crate::calibrate::{CalibrateOptions, Metric};
    let opts = CalibrateOptions {
        output: args.output.clone(),
        text: args.text.clone(),
        metric: match args.metric {
            CalibrateMetric::Ppl => Metric::Perplexity,
            CalibrateMetric::Kld => Metric::Kld,
        },
        reference: args.reference.clone(),
        budget: args.budget,
        n_ctx: args.n_ctx,
        chunks: args.chunks,
        abort_factor: args.abort_factor,
        types: args.types.clone(),
        table: args.table.clone(),
        display: ui.display,
    };
    let c = crate::calibrate::calibrate(&args.recipe, &opts)?;
    print_stdout(&c.table())?;
    let best = c.best_trial();
    let aborted = c.trials.iter().filter(|t| t.aborted).count();
    ui.say(format_args!(
        "{} trials ({aborted} stopped after their first chunk) of {} search, budget {}, on {} ({} chunks of {}), in {:.1} s",
        c.trials.len(),
        c.search,
        c.budget,
        c.text_name,
        c.n_chunks,
        c.n_ctx,
        c.seconds
    ));
    ui.say(format_args!(
        "best: trial {}, perplexity {:.4}{}",
        c.best + 1,
        best.perplexity,
        best.kld
            .map_or(String::new(), |k| format!(", KL divergence {k:.6}"))
    ));
    ui.say(format_args!("wrote {}", args.output.display()));
    if let Some(t) = &args.table {
        ui.say(format_args!("wrote {}", t.display()));
    }
    for r in &c.written {
        ui.say(crate::app::wrote_line(r));
    }
    Ok(())
}

/// `eval`: perplexity (and KL divergence against a reference) on a text.
fn eval(args: &EvalArgs, ui: Ui) -> Result<()> {
    use crate::app::eval as e;
    if !args.combine.is_empty() {
        let combined = e::combine(&args.combine)?;
        if combined.first_chunk != 0 {
            eprintln!(
                "warning: the first range starts at chunk {}, not 0",
                combined.first_chunk
            );
        }
        if args.json {
            return print_json(&combined.to_json());
        }
        return print_stdout(&combined.to_text());
    }
    let model = args
        .model
        .as_deref()
        .expect("clap requires a model without --combine");
    let run = e::evaluate(&e::EvalRequest {
        model,
        reference: args.reference.as_deref(),
        ref_logits: args.ref_logits.as_deref(),
        save_logits: args.save_logits.as_deref(),
        text: args.text.as_deref(),
        n_ctx: args.n_ctx,
        chunks: args.chunks,
        batch: args.batch,
        display: ui.display,
    })?;
    let reference = args.reference.as_deref().or(args.ref_logits.as_deref());
    if args.json {
        return print_json(&run.to_json(model, reference));
    }
    print_stdout(&run.to_text(reference))?;
    if let Some((path, bytes)) = &run.saved_logits {
        ui.say(format_args!(
            "wrote {} ({:.2} MiB of reference log-probabilities)",
            path.display(),
            *bytes as f64 / (1 << 20) as f64
        ));
    }
    ui.say(format_args!("evaluated in {:.2?}", run.elapsed));
    Ok(())
}

/// `imatrix`: llama-imatrix's statistics, written in its GGUF or legacy `.dat` format.
fn imatrix(args: &ImatrixArgs, ui: Ui) -> Result<()> {
    if !args.combine.is_empty() {
        return imatrix_combine(args, ui);
    }
    let model = args
        .model
        .as_deref()
        .expect("clap requires a model without --combine");
    let format = args.output_format.unwrap_or(ImatrixFormat::Gguf);
    // llama-imatrix's rule: GGUF unless `--output-format dat`, with a warning for a name that
    // suggests otherwise (an old `-o imatrix.dat` command line).
    if args.output_format.is_none() && args.output.extension().is_none_or(|e| e != "gguf") {
        eprintln!(
            "warning: writing GGUF to {}, whose name does not end in .gguf; --output-format dat writes llama-imatrix's legacy format",
            crate::error::printable(&args.output.display().to_string())
        );
    }
    let run = crate::app::imatrix::collect(&crate::app::imatrix::ImatrixRequest {
        model,
        text: args.text.as_deref(),
        output: &args.output,
        format,
        n_ctx: args.n_ctx,
        chunks: args.chunks,
        batch: args.batch,
        display: ui.display,
    })?;
    ui.say(format_args!(
        "wrote {} ({}, {} chunks of {} from {}) in {:.2?}",
        args.output.display(),
        if format == ImatrixFormat::Gguf {
            "GGUF"
        } else {
            "legacy .dat"
        },
        run.n_chunks,
        args.n_ctx,
        crate::error::printable(&run.dataset),
        run.elapsed
    ));
    Ok(())
}

/// `imatrix --combine`: partial matrices summed as llama-imatrix sums its --in-files.
fn imatrix_combine(args: &ImatrixArgs, ui: Ui) -> Result<()> {
    let inputs: Vec<&Path> = args.combine.iter().map(PathBuf::as_path).collect();
    crate::output_files::check_outputs(&inputs, &[&args.output])?;
    if args.output_format == Some(ImatrixFormat::Dat) {
        return Err(Error::Invalid(
            "--combine writes GGUF (the legacy .dat format keeps means, not the sums a later combine needs)".into(),
        ));
    }
    let c = crate::app::imatrix::combine(&inputs)?;
    crate::eval::write_imatrix_entries(
        &args.output,
        &c.entries,
        &c.datasets,
        c.chunk_count,
        c.chunk_size,
    )?;
    ui.say(format_args!(
        "wrote {} ({} files combined: {} weights, {} chunks of {})",
        args.output.display(),
        inputs.len(),
        c.entries.len(),
        c.chunk_count,
        c.chunk_size
    ));
    Ok(())
}

/// How the command talks to the terminal.
#[derive(Clone, Copy, Debug)]
struct Ui {
    display: crate::progress::Display,
    quiet: bool,
}

impl Ui {
    /// A summary line (stderr), unless quiet.
    fn say(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{}", crate::error::printable(&line.to_string()));
        }
    }
}

/// Pretty JSON on stdout.
fn print_json(doc: &serde_json::Value) -> Result<()> {
    print_stdout(&(serde_json::to_string_pretty(doc).expect("json values serialize") + "\n"))
}

impl crate::app::Reporter for Ui {
    fn say(&self, line: &str) {
        Ui::say(self, line)
    }
    fn warn(&self, line: &str) {
        eprintln!("warning: {}", crate::error::printable(line));
    }
    fn print(&self, text: &str) -> Result<()> {
        print_stdout(text)
    }
    fn display(&self) -> crate::progress::Display {
        self.display
    }
}

/// `quantize`, and `convert` (`to_folder`: the output is always a folder of one file per type).
fn quantize(args: &QuantizeArgs, to_folder: bool, ui: Ui) -> Result<()> {
    use crate::quantize::{self as q, KvOverride, QuantizeOptions};
    use crate::target::{Target, TypeSpec};
    let mut specs = args
        .types
        .iter()
        .map(|t| TypeSpec::parse(t))
        .collect::<Result<Vec<_>>>()?;
    match (args.target_bpw, &args.target_size) {
        (Some(v), _) => specs.push(TypeSpec::Target(Target::bpw(v)?)),
        (None, Some(s)) => specs.push(TypeSpec::Target(Target::size(s)?)),
        (None, None) => {}
    }
    let mut tensor_types = args
        .tensor_types
        .iter()
        .map(|s| q::parse_tensor_type(s))
        .collect::<Result<Vec<_>>>()?;
    if let Some(f) = &args.tensor_type_file {
        tensor_types.extend(q::read_tensor_type_file(f)?);
    }
    let imatrix = match &args.imatrix {
        Some(p) => {
            let mut im = crate::quant::imatrix::Imatrix::load(p)?;
            im.filter(&args.include_weights, &args.exclude_weights);
            Some((im, p.to_string_lossy().into_owned()))
        }
        None => None,
    };
    let options = QuantizeOptions {
        mix: crate::quant::mix::MixOptions {
            output_tensor_type: args.output_tensor_type,
            token_embedding_type: args.token_embedding_type,
            tensor_types,
            pure: args.pure,
            leave_output_tensor: args.leave_output_tensor,
            has_imatrix: false,
        },
        overrides: args
            .overrides
            .iter()
            .map(|s| s.parse::<KvOverride>())
            .collect::<Result<Vec<_>>>()?,
        imatrix,
        prune_layers: match &args.prune_layers {
            Some(s) => q::parse_prune_layers(s)?,
            None => Vec::new(),
        },
        keep_split: args.keep_split,
        split: crate::shard::layout(args.split.limit(), args.shard, args.keep_split)?,
    };
    crate::app::quantize::quantize(
        &crate::app::quantize::QuantizeJob {
            input: &args.input,
            output: &args.output,
            name: args.name.as_deref(),
            specs,
            options,
            tokenizer: crate::tokenizer::TokenizerOptions {
                pre: args.tokenizer_pre.clone(),
            },
            targets: args.target.settings(),
            to_folder,
            include_weights: &args.include_weights,
            exclude_weights: &args.exclude_weights,
            shard: args.shard,
            dry_run: plan_format(args.dry_run, args.json),
        },
        &ui,
    )
}

/// What `--dry-run [--json]` prints.
fn plan_format(dry_run: bool, json: bool) -> Option<crate::app::quantize::PlanFormat> {
    use crate::app::quantize::PlanFormat;
    dry_run.then_some(if json {
        PlanFormat::Json
    } else {
        PlanFormat::Text
    })
}

fn merge(args: &MergeArgs, ui: Ui) -> Result<()> {
    use crate::app::merge::{MergeJob, MergeOutput, RecipeSource};
    let recipe = match (&args.recipe, &args.from) {
        (Some(r), _) => RecipeSource::File(r),
        (None, Some(g)) => RecipeSource::Embedded(g),
        (None, None) => return Err(Error::Invalid("a recipe or --from is required".into())),
    };
    crate::app::merge::merge(
        &MergeJob {
            recipe,
            output: &args.output,
            format: match args.format {
                OutputFormat::Gguf => MergeOutput::Gguf,
                OutputFormat::Safetensors => MergeOutput::Safetensors {
                    shard_bytes: args.shard_size,
                    force: args.force,
                },
            },
            split: args.split.limit(),
            types: &args.types,
            tokenizer: crate::tokenizer::TokenizerOptions {
                pre: args.tokenizer_pre.clone(),
            },
            shard: args.shard,
            dry_run: plan_format(args.dry_run, args.json),
            chunk_bytes: args.chunk_bytes,
            imatrix: args.imatrix.as_deref(),
            targets: args.target.settings(),
        },
        &ui,
    )
}

/// `--shard`: the spec, with the engines' variables read from the environment.
fn parse_shard(text: &str) -> std::result::Result<crate::shard::ShardSpec, String> {
    crate::shard::parse_spec(text, &|k| std::env::var(k).ok())
}

/// `release`: the options as the library takes them.
fn release(args: &ReleaseArgs, ui: Ui) -> Result<()> {
    use crate::app::release::{self as r, ImatrixChoice};
    if args.split.shards.is_some() {
        return Err(Error::Invalid(
            "release --shards: shard the quantization with `smelt quantize --shard K/N` (or merge), then run `smelt release --finalize DIR` once".into(),
        ));
    }
    let command_line: Vec<String> = std::iter::once("smelt".to_string())
        .chain(std::env::args().skip(1))
        .collect();
    if let Some(dir) = &args.finalize {
        let manifest = r::finalize(&r::FinalizeOptions {
            dir,
            source: args.source.as_deref(),
            base_model: args.base_model.clone(),
            quantized_by: args.quantized_by.clone(),
            command_line,
            quiet: ui.quiet,
        })?;
        if args.json {
            print_json(&serde_json::to_value(&manifest).expect("plain data serializes"))?;
        }
        return Ok(());
    }
    let (Some(source), Some(output)) = (&args.source, &args.output) else {
        return Err(Error::Invalid("release takes a SOURCE and -o DIR".into()));
    };
    let types = r::parse_types(&args.types, args.preset.as_deref())?;
    let imatrix = match args.imatrix.as_str() {
        "auto" => ImatrixChoice::Auto,
        "none" => ImatrixChoice::None,
        path => ImatrixChoice::File(PathBuf::from(path)),
    };
    let opts = r::ReleaseOptions {
        source: source.clone(),
        out_dir: output.clone(),
        types,
        imatrix,
        calibration_text: args.text.clone(),
        eval_text: args.eval_text.clone(),
        n_ctx: args.n_ctx,
        imatrix_chunks: args.imatrix_chunks,
        eval_chunks: Some(args.eval_chunks),
        evaluate: !args.no_eval,
        split: args.split.limit(),
        name: args.name.clone(),
        base_model: args.base_model.clone(),
        quantized_by: args.quantized_by.clone(),
        force: args.force,
        // "smelt", not this machine's path to the binary: the card shows it.
        command_line,
        display: ui.display,
        quiet: ui.quiet,
    };
    let started = std::time::Instant::now();
    let manifest = r::release(&opts)?;
    if args.json {
        let text = serde_json::to_string_pretty(&manifest).expect("plain data serializes");
        print_stdout(&(text + "\n"))?;
    }
    ui.say(format_args!("done in {:.2?}", started.elapsed()));
    Ok(())
}

/// `tokenize`: one `id -> 'token'` line per token (the vocabulary's entry), or with `--ids`
/// llama-tokenize's list.
fn tokenize(args: &TokenizeArgs) -> Result<()> {
    use crate::tokenizer::encode;
    let store = Store::open(&args.model)?;
    let md = &store.metadata;
    let text = match &args.text {
        Some(path) => crate::input::read_to_string(path)?,
        None => args.prompt.clone().unwrap_or_default(),
    };
    // llama-tokenize passes `add_special = add_bos && !no_bos`: a vocabulary adding EOS but
    // not BOS gets neither.
    let add_special = !args.no_bos && encode::bos_to_add(md)?.is_some();
    let ids = encode::tokenize(md, &text, add_special)?;
    let out = if args.ids {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        format!("[{}]\n", list.join(", "))
    } else {
        let tokens = md.get("tokenizer.ggml.tokens");
        ids.iter()
            .map(|&id| {
                let piece = tokens.and_then(|t| t.item(id as usize));
                let piece = piece.as_ref().and_then(Value::as_str).unwrap_or("");
                format!("{id:6} -> '{}'\n", crate::error::printable(piece))
            })
            .collect()
    };
    print_stdout(&out)
}

/// Write a small text output (a recipe) through an exclusive temporary file, never over an
/// input.
fn write_text_output(path: &Path, text: &str, inputs: &[&Path]) -> Result<()> {
    crate::output_files::check_outputs(inputs, &[path])?;
    crate::output_files::write_whole(path, text.as_bytes())
}

/// Write to stdout; a closed pipe (`smelt inspect … | head`) is not an error.
fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("<stdout>", e)),
        _ => Ok(()),
    }
}
