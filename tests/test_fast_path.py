"""The NumPy backend computes the same integers as the reference exact datapath, op by op.

``FastExactDatapath`` (``make_datapath("exact")``, :mod:`ibert_ref.backends.fast_numpy`)
swaps in cheaper routes (:mod:`ibert_ref.backends.fast_intops`) — float BLAS GEMMs while
every partial sum is an exactly representable integer, single-int64-product requantization,
a square root that skips steps no input needs, two kernels replaced whole. Each is checked
here against the plain reference it replaces (``intops.mul_shift_round``,
``intops.matmul_exact_reference`` = int64 matmul, ``intops.isqrt_floor`` / ``math.isqrt``,
the kernels of ``ibert_ref.kernels`` on ``ExactDatapath``) on random and corner-case inputs,
per tier/branch, then per datapath method and kernel, then on every traced op of a whole model.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ibert_ref import intops
from ibert_ref.backends import fast_intops
from ibert_ref.backends import fast_numpy
from ibert_ref.backends.fast_numpy import FastExactDatapath
from ibert_ref.dataflow import kernel as kernel_for
from ibert_ref.datapath import ExactDatapath, QTensor, make_datapath
from ibert_ref.model import IBertModel
from ibert_ref.quant import Dyadic

ROUNDINGS = intops.ROUNDINGS
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_msr(z, m, e, rounding):
    """Python big-integer definition of round(z * m / 2^e), for the scalar cases."""
    num, den = z * m, 1 << e
    q, r = divmod(num, den)  # floor quotient, 0 <= r < den
    if rounding == "floor":
        return q
    twice = 2 * r
    if twice < den:
        return q
    if twice > den:
        return q + 1
    return {"half_up": q + 1, "half_even": q + (q & 1), "half_away": q + (1 if num > 0 else 0)}[rounding]


def assert_same(fast, ref):
    fast, ref = np.asarray(fast), np.asarray(ref)
    assert fast.shape == ref.shape
    assert fast.dtype == np.int64 and ref.dtype == np.int64
    np.testing.assert_array_equal(fast, ref)


# ---------------------------------------------------------------------------------------
# mul_shift_round: each tier on its own domain, then the dispatcher everywhere.
m_st = st.integers(-(1 << 31), 1 << 31)


@FAST
@given(z=st.integers(-(1 << 31), 1 << 31), m=m_st, e=st.integers(1, 62), rounding=st.sampled_from(ROUNDINGS))
def test_tier1_single_product_matches_big_integer_rounding(z, m, e, rounding):
    out = fast_intops._rounding_bias_add_shift(np.array([z], dtype=np.int64) * np.int64(m), np.int64(e), rounding)
    assert int(out[0]) == reference_msr(z, m, e, rounding)


@FAST
@given(z=st.integers(-(1 << 46) + 1, (1 << 46) - 1), m=m_st, e=st.integers(17, 78), rounding=st.sampled_from(ROUNDINGS))
def test_tier2_split_multiplier_matches_big_integer_rounding(z, m, e, rounding):
    out = fast_intops._mul_shift_round_split(np.array([z], dtype=np.int64), np.int64(m), np.int64(e), rounding)
    assert int(out[0]) == reference_msr(z, m, e, rounding)


@FAST
@given(
    z=st.integers(-(1 << 53), 1 << 53),
    m=m_st,
    e=st.integers(0, 120),
)
def test_tier_f_float64_with_repair_matches_big_integer_rounding(z, m, e):
    """Tier F (float64 product, exact repair of near-ties) wherever its range condition holds."""
    product = abs(z) * abs(m)
    if product >= (1 << 50) << e:
        return
    eps = float(product) * 2.0 ** -(e + 52)
    out = fast_intops._mul_shift_round_f64_repaired(np.array([z, -z, 0], dtype=np.int64), np.int64(m), np.int64(e), eps)
    assert [int(v) for v in out] == [reference_msr(z, m, e, "half_even"), reference_msr(-z, m, e, "half_even"), 0]


def test_tier_f_repairs_what_float64_gets_wrong():
    """z * m / 2^e = N + 1/2 + 2^-40 with N even: float64 drops the 2^-40 and rounds to N; the
    exact answer is N + 1. The near-tie test must catch every such element."""
    e, m = 40, (1 << 30) + 3  # odd multiplier
    inv = pow(m, -1, 1 << e)
    z0 = ((1 << (e - 1)) + 1) * inv % (1 << e)  # z0 * m = 2^(e-1) + 1 (mod 2^e)
    z = np.array([z0 + k * (1 << e) for k in range(64)], dtype=np.int64)
    z = z[np.abs(z) < (1 << 53)]
    ref = intops.mul_shift_round(z, np.int64(m), np.int64(e))
    naive = np.rint(z.astype(np.float64) * np.ldexp(float(m), -e)).astype(np.int64)
    assert np.any(naive != ref)  # the float64 product alone is wrong here
    assert_same(fast_intops.mul_shift_round_fast(z, np.array([m]), np.array([e])), ref)


@FAST
@given(x=st.one_of(st.floats(-(2.0**51) + 1, 2.0**51 - 1), st.integers(-(1 << 50), 1 << 50).map(lambda n: n + 0.5)))
def test_rint_f64_to_i64_is_round_half_even(x):
    arr = np.array([x, -x, 0.5, 1.5, -2.5], dtype=np.float64)
    expect = np.rint(arr).astype(np.int64)
    assert_same(fast_intops.rint_f64_to_i64(arr.copy()), expect)


@st.composite
def tie_cases(draw):
    """z, m, e with z * m exactly halfway between two multiples of 2^e (the rounding rule decides).

    With m = s * 2^t (s odd) and z = (2k + 1) * 2^(e-1-t): z * m = (2k + 1) * s * 2^(e-1), an odd
    multiple of 2^(e-1).
    """
    m = draw(st.sampled_from([1 << 30, 3 << 29, (1 << 31) - 1, 1 << 31, -(1 << 30), -(3 << 28), -(1 << 31)]))
    t = (abs(m) & -abs(m)).bit_length() - 1
    e = t + 1 + draw(st.integers(0, 40))
    k = draw(st.integers(-(1 << 12), 1 << 12))
    z = (2 * k + 1) << (e - 1 - t)
    assert (z * m) % (1 << e) == 1 << (e - 1)
    return z, m, e


@FAST
@given(case=tie_cases(), rounding=st.sampled_from(ROUNDINGS))
def test_fast_msr_exact_ties(case, rounding):
    z, m, e = case
    if abs(z) >= (1 << 62):
        return
    fast = fast_intops.mul_shift_round_fast(np.array([z]), np.array([m]), np.array([e]), rounding)
    ref = intops.mul_shift_round(np.array([z]), np.array([m]), np.array([e]), rounding)
    assert_same(fast, ref)
    assert int(fast[0]) == reference_msr(z, m, e, rounding) or abs(reference_msr(z, m, e, rounding)) > (1 << 62)


@FAST
@given(
    bits=st.sampled_from([8, 16, 31, 32, 40, 46, 47, 61]),
    e=st.integers(0, 100),
    signed_m=st.booleans(),
    rounding=st.sampled_from(ROUNDINGS),
    seed=st.integers(0, 2**32 - 1),
)
def test_fast_msr_equals_reference_on_arrays(bits, e, signed_m, rounding, seed):
    """Per-channel m/e (C,) against (T, C) data, every z width, every shift: all tiers and the fallback."""
    rng = np.random.default_rng(seed)
    bound = 1 << bits
    z = rng.integers(-bound + 1, bound, size=(6, 5), dtype=np.int64)
    z[0, :2] = [bound - 1, -bound + 1]
    m = rng.integers(1 << 30, (1 << 31) + 1, size=5, dtype=np.int64)
    if signed_m:
        m[::2] *= -1
    e_c = np.clip(e + rng.integers(-3, 4, size=5), 0, None).astype(np.int64)
    assert_same(fast_intops.mul_shift_round_fast(z, m, e_c, rounding), intops.mul_shift_round(z, m, e_c, rounding))


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_fast_msr_blocked_schedule_mixes_tiers_and_writes_in_place(rounding):
    """An array past ``2 * BLOCK_ELEMS`` runs block by block, each block written in place
    into the result; rows of different widths make neighbouring blocks take different tiers
    (float64 tier 0, tier F with repairs, int64 tiers, limbs). Same integers as the reference."""
    rng = np.random.default_rng(7)
    cols = 512
    rows_per_block = fast_intops.BLOCK_ELEMS // cols
    widths = [8, 40, 20, 46, 61, 24]  # one width per block
    z = np.concatenate(
        [rng.integers(-(1 << w), 1 << w, size=(rows_per_block, cols), dtype=np.int64) for w in widths]
    )
    z[:rows_per_block:7] = (rng.integers(-(1 << 20), 1 << 20, size=cols) * 2 + 1) << 2  # ties at e = 3
    m = rng.integers(1 << 30, (1 << 31) + 1, size=cols, dtype=np.int64)
    m[::3] = 1 << 29
    m[1::3] *= -1
    for e in (3, 33, 45):
        e_c = np.full(cols, e, dtype=np.int64)
        e_c[::5] += 1
        assert_same(fast_intops.mul_shift_round_fast(z, m, e_c, rounding), intops.mul_shift_round(z, m, e_c, rounding))


def test_fast_msr_per_element_shift_like_softmax():
    """exp_requantize's shape: z (B, nh, T, T) up to ~2^40, one m, one shift per element."""
    rng = np.random.default_rng(1)
    z = rng.integers(0, 1 << 40, size=(2, 3, 7, 7), dtype=np.int64)
    m = np.array([1_500_000_000], dtype=np.int64)
    e = rng.integers(20, 75, size=z.shape, dtype=np.int64)
    for rounding in ROUNDINGS:
        assert_same(fast_intops.mul_shift_round_fast(z, m, e, rounding), intops.mul_shift_round(z, m, e, rounding))


@pytest.mark.parametrize(
    "z, m, e, exc",
    [
        ([1], [1 << 30], [-1], ValueError),
        ([1], [(1 << 31) + 1], [3], ValueError),
        ([1 << 62], [1 << 30], [3], OverflowError),
    ],
)
def test_fast_msr_rejects_what_the_reference_rejects(z, m, e, exc):
    for f in (intops.mul_shift_round, fast_intops.mul_shift_round_fast):
        with pytest.raises(exc):
            f(np.array(z), np.array(m), np.array(e))


# ---------------------------------------------------------------------------------------
# isqrt
@FAST
@given(n=st.one_of(st.integers(0, (1 << 62) - 1), st.integers(0, 1 << 20), st.integers(1, 1 << 31).map(lambda r: r * r - 1)))
def test_isqrt_fast_equals_math_isqrt(n):
    arr = np.array([n, 0, 1, n // 3], dtype=np.int64)
    fast = fast_intops.isqrt_floor_fast(arr)
    assert_same(fast, intops.isqrt_floor(arr))
    assert [int(v) for v in fast] == [math.isqrt(int(v)) for v in arr]


def test_isqrt_fast_on_squares_and_neighbours():
    r = np.concatenate([np.arange(0, 5000), np.random.default_rng(0).integers(1, 1 << 31, size=5000)])
    r = r[r * r < (1 << 62)]
    n = np.concatenate([r * r, r * r - 1, r * r + 1, r * r + 2 * r])  # k^2 - 1, k^2, k^2 + 1, (k + 1)^2 - 1
    n = n[(n >= 0) & (n < (1 << 62))].astype(np.int64)
    fast = fast_intops.isqrt_floor_fast(n)
    assert [int(v) for v in fast] == [math.isqrt(int(v)) for v in n]
    assert_same(fast, intops.isqrt_floor(n))


def test_isqrt_fast_all_zero_and_errors():
    assert_same(fast_intops.isqrt_floor_fast(np.zeros((2, 3), dtype=np.int64)), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError):
        fast_intops.isqrt_floor_fast(np.array([-1]))
    with pytest.raises(OverflowError):
        fast_intops.isqrt_floor_fast(np.array([1 << 62]))


# ---------------------------------------------------------------------------------------
# matmul_exact: every branch against the int64 definition.
@pytest.mark.parametrize(
    "k, a_bits, b_bits, branch",
    [
        (768, 8, 8, "one float32 GEMM"),
        (1024, 8, 8, "one float32 GEMM at the 2^24 edge"),
        (1025, 8, 8, "float32 K-chunks"),
        (3072, 8, 8, "float32 K-chunks"),
        (300, 16, 16, "float64 GEMM"),
        (50, 40, 16, "int64 fallback"),
    ],
)
def test_matmul_exact_equals_int64_matmul(k, a_bits, b_bits, branch):
    rng = np.random.default_rng(k + a_bits)
    hi = 1 << (a_bits - 1)
    a = rng.integers(-hi, hi, size=(2, 9, k), dtype=np.int64)
    a[0, 0, :] = -hi  # extreme rows: every partial sum as large as the bound allows
    if b_bits == 8:  # int8 weights, transposed view (as linear() passes them)
        b = rng.integers(-128, 128, size=(11, k)).astype(np.int8).T
        b[:, 0] = -128
    else:
        b = rng.integers(-(1 << (b_bits - 1)), 1 << (b_bits - 1), size=(k, 11), dtype=np.int64)
    assert_same(fast_intops.matmul_exact(a, b), intops.matmul_exact_reference(a, b))


@pytest.mark.parametrize("k, add_bits", [(768, 31), (3072, 31), (300, 52), (768, 62)])
def test_matmul_exact_with_bias_equals_int64(k, add_bits):
    """The bias is added in float64 only while the sum stays below 2^53, else in int64."""
    rng = np.random.default_rng(k + add_bits)
    a = rng.integers(-128, 128, size=(3, k), dtype=np.int64)
    b = rng.integers(-128, 128, size=(5, k)).astype(np.int8).T
    bias = rng.integers(-(1 << add_bits), 1 << add_bits, size=5, dtype=np.int64)
    bias[0] = (1 << add_bits) - 1
    assert_same(fast_intops.matmul_exact(a, b, add_int=bias), intops.matmul_exact_reference(a, b) + bias)


@pytest.mark.parametrize("k, add_bits", [(16, 8), (768, 20), (1000, 18), (1024, 1)])
def test_matmul_exact_small_bias_fused_in_float32(k, add_bits):
    """One float32 GEMM with a bias small enough that ``acc + bias`` is added in float32 and
    cast to int64 in one pass (``K * P + max|bias| <= 2^24``); extreme rows reach the bound."""
    rng = np.random.default_rng(k)
    a = rng.integers(-128, 128, size=(2, 4, k), dtype=np.int64)
    a[0, 0, :], a[0, 1, :] = -128, 127
    b = rng.integers(-128, 128, size=(6, k)).astype(np.int8).T
    b[:, 0] = -128
    limit = (1 << 24) - k * 128 * 128  # the largest |bias| the fused path takes
    bias = rng.integers(-(1 << add_bits), 1 << add_bits, size=6, dtype=np.int64)
    if limit > 0:
        bias[0], bias[1] = limit, -limit  # sum exactly 2^24 at the extreme row
    ref = intops.matmul_exact_reference(a, b) + bias
    assert_same(fast_intops.matmul_exact(a, b, add_int=bias), ref)
    assert_same(fast_intops.matmul_exact(a, b, add_int=bias.reshape(1, 6)), ref)  # broadcast bias
    # an add that widens the result's shape takes the general path, same integers
    wide = rng.integers(-100, 100, size=(3, 1, 1, 6), dtype=np.int64)
    assert_same(fast_intops.matmul_exact(a, b, add_int=wide), intops.matmul_exact_reference(a, b) + wide)
    # a bias one past the float32 limit takes the float64 path, same integers
    if limit > 0:
        over = bias.copy()
        over[0] = limit + 1
        assert_same(fast_intops.matmul_exact(a, b, add_int=over), intops.matmul_exact_reference(a, b) + over)


def test_matmul_chunks_are_needed():
    """One float32 GEMM over K = 3072 int8 terms is *not* exact: the chunking is what makes it so."""
    rng = np.random.default_rng(0)
    a = rng.integers(100, 128, size=(64, 3072), dtype=np.int64)
    b = rng.integers(100, 127, size=(3072, 32)).astype(np.int8)
    exact = intops.matmul_exact_reference(a, b)
    naive = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
    assert np.any(naive != exact)
    assert_same(fast_intops.matmul_exact(a, b), exact)


def test_matmul_exact_overflow_is_an_error():
    a = np.full((1, 4), 1 << 40, dtype=np.int64)
    b = np.full((4, 1), 1 << 30, dtype=np.int64)
    for f in (fast_intops.matmul_exact, intops.matmul_exact_reference):
        with pytest.raises(OverflowError):
            f(a, b)


# ---------------------------------------------------------------------------------------
# FastExactDatapath vs ExactDatapath (the reference), method by method.
FAST_DP, REF_DP = FastExactDatapath(), ExactDatapath()


def test_make_datapath_exact_is_fast_by_default_and_reference_on_request():
    assert type(make_datapath("exact")) is FastExactDatapath and make_datapath("exact").fast is True
    assert type(make_datapath("exact", fast=False)) is ExactDatapath and make_datapath("exact", fast=False).fast is False
    with pytest.raises(ValueError, match="fast=False"):
        make_datapath("exact", backend="compiled", fast=False)
    assert type(ExactDatapath(fast=False)) is ExactDatapath  # the keyword of the old constructor still reads
    with pytest.raises(ValueError, match=r"make_datapath\('exact'\)"):
        ExactDatapath(fast=True)  # the reference has no fast mode: the error names where it went


@FAST
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([16, 64, 1030]), bits=st.sampled_from([8, 12]))
def test_datapath_linear(seed, k, bits):
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(2, 5, k), dtype=np.int64)
    w = FAST_DP.weights(rng.integers(-127, 127, size=(7, k)).astype(np.float32))
    b = FAST_DP.const(rng.integers(-(1 << 31), 1 << 31, size=7).astype(np.float32))
    assert w.dtype == np.int8
    assert_same(FAST_DP.linear(x, w, b), REF_DP.linear(x, w, b))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), masked=st.booleans(), t=st.sampled_from([3, 17, 520]))
def test_datapath_attention(seed, masked, t):
    rng = np.random.default_rng(seed)
    b, nh, hd = 2, 2, 8
    q = QTensor(rng.integers(-128, 128, size=(b, t, nh * hd), dtype=np.int64), np.ones(1, np.float32))
    k = QTensor(rng.integers(-128, 128, size=(b, t, nh * hd), dtype=np.int64), np.ones(1, np.float32))
    mask = np.ones((b, t), dtype=np.int64)
    if masked:
        mask[1, t // 2 :] = 0
    s = np.float32([0.01])
    assert_same(FAST_DP.attention_scores(q, k, nh, mask, s), REF_DP.attention_scores(q, k, nh, mask, s))
    # probabilities in [0, 256] (row sums <= 256 after softmax, but any values are exact here)
    p = QTensor(rng.integers(0, 257, size=(b, nh, t, t), dtype=np.int64), np.float32([1 / 256]))
    fast_ctx = FAST_DP.attention_context(p, k, nh, s)
    assert_same(fast_ctx.data, REF_DP.attention_context(p, k, nh, s).data)


@FAST
@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([9, 22, 32, 40, 50]))
def test_datapath_dyadic_round_and_clamp(seed, bits):
    rng = np.random.default_rng(seed)
    z = rng.integers(-(1 << bits), 1 << bits, size=(3, 6), dtype=np.int64)
    dy = Dyadic(m=rng.integers(-(1 << 31), 1 << 31, size=6, dtype=np.int64), e=rng.integers(0, 70, size=6, dtype=np.int64))
    out_fast, out_ref = FAST_DP.dyadic_round(z, dy), REF_DP.dyadic_round(z, dy)
    assert_same(out_fast, out_ref)
    for bits, narrow in ((8, np.int8), (16, np.int16), (22, np.int32)):
        fast_c, ref_c = FAST_DP.clamp_bits(out_fast, bits), REF_DP.clamp_bits(out_ref, bits)
        assert fast_c.dtype == narrow and ref_c.dtype == np.int64  # the fast path holds the narrow type
        np.testing.assert_array_equal(fast_c, ref_c)
        # and computes from it exactly as from int64
        assert_same(FAST_DP.dyadic_round(fast_c, dy), REF_DP.dyadic_round(ref_c, dy))


@FAST
@given(seed=st.integers(0, 2**32 - 1), z_bits=st.sampled_from([8, 15, 21, 22, 23, 41]), e=st.integers(28, 80))
def test_datapath_exp_requantize_and_sqrt(seed, z_bits, e):
    """exp_requantize: the float64 table path (z * m < 2^53), the integer tiers and the limbs."""
    rng = np.random.default_rng(seed)
    z = rng.integers(-(1 << 10), 1 << z_bits, size=(1, 2, 5, 5), dtype=np.int64)
    q = rng.integers(max(0, 30 - e), 31, size=z.shape, dtype=np.int64)
    dy = Dyadic(m=np.array([rng.integers(1 << 30, (1 << 31) + 1)], dtype=np.int64), e=np.array([e], dtype=np.int64))
    args = (z, q, np.float32([1e-9]), dy, dy, 16)
    assert_same(FAST_DP.exp_requantize(*args), REF_DP.exp_requantize(*args))
    v = rng.integers(0, 1 << int(rng.integers(1, 62)), size=(2, 4, 1), dtype=np.int64)
    assert_same(FAST_DP.floor_sqrt(v), REF_DP.floor_sqrt(v))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    x_bits=st.sampled_from([4, 9, 22, 31]),
    per_channel=st.booleans(),
    rows=st.sampled_from([3, 200]),  # 200 x 1400 > 2 * BLOCK_ELEMS: the blocked schedule
)
def test_int_gelu_blocked_variant_equals_kernel(seed, x_bits, per_channel, rows):
    """IntGELU: the fast path's fused, blocked variant gives the kernel's own integers."""
    from ibert_ref import kernels

    rng = np.random.default_rng(seed)
    c = 1400
    x_i64 = rng.integers(-(1 << x_bits), 1 << x_bits, size=(rows, c), dtype=np.int64)
    x_i64[0, :3] = [0, -(1 << x_bits), (1 << x_bits) - 1]  # zero and both extremes
    n = c if per_channel else 1
    b_int = -rng.integers(1, 1 << 15, size=n, dtype=np.int64)
    p = kernels.GeluParams(
        b_int=b_int,
        c_int=-rng.integers(1, 1 << 30, size=n, dtype=np.int64),
        one=-rng.integers(1, 1 << 28, size=n, dtype=np.int64),
        out_scale=np.float32([-1e-6]),
    )
    x_i64[1, :n] = -b_int  # at the clip point, and one past it
    x_i64[2, :n] = -b_int + 1
    x = QTensor(x_i64, np.float32([1e-3]))
    gelu_fast = kernel_for(FAST_DP, "int_gelu")
    assert gelu_fast is fast_numpy.int_gelu_blocked and kernel_for(REF_DP, "int_gelu") is kernels.int_gelu
    fast, ref = gelu_fast(FAST_DP, x, p), kernels.int_gelu(REF_DP, x, p)
    assert_same(fast.data, ref.data)
    np.testing.assert_array_equal(fast.scale, ref.scale)
    # inputs the variant does not take (int32 data, 2-D constants) go through the kernel itself
    x32 = QTensor(x_i64[:2].astype(np.int32) >> 8, x.scale)
    np.testing.assert_array_equal(gelu_fast(FAST_DP, x32, p).data, kernels.int_gelu(REF_DP, x32, p).data)
    p2 = kernels.GeluParams(np.tile(p.b_int, (rows, 1)), p.c_int, p.one, p.out_scale)
    assert_same(gelu_fast(FAST_DP, x, p2).data, ref.data)


def test_replacement_kernels_step_aside_for_a_width_census():
    from ibert_ref import kernels

    dp = FastExactDatapath()
    assert dp.replacement_kernel("int_gelu") is not None and dp.replacement_kernel("requantize") is not None
    dp.oplog = object()  # any census: the kernel's own code must run (it reports intermediates)
    assert dp.replacement_kernel("int_gelu") is None and kernel_for(dp, "int_gelu") is kernels.int_gelu
    assert dp.replacement_kernel("requantize") is None
    assert FastExactDatapath().replacement_kernel("int_exp") is None
    assert all(ExactDatapath().replacement_kernel(k) is None for k in ("int_gelu", "requantize", "int_exp"))


# ---------------------------------------------------------------------------------------
# Whole model: every traced op, fast vs reference.
def test_bundled_model_fast_equals_reference_on_every_op():
    fast = IBertModel.from_pretrained(datapath=FastExactDatapath())
    ref = IBertModel.from_pretrained(datapath=ExactDatapath())
    rng = np.random.default_rng(0)
    vocab = fast.config["vocab_size"]
    ids = rng.integers(5, vocab, size=(3, 21))
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = fast.config.get("pad_token_id", 1)
    out_fast = fast(ids, attention_mask=mask, return_trace=True)
    out_ref = ref(ids, attention_mask=mask, return_trace=True)
    assert out_fast.trace.keys() == out_ref.trace.keys()
    assert len(out_fast.trace) > 20 * fast.config["num_hidden_layers"]
    for name in out_ref.trace:
        np.testing.assert_array_equal(out_fast.trace[name], out_ref.trace[name], err_msg=name)
    np.testing.assert_array_equal(out_fast.last_hidden_state_int, out_ref.last_hidden_state_int)


@pytest.mark.parametrize("block_elems", [200, 4096])
def test_blocked_schedule_equals_reference_on_every_op(monkeypatch, block_elems):
    """Small blocks force the row-block schedule of the fast routes (:func:`fast_intops.blockwise`
    in requantization, the softmax exponent, the GEMM casts; IntGELU's in-place blocks) on
    every op of a whole model: several blocks per tensor, a last one shorter. The same
    integers, and the same integer types, as the reference at every traced op."""
    blocks = [0]
    real_blockwise = fast_intops.blockwise

    def counting_blockwise(kernel, shape, operands, dtype=np.int64, into=False):
        size = int(np.prod(shape)) if len(shape) else 1
        if len(shape) >= 2 and shape[-1] and size > fast_intops.WHOLE_MAX_ELEMS:
            blocks[0] += -(-size // shape[-1] // max(1, fast_intops.BLOCK_ELEMS // shape[-1]))
        return real_blockwise(kernel, shape, operands, dtype=dtype, into=into)

    monkeypatch.setattr(fast_intops, "BLOCK_ELEMS", block_elems)
    monkeypatch.setattr(fast_intops, "WHOLE_MAX_ELEMS", 2 * block_elems)
    monkeypatch.setattr(fast_intops, "blockwise", counting_blockwise)
    fast = IBertModel.from_pretrained(datapath=FastExactDatapath())
    ref = IBertModel.from_pretrained(datapath=ExactDatapath())
    rng = np.random.default_rng(3)
    ids = rng.integers(5, fast.config["vocab_size"], size=(2, 37))
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    out_fast = fast(ids, attention_mask=mask, return_trace=True)
    out_ref = ref(ids, attention_mask=mask, return_trace=True)
    assert blocks[0] > 10  # the fast routes did run on many row blocks
    for name in out_ref.trace:
        np.testing.assert_array_equal(out_fast.trace[name], out_ref.trace[name], err_msg=name)
        assert out_fast.trace[name].dtype == out_ref.trace[name].dtype, name


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    z_bits=st.sampled_from([7, 15, 21, 24, 40]),
    bits=st.sampled_from([8, 16, 22]),
    with_identity=st.booleans(),
    per_channel=st.booleans(),
)
def test_requantize_float64_variant_equals_reference(seed, z_bits, bits, with_identity, per_channel):
    """QuantAct in float64 (one rint per term, clamp written to the narrow type) gives the
    reference kernel's integers (ties included: tier 0's exactness, tested above); it steps
    aside (None) when a product could exceed 2^53."""
    from ibert_ref import kernels

    rng = np.random.default_rng(seed)
    c = 9
    n = c if per_channel else 1
    z = rng.integers(-(1 << z_bits), 1 << z_bits, size=(4, c), dtype=np.int64)
    z[0, :2] = [(1 << z_bits) - 1, -(1 << z_bits)]
    dy = Dyadic(m=rng.integers(1 << 30, 1 << 31, size=n, dtype=np.int64), e=rng.integers(20, 45, size=n, dtype=np.int64))
    dy_id = Dyadic(m=np.array([rng.integers(1 << 30, 1 << 31)], dtype=np.int64), e=np.array([31], dtype=np.int64))
    p = kernels.RequantParams(bits=bits, dy=dy, dy_identity=dy_id, out_scale=np.float32([1e-2]))
    x = QTensor(z, np.float32([1e-4]))
    ident = QTensor(rng.integers(-128, 128, size=(4, c)).astype(np.int8), np.float32([1e-2])) if with_identity else None
    ref = kernels.requantize(REF_DP, x, p, identity=None if ident is None else QTensor(ident.data.astype(np.int64), ident.scale))
    fast_methods = kernels.requantize(FAST_DP, x, p, identity=ident)  # the kernel on the fast datapath methods
    np.testing.assert_array_equal(fast_methods.data, ref.data)
    assert kernel_for(FAST_DP, "requantize") is fast_numpy.requantize_f64
    variant = fast_numpy.requantize_f64(FAST_DP, x, p, ident)
    np.testing.assert_array_equal(variant.data, ref.data)
    assert variant.data.dtype == {8: np.int8, 16: np.int16, 22: np.int32}[bits]
    in_f64 = fast_numpy._requantize_sum_f64(FAST_DP, x, p, ident)
    if z_bits + 31 < 53:
        assert in_f64 is not None  # every product exact in float64: the float64 route ran
    elif z_bits >= 40:
        assert in_f64 is None  # max|z| * max|m| >= 2^53: the kernel's own tiers run


def test_requantize_float64_variant_rounds_ties_to_even():
    from ibert_ref import kernels

    z = np.arange(-9, 10, dtype=np.int64).reshape(1, -1)  # z / 2: every odd z is a tie
    half = Dyadic(m=np.array([1 << 30], dtype=np.int64), e=np.array([31], dtype=np.int64))
    p = kernels.RequantParams(bits=8, dy=half, dy_identity=half, out_scale=np.float32([1.0]))
    x = QTensor(z, np.float32([1.0]))
    assert fast_numpy._requantize_sum_f64(FAST_DP, x, p, None) is not None  # the float64 route
    out = fast_numpy.requantize_f64(FAST_DP, x, p, None)
    np.testing.assert_array_equal(out.data, np.rint(z / 2))
    both = fast_numpy.requantize_f64(FAST_DP, x, p, QTensor(z.astype(np.int8), x.scale))
    np.testing.assert_array_equal(both.data, 2 * np.rint(z / 2))
    np.testing.assert_array_equal(both.data, kernels.requantize(REF_DP, x, p, identity=x).data)


def test_exp_requantize_negative_shift_is_an_error_on_both_paths():
    z = np.full((1, 1, 2, 2), 5, dtype=np.int64)
    q = np.zeros_like(z)
    dy = Dyadic(m=np.array([1 << 30], dtype=np.int64), e=np.array([10], dtype=np.int64))  # 10 - 30 < 0
    for dp in (FAST_DP, REF_DP):
        with pytest.raises(OverflowError):
            dp.exp_requantize(z, q, np.float32([1e-9]), dy, dy, 16)


# ---------------------------------------------------------------------------------------
# The benchmark command runs end to end (ibert-ref systems only: no torch needed).
def test_bench_command_runs_on_the_bundled_model(capsys):
    from ibert_ref.cli import main

    assert main(["bench", "--systems", "exact,transformers,gemm-floor", "--shapes", "1x8,2x8", "--repeats", "2",
                 "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "ibert-ref exact" in out and "| 2x8 |" in out and "weights resident" in out and "first call" in out
    assert "order rotated" in out and "load average" in out and "threads ibert-ref exact (numpy)" in out
    assert "float32 GEMMs only" in out and f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', '4')}" in out
