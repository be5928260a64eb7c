//! A merge does what its recipe says or refuses with the recipe line: parameters in their
//! domains, misspelt names called out, named chat templates resolved, output names that stay
//! in the output folder, replays that check their inputs, and a dry run that reads nothing.

use smelt::gguf::GgufFile;
use smelt::store::Store;
use std::ffi::OsStr;
use std::path::PathBuf;

use crate::common::{self, smelt, Smelt};

/// A folder with tiny models `a.gguf`, `b.gguf`, `c.gguf` (seeds 1, 2, 3; F32).
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let e = Env {
            dir: common::scratch(),
        };
        for (name, seed) in [("a", "1"), ("b", "2"), ("c", "3")] {
            e.make_model(&format!("{name}.gguf"), seed);
        }
        e
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    /// `smelt make-test-model -o NAME --seed SEED` (a folder NAME makes an HF folder).
    fn make_model(&self, name: &str, seed: &str) {
        let args = [
            "make-test-model",
            "-o",
            name,
            "--seed",
            seed,
            "--layers",
            "2",
            "--dtype",
            "F32",
        ];
        self.run(&args).unwrap();
    }
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String, String> {
        smelt(self.dir.path(), args)
    }
    /// Write `r.yaml` and merge it into `out` as F32.
    fn merge(&self, recipe: &str) -> Result<String, String> {
        std::fs::write(self.path("r.yaml"), recipe).unwrap();
        self.run(&["merge", "r.yaml", "-o", "out", "--types", "F32"])
    }
    fn metadata_str(&self, gguf: &str, key: &str) -> Option<String> {
        let f = GgufFile::open(self.path(gguf)).unwrap();
        f.metadata.get_str(key).map(String::from)
    }
    /// Replace every occurrence of `from` in a file by `to` (same length: a GGUF stays valid).
    fn patch(&self, file: &str, from: &str, to: &str) {
        assert_eq!(from.len(), to.len());
        let p = self.path(file);
        let mut bytes = std::fs::read(&p).unwrap();
        let mut found = false;
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from.as_bytes() {
                bytes[i..i + from.len()].copy_from_slice(to.as_bytes());
                found = true;
                i += from.len();
            } else {
                i += 1;
            }
        }
        assert!(found, "`{from}` is not in {file}");
        std::fs::write(&p, bytes).unwrap();
    }
}

const LINEAR_AB: &str = "merge_method: linear\nmodels:\n  - model: a.gguf\n    parameters:\n      weight: 1.0\n  - model: b.gguf\n    parameters:\n      weight: WB\n";

// 1. Parameter domains.

#[test]
fn linear_weights_summing_to_zero_are_refused_naming_the_line() {
    let e = Env::new();
    let err = e.merge(&LINEAR_AB.replace("WB", "-1.0")).unwrap_err();
    assert!(err.contains("r.yaml:1:"), "{err}");
    assert!(
        err.contains("sum to 0") && err.contains("tensor `"),
        "{err}"
    );
    assert!(!e.path("out/r-F32.gguf").exists());
}

#[test]
fn weights_beyond_f32_are_refused_naming_the_line() {
    let e = Env::new();
    let err = e.merge(&LINEAR_AB.replace("WB", "1e308")).unwrap_err();
    assert!(
        err.contains("r.yaml:8:") && err.contains("`weight`"),
        "{err}"
    );
    assert!(err.contains("finite") && err.contains("b.gguf"), "{err}");
}

#[test]
fn densities_outside_zero_to_one_are_refused_naming_the_line() {
    let e = Env::new();
    for density in ["-0.5", "2", "0"] {
        let recipe = format!(
            "merge_method: ties\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n    parameters:\n      weight: 1.0\n      density: {density}\n"
        );
        let err = e.merge(&recipe).unwrap_err();
        assert!(
            err.contains("r.yaml:7:") && err.contains("`density`") && err.contains("(0, 1]"),
            "density {density}: {err}"
        );
    }
}

#[test]
fn della_epsilon_outside_the_density_is_refused_before_merging() {
    let e = Env::new();
    let recipe = "merge_method: della\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n    parameters:\n      weight: 1.0\n      density: 0.5\n      epsilon: 0.6\n";
    let err = e.merge(recipe).unwrap_err();
    assert!(
        err.contains("r.yaml:1:") && err.contains("epsilon"),
        "{err}"
    );
}

#[test]
fn non_finite_merged_values_are_refused_naming_the_tensor() {
    let e = Env::new();
    // Each weight is a finite f32, their products with the weights are not.
    let recipe = "merge_method: linear\nparameters:\n  normalize: false\nmodels:\n  - model: a.gguf\n    parameters: {weight: 3.0e38}\n  - model: a.gguf\n    parameters: {weight: 3.0e38}\n";
    let err = e.merge(recipe).unwrap_err();
    assert!(err.contains("tensor `") && err.contains("inf"), "{err}");
    assert!(!e.path("out/r-F32.gguf").exists());
}

// 2. Misspelt parameters and unknown keys.

#[test]
fn misspelt_parameters_warn_with_the_line_and_the_nearest_name() {
    let e = Env::new();
    let recipe = "merge_method: ties\nbase_model: a.gguf\nparameters:\n  normalise: true\nmodels:\n  - model: b.gguf\n    parameters:\n      weight: 1.0\n      densty: 0.2\n      lambda: 0.5\n";
    let log = e.merge(recipe).unwrap();
    assert!(
        log.contains("warning: r.yaml:9:") && log.contains("did you mean `density`?"),
        "{log}"
    );
    assert!(
        log.contains("warning: r.yaml:4:") && log.contains("did you mean `normalize`?"),
        "{log}"
    );
    assert!(log.contains("ties takes: "), "{log}");
    // A parameter of the whole merge under one model is not read either.
    assert!(
        log.contains("warning: r.yaml:10: `lambda` is a parameter of the whole ties merge"),
        "{log}"
    );
}

#[test]
fn unknown_top_level_keys_warn_instead_of_failing() {
    let e = Env::new();
    let recipe = format!("{}random_seed: 3\n", LINEAR_AB.replace("WB", "1.0"));
    let log = e.merge(&recipe).unwrap();
    assert!(
        log.contains("warning: r.yaml:9:") && log.contains("`random_seed`"),
        "{log}"
    );
    assert!(e.path("out/r-F32.gguf").exists());
    // Nested typos stay errors.
    let err = e
        .merge("merge_method: linear\nmodels:\n  - model: a.gguf\n    weigth: 1\n")
        .unwrap_err();
    assert!(err.contains("weigth"), "{err}");
}

// 3. chat_template.

#[test]
fn named_chat_templates_are_written_as_the_templates() {
    let e = Env::new();
    for (name, marker) in [
        ("chatml", "<|im_start|>"),
        ("llama3", "<|start_header_id|>"),
        ("alpaca", "### Instruction:"),
    ] {
        let recipe = format!("{}chat_template: {name}\n", LINEAR_AB.replace("WB", "1.0"));
        e.merge(&recipe).unwrap();
        let t = e
            .metadata_str("out/r-F32.gguf", "tokenizer.chat_template")
            .unwrap();
        assert!(t.contains(marker) && t.contains("{%"), "{name}: {t}");
    }
    let recipe = format!("{}chat_template: mistral\n", LINEAR_AB.replace("WB", "1.0"));
    let err = e.merge(&recipe).unwrap_err();
    assert!(err.contains("r.yaml:9:") && err.contains("chatml"), "{err}");
}

#[test]
fn chat_template_auto_takes_the_template_most_inputs_share() {
    let e = Env::new();
    let common_t = "{% for m in messages %}<common>{{ m.content }}{% endfor %}";
    let other_t = "{% for m in messages %}<other>{{ m.content }}{% endfor %}";
    // Inputs with templates: each a passthrough merge that sets one.
    for (name, input, t) in [
        ("x", "a", other_t),
        ("y", "b", common_t),
        ("z", "c", common_t),
    ] {
        let recipe = format!(
            "merge_method: passthrough\nmodels:\n  - model: {input}.gguf\nchat_template: '{t}'\noutput:\n  name: {name}\n"
        );
        e.merge(&recipe).unwrap();
        std::fs::rename(
            e.path(&format!("out/{name}-F32.gguf")),
            e.path(&format!("{name}.gguf")),
        )
        .unwrap();
    }
    let recipe = "merge_method: linear\nmodels:\n  - model: x.gguf\n    parameters: {weight: 1.0}\n  - model: y.gguf\n    parameters: {weight: 1.0}\n  - model: z.gguf\n    parameters: {weight: 1.0}\nchat_template: auto\n";
    e.merge(recipe).unwrap();
    let t = e
        .metadata_str("out/r-F32.gguf", "tokenizer.chat_template")
        .unwrap();
    assert_eq!(t, common_t);
}

// 4. Output names are plain file names.

#[test]
fn output_names_that_leave_the_output_folder_are_refused() {
    let e = Env::new();
    let abs = e.path("abs-escape");
    let abs = abs.to_str().unwrap();
    let base = LINEAR_AB.replace("WB", "1.0");
    for (key, name) in [
        ("output:\n  name: ", "../escaped"),
        ("output:\n  name: ", abs),
        ("output:\n  name: ", "sub/dir"),
        ("name: ", ".."),
    ] {
        let err = e.merge(&format!("{base}{key}{name}\n")).unwrap_err();
        let line = if key.starts_with("output") { 10 } else { 9 };
        assert!(
            err.contains(&format!("r.yaml:{line}:")) && err.contains("plain file name"),
            "{name}: {err}"
        );
    }
    assert!(!e.path("escaped-F32.gguf").exists());
    assert!(!e.path("abs-escape-F32.gguf").exists());
}

#[test]
fn replayed_recipes_with_escaping_output_names_are_refused() {
    let e = Env::new();
    let recipe = format!(
        "{}output:\n  name: okname1234\n",
        LINEAR_AB.replace("WB", "1.0")
    );
    e.merge(&recipe).unwrap();
    e.patch("out/okname1234-F32.gguf", "okname1234", "../escaped");
    std::fs::rename(e.path("out/okname1234-F32.gguf"), e.path("made.gguf")).unwrap();
    let err = e
        .run(&[
            "merge",
            "--from",
            "made.gguf",
            "-o",
            "out2",
            "--types",
            "F32",
        ])
        .unwrap_err();
    assert!(
        err.contains("made.gguf (embedded recipe):10:") && err.contains("plain file name"),
        "{err}"
    );
    assert!(!e.path("escaped-F32.gguf").exists());
}

// 5. `merge --from` verifies its inputs.

#[test]
fn merge_from_fails_when_an_input_changed() {
    let e = Env::new();
    e.merge(&LINEAR_AB.replace("WB", "1.0")).unwrap();
    // Unchanged inputs: the replay makes the same bytes.
    e.run(&[
        "merge",
        "--from",
        "out/r-F32.gguf",
        "-o",
        "same",
        "--types",
        "F32",
    ])
    .unwrap();
    assert_eq!(
        std::fs::read(e.path("out/r-F32.gguf")).unwrap(),
        std::fs::read(e.path("same/merge-F32.gguf")).unwrap()
    );
    // Another model under b's name.
    std::fs::copy(e.path("c.gguf"), e.path("b.gguf")).unwrap();
    let err = e
        .run(&[
            "merge",
            "--from",
            "out/r-F32.gguf",
            "-o",
            "out2",
            "--types",
            "F32",
        ])
        .unwrap_err();
    assert!(
        err.contains("`b.gguf`") && err.contains("has changed") && !err.contains("`a.gguf`"),
        "{err}"
    );
    assert!(!e.path("out2/merge-F32.gguf").exists());
}

// 6. Bare safetensors files.

#[test]
fn linear_merge_of_two_bare_safetensors_files() {
    let e = Env::new();
    for (name, seed) in [("hf1", "1"), ("hf2", "2")] {
        e.make_model(name, seed);
        std::fs::create_dir_all(e.path("bare")).unwrap();
        std::fs::copy(
            e.path(&format!("{name}/model.safetensors")),
            e.path(&format!("bare/{name}.safetensors")),
        )
        .unwrap();
    }
    let recipe = "merge_method: linear\nmodels:\n  - model: bare/hf1.safetensors\n    parameters: {weight: 1.0}\n  - model: bare/hf2.safetensors\n    parameters: {weight: 1.0}\n";
    e.merge(recipe).unwrap();
    let (a, b) = (
        Store::open(e.path("bare/hf1.safetensors")).unwrap(),
        Store::open(e.path("bare/hf2.safetensors")).unwrap(),
    );
    let out = Store::open(e.path("out/r-F32.gguf")).unwrap();
    let name = "blk.1.ffn_down.weight";
    let get = |s: &Store| s.read_f32(s.find(name).unwrap()).unwrap();
    let (va, vb, vo) = (get(&a), get(&b), get(&out));
    for ((x, y), o) in va.iter().zip(&vb).zip(&vo) {
        assert!(((x + y) / 2.0 - o).abs() <= 1e-6, "{x} {y} {o}");
    }
}

// 7. Cheap checks before the hashing pass.

#[test]
fn recipe_checks_run_before_the_inputs_are_hashed() {
    let e = Env::new();
    let recipe = "merge_method: ties\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n    parameters:\n      weight: 1.0\n      density: 0.5\n";
    e.merge(recipe).unwrap();
    // The replayed recipe asks for density 5.5, and an input has changed since: the bad
    // parameter is reported, found before the inputs are hashed and compared.
    e.patch("out/r-F32.gguf", "density: 0.5", "density: 5.5");
    std::fs::copy(e.path("c.gguf"), e.path("b.gguf")).unwrap();
    let err = e
        .run(&[
            "merge",
            "--from",
            "out/r-F32.gguf",
            "-o",
            "out2",
            "--types",
            "F32",
        ])
        .unwrap_err();
    assert!(
        err.contains("(embedded recipe):7:") && err.contains("`density`"),
        "{err}"
    );
    assert!(!err.contains("has changed"), "{err}");
}

// 8. Dry run.

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let e = Env::new();
    std::fs::write(e.path("r.yaml"), LINEAR_AB.replace("WB", "1.0")).unwrap();
    let o = Smelt::new(e.dir.path())
        .args([
            "merge",
            "r.yaml",
            "-o",
            "out",
            "--types",
            "F32,Q8_0",
            "--dry-run",
        ])
        .run();
    let (stdout, stderr) = (o.stdout_text(), &o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!e.path("out").exists(), "the output folder was created");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("blk.0.ffn_down.weight "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("linear")
            && line.contains("a.gguf:blk.0.ffn_down.weight")
            && line.contains("b.gguf:blk.0.ffn_down.weight")
            && line.contains("F32 -> F32"),
        "{line}"
    );
    assert!(stdout.contains("r-Q8_0.gguf:"), "{stdout}");
    assert!(stdout.contains("-> Q8_0"), "{stdout}");
}
