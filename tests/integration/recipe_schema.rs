//! The rest of the schema real mergekit recipes use: `modules: {default: ...}`, settings given
//! once at the top of a multi-document file, a `tokenizer_source` that is not merged, and the
//! keys and files smelt does not implement, each refused or warned about with its line.

use crate::common;
use smelt::fixture::TinyLlama;
use smelt::gguf::{GgmlType, Value};
use smelt::store::Store;
use std::collections::BTreeMap;
use std::path::Path;

fn models(dir: &Path) {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    for (name, seed, vocab, layers) in [("A", 1, 512, 2), ("B", 2, 512, 2), ("D", 4, 500, 3)] {
        TinyLlama {
            n_layer: layers,
            seed,
            vocab,
            dtype: GgmlType::F32,
            ..Default::default()
        }
        .write_gguf(&dir.join(format!("models/{name}.gguf")))
        .unwrap();
    }
}

/// `smelt merge NAME.yaml` (written with `text`) in `dir`: Ok(stderr) or Err(stderr).
fn merge(dir: &Path, name: &str, text: &str) -> Result<String, String> {
    std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
    common::smelt(
        dir,
        [
            "merge",
            &format!("{name}.yaml"),
            "-o",
            &format!("out-{name}"),
            "--types",
            "F32",
        ],
    )
}

fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let s = Store::open(path).unwrap();
    (0..s.tensors.len())
        .map(|i| (s.tensors[i].name.clone(), s.read_f32(i).unwrap()))
        .collect()
}

const SLICES: &str = "    slices:
      - sources:
          - model: models/A.gguf
            layer_range: [0, 2]
          - model: models/B.gguf
            layer_range: [0, 2]
";

#[test]
fn modules_default_is_the_same_merge_as_top_level_slices() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    let plain = format!(
        "merge_method: slerp\nbase_model: models/A.gguf\nparameters: {{t: 0.2}}\n{}",
        SLICES.replace("\n    ", "\n").trim_start()
    );
    merge(d, "plain", &plain).unwrap();
    // The module's parameters rank above the recipe's, as in mergekit's ConfigReader.
    let modules = format!(
        "merge_method: slerp\nbase_model: models/A.gguf\nparameters: {{t: 0.9}}\nmodules:\n  default:\n    parameters: {{t: 0.2}}\n{SLICES}"
    );
    merge(d, "modules", &modules).unwrap();
    let (a, b) = (
        tensors(&d.join("out-plain/plain-F32.gguf")),
        tensors(&d.join("out-modules/modules-F32.gguf")),
    );
    assert_eq!(a, b);

    let two = format!("{modules}  vision_tower:\n    models:\n      - model: models/A.gguf\n");
    let err = merge(d, "two", &two).unwrap_err();
    assert!(
        err.contains("two.yaml:13:") && err.contains("vision_tower") && err.contains("one module"),
        "{err}"
    );
    let both = format!("{modules}models:\n  - model: models/A.gguf\n");
    let err = merge(d, "both", &both).unwrap_err();
    assert!(
        err.contains("both.yaml:1:") && err.contains("exactly one of"),
        "{err}"
    );
}

#[test]
fn base_model_given_once_at_the_top_of_a_multi_document_file() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    let docs = |base: &str| {
        format!(
            "name: first\nmerge_method: slerp\n{base}models:\n  - model: models/A.gguf\n  - model: models/B.gguf\nparameters: {{t: 0.3}}\n---\nmerge_method: task_arithmetic\n{base}models:\n  - model: first\n    parameters: {{weight: 0.5}}\n  - model: models/B.gguf\n    parameters: {{weight: 0.7}}\n"
        )
    };
    merge(d, "each", &docs("base_model: models/A.gguf\n")).unwrap();
    let shared = format!(
        "# settings the merges below share\nbase_model: models/A.gguf\ndtype: float32\n---\n{}",
        docs("")
    );
    merge(d, "shared", &shared).unwrap();
    assert_eq!(
        tensors(&d.join("out-each/each-F32.gguf")),
        tensors(&d.join("out-shared/shared-F32.gguf"))
    );
    // Line numbers stay those of the file; a key the shared document cannot hold is named.
    let err = merge(
        d,
        "bad",
        &shared.replace("merge_method: task_arithmetic", "merge_method: nope"),
    )
    .unwrap_err();
    assert!(
        err.contains("bad.yaml:12:") && err.contains("nope"),
        "{err}"
    );
    let err = merge(d, "bad2", &shared.replace("dtype: float32", "weight: 1")).unwrap_err();
    assert!(err.contains("bad2.yaml") && err.contains("weight"), "{err}");
}

#[test]
fn tokenizer_source_can_name_a_model_that_is_not_merged() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    // D: 500 tokens (the first 499 of A's and B's, then their last, `<|endoftext|>`), 3
    // layers: only its tokenizer is taken.
    let recipe = "merge_method: linear\nmodels:\n  - model: models/A.gguf\n    parameters: {weight: 0.5}\n  - model: models/B.gguf\n    parameters: {weight: 0.5}\ntokenizer_source: models/D.gguf\n";
    merge(d, "donor", recipe).unwrap();
    let out = Store::open(d.join("out-donor/donor-F32.gguf")).unwrap();
    let donor = Store::open(d.join("models/D.gguf")).unwrap();
    assert_eq!(
        out.metadata.get("tokenizer.ggml.tokens"),
        donor.metadata.get("tokenizer.ggml.tokens")
    );
    assert_eq!(out.metadata.get_u64("llama.block_count"), Some(2));
    assert_eq!(out.metadata.get_u64("llama.vocab_size"), Some(500));
    let (a, b) = (
        tensors(&d.join("models/A.gguf")),
        tensors(&d.join("models/B.gguf")),
    );
    let got = tensors(&d.join("out-donor/donor-F32.gguf"));
    let hidden = 64;
    for name in ["token_embd.weight", "output.weight"] {
        let rows = got[name].len() / hidden;
        assert_eq!(rows, 500, "{name}");
        for r in 0..rows {
            let src = if r < 499 { r } else { 511 };
            for j in 0..hidden {
                let want = 0.5 * a[name][src * hidden + j] + 0.5 * b[name][src * hidden + j];
                assert!(
                    (got[name][r * hidden + j] - want).abs() < 1e-6,
                    "{name} row {r}"
                );
            }
        }
    }
    assert_eq!(
        got["blk.1.attn_q.weight"].len(),
        a["blk.1.attn_q.weight"].len()
    );
    assert!(!got.contains_key("blk.2.attn_q.weight"));
    assert!(matches!(
        out.metadata.get("general.name"),
        Some(Value::String(_))
    ));
    // The `tokenizer:` block's `source` names a donor the same way.
    let block = recipe.replace(
        "tokenizer_source: models/D.gguf",
        "tokenizer:\n  source: models/D.gguf",
    );
    merge(d, "block", &block).unwrap();
    assert_eq!(got, tensors(&d.join("out-block/block-F32.gguf")));
}

#[test]
fn mergekit_keys_and_files_smelt_does_not_implement_are_named() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    // (recipe, line, words the message must hold)
    let cases: &[(&str, u64, &[&str])] = &[
        (
            "base_model: models/A.gguf\ngate_mode: cheap_embd\nexperts:\n  - source_model: models/B.gguf\n    positive_prompts: [\"code\"]\n",
            2,
            &["gate_mode", "cheap_embd", "cheap_embed"],
        ),
        (
            "base_model: models/A.gguf\nexperts:\n  - source_model: models/B.gguf\n",
            2,
            &["experts_per_token", "number of experts (1)"],
        ),
        (
            "genome:\n  models: [models/A.gguf]\n  merge_method: linear\ntasks:\n  - name: x\n",
            1,
            &["genome", "mergekit-evolve"],
        ),
        (
            "merge_method: linear\nmodels:\n  - model: models/A.gguf+x+y\n",
            3,
            &["MODEL+LORA_ADAPTER"],
        ),
    ];
    for (k, (text, line, words)) in cases.iter().enumerate() {
        let name = format!("case{k}");
        let err = merge(d, &name, text).unwrap_err();
        assert!(err.contains(&format!("{name}.yaml:{line}:")), "{err}");
        for w in *words {
            assert!(err.contains(w), "{w}: {err}");
        }
        assert!(
            !d.join(format!("out-{name}")).exists()
                || std::fs::read_dir(d.join(format!("out-{name}")))
                    .unwrap()
                    .next()
                    .is_none()
        );
    }
    // `residual_weight` is read by mergekit's schema but used by no merge: a warning.
    let warned = merge(
        d,
        "residual",
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: models/A.gguf\n        layer_range: [0, 2]\n    residual_weight: 0.5\n",
    )
    .unwrap();
    assert!(
        warned.contains("residual_weight") && warned.contains("ignored"),
        "{warned}"
    );
}
