#!/usr/bin/env python3
"""Golden fixtures for the IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M quantizers.

Quantizes deterministic seeded f32 rows (random rows plus edge rows: zeros, constants, single
outliers, tiny and huge magnitudes, all-zero sub-blocks between non-zero ones, mixed signs) with
libgguf (a port of ggml's quantizers, byte-identical to ggml), with a deterministic positive
imatrix, and without one for the types ggml quantizes without (IQ3_XXS, IQ3_S, IQ2_S, IQ1_M).
Non-finite inputs are left out: ggml aborts on some of them, and the Rust tests only require
that smelt does not panic there.

The quantized bytes are not stored, only digests (the inputs are): per case the SHA-256 of all
rows and the first 12 hex digits of each row's SHA-256, so a mismatch names its row.

IQ1_M is the exception to libgguf: libgguf 0.2.2 ports an older IQ1_M search that differs from
the llama.cpp we compare against on a few rows, so its IQ1_M digests come from ggml itself,
through scripts/ggml-quantize-rows.c (see there how to build it), given as --ggml-helper.
Without the helper the committed IQ1_M cases are kept as they are (and --check compares the
rest).

Writes fixtures/golden/quant_iq.json:
  inputs: {name: {n_per_row, rows, data (base64 f32 LE), imatrix (base64 f32 LE, one per column)}}
  cases:  [{input, type, imatrix (bool), nbytes, sha256, rows (short row digests)}]

Usage: scripts/gen-golden-iq.py [--check] [--ggml-helper PATH]   (venv from scripts/setup-python)
  --check  regenerate in memory and exit 1 if the committed file differs.
"""

import argparse
import base64
import hashlib
from importlib import metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import libgguf
from libgguf import GGMLQuantizationType as T

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "golden" / "quant_iq.json"
SEED = 20250301
TYPES = (T.IQ3_XXS, T.IQ3_S, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_S, T.IQ1_M)


def edge_rows(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    rows = [np.zeros(n), np.full(n, 0.37), np.full(n, -2.5)]  # zeros, constants
    r = np.zeros(n)
    r[n // 3] = 7.25  # single outlier among zeros
    rows.append(r)
    r = rng.normal(0, 0.02, n)
    r[5] = -40.0  # outliers in noise
    r[n - 7] = 12.0
    rows.append(r)
    rows.append(rng.normal(0, 1e-6, n))  # tiny, above every group epsilon
    rows.append(rng.normal(0, 1e-9, n))  # below IQ3_XXS/IQ2_S's 1e-8, above 1e-15
    r = rng.normal(0, 1e-3, n)
    r[: n // 2] *= 1e-16  # half tiny, half small
    rows.append(r)
    r = rng.normal(0, 1, n)
    r[32:64] = 0.0  # exactly zero sub-blocks between non-zero ones
    r[128:160] = 0.0
    rows.append(r)
    rows.append(np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * rng.uniform(0.5, 1.5, n))
    rows.append(rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], n) * 3.0)  # ternary-ish, many ties
    rows.append(rng.integers(-8, 8, n).astype(np.float64))  # small integers
    rows.append(np.abs(rng.normal(0, 1, n)))  # all positive
    rows.append(-np.abs(rng.normal(0, 1, n)))  # all negative
    scales = np.repeat(10.0 ** rng.uniform(-3, 2, n // 16), 16)  # a scale per 16 values
    rows.append(rng.normal(0, 1, n) * scales)
    return rows


def random_rows(n: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    rows = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            r = rng.normal(0, 1, n)
        elif kind == 1:
            r = rng.laplace(0, 0.05, n)
        elif kind == 2:
            r = rng.standard_t(3, n) * 0.3
        else:
            r = rng.uniform(-1, 1, n) ** 3 * 5
        rows.append(r)
    return rows


def special_rows(rng: np.random.Generator) -> dict:
    """Extreme but finite magnitudes, and an imatrix with exact zeros."""
    n = 256
    rows = [
        np.full(n, 1e-40),  # subnormal constant
        rng.normal(0, 1e-39, n),  # subnormal noise
        rng.normal(0, 1e-30, n),
        rng.normal(0, 1e12, n),  # huge: x² finite, some products of sums overflow
        np.full(n, 131008.0),  # scales overflow f16
        rng.normal(0, 3e4, n),
    ]
    data = np.stack(rows).astype(np.float32)
    imatrix = np.exp(rng.normal(0, 2, n)).astype(np.float32)
    imatrix[::17] = 0.0
    return {"data": data, "imatrix": imatrix}


def make_inputs(seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, n, count in (("rows256", 256, 8), ("rows512", 512, 4)):
        data = np.stack(random_rows(n, count, rng) + edge_rows(n, rng)).astype(np.float32)
        imatrix = np.exp(rng.normal(0, 2, n)).astype(np.float32)
        imatrix[3] = 1e-9
        inputs[name] = {"data": data, "imatrix": imatrix}
    inputs["special256"] = special_rows(np.random.default_rng(seed + 1))
    return inputs


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def ggml_quantize(helper: str, data: np.ndarray, qtype, imatrix) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        x, im, out = Path(tmp) / "x.f32", Path(tmp) / "im.f32", Path(tmp) / "out.bin"
        data.astype("<f4").tofile(x)
        if imatrix is not None:
            imatrix.astype("<f4").tofile(im)
        subprocess.run([helper, str(int(qtype)), str(data.shape[0]), str(data.shape[1]), str(x),
                        str(im) if imatrix is not None else "-", str(out)], check=True)
        return np.fromfile(out, dtype=np.uint8).reshape(data.shape[0], -1)


def committed_cases(qtype) -> dict:
    if not OUT.exists():
        return {}
    return {(c["input"], c["imatrix"]): c for c in json.loads(OUT.read_text())["cases"]
            if c["type"] == qtype.name}


def generate(seed: int = SEED, helper: str | None = None) -> str:
    kept_iq1_m = committed_cases(T.IQ1_M)
    inputs = make_inputs(seed)
    doc_inputs = {}
    cases = []
    for name, inp in inputs.items():
        data, imatrix = inp["data"], inp["imatrix"]
        doc_inputs[name] = {
            "n_per_row": int(data.shape[1]),
            "rows": int(data.shape[0]),
            "data": b64(data),
            "imatrix": b64(imatrix),
        }
        for qtype in TYPES:
            modes = (True,) if libgguf.quantize_requires_imatrix(qtype) else (False, True)
            for with_im in modes:
                if qtype == T.IQ1_M and helper is None:
                    if (name, with_im) in kept_iq1_m:
                        cases.append(kept_iq1_m[(name, with_im)])
                    continue
                if qtype == T.IQ1_M:
                    out = ggml_quantize(helper, data, qtype, imatrix if with_im else None)
                else:
                    out = libgguf.quantize_rows(data, qtype, imatrix if with_im else None)
                out = np.ascontiguousarray(out)
                raw = out.tobytes()
                cases.append(
                    {
                        "input": name,
                        "type": qtype.name,
                        "imatrix": with_im,
                        "nbytes": len(raw),
                        "sha256": hashlib.sha256(raw).hexdigest(),
                        "rows": [hashlib.sha256(r.tobytes()).hexdigest()[:12] for r in out],
                    }
                )
    doc = {
        "generator": "scripts/gen-golden-iq.py",
        "oracle": f"libgguf {metadata.version('libgguf')}; IQ1_M: ggml (llama-cpp-python 0.3.36 sdist)",
        "seed": seed,
        "inputs": doc_inputs,
        "cases": cases,
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed file differs")
    ap.add_argument("--ggml-helper", metavar="PATH", help="built scripts/ggml-quantize-rows.c (IQ1_M)")
    args = ap.parse_args()
    text = generate(helper=args.ggml_helper)
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale; rerun {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(ROOT)} is up to date")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
