//! `smelt verify DIR`: a release folder checked as a downloader would want it checked — every
//! file against `SHA256SUMS` (as `sha256sum -c`), every GGUF's header parsed (tensor count,
//! every tensor's data inside the file), and every split set complete and consistent.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use std::collections::BTreeMap;
use std::path::Path;

/// The SHA-256 of a file, read in blocks (never mapped whole).
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = crate::input::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// One line of `SHA256SUMS`: `HEX  NAME` (text mode) or `HEX *NAME` (binary mode).
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let (hex, rest) = line.split_once(' ')?;
    let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
    let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty();
    ok.then_some((hex, name))
}

/// What `verify` found: one line per check, and whether all passed.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// `(file, problem)`; no problem is `None`.
    pub checks: Vec<(String, Option<String>)>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|(_, p)| p.is_none())
    }

    fn pass(&mut self, file: &str) {
        self.checks.push((file.to_string(), None));
    }

    fn fail(&mut self, file: &str, why: impl Into<String>) {
        self.checks.push((file.to_string(), Some(why.into())));
    }

    /// `NAME: OK` / `NAME: FAILED (why)` lines, as `sha256sum -c` prints them.
    pub fn lines(&self) -> String {
        let mut out = String::new();
        for (file, problem) in &self.checks {
            let file = crate::error::printable(file);
            match problem {
                None => out.push_str(&format!("{file}: OK\n")),
                Some(p) => out.push_str(&format!("{file}: FAILED ({p})\n")),
            }
        }
        out
    }
}

/// Check the release folder `dir`. An unreadable or malformed `SHA256SUMS` is an error; a file
/// that does not match is a failed check in the report.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let sums_path = dir.join(crate::app::release::CHECKSUMS_FILE);
    let sums = crate::input::read_to_string(&sums_path)?;
    let mut report = VerifyReport::default();
    let mut listed = Vec::new();
    for (k, line) in sums.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (hex, name) = parse_line(line).ok_or_else(|| {
            Error::format(&sums_path, format!("line {}: not `SHA256  FILE`", k + 1))
        })?;
        // A checksum list names files in this folder, never elsewhere.
        if name.contains('/') || name.contains('\\') || name == "." || name == ".." {
            return Err(Error::format(
                &sums_path,
                format!(
                    "line {}: `{}` is not a file of this folder",
                    k + 1,
                    crate::error::printable(name)
                ),
            ));
        }
        listed.push(name.to_string());
        let path = dir.join(name);
        match sha256_file(&path) {
            Ok(h) if h.eq_ignore_ascii_case(hex) => report.pass(name),
            Ok(_) => report.fail(name, "checksum differs"),
            Err(e) => report.fail(name, e.to_string()),
        }
    }
    // A GGUF in the folder that the list does not name was not released with it.
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut on_disk: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".gguf"))
        .collect();
    on_disk.sort();
    for name in &on_disk {
        if !listed.contains(name) {
            report.fail(name, "not listed in SHA256SUMS");
        }
    }
    check_ggufs(dir, &listed, &mut report);
    Ok(report)
}

/// Parse every listed GGUF and check each split set: every part present, numbered as named,
/// and their tensors adding up to the set's count.
fn check_ggufs(dir: &Path, listed: &[String], report: &mut VerifyReport) {
    // split set prefix -> (count, parts seen: no -> tensors)
    let mut sets: BTreeMap<String, (u64, u64, BTreeMap<u64, u64>)> = BTreeMap::new();
    for name in listed.iter().filter(|n| n.ends_with(".gguf")) {
        let path = dir.join(name);
        let file = match GgufFile::open(&path) {
            Ok(f) => f,
            Err(e) => {
                report.fail(name, format!("GGUF header: {e}"));
                continue;
            }
        };
        let len = file.map.len() as u64;
        if let Some(t) = file
            .tensors
            .iter()
            .find(|t| file.data_offset + t.offset + t.n_bytes > len)
        {
            report.fail(
                name,
                format!("tensor `{}` runs past the end of the file", t.name),
            );
            continue;
        }
        let md = &file.metadata;
        let Some(count) = md.get_u64("split.count") else {
            continue;
        };
        let no = md.get_u64("split.no").unwrap_or(u64::MAX);
        let total = md.get_u64("split.tensors.count").unwrap_or(0);
        let expected_suffix = crate::gguf::split_file_name("", no, count);
        let Some(prefix) = name.strip_suffix(&expected_suffix) else {
            report.fail(
                name,
                format!("split.no {no} of {count} does not match the file's name"),
            );
            continue;
        };
        let set = sets
            .entry(prefix.to_string())
            .or_insert((count, total, BTreeMap::new()));
        if set.0 != count || set.1 != total {
            report.fail(
                name,
                "split.count or split.tensors.count differs from the set's first file",
            );
            continue;
        }
        set.2.insert(no, file.tensors.len() as u64);
    }
    for (prefix, (count, total, parts)) in &sets {
        let label = format!("{prefix}-*-of-{count:05}.gguf");
        if let Some(missing) = (0..*count).find(|n| !parts.contains_key(n)) {
            let name = format!(
                "{prefix}{}",
                crate::gguf::split_file_name("", missing, *count)
            );
            report.fail(&label, format!("split set incomplete: {name} missing"));
        } else if parts.values().sum::<u64>() != *total {
            report.fail(
                &label,
                format!(
                    "split set holds {} tensors, split.tensors.count says {total}",
                    parts.values().sum::<u64>()
                ),
            );
        } else {
            report.pass(&label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_lines_parse_as_sha256sum_writes_them() {
        let hex = "a".repeat(64);
        assert_eq!(
            parse_line(&format!("{hex}  m-Q4_K_M.gguf")),
            Some((hex.as_str(), "m-Q4_K_M.gguf"))
        );
        assert_eq!(
            parse_line(&format!("{hex} *m.gguf")),
            Some((hex.as_str(), "m.gguf"))
        );
        assert_eq!(parse_line(&format!("{hex} m.gguf")), None);
        assert_eq!(parse_line("abc  m.gguf"), None);
        assert_eq!(parse_line(&format!("{hex}  ")), None);
    }
}
