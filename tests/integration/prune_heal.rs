//! `smelt prune-plan --rank activations` and `smelt heal` on tiny generated models.

use crate::common::{self, Smelt};
use std::path::{Path, PathBuf};

/// A 6-layer F32 model whose layer 3 writes nothing to the residual stream (its attention
/// output and FFN down projections are zero): an identity.
fn model_with_identity_layer(d: &Path) -> PathBuf {
    common::smelt(
        d,
        [
            "make-test-model",
            "-o",
            "src.gguf",
            "--dtype",
            "F32",
            "--layers",
            "6",
        ],
    )
    .unwrap();
    let src = d.join("src.gguf");
    let out = d.join("m.gguf");
    common::rewrite(
        &src,
        &out,
        |_| {},
        |name, values| {
            if name == "blk.3.attn_output.weight" || name == "blk.3.ffn_down.weight" {
                values.iter_mut().for_each(|v| *v = 0.0);
            }
        },
    );
    out
}

fn rank_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "prune-plan",
        "m.gguf",
        "--rank",
        "activations",
        "--text",
        "text.txt",
        "--ctx",
        "64",
        "--chunks",
        "4",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn an_identity_layer_ranks_most_redundant_by_activations() {
    let dir = common::scratch();
    let d = dir.path();
    model_with_identity_layer(d);
    common::word_text(d, "text.txt", 0);
    common::smelt(d, rank_args(&["--count", "1", "-o", "p.yaml"])).unwrap();
    let recipe = std::fs::read_to_string(d.join("p.yaml")).unwrap();
    assert!(recipe.contains("drops [3] of 6 layers"), "{recipe}");
    assert!(
        recipe.contains("#   layers   3..3  : 0.000000  (dropped)"),
        "{recipe}"
    );
    assert!(recipe.contains("#   layer   3: 0.000000\n"), "{recipe}");
    // Every other layer moves the hidden state.
    for l in [0, 1, 2, 4, 5] {
        let line = recipe
            .lines()
            .find(|x| x.starts_with(&format!("#   layer   {l}:")))
            .unwrap();
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v > 0.01, "{line}");
    }
    // The recipe merges to the model without layer 3.
    common::smelt(d, ["merge", "p.yaml", "-o", "out", "--types", "F32"]).unwrap();
    let s = smelt::store::Store::open(d.join("out/p-F32.gguf")).unwrap();
    assert_eq!(s.hparam("block_count"), Some(5));
}

#[test]
fn activation_ranking_is_the_same_on_any_thread_count() {
    let dir = common::scratch();
    let d = dir.path();
    model_with_identity_layer(d);
    common::word_text(d, "text.txt", 0);
    let mut one = vec!["--threads", "1"];
    one.extend(rank_args(&["--count", "2", "-o", "one.yaml"]));
    common::smelt(d, one).unwrap();
    let mut two = vec!["--threads", "2"];
    two.extend(rank_args(&["--count", "2", "-o", "two.yaml"]));
    common::smelt(d, two).unwrap();
    let one = std::fs::read_to_string(d.join("one.yaml")).unwrap();
    assert_eq!(one, std::fs::read_to_string(d.join("two.yaml")).unwrap());
    assert!(one.contains("# Blocks of 2:"), "{one}");
}

#[test]
fn bad_ranking_input_is_one_clear_error() {
    let dir = common::scratch();
    let d = dir.path();
    model_with_identity_layer(d);
    common::word_text(d, "text.txt", 0);
    let err = common::smelt(d, rank_args(&["--count", "0"])).unwrap_err();
    assert!(err.contains("--count 0: nothing to drop"), "{err}");
    let err = common::smelt(d, rank_args(&["--count", "6"])).unwrap_err();
    assert!(
        err.contains("a block of 1 to 5 layers can be dropped from a model of 6"),
        "{err}"
    );
    std::fs::write(d.join("short.txt"), "the merge of two models").unwrap();
    let mut args = rank_args(&["--count", "1"]);
    args[5] = "short.txt";
    let err = common::smelt(d, args).unwrap_err();
    assert!(
        err.contains("at least 64 are needed for one chunk"),
        "{err}"
    );
    let err =
        common::smelt(d, ["prune-plan", "m.gguf", "--count", "1", "--ctx", "64"]).unwrap_err();
    assert!(err.contains("go with --rank activations"), "{err}");
    assert!(!d.join("p.yaml").exists());
}

/// A 6-layer F16 teacher `t.gguf` and `p.gguf`, the teacher without layer 3, in `d`.
fn pruned_pair(d: &Path) {
    common::smelt(
        d,
        [
            "make-test-model",
            "-o",
            "t.gguf",
            "--layers",
            "6",
            "--seed",
            "3",
        ],
    )
    .unwrap();
    std::fs::write(
        d.join("p.yaml"),
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: t.gguf\n        layer_range: [0, 3]\n  - sources:\n      - model: t.gguf\n        layer_range: [4, 6]\n",
    )
    .unwrap();
    common::smelt(d, ["merge", "p.yaml", "-o", "out", "--types", "F16"]).unwrap();
    std::fs::rename(d.join("out/p-F16.gguf"), d.join("p.gguf")).unwrap();
}

/// `smelt heal p.gguf --teacher t.gguf` with a small full-batch setup and `extra`; the
/// report on success, the error otherwise.
fn heal(d: &Path, out: &str, extra: &[&str]) -> Result<serde_json::Value, String> {
    // Options (pairs of flag and value) of `extra` replace the defaults.
    let mut opts = vec![
        ("--teacher", "t.gguf"),
        ("--text", "text.txt"),
        ("--seq", "64"),
        ("--sequences", "10"),
        ("--batch", "8"),
        ("--steps", "8"),
        ("--lr", "1e-3"),
        ("--warmup", "0"),
        ("--val-every", "1"),
    ];
    for pair in extra.chunks(2) {
        match opts.iter_mut().find(|(k, _)| *k == pair[0]) {
            Some(o) => o.1 = pair[1],
            None => opts.push((pair[0], pair[1])),
        }
    }
    let mut args = vec!["heal", "p.gguf", "-o", out, "--json"];
    for (k, v) in opts {
        args.extend([k, v]);
    }
    let o = Smelt::new(d).args(&args).run();
    if !o.status.success() {
        return Err(o.stderr);
    }
    Ok(o.json())
}

fn losses(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn healing_lowers_the_loss_and_keeps_the_frozen_tensors() {
    let dir = common::scratch();
    let d = dir.path();
    pruned_pair(d);
    common::word_text(d, "text.txt", 0);
    let r = heal(d, "h.gguf", &[]).unwrap();
    // The cut is between the pruned model's layers 2 and 3 (teacher layers 2 and 4).
    assert_eq!(r["layer_map"], serde_json::json!([0, 1, 2, 4, 5]));
    assert_eq!(r["layers"], serde_json::json!([2, 3]));
    assert_eq!(r["teacher_depth"], 5);
    let train = losses(&r["train_loss"]);
    assert_eq!(train.len(), 8);
    for w in train.windows(2) {
        assert!(
            w[1] < w[0],
            "the full-batch loss must fall every step: {train:?}"
        );
    }
    let val: Vec<f64> = r["validation_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    let best = val.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(best < 0.8 * val[0], "{val:?}");

    use smelt::store::Store;
    let before = Store::open(d.join("p.gguf")).unwrap();
    let after = Store::open(d.join("h.gguf")).unwrap();
    assert_eq!(before.tensors.len(), after.tensors.len());
    let mut changed = Vec::new();
    for (i, t) in before.tensors.iter().enumerate() {
        let j = after.find(&t.name).unwrap();
        assert_eq!(after.tensors[j].ty, t.ty, "{}", t.name);
        if before.raw(i).unwrap() != after.raw(j).unwrap() {
            changed.push(t.name.clone());
        }
    }
    changed.sort();
    let mut expect: Vec<String> = [2, 3]
        .iter()
        .flat_map(|l| ["ffn_down", "ffn_gate", "ffn_up"].map(|s| format!("blk.{l}.{s}.weight")))
        .collect();
    expect.sort();
    assert_eq!(changed, expect);
    // Provenance.
    let md = &after.metadata;
    let teacher = Store::open(d.join("t.gguf")).unwrap();
    assert_eq!(
        md.get_str("smelt.heal.teacher.sha256").unwrap(),
        teacher.sha256().unwrap().1
    );
    assert_eq!(md.get_str("smelt.heal.layers"), Some("2,3"));
    assert_eq!(
        md.get_str("smelt.heal.train"),
        Some("ffn_gate,ffn_up,ffn_down")
    );
    assert_eq!(md.get_u64("smelt.heal.steps_run"), Some(8));
    assert!(md
        .get_str("smelt.heal.text.sha256")
        .is_some_and(|s| s.len() == 64));
    assert!(md
        .get_str("smelt.heal.params")
        .is_some_and(|p| p.contains("lr=0.001") && p.contains("seed=0")));
    // The healed model evaluates.
    common::smelt(
        d,
        [
            "eval", "h.gguf", "--text", "text.txt", "--ctx", "64", "--chunks", "2",
        ],
    )
    .unwrap();
}

#[test]
fn healing_is_the_same_bytes_for_the_same_seed_and_threads() {
    let dir = common::scratch();
    let d = dir.path();
    pruned_pair(d);
    common::word_text(d, "text.txt", 0);
    let extra = ["--batch", "2", "--steps", "6", "--seed", "7"];
    heal(d, "a.gguf", &extra).unwrap();
    heal(d, "b.gguf", &extra).unwrap();
    let a = std::fs::read(d.join("a.gguf")).unwrap();
    assert_eq!(a, std::fs::read(d.join("b.gguf")).unwrap());
    // Another seed visits the sequences in another order: other weights.
    heal(
        d,
        "c.gguf",
        &["--batch", "2", "--steps", "6", "--seed", "8"],
    )
    .unwrap();
    assert_ne!(a, std::fs::read(d.join("c.gguf")).unwrap());
}

#[test]
fn bad_heal_input_is_one_clear_error_and_writes_nothing() {
    let dir = common::scratch();
    let d = dir.path();
    pruned_pair(d);
    common::word_text(d, "text.txt", 0);
    let err = heal(d, "o.gguf", &["--layers", "2,9"]).unwrap_err();
    assert!(err.contains("--layers 9: the model has 5 layers"), "{err}");
    let err = heal(d, "o.gguf", &["--train", "ffn_gate,lm_head"]).unwrap_err();
    assert!(err.contains("--train lm_head: not a projection"), "{err}");
    let err = heal(d, "o.gguf", &["--lr", "1e9"]).unwrap_err();
    assert!(err.contains("training diverged"), "{err}");
    std::fs::write(d.join("short.txt"), "the merge of two models").unwrap();
    let err = heal(d, "o.gguf", &["--text", "short.txt"]).unwrap_err();
    assert!(
        err.contains("a sequence to train on and one to validate"),
        "{err}"
    );
    // A teacher of another width, and one the model was not pruned from.
    common::smelt(
        d,
        [
            "make-test-model",
            "-o",
            "w.gguf",
            "--layers",
            "6",
            "--hidden",
            "32",
        ],
    )
    .unwrap();
    let err = heal(d, "o.gguf", &["--teacher", "w.gguf"]).unwrap_err();
    assert!(err.contains("the teacher has width 32"), "{err}");
    common::smelt(
        d,
        [
            "make-test-model",
            "-o",
            "x.gguf",
            "--layers",
            "6",
            "--seed",
            "4",
        ],
    )
    .unwrap();
    let err = heal(d, "o.gguf", &["--teacher", "x.gguf"]).unwrap_err();
    assert!(err.contains("matches no layer of the teacher"), "{err}");
    assert!(!d.join("o.gguf").exists());
}

#[test]
fn a_teacher_prefix_shared_or_recomputed_gives_the_same_bytes() {
    let dir = common::scratch();
    let d = dir.path();
    pruned_pair(d);
    common::word_text(d, "text.txt", 0);
    // The same teacher with one more hyper-parameter key: its prefix is no longer taken as
    // the pruned model's, which then runs its own frozen layers, to the same numbers.
    common::rewrite(
        &d.join("t.gguf"),
        &d.join("t2.gguf"),
        |md| md.set("llama.unused_key", smelt::gguf::Value::U32(1)),
        |_, _| {},
    );
    let extra = ["--steps", "3", "--batch", "2"];
    let a = heal(d, "a.gguf", &extra).unwrap();
    let mut other = extra.to_vec();
    other.extend(["--teacher", "t2.gguf"]);
    let b = heal(d, "b.gguf", &other).unwrap();
    assert_eq!(
        (&a["shared_prefix"], &b["shared_prefix"]),
        (&true.into(), &false.into())
    );
    assert_eq!(a["train_loss"], b["train_loss"]);
    assert_eq!(a["validation_loss"], b["validation_loss"]);
    let tensors = |p: &str| {
        let s = smelt::store::Store::open(d.join(p)).unwrap();
        (0..s.tensors.len())
            .map(|i| s.raw(i).unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(tensors("a.gguf"), tensors("b.gguf"));
}

/// `smelt prune`: the pruned model is the model without the ranked layers, every kept tensor
/// byte for byte (renumbered), the drop recorded; `--heal` writes the bytes that `prune`
/// then `heal` write; bad input writes nothing (no output, no temporary pruned model).
#[test]
fn prune_writes_the_pruned_model_and_heals_it() {
    let dir = common::scratch();
    let d = dir.path();
    model_with_identity_layer(d);
    common::word_text(d, "text.txt", 0);
    let mut args = rank_args(&["--count", "1", "-o", "pruned.gguf"]);
    args[0] = "prune";
    common::smelt(d, &args).unwrap();
    let (m, p) = (
        smelt::store::Store::open(d.join("m.gguf")).unwrap(),
        smelt::store::Store::open(d.join("pruned.gguf")).unwrap(),
    );
    assert_eq!(p.hparam("block_count"), Some(5));
    assert_eq!(
        p.metadata.get_str("smelt.prune.layers"),
        Some("3"),
        "the identity layer is the one dropped"
    );
    assert_eq!(p.metadata.get_str("smelt.prune.rank"), Some("activations"));
    assert_eq!(p.tensors.len(), m.tensors.len() - 9);
    for (i, t) in p.tensors.iter().enumerate() {
        let from = match t.name.strip_prefix("blk.") {
            Some(rest) => {
                let (l, kind) = rest.split_once('.').unwrap();
                let l: u32 = l.parse().unwrap();
                format!("blk.{}.{kind}", if l >= 3 { l + 1 } else { l })
            }
            None => t.name.clone(),
        };
        let j = m.find(&from).unwrap();
        assert_eq!(t.ty, m.tensors[j].ty);
        assert!(p.raw(i).unwrap() == m.raw(j).unwrap(), "{}", t.name);
    }

    // --heal: the same bytes as prune, then heal of the pruned model.
    pruned_pair(d);
    let training = [
        "--text",
        "text.txt",
        "--seq",
        "64",
        "--sequences",
        "10",
        "--batch",
        "8",
        "--steps",
        "3",
        "--warmup",
        "0",
        "--val-every",
        "1",
    ];
    let mut args = vec!["prune", "t.gguf", "--count", "1", "-o", "pw.gguf"];
    common::smelt(d, &args).unwrap();
    args.extend(["--heal", "-q"]);
    args[5] = "chained.gguf";
    args.extend(training);
    common::smelt(d, &args).unwrap();
    let mut heal = vec![
        "heal",
        "pw.gguf",
        "--teacher",
        "t.gguf",
        "-o",
        "two-steps.gguf",
    ];
    heal.extend(training);
    common::smelt(d, &heal).unwrap();
    let chained = std::fs::read(d.join("chained.gguf")).unwrap();
    assert!(chained == std::fs::read(d.join("two-steps.gguf")).unwrap());

    // A text too short to train on: an error, and nothing beside the output.
    std::fs::write(d.join("short.txt"), "the merge of two models").unwrap();
    let before = std::fs::read_dir(d).unwrap().count();
    args[5] = "bad.gguf";
    let k = args.iter().position(|a| *a == "text.txt").unwrap();
    args[k] = "short.txt";
    let err = common::smelt(d, &args).unwrap_err();
    assert!(
        err.contains("a sequence to train on and one to validate"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(d).unwrap().count(), before);
}

/// `--loss kl`: trained end to end on the KL divergence of the next-token distributions, the
/// validation KL falls, the healed model is closer to the teacher than the pruned one by
/// `smelt eval --ref`'s mean KLD (another text, another code path), only the trained
/// projections change, and the loss is recorded.
#[test]
fn kl_healing_brings_the_output_distribution_closer_to_the_teacher() {
    let dir = common::scratch();
    let d = dir.path();
    pruned_pair(d);
    common::word_text(d, "text.txt", 0);
    common::word_text(d, "other.txt", 7);
    let r = heal(d, "h.gguf", &["--loss", "kl", "--steps", "6"]).unwrap();
    let val: Vec<f64> = r["validation_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert!(val[0] > 0.0, "{val:?}");
    let best = val.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(best < 0.9 * val[0], "{val:?}");
    let kld = |model: &str| -> f64 {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_smelt"))
            .current_dir(d)
            .args([
                "eval",
                model,
                "--ref",
                "t.gguf",
                "--text",
                "other.txt",
                "--ctx",
                "64",
                "--chunks",
                "4",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["kld"]["mean"].as_f64().unwrap()
    };
    let (pruned, healed) = (kld("p.gguf"), kld("h.gguf"));
    assert!(healed < pruned, "KLD pruned {pruned}, healed {healed}");

    use smelt::store::Store;
    let (before, after) = (
        Store::open(d.join("p.gguf")).unwrap(),
        Store::open(d.join("h.gguf")).unwrap(),
    );
    let changed: Vec<&str> = before
        .tensors
        .iter()
        .enumerate()
        .filter(|(i, t)| before.raw(*i) != after.raw(after.find(&t.name).unwrap()))
        .map(|(_, t)| t.name.as_str())
        .collect();
    assert!(changed
        .iter()
        .all(|n| n.starts_with("blk.2.ffn") || n.starts_with("blk.3.ffn")));
    assert_eq!(changed.len(), 6, "{changed:?}");
    assert_eq!(after.metadata.get_str("smelt.heal.loss"), Some("kl"));
}
