//! `smelt calibrate` on tiny generated models: the search finds an optimum known in advance
//! and checked on a grid, the calibrated recipe measures what its trial measured, the same
//! inputs give the same bytes on any thread count, and bad input is one clear error with
//! nothing written.

use crate::common::{self, Smelt};
use std::path::Path;

/// `smelt eval --json` of a model or recipe on `text`, as calibrate measures (`--ctx 64`,
/// 3 chunks).
fn eval_json(dir: &Path, model: &str, text: &Path, extra: &[&str]) -> serde_json::Value {
    Smelt::new(dir)
        .args(["eval", model, "--ctx", "64", "--chunks", "3", "--json"])
        .arg("--text")
        .arg(text)
        .args(extra)
        .run()
        .ok()
        .json()
}

/// `smelt calibrate RECIPE -o OUT --ctx 64 --chunks 3 --text text.txt EXTRA...`: its stdout
/// (the table), or its stderr on failure.
fn calibrate(dir: &Path, recipe: &str, out: &str, extra: &[&str]) -> Result<String, String> {
    let o = Smelt::new(dir)
        .args([
            "calibrate",
            recipe,
            "-o",
            out,
            "--ctx",
            "64",
            "--chunks",
            "3",
        ])
        .args(["--text", "text.txt"])
        .args(extra)
        .run();
    if o.status.success() {
        Ok(o.stdout_text())
    } else {
        Err(o.stderr)
    }
}

/// Two tiny F32 models and a text in a scratch folder.
fn setup() -> tempfile::TempDir {
    let dir = common::scratch();
    let d = dir.path();
    common::tiny_model(d, "a.gguf", &["--dtype", "F32", "--seed", "1"]);
    common::tiny_model(d, "b.gguf", &["--dtype", "F32", "--seed", "2"]);
    common::word_text(d, "text.txt", 0);
    dir
}

fn slerp(t: &str) -> String {
    format!("merge_method: slerp\nbase_model: a.gguf\nmodels:\n  - model: a.gguf\n  - model: b.gguf\nparameters:\n  t: {t}\n")
}

/// The value the calibrated recipe's header says line `line` got, as written.
fn calibrated_value(text: &str, line: u64) -> &str {
    let prefix = format!("# line {line}: ");
    let l = text.lines().find(|l| l.starts_with(&prefix)).unwrap();
    l.rsplit("-> ").next().unwrap()
}

#[test]
fn golden_section_finds_the_merge_a_reference_was_made_from() {
    let dir = setup();
    let d = dir.path();
    // The reference: slerp at t = 0.3, written. Calibrating t by KL divergence against it
    // must come back to 0.3, where the divergence is (all but) zero.
    std::fs::write(d.join("ref.yaml"), slerp("0.3")).unwrap();
    common::smelt(d, ["merge", "ref.yaml", "-o", "ref", "--types", "F32"]).unwrap();
    std::fs::write(d.join("r.yaml"), slerp("{search: [0.0, 1.0]}")).unwrap();
    let table = calibrate(
        d,
        "r.yaml",
        "cal.yaml",
        &[
            "--metric",
            "kld",
            "--ref",
            "ref/ref-F32.gguf",
            "--table",
            "t.tsv",
        ],
    )
    .unwrap();
    let text = std::fs::read_to_string(d.join("cal.yaml")).unwrap();
    let t: f64 = calibrated_value(&text, 7).parse().unwrap();
    assert!((t - 0.3).abs() < 2e-3, "t = {t}\n{table}");
    // Apart from the header, the recipe is the input with the range replaced.
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(body, slerp(calibrated_value(&text, 7)));
    // A grid of t: none beats the calibrated value.
    let kld_at = |t: &str| {
        std::fs::write(d.join("g.yaml"), slerp(t)).unwrap();
        eval_json(
            d,
            "g.yaml",
            &d.join("text.txt"),
            &["--ref", "ref/ref-F32.gguf"],
        )["kld"]["mean"]
            .as_f64()
            .unwrap()
    };
    // A trial measures what `smelt eval --ref` measures (its first chunk and the rest apart,
    // combined): the first trial, at t = 0.382 of the golden section.
    let tsv = std::fs::read_to_string(d.join("t.tsv")).unwrap();
    let first: Vec<&str> = tsv.lines().nth(1).unwrap().split('\t').collect();
    let table_kld: f64 = first[3].parse().unwrap();
    let eval_kld = kld_at(first[1]);
    assert!(
        (table_kld - eval_kld).abs() < 1e-6,
        "{table_kld} vs {eval_kld}\n{table}"
    );
    let best = kld_at(&t.to_string());
    for g in [
        "0.0", "0.1", "0.2", "0.25", "0.35", "0.4", "0.5", "0.7", "1.0",
    ] {
        assert!(best <= kld_at(g), "t = {g} beats the calibrated {t}");
    }
}

#[test]
fn kl_divergence_defaults_to_the_base_model() {
    let dir = setup();
    let d = dir.path();
    // Against its base model a.gguf, slerp's best t is 0: the base itself.
    std::fs::write(d.join("r.yaml"), slerp("{search: [0.0, 1.0]}")).unwrap();
    let table = calibrate(d, "r.yaml", "cal.yaml", &["--metric", "kld"]).unwrap();
    let text = std::fs::read_to_string(d.join("cal.yaml")).unwrap();
    let t: f64 = calibrated_value(&text, 7).parse().unwrap();
    assert!(t < 1e-3, "t = {t}\n{table}");
    // The reference's log-probabilities lived in a temporary folder: nothing is left of it.
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_calibrated_recipe_measures_what_its_trial_measured_and_is_the_grids_best() {
    let dir = setup();
    let d = dir.path();
    std::fs::write(d.join("r.yaml"), slerp("{search: [0.0, 1.0]}")).unwrap();
    let table = calibrate(d, "r.yaml", "cal.yaml", &["--table", "trials.tsv"]).unwrap();
    let tsv = std::fs::read_to_string(d.join("trials.tsv")).unwrap();
    let best = tsv
        .lines()
        .find(|l| l.split('\t').next().unwrap().ends_with('*'));
    let best: Vec<&str> = best
        .expect("the best trial is starred")
        .split('\t')
        .collect();
    let ppl: f64 = best[2].parse().unwrap();
    let measured = eval_json(d, "cal.yaml", &d.join("text.txt"), &[])["perplexity"]
        .as_f64()
        .unwrap();
    assert!(
        (measured - ppl).abs() < 1e-4 * ppl,
        "{measured} vs {ppl}\n{table}"
    );
    // Brute force: the perplexity on a grid of t is never below the calibrated one (to the
    // table's 4 decimals).
    for k in 0..=10 {
        let t = format!("{:.1}", k as f64 / 10.0);
        std::fs::write(d.join("g.yaml"), slerp(&t)).unwrap();
        let p = eval_json(d, "g.yaml", &d.join("text.txt"), &[])["perplexity"]
            .as_f64()
            .unwrap();
        assert!(measured <= p + 1e-4, "t = {t}: {p} < {measured}\n{table}");
    }
}

/// Two searched values (Nelder–Mead), one in a gradient list: the same bytes twice, on one
/// thread and on two. The other scales the output head (`globals:`), so large values send the
/// perplexity up by orders of magnitude: those trials stop after their first chunk.
#[test]
fn nelder_mead_is_deterministic_and_stops_exploding_trials_early() {
    let dir = setup();
    let d = dir.path();
    let recipe = "merge_method: passthrough\nslices:\n  - sources:\n      - model: a.gguf\n        layer_range: [0, 2]\n  - sources:\n      - model: a.gguf\n        layer_range: [1, 2]\n    repeat: 3\n    parameters:\n      scale:\n        - filter: o_proj\n          value: [1.0, {search: [0.05, 3.0]}]\n        - value: 1.0\nglobals:\n  merge_method: passthrough\n  models:\n    - model: a.gguf\n      parameters:\n        scale:\n          - filter: lm_head\n            value: {search: [0.05, 30.0]}\n          - value: 1.0\n";
    std::fs::write(d.join("r.yaml"), recipe).unwrap();
    let run = |threads: &str, out: &str| {
        let tsv = format!("{out}.tsv");
        let table = calibrate(
            d,
            "r.yaml",
            out,
            &[
                "--threads",
                threads,
                "--budget",
                "16",
                "--abort-factor",
                "2",
                "--table",
                &tsv,
            ],
        )
        .unwrap();
        let yaml = std::fs::read(d.join(out)).unwrap();
        // The table without its seconds column.
        let rows: Vec<String> = std::fs::read_to_string(d.join(&tsv))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once('\t').unwrap().0.to_string())
            .collect();
        (yaml, rows, table)
    };
    let (y1, t1, table) = run("1", "one.yaml");
    let (y2, t2, _) = run("2", "two.yaml");
    assert_eq!(t1, t2);
    assert_eq!(y1, y2);
    assert_eq!(t1.len(), 17, "16 trials and a header\n{table}");
    let aborted = t1.iter().filter(|r| r.ends_with("\tyes")).count();
    assert!(aborted > 0, "no trial stopped early\n{table}");
    // The best trial ran every chunk; the searched values are the only change to the recipe.
    assert!(
        t1.iter().any(|r| r.contains("*\t") && r.ends_with("\tno")),
        "{table}"
    );
    let text = String::from_utf8(y1).unwrap();
    let (o, head) = (calibrated_value(&text, 13), calibrated_value(&text, 22));
    let want = recipe
        .replace("{search: [0.05, 3.0]}", o)
        .replace("{search: [0.05, 30.0]}", head);
    assert!(text.ends_with(&want), "{text}");
}

#[test]
fn types_write_the_calibrated_model() {
    let dir = setup();
    let d = dir.path();
    std::fs::write(d.join("r.yaml"), slerp("{search: [0.0, 1.0]}")).unwrap();
    calibrate(
        d,
        "r.yaml",
        "cal.yaml",
        &["--budget", "5", "--types", "F32"],
    )
    .unwrap();
    let from_model = eval_json(d, "cal-F32.gguf", &d.join("text.txt"), &[]);
    let from_recipe = eval_json(d, "cal.yaml", &d.join("text.txt"), &[]);
    assert_eq!(from_model["perplexity"], from_recipe["perplexity"]);
}

/// The final norm scaled by a range of huge values: the logits overflow.
fn head_scale(range: &str) -> String {
    format!("merge_method: passthrough\nslices:\n  - sources:\n      - model: a.gguf\n        layer_range: [0, 2]\nglobals:\n  merge_method: passthrough\n  models:\n    - model: a.gguf\n      parameters:\n        scale:\n          - filter: model.norm\n            value: {{search: {range}}}\n          - value: 1.0\n")
}

#[test]
fn bad_calibration_input_is_one_clear_error_and_writes_nothing() {
    let dir = setup();
    let d = dir.path();
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".yaml"))
            .collect();
        names.sort();
        names
    };
    // A model with a NaN weight: every merge of it measures NaN.
    common::rewrite(
        &d.join("a.gguf"),
        &d.join("nan.gguf"),
        |_| {},
        |name, values| {
            if name == "blk.1.ffn_down.weight" {
                values[7] = f32::NAN;
            }
        },
    );
    let before = listing();
    let cases: &[(&str, &[&str], &str)] = &[
        (&slerp("0.5"), &[], "no search range"),
        (&slerp("{search: [0.9, 0.1]}"), &[], "r.yaml:7:"),
        (&slerp("{search: []}"), &[], "r.yaml:7:"),
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - model: a.gguf\n        layer_range: [0, {search: [1, 2]}]\n",
            &[],
            "r.yaml:5:",
        ),
        (&head_scale("[1e37, 3e38]"), &[], "NaN"),
        (&head_scale("[1e30, 1e31]"), &[], "infinite"),
        // A NaN in a weight is the merge's error, naming the tensor.
        (
            "merge_method: passthrough\nslices:\n  - sources:\n      - model: nan.gguf\n        layer_range: [0, 2]\n        parameters:\n          scale: {search: [0.5, 1.5]}\n",
            &[],
            "blk.1.ffn_down.weight",
        ),
        (&slerp("{search: [0.0, 1.0]}"), &["--types", "Q9_X"], "Q9_X"),
        (&slerp("{search: [0.0, 1.0]}"), &["--ref", "b.gguf"], "--ref"),
        (&slerp("{search: [0.0, 1.0]}"), &["--budget", "0"], "budget"),
    ];
    for (recipe, extra, says) in cases {
        std::fs::write(d.join("r.yaml"), recipe).unwrap();
        let e = calibrate(d, "r.yaml", "cal.yaml", extra).unwrap_err();
        assert!(e.contains(says), "{recipe}: {e}");
        assert!(!d.join("cal.yaml").exists(), "{recipe}");
        assert_eq!(listing(), before, "{recipe}: {e}");
    }
    // The NaN error names the searched value's line.
    std::fs::write(d.join("r.yaml"), head_scale("[1e37, 3e38]")).unwrap();
    let e = calibrate(d, "r.yaml", "cal.yaml", &[]).unwrap_err();
    assert!(e.contains("r.yaml:13:"), "{e}");
    // An output in a folder that does not exist is refused before any trial.
    let e = calibrate(d, "r.yaml", "no/cal.yaml", &[]).unwrap_err();
    assert!(e.contains("no/cal.yaml: its folder does not exist"), "{e}");
    // The output may not be an input.
    std::fs::write(d.join("r.yaml"), slerp("{search: [0.0, 1.0]}")).unwrap();
    let e = calibrate(d, "r.yaml", "r.yaml", &[]).unwrap_err();
    assert!(e.contains("the input"), "{e}");
    assert_eq!(
        std::fs::read_to_string(d.join("r.yaml")).unwrap(),
        slerp("{search: [0.0, 1.0]}")
    );
}
