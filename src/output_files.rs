//! Where outputs may go and how they appear there.
//!
//! - **Never over an input.** Every output path is compared with every input file by device
//!   and inode (so symlinks and hard links are seen through) before any work starts.
//! - **Only regular files.** An output that exists as a character device, FIFO, socket or
//!   folder is refused: renaming over it would replace the node (as root, `/dev/null`).
//! - **Exclusive temporary files.** Outputs are written to `.smelt-<pid>-<host>-<random>.tmp`
//!   beside the target, created with `O_CREAT | O_EXCL` (the `tempfile` crate), so a symlink
//!   planted at a guessed name is never followed; the name's length does not depend on the
//!   target's, so any valid target name works.
//! - **Nothing left behind.** Temporary outputs are registered while open; every terminating
//!   signal (INT, TERM, HUP, QUIT) and every panic removes them. A run killed in a way no
//!   process can observe (`kill -9`, a power cut) leaves them, and the next run writing to
//!   the same folder removes those whose process (pid on this host) is gone.
//! - **Complete or absent.** Finished files are renamed into place together, under a lock the
//!   signal handler also takes, so an interrupted run leaves either all of a set's new files
//!   or none of them (a split set is never part old, part new).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary outputs (files or folders) still being written.
static OPEN_TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Held while finished outputs are renamed into place; the signal handler takes it too, so a
/// signal waits for a set of renames to finish instead of splitting it.
static COMMIT: Mutex<()> = Mutex::new(());

const PREFIX: &str = ".smelt-";

/// This host's name, reduced to `[A-Za-z0-9_]` and 32 bytes (part of temp names, so a shared
/// network folder never has another host's live temp files mistaken for stale ones).
fn host_tag() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let tag: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    if tag.is_empty() {
        "host".into()
    } else {
        tag
    }
}

/// The prefix of this process's temp names: `.smelt-<pid>-<host>-`.
fn temp_prefix() -> String {
    format!("{PREFIX}{}-{}-", std::process::id(), host_tag())
}

/// Whether process `pid` of this host is alive; `None` where that cannot be told.
fn pid_alive(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self").exists() {
        return None;
    }
    Some(Path::new("/proc").join(pid.to_string()).exists())
}

/// The pid of a temp name this host's smelt made (`.smelt-<pid>-<host>-<6 random>.tmp`).
fn stale_candidate(name: &str, host: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = rest
        .strip_suffix(".tmp")
        .or_else(|| rest.strip_suffix(".tmpdir"))?;
    let (pid, rest) = rest.split_once('-')?;
    let random = rest.strip_prefix(host)?.strip_prefix('-')?;
    (random.len() == 6 && random.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Remove the temporary outputs that dead smelt runs of this host left in `dir`; returns what
/// was removed.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let host = host_tag();
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = stale_candidate(&name, &host) else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) != Some(false) {
            continue;
        }
        let path = e.path();
        let gone = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path).is_ok(),
            Ok(_) => std::fs::remove_file(&path).is_ok(),
            Err(_) => false,
        };
        if gone {
            tracing::warn!(
                "removed {} left by an interrupted smelt run (pid {pid})",
                path.display()
            );
            removed.push(path);
        }
    }
    removed
}

/// The folder an output file goes in (`.` for a bare name).
fn parent_of(target: &Path) -> &Path {
    target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn builder<'a>(prefix: &'a str, suffix: &'static str) -> tempfile::Builder<'a, 'static> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix).suffix(suffix).rand_bytes(6);
    b
}

/// A temporary file beside `target`, created exclusively and registered for removal on a
/// signal; the returned path deletes it when dropped, unless persisted.
pub fn temp_file_beside(target: &Path) -> Result<(std::fs::File, tempfile::TempPath)> {
    let dir = parent_of(target);
    remove_stale_temps(dir);
    let prefix = temp_prefix();
    let mut b = builder(&prefix, ".tmp");
    // 0666 before the umask, like File::create: the finished file gets the usual permissions.
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    // Created and registered under the lock the signal handler holds while it cleans up, so
    // no file can appear on disk after the handler looked.
    let mut open = lock(&OPEN_TEMPS);
    let (file, tmp) = b
        .tempfile_in(dir)
        .map_err(|e| Error::io(target, e))?
        .into_parts();
    open.push(tmp.to_path_buf());
    Ok((file, tmp))
}

/// Write a small output whole: an exclusive temporary file beside `path`, synced, then renamed
/// over it (all or nothing, like every other output).
pub fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let (mut file, tmp) = temp_file_beside(path)?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(path, e))?;
    let tmp_path = tmp.to_path_buf();
    let done = commit(|| tmp.persist(path).map_err(|e| e.error));
    forget(&tmp_path);
    done.map_err(|e| Error::io(path, e))
}

/// A temporary folder beside `target`, registered for removal on a signal.
pub fn temp_dir_beside(target: &Path) -> Result<tempfile::TempDir> {
    let dir = parent_of(target);
    remove_stale_temps(dir);
    let prefix = temp_prefix();
    let mut open = lock(&OPEN_TEMPS);
    let tmp = builder(&prefix, ".tmpdir")
        .tempdir_in(dir)
        .map_err(|e| Error::io(target, e))?;
    open.push(tmp.path().to_path_buf());
    Ok(tmp)
}

/// A lock that a panic elsewhere did not make unusable (the list stays valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The temporary output at `path` is gone or renamed: stop tracking it.
pub fn forget(path: &Path) {
    lock(&OPEN_TEMPS).retain(|p| p != path);
}

fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(p);
        } else {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Wait for renames in progress, then delete every temporary output in `registry`; returns
/// both locks held, so that no other thread can create or rename an output afterwards.
fn remove_after_commit(
    registry: &Mutex<Vec<PathBuf>>,
) -> (
    std::sync::MutexGuard<'_, ()>,
    std::sync::MutexGuard<'_, Vec<PathBuf>>,
) {
    let commit = lock(&COMMIT);
    let open = lock(registry);
    remove_all(&open);
    (commit, open)
}

/// The signal path: delete every registered temporary output and exit, still holding the
/// locks.
fn remove_unfinished_and_exit(code: i32, why: &str) -> ! {
    let _held = remove_after_commit(&OPEN_TEMPS);
    eprintln!("\n{why}: unfinished outputs removed");
    std::process::exit(code)
}

/// The panic path: delete the registered temporary outputs if the locks are free (the
/// panicking thread may hold one; then the files' own drops remove them as it unwinds).
fn remove_unfinished_on_panic() {
    let (Ok(_commit), Ok(open)) = (COMMIT.try_lock(), OPEN_TEMPS.try_lock()) else {
        return;
    };
    remove_all(&open);
}

/// Run `renames` (moving finished temporary outputs into place) so that a signal cannot
/// interrupt it halfway.
pub fn commit<T>(renames: impl FnOnce() -> T) -> T {
    let _commit = lock(&COMMIT);
    renames()
}

/// Handle every terminating signal: remove the temporary outputs, then exit as the signal
/// would (128 + its number). SIGXFSZ (file size limit) is caught so that the write fails
/// with EFBIG and the normal error path cleans up, instead of the process dying silently.
/// Panics remove the temporary outputs too.
pub fn install_cleanup_handlers() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGXFSZ};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .map_err(|e| Error::Invalid(format!("cannot install signal handlers: {e}")))?;
    let xfsz = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(SIGXFSZ, xfsz)
        .map_err(|e| Error::Invalid(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let name = match sig {
                    SIGINT => "interrupted",
                    SIGTERM => "terminated",
                    SIGHUP => "hung up",
                    _ => "quit",
                };
                remove_unfinished_and_exit(128 + sig, name);
            }
        })
        .map_err(|e| Error::Invalid(format!("cannot start the signal thread: {e}")))?;
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        remove_unfinished_on_panic();
        default_hook(info);
    }));
    Ok(())
}

/// What kind of node a path is, in words, when it is not a regular file.
fn odd_node(meta: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a folder")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// Refuse, before any work starts, outputs that would replace an input (same device and
/// inode, through symlinks and hard links), outputs that name something other than a regular
/// file, and two outputs of one run at the same path.
pub fn check_outputs(inputs: &[&Path], outputs: &[&Path]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let id = |m: &std::fs::Metadata| (m.dev(), m.ino());
    let input_ids: Vec<((u64, u64), &Path)> = inputs
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| (id(&m), *p)))
        .collect();
    let mut seen: Vec<(PathBuf, &Path)> = Vec::new();
    for out in outputs {
        // The same file name in the same folder, whatever the spelling of the folder.
        let key = std::fs::canonicalize(parent_of(out))
            .unwrap_or_else(|_| parent_of(out).to_path_buf())
            .join(out.file_name().unwrap_or_default());
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            return Err(Error::Invalid(format!(
                "{}: two outputs of this run would be written to the same file (also {})",
                out.display(),
                first.display()
            )));
        }
        seen.push((key, out));
        let Ok(meta) = std::fs::metadata(out) else {
            continue; // does not exist yet (or a dangling link, which the rename replaces)
        };
        if let Some(what) = odd_node(&meta) {
            return Err(Error::Invalid(format!(
                "{}: the output is {what}; smelt writes regular files only",
                out.display()
            )));
        }
        if let Some((_, input)) = input_ids.iter().find(|(i, _)| *i == id(&meta)) {
            return Err(Error::Invalid(format!(
                "{}: the output is the input {} (the same file): choose another output",
                out.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

/// Bytes free for an unprivileged writer on the file system holding `dir`; `None` where the
/// system cannot tell.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path that outlives the call, and `st` points to writable
    // memory of the size of `statvfs`, which the call fills completely when it returns 0; it
    // is read only in that case.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Refuse to start when the folders' file systems cannot hold the planned outputs (`planned`:
/// each output's path and size in bytes); a full disk found halfway wastes the whole run.
pub fn check_free_space(planned: &[(&Path, u64)]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // Sum per file system (device), measured at the first output folder on it.
    let mut per_fs: Vec<(u64, &Path, u64)> = Vec::new();
    for (path, bytes) in planned {
        let dir = parent_of(path);
        let Ok(dev) = std::fs::metadata(dir).map(|m| m.dev()) else {
            continue;
        };
        match per_fs.iter_mut().find(|(d, _, _)| *d == dev) {
            Some(e) => e.2 = e.2.saturating_add(*bytes),
            None => per_fs.push((dev, dir, *bytes)),
        }
    }
    for (_, dir, need) in per_fs {
        if let Some(free) = free_bytes(dir) {
            if need > free {
                return Err(Error::Invalid(format!(
                    "{}: not enough free space: the outputs need {:.2} GiB, {:.2} GiB is free",
                    dir.display(),
                    need as f64 / (1u64 << 30) as f64,
                    free as f64 / (1u64 << 30) as f64
                )));
            }
        }
    }
    Ok(())
}

/// Folders an output needs that do not exist yet; created on `create`, removed again
/// (if still empty) when the run fails.
pub struct CreatedDirs(Vec<PathBuf>);

impl CreatedDirs {
    /// Create `dir` and any missing parents, remembering which were new.
    pub fn create(dir: &Path) -> Result<CreatedDirs> {
        let mut missing: Vec<PathBuf> = dir
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty() && !a.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        missing.reverse(); // outermost first
        Ok(CreatedDirs(missing))
    }

    /// The run failed: remove the folders it created, innermost first, where still empty.
    pub fn remove_if_empty(&self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Run `work` with `dir` created for it; on failure, folders this created are removed again.
pub fn with_output_dir<T>(dir: &Path, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let created = CreatedDirs::create(dir)?;
    let result = work();
    if result.is_err() {
        created.remove_if_empty();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_short_exclusive_and_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(250) + ".gguf";
        let (_file, path) = temp_file_beside(&dir.path().join(&long)).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.len() < 80, "{name}");
        assert_eq!(
            stale_candidate(&name, &host_tag()),
            Some(std::process::id())
        );
        assert_eq!(
            stale_candidate(".smelt-12-otherhost-abcdef.tmp", "me"),
            None
        );
        assert_eq!(stale_candidate("model.gguf", "me"), None);
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_tag();
        // pid 2^22 + 1 is above Linux's pid_max limit: never a live process.
        let dead = dir.path().join(format!(".smelt-4194305-{host}-abc123.tmp"));
        let live = dir
            .path()
            .join(format!(".smelt-{}-{host}-abc123.tmp", std::process::id()));
        let other_host = dir.path().join(".smelt-4194305-elsewhere-abc123.tmp");
        for p in [&dead, &live, &other_host] {
            std::fs::write(p, b"x").unwrap();
        }
        let removed = remove_stale_temps(dir.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && live.exists() && other_host.exists());
    }

    #[test]
    fn free_space_is_checked_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.gguf");
        assert!(check_free_space(&[(&out, 1)]).is_ok());
        let err = check_free_space(&[(&out, u64::MAX / 4), (&out, u64::MAX / 4)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not enough free space"), "{err}");
    }

    #[test]
    fn cleanup_waits_for_a_set_of_renames_to_finish() {
        // A signal arriving between the renames of a split set must not leave part 1 new and
        // parts 2..N old: the cleanup waits until the whole set is in place.
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<(PathBuf, PathBuf)> = (1..=3)
            .map(|k| {
                let tmp = dir.path().join(format!("tmp{k}"));
                std::fs::write(&tmp, b"new").unwrap();
                (tmp, dir.path().join(format!("m-0000{k}-of-00003.gguf")))
            })
            .collect();
        let registry = Mutex::new(parts.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>());
        let (entered, wait) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                commit(|| {
                    entered.send(()).unwrap();
                    for (tmp, target) in &parts {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        std::fs::rename(tmp, target).unwrap();
                    }
                })
            });
            wait.recv().unwrap();
            drop(remove_after_commit(&registry));
            for (_, target) in &parts {
                assert!(
                    target.exists(),
                    "{} renamed before cleanup ran",
                    target.display()
                );
            }
        });
    }

    #[test]
    fn created_dirs_are_removed_only_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        let r: Result<()> = with_output_dir(&out, || Err(Error::Invalid("boom".into())));
        assert!(r.is_err());
        assert!(!dir.path().join("a").exists());
        let keep = dir.path().join("k");
        let r: Result<()> = with_output_dir(&keep, || {
            std::fs::write(keep.join("user-file"), b"x").unwrap();
            Err(Error::Invalid("boom".into()))
        });
        assert!(r.is_err());
        assert!(keep.join("user-file").exists());
    }
}
