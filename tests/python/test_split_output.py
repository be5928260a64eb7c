"""smelt's split outputs (--split-max-size, --split-max-tensors) against llama.cpp's own
llama-gguf-split (built by scripts/build-llama-cpp): splitting smelt's unsplit file gives
smelt's files byte for byte, merging smelt's files gives smelt's unsplit file (plus the three
split keys llama-gguf-split --merge leaves in it), and llama.cpp loads and runs the set."""
import subprocess
from pathlib import Path

import pytest

from conftest import generate, run_smelt
from split_keys import with_split_keys  # noqa: F401  (also imported from here)
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
        p = generate(llama_bin, model, "abc", 8)
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
