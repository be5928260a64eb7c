"""Runs the tokenizer half of llama.cpp's convert_hf_to_gguf.py on an HF folder and prints
the `tokenizer.*` keys it writes, in order, as JSON: [[key, gguf type name, value], ...].

    python convert_oracle.py LLAMA_CPP_SRC FOLDER [--pre NAME]
    python convert_oracle.py LLAMA_CPP_SRC FOLDER --general GGUF

`--general` prints the `general.*` keys instead: the script's own `ModelBase.prepare_metadata`
(gguf-py's `Metadata.load` over the model card, config.json, generation_config.json and the
folder name; the size label from the parameter count) on a writer holding GGUF's tensor
shapes (smelt's output for the folder, whose tensors the convert goldens show are the
script's), with the hyper-parameters left out.

The script itself cannot be imported here (it imports torch at the top), so this takes the
methods that build the vocabulary (`TextModel.get_vocab_base`, `_create_vocab_sentencepiece`,
`LlamaModel.set_vocab`, ...) verbatim from the vendored source with `ast`, puts them on a
bare class and runs them against the vendored gguf-py's real GGUFWriter: the code under test
is the script's own, unmodified. `--pre` replaces `get_vocab_base_pre` by a constant, as
smelt's `--tokenizer-pre` does. Runs in its own process because it imports the vendored
gguf-py, not the pinned PyPI `gguf` the other tests use."""
import __future__
import ast
import json
import logging
import sys
from enum import IntEnum
from hashlib import sha256
from pathlib import Path

src, folder = Path(sys.argv[1]), Path(sys.argv[2])
pre = sys.argv[sys.argv.index("--pre") + 1] if "--pre" in sys.argv else None
general = Path(sys.argv[sys.argv.index("--general") + 1]) if "--general" in sys.argv else None
sys.path.insert(0, str(src / "gguf-py"))
import gguf  # noqa: E402  (the vendored one)

WANT = {
    "conversion/base.py": {
        "ModelBase": ["find_hparam", "prepare_metadata", "set_type"],
        "TextModel": [
            "does_token_look_special", "get_vocab_base", "get_vocab_base_pre", "_set_vocab_gpt2",
            "_set_vocab_sentencepiece", "_create_vocab_sentencepiece", "_set_vocab_llama_hf",
        ],
    },
    "conversion/llama.py": {"LlamaModel": ["set_vocab"]},
}


class SentencePieceTokenTypes(IntEnum):  # as in conversion/base.py
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


namespace = {
    "gguf": gguf, "json": json, "sha256": sha256, "logger": logging.getLogger("oracle"),
    "SentencePieceTokenTypes": SentencePieceTokenTypes, "Path": Path,
}
methods = {}
for rel, classes in WANT.items():
    tree = ast.parse((src / rel).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in classes:
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name in classes[node.name]:
                    fn.decorator_list = []
                    mod = ast.Module(body=[fn], type_ignores=[])
                    code = compile(mod, str(src / rel), "exec",
                                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
                    exec(code, namespace)
                    methods[fn.name] = namespace.pop(fn.name)
missing = {m for c in WANT.values() for ms in c.values() for m in ms} - set(methods)
assert not missing, f"not found in the script: {missing}"
Oracle = type("Oracle", (), methods)
if pre is not None:
    Oracle.get_vocab_base_pre = lambda self, tokenizer: pre

o = Oracle()
o.dir_model = folder
o.hparams = json.loads((folder / "config.json").read_text(encoding="utf-8"))
o.origin_hf_arch = o.hparams["architectures"][0]
o.is_mistral_format = False
o.gguf_writer = gguf.GGUFWriter(path=None, arch="llama")
if general is None:
    o.set_vocab()
    prefix = "tokenizer."
else:
    # The state prepare_metadata reads, as ModelBase.__init__ leaves it for a local folder
    # converted at F32 with no --metadata / --model-name.
    o.dir_model_card = folder
    o.metadata_override = None
    o.model_name = None
    o.remote_hf_model_id = None
    o.ftype = gguf.LlamaFileType.ALL_F32
    o._is_nvfp4 = o._is_mxfp4 = False
    o._prec_a4 = {}
    o.set_gguf_parameters = lambda: None
    import numpy as np

    for t in gguf.GGUFReader(general).tensors:
        shape = [int(x) for x in reversed(t.shape.tolist())]
        o.gguf_writer.add_tensor_info(t.name, shape, np.dtype(np.float32), int(t.n_bytes))
    o.prepare_metadata(vocab_only=False)
    prefix = "general."


def plain(v):
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8")
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, IntEnum):
        return int(v)
    return v


out = [[k, v.type.name, plain(v.value)] for k, v in o.gguf_writer.kv_data[0].items() if k.startswith(prefix)]
json.dump(out, sys.stdout, ensure_ascii=False)
