"""`smelt quantize --target-bpw/--target-size` against llama.cpp: the llama-quantize command line
smelt prints (`--pure`, a base type, one anchored `--tensor-type` per tensor that differs, the
target recorded with `--override-kv`) makes a byte-identical file from the same input — with
and without an imatrix, and on widths whose rows do not divide into 256 (k-quant fallbacks)."""
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import run_smelt
from test_llama_quantize import assert_same_file, llama_bin  # noqa: F401 (fixture)


def tiny(tmp_path: Path, hidden: int) -> Path:
    p = tmp_path / f"tiny-{hidden}.gguf"
    run_smelt("make-test-model", "--layers", "2", "--hidden", hidden, "--ff", 512, "--heads", 4,
              "--kv-heads", 2, "--vocab", 300, "-o", p)
    return p


def reproduce(llama_bin: Path, printed: str, theirs: Path):
    words = shlex.split(printed.strip().splitlines()[-1])
    assert words[0] == "llama-quantize" and "--pure" in words
    words[0] = str(llama_bin / "llama-quantize")
    words[-2] = str(theirs)
    p = subprocess.run(words, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.mark.parametrize("hidden,target", [(256, ["--target-bpw", "4.9"]), (320, ["--target-bpw", "5.5"]),
                                           (256, ["--target-size", "700K"])])
def test_printed_command_makes_the_same_file(llama_bin, tmp_path, hidden, target):  # noqa: F811
    model = tiny(tmp_path, hidden)
    ours, theirs = tmp_path / "smelt.gguf", tmp_path / "llama.gguf"
    out = run_smelt("quantize", model, "-o", ours, *target, "-q").stdout
    assert "--tensor-type" in out, out
    reproduce(llama_bin, out, theirs)
    assert_same_file(ours, theirs)


def test_printed_command_with_imatrix(llama_bin, tmp_path):  # noqa: F811
    model = tiny(tmp_path, 256)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    im = tmp_path / "im.gguf"
    run_smelt("imatrix", model, "-o", im, "--text", text, "--ctx", 64)
    ours, theirs = tmp_path / "smelt.gguf", tmp_path / "llama.gguf"
    out = run_smelt("quantize", model, "-o", ours, "--target-bpw", "4.6", "--imatrix", im, "-q").stdout
    assert "--imatrix" in out and "--tensor-type" in out, out
    reproduce(llama_bin, out, theirs)
    assert_same_file(ours, theirs)


def test_merge_target_command_makes_the_same_file(llama_bin, tmp_path):  # noqa: F811
    """`smelt merge --types F32,4.9bpw`: the printed command names the merge written as F32,
    and llama-quantize makes the target file from it byte for byte."""
    a, b = tiny(tmp_path, 256), tmp_path / "b.gguf"
    run_smelt("make-test-model", "--layers", "2", "--hidden", 256, "--ff", 512, "--heads", 4,
              "--kv-heads", 2, "--vocab", 300, "--seed", 2, "-o", b)
    recipe = tmp_path / "lin.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.6}}\n"
                      f"  - model: {b}\n    parameters: {{weight: 0.4}}\n")
    out = run_smelt("merge", recipe, "-o", tmp_path / "out", "--types", "F32,4.9bpw", "-q").stdout
    assert str(tmp_path / "out" / "lin-F32.gguf") in out, out
    theirs = tmp_path / "llama.gguf"
    reproduce(llama_bin, out, theirs)
    assert_same_file(tmp_path / "out" / "lin-4.9bpw.gguf", theirs)
