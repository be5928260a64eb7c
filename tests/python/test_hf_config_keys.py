"""`smelt merge --format safetensors` from GGUF-only inputs: the config.json it rebuilds from
the GGUF hyper-parameters must be read by transformers as the same model.

config.json used to carry the first key of each converter lookup list (`n_layers`,
`prefix_dense_intermediate_size`, `global_rope_theta`), which transformers does not read:
it loaded its own defaults instead (intermediate_size 11008 for SmolLM2, true 1536;
rope_theta 10000, true 100000).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader
from transformers import AutoConfig

from conftest import ROOT, run_smelt

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mixtral"]


def gguf_number(reader: GGUFReader, key: str):
    field = reader.fields[key]
    return field.parts[field.data[0]][0].item()


def rope_theta(cfg):
    """transformers 4 keeps `rope_theta` on the config, 5 in `rope_parameters`."""
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
    return theta


def passthrough_to_hf(work: Path, model: Path, layers: int) -> Path:
    recipe = work / "all.yaml"
    recipe.write_text(f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {model}\n"
                      f"        layer_range: [0, {layers}]\n")
    out = work / "hf"
    run_smelt("merge", recipe, "-o", out, "--format", "safetensors", "--type", "F32")
    return out


def test_transformers_reads_the_gguf_hyper_parameters(tmp_path):
    tiny = tmp_path / "tiny.gguf"
    run_smelt("make-test-model", "-o", tiny, "--layers", "3", "--hidden", "96", "--ff", "160",
              "--heads", "6", "--kv-heads", "2")
    # Values no transformers default has.
    gguf = tmp_path / "model.gguf"
    run_smelt("quantize", tiny, "-o", gguf, "--type", "F32",
              "--override-kv", "llama.rope.freq_base=float:100000",
              "--override-kv", "llama.context_length=int:8192",
              "--override-kv", "llama.attention.layer_norm_rms_epsilon=float:0.000001")
    out = passthrough_to_hf(tmp_path, gguf, 3)

    r = GGUFReader(gguf)
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.model_type == "llama"
    assert cfg.intermediate_size == gguf_number(r, "llama.feed_forward_length") == 160
    assert rope_theta(cfg) == gguf_number(r, "llama.rope.freq_base") == 100000
    assert cfg.num_attention_heads == gguf_number(r, "llama.attention.head_count") == 6
    assert cfg.num_key_value_heads == gguf_number(r, "llama.attention.head_count_kv") == 2
    assert cfg.hidden_size == gguf_number(r, "llama.embedding_length") == 96
    assert cfg.num_hidden_layers == gguf_number(r, "llama.block_count") == 3
    assert cfg.max_position_embeddings == gguf_number(r, "llama.context_length") == 8192
    assert math.isclose(cfg.rms_norm_eps, gguf_number(r, "llama.attention.layer_norm_rms_epsilon"),
                        rel_tol=1e-6)


# Attributes of transformers' config classes that the GGUF carries, compared between the
# original folder and the folder rebuilt from its GGUF.
ATTRS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
         "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
         "max_position_embeddings", "original_max_position_embeddings", "sliding_window",
         "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
         "rope_local_base_freq", "partial_rotary_factor", "num_local_experts",
         "num_experts_per_tok"]


@pytest.mark.parametrize("arch", ARCHS)
def test_config_rebuilt_from_gguf_loads_as_the_original(arch, tmp_path):
    work = tmp_path / arch
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-golden-convert.py"), "--only", arch,
                    "--write-fixture", str(work)], check=True)
    src = work / arch
    n = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    gguf = work / "model.gguf"
    run_smelt("quantize", src, "-o", gguf, "--type", "F32")
    out = passthrough_to_hf(work, gguf, n)

    want, got = AutoConfig.from_pretrained(src), AutoConfig.from_pretrained(out)
    # A GGUF says `llama` for Mistral too; LlamaConfig reads the same keys.
    if arch != "mistral":
        assert type(got) is type(want), (type(got), type(want))
        assert got.architectures == want.architectures
    pairs = [(a, getattr(want, a, None), getattr(got, a, None)) for a in ATTRS]
    pairs.append(("rope_theta", rope_theta(want), rope_theta(got)))
    for name, w, g in pairs:
        if w is None:
            continue  # not an attribute of the original's class (or unset there)
        if isinstance(w, float) and isinstance(g, float):
            assert math.isclose(w, g, rel_tol=1e-6), (name, w, g)
        else:
            assert w == g, (name, w, g)
