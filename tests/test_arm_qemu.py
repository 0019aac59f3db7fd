"""The ARM primitives against real AArch64 instructions, executed under qemu-user.

tests/native/arm_ops.c (NEON, FEAT_RDM SQRDMLAH, FEAT_DotProd SDOT, FEAT_I8MM SMMLA, SVE2) is
cross-compiled at test time (``aarch64-linux-gnu-gcc -static -march=armv8.6-a+i8mm+sve2``) and
run under ``qemu-aarch64 -cpu max`` on thousands of random records plus the corners each
instruction is known for (INT32_MIN x INT32_MIN, shift counts 0 / 31 / 32 / 33 / 255 / 256,
ties of both signs, accumulators next to the int32 limits). Records go to the program as a file
of int64, results come back the same way, and every result must be bit-equal to
:mod:`ibert_ref.hardware.primitives` (and, for the requantization pipelines, to the ``arm`` and
``gemmlowp`` datapaths' ``dyadic_round``).

Without the tools the tests skip with "missing tool: ..." (a failure under CI=true).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from ibert_ref.datapath import make_datapath
from ibert_ref.hardware import (
    multiply_by_quantized_multiplier,
    sdot,
    smmla,
    sqdmulh,
    sqrdmlah,
    sqrdmulh,
    sqrshl,
    sqrshrn,
    srshl,
    srshl_sve2,
    sshl,
)
from ibert_ref.hardware.profiles import tflite_multiplier
from ibert_ref.quant import Dyadic

pytestmark = pytest.mark.qemu

SOURCE = __file__.rsplit("/", 1)[0] + "/native/arm_ops.c"
N_RANDOM = 4000
MIN32, MAX32 = -(2**31), 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Building and running the program
# ---------------------------------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"missing tool: {name} (Debian package {package})")
    return path


class ArmOps:
    """The cross-compiled program; ``run(op, records)`` executes it under qemu."""

    def __init__(self, folder, qemu: str, binary, sve2: bool):
        self.folder, self.qemu, self.binary, self.sve2 = folder, qemu, binary, sve2
        self.calls = 0
        self.cases = {}  # op -> records run (printed at the end with pytest -s)

    def run(self, op: str, records, n_results: int = 1) -> np.ndarray:
        records_i64 = np.asarray(records, dtype=np.int64)
        n = records_i64.shape[0]
        pad = (-n) % 16
        padded = np.concatenate([records_i64, np.repeat(records_i64[:1], pad, axis=0)])  # valid filler records
        self.calls += 1
        self.cases[op] = self.cases.get(op, 0) + n
        inp, out = self.folder / f"in{self.calls}.bin", self.folder / f"out{self.calls}.bin"
        padded.astype("<i8").tofile(inp)
        subprocess.run([self.qemu, "-cpu", "max", str(self.binary), op, str(inp), str(out)], check=True,
                       capture_output=True, timeout=60)
        result = np.fromfile(out, dtype="<i8").reshape(n + pad, n_results)[:n]
        return result[:, 0] if n_results == 1 else result


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    gcc = _tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    qemu = _tool("qemu-aarch64", "qemu-user")
    folder = tmp_path_factory.mktemp("arm_ops")
    binary = folder / "arm_ops"
    base = [gcc, "-O1", "-Wall", "-static", "-o", str(binary), SOURCE]
    sve2 = subprocess.run(base + ["-march=armv8.6-a+i8mm+sve2", "-DWITH_SVE2"], check=False,
                          capture_output=True).returncode == 0
    if not sve2:
        subprocess.run(base + ["-march=armv8.6-a+i8mm"], check=True, capture_output=True)
    ops = ArmOps(folder, qemu, binary, sve2)
    yield ops
    print("\nqemu-aarch64 records per instruction/pipeline:", ops.cases)


# ---------------------------------------------------------------------------------------------
# Inputs: random plus corners
# ---------------------------------------------------------------------------------------------

RNG_SEED = 20261205


def _corners(bits: int) -> np.ndarray:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    powers = [1 << k for k in range(bits - 1)]
    values = {lo, lo + 1, -1, 0, 1, hi - 1, hi}
    values |= set(powers) | {-p for p in powers} | {p - 1 for p in powers} | {1 - p for p in powers}
    return np.array(sorted(v for v in values if lo <= v <= hi), dtype=np.int64)


def _random(rng, bits: int, n: int) -> np.ndarray:
    """Uniform values, and values of random magnitude (so small numbers are common too)."""
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    uniform = rng.integers(lo, hi, n // 2, dtype=np.int64)
    widths = rng.integers(0, bits, n - n // 2)
    small = rng.integers(-(1 << 62), 1 << 62, n - n // 2, dtype=np.int64) >> (63 - widths)
    return np.concatenate([uniform, small])


def _pairs_of(values: np.ndarray) -> np.ndarray:
    a, b = np.meshgrid(values, values, indexing="ij")
    return np.stack([a.ravel(), b.ravel()], axis=1)


def _doubling_mul_ties(rng, bits: int, n: int) -> np.ndarray:
    """(a, b) with ``a*b / 2^(bits-1)`` exactly half-way (both signs): a = odd*2^j, b = odd*2^(bits-2-j)."""
    j = rng.integers(0, bits - 1, n)
    odd_a = 2 * rng.integers(-(1 << 6), 1 << 6, n) + 1
    odd_b = 2 * rng.integers(-(1 << 6), 1 << 6, n) + 1
    a = odd_a << j
    b = odd_b << (bits - 2 - j)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    keep = (a >= lo) & (a <= hi) & (b >= lo) & (b <= hi)
    return np.stack([a[keep], b[keep]], axis=1)


def _binary_records(rng, bits: int) -> np.ndarray:
    corners = _corners(bits)
    rand = np.stack([_random(rng, bits, N_RANDOM), _random(rng, bits, N_RANDOM)], axis=1)
    return np.concatenate([_pairs_of(corners), rand, _doubling_mul_ties(rng, bits, 1000)])


def _shift_records(rng, bits: int) -> np.ndarray:
    """(x, shift element) for register shifts: every count in [-(bits+2), bits+2], counts whose low
    byte differs from the element (255, 256, -256, 0x1234FF00), and right-shift ties."""
    counts = np.arange(-(bits + 2), bits + 3)
    odd = {8: [127, -128, 128, -129], 16: [255, 256, -256, 1000, -1000, 0x7F00, -0x7F01], 32: [255, 256, -256, 0x1234FF00, -0x1234FF00, 128, -129, MAX32, MIN32]}[bits]
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    counts = np.array([c for c in list(counts) + odd if lo <= c <= hi], dtype=np.int64)
    grid = np.stack(np.meshgrid(_corners(bits), counts, indexing="ij"), axis=-1).reshape(-1, 2)
    x = _random(rng, bits, N_RANDOM)
    s = rng.choice(counts, N_RANDOM)
    s_right = rng.integers(1, bits, 1000)
    ties = (2 * rng.integers(-(1 << (bits - 2)), 1 << (bits - 2), 1000) + 1) << (s_right - 1)
    tie_ok = (ties >= lo) & (ties <= hi)
    tie_records = np.stack([ties[tie_ok], -s_right[tie_ok]], axis=1)
    return np.concatenate([grid, np.stack([x, s], axis=1), tie_records])


# ---------------------------------------------------------------------------------------------
# NEON (and FEAT_RDM) elementwise instructions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 16])
def test_sqrdmulh_matches_neon(arm, bits):
    records = _binary_records(np.random.default_rng(RNG_SEED + bits), bits)
    got = arm.run(f"sqrdmulh{bits}", records)
    want = np.asarray(sqrdmulh(records[:, 0], records[:, 1], bits=bits), dtype=np.int64)
    np.testing.assert_array_equal(got, want)
    assert got[(records[:, 0] == -(1 << (bits - 1))) & (records[:, 1] == -(1 << (bits - 1)))][0] == (1 << (bits - 1)) - 1


def test_sqdmulh_matches_neon(arm):
    records = _binary_records(np.random.default_rng(RNG_SEED + 1), 32)
    np.testing.assert_array_equal(arm.run("sqdmulh32", records), sqdmulh(records[:, 0], records[:, 1]))


@pytest.mark.parametrize("bits", [32, 16])
def test_sqrdmlah_matches_neon(arm, bits):
    rng = np.random.default_rng(RNG_SEED + 100 + bits)
    pairs = _binary_records(rng, bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    acc_choices = np.array([lo, lo + 1, -1, 0, 1, hi - 1, hi], dtype=np.int64)
    acc = np.where(rng.random(len(pairs)) < 0.5, rng.choice(acc_choices, len(pairs)), _random(rng, bits, len(pairs)))
    records = np.concatenate([acc[:, None], pairs], axis=1)
    got = arm.run(f"sqrdmlah{bits}", records)
    want = sqrdmlah(records[:, 0], records[:, 1], records[:, 2], bits=bits)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bits", [32, 16, 8])
def test_srshl_matches_neon(arm, bits):
    records = _shift_records(np.random.default_rng(RNG_SEED + 200 + bits), bits)
    got = arm.run(f"srshl{bits}", records)
    np.testing.assert_array_equal(got, srshl(records[:, 0], records[:, 1], bits=bits))


@pytest.mark.parametrize("op, model", [("sshl32", sshl), ("sqrshl32", sqrshl)])
def test_register_shifts_match_neon(arm, op, model):
    records = _shift_records(np.random.default_rng(RNG_SEED + 300), 32)
    np.testing.assert_array_equal(arm.run(op, records), model(records[:, 0], records[:, 1], bits=32))


@pytest.mark.parametrize("out_bits", [8, 16, 32])
def test_sqrshrn_matches_neon(arm, out_bits):
    rng = np.random.default_rng(RNG_SEED + 400 + out_bits)
    in_bits = 2 * out_bits
    x = np.concatenate([np.repeat(_corners(in_bits), out_bits), _random(rng, in_bits, N_RANDOM)])
    n = np.concatenate([np.tile(np.arange(1, out_bits + 1), len(_corners(in_bits))),
                        rng.integers(1, out_bits + 1, N_RANDOM)])
    tie_n = rng.integers(1, out_bits + 1, 1000)
    tie_x = (2 * rng.integers(-(1 << (min(in_bits, 62) - out_bits - 1)), 1 << (min(in_bits, 62) - out_bits - 1), 1000) + 1) << (tie_n - 1)
    records = np.concatenate([np.stack([x, n], axis=1), np.stack([tie_x, tie_n], axis=1)])
    got = arm.run(f"sqrshrn{out_bits}", records)
    np.testing.assert_array_equal(got, sqrshrn(records[:, 0], records[:, 1], out_bits=out_bits))


# ---------------------------------------------------------------------------------------------
# Dot products: SDOT (FEAT_DotProd), SMMLA (FEAT_I8MM)
# ---------------------------------------------------------------------------------------------


def _int8_operands(rng, shape) -> np.ndarray:
    """Random int8, with a quarter of the rows all -128 or all 127 (the largest products)."""
    x = rng.integers(-128, 128, shape, dtype=np.int64)
    rows = rng.random(shape[0])
    x[rows < 0.125] = -128
    x[(rows >= 0.125) & (rows < 0.25)] = 127
    return x


def _accumulators(rng, n) -> np.ndarray:
    """Accumulators spread over int32 and packed next to its limits (so the sum wraps)."""
    near = np.concatenate([MAX32 - rng.integers(0, 70000, n // 3), MIN32 + rng.integers(0, 70000, n // 3)])
    return np.concatenate([near, rng.integers(MIN32, MAX32 + 1, n - len(near), dtype=np.int64)])


def test_sdot_matches_neon(arm):
    rng = np.random.default_rng(RNG_SEED + 500)
    a, b = _int8_operands(rng, (N_RANDOM, 4)), _int8_operands(rng, (N_RANDOM, 4))
    rng.shuffle(b)
    acc = _accumulators(rng, N_RANDOM)
    records = np.concatenate([acc[:, None], a, b], axis=1)
    got = arm.run("sdot", records)
    np.testing.assert_array_equal(got, sdot(acc, a, b))
    assert np.any(acc + (a * b).sum(axis=1) > MAX32)  # the wrap was exercised


def test_smmla_matches_neon(arm):
    rng = np.random.default_rng(RNG_SEED + 600)
    n = N_RANDOM // 2
    acc = _accumulators(rng, 4 * n).reshape(n, 4)
    rng.shuffle(acc.reshape(-1))
    vn, vm = _int8_operands(rng, (n, 16)), _int8_operands(rng, (n, 16))
    records = np.concatenate([acc, vn, vm], axis=1)
    got = arm.run("smmla", records, n_results=4)
    # Vn holds A (2x8, row-major); Vm holds B^T (2x8, row-major)
    want = smmla(acc.reshape(n, 2, 2), vn.reshape(n, 2, 8), vm.reshape(n, 2, 8).swapaxes(1, 2))
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.int64).reshape(n, 4))


# ---------------------------------------------------------------------------------------------
# The requantization pipelines
# ---------------------------------------------------------------------------------------------


def _requant_records(rng) -> np.ndarray:
    """(x, m32, shift) with shift in [-31, 31]: random, corners, and m = 2^30 (0.5: RDBPOT ties)."""
    n = N_RANDOM
    x = np.concatenate([_random(rng, 32, n), np.repeat(_corners(32), 4)])
    m = np.concatenate([rng.integers(1 << 30, 1 << 31, n // 2), -rng.integers(1 << 30, 1 << 31, n // 4),
                        rng.integers(MIN32, MAX32 + 1, n - n // 2 - n // 4), np.tile([MIN32, MAX32, 1 << 30, -(1 << 30)], len(_corners(32)))])
    shift = np.concatenate([rng.integers(-31, 8, n), np.tile([0, -31, -1, 1], len(_corners(32)))])
    ties = np.stack([_random(rng, 32, 1000), np.full(1000, 1 << 30), rng.integers(-31, 1, 1000)], axis=1)
    return np.concatenate([np.stack([x, m, shift], axis=1), ties])


def test_gemmlowp_requantization_matches_neon(arm):
    """TFLite/gemmlowp MultiplyByQuantizedMultiplier (double rounding) = NEON SSHL, SQRDMULH,
    then RoundingDivideByPOT as fixup + SQADD + SRSHL."""
    records = _requant_records(np.random.default_rng(RNG_SEED + 700))
    got = arm.run("mbqm_gemmlowp", records)
    want = multiply_by_quantized_multiplier(records[:, 0], records[:, 1], records[:, 2], "double")
    np.testing.assert_array_equal(got, want)


def _dyadic_records(rng):
    """I-BERT multipliers ``m / 2^e`` (2^30 <= |m| <= 2^31, e in 0..62) and int32 inputs."""
    n = N_RANDOM
    m = rng.integers(1 << 30, (1 << 31) + 1, n) * rng.choice([-1, 1], n)
    m[:8] = [1 << 31, -(1 << 31), 1 << 30, -(1 << 30), 1 << 31, (1 << 31) - 1, 1 << 30, 3 << 29]
    e = rng.integers(1, 63, n)
    e[:8] = [1, 62, 31, 32, 30, 33, 62, 31]
    z = np.concatenate([_random(rng, 32, n - 16), [MIN32, MAX32, -1, 0, 1, MIN32 + 1, 3, -3] * 2])
    return z, m, e


@pytest.mark.parametrize("profile, op", [("arm", "requant_arm"), ("gemmlowp", "mbqm_gemmlowp")])
def test_profile_requantization_matches_neon(arm, profile, op):
    """The datapath's ``dyadic_round`` (I-BERT's ``z * m / 2^e`` in the profile's rounding) equals the
    NEON sequence on the TFLite form ``(m32, shift) = tflite_multiplier(m, e)``."""
    z, m, e = _dyadic_records(np.random.default_rng(RNG_SEED + 800))
    dp = make_datapath("arm") if profile == "arm" else make_datapath("generic", requant="gemmlowp")
    m32, shift = tflite_multiplier(Dyadic(m=m, e=e))
    keep = shift >= -31  # gemmlowp: right > 31 flushes the multiplier (TFLite QuantizeMultiplier)
    if profile == "gemmlowp":
        z, m, e, m32, shift = z[keep], m[keep], e[keep], m32[keep], shift[keep]
    got = arm.run(op, np.stack([z, m32, shift], axis=1))
    want = dp.dyadic_round(z, Dyadic(m=m, e=e))
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# SVE2
# ---------------------------------------------------------------------------------------------


def _need_sve2(arm):
    if not arm.sve2:
        pytest.skip("the AArch64 cross compiler cannot build SVE2 (-march=...+sve2)")


def test_sve2_srshl_reads_the_whole_element(arm):
    _need_sve2(arm)
    records = _shift_records(np.random.default_rng(RNG_SEED + 900), 32)
    got = arm.run("sve_srshl32", records)
    np.testing.assert_array_equal(got, srshl_sve2(records[:, 0], records[:, 1], bits=32))
    assert not np.array_equal(got, srshl(records[:, 0], records[:, 1], bits=32))  # NEON reads the low byte


def test_sve2_sqrdmulh_matches(arm):
    _need_sve2(arm)
    records = _binary_records(np.random.default_rng(RNG_SEED + 901), 32)
    np.testing.assert_array_equal(arm.run("sve_sqrdmulh32", records), sqrdmulh(records[:, 0], records[:, 1]))


def test_sve_sdot_matches(arm):
    _need_sve2(arm)
    rng = np.random.default_rng(RNG_SEED + 902)
    a, b = _int8_operands(rng, (N_RANDOM, 4)), _int8_operands(rng, (N_RANDOM, 4))
    acc = _accumulators(rng, N_RANDOM)
    got = arm.run("sve_sdot", np.concatenate([acc[:, None], a, b], axis=1))
    np.testing.assert_array_equal(got, sdot(acc, a, b))
