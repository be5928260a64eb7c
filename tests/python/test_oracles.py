"""smelt against the PyPI `gguf` package (reader, dequantizers, legacy quantizers) and
`libgguf` (ggml's quantizers), on the tiny fixtures and on SmolLM2's real tensors."""
import numpy as np
import pytest
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from conftest import run_smelt

LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def tensors_by_name(path):
    r = gguf.GGUFReader(path)
    return r, {t.name: t for t in r.tensors}


def f32_of(t):
    return dequantize(np.asarray(t.data), t.tensor_type).reshape(-1)


def llama_cpp_order_key(name):
    """llama.cpp's weight_name_comparer: non-layer tensors first, then by layer, then by name."""
    parts = name.split(".")
    layer = int(parts[1]) if parts[0] == "blk" and parts[1].isdigit() else -1
    return (layer, name.encode())


def field_value(reader, key):
    f = reader.fields[key]
    return [f.parts[i].tolist() for i in f.data]


@pytest.fixture(scope="module")
def tiny_f32(scratch):
    p = scratch / "tiny-f32.gguf"
    run_smelt("make-test-model", "--dtype", "F32", "--hidden", "256", "--ff", "512", "--heads", "4", "-o", p)
    return p


@pytest.mark.parametrize("qtype", LEGACY + ["F16", "BF16"])
def test_legacy_quantize_matches_gguf_on_tiny_model(tiny_f32, tmp_path, qtype):
    out = tmp_path / f"tiny-{qtype}.gguf"
    # --pure: every quantizable tensor gets the type itself (the mixes' Q6_K output tensor
    # would need a K-quant oracle; test_llama_quantize covers the mixes).
    run_smelt("quantize", tiny_f32, "-o", out, "--type", qtype, "--pure")
    _, src = tensors_by_name(tiny_f32)
    reader, dst = tensors_by_name(out)
    assert set(src) == set(dst)
    checked = 0
    for name, t in dst.items():
        s = src[name]
        if t.tensor_type == s.tensor_type:
            assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(s.data).view(np.uint8)), name
            continue
        values = np.asarray(s.data, dtype=np.float32).reshape(list(reversed(s.shape.tolist())))
        expect = quantize(values, t.tensor_type)
        assert t.tensor_type.name == qtype, name
        assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), expect.view(np.uint8).reshape(-1)), name
        checked += 1
    assert checked >= 20


def test_smollm2_dequantize_matches_gguf(smollm2, tmp_path):
    """smelt's F32 output holds exactly gguf.quants.dequantize of every Q4_1/Q8_0 tensor."""
    out = tmp_path / "smol-F32.gguf"
    run_smelt("quantize", smollm2, "-o", out, "--type", "F32")
    _, src = tensors_by_name(smollm2)
    _, dst = tensors_by_name(out)
    types = set()
    for name, s in src.items():
        d = dst[name]
        assert d.tensor_type == T.F32, name
        types.add(s.tensor_type)
        assert np.array_equal(f32_of(s).view(np.uint32), np.asarray(d.data).reshape(-1).view(np.uint32)), name
    assert {T.Q4_1, T.Q8_0, T.F32} <= types


def test_smollm2_q8_0_reads_back_with_same_tensors_and_tokenizer(smollm2, tmp_path):
    out = tmp_path / "smol-Q8_0.gguf"
    run_smelt("quantize", smollm2, "-o", out, "--type", "Q8_0")
    rs, src = tensors_by_name(smollm2)
    rd, dst = tensors_by_name(out)
    assert set(src) == set(dst)
    assert list(dst) == sorted(dst, key=llama_cpp_order_key), "llama-quantize's tensor order"
    for name, s in src.items():
        d = dst[name]
        assert s.shape.tolist() == d.shape.tolist(), name
        if s.tensor_type == T.F32:
            assert d.tensor_type == T.F32
        else:
            assert d.tensor_type == T.Q8_0, name
            if s.tensor_type != T.Q8_0:
                expect = quantize(f32_of(s).reshape(list(reversed(s.shape.tolist()))), T.Q8_0)
                assert np.array_equal(np.asarray(d.data).view(np.uint8).reshape(-1), expect.reshape(-1)), name
    for key in rs.fields:
        if key.startswith("tokenizer.") or key.startswith("llama."):
            assert field_value(rs, key) == field_value(rd, key), key
    assert field_value(rd, "general.file_type") == [[7]]
    assert field_value(rd, "general.quantization_version") == [[2]]


# Types libgguf can make and gguf can dequantize; IQ1/IQ2/IQ3 need an imatrix to be made.
ALL_QUANTIZED = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
                 T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.IQ4_NL,
                 T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.MXFP4]


def test_dequantize_every_type_matches_gguf(tmp_path):
    """A GGUF holding one tensor of every quantized type, made by ggml's quantizers (libgguf)
    and written by gguf's own writer; smelt's F32 output must equal gguf's dequantize bit for bit."""
    import libgguf
    rng = np.random.default_rng(7)
    src = tmp_path / "all-types.gguf"
    w = gguf.GGUFWriter(src, "llama")
    expected = {}
    for qt in ALL_QUANTIZED:
        x = (rng.standard_normal((8, 512)) * 0.05).astype(np.float32)
        imatrix = rng.uniform(0.1, 2.0, 512).astype(np.float32)
        q = libgguf.quantize_rows(x, int(qt), imatrix if libgguf.quantize_requires_imatrix(int(qt)) else None)
        name = f"blk.0.{qt.name.lower()}.weight"
        w.add_tensor(name, np.asarray(q).view(np.uint8).reshape(8, -1), raw_dtype=qt)
        expected[name] = dequantize(np.asarray(q).view(np.uint8).reshape(8, -1), qt).reshape(-1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "all-types-F32.gguf"
    run_smelt("quantize", src, "-o", out, "--type", "F32")
    _, dst = tensors_by_name(out)
    for name, exp in expected.items():
        got = np.asarray(dst[name].data).reshape(-1)
        assert np.array_equal(got.view(np.uint32), exp.astype(np.float32).view(np.uint32)), name
