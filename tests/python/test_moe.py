"""A mergekit-moe config made into a Mixtral-style GGUF by `smelt merge`, from three tiny dense
models: llama.cpp loads it and generates (F16 and Q8_0), and its routers send each expert's
positive prompts to that expert. The routing is recomputed here, independently of smelt: token
ids from `llama-tokenize`, embeddings and weights from the GGUF through PyPI `gguf`, and for
`gate_mode: hidden` a numpy forward pass of the base model (llama.cpp's Llama graph: RMS norm,
RoPE on adjacent pairs of the GGUF-permuted q/k rows, grouped-query causal attention, SwiGLU)."""
import json
import re
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

from conftest import ROOT, generate, run_llama_tool, run_smelt
from test_llama_quantize import llama_bin  # noqa: F401  (fixture)

PROMPTS = [
    ["write a function in rust", "fix this compiler error"],
    ["a poem about the sea"],
    ["what is 12 times 7"],
]


@pytest.fixture(scope="module")
def dense(scratch):
    for seed in (1, 2, 3):
        run_smelt("make-test-model", "-o", scratch / f"m{seed}.gguf", "--layers", "2", "--seed", seed,
                  "--dtype", "F16")
    return scratch


def build(dense: Path, mode: str, types: str, shared: str = "") -> Path:
    """The three-expert config (plus `shared`, a `shared_experts:` block) merged at `types`."""
    experts = "".join(
        f"  - source_model: {dense / f'm{m}.gguf'}\n    positive_prompts: {json.dumps(p)}\n"
        for m, p in zip((2, 3, 1), PROMPTS))
    name = f"moe-{mode}" if not shared else f"qwen-{mode}"
    cfg = dense / f"{name}.yaml"
    cfg.write_text(f"base_model: {dense / 'm1.gguf'}\ngate_mode: {mode}\nexperts_per_token: 2\nexperts:\n{experts}"
                   + shared)
    out = dense / f"out-{name}"
    run_smelt("merge", cfg, "-o", out, "--types", types)
    return out


def tensors(path: Path) -> dict:
    return {t.name: np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(path).tensors}


def field(path: Path, key: str):
    f = gguf.GGUFReader(path).fields[key]
    return f.parts[f.data[0]][0]


def token_ids(bin_dir: Path, model: Path, text: str) -> list:
    p = subprocess.run([str(bin_dir / "llama-tokenize"), "-m", str(model), "-p", text, "--ids", "--no-bos",
                        "--log-disable"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def rms_norm(x, w, eps=1e-5):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope_adjacent(x, base=10000.0):
    """llama.cpp's RoPE for Llama (pairs 2i, 2i+1 of each head), x: (tokens, heads, head_dim)."""
    t, _, d = x.shape
    theta = np.arange(t)[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def layer_inputs(w: dict, ids: list, n_layer: int, n_head=4, n_head_kv=2) -> list:
    """The residual stream entering each layer (HF's hidden_states[:-1]) of a dense tiny llama."""
    x = w["token_embd.weight"][ids].astype(np.float64)
    states = []
    for l in range(n_layer):
        states.append(x)
        g = lambda n: w[f"blk.{l}.{n}.weight"].astype(np.float64)  # noqa: E731
        h = rms_norm(x, g("attn_norm"))
        t, hd = len(ids), x.shape[1] // n_head
        q = rope_adjacent((h @ g("attn_q").T).reshape(t, n_head, hd))
        k = rope_adjacent((h @ g("attn_k").T).reshape(t, n_head_kv, hd))
        v = (h @ g("attn_v").T).reshape(t, n_head_kv, hd)
        rep = n_head // n_head_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(hd)
        s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        a = np.einsum("htu,uhd->thd", p, v).reshape(t, -1)
        x = x + a @ g("attn_output").T
        h = rms_norm(x, g("ffn_norm"))
        gate = h @ g("ffn_gate").T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ g("ffn_up").T)) @ g("ffn_down").T
    return states


@pytest.mark.parametrize("mode", ["cheap_embed", "hidden"])
def test_moe_routes_each_experts_prompts_to_it(dense, llama_bin, mode):  # noqa: F811
    out = build(dense, mode, "F32")
    model = out / f"moe-{mode}-F32.gguf"
    assert field(model, "llama.expert_count") == 3 and field(model, "llama.expert_used_count") == 2
    base = tensors(dense / "m1.gguf")
    moe = tensors(model)
    bos = int(field(dense / "m1.gguf", "tokenizer.ggml.bos_token_id"))
    for e, prompts in enumerate(PROMPTS):
        ids = [[bos] + token_ids(llama_bin, model, p) for p in prompts]
        for layer in range(2):
            router = moe[f"blk.{layer}.ffn_gate_inp.weight"]  # (experts, hidden)
            assert router.shape == (3, 64)
            if mode == "cheap_embed":
                v = sum(base["token_embd.weight"][i].astype(np.float64).sum(0) for i in ids)
                v /= np.linalg.norm(v)
                assert np.allclose(router[e], v, atol=1e-5), (e, layer)
            else:
                # mergekit's `hidden`: the last token's state entering the layer, averaged
                # over the expert's prompts.
                v = np.mean([layer_inputs(base, i, 2)[layer][-1] for i in ids], axis=0)
                assert np.allclose(router[e], v / np.linalg.norm(v), atol=2e-4), (e, layer)
            scores = router @ v
            assert int(np.argmax(scores)) == e, (mode, e, layer, scores)


def test_moe_loads_and_generates_in_llama_cpp(dense, llama_bin):  # noqa: F811
    out = build(dense, "cheap_embed", "F16,Q8_0")
    for ty in ("F16", "Q8_0"):
        model = out / f"moe-cheap_embed-{ty}.gguf"
        p = generate(llama_bin, model, "write a function", 3)
        err, text = p.stderr.decode("utf-8", "replace"), p.stdout.decode("utf-8", "replace")
        assert p.returncode == 0, err[-2000:]
        assert re.search(r"n_expert\s+= 3\n", err) and re.search(r"n_expert_used\s+= 2\n", err), err[-3000:]
        assert text.strip().startswith("write a function") and len(text.strip()) > len("write a function"), text
    # Each expert's slice of the stacked tensors is its dense source's MLP, byte for byte.
    moe = gguf.GGUFReader(out / "moe-cheap_embed-F16.gguf")
    stacked = {t.name: t.data for t in moe.tensors}
    for e, m in enumerate((2, 3, 1)):
        src = {t.name: t.data for t in gguf.GGUFReader(dense / f"m{m}.gguf").tensors}
        for dense_name, exps in (("ffn_gate", "ffn_gate_exps"), ("ffn_up", "ffn_up_exps"), ("ffn_down", "ffn_down_exps")):
            assert np.array_equal(stacked[f"blk.1.{exps}.weight"][e], src[f"blk.1.{dense_name}.weight"]), (e, exps)


def test_qwen_moe_with_a_shared_expert_loads_and_generates_in_llama_cpp(dense, llama_bin):  # noqa: F811
    """mergekit-moe's Qwen MoE output (one gated shared expert) as llama.cpp's qwen2moe: it
    loads with the shared expert's tensors and generates, at F16 and Q8_0."""
    shared = f"shared_experts:\n  - source_model: {dense / 'm3.gguf'}\n    positive_prompts: [\"anything at all\"]\n"
    out = build(dense, "cheap_embed", "F16,Q8_0", shared)
    for ty in ("F16", "Q8_0"):
        model = out / f"qwen-cheap_embed-{ty}.gguf"
        assert gguf.GGUFReader(model).fields["general.architecture"].contents() == "qwen2moe"
        p = generate(llama_bin, model, "write a function", 3)
        err, text = p.stderr.decode("utf-8", "replace"), p.stdout.decode("utf-8", "replace")
        assert p.returncode == 0, err[-2000:]
        assert re.search(r"arch\s+= qwen2moe\n", err), err[-3000:]
        assert re.search(r"n_expert\s+= 3\n", err) and re.search(r"n_ff_shexp\s+= \d+\n", err), err[-3000:]
        assert text.strip().startswith("write a function") and len(text.strip()) > len("write a function"), text


def test_qwen_moe_of_one_model_computes_that_model_in_llama_cpp(scratch, llama_bin):  # noqa: F811
    """A Qwen MoE whose one routed expert (always chosen, weight 1) is the base and whose shared
    expert is silenced (`residual_scale: 0`) computes the dense base: llama-perplexity's KL
    divergence of its token distributions from the base's is nil and every top token is the
    same, through qwen2moe's graph (NeoX RoPE on the unpermuted q/k rows, the shared expert's
    gate and MLP) and llama's. (Left permuted, the q/k rows change 2 % of the top tokens.)"""
    d = scratch / "qwen-one"
    d.mkdir()
    base = d / "m.gguf"
    run_smelt("make-test-model", "-o", base, "--layers", "2", "--seed", "5", "--dtype", "F32")
    cfg = d / "one.yaml"
    cfg.write_text(f"base_model: {base}\ngate_mode: cheap_embed\nexperts_per_token: 1\nexperts:\n"
                   f"  - source_model: {base}\n    positive_prompts: [\"write a function\"]\n"
                   f"shared_experts:\n  - source_model: {base}\n    positive_prompts: [\"anything\"]\n"
                   "    residual_scale: 0\n")
    run_smelt("merge", cfg, "-o", d / "out", "--types", "F32")
    moe = d / "out" / "one-F32.gguf"
    assert gguf.GGUFReader(moe).fields["general.architecture"].contents() == "qwen2moe"
    tool = [llama_bin / "llama-perplexity", "-f", ROOT / "data" / "calibration.txt", "-c", 64, "--chunks", 8,
            "-t", "2", "-fa", "off", "--kl-divergence-base", d / "base.kld"]
    run_llama_tool([*tool, "-m", base], "Final estimate")
    p = run_llama_tool([*tool, "-m", moe, "--kl-divergence"], "Same top p")
    log = p.stdout + p.stderr
    mean_kld = float(re.search(r"Mean\s+KLD:\s+(-?[0-9.]+)", log).group(1))
    same_top = float(re.search(r"Same top p:\s+([0-9.]+)", log).group(1))
    assert mean_kld < 1e-6 and same_top == 100.0, log[-1500:]
