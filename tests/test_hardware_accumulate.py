"""Specification tests for ibert_ref.hardware.accumulate.int_matmul (the GEMM accumulator model)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ibert_ref.hardware import (
    AccumulatorResult,
    IntegerOverflowError,
    OverflowEvent,
    int_matmul,
    sdot,
)

MIN32, MAX32 = -(2**31), 2**31 - 1
PROPERTY = settings(max_examples=200, deadline=None)


def exact_matmul_python(a, b, initial=0) -> np.ndarray:
    """initial + a @ b with Python ints (object arrays): the unbounded reference."""
    a_obj, b_obj = np.asarray(a).astype(object), np.asarray(b).astype(object)
    return np.asarray(initial, dtype=object) + a_obj @ b_obj


def int8_case(seed: int, batch: int, m: int, k: int, n: int, acc_bits: int):
    """Random int8 operands, half of `a` at the extremes -128/127, and an initial accumulator
    that is near one end of the acc_bits range half of the time, so that overflows happen."""
    rng = np.random.default_rng(seed)
    extremes_i8 = rng.choice(np.array([-128, 127], dtype=np.int8), size=(batch, m, k))
    uniform_i8 = rng.integers(-128, 128, size=(batch, m, k), dtype=np.int8)
    a_i8 = np.where(rng.random((batch, m, k)) < 0.5, extremes_i8, uniform_i8)
    b_i8 = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    shape = (batch, m, n)
    uniform = rng.integers(lo, hi, size=shape, endpoint=True)
    edge = np.where(rng.random(shape) < 0.5, hi, lo)
    near_edge = edge - np.sign(edge) * rng.integers(0, min(2**20, hi), size=shape)
    initial = np.where(rng.random(shape) < 0.5, uniform, near_edge)
    return a_i8, b_i8, initial


cases = st.tuples(
    st.integers(0, 2**32 - 1),  # seed
    st.integers(1, 2),  # batch
    st.integers(1, 4),  # M
    st.integers(0, 70),  # K
    st.integers(1, 4),  # N
    st.sampled_from([16, 20, 24, 32]),  # acc_bits
    st.one_of(st.none(), st.integers(1, 40)),  # k_step
)


def wrap_python(x: int, bits: int) -> int:
    x &= (1 << bits) - 1
    return x - (1 << bits) if x >= 1 << (bits - 1) else x


# ---------------------------------------------------------------------------------------------
# Properties of the four policies
# ---------------------------------------------------------------------------------------------


@PROPERTY
@given(cases)
def test_wrap_equals_exact_mod_2_to_acc_bits(case):
    seed, batch, m, k, n, acc_bits, k_step = case
    a, b, initial = int8_case(seed, batch, m, k, n, acc_bits)
    result = int_matmul(a, b, acc_bits=acc_bits, overflow="wrap", k_step=k_step, initial=initial)
    exact = exact_matmul_python(a, b, initial)
    assert result.exact_i64.tolist() == exact.tolist()
    wrapped = np.vectorize(lambda v: wrap_python(v, acc_bits), otypes=[object])(exact)
    assert result.values.tolist() == wrapped.tolist()


@PROPERTY
@given(cases)
def test_saturate_equals_exact_when_no_event_is_reported(case):
    seed, batch, m, k, n, acc_bits, k_step = case
    a, b, initial = int8_case(seed, batch, m, k, n, acc_bits)
    result = int_matmul(a, b, acc_bits=acc_bits, overflow="saturate", k_step=k_step,
                        initial=initial)
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    assert int(result.values.min(initial=lo)) >= lo and int(result.values.max(initial=hi)) <= hi
    if not result.events:
        assert result.values.tolist() == exact_matmul_python(a, b, initial).tolist()


@PROPERTY
@given(cases)
def test_saturate_with_one_chunk_clamps_the_exact_sum(case):
    seed, batch, m, k, n, acc_bits, _ = case
    a, b, initial = int8_case(seed, batch, m, k, n, acc_bits)
    result = int_matmul(a, b, acc_bits=acc_bits, overflow="saturate", k_step=None, initial=initial)
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    assert result.values.tolist() == np.clip(exact_matmul_python(a, b, initial), lo, hi).tolist()


@PROPERTY
@given(cases)
def test_wrap_is_independent_of_chunking_and_order(case):
    seed, batch, m, k, n, acc_bits, k_step = case
    a, b, initial = int8_case(seed, batch, m, k, n, acc_bits)
    reference = int_matmul(a, b, acc_bits=acc_bits, overflow="wrap", initial=initial).values
    order = np.random.default_rng(seed).permutation(k)
    permuted = int_matmul(a[..., order], b[order], acc_bits=acc_bits, overflow="wrap",
                          k_step=k_step, initial=initial).values
    assert np.array_equal(permuted, reference)


@PROPERTY
@given(cases)
def test_exact_mode_returns_the_unbounded_sum_and_flags_would_be_overflows(case):
    seed, batch, m, k, n, acc_bits, k_step = case
    a, b, initial = int8_case(seed, batch, m, k, n, acc_bits)
    result = int_matmul(a, b, acc_bits=acc_bits, overflow="exact", k_step=k_step, initial=initial)
    exact = exact_matmul_python(a, b, initial)
    assert result.values.dtype == np.int64
    assert result.values.tolist() == exact.tolist()
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    final_out_of_range = bool(((exact < lo) | (exact > hi)).any())
    if final_out_of_range:
        assert result.events and result.events[-1].k_stop == k
    for event in result.events:
        assert event.produced == event.exact and not lo <= event.exact <= hi


@PROPERTY
@given(cases)
def test_raise_raises_exactly_when_exact_mode_reports_an_event(case):
    seed, batch, m, k, n, acc_bits, k_step = case
    a, b, initial = int8_case(seed, batch, m, k, n, acc_bits)
    kwargs = dict(acc_bits=acc_bits, k_step=k_step, initial=initial, op_name="probe")
    exact_result = int_matmul(a, b, overflow="exact", **kwargs)
    if exact_result.events:
        with pytest.raises(IntegerOverflowError) as caught:
            int_matmul(a, b, overflow="raise", **kwargs)
        assert caught.value.event == exact_result.events[0]
    else:
        result = int_matmul(a, b, overflow="raise", **kwargs)
        assert result.values.tolist() == exact_result.values.tolist()


# ---------------------------------------------------------------------------------------------
# Saturation is order-dependent (hardware-semantics.md §7.1 and the GPU probe §2.6)
# ---------------------------------------------------------------------------------------------


def test_saturating_chunk_order_changes_the_result():
    """C = 2^31 - 100 with k-chunk sums +200 then -200 (docs §7.1)."""
    a = np.array([[20, -20]], dtype=np.int8)
    b = np.array([[10], [10]], dtype=np.int8)  # products +200 (k=0), -200 (k=1)
    c = np.array([[2**31 - 100]])
    forward = int_matmul(a, b, overflow="saturate", k_step=1, initial=c)
    reverse = int_matmul(a[:, ::-1], b[::-1], overflow="saturate", k_step=1, initial=c)
    one_chunk = int_matmul(a, b, overflow="saturate", k_step=None, initial=c)
    assert forward.values.item() == 2147483447
    assert reverse.values.item() == 2147483548
    assert one_chunk.values.item() == 2147483548
    for order in (slice(None), slice(None, None, -1)):
        for k_step in (1, None):
            wrapped = int_matmul(a[:, order], b[order], overflow="wrap", k_step=k_step, initial=c)
            assert wrapped.values.item() == 2147483548
    assert len(forward.events) == 1 and not reverse.events and not one_chunk.events


def test_mma_m16n8k32_all_minus_128_wraps_or_saturates():
    """GPU probe T2/T3: one k32 chunk of (-128)*(-128) onto C = MAX - 1000."""
    a = np.full((16, 32), -128, dtype=np.int8)
    b = np.full((32, 8), -128, dtype=np.int8)
    c = np.full((16, 8), MAX32 - 1000)
    wrapped = int_matmul(a, b, overflow="wrap", k_step=32, initial=c)
    saturated = int_matmul(a, b, overflow="saturate", k_step=32, initial=c)
    assert (wrapped.values == -2146960361).all()
    assert (saturated.values == MAX32).all()
    assert wrapped.events[0].count == saturated.events[0].count == 16 * 8


def test_k_step_changes_a_saturating_result():
    # +127*127 products for k < 4, then -128*127 for k >= 4, starting close to MAX.
    a = np.array([[127] * 4 + [-128] * 4], dtype=np.int8)
    b = np.full((8, 1), 127, dtype=np.int8)
    c = np.array([[MAX32 - 10000]])
    per_4 = int_matmul(a, b, overflow="saturate", k_step=4, initial=c).values.item()
    per_8 = int_matmul(a, b, overflow="saturate", k_step=8, initial=c).values.item()
    exact = MAX32 - 10000 + 4 * 127 * 127 - 4 * 128 * 127
    assert per_8 == exact
    assert per_4 == MAX32 - 4 * 128 * 127


# ---------------------------------------------------------------------------------------------
# Events, raise, 24-bit accumulators
# ---------------------------------------------------------------------------------------------


def test_overflow_event_reports_count_first_index_exact_and_produced_values():
    a = np.array([[1], [2], [3]], dtype=np.int8)  # M = 3, K = 1
    b = np.array([[100, -100]], dtype=np.int8)  # N = 2
    initial = np.array([[0, 0], [MAX32 - 150, 0], [MAX32 - 150, MIN32 + 50]])
    result = int_matmul(a, b, overflow="wrap", initial=initial, op_name="fc")
    (event,) = result.events
    assert isinstance(event, OverflowEvent)
    assert (event.op_name, event.acc_bits, event.chunk_index) == ("fc", 32, 0)
    assert (event.k_start, event.k_stop) == (0, 1)
    assert event.count == 3  # (1, 0): MAX-150+200; (2, 0): MAX-150+300; (2, 1): MIN+50-300
    assert event.first_index == 2  # flat index of element (1, 0) in the 3x2 output
    assert event.exact == MAX32 - 150 + 200
    assert event.produced == MAX32 - 150 + 200 - 2**32
    assert result.overflowed


def test_raise_names_the_op_and_is_an_arithmetic_error():
    a = np.full((1, 320), 127, dtype=np.int8)
    b = np.ones((320, 1), dtype=np.int8)  # running sums 8128, 16256, ..., 40640 > 2^15 - 1
    with pytest.raises(IntegerOverflowError, match=r"encoder\.layer\.3\.output\.dense") as caught:
        int_matmul(a, b, acc_bits=16, overflow="raise", k_step=64,
                   op_name="encoder.layer.3.output.dense")
    assert isinstance(caught.value, ArithmeticError)
    assert caught.value.op_name == "encoder.layer.3.output.dense"
    event = caught.value.event
    assert event.chunk_index == 4 and (event.k_start, event.k_stop) == (256, 320)
    assert event.exact == event.produced == 320 * 127


def test_24_bit_accumulator_wraps_and_saturates_at_2_to_23():
    a = np.array([[1, 1]], dtype=np.int8)
    b = np.array([[1], [1]], dtype=np.int8)
    top = np.array([[2**23 - 2]])
    wrapped = int_matmul(a, b, acc_bits=24, overflow="wrap", k_step=1, initial=top)
    saturated = int_matmul(a, b, acc_bits=24, overflow="saturate", k_step=1, initial=top)
    assert wrapped.values.item() == -(2**23) and wrapped.values.dtype == np.int32
    assert saturated.values.item() == 2**23 - 1
    assert [e.chunk_index for e in wrapped.events] == [1] and wrapped.events[0].exact == 2**23
    assert [e.chunk_index for e in saturated.events] == [1]
    assert saturated.events[0].produced == 2**23 - 1
    with pytest.raises(IntegerOverflowError, match="int24"):
        int_matmul(a, b, acc_bits=24, overflow="raise", initial=top, op_name="acc24")


def test_bert_sized_int8_gemm_never_overflows_int32():
    rng = np.random.default_rng(0)
    x_i8 = rng.integers(-128, 128, size=(2, 16, 3072), dtype=np.int8)
    w_i8 = np.full((3072, 8), -128, dtype=np.int8)  # worst case: every product is 2^14 in size
    result = int_matmul(x_i8, w_i8, overflow="raise", k_step=32, op_name="fc2")
    assert not result.overflowed and result.values.dtype == np.int32
    assert result.values.tolist() == exact_matmul_python(x_i8, w_i8).tolist()


# ---------------------------------------------------------------------------------------------
# Shapes, operand kinds, the exactness guard, agreement with SDOT
# ---------------------------------------------------------------------------------------------


def test_batched_b_broadcasts_like_matmul():
    rng = np.random.default_rng(1)
    q_i8 = rng.integers(-128, 128, size=(2, 3, 5, 8), dtype=np.int8)
    k_t_i8 = rng.integers(-128, 128, size=(2, 3, 8, 5), dtype=np.int8)
    result = int_matmul(q_i8, k_t_i8, k_step=3)
    assert result.values.shape == (2, 3, 5, 5)
    assert result.values.tolist() == exact_matmul_python(q_i8, k_t_i8).tolist()


def test_wide_operands_use_exact_int64_when_float64_would_round():
    # int32 x int16 products: K * max|a| * max|b| > 2^53, so the int64 path must be taken.
    a = np.array([[MAX32, MIN32, 12345]], dtype=np.int64)
    b = np.array([[32767], [-32768], [32767]], dtype=np.int64)
    result = int_matmul(a, b, acc_bits=63, overflow="exact")
    assert result.values.tolist() == exact_matmul_python(a, b).tolist()


def test_sums_that_could_exceed_int64_are_refused():
    a = np.array([[2**40, 2**40]], dtype=np.int64)
    b = np.array([[2**22], [2**22]], dtype=np.int64)
    with pytest.raises(ValueError, match="int64"):
        int_matmul(a, b, acc_bits=32, overflow="exact")


def test_k_step_4_wrap_equals_a_chain_of_sdot_instructions():
    rng = np.random.default_rng(2)
    a_i8 = rng.integers(-128, 128, size=(3, 16), dtype=np.int8)
    b_i8 = rng.integers(-128, 128, size=(16, 2), dtype=np.int8)
    acc_i32 = np.full((3, 2), MAX32 - 70000, dtype=np.int32)
    chained = acc_i32
    for k0 in range(0, 16, 4):
        chained = sdot(chained, a_i8[:, None, k0:k0 + 4], b_i8[k0:k0 + 4].T[None, :, :])
    result = int_matmul(a_i8, b_i8, overflow="wrap", k_step=4, initial=acc_i32)
    assert np.array_equal(result.values, chained)


def test_empty_k_returns_the_initial_accumulator():
    result = int_matmul(np.zeros((2, 0), np.int8), np.zeros((0, 3), np.int8), initial=7)
    assert isinstance(result, AccumulatorResult)
    assert result.values.tolist() == [[7, 7, 7], [7, 7, 7]] and not result.events


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(overflow="clamp"),
        dict(acc_bits=1),
        dict(acc_bits=64),
        dict(k_step=0),
        dict(initial=2**31),
    ],
)
def test_invalid_options_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        int_matmul(np.ones((2, 2), np.int8), np.ones((2, 2), np.int8), **kwargs)


def test_mismatched_k_and_float_operands_are_rejected():
    with pytest.raises(ValueError, match="my_op"):
        int_matmul(np.ones((2, 3), np.int8), np.ones((2, 2), np.int8), op_name="my_op")
    with pytest.raises(TypeError):
        int_matmul(np.ones((2, 2)), np.ones((2, 2), np.int8))
