#!/usr/bin/env python3
"""Golden matrix products from ggml's CPU backend (fixtures/golden/matmul.json): how llama.cpp
multiplies quantized weights with f32 activations, which `smelt eval` reproduces (src/eval:
activations rounded to the weights' vec_dot_type; for Q4_1/Q5_1 the Q8_1 block sums, stored as
f16, that multiply each weight block's minimum).

For each type (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1): seeded f32 weights (16 rows of 256, blocks with
offsets so that the minimums matter) quantized by ggml, 8 seeded activation rows (with an
outlier column, as real hidden states have), and ggml_mul_mat's output on 1 thread, through
scripts/ggml-mul-mat.c built against the llama.cpp that scripts/build-llama-cpp makes. The
Rust test (src/eval/model.rs, `matmul_matches_ggml`) multiplies the same bytes and compares.

    scripts/gen-golden-matmul.py           # (re)write the fixture
    scripts/gen-golden-matmul.py --check   # exit 1 when ggml no longer gives the committed one

Needs the llama.cpp build (LLAMA_CPP_BUILD, default third_party/llama.cpp-build-v3) and a C
compiler; scratch goes to target/golden-matmul/.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "fixtures" / "golden" / "matmul.json"
SRC = ROOT / "third_party" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
BUILD = Path(os.environ.get("LLAMA_CPP_BUILD", ROOT / "third_party" / "llama.cpp-build-v3"))
WORK = ROOT / "target" / "golden-matmul"
TYPES = {"Q8_0": 8, "Q4_0": 2, "Q5_0": 6, "Q4_1": 3, "Q5_1": 7}
ROWS, COLS, N = 16, 256, 8


def helper() -> Path:
    exe = WORK / "ggml-mul-mat"
    src = ROOT / "scripts" / "ggml-mul-mat.c"
    if exe.exists() and exe.stat().st_mtime > src.stat().st_mtime:
        return exe
    WORK.mkdir(parents=True, exist_ok=True)
    obj = WORK / "ggml-mul-mat.o"
    subprocess.run(["cc", "-c", "-O2", str(src), f"-I{SRC / 'ggml' / 'include'}", "-o", str(obj)], check=True)
    libs = [BUILD / "ggml" / "src" / n for n in ("libggml-cpu.a", "libggml-base.a")]
    subprocess.run(["c++", str(obj), *map(str, libs), "-lm", "-lpthread", "-o", str(exe)], check=True)
    return exe


def b64(a: np.ndarray) -> str:
    return base64.b64encode(a.tobytes()).decode()


def case(exe: Path, name: str, type_id: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((ROWS, COLS)) * 0.05).astype(np.float32)
    # Blocks shifted away from zero: their minimums are large next to their spread.
    w += np.repeat(rng.uniform(-0.2, 0.2, (ROWS, COLS // 32)), 32, axis=1).astype(np.float32)
    x = (rng.standard_normal((N, COLS)) * rng.uniform(0.1, 3.0, (N, 1))).astype(np.float32)
    x[:, 17] *= 40  # an outlier channel
    wf, xf = WORK / f"{name}-w.f32", WORK / f"{name}-x.f32"
    wq, yf = WORK / f"{name}-w.bin", WORK / f"{name}-y.f32"
    w.tofile(wf)
    x.tofile(xf)
    subprocess.run([str(exe), str(type_id), str(ROWS), str(COLS), str(N), str(wf), str(xf), str(wq), str(yf)],
                   check=True)
    y = np.fromfile(yf, dtype="<f4")
    return {"type": name, "rows": ROWS, "cols": COLS, "n": N, "weights": base64.b64encode(wq.read_bytes()).decode(),
            "x": b64(x.astype("<f4")), "y": b64(y)}


def generate() -> str:
    if not (BUILD / "ggml" / "src" / "libggml-cpu.a").exists():
        sys.exit(f"no llama.cpp build in {BUILD}: run scripts/build-llama-cpp (or set LLAMA_CPP_BUILD)")
    exe = helper()
    doc = {
        "generator": "scripts/gen-golden-matmul.py",
        "oracle": "ggml_mul_mat on ggml's CPU backend (llama-cpp-python 0.3.36 sdist), 1 thread",
        "cases": [case(exe, name, tid, 100 + k) for k, (name, tid) in enumerate(TYPES.items())],
    }
    return json.dumps(doc, indent=1) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = generate()
    if args.check:
        if not GOLDEN.exists() or GOLDEN.read_text() != text:
            sys.exit(f"{GOLDEN.relative_to(ROOT)} is stale: ggml's products differ; rerun {Path(__file__).name}")
        print(f"{GOLDEN.relative_to(ROOT)} is up to date")
        return
    GOLDEN.write_text(text)
    print(f"wrote {GOLDEN.relative_to(ROOT)} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
