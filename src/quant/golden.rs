//! The quantizer goldens: one schema, one checker (and its base64 and hex helpers).
//!
//! `fixtures/golden/quant_<family>.json`, made by `scripts/gen-golden-quant.py --family
//! <family>` from libgguf (a byte-identical port of ggml's quantizers; IQ1_M from ggml itself),
//! hold inputs and digests only:
//!   inputs: {name: {n_per_row, rows, data (base64 f32 LE), imatrix (base64 f32 LE, one per
//!            column; optional)}}
//!   cases:  [{input, type, imatrix (bool), nbytes, sha256 (all rows), rows (12 hex digits
//!            of each row's SHA-256)}]
//! The tests walk the types table: every block type smelt writes has cases in its family's
//! file, and every case matches.

use super::{quantize_rows, row_bytes};
use crate::gguf::types::{Family, Quantizer};
use crate::gguf::GgmlType;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Standard base64 (with or without padding), as Python's `base64.b64encode` writes it.
pub(crate) fn b64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Little-endian f32 values from base64.
pub(crate) fn f32s(s: &str) -> Vec<f32> {
    b64_decode(s)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The golden files, by family name (`quant_<name>.json`).
const FAMILIES: [&str; 3] = ["kquants", "iq", "iq4"];

/// The golden file a type's quantizer cases live in. `None` for the float conversions (F32,
/// F16, BF16: no block quantizer; checked by the round-trip and llama-quantize tests) and for
/// MXFP4 (smelt does not write it): a block type that gains a quantizer there fails
/// `every_quantized_type_has_golden_cases` until it gets a family file.
fn golden_family(ty: GgmlType) -> Option<&'static str> {
    match ty.family() {
        Family::Legacy | Family::KQuant => Some("kquants"),
        Family::Iq1 | Family::Iq2 | Family::Iq3 => Some("iq"),
        Family::Iq4 | Family::Ternary => Some("iq4"),
        Family::Float | Family::Mxfp4 => None,
    }
}

/// The block types smelt writes, from the types table.
fn quantized_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL
        .iter()
        .copied()
        .filter(|t| t.can_quantize() && t.is_quantized())
}

/// The types table's quantized types whose goldens are in `family`'s file.
fn family_types(family: &str) -> Vec<GgmlType> {
    quantized_types()
        .filter(|&t| golden_family(t) == Some(family))
        .collect()
}

fn family_path(family: &str) -> String {
    format!(
        "{}/fixtures/golden/quant_{family}.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

struct Input {
    n_per_row: usize,
    data: Vec<f32>,
    imatrix: Option<Vec<f32>>,
}

struct Case {
    input: String,
    ty: GgmlType,
    imatrix: bool,
    nbytes: usize,
    sha256: String,
    rows: Vec<String>,
}

struct Golden {
    inputs: BTreeMap<String, Input>,
    cases: Vec<Case>,
}

fn load(path: &str) -> Golden {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut inputs = BTreeMap::new();
    for (name, v) in doc["inputs"].as_object().unwrap() {
        let n_per_row = v["n_per_row"].as_u64().unwrap() as usize;
        let data = f32s(v["data"].as_str().unwrap());
        let imatrix = v.get("imatrix").map(|s| f32s(s.as_str().unwrap()));
        assert_eq!(
            data.len(),
            v["rows"].as_u64().unwrap() as usize * n_per_row,
            "{path}: input {name}"
        );
        if let Some(im) = &imatrix {
            assert_eq!(im.len(), n_per_row, "{path}: imatrix of input {name}");
        }
        inputs.insert(
            name.clone(),
            Input {
                n_per_row,
                data,
                imatrix,
            },
        );
    }
    let cases = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            input: c["input"].as_str().unwrap().to_string(),
            ty: c["type"].as_str().unwrap().parse().unwrap(),
            imatrix: c["imatrix"].as_bool().unwrap(),
            nbytes: c["nbytes"].as_u64().unwrap() as usize,
            sha256: c["sha256"].as_str().unwrap().to_string(),
            rows: c["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect(),
        })
        .collect();
    Golden { inputs, cases }
}

/// Checks every case of `types` in `quant_<family>.json` (see `check_file`).
pub(crate) fn check_family(family: &str, types: &[GgmlType]) -> usize {
    check_file(&family_path(family), types)
}

/// Quantizes the input of every case of `types` in the golden file at `path` through the
/// public dispatch (`quantize_rows`, with the input's imatrix when the case says so) and
/// compares digests. Fails listing each differing case with its differing rows and the first
/// such row's input, and when one of `types` has no case. Returns the cases checked.
pub(crate) fn check_file(path: &str, types: &[GgmlType]) -> usize {
    let golden = load(path);
    let mut failures = Vec::new();
    let mut checked = BTreeMap::<GgmlType, usize>::new();
    for case in golden.cases.iter().filter(|c| types.contains(&c.ty)) {
        let ty = case.ty;
        let name = &case.input;
        let label = format!("{ty} imatrix={} input={name}", case.imatrix);
        let input = &golden.inputs[name];
        let n = input.n_per_row;
        let rb = row_bytes(ty, n).unwrap();
        let imatrix = case.imatrix.then(|| {
            input
                .imatrix
                .as_deref()
                .unwrap_or_else(|| panic!("{label}: the input has no imatrix"))
        });
        let mut got = vec![0u8; input.data.len() / n * rb];
        quantize_rows(ty, &input.data, n, &mut got, imatrix).unwrap();
        *checked.entry(ty).or_default() += 1;
        assert_eq!(got.len(), case.nbytes, "{label}: size");
        assert_eq!(case.rows.len(), got.len() / rb, "{label}: row digests");
        if hex(&Sha256::digest(&got)) == case.sha256 {
            continue;
        }
        let bad: Vec<usize> = got
            .chunks_exact(rb)
            .enumerate()
            .filter(|(r, row)| hex(&Sha256::digest(row))[..12] != case.rows[*r])
            .map(|(r, _)| r)
            .collect();
        let r0 = bad.first().copied().unwrap_or(0);
        failures.push(format!(
            "{label}: rows {bad:?} of {} differ; row {r0} starts {:?}, got {}",
            case.rows.len(),
            &input.data[r0 * n..r0 * n + 8.min(n)],
            hex(&got[r0 * rb..r0 * rb + 16.min(rb)]),
        ));
    }
    let missing: Vec<&GgmlType> = types.iter().filter(|t| !checked.contains_key(t)).collect();
    assert!(
        missing.is_empty(),
        "{path}: no golden cases for {missing:?}"
    );
    assert!(
        failures.is_empty(),
        "{path}: {} of {} cases differ:\n{}",
        failures.len(),
        checked.values().sum::<usize>(),
        failures.join("\n")
    );
    checked.values().sum()
}

/// Every case of the family's file, each type of the types table that belongs there included.
fn check_whole_family(family: &str) {
    let types = family_types(family);
    let checked = check_family(family, &types);
    assert_eq!(
        checked,
        load(&family_path(family)).cases.len(),
        "quant_{family}.json has cases of types outside its family {types:?}"
    );
}

#[test]
fn golden_kquants() {
    check_whole_family("kquants");
}

#[test]
fn golden_iq() {
    check_whole_family("iq");
}

#[test]
fn golden_iq4() {
    check_whole_family("iq4");
}

/// Every block type smelt quantizes to (walked from the types table) has golden cases in its
/// family's file, with and without an imatrix as its quantizer takes one (Weighted: both;
/// NeedsImatrix: with; Plain: without), and every case of a file is of one of its family's
/// types. Reads the files only; the `golden_<family>` tests quantize.
#[test]
fn every_quantized_type_has_golden_cases() {
    let mut modes = BTreeMap::<GgmlType, BTreeSet<bool>>::new();
    for family in FAMILIES {
        for case in load(&family_path(family)).cases {
            assert_eq!(
                golden_family(case.ty),
                Some(family),
                "a {} case in quant_{family}.json",
                case.ty
            );
            modes.entry(case.ty).or_default().insert(case.imatrix);
        }
    }
    for ty in quantized_types() {
        let family = golden_family(ty).unwrap_or_else(|| {
            panic!("{ty} can be quantized but has no golden family (scripts/gen-golden-quant.py)")
        });
        let want: BTreeSet<bool> = match ty.quantizer() {
            Quantizer::Weighted => [false, true].into(),
            Quantizer::NeedsImatrix => [true].into(),
            Quantizer::Plain => [false].into(),
            Quantizer::None => unreachable!(),
        };
        assert_eq!(
            modes.get(&ty),
            Some(&want),
            "{ty}: golden cases with imatrix in quant_{family}.json"
        );
    }
}

/// A larger IQ4/TQ fixture from `scripts/gen-golden-quant.py --family iq4 --sweep PATH`,
/// named by `SMELT_IQ4_SWEEP`.
#[test]
#[ignore = "needs SMELT_IQ4_SWEEP, a fixture made by scripts/gen-golden-quant.py --sweep"]
fn sweep() {
    let path = std::env::var("SMELT_IQ4_SWEEP").expect("set SMELT_IQ4_SWEEP to a sweep fixture");
    check_file(&path, &family_types("iq4"));
}

/// Writes every input of the `iq` golden quantized to `SMELT_IQ_DUMP_TYPE` (with the input's
/// imatrix when `SMELT_IQ_DUMP_IMATRIX` is set) to `SMELT_IQ_DUMP.<input>`, for comparing with
/// other quantizers.
#[test]
#[ignore = "a tool, not a check: writes quantized goldens to SMELT_IQ_DUMP for other quantizers"]
fn dump() {
    let path = std::env::var("SMELT_IQ_DUMP").expect("SMELT_IQ_DUMP");
    let ty: GgmlType = std::env::var("SMELT_IQ_DUMP_TYPE")
        .unwrap()
        .parse()
        .unwrap();
    let with_im = std::env::var("SMELT_IQ_DUMP_IMATRIX").is_ok();
    for (name, input) in &load(&family_path("iq")).inputs {
        let n = input.n_per_row;
        let mut got = vec![0u8; input.data.len() / n * row_bytes(ty, n).unwrap()];
        let imatrix = input.imatrix.as_deref().filter(|_| with_im);
        quantize_rows(ty, &input.data, n, &mut got, imatrix).unwrap();
        std::fs::write(format!("{path}.{name}"), got).unwrap();
    }
}
