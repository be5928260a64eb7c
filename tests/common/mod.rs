//! Helpers shared by the integration tests: run the binary, scratch folders under target/,
//! tiny generated models, edited copies of a GGUF.
// Each test crate includes this module and uses part of it.
#![allow(dead_code)]

use smelt::gguf::writer::TensorDecl;
use smelt::gguf::{GgmlType, GgufWriter, Metadata};
use smelt::store::Store;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Run the smelt binary in `dir`: Ok(stderr) on success, Err(stderr) on failure. A panic is
/// never an acceptable way to fail.
pub fn smelt<I, S>(dir: &Path, args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let o = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    if o.status.success() {
        Ok(err)
    } else {
        Err(err)
    }
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
