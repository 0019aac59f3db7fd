"""The compiled backend computes the same integers as the NumPy reference, kernel by kernel and op by op.

``backend="compiled"`` (:mod:`ibert_ref.backends`) replaces each row-local I-BERT kernel by a
one-pass numba kernel and QuantLinear's GEMM by an exact int8 GEMM. Here every compiled kernel
is run against the reference exact datapath (``ExactDatapath()``: two-limb
requantization, int64 GEMMs without BLAS, the restoring square root) on Hypothesis-drawn inputs
— int8..int64 operands, near-ties of every rounding, extreme multipliers and constants — and
must return the same integers (and raise the same errors); then whole models (the bundled one
and a 768-wide one) must give bit-equal traces at every op.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from ibert_ref import intops  # noqa: E402
from ibert_ref import kernels  # noqa: E402
from ibert_ref import strategies as S  # noqa: E402
from ibert_ref.backends import compiled_kernels as ck  # noqa: E402
from ibert_ref.backends import int_gemm  # noqa: E402
from ibert_ref.backends.compiled import CompiledDatapath  # noqa: E402
from ibert_ref.dataflow import kernel as kernel_for  # noqa: E402
from ibert_ref.datapath import ExactDatapath, QTensor, make_datapath  # noqa: E402
from ibert_ref.model import IBertModel  # noqa: E402
from ibert_ref.quant import Dyadic  # noqa: E402


class _AsTheModelRunsThem:
    """``K.<kernel>(dp, ...)`` runs the kernel as the model does, through
    :func:`ibert_ref.dataflow.kernel` (the compiled backend's replacement where it has one);
    every other name (the ``*Params`` classes, constants) is :mod:`ibert_ref.kernels`'."""

    REPLACEABLE = ("requantize", "quant_linear", "int_exp", "softmax_normalize", "int_gelu", "int_layernorm")

    def __getattr__(self, name):
        if name in self.REPLACEABLE:
            return lambda dp, *args, **kwargs: kernel_for(dp, name)(dp, *args, **kwargs)
        return getattr(kernels, name)


K = _AsTheModelRunsThem()

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT_DTYPES = (np.int8, np.int16, np.int32, np.int64)
ONE = np.ones(1, dtype=np.float32)

REF = ExactDatapath()
COMPILED = CompiledDatapath()
COMPILED_BLAS = CompiledDatapath(gemm="blas")


def py_rne(z: int, m: int, e: int) -> int:
    """Python big-integer ``rne(z * m / 2^e)``."""
    q, r = divmod(z * m, 1 << e)
    if 2 * r > (1 << e) or (2 * r == (1 << e) and q % 2 == 1):
        q += 1
    return q


def same(a, b, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, what
    np.testing.assert_array_equal(a.astype(np.int64), b.astype(np.int64), err_msg=what)


def compiled_and_reference(name, *args):
    """Run kernel ``name`` on the compiled datapath (asserting that the compiled kernel itself
    answered, not the NumPy fallback) and on the reference; return both QTensors."""
    direct = COMPILED.compiled_kernel(name)(COMPILED, *args)
    assert direct is not None, f"compiled {name} refused inputs the reference accepts"
    ref = getattr(K, name)(REF, *[as_reference(a) for a in args])
    same(direct.data, ref.data, name)
    np.testing.assert_array_equal(direct.scale, ref.scale)
    return direct, ref


def as_reference(a):
    """An argument as the reference datapath holds it: integers in int64 (its ``emit``). The
    kernels' NumPy code on a narrow array would compute in that type (``np.abs`` of an int32
    -2^31 wraps); the compiled kernels widen every element to int64, as the reference's own
    arrays are."""
    if isinstance(a, QTensor):
        return QTensor(np.asarray(a.data, dtype=np.int64), a.scale)
    if isinstance(a, np.ndarray) and a.dtype.kind == "i":
        return a.astype(np.int64)
    return a


def widened(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` held in ``dtype`` when its values fit, else int64."""
    info = np.iinfo(dtype)
    return a.astype(dtype) if a.size == 0 or (a.min() >= info.min and a.max() <= info.max) else a.astype(np.int64)


# ---------------------------------------------------------------------------------------
# the scalar exact requantization
@st.composite
def near_ties(draw, max_e=62):
    """``(z, m, e)`` with ``z * m`` within ``delta`` of an odd multiple of ``2^(e-1)`` (a tie when
    ``delta = 0``), ``m`` odd with ``2^30 <= |m| <= 2^31``."""
    e = draw(st.integers(1, max_e))
    m = draw(st.integers(1 << 29, (1 << 30) - 1)) * 2 + 1
    m = -m if draw(st.booleans()) else m
    delta = draw(st.sampled_from([-2, -1, 0, 1, 2]))
    target = ((1 << (e - 1)) + delta) % (1 << e)
    z0 = target * pow(m % (1 << e), -1, 1 << e) % (1 << e) if e > 0 else 0
    k = draw(st.integers(-(1 << 20), 1 << 20))
    z = z0 + k * (1 << e)
    assume(abs(z) < (1 << 62))
    return z, m, e


@SETTINGS
@given(
    z=st.one_of(st.integers(-(1 << 62) + 1, (1 << 62) - 1), st.integers(-(1 << 33), 1 << 33),
                st.sampled_from([0, 1, -1, 1 << 31, -(1 << 31), (1 << 62) - 1, -(1 << 62) + 1])),
    m=st.one_of(st.integers(-(1 << 31), 1 << 31), st.sampled_from([1 << 31, -(1 << 31), 0, 1, -1])),
    e=st.one_of(st.integers(0, 130), st.sampled_from([0, 30, 31, 32, 62, 63, 64, 93, 94])),
)
def test_msr_rne_is_exact_round_half_even(z, m, e):
    expect = max(-(1 << 62), min(1 << 62, py_rne(z, m, e)))  # the reference saturates at 2^62
    assert int(ck.msr_rne(np.int64(z), np.int64(m), np.int64(e))) == expect
    ref = intops.mul_shift_round(np.array([z]), np.array([m]), np.array([e]))
    assert int(ref[0]) == expect


@SETTINGS
@given(case=near_ties())
def test_msr_rne_near_ties(case):
    z, m, e = case
    assert int(ck.msr_rne(np.int64(z), np.int64(m), np.int64(e))) == py_rne(z, m, e)


@SETTINGS
@given(a=st.integers(-(1 << 62), 1 << 62), b=st.one_of(st.integers(-(1 << 62), -1), st.integers(1, 1 << 62),
                                                        st.integers(-2000, -1)))
def test_floor_div_equals_numpy_floor_divide(a, b):
    expect = int(np.floor_divide(np.int64(a), np.int64(b)))
    assert int(ck.floor_div(np.int64(a), np.int64(b), 1.0 / b)) == expect == a // b


# ---------------------------------------------------------------------------------------
# requantize (QuantAct / FixedPointMul), with and without a residual
@st.composite
def requant_cases(draw, with_identity):
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    bits = draw(st.sampled_from([8, 16, 22, 32]))
    z_bits = draw(st.sampled_from([8, 16, 24, 32, 40, 53, 54, 61]))

    def z_array(seed, width):
        rng = np.random.default_rng(seed)
        z = rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=(rows, cols), dtype=np.int64)
        z.flat[0] = draw(st.sampled_from([0, (1 << (width - 1)) - 1, -(1 << (width - 1))]))
        return widened(z, draw(st.sampled_from(INT_DTYPES)))

    def multiplier():
        per_channel = draw(st.booleans())
        n = cols if per_channel else 1
        kind = draw(st.sampled_from(["normal", "extreme", "ties"]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if kind == "normal":
            m = rng.integers(1 << 30, (1 << 31) + 1, size=n)
            e = rng.integers(0, 70, size=n)
        elif kind == "extreme":
            m = rng.choice(np.array([1 << 31, -(1 << 31), 1, -1, 0, (1 << 31) - 1]), size=n)
            e = rng.choice(np.array([0, 1, 31, 52, 53, 62, 63, 94, 200, 1001, 1100]), size=n)
        else:  # a power-of-two multiplier: z * m / 2^e hits exact ties
            m = np.full(n, 1 << 30) * rng.choice(np.array([1, -1]), size=n)
            e = rng.integers(30, 40, size=n)
        m[::2] *= draw(st.sampled_from([1, -1]))
        shape = (n,) if draw(st.booleans()) or n == 1 else (1, n)
        return Dyadic(m=m.astype(np.int64).reshape(shape), e=e.astype(np.int64).reshape(shape))

    z = z_array(draw(st.integers(0, 2**32 - 1)), z_bits)
    dy = multiplier()
    p = K.RequantParams(bits=bits, out_scale=ONE, dy=dy)
    identity = None
    if with_identity:
        p.dy_identity = multiplier()
        identity = QTensor(z_array(draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from([8, 16, 32, 45]))), ONE)
    return QTensor(z, ONE), p, identity


@SETTINGS
@given(case=requant_cases(with_identity=False))
def test_requantize_equals_reference(case):
    x, p, _ = case
    compiled_and_reference("requantize", x, p)


@SETTINGS
@given(case=requant_cases(with_identity=True))
def test_requantize_with_residual_equals_reference(case):
    x, p, identity = case
    compiled_and_reference("requantize", x, p, identity)


@SETTINGS
@given(case=near_ties(max_e=61), bits=st.sampled_from([8, 32]), dtype=st.sampled_from(INT_DTYPES))
def test_requantize_near_ties_every_route(case, bits, dtype):
    """Rows of near-ties: exact float64 (route 0), float64 with repair (route 1; a row holding a
    value within ``eps`` of a half-integer is recomputed) and two limbs (route 2)."""
    z, m, e = case
    base = np.array([z, -z, z + (1 << e), 0, 3, -3], dtype=np.int64)
    base = base[np.abs(base) < (1 << 62)]
    x = QTensor(widened(base[None, :], dtype), ONE)
    p = K.RequantParams(bits=bits, out_scale=ONE, dy=Dyadic(m=np.array([m]), e=np.array([e])))
    compiled_and_reference("requantize", x, p)


def test_requantize_route_one_repairs_a_row_float64_gets_wrong():
    """``z * m / 2^e = N + 1/2 + 2^-40`` with ``N`` even: float64 rounds to ``N``, the exact answer
    is ``N + 1`` — the compiled kernel must detect the near-tie and recompute the row."""
    e, m = 40, (1 << 30) + 3
    z0 = ((1 << (e - 1)) + 1) * pow(m, -1, 1 << e) % (1 << e)
    z = np.array([[z0 + k * (1 << e) for k in range(-1, 1)]], dtype=np.int64)  # |z * m / 2^e| < 2^31
    naive = np.rint(z.astype(np.float64) * np.ldexp(float(m), -e)).astype(np.int64)
    exact = np.array([[py_rne(int(v), m, e) for v in z[0]]])
    assert np.any(naive != exact) and np.abs(exact).max() < (1 << 31)
    p = K.RequantParams(bits=32, out_scale=ONE, dy=Dyadic(m=np.array([m]), e=np.array([e])))
    direct, _ = compiled_and_reference("requantize", QTensor(z, ONE), p)
    same(direct.data, exact)


@pytest.mark.parametrize("z, m, e, exc", [
    (1 << 62, 1 << 30, 3, OverflowError),
    (-(1 << 62), 1 << 30, 3, OverflowError),
    (5, (1 << 31) + 1, 3, ValueError),
    (5, 1 << 30, -1, ValueError),
])
def test_requantize_raises_what_the_reference_raises(z, m, e, exc):
    x = QTensor(np.array([[z, 1]], dtype=np.int64), ONE)
    p = K.RequantParams(bits=8, out_scale=ONE, dy=Dyadic(m=np.array([m]), e=np.array([e])))
    with pytest.raises(exc):
        K.requantize(REF, x, p)
    with pytest.raises(exc):
        K.requantize(COMPILED, x, p)


# ---------------------------------------------------------------------------------------
# IntSoftmax: i-exp with its 16-bit requantization, then the normalisation
@st.composite
def score_arrays(draw, p):
    b, h, t = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([1, 10, 1000, 1 << 20, 1 << 30]))
    s = rng.integers(-spread, spread + 1, size=(b, h, t, t), dtype=np.int64)
    x0 = int(np.asarray(p.x0_int).reshape(-1)[0])
    s[..., 0] = s[..., -1] + draw(st.sampled_from([0, x0, 30 * x0, 30 * x0 - 1, 30 * x0 + 1]))  # the clamp's edges
    if draw(st.booleans()):  # masked keys (never every key of a row)
        keep = rng.integers(0, 2, size=(b, t)).astype(bool)
        keep[:, 0] = True
        s = np.where(keep[:, None, None, :], s, -intops.SATURATION_I64)
    return widened(s, draw(st.sampled_from((np.int32, np.int64))))


@SETTINGS
@given(data=st.data())
def test_int_exp_equals_reference(data):
    p = data.draw(S.softmax_params("exact", act_headroom=st.sampled_from([1.0, 0.25, 4.0])))
    s = data.draw(score_arrays(p))
    compiled_and_reference("int_exp", s, p)  # by table (int_exp_table + int_exp_lookup_rows)
    import ibert_ref.backends.compiled as compiled_mod

    saved, compiled_mod.EXP_TABLE_MAX = compiled_mod.EXP_TABLE_MAX, 0
    try:
        compiled_and_reference("int_exp", s, p)  # directly (int_exp_rows)
    finally:
        compiled_mod.EXP_TABLE_MAX = saved


@SETTINGS
@given(data=st.data())
def test_int_exp_extreme_constants_equal_reference(data):
    """Hand-made constants far from calibration: polynomials past 2^53 (route 1 / two limbs),
    shifts beyond 62, multipliers at +-2^31."""
    x0 = data.draw(st.sampled_from([-1, -2, -57, -1000, -5000, -(1 << 20)]))  # tables; -5000 on: direct
    p = K.SoftmaxParams(
        x0_int=np.array([x0]), x0_30=np.array([30 * x0]),
        b_int=np.array([data.draw(st.integers(-(1 << 20), 1 << 21))]),
        c_int=np.array([data.draw(st.sampled_from([0, 1, 18259, 1 << 40, (1 << 55) + 12345]))]),
        exp_scale=ONE, act_scale=ONE, dy_tf=Dyadic(m=np.array([1 << 30]), e=np.array([40])),
        dy_exact=Dyadic(m=np.array([data.draw(st.sampled_from([1 << 30, (1 << 31), 1911182228, 3]))]),
                        e=np.array([data.draw(st.sampled_from([30, 31, 60, 75, 93, 120]))])),
        act_bits=data.draw(st.sampled_from([8, 16])),
    )
    s = data.draw(score_arrays(p))
    try:
        ref = K.int_exp(REF, as_reference(s), p)
    except (OverflowError, ValueError) as exc:
        with pytest.raises(type(exc)):
            K.int_exp(COMPILED, s, p)
        return
    got = K.int_exp(COMPILED, s, p)
    assert COMPILED.compiled_kernel("int_exp")(COMPILED, s, p) is not None
    same(got.data, ref.data)


def test_int_exp_negative_shift_raises_like_the_reference():
    p = K.SoftmaxParams(x0_int=np.array([-5]), x0_30=np.array([-150]), b_int=np.array([10]), c_int=np.array([100]),
                        exp_scale=ONE, act_scale=ONE, dy_tf=Dyadic(m=np.array([1 << 30]), e=np.array([10])),
                        dy_exact=Dyadic(m=np.array([1 << 30]), e=np.array([10])))
    s = np.array([[[[0, -3, -100]]]], dtype=np.int64)
    for dp in (REF, COMPILED):
        with pytest.raises(OverflowError):
            K.int_exp(dp, s, p)


@SETTINGS
@given(data=st.data())
def test_softmax_normalize_equals_reference(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    t = data.draw(st.integers(1, 12))
    hi = data.draw(st.sampled_from([1, 2, 300, 1 << 15]))
    e = rng.integers(0, hi, size=(2, 3, t, t), dtype=np.int64)
    e[..., 0] = np.maximum(e[..., 0], 1)  # a live key per row
    if data.draw(st.booleans()):
        e[0, 0, 0, :] = 0
        e[0, 0, 0, data.draw(st.integers(0, t - 1))] = data.draw(st.sampled_from([1, (1 << 15) - 1]))
    x = QTensor(widened(e, data.draw(st.sampled_from(INT_DTYPES[1:]))), ONE)
    p = data.draw(S.softmax_params("exact"))
    compiled_and_reference("softmax_normalize", x, p)


def test_softmax_normalize_all_zero_row_raises_like_the_reference():
    p = K.SoftmaxParams(x0_int=np.array([-5]), x0_30=np.array([-150]), b_int=np.array([10]), c_int=np.array([100]),
                        exp_scale=ONE, act_scale=ONE, dy_tf=Dyadic(m=np.array([1]), e=np.array([40])),
                        dy_exact=Dyadic(m=np.array([1]), e=np.array([40])))
    x = QTensor(np.array([[3, 4], [0, 0]], dtype=np.int16), ONE)
    for dp in (REF, COMPILED):
        with pytest.raises(ZeroDivisionError):
            K.softmax_normalize(dp, x, p)


# ---------------------------------------------------------------------------------------
# IntGELU and IntLayerNorm
@SETTINGS
@given(data=st.data())
def test_int_gelu_equals_reference(data):
    if data.draw(st.booleans()):
        p = data.draw(S.gelu_params("exact"))
    else:  # extreme per-channel constants
        cols = 5
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        p = K.GeluParams(b_int=-rng.integers(1, 1 << 31, size=cols), c_int=-rng.integers(0, 1 << 62, size=cols) >> 2,
                         one=rng.integers(-(1 << 40), 1 << 40, size=cols), out_scale=ONE)
    cols = np.size(p.b_int) if np.size(p.b_int) > 1 else data.draw(st.integers(1, 7))
    width = data.draw(st.sampled_from([8, 20, 31, 32, 45]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=(3, cols), dtype=np.int64)
    x[0, 0] = data.draw(st.sampled_from([0, -(1 << (width - 1)), (1 << (width - 1)) - 1]))
    xq = QTensor(widened(x, data.draw(st.sampled_from(INT_DTYPES))), ONE)
    compiled_and_reference("int_gelu", xq, p)


@SETTINGS
@given(data=st.data())
def test_int_layernorm_equals_reference(data):
    hidden = data.draw(st.sampled_from([1, 2, 8, 33]))
    p = data.draw(S.layernorm_params("exact", hidden=hidden, shift=st.integers(0, 20)))
    width = data.draw(st.sampled_from([4, 16, 22, 32, 40]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=(2, 3, hidden), dtype=np.int64)
    x[0, 0, 0] += 1 if hidden == 1 else 0
    if hidden > 1 and data.draw(st.booleans()):  # a row whose sum is an odd multiple of D / 2: mean tie
        x[0, 1, :] = 0
        x[0, 1, 0] = hidden // 2 + hidden * data.draw(st.integers(-5, 5)) if hidden % 2 == 0 else 1
        x[0, 1, 1] = 1 << (width // 2)
    xq = QTensor(widened(x, data.draw(st.sampled_from(INT_DTYPES))), ONE)
    try:
        ref = K.int_layernorm(REF, as_reference(xq), p)
    except (ZeroDivisionError, OverflowError, ValueError) as exc:
        with pytest.raises(type(exc)):  # at the op, as the reference (its QuantAct is fused later)
            K.int_layernorm(COMPILED, xq, p)
        return
    got = COMPILED.compiled_kernel("int_layernorm")(COMPILED, xq, p)
    assert got is not None
    same(got.data, ref.data)


def test_int_layernorm_constant_row_raises_like_the_reference():
    p = K.LayerNormParams(shift=0, bias_int=np.zeros(4, dtype=np.int64), out_scale=np.ones(4, np.float32))
    x = QTensor(np.array([[1, 2, 3, 4], [7, 7, 7, 7]], dtype=np.int32), ONE)
    for dp in (REF, COMPILED):
        with pytest.raises(ZeroDivisionError):
            K.int_layernorm(dp, x, p)  # at the op (the model names it: DegenerateRowError)


# ---------------------------------------------------------------------------------------
# GEMMs
@pytest.mark.parametrize("dp", [COMPILED, COMPILED_BLAS], ids=["int-gemm", "blas"])
@pytest.mark.parametrize("k", [768, 3072])
def test_linear_adversarial_operands_equal_int64(dp, k):
    """Every operand at -128 / 127, K up to 3072: what saturating u8 x s8 kernels get wrong."""
    rng = np.random.default_rng(k)
    x = rng.choice(np.array([-128, 127], dtype=np.int8), size=(2, 9, k))
    x[0, 0] = -128
    w = rng.choice(np.array([-128, 127], dtype=np.int8), size=(40, k))
    w[0] = -128
    w[1] = 127
    b = rng.integers(-(1 << 31), 1 << 31, size=40, dtype=np.int64)
    got = dp.linear(x, w, b)
    same(got, intops.matmul_exact_reference(x, w.T) + b)


@SETTINGS
@given(data=st.data())
def test_linear_and_attention_equal_reference(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    b, t, heads, hd = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 11)), data.draw(st.sampled_from([1, 2, 4])), 4
    h = heads * hd
    x = rng.integers(-128, 128, size=(b, t, h), dtype=np.int64)
    x = widened(x, data.draw(st.sampled_from((np.int8, np.int64))))
    w = rng.integers(-128, 128, size=(7, h)).astype(np.int8)
    bias = rng.integers(-(1 << 31), 1 << 31, size=7, dtype=np.int64)
    for dp in (COMPILED, COMPILED_BLAS):
        same(dp.linear(x, w, bias), REF.linear(x, w, bias), "linear")
    q = QTensor(rng.integers(-128, 128, size=(b, t, h)).astype(np.int8), ONE)
    k = QTensor(rng.integers(-128, 128, size=(b, t, h)).astype(np.int8), ONE)
    mask = np.ones((b, t), dtype=np.int64) if data.draw(st.booleans()) else rng.integers(0, 2, size=(b, t))
    mask[:, 0] = 1
    p_max = data.draw(st.sampled_from([255, 256]))  # 256 (one live key) takes the float32 route
    p = QTensor(rng.integers(0, p_max + 1, size=(b, heads, t, t)).astype(np.int16), ONE)
    p.data[0, 0, 0, 0] = p_max
    v = QTensor(rng.integers(-128, 128, size=(b, t, h)).astype(np.int8), ONE)
    for dp in (COMPILED, COMPILED_BLAS):
        same(dp.attention_scores(q, k, heads, mask, ONE), REF.attention_scores(q, k, heads, mask, ONE), "scores")
        same(dp.attention_scores(q, k, heads, None, ONE), REF.attention_scores(q, k, heads, None, ONE), "scores")
        same(dp.attention_context(p, v, heads, ONE).data, REF.attention_context(p, v, heads, ONE).data, "context")


@SETTINGS
@given(data=st.data())
def test_fused_linear_chains_equal_reference(data):
    """QuantLinear's bias, IntGELU and the following requantization fused into one pass (an
    unread :class:`~ibert_ref.backends.compiled.DeferredLinear`): QuantLinear -> QuantAct,
    QuantLinear -> IntGELU -> QuantAct, QuantLinear + residual -> QuantAct; the same integers
    as the reference running each op, and as the compiled ops materialised one by one."""
    from ibert_ref.backends.compiled import DeferredLinear

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    rows, k, n = data.draw(st.integers(1, 6)), data.draw(st.sampled_from([8, 64, 768])), data.draw(st.integers(1, 9))
    x = QTensor(rng.integers(-128, 128, size=(1, rows, k)).astype(np.int8), ONE)
    lin = K.LinearParams(w=rng.integers(-128, 128, size=(n, k)).astype(np.int8),
                         b=rng.integers(-(1 << 22), 1 << 22, size=n, dtype=np.int64), out_scale=ONE)
    gelu = data.draw(S.gelu_params("exact"))
    req = data.draw(S.requant_params("exact", bits=st.sampled_from([8, 22]), in_bits=data.draw(st.sampled_from([24, 40])),
                                     with_identity=True))[0]
    ident = QTensor(rng.integers(-128, 128, size=(1, rows, n)).astype(np.int8), ONE)
    chains = {
        "linear->act": lambda dp: K.requantize(dp, K.quant_linear(dp, x, lin), req),
        "linear->gelu->act": lambda dp: K.requantize(dp, K.int_gelu(dp, K.quant_linear(dp, x, lin), gelu), req),
        "linear+residual->act": lambda dp: K.requantize(dp, K.quant_linear(dp, x, lin), req, identity=ident),
        "linear->gelu (read)": lambda dp: K.int_gelu(dp, K.quant_linear(dp, x, lin), gelu),
    }
    for name, chain in chains.items():
        ref = chain(REF).data
        for dp in (COMPILED, COMPILED_BLAS):
            same(chain(dp).data, ref, name)
    assert isinstance(K.quant_linear(COMPILED, x, lin), DeferredLinear)
    step = K.quant_linear(COMPILED, x, lin)
    same(step.data, REF.linear(x.data, lin.w, lin.b), "materialised accumulator")
    same(K.requantize(COMPILED, step, req).data, chains["linear->act"](REF).data, "materialised, then requantized")


@SETTINGS
@given(data=st.data())
def test_fused_softmax_and_layernorm_chains_equal_reference(data):
    """Deferred ops fused into their consumer: scores -> i-exp -> normalisation -> P V (the
    exponentials and P never written; P - 128 straight from the scores), and IntLayerNorm ->
    QuantAct; each also read at every step. The same integers as the reference's ops."""
    from ibert_ref.backends.compiled import DeferredProbs

    p = data.draw(S.softmax_params("exact", act_headroom=st.sampled_from([1.0, 0.25, 4.0])))
    s = data.draw(score_arrays(p))
    b, heads, t, _ = s.shape
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    v = QTensor(rng.integers(-128, 128, size=(b, t, heads * 4)).astype(np.int8), ONE)
    ref_e = K.int_exp(REF, as_reference(s), p)
    ref_p = K.softmax_normalize(REF, ref_e, p)
    ref_ctx = REF.attention_context(ref_p, v, heads, ONE).data
    probs = K.softmax_normalize(COMPILED, K.int_exp(COMPILED, s, p), p)
    same(COMPILED.attention_context(probs, v, heads, ONE).data, ref_ctx, "context from unread probabilities")
    same(probs.data, ref_p.data, "probabilities read after the context")
    exp16 = K.int_exp(COMPILED, s, p)
    same(exp16.data, ref_e.data, "exponentials")
    probs = K.softmax_normalize(COMPILED, exp16, p)
    same(probs.data, ref_p.data, "probabilities from read exponentials")
    same(COMPILED.attention_context(probs, v, heads, ONE).data, ref_ctx, "context from read probabilities")
    probs = K.softmax_normalize(COMPILED, K.int_exp(COMPILED, s, p), p)
    import ibert_ref.backends.compiled as compiled_mod

    assert isinstance(probs, DeferredProbs) or -int(np.asarray(p.x0_30).reshape(-1)[0]) >= compiled_mod.EXP_TABLE_MAX
    same(probs.data, ref_p.data, "probabilities read first")

    hidden = data.draw(st.sampled_from([2, 8, 33]))
    ln = data.draw(S.layernorm_params("exact", hidden=hidden, shift=st.integers(0, 12)))
    x = QTensor(widened(rng.integers(-(1 << 21), 1 << 21, size=(2, 3, hidden)), data.draw(st.sampled_from((np.int32, np.int64)))), ONE)
    req = data.draw(S.requant_params("exact", bits=st.sampled_from([8, 16]), in_bits=32))[0]
    ref = K.requantize(REF, K.int_layernorm(REF, as_reference(x), ln), req).data
    same(K.requantize(COMPILED, K.int_layernorm(COMPILED, x, ln), req).data, ref, "LayerNorm -> QuantAct fused")
    y = K.int_layernorm(COMPILED, x, ln)
    same(y.data, K.int_layernorm(REF, as_reference(x), ln).data, "LayerNorm read")
    same(K.requantize(COMPILED, y, req).data, ref, "LayerNorm read, then QuantAct")


def test_int_gemm_self_check_accepts_torch_and_rejects_a_saturating_gemm():
    class SaturatingGemm:
        """u8 x s8 pairs into a saturating int16 (vpmaddubsw), then int32 sums: inexact."""

        name = "saturating"

        def matmul_i8(self, a, b):
            a16 = a.astype(np.int32) + 128  # u8
            prod = a16[:, :, None] * b.astype(np.int32)[None, :, :]  # (m, k, n)
            k = prod.shape[1] - prod.shape[1] % 2
            pairs = np.clip(prod[:, 0:k:2] + prod[:, 1:k:2], -32768, 32767).sum(axis=1)
            return pairs - 128 * b.astype(np.int64).sum(axis=0)

    assert not int_gemm.self_check(SaturatingGemm())
    assert int_gemm.self_check(int_gemm.BlasGemm())
    try:
        gemm = int_gemm.TorchIntGemm()
    except ImportError:
        pytest.skip("torch not installed: the compiled backend uses the float32 BLAS GEMM")
    assert int_gemm.self_check(gemm)
    assert COMPILED.int_gemm.name == "torch"


def test_failed_self_check_falls_back_to_blas(monkeypatch):
    monkeypatch.setattr(int_gemm, "_CHOSEN", None)
    monkeypatch.setattr(int_gemm, "self_check", lambda gemm: False)
    pytest.importorskip("torch")
    with pytest.warns(RuntimeWarning, match="self-check"):
        dp = CompiledDatapath()
    assert dp.int_gemm.name == "blas" and "self-check" in int_gemm.GEMM_FALLBACK_REASON
    monkeypatch.setattr(int_gemm, "_CHOSEN", None)


# ---------------------------------------------------------------------------------------
# Whole models: every traced op bit-equal to the reference (and to the NumPy fast path)
def assert_same_traces(a, b):
    assert a.trace.keys() == b.trace.keys()
    for name in b.trace:
        np.testing.assert_array_equal(a.trace[name], b.trace[name], err_msg=name)
    np.testing.assert_array_equal(a.last_hidden_state_int, b.last_hidden_state_int)
    np.testing.assert_array_equal(a.last_hidden_state, b.last_hidden_state)
    if b.pooler_output is not None:
        np.testing.assert_array_equal(a.pooler_output, b.pooler_output)


@pytest.mark.parametrize("gemm", [None, "blas"])
def test_bundled_model_compiled_equals_reference_on_every_op(gemm):
    comp = IBertModel.from_checkpoint(_bundled(), datapath=CompiledDatapath(gemm=gemm))
    ref = IBertModel.from_checkpoint(_bundled(), datapath=ExactDatapath())
    numpy_fast = IBertModel.from_checkpoint(_bundled(), datapath="exact")
    rng = np.random.default_rng(0)
    ids = rng.integers(5, comp.config["vocab_size"], size=(3, 21))
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = comp.config.get("pad_token_id", 1)
    kw = dict(attention_mask=mask, return_trace=True, output_attentions=True, output_hidden_states=True)
    out = comp(ids, **kw)
    assert len(out.trace) > 20 * comp.config["num_hidden_layers"]
    assert_same_traces(out, ref(ids, **kw))
    plain = comp(ids, attention_mask=mask)  # no trace: bias, IntGELU and requantization fused
    np.testing.assert_array_equal(plain.last_hidden_state_int, out.last_hidden_state_int)
    np.testing.assert_array_equal(plain.pooler_output, out.pooler_output)
    assert_same_traces(out, numpy_fast(ids, **kw))
    heads = comp.config["num_attention_heads"]
    head_mask = np.ones(heads, dtype=np.int64)
    head_mask[0] = 0
    assert_same_traces(comp(ids, head_mask=head_mask, **kw), ref(ids, head_mask=head_mask, **kw))


def test_768_wide_model_compiled_equals_reference_on_every_op():
    """A roberta-base-wide layer (hidden 768, 12 heads, intermediate 3072), NumPy-built and
    calibrated: the widths where the GEMM (K = 3072), IntGELU (~40 bits) and the requantization
    routes are those of the real model."""
    config = {
        "model_type": "ibert", "architectures": ["IBertModel"], "quant_mode": True, "force_dequant": "none",
        "hidden_act": "gelu", "hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 1,
        "intermediate_size": 3072, "vocab_size": 96, "max_position_embeddings": 40, "type_vocab_size": 2,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-12,
    }
    ckpt = S.make_numpy_checkpoint(config, seed=7, calib_batches=2, calib_len=16)
    comp = IBertModel.from_checkpoint(ckpt, backend="compiled")
    ref = IBertModel.from_checkpoint(ckpt, datapath=ExactDatapath())
    rng = np.random.default_rng(1)
    ids = rng.integers(3, config["vocab_size"], size=(2, 30))
    mask = np.ones_like(ids)
    mask[1, 22:] = 0
    ids[mask == 0] = 1
    types = rng.integers(0, 2, size=ids.shape)
    kw = dict(attention_mask=mask, token_type_ids=types, return_trace=True)
    out = comp(ids, **kw)
    assert_same_traces(out, ref(ids, **kw))
    plain = comp(ids, attention_mask=mask, token_type_ids=types)  # no trace: the fused passes
    np.testing.assert_array_equal(plain.last_hidden_state_int, out.last_hidden_state_int)
    gelu = out.trace["encoder.layer.0.intermediate.intermediate_act_fn"]
    assert np.abs(gelu.astype(np.int64)).max() > (1 << 31)  # the wide IntGELU outputs really occur


@pytest.mark.parametrize("force_dequant", ["gelu", "softmax", "layernorm", "nonlinear"])
def test_force_dequant_models_compiled_equal_reference(force_dequant):
    """Float non-linearities (transformers' ``force_dequant``) read the integers they replace:
    deferred results are materialised for them; every traced op still bit-equal."""
    config = {
        "model_type": "ibert", "architectures": ["IBertModel"], "quant_mode": True, "force_dequant": force_dequant,
        "hidden_act": "gelu", "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
        "intermediate_size": 64, "vocab_size": 64, "max_position_embeddings": 40, "type_vocab_size": 1,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-12,
    }
    ckpt = S.make_numpy_checkpoint(config, seed=3)
    comp = IBertModel.from_checkpoint(ckpt, backend="compiled")
    ref = IBertModel.from_checkpoint(ckpt, datapath=ExactDatapath())
    ids = np.array([[0, 5, 6, 7, 8, 9, 2], [0, 11, 12, 2, 1, 1, 1]])
    mask = (ids != 1).astype(np.int64)
    kw = dict(attention_mask=mask, output_attentions=True)
    assert_same_traces(comp(ids, return_trace=True, **kw), ref(ids, return_trace=True, **kw))
    np.testing.assert_array_equal(comp(ids, **kw).last_hidden_state, ref(ids, **kw).last_hidden_state)


def _bundled():
    from ibert_ref.loading import load_checkpoint
    from ibert_ref.data import default_model_path

    return load_checkpoint(default_model_path())


# ---------------------------------------------------------------------------------------
# selection, census, errors
def test_backend_selection_and_errors(monkeypatch):
    assert isinstance(make_datapath("exact", backend="compiled"), CompiledDatapath)
    from ibert_ref.backends.fast_numpy import FastExactDatapath

    assert type(make_datapath("exact")) is FastExactDatapath  # the NumPy backend (default)
    with pytest.raises(ValueError, match="datapath='exact'"):
        make_datapath("transformers", backend="compiled")
    with pytest.raises(ValueError, match="unknown backend"):
        make_datapath("exact", backend="cuda")
    import ibert_ref.backends as backends

    monkeypatch.setattr(backends, "compiled_available", lambda: False)
    with pytest.raises(ImportError, match=r"ibert-ref\[fast\]"):
        IBertModel.from_pretrained(backend="compiled")
    IBertModel.from_pretrained(backend="numpy")  # NumPy alone still runs


def test_width_census_runs_the_numpy_kernels():
    """While a census collects, the kernels' own code runs (it reports the intermediates): the
    compiled backend steps aside, and the census equals the NumPy backend's."""
    from ibert_ref.widths import width_census

    dp = CompiledDatapath()
    dp.oplog = object()
    assert dp.compiled_kernel("requantize") is None
    model_c = IBertModel.from_pretrained(backend="compiled")
    model_n = IBertModel.from_pretrained()
    ids = np.array([[0, 100, 200, 300, 2]])
    assert width_census(model_c, ids).rows == width_census(model_n, ids).rows
