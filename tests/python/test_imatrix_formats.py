"""`smelt imatrix --output-format dat` against llama-imatrix's own legacy `.dat` on the same
tiny F32 model and text; llama-quantize reading smelt's `.dat`; and `smelt imatrix` with no
--text, on the calibration text built into smelt."""
import struct
import subprocess
from pathlib import Path

import gguf
import numpy as np

from conftest import run_smelt
from test_eval import TEXT, tiny  # noqa: F401  (fixture)
from test_llama_quantize import assert_same_file, llama_bin, llama_quantize  # noqa: F401  (fixture)


def read_dat(path: Path):
    """llama-imatrix's legacy format: entries (name, ncall, values), chunk count, dataset."""
    b = path.read_bytes()
    pos = 0

    def i32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<i", b, pos)
        pos += 4
        return v

    entries = []
    for _ in range(i32()):
        n = i32()
        name = b[pos:pos + n].decode()
        pos += n
        ncall, nval = i32(), i32()
        values = np.frombuffer(b, "<f4", nval, pos)
        pos += 4 * nval
        entries.append((name, ncall, values))
    chunks = i32()
    n = i32()
    dataset = b[pos:pos + n].decode()
    assert pos + n == len(b), "trailing bytes"
    return entries, chunks, dataset


def smelt_and_llama_dat(llama_bin, model, scratch) -> tuple[Path, Path]:
    ours, theirs = scratch / "imatrix-smelt.dat", scratch / "imatrix-llama.dat"
    if not ours.exists():
        run_smelt("imatrix", model, "--text", TEXT, "--ctx", 128, "--chunks", 4, "--output-format", "dat",
                  "-o", ours)
    if not theirs.exists():
        p = subprocess.run([str(llama_bin / "llama-imatrix"), "-m", str(model), "-f", str(TEXT), "-c", "128",
                            "--chunks", "4", "-t", "2", "-fa", "off", "--no-ppl", "--output-format", "dat",
                            "-o", str(theirs)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
    return ours, theirs


def test_dat_matches_llama_imatrix_dat(llama_bin, tiny, scratch):
    ours, theirs = smelt_and_llama_dat(llama_bin, tiny, scratch)
    (a, a_chunks, a_data), (b, b_chunks, b_data) = read_dat(ours), read_dat(theirs)
    assert [(n, c, len(v)) for n, c, v in a] == [(n, c, len(v)) for n, c, v in b]
    assert len(a) == 14  # 7 matrices in each of 2 layers
    assert (a_chunks, a_data) == (b_chunks, b_data) == (4, str(TEXT))
    assert ours.stat().st_size == theirs.stat().st_size
    for (name, _, va), (_, _, vb) in zip(a, b):
        np.testing.assert_allclose(va, vb, rtol=2e-3, err_msg=name)


def test_llama_quantize_reads_our_dat_as_smelt_does(llama_bin, tiny, scratch, tmp_path):
    """llama-quantize takes smelt's .dat and makes the very file smelt quantize makes from it."""
    ours, _ = smelt_and_llama_dat(llama_bin, tiny, scratch)
    for qtype in ["IQ2_XXS", "Q4_K_M"]:
        mine, llamas = tmp_path / f"dat-smelt-{qtype}.gguf", tmp_path / f"dat-llama-{qtype}.gguf"
        run_smelt("quantize", tiny, "-o", mine, "--type", qtype, "--imatrix", ours)
        llama_quantize(llama_bin, tiny, llamas, qtype, "--imatrix", ours)
        assert_same_file(mine, llamas)
        meta = gguf.GGUFReader(mine).fields
        assert meta["quantize.imatrix.dataset"].contents() == str(TEXT)
        assert meta["quantize.imatrix.chunks_count"].contents() == 4


def test_imatrix_without_text_uses_the_built_in_calibration_text(tiny, scratch):
    out = scratch / "imatrix-default.gguf"
    p = run_smelt("imatrix", tiny, "--ctx", 128, "--chunks", 2, "-o", out)
    assert "smelt:calibration.txt" in p.stderr
    r = gguf.GGUFReader(out)
    assert r.fields["imatrix.datasets"].contents() == ["smelt:calibration.txt"]
    assert r.fields["imatrix.chunk_count"].contents() == 2
    assert {t.name for t in r.tensors} >= {"blk.0.attn_q.weight.in_sum2", "blk.1.ffn_down.weight.counts"}

    dat = scratch / "imatrix-default.dat"
    run_smelt("imatrix", tiny, "--ctx", 128, "--chunks", 2, "--output-format", "dat", "-o", dat)
    entries, chunks, dataset = read_dat(dat)
    assert (len(entries), chunks, dataset) == (14, 2, "smelt:calibration.txt")


def test_dat_name_without_format_is_gguf_as_llama_imatrix_writes_it(tiny, scratch):
    """llama-imatrix writes GGUF unless told `--output-format dat`, whatever the name, and warns."""
    out = scratch / "imatrix-named.dat"
    p = run_smelt("imatrix", tiny, "--text", TEXT, "--ctx", 128, "--chunks", 1, "-o", out)
    assert out.read_bytes()[:4] == b"GGUF"
    assert "--output-format dat" in p.stderr


def test_eval_without_text_uses_the_built_in_calibration_text(tiny):
    import json
    p = run_smelt("eval", tiny, "--ctx", 128, "--chunks", 1, "--json")
    doc = json.loads(p.stdout)
    assert doc["text"] == "smelt:calibration.txt" and doc["chunks"] == 1
