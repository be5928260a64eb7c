//! Helpers shared by the integration tests: run the binary ([`Smelt`], [`smelt`]), scratch
//! folders under target/, tiny generated models, edited copies of a GGUF.

use smelt::gguf::writer::TensorDecl;
use smelt::gguf::{GgmlType, GgufWriter, Metadata};
use smelt::store::Store;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// Scratch folder under target/ (not /tmp), removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// `smelt make-test-model -o dir/name --layers 2 EXTRA...`; its path.
pub fn tiny_model(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec!["make-test-model", "-o", name, "--layers", "2"];
    args.extend_from_slice(extra);
    smelt(dir, &args).unwrap();
    dir.join(name)
}

/// A copy of `src` (a GGUF) as F32 with `edit_md` applied to its metadata and `edit` to each
/// tensor's name and values.
pub fn rewrite(
    src: &Path,
    dst: &Path,
    edit_md: impl Fn(&mut Metadata),
    edit: impl Fn(&mut String, &mut Vec<f32>),
) {
    let store = Store::open(src).unwrap();
    let mut tensors = Vec::new();
    for (i, t) in store.tensors.iter().enumerate() {
        let mut name = t.name.clone();
        let mut values = store.read_f32(i).unwrap();
        edit(&mut name, &mut values);
        tensors.push((name, t.shape.clone(), values));
    }
    let decls: Vec<TensorDecl> = tensors
        .iter()
        .map(|(name, shape, _)| TensorDecl {
            name: name.clone(),
            shape: shape.clone(),
            ty: GgmlType::F32,
        })
        .collect();
    let mut md = store.metadata.clone();
    edit_md(&mut md);
    let mut w = GgufWriter::create(dst, &md, &decls).unwrap();
    for (_, _, values) in &tensors {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_data(&bytes).unwrap();
    }
    w.finish().unwrap();
}

/// One run of the smelt binary, set up like a `Command`: `Smelt::new(dir).args([..]).env(k, v)`,
/// then [`run`](Smelt::run) (to completion, output captured) or [`spawn`](Smelt::spawn) (a
/// child to signal or time out). Environment changes go to the child only: the tests share one
/// process and must never change its environment or working directory.
pub struct Smelt {
    dir: PathBuf,
    args: Vec<std::ffi::OsString>,
    env: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)>,
    ulimit: Option<String>,
}

impl Smelt {
    /// The binary, run in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Smelt {
        Smelt {
            dir: dir.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            ulimit: None,
        }
    }
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Smelt {
        self.args.push(arg.as_ref().to_owned());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Smelt
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }
    /// Set a variable in the child's environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Smelt {
        let value = Some(value.as_ref().to_owned());
        self.env.push((key.as_ref().to_owned(), value));
        self
    }
    /// Remove a variable from the child's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Smelt {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }
    /// Run under bash's `ulimit LIMIT` (e.g. `-f 64`, `-v 1048576`, in KiB), which applies to
    /// the child only.
    pub fn ulimit(mut self, limit: &str) -> Smelt {
        self.ulimit = Some(limit.to_string());
        self
    }

    fn command(self) -> Command {
        let bin = env!("CARGO_BIN_EXE_smelt");
        let mut cmd = match &self.ulimit {
            None => Command::new(bin),
            Some(limit) => {
                // bash: its `ulimit -f` counts KiB (dash's counts 512-byte blocks).
                let mut sh = Command::new("bash");
                sh.arg("-c")
                    .arg(format!("ulimit {limit} && exec \"$0\" \"$@\""))
                    .arg(bin);
                sh
            }
        };
        cmd.args(&self.args).current_dir(&self.dir);
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }

    /// Run to completion with stdin closed; its status and output. A panic is never an
    /// acceptable way to fail: a "panicked" in stderr fails the test.
    pub fn run(self) -> Run {
        let o = self.command().output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!stderr.contains("panicked"), "{stderr}");
        Run {
            status: o.status,
            stdout: o.stdout,
            stderr,
        }
    }

    /// Start it with stdin and stdout closed and stderr piped, for a test that signals the
    /// child or waits for it with its own deadline.
    pub fn spawn(self) -> Child {
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// A finished run of the binary.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    /// Asserts that it succeeded (showing stderr when not).
    pub fn ok(self) -> Run {
        assert!(self.status.success(), "{:?}: {}", self.status, self.stderr);
        self
    }
    /// Ok(stderr) on success, Err(stderr) on failure.
    pub fn result(self) -> Result<String, String> {
        if self.status.success() {
            Ok(self.stderr)
        } else {
            Err(self.stderr)
        }
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stdout parsed as JSON (`--json` output).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap()
    }
}

/// Run the smelt binary in `dir`: Ok(stderr) on success, Err(stderr) on failure. A panic is
/// never an acceptable way to fail.
pub fn smelt<I, S>(dir: &Path, args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Smelt::new(dir).args(args).run().result()
}

/// A folder's files by name, with their bytes.
pub type Files = std::collections::BTreeMap<String, Vec<u8>>;

/// Every file of `dir` by name, with its bytes (empty when `dir` does not exist).
pub fn files(dir: &Path) -> Files {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
        })
        .unwrap_or_default()
}

/// `dir/name`: a text of 3000 words, a few thousand byte-level BPE tokens; `salt` shifts the
/// word sequence (0 for one text, others for a second text of the same words).
pub fn word_text(dir: &Path, name: &str, salt: usize) -> PathBuf {
    let words = [
        "the", "merge", "of", "two", "models", "is", "measured", "on", "a", "text", "that",
        "nobody", "trained", "them", "for", "and", "each", "chunk", "counts",
    ];
    let body: Vec<&str> = (0..3000usize)
        .map(|i| words[(i * 7 + i / 5 + salt) % words.len()])
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, body.join(" ")).unwrap();
    path
}
