"""`smelt eval`'s KL-divergence statistics and saved reference logits against llama-perplexity:
every figure of `llama-perplexity --kl-divergence`'s closing tables, and its
`--kl-divergence-base` file read and written both ways.

The F32 fixture is the reference; smelt's F32 logits agree with llama.cpp's to about 1e-5, its
quantized ones to a fraction of a percent (the sums run in another order), so the statistics
that depend on the quantized model's logits get tolerances sized to that, and the ones that
only depend on the reference's stored rows agree to 1e-5."""
import json
import re
import shutil
import subprocess

import pytest

from conftest import run_smelt
from test_eval import TEXT, llama_perplexity, smelt_eval, tiny  # noqa: F401  (tiny: fixture)
from test_llama_quantize import llama_bin  # noqa: F401  (fixture)

CTX, CHUNKS = 128, 6

# llama-perplexity's label → the key of smelt's `kld` JSON (Δp keys under delta_p_percent).
LABELS = {
    "Mean PPL(Q)": "ppl", "Mean PPL(base)": "base_ppl",
    "Cor(ln(PPL(Q)), ln(PPL(base)))": "ln_ppl_correlation",
    "Mean ln(PPL(Q)/PPL(base))": "ln_ppl_ratio", "Mean PPL(Q)/PPL(base)": "ppl_ratio",
    "Mean PPL(Q)-PPL(base)": "ppl_diff",
    "Mean    KLD": "mean", "Maximum KLD": "max", "99.9%   KLD": "p99.9", "99.0%   KLD": "p99",
    "95.0%   KLD": "p95", "90.0%   KLD": "p90", "Median  KLD": "median", "10.0%   KLD": "p10",
    " 5.0%   KLD": "p5", " 1.0%   KLD": "p1", " 0.1%   KLD": "p0.1", "Minimum KLD": "min",
    "Mean    Δp": "Δ.mean", "Maximum Δp": "Δ.max", "99.9%   Δp": "Δ.p99.9", "99.0%   Δp": "Δ.p99",
    "95.0%   Δp": "Δ.p95", "90.0%   Δp": "Δ.p90", "75.0%   Δp": "Δ.p75", "Median  Δp": "Δ.median",
    "25.0%   Δp": "Δ.p25", "10.0%   Δp": "Δ.p10", " 5.0%   Δp": "Δ.p5", " 1.0%   Δp": "Δ.p1",
    " 0.1%   Δp": "Δ.p0.1", "Minimum Δp": "Δ.min", "RMS Δp    ": "Δ.rms",
    "Same top p": "same_top_percent",
}
NUM = r"(-?[0-9.]+|-?nan|-?inf)"
WORDS = {" ".join(k.split()): v for k, v in LABELS.items()}


def printed_stats(log: str) -> dict:
    """The closing tables of llama-perplexity --kl-divergence (or smelt's copy of them):
    key → value, and key_error → the ± where printed."""
    out = {}
    tables = log[log.index("====== Perplexity statistics ======"):]
    for line in tables.splitlines():
        label, sep, rest = line.partition(":")
        label = " ".join(label.split())
        if not sep or label not in WORDS:
            continue
        m = re.match(rf"\s*{NUM}%?(?:\s*±\s*{NUM})?", rest)
        assert m, line
        key = WORDS[label]
        out[key] = float(m.group(1))
        if m.group(2) is not None:
            out[key + "_error"] = float(m.group(2))
    assert set(LABELS.values()) <= out.keys(), sorted(set(LABELS.values()) - out.keys())
    return out


def smelt_stats(kld: dict) -> dict:
    """smelt's `kld` JSON in llama-perplexity's printed units (percent where it prints %)."""
    out = {}
    for key in LABELS.values():
        for k in (key, key + "_error"):
            src = kld["delta_p_percent"] if k.startswith("Δ.") else kld
            name = k[2:] if k.startswith("Δ.") else k
            if name in src:
                out[k] = src[name]
    out["ln_ppl_correlation"] = 100 * kld["ln_ppl_correlation"]
    return out


# (relative, absolute) tolerance per statistic. The reference's perplexity comes from the same
# stored rows on both sides; the rest depends on the quantized model's logits, which smelt sums
# in another order than ggml (PPL within 0.1%, per-token KLD within a few percent).
# Δp values of this random model are ~1e-4 (printed with 3 decimals, in percent).
def tolerance(key: str) -> tuple[float, float]:
    if key.startswith("base_ppl"):
        return 1e-5, 1e-6
    if key.startswith("Δ."):
        return 0, 0.004
    if key.startswith("same_top_percent"):
        return 0, 1.6 if key == "same_top_percent" else 0.05  # 1.6% is 6 of 378 tokens
    if key == "ln_ppl_correlation":
        return 0, 0.5
    if key in ("ln_ppl_ratio", "ppl_ratio"):
        return 0, 1e-3
    if key == "ppl_diff":
        return 0, 0.6  # 1e-3 of the perplexity (~520)
    if key.endswith("_error"):
        return 0.02, 1e-6
    if key.startswith("ppl"):
        return 1e-3, 0
    if key == "mean":
        return 0.01, 0
    return 0.04, 2e-5  # KLD quantiles: single tokens, ~1% apart here


def assert_stats_close(ours: dict, want: dict, tol=tolerance):
    bad = []
    for key, w in want.items():
        rel, abs_ = tol(key)
        if ours.get(key) != pytest.approx(w, rel=rel, abs=abs_):
            bad.append(f"{key}: smelt {ours.get(key)} llama-perplexity {w}")
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def base_file(llama_bin, tiny, scratch):
    """llama-perplexity's --kl-divergence-base file of the F32 fixture."""
    path = scratch / "kld-base-llama.kld"
    llama_perplexity(llama_bin, tiny, CTX, CHUNKS, "--kl-divergence-base", path)
    return path


@pytest.fixture(scope="module")
def quant(tiny, scratch):
    def make(qtype):
        q = scratch / f"kld-tiny-{qtype}.gguf"
        if not q.exists():
            run_smelt("quantize", tiny, "-o", q, "--type", qtype)
        return q
    return make


def llama_kld(llama_bin, model, base) -> dict:
    log = llama_perplexity(llama_bin, model, CTX, CHUNKS, "--kl-divergence-base", base, "--kl-divergence")
    return printed_stats(log)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q4_K_M"])
def test_every_kld_statistic_matches_llama_perplexity(llama_bin, tiny, base_file, quant, qtype):
    q = quant(qtype)
    want = llama_kld(llama_bin, q, base_file)
    ours = smelt_eval(q, CTX, CHUNKS, "--reference", tiny)
    assert ours["kld"]["scored"] == CHUNKS * (CTX - 1 - CTX // 2)
    assert_stats_close(smelt_stats(ours["kld"]), want)


def test_reading_llama_perplexitys_base_file_equals_running_the_reference(llama_bin, tiny, base_file, quant):
    q = quant("Q2_K")
    with_model = smelt_eval(q, CTX, CHUNKS, "--ref", tiny)
    # No --chunks: as many as the file holds.
    p = run_smelt("eval", q, "--text", TEXT, "--ctx", CTX, "--json", "--ref-logits", base_file)
    with_file = json.loads(p.stdout)
    assert with_file["chunks"] == CHUNKS and with_file["reference"] == str(base_file)
    # The same model logits on both sides; the stored reference rows differ by the 1e-5 between
    # smelt's and llama.cpp's F32 logits.
    a, b = smelt_stats(with_file["kld"]), smelt_stats(with_model["kld"])
    assert a.keys() == b.keys() and len(a) == 43
    assert_stats_close(a, b, lambda k: (0, 0.6) if k == "same_top_percent" else (0, 1e-4) if k.startswith("Δ.") else (2e-4, 2e-5))
    # The text table prints what the JSON holds, in llama-perplexity's layout.
    text = run_smelt("eval", q, "--text", TEXT, "--ctx", CTX, "--ref-logits", base_file).stdout
    assert "====== KL divergence statistics ======" in text
    assert_stats_close(printed_stats(text), a, lambda k: (0, 1.5e-6) if not k.startswith(("Δ.", "same", "ln_ppl_cor")) else (0, 0.006))


def test_llama_perplexity_reads_smelts_saved_logits(llama_bin, tiny, base_file, quant, scratch):
    q = quant("Q2_K")
    ours_file = scratch / "kld-base-smelt.kld"
    run_smelt("eval", tiny, "--text", TEXT, "--ctx", CTX, "--chunks", CHUNKS, "--save-logits", ours_file)
    theirs = base_file.read_bytes()
    ours = ours_file.read_bytes()
    header = 20 + 4 * CTX * CHUNKS  # magic, n_ctx, n_vocab, n_chunk, tokens
    assert len(ours) == len(theirs) and ours[:header] == theirs[:header]
    assert_stats_close(llama_kld(llama_bin, q, ours_file), llama_kld(llama_bin, q, base_file),
                       lambda k: (1e-4, 2e-6) if not k.startswith(("Δ.", "same", "ln_ppl_cor")) else (0, 0.002))
    # --save-logits beside --reference saves the reference's rows: the same bytes, and reading
    # them back gives exactly what running the reference gives (one code path for both).
    beside = scratch / "kld-base-beside.kld"
    with_model = smelt_eval(q, CTX, CHUNKS, "--reference", tiny, "--save-logits", beside)
    assert beside.read_bytes() == ours
    with_file = smelt_eval(q, CTX, CHUNKS, "--ref-logits", beside)
    assert with_file["kld"] == with_model["kld"]


def test_bad_reference_logits_are_refused_naming_the_file(tiny, base_file, scratch):
    def fails(*args, want, one_line=True):
        p = run_smelt("eval", *args, check=False)
        assert p.returncode != 0, p.stdout[-500:]
        for w in want:
            assert w in p.stderr, p.stderr
        if one_line:
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr

    base = str(base_file)
    common = ("--text", TEXT)
    fails(tiny, *common, "--ctx", 64, "--ref-logits", base_file, want=[base, "--ctx 128", "--ctx 64"])
    fails(tiny, *common, "--ctx", CTX, "--chunks", 8, "--ref-logits", base_file, want=[base, "holds 6 chunks"])
    other_text = scratch / "kld-other.txt"
    other_text.write_text(TEXT.read_text()[5000:])
    fails(tiny, "--text", other_text, "--ctx", CTX, "--ref-logits", base_file, want=[base, "another text"])
    wide = scratch / "kld-wide-vocab.gguf"
    run_smelt("make-test-model", "-o", wide, "--layers", "1", "--hidden", "64", "--ff", "128",
              "--heads", "2", "--kv-heads", "1", "--vocab", "1024", "--dtype", "F32", "--seed", "3")
    fails(wide, *common, "--ctx", CTX, "--ref-logits", base_file, want=[base, "vocabulary of 512", "1024"])
    cut = scratch / "kld-cut.kld"
    cut.write_bytes(base_file.read_bytes()[:-1000])
    fails(tiny, *common, "--ctx", CTX, "--ref-logits", cut, want=[str(cut), "truncated"])
    fails(tiny, *common, "--ctx", CTX, "--ref-logits", tiny, want=[str(tiny), "_logits_"])
    garbled = scratch / "kld-garbled.kld"
    data = bytearray(base_file.read_bytes())
    data[16:20] = (7).to_bytes(4, "little")  # n_chunk: 7, the rows of 6
    garbled.write_bytes(bytes(data))
    fails(tiny, *common, "--ctx", CTX, "--ref-logits", garbled, want=[str(garbled), "truncated"])
    data = bytearray(base_file.read_bytes())
    row = 20 + 4 * CTX * CHUNKS
    data[row:row + 4] = b"\xff\xff\xff\xff"  # the first row's scale: NaN
    garbled.write_bytes(bytes(data))
    fails(tiny, *common, "--ctx", CTX, "--ref-logits", garbled, want=[str(garbled), "garbled", "chunk 1, row 0"])
    fails(tiny, *common, "--ref", tiny, "--ref-logits", base_file, want=["--ref-logits", "cannot be used with"],
          one_line=False)
    # Never over an input, and nothing left behind by a run that fails.
    copy = scratch / "kld-model-copy.gguf"
    shutil.copy(tiny, copy)
    fails(copy, *common, "--ctx", CTX, "--save-logits", copy, want=[str(copy), "the same file"])
    out_dir = scratch / "kld-out"
    out_dir.mkdir()
    short = scratch / "kld-short.txt"
    short.write_text("too short")
    fails(tiny, "--text", short, "--ctx", CTX, "--save-logits", out_dir / "x.kld", want=["at least 128"])
    assert list(out_dir.iterdir()) == []
