//! `smelt eval` and `smelt imatrix` through the CLI on tiny generated models: a merge recipe
//! evaluated directly equals its written F32 file, and bad input gets one clear error.
//! (Parity with llama-perplexity and llama-imatrix is tests/python/test_eval*.py.)

use crate::common::{self, Run, Smelt};
use std::path::Path;

fn eval_json(dir: &Path, model: &Path, text: &Path) -> serde_json::Value {
    eval_json_with(dir, model, text, &[])
}

fn eval_json_with(dir: &Path, model: &Path, text: &Path, extra: &[&str]) -> serde_json::Value {
    Smelt::new(dir)
        .args(["eval"])
        .arg(model)
        .arg("--text")
        .arg(text)
        .args(["--ctx", "64", "--chunks", "3", "--json"])
        .args(extra)
        .run()
        .ok()
        .json()
}

#[test]
fn a_recipe_evaluates_as_its_written_f32_merge() {
    let dir = common::scratch();
    let d = dir.path();
    common::tiny_model(d, "a.gguf", &["--dtype", "F32", "--seed", "1"]);
    common::tiny_model(d, "b.gguf", &["--dtype", "F32", "--seed", "2"]);
    let recipe = d.join("mix.yaml");
    std::fs::write(
        &recipe,
        "merge_method: linear\nmodels:\n  - model: a.gguf\n    parameters: {weight: 0.3}\n  - model: b.gguf\n    parameters: {weight: 0.7}\n",
    )
    .unwrap();
    common::smelt(d, ["merge", "mix.yaml", "-o", "out", "--types", "F32"]).unwrap();
    let text = common::word_text(d, "text.txt", 0);
    let direct = eval_json(d, &recipe, &text);
    let written = eval_json(d, &d.join("out/mix-F32.gguf"), &text);
    assert_eq!(direct["perplexity"], written["perplexity"]);
    assert_eq!(direct["per_chunk"], written["per_chunk"]);
    // ... and it is a merge, not one of its inputs.
    let a = eval_json(d, &d.join("a.gguf"), &text);
    assert_ne!(direct["perplexity"], a["perplexity"]);
    // Nothing was written by evaluating.
    let names: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
}

#[test]
fn chunk_groups_and_threads_do_not_change_the_numbers() {
    let dir = common::scratch();
    let d = dir.path();
    common::tiny_model(d, "f16.gguf", &["--dtype", "F16"]);
    common::smelt(
        d,
        ["quantize", "f16.gguf", "-o", "m.gguf", "--type", "Q8_0"],
    )
    .unwrap();
    let model = d.join("m.gguf");
    let text = common::word_text(d, "text.txt", 0);
    let whole = eval_json(d, &model, &text);
    // One chunk per group: every layer is read three times, the results are the same.
    let grouped = eval_json_with(d, &model, &text, &["--batch", "64"]);
    assert_eq!(whole["per_chunk"], grouped["per_chunk"]);
    assert_eq!(whole["perplexity"], grouped["perplexity"]);
    let one = Smelt::new(d)
        .args(["--threads", "1", "eval"])
        .arg(&model)
        .arg("--text")
        .arg(&text)
        .args(["--ctx", "64", "--chunks", "3", "--json"])
        .run()
        .json();
    assert_eq!(whole["perplexity"], one["perplexity"]);
}

#[test]
fn bad_evaluation_input_is_one_clear_error() {
    let dir = common::scratch();
    let d = dir.path();
    let model = common::tiny_model(d, "m.gguf", &["--dtype", "F32"]);
    let text = common::word_text(d, "text.txt", 0);
    let t = text.to_str().unwrap();
    let eval = |model: &str, extra: &[&str]| {
        let mut args = vec!["eval", model, "--text", t];
        args.extend_from_slice(extra);
        common::smelt(d, &args).unwrap_err()
    };
    // A context longer than the model's (the fixture says 2048).
    let err = eval("m.gguf", &["--ctx", "4096"]);
    assert!(
        err.contains("longer than the model's context (2048"),
        "{err}"
    );
    // A model missing a tensor the graph needs.
    common::rewrite(
        &model,
        &d.join("gap.gguf"),
        |_| {},
        |name, _| {
            if name == "blk.1.ffn_up.weight" {
                *name = "blk.1.ffn_up_renamed.weight".into();
            }
        },
    );
    let err = eval("gap.gguf", &["--ctx", "64"]);
    assert!(err.contains("`blk.1.ffn_up.weight`"), "{err}");
    // An architecture the forward pass does not run.
    common::rewrite(
        &model,
        &d.join("rwkv.gguf"),
        |md| {
            let renamed: Vec<(String, smelt::gguf::Value)> = md
                .iter()
                .filter(|(k, _)| k.starts_with("llama."))
                .map(|(k, v)| (k.replacen("llama.", "rwkv7.", 1), v.clone()))
                .collect();
            for (k, v) in renamed {
                md.set(&k, v);
            }
            md.set(
                "general.architecture",
                smelt::gguf::Value::String("rwkv7".into()),
            );
        },
        |_, _| {},
    );
    let err = eval("rwkv.gguf", &["--ctx", "64"]);
    assert!(
        err.contains("no forward pass for the `rwkv7` architecture"),
        "{err}"
    );
    // A reference with another vocabulary.
    common::tiny_model(d, "v.gguf", &["--dtype", "F32", "--vocab", "300"]);
    let err = eval("m.gguf", &["--ctx", "64", "--reference", "v.gguf"]);
    assert!(err.contains("v.gguf"), "{err}");
    // A recipe of two documents.
    std::fs::write(
        d.join("two.yaml"),
        "name: first\nmerge_method: passthrough\nmodels:\n  - model: m.gguf\n---\nmerge_method: passthrough\nmodels:\n  - model: first\n",
    )
    .unwrap();
    let err = eval("two.yaml", &["--ctx", "64"]);
    assert!(err.contains("2 documents"), "{err}");
}

#[test]
fn chunk_ranges_evaluated_apart_combine_into_the_one_run_perplexity() {
    let dir = common::scratch();
    let d = dir.path();
    common::tiny_model(d, "m.gguf", &["--dtype", "F16"]);
    common::word_text(d, "text.txt", 0);
    let run = |args: &[&str]| -> Run { Smelt::new(d).arg("eval").args(args).run() };
    let json = |o: Run| -> serde_json::Value { o.ok().json() };
    let base = ["m.gguf", "--text", "text.txt", "--ctx", "64", "--json"];
    let whole = json(run(&[&base[..], &["--chunks", "5"]].concat()));
    for (name, range) in [("a.json", "0..2"), ("b.json", "2..3"), ("c.json", "3..5")] {
        let part = run(&[&base[..], &["--chunks", range]].concat());
        assert!(part.status.success());
        std::fs::write(d.join(name), &part.stdout).unwrap();
    }
    // In any order on the command line: the ranges are put in order.
    let joined = json(run(&["--combine", "c.json", "a.json", "b.json", "--json"]));
    assert_eq!(joined["chunks"], 5);
    assert_eq!(joined["scored"], whole["scored"]);
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() <= 1e-12 * b.abs(), "{a} vs {b}");
    };
    close(&joined["perplexity"], &whole["perplexity"]);
    close(&joined["perplexity_error"], &whole["perplexity_error"]);
    for (a, b) in joined["per_chunk"]
        .as_array()
        .unwrap()
        .iter()
        .zip(whole["per_chunk"].as_array().unwrap())
    {
        close(a, b);
    }
    // A gap or an overlap between the ranges is named.
    let o = run(&["--combine", "a.json", "c.json"]);
    let err = o.stderr;
    assert!(
        !o.status.success() && err.contains("c.json: starts at chunk 3"),
        "{err}"
    );
    assert!(err.contains("chunks are missing"), "{err}");
    let o = run(&["--combine", "a.json", "a.json"]);
    assert!(o.stderr.contains("ranges overlap"));
    // Saved logits hold every chunk from 0: a range is refused with them.
    let o = run(&[&base[..], &["--chunks", "1..2", "--save-logits", "x.kld"]].concat());
    assert!(o.stderr.contains("does not go with"));
}
