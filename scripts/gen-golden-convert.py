#!/usr/bin/env python3
"""Goldens from llama.cpp's convert_hf_to_gguf.py for smelt's Hugging Face reader
(fixtures/golden/convert/<arch>.json).

For each architecture table in src/arch/ this script writes a tiny, deterministic Hugging
Face folder (config.json shaped like the real family's, random weights from a numpy
SplitMix64, bf16 / f16 / f32 safetensors, some sharded with an index), converts it with
llama.cpp's convert_hf_to_gguf.py at --outtype f32 and f16, and records per output type:

  - every metadata key except general.* and tokenizer.*, in file order, with its GGUF type and value (arrays longer than 16: length + sha256 of
    their JSON). general.* is provenance and differs on purpose: the converter writes
    general.architecture, type, name (from the folder name, capitalized: "Model"),
    size_label ("70K", "4x79K"), file_type and quantization_version; smelt writes
    architecture, type, name (the folder name as is), then quantization_version and
    file_type last, as llama-quantize places them, and no size_label;
  - every tensor in file order: name, ggml shape, ggml type, sha256 of its bytes;
  - separately, the tokenizer.* keys of the f32 file (the fixture's 64-piece sentencepiece
    model), in order, with types and values.

    # golden mode: needs torch + transformers + sentencepiece (a venv OUTSIDE the repo)
    python3 -m venv ../convert-venv   # any folder outside the repo
    ../convert-venv/bin/pip install torch==2.11.0 transformers==4.57.6 \
        'sentencepiece>=0.1.98,<0.3.0' 'numpy~=2.2.6' 'protobuf>=4.21.0,<5.0.0' safetensors
    ../convert-venv/bin/python scripts/gen-golden-convert.py [--only qwen2,gemma2]

    # check mode (CI, scripts/test): the .venv of scripts/setup-python (numpy + gguf)
    python scripts/gen-golden-convert.py --check

--check regenerates the same folders (with the tokenizer.model when the `sentencepiece`
package is there to train it, as in scripts/setup-python's venv; then tokenizer.* is compared),
runs `smelt quantize DIR -o out.gguf --type F32` (and F16) and `smelt inspect --json DIR`,
and compares with the golden: the same keys, types and values in the same order, the same
tensors with the same shapes, types and bytes. smelt's store presents the tensors in the
converter's order (inspect); `smelt quantize` writes them in llama-quantize's order
(outside layers first, then layer by layer, by name), so the file's order is checked
against that order of the golden's names.

Environment: SMELT_BIN (default ./target/release/smelt), LLAMA_CPP (llama.cpp source with
convert_hf_to_gguf.py and gguf-py; default third_party/llama_cpp_python-0.3.36/vendor/llama.cpp
of this checkout).

Every converter class here reads a tokenizer.model (sentencepiece); --check without the
sentencepiece package compares everything but the tokenizer.* keys.
"""

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "fixtures" / "golden" / "convert"
OUTTYPES = ["f32", "f16"]
SMELT_TYPE = {"f32": "F32", "f16": "F16"}
LONG_ARRAY = 16

# ---------------------------------------------------------------------------
# Deterministic values: SplitMix64 over (seed, tensor name), as uniform floats in [-1, 1).

MASK = (1 << 64) - 1


def fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def splitmix(seed, n):
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 23) - 1.0


def values(name, shape, kind, weight_scale=1.0):
    n = int(np.prod(shape))
    u = splitmix(fnv1a(name), n)
    if kind == "norm":          # around 0 (Gemma norms are stored minus one) or 1
        x = 0.1 * u
    elif kind == "norm1":
        x = 1.0 + 0.1 * u
    else:
        x = 0.05 * weight_scale * u
    return x.astype(np.float32).reshape(shape)


def encode(x, dtype):
    """Little-endian bytes of float32 array `x` as safetensors `dtype`."""
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    if dtype == "F16":
        return x.astype("<f2").tobytes()
    # BF16: round to nearest even from the f32 bits.
    bits = x.astype("<f4").view("<u4").astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, bytes), written in the given order."""
    header, offset = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        for *_, data in tensors:
            f.write(data)


# ---------------------------------------------------------------------------
# The fixtures: one tiny model per architecture table.

H, NH, KV, HD, FF, V, L = 64, 4, 2, 16, 96, 128, 2


def llama_layer(p, bias=False, qk_norm=False, hd=HD):
    t = [
        (p + "input_layernorm.weight", [H], "norm1"),
        (p + "self_attn.q_proj.weight", [NH * hd, H], "w"),
        (p + "self_attn.k_proj.weight", [KV * hd, H], "w"),
        (p + "self_attn.v_proj.weight", [KV * hd, H], "w"),
        (p + "self_attn.o_proj.weight", [H, NH * hd], "w"),
        (p + "post_attention_layernorm.weight", [H], "norm1"),
        (p + "mlp.gate_proj.weight", [FF, H], "w"),
        (p + "mlp.up_proj.weight", [FF, H], "w"),
        (p + "mlp.down_proj.weight", [H, FF], "w"),
    ]
    if bias:
        t += [(p + f"self_attn.{x}_proj.bias", [n * hd], "w")
              for x, n in (("q", NH), ("k", KV), ("v", KV))]
    if qk_norm:
        t += [(p + "self_attn.q_norm.weight", [hd], "norm1"),
              (p + "self_attn.k_norm.weight", [hd], "norm1")]
    return t


def gemma_layer(p, qk_norm):
    t = [(n, s, "norm" if k.startswith("norm") else k) for n, s, k in
         llama_layer(p, qk_norm=qk_norm)]
    t += [(p + "pre_feedforward_layernorm.weight", [H], "norm"),
          (p + "post_feedforward_layernorm.weight", [H], "norm")]
    return t


def globals_(tied, norm="norm1"):
    t = [("model.embed_tokens.weight", [V, H], "w"), ("model.norm.weight", [H], norm)]
    if not tied:
        t.append(("lm_head.weight", [V, H], "w"))
    return t


def base_config(arch, model_type, **kw):
    c = {"architectures": [arch], "model_type": model_type, "hidden_size": H,
         "intermediate_size": FF, "num_attention_heads": NH, "num_key_value_heads": KV,
         "num_hidden_layers": L, "vocab_size": V, "max_position_embeddings": 512,
         "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "torch_dtype": "bfloat16",
         "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
    c.update(kw)
    return c


def llama():
    t = globals_(tied=False)
    for i in range(L):
        t += llama_layer(f"model.layers.{i}.")
    # No head_dim: transformers' LlamaConfig fills it in, so the converter writes key_length.
    cfg = base_config("LlamaForCausalLM", "llama", rope_theta=500000.0, rms_norm_eps=1e-5,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 64},
                      hidden_act="silu", attention_bias=False, mlp_bias=False)
    return cfg, t, "BF16", 1


def mistral():
    t = globals_(tied=False)
    for i in range(L):
        t += llama_layer(f"model.layers.{i}.")
    # No head_dim: MistralConfig leaves it None, so no key_length (unlike Llama).
    cfg = base_config("MistralForCausalLM", "mistral", rope_theta=1000000.0, rms_norm_eps=1e-5,
                      sliding_window=None, hidden_act="silu", torch_dtype="float16")
    return cfg, t, "F16", 1


def qwen2():
    t = globals_(tied=True)
    for i in range(L):
        t += llama_layer(f"model.layers.{i}.", bias=True)
    cfg = base_config("Qwen2ForCausalLM", "qwen2", rope_theta=1000000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, sliding_window=512, use_sliding_window=False,
                      max_window_layers=L, attention_dropout=0.0, hidden_act="silu")
    return cfg, t, "BF16", 2


def qwen3():
    t = globals_(tied=False)
    for i in range(L):
        t += llama_layer(f"model.layers.{i}.", qk_norm=True, hd=32)
    cfg = base_config("Qwen3ForCausalLM", "qwen3", head_dim=32, rope_theta=1000000.0,
                      attention_bias=False, hidden_act="silu", sliding_window=None,
                      use_sliding_window=False, max_window_layers=L)
    return cfg, t, "BF16", 1


def gemma2():
    t = globals_(tied=True, norm="norm")
    for i in range(L):
        t += gemma_layer(f"model.layers.{i}.", qk_norm=False)
    cfg = base_config("Gemma2ForCausalLM", "gemma2", head_dim=HD, max_position_embeddings=512,
                      attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                      sliding_window=128, query_pre_attn_scalar=HD,
                      hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)
    return cfg, t, "BF16", 1


def gemma3():
    t = globals_(tied=True, norm="norm")
    for i in range(L):
        t += gemma_layer(f"model.layers.{i}.", qk_norm=True)
    cfg = base_config("Gemma3ForCausalLM", "gemma3_text", head_dim=HD,
                      max_position_embeddings=1024, rope_theta=1000000.0,
                      rope_local_base_freq=10000.0, sliding_window=128,
                      rope_scaling={"rope_type": "linear", "factor": 8.0},
                      final_logit_softcapping=None, attn_logit_softcapping=None,
                      query_pre_attn_scalar=HD, hidden_activation="gelu_pytorch_tanh",
                      tie_word_embeddings=True, torch_dtype="float16")
    return cfg, t, "F16", 1


def phi3():
    t = globals_(tied=False)
    for i in range(L):
        p = f"model.layers.{i}."
        t += [
            (p + "input_layernorm.weight", [H], "norm1"),
            (p + "self_attn.qkv_proj.weight", [(NH + 2 * KV) * HD, H], "w"),
            (p + "self_attn.o_proj.weight", [H, NH * HD], "w"),
            (p + "post_attention_layernorm.weight", [H], "norm1"),
            (p + "mlp.gate_up_proj.weight", [2 * FF, H], "w"),
            (p + "mlp.down_proj.weight", [H, FF], "w"),
        ]
    half = HD // 2
    cfg = base_config(
        "Phi3ForCausalLM", "phi3", max_position_embeddings=131072,
        original_max_position_embeddings=4096, rms_norm_eps=1e-5, sliding_window=262144,
        rope_scaling={"type": "longrope",
                      "long_factor": [1.0 + 0.5 * k for k in range(half)],
                      "short_factor": [1.0 + 0.125 * k for k in range(half)]},
        hidden_act="silu", resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
        torch_dtype="bfloat16")
    return cfg, t, "BF16", 1


def mixtral():
    n_exp = 4
    t = globals_(tied=False)
    for i in range(L):
        p = f"model.layers.{i}."
        t += [x for x in llama_layer(p) if ".mlp." not in x[0]]
        t.append((p + "block_sparse_moe.gate.weight", [n_exp, H], "w"))
        for e in range(n_exp):
            q = p + f"block_sparse_moe.experts.{e}."
            t += [(q + "w1.weight", [FF, H], "w"), (q + "w2.weight", [H, FF], "w"),
                  (q + "w3.weight", [FF, H], "w")]
    cfg = base_config("MixtralForCausalLM", "mixtral", num_local_experts=n_exp,
                      num_experts_per_tok=2, rope_theta=1000000.0, rms_norm_eps=1e-5,
                      head_dim=HD, sliding_window=None, router_aux_loss_coef=0.02)
    return cfg, t, "BF16", 3


# Tensors placed in the last shard, out of name order: the converter emits a layer's stacked
# experts where the layer's last expert tensor is read, whichever of w1/w2/w3 that is.
MOVED_TO_LAST_SHARD = {"model.layers.0.block_sparse_moe.experts.1.w2.weight"}

ARCHS = {"llama": llama, "mistral": mistral, "qwen2": qwen2, "qwen3": qwen3, "gemma2": gemma2, "gemma3": gemma3,
         "phi3": phi3, "mixtral": mixtral}


def write_folder(arch, out, tokenizer, weight_scale=1.0, config=None):
    """The fixture folder of `arch` in `out`; 1-D tensors of 16-bit models are stored in the
    model's type too (as real checkpoints do). Shards split the sorted names evenly.
    `weight_scale` multiplies the matrices (the evaluation tests want confident, far from
    uniform predictions) and `config` overrides config.json keys."""
    cfg, tensors, dtype, shards = ARCHS[arch]()
    cfg.update(config or {})
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    items = sorted(tensors)
    per = -(-len(items) // shards)
    weight_map = {}
    for k in range(shards):
        part = [x for x in items[k * per:(k + 1) * per] if x[0] not in MOVED_TO_LAST_SHARD]
        if k == shards - 1:
            part += [x for x in items if x[0] in MOVED_TO_LAST_SHARD]
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05}-of-{shards:05}.safetensors"
        # Header order is not name order on purpose: readers must sort.
        rows = [(n, dtype, s, encode(values(n, s, kind, weight_scale), dtype)) for n, s, kind in reversed(part)]
        write_safetensors(out / fname, rows)
        weight_map.update({n: fname for n, *_ in part})
    if shards > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2))
    if tokenizer:
        write_tokenizer(out)


def write_tokenizer(out):
    """A 64-piece sentencepiece model (the converter classes read tokenizer.model)."""
    import io
    import sentencepiece as spm

    words = ["".join(chr(97 + (i * 7 + j * 3) % 26) for j in range(1 + i % 6)) for i in range(400)]
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                   vocab_size=64, model_type="bpe", character_coverage=1.0,
                                   num_threads=1, minloglevel=2)
    (out / "tokenizer.model").write_bytes(model.getvalue())


# ---------------------------------------------------------------------------
# Summaries of a GGUF file.

def jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def summarize(path, tokenizer=False):
    """Metadata (all but general.* and tokenizer.*) and tensors; with `tokenizer`, the
    tokenizer.* keys only."""
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(str(path))
    meta = []
    for f in r.fields.values():
        if tokenizer != f.name.startswith("tokenizer."):
            continue
        if f.name.startswith(("general.", "GGUF.")):
            continue
        ty = GGUFValueType(f.types[0]).name
        v = jsonable(f.contents())
        if ty == "ARRAY":
            ty = f"ARRAY[{GGUFValueType(f.types[-1]).name}]"
            if len(v) > LONG_ARRAY:
                text = json.dumps(v, separators=(",", ":"))
                v = {"len": len(v), "sha256": hashlib.sha256(text.encode()).hexdigest()}
        meta.append([f.name, ty, v])
    if tokenizer:
        return meta
    tensors = []
    for t in r.tensors:
        start = int(t.data_offset)
        data = bytes(r.data[start:start + int(t.n_bytes)])
        tensors.append([t.name, [int(x) for x in t.shape], t.tensor_type.name,
                        hashlib.sha256(data).hexdigest()])
    return {"metadata": meta, "tensors": tensors}


def llama_cpp_order(names):
    """llama-quantize's order: tensors outside layers first, then by layer, by name."""
    def key(n):
        parts = n.split(".")
        layer = int(parts[1]) if parts[0] == "blk" and parts[1].isdigit() else -1
        return (layer, n)
    return sorted(names, key=key)


# ---------------------------------------------------------------------------

def llama_cpp_dir():
    env = os.environ.get("LLAMA_CPP")
    rel = Path("third_party/llama_cpp_python-0.3.36/vendor/llama.cpp")
    for d in ([Path(env)] if env else []) + [ROOT / rel]:
        if (d / "convert_hf_to_gguf.py").is_file():
            return d
    sys.exit("llama.cpp source not found (set LLAMA_CPP)")


def generate(only, work):
    lcpp = llama_cpp_dir()
    sys.path.insert(0, str(lcpp / "gguf-py"))
    from importlib.metadata import version
    versions = {"llama.cpp": str(lcpp.relative_to(lcpp.parents[2])) if "third_party" in str(lcpp) else str(lcpp),
                "torch": version("torch"), "transformers": version("transformers")}
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for arch in only:
        d = work / arch / "model"
        if d.exists():
            shutil.rmtree(d)
        write_folder(arch, d, tokenizer=True)
        doc = {"arch": arch, "config": json.loads((d / "config.json").read_text()),
               "made_with": versions}
        for ot in OUTTYPES:
            out = work / arch / f"{arch}-{ot}.gguf"
            cmd = [sys.executable, str(lcpp / "convert_hf_to_gguf.py"), str(d),
                   "--outtype", ot, "--outfile", str(out)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"{arch}: convert_hf_to_gguf.py failed:\n{p.stderr[-4000:]}")
            doc[ot] = summarize(out)
            if ot == "f32":
                doc["tokenizer"] = summarize(out, tokenizer=True)
        path = GOLDEN / f"{arch}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{path.relative_to(ROOT)}: {len(doc['f32']['tensors'])} tensors, "
              f"{len(doc['f32']['metadata'])} keys")


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{p.stderr[-4000:]}")
    return p.stdout


def compare(arch, ot, golden, got, store_names, errors):
    tag = f"{arch} {ot}"
    gm, sm = golden["metadata"], got["metadata"]
    gk, sk = [m[0] for m in gm], [m[0] for m in sm]
    for k in gk:
        if k not in sk:
            errors.append(f"{tag}: smelt does not write `{k}`")
    for k in sk:
        if k not in gk:
            errors.append(f"{tag}: smelt writes `{k}`, convert_hf_to_gguf.py does not")
    if [k for k in gk if k in sk] != [k for k in sk if k in gk]:
        errors.append(f"{tag}: key order {sk} != {gk}")
    want = {m[0]: m for m in gm}
    for m in sm:
        if m[0] in want and m != want[m[0]]:
            errors.append(f"{tag}: {m[0]} is {m[1:]}, convert writes {want[m[0]][1:]}")
    gt = golden["tensors"]
    names = [t[0] for t in gt]
    if store_names != names:
        errors.append(f"{tag}: smelt's store order {store_names} != convert's {names}")
    if [t[0] for t in got["tensors"]] != llama_cpp_order(names):
        errors.append(f"{tag}: quantize output order is not llama-quantize's order of convert's names")
    by_name = {t[0]: t for t in got["tensors"]}
    for t in gt:
        s = by_name.get(t[0])
        if s is None:
            errors.append(f"{tag}: tensor {t[0]} missing")
        elif s != t:
            errors.append(f"{tag}: tensor {t[0]}: smelt {s[1:]} != convert {t[1:]}")


def compare_tokenizer(arch, golden, got, errors):
    """tokenizer.* keys: the same keys, types and values in the same order."""
    gk, sk = [m[0] for m in golden], [m[0] for m in got]
    if gk != sk:
        errors.append(f"{arch} tokenizer: keys {sk} != convert's {gk}")
    want = {m[0]: m for m in golden}
    for m in got:
        if m[0] in want and m != want[m[0]]:
            errors.append(f"{arch} tokenizer: {m[0]} is {m[1:]}, convert writes {want[m[0]][1:]}")


def check(only, smelt):
    errors = []
    n_tensors = 0
    with tempfile.TemporaryDirectory(prefix="convert-check-") as tmp:
        tmp = Path(tmp)
        for arch in only:
            path = GOLDEN / f"{arch}.json"
            if not path.exists():
                errors.append(f"{path.relative_to(ROOT)} missing")
                continue
            golden = json.loads(path.read_text())
            d = tmp / arch / "model"
            # With the golden's tokenizer.model when sentencepiece (scripts/setup-python) is
            # there to train it: then the tokenizer.* keys are compared too.
            try:
                import sentencepiece  # noqa: F401
                with_tokenizer = "tokenizer" in golden
            except ImportError:
                with_tokenizer = False
            write_folder(arch, d, tokenizer=with_tokenizer)
            if json.loads((d / "config.json").read_text()) != golden["config"]:
                errors.append(f"{arch}: the script's config.json differs from the golden's")
            try:
                inspect = json.loads(run([smelt, "inspect", "--json", str(d)]))
                store_names = [t["name"] for t in inspect["tensors"]]
                for ot in OUTTYPES:
                    out = tmp / arch / f"{ot}.gguf"
                    run([smelt, "quantize", str(d), "-o", str(out), "--type", SMELT_TYPE[ot]])
                    compare(arch, ot, golden[ot], summarize(out), store_names, errors)
                    if with_tokenizer and ot == "f32":
                        compare_tokenizer(arch, golden["tokenizer"], summarize(out, tokenizer=True), errors)
                    n_tensors += len(golden[ot]["tensors"])
            except RuntimeError as e:
                errors.append(f"{arch}: {e}")
    for e in errors:
        print("error:", e)
    print(f"convert goldens: {len(only)} architectures, {n_tensors} tensors, "
          f"{'FAILED' if errors else 'ok'}")
    return not errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="compare smelt with the committed goldens (no torch needed)")
    ap.add_argument("--only", help="comma-separated architectures (default: all)")
    ap.add_argument("--work", help="keep the folders and converted files here")
    ap.add_argument("--write-fixture", metavar="DIR",
                    help="only write the fixture folder(s) under DIR (with --only)")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else list(ARCHS)
    for a in only:
        if a not in ARCHS:
            sys.exit(f"unknown architecture {a} (known: {', '.join(ARCHS)})")
    if args.write_fixture:
        for a in only:
            write_folder(a, Path(args.write_fixture) / a, tokenizer=False)
        return
    if args.check:
        smelt = os.environ.get("SMELT_BIN", str(ROOT / "target" / "release" / "smelt"))
        sys.exit(0 if check(only, smelt) else 1)
    if args.work:
        generate(only, Path(args.work).resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="convert-golden-") as tmp:
            generate(only, Path(tmp))


if __name__ == "__main__":
    main()
