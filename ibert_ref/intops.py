"""Exact integer primitives on int64 NumPy arrays: the reference (no floats anywhere).

These are the building blocks of the exact datapath (:class:`~ibert_ref.datapath.ExactDatapath`).
Each function states its formula, its rounding rule and the widths it supports. Values wider
than 64 bits (a 40-bit IntGELU product times a 31-bit multiplier is 71 bits) are handled with
two int64 limbs. Every operation is an integer one: shifts, masks, adds, compares, int64
products and sums. Faster routes to the same integers (float BLAS, float64 where it is proven
exact) live apart, in :mod:`ibert_ref.backends.fast_intops`, and are tested equal to these.
"""

from __future__ import annotations

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


def abs_bound(x: np.ndarray) -> int:
    """``max |x|`` as a Python int (int8 arrays: 128 from the dtype, no scan; empty: 0)."""
    x = np.asarray(x)
    if x.size == 0:
        return 0
    if x.dtype == np.int8:
        return 128
    return max(abs(int(x.min())), abs(int(x.max())))


def matmul_exact_reference(a_int: np.ndarray, b_int: np.ndarray) -> np.ndarray:
    """``a @ b`` (NumPy matmul broadcasting) summed in int64, the definition of the product.

    Exact while ``K * max|a| * max|b| < 2^63`` (checked: OverflowError beyond). No BLAS:
    slow on large shapes; the reference that
    :func:`ibert_ref.backends.fast_intops.matmul_exact` (float BLAS) is tested against.
    """
    a_int, b_int = np.asarray(a_int), np.asarray(b_int)
    k = a_int.shape[-1]
    if k * abs_bound(a_int) * abs_bound(b_int) >= (1 << 63):
        raise OverflowError("integer matmul could exceed int64")
    return np.matmul(a_int.astype(I64), b_int.astype(I64))
