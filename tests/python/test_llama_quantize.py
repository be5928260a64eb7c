"""smelt quantize against llama.cpp's own llama-quantize (built by scripts/build-llama-cpp):
for each type and mix, the same file bytes — per-tensor types, tensor bytes, metadata and
general.file_type — on (a) a synthetic llama whose rows divide into 256 and (b) SmolLM2
dequantized to F16, without and with an imatrix computed by llama-imatrix, and with options."""
import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import gguf

from conftest import ROOT, run_smelt

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
         "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "F16", "BF16", "F32",
         "IQ3_S", "IQ3_M"]

TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 +
        "Quantization maps real numbers onto a small set of levels, trading precision for size. "
        "Pack my box with five dozen liquor jugs. How vexingly quick daft zebras jump! ") * 40


@pytest.fixture(scope="session")
def llama_bin() -> Path:
    out = subprocess.run([str(ROOT / "scripts" / "build-llama-cpp")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def synth(scratch) -> Path:
    p = scratch / "synth-F16.gguf"
    run_smelt("make-test-model", "--layers", "8", "--hidden", "256", "--ff", "768", "--heads", "4",
              "--kv-heads", "1", "--vocab", "1024", "-o", p)
    return p


@pytest.fixture(scope="session")
def smol_f16(smollm2, scratch) -> Path:
    p = scratch / "smol-F16.gguf"
    run_smelt("quantize", smollm2, "-o", p, "--type", "F16")
    return p


def imatrix_for(model: Path, llama_bin: Path, scratch: Path, fmt: str) -> Path:
    text = scratch / "imatrix-text.txt"
    text.write_text(TEXT)
    out = scratch / f"{model.stem}.imatrix.{fmt}"
    if not out.exists():
        subprocess.run([str(llama_bin / "llama-imatrix"), "-m", str(model), "-f", str(text), "-o", str(out),
                        "-c", "128", "--chunks", "4", "--output-format", fmt, "-t", "2"],
                       check=True, capture_output=True, text=True)
    return out


def llama_quantize(llama_bin, src, dst, qtype, *opts):
    p = subprocess.run([str(llama_bin / "llama-quantize"), "--allow-requantize", *map(str, opts), str(src), str(dst),
                        qtype, "2"], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def describe_difference(a: Path, b: Path) -> str:
    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    lines = []
    ka, kb = list(ra.fields), list(rb.fields)
    if ka != kb:
        lines.append(f"metadata keys differ:\n  smelt: {ka}\n  llama: {kb}")
    for k in ka:
        if k in rb.fields and k not in ("GGUF.version",):
            fa, fb = ra.fields[k], rb.fields[k]
            va = [bytes(fa.parts[i]) for i in fa.data]
            vb = [bytes(fb.parts[i]) for i in fb.data]
            if va != vb or fa.types != fb.types:
                lines.append(f"metadata {k} differs")
    ta = {t.name: t for t in ra.tensors}
    tb = {t.name: t for t in rb.tensors}
    if list(ta) != list(tb):
        lines.append(f"tensor order differs: {list(ta)[:6]} vs {list(tb)[:6]}")
    for name, t in ta.items():
        u = tb.get(name)
        if u is None:
            lines.append(f"{name}: missing in llama-quantize output")
        elif t.tensor_type != u.tensor_type:
            lines.append(f"{name}: smelt {t.tensor_type.name} vs llama {u.tensor_type.name}")
        elif not np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)):
            da = np.asarray(t.data).view(np.uint8).reshape(-1)
            db = np.asarray(u.data).view(np.uint8).reshape(-1)
            first = int(np.argmax(da != db))
            lines.append(f"{name} ({t.tensor_type.name}): bytes differ from byte {first}, "
                         f"{int((da != db).sum())} of {da.size}")
    return "\n".join(lines[:40]) or "files differ outside metadata and tensors"


def assert_same_file(smelt_out: Path, llama_out: Path):
    a, b = smelt_out.read_bytes(), llama_out.read_bytes()
    if a != b:
        pytest.fail(describe_difference(smelt_out, llama_out))


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("qtype", TYPES)
def test_synthetic_identical_to_llama_quantize(synth, llama_bin, tmp_path, qtype):
    ours, theirs = tmp_path / f"synth-smelt-{qtype}.gguf", tmp_path / f"synth-llama-{qtype}.gguf"
    run_smelt("quantize", synth, "-o", ours, "--type", qtype)
    llama_quantize(llama_bin, synth, theirs, qtype)
    assert_same_file(ours, theirs)


@pytest.mark.parametrize("qtype", TYPES)
def test_smollm2_identical_to_llama_quantize(smol_f16, llama_bin, tmp_path, qtype):
    ours, theirs = tmp_path / f"smol-smelt-{qtype}.gguf", tmp_path / f"smol-llama-{qtype}.gguf"
    run_smelt("quantize", smol_f16, "-o", ours, "--type", qtype)
    llama_quantize(llama_bin, smol_f16, theirs, qtype)
    assert_same_file(ours, theirs)


IMATRIX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_S", "Q6_K", "IQ4_NL", "IQ4_XS",
                 "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M"]


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
@pytest.mark.parametrize("qtype", IMATRIX_TYPES)
def test_imatrix_identical_to_llama_quantize(synth, llama_bin, scratch, tmp_path, qtype, fmt):
    im = imatrix_for(synth, llama_bin, scratch, fmt)
    ours, theirs = tmp_path / f"synth-im-smelt-{qtype}.gguf", tmp_path / f"synth-im-llama-{qtype}.gguf"
    run_smelt("quantize", synth, "-o", ours, "--type", qtype, "--imatrix", im)
    llama_quantize(llama_bin, synth, theirs, qtype, "--imatrix", im)
    assert_same_file(ours, theirs)


OPTION_CASES = {
    "pure": ["--pure"],
    "leave-output": ["--leave-output-tensor"],
    "output-and-embd-types": ["--output-tensor-type", "q8_0", "--token-embedding-type", "q6_k"],
    "tensor-type": ["--tensor-type", "attn_v=q8_0", "--tensor-type", "ffn_down=q5_k"],
    "override-kv": ["--override-kv", "general.name=str:renamed", "--override-kv", "llama.context_length=int:4096"],
    "prune": ["--prune-layers", "1,5"],
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_options_identical_to_llama_quantize(synth, llama_bin, tmp_path, case):
    opts = OPTION_CASES[case]
    ours, theirs = tmp_path / f"synth-opt-smelt-{case}.gguf", tmp_path / f"synth-opt-llama-{case}.gguf"
    run_smelt("quantize", synth, "-o", ours, "--type", "Q4_K_M", *opts)
    llama_quantize(llama_bin, synth, theirs, "Q4_K_M", *opts)
    assert_same_file(ours, theirs)


def test_matrix_in_one_pass_equals_single_runs(synth, tmp_path):
    types = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]
    outdir = tmp_path / "matrix"
    run_smelt("quantize", synth, "-o", outdir, "--types", ",".join(types))
    for t in types:
        single = tmp_path / f"synth-single-{t}.gguf"
        run_smelt("quantize", synth, "-o", single, "--type", t)
        assert sha(outdir / f"synth-{t}.gguf") == sha(single), t


@pytest.mark.parametrize("qtype", ["Q2_K_S", "IQ3_XS", "IQ3_XXS", "IQ2_S", "IQ2_M", "IQ2_XS", "IQ2_XXS", "IQ1_S", "IQ1_M"])
def test_requires_imatrix(synth, tmp_path, qtype):
    """Mixes with tensors llama-quantize refuses to write without an imatrix."""
    p = run_smelt("quantize", synth, "-o", tmp_path / "x.gguf", "--type", qtype, check=False)
    assert p.returncode != 0 and "imatrix" in p.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_keep_split_identical_to_llama_quantize(synth, llama_bin, tmp_path):
    """A split input (made by llama-gguf-split) quantized with --keep-split: the same split
    files, byte for byte."""
    split_dir = tmp_path / "split"
    split_dir.mkdir(exist_ok=True)
    subprocess.run([str(llama_bin / "llama-gguf-split"), "--split", "--split-max-tensors", "30", str(synth),
                    str(split_dir / "synth")], check=True, capture_output=True)
    first = split_dir / "synth-00001-of-00003.gguf"
    assert first.exists(), sorted(p.name for p in split_dir.iterdir())
    run_smelt("quantize", first, "-o", split_dir / "smelt-q", "--type", "Q4_K_M", "--keep-split")
    llama_quantize(llama_bin, first, split_dir / "llama-q", "Q4_K_M", "--keep-split")
    for k in (1, 2, 3):
        assert_same_file(split_dir / f"smelt-q-{k:05d}-of-00003.gguf", split_dir / f"llama-q-{k:05d}-of-00003.gguf")
