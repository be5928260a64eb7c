//! Byte-exact checks of the IQ1/IQ2/IQ3 quantizers against `fixtures/golden/quant_iq.json`
//! (made by `scripts/gen-golden-iq.py` from libgguf, a byte-identical port of ggml's
//! quantizers). The fixture holds digests only: per case the SHA-256 of all rows and a short
//! digest per row.

use super::golden::{f32s, hex};
use super::{quantize_row, row_bytes};
use crate::gguf::GgmlType;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden/quant_iq.json");

struct Input {
    n_per_row: usize,
    data: Vec<f32>,
    imatrix: Vec<f32>,
}

fn load() -> (BTreeMap<String, Input>, Vec<Value>) {
    let text = std::fs::read_to_string(GOLDEN).unwrap_or_else(|e| panic!("{GOLDEN}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut inputs = BTreeMap::new();
    for (name, v) in doc["inputs"].as_object().unwrap() {
        let n_per_row = v["n_per_row"].as_u64().unwrap() as usize;
        let data = f32s(v["data"].as_str().unwrap());
        let imatrix = f32s(v["imatrix"].as_str().unwrap());
        assert_eq!(data.len(), v["rows"].as_u64().unwrap() as usize * n_per_row);
        assert_eq!(imatrix.len(), n_per_row);
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

/// Quantizes every case of `ty` through the public dispatch and lists each mismatching case
/// with its differing rows and the first row's input.
fn check(ty: GgmlType) {
    let (inputs, cases) = load();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        if case["type"].as_str().unwrap() != ty.to_string() {
            continue;
        }
        let name = case["input"].as_str().unwrap();
        let with_im = case["imatrix"].as_bool().unwrap();
        let input = &inputs[name];
        let n = input.n_per_row;
        let rb = row_bytes(ty, n).unwrap();
        let mut got = vec![0u8; input.data.len() / n * rb];
        for (src, dst) in input.data.chunks_exact(n).zip(got.chunks_exact_mut(rb)) {
            quantize_row(ty, src, dst, with_im.then_some(&input.imatrix[..])).unwrap();
        }
        checked += 1;
        assert_eq!(got.len(), case["nbytes"].as_u64().unwrap() as usize);
        if hex(&Sha256::digest(&got)) == case["sha256"].as_str().unwrap() {
            continue;
        }
        let want: Vec<&str> = case["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let bad: Vec<usize> = got
            .chunks_exact(rb)
            .enumerate()
            .filter(|(r, row)| hex(&Sha256::digest(row))[..12] != *want[*r])
            .map(|(r, _)| r)
            .collect();
        let r0 = bad[0];
        failures.push(format!(
            "{ty} imatrix={with_im} input={name}: rows {bad:?} differ; row {r0} starts {:?}",
            &input.data[r0 * n..r0 * n + 8.min(n)]
        ));
    }
    assert!(checked > 0, "no golden cases for {ty}");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn golden_iq3_xxs() {
    check(GgmlType::IQ3_XXS);
}

#[test]
fn golden_iq3_s() {
    check(GgmlType::IQ3_S);
}

#[test]
fn golden_iq2_xxs() {
    check(GgmlType::IQ2_XXS);
}

#[test]
fn golden_iq2_xs() {
    check(GgmlType::IQ2_XS);
}

#[test]
fn golden_iq2_s() {
    check(GgmlType::IQ2_S);
}

#[test]
fn golden_iq1_s() {
    check(GgmlType::IQ1_S);
}

#[test]
fn golden_iq1_m() {
    check(GgmlType::IQ1_M);
}

/// Writes every golden input quantized to `SMELT_IQ_DUMP_TYPE` (with the imatrix when
/// `SMELT_IQ_DUMP_IMATRIX` is set) to `SMELT_IQ_DUMP`, for comparing with other quantizers.
#[test]
#[ignore = "a tool, not a check: writes quantized goldens to SMELT_IQ_DUMP for other quantizers"]
fn dump() {
    let path = std::env::var("SMELT_IQ_DUMP").expect("SMELT_IQ_DUMP");
    let ty: GgmlType = std::env::var("SMELT_IQ_DUMP_TYPE")
        .unwrap()
        .parse()
        .unwrap();
    let with_im = std::env::var("SMELT_IQ_DUMP_IMATRIX").is_ok();
    let (inputs, _) = load();
    for (name, input) in &inputs {
        let n = input.n_per_row;
        let rb = row_bytes(ty, n).unwrap();
        let mut got = vec![0u8; input.data.len() / n * rb];
        for (src, dst) in input.data.chunks_exact(n).zip(got.chunks_exact_mut(rb)) {
            quantize_row(ty, src, dst, with_im.then_some(&input.imatrix[..])).unwrap();
        }
        std::fs::write(format!("{path}.{name}"), got).unwrap();
    }
}
