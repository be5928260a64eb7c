//! LoRA inputs (`model: BASE+ADAPTER`): the update lands on the targeted tensor only, in
//! llama.cpp's row order, and adapters that do not fit the base are refused with the recipe
//! line. (tests/python/test_lora.py checks the values against an independent numpy
//! reference, PEFT's formula with llama.cpp's q/k permutation.)

use crate::common;
use smelt::fixture::{write_safetensors, TinyLlama};
use smelt::gguf::GgmlType;
use smelt::store::Store;
use std::path::Path;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A PEFT folder with one module's A ([r, n_in]) and B ([n_out, r]) filled with `a` and `b`.
fn adapter(dir: &Path, config: &str, module: &str, a: (usize, usize), b: (usize, usize)) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    let fill = |n: usize, k: f32| {
        (0..n)
            .map(|i| k * ((i % 7) as f32 - 3.0))
            .collect::<Vec<_>>()
    };
    write_safetensors(
        &dir.join("adapter_model.safetensors"),
        &[
            (
                format!("base_model.model.{module}.lora_A.weight"),
                GgmlType::F32,
                vec![a.0, a.1],
                f32_bytes(&fill(a.0 * a.1, 0.01)),
            ),
            (
                format!("base_model.model.{module}.lora_B.weight"),
                GgmlType::F32,
                vec![b.0, b.1],
                f32_bytes(&fill(b.0 * b.1, 0.02)),
            ),
        ],
    )
    .unwrap();
}

const CONFIG: &str =
    r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["v_proj"]}"#;

fn setup(dir: &Path) {
    TinyLlama {
        n_layer: 2,
        seed: 3,
        dtype: GgmlType::F32,
        ..Default::default()
    }
    .write_gguf(&dir.join("base.gguf"))
    .unwrap();
}

fn merge(dir: &Path, model: &str) -> Result<String, String> {
    std::fs::write(
        dir.join("r.yaml"),
        format!("merge_method: passthrough\nmodels:\n  - model: {model}\n"),
    )
    .unwrap();
    common::smelt(dir, ["merge", "r.yaml", "-o", "out", "--types", "F32"])
}

#[test]
fn the_update_lands_on_the_targeted_tensor_only() {
    let dir = common::scratch();
    let d = dir.path();
    setup(d);
    // v_proj of layer 1: 64 in, 32 out (2 kv heads of 16), rank 2, scale 4 / 2.
    adapter(
        &d.join("ad"),
        CONFIG,
        "model.layers.1.self_attn.v_proj",
        (2, 64),
        (32, 2),
    );
    merge(d, "base.gguf+ad").unwrap();
    let base = Store::open(d.join("base.gguf")).unwrap();
    let out = Store::open(d.join("out/r-F32.gguf")).unwrap();
    for (i, t) in base.tensors.iter().enumerate() {
        let (want, got) = (
            base.read_f32(i).unwrap(),
            out.read_f32(out.find(&t.name).unwrap()).unwrap(),
        );
        if t.name != "blk.1.attn_v.weight" {
            assert_eq!(want, got, "{}", t.name);
            continue;
        }
        let a = |k: usize, j: usize| 0.01 * (((k * 64 + j) % 7) as f32 - 3.0);
        let b = |r: usize, k: usize| 0.02 * (((r * 2 + k) % 7) as f32 - 3.0);
        for r in 0..32 {
            for j in 0..64 {
                let delta = 2.0 * (b(r, 0) * a(0, j) + b(r, 1) * a(1, j));
                let w = want[r * 64 + j] + delta;
                assert!((got[r * 64 + j] - w).abs() < 1e-6, "row {r} col {j}");
            }
        }
    }
}

#[test]
fn adapters_that_do_not_fit_the_base_name_the_recipe_line() {
    let dir = common::scratch();
    let d = dir.path();
    setup(d);
    // (adapter folder, config, module, A shape, B shape, words of the error)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        (usize, usize),
        (usize, usize),
        &'a [&'a str],
    );
    let cases: &[Case] = &[
        (
            "beyond",
            CONFIG,
            "model.layers.7.self_attn.v_proj",
            (2, 64),
            (32, 2),
            &["model.layers.7.self_attn.v_proj.weight", "no tensor"],
        ),
        (
            "shape",
            CONFIG,
            "model.layers.0.self_attn.v_proj",
            (2, 48),
            (32, 2),
            &["do not fit", "blk.0.attn_v.weight"],
        ),
        (
            "dora",
            r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_dora": true}"#,
            "model.layers.0.self_attn.v_proj",
            (2, 64),
            (32, 2),
            &["DoRA"],
        ),
        (
            "other",
            r#"{"peft_type": "IA3"}"#,
            "model.layers.0.self_attn.v_proj",
            (2, 64),
            (32, 2),
            &["IA3", "only LORA"],
        ),
    ];
    for (name, config, module, a, b, words) in cases {
        adapter(&d.join(name), config, module, *a, *b);
        let err = merge(d, &format!("base.gguf+{name}")).unwrap_err();
        assert!(err.contains("r.yaml:3:"), "{name}: {err}");
        for w in *words {
            assert!(err.contains(w), "{name}: {w}: {err}");
        }
        assert!(!d.join("out/r-F32.gguf").exists(), "{name}");
    }
    // A pickled adapter is never loaded.
    std::fs::create_dir_all(d.join("pickled")).unwrap();
    std::fs::write(d.join("pickled/adapter_config.json"), CONFIG).unwrap();
    std::fs::write(d.join("pickled/adapter_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let err = merge(d, "base.gguf+pickled").unwrap_err();
    assert!(err.contains("r.yaml:3:") && err.contains("pickle"), "{err}");
    let err = merge(d, "base.gguf+missing").unwrap_err();
    assert!(
        err.contains("r.yaml:3:") && err.contains("LoRA adapter") && err.contains("missing"),
        "{err}"
    );
}
