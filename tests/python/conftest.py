"""Shared fixtures for the oracle tests: the smelt binary, a scratch folder, SmolLM2."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def smelt_bin() -> str:
    return os.environ.get("SMELT_BIN", str(ROOT / "target" / "release" / "smelt"))


def run_smelt(*args, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([smelt_bin(), *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"smelt {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


def run_llama_tool(cmd, expect: str, timeout=300, attempts=3) -> subprocess.CompletedProcess:
    """Run one of llama.cpp's tools; retried when it exits 0 without the line `expect`.

    Its logger writes from a background thread, and on a loaded machine the last lines
    (llama-perplexity's final estimate) are now and then lost at exit though the run
    succeeded; the computation is deterministic, so a rerun gives the same figures."""
    for _ in range(attempts):
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, p.stderr[-2000:]
        if expect in p.stdout + p.stderr:
            return p
    raise AssertionError(f"no `{expect}` in {attempts} runs:\n{(p.stdout + p.stderr)[-2000:]}")


def generate(bin_dir: Path, model: Path, prompt: str, n: int, timeout=300) -> subprocess.CompletedProcess:
    """Greedy text from llama.cpp on one thread (scripts/llama-generate.c, built with the
    tools): stdout is the prompt, then what the model wrote (bytes: a random model's tokens
    need not be UTF-8); stderr the loader's log, as llama-simple's."""
    return subprocess.run([str(bin_dir / "llama-generate"), str(model), str(n), "1", prompt],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    out = subprocess.run([str(ROOT / "scripts" / "fetch-smollm2")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smelt")
