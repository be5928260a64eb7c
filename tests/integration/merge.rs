//! Merge properties on deterministic tiny models, through the CLI as a user runs it.

use crate::common::{self, Smelt};
use smelt::fixture::TinyLlama;
use smelt::gguf::GgmlType;
use smelt::store::Store;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: common::scratch(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn model(&self, name: &str, m: TinyLlama) -> PathBuf {
        let p = self.path(name);
        m.write_gguf(&p).unwrap();
        p
    }
    fn abc(&self, dtype: GgmlType) -> [PathBuf; 3] {
        [1, 2, 3].map(|seed| {
            self.model(
                &format!("m{seed}.gguf"),
                TinyLlama {
                    seed,
                    dtype,
                    ..Default::default()
                },
            )
        })
    }
    fn recipe(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    /// Run `smelt merge`; Ok(stderr) or Err(stderr).
    fn merge(&self, recipe: &Path, out: &str, extra: &[&str]) -> Result<String, String> {
        let out = self.path(out);
        let args = [
            OsStr::new("merge"),
            recipe.as_os_str(),
            OsStr::new("-o"),
            out.as_os_str(),
        ];
        common::smelt(
            self.dir.path(),
            args.into_iter().chain(extra.iter().map(OsStr::new)),
        )
    }
}

fn values(store: &Store, name: &str) -> Vec<f32> {
    store
        .read_f32(store.find(name).unwrap_or_else(|| panic!("no {name}")))
        .unwrap()
}

#[test]
fn linear_of_a_model_with_itself_is_the_model() {
    let e = Env::new();
    let [a, ..] = e.abc(GgmlType::F32);
    let r = e.recipe("r.yaml", "merge_method: linear\nmodels:\n  - model: m1.gguf\n    parameters: {weight: 1.0}\n  - model: m1.gguf\n    parameters: {weight: 1.0}\n");
    e.merge(&r, "out", &["--types", "F32"]).unwrap();
    let (sa, so) = (
        Store::open(&a).unwrap(),
        Store::open(e.path("out/r-F32.gguf")).unwrap(),
    );
    assert_eq!(so.tensors.len(), sa.tensors.len());
    for t in &sa.tensors {
        assert_eq!(values(&so, &t.name), values(&sa, &t.name), "{}", t.name);
    }
}

#[test]
fn slerp_endpoints_are_the_inputs() {
    let e = Env::new();
    let [a, b, _] = e.abc(GgmlType::F32);
    for (t, want) in [(0.0, &a), (1.0, &b)] {
        let r = e.recipe("s.yaml", &format!("merge_method: slerp\nbase_model: m1.gguf\nmodels:\n  - model: m1.gguf\n  - model: m2.gguf\nparameters:\n  t: {t}\n"));
        e.merge(&r, &format!("out{t}"), &["--types", "F32"])
            .unwrap();
        let (sw, so) = (
            Store::open(want).unwrap(),
            Store::open(e.path(&format!("out{t}/s-F32.gguf"))).unwrap(),
        );
        for tn in &sw.tensors {
            assert_eq!(
                values(&so, &tn.name),
                values(&sw, &tn.name),
                "t={t} {}",
                tn.name
            );
        }
    }
}

#[test]
fn passthrough_of_all_layers_is_byte_identical() {
    let e = Env::new();
    let [a, ..] = e.abc(GgmlType::F16);
    let r = e.recipe("p.yaml", "merge_method: passthrough\nslices:\n  - sources:\n      - model: m1.gguf\n        layer_range: [0, 4]\n");
    e.merge(&r, "out", &["--types", "F16"]).unwrap();
    let (sa, so) = (
        Store::open(&a).unwrap(),
        Store::open(e.path("out/p-F16.gguf")).unwrap(),
    );
    assert_eq!(so.tensors.len(), sa.tensors.len());
    for (i, t) in sa.tensors.iter().enumerate() {
        let j = so.find(&t.name).unwrap();
        assert_eq!(so.raw(j).unwrap(), sa.raw(i).unwrap(), "{}", t.name);
    }
    // Provenance: the recipe, the inputs' hashes, the base model list.
    let m = &so.metadata;
    assert!(m.get_str("smelt.recipe").unwrap().contains("passthrough"));
    assert_eq!(m.get_str("smelt.input.0.file"), Some("m1.gguf"));
    // The digest, hashed while the output was written, is the input file's, written over
    // the header's placeholder.
    let digest = {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(std::fs::read(&a).unwrap());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(m.get_str("smelt.input.0.sha256"), Some(digest.as_str()));
    let size = std::fs::metadata(&a).unwrap().len();
    assert_eq!(m.get_u64("smelt.input.0.size"), Some(size));
    assert_eq!(m.get_u64("general.base_model.count"), Some(1));
}

#[test]
fn stacking_overlapping_ranges_renumbers_layers() {
    let e = Env::new();
    let a = e.model(
        "deep.gguf",
        TinyLlama {
            n_layer: 30,
            hidden: 32,
            ff: 64,
            n_head: 2,
            n_head_kv: 1,
            vocab: 300,
            ..Default::default()
        },
    );
    let r = e.recipe("stack.yaml", "merge_method: passthrough\nslices:\n  - sources:\n      - model: deep.gguf\n        layer_range: [0, 20]\n  - sources:\n      - model: deep.gguf\n        layer_range: [10, 30]\n");
    e.merge(&r, "out", &["--types", "F16"]).unwrap();
    let (sa, so) = (
        Store::open(&a).unwrap(),
        Store::open(e.path("out/stack-F16.gguf")).unwrap(),
    );
    // mergekit's layer_range is half-open: 20 + 20 layers. (Blocks 20..40 repeat 10..30.)
    assert_eq!(so.hparam("block_count"), Some(40));
    // The size label counts the merged model's 40 blocks, not the source's 30.
    let params: u64 = so
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<u64>())
        .sum();
    assert!(
        params
            > sa.tensors
                .iter()
                .map(|t| t.shape.iter().product::<u64>())
                .sum()
    );
    assert_eq!(
        so.metadata.get_str("general.size_label"),
        Some(format!("{:.0}K", params as f64 * 1e-3).as_str())
    );
    for l in 20..40 {
        for s in ["attn_q.weight", "ffn_down.weight", "attn_norm.weight"] {
            let (o, i) = (
                so.find(&format!("blk.{l}.{s}")).unwrap(),
                sa.find(&format!("blk.{}.{s}", l - 10)).unwrap(),
            );
            assert_eq!(so.raw(o).unwrap(), sa.raw(i).unwrap(), "blk.{l}.{s}");
        }
    }
}

#[test]
fn same_recipe_same_bytes_at_any_thread_count() {
    let e = Env::new();
    e.abc(GgmlType::F16);
    let r = e.recipe("d.yaml", "merge_method: dare_ties\nbase_model: m1.gguf\nmodels:\n  - model: m2.gguf\n    parameters: {weight: 0.5, density: 0.4}\n  - model: m3.gguf\n    parameters: {weight: 0.5, density: 0.6}\nparameters:\n  seed: 7\n");
    e.merge(&r, "o1", &["--types", "Q8_0"]).unwrap();
    e.merge(&r, "o2", &["--types", "Q8_0"]).unwrap();
    let o = Smelt::new(e.dir.path())
        .args(["--threads", "1", "merge"])
        .arg(&r)
        .arg("-o")
        .arg(e.path("o3"))
        .args(["--types", "Q8_0"])
        .run();
    assert!(o.status.success());
    let read = |d: &str| std::fs::read(e.path(&format!("{d}/d-Q8_0.gguf"))).unwrap();
    assert_eq!(read("o1"), read("o2"));
    assert_eq!(read("o1"), read("o3"));
    // --from re-runs the embedded recipe to the same bytes.
    Smelt::new(e.dir.path())
        .args(["merge", "--from"])
        .arg(e.path("o1/d-Q8_0.gguf"))
        .arg("-o")
        .arg(e.path("o4"))
        .args(["--types", "Q8_0"])
        .run()
        .ok();
    assert_eq!(
        read("o1"),
        std::fs::read(e.path("o4/merge-Q8_0.gguf")).unwrap()
    );
}

#[test]
fn every_method_runs_and_gives_finite_values() {
    let e = Env::new();
    e.abc(GgmlType::F16);
    let cases = [
        ("linear", "models:\n  - model: m1.gguf\n    parameters: {weight: 0.5}\n  - model: m2.gguf\n    parameters: {weight: 0.5}\n"),
        ("slerp", "base_model: m1.gguf\nmodels:\n  - model: m1.gguf\n  - model: m2.gguf\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 1]\n    - value: 0.5\n"),
        ("task_arithmetic", "base_model: m1.gguf\nmodels:\n  - model: m2.gguf\n    parameters: {weight: 0.7}\n  - model: m3.gguf\n    parameters: {weight: 0.3}\n"),
        ("ties", "base_model: m1.gguf\nmodels:\n  - model: m2.gguf\n    parameters: {weight: 0.5, density: 0.5}\n  - model: m3.gguf\n    parameters: {weight: 0.5, density: 0.5}\n"),
        ("dare_linear", "base_model: m1.gguf\nmodels:\n  - model: m2.gguf\n    parameters: {weight: 0.5, density: 0.5}\n  - model: m3.gguf\n    parameters: {weight: 0.5, density: 0.5}\n"),
        ("breadcrumbs_ties", "base_model: m1.gguf\nmodels:\n  - model: m2.gguf\n    parameters: {weight: 0.5, density: 0.8}\n  - model: m3.gguf\n    parameters: {weight: 0.5, density: 0.8}\n"),
        ("della", "base_model: m1.gguf\nmodels:\n  - model: m2.gguf\n    parameters: {weight: 0.5, density: 0.5}\n  - model: m3.gguf\n    parameters: {weight: 0.5, density: 0.5}\n"),
        ("model_stock", "base_model: m1.gguf\nmodels:\n  - model: m2.gguf\n  - model: m3.gguf\n"),
        ("nearswap", "base_model: m1.gguf\nmodels:\n  - model: m1.gguf\n  - model: m2.gguf\nparameters:\n  t: 0.001\n"),
    ];
    for (method, body) in cases {
        let r = e.recipe(
            &format!("{method}.yaml"),
            &format!("merge_method: {method}\n{body}"),
        );
        let log = e
            .merge(&r, method, &["--types", "F32"])
            .unwrap_or_else(|err| panic!("{method}: {err}"));
        let s = Store::open(e.path(&format!("{method}/{method}-F32.gguf"))).unwrap();
        assert_eq!(s.tensors.len(), 39, "{method}");
        for i in 0..s.tensors.len() {
            assert!(
                s.read_f32(i).unwrap().iter().all(|v| v.is_finite()),
                "{method} {}",
                s.tensors[i].name
            );
        }
        if method == "nearswap" {
            assert!(
                log.contains("swapped"),
                "NearSwap reports its swap fractions: {log}"
            );
        }
    }
}

#[test]
fn merges_straight_from_a_quantized_gguf() {
    let e = Env::new();
    e.abc(GgmlType::F16);
    let q = Smelt::new(e.dir.path())
        .args(["quantize", "m2.gguf", "-o", "m2-q4.gguf", "--type", "Q4_0"])
        .run();
    assert!(q.status.success());
    let r = e.recipe("q.yaml", "merge_method: linear\nmodels:\n  - model: m1.gguf\n    parameters: {weight: 0.5}\n  - model: m2-q4.gguf\n    parameters: {weight: 0.5}\noutput:\n  types: [Q8_0, Q4_K_M]\n");
    e.merge(&r, "out", &[]).unwrap();
    for t in ["Q8_0", "Q4_K_M"] {
        let s = Store::open(e.path(&format!("out/q-{t}.gguf"))).unwrap();
        let a = Store::open(e.path("m1.gguf")).unwrap();
        let b = Store::open(e.path("m2-q4.gguf")).unwrap();
        // The merged values sit between the inputs (up to the output's rounding).
        let (x, y, m) = (
            values(&a, "blk.0.ffn_up.weight"),
            values(&b, "blk.0.ffn_up.weight"),
            values(&s, "blk.0.ffn_up.weight"),
        );
        let err: f32 = m
            .iter()
            .zip(x.iter().zip(&y))
            .map(|(m, (x, y))| (m - (x + y) / 2.0).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.01, "{t}: {err}");
    }
}

#[test]
fn brainstorm_repeat_with_a_scale_law() {
    let e = Env::new();
    let [a, ..] = e.abc(GgmlType::F32);
    let r = e.recipe(
        "b.yaml",
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: m1.gguf\n        layer_range: [0, 4]\n  - sources:\n      - model: m1.gguf\n        layer_range: [3, 4]\n    repeat: 5\n    parameters:\n      scale:\n        - filter: o_proj\n          value: [1.0, 0.5]\n        - filter: down_proj\n          value: [1.0, 0.5]\n        - value: 1.0\n",
    );
    e.merge(&r, "out", &["--types", "F32"]).unwrap();
    let (sa, so) = (
        Store::open(&a).unwrap(),
        Store::open(e.path("out/b-F32.gguf")).unwrap(),
    );
    assert_eq!(so.hparam("block_count"), Some(9));
    let orig = values(&sa, "blk.3.attn_output.weight");
    for copy in 0..5 {
        let scale = 1.0 - 0.5 * copy as f32 / 4.0;
        let got = values(&so, &format!("blk.{}.attn_output.weight", 4 + copy));
        let want: Vec<f32> = orig.iter().map(|v| v * scale).collect();
        assert_eq!(got, want, "copy {copy}");
        assert_eq!(
            values(&so, &format!("blk.{}.attn_q.weight", 4 + copy)),
            values(&sa, "blk.3.attn_q.weight")
        );
    }
}

#[test]
fn bad_recipes_name_the_line_and_write_nothing() {
    let e = Env::new();
    e.abc(GgmlType::F16);
    e.model(
        "wide.gguf",
        TinyLlama {
            hidden: 128,
            ..Default::default()
        },
    );
    let cases = [
        ("range.yaml", "merge_method: passthrough\nslices:\n  - sources:\n      - model: m1.gguf\n        layer_range: [0, 9]\n", vec!["range.yaml:5", "out of bounds"]),
        ("method.yaml", "merge_method: magic\nmodels:\n  - model: m1.gguf\n", vec!["method.yaml:1", "unknown merge method `magic`"]),
        ("missing.yaml", "merge_method: linear\nmodels:\n  - model: nope.gguf\n    parameters: {weight: 1}\n", vec!["missing.yaml:3", "nope.gguf"]),
        ("param.yaml", "merge_method: linear\nmodels:\n  - model: m1.gguf\n  - model: m2.gguf\n", vec!["param.yaml:1", "needs parameter `weight`"]),
        ("shape.yaml", "merge_method: linear\nmodels:\n  - model: m1.gguf\n    parameters: {weight: 1}\n  - model: wide.gguf\n    parameters: {weight: 1}\n", vec!["shape.yaml", "token_embd.weight", "shape"]),
        ("key.yaml", "merge_method: linear\nmodels:\n  - model: m1.gguf\n    weigth: 1\n", vec!["weigth"]),
        ("base.yaml", "merge_method: slerp\nmodels:\n  - model: m1.gguf\n  - model: m2.gguf\nparameters: {t: 0.5}\n", vec!["base.yaml:1", "base_model"]),
        ("tok.yaml", "merge_method: linear\ntokenizer_source: other.gguf\nmodels:\n  - model: m1.gguf\n    parameters: {weight: 1}\n", vec!["tok.yaml:2", "other.gguf", "no such file or folder"]),
    ];
    for (file, text, needles) in cases {
        let r = e.recipe(file, text);
        let err = e
            .merge(&r, &format!("out-{file}"), &["--types", "F16"])
            .unwrap_err();
        for n in needles {
            assert!(err.contains(n), "{file}: `{err}` lacks `{n}`");
        }
        let written: Vec<_> = std::fs::read_dir(e.path(&format!("out-{file}")))
            .map(|d| d.count())
            .into_iter()
            .collect();
        assert!(written.iter().all(|&n| n == 0), "{file}: output written");
    }
}

#[test]
fn multi_document_recipes_feed_named_results_forward() {
    let e = Env::new();
    e.abc(GgmlType::F32);
    let r = e.recipe(
        "multi.yaml",
        "name: soup\nmerge_method: linear\nmodels:\n  - model: m1.gguf\n    parameters: {weight: 0.5}\n  - model: m2.gguf\n    parameters: {weight: 0.5}\n---\nmerge_method: slerp\nbase_model: soup\nmodels:\n  - model: soup\n  - model: m3.gguf\nparameters:\n  t: 0.0\n",
    );
    e.merge(&r, "out", &["--types", "F32"]).unwrap();
    let soup = Store::open(e.path("out/soup-F32.gguf")).unwrap();
    let last = Store::open(e.path("out/multi-F32.gguf")).unwrap();
    let (a, b) = (
        Store::open(e.path("m1.gguf")).unwrap(),
        Store::open(e.path("m2.gguf")).unwrap(),
    );
    let want: Vec<f32> = values(&a, "blk.2.ffn_up.weight")
        .iter()
        .zip(values(&b, "blk.2.ffn_up.weight"))
        .map(|(x, y)| (x * 0.5 + y * 0.5) / 1.0)
        .collect();
    assert_eq!(values(&soup, "blk.2.ffn_up.weight"), want);
    // slerp at t = 0 is its base: the first document's result.
    assert_eq!(values(&last, "blk.2.ffn_up.weight"), want);
}

#[test]
fn different_vocabularies_are_laid_out_in_the_chosen_one() {
    let e = Env::new();
    // b's vocabulary is a's plus 8 merges; `<|endoftext|>` is last in both (511 vs 519).
    let a = e.model(
        "a.gguf",
        TinyLlama {
            seed: 1,
            vocab: 512,
            dtype: GgmlType::F32,
            ..Default::default()
        },
    );
    let b = e.model(
        "b.gguf",
        TinyLlama {
            seed: 2,
            vocab: 520,
            dtype: GgmlType::F32,
            ..Default::default()
        },
    );
    let models = "merge_method: linear\nmodels:\n  - model: a.gguf\n    parameters: {weight: 0.5}\n  - model: b.gguf\n    parameters: {weight: 0.5}\n";
    let r = e.recipe("plain.yaml", models);
    let err = e.merge(&r, "o0", &["--types", "F32"]).unwrap_err();
    assert!(err.contains("tokenizer_source"), "{err}");

    let (sa, sb) = (Store::open(&a).unwrap(), Store::open(&b).unwrap());
    let row = |s: &Store, name: &str, r: usize| -> Vec<f32> {
        let v = values(s, name);
        let n = s.tensors[s.find(name).unwrap()].shape[0] as usize;
        v[r * n..(r + 1) * n].to_vec()
    };
    let mix = |x: Vec<f32>, y: Vec<f32>| -> Vec<f32> {
        x.iter().zip(&y).map(|(p, q)| 0.5 * p + 0.5 * q).collect()
    };
    let tokens = |s: &Store| -> Vec<String> {
        s.metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect()
    };

    let r = e.recipe("src.yaml", &format!("{models}tokenizer_source: a.gguf\n"));
    e.merge(&r, "o1", &["--types", "F32"]).unwrap();
    let o = Store::open(e.path("o1/src-F32.gguf")).unwrap();
    assert_eq!(tokens(&o), tokens(&sa));
    for name in ["token_embd.weight", "output.weight"] {
        assert_eq!(o.tensors[o.find(name).unwrap()].shape[1], 512);
        assert_eq!(row(&o, name, 7), mix(row(&sa, name, 7), row(&sb, name, 7)));
        // The end-of-text token matched by its text, not its id.
        assert_eq!(
            row(&o, name, 511),
            mix(row(&sa, name, 511), row(&sb, name, 519))
        );
    }

    let r = e.recipe("union.yaml", &format!("{models}tokenizer_source: union\n"));
    e.merge(&r, "o2", &["--types", "F32"]).unwrap();
    let o = Store::open(e.path("o2/union-F32.gguf")).unwrap();
    let (ta, tb, to) = (tokens(&sa), tokens(&sb), tokens(&o));
    assert_eq!(to.len(), 520);
    assert_eq!(to[..512], ta[..]);
    assert_eq!(to[512..], tb[511..519]);
    // Tokens only b has: its rows, for both inputs (mergekit's donor rule).
    for k in 0..8 {
        assert_eq!(
            row(&o, "token_embd.weight", 512 + k),
            row(&sb, "token_embd.weight", 511 + k)
        );
    }
    // `tokenizer:` block with padding: mean rows after the vocabulary, [PAD] tokens.
    let r = e.recipe(
        "pad.yaml",
        &format!("{models}tokenizer:\n  source: base\n  pad_to_multiple_of: 64\n"),
    );
    e.merge(&r, "o3", &["--types", "F32"]).unwrap();
    let o = Store::open(e.path("o3/pad-F32.gguf")).unwrap();
    assert_eq!(tokens(&o).len(), 512);
    let r = e.recipe(
        "pad2.yaml",
        &format!("{models}tokenizer:\n  source: union\n  pad_to_multiple_of: 64\n  tokens:\n    \"<|endoftext|>\":\n      source: b.gguf\n      force: true\n"),
    );
    e.merge(&r, "o4", &["--types", "F32"]).unwrap();
    let o = Store::open(e.path("o4/pad2-F32.gguf")).unwrap();
    let to = tokens(&o);
    assert_eq!(to.len(), 576);
    assert_eq!(to[575], "\"[PAD575]\"");
    assert_eq!(
        row(&o, "token_embd.weight", 511),
        row(&sb, "token_embd.weight", 519)
    );
    let bad = e.recipe(
        "bad.yaml",
        &format!("{models}tokenizer:\n  source: c.gguf\n"),
    );
    let err = e.merge(&bad, "o5", &["--types", "F32"]).unwrap_err();
    assert!(err.contains("bad.yaml:") && err.contains("c.gguf"), "{err}");
}

/// The writer copies a tensor's stored bytes only where the method says its result is its one
/// input unchanged (`Method::copies_input`): an unscaled passthrough, not a scaled one, nor
/// any other method on one input.
#[test]
fn only_an_unscaled_passthrough_copies_its_input_bytes() {
    use smelt::write::TensorProducer;
    let dir = common::scratch();
    common::tiny_model(dir.path(), "q.gguf", &["--hidden", "256", "--ff", "512"]);
    common::smelt(
        dir.path(),
        ["quantize", "q.gguf", "-o", "q4.gguf", "--type", "Q4_K_M"],
    )
    .unwrap();
    let input = Store::open(dir.path().join("q4.gguf")).unwrap();
    let plan = |recipe: &str| {
        let docs = smelt::recipe::parse(recipe, "r.yaml").unwrap();
        smelt::merge::MergePlan::new(
            &docs[0],
            recipe,
            "r.yaml",
            dir.path(),
            &[],
            &Default::default(),
        )
        .unwrap()
    };
    let slice = "slices:\n  - sources:\n      - model: q4.gguf\n        layer_range: [0, 2]\n";
    let copied = plan(&format!("merge_method: passthrough\n{slice}"));
    let scaled = plan(&format!(
        "merge_method: passthrough\nparameters:\n  scale: 0.5\n{slice}"
    ));
    let linear = plan(&format!(
        "merge_method: linear\nparameters:\n  weight: 1.0\n{slice}"
    ));
    for i in 0..copied.n_tensors() {
        let name = copied.name(i);
        let stored = input.raw(input.find(name).unwrap()).unwrap();
        assert_eq!(copied.raw(i), Some(stored), "{name}");
        assert_eq!(scaled.raw(i), None, "{name}");
        assert_eq!(linear.raw(i), None, "{name}");
    }
}
