//! Sharded runs (`--shards N`, `--shard K/N`): N processes, each writing only its split files,
//! together byte for byte the single-process run's files; the plan's hash in every file;
//! `release --finalize` over the finished folder, refusing mixed plans and incomplete sets.
//! (tests/python/test_shard.py checks the sets against llama-gguf-split --merge.)

use crate::common::{files, scratch, smelt, tiny_model, Files, Smelt};
use smelt::gguf::GgufFile;
use std::path::Path;

const TYPES: &str = "F16,Q8_0,Q4_K_M";

/// `ARGS -o whole --shards N` in `dir` (one process), then `ARGS -o sharded --shard K/N` for
/// each K (N processes): the files of `whole` and of `sharded`, by name.
fn whole_and_sharded(dir: &Path, args: &[&str], n: usize) -> (Files, Files) {
    smelt(
        dir,
        [args, &["-o", "whole", "--shards", &n.to_string()]].concat(),
    )
    .unwrap();
    for k in 0..n {
        let shard = format!("{k}/{n}");
        smelt(dir, [args, &["-o", "sharded", "--shard", &shard]].concat()).unwrap();
    }
    (files(&dir.join("whole")), files(&dir.join("sharded")))
}

/// `quantize tiny.gguf -o OUT --types TYPES EXTRA...` in `dir`.
fn quantize(dir: &Path, out: &str, extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["quantize", "tiny.gguf", "-o", out, "--types", TYPES];
    args.extend_from_slice(extra);
    smelt(dir, &args)
}

#[test]
fn shards_write_the_single_process_files_byte_for_byte() {
    let d = scratch();
    tiny_model(d.path(), "tiny.gguf", &["--hidden", "256", "--ff", "512"]);
    for n in 1..=3usize {
        let whole = format!("whole{n}");
        quantize(d.path(), &whole, &["--shards", &n.to_string()]).unwrap();
        let single = files(&d.path().join(&whole));
        // n files per type, each with the plan's hash, one hash for all.
        assert_eq!(single.len(), 3 * n, "{:?}", single.keys());
        let hashes: Vec<String> = single
            .keys()
            .map(|f| {
                let g = GgufFile::open(d.path().join(&whole).join(f)).unwrap();
                g.metadata.get_str("smelt.shard_plan").unwrap().to_string()
            })
            .collect();
        assert!(hashes.iter().all(|h| h == &hashes[0] && h.len() == 64));
        let out = format!("sharded{n}");
        for k in 0..n {
            let log = quantize(d.path(), &out, &["--shard", &format!("{k}/{n}")]).unwrap();
            assert!(
                log.contains(&format!("shard {k}/{n}: 3 of {} files", 3 * n)),
                "{log}"
            );
            // Shard k writes file k+1 of every type, nothing else.
            let now = files(&d.path().join(&out));
            assert_eq!(now.len(), 3 * (k + 1), "{:?}", now.keys());
        }
        let sharded = files(&d.path().join(&out));
        assert_eq!(
            single.keys().collect::<Vec<_>>(),
            sharded.keys().collect::<Vec<_>>()
        );
        for (name, bytes) in &single {
            assert!(
                sharded[name] == *bytes,
                "{name} differs from the single-process run"
            );
        }
    }
    // Every tensor once, in the unsharded order: the set reads back as the unsplit file.
    quantize(d.path(), "plain", &[]).unwrap();
    for ty in TYPES.split(',') {
        let back = smelt::store::Store::open(
            d.path()
                .join(format!("sharded3/tiny-{ty}-00001-of-00003.gguf")),
        )
        .unwrap();
        let plain =
            smelt::store::Store::open(d.path().join(format!("plain/tiny-{ty}.gguf"))).unwrap();
        let names = |s: &smelt::store::Store| -> Vec<String> {
            s.tensors.iter().map(|t| t.name.clone()).collect()
        };
        assert_eq!(names(&back), names(&plain));
        for i in 0..plain.tensors.len() {
            assert_eq!(back.raw(i), plain.raw(i), "{ty} {}", plain.tensors[i].name);
        }
    }
}

#[test]
fn a_size_limited_split_is_sharded_by_its_files_first_tensors() {
    let d = scratch();
    tiny_model(d.path(), "tiny.gguf", &["--hidden", "256", "--ff", "512"]);
    let limit = ["--split-max-tensors", "4"];
    // The single-process run of a sharded layout is its 0/1 shard (it carries the plan).
    quantize(
        d.path(),
        "single",
        &[&limit[..], &["--shard", "0/1"]].concat(),
    )
    .unwrap();
    for k in 0..3 {
        quantize(
            d.path(),
            "sharded",
            &[&limit[..], &["--shard", &format!("{k}/3")]].concat(),
        )
        .unwrap();
    }
    let (a, b) = (
        files(&d.path().join("single")),
        files(&d.path().join("sharded")),
    );
    assert!(a.len() > 6, "{:?}", a.keys());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    // Same files except the plan's hash: the shard count is part of the plan.
    let plan = |bytes: &[u8], name: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        GgufFile::open(&p)
            .unwrap()
            .metadata
            .get_str("smelt.shard_plan")
            .unwrap()
            .to_string()
    };
    let (ha, hb) = (
        plan(&a.values().next().unwrap()[..], "a.gguf"),
        plan(&b.values().next().unwrap()[..], "b.gguf"),
    );
    assert_ne!(ha, hb);
    // Without --shard, a size-limited split keeps llama-gguf-split's layout: no plan key.
    quantize(d.path(), "plain", &limit).unwrap();
    for name in files(&d.path().join("plain")).keys() {
        let g = GgufFile::open(d.path().join("plain").join(name)).unwrap();
        assert!(g.metadata.get("smelt.shard_plan").is_none(), "{name}");
    }
}

#[test]
fn a_finished_shard_rerun_is_a_no_op() {
    let d = scratch();
    tiny_model(d.path(), "tiny.gguf", &[]);
    quantize(d.path(), "out", &["--shard", "1/2"]).unwrap();
    let first = d.path().join("out/tiny-Q8_0-00002-of-00002.gguf");
    let before = std::fs::metadata(&first).unwrap().modified().unwrap();
    let log = quantize(d.path(), "out", &["--shard", "1/2"]).unwrap();
    assert!(
        log.contains("3 already written by an earlier run, kept"),
        "{log}"
    );
    assert!(!log.contains("wrote out/"), "{log}");
    assert_eq!(
        std::fs::metadata(&first).unwrap().modified().unwrap(),
        before
    );
    // A damaged file (wrong size) is written again.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&first)
        .unwrap();
    f.set_len(100).unwrap();
    let log = quantize(d.path(), "out", &["--shard", "1/2"]).unwrap();
    assert!(
        log.contains("2 already written by an earlier run, kept"),
        "{log}"
    );
    assert!(
        log.contains("wrote out/tiny-Q8_0-00002-of-00002.gguf"),
        "{log}"
    );
}

#[test]
fn dry_run_json_prints_the_plan_without_reading_tensors() {
    let d = scratch();
    tiny_model(d.path(), "tiny.gguf", &[]);
    let o = Smelt::new(d.path())
        .args([
            "quantize",
            "tiny.gguf",
            "-o",
            "out",
            "--types",
            TYPES,
            "--shards",
            "3",
        ])
        .args(["--dry-run", "--json"])
        .run();
    let plan = o.ok().json();
    assert_eq!(plan["shard_count"], 3);
    assert_eq!(plan["files"].as_array().unwrap().len(), 9);
    assert_eq!(plan["shards"].as_array().unwrap().len(), 3);
    assert!(!d.path().join("out").exists());
    // The plan's hash is the one the files get.
    quantize(d.path(), "out", &["--shard", "2/3"]).unwrap();
    let g = GgufFile::open(d.path().join("out/tiny-F16-00003-of-00003.gguf")).unwrap();
    assert_eq!(
        g.metadata.get_str("smelt.shard_plan").unwrap(),
        plan["plan_hash"].as_str().unwrap()
    );
    let shard_of: Vec<u64> = plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(shard_of, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
}

#[test]
fn bad_shard_flags_are_refused_before_anything_is_written() {
    let d = scratch();
    tiny_model(d.path(), "tiny.gguf", &[]);
    for (flags, want) in [
        (vec!["--shard", "3/3"], "K must be below N"),
        (vec!["--shard", "x/3"], "not a whole number"),
        (vec!["--shard", "slurm"], "SLURM_ARRAY_TASK_ID is not set"),
        (vec!["--shard", "k8s/2"], "JOB_COMPLETION_INDEX is not set"),
        (vec!["--shards", "2", "--shard", "0/3"], "disagree"),
        (
            vec!["--shards", "500"],
            "every shard needs at least one tensor",
        ),
        (vec!["--keep-split", "--shard", "0/2"], "keep-split"),
    ] {
        let err = quantize(d.path(), "out", &flags).unwrap_err();
        assert!(err.contains(want), "{flags:?}: {err}");
        assert!(!d.path().join("out").exists(), "{flags:?}");
    }
    // The engines' variables: a Slurm array starting at 1, and a task past the count.
    let run = |vars: &[(&str, &str)]| {
        let mut c = Smelt::new(d.path()).args([
            "quantize",
            "tiny.gguf",
            "-o",
            "s.gguf",
            "--types",
            "Q8_0",
            "--shard",
            "slurm",
        ]);
        for (k, v) in vars {
            c = c.env(k, v);
        }
        c.run()
    };
    let ok = run(&[
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_COUNT", "2"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
    ]);
    assert!(ok.status.success(), "{}", ok.stderr);
    // One type to a file name: its set is s-0000K-of-00002.gguf.
    assert!(d.path().join("s-00002-of-00002.gguf").exists());
    assert!(!d.path().join("s-00001-of-00002.gguf").exists());
    let bad = run(&[
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_COUNT", "2"),
    ]);
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("K must be below N"));
}

#[test]
fn finalize_publishes_complete_sets_of_one_plan_only() {
    let d = scratch();
    tiny_model(d.path(), "tiny.gguf", &[]);
    let types = ["--types", "Q8_0,F16"];
    for k in 0..2 {
        let shard = format!("{k}/2");
        smelt(
            d.path(),
            [
                &["quantize", "tiny.gguf", "-o", "rel", "--shard", &shard][..],
                &types,
            ]
            .concat(),
        )
        .unwrap();
    }
    smelt(d.path(), ["release", "--finalize", "rel"]).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("rel/release.json")).unwrap()).unwrap();
    let parts: Vec<usize> = manifest["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["parts"].as_array().unwrap().len())
        .collect();
    assert_eq!(parts, [2, 2]);
    let report = smelt(d.path(), ["verify", "rel"]).unwrap();
    assert!(report.contains("all"), "{report}");
    assert!(d.path().join("rel/README.md").exists());

    // A missing split is named.
    std::fs::create_dir(d.path().join("missing")).unwrap();
    smelt(
        d.path(),
        [
            &["quantize", "tiny.gguf", "-o", "missing", "--shard", "0/2"][..],
            &types,
        ]
        .concat(),
    )
    .unwrap();
    let err = smelt(d.path(), ["release", "--finalize", "missing"]).unwrap_err();
    assert!(
        err.contains("tiny-F16-00002-of-00002.gguf is missing"),
        "{err}"
    );
    assert!(!d.path().join("missing/SHA256SUMS").exists());

    // Shards of different plans (here: another metadata override) are refused.
    smelt(
        d.path(),
        [
            &[
                "quantize",
                "tiny.gguf",
                "-o",
                "missing",
                "--shard",
                "1/2",
                "--override-kv",
                "general.name=str:other",
            ][..],
            &types,
        ]
        .concat(),
    )
    .unwrap();
    let err = smelt(d.path(), ["release", "--finalize", "missing"]).unwrap_err();
    assert!(err.contains("made with another plan"), "{err}");
    assert!(!d.path().join("missing/SHA256SUMS").exists());

    // A stale set of another layout beside the new one: the duplicated split is named.
    smelt(
        d.path(),
        [
            "quantize",
            "tiny.gguf",
            "-o",
            "rel",
            "--types",
            "Q8_0",
            "--shard",
            "0/3",
        ],
    )
    .unwrap();
    let err = smelt(d.path(), ["release", "--finalize", "rel"]).unwrap_err();
    assert!(err.contains("tiny-Q8_0: split 1 is there twice"), "{err}");
    // A file renamed into a set it does not belong to.
    std::fs::rename(
        d.path().join("rel/tiny-Q8_0-00001-of-00003.gguf"),
        d.path().join("rel/tiny-Q8_0-00002-of-00002.gguf.bak"),
    )
    .unwrap();
    let copy = d.path().join("rel/tiny-F16-00002-of-00002.gguf");
    std::fs::copy(d.path().join("rel/tiny-F16-00001-of-00002.gguf"), &copy).unwrap();
    let err = smelt(d.path(), ["release", "--finalize", "rel"]).unwrap_err();
    assert!(
        err.contains("its header says file 1 of 2, its name file 2 of 2"),
        "{err}"
    );
}

#[test]
fn a_merge_shards_like_a_quantization() {
    let d = scratch();
    tiny_model(d.path(), "m1.gguf", &["--seed", "1"]);
    tiny_model(d.path(), "m2.gguf", &["--seed", "2"]);
    let recipe = d.path().join("r.yaml");
    std::fs::write(
        &recipe,
        "merge_method: slerp\nbase_model: m1.gguf\nmodels:\n  - model: m1.gguf\n  - model: m2.gguf\nparameters:\n  t: 0.3\n",
    )
    .unwrap();
    let (a, b) = whole_and_sharded(d.path(), &["merge", "r.yaml", "--types", "F16,Q8_0"], 3);
    assert_eq!(a.len(), 6);
    assert!(a == b, "merge shards differ from the single-process merge");
}

#[test]
fn a_conversion_shards_like_a_quantization() {
    let d = scratch();
    tiny_model(d.path(), "hf", &[]);
    let (a, b) = whole_and_sharded(d.path(), &["convert", "hf", "--types", "F16,Q8_0"], 2);
    assert_eq!(a.len(), 4);
    assert!(
        a == b,
        "convert shards differ from the single-process conversion"
    );
}
