#!/usr/bin/env python3
"""Golden digests for smelt's quantizers: one schema, one file per family.

Quantizes deterministic seeded f32 rows with libgguf (a port of ggml's quantizers,
byte-identical to ggml) and writes fixtures/golden/quant_<family>.json, read by the Rust tests
in src/quant/golden.rs. Families (the file each type's golden lives in):

  kquants  Q2_K..Q6_K with and without importance weights (ggml's quantize_row_q*_K_ref and
           quantize_row_q*_K_impl); Q4_0, Q4_1, Q5_0, Q5_1 with weights (the _impl paths) and
           without; Q8_0 without (its quantizer ignores weights). One row of 256 or 512 values
           per input, except matrix_8x512 (8 rows of 512). The ref paths of Q4_0..Q8_0 are
           checked here to agree with the PyPI `gguf` package's numpy quantizers.
  iq       IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M, with a deterministic positive
           imatrix, and without one for the types ggml quantizes without (IQ3_XXS, IQ3_S,
           IQ2_S, IQ1_M). Random rows plus edge rows (zeros, constants, single outliers, tiny
           and huge magnitudes, all-zero sub-blocks between non-zero ones, mixed signs).
           Non-finite inputs are left out: ggml aborts on some of them, and the Rust tests only
           require that smelt does not panic there.
  iq4      IQ4_NL, IQ4_XS with and without an imatrix, TQ1_0, TQ2_0 without: random rows, edge
           rows, and a "special256" set with NaN, ±inf, subnormal and huge values. TQ1_0/TQ2_0
           are also checked against gguf.quants.quantize (the gguf package's own port) on the
           finite inputs.

IQ1_M is the exception to libgguf: libgguf 0.2.2 ports an older IQ1_M search that differs from
the llama.cpp we compare against on a few rows, so its IQ1_M digests come from ggml itself,
through scripts/ggml-quantize-rows.c (see there how to build it), given as --ggml-helper.
Without the helper the committed IQ1_M cases are kept as they are (and --check compares the
rest).

The quantized bytes are not stored, only digests (the inputs are). Schema of every file:
  generator, oracle, seed,
  inputs: {name: {n_per_row, rows, data (base64 f32 LE, rows x n_per_row),
                  imatrix (base64 f32 LE, one per column; absent when the input has none)}}
  cases:  [{input, type, imatrix (bool: quantized with the input's imatrix), nbytes,
            sha256 (of all rows), rows (first 12 hex digits of each row's SHA-256)}]

Usage: scripts/gen-golden-quant.py [--family kquants|iq|iq4|all] [--check] [--ggml-helper PATH]
  (run with the venv from scripts/setup-python; --family defaults to all)
  --check  regenerate in memory and exit 1 if a committed file differs.
  --sweep PATH [--rows N] [--seed S]  (family iq4) write a larger fixture with N extra random
           rows per width (not committed); check it with
           SMELT_IQ4_SWEEP=PATH cargo test --lib quant::golden::sweep -- --ignored
"""

import argparse
import base64
from dataclasses import dataclass
import hashlib
from importlib import metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import libgguf
from libgguf import GGMLQuantizationType as T

import gguf

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "fixtures" / "golden"

# Types whose oracle is ggml itself (--ggml-helper), not libgguf.
GGML_ORACLE_TYPES = (T.IQ1_M,)


def out_path(family: str) -> Path:
    return GOLDEN / f"quant_{family}.json"


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


# --- Shared row builders ----------------------------------------------------------------------


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


# --- kquants: the K-quants and the legacy types -----------------------------------------------

KQUANTS_SEED = 20240611
K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LEGACY_IMATRIX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1"]
LEGACY_TYPES = LEGACY_IMATRIX_TYPES + ["Q8_0"]


def kquants_rows(seed: int) -> dict:
    rng = np.random.default_rng(seed)
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


def kquants_weights(inputs: dict) -> dict:
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


def kquants_inputs(seed: int) -> dict[str, dict]:
    """Each input with the importance weights its cases use (one weights table per width, a
    skewed one for three of the 256-wide inputs), as the input's own imatrix."""
    rows = kquants_rows(seed)
    weights = kquants_weights(rows)
    inputs = {}
    for name, row in rows.items():
        n = ROWS.get(name, len(row))
        inputs[name] = {"data": row.reshape(-1, n), "imatrix": weights[weights_for(name, n)]}
    return inputs


def kquants_cases() -> list:
    cases = []
    for ty in K_TYPES + LEGACY_TYPES:
        modes = [False, True] if ty in K_TYPES + LEGACY_IMATRIX_TYPES else [False]
        cases += [(getattr(T, ty), use_w) for use_w in modes]
    return cases


def kquants_gguf_check(name: str, qtype, with_im: bool) -> bool:
    # the ref paths of the legacy types: gguf's numpy quantizers must agree with libgguf
    return qtype.name in LEGACY_TYPES and not with_im


# --- iq: IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M ---------------------------------

IQ_SEED = 20250301
IQ_TYPES = (T.IQ3_XXS, T.IQ3_S, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_S, T.IQ1_M)


def iq_edge_rows(n: int, rng: np.random.Generator) -> list[np.ndarray]:
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


def iq_special_rows(rng: np.random.Generator) -> dict:
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


def iq_inputs(seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, n, count in (("rows256", 256, 8), ("rows512", 512, 4)):
        data = np.stack(random_rows(n, count, rng) + iq_edge_rows(n, rng)).astype(np.float32)
        imatrix = np.exp(rng.normal(0, 2, n)).astype(np.float32)
        imatrix[3] = 1e-9
        inputs[name] = {"data": data, "imatrix": imatrix}
    inputs["special256"] = iq_special_rows(np.random.default_rng(seed + 1))
    return inputs


def iq_cases() -> list:
    cases = []
    for qtype in IQ_TYPES:
        modes = (True,) if libgguf.quantize_requires_imatrix(qtype) else (False, True)
        cases += [(qtype, with_im) for with_im in modes]
    return cases


# --- iq4: IQ4_NL, IQ4_XS, TQ1_0, TQ2_0 --------------------------------------------------------

IQ4_SEED = 20240607


def iq4_edge_rows(n: int, rng: np.random.Generator) -> list[np.ndarray]:
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


def iq4_inputs(seed: int, extra: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, n, count in (("rows512", 512, 12 + extra), ("rows256", 256, 8 + extra)):
        rows = random_rows(n, count, rng) + iq4_edge_rows(n, rng)
        data = np.stack(rows).astype(np.float32)
        # positive importance weights: log-normal spread over ~4 decades, one tiny column
        imatrix = np.exp(rng.normal(0, 2, n)).astype(np.float32)
        imatrix[3] = 1e-9
        inputs[name] = {"data": data, "imatrix": imatrix}
    inputs["special256"] = iq4_special_rows(np.random.default_rng(seed + 1))
    return inputs


def iq4_special_rows(rng: np.random.Generator) -> dict:
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


IQ4_CASES = [
    (T.IQ4_NL, False),
    (T.IQ4_NL, True),
    (T.IQ4_XS, False),
    (T.IQ4_XS, True),
    (T.TQ1_0, False),
    (T.TQ2_0, False),
]


def iq4_gguf_check(name: str, qtype, with_im: bool) -> bool:
    # gguf's numpy port differs from ggml on non-finite/overflowing rows (checked against
    # llama.cpp's own libggml-base: it agrees with libgguf there), so the cross-check covers
    # the finite inputs only.
    return qtype in (T.TQ1_0, T.TQ2_0) and name != "special256"


# --- The families and the one generator -------------------------------------------------------


@dataclass
class Family:
    seed: int
    # seed -> {name: {"data": rows x n_per_row f32, "imatrix": n_per_row f32 or None}}
    inputs: Callable[[int], dict]
    # (type, with imatrix) pairs, quantized for every input, in this order
    cases: Callable[[], list]
    oracle: Callable[[], str]
    # (input name, type, with imatrix) -> also check libgguf against gguf.quants.quantize
    gguf_check: Callable[[str, object, bool], bool] = lambda name, qtype, with_im: False


def _v(pkg: str) -> str:
    return f"{pkg} {metadata.version(pkg)}"


FAMILIES = {
    "kquants": Family(
        KQUANTS_SEED,
        kquants_inputs,
        kquants_cases,
        lambda: f"{_v('libgguf')}; Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 without imatrix also {_v('gguf')}",
        kquants_gguf_check,
    ),
    "iq": Family(
        IQ_SEED,
        iq_inputs,
        iq_cases,
        lambda: f"{_v('libgguf')}; IQ1_M: ggml (llama-cpp-python 0.3.36 sdist)",
    ),
    "iq4": Family(
        IQ4_SEED,
        iq4_inputs,
        lambda: IQ4_CASES,
        lambda: f"{_v('libgguf')}; TQ1_0, TQ2_0 on the finite inputs also {_v('gguf')}",
        iq4_gguf_check,
    ),
}


def ggml_quantize(helper: str, data: np.ndarray, qtype, imatrix) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        x, im, out = Path(tmp) / "x.f32", Path(tmp) / "im.f32", Path(tmp) / "out.bin"
        data.astype("<f4").tofile(x)
        if imatrix is not None:
            imatrix.astype("<f4").tofile(im)
        subprocess.run([helper, str(int(qtype)), str(data.shape[0]), str(data.shape[1]), str(x),
                        str(im) if imatrix is not None else "-", str(out)], check=True)
        return np.fromfile(out, dtype=np.uint8).reshape(data.shape[0], -1)


def committed_cases(family: str, qtype) -> dict:
    path = out_path(family)
    if not path.exists():
        return {}
    return {(c["input"], c["imatrix"]): c for c in json.loads(path.read_text())["cases"]
            if c["type"] == qtype.name}


def generate(family: str, helper: str | None = None, seed: int | None = None,
             inputs: dict | None = None) -> str:
    fam = FAMILIES[family]
    seed = fam.seed if seed is None else seed
    inputs = fam.inputs(seed) if inputs is None else inputs
    planned = [qtype for qtype, _ in fam.cases()]
    kept = {} if helper else {q: committed_cases(family, q) for q in GGML_ORACLE_TYPES if q in planned}
    doc_inputs = {}
    cases = []
    for name, inp in inputs.items():
        data, imatrix = inp["data"], inp["imatrix"]
        doc_inputs[name] = {
            "n_per_row": int(data.shape[1]),
            "rows": int(data.shape[0]),
            "data": b64(data),
        }
        if imatrix is not None:
            doc_inputs[name]["imatrix"] = b64(imatrix)
        for qtype, with_im in fam.cases():
            im = imatrix if with_im else None
            if with_im and imatrix is None:
                raise SystemExit(f"{family}: {qtype.name} wants an imatrix, input {name} has none")
            if qtype in GGML_ORACLE_TYPES and helper is None:
                if (name, with_im) in kept[qtype]:
                    cases.append(kept[qtype][(name, with_im)])
                continue
            if qtype in GGML_ORACLE_TYPES:
                out = ggml_quantize(helper, data, qtype, im)
            else:
                out = libgguf.quantize_rows(data, qtype, im)
            out = np.ascontiguousarray(out)
            raw = out.tobytes()
            assert len(raw) == data.shape[0] * libgguf.row_size(qtype, data.shape[1]), (qtype, len(raw))
            if fam.gguf_check(name, qtype, with_im):
                with np.errstate(all="ignore"):
                    ref = gguf.quants.quantize(data, gguf.GGMLQuantizationType[qtype.name])
                if np.ascontiguousarray(ref).tobytes() != raw:
                    raise SystemExit(f"libgguf and gguf disagree on {qtype.name} for {name}")
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
        "generator": f"scripts/gen-golden-quant.py --family {family}",
        "oracle": fam.oracle(),
        "seed": seed,
        "inputs": doc_inputs,
        "cases": cases,
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=[*FAMILIES, "all"], default="all",
                    help="the family to write or check (default: all)")
    ap.add_argument("--check", action="store_true", help="fail if a committed file differs")
    ap.add_argument("--ggml-helper", metavar="PATH", help="built scripts/ggml-quantize-rows.c (IQ1_M)")
    ap.add_argument("--sweep", metavar="PATH",
                    help="(iq4) write a larger uncommitted fixture there instead, for the ignored "
                         "quant::golden::sweep test")
    ap.add_argument("--rows", type=int, default=2000, help="extra random rows per width in --sweep")
    ap.add_argument("--seed", type=int, default=1, help="seed for --sweep")
    args = ap.parse_args()
    if args.sweep:
        if args.family not in ("iq4", "all") or args.check:
            ap.error("--sweep is for --family iq4, without --check")
        text = generate("iq4", args.ggml_helper, args.seed, iq4_inputs(args.seed, args.rows))
        Path(args.sweep).write_text(text)
        print(f"wrote {args.sweep} ({len(text)} bytes)")
        return 0
    families = list(FAMILIES) if args.family == "all" else [args.family]
    stale = 0
    for family in families:
        out = out_path(family)
        text = generate(family, args.ggml_helper)
        if args.check:
            if not out.exists() or out.read_text() != text:
                print(f"{out.relative_to(ROOT)} is stale; rerun {Path(__file__).name} --family {family}",
                      file=sys.stderr)
                stale += 1
            else:
                print(f"{out.relative_to(ROOT)} is up to date")
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        n_cases = len(json.loads(text)["cases"])
        print(f"wrote {out.relative_to(ROOT)} ({len(text)} bytes, {n_cases} cases)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
