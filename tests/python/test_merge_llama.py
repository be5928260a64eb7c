"""End to end: a frankenmerge made straight from SmolLM2's Q4_1 GGUF, written at Q8_0 and
Q4_K_M, loads and generates text in llama.cpp, and its perplexity is finite beside the
original's."""
import math
import re
from pathlib import Path

import pytest

from conftest import ROOT, generate, run_llama_tool, run_smelt
from test_llama_quantize import llama_bin  # noqa: F401  (fixture)

# smelt's built-in calibration text, in the repository: the same on every machine.
TEXT = ROOT / "data" / "calibration.txt"


def perplexity(bin_dir: Path, model: Path) -> float:
    p = run_llama_tool([bin_dir / "llama-perplexity", "-m", model, "-f", TEXT, "-c", "128",
                        "--chunks", "4", "-t", "2"], "Final estimate")
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", p.stdout + p.stderr)
    assert m, (p.stdout + p.stderr)[-2000:]
    return float(m.group(1))


@pytest.fixture(scope="module")
def frankenmerge(smollm2, scratch):
    recipe = scratch / "smol-frankenmerge.yaml"
    recipe.write_text(
        "merge_method: passthrough\n"
        "slices:\n"
        f"  - sources:\n      - model: {smollm2}\n        layer_range: [0, 20]\n"
        f"  - sources:\n      - model: {smollm2}\n        layer_range: [10, 30]\n"
        "output:\n  types: [Q8_0, Q4_K_M]\n"
    )
    out = scratch / "frankenmerge"
    run_smelt("merge", recipe, "-o", out)
    return out


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_frankenmerge_generates_in_llama_cpp(frankenmerge, llama_bin, qtype):  # noqa: F811
    model = frankenmerge / f"smol-frankenmerge-{qtype}.gguf"
    p = generate(llama_bin, model, "The capital of France is", 16)
    assert p.returncode == 0, p.stderr[-2000:]
    assert re.search(rb"n_layer\s+= 40\b", p.stderr), p.stderr[-2000:]
    generated = p.stdout.decode("utf-8", "replace").strip()
    assert generated.startswith("The capital of France is") and len(generated) > len("The capital of France is"), generated


def test_frankenmerge_perplexity_is_finite_beside_the_original(frankenmerge, smollm2, llama_bin):  # noqa: F811
    base = perplexity(llama_bin, smollm2)
    merged = perplexity(llama_bin, frankenmerge / "smol-frankenmerge-Q8_0.gguf")
    print(f"perplexity: original Q4_1 {base:.3f}, frankenmerge Q8_0 {merged:.3f}")
    assert math.isfinite(base) and math.isfinite(merged) and merged > 1.0
