//! Byte-exact checks of the IQ4_NL, IQ4_XS, TQ1_0 and TQ2_0 quantizers against
//! `fixtures/golden/quant_iq4.json` (made by `scripts/gen-golden-iq4.py` from libgguf, a
//! byte-identical port of ggml's quantizers).

use super::golden::{b64_decode, f32s, hex};
use super::{iq4, row_bytes, ternary};
use crate::gguf::GgmlType;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

struct Input {
    n_per_row: usize,
    data: Vec<f32>,
    imatrix: Vec<f32>,
}

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/golden/quant_iq4.json"
);

fn load(path: &str) -> (BTreeMap<String, Input>, Vec<Value>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut inputs = BTreeMap::new();
    for (name, v) in doc["inputs"].as_object().unwrap() {
        let n_per_row = v["n_per_row"].as_u64().unwrap() as usize;
        let rows = v["rows"].as_u64().unwrap() as usize;
        let data = f32s(v["data"].as_str().unwrap());
        let imatrix = f32s(v["imatrix"].as_str().unwrap());
        assert_eq!(data.len(), rows * n_per_row, "{name}");
        assert_eq!(imatrix.len(), n_per_row, "{name}");
        inputs.insert(
            name.clone(),
            Input {
                n_per_row,
                data,
                imatrix,
            },
        );
    }
    (inputs, doc["cases"].as_array().unwrap().clone())
}

/// Quantizes every case of the given types and fails listing each mismatching case with its
/// first differing block (expected and actual bytes, and its input values).
fn check(path: &str, types: &[GgmlType]) {
    let (inputs, cases) = load(path);
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let ty: GgmlType = case["type"].as_str().unwrap().parse().unwrap();
        if !types.contains(&ty) {
            continue;
        }
        let name = case["input"].as_str().unwrap();
        let with_im = case["imatrix"].as_bool().unwrap();
        let input = &inputs[name];
        let n = input.n_per_row;
        let rb = row_bytes(ty, n).unwrap();
        let mut got = vec![0u8; input.data.len() / n * rb];
        for (src, dst) in input.data.chunks_exact(n).zip(got.chunks_exact_mut(rb)) {
            let im = with_im.then_some(&input.imatrix[..]);
            match ty {
                GgmlType::IQ4_NL | GgmlType::IQ4_XS => iq4::quantize_row(ty, src, dst, im),
                _ => ternary::quantize_row(ty, src, dst),
            }
            .unwrap();
        }
        checked += 1;
        let label = format!("{ty} imatrix={with_im} input={name}");
        let expected = b64_decode(case["expected"].as_str().unwrap());
        assert_eq!(expected.len(), case["nbytes"].as_u64().unwrap() as usize);
        assert_eq!(
            hex(&Sha256::digest(&expected)),
            case["sha256"].as_str().unwrap(),
            "{label}: fixture corrupt"
        );
        assert_eq!(hex(&expected[..16]), case["first16"].as_str().unwrap());
        if hex(&Sha256::digest(&got)) == case["sha256"].as_str().unwrap() {
            continue;
        }
        let bs = ty.type_size();
        let nblocks = got.len() / bs;
        let bad: Vec<usize> = (0..nblocks)
            .filter(|&i| got[i * bs..(i + 1) * bs] != expected[i * bs..(i + 1) * bs])
            .collect();
        let b = bad[0];
        let per_row = rb / bs;
        let (row, col) = (b / per_row, (b % per_row) * ty.block_size());
        let x0 = row * n + col;
        failures.push(format!(
            "{label}: {} of {nblocks} blocks differ; first is block {b} (row {row}, values {col}..{})\n  expected {}\n  actual   {}\n  input    {:?}",
            bad.len(),
            col + ty.block_size(),
            hex(&expected[b * bs..(b + 1) * bs]),
            hex(&got[b * bs..(b + 1) * bs]),
            &input.data[x0..x0 + ty.block_size()],
        ));
    }
    assert!(checked > 0, "no golden cases for {types:?}");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn golden_iq4_nl() {
    check(GOLDEN, &[GgmlType::IQ4_NL]);
}

#[test]
fn golden_iq4_xs() {
    check(GOLDEN, &[GgmlType::IQ4_XS]);
}

#[test]
fn golden_tq1_0() {
    check(GOLDEN, &[GgmlType::TQ1_0]);
}

#[test]
fn golden_tq2_0() {
    check(GOLDEN, &[GgmlType::TQ2_0]);
}

/// A larger fixture from `scripts/gen-golden-iq4.py --sweep PATH`, named by `SMELT_IQ4_SWEEP`.
#[test]
#[ignore = "needs SMELT_IQ4_SWEEP, a fixture made by scripts/gen-golden-iq4.py --sweep"]
fn sweep() {
    let path = std::env::var("SMELT_IQ4_SWEEP").expect("set SMELT_IQ4_SWEEP to a sweep fixture");
    use GgmlType::*;
    check(&path, &[IQ4_NL, IQ4_XS, TQ1_0, TQ2_0]);
}
