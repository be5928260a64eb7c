#!/usr/bin/env python3
"""A llama-architecture GGUF widened so that every matrix row divides into 256 (k-quants
apply to every tensor), computing the same function as the original.

SmolLM2-135M is 576 wide with 9 query heads of 64 over 3 key/value heads: its rows do not
divide into 256, so llama-quantize turns every k-quant into a legacy fallback there. This
script pads it to a real-shaped model with the same outputs:

- the width grows to the next multiple of 256 (576 -> 768) with zero columns and rows;
- query heads are padded per key/value group to a multiple that makes the attention width that
  multiple too (3 groups of 3 heads -> 3 groups of 4, 12 x 64 = 768); a new head's query and
  output weights are zero, so it reads nothing and writes nothing;
- RMSNorm divides by the root mean square over the whole width, which the zero columns shrink
  by sqrt(old/new): the norm weights are scaled by sqrt(old/new) and the epsilon by old/new, so
  x / sqrt(mean + eps) * g is exactly the original (the padded columns' weights are zero, so
  they stay zero in the residual stream).

Input: an F16 or F32 GGUF of a llama-architecture model (e.g. `smelt quantize SmolLM2.gguf
-o F16.gguf --type F16`). Output: the same metadata (widths, head count, epsilon and name
changed) and tensors in the input's types.

    scripts/make-padded-model.py IN.gguf OUT.gguf [--multiple 256]
"""
import argparse
import math
import sys

import numpy as np
import gguf


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--multiple", type=int, default=256)
    args = ap.parse_args()

    r = gguf.GGUFReader(args.input)
    arch = r.fields["general.architecture"].contents()
    if arch != "llama":
        sys.exit(f"{args.input}: architecture {arch!r}; this script pads llama models")

    def field(key):
        f = r.fields.get(f"{arch}.{key}")
        return None if f is None else f.contents()

    width = field("embedding_length")
    n_head = field("attention.head_count")
    n_kv = field("attention.head_count_kv") or n_head
    head_dim = field("attention.key_length") or width // n_head
    group = n_head // n_kv
    m = args.multiple
    new_width = -(-width // m) * m
    # Heads per group so that the attention width (n_kv * group * head_dim) divides into m.
    new_group = group
    while (n_kv * new_group * head_dim) % m:
        new_group += 1
    new_n_head = n_kv * new_group
    if n_head * head_dim != width:
        sys.exit(f"{args.input}: attention width {n_head * head_dim} differs from width {width}")
    new_attn = new_n_head * head_dim
    ratio = width / new_width
    print(
        f"width {width} -> {new_width}, heads {n_head} -> {new_n_head} "
        f"({n_kv} groups of {group} -> {new_group})",
        file=sys.stderr,
    )

    def pad_cols(a, cols):
        out = np.zeros((a.shape[0], cols), dtype=a.dtype)
        out[:, : a.shape[1]] = a
        return out

    def pad_rows(a, rows):
        out = np.zeros((rows,) + a.shape[1:], dtype=a.dtype)
        out[: a.shape[0]] = a
        return out

    def heads_to_rows(a):
        """(n_head*head_dim, ...) -> (new_n_head*head_dim, ...), zero heads at each group's end."""
        h = a.reshape(n_kv, group, head_dim, *a.shape[1:])
        out = np.zeros((n_kv, new_group, head_dim) + a.shape[1:], dtype=a.dtype)
        out[:, :group] = h
        return out.reshape(new_attn, *a.shape[1:])

    def widen(name, a):
        if a.ndim == 1:
            if name.endswith("norm.weight"):
                g = np.zeros(new_width, dtype=np.float32)
                g[:width] = a.astype(np.float32) * math.sqrt(ratio)
                return g.astype(a.dtype)
            sys.exit(f"{name}: a 1-D tensor this script does not know how to pad")
        if name.endswith("attn_q.weight"):
            return pad_cols(heads_to_rows(a), new_width)
        if name.endswith(("attn_k.weight", "attn_v.weight")):
            return pad_cols(a, new_width)
        if name.endswith("attn_output.weight"):
            return pad_rows(heads_to_rows(a.T).T, new_width)
        if name.endswith(("ffn_gate.weight", "ffn_up.weight")):
            return pad_cols(a, new_width)
        if name.endswith("ffn_down.weight"):
            return pad_rows(a, new_width)
        if name in ("token_embd.weight", "output.weight"):
            return pad_cols(a, new_width)
        sys.exit(f"{name}: a tensor this script does not know how to pad")

    w = gguf.GGUFWriter(args.output, arch)
    changed = {
        f"{arch}.embedding_length": new_width,
        f"{arch}.attention.head_count": new_n_head,
        f"{arch}.attention.head_count_kv": n_kv,
    }
    eps_key = f"{arch}.attention.layer_norm_rms_epsilon"
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = f.contents()
        if name in changed:
            value = changed.pop(name)
        elif name == eps_key:
            value = value * ratio
        elif name == "general.name":
            value = f"{value} (padded to {new_width})"
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, value, f.types[0], sub)
    for name, value in changed.items():
        w.add_key_value(name, value, gguf.GGUFValueType.UINT32)
    for t in r.tensors:
        if t.tensor_type not in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32):
            sys.exit(f"{t.name}: type {t.tensor_type.name}; give an F16 or F32 model")
        a = np.asarray(t.data)
        a = a.reshape(tuple(reversed([int(d) for d in t.shape]))) if a.ndim > 1 else a
        w.add_tensor(t.name, np.ascontiguousarray(widen(t.name, a)), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
