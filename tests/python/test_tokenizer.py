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


# ---------------------------------------------------------------- SentencePiece (Llama 2 style)

# Characters absent from the training text: llama.cpp and sentencepiece must both fall back
# to byte pieces for them.
UNSEEN = "Ünïcödé ∑∫ 🎉 ไทย ñandú"


def train_spm_folder(scratch: Path) -> Path:
    """A SentencePiece BPE trained as Llama 2's was (byte fallback, digits split, identity
    normalization, whitespace kept), saved as transformers saves a Llama tokenizer
    (tokenizer.model + tokenizer.json + tokenizer_config.json), in `scratch`/spm-hf."""
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    folder = scratch / "spm-hf"
    train = scratch / "spm-train.txt"
    train.write_text(TEXT * 3, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(train), model_prefix=str(scratch / "spm"), model_type="bpe", vocab_size=700,
        hard_vocab_limit=False, byte_fallback=True, split_digits=True, character_coverage=1.0,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, max_sentence_length=100000,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(scratch / "spm.model"))
    make_weights(folder, sp.get_piece_size(), seed=2)
    set_config(folder, bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id())
    hf = LlamaTokenizerFast(vocab_file=str(scratch / "spm.model"), legacy=True, add_bos_token=True,
                            add_eos_token=False, from_slow=True)
    hf.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    hf.save_pretrained(folder)
    assert (folder / "tokenizer.model").is_file() and (folder / "tokenizer.json").is_file()
    return folder


@pytest.fixture(scope="module")
def spm_folder(scratch) -> Path:
    return train_spm_folder(scratch)


@pytest.fixture(scope="module")
def spm_gguf(spm_folder, scratch) -> Path:
    return convert(spm_folder, scratch / "spm-smelt.gguf")


def test_sentencepiece_matches_the_convert_script(spm_folder, spm_gguf):
    got = tokenizer_kv(spm_gguf)
    assert_same_kv(got, oracle_kv(spm_folder))
    md = dict(got)
    assert md["tokenizer.ggml.model"] == "llama"
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert 6 in md["tokenizer.ggml.token_type"], "byte pieces"


def test_sentencepiece_llama_tokenize_matches_sentencepiece(spm_folder, spm_gguf):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_folder / "tokenizer.model"))
    for text in [TEXT, UNSEEN, *TEXT.splitlines()]:
        if not text:
            continue  # sentencepiece gives no dummy-prefix piece for "", llama.cpp gives "▁"
        want = [sp.bos_id()] + sp.encode(text)
        assert llama_tokenize(spm_gguf, text) == want, text


# ---------------------------------------------------------------- byte-level BPE (Llama 3 style)

def train_llama3_folder(scratch: Path) -> Path:
    """A byte-level BPE trained with `tokenizers` on the Llama 3 split regex, laid out as
    Llama 3's folder is (BOS added by a TemplateProcessing post-processor, ignore_merges),
    plus a non-special added token; config.json's vocab_size leaves 3 unused ids. In
    `scratch`/llama3-hf."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    trainer = trainers.BpeTrainer(vocab_size=900, min_frequency=1, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT] * 3, trainer)
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])
    bos = tok.token_to_id(specials[0])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{specials[0]} $A", pair=f"{specials[0]} $A {specials[0]}:1 $B:1",
                                      special_tokens=[(specials[0], bos)]),
    ])
    folder = scratch / "llama3-hf"
    vocab = tok.get_vocab_size(with_added_tokens=True) + 3
    make_weights(folder, vocab, seed=3)
    set_config(folder, bos_token_id=bos, eos_token_id=tok.token_to_id(specials[1]))
    tok.save(str(folder / "tokenizer.json"))
    tc = {"bos_token": specials[0], "eos_token": specials[1], "clean_up_tokenization_spaces": True,
          "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
          "tokenizer_class": "PreTrainedTokenizerFast"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    (folder / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return folder


@pytest.fixture(scope="module")
def llama3_folder(scratch) -> Path:
    return train_llama3_folder(scratch)


@pytest.fixture(scope="module")
def llama3_gguf(llama3_folder, scratch) -> Path:
    return convert(llama3_folder, scratch / "llama3-smelt.gguf", "--tokenizer-pre", "llama-bpe")


def test_unknown_pre_tokenizer_asks_for_the_override(llama3_folder, scratch):
    p = run_smelt("quantize", llama3_folder, "-o", scratch / "never.gguf", "--type", "F16", check=False)
    assert p.returncode != 0
    assert "tokenizer.json" in p.stderr and "--tokenizer-pre" in p.stderr, p.stderr


def test_llama3_bpe_matches_the_convert_script(llama3_folder, llama3_gguf):
    got = tokenizer_kv(llama3_gguf)
    assert_same_kv(got, oracle_kv(llama3_folder, pre="llama-bpe"))
    md = dict(got)
    assert md["tokenizer.ggml.pre"] == "llama-bpe"
    assert md["tokenizer.ggml.tokens"][-3:] == [f"[PAD{i}]" for i in range(len(md["tokenizer.ggml.tokens"]) - 3,
                                                                           len(md["tokenizer.ggml.tokens"]))]
    assert md["tokenizer.ggml.token_type"][-4:] == [4, 5, 5, 5]  # <tool> user-defined, then unused
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.chat_template"].startswith("{{ bos_token }}")


def test_llama3_bpe_llama_tokenize_matches_hf(llama3_folder, llama3_gguf):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(llama3_folder)
    for text in [TEXT, UNSEEN, *TEXT.splitlines()]:
        assert llama_tokenize(llama3_gguf, text) == hf.encode(text), text


# ---------------------------------------------------------------- what transformers changes on load

def _unknown_hash(stderr: str) -> str | None:
    """The check-text hash from the script's or smelt's "not recognized" report."""
    import re

    m = re.search(r"(?:chkhsh:\s*|check-text hash )([0-9a-f]{64})", stderr)
    return m.group(1) if m else None


def _variant(smol_folder: Path, work: Path, name: str, vocab: int, edit) -> Path:
    """A copy of the SmolLM2 folder with tokenizer.json / tokenizer_config.json edited."""
    folder = work / f"smol-{name}"
    make_weights(folder, vocab)
    set_config(folder, bos_token_id=1, eos_token_id=2, vocab_size=vocab)
    tj = json.loads((smol_folder / "tokenizer.json").read_text())
    tc = json.loads((smol_folder / "tokenizer_config.json").read_text())
    edit(tj, tc)
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False))
    return folder


def _llama_class(tj, tc):
    # A byte-level BPE under LlamaTokenizerFast (as DeepSeek-Coder ships): transformers
    # rebuilds the post-processor to add BOS, which changes the check-text ids.
    # (Without add_prefix_space: with it, LlamaTokenizerFast insists on a tokenizer.model.)
    tc["tokenizer_class"] = "LlamaTokenizerFast"
    tc["add_bos_token"] = True
    del tc["add_prefix_space"]


def _byte_level_prefix(tj, tc):
    # A plain ByteLevel pre-tokenizer with add_prefix_space on, and a tokenizer_config that
    # does not say: transformers turns it off.
    tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    del tc["add_prefix_space"]


def _specials_not_added(tj, tc):
    # Special tokens named only in tokenizer_config.json: transformers adds them as special
    # tokens (CONTROL), a new one (<pad>) at a new id; a plain token promoted by
    # additional_special_tokens too.
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] != "<|im_end|>"]
    del tc["added_tokens_decoder"]
    tc["pad_token"] = "<pad>"
    tc["additional_special_tokens"] = ["<|im_end|>", "hello"]


def _class_from_model_type(tj, tc):
    # No tokenizer_class: AutoTokenizer picks LlamaTokenizerFast from config.json's
    # model_type, whose default unk_token `<unk>` is not in the vocabulary (a new id).
    for k in ("tokenizer_class", "add_prefix_space", "unk_token"):
        del tc[k]


@pytest.mark.parametrize("name, vocab, edit", [
    ("llama-class", 49152, _llama_class),
    ("class-from-model-type", 49160, _class_from_model_type),
    ("byte-level-prefix", 49152, _byte_level_prefix),
    ("specials-not-added", 49160, _specials_not_added),
])
def test_transformers_load_changes(smol_folder, tmp_path, name, vocab, edit):
    folder = _variant(smol_folder, tmp_path, name, vocab, edit)
    cmd = [sys.executable, str(ORACLE), str(LLAMA_CPP_SRC), str(folder)]
    ref = subprocess.run(cmd, capture_output=True, text=True)
    out = tmp_path / f"smol-{name}.gguf"
    got = run_smelt("quantize", folder, "-o", out, "--type", "F16", check=False)
    if ref.returncode != 0:
        want = _unknown_hash(ref.stderr)
        assert want, ref.stderr[-2000:]
        assert got.returncode != 0 and _unknown_hash(got.stderr) == want, got.stderr
        # The rest of the metadata, with the pre-tokenizer named by hand on both sides.
        convert(folder, out, "--tokenizer-pre", "smollm")
        assert_same_kv(tokenizer_kv(out), oracle_kv(folder, pre="smollm"))
    else:
        assert got.returncode == 0, got.stderr
        assert_same_kv(tokenizer_kv(out), [(k, v) for k, _, v in json.loads(ref.stdout)])
    if name == "specials-not-added":
        md = dict(tokenizer_kv(out))
        toks, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
        assert toks[49152] == "<pad>" and types[49152] == 3
        assert types[toks.index("hello")] == 3 and types[2] == 3


def _spm_added_folder(spm_folder: Path, folder: Path) -> Path:
    """The SentencePiece folder with added_tokens.json and added_tokens_decoder entries on top
    of the model: ids past the model's pieces and past vocab_size, a replaced piece, and
    [PAD] fill."""
    import shutil

    make_weights(folder, 705, seed=4)
    set_config(folder, bos_token_id=1, eos_token_id=2, vocab_size=705)
    for f in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(spm_folder / f, folder / f)
    (folder / "added_tokens.json").write_text(json.dumps({"<tool>": 700, "<far>": 999}))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["added_tokens_decoder"].update({
        "701": {"content": "\u2581user\u2581x", "special": False, "normalized": False},
        "702": {"content": "<|im_end|>", "special": False},
        "5": {"content": "<replaced>", "special": True},
        "9999": {"content": "<beyond>", "special": True},
    })
    (folder / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False))
    return folder


def test_sentencepiece_added_tokens_and_padding(spm_folder, tmp_path):
    """added_tokens.json and tokenizer_config's added_tokens_decoder on top of the model, ids
    past the model's pieces and past vocab_size, and [PAD] fill, against the script."""
    folder = _spm_added_folder(spm_folder, tmp_path / "spm-added")
    out = convert(folder, tmp_path / "spm-added.gguf")
    got = tokenizer_kv(out)
    assert_same_kv(got, oracle_kv(folder))
    md = dict(got)
    assert md["tokenizer.ggml.tokens"][700:] == ["<tool>", " user x", "<|im_end|>", "[PAD703]", "[PAD704]"]
    assert md["tokenizer.ggml.token_type"][700:] == [4, 4, 3, 5, 5]
    assert md["tokenizer.ggml.tokens"][5] == "<replaced>" and md["tokenizer.ggml.token_type"][5] == 3


def test_smollm2_full_round_trip_through_an_hf_folder(smollm2, tmp_path):
    """GGUF -> HF folder -> GGUF: SmolLM2's real weights leave as F32 safetensors (smelt merge
    --format safetensors, config.json and the tokenizer files rebuilt from the GGUF);
    `smelt convert` of that folder at F32 equals gguf-py's dequantization of the original
    Q4_1 file tensor for tensor, with the same llama.* and tokenizer.* metadata (the
    pre-tokenizer found again by llama.cpp's check-text hash)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    work = tmp_path
    n_layer = int(GGUFReader(smollm2).fields["llama.block_count"].parts[-1][0])
    recipe = work / "all.yaml"
    recipe.write_text(f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {smollm2}\n"
                      f"        layer_range: [0, {n_layer}]\n")
    hf = work / "hf"
    run_smelt("merge", recipe, "-o", hf, "--format", "safetensors", "--type", "F32")
    # The tokenizer files are smelt's, rebuilt from the GGUF's keys: transformers loads them
    # and tokenizes as llama.cpp does with the original file.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    for text in [TEXT, *TEXT.splitlines()]:
        assert tok.encode(text) == llama_tokenize(smollm2, text), text
    out = work / "gguf"
    run_smelt("convert", hf, "-o", out, "--types", "F32")
    (back,) = out.glob("*.gguf")

    orig, got = GGUFReader(smollm2), GGUFReader(back)
    want_t = {t.name: dequantize(t.data, t.tensor_type).reshape(-1) for t in orig.tensors}
    got_t = {t.name: np.asarray(t.data).reshape(-1) for t in got.tensors}
    assert want_t.keys() == got_t.keys()
    for name in want_t:
        assert np.array_equal(want_t[name].astype(np.float32), got_t[name]), name

    def kv(r, prefix):
        return {k: (f.types, [bytes(f.parts[i]) for i in f.data]) for k, f in r.fields.items()
                if k.startswith(prefix)}
    for prefix in ("llama.", "tokenizer."):
        a, b = kv(orig, prefix), kv(got, prefix)
        # convert_hf_to_gguf writes key/value_length (transformers fills in head_dim) where
        # the original, made by an older script, has none.
        b = {k: v for k, v in b.items() if k in a or not k.endswith(("key_length", "value_length"))}
        assert a and a == b, prefix


def test_merge_takes_the_pre_tokenizer_override_too(llama3_folder, llama3_gguf, tmp_path):
    """A merge of HF folders with an unknown BPE pre-tokenizer: the same error, and the same
    override as quantize; the merged file's tokenizer is the converted one's."""
    recipe = tmp_path / "llama3-self.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {llama3_folder}\n    parameters: {{weight: 1}}\n"
                      f"  - model: {llama3_folder}\n    parameters: {{weight: 1}}\n")
    p = run_smelt("merge", recipe, "-o", tmp_path / "never", "--types", "F16", check=False)
    assert p.returncode != 0 and "--tokenizer-pre" in p.stderr, p.stderr
    out = tmp_path / "llama3-merge"
    run_smelt("merge", recipe, "-o", out, "--types", "F16", "--tokenizer-pre", "llama-bpe")
    (merged,) = out.glob("*.gguf")
    assert dict(tokenizer_kv(merged)) == dict(tokenizer_kv(llama3_gguf))


def test_tokenizer_files_rebuilt_from_a_gguf(llama3_folder, llama3_gguf, tmp_path):
    """A merge of a GGUF written as an HF folder carries a tokenizer rebuilt from the GGUF's
    keys (Llama 3 layout: BOS template, ignore_merges, a non-special added token, [PAD] ids
    left to config.json): transformers tokenizes with it as with the original folder, and
    converting the folder again gives the GGUF's tokenizer keys."""
    from transformers import AutoTokenizer

    n_layer = dict(gguf.GGUFReader(llama3_gguf).fields.items())["llama.block_count"].contents()
    recipe = tmp_path / "self.yaml"
    recipe.write_text(f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {llama3_gguf}\n"
                      f"        layer_range: [0, {n_layer}]\n")
    hf = tmp_path / "hf"
    run_smelt("merge", recipe, "-o", hf, "--format", "safetensors", "--type", "F16")
    assert (hf / "tokenizer.json").is_file() and (hf / "tokenizer_config.json").is_file()
    want, got = AutoTokenizer.from_pretrained(llama3_folder), AutoTokenizer.from_pretrained(hf)
    for text in [TEXT, UNSEEN, *TEXT.splitlines()]:
        assert got.encode(text) == want.encode(text), text
    back = convert(hf, tmp_path / "back.gguf", "--tokenizer-pre", "llama-bpe")
    assert tokenizer_kv(back) == tokenizer_kv(llama3_gguf)


def _export(gguf_path: Path, out: Path) -> Path:
    """`merge --format safetensors` of every layer of `gguf_path`."""
    n_layer = dict(gguf.GGUFReader(gguf_path).fields.items())["llama.block_count"].contents()
    recipe = out.with_suffix(".yaml")
    recipe.write_text(f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {gguf_path}\n"
                      f"        layer_range: [0, {n_layer}]\n")
    run_smelt("merge", recipe, "-o", out, "--format", "safetensors", "--type", "F16")
    return out


def test_sentencepiece_model_rebuilt_from_a_gguf(spm_folder, spm_gguf, tmp_path):
    """A SentencePiece GGUF exported as an HF folder gets a tokenizer.model of its own making:
    the `sentencepiece` library loads it and encodes as the original model does (byte
    fallback included), and converting the folder again gives the GGUF's tokenizer keys."""
    import sentencepiece as spm

    hf = _export(spm_gguf, tmp_path / "hf")
    assert not (hf / "tokenizer.json").exists()
    want = spm.SentencePieceProcessor(model_file=str(spm_folder / "tokenizer.model"))
    got = spm.SentencePieceProcessor(model_file=str(hf / "tokenizer.model"))
    assert got.get_piece_size() == want.get_piece_size()
    for text in [TEXT, UNSEEN, *TEXT.splitlines()]:
        assert got.encode(text) == want.encode(text), text
    back = convert(hf, tmp_path / "back.gguf")
    assert tokenizer_kv(back) == _without_sep_flag(tokenizer_kv(spm_gguf))


def _without_sep_flag(kv: list) -> list:
    # `add_sep_token = false` is read from the post-processor of a tokenizer.json, which a
    # rebuilt SentencePiece folder does not have (transformers makes one from tokenizer.model
    # on load); false is also llama.cpp's default.
    return [(k, v) for k, v in kv if k != "tokenizer.ggml.add_sep_token"]


def test_sentencepiece_added_tokens_survive_the_rebuild(spm_folder, tmp_path):
    """Added (user-defined) tokens, a replaced control token and [PAD] filler, as the
    converter lays them out, come back the same through the rebuilt tokenizer files."""
    folder = _spm_added_folder(spm_folder, tmp_path / "spm-added")
    original = convert(folder, tmp_path / "added.gguf")
    hf = _export(original, tmp_path / "hf")
    back = convert(hf, tmp_path / "back.gguf")
    assert tokenizer_kv(back) == _without_sep_flag(tokenizer_kv(original))
