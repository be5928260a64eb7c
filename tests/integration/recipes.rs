//! Every recipe in recipes/ runs on generated 8-layer models, and the layer-stacking
//! techniques build exactly the stacks they describe.

use crate::common::{self, Smelt};
use smelt::fixture::TinyLlama;
use smelt::gguf::GgmlType;
use smelt::store::Store;
use std::path::{Path, PathBuf};

fn setup() -> tempfile::TempDir {
    let dir = common::scratch();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    for (name, seed) in [("A", 1), ("B", 2), ("C", 3)] {
        TinyLlama {
            n_layer: 8,
            seed,
            dtype: GgmlType::F32,
            ..Default::default()
        }
        .write_gguf(&dir.path().join(format!("models/{name}.gguf")))
        .unwrap();
    }
    dir
}

fn recipe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes")
        .join(name)
}

fn merge(dir: &Path, name: &str, types: &str) -> (Store, String) {
    let o = Smelt::new(dir)
        .arg("merge")
        .arg(recipe(name))
        .args(["-o", "out", "--types", types])
        .run();
    let log = o.stderr;
    assert!(o.status.success(), "{name}: {log}");
    let stem = name.trim_end_matches(".yaml");
    let first = types.split(',').next().unwrap();
    (
        Store::open(dir.join(format!("out/{stem}-{first}.gguf"))).unwrap(),
        log,
    )
}

fn t(s: &Store, name: &str) -> Vec<f32> {
    s.read_f32(s.find(name).unwrap_or_else(|| panic!("no {name}")))
        .unwrap()
}

fn scaled(v: &[f32], k: f32) -> Vec<f32> {
    v.iter().map(|x| x * k).collect()
}

#[test]
fn every_recipe_runs() {
    let dir = setup();
    let mut n = 0;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") {
            continue;
        }
        let (s, _) = merge(dir.path(), &name, "F16");
        for i in 0..s.tensors.len() {
            assert!(
                s.read_f32(i).unwrap().iter().all(|v| v.is_finite()),
                "{name} {}",
                s.tensors[i].name
            );
        }
        n += 1;
    }
    assert!(n >= 12, "{n} recipes");
}

#[test]
fn scaled_passthrough_scales_residual_writers_up_the_stack() {
    let dir = setup();
    let a = Store::open(dir.path().join("models/A.gguf")).unwrap();
    let (s, _) = merge(dir.path(), "scaled-passthrough.yaml", "F32");
    assert_eq!(s.hparam("block_count"), Some(12));
    assert_eq!(
        t(&s, "blk.0.attn_output.weight"),
        scaled(&t(&a, "blk.0.attn_output.weight"), 1.5)
    );
    assert_eq!(
        t(&s, "blk.11.ffn_down.weight"),
        scaled(&t(&a, "blk.7.ffn_down.weight"), 4.0)
    );
    assert_eq!(
        t(&s, "blk.5.attn_q.weight"),
        t(&a, "blk.3.attn_q.weight"),
        "others unscaled"
    );
}

#[test]
fn stack_with_gradient_overlap_and_shared_globals() {
    let dir = setup();
    let a = Store::open(dir.path().join("models/A.gguf")).unwrap();
    let b = Store::open(dir.path().join("models/B.gguf")).unwrap();
    let (s, _) = merge(dir.path(), "stack-gradient.yaml", "F32");
    assert_eq!(s.hparam("block_count"), Some(14));
    assert_eq!(t(&s, "blk.5.ffn_up.weight"), t(&a, "blk.5.ffn_up.weight"));
    assert_eq!(
        t(&s, "blk.6.ffn_up.weight"),
        t(&a, "blk.6.ffn_up.weight"),
        "overlap starts at A (t=0)"
    );
    assert_eq!(
        t(&s, "blk.7.ffn_up.weight"),
        t(&b, "blk.1.ffn_up.weight"),
        "and ends at B (t=1)"
    );
    assert_eq!(t(&s, "blk.13.ffn_up.weight"), t(&b, "blk.7.ffn_up.weight"));
    let avg: Vec<f32> = t(&a, "token_embd.weight")
        .iter()
        .zip(t(&b, "token_embd.weight"))
        .map(|(x, y)| (x * 0.5 + y * 0.5) / 1.0)
        .collect();
    assert_eq!(
        t(&s, "token_embd.weight"),
        avg,
        "embeddings merged from both"
    );
    let avg: Vec<f32> = t(&a, "output.weight")
        .iter()
        .zip(t(&b, "output.weight"))
        .map(|(x, y)| x * 0.5 + y * 0.5)
        .collect();
    assert_eq!(t(&s, "output.weight"), avg, "output head merged from both");
}

#[test]
fn brainstorm_repeats_the_top_layers_with_decaying_scales() {
    let dir = setup();
    let a = Store::open(dir.path().join("models/A.gguf")).unwrap();
    let (s, _) = merge(dir.path(), "brainstorm.yaml", "F32");
    assert_eq!(s.hparam("block_count"), Some(28));
    // The repeated slice has 20 layers: t = idx / 19, scale = 1 - 0.75 t.
    for idx in 0..20u32 {
        let scale = (1.0 - idx as f64 / 19.0) * 1.0 + (idx as f64 / 19.0) * 0.25;
        let src = 6 + idx % 2;
        let got = t(&s, &format!("blk.{}.attn_output.weight", 8 + idx));
        assert_eq!(
            got,
            scaled(
                &t(&a, &format!("blk.{src}.attn_output.weight")),
                scale as f32
            ),
            "copy {idx}"
        );
        assert_eq!(
            t(&s, &format!("blk.{}.attn_k.weight", 8 + idx)),
            t(&a, &format!("blk.{src}.attn_k.weight"))
        );
    }
}

#[test]
fn pruning_drops_and_renumbers() {
    let dir = setup();
    let a = Store::open(dir.path().join("models/A.gguf")).unwrap();
    let (s, _) = merge(dir.path(), "prune.yaml", "F32");
    assert_eq!(s.hparam("block_count"), Some(6));
    for (out, src) in [(0, 0), (2, 2), (3, 4), (4, 6), (5, 7)] {
        assert_eq!(
            t(&s, &format!("blk.{out}.ffn_gate.weight")),
            t(&a, &format!("blk.{src}.ffn_gate.weight"))
        );
    }
    assert!(s.find("blk.6.ffn_gate.weight").is_none());
}

#[test]
fn nearswap_reports_swap_fractions() {
    let dir = setup();
    let (s, log) = merge(dir.path(), "nearswap.yaml", "F32");
    assert!(log.contains("blk.0.attn_q.weight: swapped"), "{log}");
    // One remark per merged tensor, each once: the writer releasing a tensor after the merge
    // has moved on to the next must neither drop the next one's work nor its remark.
    for t in &s.tensors {
        let lines = log
            .lines()
            .filter(|l| l.starts_with(&format!("{}: swapped", t.name)))
            .count();
        assert_eq!(lines, 1, "{}: {log}", t.name);
    }
}

#[test]
fn prune_plan_finds_a_duplicated_layer() {
    let dir = setup();
    // A 9-layer model whose layer 5 repeats layer 4.
    std::fs::write(
        dir.path().join("dup.yaml"),
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: models/A.gguf\n        layer_range: [0, 5]\n  - sources:\n      - model: models/A.gguf\n        layer_range: [4, 8]\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Smelt::new(dir.path()).args(args).run().ok();
    };
    run(&["merge", "dup.yaml", "-o", "out", "--types", "F32"]);
    run(&[
        "prune-plan",
        "out/dup-F32.gguf",
        "--count",
        "1",
        "-o",
        "pruned.yaml",
    ]);
    let text = std::fs::read_to_string(dir.path().join("pruned.yaml")).unwrap();
    assert!(text.contains("drops [5]"), "{text}");
    run(&["merge", "pruned.yaml", "-o", "out2", "--types", "F32"]);
    let s = Store::open(dir.path().join("out2/pruned-F32.gguf")).unwrap();
    let a = Store::open(dir.path().join("models/A.gguf")).unwrap();
    assert_eq!(s.hparam("block_count"), Some(8));
    for l in 0..8 {
        assert_eq!(
            t(&s, &format!("blk.{l}.ffn_up.weight")),
            t(&a, &format!("blk.{l}.ffn_up.weight"))
        );
    }
}
