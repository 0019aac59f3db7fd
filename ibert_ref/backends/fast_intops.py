"""Fast exact integer primitives: the integers of :mod:`ibert_ref.intops`, computed on floats.

Each function here returns exactly the integers of its reference in :mod:`ibert_ref.intops`
(tests/test_fast_path.py checks it on random and corner-case inputs, Hypothesis and edge
cases): it only picks a cheaper way to compute them when the operands' ranges allow, and
falls back to the reference otherwise. The ranges are read off the operands at each call
(``max|z|`` etc.), never assumed. Three facts carry every proof:

* integers up to 2^24 are exact in float32 and up to 2^53 in float64, so a GEMM or a product
  whose every partial result is an integer below that bound is exact, in any order;
* ``m * 2^-e`` is exact in float64 (a 31-bit ``m``, ``0 <= e <= 1000``);
* float64 ``rint`` is round half to even of the exact value when the value is exact.

Used by the NumPy backend (:mod:`ibert_ref.backends.fast_numpy`) and the compiled backend.
Work on large arrays runs row block by row block (:func:`blockwise`, serial): cache-resident
temporaries, the same integers as one call on the whole array.
"""

from __future__ import annotations

import numpy as np

from ..intops import (
    ROUNDINGS,
    SATURATION_I64,
    abs_bound,
    isqrt_floor,
    matmul_exact_reference,
    mul_shift_round,
    smallest_int_dtype,
)

I64 = np.int64

_NARROW_SIGNED = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))


def clamp_signed_narrow(x: np.ndarray, bits: int) -> np.ndarray:
    """:func:`ibert_ref.intops.clamp_signed`, returned in the narrowest of int8/int16/int32 holding ``bits``
    signed bits (one pass: the clip writes the narrow array)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=smallest_int_dtype(lo, hi))
    return np.clip(x, lo, hi, out=out, casting="unsafe")


#: Integers of magnitude up to 2^24 (float32) / 2^53 (float64) are exactly representable.
F32_EXACT_INT = 1 << 24
F64_EXACT_INT = 1 << 53
#: ``1.5 * 2^52``: adding it to a float64 ``|x| < 2^51`` rounds ``x`` to an integer (round
#: half to even, the FPU's default mode) held in the low mantissa bits; subtracting the
#: constant's bit pattern from the sum's bit pattern (as int64) leaves that integer.
ROUND_MAGIC_F64 = 6755399441055744.0
ROUND_MAGIC_BITS = 0x4338000000000000
#: :func:`rint_f64_to_i64` needs ``|x| < 2^51``.
ROUND_MAGIC_LIMIT = 1 << 51
_M_SPLIT = 16  # tier-2 multiplier split: m = m_hi * 2^16 + m_lo, 0 <= m_lo < 2^16
#: Tier 1 of :func:`mul_shift_round_fast`: |z| <= 2^31 and |m| <= 2^31 give |z * m| <= 2^62.
FAST_Z_TIER1 = 1 << 31
#: Tier 2: |z| < 2^46 keeps z * m_hi (< 2^61) and z * m_lo (< 2^62) inside int64.
FAST_Z_TIER2 = 1 << 46


def rint_f64_to_i64(x_f64: np.ndarray) -> np.ndarray:
    """``int64(rint(x))`` (round half to even) for float64 ``|x| < 2^51``, in place.

    ``x + 1.5 * 2^52`` lies in ``[2^52, 2^53)`` where the float64 spacing is 1, so the one
    rounding of that addition is round-half-to-even of ``x`` (the offset is an even integer);
    the sum's bits are ``0x4338000000000000 + rint(x)``. Two cheap passes instead of
    ``rint`` plus a float-to-int conversion. Overwrites ``x_f64``; returns an int64 view of it.
    """
    x_f64 += ROUND_MAGIC_F64
    out = x_f64.view(I64)
    out -= ROUND_MAGIC_BITS
    return out


#: Pipelines of several passes over arrays larger than this run block by block, each block
#: about this many elements (its temporaries stay in the L2 cache instead of streaming from
#: memory once per pass). Scheduling only: every block runs the same kernel on its rows.
BLOCK_ELEMS = 1 << 17


#: Ops over more than this many elements run block by block (:func:`blockwise`); smaller ones
#: whole (blocking a 128 x 3072 op gave no measurable gain).
WHOLE_MAX_ELEMS = 1 << 19


def blockwise(kernel, shape, operands, dtype=I64, into=False):
    """``kernel(*operands)``, evaluated over row blocks of the broadcast result ``shape``.

    ``into=True``: ``kernel`` also takes ``out=`` (a C-contiguous ``dtype`` block of the
    result, or None) and writes its block there, saving one copy per block.

    Each operand either has exactly ``shape`` and is C-contiguous (cut into the same rows as
    the result) or broadcasts along the last axis only (``()``, ``(1,)``, ``(C,)``,
    ``(1, ..., 1, C)``: passed whole to every block). Any other layout, or a result of at most
    ``WHOLE_MAX_ELEMS`` elements, runs ``kernel`` once on the whole arrays. Blocks hold about
    ``BLOCK_ELEMS`` elements and run one after the other. Scheduling only: every block runs
    the same kernel on its own rows, so the integers are those of one whole call.
    """
    shape = tuple(shape)
    size = int(np.prod(shape)) if shape else 1
    if len(shape) < 2 or shape[-1] == 0 or size <= WHOLE_MAX_ELEMS or size // shape[-1] < 2:
        return kernel(*operands)
    cols = shape[-1]
    rows = size // cols
    views = []
    for a in operands:
        a = np.asarray(a)
        if a.shape == shape and a.flags.c_contiguous:
            views.append((True, a.reshape(rows, cols)))
        elif a.ndim <= 1 or all(d == 1 for d in a.shape[:-1]):
            views.append((False, a.reshape(a.shape[-1:]) if a.ndim else a))
        else:
            return kernel(*operands)
    out = np.empty((rows, cols), dtype=dtype)
    step = max(1, BLOCK_ELEMS // cols)
    for r0 in range(0, rows, step):
        blocks = [v[r0 : r0 + step] if cut else v for cut, v in views]
        if into:
            kernel(*blocks, out=out[r0 : r0 + step])
        else:
            out[r0 : r0 + step] = kernel(*blocks)
    return out.reshape(shape)


def _rounding_bias_add_shift(p_i64, e_i64, rounding):
    """``round(p / 2^e)`` for ``|p| <= 2^62``, ``1 <= e <= 62``: ``floor((p + c) / 2^e)``.

    ``c = 2^(e-1) - 1 + (floor(p / 2^e) & 1)`` (half_even), ``2^(e-1)`` (half_up),
    ``2^(e-1) - [p < 0]`` (half_away), ``0`` (floor). ``|p + c| < 2^62 + 2^61``: no overflow.
    """
    if rounding == "floor":
        return p_i64 >> e_i64
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
    half_i64 = I64(1) << (e_i64 - 1)
    if rounding == "half_up":
        out_i64 = p_i64 + half_i64
    elif rounding == "half_even":
        out_i64 = (p_i64 >> e_i64) & 1
        out_i64 += half_i64 - 1
        out_i64 += p_i64
    else:  # half_away
        out_i64 = half_i64 - (p_i64 < 0)
        out_i64 += p_i64
    out_i64 >>= e_i64
    return out_i64


def _mul_shift_round_tier1(z_i64, m_i64, e_i64, rounding):
    """Tier 1: one int64 product ``z * m`` (``|z * m| <= 2^62``), then :func:`_rounding_bias_add_shift`."""
    return _rounding_bias_add_shift(z_i64 * m_i64, e_i64, rounding)


def _mul_shift_round_split(z_i64, m_i64, e_i64, rounding):
    """Tier 2: ``round(z * m / 2^e)`` for ``|z| < 2^46``, ``|m| <= 2^31``, ``17 <= e <= 78``.

    ``X = z * m = A * 2^16 + B`` with ``A = z * m_hi`` (|A| <= 2^61), ``B = z * m_lo``
    (|B| < 2^62), ``m_hi = m >> 16``, ``m_lo = m & 0xFFFF``. With the rounding offset
    ``c = 2^(e-1) + d`` (``d`` in {-1, 0, 1}, see :func:`_rounding_bias_add_shift`):
    ``floor((X + c) / 2^e) = floor((A + 2^(e-17) + floor((B + d) / 2^16)) / 2^(e-16))``
    (nested floors of positive divisors). Every intermediate stays below 2^63.
    """
    m_hi = m_i64 >> _M_SPLIT
    m_lo = m_i64 & ((1 << _M_SPLIT) - 1)
    a_i64 = z_i64 * m_hi
    b_i64 = z_i64 * m_lo
    e_hi = e_i64 - _M_SPLIT
    if rounding == "floor":
        b_i64 >>= _M_SPLIT
        b_i64 += a_i64
        b_i64 >>= e_hi
        return b_i64
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
    if rounding == "half_even":
        q_i64 = b_i64 >> _M_SPLIT  # floor(X / 2^e), for its parity
        q_i64 += a_i64
        q_i64 >>= e_hi
        q_i64 &= 1
        b_i64 += q_i64 - 1
    elif rounding == "half_away":
        negative = (z_i64 < 0) != (m_i64 < 0)
        b_i64 -= negative & (z_i64 != 0) & (m_i64 != 0)
    b_i64 >>= _M_SPLIT
    b_i64 += a_i64
    b_i64 += I64(1) << (e_i64 - (_M_SPLIT + 1))
    b_i64 >>= e_hi
    return b_i64


def _dyadic_f64(m_i64, e_i64):
    """``m * 2^-e`` in float64: exact (``|m| <= 2^31``, ``0 <= e <= 1000`` stays normal)."""
    return np.ldexp(m_i64.astype(np.float64), -e_i64.astype(np.int32))


def _mul_shift_round_f64(z_i64, m_i64, e_i64, rounding, out=None):
    """Tier 0: ``|z * m| < 2^53`` and ``|z * m / 2^e| < 2^51``. ``d = m * 2^-e`` is exact in
    float64 and so is ``z * d`` (its significand ``z * m`` has at most 53 bits); round half
    to even with :func:`rint_f64_to_i64`, or ``floor``. ``out``: an int64 array of the
    result's shape (not overlapping ``z``) that ``half_even`` computes in (its float64 view)."""
    if rounding == "half_even":
        x_f64 = np.multiply(
            z_i64, _dyadic_f64(m_i64, e_i64), dtype=np.float64, out=None if out is None else out.view(np.float64)
        )
        return rint_f64_to_i64(x_f64)
    x_f64 = np.multiply(z_i64, _dyadic_f64(m_i64, e_i64), dtype=np.float64)
    np.floor(x_f64, out=x_f64)
    return x_f64.astype(I64)


def _mul_shift_round_f64_repaired(z_i64, m_i64, e_i64, eps, out=None):
    """Tier F, round half to even: float64 with an exact repair of near-ties.

    ``|z| <= 2^53`` (exact in float64), ``v = z * m / 2^e`` with ``|v| < 2^50``. ``y = z * d``
    is rounded once: ``|y - v| <= 2^-53 |v| < eps``. ``r = rint(y)`` differs from ``rint(v)``
    only if a half-integer lies within ``eps`` of ``y``, i.e. ``|y - r| >= 1/2 - eps``
    (``y - r`` is exact: Sterbenz). Those elements — rare, a ``2 eps`` fraction at most for
    spread-out data — are recomputed with the exact reference :func:`mul_shift_round`.
    """
    y_f64 = np.multiply(z_i64, _dyadic_f64(m_i64, e_i64), dtype=np.float64)
    w_f64 = np.add(y_f64, ROUND_MAGIC_F64, out=None if out is None else out.view(np.float64))  # rint(y) + 1.5 * 2^52
    y_f64 -= w_f64 - ROUND_MAGIC_F64  # y - rint(y), exact
    np.abs(y_f64, out=y_f64)
    near = y_f64 >= 0.5 - eps
    out = w_f64.view(I64)
    out -= ROUND_MAGIC_BITS
    if near.any():
        idx = np.nonzero(near)
        shape = out.shape
        out[idx] = mul_shift_round(
            z_i64[idx], np.broadcast_to(m_i64, shape)[idx], np.broadcast_to(e_i64, shape)[idx], "half_even"
        )
    return out


def mul_shift_round_fast(z_i64, m_i64, e_i64, rounding: str = "half_even") -> np.ndarray:
    """:func:`mul_shift_round` (same integers, same errors), with cheaper kernels by range.

    The work runs block by block (:func:`blockwise`); in each block, with ``Z = max|z|``,
    ``M = max|m|``, ``E = min e``, the first kernel that applies is used:

    * tier 0, ``Z * M < 2^53``, ``Z * M / 2^E < 2^51``, rounding ``half_even`` or ``floor``:
      exact float64 (:func:`_mul_shift_round_f64`): 3 passes. Linear accumulators, int8 and
      16-bit values.
    * tier F, ``half_even``, ``Z <= 2^53``, ``Z * M / 2^E < 2^50``: float64 with the exact
      repair of near-ties (:func:`_mul_shift_round_f64_repaired`): 7 passes. IntGELU
      outputs (~40 bits), IntLayerNorm outputs (~31 bits).
    * tier 1, ``Z <= 2^31``, ``1 <= e <= 62``: one int64 product and a rounding offset
      (:func:`_rounding_bias_add_shift`): 6 passes.
    * tier 2, ``Z < 2^46``, ``17 <= e <= 78``: the 16-bit multiplier split
      (:func:`_mul_shift_round_split`): 12 passes.
    * otherwise the two-limb reference :func:`mul_shift_round` (about 50 passes).

    Reading the range per block keeps ``z`` in cache between the range scan and the kernel.
    ``z`` may be int8/int16/int32 (kept: the products below are int64 or float64).
    """
    z_i64 = np.asarray(z_i64)
    if z_i64.dtype not in _NARROW_SIGNED:
        z_i64 = z_i64.astype(I64, copy=False)
    m_i64 = np.asarray(m_i64, dtype=I64)
    e_i64 = np.asarray(e_i64, dtype=I64)
    if z_i64.size == 0 or m_i64.size == 0 or e_i64.size == 0:
        return mul_shift_round(z_i64, m_i64, e_i64, rounding)
    if int(e_i64.min()) < 0:
        raise ValueError("mul_shift_round needs e >= 0 (a multiplier below 2^31 * 2^-e)")
    m_bound = abs_bound(m_i64)
    if m_bound > (1 << 31):
        raise ValueError("mul_shift_round needs |m| <= 2^31")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
    shape = np.broadcast_shapes(z_i64.shape, m_i64.shape, e_i64.shape)
    if z_i64.shape != shape:  # so that every product below has the output's shape
        z_i64 = np.ascontiguousarray(np.broadcast_to(z_i64, shape))
    if e_i64.shape != shape and not (e_i64.ndim <= 1 or all(d == 1 for d in e_i64.shape[:-1])):
        e_i64 = np.ascontiguousarray(np.broadcast_to(e_i64, shape))
    return blockwise(
        lambda z, m, e, out=None: _mul_shift_round_block(z, m, e, rounding, m_bound, out),
        shape,
        (z_i64, m_i64, e_i64),
        into=True,
    )


def _mul_shift_round_block(z_i64, m_i64, e_i64, rounding, m_bound, out=None):
    """One block of :func:`mul_shift_round_fast`: pick the tier from this block's ranges.
    ``out`` (None, or an int64 block of the result's shape, not overlapping the operands)
    receives the result; the float64 tiers compute in it directly."""
    if out is None:
        return _mul_shift_round_tiers(z_i64, m_i64, e_i64, rounding, m_bound, None)
    res = _mul_shift_round_tiers(z_i64, m_i64, e_i64, rounding, m_bound, out)
    if res is not out:
        out[...] = res
    return out


def _mul_shift_round_tiers(z_i64, m_i64, e_i64, rounding, m_bound, out):
    """The tier choice of :func:`_mul_shift_round_block`."""
    z_bound = abs_bound(z_i64)
    if z_bound >= SATURATION_I64:
        raise OverflowError("mul_shift_round needs |z| < 2^62")
    e_lo, e_hi = int(e_i64.min()), int(e_i64.max())
    product = z_bound * m_bound  # bounds |z * m|; |z * m / 2^e| <= product / 2^e_lo
    if e_hi <= 1000 and rounding in ("half_even", "floor"):
        if product < F64_EXACT_INT and product < ROUND_MAGIC_LIMIT << e_lo:
            return _mul_shift_round_f64(z_i64, m_i64, e_i64, rounding, out)
        if rounding == "half_even" and z_bound <= F64_EXACT_INT and product < (ROUND_MAGIC_LIMIT >> 1) << e_lo:
            eps = float(product) * 2.0 ** -(e_lo + 52)  # >= 2^-53 * max|v|, < 1/4
            return _mul_shift_round_f64_repaired(z_i64, m_i64, e_i64, eps, out)
    if z_bound <= FAST_Z_TIER1 and e_lo >= 1 and e_hi <= 62:
        return _mul_shift_round_tier1(z_i64, m_i64, e_i64, rounding)
    if z_bound < FAST_Z_TIER2 and e_lo >= _M_SPLIT + 1 and e_hi <= 78:
        return _mul_shift_round_split(z_i64, m_i64, e_i64, rounding)
    return mul_shift_round(z_i64, m_i64, e_i64, rounding)


def isqrt_floor_fast(n_i64: np.ndarray) -> np.ndarray:
    """:func:`isqrt_floor` (same roots, same errors) from a float64 square root, corrected.

    ``r = floor(sqrt(float64(n)))`` is within 1 of ``isqrt(n)`` for ``0 <= n < 2^62`` (both
    roundings are relative errors of at most 2^-53 on a root below 2^31), so one exact
    integer step each way fixes it: ``r -= [r^2 > n]``, then ``r += [(r + 1)^2 <= n]``.
    Six array operations instead of the restoring method's 31 steps.
    """
    n_i64 = np.asarray(n_i64, dtype=I64)
    if n_i64.size == 0:
        return isqrt_floor(n_i64)
    if int(n_i64.min()) < 0:
        raise ValueError("isqrt_floor of a negative number")
    if int(n_i64.max()) >= (1 << 62):
        raise OverflowError("isqrt_floor supports n < 2^62")
    r_i64 = np.sqrt(n_i64.astype(np.float64)).astype(I64)
    r_i64 -= r_i64 * r_i64 > n_i64
    r_i64 += (r_i64 + 1) * (r_i64 + 1) <= n_i64
    return r_i64


def matmul_exact(a_int: np.ndarray, b_int: np.ndarray, add_int=None, narrow: bool = False) -> np.ndarray:
    """Exact integer ``a @ b`` (+ ``add``, broadcast: a bias) as int64, on float BLAS.

    Let ``P = max|a| * max|b|`` bound every product; any partial sum of ``k`` products
    (whatever order or blocking the BLAS uses, FMA or not) is an integer of magnitude at
    most ``k * P``. Integers up to 2^24 are exact in float32 and up to 2^53 in float64, so:

    * ``K * P <= 2^24``: one float32 GEMM, every rounding exact (int8 x int8: K <= 1024);
    * else, with ``k_c = floor(2^24 / P)`` (>= 64): float32 GEMMs over K-chunks of ``k_c``,
      each exact, accumulated in float64 (exact below 2^53);
    * else ``K * P < 2^53``: one float64 GEMM;
    * else the int64 reference :func:`matmul_exact_reference`.

    The float result (plus ``add``, exact below 2^51) becomes int64 through
    :func:`rint_f64_to_i64` (an integer-valued float is its own rint). In the one-GEMM case
    with ``K * P + max|add| <= 2^24`` (int8 QuantLinear, K = 768, an int32 bias below ~2^22)
    ``add`` is summed in float32 and the sum cast to int64 in one pass
    (:func:`_float32_acc_to_i64`): every value on the way is an integer of at most 2^24.
    ``narrow=True`` returns that case's result as int32 (it fits), every other case as int64.
    """
    a_int, b_int = np.asarray(a_int), np.asarray(b_int)
    k = a_int.shape[-1]
    if a_int.ndim > 2 and b_int.ndim == 2 and (add_int is None or np.ndim(add_int) <= 1):
        # (B, T, K) x (K, N): one (B*T, K) GEMM, not B of them (BLAS is faster on tall operands)
        out = matmul_exact(a_int.reshape(-1, k), b_int, add_int, narrow)
        return out.reshape(a_int.shape[:-1] + out.shape[-1:])
    per_term = abs_bound(a_int) * abs_bound(b_int)
    add_bound = 0 if add_int is None else abs_bound(add_int)
    k_chunk = F32_EXACT_INT // per_term if per_term else k
    if k == 0 or per_term == 0 or k * per_term + add_bound >= ROUND_MAGIC_LIMIT:
        return _matmul_exact_slow(a_int, b_int, add_int, k * per_term)
    if k_chunk >= k:
        acc = np.matmul(to_float32(a_int), b_int.astype(np.float32))
        if k * per_term + add_bound <= F32_EXACT_INT:
            fused = _float32_acc_to_i64(acc, add_int, np.int32 if narrow else I64)
            if fused is not None:
                return fused
    elif k_chunk >= 64:
        a_f32, b_f32 = to_float32(a_int), b_int.astype(np.float32)
        acc = np.matmul(a_f32[..., :k_chunk], b_f32[..., :k_chunk, :]).astype(np.float64)
        for k0 in range(k_chunk, k, k_chunk):
            acc += np.matmul(a_f32[..., k0 : k0 + k_chunk], b_f32[..., k0 : k0 + k_chunk, :])
    else:
        acc = np.matmul(a_int.astype(np.float64), b_int.astype(np.float64))
    offset = np.float64(ROUND_MAGIC_F64) if add_int is None else np.asarray(add_int).astype(np.float64) + ROUND_MAGIC_F64
    shape = np.broadcast_shapes(acc.shape, np.shape(offset))
    if acc.shape != shape:
        acc = np.broadcast_to(acc, shape)
    return blockwise(_float_acc_to_i64, shape, (acc, offset))


def to_float32(x_int: np.ndarray) -> np.ndarray:
    """``x`` converted to float32 (row block by row block, :func:`blockwise`). Exact for the
    integers :func:`matmul_exact` passes (``|x| <= 2^24``); int8 arrays convert directly."""
    x_int = np.asarray(x_int)
    if x_int.dtype == np.float32:
        return x_int
    return blockwise(_cast_block, x_int.shape, (x_int,), dtype=np.float32, into=True)


def _cast_block(x, out=None):
    if out is None:
        return x.astype(np.float32)
    np.copyto(out, x, casting="unsafe")
    return out


def _float32_acc_to_i64(acc_f32, add_int, dtype=I64):
    """``int64(acc + add)`` in one cast pass, for an integer-valued float32 ``acc`` and an
    integer ``add`` with ``|acc| + |add| <= 2^24`` (caller-checked): ``add`` is exact in
    float32, so is the sum (an integer of magnitude <= 2^24), and its conversion to int64.
    None when ``add`` would broadcast ``acc`` to a larger shape (the caller's general path)."""
    if add_int is None:
        return blockwise(_cast_block_to(dtype), acc_f32.shape, (acc_f32,), dtype=dtype, into=True)
    add_f32 = np.asarray(add_int).astype(np.float32)
    if np.broadcast_shapes(acc_f32.shape, add_f32.shape) != acc_f32.shape:
        return None
    return blockwise(_add_cast_block_to(dtype), acc_f32.shape, (acc_f32, add_f32), dtype=dtype, into=True)


def _cast_block_to(dtype):
    def cast(acc_f32, out=None):
        if out is None:
            out = np.empty(acc_f32.shape, dtype=dtype)
        np.copyto(out, acc_f32, casting="unsafe")
        return out

    return cast


def _add_cast_block_to(dtype):
    def add_cast(acc_f32, add_f32, out=None):
        if out is None:
            out = np.empty(np.broadcast_shapes(acc_f32.shape, add_f32.shape), dtype=dtype)
        np.add(acc_f32, add_f32, out=out, dtype=np.float32, casting="unsafe")
        return out

    return add_cast


def _float_acc_to_i64(acc, offset_f64):
    """``acc + offset - 1.5 * 2^52`` for an integer-valued float ``acc`` and ``offset =
    add + 1.5 * 2^52``: exact while ``|acc + add| < 2^51`` (see :func:`rint_f64_to_i64`)."""
    out = np.add(acc, offset_f64, dtype=np.float64).view(I64)
    out -= ROUND_MAGIC_BITS
    return out


def _matmul_exact_slow(a_int, b_int, add_int, bound):
    """:func:`matmul_exact` beyond float range (or degenerate shapes): float64 or int64 sums."""
    if 0 < bound < F64_EXACT_INT:
        acc = np.matmul(a_int.astype(np.float64), b_int.astype(np.float64)).astype(I64)
    elif bound == 0:
        acc = np.matmul(a_int.astype(I64), b_int.astype(I64))
    else:
        acc = matmul_exact_reference(a_int, b_int)
    return acc if add_int is None else acc + np.asarray(add_int, dtype=I64)
