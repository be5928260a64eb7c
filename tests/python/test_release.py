"""`smelt release` against the tools a downloader uses: `sha256sum -c SHA256SUMS` passes in the
folder, llama.cpp (llama-completion) loads and generates with every file of the release, split
sets included, and llama-gguf-split --merge of a split type gives the unsplit file smelt
quantize writes. The quality table's figures agree with llama-perplexity's KL divergence
against the same reference on the same text."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import generate, run_llama_tool, run_smelt
from test_llama_quantize import llama_bin  # noqa: F401  (fixture)
from split_keys import with_split_keys
from test_split_output import gguf_split

TYPES = "Q4_K_M,Q6_K,Q8_0,F16"


def words(n: int, salt: int) -> str:
    w = ["a", "release", "is", "measured", "on", "text", "its", "imatrix", "never", "saw", "and", "every",
         "file", "gets", "checked", "twice"]
    return " ".join(w[(i * 7 + i // 5 + salt) % len(w)] for i in range(n))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 2-layer llama with rows of 256 (k-quants without fallbacks), released unsplit and
    split by tensor count."""
    d = tmp_path_factory.mktemp("release")
    run_smelt("make-test-model", "--layers", "2", "--hidden", "256", "--ff", "768", "--heads", "4",
              "--kv-heads", "1", "--vocab", "1024", "--dtype", "F32", "-o", d / "m.gguf")
    (d / "calib.txt").write_text(words(3000, 0))
    (d / "eval.txt").write_text(words(3000, 3))
    common = ["--types", TYPES, "--text", d / "calib.txt", "--eval-text", d / "eval.txt", "--ctx", "128",
              "--imatrix-chunks", "4", "--eval-chunks", "4"]
    run_smelt("release", d / "m.gguf", "-o", d / "rel", *common)
    run_smelt("release", d / "m.gguf", "-o", d / "split", *common, "--no-eval", "--split-max-tensors", "8")
    return d


def test_sha256sum_checks_every_file(made):
    for rel in ["rel", "split"]:
        p = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=made / rel, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        listed = [line.split("  ", 1)[1] for line in (made / rel / "SHA256SUMS").read_text().splitlines()]
        on_disk = sorted(f.name for f in (made / rel).iterdir() if f.name != "SHA256SUMS")
        assert sorted(listed) == on_disk


def test_llama_cpp_loads_and_generates_with_every_file(made, llama_bin):
    manifest = json.loads((made / "split" / "release.json").read_text())
    assert [t["type"] for t in manifest["types"]] == TYPES.split(",")
    for rel in ["rel", "split"]:
        for t in json.loads((made / rel / "release.json").read_text())["types"]:
            first = made / rel / t["parts"][0]["file"]
            p = generate(llama_bin, first, "abc", 8)
            assert p.returncode == 0, f"{first.name}: {p.stderr[-2000:]!r}"
            assert p.stdout.startswith(b"abc"), p.stdout
            if len(t["parts"]) > 1:
                assert f"additional {len(t['parts']) - 1} GGUFs metadata loaded".encode() in p.stderr


def test_llama_gguf_split_merge_gives_the_unsplit_file(made, llama_bin, tmp_path):
    """The split release's files merged by llama-gguf-split equal the unsplit release's file
    (plus the split keys its --merge leaves)."""
    for ty in ["Q4_K_M", "F16"]:
        parts = sorted((made / "split").glob(f"m-{ty}-0000*-of-*.gguf"))
        assert len(parts) > 1, parts
        gguf_split(llama_bin, "--merge", parts[0], tmp_path / f"{ty}.gguf")
        whole = (made / "rel" / f"m-{ty}.gguf").read_bytes()
        assert (tmp_path / f"{ty}.gguf").read_bytes() == with_split_keys(whole), ty


def test_quality_figures_match_llama_perplexity(made, llama_bin, tmp_path):
    """Q8_0's perplexity and mean KLD in release.json against llama-perplexity's, the
    reference logits saved by llama-perplexity from the F32 source on the same text."""
    manifest = json.loads((made / "rel" / "release.json").read_text())
    q8 = next(t for t in manifest["types"] if t["type"] == "Q8_0")
    base = tmp_path / "base.kld"
    text = made / "eval.txt"
    ctx = ["-c", "128", "--chunks", "4", "-t", "2", "-b", "512"]
    run_llama_tool([llama_bin / "llama-perplexity", "-m", made / "m.gguf", "-f", text, *ctx,
                    "--kl-divergence-base", base], expect="Final estimate")
    p = run_llama_tool([llama_bin / "llama-perplexity", "-m", made / "rel" / q8["parts"][0]["file"], *ctx,
                        "--kl-divergence-base", base, "--kl-divergence"], expect="Mean    KLD")
    out = p.stdout + p.stderr
    ppl = float(re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", out).group(1))
    kld = float(re.search(r"Mean    KLD:\s*([-\d.e]+)", out).group(1))
    q = q8["quality"]
    assert abs(q["perplexity"] - ppl) / ppl < 0.005, (q, ppl)
    assert abs(q["kld_mean"] - kld) <= 0.05 * kld + 1e-4, (q, kld)
