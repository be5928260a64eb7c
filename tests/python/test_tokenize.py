"""`smelt tokenize --ids` prints what llama.cpp's `llama-tokenize --ids` prints, byte for byte,
with `--no-parse-special`: the setting llama-perplexity and llama-imatrix tokenize with (control
tokens in the text are text, user-defined ones are split out), which `smelt eval` uses. Each
text with and without BOS (`--no-bos` on both sides), on:

- the converted fixture of every architecture smelt converts (scripts/gen-golden-convert.py,
  a 64-piece SentencePiece model of lower-case letters, no byte pieces);
- SentencePiece models with byte fallback (test_tokenizer.py's), one with user-defined and
  control tokens added, on multilingual and odd text;
- SmolLM2's real GGUF and a Llama 3 style BPE (BOS added, a user-defined token): byte-level BPE.

Then `smelt eval` runs on a converted SentencePiece fixture, on the tokens llama.cpp gives.
"""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_smelt, smelt_bin
from test_convert_llama import ARCHS, write_fixture
from test_convert_llama import TEXT as ALPHABET_TEXT
from test_tokenizer import TEXT as MULTILINGUAL
from test_tokenizer import UNSEEN, _spm_added_folder, convert, train_llama3_folder, train_spm_folder


@pytest.fixture(scope="module")
def llama_tokenize() -> Path:
    out = subprocess.run([str(ROOT / "scripts" / "build-llama-cpp")], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip()) / "llama-tokenize"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenize")


def reference(exe: Path, model: Path, text: str, bos: bool) -> subprocess.CompletedProcess:
    # --stdin: the text byte for byte; --no-escape: a backslash stays one.
    cmd = [str(exe), "-m", str(model), "--stdin", "--ids", "--log-disable", "--no-escape",
           "--no-parse-special"] + ([] if bos else ["--no-bos"])
    return subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=60)


def smelt(model: Path, text: str, bos: bool, work: Path) -> subprocess.CompletedProcess:
    path = work / "text.txt"
    path.write_bytes(text.encode())
    cmd = [smelt_bin(), "tokenize", str(model), "--text", str(path), "--ids"] + ([] if bos else ["--no-bos"])
    return subprocess.run(cmd, capture_output=True, timeout=60)


def assert_same_ids(exe: Path, model: Path, texts: list[str], work: Path) -> int:
    """Both print the same list for every text, with and without BOS; returns the ids seen."""
    n = 0
    for text in texts:
        for bos in (True, False):
            want = reference(exe, model, text, bos)
            assert want.returncode == 0, want.stderr.decode()[-2000:]
            got = smelt(model, text, bos, work)
            assert got.returncode == 0, got.stderr.decode()
            assert got.stdout.decode() == want.stdout.decode(), (model.name, text, bos)
            n += len(json.loads(got.stdout))
    return n


# ---------------------------------------------------------------- converted fixtures

def alphabet_words(n: int) -> str:
    """`n` words of the fixture's letters, unlike its training words (other strides)."""
    return " ".join("".join(chr(97 + (i * 11 + j * 5) % 26) for j in range(1 + i % 9)) for i in range(n))


ALPHABET_TEXTS = [ALPHABET_TEXT, "", "a", "zebra", "abcabcabcabcabc", " leading and trailing ",
                  "two  spaces   three", alphabet_words(300)]


@pytest.fixture(scope="module")
def fixtures(work) -> dict:
    """Each architecture's fixture converted once (F16)."""
    out = {}
    for arch in ARCHS:
        src = write_fixture(arch, work / "src")
        run_smelt("convert", src, "-o", work / "gguf" / arch, "--types", "F16")
        (out[arch],) = (work / "gguf" / arch).glob("*.gguf")
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_fixtures(arch, fixtures, llama_tokenize, work):
    assert assert_same_ids(llama_tokenize, fixtures[arch], ALPHABET_TEXTS, work) > 500


def test_text_outside_the_vocabulary_is_refused_by_both(fixtures, llama_tokenize, work):
    # No piece and no byte piece for `Q`: llama.cpp aborts, smelt says why.
    model = fixtures["llama"]
    assert reference(llama_tokenize, model, "abc Q", True).returncode != 0
    got = smelt(model, "abc Q", True, work)
    assert got.returncode == 1
    err = got.stderr.decode()
    assert '"Q"' in err and "<0x51>" in err and "panicked" not in err, err


# ---------------------------------------------------------------- SentencePiece with byte fallback

ODD_TEXTS = [
    "", " ", "  ", "\n", "\t\t", "\r\n", " leading", "trailing ", "a  b   c", "a\x00b",
    "<s> </s> <unk> <0x41> <0x0A>",  # control, unknown and byte tokens' texts are text
    "e\u0301 \u00a0nbsp \u200bzw 👨‍👩‍👧 🇩🇪 \U0010fffd",
    "ＦＵＬＬＷＩＤＴＨ １２３ ｶﾀｶﾅ",
    "x" * 300 + " " + "ab" * 200,
]


@pytest.fixture(scope="module")
def spm_models(work) -> tuple[Path, Path]:
    folder = train_spm_folder(work)
    added = _spm_added_folder(folder, work / "spm-added")
    return convert(folder, work / "spm.gguf"), convert(added, work / "spm-added.gguf")


def test_sentencepiece_byte_fallback(spm_models, llama_tokenize, work):
    plain, _ = spm_models
    texts = [MULTILINGUAL, *MULTILINGUAL.splitlines(), UNSEEN, *ODD_TEXTS]
    assert assert_same_ids(llama_tokenize, plain, texts, work) > 2000


def test_sentencepiece_added_tokens(spm_models, llama_tokenize, work):
    # `<tool>` and ` user x` are user-defined (split out of the text, the run after them
    # gets the space prefix), `<|im_end|>` and `<replaced>` control (text).
    _, added = spm_models
    texts = ["<tool>", "a<tool><tool>b", "<tool>x<tool> user xy<|im_end|> <replaced>",
             " user x", "say user x twice: user x", "<|im_end|>", "<tool>\n\nHallo Welt <tool>",
             MULTILINGUAL.replace(" ", " user x", 3)]
    assert assert_same_ids(llama_tokenize, added, texts, work) > 100
    # The split changes the ids: not the same as tokenizing the text as text.
    ids = json.loads(smelt(added, "<tool>", False, work).stdout)
    assert ids == [700], ids


# ---------------------------------------------------------------- byte-level BPE

# Each smelt run rebuilds the BPE tokenizer (about half a second for SmolLM2's 49152 tokens):
# fewer, longer texts.
BPE_TEXTS = [
    MULTILINGUAL, UNSEEN, "", "  leading spaces", "\n\n", "".join(ODD_TEXTS),
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><tool>call(x)<tool> <tool>",
]


def test_smollm2(smollm2, llama_tokenize, work):
    # SmolLM2 adds no BOS (add_bos_token false): both runs of each text give the same ids.
    assert assert_same_ids(llama_tokenize, smollm2, BPE_TEXTS, work) > 1000


def test_llama3_style_bpe(llama_tokenize, work):
    model = convert(train_llama3_folder(work), work / "llama3.gguf", "--tokenizer-pre", "llama-bpe")
    assert assert_same_ids(llama_tokenize, model, BPE_TEXTS, work) > 1000
    with_bos = json.loads(smelt(model, "hi", True, work).stdout)
    assert len(with_bos) == len(json.loads(smelt(model, "hi", False, work).stdout)) + 1


# ---------------------------------------------------------------- smelt eval

def test_eval_runs_on_a_converted_sentencepiece_model(fixtures, llama_tokenize, work):
    model = fixtures["llama"]
    text = alphabet_words(400)
    path = work / "eval.txt"
    path.write_text(text)
    p = run_smelt("eval", model, "--text", path, "--ctx", "32", "--chunks", "2", "--json")
    doc = json.loads(p.stdout)
    want = json.loads(reference(llama_tokenize, model, text, True).stdout)
    assert doc["tokens"] == len(want) and doc["chunks"] == 2
    assert doc["perplexity"] > 1.0
