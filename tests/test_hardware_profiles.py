"""Hardware profiles (ibert_ref.hardware.profiles): registration, requantization roundings against
the documented vectors and an unbounded-integer reference, accumulator overflow (wrap vs
saturate, order, raise), the int32 variants, and end-to-end runs on the bundled model."""

from __future__ import annotations

from fractions import Fraction
from math import floor

import numpy as np
import pytest

from ibert_ref.cli import main as cli_main
from ibert_ref.data import default_model_path
from ibert_ref.datapath import ExactDatapath, QTensor, available_datapaths, make_datapath
from ibert_ref.hardware.accumulate import IntegerOverflowError
from ibert_ref.hardware.oplog import OverflowRecord
from ibert_ref.hardware.profiles import (
    PROFILES,
    HardwareDatapath,
    ShiftedQTensor,
    gelu_int32_constants,
    parse_profile_options,
)
from ibert_ref.model import IBertModel
from ibert_ref.quant import Dyadic
from ibert_ref.tokenizer import Tokenizer

TEXTS = ["The capital of France is Paris.", "Hi", "Water boils at one hundred degrees Celsius at sea level."]


@pytest.fixture(scope="module")
def batch():
    enc = Tokenizer.from_pretrained(default_model_path())(TEXTS)
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def exact_run(batch):
    ids, mask = batch
    model = IBertModel.from_pretrained()
    return model, model(ids, attention_mask=mask, return_trace=True)


def run_profile(batch, name, **kw):
    ids, mask = batch
    model = IBertModel.from_pretrained(datapath=make_datapath(name, **kw))
    return model, model(ids, attention_mask=mask, return_trace=True)


def wrap(x: int, bits: int) -> int:
    x &= (1 << bits) - 1
    return x - (1 << bits) if x >= 1 << (bits - 1) else x


# ---------------------------------------------------------------------------------------
# registration


def test_profiles_are_registered_datapaths():
    assert {"arm", "tensor-core", "generic"} <= set(available_datapaths())
    dp = make_datapath("tensor-core")
    assert isinstance(dp, HardwareDatapath)
    assert (dp.acc_bits, dp.overflow, dp.k_step) == (32, "saturate", 32)
    assert make_datapath("tensor-core", overflow="wrap").overflow == "wrap"
    assert make_datapath("arm").requant == "arm"


def test_model_accepts_profile_names():
    model = IBertModel.from_pretrained(datapath="tensor-core")
    assert model.datapath.name == "tensor-core"


@pytest.mark.parametrize(
    "kw",
    [dict(acc_bits=1), dict(overflow="clip"), dict(requant="rne"), dict(k_step=0), dict(gelu="float"), dict(ln_var="u16")],
)
def test_bad_parameters_are_rejected(kw):
    with pytest.raises(ValueError):
        HardwareDatapath(**kw)


def test_parse_profile_options():
    assert parse_profile_options(["acc_bits=24", "k_step=none", "overflow=saturate"]) == dict(
        acc_bits=24, k_step=None, overflow="saturate"
    )
    with pytest.raises(ValueError):
        parse_profile_options(["acc_bits"])


# ---------------------------------------------------------------------------------------
# requantization: the vectors of hardware-semantics.md section 6.1 (z, m = 2^30, TFLite shift)
# columns: I-BERT RNE, TFLite double (= gemmlowp), ARM SQRDMULH + SRSHL (no fix-up),
# TFLite single, GPU float32 epilogue
SEC_6_1 = [
    (1, 0, (0, 1, 1, 1, 0)),
    (-1, 0, (0, 0, 0, 0, 0)),
    (3, 0, (2, 2, 2, 2, 2)),
    (-3, 0, (-2, -1, -1, -1, -2)),
    (1, -1, (0, 1, 1, 0, 0)),
    (-2, -1, (0, -1, 0, 0, 0)),
    (5, -1, (1, 2, 2, 1, 1)),
    (3, -2, (0, 1, 1, 0, 0)),
    (2**30, 0, (2**29,) * 5),
    (16777217, 0, (8388608, 8388609, 8388609, 8388609, 8388608)),
]
MODES = ("ibert", "gemmlowp", "arm", "tflite-single", "cutlass-f32")


@pytest.mark.parametrize("z, shift, expected", SEC_6_1)
def test_requant_roundings_match_documented_vectors(z, shift, expected):
    dy = Dyadic(m=np.array([2**30]), e=np.array([31 - shift]))
    for mode, want in zip(MODES, expected):
        got = int(HardwareDatapath(requant=mode).dyadic_round(np.array([z]), dy)[0])
        assert got == want, (mode, z, shift)
    assert int(HardwareDatapath(requant="tflite-double").dyadic_round(np.array([z]), dy)[0]) == expected[1]


def test_requant_float64_vector_of_section_6_1():
    # exact 107132922.5 + 3.5e-9: every integer rounding gives ...923, the float32 epilogue ...920
    dy = Dyadic(m=np.array([1161673357]), e=np.array([32]))
    z = np.array([396094475])
    for mode, want in zip(MODES, (107132923, 107132923, 107132923, 107132923, 107132920)):
        assert int(HardwareDatapath(requant=mode).dyadic_round(z, dy)[0]) == want, mode


def test_requant_left_shift_wraps_and_is_recorded():
    # z = 2^30, m = 2^30, shift = 1: TFLite / NEON compute z << 1 in int32 -> -2^31
    dy = Dyadic(m=np.array([2**30]), e=np.array([30]))
    for mode, want in (("gemmlowp", -(2**30)), ("arm", -(2**30)), ("tflite-single", 2**30), ("ibert", 2**30)):
        dp = HardwareDatapath(requant=mode)
        dp.begin_run()
        assert int(dp.dyadic_round(np.array([2**30]), dy)[0]) == want, mode
        events = dp.end_run()
        if mode in ("gemmlowp", "arm"):
            (ev,) = events
            assert (ev.action, ev.exact, ev.produced) == ("wrapped", 2**31, -(2**31))
        else:
            assert events == []


def reference_requant(mode: str, z: int, m: int, e: int) -> int:
    """Unbounded-integer definitions of the roundings (independent of the primitives)."""
    exact = Fraction(z * m, 2**e)
    if mode == "ibert":
        return round(exact)  # Python rounds Fractions half to even
    if mode == "tflite-single":
        return floor(exact + Fraction(1, 2))
    if abs(m) == 2**31:  # not an int32: stored as (m / 2, shift + 1)
        m, e = m // 2, e - 1
    shift = 31 - e
    left, right = max(shift, 0), max(-shift, 0)
    high = floor(Fraction(wrap(z << left, 32) * m, 2**31) + Fraction(1, 2))  # SQRDMULH: RHU
    if mode == "arm":
        return floor(Fraction(high, 2**right) + Fraction(1, 2))  # SRSHL: RHU
    if right > 31:
        return 0  # TFLite flushes the multiplier
    q = Fraction(high, 2**right)  # RoundingDivideByPOT: half away from zero
    return int(np.sign(q)) * floor(abs(q) + Fraction(1, 2))


@pytest.mark.parametrize("mode", ["ibert", "arm", "gemmlowp", "tflite-single"])
def test_requant_matches_unbounded_reference(mode):
    rng = np.random.default_rng(7)
    n = 400
    z = rng.integers(-(2**31), 2**31, size=n)
    z[:40] = rng.integers(-300, 300, size=40)  # small values hit exact ties
    m = rng.integers(2**30, 2**31 + 1, size=n) * rng.choice([-1, 1], size=n)
    m[:10] = 2**31  # m = 2^31 does not fit SQRDMULH's int32 operand
    m[10:40] = 2**30
    e = rng.integers(20, 62, size=n)
    e[10:40] = rng.integers(30, 34, size=30)
    got = HardwareDatapath(requant=mode).dyadic_round(z, Dyadic(m=m, e=e))
    want = [reference_requant(mode, int(a), int(b), int(c)) for a, b, c in zip(z, m, e)]
    assert got.tolist() == want


def test_requant_int32_input_narrowing_is_recorded_or_raises():
    dy = Dyadic(m=np.array([2**30]), e=np.array([40]))
    z = np.array([5, 2**33 + 7])
    dp = HardwareDatapath(requant="arm", overflow="saturate")
    dp.begin_run()
    out = dp.dyadic_round(z, dy)
    (ev,) = dp.end_run()
    assert (ev.action, ev.count, ev.first_index, ev.exact, ev.produced) == ("saturated", 1, 1, 2**33 + 7, 2**31 - 1)
    assert out[1] == reference_requant("arm", 2**31 - 1, 2**30, 40)
    raising = HardwareDatapath(requant="arm", overflow="raise")
    raising.begin_run()
    raising.dyadic_round(z, dy)
    with pytest.raises(IntegerOverflowError, match="my.op"):
        raising.end_op("my.op", "QuantAct")


# ---------------------------------------------------------------------------------------
# accumulators: wrap vs saturate, order, raise


def crafted_gemm():
    """x . w = +48387 over k 0..2, then -48387 over k 3..5: exact 0, 16-bit overflow midway."""
    x = np.array([[127, 127, 127, -127, -127, -127]])
    w = np.array([[127, 127, 127, 127, 127, 127]], dtype=np.int8)
    return x, w, np.zeros(1, dtype=np.int64)


def gemm(dp, x, w, b):
    dp.begin_run()
    out = int(dp.linear(x, w, b)[0, 0])
    dp.end_op("op", "QuantLinear")
    return out, dp.end_run()


def test_saturating_accumulator_depends_on_k_order_wrapping_does_not():
    x, w, b = crafted_gemm()
    reverse = x[:, ::-1].copy()
    sat = HardwareDatapath(acc_bits=16, overflow="saturate", k_step=3)
    first, events = gemm(sat, x, w, b)
    assert first == 32767 - 48387  # clamped after the first chunk, then -48387
    assert events[0].action == "saturated" and events[0].exact == 48387 and events[0].produced == 32767
    second, _ = gemm(sat, reverse, w, b)
    assert second == -32768 + 48387
    wrapping = HardwareDatapath(acc_bits=16, overflow="wrap", k_step=3)
    assert gemm(wrapping, x, w, b)[0] == gemm(wrapping, reverse, w, b)[0] == 0  # exact mod 2^16
    one_chunk = HardwareDatapath(acc_bits=16, overflow="saturate", k_step=None)
    assert gemm(one_chunk, x, w, b) == (0, [])  # the chunk sum is exact inside the instruction


def test_bias_is_added_after_the_last_chunk_in_the_same_register():
    x, w, _ = crafted_gemm()
    dp = HardwareDatapath(acc_bits=16, overflow="saturate", k_step=None)
    out, events = gemm(dp, x[:, :2], w[:, :2], np.array([10000]))
    assert out == 32767  # 32258 + 10000 saturates
    (ev,) = events
    assert (ev.part, ev.exact, ev.produced) == ("acc + bias", 42258, 32767)


def test_raise_names_the_op_on_a_crafted_16_bit_overflow(batch):
    with pytest.raises(IntegerOverflowError) as info:
        run_profile(batch, "generic", acc_bits=16, overflow="raise")
    assert info.value.op_name == "encoder.layer.0.attention.self.query"
    assert "encoder.layer.0.attention.self.query" in str(info.value)


def test_wrapping_16_bit_accumulators_report_exact_and_produced_values(batch, exact_run):
    model, out = run_profile(batch, "generic", acc_bits=16, overflow="wrap")
    first = out.overflow_events[0]
    assert isinstance(first, OverflowRecord)
    assert (first.op, first.part, first.action) == ("encoder.layer.0.attention.self.query", "acc", "wrapped")
    # independent recomputation of the accumulator (without bias) at the reported index
    h = exact_run[1].trace["embeddings.output_activation"].astype(np.int64)
    w = model.compiled.layers[0].query.w.astype(np.int64)
    acc = (h @ w.T).ravel()[first.first_index]
    assert first.exact == acc and abs(acc) > 2**15 - 1
    assert first.produced == wrap(int(acc), 16)


def test_events_are_named_without_a_trace(batch):
    ids, mask = batch
    out = IBertModel.from_pretrained(datapath=make_datapath("generic", acc_bits=16))(ids, attention_mask=mask)
    assert out.trace is None and out.overflow_events
    assert all(e.op.startswith("encoder.layer.") for e in out.overflow_events)


def test_int32_accumulators_never_overflow_on_ibert_gemms(batch):
    for name in ("arm", "tensor-core"):
        assert run_profile(batch, name)[1].overflow_events == []


# ---------------------------------------------------------------------------------------
# end to end


def test_exact_profile_equals_the_exact_datapath(batch, exact_run):
    for kw in (dict(acc_bits=64, overflow="exact"), dict()):
        _, out = run_profile(batch, "generic", **kw)
        ref = exact_run[1]
        assert out.trace.keys() == ref.trace.keys()
        for name in ref.trace:
            np.testing.assert_array_equal(out.trace[name], ref.trace[name], err_msg=name)
        np.testing.assert_array_equal(out.last_hidden_state, ref.last_hidden_state)
        assert out.overflow_events == []


@pytest.mark.parametrize("name, kw", [("arm", {}), ("tensor-core", {}), ("tensor-core", dict(overflow="wrap"))])
def test_each_profile_runs_end_to_end(batch, exact_run, name, kw):
    _, out = run_profile(batch, name, **kw)
    ref = exact_run[1]
    assert out.last_hidden_state.shape == ref.last_hidden_state.shape
    assert np.isfinite(out.last_hidden_state).all()
    # before any rounding can differ (ties, GELU variant) the integers are the exact ones
    for op in ("embeddings.output_activation", "encoder.layer.0.attention.self.query"):
        np.testing.assert_array_equal(out.trace[op], ref.trace[op])
    # the first requantizations after exact GEMMs differ only by their rounding (at most 1)
    for op in ("attention.self.query_activation", "attention.self.key_activation", "attention.self.value_activation"):
        key = "encoder.layer.0." + op
        assert np.abs(out.trace[key].astype(int) - ref.trace[key].astype(int)).max() <= 1, key


def test_arm_double_rounding_differs_from_ibert_only_next_to_ties(exact_run):
    # SQRDMULH rounds z*m/2^31 to an integer, SRSHL rounds again at 2^-right: the result can
    # differ from one RNE only where the exact value is within 2^-(right+1) of a half-integer
    model, ref = exact_run
    z = ref.trace["encoder.layer.0.attention.self.query"].astype(np.int64)
    dy = model.compiled.layers[0].query_activation.dy
    arm = HardwareDatapath(requant="arm").dyadic_round(z, dy)
    ibert = HardwareDatapath(requant="ibert").dyadic_round(z, dy)
    differ = np.argwhere(arm != ibert)
    assert 0 < len(differ) < 0.05 * z.size and np.abs(arm - ibert).max() == 1
    for idx in differ[:100]:
        c = idx[-1]
        m, e = int(dy.m[c]), int(dy.e[c])
        exact = Fraction(int(z[tuple(idx)]) * m, 2**e)
        right = e - 31 + (abs(m) == 2**31)
        assert abs(exact - floor(exact) - Fraction(1, 2)) <= Fraction(1, 2 ** (right + 1))


def test_cli_run_prints_overflow_events(capsys):
    args = ["run", "Hello world", "--datapath", "generic", "--profile-option", "acc_bits=16", "--layers", "0"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "overflow events (" in text and "encoder.layer.0.attention.self.query [acc]: wrapped in 16 bits" in text
    assert cli_main(["run", "Hello", "--datapath", "arm"]) == 0
    assert "overflow events: none" in capsys.readouterr().out
    assert cli_main(["run", "Hello", "--datapath", "generic", "--profile-option", "acc_bits=16",
                     "--profile-option", "overflow=raise"]) == 3
    assert "encoder.layer.0.attention.self.query" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# variants


def test_exp_left_shift_is_exact_in_64_bits_and_wraps_in_32(batch, exact_run):
    _, wide = run_profile(batch, "generic", exp="left-shift", acc_bits=64)
    key = "encoder.layer.0.attention.self.softmax.act"
    np.testing.assert_array_equal(wide.trace[key], exact_run[1].trace[key])
    _, narrow = run_profile(batch, "generic", exp="left-shift", acc_bits=32)
    ev = next(e for e in narrow.overflow_events if e.op == key)
    assert ev.part == "exp_int = poly*2^(30-q)" and ev.produced == wrap(ev.exact, 32) and ev.exact >= 2**31
    with pytest.raises(IntegerOverflowError, match="softmax.act"):
        run_profile(batch, "generic", exp="left-shift", overflow="raise")


def test_exp_shift_right_floors_before_requantizing():
    rng = np.random.default_rng(3)
    poly = rng.integers(0, 2**20, size=200)
    q = rng.integers(0, 31, size=200)
    m, e = 1991691391, 61
    got = HardwareDatapath(exp="shift-right").exp_requantize(poly, q, None, None, Dyadic(np.array(m), np.array(e)), 16)
    want = [min(round(Fraction((int(p) >> int(k)) * m, 2 ** (e - 30))), 32767) for p, k in zip(poly, q)]
    assert got.tolist() == want


def test_gelu_int32_variant_keeps_every_value_in_int32(exact_run):
    model, ref = exact_run
    p = model.compiled.layers[0].gelu
    k, b2, c2, one2 = gelu_int32_constants(p)
    assert np.all((1 << 16) * (2 * np.abs(one2) + 2) < 2**31)
    x = QTensor(ref.trace["encoder.layer.0.intermediate.dense"].astype(np.int64), p.out_scale)
    dp = HardwareDatapath(gelu="int32")
    dp.begin_run()
    out = dp.replacement_kernel("int_gelu")(dp, x, p)
    assert isinstance(out, ShiftedQTensor) and np.array_equal(out.exponent, 3 * k)
    assert np.abs(out.data).max() < 2**31
    assert dp.end_run() == []
    # the value it stands for is close to the exact IntGELU (relative to the output scale)
    exact = ref.trace["encoder.layer.0.intermediate.intermediate_act_fn"].astype(np.float64)
    approx = out.data.astype(np.float64) * 2.0 ** out.exponent
    assert np.abs(approx - exact).max() <= 1e-3 * np.abs(exact).max()


def test_layernorm_variance_variants():
    y = np.full((1, 4), 40000, dtype=np.int64)  # var = 4 * 1.6e9 = 6.4e9 > 2^32
    var = 4 * 40000**2
    for ln_var, want, action in (("int64", var, None), ("uint32", var % 2**32, "wrapped"),
                                 ("int32-sat", 2**31 - 1, "saturated")):
        dp = HardwareDatapath(ln_var=ln_var)
        dp.begin_run()
        assert int(dp.sum_squares(y)[0, 0]) == want
        events = dp.end_run()
        assert [e.action for e in events] == ([] if action is None else [action])


def test_float32_sqrt_documented_vectors():
    v = np.array([2**32 - 1, 4294836224, 2**24])
    assert HardwareDatapath(sqrt="float32").floor_sqrt(v).tolist() == [65536, 65535, 4096]
    assert HardwareDatapath(sqrt="isqrt").floor_sqrt(v).tolist() == [65535, 65534, 4096]


def test_u8_probabilities_clamp_256_and_record_it():
    p = QTensor(np.array([[[[256, 0], [128, 128]]]]), np.array([1 / 256], dtype=np.float32))
    v = QTensor(np.array([[[1], [1]]]), np.array([1.0], dtype=np.float32))
    dp = HardwareDatapath(probs="u8-sat")
    dp.begin_run()
    ctx = dp.attention_context(p, v, 1, np.array([1.0], dtype=np.float32))
    assert ctx.data.ravel().tolist() == [255, 256]
    (ev,) = dp.end_run()
    assert (ev.part, ev.action, ev.exact, ev.produced) == ("probs -> u8", "saturated", 256, 255)


def test_division_by_zero_gives_zero_and_is_recorded():
    dp = HardwareDatapath()
    dp.begin_run()
    assert dp.floor_div_into(2**32, np.array([[0], [7]])).ravel().tolist() == [0, 2**32 // 7]
    (ev,) = dp.end_run()
    assert ev.family == "softmax" and ev.count == 1
    with pytest.raises(ZeroDivisionError):
        ExactDatapath().floor_div_into(2**32, np.array([[0]]))


def test_named_profiles_use_only_int32_realizable_variants():
    for name in ("arm", "tensor-core"):
        params = PROFILES[name]
        assert params["gelu"] == "int32" and params["ln_var"] == "uint32" and params["requant"] != "ibert"
