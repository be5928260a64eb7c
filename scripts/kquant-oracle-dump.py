#!/usr/bin/env python3
"""Raw libgguf dumps for the ignored Rust test `quant::kquants::slow::oracle_dump`.

Usage: .venv/bin/python scripts/kquant-oracle-dump.py DIR [mixed|extreme]
       SMELT_KQ_ORACLE=DIR cargo test --lib quant::kquants::slow::oracle_dump -- --ignored --nocapture
Writes DIR/x.f32, DIR/w.f32, DIR/meta.txt ("rows cols") and DIR/<TYPE>_<plain|imatrix>.bin.
"""
import os
import sys

import numpy as np
import libgguf


def mixed(rng):
    cols = 1024
    parts = [
        rng.standard_normal((512, cols)) * rng.uniform(0.001, 0.1, (512, 1)),
        rng.standard_t(2, (512, cols)) * 0.02,
        rng.laplace(0, 0.03, (256, cols)) + rng.uniform(-0.05, 0.05, (256, 1)),
        rng.integers(-16, 16, (256, cols)) * rng.choice([0.125, 0.0625, 1.0], (256, 1)),
        rng.uniform(0, 1, (256, cols)) * rng.choice([1, -1], (256, 1)),
    ]
    s = rng.standard_normal((256, cols))
    s[rng.uniform(size=s.shape) < 0.7] = 0
    parts.append(s * np.exp(rng.uniform(-30, 10, (256, 1))))
    x = np.concatenate(parts)
    w = rng.uniform(0, 2, cols) ** 4 + 1e-6
    return x, w


def extreme(rng):
    rows, cols = 1024, 512
    x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-44, 37, (rows, 1))
    x[::17, 3] = 3e38
    x[5::19] = rng.choice([-1.0, 0.0, 0.5, 2.0], (len(x[5::19]), cols))
    x[7::23] = 1e-41
    w = 10.0 ** rng.uniform(-6, 6, cols)
    return x, w


def main():
    d = sys.argv[1]
    kind = sys.argv[2] if len(sys.argv) > 2 else "mixed"
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(1 if kind == "mixed" else 5)
    x, w = (mixed if kind == "mixed" else extreme)(rng)
    x = x.astype(np.float32)
    w = w.astype(np.float32)
    x.tofile(f"{d}/x.f32")
    w.tofile(f"{d}/w.f32")
    with open(f"{d}/meta.txt", "w") as f:
        f.write(f"{x.shape[0]} {x.shape[1]}\n")
    for t in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]:
        qt = getattr(libgguf.GGMLQuantizationType, t)
        if t.endswith("_K"):
            libgguf.quantize_rows(x, qt).tofile(f"{d}/{t}_plain.bin")
        libgguf.quantize_rows(x, qt, imatrix=w).tofile(f"{d}/{t}_imatrix.bin")
    print(f"wrote {d} ({x.shape[0]}x{x.shape[1]}, {kind})")


if __name__ == "__main__":
    main()
