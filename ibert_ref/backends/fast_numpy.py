"""The NumPy backend of the exact datapath: the reference's integers, computed faster.

:class:`FastExactDatapath` is :class:`~ibert_ref.datapath.ExactDatapath` (the reference)
with cheaper routes to the same integers, each picked from the operands' actual ranges,
checked at every call (the proofs are in :mod:`ibert_ref.backends.fast_intops`):

* GEMMs on float32 BLAS while every partial sum is an integer below 2^24 (K-chunks of 1024
  for int8 x int8, accumulated in float64): :func:`~ibert_ref.backends.fast_intops.matmul_exact`;
* requantization in float64 when ``z * m`` is exact there, with an exact repair of near-ties
  when it is not, else single int64 products
  (:func:`~ibert_ref.backends.fast_intops.mul_shift_round_fast`); the softmax exponent shift
  through a table over its 31 possible values (:func:`exp_requantize_f64`);
* a float square root corrected by one exact integer step;
* two kernels replaced whole (:meth:`FastExactDatapath.replacement_kernel`): QuantAct /
  FixedPointMul in float64 when every product is exact there (:func:`requantize_f64`), and
  IntGELU's int64 operations in place, row block by row block (:func:`int_gelu_blocked`);
* a clamped result held in the narrowest type of its width (``narrow``: int8 for an 8-bit
  QuantAct, int16, int32 for the 22-bit one) instead of int64: less memory traffic, and GEMM
  operands whose bound is read from the type. Every kernel widens before its arithmetic.

tests/test_fast_path.py proves every method and replacement equal to the reference, on
Hypothesis inputs, corner cases and whole models. NumPy only: the default backend.
"""

from __future__ import annotations

import numpy as np

from .. import intops
from .. import kernels as K
from ..datapath import ExactDatapath, QTensor, merge_heads, split_heads
from ..quant import F32
from . import fast_intops as F

I64 = np.int64
NARROW_INTS = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


class FastExactDatapath(ExactDatapath):
    """:class:`~ibert_ref.datapath.ExactDatapath`'s integers by the fast routes of this module
    (see the module docstring). ``make_datapath("exact")`` builds it."""

    fast = True
    #: hold clamped results as int8/int16/int32 (a hardware profile sets False: int64 registers)
    narrow = True

    def emit(self, w, scale_f32):
        w = np.asarray(w)
        if not (self.narrow and w.dtype in NARROW_INTS):
            w = w.astype(I64, copy=False)
        return QTensor(w, np.asarray(scale_f32, dtype=F32))

    def dyadic_round(self, z, dy):
        return F.mul_shift_round_fast(z, dy.m, dy.e, "half_even")

    def clamp_bits(self, w, bits):
        if self.narrow and bits <= 32:
            return F.clamp_signed_narrow(w, bits)
        return intops.clamp_signed(w, bits)

    def floor_sqrt(self, v):
        return F.isqrt_floor_fast(v)

    def linear(self, x, w, b):
        return F.matmul_exact(x, w.T, add_int=b, narrow=self.narrow)

    def attention_scores(self, q, k, num_heads, mask, score_scale_f32):
        k_t = split_heads(k.data, num_heads).transpose(0, 1, 3, 2)
        scores = F.matmul_exact(split_heads(q.data, num_heads), k_t)
        if mask is not None and not np.all(mask):
            scores = np.where(mask[:, None, None, :].astype(bool), scores, -intops.SATURATION_I64)
        return scores

    def attention_context(self, p, v, num_heads, scale_f32):
        ctx = F.matmul_exact(p.data, split_heads(v.data, num_heads))
        return QTensor(merge_heads(ctx), np.asarray(scale_f32, dtype=F32))

    def exp_requantize(self, z, q, exp_scale_f32, dy_tf, dy_exact, bits):
        e16 = exp_requantize_f64(z, q, dy_exact, bits)
        if e16 is not None:
            return e16
        shift = dy_exact.e - (30 - q)
        if np.any(shift < 0):
            raise OverflowError("softmax exp requantization shift went negative")
        e16 = F.mul_shift_round_fast(np.maximum(z, 0), dy_exact.m, shift, "half_even")
        return intops.clamp_signed(e16, bits)

    def replacement_kernel(self, name: str):
        """:func:`requantize_f64` for ``requantize``, :func:`int_gelu_blocked` for ``int_gelu``;
        None for the other kernels, and for every kernel while a width census collects (the
        kernel's own code then reports its intermediates)."""
        if self.oplog is not None:
            return None
        return _REPLACEMENTS.get(name)


def requantize_f64(dp, x, p, identity=None):
    """:func:`~ibert_ref.kernels.requantize` in float64 when every step is exact there, else
    the kernel itself:

    ``y = rint(z * d) [+ rint(z_id * d_id)]``, ``d = m * 2^-e`` (exact), then
    ``clamp(y, -2^(b-1), 2^(b-1) - 1)`` written to the narrow integer type in one pass.
    Exact while ``max|z| * max|m| < 2^53`` and ``< 2^51 * 2^(min e)`` for each term (the
    product ``z * m`` and its scaling are exact, rint is round half to even of the exact
    rational, and each rounded term is below 2^51 so their sum is exact): tier 0 of
    :func:`~ibert_ref.backends.fast_intops.mul_shift_round_fast`, without its int64 round trip.
    """
    y_f64 = _requantize_sum_f64(dp, x, p, identity)
    if y_f64 is None:
        return K.requantize(dp, x, p, identity)
    return dp.emit(dp.clamp_bits(y_f64, p.bits), p.out_scale)


def _requantize_sum_f64(dp, x, p, identity):
    """``rint(z * d) [+ rint(z_id * d_id)]`` in float64 for :func:`requantize_f64`, or None
    when a term is not provably exact there (or its operands have another layout)."""
    terms = [(x, p.dy)] if identity is None else [(x, p.dy), (identity, p.dy_identity)]
    if p.bits > 32 or (identity is not None and np.shape(identity.data) != np.shape(x.data)):
        return None
    y_f64 = None
    for t, dy in terms:
        z = np.asarray(dp.round_recover(t))
        dy = dp.requant_multiplier(dy, t)
        m, e = np.asarray(dy.m, dtype=I64), np.asarray(dy.e, dtype=I64)
        if z.dtype not in NARROW_INTS + (np.dtype(I64),) or z.size == 0 or m.size == 0 or e.size == 0:
            return None
        if not all(v.ndim <= 1 or all(d == 1 for d in v.shape[:-1]) for v in (m, e)):
            return None
        e_lo, e_hi = int(e.min()), int(e.max())
        product = intops.abs_bound(z) * intops.abs_bound(m)
        if e_lo < 0 or e_hi > 1000 or product >= F.F64_EXACT_INT or product >= F.ROUND_MAGIC_LIMIT << e_lo:
            return None
        d_f64 = np.ldexp(m.astype(np.float64), -e.astype(np.int32))
        term = np.multiply(z, d_f64, dtype=np.float64)
        np.rint(term, out=term)
        y_f64 = term if y_f64 is None else y_f64 + term
    if y_f64.shape != np.shape(x.data):  # m or e broadcast z to a larger shape
        return None
    return y_f64


def int_gelu_blocked(dp, x, p):
    """:func:`~ibert_ref.kernels.int_gelu`, the same int64 operations in the same order, run
    row block by row block (about ``fast_intops.BLOCK_ELEMS`` elements, cache-resident), each
    block computed in place in the result (:func:`_int_gelu_block`):

    ``a = min(|x|, -b) + b``, ``a = a * a + c`` (erf_poly), ``a = a * sign(x)``,
    ``a = floor(a / 2^14)`` (arithmetic shift), ``out = x * (a + one)`` — int64 with NumPy's
    wrapping, exactly as the kernel (an int8/16/32 ``x`` is widened into the int64 result by
    the first step). Inputs of another type, empty, or with constants that are not int64
    scalars / per-channel vectors run the kernel itself.
    """
    x_int = np.asarray(x.data)
    consts = [np.asarray(v) for v in (p.b_int, p.c_int, p.one)]
    plain = x_int.dtype not in NARROW_INTS + (np.dtype(I64),) or x_int.ndim == 0 or x_int.size == 0
    for v in consts:
        per_channel = v.ndim <= x_int.ndim and all(d == 1 for d in v.shape[:-1])
        if v.dtype != I64 or not (v.ndim == 0 or (per_channel and v.shape[-1] in (1, x_int.shape[-1]))):
            plain = True
    if plain:
        return K.int_gelu(dp, x, p)
    cols = x_int.shape[-1]
    b, c, one = (v.reshape(v.shape[-1:]) if v.ndim else v for v in consts)
    x_rows = np.ascontiguousarray(x_int).reshape(-1, cols)  # int8..int64: widened into the int64 result
    product = np.empty(x_rows.shape, dtype=I64)
    step = max(1, F.BLOCK_ELEMS // cols)
    for r0 in range(0, x_rows.shape[0], step):
        _int_gelu_block(x_rows[r0 : r0 + step], -b, b, c, one, product[r0 : r0 + step])
    return dp.emit(product.reshape(x_int.shape), p.out_scale)


def _int_gelu_block(x_i64, neg_b, b, c, one, out):
    """One row block of :func:`int_gelu_blocked`, written into ``out`` (int64):
    ``out = x * (floor(sign(x) * ((min(|x|, -b) + b)^2 + c) / 2^14) + one)``."""
    a = np.abs(x_i64, out=out)
    np.minimum(a, neg_b, out=a)
    a += b
    a *= a
    a += c
    a *= np.sign(x_i64)
    a >>= 14
    a += one
    a *= x_i64
    return a


def exp_requantize_f64(z, q, dy, bits):
    """``clamp(rint(max(z, 0) * d[q]))``, ``d[q] = m * 2^-(e - 30 + q)`` from a table over q's range.

    Same integers as the reference when ``max z * |m| < 2^53`` and the result stays below
    2^51 (tier 0 of :func:`~ibert_ref.backends.fast_intops.mul_shift_round_fast`: every table
    entry and every product is exact); None when that does not hold. Runs block by block.
    """
    z, q = np.asarray(z), np.asarray(q)
    m, e = np.asarray(dy.m), np.asarray(dy.e)
    if m.size != 1 or e.size != 1 or z.size == 0 or z.shape != q.shape:
        return None
    q_lo, q_hi = int(q.min()), int(q.max())
    shift_lo = int(e.reshape(-1)[0]) - 30 + q_lo
    if shift_lo < 0:
        raise OverflowError("softmax exp requantization shift went negative")
    m_int = int(m.reshape(-1)[0])
    product = max(int(z.max()), 0) * abs(m_int)
    if product >= F.F64_EXACT_INT or product >= F.ROUND_MAGIC_LIMIT << shift_lo:
        return None
    if q_hi - q_lo > 256 or shift_lo + q_hi - q_lo > 1000:
        return None
    table_f64 = np.ldexp(float(m_int), -np.arange(shift_lo, shift_lo + q_hi - q_lo + 1, dtype=np.int32))
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def kernel(z_blk, q_blk):
        x_f64 = np.take(table_f64, q_blk - q_lo if q_lo else q_blk)
        x_f64 *= np.maximum(z_blk, 0)
        e16 = F.rint_f64_to_i64(x_f64)
        return np.clip(e16, lo, hi, out=e16)

    return F.blockwise(kernel, z.shape, (np.ascontiguousarray(z), np.ascontiguousarray(q)))


_REPLACEMENTS = {"requantize": requantize_f64, "int_gelu": int_gelu_blocked}
