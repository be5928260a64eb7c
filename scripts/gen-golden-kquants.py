#!/usr/bin/env python3
"""Golden bytes for the K-quant and imatrix legacy quantizers.

Runs libgguf (a byte-exact port of ggml's quantizers) over deterministic seeded f32 rows and
writes fixtures/golden/quant_kquants.json, read by the Rust tests in src/quant/kquants.rs.

Each input is one row (256 or 512 values), except matrix_8x512 (8 rows of 512). Cases:
  Q2_K..Q6_K without weights (ggml's quantize_row_q*_K_ref) and with importance weights
  (quantize_row_q*_K_impl); Q4_0, Q4_1, Q5_0, Q5_1 with importance weights (the _impl paths);
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 without weights (the _ref paths), whose oracle is the PyPI `gguf`
  package's numpy quantizers, checked here to agree with libgguf.

Usage: gen-golden-kquants.py            # (re)write the fixture
       gen-golden-kquants.py --check    # exit 1 when the committed fixture is stale
Run it with the oracle venv: .venv/bin/python (see scripts/setup-python).
"""

import base64
import hashlib
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import libgguf
from gguf import GGMLQuantizationType as GT
from gguf.quants import quantize as gguf_quantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "golden" / "quant_kquants.json"

K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LEGACY_IMATRIX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1"]
LEGACY_TYPES = LEGACY_IMATRIX_TYPES + ["Q8_0"]


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def make_inputs() -> dict:
    rng = np.random.default_rng(20240611)
    f = np.float32
    x = {}
    x["normal_256"] = rng.standard_normal(256).astype(f)
    x["normal_512"] = (rng.standard_normal(512) * 0.02).astype(f)
    x["weights_like_512"] = (rng.standard_normal(512) * 0.015 + 0.001).astype(f)
    x["laplace_256"] = rng.laplace(0.0, 0.05, 256).astype(f)
    x["student_t_512"] = (rng.standard_t(3, 512) * 0.1).astype(f)
    x["uniform_pos_256"] = rng.uniform(0.5, 2.0, 256).astype(f)
    x["uniform_neg_256"] = rng.uniform(-3.0, -0.25, 256).astype(f)
    x["mixed_sign_256"] = (rng.uniform(0.0, 1.0, 256) * np.where(np.arange(256) % 2 == 0, 1, -1)).astype(f)
    x["zeros_256"] = np.zeros(256, dtype=f)
    x["constant_pos_256"] = np.full(256, 0.75, dtype=f)
    x["constant_neg_256"] = np.full(256, -1.25, dtype=f)
    o = (rng.standard_normal(256) * 0.01).astype(f)
    o[77] = 8.0
    x["one_outlier_256"] = o
    o = (rng.standard_normal(512) * 0.01).astype(f)
    o[300] = -50.0
    x["neg_outlier_512"] = o
    x["tiny_1e-30_256"] = (rng.standard_normal(256) * 1e-30).astype(f)
    x["tiny_1e-20_256"] = (rng.standard_normal(256) * 1e-20).astype(f)
    x["large_1e4_256"] = (rng.standard_normal(256) * 1e4).astype(f)
    s = np.zeros(256, dtype=f)
    idx = rng.choice(256, 20, replace=False)
    s[idx] = rng.standard_normal(20).astype(f)
    x["sparse_256"] = s
    # half the super-block zero, half normal: exercises all-zero sub-blocks next to live ones
    h = rng.standard_normal(512).astype(f)
    h[:128] = 0
    h[384:] = 0
    x["half_zero_512"] = h
    # values on a coarse grid (many exact ties for the rounding)
    x["grid_256"] = (rng.integers(-8, 8, 256) * 0.125).astype(f)
    x["ramp_256"] = np.linspace(-1.0, 1.0, 256, dtype=f)
    # a small "weight matrix": 8 rows of 512 with per-row scale and offset, quantized as rows
    m = rng.standard_normal((8, 512)) * rng.uniform(0.005, 0.05, (8, 1)) + rng.uniform(-0.01, 0.01, (8, 1))
    x["matrix_8x512"] = m.astype(f).reshape(-1)
    return x


# inputs quantized as several rows (name -> n_per_row); the others are one row each
ROWS = {"matrix_8x512": 512}


def make_weights(inputs: dict) -> dict:
    rng = np.random.default_rng(7)
    f = np.float32
    w = {}
    for n in sorted({ROWS.get(k, len(v)) for k, v in inputs.items()}):
        w[f"imatrix_{n}"] = (rng.uniform(0.05, 3.0, n) ** 2).astype(f)
    # a skewed one: a few columns dominate
    sk = rng.uniform(0.001, 0.01, 256).astype(f)
    sk[rng.choice(256, 8, replace=False)] = 50.0
    w["imatrix_skewed_256"] = sk
    return w


def weights_for(name: str, n: int) -> str:
    if name in ("normal_256", "one_outlier_256", "grid_256"):
        return "imatrix_skewed_256"
    return f"imatrix_{n}"


def build() -> str:
    inputs = make_inputs()
    weights = make_weights(inputs)
    cases = []
    for name, row in inputs.items():
        n = ROWS.get(name, len(row))
        rows = row.reshape(-1, n)
        for ty in K_TYPES + LEGACY_TYPES:
            modes = [False, True] if ty in K_TYPES + LEGACY_IMATRIX_TYPES else [False]
            if ty in LEGACY_TYPES and ty not in LEGACY_IMATRIX_TYPES:
                modes = [False]
            for use_w in modes:
                wname = weights_for(name, n) if use_w else None
                im = weights[wname] if use_w else None
                qt = getattr(libgguf.GGMLQuantizationType, ty)
                out = libgguf.quantize_rows(rows, qt, imatrix=im)
                data = bytes(np.ascontiguousarray(out).tobytes())
                if ty in LEGACY_TYPES and not use_w:
                    ref = bytes(np.ascontiguousarray(gguf_quantize(rows, getattr(GT, ty))).tobytes())
                    assert ref == data, f"gguf and libgguf disagree on {ty} {name}"
                assert len(data) == rows.shape[0] * libgguf.row_size(qt, n), (ty, len(data))
                cases.append(
                    {
                        "type": ty,
                        "imatrix": wname,
                        "input": name,
                        "n_per_row": n,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "head_hex": data[:16].hex(),
                        "expected_b64": base64.b64encode(data).decode(),
                    }
                )
    doc = {
        "generator": "scripts/gen-golden-kquants.py",
        "oracle": "libgguf " + version("libgguf"),
        "inputs": {k: b64(v) for k, v in inputs.items()},
        "weights": {k: b64(v) for k, v in weights.items()},
        "cases": cases,
    }
    return json.dumps(doc, indent=1) + "\n"


def main() -> int:
    text = build()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: rerun scripts/gen-golden-kquants.py", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    n_cases = text.count('"sha256"')
    print(f"wrote {OUT} ({len(text)} bytes, {n_cases} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
