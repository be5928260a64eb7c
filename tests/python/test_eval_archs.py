"""`smelt eval` runs every architecture smelt converts as llama.cpp runs it.

Each fixture of scripts/gen-golden-convert.py (random weights, real shapes and hyper-parameters:
Llama 3 RoPE factors, Mistral, Qwen2 biases and tied output, Qwen3 q/k norms, Gemma 2
soft-capping and sliding window, Gemma 3 local/global RoPE, Phi-3 fused projections and long
RoPE, Mixtral's routed experts) is converted by smelt, then evaluated by smelt and by
llama-perplexity on the same text: at F32 both compute the same float graph, so the perplexities
agree to 1e-4; at Q8_0 smelt rounds the activations as llama.cpp's kernels do and they agree
to 0.5%. The context (256) is longer than the Gemma fixtures' sliding window (128), so the
window is exercised.
"""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_llama_tool, run_smelt
from test_convert_llama import ARCHS, llama_bin  # noqa: F401  (fixture)

CTX, CHUNKS = 256, 2
# Matrices 12x the golden fixture's, so predictions are confident (perplexity far below the
# vocabulary size) and every quirk moves the result; soft-caps low enough to bite.
WEIGHT_SCALE = 12.0
CONFIG = {"gemma2": {"attn_logit_softcapping": 3.0, "final_logit_softcapping": 4.0},
          "gemma3": {"final_logit_softcapping": 6.0}}


def write_fixture(arch, work):
    code = ("import sys, json, importlib.util as u; from pathlib import Path; "
            f"s = u.spec_from_file_location('g', {str(ROOT / 'scripts' / 'gen-golden-convert.py')!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); "
            "m.write_folder(sys.argv[1], Path(sys.argv[2]), tokenizer=True, "
            "weight_scale=float(sys.argv[3]), config=json.loads(sys.argv[4]))")
    d = work / arch
    subprocess.run([sys.executable, "-c", code, arch, str(d), str(WEIGHT_SCALE),
                    json.dumps(CONFIG.get(arch, {}))], check=True)
    if arch == "phi3":
        (d / "added_tokens.json").write_text(json.dumps({"<|endoftext|>": 64}))
    return d


def fixture_text() -> str:
    """Words over the fixture tokenizer's alphabet (lower-case letters, single spaces)."""
    state, words = 12345, []
    for _ in range(2400):
        state = (state * 1103515245 + 12345) % 2**31
        n = 1 + state % 6
        word = ""
        for _ in range(n):
            state = (state * 1103515245 + 12345) % 2**31
            word += chr(97 + (state >> 8) % 26)
        words.append(word)
    return " ".join(words)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval-archs") / "text.txt"
    path.write_text(fixture_text())
    return path


def llama_ppl(bin_dir, model, text) -> float:
    p = run_llama_tool([bin_dir / "llama-perplexity", "-m", model, "-f", text, "-c", CTX,
                        "--chunks", CHUNKS, "-t", "2", "-fa", "off"], "Final estimate")
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", p.stdout + p.stderr)
    assert m, (p.stdout + p.stderr)[-2000:]
    return float(m.group(1))


def smelt_ppl(model, text) -> float:
    p = run_smelt("eval", model, "--text", text, "--ctx", CTX, "--chunks", CHUNKS, "--json")
    return json.loads(p.stdout)["perplexity"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_evaluates_as_llama_perplexity(arch, tmp_path, text, llama_bin):
    src = write_fixture(arch, tmp_path / arch)
    out = tmp_path / f"{arch}-out"
    run_smelt("convert", src, "-o", out, "--types", "F32,Q8_0")
    f32, q8 = sorted(out.glob("*-F32.gguf"))[0], sorted(out.glob("*-Q8_0.gguf"))[0]
    ours, theirs = smelt_ppl(f32, text), llama_ppl(llama_bin, f32, text)
    assert ours == pytest.approx(theirs, rel=1e-4), (arch, ours, theirs)
    ours, theirs = smelt_ppl(q8, text), llama_ppl(llama_bin, q8, text)
    assert ours == pytest.approx(theirs, rel=5e-3), (arch, ours, theirs)


@pytest.mark.parametrize("arch", ["mixtral", "gemma2"])
def test_imatrix_of_experts_and_gemma_matches_llama_imatrix(arch, tmp_path, text, llama_bin):
    """Mixtral's stacked experts get one block of sums and one count per expert (the routing
    must agree token for token for the counts to be equal); Gemma's GELU network and
    post-norms feed its down projection."""
    import gguf
    import numpy as np

    src = write_fixture(arch, tmp_path / arch)
    out = tmp_path / f"{arch}-out"
    run_smelt("convert", src, "-o", out, "--types", "F32")
    model = sorted(out.glob("*-F32.gguf"))[0]
    ours, theirs = tmp_path / "smelt.imatrix.gguf", tmp_path / "llama.imatrix.gguf"
    run_smelt("imatrix", model, "--text", text, "--ctx", CTX, "--chunks", CHUNKS, "-o", ours)
    p = subprocess.run([str(llama_bin / "llama-imatrix"), "-m", str(model), "-f", str(text), "-c", str(CTX),
                        "--chunks", str(CHUNKS), "-t", "2", "-fa", "off", "--no-ppl", "-o", str(theirs)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    assert [(t.name, list(t.shape)) for t in a.tensors] == [(t.name, list(t.shape)) for t in b.tensors]
    if arch == "mixtral":
        assert any(t.name.endswith("ffn_down_exps.weight.counts") and t.data.size == 4 for t in a.tensors)
    for x, y in zip(a.tensors, b.tensors):
        if x.name.endswith(".counts"):
            assert np.array_equal(x.data, y.data), x.name
        else:
            np.testing.assert_allclose(x.data, y.data, rtol=1e-2, err_msg=x.name)
