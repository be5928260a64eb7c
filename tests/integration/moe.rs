//! mergekit-moe configs through `smelt merge`: a Mixtral-style mixture from tiny dense models,
//! its experts byte for byte their sources' MLPs, its routers recomputed here from the base
//! model's embeddings, deterministic on any thread count, and bad configs refused by line.

use smelt::fixture::TinyLlama;
use smelt::gguf::{GgmlType, Value};
use smelt::store::Store;
use std::path::Path;

use crate::common;

const HIDDEN: usize = 64;

/// models/m{1,2,3}.gguf (F16, 2 layers, seeds 1..3), and variants that do not fit: a
/// narrower one and a deeper one.
fn models(dir: &Path) {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let tiny = |seed, n_layer, hidden| TinyLlama {
        n_layer,
        hidden,
        seed,
        dtype: GgmlType::F16,
        ..Default::default()
    };
    for (name, m) in [
        ("m1", tiny(1, 2, HIDDEN)),
        ("m2", tiny(2, 2, HIDDEN)),
        ("m3", tiny(3, 2, HIDDEN)),
        ("narrow", tiny(4, 2, 32)),
        ("deep", tiny(5, 3, HIDDEN)),
    ] {
        m.write_gguf(&dir.join(format!("models/{name}.gguf")))
            .unwrap();
    }
}

/// Three experts (m2, m3, m1 over base m1) with distinct prompts; `{mode}` is the gate mode.
fn config(mode: &str) -> String {
    format!(
        "base_model: models/m1.gguf
gate_mode: {mode}
dtype: float32
experts_per_token: 2
experts:
  - source_model: models/m2.gguf
    positive_prompts:
      - \"write a function in rust\"
      - \"fix this compiler error\"
  - source_model: models/m3.gguf
    positive_prompts:
      - \"a poem about the sea\"
    negative_prompts:
      - \"write a function\"
  - source_model: models/m1.gguf
    positive_prompts:
      - \"what is 12 times 7\"
"
    )
}

/// `smelt [--threads N] merge NAME.yaml -o out-NAME --types TYPES` with `text` as the config.
fn merge(dir: &Path, name: &str, text: &str, types: &str) -> Result<String, String> {
    merge_threads(dir, name, text, types, None)
}

fn merge_threads(
    dir: &Path,
    name: &str,
    text: &str,
    types: &str,
    threads: Option<&str>,
) -> Result<String, String> {
    std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
    let mut args: Vec<String> = Vec::new();
    if let Some(t) = threads {
        args.extend(["--threads".into(), t.into()]);
    }
    args.extend(
        [
            "merge",
            &format!("{name}.yaml"),
            "-o",
            &format!("out-{name}"),
            "--types",
            types,
        ]
        .map(String::from),
    );
    common::smelt(dir, &args)
}

fn tensor<'a>(s: &'a Store, name: &str) -> (&'a smelt::store::StoreTensor, usize) {
    let i = s.find(name).unwrap_or_else(|| panic!("no {name}"));
    (&s.tensors[i], i)
}

/// Rows of `hidden` values: the router of `layer` (expert by expert).
fn router(out: &Store, layer: usize) -> Vec<Vec<f32>> {
    let (t, i) = tensor(out, &format!("blk.{layer}.ffn_gate_inp.weight"));
    assert_eq!(t.ty, GgmlType::F32, "llama.cpp keeps the router in F32");
    assert_eq!(t.shape, vec![HIDDEN as u64, 3]);
    out.read_f32(i)
        .unwrap()
        .chunks(HIDDEN)
        .map(<[f32]>::to_vec)
        .collect()
}

/// mergekit's prompt vector for cheap_embed: the sum of the embeddings of BOS + each prompt's
/// tokens, normalised.
fn cheap_embed(base: &Store, prompts: &[&str]) -> Vec<f64> {
    let bos = base
        .metadata
        .get_u64("tokenizer.ggml.bos_token_id")
        .unwrap() as u32;
    let (_, embd) = tensor(base, "token_embd.weight");
    let table = base.read_f32(embd).unwrap();
    let mut sum = vec![0f64; HIDDEN];
    for p in prompts {
        let mut ids = vec![bos];
        ids.extend(smelt::tokenizer::encode::tokenize(&base.metadata, p, false).unwrap());
        for id in ids {
            let row = &table[id as usize * HIDDEN..(id as usize + 1) * HIDDEN];
            for (s, v) in sum.iter_mut().zip(row) {
                *s += *v as f64;
            }
        }
    }
    unit(&sum)
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-8);
    v.iter().map(|x| x / n).collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() < 1e-6, "{what}[{k}]: {g} vs {w}");
    }
}

#[test]
fn cheap_embed_mixture_holds_the_experts_mlps_and_the_prompt_routers() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    merge(d, "moe", &config("cheap_embed"), "F16,F32").unwrap();
    let base = Store::open(d.join("models/m1.gguf")).unwrap();
    let sources =
        ["m2", "m3", "m1"].map(|m| Store::open(d.join(format!("models/{m}.gguf"))).unwrap());
    for ty in ["F16", "F32"] {
        let out = Store::open(d.join(format!("out-moe/moe-{ty}.gguf"))).unwrap();
        let md = &out.metadata;
        assert_eq!(md.get_u64("llama.expert_count"), Some(3));
        assert_eq!(md.get_u64("llama.expert_used_count"), Some(2));
        assert_eq!(md.get_u64("llama.block_count"), Some(2));
        assert!(
            matches!(md.get("smelt.recipe"), Some(Value::String(r)) if r.contains("cheap_embed"))
        );
        // Hashed beside the writing: the digest of the input file itself.
        let digest = {
            use sha2::{Digest, Sha256};
            let d = Sha256::digest(std::fs::read(d.join("models/m2.gguf")).unwrap());
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        assert_eq!(md.get_str("smelt.input.1.file"), Some("models/m2.gguf"));
        assert_eq!(md.get_str("smelt.input.1.sha256"), Some(digest.as_str()));
        // No dense MLP is left; everything else is the base's, unchanged.
        for t in &out.tensors {
            assert!(!t.name.ends_with("ffn_up.weight"), "{}", t.name);
        }
        for (i, t) in base.tensors.iter().enumerate() {
            if t.name.contains("ffn_gate.")
                || t.name.contains("ffn_up.")
                || t.name.contains("ffn_down.")
            {
                continue;
            }
            let (o, oi) = tensor(&out, &t.name);
            assert_eq!(o.shape, t.shape);
            if ty == "F16" || t.ty == GgmlType::F32 {
                assert_eq!(out.raw(oi), base.raw(i), "{}", t.name);
            }
        }
        // Each expert's slice of the stacked tensors is its source's MLP, byte for byte at
        // F16 and value for value at F32.
        for l in 0..2 {
            for (dense, stacked) in [
                ("ffn_gate", "ffn_gate_exps"),
                ("ffn_up", "ffn_up_exps"),
                ("ffn_down", "ffn_down_exps"),
            ] {
                let (o, oi) = tensor(&out, &format!("blk.{l}.{stacked}.weight"));
                let (src_t, _) = tensor(&base, &format!("blk.{l}.{dense}.weight"));
                let mut shape = src_t.shape.clone();
                shape.push(3);
                assert_eq!(o.shape, shape);
                let all = out.read_f32(oi).unwrap();
                let bytes = out.raw(oi).unwrap();
                let part = bytes.len() / 3;
                let n = all.len() / 3;
                for (e, s) in sources.iter().enumerate() {
                    let (_, si) = tensor(s, &format!("blk.{l}.{dense}.weight"));
                    if ty == "F16" {
                        assert_eq!(
                            &bytes[e * part..(e + 1) * part],
                            s.raw(si).unwrap(),
                            "{stacked} expert {e}"
                        );
                    }
                    assert_eq!(
                        all[e * n..(e + 1) * n],
                        s.read_f32(si).unwrap()[..],
                        "{stacked} expert {e}"
                    );
                }
            }
        }
        // Router rows: each expert's prompts' embedding direction (minus the negative
        // prompts'), the same in every layer.
        let code = cheap_embed(
            &base,
            &["write a function in rust", "fix this compiler error"],
        );
        let sea = cheap_embed(&base, &["a poem about the sea"]);
        let neg = cheap_embed(&base, &["write a function"]);
        let poem: Vec<f64> = unit(&sea.iter().zip(&neg).map(|(a, b)| a - b).collect::<Vec<_>>());
        let sums = cheap_embed(&base, &["what is 12 times 7"]);
        for l in 0..2 {
            let r = router(&out, l);
            assert_close(&r[0], &code, "code row");
            assert_close(&r[1], &poem, "poem row");
            assert_close(&r[2], &sums, "sums row");
        }
    }
}

#[test]
fn hidden_routers_start_from_the_last_token_and_average_for_hidden_avg() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    let base = Store::open(d.join("models/m1.gguf")).unwrap();
    let (_, embd) = tensor(&base, "token_embd.weight");
    let table = base.read_f32(embd).unwrap();
    let bos = base
        .metadata
        .get_u64("tokenizer.ggml.bos_token_id")
        .unwrap() as u32;
    let ids = |p: &str| {
        let mut v = vec![bos];
        v.extend(smelt::tokenizer::encode::tokenize(&base.metadata, p, false).unwrap());
        v
    };
    let row = |id: u32| {
        table[id as usize * HIDDEN..(id as usize + 1) * HIDDEN]
            .iter()
            .map(|&x| x as f64)
            .collect::<Vec<_>>()
    };
    // The residual stream entering layer 0 is the embedding: `hidden` takes each prompt's last
    // token, `hidden_avg` the mean over its tokens; both then average over the prompts.
    let state = |prompts: &[&str], avg: bool| -> Vec<f64> {
        let mut s = vec![0f64; HIDDEN];
        for p in prompts {
            let t = ids(p);
            let rows: Vec<Vec<f64>> = if avg {
                t.iter().map(|&i| row(i)).collect()
            } else {
                vec![row(*t.last().unwrap())]
            };
            for r in &rows {
                for (a, b) in s.iter_mut().zip(r) {
                    *a += b / rows.len() as f64 / prompts.len() as f64;
                }
            }
        }
        s
    };
    for (mode, avg) in [("hidden", false), ("hidden_avg", true)] {
        merge(d, mode, &config(mode), "F32").unwrap();
        let out = Store::open(d.join(format!("out-{mode}/{mode}-F32.gguf"))).unwrap();
        let r0 = router(&out, 0);
        let code = unit(&state(
            &["write a function in rust", "fix this compiler error"],
            avg,
        ));
        let poem = unit(
            &state(&["a poem about the sea"], avg)
                .iter()
                .zip(state(&["write a function"], avg))
                .map(|(a, b)| a - b)
                .collect::<Vec<_>>(),
        );
        let sums = unit(&state(&["what is 12 times 7"], avg));
        assert_close(&r0[0], &code, &format!("{mode} layer 0 code row"));
        assert_close(&r0[1], &poem, &format!("{mode} layer 0 poem row"));
        assert_close(&r0[2], &sums, &format!("{mode} layer 0 sums row"));
        // The forward pass gives the same routers on any thread count.
        merge_threads(d, &format!("{mode}-t1"), &config(mode), "F32", Some("1")).unwrap();
        assert!(
            std::fs::read(d.join(format!("out-{mode}-t1/{mode}-t1-F32.gguf"))).unwrap()
                == std::fs::read(d.join(format!("out-{mode}/{mode}-F32.gguf"))).unwrap(),
            "{mode}: 1 thread and the default differ"
        );
        // Deeper layers see the base model's attention and MLP at work: other unit rows.
        let r1 = router(&out, 1);
        for (e, row) in r1.iter().enumerate() {
            let norm: f64 = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-5,
                "{mode} layer 1 row {e} norm {norm}"
            );
            assert_ne!(row, &r0[e], "{mode}: layer 1 row {e} is layer 0's");
        }
    }
}

#[test]
fn random_gates_follow_the_seed_and_every_thread_count_writes_the_same_bytes() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    let text = config("random");
    merge_threads(d, "one", &text, "F16,Q8_0", Some("1")).unwrap();
    merge_threads(d, "four", &text, "F16,Q8_0", Some("4")).unwrap();
    for ty in ["F16", "Q8_0"] {
        let a = std::fs::read(d.join(format!("out-one/one-{ty}.gguf"))).unwrap();
        let b = std::fs::read(d.join(format!("out-four/four-{ty}.gguf"))).unwrap();
        assert!(a == b, "{ty}: 1 and 4 threads differ");
    }
    let q8 = Store::open(d.join("out-one/one-Q8_0.gguf")).unwrap();
    assert_eq!(tensor(&q8, "blk.0.ffn_up_exps.weight").0.ty, GgmlType::Q8_0);
    assert_eq!(tensor(&q8, "blk.0.ffn_gate_inp.weight").0.ty, GgmlType::F32);
    // Standard normal values (torch.randn's distribution), not normalised.
    let out = Store::open(d.join("out-one/one-F16.gguf")).unwrap();
    let all: Vec<f32> = (0..2).flat_map(|l| router(&out, l).concat()).collect();
    let n = all.len() as f64;
    let mean = all.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = all.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(
        mean.abs() < 0.15 && (var - 1.0).abs() < 0.2,
        "mean {mean}, variance {var} of {n} values"
    );
    // `merge --from` replays the config embedded in the output to the same bytes (the
    // inputs' hashes checked).
    common::smelt(
        d,
        [
            "merge",
            "--from",
            "out-one/one-F16.gguf",
            "-o",
            "replay",
            "--types",
            "F16",
        ],
    )
    .unwrap();
    assert!(
        std::fs::read(d.join("replay/moe-F16.gguf")).unwrap()
            == std::fs::read(d.join("out-one/one-F16.gguf")).unwrap(),
        "the replay differs"
    );
    // Another seed, other gates; the same seed, the same file.
    merge(d, "seeded", &format!("seed: 7\n{text}"), "F16").unwrap();
    let seeded = Store::open(d.join("out-seeded/seeded-F16.gguf")).unwrap();
    assert_ne!(router(&seeded, 0), router(&out, 0));
}

#[test]
fn configs_that_cannot_make_a_mixture_are_one_error_naming_the_line() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    let good = config("cheap_embed");
    // (config, line, words the message must hold)
    let cases: Vec<(String, u64, Vec<&str>)> = vec![
        (good.replacen("models/m3.gguf", "models/narrow.gguf", 1), 10, vec!["hidden width", "32", "64"]),
        (good.replacen("models/m3.gguf", "models/deep.gguf", 1), 10, vec!["layer count", "3", "2"]),
        (good.replacen("models/m3.gguf", "models/absent.gguf", 1), 10, vec!["absent.gguf", "no such file"]),
        (
            good.replacen("    positive_prompts:\n      - \"a poem about the sea\"\n", "    positive_prompts: []\n", 1),
            10,
            vec!["expert 1", "positive_prompts", "cheap_embed"],
        ),
        (
            config("hidden").replacen("    positive_prompts:\n      - \"what is 12 times 7\"\n", "", 1),
            15,
            vec!["expert 2", "positive_prompts", "hidden"],
        ),
        (config("cheap_embd"), 2, vec!["gate_mode", "cheap_embd", "cheap_embed"]),
        (good.replace("experts_per_token: 2", "experts_per_token: 4"), 4, vec!["experts_per_token", "4", "3"]),
        (
            format!("{good}shared_experts:\n  - source_model: models/m2.gguf\n    positive_prompts: [\"x\"]\n  - source_model: models/m3.gguf\n    positive_prompts: [\"y\"]\n"),
            18,
            vec!["2 shared experts", "exactly one", "DeepSeek"],
        ),
        (
            format!("{good}shared_experts:\n  - source_model: models/m2.gguf\n"),
            19,
            vec!["shared expert has no positive_prompts", "DeepSeek", "Qwen MoE"],
        ),
        (
            format!("architecture: mixtral\n{good}shared_experts:\n  - source_model: models/m2.gguf\n    positive_prompts: [\"x\"]\n"),
            19,
            vec!["shared_experts", "Mixtral", "no shared expert"],
        ),
        (format!("architecture: qwen\n{good}"), 1, vec!["Qwen MoE", "exactly one shared expert"]),
        (format!("architecture: deepseek\n{good}"), 1, vec!["architecture", "deepseek", "qwen"]),
        (good.replace("base_model: models/m1.gguf", "base_model: models/none.gguf"), 1, vec!["none.gguf"]),
    ];
    for (k, (text, line, words)) in cases.iter().enumerate() {
        let name = format!("bad{k}");
        let err = merge(d, &name, text, "F16").unwrap_err();
        assert!(
            err.contains(&format!("{name}.yaml:{line}:")),
            "case {k}: {err}"
        );
        for w in words {
            assert!(err.contains(w), "case {k}: `{w}` missing: {err}");
        }
        assert_eq!(err.matches("error").count(), 1, "one error: {err}");
        let out = d.join(format!("out-{name}"));
        assert!(
            !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
            "case {k} wrote something"
        );
    }
}

#[test]
fn a_mixture_written_as_a_hugging_face_folder_reads_back_as_the_gguf() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    let text = config("cheap_embed");
    merge(d, "gguf", &text, "F32").unwrap();
    std::fs::write(d.join("hf.yaml"), &text).unwrap();
    common::smelt(
        d,
        [
            "merge",
            "hf.yaml",
            "-o",
            "out-hf",
            "--format",
            "safetensors",
            "--types",
            "F32",
        ],
    )
    .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out-hf/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "MixtralForCausalLM");
    assert_eq!(config["num_local_experts"], 3);
    assert_eq!(config["num_experts_per_tok"], 2);
    assert!(d.join("out-hf/smelt-recipe.yaml").exists());
    // Read back through smelt's HF reader (the converter's Mixtral rules), every tensor is
    // the GGUF's. The fixture's tiny vocabulary has no known check-text hash, so its
    // pre-tokenizer is named, as a user would with --tokenizer-pre.
    let gguf = Store::open(d.join("out-gguf/gguf-F32.gguf")).unwrap();
    let pre = gguf
        .metadata
        .get_str("tokenizer.ggml.pre")
        .map(String::from);
    let hf = Store::open_with(
        d.join("out-hf"),
        &smelt::tokenizer::TokenizerOptions { pre },
    )
    .unwrap();
    assert_eq!(hf.metadata.get_u64("llama.expert_count"), Some(3));
    assert_eq!(hf.tensors.len(), gguf.tensors.len());
    for (i, t) in gguf.tensors.iter().enumerate() {
        let (h, hi) = tensor(&hf, &t.name);
        assert_eq!(h.shape, t.shape, "{}", t.name);
        assert_eq!(
            hf.read_f32(hi).unwrap(),
            gguf.read_f32(i).unwrap(),
            "{}",
            t.name
        );
    }
}

#[test]
fn residual_scale_and_noise_scale_change_only_their_expert() {
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    let text = config("random")
        .replace(
            "  - source_model: models/m3.gguf\n",
            "  - source_model: models/m3.gguf\n    residual_scale: 0.5\n",
        )
        .replace(
            "  - source_model: models/m1.gguf\n",
            "  - source_model: models/m1.gguf\n    noise_scale: 0.01\n",
        );
    merge_threads(d, "scaled", &text, "F32", Some("1")).unwrap();
    merge_threads(d, "again", &text, "F32", Some("3")).unwrap();
    assert!(
        std::fs::read(d.join("out-scaled/scaled-F32.gguf")).unwrap()
            == std::fs::read(d.join("out-again/again-F32.gguf")).unwrap(),
        "noise differs between thread counts"
    );
    let out = Store::open(d.join("out-scaled/scaled-F32.gguf")).unwrap();
    let sources =
        ["m2", "m3", "m1"].map(|m| Store::open(d.join(format!("models/{m}.gguf"))).unwrap());
    for (dense, stacked) in [("ffn_up", "ffn_up_exps"), ("ffn_down", "ffn_down_exps")] {
        let (_, oi) = tensor(&out, &format!("blk.1.{stacked}.weight"));
        let all = out.read_f32(oi).unwrap();
        let n = all.len() / 3;
        let src: Vec<Vec<f32>> = sources
            .iter()
            .map(|s| {
                s.read_f32(tensor(s, &format!("blk.1.{dense}.weight")).1)
                    .unwrap()
            })
            .collect();
        assert_eq!(all[..n], src[0][..], "expert 0 is untouched");
        // residual_scale multiplies the expert's down_proj only.
        let want: Vec<f32> = src[1]
            .iter()
            .map(|v| if dense == "ffn_down" { v * 0.5 } else { *v })
            .collect();
        assert_eq!(all[n..2 * n], want[..], "expert 1 {dense}");
        // noise_scale adds Gaussian noise of that standard deviation.
        let diff: Vec<f64> = all[2 * n..]
            .iter()
            .zip(&src[2])
            .map(|(a, b)| (a - b) as f64)
            .collect();
        let std = (diff.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt();
        assert!(
            (std - 0.01).abs() < 0.001,
            "expert 2 {dense}: noise std {std}"
        );
    }
}

#[test]
fn a_shared_expert_with_prompts_makes_a_qwen_moe_mixture() {
    // mergekit-moe's Qwen MoE output (a gated shared expert beside the routed ones), written
    // as llama.cpp's qwen2moe: the shared expert's MLP byte for byte, its gate the direction
    // of its prompts, Llama's q/k rows back in Hugging Face order for Qwen's RoPE, the base's
    // hyper-parameters under the qwen2moe prefix.
    let dir = common::scratch();
    let d = dir.path();
    models(d);
    let text = format!(
        "{}shared_experts:\n  - source_model: models/m3.gguf\n    positive_prompts: [\"talk about anything\"]\n",
        config("cheap_embed")
    );
    merge(d, "qwen", &text, "F16").unwrap();
    let out = Store::open(d.join("out-qwen/qwen-F16.gguf")).unwrap();
    let base = Store::open(d.join("models/m1.gguf")).unwrap();
    let shared = Store::open(d.join("models/m3.gguf")).unwrap();
    let md = &out.metadata;
    assert_eq!(md.get_str("general.architecture"), Some("qwen2moe"));
    assert_eq!(md.get_u64("qwen2moe.expert_count"), Some(3));
    assert_eq!(md.get_u64("qwen2moe.expert_used_count"), Some(2));
    assert_eq!(md.get_u64("qwen2moe.block_count"), Some(2));
    let ff = base.metadata.get_u64("llama.feed_forward_length");
    assert!(ff.is_some());
    assert_eq!(md.get_u64("qwen2moe.expert_feed_forward_length"), ff);
    assert_eq!(md.get_u64("qwen2moe.expert_shared_feed_forward_length"), ff);
    assert!(md.iter().all(|(k, _)| !k.starts_with("llama.")));
    assert!(
        out.find("output.weight").is_some(),
        "llama.cpp's qwen2moe needs it"
    );
    let n_head = base.metadata.get_u64("llama.attention.head_count").unwrap() as usize;
    let n_head_kv = base
        .metadata
        .get_u64("llama.attention.head_count_kv")
        .unwrap() as usize;
    let gate = cheap_embed(&base, &["talk about anything"]);
    for l in 0..2 {
        for dense in ["ffn_gate", "ffn_up", "ffn_down"] {
            let (_, oi) = tensor(&out, &format!("blk.{l}.{dense}_shexp.weight"));
            let (_, si) = tensor(&shared, &format!("blk.{l}.{dense}.weight"));
            assert_eq!(out.raw(oi), shared.raw(si), "{dense}_shexp");
        }
        let (t, i) = tensor(&out, &format!("blk.{l}.ffn_gate_inp_shexp.weight"));
        assert_eq!(
            (t.ty, t.shape.clone()),
            (GgmlType::F32, vec![HIDDEN as u64])
        );
        assert_close(&out.read_f32(i).unwrap(), &gate, "shared gate");
        assert_eq!(router(&out, l).len(), 3, "the routed experts' rows only");
        // Row r of the output's q (k) is the base's GGUF row that Llama's permutation moved
        // away from Hugging Face row r.
        for (name, heads) in [("attn_q", n_head), ("attn_k", n_head_kv)] {
            let name = format!("blk.{l}.{name}.weight");
            let ((t, oi), (_, bi)) = (tensor(&out, &name), tensor(&base, &name));
            let (row_len, n_rows) = (t.shape[0] as usize, t.n_rows());
            let (o, b) = (out.read_f32(oi).unwrap(), base.read_f32(bi).unwrap());
            let order = smelt::layout::RowOrder::HeadPermute { n_head: heads };
            for r in 0..n_rows {
                let g = order.presented_row(r, n_rows);
                assert_eq!(
                    o[r * row_len..(r + 1) * row_len],
                    b[g * row_len..(g + 1) * row_len],
                    "{name} row {r}"
                );
            }
        }
    }
}
