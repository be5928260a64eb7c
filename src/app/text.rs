//! The texts `eval`, `imatrix` and `release` run on: a user's file, read as llama.cpp's `-f`
//! reads it, or the calibration text built into the binary.

use crate::error::Result;
use std::path::Path;

/// The calibration text built into smelt (data/README.md says what it holds and where each
/// part comes from): `eval` and `imatrix` read it when no `--text` is given.
pub const CALIBRATION_TEXT: &str = include_str!("../../data/calibration.txt");
/// The name outputs record for it (`imatrix.datasets`, `eval --json`'s `text`).
pub const CALIBRATION_NAME: &str = "smelt:calibration.txt";

/// The text `eval` and `imatrix` run on, and the name to record for it: the `--text` file, or
/// the built-in calibration text.
pub fn eval_text(arg: Option<&Path>) -> Result<(String, String)> {
    match arg {
        Some(p) => {
            let mut text = crate::input::read_to_string(p)?;
            // llama.cpp's `-f` drops one final newline; the same text gives the same tokens.
            if text.ends_with('\n') {
                text.pop();
            }
            Ok((text, p.to_string_lossy().into_owned()))
        }
        None => Ok((CALIBRATION_TEXT.to_string(), CALIBRATION_NAME.to_string())),
    }
}

/// The built-in text in two parts, cut at the line end nearest its middle: `release` computes
/// its importance matrix on the first and measures quality on the second, so no type is
/// measured on the text its imatrix was made from. The text's kinds are interleaved in
/// proportion (data/README.md), so each half holds all of them.
pub fn calibration_halves() -> (&'static str, &'static str) {
    let text = CALIBRATION_TEXT;
    let middle = text.len() / 2;
    let cut = text[middle..]
        .find('\n')
        .map_or(text.len(), |i| middle + i + 1);
    (&text[..cut], &text[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_halves_cut_the_builtin_text_at_a_line_end() {
        let (a, b) = calibration_halves();
        assert_eq!(a.len() + b.len(), CALIBRATION_TEXT.len());
        assert!(a.ends_with('\n'));
        assert!(a.len().abs_diff(b.len()) < 4096, "{} {}", a.len(), b.len());
    }

    #[test]
    fn built_in_calibration_text_is_the_default() {
        let (text, name) = eval_text(None).unwrap();
        assert_eq!(name, "smelt:calibration.txt");
        assert!((300_000..=400_000).contains(&text.len()), "{}", text.len());
        // Prose, other scripts, code and formulas, all in the first fifth.
        let mut end = text.len() / 5;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let head = &text[..end];
        for sample in [
            "Phileas Fogg",
            "Déclaration universelle",
            "#define",
            "\\frac",
        ] {
            assert!(head.contains(sample), "{sample}");
        }
        for sample in [
            "世界人权宣言",
            "الإعلان العالمي",
            "Всеобщая декларация",
            "fn ",
        ] {
            assert!(text.contains(sample), "{sample}");
        }
    }
}
