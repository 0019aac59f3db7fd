"""Bit-exact integer primitives: ARM NEON/SVE2 instructions, NVIDIA dp4a, gemmlowp and TFLite.

Every function here is elementwise (or, for ``sdot``/``smmla``, works on a small trailing block),
takes NumPy integer arrays or Python ints, broadcasts its array arguments, and returns the value
the instruction or library routine produces, bit for bit.  The semantics are those written down
in ``docs/hardware-semantics.md`` (ARM ARM DDI0487 pseudocode, gemmlowp ``fixedpoint.h``, TFLite
``common.cc``).

Notation used in the docstrings (unbounded integers, as in the ARM pseudocode):

- ``>>`` is an arithmetic shift, i.e. ``floor(x / 2^s)``; ``x << s`` is ``x * 2^s``.
- ``wrap_N(x)`` keeps the low N bits and reads them as signed (two's complement).
- ``sat_N(x) = clamp(x, -2^(N-1), 2^(N-1) - 1)``; ``usat_N(x) = clamp(x, 0, 2^N - 1)``.
- Rounding rules: RHU (half up, toward +inf), RHAZ (half away from zero), RNE (half to even),
  floor, RTZ (toward zero).

Conventions:

- Operands must lie in the range of the register they model (e.g. ``[-2^31, 2^31 - 1]`` for a
  32-bit signed lane); anything else raises ``ValueError``.  Non-integer dtypes raise
  ``TypeError``: nothing here silently rounds a float.
- All arithmetic is exact, in int64.  Every formula is arranged so that no int64 intermediate
  can overflow (the bounds are stated where they are tight); no float and no Python-int object
  arrays are used.
- The result has the natural dtype of the destination register (int32 for a 32-bit lane,
  int16/int8 for narrowing ops, uint32 for unsigned ones).  A 0-d result comes back as a NumPy
  scalar of that dtype.
"""

from __future__ import annotations

import numpy as np

from ..intops import shift_round

__all__ = [
    # width helpers
    "wrap",
    "saturate",
    # rounding right shifts of int64
    "shift_floor",
    "shift_trunc",
    "shift_round_half_up",
    "shift_round_half_away",
    "shift_round_half_even",
    # ARM multiplies
    "sqdmulh",
    "sqrdmulh",
    "sqrdmlah",
    "sqrdmlsh",
    # ARM register-controlled shifts
    "sshl",
    "srshl",
    "sqshl",
    "sqrshl",
    "srshl_sve2",
    # ARM immediate shifts and narrowing
    "sshr",
    "srshr",
    "urshr",
    "sqshrn",
    "sqrshrn",
    "sqrshrun",
    "sqxtn",
    "sqxtun",
    # ARM saturating add / subtract
    "sqadd",
    "sqsub",
    # ARM multiply-accumulate (all wrapping)
    "sdot",
    "smmla",
    "smlal",
    # ARM A64 division
    "sdiv",
    "udiv",
    # gemmlowp / TFLite
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
    "multiply_by_quantized_multiplier",
]

_INT64_MAX = (1 << 63) - 1
_MAX_SHIFT_I64 = 63


# ---------------------------------------------------------------------------------------------
# Operand handling
# ---------------------------------------------------------------------------------------------


def _signed_min(bits: int) -> int:
    return -(1 << (bits - 1))


def _signed_max(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def _signed_dtype(bits: int) -> type[np.signedinteger]:
    """Smallest NumPy signed dtype that holds a `bits`-bit signed value."""
    for width, dtype in ((8, np.int8), (16, np.int16), (32, np.int32), (64, np.int64)):
        if bits <= width:
            return dtype
    raise ValueError(f"bits must be at most 64, got {bits}")


def _unsigned_dtype(bits: int) -> type[np.unsignedinteger]:
    for width, dtype in ((8, np.uint8), (16, np.uint16), (32, np.uint32), (64, np.uint64)):
        if bits <= width:
            return dtype
    raise ValueError(f"bits must be at most 64, got {bits}")


def _check_bits(bits: int, allowed: tuple[int, ...], name: str = "bits") -> None:
    if bits not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {bits!r}")


def as_int64(x, name: str, what: str = "an integer array or int") -> np.ndarray:
    """An integer operand as an int64 array (values must fit int64); a ``TypeError`` says
    ``name`` must be ``what``."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be {what}, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _INT64_MAX:
        raise ValueError(f"{name} has values above int64 range")
    return arr.astype(np.int64, copy=False)


def _check_range(x_i64: np.ndarray, lo: int, hi: int, name: str) -> None:
    if x_i64.size == 0:
        return
    x_min, x_max = int(x_i64.min()), int(x_i64.max())
    if x_min < lo or x_max > hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}]; got values in [{x_min}, {x_max}]")


def _signed_operand(x, bits: int, name: str) -> np.ndarray:
    x_i64 = as_int64(x, name)
    _check_range(x_i64, _signed_min(bits), _signed_max(bits), name)
    return x_i64


def _unsigned_operand(x, bits: int, name: str) -> np.ndarray:
    x_i64 = as_int64(x, name)
    _check_range(x_i64, 0, (1 << bits) - 1, name)
    return x_i64


def _result(x_i64, dtype) -> np.ndarray:
    """Cast an (in-range) int64 result to its register dtype; 0-d becomes a NumPy scalar."""
    return np.asarray(x_i64).astype(dtype)[()]


# ---------------------------------------------------------------------------------------------
# Wrapping and saturation
# ---------------------------------------------------------------------------------------------


def _wrap_i64(x_i64: np.ndarray, bits: int) -> np.ndarray:
    """wrap_bits(x) as int64, for 1 <= bits <= 64."""
    if bits == 64:
        return x_i64
    half = 1 << (bits - 1)
    low = x_i64 & ((1 << bits) - 1)  # in [0, 2^bits)
    return np.where(low >= half, (low - half) - half, low)


def _saturate_i64(x_i64: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(x_i64, _signed_min(bits), _signed_max(bits))


def _saturate_unsigned_i64(x_i64: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(x_i64, 0, (1 << bits) - 1)


def wrap(x, bits: int):
    """``wrap_bits(x)``: keep the low `bits` bits of `x` and read them as signed.

    Two's-complement wrap-around, as a plain ``ADD``/``MLA`` or an int32 C multiplication does it.
    In: any int64 value. Out: the smallest signed dtype holding `bits` bits (``bits=24`` gives
    int32, ``bits=32`` int32, ``bits=16`` int16).  1 <= bits <= 64.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    return _result(_wrap_i64(as_int64(x, "x"), bits), _signed_dtype(bits))


def saturate(x, bits: int):
    """``sat_bits(x) = clamp(x, -2^(bits-1), 2^(bits-1) - 1)`` (``SignedSatQ`` without the flag).

    In: any int64 value. Out: the smallest signed dtype holding `bits` bits.  1 <= bits <= 64.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    return _result(_saturate_i64(as_int64(x, "x"), bits), _signed_dtype(bits))


# ---------------------------------------------------------------------------------------------
# Right shift of an int64 by s bits, one function per rounding rule
# ---------------------------------------------------------------------------------------------


def _split_pow2(x_i64: np.ndarray, s_i64: np.ndarray):
    """Write ``x = q * 2^s + r`` with ``0 <= r < 2^s``; also return ``half = 2^(s-1)``.

    For s = 0, r = 0 and half = 1, so no tie/carry test below ever fires.  Valid for
    0 <= s <= 63 on the full int64 range; nothing overflows (``2^s - 1`` is formed as
    ``(half - 1) + half``).
    """
    half = np.left_shift(np.int64(1), np.maximum(s_i64 - 1, 0))
    mask = np.where(s_i64 == 0, 0, (half - 1) + half)
    return x_i64 >> s_i64, x_i64 & mask, half


# The rounding shifts are the core's (ibert_ref.intops.shift_round): one implementation of
# each rounding rule, exact over the whole int64 range.
def _round_half_up_i64(x_i64, s_i64):
    return shift_round(x_i64, s_i64, "half_up")


def _round_half_away_i64(x_i64, s_i64):
    return shift_round(x_i64, s_i64, "half_away")


def _round_half_even_i64(x_i64, s_i64):
    return shift_round(x_i64, s_i64, "half_even")


def _trunc_i64(x_i64, s_i64):
    q, r, _ = _split_pow2(x_i64, s_i64)
    return q + ((r != 0) & (x_i64 < 0))


def _shift_operands(x, s):
    x_i64 = as_int64(x, "x")
    s_i64 = as_int64(s, "s")
    _check_range(s_i64, 0, _MAX_SHIFT_I64, "s")
    return x_i64, s_i64


def shift_floor(x, s):
    """``x >> s = floor(x / 2^s)`` (arithmetic shift; ARM ``SSHR``/``ASR``, C ``>>`` on signed).

    In: int64 `x`, 0 <= s <= 63. Out: int64.  No rounding increment, never overflows.
    """
    x_i64, s_i64 = _shift_operands(x, s)
    return _result(x_i64 >> s_i64, np.int64)


def shift_trunc(x, s):
    """``trunc(x / 2^s)``: round toward zero (RTZ), as C integer division by ``2^s`` does.

    In: int64 `x`, 0 <= s <= 63. Out: int64.
    """
    x_i64, s_i64 = _shift_operands(x, s)
    return _result(_trunc_i64(x_i64, s_i64), np.int64)


def shift_round_half_up(x, s):
    """RHU: ``floor((x + 2^(s-1)) / 2^s)`` (ties toward +inf), with the add in unbounded precision.

    This is ARM ``RShr(x, s, TRUE)`` (SRSHR, SRSHL, SQRSHRN, URSHR) and TFLite single rounding.
    ``-0.5 -> 0``, ``+0.5 -> 1``, ``-1.5 -> -1``.  In: int64 `x`, 0 <= s <= 63 (s = 0 is the
    identity). Out: int64.  Computed as ``q + (r >= 2^(s-1))`` from ``x = q*2^s + r``, so
    ``x = INT64_MAX`` does not overflow.
    """
    x_i64, s_i64 = _shift_operands(x, s)
    return _result(_round_half_up_i64(x_i64, s_i64), np.int64)


def shift_round_half_away(x, s):
    """RHAZ: ``sign(x) * floor((|x| + 2^(s-1)) / 2^s)`` (ties away from zero).

    gemmlowp ``RoundingDivideByPOT``, CMSIS ``arm_nn_divide_by_power_of_two``, C ``std::round``.
    ``-0.5 -> -1``, ``+0.5 -> 1``.  In: int64 `x`, 0 <= s <= 63. Out: int64.
    """
    x_i64, s_i64 = _shift_operands(x, s)
    return _result(_round_half_away_i64(x_i64, s_i64), np.int64)


def shift_round_half_even(x, s):
    """RNE: nearest integer to ``x / 2^s``, ties to the even neighbour (``torch.round``, I-BERT).

    ``-1.5 -> -2``, ``-0.5 -> 0``, ``0.5 -> 0``, ``1.5 -> 2``, ``2.5 -> 2``.  In: int64 `x`,
    0 <= s <= 63. Out: int64.  Exact on the whole int64 range (unlike a float64 division).
    """
    x_i64, s_i64 = _shift_operands(x, s)
    return _result(_round_half_even_i64(x_i64, s_i64), np.int64)


# ---------------------------------------------------------------------------------------------
# Saturating doubling multiplies (ARM ARM C7.2.333 SQDMULH, C7.2.342 SQRDMULH, C7.2.338 SQRDMLAH)
# ---------------------------------------------------------------------------------------------


def sqdmulh(a, b, bits: int = 32):
    """SQDMULH: ``sat_e((2*a*b) >> e)`` = ``sat_e(floor(a*b / 2^(e-1)))``, e = `bits`.

    Rounding: floor.  Saturation: only ``a = b = -2^(e-1)`` saturates (to ``2^(e-1) - 1``; the
    hardware sets FPSR.QC).  In: int32 (or int16 for ``bits=16``) lanes. Out: int32 (int16).
    Implementation: ``a*b`` is exact in int64 (``|ab| <= 2^62``), then ``>> (e-1)``.
    """
    _check_bits(bits, (16, 32))
    a_i64 = _signed_operand(a, bits, "a")
    b_i64 = _signed_operand(b, bits, "b")
    high_i64 = (a_i64 * b_i64) >> (bits - 1)
    return _result(_saturate_i64(high_i64, bits), _signed_dtype(bits))


def _sqrdmulh_unsaturated_i64(a_i64, b_i64, bits):
    """``(2ab + 2^(e-1)) >> e`` written as RHU(ab, e-1); at most 2^(e-1), so fits int64."""
    return _round_half_up_i64(a_i64 * b_i64, np.int64(bits - 1))


def sqrdmulh(a, b, bits: int = 32):
    """SQRDMULH: ``sat_e((2*a*b + 2^(e-1)) >> e)``, e = `bits` (16 or 32).

    Rounding: RHU of ``a*b / 2^(e-1)`` (``-0.5 -> 0``, ``-1.5 -> -1``, ``+0.5 -> 1``).
    Saturation: only ``a = b = -2^(e-1)`` saturates, to ``2^(e-1) - 1`` (QC set).  Bit-identical
    to gemmlowp ``SaturatingRoundingDoublingHighMul`` on every input.  In: int32 (int16) lanes.
    Out: int32 (int16).  ``2ab`` would overflow int64 at MIN*MIN, so the doubling is folded into
    the shift: ``(2ab + 2^(e-1)) >> e == (ab + 2^(e-2)) >> (e-1)``.
    """
    _check_bits(bits, (16, 32))
    a_i64 = _signed_operand(a, bits, "a")
    b_i64 = _signed_operand(b, bits, "b")
    high_i64 = _sqrdmulh_unsaturated_i64(a_i64, b_i64, bits)
    return _result(_saturate_i64(high_i64, bits), _signed_dtype(bits))


def sqrdmlah(acc, a, b, bits: int = 32):
    """SQRDMLAH (FEAT_RDM): ``sat_e(((acc << e) + 2*a*b + 2^(e-1)) >> e)``, e = `bits`.

    One rounding (RHU) and one saturation, both after the add; ``sqrdmulh`` followed by
    ``sqadd`` would saturate twice and can differ.  In: int32 (int16) `acc`, `a`, `b`.
    Out: int32 (int16).  Since ``acc << e`` is a multiple of ``2^e`` the formula equals
    ``sat_e(acc + RHU(a*b, e-1))``, which is what is computed (no 96-bit intermediate needed).
    """
    _check_bits(bits, (16, 32))
    acc_i64 = _signed_operand(acc, bits, "acc")
    a_i64 = _signed_operand(a, bits, "a")
    b_i64 = _signed_operand(b, bits, "b")
    total_i64 = acc_i64 + _sqrdmulh_unsaturated_i64(a_i64, b_i64, bits)
    return _result(_saturate_i64(total_i64, bits), _signed_dtype(bits))


def sqrdmlsh(acc, a, b, bits: int = 32):
    """SQRDMLSH (FEAT_RDM): ``sat_e(((acc << e) - 2*a*b + 2^(e-1)) >> e)``, e = `bits`.

    = ``sat_e(acc + RHU(-a*b, e-1))``: one RHU rounding, one saturation.  In/out as ``sqrdmlah``.
    """
    _check_bits(bits, (16, 32))
    acc_i64 = _signed_operand(acc, bits, "acc")
    a_i64 = _signed_operand(a, bits, "a")
    b_i64 = _signed_operand(b, bits, "b")
    total_i64 = acc_i64 + _round_half_up_i64(-(a_i64 * b_i64), np.int64(bits - 1))
    return _result(_saturate_i64(total_i64, bits), _signed_dtype(bits))


# ---------------------------------------------------------------------------------------------
# Register-controlled shifts
# (NEON C7.2.359 SSHL, .356 SRSHL, .347 SQSHL, .343 SQRSHL; SVE2 C8.2.688 SRSHL)
# ---------------------------------------------------------------------------------------------


def _shift_sat(count_i64: np.ndarray, bits: int) -> np.ndarray:
    """ARM ``ShiftSat(count, esize)``: clamp to ``[-(esize+1), esize+1]``."""
    return np.clip(count_i64, -(bits + 1), bits + 1)


def _signed_low_byte(shift_i64: np.ndarray) -> np.ndarray:
    """``SInt(shift<7:0>)``: the low byte of each element, read as signed (255 -> -1, 256 -> 0)."""
    low_byte = shift_i64 & 0xFF
    return low_byte - ((low_byte & 0x80) << 1)


def _register_shift_i64(x_i64, count_i64, bits, *, rounding: bool, saturating: bool):
    """``r = count >= 0 ? x << count : RShr(x, -count, rounding)`` then wrap_e or sat_e.

    `count` is already ShiftSat-clamped to [-(e+1), e+1].  A left count is capped at e: for
    wrap, ``x << e`` and ``x << (e+1)`` both wrap to 0; for sat, both saturate unless x = 0.  The
    cap keeps ``|x << count| <= 2^(2e-1) <= 2^63`` (``-2^31 << 32 = -2^63`` is representable).
    """
    left_count = np.clip(count_i64, 0, bits)
    left_i64 = x_i64 * np.left_shift(np.int64(1), left_count)
    right_count = np.clip(-count_i64, 0, bits + 1)
    if rounding:
        right_i64 = _round_half_up_i64(x_i64, right_count)
    else:
        right_i64 = x_i64 >> right_count
    shifted_i64 = np.where(count_i64 >= 0, left_i64, right_i64)
    if saturating:
        return _saturate_i64(shifted_i64, bits)
    return _wrap_i64(shifted_i64, bits)


def _shift_element(shift, bits: int) -> np.ndarray:
    """A shift-count element of `bits` bits, given as its signed or unsigned value."""
    shift_i64 = as_int64(shift, "shift")
    _check_range(shift_i64, _signed_min(bits), (1 << bits) - 1, "shift")
    return shift_i64


def _neon_register_shift(x, shift, bits, *, rounding, saturating):
    _check_bits(bits, (8, 16, 32))
    x_i64 = _signed_operand(x, bits, "x")
    count_i64 = _shift_sat(_signed_low_byte(_shift_element(shift, bits)), bits)
    shifted_i64 = _register_shift_i64(
        x_i64, count_i64, bits, rounding=rounding, saturating=saturating
    )
    return _result(shifted_i64, _signed_dtype(bits))


def sshl(x, shift, bits: int = 32):
    """NEON SSHL (register): ``c = ShiftSat(SInt(shift<7:0>), e)``;
    ``wrap_e(c >= 0 ? x << c : x >> -c)``.

    Only the signed LOW BYTE of each shift element counts (255 -> -1, 256 -> 0).  Rounding:
    floor for right shifts (so a count <= -e gives 0 or -1).  Left shifts wrap (a count >= e
    gives 0); nothing saturates.  In: int8/16/32 lanes (`bits`), shift elements of the same
    width (signed or unsigned value).  Out: int8/16/32.
    """
    return _neon_register_shift(x, shift, bits, rounding=False, saturating=False)


def srshl(x, shift, bits: int = 32):
    """NEON SRSHL (register): ``c = ShiftSat(SInt(shift<7:0>), e)``;
    ``wrap_e(c >= 0 ? x << c : (x + 2^(-c-1)) >> -c)``.

    Right shifts round RHU (``RShr`` with round), the add is in unbounded precision (so
    ``SRSHL(MAX, -1) = 2^30``); a count <= -e gives 0 for every x.  Left shifts wrap.
    Only the signed LOW BYTE of the shift counts: ``SRSHL(3, 255) = 2`` (SVE2 gives 0, see
    ``srshl_sve2``).  In: int8/16/32 lanes, same-width shift elements. Out: int8/16/32.
    """
    return _neon_register_shift(x, shift, bits, rounding=True, saturating=False)


def sqshl(x, shift, bits: int = 32):
    """NEON SQSHL (register): ``c = ShiftSat(SInt(shift<7:0>), e)``;
    ``sat_e(c >= 0 ? x << c : x >> -c)``.

    Right shifts floor; left shifts saturate (QC set): a count >= e gives sat(+-inf) unless
    x = 0.  In: int8/16/32 lanes, same-width shift elements. Out: int8/16/32.
    """
    return _neon_register_shift(x, shift, bits, rounding=False, saturating=True)


def sqrshl(x, shift, bits: int = 32):
    """NEON SQRSHL (register): ``c = ShiftSat(SInt(shift<7:0>), e)``;
    ``sat_e(c >= 0 ? x << c : (x + 2^(-c-1)) >> -c)``.

    Right shifts round RHU; left shifts saturate.  In: int8/16/32 lanes, same-width shift
    elements. Out: int8/16/32.
    """
    return _neon_register_shift(x, shift, bits, rounding=True, saturating=True)


def srshl_sve2(x, shift, bits: int = 32):
    """SVE2 SRSHL: as NEON ``srshl`` but the count is the WHOLE element, signed, then ShiftSat.

    ``c = ShiftSat(SInt(shift), e)``; ``wrap_e(c >= 0 ? x << c : RHU(x, -c))``.  So 255, 256 and
    0x1234FF00 are large left shifts and give 0 (NEON: 2, 3, 3 for x = 3).  In: int8/16/32
    lanes; shift elements of the same width, given as signed or unsigned values (read as
    signed).  Out: int8/16/32.
    """
    _check_bits(bits, (8, 16, 32))
    x_i64 = _signed_operand(x, bits, "x")
    count_i64 = _shift_sat(_wrap_i64(_shift_element(shift, bits), bits), bits)
    shifted_i64 = _register_shift_i64(x_i64, count_i64, bits, rounding=True, saturating=False)
    return _result(shifted_i64, _signed_dtype(bits))


# ---------------------------------------------------------------------------------------------
# Immediate shifts and narrowing (C7.2.357 SRSHR, C7.2.444 URSHR, C7.2.344 SQRSHRN, C7.2.352 SQXTN)
# ---------------------------------------------------------------------------------------------


def _immediate(n, lo: int, hi: int, name: str = "n") -> np.ndarray:
    n_i64 = as_int64(n, name)
    _check_range(n_i64, lo, hi, name)
    return n_i64


def sshr(x, n, bits: int = 32):
    """SSHR #n: ``x >> n`` (floor).  n in [1, e].  In: int8/16/32. Out: same width."""
    _check_bits(bits, (8, 16, 32))
    x_i64 = _signed_operand(x, bits, "x")
    n_i64 = _immediate(n, 1, bits)
    return _result(x_i64 >> n_i64, _signed_dtype(bits))


def srshr(x, n, bits: int = 32):
    """SRSHR #n: ``wrap_e((x + 2^(n-1)) >> n)`` - RHU, add in unbounded precision.

    n in [1, e].  ``SRSHR(MAX, 1) = 2^30`` (no overflow); ``SRSHR(x, 32) = 0`` for every int32 x.
    In: int8/16/32. Out: same width (the wrap never changes the value; kept as in the ARM ARM).
    """
    _check_bits(bits, (8, 16, 32))
    x_i64 = _signed_operand(x, bits, "x")
    n_i64 = _immediate(n, 1, bits)
    return _result(_wrap_i64(_round_half_up_i64(x_i64, n_i64), bits), _signed_dtype(bits))


def urshr(x, n, bits: int = 32):
    """URSHR #n: ``(UInt(x) + 2^(n-1)) >> n`` - RHU on the unsigned value, unbounded add.

    n in [1, e].  ``URSHR(0xFFFFFFFF, 1) = 2^31``; ``URSHR(0x80000000, 32) = 1``.  In: uint8/16/32
    values in ``[0, 2^e)``. Out: uint8/16/32.
    """
    _check_bits(bits, (8, 16, 32))
    x_i64 = _unsigned_operand(x, bits, "x")
    n_i64 = _immediate(n, 1, bits)
    return _result(_round_half_up_i64(x_i64, n_i64), _unsigned_dtype(bits))


def _narrowing_operands(x, n, out_bits):
    _check_bits(out_bits, (8, 16, 32), "out_bits")
    x_i64 = _signed_operand(x, 2 * out_bits, "x")
    n_i64 = _immediate(n, 1, out_bits)
    return x_i64, n_i64


def sqshrn(x, n, out_bits: int):
    """SQSHRN #n (2e -> e): ``sat_e(x >> n)``; floor, then saturate (QC).  n in [1, e].

    In: int16/32/64 (``2 * out_bits``). Out: int8/16/32 (`out_bits`).
    """
    x_i64, n_i64 = _narrowing_operands(x, n, out_bits)
    return _result(_saturate_i64(x_i64 >> n_i64, out_bits), _signed_dtype(out_bits))


def sqrshrn(x, n, out_bits: int):
    """SQRSHRN #n (2e -> e): ``sat_e((x + 2^(n-1)) >> n)``; RHU (unbounded add), then saturate.

    n in [1, e] (the immediate encoding allows nothing else).  ``-1.5 -> -1``, ``-2.5 -> -2``.
    In: int16/32/64 (``2 * out_bits``). Out: int8/16/32 (`out_bits`).  SVE2 SQRSHRNB/T compute
    the same values.
    """
    x_i64, n_i64 = _narrowing_operands(x, n, out_bits)
    rounded_i64 = _round_half_up_i64(x_i64, n_i64)
    return _result(_saturate_i64(rounded_i64, out_bits), _signed_dtype(out_bits))


def sqrshrun(x, n, out_bits: int):
    """SQRSHRUN #n (signed 2e -> unsigned e): ``usat_e((x + 2^(n-1)) >> n)``; RHU, then clamp to
    ``[0, 2^e - 1]``.  n in [1, e].  In: int16/32/64. Out: uint8/16/32.
    """
    x_i64, n_i64 = _narrowing_operands(x, n, out_bits)
    rounded_i64 = _round_half_up_i64(x_i64, n_i64)
    return _result(_saturate_unsigned_i64(rounded_i64, out_bits), _unsigned_dtype(out_bits))


def sqxtn(x, out_bits: int):
    """SQXTN (2e -> e): ``sat_e(x)``, saturating narrow (QC).  No rounding.

    In: int16/32/64 (``2 * out_bits``). Out: int8/16/32.  (Plain XTN would wrap instead.)
    """
    _check_bits(out_bits, (8, 16, 32), "out_bits")
    x_i64 = _signed_operand(x, 2 * out_bits, "x")
    return _result(_saturate_i64(x_i64, out_bits), _signed_dtype(out_bits))


def sqxtun(x, out_bits: int):
    """SQXTUN (signed 2e -> unsigned e): ``usat_e(x) = clamp(x, 0, 2^e - 1)``.

    In: int16/32/64. Out: uint8/16/32.
    """
    _check_bits(out_bits, (8, 16, 32), "out_bits")
    x_i64 = _signed_operand(x, 2 * out_bits, "x")
    return _result(_saturate_unsigned_i64(x_i64, out_bits), _unsigned_dtype(out_bits))


# ---------------------------------------------------------------------------------------------
# Saturating add / subtract (C7.2.327 SQADD, SQSUB)
# ---------------------------------------------------------------------------------------------


def sqadd(a, b, bits: int = 32):
    """SQADD: ``sat_e(a + b)`` (QC on saturation).  ``SQADD(MAX, 1) = MAX``.  A plain ADD wraps.

    In: int8/16/32 lanes. Out: same width.
    """
    _check_bits(bits, (8, 16, 32))
    a_i64 = _signed_operand(a, bits, "a")
    b_i64 = _signed_operand(b, bits, "b")
    return _result(_saturate_i64(a_i64 + b_i64, bits), _signed_dtype(bits))


def sqsub(a, b, bits: int = 32):
    """SQSUB: ``sat_e(a - b)`` (QC on saturation).  In: int8/16/32 lanes. Out: same width."""
    _check_bits(bits, (8, 16, 32))
    a_i64 = _signed_operand(a, bits, "a")
    b_i64 = _signed_operand(b, bits, "b")
    return _result(_saturate_i64(a_i64 - b_i64, bits), _signed_dtype(bits))


# ---------------------------------------------------------------------------------------------
# Multiply-accumulate: SDOT (C7.2.282), SMMLA (C7.2.322 / MatMulAdd), SMLAL (C7.2.319). All wrap.
# ---------------------------------------------------------------------------------------------


def sdot(acc, a, b):
    """SDOT (4-way, FEAT_DotProd): ``wrap_32(acc + sum_{i<4} a[i]*b[i])``.

    The four int8 products are summed exactly (``|sum| <= 65536``) and added to the int32 lane
    modulo 2^32; nothing saturates.  NVIDIA ``dp4a.s32.s32`` (bytes unpacked) and SVE SDOT have
    the same arithmetic.  In: `acc` int32 ``[...]``; `a`, `b` int8 ``[..., 4]`` (trailing axis of
    4 bytes; leading axes broadcast with `acc`).  Out: int32 ``[...]``.
    """
    acc_i64 = _signed_operand(acc, 32, "acc")
    a_i64 = _signed_operand(a, 8, "a")
    b_i64 = _signed_operand(b, 8, "b")
    if a_i64.ndim == 0 or a_i64.shape[-1] != 4 or b_i64.ndim == 0 or b_i64.shape[-1] != 4:
        raise ValueError("sdot: a and b need a trailing axis of length 4")
    dot_i64 = (a_i64 * b_i64).sum(axis=-1)
    return _result(_wrap_i64(acc_i64 + dot_i64, 32), np.int32)


def smmla(acc, a, b):
    """SMMLA (FEAT_I8MM): ``C = wrap_32(C + A @ B)`` for one 2x2 int32 tile.

    `a` is the 2x8 int8 row-major matrix held in Vn; `b` is the 8x2 int8 matrix.  (Vm holds
    ``B^T`` as a 2x8 row-major matrix, so pass ``vm.swapaxes(-1, -2)`` when starting from the
    register layout.)  The pseudocode adds one product at a time into ``bits(32)``: wrap_32,
    order-free.  In: `acc` int32 ``[..., 2, 2]``, `a` int8 ``[..., 2, 8]``, `b` int8
    ``[..., 8, 2]`` (leading axes broadcast).  Out: int32 ``[..., 2, 2]``.
    """
    acc_i64 = _signed_operand(acc, 32, "acc")
    a_i64 = _signed_operand(a, 8, "a")
    b_i64 = _signed_operand(b, 8, "b")
    if a_i64.shape[-2:] != (2, 8) or b_i64.shape[-2:] != (8, 2):
        raise ValueError(
            f"smmla: a must be [..., 2, 8] and b [..., 8, 2]; got {a_i64.shape}, {b_i64.shape}"
        )
    return _result(_wrap_i64(acc_i64 + np.matmul(a_i64, b_i64), 32), np.int32)


def smlal(acc, a, b, bits: int = 8):
    """SMLAL/SMLAL2 (widening MLA): ``wrap_2e(acc + a*b)``, e = `bits` (8 or 16).

    The product is exact; the add wraps in the 2e-bit lane.  For e = 8 two ``(-128)*(-128)``
    products in one int16 lane give ``-32768`` - the int16 hazard of non-dotprod int8 kernels.
    In: `acc` int16 (int32), `a`, `b` int8 (int16). Out: int16 (int32).
    """
    _check_bits(bits, (8, 16))
    acc_i64 = _signed_operand(acc, 2 * bits, "acc")
    a_i64 = _signed_operand(a, bits, "a")
    b_i64 = _signed_operand(b, bits, "b")
    return _result(_wrap_i64(acc_i64 + a_i64 * b_i64, 2 * bits), _signed_dtype(2 * bits))


# ---------------------------------------------------------------------------------------------
# A64 division (C6.2.356 SDIV, C6.2.489 UDIV)
# ---------------------------------------------------------------------------------------------


def sdiv(n, d, bits: int = 32):
    """SDIV (W form): ``d == 0 ? 0 : wrap_32(RTZ(n / d))``.

    Rounding: toward zero.  Divide-by-zero returns 0 (no trap).  ``MIN / -1 = MIN`` (the
    quotient 2^31 wraps).  In: int32 `n`, `d`. Out: int32.  (Only the 32-bit form is modelled.)
    """
    _check_bits(bits, (32,))
    n_i64 = _signed_operand(n, bits, "n")
    d_i64 = _signed_operand(d, bits, "d")
    d_safe_i64 = np.where(d_i64 == 0, 1, d_i64)
    quotient_abs_i64 = np.abs(n_i64) // np.abs(d_safe_i64)  # |n| <= 2^31: no abs overflow
    negative = (n_i64 < 0) != (d_safe_i64 < 0)
    quotient_i64 = np.where(negative, -quotient_abs_i64, quotient_abs_i64)
    quotient_i64 = np.where(d_i64 == 0, 0, quotient_i64)
    return _result(_wrap_i64(quotient_i64, bits), np.int32)


def udiv(n, d, bits: int = 64):
    """UDIV (W or X form): ``d == 0 ? 0 : floor(n / d)`` on unsigned values.

    Divide-by-zero returns 0.  ``UDIV64(2^32, 7) = 613566756``.  In: unsigned `n`, `d` in
    ``[0, 2^bits)`` (bits = 32 or 64). Out: uint32 / uint64.
    """
    _check_bits(bits, (32, 64))
    n_u64 = _unsigned_u64(n, bits, "n")
    d_u64 = _unsigned_u64(d, bits, "d")
    d_safe_u64 = np.where(d_u64 == 0, np.uint64(1), d_u64)
    quotient_u64 = np.where(d_u64 == 0, np.uint64(0), n_u64 // d_safe_u64)
    return _result(quotient_u64, _unsigned_dtype(bits))


def _unsigned_u64(x, bits: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array or int, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
        raise ValueError(f"{name} must be non-negative")
    x_u64 = arr.astype(np.uint64)
    if bits < 64 and x_u64.size and int(x_u64.max()) >= (1 << bits):
        raise ValueError(f"{name} must lie in [0, 2^{bits})")
    return x_u64


# ---------------------------------------------------------------------------------------------
# gemmlowp fixedpoint.h and TFLite requantization
# ---------------------------------------------------------------------------------------------


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT(x, exponent)``: ``x / 2^exponent`` rounded RHAZ.

    Literally: ``mask = 2^e - 1; rem = x & mask; thr = (mask >> 1) + (x < 0);
    result = (x >> e) + (rem > thr)``.  Ties round away from zero (``-5/2 -> -3``, unlike
    SRSHL's ``-2``); e = 0 is the identity; no saturation needed.  In: int32 `x`,
    0 <= exponent <= 31 (broadcasts, e.g. per channel). Out: int32.
    """
    x_i64 = _signed_operand(x, 32, "x")
    exponent_i64 = _immediate(exponent, 0, 31, "exponent")
    mask_i64 = np.left_shift(np.int64(1), exponent_i64) - 1
    remainder_i64 = x_i64 & mask_i64
    threshold_i64 = (mask_i64 >> 1) + (x_i64 < 0)
    result_i64 = (x_i64 >> exponent_i64) + (remainder_i64 > threshold_i64)
    return _result(result_i64, np.int32)


def saturating_rounding_doubling_high_mul(a, b, bits: int = 32):
    """gemmlowp ``SaturatingRoundingDoublingHighMul(a, b)`` (int32 or int16), as written:

    ``overflow = (a == b == MIN)``; ``ab = a*b`` (wide);
    ``nudge = ab >= 0 ? 2^(e-2) : 1 - 2^(e-2)``;
    ``result = overflow ? MAX : trunc((ab + nudge) / 2^(e-1))`` (C division, RTZ).

    Despite the "round to nearest" comment this is RHU (``-0.5 -> 0``), and it is bit-identical
    to ``sqrdmulh`` on all inputs, MIN*MIN included.  In: int32 (int16). Out: int32 (int16).
    """
    _check_bits(bits, (16, 32))
    a_i64 = _signed_operand(a, bits, "a")
    b_i64 = _signed_operand(b, bits, "b")
    overflow = (a_i64 == b_i64) & (a_i64 == _signed_min(bits))
    ab_i64 = a_i64 * b_i64
    quarter = 1 << (bits - 2)
    nudge_i64 = np.where(ab_i64 >= 0, quarter, 1 - quarter)
    high_i64 = _trunc_i64(ab_i64 + nudge_i64, np.int64(bits - 1))
    return _result(np.where(overflow, _signed_max(bits), high_i64), _signed_dtype(bits))


_INT32_MIN = _signed_min(32)
_INT32_MAX = _signed_max(32)


def _mbqm_double_i64(x_i64, m_i64, shift_i64):
    # TFLite: x * (1 << left_shift) in int32 - silently wraps (TFLITE_NO_SANITIZE_INTEGER_OVERFLOW).
    left_i64 = np.maximum(shift_i64, 0)
    right_i64 = np.maximum(-shift_i64, 0)
    shifted_i32 = _wrap_i64(x_i64 * np.left_shift(np.int64(1), left_i64), 32)
    high_i32 = saturating_rounding_doubling_high_mul(shifted_i32, m_i64)
    return np.asarray(rounding_divide_by_pot(high_i32, right_i64), dtype=np.int64)


def _mbqm_single_i64(x_i64, m_i64, shift_i64):
    total_shift_i64 = 31 - shift_i64  # in [1, 62]
    # |x*m| <= 2^62, and the RHU helper never forms x*m + 2^(t-1).
    result_i64 = _round_half_up_i64(x_i64 * m_i64, total_shift_i64)
    if result_i64.size and (
        int(result_i64.min()) < _INT32_MIN or int(result_i64.max()) > _INT32_MAX
    ):
        raise ValueError(
            "multiply_by_quantized_multiplier(single): result outside int32 "
            "(TFLite DCHECKs this; the C cast would be implementation-defined)"
        )
    return result_i64


def multiply_by_quantized_multiplier(x, multiplier, shift, rounding: str = "double"):
    """TFLite ``MultiplyByQuantizedMultiplier(int32 x, int32 m, int shift)`` ~ ``x*m*2^(shift-31)``.

    ``rounding="double"`` (TFLite default build; = gemmlowp, CMSIS-NN default, NEON SQRDMULH +
    fixup + SRSHL)::

        left = max(shift, 0); right = max(-shift, 0)
        RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(wrap_32(x << left), m), right)

    Two roundings: RHU at 2^-31, then RHAZ at 2^-right.  ``x << left`` is an int32 multiply in
    TFLite and wraps silently; that wrap is reproduced.  m may be any int32; shift in [-31, 31].

    ``rounding="single"`` (``TFLITE_SINGLE_ROUNDING``; = CMSIS single, ruy reference, XNNPACK
    scalar ``rndnu``)::

        t = 31 - shift;  (x*m + 2^(t-1)) >> t          # one RHU, exact in int64

    m in [0, 2^31 - 1] and shift in [-31, 30] (TFLite DCHECKs); a result outside int32 raises
    ``ValueError`` (TFLite DCHECKs that too).

    They differ on ~2.5 % of random inputs: ``x=1, m=2^30, shift=-1`` (exact 0.25) gives
    double 1, single 0.  In: int32 `x`, `multiplier`; int `shift` (all broadcast; per-channel
    multipliers are just arrays).  Out: int32.
    """
    x_i64 = _signed_operand(x, 32, "x")
    if rounding == "double":
        m_i64 = _signed_operand(multiplier, 32, "multiplier")
        shift_i64 = _immediate(shift, -31, 31, "shift")
        result_i64 = _mbqm_double_i64(x_i64, m_i64, shift_i64)
    elif rounding == "single":
        m_i64 = as_int64(multiplier, "multiplier")
        _check_range(m_i64, 0, _INT32_MAX, "multiplier")
        shift_i64 = _immediate(shift, -31, 30, "shift")
        result_i64 = _mbqm_single_i64(x_i64, m_i64, shift_i64)
    else:
        raise ValueError(f"rounding must be 'double' or 'single', got {rounding!r}")
    return _result(result_i64, np.int32)
