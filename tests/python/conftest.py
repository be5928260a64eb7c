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


@pytest.fixture(scope="session")
def smollm2() -> Path:
    out = subprocess.run([str(ROOT / "scripts" / "fetch-smollm2")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smelt")
