//! Opening input files safely.
//!
//! - Only regular files are read: opening a FIFO blocks until a writer comes (forever, in
//!   practice) and a device may never end, so anything else is refused with its path.
//! - A file of a model folder is read only when it resolves inside that folder: a symlinked
//!   `chat_template.jinja` pointing at a secret elsewhere must not end up in a GGUF. The one
//!   exception is the Hugging Face hub cache, whose `snapshots/<revision>/` files are links
//!   into the same repository's `blobs/` folder.

use crate::error::{Error, Result};
use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a non-regular file is, for error messages.
fn kind(md: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = md.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if md.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

fn not_regular(path: &Path, md: &Metadata) -> Error {
    Error::format(
        path,
        format!(
            "{}: smelt reads only regular files (not FIFOs, sockets, devices or folders)",
            kind(md)
        ),
    )
}

/// Refuse `path` unless it is a regular file (symlinks followed).
pub fn check_regular(path: &Path) -> Result<()> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if md.is_file() {
        Ok(())
    } else {
        Err(not_regular(path, &md))
    }
}

/// Open regular file `path` for reading. The type is checked before opening (opening a FIFO
/// would block) and again on the open handle.
pub fn open(path: &Path) -> Result<File> {
    check_regular(path)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let md = file.metadata().map_err(|e| Error::io(path, e))?;
    if !md.is_file() {
        return Err(not_regular(path, &md));
    }
    Ok(file)
}

/// The whole of regular file `path`.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// Regular file `path` as UTF-8 text.
pub fn read_to_string(path: &Path) -> Result<String> {
    String::from_utf8(read(path)?).map_err(|_| Error::format(path, "not valid UTF-8 text"))
}

/// Whether something (a file, a folder, a link, even a dangling one) is at `path`.
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The folders the files of model folder `dir` may resolve into: the folder itself, and for a
/// Hugging Face hub cache snapshot (`…/snapshots/<revision>`) the repository's `blobs`.
fn allowed_roots(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let mut roots = vec![dir.clone()];
    if let Some(snapshots) = dir.parent() {
        if snapshots.file_name().is_some_and(|n| n == "snapshots") {
            if let Some(repo) = snapshots.parent() {
                roots.push(repo.join("blobs"));
            }
        }
    }
    Ok(roots)
}

/// Refuse `path` (a file of model folder `dir`) when it resolves outside `dir`.
pub fn check_inside(dir: &Path, path: &Path) -> Result<()> {
    let real = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let roots = allowed_roots(dir)?;
    if roots.iter().any(|r| real.starts_with(r)) {
        return Ok(());
    }
    Err(Error::format(
        path,
        format!(
            "resolves to {}, outside the model folder {}: smelt does not follow links out of an input folder",
            real.display(),
            dir.display()
        ),
    ))
}

/// File `path` of model folder `dir`: `None` when nothing is there, an error when it is not a
/// regular file or resolves outside `dir`.
pub fn read_in(dir: &Path, path: &Path) -> Result<Option<Vec<u8>>> {
    if !exists(path) {
        return Ok(None);
    }
    check_inside(dir, path)?;
    read(path).map(Some)
}

/// [`read_in`] as UTF-8 text.
pub fn read_in_to_string(dir: &Path, path: &Path) -> Result<Option<String>> {
    match read_in(dir, path)? {
        None => Ok(None),
        Some(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| Error::format(path, "not valid UTF-8 text")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn links_out_of_the_folder_are_refused_except_into_hub_cache_blobs() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(d.path().join("secret"), "s3cret").unwrap();
        std::fs::write(model.join("own"), "ok").unwrap();
        std::os::unix::fs::symlink("../secret", model.join("leak")).unwrap();
        std::os::unix::fs::symlink("own", model.join("alias")).unwrap();
        let err = read_in(&model, &model.join("leak"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("leak") && err.contains("outside"), "{err}");
        assert_eq!(
            read_in(&model, &model.join("alias")).unwrap().unwrap(),
            b"ok"
        );
        assert!(read_in(&model, &model.join("absent")).unwrap().is_none());

        // models--x/snapshots/abc/config.json -> ../../blobs/123
        let repo = d.path().join("models--x");
        let snap = repo.join("snapshots").join("abc");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs").join("123"), "{}").unwrap();
        std::os::unix::fs::symlink("../../blobs/123", snap.join("config.json")).unwrap();
        assert_eq!(
            read_in(&snap, &snap.join("config.json")).unwrap().unwrap(),
            b"{}"
        );
    }

    #[test]
    fn folders_are_not_regular_files() {
        let d = tempfile::tempdir().unwrap();
        let err = read(d.path()).unwrap_err().to_string();
        assert!(err.contains("a folder"), "{err}");
    }
}
