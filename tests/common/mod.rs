//! Helpers shared by the integration tests.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

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
