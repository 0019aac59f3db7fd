"""The ``x86-vnni`` / ``x86-avx2`` profiles in pure Python (no CPU feature needed; the
instructions themselves are checked against the CPU in tests/test_cpu_isa.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ibert_ref.cli import main as cli_main
from ibert_ref.datapath import available_datapaths, make_datapath
from ibert_ref.hardware.x86 import PAIR_PART, avx2_dot4, vnni_matmul, vpdpbusd, vpmaddubsw
from ibert_ref.model import IBertModel
from ibert_ref.tokenizer import Tokenizer

TEXT = "The capital of France is Paris."


@pytest.fixture(scope="module")
def batch():
    enc = Tokenizer.from_pretrained()([TEXT, "Integers all the way down, and a longer second sentence."])
    return enc["input_ids"], enc["attention_mask"]


def test_profiles_are_registered():
    assert {"x86-vnni", "x86-avx2"} <= set(available_datapaths())
    assert make_datapath("x86-avx2").madd == "vpmaddubsw"
    assert make_datapath("x86-vnni", madd="vpdpbusds").madd == "vpdpbusds"
    with pytest.raises(ValueError, match="madd"):
        make_datapath("x86-vnni", madd="vpdpwssd")
    with pytest.raises(ValueError, match="u8-sat"):
        make_datapath("x86-vnni", probs="u9")


def test_pair_saturation_needs_8_bit_weights():
    """Every u8 x s8 pair: with 7-bit weights (-64..63) no pair leaves int16, with 8-bit ones
    (u = 255 against 127 or -128) the pair saturates."""
    u = np.arange(256)
    for w in (-64, 63):
        pair = np.stack([u, np.full(256, 255)], axis=1)
        np.testing.assert_array_equal(vpmaddubsw(pair, np.full((256, 2), w)), pair @ np.full(2, w))
    assert vpmaddubsw([255, 255], [127, 127]) == 32767 and vpmaddubsw([255, 255], [-128, -128]) == -32768


def test_avx2_dot_equals_vpdpbusd_unless_a_pair_saturates():
    rng = np.random.default_rng(0)
    acc, u, w = rng.integers(-(2**31), 2**31, 5000), rng.integers(0, 256, (5000, 4)), rng.integers(-128, 128, (5000, 4))
    pairs = (u * w).reshape(5000, 2, 2).sum(-1)
    clean = np.all((pairs >= -32768) & (pairs <= 32767), axis=1)
    assert 0 < clean.sum() < 5000
    np.testing.assert_array_equal(avx2_dot4(acc, u, w)[clean], vpdpbusd(acc, u, w)[clean])
    assert np.all(avx2_dot4(acc, u, w)[~clean] != vpdpbusd(acc, u, w)[~clean])


def test_compensation_makes_vpdpbusd_exact():
    """``sum (x+128) w - 128 sum w`` in a wrapping int32 lane is ``x @ w`` (K odd: zero-padded)."""
    rng = np.random.default_rng(1)
    x, w = rng.integers(-128, 128, (2, 7, 515)), rng.integers(-128, 128, (515, 33))
    out, info = vnni_matmul(x, w)
    np.testing.assert_array_equal(out, x @ w)
    assert info["pair_range"] is None and not info["events"]


def test_vpdpbusd_profile_equals_the_same_profile_with_exact_gemms(batch):
    """Every integer of the bundled model under ``x86-vnni`` equals the ``generic`` profile with
    the same requantization and variants, whose GEMMs are exact."""
    ids, mask = batch
    x86 = IBertModel.from_pretrained(datapath="x86-vnni")(ids, mask, return_trace=True)
    same = make_datapath("generic", requant="cutlass-f32", exp="fold", gelu="int32", ln_var="uint32", probs="u8-sat")
    ref = IBertModel.from_pretrained(datapath=same)(ids, mask, return_trace=True)
    assert x86.trace.keys() == ref.trace.keys()
    for name in ref.trace:
        np.testing.assert_array_equal(x86.trace[name], ref.trace[name], err_msg=name)
    assert [e for e in x86.overflow_events if e.part == PAIR_PART] == []


def test_x86_avx2_reports_every_saturated_pair(batch):
    ids, mask = batch
    out = IBertModel.from_pretrained(datapath="x86-avx2")(ids, mask, return_trace=True)
    pairs = [e for e in out.overflow_events if e.part == PAIR_PART]
    assert pairs and all(e.action == "saturated" and e.bits == 16 and abs(e.exact) > 32767 for e in pairs)
    assert {e.op.rsplit(".", 1)[-1] for e in pairs} <= {"query", "key", "value", "dense"}
    with pytest.raises(Exception, match="vpmaddubsw"):
        IBertModel.from_pretrained(datapath=make_datapath("x86-avx2", overflow="raise"))(ids, mask)


def test_cli_widths_flags_the_vpmaddubsw_pairs(capsys):
    assert cli_main(["widths", "--text", TEXT, "--layers", "0", "--datapath", "x86-avx2", "--flagged"]) == 0
    out = capsys.readouterr().out
    assert PAIR_PART in out and "saturated in 16 bits" in out


def test_pair_report_counts_the_saturated_pairs(batch):
    """``widths.vpmaddubsw_pairs`` on the exact run: the query GEMM's count equals a direct count
    of ``(x[2j]+128) w[2j] + (x[2j+1]+128) w[2j+1]`` outside int16."""
    from ibert_ref.widths import vpmaddubsw_pairs

    ids, mask = batch
    model = IBertModel.from_pretrained()
    rows = {r.op: r for r in vpmaddubsw_pairs(model, ids, mask)}
    name = "encoder.layer.0.attention.self.query"
    x = model(ids, mask, return_trace=True).trace["embeddings.output_activation"].astype(np.int64) + 128
    w = np.asarray(model.compiled.layers[0].query.w, dtype=np.int64)  # (out, in)
    pairs = x[..., None, 0::2] * w[:, 0::2] + x[..., None, 1::2] * w[:, 1::2]  # (B, T, out, K/2)
    assert rows[name].saturated == np.count_nonzero((pairs > 32767) | (pairs < -32768)) > 0
    assert (rows[name].lo, rows[name].hi) == (int(pairs.min()), int(pairs.max()))
    assert "encoder.layer.0.attention.self.scores" in rows and not any("context" in op for op in rows)


def test_cli_widths_vpmaddubsw_table(capsys):
    assert cli_main(["widths", "--text", TEXT, "--layers", "0", "--flagged", "--vpmaddubsw"]) == 0
    out = capsys.readouterr().out
    assert "x86 AVX2 vpmaddubsw" in out and "encoder.layer.0.intermediate.dense" in out


def test_switching_probs_back_to_u9_computes_p_v_exactly():
    """``verify`` undoes one deviation by setting a built profile's attribute: with probs="u9"
    a single-key row's probability 256 reaches ``P V`` and is taken exactly."""
    dp = make_datapath("x86-avx2")
    dp.probs = "u9"
    p = np.zeros((1, 1, 2, 2), dtype=np.int64)  # (batch, heads, queries, keys)
    p[..., 0] = 256
    v = np.random.default_rng(2).integers(-128, 128, (1, 2, 4))
    from ibert_ref.datapath import QTensor

    ctx = dp.attention_context(QTensor(p, np.float32(1)), QTensor(v, np.float32(1)), 1, np.float32(1))
    np.testing.assert_array_equal(ctx.data[0], 256 * v[0, :1].repeat(2, axis=0))


@pytest.mark.parametrize("acc_bits", [63, 64])
def test_wide_accumulators_are_exact(acc_bits):
    """``acc_bits`` up to 64 (verify's exact twin uses 64): no wrap, ``x @ w``."""
    rng = np.random.default_rng(3)
    x, w = rng.integers(-128, 128, (4, 40)), rng.integers(-128, 128, (40, 6))
    for madd in ("vpdpbusd", "vpdpbusds"):
        np.testing.assert_array_equal(vnni_matmul(x, w, madd=madd, acc_bits=acc_bits)[0], x @ w)


def test_profile_options_are_checked_per_profile():
    """``madd`` belongs to the x86 profiles only; another profile names its own options."""
    from ibert_ref.datapath import make_datapath

    with pytest.raises(ValueError, match="profile 'arm' has no option 'madd'"):
        make_datapath("arm", madd="vpmaddubsw")
    dp = make_datapath("x86-vnni", madd="vpmaddubsw", acc_bits=24)
    assert dp.madd == "vpmaddubsw" and dp.acc_bits == 24
