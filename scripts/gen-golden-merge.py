#!/usr/bin/env python3
"""Generate mergekit goldens for smelt's merge methods (fixtures/golden/merge/).

For every merge method in mergekit 0.1.5's registry this writes a recipe
(<name>.yaml) and what mergekit made of it (<name>.json): per output tensor the
Hugging Face name, the llama.cpp name, the shape, the float64 sum, the L2 norm
and 32 sample values. smelt's tests regenerate the three input models with
`smelt make-test-model`, run the same YAML and compare, so CI never needs
mergekit (or torch).

Regenerate (mergekit lives in a venv OUTSIDE the repo; ~2.5 min, ~6 GB, the
PyPI torch wheel brings CUDA libraries it never uses here):

    python3 -m venv ../mergekit-venv   # any folder outside the repo
    ../mergekit-venv/bin/pip install mergekit==0.1.5
    cargo build --release
    ../mergekit-venv/bin/python scripts/gen-golden-merge.py

Options / environment:
    SMELT_BIN         smelt binary (default ./target/release/smelt)
    MERGEKIT_YAML     mergekit-yaml (default: next to this python)
    --work DIR        scratch root (default: a temp dir, removed afterwards);
                      the models are DIR/models/{A,B,C}, recipes name them
                      relative to DIR, outputs go to DIR/out/<name>
    --only a,b        regenerate only these goldens
    --keep            keep the scratch dir
    --check           no mergekit needed (scripts/test runs this in CI): the
                      recipes match this script, the goldens are complete and
                      <= 1 MiB, smelt still makes byte-identical input models
                      (inputs.json, vocab/inputs.json), the tokenizer files are
                      the script's, and linear / task_arithmetic / passthrough and
                      four vocabulary recipes agree with numpy

The models: A, B, C = `smelt make-test-model --seed 1/2/3 --dtype F32` (4
layers, hidden 64, ff 128, 4 heads, 2 kv heads, vocab 512, untied). mergekit
needs no tokenizer for these merges (we pass --no-copy-tokenizer), so none is
written. Everything is float32 end to end (dtype/out_dtype: float32).

The vocabulary recipes (vocab_*: tokenizer_source union / base / a model, the tokenizer:
block with tokens: and pad_to_multiple_of) run on V1, V2, V3 = `smelt make-test-model
--seed 11/12/13 --layers 1 --vocab 295/298/296` plus tokenizer files this script writes
(committed under fixtures/golden/merge/vocab/, with the models' hashes in its inputs.json):
byte-level BPE vocabularies that share most tokens in different orders. mergekit builds
and writes the output tokenizer for these; its tokens are recorded in id order, except for
the groups of ids mergekit orders at random, which are sorted (a second run checks that
nothing else differs).

Randomized methods (dare_ties, dare_linear, della, della_linear) are run with
--random-seed 0..3; the tensors recorded are seed 0's, and the file carries
`"random": true` plus per-tensor statistics that any implementation must
reproduce up to sampling noise (see fixtures/golden/merge/README.md).
"""

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# torch / safetensors.torch are imported where used: --check runs in the project's
# oracle venv (numpy + safetensors), which has neither torch nor mergekit.

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "fixtures" / "golden" / "merge"
N_SAMPLES = 32
RANDOM_SEEDS = [0, 1, 2, 3]
MODEL_ARGS = ["--dtype", "F32", "--layers", "4", "--hidden", "64", "--ff", "128",
              "--heads", "4", "--kv-heads", "2", "--vocab", "512"]
MODELS = {"A": 1, "B": 2, "C": 3}
A, B, C = "models/A", "models/B", "models/C"

# ---------------------------------------------------------------------------
# Recipes. Each: name -> (recipe dict, extra info). Keys are emitted in order.

COMMON = {"dtype": "float32", "out_dtype": "float32"}


def recipe(method, body, **top):
    r = {"merge_method": method}
    r.update(top)
    r.update(body)
    r.update(COMMON)
    return r


def m(path, **params):
    return {"model": path, "parameters": params} if params else {"model": path}


RECIPES = {
    "linear": recipe("linear", {"models": [
        m(A, weight=0.5), m(B, weight=0.3), m(C, weight=0.4)]}),
    "linear_nonorm": recipe("linear", {"models": [
        m(A, weight=0.5), m(B, weight=0.3), m(C, weight=0.4)],
        "parameters": {"normalize": False}}),
    "slerp": recipe("slerp", {"models": [m(A), m(B)],
                              "parameters": {"t": 0.3}}, base_model=A),
    "slerp_gradient": recipe("slerp", {"models": [m(A), m(B)], "parameters": {"t": [
        {"filter": "self_attn", "value": [0, 0.5, 1]},
        {"filter": "mlp", "value": [0.2, 0.9, 0.4]},
        {"value": 0.5}]}}, base_model=A),
    "nuslerp": recipe("nuslerp", {"models": [m(B, weight=0.3), m(C, weight=0.7)]}),
    "nuslerp_base_rowwise": recipe("nuslerp", {
        "models": [m(B, weight=0.6), m(C, weight=0.4)],
        "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}},
        base_model=A),
    "multislerp": recipe("multislerp", {"models": [
        m(A, weight=0.5), m(B, weight=0.3), m(C, weight=0.2)]}),
    "multislerp_base": recipe("multislerp", {"models": [
        m(B, weight=0.6), m(C, weight=0.4)]}, base_model=A),
    "karcher": recipe("karcher", {"models": [m(A), m(B), m(C)]}),
    "task_arithmetic": recipe("task_arithmetic", {
        "models": [m(A), m(B, weight=0.7), m(C, weight=0.5)],
        "parameters": {"lambda": 0.9}}, base_model=A),
    "ties": recipe("ties", {
        "models": [m(A), m(B, weight=0.7, density=0.5), m(C, weight=0.5, density=0.7)]},
        base_model=A),
    "dare_ties": recipe("dare_ties", {
        "models": [m(A), m(B, weight=0.7, density=0.5), m(C, weight=0.5, density=0.7)]},
        base_model=A),
    "dare_linear": recipe("dare_linear", {
        "models": [m(A), m(B, weight=0.7, density=0.5), m(C, weight=0.5, density=0.7)]},
        base_model=A),
    "breadcrumbs": recipe("breadcrumbs", {
        "models": [m(A), m(B, weight=0.7, density=0.8, gamma=0.05),
                   m(C, weight=0.5, density=0.9, gamma=0.02)]}, base_model=A),
    "breadcrumbs_ties": recipe("breadcrumbs_ties", {
        "models": [m(A), m(B, weight=0.7, density=0.8, gamma=0.05),
                   m(C, weight=0.5, density=0.9, gamma=0.02)]}, base_model=A),
    "della": recipe("della", {
        "models": [m(A), m(B, weight=0.7, density=0.5, epsilon=0.1),
                   m(C, weight=0.5, density=0.6, epsilon=0.15)]}, base_model=A),
    "della_linear": recipe("della_linear", {
        "models": [m(A), m(B, weight=0.7, density=0.5, epsilon=0.1),
                   m(C, weight=0.5, density=0.6, epsilon=0.15)]}, base_model=A),
    "sce": recipe("sce", {"models": [m(A), m(B), m(C)],
                          "parameters": {"select_topk": 0.6}}, base_model=A),
    # epsilon ~ the deltas' scale (std ~0.03) so unique/overlap/none all occur
    "ram": recipe("ram", {"models": [m(A), m(B), m(C)],
                          "parameters": {"epsilon": 0.02}}, base_model=A),
    "ramplus_tl": recipe("ramplus_tl", {"models": [m(A), m(B), m(C)],
                                        "parameters": {"epsilon": 0.02, "r": 0.5,
                                                       "alpha": 0.5}}, base_model=A),
    "model_stock": recipe("model_stock", {"models": [m(A), m(B), m(C)]}, base_model=A),
    "model_stock_filter_wise": recipe("model_stock", {
        "models": [m(A), m(B), m(C)], "parameters": {"filter_wise": True}}, base_model=A),
    "nearswap": recipe("nearswap", {"models": [m(A), m(B)],
                                    "parameters": {"t": 0.01}}, base_model=A),
    "arcee_fusion": recipe("arcee_fusion", {"models": [m(A), m(B)]}, base_model=A),
    # frankenmerge: A's layers 0-2 then B's layers 1-3 -> 6 layers
    "passthrough": recipe("passthrough", {"slices": [
        {"sources": [{"model": A, "layer_range": [0, 3]}]},
        {"sources": [{"model": B, "layer_range": [1, 4]}]}],
        "parameters": {"scale": [
            {"filter": "o_proj", "value": 0.5},
            {"filter": "down_proj", "value": 0.25},
            {"value": 1.0}]}}),
}

RANDOM_METHODS = {"dare_ties", "dare_linear", "della", "della_linear"}

# ---------------------------------------------------------------------------
# Vocabulary goldens (`tokenizer_source`, `tokenizer:`): three 1-layer models V1, V2, V3
# whose byte-level BPE tokenizers share most tokens, in different orders, and each have
# tokens the others lack. The tokenizer files are committed (fixtures/golden/merge/vocab/Vk/)
# and copied into `smelt make-test-model`'s folders; `--check` verifies they are what this
# script writes.

VOCAB_DIR = GOLDEN / "vocab"
VOCAB_SEEDS = {"V1": 11, "V2": 12, "V3": 13}
V1, V2, V3 = "models/V1", "models/V2", "models/V3"
# mergekit 0.1.5 takes the implicit base of a recipe without base_model (whose vocabulary a
# union starts with) as list(set(models))[0]: a different model from run to run (the set
# hashes each ModelReference, whose None fields Python 3.11 hashes by address, so not even
# PYTHONHASHSEED fixes it). merge_vocab reruns mergekit until it is the first model listed,
# which is smelt's choice.
MAX_BASE_TRIES = 30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def gpt2_byte_chars():
    """GPT-2's bytes_to_unicode: the 256 byte tokens of a byte-level BPE, in byte order."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    chars = {b: chr(b) for b in bs}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


BYTE_TOKENS = gpt2_byte_chars()
WORDS = [f"\u0120{a}{v}" for a in "bcdfghjklm" for v in "aeiou"]  # "Ġba", "Ġbe", ...
SHARED = WORDS[0:30]
V1_ONLY, V2_ONLY, V3_ONLY = WORDS[30:33], WORDS[33:36], WORDS[36:39]
V12, V23, V13 = WORDS[39:42], WORDS[42:45], WORDS[45:47]
EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = {EOT, IM_START, IM_END}
VOCABS = {
    # 256 bytes, words, the specials last (config.json's bos/eos id is vocab - 1).
    "V1": BYTE_TOKENS + SHARED + V12 + V13 + V1_ONLY + [EOT],
    # bytes rotated, the common words reversed, two specials V1 lacks
    "V2": (BYTE_TOKENS[64:] + BYTE_TOKENS[:64] + V2_ONLY + SHARED[::-1] + V23 + V12
           + [IM_START, IM_END, EOT]),
    # the common words shuffled (every 7th first)
    "V3": (BYTE_TOKENS + V23 + SHARED[::7] + [t for i, t in enumerate(SHARED) if i % 7]
           + V3_ONLY + V13 + [IM_END, EOT]),
}


def vocab_model_args(k):
    return ["--dtype", "F32", "--layers", "1", "--hidden", "64", "--ff", "128", "--heads",
            "4", "--kv-heads", "2", "--vocab", str(len(VOCABS[k]))]


def tokenizer_files(k):
    """The tokenizer files of model k (name -> text): a byte-level BPE without merges (only
    the vocabulary matters here), the specials as added tokens; tokenizer_config names the
    generic fast class, so transformers loads tokenizer.json as it is."""
    tokens = VOCABS[k]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i, t in enumerate(tokens) if t in SPECIAL_TOKENS],
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
    }
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
           "clean_up_tokenization_spaces": False, "model_max_length": 2048}
    return {"tokenizer.json": json.dumps(tok, indent=1, ensure_ascii=False) + "\n",
            "tokenizer_config.json": json.dumps(cfg, indent=1) + "\n"}


TA_MODELS = [m(V1), m(V2, weight=0.7), m(V3, weight=0.5)]
VOCAB_RECIPES = {
    # no base: mergekit averages a token's rows over the models that have it when some lack it
    "vocab_union_linear": recipe("linear", {"models": [
        m(V1, weight=0.5), m(V2, weight=0.3), m(V3, weight=0.2)]}, tokenizer_source="union"),
    # a base: a token some models lack takes the base's row when the base has it
    "vocab_union_ties": recipe("ties", {"models": [
        m(V1), m(V2, weight=0.7, density=0.5), m(V3, weight=0.5, density=0.7)]},
        base_model=V1, tokenizer_source="union"),
    "vocab_base": recipe("task_arithmetic", {"models": TA_MODELS},
                         base_model=V1, tokenizer_source="base"),
    "vocab_model": recipe("task_arithmetic", {"models": TA_MODELS},
                          base_model=V1, tokenizer_source=V2),
    # every kind of `tokens:` entry, two of them new tokens (mergekit adds those, in this
    # order, which is not sorted)
    "vocab_tokens": recipe("linear", {"models": [
        m(V1, weight=0.5), m(V2, weight=0.3), m(V3, weight=0.2)],
        "tokenizer": {"source": V3, "tokens": {
            "<|zzz|>": {"source": {"kind": "model_token", "model": V2, "token": IM_START}},
            "<|aaa|>": {"source": {"kind": "zero"}},
            SHARED[0]: {"source": V2, "force": True},
            SHARED[1]: {"source": {"kind": "zero"}, "force": True},
            SHARED[2]: {"source": {"kind": "model_token", "model": V1, "token_id": 7},
                        "force": True},
            SHARED[3]: {"source": V2},
            V23[0]: {"source": {"kind": "zero"}},
            V13[0]: {"source": V1},
            V3_ONLY[0]: {"source": {"kind": "model_token", "model": V2, "token": SHARED[6]}},
        }}}),
    "vocab_pad": recipe("task_arithmetic", {"models": TA_MODELS, "tokenizer": {
        "source": "union", "pad_to_multiple_of": 64}}, base_model=V1),
}
RECIPES.update(VOCAB_RECIPES)

# A LoRA input (`model: BASE+ADAPTER`): a PEFT adapter on model A's q_proj, v_proj and
# down_proj (rank 4, alpha 8), written by this script into fixtures/golden/merge/lora/L
# (committed, a few KB) and merged by mergekit through peft's merge_and_unload.
LORA_DIR = GOLDEN / "lora" / "L"
LORA_RANK, LORA_ALPHA = 4, 8
LORA_TARGETS = {"q_proj": (64, 64), "v_proj": (64, 32), "down_proj": (128, 64)}  # (in, out)
LORA_RECIPES = {
    "lora_linear": recipe("linear", {"models": [
        m("models/A+lora/L", weight=0.6), m(B, weight=0.4)]}),
}
RECIPES.update(LORA_RECIPES)


def lora_tensors():
    """The adapter's A ([r, in]) and B ([out, r]) per targeted module and layer: smooth
    deterministic values (no RNG, the same on any numpy)."""
    import numpy as np
    out = {}
    for layer in range(4):
        for k, (mod, (n_in, n_out)) in enumerate(LORA_TARGETS.items()):
            part = "mlp" if mod == "down_proj" else "self_attn"
            name = f"base_model.model.model.layers.{layer}.{part}.{mod}"
            for which, shape in (("lora_A", (LORA_RANK, n_in)), ("lora_B", (n_out, LORA_RANK))):
                i = np.arange(shape[0] * shape[1], dtype=np.float64)
                v = 0.05 * np.sin(0.37 * i + 1.3 * layer + 0.7 * k + (which == "lora_B"))
                out[f"{name}.{which}.weight"] = v.reshape(shape).astype(np.float32)
    return out


def lora_config():
    return json.dumps({"base_model_name_or_path": "models/A", "peft_type": "LORA",
                       "task_type": "CAUSAL_LM", "r": LORA_RANK, "lora_alpha": LORA_ALPHA,
                       "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
                       "target_modules": list(LORA_TARGETS)}, indent=1) + "\n"


def write_lora(folder):
    from safetensors.numpy import save_file
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(lora_config())
    save_file(lora_tensors(), str(folder / "adapter_model.safetensors"))


def check_lora():
    """The committed adapter is what this script writes (values, not bytes: safetensors'
    header layout may change between versions)."""
    import numpy as np
    from safetensors.numpy import load_file
    errs = []
    if (LORA_DIR / "adapter_config.json").read_text() != lora_config():
        errs.append("lora/L/adapter_config.json differs from the script's")
    got = load_file(str(LORA_DIR / "adapter_model.safetensors"))
    want = lora_tensors()
    if set(got) != set(want) or any(not np.array_equal(got[k], want[k]) for k in want):
        errs.append("lora/L/adapter_model.safetensors differs from the script's")
    return errs

# ---------------------------------------------------------------------------
# YAML without a yaml dependency of our own (mergekit brings PyYAML, but the
# emitted text should be stable and readable): flow style for leaf dicts/lists.


def yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # plain when safe (every name and path), else double-quoted (YAML's are JSON's)
        return v if re.fullmatch(r"[A-Za-z0-9_./-]+", v) else json.dumps(v, ensure_ascii=False)
    raise TypeError(v)


def is_leaf(v):
    if isinstance(v, list):
        return all(not isinstance(x, (dict, list)) for x in v)
    if isinstance(v, dict):
        return all(is_leaf(x) and not isinstance(x, dict) for x in v.values())
    return True


def flow(v):
    if isinstance(v, list):
        return "[" + ", ".join(flow(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{yaml_scalar(k)}: {flow(x)}" for k, x in v.items()) + "}"
    return yaml_scalar(v)


def to_yaml(v, indent=0):
    """Block style, with leaf dicts/lists in flow style."""
    pad = " " * indent
    out = []
    if isinstance(v, dict):
        for k, x in v.items():
            if is_leaf(x):
                out.append(f"{pad}{yaml_scalar(k)}: {flow(x)}")
            else:
                out.append(f"{pad}{yaml_scalar(k)}:")
                out.extend(to_yaml(x, indent + 2))
    else:
        for x in v:
            if is_leaf(x):
                out.append(f"{pad}- {flow(x)}")
            else:
                sub = to_yaml(x, 0)
                out.append(f"{pad}- {sub[0]}")
                out.extend(f"{pad}  {line}" for line in sub[1:])
    return out


# ---------------------------------------------------------------------------
# Names

HF_TO_GGUF = [
    (r"^model\.embed_tokens\.weight$", "token_embd.weight"),
    (r"^model\.norm\.weight$", "output_norm.weight"),
    (r"^lm_head\.weight$", "output.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"blk.\1.attn_norm.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.q_proj\.weight$", r"blk.\1.attn_q.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.k_proj\.weight$", r"blk.\1.attn_k.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.v_proj\.weight$", r"blk.\1.attn_v.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$", r"blk.\1.attn_output.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"blk.\1.ffn_norm.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$", r"blk.\1.ffn_gate.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.weight$", r"blk.\1.ffn_up.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.weight$", r"blk.\1.ffn_down.weight"),
]


def gguf_name(hf):
    for pat, rep in HF_TO_GGUF:
        if re.match(pat, hf):
            return re.sub(pat, rep, hf)
    return None


def natural_key(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# ---------------------------------------------------------------------------
# Statistics


def fmt32(x):
    """Shortest text that round-trips a float32 (as a JSON number)."""
    return float(f"{x:.9g}")


def describe(name, t):
    import torch

    flat = t.reshape(-1)
    n = flat.numel()
    stride = max(1, n // N_SAMPLES)
    idx = torch.arange(min(N_SAMPLES, n)) * stride
    d = flat.double()
    return {
        "name": name,
        "gguf": gguf_name(name),
        "shape": list(t.shape),
        "sum": d.sum().item(),
        "l2": math.sqrt((d * d).sum().item()),
        "stride": stride,
        "samples": [fmt32(v) for v in flat[idx].tolist()],
    }


def load_models(work):
    from safetensors.torch import load_file

    return {k: load_file(str(work / "models" / k / "model.safetensors")) for k in MODELS}


def non_base(r):
    return [x for x in r["models"] if x["model"] != r.get("base_model")]


def model_key(path):
    return path.split("/")[-1]


def della_probs(delta, density, epsilon):
    """mergekit's della_magprune keep-probabilities for each element."""
    import torch

    t = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = t.abs().argsort(dim=1).argsort(dim=1).double() + 1
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    return ((density - epsilon) + rank_norm * 2 * epsilon).reshape(delta.shape)


def random_stats(name, r, models, outs, dense):
    """Per-tensor statistics that hold for any seed (up to sampling noise)."""
    import torch

    base = models[model_key(r["base_model"])]
    entries = non_base(r)
    method = r["merge_method"]
    res = []
    for tname in sorted(dense, key=natural_key):
        b = base[tname].double()
        keep_none = torch.ones_like(b)
        for e in entries:
            p = e["parameters"]
            delta = models[model_key(e["model"])][tname].double() - b
            if method.startswith("della"):
                prob = della_probs(delta, p["density"], p.get("epsilon", 0.15))
            else:
                prob = torch.full_like(b, p["density"])
            keep_none = keep_none * (1 - prob)
        dense_l1 = (dense[tname].double() - b).abs().sum().item()
        zf, l1 = [], []
        for o in outs:
            od = o[tname].double() - b
            zf.append(round((od == 0).double().mean().item(), 6))
            l1.append(round(od.abs().sum().item() / dense_l1, 6))
        res.append({
            "name": tname,
            "numel": b.numel(),
            "zero_frac_expected": round(keep_none.mean().item(), 6),
            "zero_frac": zf,
            "l1_ratio": l1,
        })
    return res


def boundary_ties(r, models, name):
    """Whether a magnitude cut (ties/breadcrumbs) falls between equal |delta|s,
    which would make the kept set implementation-defined."""
    import torch

    method = r["merge_method"]
    if method not in ("ties", "breadcrumbs", "breadcrumbs_ties"):
        return []
    base = models[model_key(r["base_model"])]
    hits = []
    for e in non_base(r):
        p = e["parameters"]
        m_ = models[model_key(e["model"])]
        for tname in base:
            w = (m_[tname] - base[tname]).abs().reshape(-1).float()
            n = w.numel()
            s = torch.sort(w).values  # ascending
            if method == "ties":
                k = max(1, int(p["density"] * n))
                cuts = [n - k]
            else:
                target = int(p["density"] * n)
                n_top = int(p.get("gamma", 0.01) * n)
                n_bot = max(0, n - target - n_top)
                cuts = [n_bot, n_bot + target]
            for c in cuts:
                if 0 < c < n and s[c - 1] == s[c]:
                    hits.append(f"{model_key(e['model'])}:{tname}")
    return hits


# ---------------------------------------------------------------------------


def run(cmd, cwd=None, env=None):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}")
    return p


def make_models(work, smelt):
    for k, seed in MODELS.items():
        d = work / "models" / k
        if d.exists():
            shutil.rmtree(d)
        run([smelt, "make-test-model", "-o", str(d), "--seed", str(seed), *MODEL_ARGS])


def merge(work, yaml_path, out, mergekit_yaml, seed=None, tokenizer=False):
    """Run mergekit; with `tokenizer` (the vocabulary recipes) it builds and writes the
    output tokenizer."""
    from safetensors.torch import load_file

    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [mergekit_yaml, str(yaml_path), str(out), "--no-cuda", "--lazy-unpickle",
           "--allow-crimes", "--out-shard-size", "1B", "-j", "1", "--quiet",
           "--no-copy-tokenizer", "--no-write-model-card"]
    if tokenizer:
        cmd.remove("--no-copy-tokenizer")
    if seed is not None:
        cmd += ["--random-seed", str(seed)]
    if "+lora/" in yaml_path.read_text():  # mergekit merges the adapter into a cached copy
        cmd += ["--lora-merge-cache", str(work / "lora-cache")]
    run(cmd, cwd=work, env=env)
    tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    cfg = json.loads((out / "config.json").read_text())
    return tensors, cfg


def dump_json(obj, path):
    """Pretty at the top, one line per tensor (small, diff-friendly)."""
    lines = ["{"]
    items = list(obj.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f"  {json.dumps(k)}: [")
            for j, x in enumerate(v):
                c2 = "," if j + 1 < len(v) else ""
                lines.append("    " + json.dumps(x, separators=(",", ":")) + c2)
            lines.append("  ]" + comma)
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}{comma}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


def inputs_doc(work):
    return {"models": {k: {
        "path": f"models/{k}", "seed": s,
        "smelt_args": ["make-test-model", "-o", f"models/{k}", "--seed", str(s), *MODEL_ARGS],
        "sha256": hashlib.sha256(
            (work / "models" / k / "model.safetensors").read_bytes()).hexdigest(),
    } for k, s in MODELS.items()}}


def make_vocab_models(work, smelt):
    for k, seed in VOCAB_SEEDS.items():
        d = work / "models" / k
        if d.exists():
            shutil.rmtree(d)
        run([smelt, "make-test-model", "-o", str(d), "--seed", str(seed), *vocab_model_args(k)])
        for name, text in tokenizer_files(k).items():
            (d / name).write_text(text, encoding="utf-8")


def vocab_model_info():
    return {k: {"path": f"models/{k}", "seed": s,
                "smelt_args": ["make-test-model", "-o", f"models/{k}", "--seed", str(s),
                               *vocab_model_args(k)],
                "tokenizer_files": [f"vocab/{k}/{f}" for f in TOKENIZER_FILES]}
            for k, s in VOCAB_SEEDS.items()}


def vocab_inputs_doc(work):
    info = vocab_model_info()
    for k in VOCAB_SEEDS:
        info[k]["sha256"] = hashlib.sha256(
            (work / "models" / k / "model.safetensors").read_bytes()).hexdigest()
    return {"models": info}


def output_vocab(out):
    """mergekit's output tokenizer: its tokens in id order, and the special ones."""
    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    ids = dict(tok["model"]["vocab"])
    special = set()
    for a in tok["added_tokens"]:
        ids[a["content"]] = a["id"]
        if a["special"]:
            special.add(a["content"])
    tokens = sorted(ids, key=ids.get)
    if [ids[t] for t in tokens] != list(range(len(tokens))):
        raise SystemExit(f"{out}: token ids are not 0..n-1")
    return tokens, special


def vocab_source(r):
    """(the model whose vocabulary the output starts with, tokenizer source as written)."""
    written = (r.get("tokenizer") or {}).get("source", r.get("tokenizer_source"))
    base = r.get("base_model") or r["models"][0]["model"]
    return model_key(base if written in ("union", "base") else written), written


def merge_vocab(work, r, yaml_path, out, mergekit_yaml):
    """mergekit on a vocabulary recipe, until the output vocabulary starts with the source's
    (without base_model, with the first model's: see MAX_BASE_TRIES)."""
    src = VOCABS[vocab_source(r)[0]]
    for _ in range(MAX_BASE_TRIES if not r.get("base_model") else 1):
        t, cfg = merge(work, yaml_path, out, mergekit_yaml, tokenizer=True)
        if output_vocab(out)[0][:len(src)] == src:
            return t, cfg
    raise SystemExit(f"{yaml_path.name}: the output vocabulary never starts with "
                     f"{vocab_source(r)[0]}'s")


def vocab_layout(name, r, tokens, special):
    """The output vocabulary in groups [start, end, "fixed" | "any"]: mergekit 0.1.5 orders
    some tokens by Rust hash-map iteration (random per process), see the README. Fails when
    mergekit's output does not have the structure its source says it has."""
    src, written = vocab_source(r)
    n = len(VOCABS[src])
    if tokens[:n] != VOCABS[src]:
        raise SystemExit(f"{name}: the output vocabulary does not start with {src}'s")
    before = set(VOCABS[src])
    if written == "union":
        for e in r["models"]:
            before |= set(VOCABS[model_key(e["model"])])
    added = [t for t in (r.get("tokenizer") or {}).get("tokens", {}) if t not in before]
    k = len(tokens) - len(added)
    mid = tokens[n:k]
    n_regular = sum(t not in special for t in mid)
    if (tokens[k:] != added or set(mid) != before - set(VOCABS[src])
            or any(t in special for t in mid[:n_regular])):
        raise SystemExit(f"{name}: unexpected output vocabulary layout")
    groups = [[0, n, "fixed"], [n, n + n_regular, "any"], [n + n_regular, k, "any"],
              [k, len(tokens), "fixed"]]
    return [g for g in groups if g[0] < g[1]]


def in_order_of(tensors, tokens, ref_tokens, rows):
    """`tensors`' vocabulary rows (embed_tokens, lm_head) reordered from `tokens` to
    `ref_tokens` (padding rows past them kept)."""
    import torch

    pos = {t: i for i, t in enumerate(tokens)}
    perm = torch.tensor([pos[t] for t in ref_tokens] + list(range(len(tokens), rows)))
    return {k: (v[perm] if v.shape[0] == rows and k in VOCAB_TENSORS else v)
            for k, v in tensors.items()}


VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def vocab_doc(name, r, work, yaml_path, mergekit_yaml, out, cfg):
    """The output vocabulary of a vocabulary recipe, with each group of ids mergekit orders
    at random sorted (and the embedding and output rows with it, so that the goldens do not
    change from run to run), and `out` in that order. A second mergekit run must agree with
    the first up to that order."""
    tokens, special = output_vocab(work / "out" / f"{name}-None")
    groups = vocab_layout(name, r, tokens, special)
    canon = [t for a, b, kind in groups
             for t in (tokens[a:b] if kind == "fixed" else sorted(tokens[a:b]))]
    again, _ = merge_vocab(work, r, yaml_path, work / "out" / f"{name}-again", mergekit_yaml)
    tokens2, special2 = output_vocab(work / "out" / f"{name}-again")
    rows = cfg["vocab_size"]
    same = vocab_layout(name, r, tokens2, special2) == groups and all(
        tokens[a:b] == tokens2[a:b] if kind == "fixed" else set(tokens[a:b]) == set(tokens2[a:b])
        for a, b, kind in groups)
    out = in_order_of(out, tokens, canon, rows)
    again = in_order_of(again, tokens2, canon, rows)
    diff = max((again[k] - out[k]).abs().max().item() for k in out)
    if not same or diff > 1e-6 or out["model.embed_tokens.weight"].shape[0] != rows:
        raise SystemExit(f"{name}: a second mergekit run differs beyond its token order")
    return {
        "vocab_rows": rows,
        "vocab_rule": "vocab = the output tokenizer's tokens in id order (mergekit's "
                      "tokenizer.json), except within an `any` group of vocab_order "
                      "([start, end, fixed|any]), which mergekit orders at random: sorted, "
                      "with the tensors' rows; embedding rows past vocab are padding",
        "vocab_order": groups,
        "vocab": canon,
    }, out


def check_vocab_doc(r, doc):
    """A vocabulary golden's own consistency: its groups tile the vocabulary, which starts
    with its source's, and the embedding and output have `vocab_rows` rows."""
    errs = []
    tokens, groups = doc["vocab"], doc["vocab_order"]
    if [g[0] for g in groups] != [0] + [g[1] for g in groups[:-1]] or groups[-1][1] != len(
            tokens) or any(g[2] not in ("fixed", "any") for g in groups):
        errs.append("vocab_order does not tile vocab")
    src = VOCABS[vocab_source(r)[0]]
    if tokens[:len(src)] != src or len(set(tokens)) != len(tokens):
        errs.append("vocab does not start with its source's vocabulary, or repeats a token")
    if doc["vocab_rows"] < len(tokens):
        errs.append("vocab_rows < the number of tokens")
    for t in doc["tensors"]:
        if t["name"] in VOCAB_TENSORS and t["shape"][0] != doc["vocab_rows"]:
            errs.append(f"{t['name']}: not vocab_rows rows")
    return errs


def np_vocab_inputs(r, tokens, rows, vmdl):
    """Each model's tensors with embed_tokens and lm_head laid out in the output vocabulary
    `tokens` (`rows` rows) as mergekit's PermutedVocabulary does without `tokens:` entries:
    a model's own row; else, among the models that have the token, the only one's, the
    base's, or their mean; zeros if none has it; padding rows the mean of the others."""
    import numpy as np

    keys = [model_key(e["model"]) for e in r["models"]]
    base = model_key(r["base_model"]) if r.get("base_model") else None
    ids = {k: {t: i for i, t in enumerate(VOCABS[k])} for k in keys}
    out = {k: dict(vmdl[k]) for k in keys}
    for name in VOCAB_TENSORS:
        width = vmdl[keys[0]][name].shape[1]
        new = {k: np.zeros((rows, width)) for k in keys}
        for i, t in enumerate(tokens):
            have = [k for k in keys if t in ids[k]]
            rows_of = [vmdl[k][name][ids[k][t]] for k in have]
            fill = (np.zeros(width) if not have else rows_of[0] if len(have) == 1
                    else rows_of[have.index(base)] if base in have
                    else np.mean(rows_of, axis=0))
            for k in keys:
                new[k][i] = vmdl[k][name][ids[k][t]] if t in ids[k] else fill
        for k in keys:
            new[k][len(tokens):] = new[k][:len(tokens)].mean(axis=0)
            out[k][name] = new[k]
    return out


def check(smelt):
    """Without mergekit: the committed recipes are what this script would write, every
    golden is there and well-formed, smelt still makes the same input models, and the
    goldens that numpy can recompute (linear, task_arithmetic, passthrough) agree."""
    import numpy as np
    from safetensors.numpy import load_file

    errors = []
    total = 0
    for name, r in RECIPES.items():
        y = GOLDEN / f"{name}.yaml"
        j = GOLDEN / f"{name}.json"
        if not y.exists() or y.read_text(encoding="utf-8") != "\n".join(to_yaml(r)) + "\n":
            errors.append(f"{y.name} missing or differs from the script's recipe")
        if not j.exists():
            errors.append(f"{j.name} missing")
            continue
        total += y.stat().st_size + j.stat().st_size
        doc = json.loads(j.read_text())
        if doc["method"] != r["merge_method"] or doc["random"] != (name in RANDOM_METHODS):
            errors.append(f"{j.name}: method/random fields")
        for t in doc["tensors"]:
            if t["gguf"] != gguf_name(t["name"]) or len(t["samples"]) != min(
                    N_SAMPLES, math.prod(t["shape"])):
                errors.append(f"{j.name}: {t['name']} malformed")
        if name in VOCAB_RECIPES:
            errors.extend(f"{j.name}: {e}" for e in check_vocab_doc(r, doc))
    for k in VOCAB_SEEDS:
        for f, text in tokenizer_files(k).items():
            path = VOCAB_DIR / k / f
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                errors.append(f"vocab/{k}/{f} missing or differs from the script's")
            else:
                total += path.stat().st_size
    if total > 1 << 20:
        errors.append(f"goldens take {total} bytes (> 1 MiB)")

    with tempfile.TemporaryDirectory(prefix="mkgold-check-") as tmp:
        work = Path(tmp)
        make_models(work, smelt)
        want = json.loads((GOLDEN / "inputs.json").read_text())
        got = inputs_doc(work)
        for k in MODELS:
            if got["models"][k] != want["models"][k]:
                errors.append(f"smelt make-test-model no longer makes input model {k}")
        mdl = {k: {n: v.astype(np.float64) for n, v in
                   load_file(str(work / "models" / k / "model.safetensors")).items()}
               for k in MODELS}
        make_vocab_models(work, smelt)
        if vocab_inputs_doc(work) != json.loads((VOCAB_DIR / "inputs.json").read_text()):
            errors.append("smelt make-test-model no longer makes the vocab/ input models")
        vmdl = {k: {n: v.astype(np.float64) for n, v in
                    load_file(str(work / "models" / k / "model.safetensors")).items()}
                for k in VOCAB_SEEDS}

    def expect(name, fn):
        doc = json.loads((GOLDEN / f"{name}.json").read_text())
        for t in doc["tensors"]:
            v = fn(t["name"])
            flat = v.reshape(-1)
            idx = np.arange(len(t["samples"])) * t["stride"]
            scale = math.sqrt(flat.size) * t["l2"] + 1e-30
            if (list(v.shape) != t["shape"]
                    or abs(flat.sum() - t["sum"]) > 1e-6 * scale
                    or abs(np.sqrt((flat * flat).sum()) - t["l2"]) > 1e-5 * t["l2"]
                    or np.abs(flat[idx] - np.array(t["samples"])).max() > 1e-6):
                errors.append(f"{name}.json: {t['name']} disagrees with numpy")
                return

    a, b, c = mdl["A"], mdl["B"], mdl["C"]
    expect("linear", lambda n: (0.5 * a[n] + 0.3 * b[n] + 0.4 * c[n]) / 1.2)
    expect("linear_nonorm", lambda n: 0.5 * a[n] + 0.3 * b[n] + 0.4 * c[n])
    expect("task_arithmetic",
           lambda n: a[n] + 0.9 * (0.7 * (b[n] - a[n]) + 0.5 * (c[n] - a[n])))

    def passthrough(n):
        m_ = re.match(r"model\.layers\.(\d+)\.(.*)$", n)
        if not m_:
            src = a if n == "model.embed_tokens.weight" else b
            return src[n]
        layer, rest = int(m_.group(1)), m_.group(2)
        src, src_layer = (a, layer) if layer < 3 else (b, layer - 2)
        scale = 0.5 if "o_proj" in rest else 0.25 if "down_proj" in rest else 1.0
        return src[f"model.layers.{src_layer}.{rest}"] * scale

    expect("passthrough", passthrough)

    # The LoRA input: PEFT's W + (alpha / r) B A on the targeted projections of A.
    errors.extend(check_lora())
    lora = {k: v.astype(np.float64) for k, v in lora_tensors().items()}

    def with_lora(n):
        w = a[n].copy()
        key = "base_model.model." + n.removesuffix(".weight")
        if f"{key}.lora_A.weight" in lora:
            w += (LORA_ALPHA / LORA_RANK) * lora[f"{key}.lora_B.weight"] @ lora[f"{key}.lora_A.weight"]
        return w

    expect("lora_linear", lambda n: 0.6 * with_lora(n) + 0.4 * b[n])

    # Vocabulary recipes without `tokens:`: mergekit's row assignment redone in numpy.
    for name in ("vocab_union_linear", "vocab_base", "vocab_model", "vocab_pad"):
        r = RECIPES[name]
        doc = json.loads((GOLDEN / f"{name}.json").read_text())
        v = np_vocab_inputs(r, doc["vocab"], doc["vocab_rows"], vmdl)
        v1, v2, v3 = v["V1"], v["V2"], v["V3"]
        if r["merge_method"] == "linear":  # weights 0.5, 0.3, 0.2: normalized by 1.0
            expect(name, lambda n: 0.5 * v1[n] + 0.3 * v2[n] + 0.2 * v3[n])
        else:  # task_arithmetic, base V1, weights 0.7 and 0.5, lambda 1
            expect(name, lambda n: v1[n] + 0.7 * (v2[n] - v1[n]) + 0.5 * (v3[n] - v1[n]))
    for e in errors:
        print("error:", e)
    print(f"mergekit goldens: {len(RECIPES)} recipes, {total} bytes, "
          f"{'FAILED' if errors else 'ok'}")
    return not errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work")
    ap.add_argument("--only")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--check", action="store_true",
                    help="verify the committed goldens without mergekit (CI)")
    args = ap.parse_args()

    smelt = os.environ.get("SMELT_BIN", str(ROOT / "target" / "release" / "smelt"))
    if args.check:
        sys.exit(0 if check(smelt) else 1)
    import torch
    mergekit_yaml = os.environ.get(
        "MERGEKIT_YAML", str(Path(sys.executable).parent / "mergekit-yaml"))
    import mergekit  # noqa: F401  (fail early outside the venv)
    from importlib.metadata import version
    versions = {"mergekit": version("mergekit"), "torch": torch.__version__,
                "transformers": version("transformers")}
    if versions["mergekit"] != "0.1.5":
        print(f"warning: mergekit {versions['mergekit']}, goldens were made with 0.1.5")

    tmp = None
    if args.work:
        work = Path(args.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="mkgold-")
        work = Path(tmp)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(RECIPES)
    for n in names:
        if n not in RECIPES:
            raise SystemExit(f"unknown golden {n}")

    make_models(work, smelt)
    (GOLDEN / "inputs.json").write_text(json.dumps(inputs_doc(work), indent=1) + "\n")
    if any(n in VOCAB_RECIPES for n in names):
        make_vocab_models(work, smelt)
        for k in VOCAB_SEEDS:
            (VOCAB_DIR / k).mkdir(parents=True, exist_ok=True)
            for f, text in tokenizer_files(k).items():
                (VOCAB_DIR / k / f).write_text(text, encoding="utf-8")
        (VOCAB_DIR / "inputs.json").write_text(
            json.dumps(vocab_inputs_doc(work), indent=1) + "\n")
    if any(n in LORA_RECIPES for n in names):
        write_lora(LORA_DIR)
        write_lora(work / "lora" / "L")
    models = load_models(work)
    model_info = {k: {"path": f"models/{k}", "seed": s,
                      "smelt_args": ["make-test-model", "-o", f"models/{k}", "--seed",
                                     str(s), *MODEL_ARGS]} for k, s in MODELS.items()}
    try:
        for name in names:
            t0 = time.time()
            r = RECIPES[name]
            yaml_path = GOLDEN / f"{name}.yaml"
            yaml_path.write_text("\n".join(to_yaml(r)) + "\n", encoding="utf-8")
            random = name in RANDOM_METHODS
            vocab = name in VOCAB_RECIPES
            seeds = RANDOM_SEEDS if random else [None]
            outs = []
            for s in seeds:
                o = work / "out" / f"{name}-{s}"
                t, cfg = (merge_vocab(work, r, yaml_path, o, mergekit_yaml) if vocab
                          else merge(work, yaml_path, o, mergekit_yaml, seed=s))
                outs.append(t)
            out = outs[0]
            doc = {
                "method": r["merge_method"],
                "recipe": yaml_path.name,
                "random": random,
                "versions": versions,
                "models": vocab_model_info() if vocab else model_info,
                "command": "mergekit-yaml RECIPE OUT --no-cuda --lazy-unpickle "
                           "--allow-crimes --out-shard-size 1B -j 1 "
                           + ("" if vocab else "--no-copy-tokenizer ")
                           + "--no-write-model-card"
                           + (" --lora-merge-cache DIR" if name in LORA_RECIPES else "")
                           + (" --random-seed SEED" if random else ""),
                "out_config": {k: cfg.get(k) for k in (
                    "num_hidden_layers", "hidden_size", "intermediate_size",
                    "num_attention_heads", "num_key_value_heads", "vocab_size",
                    "tie_word_embeddings")},
                "sample_rule": "samples[i] = flat[i * stride] (row-major, HF row order),"
                               " stride = max(1, numel // 32)",
            }
            if random:
                dense_r = json.loads(json.dumps(r))
                for e in non_base(dense_r):
                    e["parameters"]["density"] = 1.0
                    e["parameters"].pop("epsilon", None)
                dense_yaml = work / f"{name}-dense.yaml"
                dense_yaml.write_text("\n".join(to_yaml(dense_r)) + "\n")
                dense, _ = merge(work, dense_yaml, work / "out" / f"{name}-dense",
                                 mergekit_yaml)
                doc["seeds"] = RANDOM_SEEDS
                doc["tensors_seed"] = RANDOM_SEEDS[0]
                doc["stats_rule"] = (
                    "per tensor, delta = out - base: zero_frac[s] = fraction of delta == 0 "
                    "with --random-seed s; zero_frac_expected = mean over elements of "
                    "prod over non-base models of (1 - keep probability) (density, or "
                    "della's rank-based probability); l1_ratio[s] = |delta|_1 / "
                    "|delta_dense|_1 where delta_dense is the same recipe with every "
                    "density 1 (no sparsification; exact, deterministic)")
                doc["stats"] = random_stats(name, r, models, outs, dense)
            if vocab:
                fields, out = vocab_doc(name, r, work, yaml_path, mergekit_yaml, out, cfg)
                doc.update(fields)
            # (vocabulary recipes: a row some model lacks is another's, its delta 0; equal
            # zeros at a magnitude cut change nothing)
            ties_ = [] if vocab else boundary_ties(r, models, name)
            if ties_:
                doc["boundary_ties"] = ties_
            doc["tensors"] = [describe(k, out[k]) for k in sorted(out, key=natural_key)]
            dump_json(doc, GOLDEN / f"{name}.json")
            print(f"{name}: {len(out)} tensors, {time.time() - t0:.1f}s", flush=True)
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
