#!/usr/bin/env python3
"""Golden fixtures for the IQ4_NL, IQ4_XS, TQ1_0 and TQ2_0 quantizers.

Quantizes deterministic seeded f32 rows (random rows plus edge rows: zeros, constants, single
outliers, tiny values, mixed signs, rounding ties; plus a "special256" set with NaN, ±inf,
subnormal and huge values) with libgguf (a port of ggml's quantizers,
byte-identical to ggml), with and without a deterministic positive imatrix for the IQ4 types.
TQ1_0/TQ2_0 are also checked against gguf.quants.quantize (the gguf package's own port) on the
finite inputs.

Writes fixtures/golden/quant_iq4.json:
  inputs: {name: {n_per_row, rows, data (base64 f32 LE), imatrix (base64 f32 LE, one per column)}}
  cases:  [{input, type, imatrix (bool), sha256, first16 (hex), nbytes, expected (base64)}]

Usage: scripts/gen-golden-iq4.py [--check]   (run with the venv from scripts/setup-python)
  --check  regenerate in memory and exit 1 if the committed file differs.
  --sweep PATH [--rows N] [--seed S]  write a larger fixture with N extra random rows per width
           (not committed); check it with
           SMELT_IQ4_SWEEP=PATH cargo test --lib quant::golden_iq4::sweep -- --ignored
"""

import argparse
import base64
import hashlib
from importlib import metadata
import json
import sys
from pathlib import Path

import numpy as np
import libgguf
from libgguf import GGMLQuantizationType as T

import gguf

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "golden" / "quant_iq4.json"
SEED = 20240607


def edge_rows(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    rows = []
    rows.append(np.zeros(n))  # all zeros
    rows.append(np.full(n, 0.37))  # positive constant
    rows.append(np.full(n, -2.5))  # negative constant
    r = np.zeros(n)
    r[n // 3] = 7.25  # single outlier among zeros
    rows.append(r)
    r = rng.normal(0, 0.02, n)
    r[5] = -40.0  # single outlier in noise
    r[n - 7] = 12.0
    rows.append(r)
    rows.append(rng.normal(0, 1e-6, n))  # tiny but above GROUP_MAX_EPS
    rows.append(rng.normal(0, 1e-17, n))  # below GROUP_MAX_EPS
    r = rng.normal(0, 1e-3, n)
    r[: n // 2] *= 1e-16  # half tiny, half small: some blocks zero, some not
    rows.append(r)
    rows.append(np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * rng.uniform(0.5, 1.5, n))  # alternating
    rows.append(rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], n) * 3.0)  # ternary-ish, ties at 0.5
    rows.append(rng.integers(-8, 8, n).astype(np.float64))  # small integers
    r = np.abs(rng.normal(0, 1, n))  # all positive
    rows.append(r)
    rows.append(-np.abs(rng.normal(0, 1, n)))  # all negative
    # a block per pattern: every 32-block gets a different scale (exercises IQ4_XS sub-scales)
    scales = np.repeat(10.0 ** rng.uniform(-3, 2, n // 32), 32)
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


def make_inputs(extra: int, seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, n, count in (("rows512", 512, 12 + extra), ("rows256", 256, 8 + extra)):
        rows = random_rows(n, count, rng) + edge_rows(n, rng)
        data = np.stack(rows).astype(np.float32)
        # positive importance weights: log-normal spread over ~4 decades, one tiny column
        imatrix = np.exp(rng.normal(0, 2, n)).astype(np.float32)
        imatrix[3] = 1e-9
        inputs[name] = {"data": data, "imatrix": imatrix}
    inputs["special256"] = special_rows(np.random.default_rng(seed + 1))
    return inputs


def special_rows(rng: np.random.Generator) -> dict:
    """Non-finite, subnormal and huge values: ggml's behaviour there is what it is; match it."""
    n = 256
    rows = []
    for pos, val in ((3, np.nan), (40, np.inf), (100, -np.inf)):
        r = rng.normal(0, 1, n)
        r[pos] = val
        rows.append(r)
    rows.append(np.full(n, 1e-40))  # subnormal constant: 1/max overflows for TQ
    rows.append(rng.normal(0, 1e-39, n))  # subnormal noise
    rows.append(rng.normal(0, 1e30, n))  # huge
    rows.append(np.full(n, 131008.0))  # scale overflows f16
    data = np.stack(rows).astype(np.float32)
    imatrix = np.exp(rng.normal(0, 2, n)).astype(np.float32)
    return {"data": data, "imatrix": imatrix}


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def generate(extra: int = 0, seed: int = SEED) -> str:
    inputs = make_inputs(extra, seed)
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
        for qtype, with_im in (
            (T.IQ4_NL, False),
            (T.IQ4_NL, True),
            (T.IQ4_XS, False),
            (T.IQ4_XS, True),
            (T.TQ1_0, False),
            (T.TQ2_0, False),
        ):
            out = libgguf.quantize_rows(data, qtype, imatrix if with_im else None)
            raw = np.ascontiguousarray(out).tobytes()
            # gguf's numpy port differs from ggml on non-finite/overflowing rows (checked
            # against llama.cpp's own libggml-base: it agrees with libgguf there), so the
            # cross-check covers the finite inputs only.
            if qtype in (T.TQ1_0, T.TQ2_0) and name != "special256":
                with np.errstate(all="ignore"):
                    ref = gguf.quants.quantize(data, gguf.GGMLQuantizationType[qtype.name])
                if ref.tobytes() != raw:
                    raise SystemExit(f"libgguf and gguf disagree on {qtype.name} for {name}")
            cases.append(
                {
                    "input": name,
                    "type": qtype.name,
                    "imatrix": with_im,
                    "nbytes": len(raw),
                    "sha256": hashlib.sha256(raw).hexdigest(),
                    "first16": raw[:16].hex(),
                    "expected": base64.b64encode(raw).decode(),
                }
            )
    doc = {
        "generator": "scripts/gen-golden-iq4.py",
        "oracle": f"libgguf {metadata.version('libgguf')}, gguf {metadata.version('gguf')}",
        "seed": seed,
        "inputs": doc_inputs,
        "cases": cases,
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed file differs")
    ap.add_argument(
        "--sweep",
        metavar="PATH",
        help="write a larger uncommitted fixture there instead (for the ignored iq4_sweep test)",
    )
    ap.add_argument("--rows", type=int, default=2000, help="extra random rows per width in --sweep")
    ap.add_argument("--seed", type=int, default=1, help="seed for --sweep")
    args = ap.parse_args()
    if args.sweep:
        text = generate(args.rows, args.seed)
        Path(args.sweep).write_text(text)
        print(f"wrote {args.sweep} ({len(text)} bytes)")
        return 0
    text = generate()
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
