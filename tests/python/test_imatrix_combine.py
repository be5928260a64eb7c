"""`smelt imatrix --chunks A..B` (partial matrices) and `smelt imatrix --combine` against
llama-imatrix: combining smelt's partial files gives llama-imatrix --in-file's combination of the
same files byte for byte, and the combination of the parts is the one-run matrix up to f32
summation order (counts and chunk count exact)."""
import subprocess

import gguf
import numpy as np

from conftest import run_smelt
from test_eval import TEXT, tiny  # noqa: F401  (fixture)
from test_llama_quantize import llama_bin  # noqa: F401  (fixture)

CTX = 128


def test_partial_matrices_combine_as_llama_imatrix_combines_them(llama_bin, tiny, tmp_path):
    parts = [tmp_path / f"part{k}.gguf" for k in range(3)]
    for p, rng in zip(parts, ["0..2", "2..3", "3..6"]):
        run_smelt("imatrix", tiny, "--text", TEXT, "--ctx", CTX, "--chunks", rng, "-o", p)
    ours = tmp_path / "combined.gguf"
    run_smelt("imatrix", "--combine", *parts, "-o", ours)
    theirs = tmp_path / "llama-combined.gguf"
    # No text: llama-imatrix only combines its --in-files (it asks for a model it does not load).
    cmd = [str(llama_bin / "llama-imatrix"), "-m", str(tiny), "-c", str(CTX), "-o", str(theirs),
           "--in-file", ",".join(map(str, parts))]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ours.read_bytes() == theirs.read_bytes()

    whole = tmp_path / "whole.gguf"
    run_smelt("imatrix", tiny, "--text", TEXT, "--ctx", CTX, "--chunks", 6, "-o", whole)
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(whole)
    assert a.fields["imatrix.chunk_count"].contents() == b.fields["imatrix.chunk_count"].contents() == 6
    assert a.fields["imatrix.datasets"].contents() == [str(TEXT)] * 3
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        if x.name.endswith(".counts"):
            assert np.array_equal(x.data, y.data), x.name
        else:
            np.testing.assert_allclose(x.data, y.data, rtol=1e-5, err_msg=x.name)


def test_bad_combines_are_refused(tiny, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    run_smelt("imatrix", tiny, "--text", TEXT, "--ctx", CTX, "--chunks", "0..1", "-o", a)
    run_smelt("imatrix", tiny, "--text", TEXT, "--ctx", 64, "--chunks", "0..1", "-o", b)
    p = run_smelt("imatrix", "--combine", a, b, "-o", tmp_path / "c.gguf", check=False)
    assert p.returncode != 0 and "one --ctx" in p.stderr, p.stderr
    p = run_smelt("imatrix", "--combine", a, tiny, "-o", tmp_path / "c.gguf", check=False)
    assert p.returncode != 0 and "not a GGUF imatrix" in p.stderr, p.stderr
    p = run_smelt("imatrix", tiny, "--text", TEXT, "--ctx", CTX, "--chunks", "0..100000", "-o", tmp_path / "d.gguf",
                  check=False)
    assert p.returncode != 0 and "the text holds" in p.stderr, p.stderr
    assert not (tmp_path / "c.gguf").exists() and not (tmp_path / "d.gguf").exists()
