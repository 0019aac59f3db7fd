"""The compiled backend's kernels: one fused numba pass per I-BERT op, rows in parallel.

Every kernel here computes exactly the integers of the NumPy exact datapath
(:class:`~ibert_ref.datapath.ExactDatapath` running :mod:`ibert_ref.kernels`), element for
element: the same int64 operations in the same order (NumPy's int64 arithmetic wraps, and so
does numba's), the same floors (``>>`` is an arithmetic shift, ``//`` on signed integers is
floor division in numba as in NumPy), the same round-half-to-even. Where the reference would
raise (a value outside the range its exact primitive supports, a zero divisor), the kernel
counts the row as *refused* and returns the count; the caller then runs the NumPy kernel,
which raises the reference's own error. ``tests/test_compiled_backend.py`` checks each kernel
against the NumPy reference with Hypothesis (near-ties, extreme constants, int8..int64 inputs).

Arrays are 2-D C-contiguous ``(rows, cols)``: every op's leading axes flattened, the last axis
the one a reduction runs along or a per-channel constant is indexed by. Per-channel constants
are int64 vectors of length ``cols`` (the caller broadcasts per-tensor ones). Rows run in
parallel (``prange``); each row is written by one thread only, so the result does not depend
on the thread count. ``cache=True``: compiled machine code is cached on disk and reused by
later processes (first call in a fresh cache: a few seconds per signature).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: |values| reached by the two-limb reference before it saturates (intops.SATURATION_I64).
SAT = np.int64(1 << 62)
_LIMB = 31
_LIMB_MASK = np.int64((1 << 31) - 1)


@njit(cache=True, inline="always")
def clamp(v, lo, hi):
    """``min(max(v, lo), hi)``: saturation to a signed width ``[lo, hi]`` (int64 in, int64 out)."""
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


@njit(cache=True, inline="always")
def msr_rne(z, m, e):
    """``rne(z * m / 2^e)`` for int64 ``|z| < 2^62``, ``|m| <= 2^31``, ``e >= 0`` (caller-checked),
    saturated to ``[-2^62, 2^62]`` — :func:`ibert_ref.intops.mul_shift_round` with
    ``rounding="half_even"``, one element.

    Sign folded into ``z`` (``z' = -z`` when ``m < 0``, ``m' = |m|``). If ``|z'| <= 2^31`` the
    product ``p = z' m'`` is exact in int64 (``|p| <= 2^62``): ``q = p >> e`` (floor),
    ``rem = p - q 2^e`` in ``[0, 2^e)``, ``q + 1`` iff ``rem > 2^(e-1)`` or (``rem = 2^(e-1)``
    and ``q`` odd); ``e >= 63`` gives 0 (``|p / 2^e| <= 1/2``, a tie rounds to even 0).
    Otherwise the reference's two limbs: ``z' = z_hi 2^31 + z_lo`` (``0 <= z_lo < 2^31``),
    ``p_lo = z_lo m'`` (< 2^62), ``c = z_hi m' + (p_lo >> 31)``, ``r_lo = p_lo & (2^31 - 1)``,
    so ``z' m' = c 2^31 + r_lo`` (93 bits); ``e >= 31``: quotient ``c >> (e - 31)``, the
    remainder compared to one half from ``c``'s low bits and ``r_lo``; ``e < 31``: quotient
    ``c 2^(31 - e) + (r_lo >> e)``, saturated to ``±2^62`` when ``|c| > 2^(31 + e)``.
    """
    if m < 0:
        z = -z
        m = -m
    if -(1 << 31) <= z <= (1 << 31):
        p = z * m
        if e == 0:
            return p
        if e >= 63:
            return np.int64(0)
        q = p >> e
        rem = p - (q << e)
        half = np.int64(1) << (e - 1)
        if rem > half or (rem == half and (q & 1) == 1):
            q += 1
        return q
    z_hi = z >> _LIMB
    z_lo = z & _LIMB_MASK
    p_lo = z_lo * m
    c = z_hi * m + (p_lo >> _LIMB)
    r_lo = p_lo & _LIMB_MASK
    if e >= _LIMB:
        k = e - _LIMB
        if k > 62:
            return np.int64(0)
        q = c >> k
        if k >= 1:
            c_rem = c - (q << k)
            half_c = np.int64(1) << (k - 1)
            gt = c_rem > half_c or (c_rem == half_c and r_lo > 0)
            eq = c_rem == half_c and r_lo == 0
        else:
            gt = r_lo > (1 << 30)
            eq = r_lo == (1 << 30)
        if gt or (eq and (q & 1) == 1):
            q += 1
        return q
    lim = np.int64(1) << (_LIMB + e)
    if c > lim:
        return SAT
    if c < -lim:
        return -SAT
    q = (c << (_LIMB - e)) + (r_lo >> e)
    if e > 0:
        r = r_lo & ((np.int64(1) << e) - 1)
        half = np.int64(1) << (e - 1)
        if r > half or (r == half and (q & 1) == 1):
            q += 1
    if q > SAT:
        return SAT
    if q < -SAT:
        return -SAT
    return q


@njit(cache=True, inline="always")
def isqrt_i64(n):
    """``floor(sqrt(n))`` for int64 ``0 <= n < 2^62`` (caller-checked), as
    :func:`ibert_ref.backends.fast_intops.isqrt_floor_fast`: ``r = int(sqrt(float64(n)))`` is within 1 of the
    root (two roundings of relative error <= 2^-53 on a root below 2^31), then
    ``r -= [r^2 > n]`` and ``r += [(r + 1)^2 <= n]``, exact in int64."""
    r = np.int64(np.sqrt(np.float64(n)))
    if r * r > n:
        r -= 1
    if (r + 1) * (r + 1) <= n:
        r += 1
    return r


@njit(cache=True, inline="always")
def floor_div(a, b, inv_b):
    """``floor(a / b)`` for int64 ``a`` and ``b != 0`` (``inv_b = fl(1 / b)``), as NumPy's
    ``floor_divide``. For ``|a|, |b| < 2^50`` the float estimate ``floor(a * inv_b)`` (relative
    error below 2^-51, so off by at most 1) is corrected exactly: with ``r = a - b q``, the
    floor quotient is the ``q`` with ``0 <= r / b < 1`` (``b < r <= 0`` for ``b < 0``,
    ``0 <= r < b`` for ``b > 0``). Otherwise integer ``//`` (floor in numba, as in NumPy)."""
    lim = np.int64(1) << 50
    if -lim < a < lim and -lim < b < lim:
        q = np.int64(np.floor(np.float64(a) * inv_b))
        r = a - b * q
        if b < 0:
            if r > 0:
                q -= 1
            elif r <= b:
                q += 1
        else:
            if r < 0:
                q -= 1
            elif r >= b:
                q += 1
        return q
    return a // b


#: Integers up to 2^53 are exact in float64.
F64_EXACT = np.int64(1 << 53)
#: Rows per parallel chunk of the requantization kernels (each chunk owns its scratch rows).
_CHUNKS = 16


@njit(cache=True, inline="always")
def chunk_step(rows):
    """Rows per chunk of a parallel row loop: ``ceil(rows / _CHUNKS)``, at least 1. The loop
    runs :func:`chunk_count` chunks on ``prange``, chunk ``c`` over rows
    ``[c * step, min(rows, (c + 1) * step))`` with its own scratch rows."""
    return max(1, -(-rows // _CHUNKS))


@njit(cache=True, inline="always")
def chunk_count(rows, step):
    """``ceil(rows / step)``: the chunks of a parallel row loop (:func:`chunk_step`)."""
    return -(-rows // step)


@njit(cache=True, inline="always")
def row_max(s_row):
    """``max(s_row)`` as int64 (a row of raw attention scores, int32 or int64, non-empty)."""
    mx = np.int64(s_row[0])
    for j in range(1, s_row.shape[0]):
        v = np.int64(s_row[j])
        if v > mx:
            mx = v
    return mx


@njit(cache=True)
def dyadic_route(z, zlim, dmax):
    """Which exact route computes ``rne(z[j] * m[j] / 2^e[j])`` for the row ``z`` (see
    :func:`dyadic_row`): 0 float64 exact, 1 float64 with near-tie detection, 2 two-limb
    integers, -1 refused (some ``|z| >= 2^62``: the reference raises). ``zlim`` and ``dmax``
    as in :func:`dyadic_row`."""
    zmax = row_abs_max(z)
    if zmax >= SAT or zmax < 0:
        return -1
    if zmax <= zlim:
        return 0
    if zlim >= 0 and zmax <= F64_EXACT and np.float64(zmax) * dmax < 2.0**49:
        return 1
    return 2


@njit(cache=True)
def dyadic_row(z, m, e, d, zlim, dmax, tmp):
    """``tmp[j] = msr_rne(z[j], m[j], e[j])`` for every ``j`` of the row ``z`` (the exact
    ``rne(z * m / 2^e)``, :func:`msr_rne`), by the cheapest route that is exact for this row
    (:func:`dyadic_route`). Returns 1 (row refused: some ``|z| >= 2^62``) or 0.

    ``d[j] = m[j] * 2^-e[j]`` (float64, exact: ``|m| <= 2^31``, ``e <= 1000``),
    ``zlim = floor((2^53 - 1) / max|m|)`` (``-1`` disables the float routes),
    ``dmax = max |d|``; ``Z = max_j |z[j]|``:

    * route 0, ``Z <= zlim``: ``|z * m| < 2^53``, so ``z * d`` is exact in float64 (its
      significand is ``z * m``) and ``rint`` (round half to even) gives the exact result.
    * route 1, ``Z <= 2^53`` and ``B = Z * dmax < 2^49``: ``y = fl(z * d)`` is within
      ``2^-53 |v|`` of ``v = z * m / 2^e``; ``rint(y)`` can differ from ``rne(v)`` only if
      ``|y - rint(y)| >= 1/2 - eps`` with ``eps = B * 2^-51`` (a half-integer within ``eps`` of
      ``y``; ``y - rint(y)`` is exact). If no element of the row is that close (checked with
      the margin ``B * 2^-50``), the float results stand; otherwise route 2 recomputes the row.
    * route 2: every element with :func:`msr_rne` (93-bit products in two limbs).
    """
    cols = z.shape[0]
    route = dyadic_route(z, zlim, dmax)
    if route < 0:
        return 1
    if route == 0:
        for j in range(cols):
            tmp[j] = np.int64(np.rint(np.float64(z[j]) * d[j]))
        return 0
    if route == 1:
        thr = 0.5 - np.float64(row_abs_max(z)) * dmax * 2.0**-50
        near = 0
        for j in range(cols):
            y = np.float64(z[j]) * d[j]
            r = np.rint(y)
            near += abs(y - r) >= thr
            tmp[j] = np.int64(r)
        if near == 0:
            return 0
    for j in range(cols):
        tmp[j] = msr_rne(np.int64(z[j]), m[j], e[j])
    return 0


@njit(cache=True)
def row_abs_max(z):
    """``max_j |z[j]|`` of a row as int64, or -1 if some ``z[j] = -2^63`` (its negation wraps:
    callers refuse the row, as the reference refuses ``|z| >= 2^62``)."""
    zmax = np.int64(0)
    wrapped = 0
    for j in range(z.shape[0]):
        v = np.int64(z[j])
        a = v if v >= 0 else -v
        wrapped += a < 0
        if a > zmax:
            zmax = a
    return np.int64(-1) if wrapped else zmax


@njit(cache=True, inline="always")
def requantize_row_into(z, m, e, d, zlim, dmax, tmp, lo, hi, out_row):
    """One row: ``out_row = clamp(rne(z * m / 2^e), lo, hi)`` by the routes of :func:`dyadic_row`
    (``tmp`` its int64 scratch row). Returns 1 if the row is refused (``out_row`` untouched),
    else 0."""
    if dyadic_row(z, m, e, d, zlim, dmax, tmp):
        return 1
    for j in range(out_row.shape[0]):
        out_row[j] = clamp(tmp[j], lo, hi)
    return 0


@njit(parallel=True, cache=True)
def requantize_rows(z, m, e, d, zlim, dmax, lo, hi, out):
    """QuantAct / FixedPointMul: ``out = clamp(rne(z * m / 2^e), lo, hi)``.

    ``z`` (rows, C) int8, int32 or int64, ``m``/``e`` int64 (C,) (per channel; ``|m| <= 2^31``,
    ``0 <= e``), with ``d``/``zlim``/``dmax`` as in :func:`dyadic_row`; rounding half to even on
    the exact rational (up to 93-bit products), ``lo``/``hi`` the ``bits``-wide signed range,
    ``out`` (rows, C) of the narrowest integer type holding it. Route 0 rows (the usual case)
    are rounded and clamped in float64 in one pass (the clamp bounds are integers, exact).
    Returns the number of refused rows (``|z| >= 2^62``, where the reference raises
    OverflowError; their ``out`` unspecified).
    """
    rows, cols = z.shape
    step = chunk_step(rows)
    lo_f, hi_f = np.float64(lo), np.float64(hi)
    refused = 0
    for c in prange(chunk_count(rows, step)):
        tmp = np.empty(cols, dtype=np.int64)
        for i in range(c * step, min(rows, (c + 1) * step)):
            if dyadic_route(z[i], zlim, dmax) == 0:
                for j in range(cols):
                    out[i, j] = min(max(np.rint(np.float64(z[i, j]) * d[j]), lo_f), hi_f)
                continue
            refused += requantize_row_into(z[i], m, e, d, zlim, dmax, tmp, lo, hi, out[i])
    return refused


@njit(cache=True, inline="always")
def gelu_value(x, b, c, one):
    """IntGELU of one int64 ``x`` with its channel's constants:
    ``x * (floor(sign(x) * ((min(|x|, -b) + b)^2 + c) / 2^14) + one)``, int64 wrapping as NumPy's."""
    a = x if x >= 0 else -x
    nb = -b
    if nb < a:
        a = nb
    a = a + b
    a = a * a + c
    if x < 0:
        a = -a
    elif x == 0:
        a = np.int64(0)
    return x * ((a >> 14) + one)


@njit(parallel=True, cache=True)
def requantize_linear_rows(acc, bias, gelu, gb, gc, gone, m, e, d, zlim, dmax,
                           residual, z_id, m_id, e_id, d_id, zlim_id, dmax_id, lo, hi, out):
    """QuantAct / FixedPointMul of a QuantLinear accumulator in one pass, its bias (and IntGELU)
    fused, with or without a residual:

    ``z = acc + bias`` (int64), then if ``gelu``: ``z = gelu_value(z)`` (:func:`gelu_value`, the
    per-channel constants ``gb``/``gc``/``gone``), then
    ``out = clamp(rne(z * m / 2^e) [+ rne(z_id * m_id / 2^e_id)], lo, hi)``,

    each term by the routes of :func:`dyadic_row` (saturated to ``±2^62`` like the reference;
    the int64 sum of the two terms wraps exactly as NumPy's). The same integers as
    materialising ``acc + bias`` (and IntGELU's int64 output) and requantizing it, without
    writing or reading them. ``acc`` (rows, C) int32/int64 (a plain QuantAct input with
    ``bias`` zeros), constants int64 (C,); ``residual`` false: ``z_id`` and its multiplier are
    not read (any arrays of those types), else ``z_id`` (rows, C) int8 or int64. Returns the
    number of refused rows (``|z|`` or ``|z_id| >= 2^62``: the reference raises)."""
    rows, cols = acc.shape
    step = chunk_step(rows)
    refused = 0
    for c in prange(chunk_count(rows, step)):
        zb = np.empty(cols, dtype=np.int64)
        tmp = np.empty(cols, dtype=np.int64)
        tmp_id = np.empty(cols, dtype=np.int64)
        for i in range(c * step, min(rows, (c + 1) * step)):
            if gelu:
                for j in range(cols):
                    zb[j] = gelu_value(np.int64(acc[i, j]) + bias[j], gb[j], gc[j], gone[j])
            else:
                for j in range(cols):
                    zb[j] = np.int64(acc[i, j]) + bias[j]
            if not residual:
                refused += requantize_row_into(zb, m, e, d, zlim, dmax, tmp, lo, hi, out[i])
            elif dyadic_row(zb, m, e, d, zlim, dmax, tmp) or dyadic_row(z_id[i], m_id, e_id, d_id, zlim_id, dmax_id, tmp_id):
                refused += 1
            else:
                for j in range(cols):
                    v = tmp_id[j] + tmp[j]
                    out[i, j] = clamp(v, lo, hi)
    return refused


@njit(parallel=True, cache=True)
def int_exp_rows(s, x0_int, x0_30, b_int, c_int, m, e, lo, hi, out):
    """i-exp with its 16-bit requantization (IntSoftmax's ``act``), one row of scores at a time.

    ``s`` (rows, T) int32/int64 raw scores (masked keys hold ``-2^62``); per row, int64:

    1. ``x = max(s - max_row(s), x0_30)``
    2. ``z_q = floor(x / x0_int)`` (``x0_int < 0``), ``r = x - x0_int * z_q``
    3. ``poly = (r + b_int) * r + c_int``, then ``max(poly, 0)``
    4. ``out = clamp(rne(poly * m / 2^(e - 30 + z_q)), lo, hi)``: ``exp_int = poly * 2^(30 - z_q)``
       never materialised, its left shift folded into the requantization shift, as the exact
       datapath's ``exp_requantize``.

    Floors in 1-3, round half to even in 4, by the routes of :func:`dyadic_row` (float64 with
    ``d = m * 2^-(e - 30 + z_q)`` from a table over ``z_q`` in [0, 30] when exact or repairable
    for the row, else :func:`msr_rne`). Returns the number of refused rows (a negative shift
    or ``poly >= 2^62`` somewhere in the row: the reference raises).
    """
    rows, cols = s.shape
    inv_x0 = 1.0 / np.float64(x0_int)
    m_abs = m if m >= 0 else -m
    plim = (F64_EXACT - 1) // m_abs if m_abs > 0 else SAT
    table = np.empty(31, dtype=np.float64)
    for k in range(31):
        sh = e - 30 + k
        table[k] = np.ldexp(np.float64(m), -sh) if 0 <= sh <= 1000 else np.nan
    step = chunk_step(rows)
    refused = 0
    for c in prange(chunk_count(rows, step)):
        poly_row = np.empty(cols, dtype=np.int64)
        zq_row = np.empty(cols, dtype=np.int64)
        for i in range(c * step, min(rows, (c + 1) * step)):
            mx = row_max(s[i])
            pmax = np.int64(0)
            zq_lo = SAT
            in_table = True
            for j in range(cols):
                x = np.int64(s[i, j]) - mx
                if x < x0_30:
                    x = x0_30
                zq = floor_div(x, x0_int, inv_x0)
                r = x - x0_int * zq
                poly = (r + b_int) * r + c_int
                if poly < 0:
                    poly = np.int64(0)
                poly_row[j] = poly
                zq_row[j] = zq
                if poly > pmax:
                    pmax = poly
                if zq < zq_lo:
                    zq_lo = zq
                if zq < 0 or zq > 30 or e - 30 + zq > 1000:
                    in_table = False
            if pmax >= SAT or e - 30 + zq_lo < 0:
                refused += 1
                continue
            done = False
            if in_table and pmax <= plim:
                for j in range(cols):
                    v = np.int64(np.rint(np.float64(poly_row[j]) * table[zq_row[j]]))
                    out[i, j] = clamp(v, lo, hi)
                done = True
            elif in_table and pmax <= F64_EXACT and np.float64(pmax) * abs(table[zq_lo]) < 2.0**49:
                thr = 0.5 - np.float64(pmax) * abs(table[zq_lo]) * 2.0**-50
                near = 0
                for j in range(cols):
                    y = np.float64(poly_row[j]) * table[zq_row[j]]
                    r = np.rint(y)
                    near += abs(y - r) >= thr
                    v = np.int64(r)
                    out[i, j] = clamp(v, lo, hi)
                done = near == 0
            if not done:
                for j in range(cols):
                    v = msr_rne(poly_row[j], m, e - 30 + zq_row[j])
                    out[i, j] = clamp(v, lo, hi)
    return refused


#: Marks a table entry where the reference raises (see :func:`int_exp_table`).
TABLE_REFUSED = np.int32(-(1 << 31))


@njit(cache=True)
def int_exp_table(x0_int, x0_30, b_int, c_int, m, e, lo, hi):
    """i-exp with its 16-bit requantization as a table over the clamped difference
    ``x = max(s - max_row(s), x0_30)``, which takes only the values ``x0_30 .. 0``
    (``x0_30 <= 0``): entry ``x - x0_30`` is the result of steps 2-4 of :func:`int_exp_rows`
    for that ``x``, computed exactly (``z_q = floor(x / x0_int)``, ``r = x - x0_int z_q``,
    ``poly = max((r + b_int) r + c_int, 0)``, ``clamp(msr_rne(poly, m, e - 30 + z_q), lo, hi)``),
    int32. An entry where the reference raises (negative shift, ``poly >= 2^62``) holds
    :data:`TABLE_REFUSED`. The result depends on ``x`` alone, so a lookup is the same integer."""
    n = -x0_30 + 1
    table = np.empty(n, dtype=np.int32)
    inv_x0 = 1.0 / np.float64(x0_int)
    for k in range(n):
        x = x0_30 + k
        zq = floor_div(x, x0_int, inv_x0)
        r = x - x0_int * zq
        poly = (r + b_int) * r + c_int
        if poly < 0:
            poly = np.int64(0)
        shift = e - 30 + zq
        if shift < 0 or poly >= SAT:
            table[k] = TABLE_REFUSED
            continue
        v = msr_rne(poly, m, shift)
        table[k] = clamp(v, lo, hi)
    return table


@njit(parallel=True, cache=True)
def int_exp_lookup_rows(s, x0_30, table, out):
    """i-exp with its 16-bit requantization by table (:func:`int_exp_table`):
    ``out = table[max(s - max_row(s), x0_30) - x0_30]``, ``s`` (rows, T) int32/int64 scores
    (masked keys ``-2^62``), ``out`` int16. Returns the number of refused elements (an entry
    marked :data:`TABLE_REFUSED` was needed: the reference raises)."""
    rows, cols = s.shape
    refused = 0
    for i in prange(rows):
        mx = row_max(s[i])
        bad = 0
        for j in range(cols):
            x = np.int64(s[i, j]) - mx
            if x < x0_30:
                x = x0_30
            v = table[x - x0_30]
            bad += v == TABLE_REFUSED
            out[i, j] = v
        refused += bad
    return refused


@njit(parallel=True, cache=True)
def softmax_normalize_rows(e, shift, out):
    """IntSoftmax's normalisation: ``factor = floor(2^32 / sum_row(e))``,
    ``out = floor(e * factor / 2^shift)`` (``shift = 32 - out_bits``), int64 arithmetic.

    ``e`` (rows, T) int16..int64, ``out`` (rows, T) int16. Returns the number of refused rows:
    a negative ``e`` (the result could leave int16; the reference then decides) or a sum
    ``<= 0`` (the reference raises ZeroDivisionError). With ``e >= 0`` every output is in
    ``[0, 2^(32 - shift)]``.
    """
    rows, cols = e.shape
    refused = 0
    for i in prange(rows):
        total = np.int64(0)
        negative = False
        for j in range(cols):
            v = np.int64(e[i, j])
            if v < 0:
                negative = True
            total += v
        if negative or total <= 0:
            refused += 1
            continue
        factor = (np.int64(1) << 32) // total
        for j in range(cols):
            out[i, j] = (np.int64(e[i, j]) * factor) >> shift
    return refused


@njit(parallel=True, cache=True)
def int_gelu_rows(x, bias, b, c, one, out):
    """IntGELU: ``out = z * (floor(sign(z) * ((min(|z|, -b) + b)^2 + c) / 2^14) + one)`` with
    ``z = x + bias`` (:func:`gelu_value`; ``bias`` a QuantLinear bias not yet added, else zeros).

    ``x`` (rows, C) int32/int64, ``bias``/``b``/``c``/``one`` int64 (C,), ``out`` (rows, C) int64
    (about 40 bits on roberta-base-sized layers). int64 throughout, wrapping as NumPy's
    (``|z|`` of ``-2^63`` is ``-2^63``); the floor is an arithmetic shift. Never refuses.
    """
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            out[i, j] = gelu_value(np.int64(x[i, j]) + bias[j], b[j], c[j], one[j])
    return 0


@njit(parallel=True, cache=True)
def layernorm_stats_rows(x, shift, mean, factor):
    """IntLayerNorm's per-row integers, for each row of ``D`` channels (int64):

    ``mean = rne(sum(x) / D)`` (floor quotient ``q``, remainder ``r``: ``q + 1`` iff
    ``2r > D`` or ``2r = D`` and ``q`` odd), ``var = sum(floor((x - mean) / 2^shift)^2)``,
    ``std = isqrt(var) * 2^shift`` (:func:`isqrt_i64`), ``factor = floor(2^31 / std)``, written
    to ``mean`` and ``factor`` (rows,). ``x`` (rows, D) int32/int64, ``0 <= shift < 63``.
    Returns the number of refused rows (``var`` outside ``[0, 2^62)`` or ``std <= 0``: the
    reference raises — ZeroDivisionError for a constant row — at this op).
    """
    rows, cols = x.shape
    refused = 0
    for i in prange(rows):
        total = np.int64(0)
        for j in range(cols):
            total += np.int64(x[i, j])
        q = total // cols
        r2 = 2 * (total - q * cols)
        mu = q
        if r2 > cols or (r2 == cols and (q & 1) == 1):
            mu += 1
        var = np.int64(0)
        for j in range(cols):
            ys = (np.int64(x[i, j]) - mu) >> shift
            var += ys * ys
        mean[i] = mu
        factor[i] = 0
        if var < 0 or var >= SAT:
            refused += 1
            continue
        std = isqrt_i64(var) * (np.int64(1) << shift)
        if std <= 0:
            refused += 1
            continue
        factor[i] = (np.int64(1) << 31) // std
    return refused


@njit(parallel=True, cache=True)
def layernorm_apply_rows(x, mean, factor, bias, out):
    """IntLayerNorm's output from its row integers (:func:`layernorm_stats_rows`):
    ``out = floor((x - mean) * factor / 2) + bias``, int64 (``bias`` (D,) per channel; about 31
    bits). Floors only."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            out[i, j] = (((np.int64(x[i, j]) - mean[i]) * factor[i]) >> 1) + bias[j]
    return 0


@njit(parallel=True, cache=True)
def add_bias_rows(acc, b, out):
    """QuantLinear's bias: ``out = acc + b`` (``acc`` (rows, N) int32 from the exact GEMM,
    ``b`` int64 (N,)), summed in int64, written to ``out`` (int32: the caller proved
    ``K * max|x| * max|w| + max|b| < 2^31``). No rounding."""
    rows, cols = acc.shape
    for i in prange(rows):
        for j in range(cols):
            out[i, j] = np.int64(acc[i, j]) + b[j]
    return 0


@njit(parallel=True, cache=True)
def scores_from_f32(s, keep, heads, out):
    """Attention scores from an exact float32 GEMM: ``out = int(s)`` where the key is live,
    ``-2^62`` where ``keep == 0`` (the exact datapath's minus-infinity sentinel).

    ``s`` (B * heads * T, T) float32 holding integers below 2^24 (exact), ``keep`` (B, T)
    uint8, ``out`` (B * heads * T, T) int32 (no mask) or int64.
    """
    rows, cols = s.shape
    per_batch = rows // keep.shape[0]
    for i in prange(rows):
        bi = i // per_batch
        for j in range(cols):
            if keep[bi, j] != 0:
                out[i, j] = np.int64(s[i, j])
            else:
                out[i, j] = -SAT
    return 0


@njit(parallel=True, cache=True)
def merge_heads_rows(ctx, colsum, plus, out):
    """Attention context, heads merged, from a per-head GEMM ``ctx`` (B, heads, T, hd):

    * ``plus`` false: ``out[b, t, h * hd + d] = int32(ctx[b, h, t, d])`` — ``ctx`` from an
      exact float32 GEMM (integers below 2^24, exact); ``colsum`` not read;
    * ``plus`` true: ``out[b, t, h * hd + d] = ctx[b, h, t, d] + 128 * colsum[b, h, d]`` (int32)
      — ``ctx`` the int8 GEMM of :func:`probs_minus_128` and ``colsum`` the per-head column
      sums of V, so the sum is ``sum_s P[t, s] V[s, d]`` exactly."""
    nb, nh, nt, hd = ctx.shape
    for bt in prange(nb * nt):
        bi = bt // nt
        ti = bt - bi * nt
        for h in range(nh):
            for d in range(hd):
                if plus:
                    out[bi, ti, h * hd + d] = ctx[bi, h, ti, d] + 128 * colsum[bi, h, d]
                else:
                    out[bi, ti, h * hd + d] = np.int32(ctx[bi, h, ti, d])
    return 0


@njit(parallel=True, cache=True)
def mask_scores(s, keep, out):
    """Masked attention scores: ``out = s`` where the key is live, ``-2^62`` where ``keep == 0``
    (the exact datapath's minus-infinity sentinel). ``s`` (B * heads * T, T) int32 from the
    exact int8 GEMM, ``keep`` (B, T) uint8, ``out`` int64."""
    rows, cols = s.shape
    per_batch = rows // keep.shape[0]
    for i in prange(rows):
        bi = i // per_batch
        for j in range(cols):
            out[i, j] = np.int64(s[i, j]) if keep[bi, j] != 0 else -SAT
    return 0


@njit(parallel=True, cache=True)
def probs_minus_128(p, out):
    """``out = p - 128`` as int8, for probabilities ``p`` in ``[0, 255]``: the int8 operand of the
    context GEMM, ``P V = (P - 128) V + 128 * sum_rows(V)`` (exact). Returns how many ``p`` fall
    outside ``[0, 255]`` (256 — a row with a single live key — or negative: the caller then
    takes another exact route; ``out`` unspecified)."""
    rows, cols = p.shape
    outside = 0
    for i in prange(rows):
        bad = 0
        for j in range(cols):
            v = np.int64(p[i, j])
            bad += v < 0 or v > 255
            out[i, j] = v - 128
        outside += bad
    return outside


@njit(parallel=True, cache=True)
def softmax_rows(s, x0_30, table, shift, minus_128, out):
    """IntSoftmax in one pass per row, from the raw scores: the 16-bit exponentials
    ``e = table[max(s - max_row(s), x0_30) - x0_30]`` (:func:`int_exp_table`, every entry in
    ``[0, 2^15)`` and the ``x = 0`` entry positive: the caller checked), then
    ``p = floor(e * floor(2^32 / sum_row(e)) / 2^shift)`` as :func:`softmax_normalize_rows`,
    written as ``p`` (``minus_128`` false: ``out`` int16) or as ``p - 128`` (``minus_128`` true:
    ``out`` int8, the context GEMM's operand, :func:`probs_minus_128`). Returns the number of
    ``p`` above 255 (with ``minus_128``: their ``out`` wrapped; the caller takes another route).
    The exponentials are the integers :func:`int_exp_lookup_rows` writes; they stay in a row
    buffer instead of memory."""
    rows, cols = s.shape
    over = 0
    step = chunk_step(rows)
    for c in prange(chunk_count(rows, step)):
        ev = np.empty(cols, dtype=np.int64)
        for i in range(c * step, min(rows, (c + 1) * step)):
            mx = row_max(s[i])
            total = np.int64(0)
            for j in range(cols):
                x = np.int64(s[i, j]) - mx
                if x < x0_30:
                    x = x0_30
                ev[j] = table[x - x0_30]
                total += ev[j]
            factor = (np.int64(1) << 32) // total
            bad = 0
            if minus_128:
                for j in range(cols):
                    v = (ev[j] * factor) >> shift
                    bad += v > 255
                    out[i, j] = v - 128
            else:
                for j in range(cols):
                    out[i, j] = (ev[j] * factor) >> shift
            over += bad
    return over


@njit(parallel=True, cache=True)
def layernorm_requantize_rows(x, mean, factor, bias, m, e, d, zlim, dmax, lo, hi, out):
    """IntLayerNorm followed by its QuantAct in one pass per row: the row's IntLayerNorm output
    ``y = floor((x - mean) * factor / 2) + bias`` (:func:`layernorm_apply_rows`' integers, from
    :func:`layernorm_stats_rows`) kept in a row buffer, then ``out = clamp(rne(y * m / 2^e),
    lo, hi)`` by the routes of :func:`dyadic_row`. Returns the number of refused rows (the
    caller then runs the unfused requantization, which raises the reference's error)."""
    rows, cols = x.shape
    refused = 0
    step = chunk_step(rows)
    for c in prange(chunk_count(rows, step)):
        y = np.empty(cols, dtype=np.int64)
        tmp = np.empty(cols, dtype=np.int64)
        for i in range(c * step, min(rows, (c + 1) * step)):
            for j in range(cols):
                y[j] = (((np.int64(x[i, j]) - mean[i]) * factor[i]) >> 1) + bias[j]
            refused += requantize_row_into(y, m, e, d, zlim, dmax, tmp, lo, hi, out[i])
    return refused

