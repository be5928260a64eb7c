#!/usr/bin/env python3
"""Cross-check smelt's Hugging Face reader against llama.cpp's own Python code.

Writes a tiny sharded Llama folder with the `safetensors` package into DIR, plus
DIR/expected.json: for every tensor, the canonical name from gguf-py's tensor map, the ggml
shape and the values after `LlamaModel.permute` taken verbatim from convert_hf_to_gguf's
conversion/llama.py (run on numpy arrays; torch is not needed for reshape/swapaxes).

    .venv/bin/python scripts/crosscheck-safetensors.py target/xc
    SMELT_HF_CROSSCHECK=target/xc cargo test --lib python_crosscheck -- --ignored
"""

import ast
import json
import os
import sys
from pathlib import Path

import numpy as np
import gguf
from safetensors.numpy import save_file

# llama.cpp's source (from the llama-cpp-python sdist that scripts/build-llama-cpp unpacks).
LLAMA_CPP = Path(
    os.environ.get(
        "LLAMA_CPP",
        Path(__file__).resolve().parent.parent
        / "third_party/llama_cpp_python-0.3.36/vendor/llama.cpp",
    )
)


def load_permute():
    """`LlamaModel.permute`, extracted from llama.cpp's source."""
    source = LLAMA_CPP / "conversion" / "llama.py"
    if not source.is_file():
        sys.exit(f"{source} not found: set LLAMA_CPP to a llama.cpp source tree "
                 "(scripts/build-llama-cpp unpacks one into third_party/)")
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "permute":
            node.decorator_list = []
            node.args.args[0].annotation = None
            for a in node.args.args[1:]:
                a.annotation = None
            node.returns = None
            ns = {}
            exec(compile(ast.Module([node], []), "llama.py", "exec"), ns)
            return ns["permute"]
    raise SystemExit("permute not found")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    permute = load_permute()
    n_embd, n_head, n_head_kv, n_ff, n_vocab, n_layer = 32, 4, 2, 48, 12, 3
    head_dim = n_embd // n_head
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": n_embd,
        "intermediate_size": n_ff,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "num_hidden_layers": n_layer,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": n_vocab,
        "tie_word_embeddings": False,
    }
    (out / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    hf = {
        "model.embed_tokens.weight": (n_vocab, n_embd),
        "model.norm.weight": (n_embd,),
        "lm_head.weight": (n_vocab, n_embd),
    }
    for i in range(n_layer):
        p = f"model.layers.{i}."
        hf |= {
            p + "input_layernorm.weight": (n_embd,),
            p + "post_attention_layernorm.weight": (n_embd,),
            p + "self_attn.q_proj.weight": (n_embd, n_embd),
            p + "self_attn.q_proj.bias": (n_embd,),
            p + "self_attn.k_proj.weight": (n_head_kv * head_dim, n_embd),
            p + "self_attn.k_proj.bias": (n_head_kv * head_dim,),
            p + "self_attn.v_proj.weight": (n_head_kv * head_dim, n_embd),
            p + "self_attn.o_proj.weight": (n_embd, n_embd),
            p + "mlp.gate_proj.weight": (n_ff, n_embd),
            p + "mlp.up_proj.weight": (n_ff, n_embd),
            p + "mlp.down_proj.weight": (n_embd, n_ff),
        }
    arrays = {}
    for k, (name, shape) in enumerate(sorted(hf.items())):
        dtype = np.float16 if k % 2 else np.float32
        arrays[name] = rng.standard_normal(shape).astype(dtype)
    names = sorted(arrays)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    for shard, ns in shards.items():
        save_file({n: arrays[n] for n in ns}, str(out / shard), metadata={"format": "pt"})
        weight_map |= {n: shard for n in ns}
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    expected = []
    for name in names:
        data = arrays[name].astype(np.float32)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, n_head, n_head)
        if name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, n_head, n_head_kv)
        canonical = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert canonical, name
        expected.append(
            {
                "hf": name,
                "name": canonical,
                "shape": list(reversed(data.shape)),
                "values": [float(x) for x in data.reshape(-1)],
            }
        )
    (out / "expected.json").write_text(json.dumps({"tensors": expected}))
    print(f"wrote {len(expected)} tensors to {out}")


if __name__ == "__main__":
    main()
