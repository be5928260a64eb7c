//! Dequantization goldens: every type of the types table, bit for bit against gguf-py.
use crate::gguf::GgmlType;
use crate::quant;
use sha2::{Digest, Sha256};

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn sha256_hex(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn load_golden() -> Vec<serde_json::Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden/dequant.json");
    let text = std::fs::read_to_string(path).expect("read fixtures/golden/dequant.json");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["types"].as_array().unwrap().clone()
}

/// Bit-exact against `gguf.quants.dequantize` (gguf 0.19.0), or, for the types gguf-py
/// cannot dequantize (Q8_1, Q8_K, F64, I8..I64; `oracle: "ggml-definition"`), against
/// numpy evaluating ggml's definition. Regenerate with scripts/gen-golden-dequant.py.
#[test]
fn golden_bit_exact_for_every_type() {
    let golden = load_golden();
    let mut failures = Vec::new();
    for t in &golden {
        let name = t["name"].as_str().unwrap();
        let ty: GgmlType = name.parse().unwrap();
        let src = hex_decode(t["hex"].as_str().unwrap());
        let mut dst = vec![0f32; t["n_values"].as_u64().unwrap() as usize];
        if let Err(e) = quant::dequantize_row(ty, &src, &mut dst) {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        let want: Vec<String> = t["first_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect();
        let got: Vec<String> = dst[..want.len()]
            .iter()
            .map(|v| format!("{:08x}", v.to_bits()))
            .collect();
        if got != want {
            failures.push(format!(
                "{name}: first values {:?}, want {:?} (bits {got:?} vs {want:?})",
                &dst[..want.len()],
                t["first"]
            ));
        } else if sha256_hex(&dst) != t["sha256"].as_str().unwrap() {
            failures.push(format!(
                "{name}: SHA-256 of the output differs (samples match)"
            ));
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));

    // Every type smelt knows must have a golden entry.
    for ty in GgmlType::ALL {
        assert!(
            golden.iter().any(|t| t["name"] == ty.name()),
            "{ty} has no golden entry"
        );
    }
    // ...and gguf-py must be the oracle wherever it can dequantize the type.
    for t in &golden {
        let by_hand = ["Q8_1", "Q8_K", "F64", "I8", "I16", "I32", "I64"];
        let name = t["name"].as_str().unwrap();
        let want = if by_hand.contains(&name) {
            "ggml-definition"
        } else {
            "gguf-py"
        };
        assert_eq!(t["oracle"], want, "{name}");
    }
}

/// Q8_1 and Q8_K are not in gguf-py: check a block worked out by hand from ggml's
/// definition (x = d * q; the sums are ignored).
#[test]
fn q8_1_and_q8_k_by_hand() {
    // Q8_1: d = 0.5 (f16 0x3800), s = garbage, q = 0, 1, -1, 127, -128, then zeros.
    let mut b = vec![0x00, 0x38, 0xAB, 0xCD];
    let mut q = [0i8; 32];
    q[..5].copy_from_slice(&[0, 1, -1, 127, -128]);
    b.extend(q.iter().map(|&v| v as u8));
    let mut y = [9f32; 32];
    quant::dequantize_row(GgmlType::Q8_1, &b, &mut y).unwrap();
    assert_eq!(&y[..5], &[0.0, 0.5, -0.5, 63.5, -64.0]);
    assert!(y[5..].iter().all(|&v| v == 0.0));

    // Q8_K: d = -0.25 (f32), q[i] = i - 128, bsums garbage.
    let mut b = (-0.25f32).to_le_bytes().to_vec();
    b.extend((0..256).map(|i: i32| (i - 128) as i8 as u8));
    b.extend([0x7F; 32]);
    let mut y = vec![0f32; 256];
    quant::dequantize_row(GgmlType::Q8_K, &b, &mut y).unwrap();
    for (i, v) in y.iter().enumerate() {
        assert_eq!(*v, (i as f32 - 128.0) * -0.25, "Q8_K value {i}");
    }
}

/// Arbitrary bytes (random, all ones, all zeros, alternating) and arbitrary lengths never
/// panic: whole blocks dequantize, anything else is an error.
#[test]
fn arbitrary_input_never_panics() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for &ty in GgmlType::ALL {
        let (block, size) = (ty.block_size(), ty.type_size());
        for n_blocks in [0usize, 1, 2, 5] {
            for pattern in 0..4 {
                let src: Vec<u8> = (0..n_blocks * size)
                    .map(|i| match pattern {
                        0 => next() as u8,
                        1 => 0xFF,
                        2 => 0x00,
                        _ => [0x55, 0xAA, 0x80, 0x7F][i % 4],
                    })
                    .collect();
                let mut dst = vec![0f32; n_blocks * block];
                quant::dequantize_row(ty, &src, &mut dst).unwrap();
            }
        }
        // Mismatched sizes are rejected, not indexed out of bounds.
        let src = vec![0u8; size * 2 + 1];
        let mut dst = vec![0f32; block * 2];
        assert!(quant::dequantize_row(ty, &src, &mut dst).is_err(), "{ty}");
        if block > 1 {
            let src = vec![0u8; size];
            let mut dst = vec![0f32; block + 1];
            assert!(quant::dequantize_row(ty, &src, &mut dst).is_err(), "{ty}");
        }
    }
}
