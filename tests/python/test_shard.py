"""Sharded runs (`smelt quantize --shard K/N`) against llama.cpp's own tools: the N shards'
files, written by separate processes, are the single-process `--shards N` files byte for byte;
llama-gguf-split --merge of the set gives smelt's unsplit file (plus the keys its --merge keeps
from the first file: the plan's hash and the split keys); llama.cpp loads the set."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import generate, run_smelt
from split_keys import with_split_keys
from test_llama_quantize import llama_bin  # noqa: F401  (fixture)
from test_split_output import gguf_split

TYPES = ["F16", "Q8_0", "Q4_K_M"]
N = 3


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 2-layer llama written unsplit, as one --shards N run, and as N concurrent shards."""
    d = tmp_path_factory.mktemp("shard")
    model = d / "m.gguf"
    run_smelt("make-test-model", "--layers", "2", "--hidden", "256", "--ff", "768", "--heads", "4",
              "--kv-heads", "1", "--vocab", "1024", "-o", model)
    quant = ["quantize", model, "--types", ",".join(TYPES)]
    run_smelt(*quant, "-o", d / "whole")
    run_smelt(*quant, "-o", d / "single", "--shards", N)
    with ThreadPoolExecutor(N) as pool:
        list(pool.map(lambda k: run_smelt(*quant, "-o", d / "sharded", "--shard", f"{k}/{N}"), range(N)))
    return d


def plan_of(path) -> str:
    import json
    p = run_smelt("inspect", path, "--json")
    return json.loads(p.stdout)["metadata"]["smelt.shard_plan"]


def test_concurrent_shards_write_the_single_process_files(made):
    single = sorted(p.name for p in (made / "single").iterdir())
    assert single == sorted(p.name for p in (made / "sharded").iterdir())
    assert len(single) == N * len(TYPES)
    for name in single:
        assert (made / "single" / name).read_bytes() == (made / "sharded" / name).read_bytes(), name


def test_llama_gguf_split_merge_of_the_shards_gives_the_unsplit_file(made, llama_bin, tmp_path):
    for ty in TYPES:
        first = made / "sharded" / f"m-{ty}-00001-of-{N:05}.gguf"
        merged = tmp_path / f"m-{ty}.gguf"
        gguf_split(llama_bin, "--merge", first, merged)
        unsplit = (made / "whole" / f"m-{ty}.gguf").read_bytes()
        assert merged.read_bytes() == with_split_keys(unsplit, plan_of(first)), ty


def test_llama_cpp_loads_the_sharded_set(made, llama_bin):
    first = made / "sharded" / f"m-Q8_0-00001-of-{N:05}.gguf"
    p = generate(llama_bin, first, "abc", 4)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"additional {N - 1} GGUFs metadata loaded".encode() in p.stderr
    whole = generate(llama_bin, made / "whole" / "m-Q8_0.gguf", "abc", 4)
    assert p.stdout == whole.stdout
