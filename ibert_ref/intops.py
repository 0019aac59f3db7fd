"""Exact integer primitives on int64 NumPy arrays (no floats anywhere).

These are the building blocks of the exact datapath. Each function states its formula,
its rounding rule and the widths it supports. Values wider than 64 bits (a 40-bit
IntGELU product times a 31-bit multiplier is 71 bits) are handled with two int64 limbs.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

I64 = np.int64
_LIMB = 31
_LIMB_MASK = (1 << _LIMB) - 1
#: Magnitude beyond which :func:`mul_shift_round` saturates its result. Every consumer
#: clamps to at most 32 bits, so a saturated value always clamps to the same result.
SATURATION_I64 = 1 << 62

ROUNDINGS = ("half_even", "half_up", "half_away", "floor")


def _round_from_parts(q, gt, eq, negative, rounding):
    """Round given floor quotient ``q`` and the remainder's relation to one half."""
    if rounding == "floor":
        return q
    if rounding == "half_up":
        return q + (gt | eq)
    if rounding == "half_even":
        return q + (gt | (eq & ((q & 1) == 1)))
    if rounding == "half_away":
        return q + (gt | (eq & ~negative))
    raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")


def shift_round(x_i64: np.ndarray, shift, rounding: str = "half_even") -> np.ndarray:
    """``round(x / 2^shift)`` for int64 ``x`` and ``0 <= shift``, rounding as named.

    Exact: ``q = x >> s`` (floor), remainder ``x - (q << s)`` compared with ``2^(s-1)``.
    ``rounding`` is ``half_even`` (RNE), ``half_up`` (RHU, ties toward +inf),
    ``half_away`` (RHAZ) or ``floor``. Exact over the whole int64 range and any shift: for
    shift 64 the only tie is ``x = -2^63`` (-1/2), beyond 64 ``|x / 2^shift| < 1/2``.
    """
    x_i64 = np.asarray(x_i64, dtype=I64)
    shift = np.asarray(shift, dtype=I64)
    if np.any(shift < 0):
        raise ValueError("shift_round needs shift >= 0")
    s = np.minimum(shift, 63)
    q = x_i64 >> s
    with np.errstate(over="ignore"):  # x - (q << 63) is in range; only the int64 ops wrap on the way
        rem = x_i64 - (q << s)
    half = np.where(s > 0, I64(1) << np.maximum(s - 1, 0), I64(0))
    gt = np.where(s > 0, rem > half, False)
    eq = np.where(s > 0, rem == half, False)
    out = _round_from_parts(q, gt, eq, x_i64 < 0, rounding)
    if np.any(shift > 63):
        negative = x_i64 < 0
        below_half = np.where(negative & (rounding == "floor"), I64(-1), I64(0))
        tie = (shift == 64) & (x_i64 == np.iinfo(I64).min)
        tie_value = I64(-1) if rounding in ("half_away", "floor") else I64(0)
        out = np.where(shift > 63, np.where(tie, tie_value, below_half), out)
    return out.astype(I64)


def mul_shift_round(z_i64: np.ndarray, m_i64: np.ndarray, e_i64: np.ndarray, rounding: str = "half_even") -> np.ndarray:
    """``round(z * m / 2^e)`` exactly, for ``|z| < 2^62``, ``|m| <= 2^31``, any ``e >= 0``.

    This is dyadic requantization (I-BERT's ``FixedPointMul`` without float64). The
    product ``z * m`` can need 93 bits, so it is held as ``C * 2^31 + P_lo`` with
    ``0 <= P_lo < 2^31`` and ``C`` in int64; the quotient and the remainder's relation to
    one half are then read off the limbs. Rounding as in :func:`shift_round`. Results of
    magnitude above 2^62 saturate to ``±2^62`` (callers clamp to <= 32 bits anyway).
    """
    z_i64 = np.asarray(z_i64, dtype=I64)
    m_i64 = np.asarray(m_i64, dtype=I64)
    e_i64 = np.asarray(e_i64, dtype=I64)
    if np.any(e_i64 < 0):
        raise ValueError("mul_shift_round needs e >= 0 (a multiplier below 2^31 * 2^-e)")
    if np.any(np.abs(m_i64) > (1 << 31)):
        raise ValueError("mul_shift_round needs |m| <= 2^31")
    if np.any(np.abs(z_i64) >= SATURATION_I64):
        raise OverflowError("mul_shift_round needs |z| < 2^62")
    # X = z * m = z' * |m| with z' = z * sign(m)
    z_s = np.where(m_i64 < 0, -z_i64, z_i64)
    m_abs = np.abs(m_i64)
    z_hi = z_s >> _LIMB  # |z_hi| < 2^31
    z_lo = z_s & _LIMB_MASK  # [0, 2^31)
    p_lo = z_lo * m_abs  # [0, 2^62]
    c = z_hi * m_abs + (p_lo >> _LIMB)  # X = c * 2^31 + r_lo
    r_lo = p_lo & _LIMB_MASK
    negative = c < 0

    # Case e >= 31: k = e - 31, quotient = c >> k, remainder = (c mod 2^k) * 2^31 + r_lo.
    k = np.clip(e_i64 - _LIMB, 0, 62)
    q_big = c >> k
    c_rem = c - (q_big << k)
    half_c = I64(1) << np.maximum(k - 1, 0)
    gt_big = np.where(k >= 1, (c_rem > half_c) | ((c_rem == half_c) & (r_lo > 0)), r_lo > (1 << 30))
    eq_big = np.where(k >= 1, (c_rem == half_c) & (r_lo == 0), r_lo == (1 << 30))
    out_big = _round_from_parts(q_big, gt_big, eq_big, negative, rounding)
    # e - 31 > 62: |X / 2^e| < 2^(62 - k) <= 1/2, the rounded value is 0 (floor: -1 if negative).
    tiny = (e_i64 - _LIMB) > 62
    out_big = np.where(tiny, np.where(negative & (rounding == "floor"), I64(-1), I64(0)), out_big)

    # Case e < 31: quotient = c * 2^(31-e) + (r_lo >> e), remainder = r_lo mod 2^e.
    e_small = np.clip(e_i64, 0, _LIMB - 1)
    lim = I64(1) << (_LIMB + e_small)  # |c| <= lim keeps c * 2^(31-e) <= 2^62
    c_sat = np.clip(c, -lim, lim)
    q_small = (c_sat << (_LIMB - e_small)) + (r_lo >> e_small)
    r_small = r_lo & ((I64(1) << e_small) - 1)
    half_s = np.where(e_small > 0, I64(1) << np.maximum(e_small - 1, 0), I64(0))
    gt_small = np.where(e_small > 0, r_small > half_s, False)
    eq_small = np.where(e_small > 0, r_small == half_s, False)
    out_small = _round_from_parts(q_small, gt_small, eq_small, negative, rounding)
    out_small = np.where(c > lim, SATURATION_I64, np.where(c < -lim, -SATURATION_I64, out_small))
    out_small = np.clip(out_small, -SATURATION_I64, SATURATION_I64)

    return np.where(e_i64 >= _LIMB, out_big, out_small).astype(I64)


def div_round_half_even(num_i64: np.ndarray, den: int) -> np.ndarray:
    """``rne(num / den)`` for int64 ``num`` and a positive int ``den`` (exact rational rounding)."""
    num_i64 = np.asarray(num_i64, dtype=I64)
    q, r = np.divmod(num_i64, I64(den))  # floor quotient, 0 <= r < den
    twice = 2 * r
    return q + ((twice > den) | ((twice == den) & ((q & 1) == 1)))


def isqrt_floor(n_i64: np.ndarray) -> np.ndarray:
    """``floor(sqrt(n))`` for int64 ``0 <= n < 2^62``, digit by digit (restoring method).

    One result bit per step, 31 steps, only shifts, adds and compares — the integer
    square root a hardware datapath would use; no float sqrt. Equals ``math.isqrt``.
    """
    n_i64 = np.asarray(n_i64, dtype=I64)
    if np.any(n_i64 < 0):
        raise ValueError("isqrt_floor of a negative number")
    if np.any(n_i64 >= (1 << 62)):
        raise OverflowError("isqrt_floor supports n < 2^62")
    rem = n_i64.copy()
    root = np.zeros_like(n_i64)
    bit = I64(1) << 60
    while bit > 0:
        trial = root + bit
        take = rem >= trial
        rem = np.where(take, rem - trial, rem)
        root = np.where(take, (root >> 1) + bit, root >> 1)
        bit >>= 2
    return root


def clamp_signed(x_i64: np.ndarray, bits: int) -> np.ndarray:
    """Saturate to the signed range ``[-2^(bits-1), 2^(bits-1) - 1]``."""
    return np.clip(x_i64, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def smallest_int_dtype(lo: int, hi: int):
    """The narrowest of int8/int16/int32/int64 holding [lo, hi]."""
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return np.int64


# ---------------------------------------------------------------------------------------
# Fast paths. Each returns exactly the integers of its reference above (tests/test_fast_path.py
# proves it on random and corner-case inputs); it only picks a cheaper way to compute them
# when the operands' ranges allow, and falls back to the reference otherwise.

#: Integers of magnitude up to 2^24 (float32) / 2^53 (float64) are exactly representable.
F32_EXACT_INT = 1 << 24
F64_EXACT_INT = 1 << 53
_M_SPLIT = 16  # tier-2 multiplier split: m = m_hi * 2^16 + m_lo, 0 <= m_lo < 2^16
#: Tier 1 of :func:`mul_shift_round_fast`: |z| <= 2^31 and |m| <= 2^31 give |z * m| <= 2^62.
FAST_Z_TIER1 = 1 << 31
#: Tier 2: |z| < 2^46 keeps z * m_hi (< 2^61) and z * m_lo (< 2^62) inside int64.
FAST_Z_TIER2 = 1 << 46


def abs_bound(x: np.ndarray) -> int:
    """``max |x|`` as a Python int (int8 arrays: 128 from the dtype, no scan; empty: 0)."""
    x = np.asarray(x)
    if x.size == 0:
        return 0
    if x.dtype == np.int8:
        return 128
    return max(abs(int(x.min())), abs(int(x.max())))


# ---------------------------------------------------------------------------------------
# Blocked, multi-threaded evaluation of elementwise integer pipelines (NumPy releases the GIL
# inside its loops). Only *how* the work is scheduled changes: every block runs the same
# kernel on its own rows, so the integers are those of one whole-array call.

#: Arrays smaller than this run as one call on the calling thread.
PARALLEL_MIN_ELEMS = 1 << 16
#: Rows per block are chosen so a block holds about this many elements (fits in L2).
BLOCK_ELEMS = 1 << 15
_pool_lock = threading.Lock()
_pool = None
_num_threads = None


def default_num_threads() -> int:
    """``IBERT_REF_NUM_THREADS`` if set, else the cores this process may run on."""
    env = os.environ.get("IBERT_REF_NUM_THREADS")
    if env:
        n = int(env)
        if n < 1:
            raise ValueError("IBERT_REF_NUM_THREADS must be >= 1")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def get_num_threads() -> int:
    """Threads the fast elementwise kernels use (see :func:`set_num_threads`)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = default_num_threads()
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (1: everything on the calling thread) for the fast elementwise kernels."""
    global _num_threads, _pool
    if int(n) < 1:
        raise ValueError("set_num_threads needs n >= 1")
    with _pool_lock:
        _num_threads = int(n)
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None


def _executor(n):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != n - 1:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="ibert-ref")
        return _pool


def blockwise(kernel, shape, operands, dtype=np.int64):
    """``kernel(*operands)`` evaluated row block by row block, on :func:`get_num_threads` threads.

    ``shape`` is the broadcast result shape ``(..., C)``. Each operand either has exactly that
    shape (it is cut into the same rows as the result) or broadcasts along the last axis only
    (shape ``()``, ``(1,)``, ``(C,)`` or ``(1, ..., 1, C)``: passed whole to every block). Any
    other layout, or a small result, runs ``kernel`` once on the whole arrays.
    """
    size = int(np.prod(shape)) if len(shape) else 1
    if size < PARALLEL_MIN_ELEMS or len(shape) < 2 or shape[-1] == 0:
        return kernel(*operands)
    cols = shape[-1]
    rows = size // cols
    views = []
    for a in operands:
        a = np.asarray(a)
        if a.shape == tuple(shape) and a.flags.c_contiguous:
            views.append((True, a.reshape(rows, cols)))
        elif a.ndim <= 1 or all(d == 1 for d in a.shape[:-1]):
            views.append((False, a.reshape(a.shape[-1:]) if a.ndim else a))
        else:
            return kernel(*operands)
    out = np.empty((rows, cols), dtype=dtype)
    step = max(1, BLOCK_ELEMS // cols)
    n = min(get_num_threads(), rows)

    def work(r0, r1):
        for s in range(r0, r1, step):
            e = min(s + step, r1)
            out[s:e] = kernel(*[v[s:e] if cut else v for cut, v in views])

    bounds = [rows * i // n for i in range(n + 1)]
    if n == 1:
        work(0, rows)
    else:
        futures = [_executor(n).submit(work, bounds[i], bounds[i + 1]) for i in range(1, n)]
        work(bounds[0], bounds[1])
        for f in futures:
            f.result()
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
    """Tier 1 of :func:`mul_shift_round_fast`: one int64 product, then :func:`_rounding_bias_add_shift`."""
    return _rounding_bias_add_shift(z_i64 * m_i64, e_i64, rounding)


def _mul_shift_round_split(z_i64, m_i64, e_i64, rounding):
    """``round(z * m / 2^e)`` for ``|z| < 2^46``, ``|m| <= 2^31``, ``17 <= e <= 78``.

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


#: ``1.5 * 2^52``: adding it to a float64 ``|x| < 2^51`` rounds ``x`` to an integer (round
#: half to even, the FPU's default mode) held in the low mantissa bits; subtracting the
#: constant's bit pattern from the sum's bit pattern (as int64) leaves that integer.
ROUND_MAGIC_F64 = 6755399441055744.0
ROUND_MAGIC_BITS = 0x4338000000000000
#: :func:`rint_f64_to_i64` applies while ``|x| < 2^51``.
ROUND_MAGIC_LIMIT = 1 << 51


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


def _mul_shift_round_f64(z_i64, m_i64, e_i64, rounding):
    """Tier 0 of :func:`mul_shift_round_fast`: ``rint(z * (m * 2^-e))`` in float64 (exact there)."""
    d_f64 = np.ldexp(m_i64.astype(np.float64), -e_i64.astype(np.int32))
    x_f64 = np.multiply(z_i64, d_f64, dtype=np.float64)
    if rounding == "half_even":
        return rint_f64_to_i64(x_f64)
    np.floor(x_f64, out=x_f64)
    return x_f64.astype(I64)


def mul_shift_round_fast(z_i64, m_i64, e_i64, rounding: str = "half_even") -> np.ndarray:
    """:func:`mul_shift_round` (same integers, same errors), with cheaper kernels by range.

    * tier 0, ``max|z| * max|m| < 2^53``, rounding ``half_even`` (``e >= 2``) or ``floor``:
      in float64, ``d = m * 2^-e`` is exact (a 32-bit integer times a power of two) and so is
      ``z * d`` (its significand ``z * m`` has at most 53 bits), so round-half-even
      (:func:`rint_f64_to_i64`, ``|z * d| < 2^51``) or ``floor`` of it is the exact result:
      3 passes (linear accumulators, int8 and 16-bit values).
    * tier 1, ``|z| <= 2^31`` and ``1 <= e <= 62``: the product ``p = z * m`` fits int64
      (``|p| <= 2^62``) and ``round(p / 2^e) = (p + c) >> e`` (see
      :func:`_rounding_bias_add_shift`): 6 int64 operations instead of ~50.
    * tier 2, ``|z| < 2^46`` and ``17 <= e <= 78``: the 16-bit multiplier split of
      :func:`_mul_shift_round_split` (IntGELU outputs, softmax exponentials).
    * otherwise the two-limb reference :func:`mul_shift_round`.

    The tier is chosen once per call from ``max |z|`` and the range of ``e``.
    """
    z_i64 = np.asarray(z_i64, dtype=I64)
    m_i64 = np.asarray(m_i64, dtype=I64)
    e_i64 = np.asarray(e_i64, dtype=I64)
    if z_i64.size == 0 or m_i64.size == 0 or e_i64.size == 0:
        return mul_shift_round(z_i64, m_i64, e_i64, rounding)
    if int(e_i64.min()) < 0:
        raise ValueError("mul_shift_round needs e >= 0 (a multiplier below 2^31 * 2^-e)")
    if abs_bound(m_i64) > (1 << 31):
        raise ValueError("mul_shift_round needs |m| <= 2^31")
    z_bound = abs_bound(z_i64)
    e_lo, e_hi = int(e_i64.min()), int(e_i64.max())
    shape = np.broadcast_shapes(z_i64.shape, m_i64.shape, e_i64.shape)
    if z_i64.shape != shape:  # so that every product below has the output's shape
        z_i64 = np.ascontiguousarray(np.broadcast_to(z_i64, shape))
    m_bound = abs_bound(m_i64)
    if (
        z_bound * m_bound < F64_EXACT_INT
        and ((rounding == "half_even" and e_lo >= 2) or rounding == "floor")
        and e_hi <= 1000
    ):  # |z * m / 2^e| < 2^53 / 2^2 = 2^51: within rint_f64_to_i64's range
        kernel = _mul_shift_round_f64
    elif z_bound <= FAST_Z_TIER1 and e_lo >= 1 and e_hi <= 62:
        kernel = _mul_shift_round_tier1
    elif z_bound < FAST_Z_TIER2 and e_lo >= _M_SPLIT + 1 and e_hi <= 78:
        kernel = _mul_shift_round_split
    else:
        return mul_shift_round(z_i64, m_i64, e_i64, rounding)
    return blockwise(lambda z, m, e: kernel(z, m, e, rounding), shape, (z_i64, m_i64, e_i64))


def isqrt_floor_fast(n_i64: np.ndarray) -> np.ndarray:
    """:func:`isqrt_floor` starting at the highest result bit ``max(n)`` needs.

    The restoring method takes no step while ``bit > rem``: starting at the largest power
    of four ``<= max(n)`` (instead of 2^60) skips exactly those steps, so every root is the
    same. Var < 2^32 (calibrated LayerNorm) needs 16 steps instead of 31.
    """
    n_i64 = np.asarray(n_i64, dtype=I64)
    if n_i64.size == 0:
        return isqrt_floor(n_i64)
    if int(n_i64.min()) < 0:
        raise ValueError("isqrt_floor of a negative number")
    top = int(n_i64.max())
    if top >= (1 << 62):
        raise OverflowError("isqrt_floor supports n < 2^62")
    rem = n_i64.copy()
    root = np.zeros_like(n_i64)
    if top == 0:
        return root
    bit = 1 << (((top.bit_length() - 1) // 2) * 2)
    while bit > 0:
        trial = root + bit
        take = rem >= trial
        np.subtract(rem, trial, out=rem, where=take)
        root >>= 1
        np.add(root, bit, out=root, where=take)
        bit >>= 2
    return root


def matmul_exact_reference(a_int: np.ndarray, b_int: np.ndarray) -> np.ndarray:
    """``a @ b`` (NumPy matmul broadcasting) summed in int64, the definition of the product.

    Exact while ``K * max|a| * max|b| < 2^63`` (checked: OverflowError beyond). No BLAS:
    slow on large shapes; the reference the fast :func:`matmul_exact` is tested against.
    """
    a_int, b_int = np.asarray(a_int), np.asarray(b_int)
    k = a_int.shape[-1]
    if k * abs_bound(a_int) * abs_bound(b_int) >= (1 << 63):
        raise OverflowError("integer matmul could exceed int64")
    return np.matmul(a_int.astype(I64), b_int.astype(I64))


#: Split float GEMMs by rows over :func:`get_num_threads` threads (for a single-threaded BLAS).
THREADED_GEMM = os.environ.get("IBERT_REF_THREADED_GEMM", "0") == "1"


def _matmul_rows(a, b):
    """``np.matmul(a, b)``, its rows (axis -2 of ``a``) split over threads when THREADED_GEMM."""
    n = get_num_threads()
    rows = a.shape[-2] if a.ndim >= 2 else 1
    if not THREADED_GEMM or n == 1 or rows < 2 * n or a.ndim < 2:
        return np.matmul(a, b)
    out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (rows, b.shape[-1]), dtype=np.result_type(a, b))
    bounds = [rows * i // n for i in range(n + 1)]

    def part(i):
        r0, r1 = bounds[i], bounds[i + 1]
        out[..., r0:r1, :] = np.matmul(a[..., r0:r1, :], b)

    futures = [_executor(n).submit(part, i) for i in range(1, n)]
    part(0)
    for f in futures:
        f.result()
    return out


def matmul_exact(a_int: np.ndarray, b_int: np.ndarray, add_int=None) -> np.ndarray:
    """Exact integer ``a @ b`` (+ ``add``, broadcast, e.g. a bias) as int64, on float BLAS.

    Let ``P = max|a| * max|b|`` bound every product; any partial sum of ``k`` products
    (whatever order or blocking the BLAS uses, FMA or not) is an integer of magnitude at
    most ``k * P``. Integers up to 2^24 are exact in float32 and up to 2^53 in float64, so:

    * ``K * P <= 2^24``: one float32 GEMM, every rounding exact (int8 x int8: K <= 1024);
    * else, with ``k_c = floor(2^24 / P)`` (>= 64): float32 GEMMs over K-chunks of ``k_c``,
      each exact, accumulated in float64 (exact below 2^53);
    * else ``K * P < 2^53``: one float64 GEMM;
    * else the int64 reference :func:`matmul_exact_reference`.

    ``add`` is added in float64 while ``K * P + max|add| < 2^53`` (exact), else in int64.
    """
    a_int, b_int = np.asarray(a_int), np.asarray(b_int)
    k = a_int.shape[-1]
    per_term = abs_bound(a_int) * abs_bound(b_int)
    add_bound = 0 if add_int is None else abs_bound(add_int)
    k_chunk = F32_EXACT_INT // per_term if per_term else k
    float32_ok = k > 0 and per_term > 0 and (k_chunk >= k or k_chunk >= 64)
    if float32_ok and k * per_term + add_bound < F64_EXACT_INT:
        if k_chunk >= k:
            acc = _matmul_rows(a_int.astype(np.float32), b_int.astype(np.float32))
        else:
            a_f32, b_f32 = a_int.astype(np.float32), b_int.astype(np.float32)
            acc = _matmul_rows(a_f32[..., :k_chunk], b_f32[..., :k_chunk, :]).astype(np.float64)
            for k0 in range(k_chunk, k, k_chunk):
                acc += _matmul_rows(a_f32[..., k0 : k0 + k_chunk], b_f32[..., k0 : k0 + k_chunk, :])
        if add_int is None:
            return acc.astype(I64)
        out = np.empty(np.broadcast_shapes(acc.shape, np.shape(add_int)), dtype=I64)
        np.add(acc, add_int, out=out, dtype=np.float64, casting="unsafe")  # exact: below 2^53
        return out
    if k == 0 or per_term == 0:
        acc = np.matmul(a_int.astype(I64), b_int.astype(I64))
    elif k * per_term < F64_EXACT_INT:
        acc = np.matmul(a_int.astype(np.float64), b_int.astype(np.float64)).astype(I64)
    else:
        acc = matmul_exact_reference(a_int, b_int)
    return acc if add_int is None else acc + np.asarray(add_int, dtype=I64)
