"""The `general.*` keys of a converted HF folder against llama.cpp's convert_hf_to_gguf.py.

The script names a model from its model card (README.md front matter), config.json's
`_name_or_path`, generation_config.json and the folder's name, through gguf-py's
`Metadata.load`, and labels its size from the parameter count when the name gives none. Each
case below dresses an architecture fixture of scripts/gen-golden-convert.py in a real-looking
model id and card; `smelt quantize FOLDER --type F32` must write the same `general.*` keys,
with the same types, values and order, as the script's own `prepare_metadata` (run by
convert_oracle.py --general against the vendored gguf-py).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from conftest import ROOT, run_smelt

LLAMA_CPP_SRC = ROOT / "third_party" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
ORACLE = Path(__file__).with_name("convert_oracle.py")

SMOL_CARD = """---
library_name: transformers
license: apache-2.0
language:
- en
pipeline_tag: text-generation
tags:
- safetensors
- onnx
- transformers.js
base_model:
- HuggingFaceTB/SmolLM2-135M
datasets:
- HuggingFaceTB/smoltalk
- https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu
---

# SmolLM2
"""

MISTRAL_CARD = """---
license:
- mit
- apache-2.0
model_name: Mistral 7B Instruct v0.2
model_creator: Mistral AI
language:
- en
- no
- fr
base_model: https://huggingface.co/mistralai/Mistral-7B-v0.1
---
text
"""

MERGE_CARD = """---
base_model:
- name: Qwen2.5 0.5B
  organization: Qwen
  repo_url: https://huggingface.co/Qwen/Qwen2.5-0.5B
- Qwen/Qwen2.5-0.5B-Instruct
tags: merge
license_name: qwen-research
license_link: https://huggingface.co/Qwen/LICENSE
---
"""

CASES = {
    # folder name, fixture, config.json extras, README.md, generation_config.json
    "smollm2": ("SmolLM2-135M-Instruct", "llama", {}, SMOL_CARD,
                {"temperature": 0.2, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1}),
    "mistral": ("Mistral-7B-Instruct-v0.2", "mistral",
                {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2"}, MISTRAL_CARD, None),
    "phi3-context-length": ("Phi-3-mini-4k-instruct", "phi3", {}, None, {"do_sample": True}),
    "bloom-size": ("bloom-7b1", "qwen2", {"_name_or_path": "/home/me/checkpoints/final"}, None, None),
    "no-size-in-name": ("gpt2", "llama", {"_name_or_path": "./local"}, "no front matter\n", None),
    "moe": ("tiny-moe-v2", "mixtral", {}, None, {"min_p": 0.05, "penalty_last_n": 64}),
    "merge-card": ("Qwen-merge", "qwen3", {}, MERGE_CARD, None),
    "gemma-it": ("gemma-2-2b-it", "gemma2", {"_name_or_path": "google/gemma-2-2b-it"}, None, None),
}


def fixture(arch: str, work: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-golden-convert.py"), "--only", arch,
                    "--write-fixture", str(work)], check=True)
    return work / arch


# Written by both, but placed by smelt where llama-quantize places them (last), and checked
# by the quantize tests; general.architecture is checked by the convert goldens.
ELSEWHERE = ("general.architecture", "general.file_type", "general.quantization_version")


def general_kv(path: Path) -> list:
    r = gguf.GGUFReader(path)
    return [[k, f.types[0].name if f.types else None, f.contents()] for k, f in r.fields.items()
            if k.startswith("general.") and k not in ELSEWHERE]


def oracle(folder: Path, converted: Path) -> list:
    if not (LLAMA_CPP_SRC / "conversion" / "base.py").is_file():
        pytest.fail(f"llama.cpp source missing at {LLAMA_CPP_SRC}: run scripts/build-llama-cpp")
    p = subprocess.run([sys.executable, str(ORACLE), str(LLAMA_CPP_SRC), str(folder), "--general", str(converted)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def same_value(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-7 * max(1.0, abs(float(b)))
    return a == b


@pytest.mark.parametrize("case", sorted(CASES))
def test_general_metadata_is_the_convert_scripts(case, tmp_path):
    name, arch, extra_config, card, gen = CASES[case]
    folder = tmp_path / name
    shutil.move(fixture(arch, tmp_path / "src"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(extra_config)
    (folder / "config.json").write_text(json.dumps(cfg))
    if card is not None:
        (folder / "README.md").write_text(card)
    if gen is not None:
        (folder / "generation_config.json").write_text(json.dumps(gen))
    out = tmp_path / "out.gguf"
    run_smelt("quantize", folder, "-o", out, "--type", "F32")

    got = general_kv(out)
    want = [[k, t, v] for k, t, v in oracle(folder, out) if k not in ELSEWHERE]
    assert [e[0] for e in got] == [e[0] for e in want], "keys and their order"
    for (k, t, v), (_, wt, wv) in zip(got, want):
        assert t == wt, (k, t, wt)
        if isinstance(wv, list):
            assert len(v) == len(wv) and all(same_value(a, b) for a, b in zip(v, wv)), (k, v, wv)
        else:
            assert same_value(v, wv), (k, v, wv)
    keys = dict((k, v) for k, _, v in got)
    assert keys["general.name"], "a name is always written"
    assert "general.size_label" in keys
