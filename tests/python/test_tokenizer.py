"""Tokenizer metadata of HF folders (src/tokenizer/) against three references:

- llama.cpp's own convert_hf_to_gguf.py code (0.3.36, run by convert_oracle.py): every
  `tokenizer.*` key smelt writes, values and order;
- the real SmolLM2-135M-Instruct GGUF: its tokenizer rebuilt as an HF folder, converted by
  smelt, must give back the GGUF's vocabulary, merges, special tokens and chat template;
- llama.cpp's `llama-tokenize` on smelt's GGUF must give the ids the HF tokenizer gives,
  for SmolLM2, a SentencePiece BPE model (byte fallback, like Llama 2) and a byte-level BPE
  with the Llama 3 split regex, on multilingual text.

The folders are generated here (no committed binaries): weights from `smelt make-test-model`,
tokenizers from the GGUF or trained with `sentencepiece` / `tokenizers`.
"""
import json
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from conftest import ROOT, run_smelt

LLAMA_CPP_SRC = ROOT / "third_party" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
LLAMA_BIN = ROOT / "third_party" / "llama.cpp-build-v3" / "bin"
ORACLE = Path(__file__).with_name("convert_oracle.py")
TEXT = (Path(__file__).parent / "data" / "multilingual.txt").read_text(encoding="utf-8")
# The split regex of Llama 3 (llama.cpp's `llama-bpe` pre-tokenizer).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# SmolLM2's tokenizer_config.json / config.json special tokens and template, which the GGUF
# carries as ids and a string (checked against it below).
SMOL_SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}


def tokenizer_kv(path: Path) -> list:
    """[(key, value)] of a GGUF's `tokenizer.*` keys, in file order."""
    r = gguf.GGUFReader(path)
    return [(k, f.contents()) for k, f in r.fields.items() if k.startswith("tokenizer.")]


def oracle_kv(folder: Path, pre: str | None = None) -> list:
    if not (LLAMA_CPP_SRC / "conversion" / "base.py").is_file():
        pytest.fail(f"llama.cpp source missing at {LLAMA_CPP_SRC}: run scripts/build-llama-cpp")
    cmd = [sys.executable, str(ORACLE), str(LLAMA_CPP_SRC), str(folder)] + (["--pre", pre] if pre else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return [(k, v) for k, _, v in json.loads(p.stdout)]


def normalize(kv: list) -> list:
    """Floats as float32 round trips them (scores), so both sides compare exactly."""
    import numpy as np

    def norm(v):
        if isinstance(v, float):
            return float(np.float32(v))
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return [(k, norm(v)) for k, v in kv]


def assert_same_kv(got: list, want: list):
    got, want = normalize(got), normalize(want)
    assert [k for k, _ in got] == [k for k, _ in want], "key order"
    for (k, a), (_, b) in zip(got, want):
        if isinstance(a, list) and isinstance(b, list):
            assert len(a) == len(b), k
            bad = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            assert bad is None, f"{k}[{bad}]: {a[bad]!r} != {b[bad]!r}"
        else:
            assert a == b, k


def make_weights(folder: Path, vocab: int, seed: int = 1):
    """A 1-layer llama with `vocab` rows (config.json + model.safetensors) into `folder`."""
    run_smelt("make-test-model", "-o", folder, "--layers", "1", "--hidden", "64", "--ff", "128",
              "--vocab", vocab, "--tied", "--seed", seed)


def set_config(folder: Path, **kv):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(kv)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def convert(folder: Path, out: Path, *extra) -> Path:
    run_smelt("quantize", folder, "-o", out, "--type", "F16", *extra)
    return out


def llama_tokenize(model: Path, text: str) -> list[int]:
    exe = LLAMA_BIN / "llama-tokenize"
    if not exe.is_file():
        pytest.fail(f"{exe} missing: run scripts/build-llama-cpp")
    # --stdin passes the text byte for byte; --no-escape keeps a literal backslash-t as is.
    p = subprocess.run([str(exe), "-m", str(model), "--stdin", "--ids", "--log-disable", "--no-escape"],
                       input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [l for l in p.stdout.splitlines() if l.startswith("[")][-1]
    return json.loads(line)


# ---------------------------------------------------------------- SmolLM2 (real GGUF)

@pytest.fixture(scope="module")
def smol_folder(smollm2, scratch) -> Path:
    """SmolLM2's tokenizer as an HF folder, rebuilt from the GGUF with `tokenizers`.

    transformers' own GGUF -> HF path (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) is
    no use as a reference here: it refuses to run without torch, and for a `llama` GGUF it
    always builds the SentencePiece-style Llama converter (byte_fallback BPE, a `Sequence`
    decoder, a generated tokenizer.model) with `eos_token` set to `<|im_start|>`, even though
    the GGUF says gpt2 and eos id 2. So the folder is rebuilt as SmolLM2's published one is:
    a byte-level BPE with the GGUF's vocabulary and merges, its control tokens as special
    added tokens, and the `smollm` pre-tokenizer (digits split one by one, then GPT-2's
    byte-level regex). That smelt then finds `smollm` by llama.cpp's check-text hash shows
    the rebuilt pre-tokenizer is the one llama.cpp recorded for SmolLM.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    md = dict(tokenizer_kv(smollm2))
    tokens, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    folder = scratch / "smollm2-hf"
    make_weights(folder, len(tokens))
    tok.save(str(folder / "tokenizer.json"))
    ids = {k: md[f"tokenizer.ggml.{k}"] for k in ("bos_token_id", "eos_token_id")}
    set_config(folder, **ids)
    special = {name: tokens[md[key]] for name, key in [
        ("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"), ("pad_token", "tokenizer.ggml.padding_token_id")]}
    assert special == SMOL_SPECIAL
    tc = {
        "add_prefix_space": md["tokenizer.ggml.add_space_prefix"],
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3},
        **special,
        "chat_template": md["tokenizer.chat_template"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False))
    return folder


@pytest.fixture(scope="module")
def smol_gguf(smol_folder, scratch) -> Path:
    return convert(smol_folder, scratch / "smollm2-smelt.gguf")


def test_smollm2_matches_the_original_gguf(smollm2, smol_gguf):
    got = dict(tokenizer_kv(smol_gguf))
    want = dict(tokenizer_kv(smollm2))
    assert got["tokenizer.ggml.pre"] == "smollm"
    for key, value in want.items():
        assert got[key] == value, key
    # The original was converted by an older script, which wrote no add_eos_token; 0.3.36
    # writes it (false) from the ByteLevel post-processor.
    assert set(got) - set(want) == {"tokenizer.ggml.add_eos_token"}
    assert got["tokenizer.ggml.add_eos_token"] is False


def test_smollm2_matches_the_convert_script(smol_folder, smol_gguf):
    want = oracle_kv(smol_folder)
    assert_same_kv(tokenizer_kv(smol_gguf), want)
    assert [k for k, _ in want] == [
        "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.model", "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
        "tokenizer.chat_template",
    ]


def test_smollm2_llama_tokenize_matches_hf(smol_folder, smol_gguf):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(smol_folder)
    for text in [TEXT, *TEXT.splitlines()]:
        assert llama_tokenize(smol_gguf, text) == hf.encode(text), text
