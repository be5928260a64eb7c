//! `smelt prune-plan --rank activations` and `smelt heal` on tiny generated models.

mod common;

use std::path::{Path, PathBuf};

/// A text of a few thousand byte-level BPE tokens.
fn text(dir: &Path) -> PathBuf {
    let words = [
        "the", "merge", "of", "two", "models", "is", "measured", "on", "a", "text", "that",
        "nobody", "trained", "them", "for", "and", "each", "chunk", "counts",
    ];
    let body: Vec<&str> = (0..3000usize)
        .map(|i| words[(i * 7 + i / 5) % words.len()])
        .collect();
    let path = dir.join("text.txt");
    std::fs::write(&path, body.join(" ")).unwrap();
    path
}

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
    text(d);
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
    text(d);
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
    text(d);
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
