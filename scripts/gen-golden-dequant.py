#!/usr/bin/env python3
"""Golden outputs for smelt's dequantization kernels (src/quant/dequant.rs).

For every ggml type this builds a few blocks of deterministic pseudo-random input bytes
(seeded per type; f16 / f32 / E8M0 scale fields forced to finite values; edge blocks with zero
scales, all-ones and all-zero codes, subnormal scales; for the IQ types, extra blocks that
address every point of the type's grid once) and records the SHA-256 of the expected
f32 little-endian output plus its first values. The oracle is the PyPI `gguf` package's
`gguf.quants.dequantize`; for the few types it cannot dequantize (Q8_1, Q8_K, F64, I8..I64)
the expected values are computed here with numpy straight from ggml's definition
(`oracle: "ggml-definition"`).

    python scripts/gen-golden-dequant.py           # rewrite fixtures/golden/dequant.json
    python scripts/gen-golden-dequant.py --check   # exit 1 if the committed file differs

Run it with the venv from scripts/setup-python (gguf 0.19.0, numpy).
"""
import argparse
import hashlib
import importlib.metadata
import json
import sys
import zlib
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

# gguf 0.19.0 still lists Q8_1 as 40 bytes (the old f32 d + f32 s layout); ggml's block_q8_1
# is 36 (f16 d, f16 s, 32 x i8), which is what smelt's type table uses.
BLOCK_SIZES = {**{t.name: v for t, v in GGML_QUANT_SIZES.items()}, "Q8_1": (32, 36)}

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "golden" / "dequant.json"

# Offsets of the f16 scale fields in each block; these get finite values.
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q8_1": [0, 2],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0],
    "IQ4_NL": [0], "IQ4_XS": [0], "TQ1_0": [52], "TQ2_0": [64],
}
QUANT_TYPES = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL",
    "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4",
]
# Plain types: raw random bytes (NaN / Inf patterns included on purpose).
PLAIN_TYPES = ["F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"]
GGUF_PY_PLAIN = {"F32", "F16", "BF16"}
N_SAMPLES = 8


def finite_f16_bits(rng, n):
    """Random finite, normal f16 scales of either sign, magnitudes 2^-12 .. 2^2."""
    mag = np.exp2(rng.uniform(-12, 2, n)) * rng.choice([-1.0, 1.0], n)
    return mag.astype(np.float16).view(np.uint16)


def set_u16(blk, off, bits):
    blk[off] = bits & 0xFF
    blk[off + 1] = bits >> 8


def make_quant_input(name, rng, n_blocks=None, edges=True):
    block, size = BLOCK_SIZES[name]
    n_blocks = n_blocks or (12 if block == 32 else 6)
    data = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    # The last 4 blocks are edge cases: zero scale, all code bits set, all code bits clear,
    # subnormal scale (random blocks come first so the sampled values are informative).
    zero, ones, clear, subnormal = range(n_blocks - 4, n_blocks) if edges else [-1] * 4
    if edges:
        data[ones, :] = 0xFF
        data[clear, :] = 0x00
    for i, blk in enumerate(data):
        if name in F16_FIELDS:
            for off in F16_FIELDS[name]:
                bits = int(finite_f16_bits(rng, 1)[0])
                if i == zero:
                    bits = 0  # zero scale (and zero min)
                elif i == subnormal:
                    bits = int(rng.integers(1, 0x400)) | (i & 1) << 15
                set_u16(blk, off, bits)
        elif name == "IQ1_M":
            # The f16 d is spread over the top nibbles of the 4 trailing u16 scale words.
            bits = 0 if i == zero else int(finite_f16_bits(rng, 1)[0])
            if i == subnormal:
                bits = int(rng.integers(1, 0x400))
            for k in range(4):
                off = 48 + 2 * k
                word = (int(blk[off]) | int(blk[off + 1]) << 8) & 0x0FFF
                word |= ((bits >> (4 * k)) & 0xF) << 12
                set_u16(blk, off, word)
        elif name == "MXFP4":
            # E8M0 exponent; 0 and 1 give subnormal half-scales, keep 12 * scale finite.
            edge = {zero: 0, ones: 1, clear: 2, subnormal: 250}
            blk[0] = edge.get(i, int(rng.integers(100, 150)))
        elif name == "Q8_K":
            d = 0.0 if i == zero else float(np.exp2(rng.uniform(-20, 0)) * rng.choice([-1.0, 1.0]))
            blk[0:4] = np.frombuffer(np.float32(d).tobytes(), dtype=np.uint8)
        else:
            raise AssertionError(name)
    return data


# Grid sizes of the IQ types: extra "sweep" blocks address every grid point once.
GRID_POINTS = {"IQ2_XXS": 256, "IQ2_XS": 512, "IQ2_S": 1024, "IQ3_XXS": 256, "IQ3_S": 512,
               "IQ1_S": 2048, "IQ1_M": 2048}


def set_grid_index(name, blk, k, idx):
    """Make grid lookup number `k` of a block address grid point `idx` (other bits kept)."""
    if name == "IQ2_XXS":  # per 32 values: 4 index bytes, then a u32 of signs/scale
        blk[2 + 8 * (k // 4) + k % 4] = idx
    elif name == "IQ2_XS":  # u16: 9-bit index, 7-bit sign index
        set_u16(blk, 2 + 2 * k, (int(blk[3 + 2 * k]) >> 1 << 9) | idx)
    elif name == "IQ2_S":  # low byte, top 2 bits in qh
        blk[2 + k] = idx & 0xFF
        q = 66 + k // 4
        blk[q] = (int(blk[q]) & ~(3 << 2 * (k % 4)) & 0xFF) | (idx >> 8) << 2 * (k % 4)
    elif name == "IQ3_XXS":
        blk[2 + k] = idx
    elif name == "IQ3_S":  # low byte, top bit in qh
        blk[2 + k] = idx & 0xFF
        q = 66 + k // 8
        blk[q] = (int(blk[q]) & ~(1 << k % 8) & 0xFF) | (idx >> 8) << k % 8
    elif name == "IQ1_S":  # low byte, top 3 bits in the group's u16
        blk[2 + k] = idx & 0xFF
        off = 34 + 2 * (k // 4)
        word = int(blk[off]) | int(blk[off + 1]) << 8
        word = (word & ~(7 << 3 * (k % 4)) & 0xFFFF) | (idx >> 8) << 3 * (k % 4)
        set_u16(blk, off, word)
    elif name == "IQ1_M":  # low byte, top 3 bits in a nibble of qh (bit 3: delta sign)
        blk[k] = idx & 0xFF
        q = 32 + k // 2
        blk[q] = (int(blk[q]) & ~(7 << 4 * (k % 2)) & 0xFF) | (idx >> 8) << 4 * (k % 2)


def add_grid_sweep(name, data, rng):
    per_block = {"IQ3_XXS": 64, "IQ3_S": 64}.get(name, 32)
    n_sweep = GRID_POINTS[name] // per_block
    sweep = make_quant_input(name, rng, n_sweep, edges=False)
    for i, blk in enumerate(sweep):
        for k in range(per_block):
            set_grid_index(name, blk, k, i * per_block + k)
    return np.concatenate([data, sweep])


def hand_dequant(name, data):
    """Types gguf-py cannot dequantize, computed from ggml's definitions."""
    if name == "Q8_1":
        d = data[:, 0:2].copy().view(np.float16).astype(np.float32)  # s at 2..4 is unused
        q = data[:, 4:].copy().view(np.int8).astype(np.float32)
        return (q * d).ravel()
    if name == "Q8_K":
        d = data[:, 0:4].copy().view(np.float32)  # bsums at 260..292 are unused
        q = data[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * q).ravel()
    dtype = {"F64": np.float64, "I8": np.int8, "I16": np.int16, "I32": np.int32,
             "I64": np.int64}[name]
    return data.view(dtype).astype(np.float32)


def entry(name, rng):
    if name in PLAIN_TYPES:
        width = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "I16": 2, "I32": 4,
                 "I64": 8}[name]
        data = rng.integers(0, 256, size=64 * width, dtype=np.uint8)
        if name in ("F64",):
            # Keep doubles in a sane range (random exponents overflow f32 almost always).
            data = rng.normal(0, 1e3, 64).astype(np.float64).view(np.uint8)
    else:
        data = make_quant_input(name, rng)
        if name in GRID_POINTS:
            data = add_grid_sweep(name, data, rng)
    if name in QUANT_TYPES and name not in ("Q8_1", "Q8_K") or name in GGUF_PY_PLAIN:
        oracle = "gguf-py"
        out = dequantize(data.reshape(-1) if name in PLAIN_TYPES else data.reshape(1, -1), T[name])
    else:
        oracle = "ggml-definition"
        out = hand_dequant(name, data)
    out = np.ascontiguousarray(out, dtype=np.float32).reshape(-1)
    raw = out.astype("<f4").tobytes()
    bits = out.view(np.uint32)[:N_SAMPLES]
    return {
        "name": name,
        "oracle": oracle,
        "n_values": int(out.size),
        "hex": data.tobytes().hex(),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "first_bits": [f"{int(b):08x}" for b in bits],
        "first": [float(v) if np.isfinite(v) else None for v in out[:N_SAMPLES]],
    }


def generate():
    types = []
    for name in PLAIN_TYPES + QUANT_TYPES:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        types.append(entry(name, rng))
    doc = {
        "about": "Generated by scripts/gen-golden-dequant.py; do not edit.",
        "gguf_version": importlib.metadata.version("gguf"),
        "numpy_version": np.__version__,
        "types": types,
    }
    return json.dumps(doc, indent=1) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify instead of writing")
    args = ap.parse_args()
    text = generate()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} differs from what the live oracle gives; rerun without --check",
                  file=sys.stderr)
            return 1
        print(f"{OUT}: up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
