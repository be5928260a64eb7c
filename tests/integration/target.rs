//! `quantize --target-bpw/--target-size`: the file fits the budget and nearly fills it, a lower
//! target makes a smaller file, the allocation beats the fixed mix of the same size on the
//! imatrix-weighted error (computed here from the files), the bytes do not depend on threads,
//! the measurement cache gives the same file, and bad input is one clear error each.

use crate::common::{self, scratch, smelt, tiny_model};
use smelt::quant::imatrix::Imatrix;
use smelt::store::Store;
use std::path::Path;

/// Σ over tensors, rows and columns of w_j (x_j − y_j)², x from `orig`, y from `quant`, w the
/// tensor's imatrix weights (1 without an entry), as the allocation's objective defines it.
fn weighted_error(orig: &Path, quant: &Path, im: &Imatrix) -> f64 {
    let (a, b) = (Store::open(orig).unwrap(), Store::open(quant).unwrap());
    let mut total = 0.0;
    for (i, t) in a.tensors.iter().enumerate() {
        let j = b.find(&t.name).unwrap();
        let (x, y) = (a.read_f32(i).unwrap(), b.read_f32(j).unwrap());
        let w = im.for_tensor(&t.name, t.row_len(), 1).unwrap();
        for (xr, yr) in x.chunks(t.row_len()).zip(y.chunks(t.row_len())) {
            for (k, (p, q)) in xr.iter().zip(yr).enumerate() {
                let d = (*p - *q) as f64;
                total += w.as_ref().map_or(1.0, |w| w[k] as f64) * d * d;
            }
        }
    }
    total
}

fn n_weights(path: &Path) -> u64 {
    Store::open(path)
        .unwrap()
        .tensors
        .iter()
        .map(|t| t.n_elements())
        .sum()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn target_bpw_fits_beats_the_mix_and_is_deterministic() {
    let dir = scratch();
    let d = dir.path();
    let model = tiny_model(
        d,
        "m.gguf",
        &["--hidden", "256", "--ff", "512", "--vocab", "300"],
    );
    std::fs::write(
        d.join("text.txt"),
        "The quick brown fox jumps over the lazy dog. ".repeat(60),
    )
    .unwrap();
    smelt(
        d,
        [
            "imatrix", "m.gguf", "-o", "im.gguf", "--text", "text.txt", "--ctx", "64",
        ],
    )
    .unwrap();
    smelt(
        d,
        [
            "quantize",
            "m.gguf",
            "-o",
            "mix.gguf",
            "--type",
            "Q4_K_M",
            "--imatrix",
            "im.gguf",
            "-q",
        ],
    )
    .unwrap();
    let n = n_weights(&model);
    let mix_bpw = size(&d.join("mix.gguf")) as f64 * 8.0 / n as f64;
    let target = format!("{mix_bpw:.4}");
    let run = |out: &str, target: &str, threads: &str, cache: &str| {
        smelt(
            d,
            [
                "quantize",
                "m.gguf",
                "-o",
                out,
                "--target-bpw",
                target,
                "--imatrix",
                "im.gguf",
                "--measurement",
                cache,
                "--threads",
                threads,
            ],
        )
    };
    let err = run("a.gguf", &target, "1", "m1.json").unwrap();
    assert!(err.contains("wrote measurement"), "{err}");
    let a = d.join("a.gguf");
    let a_bpw = size(&a) as f64 * 8.0 / n as f64;
    let t: f64 = target.parse().unwrap();
    assert!(a_bpw <= t, "{a_bpw} bpw over the {t} target");
    assert!(
        a_bpw > t - 0.05,
        "{a_bpw} bpw leaves too much of the {t} target unused"
    );

    let im = Imatrix::load(d.join("im.gguf")).unwrap();
    let (e_mix, e_a) = (
        weighted_error(&model, &d.join("mix.gguf"), &im),
        weighted_error(&model, &a, &im),
    );
    assert!(e_a < e_mix, "allocation {e_a} vs Q4_K_M {e_mix}");

    // Two threads, measured again: the same measurement and the same bytes.
    run("b.gguf", &target, "2", "m2.json").unwrap();
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(d.join("b.gguf")).unwrap()
    );
    assert_eq!(
        std::fs::read(d.join("m1.json")).unwrap(),
        std::fs::read(d.join("m2.json")).unwrap()
    );

    // The cache: no new measurement, the same file.
    let err = run("c.gguf", &target, "2", "m1.json").unwrap();
    assert!(!err.contains("wrote measurement"), "{err}");
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(d.join("c.gguf")).unwrap()
    );

    // A lower target: a smaller file, still within its budget.
    let low = format!("{:.4}", t - 1.0);
    run("low.gguf", &low, "2", "m1.json").unwrap();
    let low_bpw = size(&d.join("low.gguf")) as f64 * 8.0 / n as f64;
    assert!(size(&d.join("low.gguf")) < size(&a));
    assert!(low_bpw <= t - 1.0 && low_bpw > t - 1.05, "{low_bpw}");

    // --target-size counts the whole file: never larger than asked.
    let bytes = size(&d.join("mix.gguf")).to_string();
    smelt(
        d,
        [
            "quantize",
            "m.gguf",
            "-o",
            "s.gguf",
            "--target-size",
            &bytes,
            "--imatrix",
            "im.gguf",
            "--measurement",
            "m1.json",
        ],
    )
    .unwrap();
    let s = size(&d.join("s.gguf"));
    assert!(s <= size(&d.join("mix.gguf")) && s * 100 > size(&d.join("mix.gguf")) * 99);
    let meta = Store::open(d.join("s.gguf")).unwrap().metadata;
    assert!(meta.get("smelt.target.size").is_some());
    let meta = Store::open(&a).unwrap().metadata;
    assert!(meta.get("smelt.target.bpw").is_some());

    // The cache refuses another imatrix (here: none) by name.
    let e = smelt(
        d,
        [
            "quantize",
            "m.gguf",
            "-o",
            "x.gguf",
            "--target-bpw",
            "5",
            "--measurement",
            "m1.json",
        ],
    )
    .unwrap_err();
    assert!(
        e.contains("--measurement") && e.contains("importance matrix"),
        "{e}"
    );
}

#[test]
fn target_errors() {
    let dir = scratch();
    let d = dir.path();
    tiny_model(
        d,
        "m.gguf",
        &["--hidden", "256", "--ff", "512", "--vocab", "300"],
    );
    tiny_model(
        d,
        "other.gguf",
        &["--hidden", "256", "--ff", "512", "--vocab", "320"],
    );
    let q = |extra: &[&str]| {
        let mut args = vec![
            "quantize",
            "m.gguf",
            "-o",
            "out.gguf",
            "--candidates",
            "Q4_K,Q8_0",
        ];
        args.extend_from_slice(extra);
        smelt(d, args)
    };
    let e = q(&["--target-bpw", "1", "--dry-run"]).unwrap_err();
    assert!(e.contains("smallest file") && e.contains("bpw"), "{e}");
    let e = q(&["--target-bpw", "12", "--dry-run"]).unwrap_err();
    assert!(e.contains("largest file"), "{e}");
    let e = q(&["--target-size", "5X"]).unwrap_err();
    assert!(e.contains("--target-size `5X`"), "{e}");
    let e = q(&["--target-bpw", "0"]).unwrap_err();
    assert!(e.contains("--target-bpw"), "{e}");
    let e = q(&["--target-bpw", "5", "--target-size", "1M"]).unwrap_err();
    assert!(e.contains("cannot be used with"), "{e}");
    let e = q(&["--target-bpw", "5", "--type", "Q4_K_M"]).unwrap_err();
    assert!(e.contains("cannot be used with"), "{e}");
    let e = q(&["--type", "Q4_K_M"]).unwrap_err();
    assert!(e.contains("go with a target"), "{e}");
    let e = smelt(
        d,
        [
            "quantize",
            "m.gguf",
            "-o",
            "o.gguf",
            "--target-bpw",
            "5",
            "--candidates",
            "IQ2_XXS",
        ],
    )
    .unwrap_err();
    assert!(e.contains("needs an importance matrix"), "{e}");
    // A measurement of another model is refused by name.
    q(&["--target-bpw", "6", "--dry-run", "--measurement", "m.json"]).unwrap();
    let e = smelt(
        d,
        [
            "quantize",
            "other.gguf",
            "-o",
            "o.gguf",
            "--target-bpw",
            "6",
            "--candidates",
            "Q4_K,Q8_0",
            "--measurement",
            "m.json",
        ],
    )
    .unwrap_err();
    assert!(e.contains("m.gguf") && e.contains("other.gguf"), "{e}");
    assert!(!d.join("out.gguf").exists() && !d.join("o.gguf").exists());
}

/// `--types Q4_K_M,5bpw,4bpw`: mixes and targets in one run, each target the same bytes as its
/// own `--target-bpw` run, measured once for all of them; a target named twice is refused.
#[test]
fn targets_in_a_type_matrix() {
    let dir = scratch();
    let d = dir.path();
    tiny_model(
        d,
        "m.gguf",
        &["--hidden", "256", "--ff", "512", "--vocab", "300"],
    );
    let err = smelt(
        d,
        [
            "quantize",
            "m.gguf",
            "-o",
            "out",
            "--types",
            "Q4_K_M,5bpw,4bpw",
            "--measurement",
            "m.json",
            "--threads",
            "2",
        ],
    )
    .unwrap();
    assert_eq!(err.matches("wrote measurement").count(), 1, "{err}");
    for (spec, alone) in [("5bpw", "5"), ("4bpw", "4")] {
        smelt(
            d,
            [
                "quantize",
                "m.gguf",
                "-o",
                &format!("{alone}.gguf"),
                "--target-bpw",
                alone,
                "--measurement",
                "m.json",
            ],
        )
        .unwrap();
        let matrix = std::fs::read(d.join(format!("out/m-{spec}.gguf"))).unwrap();
        assert!(
            matrix == std::fs::read(d.join(format!("{alone}.gguf"))).unwrap(),
            "{spec}"
        );
    }
    smelt(
        d,
        ["quantize", "m.gguf", "-o", "q4km.gguf", "--type", "Q4_K_M"],
    )
    .unwrap();
    assert!(
        std::fs::read(d.join("out/m-Q4_K_M.gguf")).unwrap()
            == std::fs::read(d.join("q4km.gguf")).unwrap()
    );
    assert!(size(&d.join("out/m-4bpw.gguf")) < size(&d.join("out/m-5bpw.gguf")));

    let e = smelt(
        d,
        [
            "quantize",
            "m.gguf",
            "-o",
            "o2",
            "--types",
            "4.5bpw,4.50bpw",
        ],
    )
    .unwrap_err();
    assert!(e.contains("4.5bpw twice"), "{e}");
    let e = smelt(
        d,
        ["quantize", "m.gguf", "-o", "o3", "--types", "Q8_0,xbpw"],
    )
    .unwrap_err();
    assert!(e.contains("--types `xbpw`"), "{e}");
    assert!(!d.join("o2").exists() && !d.join("o3").exists());
}

/// `--sensitivity`: every tensor with a choice gets a finite positive factor, measured once and
/// cached with the measurement; the same bytes on any thread count; a cache holding factors
/// gives the plain allocation when --sensitivity is not asked for; a factor changes the choice
/// (the attention value projection, which writes into the residual stream directly, weighs
/// more per unit of error than the query projection, whose error only moves the softmax).
#[test]
fn sensitivity_weights_the_errors_by_measured_kld() {
    let dir = scratch();
    let d = dir.path();
    tiny_model(
        d,
        "m.gguf",
        &["--hidden", "256", "--ff", "512", "--vocab", "300"],
    );
    std::fs::write(
        d.join("text.txt"),
        "The quick brown fox jumps over the lazy dog. ".repeat(80),
    )
    .unwrap();
    let run = |out: &str, threads: &str, cache: &str, sensitivity: bool| {
        let mut args = vec![
            "quantize",
            "m.gguf",
            "-o",
            out,
            "--target-bpw",
            "4.5",
            "--measurement",
            cache,
            "--threads",
            threads,
        ];
        if sensitivity {
            args.extend([
                "--sensitivity",
                "--text",
                "text.txt",
                "--sensitivity-ctx",
                "64",
            ]);
        }
        smelt(d, args)
    };
    let err = run("s1.gguf", "1", "m1.json", true).unwrap();
    assert!(err.contains("wrote measurement"), "{err}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("m1.json")).unwrap()).unwrap();
    let factors = m["sensitivity"]["factors"].as_array().unwrap();
    let measured = m["tensors"].as_array().unwrap();
    assert_eq!(factors.len(), measured.len());
    let factor = |name: &str| {
        factors
            .iter()
            .find(|f| f[0] == name)
            .and_then(|f| f[1].as_f64())
            .unwrap()
    };
    for f in factors {
        let v = f[1].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{f}");
    }
    assert!(factor("blk.0.attn_v.weight") > factor("blk.0.attn_q.weight"));

    // Two threads, measured again: the same factors and bytes. The cache: nothing measured.
    run("s2.gguf", "2", "m2.json", true).unwrap();
    assert!(std::fs::read(d.join("s1.gguf")).unwrap() == std::fs::read(d.join("s2.gguf")).unwrap());
    assert_eq!(
        std::fs::read(d.join("m1.json")).unwrap(),
        std::fs::read(d.join("m2.json")).unwrap()
    );
    let err = run("s3.gguf", "2", "m1.json", true).unwrap();
    assert!(!err.contains("wrote measurement"), "{err}");
    assert!(std::fs::read(d.join("s1.gguf")).unwrap() == std::fs::read(d.join("s3.gguf")).unwrap());

    // Without --sensitivity the cached factors are not used: the plain allocation.
    run("p1.gguf", "2", "m1.json", false).unwrap();
    run("p2.gguf", "2", "plain.json", false).unwrap();
    let plain = std::fs::read(d.join("p2.gguf")).unwrap();
    assert!(std::fs::read(d.join("p1.gguf")).unwrap() == plain);
    assert!(std::fs::read(d.join("s1.gguf")).unwrap() != plain);

    let e = smelt(
        d,
        [
            "quantize",
            "m.gguf",
            "-o",
            "x.gguf",
            "--type",
            "Q4_K_M",
            "--sensitivity",
        ],
    )
    .unwrap_err();
    assert!(e.contains("--sensitivity go with a target"), "{e}");
    assert!(!d.join("x.gguf").exists());
}

/// Targets in `merge` and `release`: the same planner as `quantize`. A merge's target output
/// is the file `quantize --target-bpw` makes from the merge written as F32 (the printed
/// llama-quantize command names that file; tests/python/test_target.py runs it), the
/// sensitivity runs on the merge in memory, target-only flags without a target are refused, and a release
/// with a target holds it beside the mixes, measured, as `quantize` with the release's
/// imatrix makes it.
#[test]
fn targets_in_merge_and_release() {
    let dir = scratch();
    let d = dir.path();
    for (name, seed) in [("a.gguf", "1"), ("b.gguf", "2")] {
        tiny_model(
            d,
            name,
            &[
                "--hidden", "256", "--ff", "512", "--vocab", "300", "--dtype", "F32", "--seed",
                seed,
            ],
        );
    }
    std::fs::write(
        d.join("lin.yaml"),
        "merge_method: linear\nmodels:\n  - model: a.gguf\n    parameters: {weight: 0.6}\n  - model: b.gguf\n    parameters: {weight: 0.4}\n",
    )
    .unwrap();
    smelt(
        d,
        [
            "merge",
            "lin.yaml",
            "-o",
            "out",
            "--types",
            "F32,Q8_0,4.9bpw",
            "-q",
        ],
    )
    .unwrap();
    smelt(
        d,
        [
            "quantize",
            "out/lin-F32.gguf",
            "-o",
            "requant.gguf",
            "--target-bpw",
            "4.9",
            "-q",
        ],
    )
    .unwrap();
    let merged = std::fs::read(d.join("out/lin-4.9bpw.gguf")).unwrap();
    // The merge's own provenance keys differ from a quantize run's; the tensors may not.
    let (m, q) = (
        Store::open(d.join("out/lin-4.9bpw.gguf")).unwrap(),
        Store::open(d.join("requant.gguf")).unwrap(),
    );
    assert_eq!(m.tensors.len(), q.tensors.len());
    for (i, t) in m.tensors.iter().enumerate() {
        let j = q.find(&t.name).unwrap();
        assert_eq!(t.ty, q.tensors[j].ty, "{}", t.name);
        assert!(m.raw(i).unwrap() == q.raw(j).unwrap(), "{}", t.name);
    }
    assert!(merged.len() as u64 <= n_weights(&d.join("out/lin-F32.gguf")) * 49 / 80);
    // Sensitivity runs the merge through the forward pass as `smelt eval RECIPE` does.
    smelt(
        d,
        [
            "merge",
            "lin.yaml",
            "-o",
            "sens",
            "--types",
            "4.9bpw",
            "--sensitivity",
            "--sensitivity-ctx",
            "32",
            "--sensitivity-chunks",
            "1",
            "-q",
        ],
    )
    .unwrap();
    assert!(d.join("sens/lin-4.9bpw.gguf").exists());
    let e = smelt(
        d,
        [
            "merge",
            "lin.yaml",
            "-o",
            "o2",
            "--types",
            "Q8_0",
            "--sensitivity",
        ],
    )
    .unwrap_err();
    assert!(e.contains("go with a target"), "{e}");
    assert!(!d.join("o2").exists());

    common::word_text(d, "calib.txt", 0);
    common::word_text(d, "eval.txt", 5);
    smelt(
        d,
        [
            "release",
            "a.gguf",
            "-o",
            "rel",
            "--types",
            "Q8_0,4.6bpw",
            "--text",
            "calib.txt",
            "--eval-text",
            "eval.txt",
            "--ctx",
            "64",
            "--imatrix-chunks",
            "2",
            "--eval-chunks",
            "2",
            "-q",
        ],
    )
    .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("rel/release.json")).unwrap()).unwrap();
    let types: Vec<&str> = manifest["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Q8_0", "4.6bpw"]);
    let target = &manifest["types"][1];
    assert!(target["bits_per_weight"].as_f64().unwrap() <= 4.6);
    assert!(target["quality"]["kld_mean"].as_f64().unwrap().is_finite());
    smelt(
        &d.join("rel"),
        [
            "quantize",
            "../a.gguf",
            "-o",
            "../alone.gguf",
            "--target-bpw",
            "4.6",
            "--imatrix",
            "imatrix.gguf",
            "-q",
        ],
    )
    .unwrap();
    let (r, q) = (
        Store::open(d.join("rel/a-4.6bpw.gguf")).unwrap(),
        Store::open(d.join("alone.gguf")).unwrap(),
    );
    for (i, t) in r.tensors.iter().enumerate() {
        let j = q.find(&t.name).unwrap();
        assert_eq!(t.ty, q.tensors[j].ty, "{}", t.name);
        assert!(r.raw(i).unwrap() == q.raw(j).unwrap(), "{}", t.name);
    }
}
