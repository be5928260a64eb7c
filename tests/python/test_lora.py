"""LoRA inputs (`model: BASE+ADAPTER`) against an independent numpy reference.

PEFT's merge_and_unload (what mergekit runs for a `+` input) makes W + scale * B @ A for each
targeted Linear, scale = lora_alpha / r (lora_alpha / sqrt(r) under use_rslora; alpha_pattern
overrides lora_alpha per module). Here the adapter is written with numpy in PEFT's file
layout, the merged weights are computed in numpy (float64), permuted as llama.cpp's
convert_hf_to_gguf.py permutes q/k, and compared with what smelt writes, read back with
gguf-py: within 1e-6, on a safetensors base and on a Q8_0 GGUF base.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file, save_file

from conftest import run_smelt

N_HEAD, N_HEAD_KV, LAYERS = 4, 2, 2
MODULES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def to_gguf_order(module: str, w: np.ndarray) -> np.ndarray:
    if module == "self_attn.q_proj":
        return permute(w, N_HEAD, N_HEAD)
    if module == "self_attn.k_proj":
        return permute(w, N_HEAD, N_HEAD_KV)
    return w


def write_adapter(folder: Path, base: dict, rank: int, alpha: float, *, rslora=False,
                  alpha_pattern=None, layers=(0, 1), dtype=np.float32, seed=0) -> dict:
    """A PEFT LoRA folder on every projection of `layers`; returns {hf module: delta (f64)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, deltas = {}, {}
    for layer in layers:
        for module in MODULES:
            hf = f"model.layers.{layer}.{module}"
            out_f, in_f = base[f"{hf}.weight"].shape
            a = (rng.standard_normal((rank, in_f)) * 0.1).astype(dtype)
            b = (rng.standard_normal((out_f, rank)) * 0.1).astype(dtype)
            tensors[f"base_model.model.{hf}.lora_A.weight"] = a
            tensors[f"base_model.model.{hf}.lora_B.weight"] = b
            a_ = alpha
            for key, value in (alpha_pattern or {}).items():
                if hf == key or hf.endswith("." + key):
                    a_ = value
                    break
            scale = a_ / np.sqrt(rank) if rslora else a_ / rank
            deltas[hf] = scale * (b.astype(np.float64) @ a.astype(np.float64))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": rslora,
        "alpha_pattern": alpha_pattern or {}, "rank_pattern": {},
        "target_modules": sorted({m.split(".")[-1] for m in MODULES}),
        "fan_in_fan_out": False, "bias": "none", "task_type": "CAUSAL_LM",
    }))
    return deltas


def gguf_tensors(path: Path) -> dict:
    reader = GGUFReader(str(path))
    return {t.name: dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
            for t in reader.tensors}


def check(out: Path, base_gguf_order: dict, deltas: dict):
    got = gguf_tensors(out)
    assert set(got) == set(base_gguf_order)
    touched = 0
    for name, want in base_gguf_order.items():
        want = want.astype(np.float64)
        layer = name.split(".")[1] if name.startswith("blk.") else None
        for module, short in MODULES.items():
            hf = f"model.layers.{layer}.{module}"
            if name == f"blk.{layer}.{short}.weight" and hf in deltas:
                want = want + to_gguf_order(module, deltas[hf])
                touched += 1
        err = np.abs(got[name] - want) / np.maximum(1.0, np.abs(want))
        assert err.max() <= 1e-6, (name, err.max())
    assert touched == len(deltas)


@pytest.fixture(scope="module")
def base(scratch):
    folder = scratch / "lora-base"
    run_smelt("make-test-model", "-o", folder, "--layers", LAYERS, "--heads", N_HEAD,
              "--kv-heads", N_HEAD_KV, "--dtype", "F32", "--seed", 7)
    return folder


def test_lora_on_a_safetensors_base(base, scratch):
    hf = load_file(str(base / "model.safetensors"))
    deltas = write_adapter(scratch / "adapter-a", hf, rank=4, alpha=8.0)
    recipe = scratch / "lora-a.yaml"
    recipe.write_text(f"merge_method: passthrough\ndtype: float32\nmodels:\n"
                      f"  - model: {base}+{scratch / 'adapter-a'}\n")
    run_smelt("merge", recipe, "-o", scratch / "out-a", "--types", "F32")
    # The base as smelt converts it, without the adapter, is the reference's starting point.
    run_smelt("quantize", base, "-o", scratch / "base.gguf", "--type", "F32")
    check(scratch / "out-a" / "lora-a-F32.gguf", gguf_tensors(scratch / "base.gguf"), deltas)


def test_rslora_alpha_pattern_f16_adapter_on_a_q8_0_gguf_base(base, scratch):
    q8 = scratch / "base-q8.gguf"
    run_smelt("quantize", base, "-o", q8, "--type", "Q8_0")
    hf = load_file(str(base / "model.safetensors"))
    deltas = write_adapter(scratch / "adapter-b", hf, rank=8, alpha=16.0, rslora=True,
                           alpha_pattern={"v_proj": 3.0}, layers=(1,), dtype=np.float16,
                           seed=1)
    recipe = scratch / "lora-b.yaml"
    recipe.write_text("merge_method: linear\ndtype: float32\nmodels:\n"
                      f"  - model: {q8}+{scratch / 'adapter-b'}\n"
                      "    parameters: {weight: 1.0}\n")
    run_smelt("merge", recipe, "-o", scratch / "out-b", "--types", "F32")
    check(scratch / "out-b" / "lora-b-F32.gguf", gguf_tensors(q8), deltas)
