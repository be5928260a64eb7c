//! The commands as library calls: `app::quantize` and `app::merge` with a collecting
//! `Reporter`, no binary spawned. Their files are the CLI's, byte for byte. Also what quantize
//! reports about its options.

use crate::common::{self, smelt};
use smelt::app::merge::{MergeJob, MergeOutput, RecipeSource};
use smelt::app::quantize::{PlanFormat, QuantizeJob};
use smelt::app::Reporter;
use smelt::progress::Display;
use smelt::target::TypeSpec;
use std::sync::Mutex;

/// Everything a command reported, in order.
#[derive(Default)]
struct Collected {
    said: Mutex<Vec<String>>,
    warned: Mutex<Vec<String>>,
    printed: Mutex<String>,
}

impl Reporter for Collected {
    fn say(&self, line: &str) {
        self.said.lock().unwrap().push(line.to_string());
    }
    fn warn(&self, line: &str) {
        self.warned.lock().unwrap().push(line.to_string());
    }
    fn print(&self, text: &str) -> smelt::error::Result<()> {
        self.printed.lock().unwrap().push_str(text);
        Ok(())
    }
    fn display(&self) -> Display {
        Display::Hidden
    }
}

fn quantize_job<'a>(
    input: &'a std::path::Path,
    output: &'a std::path::Path,
    types: &[&str],
) -> QuantizeJob<'a> {
    QuantizeJob {
        input,
        output,
        name: None,
        specs: types.iter().map(|t| TypeSpec::parse(t).unwrap()).collect(),
        options: Default::default(),
        tokenizer: Default::default(),
        targets: Default::default(),
        to_folder: false,
        include_weights: &[],
        exclude_weights: &[],
        shard: None,
        dry_run: None,
    }
}

#[test]
fn quantize_as_a_library_call_writes_the_clis_files_and_reports_them() {
    let dir = common::scratch();
    let model = common::tiny_model(dir.path(), "m.gguf", &["--hidden", "256", "--ff", "512"]);
    let out = dir.path().join("lib");
    std::fs::create_dir(&out).unwrap();
    let report = Collected::default();
    smelt::app::quantize::quantize(&quantize_job(&model, &out, &["Q8_0", "Q4_K_M"]), &report)
        .unwrap();
    let said = report.said.lock().unwrap().clone();
    assert_eq!(
        said.iter().filter(|l| l.starts_with("wrote ")).count(),
        2,
        "{said:?}"
    );
    assert!(said.last().unwrap().starts_with("done in "), "{said:?}");

    smelt(
        dir.path(),
        ["quantize", "m.gguf", "-o", "cli", "--types", "Q8_0,Q4_K_M"],
    )
    .unwrap();
    for ft in ["Q8_0", "Q4_K_M"] {
        let name = format!("m-{ft}.gguf");
        assert_eq!(
            std::fs::read(out.join(&name)).unwrap(),
            std::fs::read(dir.path().join("cli").join(&name)).unwrap(),
            "{name}"
        );
    }

    // A dry run prints the plan and writes nothing.
    let plan_only = Collected::default();
    let mut job = quantize_job(&model, &out, &["Q6_K"]);
    job.dry_run = Some(PlanFormat::Text);
    let before = std::fs::read_dir(&out).unwrap().count();
    smelt::app::quantize::quantize(&job, &plan_only).unwrap();
    let printed = plan_only.printed.lock().unwrap().clone();
    assert!(
        printed.contains("blk.0.ffn_down.weight") && printed.contains("Q6_K"),
        "{printed}"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), before);
}

#[test]
fn merge_as_a_library_call_reports_its_plan_and_files() {
    let dir = common::scratch();
    common::tiny_model(dir.path(), "a.gguf", &["--seed", "1", "--dtype", "F32"]);
    common::tiny_model(dir.path(), "b.gguf", &["--seed", "2", "--dtype", "F32"]);
    let recipe = dir.path().join("mix.yaml");
    std::fs::write(
        &recipe,
        "merge_method: linear\nmodels:\n  - model: a.gguf\n    parameters: {weight: 0.5}\n  - model: b.gguf\n    parameters: {weight: 0.5}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let job = |dry_run| MergeJob {
        recipe: RecipeSource::File(&recipe),
        output: &out,
        format: MergeOutput::Gguf,
        split: None,
        types: &[],
        tokenizer: Default::default(),
        shard: None,
        dry_run,
        chunk_bytes: None,
        imatrix: None,
        targets: Default::default(),
    };
    let plan = Collected::default();
    smelt::app::merge::merge(&job(Some(PlanFormat::Text)), &plan).unwrap();
    assert!(!out.exists(), "a dry run creates nothing");
    let printed = plan.printed.lock().unwrap().clone();
    assert!(printed.contains("linear"), "{printed}");

    let done = Collected::default();
    smelt::app::merge::merge(&job(None), &done).unwrap();
    let said = done.said.lock().unwrap().clone();
    assert!(
        said.iter()
            .any(|l| l.starts_with("wrote ") && l.contains("mix-F16.gguf")),
        "{said:?}"
    );
    smelt(dir.path(), ["merge", "mix.yaml", "-o", "cli"]).unwrap();
    assert_eq!(
        std::fs::read(out.join("mix-F16.gguf")).unwrap(),
        std::fs::read(dir.path().join("cli/mix-F16.gguf")).unwrap()
    );
}

/// `--tensor-type` under a float file type does nothing in llama-quantize (it applies the
/// overrides only under a quantized type), and smelt writes the same file; it says so.
#[test]
fn tensor_type_under_a_float_type_is_ignored_with_a_warning() {
    let dir = common::scratch();
    common::tiny_model(dir.path(), "m.gguf", &["--hidden", "256", "--ff", "512"]);
    let override_ = ["--tensor-type", "ffn_down=Q8_0"];
    let float = smelt(
        dir.path(),
        [
            "quantize",
            "m.gguf",
            "-o",
            "f16.gguf",
            "--type",
            "F16",
            override_[0],
            override_[1],
        ],
    )
    .unwrap();
    assert!(
        float.contains("--tensor-type is ignored for a F16 output"),
        "{float}"
    );
    let s = smelt::store::Store::open(dir.path().join("f16.gguf")).unwrap();
    let down = s.find("blk.0.ffn_down.weight").unwrap();
    assert_eq!(s.tensors[down].ty, smelt::gguf::GgmlType::F16);

    let quantized = smelt(
        dir.path(),
        [
            "quantize",
            "m.gguf",
            "-o",
            "q.gguf",
            "--type",
            "Q4_0",
            override_[0],
            override_[1],
        ],
    )
    .unwrap();
    assert!(
        !quantized.contains("--tensor-type is ignored"),
        "{quantized}"
    );
    let s = smelt::store::Store::open(dir.path().join("q.gguf")).unwrap();
    let down = s.find("blk.0.ffn_down.weight").unwrap();
    assert_eq!(s.tensors[down].ty, smelt::gguf::GgmlType::Q8_0);
}
