"""Specification tests for ibert_ref.hardware.primitives.

Three kinds of evidence:
1. The QEMU-checked vectors of docs/hardware-vectors.md (computed from the ARM pseudocode by an
   independent oracle), transcribed verbatim below, plus the [derived] vectors quoted in
   docs/hardware-semantics.md.
2. Named corner cases: INT32_MIN * INT32_MIN, shift by 0, ties of both signs.
3. Hypothesis properties: each primitive against a plain-Python (unbounded int) reference
   written here from the formulas in hardware-semantics.md.
"""

from __future__ import annotations

import ast
from fractions import Fraction
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ibert_ref.hardware import (
    multiply_by_quantized_multiplier,
    rounding_divide_by_pot,
    saturate,
    saturating_rounding_doubling_high_mul,
    sdiv,
    sdot,
    shift_floor,
    shift_round_half_away,
    shift_round_half_even,
    shift_round_half_up,
    shift_trunc,
    smlal,
    smmla,
    sqadd,
    sqdmulh,
    sqrdmlah,
    sqrdmlsh,
    sqrdmulh,
    sqrshl,
    sqrshrn,
    sqrshrun,
    sqshl,
    sqshrn,
    sqsub,
    sqxtn,
    sqxtun,
    srshl,
    srshl_sve2,
    srshr,
    sshl,
    sshr,
    udiv,
    urshr,
    wrap,
)

MIN32, MAX32 = -(2**31), 2**31 - 1
# 100 examples per property keeps the file under ~10 s; the exhaustive corner grids in section 4
# cover the boundary values deterministically.
PROPERTY = settings(max_examples=100, deadline=None)


# =============================================================================================
# Plain-Python references (unbounded ints), written from the formulas in hardware-semantics.md
# =============================================================================================


def ref_wrap(x: int, bits: int) -> int:
    x &= (1 << bits) - 1
    return x - (1 << bits) if x >= 1 << (bits - 1) else x


def ref_sat(x: int, bits: int) -> int:
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, x))


def ref_usat(x: int, bits: int) -> int:
    return max(0, min((1 << bits) - 1, x))


def ref_rshr(v: int, s: int, rounding: bool) -> int:
    """ARM RShr(v, s, round), s > 0."""
    return (v + (1 << (s - 1))) >> s if rounding else v >> s


def ref_sqdmulh(a, b, e):
    return ref_sat((2 * a * b) >> e, e)


def ref_sqrdmulh(a, b, e):
    return ref_sat((2 * a * b + (1 << (e - 1))) >> e, e)


def ref_sqrdmlah(acc, a, b, e):
    return ref_sat(((acc << e) + 2 * a * b + (1 << (e - 1))) >> e, e)


def ref_sqrdmlsh(acc, a, b, e):
    return ref_sat(((acc << e) - 2 * a * b + (1 << (e - 1))) >> e, e)


def ref_signed_low_byte(shift: int) -> int:
    low = shift & 0xFF
    return low - 256 if low >= 128 else low


def ref_shift_sat(count: int, e: int) -> int:
    return max(-(e + 1), min(e + 1, count))


def ref_register_shift(x, shift, e, *, rounding, saturating, whole_element=False):
    count = ref_wrap(shift, e) if whole_element else ref_signed_low_byte(shift)
    count = ref_shift_sat(count, e)
    r = x << count if count >= 0 else ref_rshr(x, -count, rounding)
    return ref_sat(r, e) if saturating else ref_wrap(r, e)


def ref_c_div(n: int, d: int) -> int:
    """C integer division (truncation toward zero)."""
    q = abs(n) // abs(d)
    return q if (n < 0) == (d < 0) else -q


def ref_gemmlowp_srdhm(a, b, e=32):
    """gemmlowp SaturatingRoundingDoublingHighMul, transcribed from its C source."""
    if a == b == -(1 << (e - 1)):
        return (1 << (e - 1)) - 1
    ab = a * b
    nudge = (1 << (e - 2)) if ab >= 0 else 1 - (1 << (e - 2))
    return ref_c_div(ab + nudge, 1 << (e - 1))


def ref_round_half_away(x: int, s: int) -> int:
    """sign(x) * floor(|x| / 2^s + 1/2)."""
    magnitude = math.floor(Fraction(abs(x), 2**s) + Fraction(1, 2))
    return magnitude if x >= 0 else -magnitude


def ref_round_half_up(x: int, s: int) -> int:
    return math.floor(Fraction(x, 2**s) + Fraction(1, 2))


def ref_round_half_even(x: int, s: int) -> int:
    return round(Fraction(x, 2**s))  # Fraction.__round__ rounds half to even


def ref_trunc(x: int, s: int) -> int:
    return int(Fraction(x, 2**s))  # int() of a Fraction truncates toward zero


def ref_mbqm_double(x, m, shift):
    left, right = max(shift, 0), max(-shift, 0)
    return ref_round_half_away(ref_gemmlowp_srdhm(ref_wrap(x << left, 32), m), right)


def ref_mbqm_single(x, m, shift):
    t = 31 - shift
    return (x * m + (1 << (t - 1))) >> t


# =============================================================================================
# Strategies
# =============================================================================================


def signed_ints(bits: int) -> st.SearchStrategy[int]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    corners = [lo, lo + 1, -(1 << (bits - 2)), -(1 << (bits - 2)) - 1, -1, 0, 1,
               1 << (bits - 2), (1 << (bits - 2)) - 1, hi - 1, hi]
    return st.one_of(st.sampled_from(corners), st.integers(lo, hi))


def unsigned_ints(bits: int) -> st.SearchStrategy[int]:
    hi = (1 << bits) - 1
    return st.one_of(st.sampled_from([0, 1, 1 << (bits - 1), hi - 1, hi]), st.integers(0, hi))


i8, i16, i32, i64 = signed_ints(8), signed_ints(16), signed_ints(32), signed_ints(64)


def rows_of(*columns: st.SearchStrategy[int]) -> st.SearchStrategy[list[tuple[int, ...]]]:
    return st.lists(st.tuples(*columns), min_size=1, max_size=8)


def apply_columns(fn, rows, **kwargs):
    """Call a vectorised primitive once on the columns of `rows` (as int64 arrays)."""
    columns = [np.array(column, dtype=np.int64) for column in zip(*rows)]
    return np.asarray(fn(*columns, **kwargs)).tolist()


def assert_matches_reference(fn, ref, rows, **kwargs):
    assert apply_columns(fn, rows, **kwargs) == [ref(*row) for row in rows]


# =============================================================================================
# 1. docs/hardware-vectors.md, verbatim (QEMU-checked against the ARM pseudocode)
# =============================================================================================

HARDWARE_VECTORS_MD = """
| sqrdmulh | -2147483648, -2147483648 | 2147483647 |
| sqrdmulh | -2147483648, 2147483647 | -2147483647 |
| sqrdmulh | 2147483647, 2147483647 | 2147483646 |
| sqrdmulh | 1073741824, 1073741824 | 536870912 |
| sqrdmulh | 1, 1 | 0 |
| sqrdmulh | -1, 1 | 0 |
| sqrdmulh | -1073741824, 1 | 0 |
| sqrdmulh | -1073741825, 1 | -1 |
| sqrdmulh | 1073741824, 1 | 1 |
| sqrdmulh | 3, 1073741824 | 2 |
| sqrdmulh | -3, 1073741824 | -1 |
| sqrdmulh | -5, 1073741824 | -2 |
| sqdmulh | -2147483648, -2147483648 | 2147483647 |
| sqdmulh | -1, 1 | -1 |
| sqdmulh | -3, 1073741824 | -2 |
| sqdmulh | 3, 1073741824 | 1 |
| sqrdmulh16 | -32768, -32768 | 32767 |
| sqrdmulh16 | 16384, 16384 | 8192 |
| sqrdmulh16 | -1, 16384 | 0 |
| srshl | 5, -1 | 3 |
| srshl | -5, -1 | -2 |
| srshl | -6, -2 | -1 |
| srshl | 2147483647, -1 | 1073741824 |
| srshl | -2147483648, -1 | -1073741824 |
| srshl | 1, -32 | 0 |
| srshl | -2147483648, -32 | 0 |
| srshl | 1073741824, -31 | 1 |
| srshl | -1073741825, -31 | -1 |
| srshl | -2147483648, -31 | -1 |
| srshl | 123, -128 | 0 |
| srshl | 1, 31 | -2147483648 |
| srshl | 1, 32 | 0 |
| srshl | 3, 255 | 2 |
| srshl | 3, 256 | 3 |
| srshl | 3, 2147483424 | 0 |
| sshl | -5, -1 | -3 |
| sshl | -1, -40 | -1 |
| sshl | -2147483648, -33 | -1 |
| sshl | 1, 31 | -2147483648 |
| sqshl | 1, 31 | 2147483647 |
| sqshl | -1, 31 | -2147483648 |
| sqshl | -1, 32 | -2147483648 |
| sqshl | 1073741824, 1 | 2147483647 |
| sqrshl | 2147483647, -1 | 1073741824 |
| sqrshl | 1073741824, 1 | 2147483647 |
| sqrshl | -3, -1 | -1 |
| srshr | 5, 1 | 3 |
| srshr | -5, 1 | -2 |
| srshr | 2147483647, 1 | 1073741824 |
| srshr | 2147483647, 32 | 0 |
| srshr | -2147483648, 32 | 0 |
| srshr | -1073741825, 31 | -1 |
| urshr | 4294967295, 1 | 2147483648 |
| urshr | 2147483648, 32 | 1 |
| urshr | 2147483647, 32 | 0 |
| sqrshrn32 | 2147483647, 16 | 32767 |
| sqrshrn32 | 2147450879, 16 | 32767 |
| sqrshrn32 | -2147483648, 16 | -32768 |
| sqrshrn32 | -98304, 16 | -1 |
| sqrshrn32 | -163840, 16 | -2 |
| sqrshrn32 | 98303, 1 | 32767 |
| sqrshrn16 | 32767, 8 | 127 |
| sqrshrn16 | -384, 8 | -1 |
| sqrshrn16 | -32768, 8 | -128 |
| sqxtn32 | 40000 | 32767 |
| sqxtn32 | -40000 | -32768 |
| sqxtn16 | 200 | 127 |
| sqxtn16 | -129 | -128 |
| sqadd | 2147483647, 1 | 2147483647 |
| sqadd | -2147483648, -1 | -2147483648 |
| sqrdmlah | 2147483647, 2147483647, 2147483647 | 2147483647 |
| sqrdmlah | 5, 1073741824, 1073741824 | 536870917 |
| sdiv | 7, 0 | 0 |
| sdiv | -2147483648, -1 | -2147483648 |
| sdiv | -7, 2 | -3 |
| udiv64 | 4294967296, 7 | 613566756 |
| udiv64 | 4294967296, 0 | 0 |
| sdot | 2147483647, (1, 0, 0, 0), (1, 0, 0, 0) | -2147483648 |
| sdot | 2147418112, (-128, -128, -128, -128), (-128, -128, -128, -128) | -2147483648 |
| sdot | 0, (-128, 127, -128, 127), (127, -128, -128, 127) | 1 |
| smlal8 | 32767, -128, -128 | -16385 |
| smlal8_2 | 0, (-128, -128), (-128, -128) | -32768 |
| smmla | 0, (-128, -128, -128, -128, -128, -128, -128, -128), (-128, -128, -128, -128, -128, -128, -128, -128) | 131072 |
| smmla | 2147352576, (-128, -128, -128, -128, -128, -128, -128, -128), (-128, -128, -128, -128, -128, -128, -128, -128) | -2147483648 |
"""


def parse_vector_table(markdown: str) -> list[tuple[str, tuple, int]]:
    vectors = []
    for line in markdown.strip().splitlines():
        op, inputs, result = (cell.strip() for cell in line.strip().strip("|").split("|"))
        vectors.append((op, ast.literal_eval(f"({inputs},)"), int(result)))
    return vectors


def smlal8_chain(acc, a_pair, b_pair):
    """SMULL + SMLAL: the products of a pair accumulated one after another into one int16 lane."""
    for a, b in zip(a_pair, b_pair):
        acc = smlal(acc, a, b, bits=8)
    return acc


def smmla_uniform(acc, a_row, b_col):
    """SMMLA with every row of A equal to a_row and every column of B equal to b_col."""
    a_2x8 = np.array([a_row, a_row])
    b_8x2 = np.array([b_col, b_col]).T
    return smmla(acc, a_2x8, b_8x2)


VECTOR_OPS = {
    "sqrdmulh": lambda a, b: sqrdmulh(a, b, bits=32),
    "sqdmulh": lambda a, b: sqdmulh(a, b, bits=32),
    "sqrdmulh16": lambda a, b: sqrdmulh(a, b, bits=16),
    "srshl": srshl,
    "sshl": sshl,
    "sqshl": sqshl,
    "sqrshl": sqrshl,
    "srshr": srshr,
    "urshr": urshr,
    "sqrshrn32": lambda x, n: sqrshrn(x, n, out_bits=16),
    "sqrshrn16": lambda x, n: sqrshrn(x, n, out_bits=8),
    "sqxtn32": lambda x: sqxtn(x, out_bits=16),
    "sqxtn16": lambda x: sqxtn(x, out_bits=8),
    "sqadd": sqadd,
    "sqrdmlah": sqrdmlah,
    "sdiv": sdiv,
    "udiv64": lambda n, d: udiv(n, d, bits=64),
    "sdot": lambda acc, a, b: sdot(acc, np.array(a), np.array(b)),
    "smlal8": lambda acc, a, b: smlal(acc, a, b, bits=8),
    "smlal8_2": smlal8_chain,
    "smmla": smmla_uniform,
}

HARDWARE_VECTORS = parse_vector_table(HARDWARE_VECTORS_MD)


def test_vector_table_is_complete():
    assert len(HARDWARE_VECTORS) == 84
    assert {op for op, _, _ in HARDWARE_VECTORS} == set(VECTOR_OPS)


@pytest.mark.parametrize(
    "op, inputs, expected",
    HARDWARE_VECTORS,
    ids=[f"{op}{inputs}" for op, inputs, _ in HARDWARE_VECTORS],
)
def test_hardware_vector(op, inputs, expected):
    got = np.asarray(VECTOR_OPS[op](*inputs))
    assert np.all(got == expected), f"{op}{inputs} = {got}, expected {expected}"


# ---------------------------------------------------------------------------------------------
# [derived] vectors quoted in hardware-semantics.md
# ---------------------------------------------------------------------------------------------

# §3: gemmlowp RoundingDivideByPOT; the last four are +-0.5 ties.
RDBPOT_VECTORS = [
    (5, 1, 3), (-5, 1, -3), (-1, 1, -1), (3, 1, 2), (-3, 1, -2),
    (MIN32, 31, -1), (MAX32, 31, 1), (-(2**30), 31, -1), (2**30, 31, 1), (2**30 - 1, 31, 0),
]


@pytest.mark.parametrize("x, exponent, expected", RDBPOT_VECTORS)
def test_rounding_divide_by_pot_vector(x, exponent, expected):
    assert rounding_divide_by_pot(x, exponent) == expected


# §6.1: one requantization under TFLite double and single rounding.
MBQM_VECTORS = [  # (x, m, shift, double, single)
    (1, 2**30, 0, 1, 1),
    (-1, 2**30, 0, 0, 0),
    (3, 2**30, 0, 2, 2),
    (-3, 2**30, 0, -1, -1),
    (1, 2**30, -1, 1, 0),
    (-2, 2**30, -1, -1, 0),
    (5, 2**30, -1, 2, 1),
    (3, 2**30, -2, 1, 0),
    (2**30, 2**30, 0, 2**29, 2**29),
    (2**30, 2**30, 1, -(2**30), 2**30),  # double: x << 1 wraps in int32
    (16777217, 2**30, 0, 8388609, 8388609),
    (396094475, 1161673357, -1, 107132923, 107132923),
]


@pytest.mark.parametrize("x, m, shift, double, single", MBQM_VECTORS)
def test_multiply_by_quantized_multiplier_vector(x, m, shift, double, single):
    assert multiply_by_quantized_multiplier(x, m, shift, rounding="double") == double
    assert multiply_by_quantized_multiplier(x, m, shift, rounding="single") == single


# §1.2: NEON reads the low byte of the count, SVE2 the whole element.
@pytest.mark.parametrize("shift, neon, sve2", [(255, 2, 0), (256, 3, 0), (0x1234FF00, 3, 0)])
def test_srshl_count_neon_low_byte_versus_sve2_whole_element(shift, neon, sve2):
    assert srshl(3, shift) == neon
    assert srshl_sve2(3, shift) == sve2


# §2.1: dp4a.s32.s32 with the bytes unpacked has SDOT's arithmetic.
@pytest.mark.parametrize(
    "acc, byte_a, byte_b, expected",
    [(0, -128, -128, 65536), (MAX32, 1, 1, -2147483645)],
)
def test_sdot_matches_dp4a_vectors(acc, byte_a, byte_b, expected):
    assert sdot(acc, [byte_a] * 4, [byte_b] * 4) == expected


# §6: exact RNE where HF's float64 product is one off.
@pytest.mark.parametrize(
    "z, m, e, exact_rne",
    [
        (396094475, 1161673357, 32, 107132923),
        (600086271, 2058543136, 33, 143808251),
        (1512860023, 1475971154, 32, 519896335),
    ],
)
def test_shift_round_half_even_is_exact_where_float64_is_not(z, m, e, exact_rne):
    assert shift_round_half_even(z * m, e) == exact_rne


# §0.6: I-BERT's RNE versus the RHU of ARM/TFLite single rounding at exact ties.
@pytest.mark.parametrize("z, rne, rhu", [(-3, -2, -1), (1, 0, 1), (3, 2, 2)])
def test_ibert_rne_versus_rhu_at_ties(z, rne, rhu):
    assert shift_round_half_even(z * 2**30, 31) == rne
    assert shift_round_half_up(z * 2**30, 31) == rhu
    assert multiply_by_quantized_multiplier(z, 2**30, 0, rounding="single") == rhu


# §5: the vector single-rounding sequence (SSHL + SQDMULH + SRSHL) overflows for shift >= 0.
def test_mve_single_rounding_sequence_overflows_where_scalar_does_not():
    x, m, shift = 2**30, 2**30, 0
    right = min(-1, shift)
    left = shift - right
    sequence = srshl(sqdmulh(sshl(x, left), m), right)
    assert sequence == -(2**29)
    assert multiply_by_quantized_multiplier(x, m, shift, rounding="single") == 2**29


# =============================================================================================
# 2. Corner cases
# =============================================================================================


def test_int32_min_times_int32_min_saturates_in_every_doubling_multiply():
    assert sqrdmulh(MIN32, MIN32) == MAX32
    assert sqdmulh(MIN32, MIN32) == MAX32
    assert saturating_rounding_doubling_high_mul(MIN32, MIN32) == MAX32
    assert sqrdmulh(-32768, -32768, bits=16) == 32767
    assert saturating_rounding_doubling_high_mul(-32768, -32768, bits=16) == 32767
    assert sqrdmlah(0, MIN32, MIN32) == MAX32
    assert sqrdmlah(MIN32, MIN32, MIN32) == 0  # one saturation, after the add: -2^31 + 2^31
    assert sqrdmlsh(0, MIN32, MIN32) == MIN32


def test_shift_by_zero_is_the_identity():
    x = np.array([MIN32, -3, -1, 0, 1, 3, MAX32])
    for rounding_shift in (shift_floor, shift_trunc, shift_round_half_up,
                           shift_round_half_away, shift_round_half_even):
        assert rounding_shift(x, 0).tolist() == x.tolist()
    assert rounding_divide_by_pot(x, 0).tolist() == x.tolist()
    for register_shift in (sshl, srshl, sqshl, sqrshl, srshl_sve2):
        assert register_shift(x, 0).tolist() == x.tolist()
    for neon_register_shift in (sshl, srshl, sqshl, sqrshl):
        assert neon_register_shift(x, 256).tolist() == x.tolist()  # low byte of 256 is 0
    assert multiply_by_quantized_multiplier(x, 2**31 - 1, 0, rounding="single").tolist() == [
        ref_mbqm_single(int(v), 2**31 - 1, 0) for v in x
    ]


# x / 2 for x = +-1, +-3, +-5: the ties +-0.5, +-1.5, +-2.5.
TIE_NUMERATORS = [1, -1, 3, -3, 5, -5]
TIE_RESULTS = {
    shift_round_half_up: [1, 0, 2, -1, 3, -2],
    shift_round_half_away: [1, -1, 2, -2, 3, -3],
    shift_round_half_even: [0, 0, 2, -2, 2, -2],
    shift_floor: [0, -1, 1, -2, 2, -3],
    shift_trunc: [0, 0, 1, -1, 2, -2],
}


@pytest.mark.parametrize("rounding_shift", list(TIE_RESULTS), ids=lambda f: f.__name__)
def test_ties_of_both_signs(rounding_shift):
    assert rounding_shift(np.array(TIE_NUMERATORS), 1).tolist() == TIE_RESULTS[rounding_shift]


def test_arm_and_gemmlowp_ties_differ_in_direction():
    # SRSHL/SRSHR round half up; gemmlowp RoundingDivideByPOT rounds half away from zero.
    assert srshl(-5, -1) == srshr(-5, 1) == -2
    assert rounding_divide_by_pot(-5, 1) == -3
    assert sqrdmulh(-(2**30), 1) == 0  # -0.5 -> 0


def test_rounding_shifts_do_not_overflow_at_int64_extremes():
    int64_max, int64_min = 2**63 - 1, -(2**63)
    assert shift_round_half_up(int64_max, 1) == 2**62
    assert shift_round_half_away(int64_max, 1) == 2**62
    assert shift_round_half_even(int64_max, 1) == 2**62
    assert shift_round_half_up(int64_min, 63) == -1
    assert shift_round_half_up(int64_max, 63) == 1
    assert shift_trunc(int64_min + 1, 63) == 0
    assert shift_floor(int64_min, 63) == -1


def test_left_shift_by_esize_wraps_to_zero_or_saturates():
    assert srshl(MIN32, 32) == 0 and sshl(MAX32, 33) == 0
    assert sqshl(MIN32, 32) == MIN32 and sqshl(MAX32, 127) == MAX32 and sqshl(0, 127) == 0


# =============================================================================================
# 3. Return types, broadcasting, argument checks
# =============================================================================================


def test_return_dtypes_are_the_register_widths():
    assert sqrdmulh(np.int32(3), np.int32(5)).dtype == np.int32
    assert sqrdmulh(3, 5, bits=16).dtype == np.int16
    assert sqrshrn(np.array([1, 2]), 1, out_bits=8).dtype == np.int8
    assert sqxtn(70000, 16).dtype == np.int16
    assert sqxtun(-5, 8).dtype == np.uint8 and sqrshrun(600, 1, 8).dtype == np.uint8
    assert urshr(5, 1).dtype == np.uint32
    assert udiv(5, 2, bits=64).dtype == np.uint64 and udiv(5, 2, bits=32).dtype == np.uint32
    assert smlal(0, 1, 1, bits=8).dtype == np.int16 and smlal(0, 1, 1, bits=16).dtype == np.int32
    assert sdot(0, [1, 2, 3, 4], [1, 1, 1, 1]).dtype == np.int32
    assert wrap(2**23, 24).dtype == np.int32 and wrap(2**23, 24) == -(2**23)
    assert saturate(2**40, 16).dtype == np.int16 and saturate(2**40, 16) == 32767
    assert shift_round_half_even(5, 1).dtype == np.int64


def test_scalar_in_scalar_out_and_arrays_broadcast():
    assert np.ndim(sqrdmulh(3, 5)) == 0
    x_i32 = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    per_channel_m = np.array([2**30, 2**29, 2**31 - 1, 1 << 20])
    per_channel_shift = np.array([0, -1, -5, 3])
    got = multiply_by_quantized_multiplier(x_i32, per_channel_m, per_channel_shift)
    assert got.shape == (3, 4) and got.dtype == np.int32
    for (i, j), value in np.ndenumerate(got):
        m, shift = int(per_channel_m[j]), int(per_channel_shift[j])
        assert value == ref_mbqm_double(int(x_i32[i, j]), m, shift)
    acc_i32 = np.zeros((2, 3), np.int32)
    assert sdot(acc_i32, np.ones((3, 4), np.int8), np.ones((2, 1, 4), np.int8)).shape == (2, 3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sqrdmulh(2**31, 1),  # a outside int32
        lambda: sqrdmulh(40000, 1, bits=16),
        lambda: sqrdmulh(1, 1, bits=8),  # no 8-bit SQRDMULH
        lambda: srshr(1, 0),  # immediate n in [1, e]
        lambda: srshr(1, 33),
        lambda: sqrshrn(1, 17, out_bits=16),
        lambda: sqxtn(2**31, 16),  # input must be 32-bit for a 32 -> 16 narrow
        lambda: urshr(-1, 1),
        lambda: rounding_divide_by_pot(1, 32),
        lambda: shift_round_half_up(1, 64),
        lambda: sdot(0, [1, 2, 3], [1, 2, 3]),
        lambda: sdot(0, [128, 0, 0, 0], [1, 0, 0, 0]),
        lambda: multiply_by_quantized_multiplier(1, -1, 0, rounding="single"),
        lambda: multiply_by_quantized_multiplier(MAX32, MAX32, 30, rounding="single"),
        lambda: multiply_by_quantized_multiplier(1, 1, 0, rounding="nearest"),
    ],
)
def test_invalid_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_float_operands_are_rejected():
    with pytest.raises(TypeError):
        sqrdmulh(np.array([1.0]), 1)
    with pytest.raises(TypeError):
        shift_round_half_even(2.5, 1)


# =============================================================================================
# 4. Exhaustive corner grids (as in the QEMU runs: corner x corner), then Hypothesis properties:
#    every primitive equals its plain-Python formula
# =============================================================================================

REGISTER_SHIFTS = {  # primitive -> (rounding, saturating)
    sshl: (False, False),
    srshl: (True, False),
    sqshl: (False, True),
    sqrshl: (True, True),
}


CORNERS_32 = sorted({
    MIN32, MIN32 + 1, MIN32 + 2, -(2**30) - 1, -(2**30), -(2**30) + 1, -(2**16) - 1, -(2**16),
    -255, -128, -5, -3, -2, -1, 0, 1, 2, 3, 5, 127, 255, 2**16, 2**16 + 1,
    2**30 - 1, 2**30, 2**30 + 1, MAX32 - 2, MAX32 - 1, MAX32,
})
CORNER_PAIRS_32 = [(a, b) for a in CORNERS_32 for b in CORNERS_32]
SHIFT_COUNT_CORNERS = list(range(-40, 41)) + [
    -128, 127, 128, 255, 256, 0x7FFFFF20, 0x1234FF00, MIN32,
]


@pytest.mark.parametrize(
    "primitive, ref",
    [
        (sqrdmulh, lambda a, b: ref_sqrdmulh(a, b, 32)),
        (sqdmulh, lambda a, b: ref_sqdmulh(a, b, 32)),
        (saturating_rounding_doubling_high_mul, ref_gemmlowp_srdhm),
        (sqadd, lambda a, b: ref_sat(a + b, 32)),
        (sqsub, lambda a, b: ref_sat(a - b, 32)),
        (sdiv, lambda n, d: 0 if d == 0 else ref_wrap(ref_c_div(n, d), 32)),
        (lambda acc, a: sqrdmlah(acc, a, a), lambda acc, a: ref_sqrdmlah(acc, a, a, 32)),
    ],
    ids=["sqrdmulh", "sqdmulh", "srdhm", "sqadd", "sqsub", "sdiv", "sqrdmlah"],
)
def test_binary_primitive_on_every_corner_pair(primitive, ref):
    assert_matches_reference(primitive, ref, CORNER_PAIRS_32)


@pytest.mark.parametrize(
    "register_shift", [sshl, srshl, sqshl, sqrshl, srshl_sve2], ids=lambda f: f.__name__
)
def test_register_shift_on_every_corner_value_and_count(register_shift):
    rounding, saturating = REGISTER_SHIFTS.get(register_shift, (True, False))
    whole_element = register_shift is srshl_sve2

    def ref(x, shift):
        return ref_register_shift(x, shift, 32, rounding=rounding, saturating=saturating,
                                  whole_element=whole_element)

    rows = [(x, count) for x in CORNERS_32 for count in SHIFT_COUNT_CORNERS]
    assert_matches_reference(register_shift, ref, rows)


def test_rounding_divide_by_pot_on_every_corner_value_and_exponent():
    rows = [(x, e) for x in CORNERS_32 for e in range(32)]
    assert_matches_reference(rounding_divide_by_pot, ref_round_half_away, rows)


@pytest.mark.parametrize(
    "rounding, ref", [("double", ref_mbqm_double), ("single", ref_mbqm_single)]
)
def test_multiply_by_quantized_multiplier_on_corner_grid(rounding, ref):
    multipliers = [0, 1, 2**30 - 1, 2**30, 2**30 + 1, 1518500250, MAX32]
    shifts = [-31, -20, -2, -1, 0] if rounding == "single" else [-31, -20, -2, -1, 0, 1, 2, 31]
    rows = [(x, m, s) for x in CORNERS_32 for m in multipliers for s in shifts
            if rounding == "double" or MIN32 <= ref(x, m, s) <= MAX32]
    assert_matches_reference(multiply_by_quantized_multiplier, ref, rows, rounding=rounding)



@PROPERTY
@given(rows_of(i32, i32))
def test_sqrdmulh_is_sat_of_2ab_plus_half_shifted(rows):
    assert_matches_reference(sqrdmulh, lambda a, b: ref_sqrdmulh(a, b, 32), rows)


@PROPERTY
@given(rows_of(i16, i16))
def test_sqrdmulh_16_is_sat_of_2ab_plus_half_shifted(rows):
    assert_matches_reference(sqrdmulh, lambda a, b: ref_sqrdmulh(a, b, 16), rows, bits=16)


@PROPERTY
@given(rows_of(i32, i32))
def test_sqdmulh_is_sat_of_2ab_floor_shifted(rows):
    assert_matches_reference(sqdmulh, lambda a, b: ref_sqdmulh(a, b, 32), rows)


@PROPERTY
@given(rows_of(i16, i16))
def test_sqdmulh_16_is_sat_of_2ab_floor_shifted(rows):
    assert_matches_reference(sqdmulh, lambda a, b: ref_sqdmulh(a, b, 16), rows, bits=16)


@PROPERTY
@given(rows_of(i32, i32, i32))
def test_sqrdmlah_rounds_and_saturates_once_after_the_add(rows):
    assert_matches_reference(sqrdmlah, lambda c, a, b: ref_sqrdmlah(c, a, b, 32), rows)


@PROPERTY
@given(rows_of(i16, i16, i16))
def test_sqrdmlah_16(rows):
    assert_matches_reference(sqrdmlah, lambda c, a, b: ref_sqrdmlah(c, a, b, 16), rows, bits=16)


@PROPERTY
@given(rows_of(i32, i32, i32))
def test_sqrdmlsh_rounds_and_saturates_once_after_the_subtract(rows):
    assert_matches_reference(sqrdmlsh, lambda c, a, b: ref_sqrdmlsh(c, a, b, 32), rows)


@PROPERTY
@given(rows_of(i32, i32))
def test_gemmlowp_srdhm_is_bit_identical_to_sqrdmulh(rows):
    assert_matches_reference(saturating_rounding_doubling_high_mul, ref_gemmlowp_srdhm, rows)
    srdhm_values = apply_columns(saturating_rounding_doubling_high_mul, rows)
    assert srdhm_values == apply_columns(sqrdmulh, rows)


@PROPERTY
@given(rows_of(i16, i16))
def test_gemmlowp_srdhm_16_is_bit_identical_to_sqrdmulh_16(rows):
    ref16 = lambda a, b: ref_gemmlowp_srdhm(a, b, 16)  # noqa: E731
    assert_matches_reference(saturating_rounding_doubling_high_mul, ref16, rows, bits=16)
    assert_matches_reference(sqrdmulh, ref16, rows, bits=16)


# Shift counts: small counts of both signs, the clamp boundaries, and arbitrary elements.
shift_counts_32 = st.one_of(
    st.integers(-40, 40),
    st.sampled_from([-128, 127, 255, 256, 0x7FFFFF20]),
    st.integers(MIN32, 2**32 - 1),
)
shift_counts_16 = st.one_of(st.integers(-20, 20), st.integers(-(2**15), 2**16 - 1))
shift_counts_8 = st.integers(-128, 255)



@pytest.mark.parametrize("register_shift", list(REGISTER_SHIFTS), ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "bits, values, counts",
    [(32, i32, shift_counts_32), (16, i16, shift_counts_16), (8, i8, shift_counts_8)],
    ids=["32", "16", "8"],
)
def test_neon_register_shift_uses_signed_low_byte_clamped_by_shiftsat(
    register_shift, bits, values, counts
):
    rounding, saturating = REGISTER_SHIFTS[register_shift]

    def ref(x, shift):
        return ref_register_shift(x, shift, bits, rounding=rounding, saturating=saturating)

    @PROPERTY
    @given(rows_of(values, counts))
    def check(rows):
        assert_matches_reference(register_shift, ref, rows, bits=bits)

    check()


@PROPERTY
@given(rows_of(i32, shift_counts_32))
def test_sve2_srshl_uses_the_whole_element(rows):
    def ref(x, shift):
        return ref_register_shift(x, shift, 32, rounding=True, saturating=False, whole_element=True)

    assert_matches_reference(srshl_sve2, ref, rows)


@PROPERTY
@given(rows_of(i32, st.integers(1, 32)))
def test_srshr_is_rhu_with_unbounded_add(rows):
    assert_matches_reference(srshr, lambda x, n: ref_wrap(ref_rshr(x, n, True), 32), rows)


@PROPERTY
@given(rows_of(i16, st.integers(1, 16)))
def test_sshr_is_floor(rows):
    assert_matches_reference(sshr, lambda x, n: x >> n, rows, bits=16)


@PROPERTY
@given(rows_of(unsigned_ints(32), st.integers(1, 32)))
def test_urshr_is_rhu_on_the_unsigned_value(rows):
    assert_matches_reference(urshr, lambda x, n: ref_rshr(x, n, True), rows)


@pytest.mark.parametrize(
    "out_bits, wide", [(8, i16), (16, i32), (32, i64)], ids=["16to8", "32to16", "64to32"]
)
def test_narrowing_shifts_match_formulas(out_bits, wide):
    @PROPERTY
    @given(rows_of(wide, st.integers(1, out_bits)))
    def check(rows):
        def ref_rounding(x, n):
            return ref_sat(ref_rshr(x, n, True), out_bits)

        def ref_floor(x, n):
            return ref_sat(x >> n, out_bits)

        def ref_unsigned(x, n):
            return ref_usat(ref_rshr(x, n, True), out_bits)

        assert_matches_reference(sqrshrn, ref_rounding, rows, out_bits=out_bits)
        assert_matches_reference(sqshrn, ref_floor, rows, out_bits=out_bits)
        assert_matches_reference(sqrshrun, ref_unsigned, rows, out_bits=out_bits)

    check()


@pytest.mark.parametrize(
    "out_bits, wide", [(8, i16), (16, i32), (32, i64)], ids=["16to8", "32to16", "64to32"]
)
def test_saturating_narrow_matches_formulas(out_bits, wide):
    @PROPERTY
    @given(rows_of(wide))
    def check(rows):
        assert_matches_reference(sqxtn, lambda x: ref_sat(x, out_bits), rows, out_bits=out_bits)
        assert_matches_reference(sqxtun, lambda x: ref_usat(x, out_bits), rows, out_bits=out_bits)

    check()


@PROPERTY
@given(rows_of(i32, i32))
def test_sqadd_and_sqsub_saturate_the_exact_sum(rows):
    assert_matches_reference(sqadd, lambda a, b: ref_sat(a + b, 32), rows)
    assert_matches_reference(sqsub, lambda a, b: ref_sat(a - b, 32), rows)


@PROPERTY
@given(rows_of(i8, i8))
def test_sqadd_8(rows):
    assert_matches_reference(sqadd, lambda a, b: ref_sat(a + b, 8), rows, bits=8)


@PROPERTY
@given(rows_of(i32, st.tuples(i8, i8, i8, i8), st.tuples(i8, i8, i8, i8)))
def test_sdot_wraps_acc_plus_four_products(rows):
    acc = np.array([r[0] for r in rows])
    a = np.array([r[1] for r in rows])
    b = np.array([r[2] for r in rows])
    expected = [ref_wrap(c + sum(x * y for x, y in zip(av, bv)), 32) for c, av, bv in rows]
    assert sdot(acc, a, b).tolist() == expected


@PROPERTY
@given(st.lists(i32, min_size=4, max_size=4), st.lists(i8, min_size=16, max_size=16),
       st.lists(i8, min_size=16, max_size=16))
def test_smmla_wraps_acc_plus_2x8_by_8x2(acc, a, b):
    acc_2x2 = np.array(acc).reshape(2, 2)
    a_2x8 = np.array(a).reshape(2, 8)
    b_8x2 = np.array(b).reshape(8, 2)
    expected = [[ref_wrap(acc[2 * i + j] + sum(a[8 * i + k] * b[2 * k + j] for k in range(8)), 32)
                 for j in range(2)] for i in range(2)]
    assert smmla(acc_2x2, a_2x8, b_8x2).tolist() == expected


@PROPERTY
@given(rows_of(i16, i8, i8))
def test_smlal_8_wraps_in_int16(rows):
    assert_matches_reference(smlal, lambda c, a, b: ref_wrap(c + a * b, 16), rows, bits=8)


@PROPERTY
@given(rows_of(i32, i32))
def test_sdiv_truncates_returns_zero_on_divide_by_zero_and_wraps(rows):
    def ref(n, d):
        return 0 if d == 0 else ref_wrap(ref_c_div(n, d), 32)

    assert_matches_reference(sdiv, ref, rows)


@PROPERTY
@given(rows_of(st.integers(0, 2**63 - 1), st.one_of(st.just(0), st.integers(0, 2**63 - 1))))
def test_udiv_64_floors_and_returns_zero_on_divide_by_zero(rows):
    assert_matches_reference(udiv, lambda n, d: 0 if d == 0 else n // d, rows, bits=64)


@PROPERTY
@given(rows_of(i32, st.integers(0, 31)))
def test_rounding_divide_by_pot_is_rhaz(rows):
    assert_matches_reference(rounding_divide_by_pot, ref_round_half_away, rows)
    assert_matches_reference(shift_round_half_away, ref_round_half_away, rows)


@PROPERTY
@given(rows_of(i32, st.integers(0, 31)))
def test_gemmlowp_neon_fixup_sequence_equals_rounding_divide_by_pot(rows):
    """fixup = (x & -e) >> 31; SRSHL(SQADD(x, fixup), -e) == RoundingDivideByPOT(x, e)."""
    x = np.array([r[0] for r in rows])
    e = np.array([r[1] for r in rows])
    fixup = (x & -e) >> 31
    assert srshl(sqadd(x, fixup), -e).tolist() == rounding_divide_by_pot(x, e).tolist()


@PROPERTY
@given(rows_of(i32, signed_ints(32).filter(lambda m: m >= 0), st.integers(-31, -1)))
def test_ruy_sqdmulh_srshl_sequence_equals_single_rounding_for_negative_shift(rows):
    """ruy/MVE: SSHL(left=0); SQDMULH; SRSHL(shift) == (x*m + 2^(t-1)) >> t when shift <= -1."""
    x, m, shift = (np.array(column) for column in zip(*rows))
    sequence = srshl(sqdmulh(x, m), shift)
    assert sequence.tolist() == [ref_mbqm_single(*row) for row in rows]


@PROPERTY
@given(rows_of(i32, i32, st.integers(-31, 31)))
def test_multiply_by_quantized_multiplier_double_rounding(rows):
    assert_matches_reference(
        multiply_by_quantized_multiplier, ref_mbqm_double, rows, rounding="double"
    )


@PROPERTY
@given(rows_of(i32, st.integers(0, MAX32), st.integers(-31, 30)).map(
    lambda rows: [r for r in rows if MIN32 <= ref_mbqm_single(*r) <= MAX32] or [(1, 2**30, -1)]))
def test_multiply_by_quantized_multiplier_single_rounding(rows):
    assert_matches_reference(
        multiply_by_quantized_multiplier, ref_mbqm_single, rows, rounding="single"
    )


ROUNDING_SHIFT_REFERENCES = {
    shift_floor: lambda x, s: x >> s,
    shift_trunc: ref_trunc,
    shift_round_half_up: ref_round_half_up,
    shift_round_half_away: ref_round_half_away,
    shift_round_half_even: ref_round_half_even,
}


@pytest.mark.parametrize(
    "rounding_shift", list(ROUNDING_SHIFT_REFERENCES), ids=lambda f: f.__name__
)
def test_rounding_shift_matches_exact_rational_rounding(rounding_shift):
    ref = ROUNDING_SHIFT_REFERENCES[rounding_shift]

    @PROPERTY
    @given(rows_of(i64, st.integers(0, 63)))
    def check(rows):
        assert_matches_reference(rounding_shift, ref, rows)

    check()


@PROPERTY
@given(rows_of(i64, st.integers(1, 64)))
def test_wrap_and_saturate_match_formulas(rows):
    for bits in {row[1] for row in rows}:
        x = np.array([row[0] for row in rows])
        assert np.asarray(wrap(x, bits)).tolist() == [ref_wrap(v, bits) for v, _ in rows]
        assert np.asarray(saturate(x, bits)).tolist() == [ref_sat(v, bits) for v, _ in rows]
