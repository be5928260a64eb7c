//! Outputs never destroy what the user owns, interrupted runs leave nothing behind, broken
//! values are never written, and the terminal tells the truth (the trust issue).

use smelt::gguf::GgufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, scratch, Smelt};

fn run(dir: &Path, args: &[&str]) -> Result<String, String> {
    common::smelt(dir, args)
}

fn tiny(dir: &Path, name: &str) -> PathBuf {
    common::tiny_model(dir, name, &[])
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Names in `dir` that look like smelt's temporary outputs.
fn temps_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".smelt-") || n.contains("smelt-tmp"))
        .collect()
}

#[test]
fn quantize_refuses_to_replace_its_input() {
    let d = scratch();
    let dir = d.path();
    let model = tiny(dir, "m.gguf");
    let before = sha(&model);
    // Directly, through a symlink, through a hard link.
    std::os::unix::fs::symlink(&model, dir.join("link.gguf")).unwrap();
    std::fs::hard_link(&model, dir.join("hard.gguf")).unwrap();
    for out in ["m.gguf", "link.gguf", "hard.gguf", "./m.gguf"] {
        let err = run(dir, &["quantize", "m.gguf", "-o", out, "--type", "Q8_0"]).unwrap_err();
        assert!(err.contains("is the input"), "{out}: {err}");
    }
    // Through the type-suffixed name of a matrix output.
    std::fs::create_dir(dir.join("d")).unwrap();
    std::fs::copy(&model, dir.join("d/m-Q8_0.gguf")).unwrap();
    let err = run(
        dir,
        &[
            "quantize",
            "d/m-Q8_0.gguf",
            "-o",
            "d",
            "--types",
            "Q8_0,Q4_0",
        ],
    )
    .unwrap_err();
    assert!(err.contains("is the input"), "{err}");
    assert_eq!(sha(&dir.join("d/m-Q8_0.gguf")), before);
    assert!(
        !dir.join("d/m-Q4_0.gguf").exists(),
        "refused before any work"
    );
    assert_eq!(sha(&model), before);
    assert!(temps_in(dir).is_empty() && temps_in(&dir.join("d")).is_empty());
}

#[test]
fn prune_plan_refuses_to_replace_its_input() {
    let d = scratch();
    let dir = d.path();
    run(dir, &["make-test-model", "-o", "m.gguf", "--layers", "4"]).unwrap();
    let before = sha(&dir.join("m.gguf"));
    let err = run(
        dir,
        &["prune-plan", "m.gguf", "--count", "1", "-o", "m.gguf"],
    )
    .unwrap_err();
    assert!(err.contains("is the input"), "{err}");
    assert_eq!(sha(&dir.join("m.gguf")), before);
    // A plain output still works, through a temporary file.
    run(
        dir,
        &["prune-plan", "m.gguf", "--count", "1", "-o", "p.yaml"],
    )
    .unwrap();
    assert!(std::fs::read_to_string(dir.join("p.yaml"))
        .unwrap()
        .contains("passthrough"));
}

#[test]
fn merge_refuses_an_output_name_that_is_an_input() {
    let d = scratch();
    let dir = d.path();
    std::fs::create_dir(dir.join("out")).unwrap();
    let model = tiny(&dir.join("out"), "same-F16.gguf");
    let before = sha(&model);
    std::fs::write(
        dir.join("r.yaml"),
        "merge_method: linear\nmodels:\n  - model: out/same-F16.gguf\n    parameters: {weight: 1.0}\n  - model: out/same-F16.gguf\n    parameters: {weight: 1.0}\noutput: {name: same}\n",
    )
    .unwrap();
    let err = run(dir, &["merge", "r.yaml", "-o", "out", "--types", "F16"]).unwrap_err();
    assert!(err.contains("is the input"), "{err}");
    assert_eq!(sha(&model), before);
}

#[test]
fn devices_and_fifos_are_never_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let d = scratch();
    let dir = d.path();
    tiny(dir, "m.gguf");
    // A private character device (the null device's numbers) where the test may make one:
    // never the system's /dev/null, which a broken build would replace.
    let dev = dir.join("null-device");
    let made = Command::new("mknod")
        .args([dev.to_str().unwrap(), "c", "1", "3"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let err = run(
            dir,
            &["quantize", "m.gguf", "-o", "null-device", "--type", "Q8_0"],
        )
        .unwrap_err();
        assert!(err.contains("character device"), "{err}");
        assert!(std::fs::metadata(&dev)
            .unwrap()
            .file_type()
            .is_char_device());
    } else {
        eprintln!("mknod not permitted here: the character-device case is skipped");
    }
    let fifo = dir.join("pipe.gguf");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let err = run(
        dir,
        &["quantize", "m.gguf", "-o", "pipe.gguf", "--type", "Q8_0"],
    )
    .unwrap_err();
    assert!(err.contains("FIFO"), "{err}");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_symlink_planted_at_the_old_temporary_name_is_not_followed() {
    // The temporary name used to be `.<name>.smelt-tmp-<pid>`, created without O_EXCL: a
    // symlink planted there redirected the write to any file the user could write.
    let d = scratch();
    let dir = d.path();
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let target = dir.join("out.gguf");
    let planted = dir.join(format!(".out.gguf.smelt-tmp-{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let md = smelt::gguf::Metadata::default();
    let w = GgufWriter::create(&target, &md, &[]).unwrap();
    w.finish().unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(target.exists());
}

#[test]
fn a_long_valid_output_name_works() {
    // 249 characters: the old temporary name (`.<name>.smelt-tmp-<pid>`) passed 255 bytes.
    let d = scratch();
    let dir = d.path();
    tiny(dir, "m.gguf");
    let out = format!("{}.gguf", "n".repeat(244));
    assert_eq!(out.len(), 249);
    run(dir, &["quantize", "m.gguf", "-o", &out, "--type", "Q8_0"]).unwrap();
    assert!(dir.join(&out).exists());
}

#[test]
fn stale_temporary_files_of_a_killed_run_are_removed() {
    let d = scratch();
    let dir = d.path();
    tiny(dir, "m.gguf");
    std::fs::create_dir(dir.join("out")).unwrap();
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    // What a `kill -9`ed run leaves: its pid (above Linux's pid limit, so surely dead).
    let stale = dir.join(format!("out/.smelt-4194305-{host}-Ab12Cd.tmp"));
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    let user_file = dir.join("out/.smelt-notes.txt");
    std::fs::write(&user_file, b"mine").unwrap();
    run(
        dir,
        &["quantize", "m.gguf", "-o", "out", "--types", "Q8_0,Q4_0"],
    )
    .unwrap();
    assert!(!stale.exists(), "the dead run's temporary file is removed");
    assert!(user_file.exists(), "files smelt did not name are kept");
}

/// Start a quantize slow enough to be caught mid-write; returns once a temp file exists.
fn start_slow_quantize(dir: &Path, out: &str) -> std::process::Child {
    let child = Smelt::new(dir)
        .args(["--threads", "1", "quantize", "big.gguf", "-o", out])
        .args(["--types", "Q6_K,Q5_K_M,Q4_K_M,Q3_K_M,IQ4_XS"])
        .spawn();
    let started = Instant::now();
    while temps_in(&dir.join(out)).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no temp file appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
fn every_terminating_signal_removes_the_temporary_files() {
    let d = scratch();
    let dir = d.path();
    run(
        dir,
        &[
            "make-test-model",
            "-o",
            "big.gguf",
            "--layers",
            "2",
            "--hidden",
            "1024",
            "--ff",
            "4096",
            "--heads",
            "8",
            "--kv-heads",
            "8",
            "--vocab",
            "16384",
        ],
    )
    .unwrap();
    for (sig, name) in [(15, "TERM"), (1, "HUP"), (3, "QUIT"), (2, "INT")] {
        let out = format!("out-{name}");
        std::fs::create_dir(dir.join(&out)).unwrap();
        let child = start_slow_quantize(dir, &out);
        Command::new("kill")
            .args([format!("-{name}"), child.id().to_string()])
            .status()
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(128 + sig), "SIG{name}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("unfinished outputs removed"),
            "SIG{name}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.join(&out)).unwrap().collect();
        assert!(left.is_empty(), "SIG{name} left {left:?}");
    }
}

#[test]
fn non_finite_values_are_refused_and_the_created_folder_removed() {
    let d = scratch();
    let dir = d.path();
    let model = tiny(dir, "m.gguf");
    common::rewrite(
        &model,
        &dir.join("nan.gguf"),
        |_| {},
        |name, values| {
            if name == "blk.1.ffn_down.weight" {
                values[70] = f32::NAN;
            }
        },
    );
    let err = run(
        dir,
        &[
            "quantize",
            "nan.gguf",
            "-o",
            "new/out",
            "--types",
            "Q8_0,Q4_0",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("blk.1.ffn_down.weight") && err.contains("not finite"),
        "{err}"
    );
    assert!(
        !dir.join("new").exists(),
        "the folder this run made is gone"
    );
}

/// A legacy (`.dat`) imatrix with one entry per name, every value `v`.
fn legacy_imatrix(path: &Path, entries: &[(&str, usize)], v: f32) {
    let mut b = Vec::new();
    b.extend((entries.len() as i32).to_le_bytes());
    for (name, n) in entries {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(1i32.to_le_bytes()); // calls
        b.extend((*n as i32).to_le_bytes());
        for _ in 0..*n {
            b.extend(v.to_le_bytes());
        }
    }
    b.extend(1i32.to_le_bytes()); // chunks
    b.extend(4i32.to_le_bytes());
    b.extend(b"test");
    std::fs::write(path, b).unwrap();
}

#[test]
fn an_imatrix_with_nan_is_refused() {
    let d = scratch();
    let dir = d.path();
    tiny(dir, "m.gguf");
    legacy_imatrix(
        &dir.join("nan.dat"),
        &[("blk.0.ffn_down.weight", 128)],
        f32::NAN,
    );
    let err = run(
        dir,
        &[
            "quantize",
            "m.gguf",
            "-o",
            "o.gguf",
            "--type",
            "Q4_K_M",
            "--imatrix",
            "nan.dat",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("nan.dat") && err.contains("blk.0.ffn_down.weight"),
        "{err}"
    );
    assert!(!dir.join("o.gguf").exists());
}

#[test]
fn a_huge_alignment_is_refused_before_writing() {
    let d = scratch();
    let dir = d.path();
    tiny(dir, "m.gguf");
    let err = run(
        dir,
        &[
            "quantize",
            "m.gguf",
            "-o",
            "o.gguf",
            "--type",
            "Q8_0",
            "--override-kv",
            "general.alignment=int:1073741824",
        ],
    )
    .unwrap_err();
    assert!(err.contains("general.alignment"), "{err}");
    assert!(!dir.join("o.gguf").exists() && temps_in(dir).is_empty());
}

#[test]
fn control_characters_in_names_are_escaped() {
    let d = scratch();
    let dir = d.path();
    let model = tiny(dir, "m.gguf");
    common::rewrite(
        &model,
        &dir.join("esc.gguf"),
        |_| {},
        |name, _| {
            if name == "blk.0.attn_q.weight" {
                *name = "blk.0.\x1b]0;pwned\x07\x1b[2J".into();
            }
        },
    );
    let out = Smelt::new(dir)
        .args(["inspect", "esc.gguf"])
        .run()
        .stdout_text();
    assert!(!out.contains('\x1b') && !out.contains('\x07'));
    assert!(
        out.contains("blk.0.\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"),
        "{out}"
    );
}

#[test]
fn inspect_prints_its_summary_first() {
    let d = scratch();
    let dir = d.path();
    tiny(dir, "m.gguf");
    run(
        dir,
        &["quantize", "m.gguf", "-o", "q.gguf", "--type", "Q4_K_M"],
    )
    .unwrap();
    let out = Smelt::new(dir)
        .args(["inspect", "q.gguf"])
        .run()
        .stdout_text();
    let summary = out.find("architecture: llama").expect("architecture line");
    let file_type = out.find("file type: Q4_K_M").expect("file type by name");
    let metadata = out.find("metadata (").unwrap();
    assert!(summary < metadata && file_type < metadata, "{out}");
    assert!(out.contains("bits per weight"));
}

#[test]
fn the_terminal_tells_the_truth() {
    let d = scratch();
    let dir = d.path();
    tiny(dir, "m.gguf");
    // Not a terminal: a final progress line, and each output's bits per weight.
    let err = run(
        dir,
        &["quantize", "m.gguf", "-o", "o", "--types", "Q8_0,Q4_0"],
    )
    .unwrap();
    assert!(err.contains("writing: done"), "{err}");
    assert!(err.contains("bpw"), "{err}");
    assert!(!err.contains('\x1b'), "no colour when piped: {err}");
    // -q: nothing but errors and warnings.
    let quiet = run(
        dir,
        &["-q", "quantize", "m.gguf", "-o", "q.gguf", "--type", "Q8_0"],
    )
    .unwrap();
    assert_eq!(quiet, "");
    // RUST_LOG is honoured.
    let log = Smelt::new(dir)
        .args(["quantize", "m.gguf", "-o", "l.gguf", "--type", "Q8_0"])
        .env("RUST_LOG", "info")
        .run()
        .stderr;
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "{log}");
}

#[test]
fn version_help_and_completions() {
    let d = scratch();
    let dir = d.path();
    let stdout = |args: &[&str]| {
        let o = Smelt::new(dir).args(args).run();
        assert!(o.status.success(), "{args:?}");
        o.stdout_text()
    };
    assert!(stdout(&["--version"]).contains("(commit "));
    let help = stdout(&["quantize", "--help"]);
    assert!(
        help.contains("Q4_K_M") && help.contains("4.50 bpw"),
        "{help}"
    );
    assert!(help.contains("IQ2_XXS") && help.contains("needs --imatrix"));
    let convert = stdout(&["convert", "--help"]);
    assert!(
        convert.starts_with("Convert a Hugging Face folder"),
        "{convert}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&["completions", shell]);
        assert!(script.contains("quantize") && script.contains("make-test-model"));
    }
}

#[test]
fn a_hub_snapshot_is_named_after_its_repository() {
    let d = scratch();
    let dir = d.path();
    let snap = "hub/models--SomeOrg--Tiny-Chat/snapshots/0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(dir.join(snap)).unwrap();
    run(dir, &["make-test-model", "-o", snap, "--layers", "2"]).unwrap();
    run(dir, &["convert", snap, "-o", "out", "--types", "Q8_0"]).unwrap();
    assert!(dir.join("out/Tiny-Chat-Q8_0.gguf").exists());
    run(
        dir,
        &[
            "convert", snap, "-o", "out2", "--types", "Q8_0", "--name", "Mine",
        ],
    )
    .unwrap();
    assert!(dir.join("out2/Mine-Q8_0.gguf").exists());
    let err = run(
        dir,
        &[
            "convert", snap, "-o", "out3", "--types", "Q8_0", "--name", "../x",
        ],
    )
    .unwrap_err();
    assert!(err.contains("plain file name"), "{err}");
}

#[test]
fn merge_shows_the_hashing_pass_and_each_outputs_bits_per_weight() {
    let d = scratch();
    let dir = d.path();
    tiny(dir, "a.gguf");
    std::fs::write(
        dir.join("r.yaml"),
        "merge_method: linear\nmodels:\n  - model: a.gguf\n    parameters: {weight: 1.0}\n  - model: a.gguf\n    parameters: {weight: 1.0}\n",
    )
    .unwrap();
    let err = run(dir, &["merge", "r.yaml", "-o", "out", "--types", "Q8_0"]).unwrap();
    assert!(err.contains("hashing inputs: done"), "{err}");
    assert!(
        err.contains("writing: done") && err.contains("bpw"),
        "{err}"
    );
}

#[test]
fn a_file_size_limit_is_an_error_not_a_silent_death() {
    // SIGXFSZ used to kill the process (exit 153) with its temporary file left behind.
    let d = scratch();
    let dir = d.path();
    tiny(dir, "m.gguf");
    let o = Smelt::new(dir)
        .ulimit("-f 64")
        .args(["quantize", "m.gguf", "-o", "big.gguf", "--type", "F32"])
        .run();
    let err = o.stderr;
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("big.gguf") && err.contains("too large"),
        "{err}"
    );
    assert!(!dir.join("big.gguf").exists() && temps_in(dir).is_empty());
}
