"""`smelt eval` against llama.cpp's llama-perplexity on the same files and text: perplexity
(per chunk and final, with its error estimate) and, against a reference, KL divergence and
same-top-token agreement.

With F32 weights both compute the same float graph and agree to about 1e-5; with quantized
weights smelt rounds the activations to Q8_0/Q8_K/F16 as llama.cpp's CPU kernels do, but sums
in another order, so the numbers agree to a fraction of a percent (measured in
scripts/eval-parity); the tests allow 1%."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_llama_tool, run_smelt
from test_llama_quantize import llama_bin  # noqa: F401  (fixture)

# smelt's built-in calibration text, in the repository: the same on every machine.
TEXT = ROOT / "data" / "calibration.txt"


def llama_perplexity(bin_dir: Path, model: Path, ctx: int, chunks: int, *extra) -> str:
    # Without flash attention: smelt computes that graph (llama.cpp's CPU flash attention
    # accumulates the values in f16, which moves perplexities by a few tenths of a percent).
    # The KL-divergence run ends with its statistics, the others with the final estimate.
    last = "Same top p" if "--kl-divergence" in map(str, extra) else "Final estimate"
    p = run_llama_tool([bin_dir / "llama-perplexity", "-m", model, "-f", TEXT, "-c", ctx,
                        "--chunks", chunks, "-t", "2", "-fa", "off", *extra], last)
    return p.stdout + p.stderr


def final_ppl(log: str) -> tuple[float, float]:
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
    assert m, log[-2000:]
    return float(m.group(1)), float(m.group(2))


def chunk_ppls(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", log)]


def smelt_eval(model: Path, ctx: int, chunks: int, *extra) -> dict:
    p = run_smelt("eval", model, "--text", TEXT, "--ctx", ctx, "--chunks", chunks, "--json", *extra)
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def tiny(scratch) -> Path:
    """A random llama whose rows divide into 256 (k-quants apply), F32 weights."""
    path = scratch / "eval-tiny-F32.gguf"
    run_smelt("make-test-model", "-o", path, "--layers", "2", "--hidden", "256", "--ff", "512",
              "--heads", "4", "--kv-heads", "2", "--vocab", "512", "--dtype", "F32", "--seed", "7")
    return path


def test_f32_perplexity_equals_llama_perplexity(llama_bin, tiny):
    ours = smelt_eval(tiny, 128, 6)
    log = llama_perplexity(llama_bin, tiny, 128, 6)
    ppl, err = final_ppl(log)
    assert ours["chunks"] == 6
    assert ours["perplexity"] == pytest.approx(ppl, rel=1e-4)
    assert ours["perplexity_error"] == pytest.approx(err, rel=1e-3)
    assert ours["per_chunk"] == pytest.approx(chunk_ppls(log), rel=1e-4)


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_K_M", "Q4_0"])
def test_quantized_perplexity_is_llama_perplexitys_within_a_percent(llama_bin, tiny, scratch, qtype):
    q = scratch / f"eval-tiny-{qtype}.gguf"
    run_smelt("quantize", tiny, "-o", q, "--type", qtype)
    ours = smelt_eval(q, 128, 6)
    ppl, _ = final_ppl(llama_perplexity(llama_bin, q, 128, 6))
    assert ours["perplexity"] == pytest.approx(ppl, rel=1e-2)


def test_kl_divergence_and_top_token_agree_with_llama_perplexity(llama_bin, tiny, scratch):
    q = scratch / "eval-tiny-kld-Q2_K.gguf"
    run_smelt("quantize", tiny, "-o", q, "--type", "Q2_K")
    base = scratch / "eval-tiny.kld"
    llama_perplexity(llama_bin, tiny, 128, 6, "--kl-divergence-base", base)
    log = llama_perplexity(llama_bin, q, 128, 6, "--kl-divergence-base", base, "--kl-divergence")
    want_kld = float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", log).group(1))
    want_same = float(re.search(r"Same top p:\s+([0-9.]+)", log).group(1))
    ours = smelt_eval(q, 128, 6, "--reference", tiny)
    assert ours["kld"]["reference_perplexity"] == pytest.approx(final_ppl(llama_perplexity(llama_bin, tiny, 128, 6))[0], rel=1e-4)
    assert ours["kld"]["mean"] == pytest.approx(want_kld, rel=0.25)
    assert ours["kld"]["same_top_percent"] == pytest.approx(want_same, abs=3.0)


def test_smollm2_perplexity_equals_llama_perplexity(llama_bin, smollm2, scratch):
    """A real model (SmolLM2-135M, its Q4_1 dequantized to F32, tied embeddings, GQA)."""
    f32 = scratch / "eval-smollm2-F32.gguf"
    run_smelt("quantize", smollm2, "-o", f32, "--type", "F32")
    ours = smelt_eval(f32, 256, 3)
    ppl, _ = final_ppl(llama_perplexity(llama_bin, f32, 256, 3))
    assert ours["perplexity"] == pytest.approx(ppl, rel=1e-3)


def test_text_too_short_for_one_chunk_is_an_error(tiny, scratch):
    short = scratch / "short.txt"
    short.write_text("too short")
    p = run_smelt("eval", tiny, "--text", short, "--ctx", 128, check=False)
    assert p.returncode != 0 and "at least 128" in p.stderr, p.stderr


def test_imatrix_matches_llama_imatrix(llama_bin, tiny, scratch):
    """`smelt imatrix` writes llama-imatrix's GGUF: the same keys, tensors, shapes and counts,
    and sums of squared activations within float-ordering noise of llama.cpp's."""
    import gguf
    import numpy as np

    ours_path, theirs_path = scratch / "imatrix-smelt.gguf", scratch / "imatrix-llama.gguf"
    run_smelt("imatrix", tiny, "--text", TEXT, "--ctx", 128, "--chunks", 4, "-o", ours_path)
    p = subprocess.run([str(llama_bin / "llama-imatrix"), "-m", str(tiny), "-f", str(TEXT), "-c", "128",
                        "--chunks", "4", "-t", "2", "-fa", "off", "--no-ppl", "-o", str(theirs_path)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    ours, theirs = gguf.GGUFReader(ours_path), gguf.GGUFReader(theirs_path)
    assert list(ours.fields) == list(theirs.fields)
    for key in ["general.type", "imatrix.chunk_count", "imatrix.chunk_size"]:
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    assert [(t.name, list(t.shape)) for t in ours.tensors] == [(t.name, list(t.shape)) for t in theirs.tensors]
    assert ours_path.stat().st_size == theirs_path.stat().st_size
    for a, b in zip(ours.tensors, theirs.tensors):
        if a.name.endswith(".counts"):
            assert np.array_equal(a.data, b.data), a.name
        else:
            np.testing.assert_allclose(a.data, b.data, rtol=2e-3, err_msg=a.name)
    # ... and quantize takes it.
    run_smelt("quantize", tiny, "-o", scratch / "imatrix-IQ2_XXS.gguf", "--type", "IQ2_XXS", "--imatrix", ours_path)
