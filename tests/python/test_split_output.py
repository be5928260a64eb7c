"""smelt's split outputs (--split-max-size, --split-max-tensors) against llama.cpp's own
llama-gguf-split (built by scripts/build-llama-cpp): splitting smelt's unsplit file gives
smelt's files byte for byte, merging smelt's files gives smelt's unsplit file (plus the three
split keys llama-gguf-split --merge leaves in it), and llama.cpp loads and runs the set."""
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import run_smelt
from test_llama_quantize import llama_bin  # noqa: F401  (fixture)

TYPES = ["F16", "Q8_0"]
# token_embd in F32 (1024 x 256 x 4 = 1048576 bytes) is larger than 1M: a file of its own.
QUANT = ["--types", ",".join(TYPES), "--token-embedding-type", "F32"]
MODES = {"size": ["--split-max-size", "1M"], "tensors": ["--split-max-tensors", "5"]}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 2-layer llama (hidden 256, vocab 1024), written unsplit and split both ways."""
    d = tmp_path_factory.mktemp("split")
    model = d / "m.gguf"
    run_smelt("make-test-model", "--layers", "2", "--hidden", "256", "--ff", "768", "--heads", "4",
              "--kv-heads", "1", "--vocab", "1024", "-o", model)
    run_smelt("quantize", model, "-o", d / "whole", *QUANT)
    for mode, flags in MODES.items():
        run_smelt("quantize", model, "-o", d / mode, *QUANT, *flags)
    return d


def gguf_split(bin_dir: Path, *args) -> None:
    p = subprocess.run([str(bin_dir / "llama-gguf-split"), *map(str, args)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]


def with_split_keys(unsplit: bytes) -> bytes:
    """`unsplit` as llama-gguf-split --merge writes a merge of its split set: the first file's
    keys, so the same metadata followed by split.no = 0, split.tensors.count = N and
    split.count = 0 (which it zeroes so the merge is not taken for a split), the header
    re-padded to 32 bytes; tensor infos and data unchanged."""
    n_tensors, n_kv = struct.unpack_from("<QQ", unsplit, 8)
    pos = 24

    def skip_string(p):
        (n,) = struct.unpack_from("<Q", unsplit, p)
        return p + 8 + n

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_value(p, ty):
        if ty == 8:
            return skip_string(p)
        if ty == 9:
            elem, n = struct.unpack_from("<IQ", unsplit, p)
            p += 12
            for _ in range(n):
                p = skip_value(p, elem)
            return p
        return p + sizes[ty]

    for _ in range(n_kv):
        pos = skip_string(pos)
        (ty,) = struct.unpack_from("<I", unsplit, pos)
        pos = skip_value(pos + 4, ty)
    kv_end = pos
    for _ in range(n_tensors):
        pos = skip_string(pos)
        (n_dims,) = struct.unpack_from("<I", unsplit, pos)
        pos += 4 + 8 * n_dims + 4 + 8
    infos_end = pos
    data_start = -(-infos_end // 32) * 32

    def kv(key, ty, fmt, value):
        k = key.encode()
        return struct.pack("<Q", len(k)) + k + struct.pack("<I", ty) + struct.pack(fmt, value)

    extra = kv("split.no", 2, "<H", 0) + kv("split.tensors.count", 5, "<i", n_tensors) + kv("split.count", 2, "<H", 0)
    head = (unsplit[:16] + struct.pack("<Q", n_kv + 3) + unsplit[24:kv_end] + extra
            + unsplit[kv_end:infos_end])
    return head + bytes(-len(head) % 32) + unsplit[data_start:]


@pytest.mark.parametrize("mode", list(MODES))
def test_llama_gguf_split_of_the_unsplit_file_gives_smelts_files(made, llama_bin, mode, tmp_path):
    for ty in TYPES:
        gguf_split(llama_bin, "--split", *MODES[mode], made / "whole" / f"m-{ty}.gguf", tmp_path / f"m-{ty}")
    ours = sorted(p.name for p in (made / mode).iterdir())
    theirs = sorted(p.name for p in tmp_path.iterdir())
    assert ours == theirs
    assert len(ours) > 2 * len(TYPES), ours
    for name in ours:
        assert (made / mode / name).read_bytes() == (tmp_path / name).read_bytes(), name


@pytest.mark.parametrize("mode", list(MODES))
def test_llama_gguf_split_merge_of_smelts_files_gives_the_unsplit_file(made, llama_bin, mode, tmp_path):
    for ty in TYPES:
        first = sorted((made / mode).glob(f"m-{ty}-00001-of-*.gguf"))[0]
        merged = tmp_path / f"m-{ty}.gguf"
        gguf_split(llama_bin, "--merge", first, merged)
        unsplit = (made / "whole" / f"m-{ty}.gguf").read_bytes()
        assert merged.read_bytes() == with_split_keys(unsplit), ty


def test_llama_cpp_runs_the_split_set_as_the_unsplit_file(made, llama_bin):
    def simple(model: Path, parts: int) -> bytes:
        # Bytes: a random model's tokens need not be valid UTF-8.
        p = subprocess.run([str(llama_bin / "llama-simple"), "-m", str(model), "-n", "8", "abc"],
                           capture_output=True, timeout=120)
        assert p.returncode == 0, f"{model.name}: {p.stderr[-2000:]!r}"
        if parts > 1:
            assert f"additional {parts - 1} GGUFs metadata loaded".encode() in p.stderr
        return p.stdout

    first = sorted((made / "size").glob("m-Q8_0-00001-of-*.gguf"))[0]
    parts = int(first.stem.rsplit("-", 1)[1])
    assert parts > 1, first.name
    out = simple(first, parts)
    assert out.startswith(b"abc"), out
    # Greedy decoding: the same text from the same tensors.
    assert out == simple(made / "whole" / "m-Q8_0.gguf", 1)
