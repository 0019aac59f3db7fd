"""The x86 int8 primitives and the ``x86-vnni`` profile against this CPU's own instructions.

tests/native/x86_ops.c is compiled at test time three times (``-mavx512vnni -mavx512bw``,
``-mavxvnni``, ``-mavx2``) and run natively on random and adversarial records: every
``vpmaddubsw`` pair that saturates (all u8 pairs against weights 127 / -128), accumulators next
to the int32 limits, ``(-32768)^2 * 2`` in ``vpmaddwd``, float32 epilogue ties. Each result must
be bit-equal to :mod:`ibert_ref.hardware.x86`; two whole GEMMs written as oneDNN-style kernels
(u8-shifted activations, interleaved weights, compensation) must equal the ``x86-vnni``
profile's ``linear`` in every ``madd`` mode.

A feature missing from /proc/cpuinfo skips its tests (a plain skip, not a failure under CI);
a missing gcc is "missing tool: gcc".
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ibert_ref.datapath import make_datapath
from ibert_ref.hardware.x86 import (
    avx2_dot4,
    requantize_f32,
    vnni_matmul,
    vpdpbusd,
    vpdpbusds,
    vpmaddubsw,
    vpmaddwd,
)
from ibert_ref.quant import Dyadic

pytestmark = pytest.mark.cpu_isa

SOURCE = Path(__file__).parent / "native" / "x86_ops.c"
MIN32, MAX32 = -(2**31), 2**31 - 1
N_RANDOM = 20000

#: build name -> (gcc flags, /proc/cpuinfo flags it needs)
BUILDS = {
    "avx512vnni": (["-mavx512vnni", "-mavx512bw", "-DUSE_AVX512VNNI"], ("avx512_vnni", "avx512bw")),
    "avxvnni": (["-mavxvnni", "-DUSE_AVXVNNI"], ("avx_vnni",)),
    "avx2": (["-mavx2", "-DUSE_AVX2"], ("avx2",)),
}


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


class X86Ops:
    def __init__(self, folder: Path):
        self.folder, self.binaries, self.calls, self.cases = folder, {}, 0, {}
        self.flags = _cpu_flags()

    def binary(self, build: str) -> Path:
        flags, needs = BUILDS[build]
        missing = [f for f in needs if f not in self.flags]
        if missing:
            pytest.skip(f"this CPU lacks {', '.join(missing)} (/proc/cpuinfo): the {build} instructions cannot run here")
        if build not in self.binaries:
            gcc = shutil.which("gcc")
            if gcc is None:
                pytest.skip("missing tool: gcc (Debian package gcc)")
            out = self.folder / f"x86_ops_{build}"
            subprocess.run([gcc, "-O1", "-Wall", *flags, "-o", str(out), str(SOURCE)], check=True, capture_output=True)
            self.binaries[build] = out
        return self.binaries[build]

    def run(self, build: str, op: str, records=None, raw=None) -> np.ndarray:
        """Records (one row each, padded to a multiple of 32 with copies of the first), or a raw
        int64 stream (the gemm ops)."""
        binary = self.binary(build)
        if raw is None:
            records = np.asarray(records, dtype=np.int64)
            n = len(records)
            pad = (-n) % 32
            data = np.concatenate([records, np.repeat(records[:1], pad, axis=0)])
            self.cases[(build, op)] = self.cases.get((build, op), 0) + n
        else:
            data, n = np.asarray(raw, dtype=np.int64), None
            self.cases[(build, op)] = self.cases.get((build, op), 0) + 1
        self.calls += 1
        inp, out = self.folder / f"in{self.calls}.bin", self.folder / f"out{self.calls}.bin"
        data.astype("<i8").tofile(inp)
        subprocess.run([str(binary), op, str(inp), str(out)], check=True, capture_output=True, timeout=120)
        result = np.fromfile(out, dtype="<i8")
        return result if n is None else result[:n]


@pytest.fixture(scope="module")
def x86(tmp_path_factory):
    ops = X86Ops(tmp_path_factory.mktemp("x86_ops"))
    yield ops
    print("\nx86 records per (build, instruction):", ops.cases)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _dot_records(rng) -> np.ndarray:
    """(acc, u0..u3, w0..w3): random, the extreme byte patterns, accumulators at the int32 edges."""
    u = rng.integers(0, 256, (N_RANDOM, 4))
    w = rng.integers(-128, 128, (N_RANDOM, 4))
    acc = rng.integers(MIN32, MAX32 + 1, N_RANDOM, dtype=np.int64)
    edge = rng.random(N_RANDOM) < 0.4
    acc[edge] = np.where(rng.random(edge.sum()) < 0.5, MAX32 - rng.integers(0, 140000, edge.sum()),
                         MIN32 + rng.integers(0, 140000, edge.sum()))
    extreme = rng.random(N_RANDOM) < 0.3
    u[extreme] = 255
    w[extreme] = rng.choice([-128, 127], (extreme.sum(), 1))
    corners = [(MAX32, [255] * 4, [127] * 4), (MIN32, [255] * 4, [-128] * 4), (MAX32, [0] * 4, [127] * 4),
               (MIN32 + 1, [255] * 4, [-128] * 4), (0, [255] * 4, [-128] * 4), (-1, [1, 0, 0, 0], [-1, 0, 0, 0])]
    fixed = np.array([[a, *uu, *ww] for a, uu, ww in corners], dtype=np.int64)
    return np.concatenate([fixed, np.concatenate([acc[:, None], u, w], axis=1)])


def _maddubs_records(rng) -> np.ndarray:
    """(u0, u1, w0, w1): every u8 pair against (127, 127), (-128, -128), (127, -128); every
    (u0, w0) against (255, 127) and (255, -128); and random records."""
    u0, u1 = (g.ravel() for g in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    blocks = [np.stack([u0, u1, np.full_like(u0, w0), np.full_like(u0, w1)], axis=1)
              for w0, w1 in ((127, 127), (-128, -128), (127, -128))]
    uu, ww = (g.ravel() for g in np.meshgrid(np.arange(256), np.arange(-128, 128), indexing="ij"))
    blocks += [np.stack([uu, np.full_like(uu, 255), ww, np.full_like(uu, w1)], axis=1) for w1 in (127, -128)]
    blocks.append(np.concatenate([rng.integers(0, 256, (N_RANDOM, 2)), rng.integers(-128, 128, (N_RANDOM, 2))], axis=1))
    return np.concatenate(blocks)


# ---------------------------------------------------------------------------------------------
# Instructions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", ["avx512vnni", "avxvnni"])
def test_vpdpbusd_wraps_like_the_cpu(x86, build):
    records = _dot_records(np.random.default_rng(1))
    got = x86.run(build, "dpbusd", records)
    want = vpdpbusd(records[:, 0], records[:, 1:5], records[:, 5:9])
    np.testing.assert_array_equal(got, want)
    assert np.any(records[:, 0] + (records[:, 1:5] * records[:, 5:9]).sum(1) > MAX32)  # wraps exercised


@pytest.mark.parametrize("build", ["avx512vnni", "avxvnni"])
def test_vpdpbusds_saturates_like_the_cpu(x86, build):
    records = _dot_records(np.random.default_rng(2))
    got = x86.run(build, "dpbusds", records)
    want = vpdpbusds(records[:, 0], records[:, 1:5], records[:, 5:9])
    np.testing.assert_array_equal(got, want)
    assert np.any(got == MAX32) and np.any(got == MIN32)


@pytest.mark.parametrize("build", ["avx2", "avx512vnni"])
def test_vpmaddubsw_every_saturating_pair(x86, build):
    records = _maddubs_records(np.random.default_rng(3))
    got = x86.run(build, "maddubs", records)
    want = vpmaddubsw(records[:, 0:2], records[:, 2:4])
    np.testing.assert_array_equal(got, want)
    exact = (records[:, 0:2] * records[:, 2:4]).sum(1)
    saturated = (exact > 32767) | (exact < -32768)
    assert saturated.sum() > 10000 and np.all(got[saturated] == np.clip(exact[saturated], -32768, 32767))


def test_vpmaddwd_matches_the_cpu(x86):
    rng = np.random.default_rng(4)
    records = rng.integers(-32768, 32768, (N_RANDOM, 4))
    records[:4] = [[-32768, -32768, -32768, -32768], [32767, 32767, 32767, 32767], [-32768, 32767, -32768, 32767],
                   [-32768, -32768, 32767, -32768]]
    got = x86.run("avx2", "maddwd", records)
    np.testing.assert_array_equal(got, vpmaddwd(records[:, 0:2], records[:, 2:4]))
    assert got[0] == MIN32  # 2^31 wraps


def test_avx2_dot_step_matches_the_cpu(x86):
    records = _dot_records(np.random.default_rng(5))
    got = x86.run("avx2", "dot4", records)
    np.testing.assert_array_equal(got, avx2_dot4(records[:, 0], records[:, 1:5], records[:, 5:9]))
    assert not np.array_equal(got, vpdpbusd(records[:, 0], records[:, 1:5], records[:, 5:9]))  # the pairs saturated


def test_float32_requantization_epilogue_matches_the_cpu(x86):
    """``cvtps2dq(cvtdq2ps(z) * alpha)`` = :func:`requantize_f32` = the profile's ``dyadic_round``
    (``requant="cutlass-f32"``), on I-BERT multipliers and on exact float32 ties (alpha = 0.5)."""
    rng = np.random.default_rng(6)
    n = N_RANDOM
    m = rng.integers(1 << 30, (1 << 31) + 1, n) * rng.choice([-1, 1], n)
    e = rng.integers(31, 56, n)
    z = rng.integers(MIN32, MAX32 + 1, n, dtype=np.int64) >> rng.integers(0, 31, n)
    m[:2000], e[:2000] = 1 << 30, 31  # 0.5
    z[:2000] = 2 * rng.integers(-(1 << 22), 1 << 22, 2000) + 1  # odd: every product is a float32 tie
    alpha = np.ldexp(m.astype(np.float64), -e).astype(np.float32)
    got = x86.run("avx512vnni", "requant_f32", np.stack([z, alpha.view(np.uint32).astype(np.int64)], axis=1))
    np.testing.assert_array_equal(got, requantize_f32(z, alpha))
    dp = make_datapath("x86-vnni")
    np.testing.assert_array_equal(got, dp.dyadic_round(z, Dyadic(m=m, e=e)))
    assert np.all(got[:2000] % 2 == 0)  # the ties went to even


# ---------------------------------------------------------------------------------------------
# Whole GEMMs: a real kernel against the profile
# ---------------------------------------------------------------------------------------------


def _adversarial_gemm(rng, m=16, k=256, n=64):
    """int8 activations with saturating rows (x = 127: u = 255) and weights at +-127 / -128."""
    x = rng.integers(-128, 128, (m, k))
    x[: m // 4] = 127
    x[m // 4 : m // 2, ::2] = 120
    w = rng.integers(-128, 128, (k, n))
    w[:, : n // 4] = 127
    w[:, n // 4 : n // 2] = -128
    w[::3, n // 2 :] = rng.choice([-128, 127], (len(range(0, k, 3)), n - n // 2))
    return x, w


@pytest.mark.parametrize("build, op, madd", [("avx512vnni", "gemm_dpbusd", "vpdpbusd"),
                                              ("avx512vnni", "gemm_dpbusds", "vpdpbusds"),
                                              ("avx2", "gemm_maddubs", "vpmaddubsw")])
def test_profile_gemm_equals_a_real_kernel(x86, build, op, madd):
    x, w = _adversarial_gemm(np.random.default_rng(7))
    m, k = x.shape
    n = w.shape[1]
    got = x86.run(build, op, raw=np.concatenate([[m, k, n], x.ravel(), w.ravel()])).reshape(m, n)
    out, info = vnni_matmul(x, w, madd=madd)
    np.testing.assert_array_equal(got, out)
    dp = make_datapath("x86-vnni", madd=madd)
    dp.begin_run()
    np.testing.assert_array_equal(got, dp.linear(x, w.T, np.zeros(n, dtype=np.int64)))
    events = dp.end_run()
    if madd == "vpmaddubsw":
        assert info["pair_saturations"] > 0 and not np.array_equal(got, x @ w)
        assert events and events[0].action == "saturated" and events[0].count == info["pair_saturations"]
    else:
        np.testing.assert_array_equal(got, x @ w)  # K = 256: no int32 overflow, the compensation is exact
        assert not events


@pytest.mark.parametrize("op, madd", [("gemm_dpbusd", "vpdpbusd"), ("gemm_dpbusds", "vpdpbusds")])
def test_int32_lane_overflow_of_a_long_gemm_equals_a_real_kernel(x86, op, madd):
    """K = 68,000 with u = 255 against weights 127 / -128: the u8-shifted sum leaves int32.
    ``vpdpbusd`` wraps, ``vpdpbusds`` clamps once per instruction (4 k); then the compensation
    is subtracted."""
    rng = np.random.default_rng(8)
    m, k, n = 2, 68000, 16
    x = np.full((m, k), 127)
    x[1, ::2] = rng.integers(-128, 128, k // 2)
    w = np.where(np.arange(n) < n // 2, 127, -128) * np.ones((k, 1), dtype=np.int64)
    w[:, -2:] = rng.integers(-128, 128, (k, 2))
    got = x86.run("avx512vnni", op, raw=np.concatenate([[m, k, n], x.ravel(), w.ravel()])).reshape(m, n)
    out, info = vnni_matmul(x, w, madd=madd)
    np.testing.assert_array_equal(got, out)
    assert info["events"]
    # modulo 2^32 the wraps cancel (the true x @ w fits int32); the clamps do not
    assert np.array_equal(got, x @ w) == (madd == "vpdpbusd")
    dp = make_datapath("x86-vnni", madd=madd)
    dp.begin_run()
    np.testing.assert_array_equal(got, dp.linear(x, w.T, np.zeros(n, dtype=np.int64)))
    assert {e.action for e in dp.end_run()} == {"wrapped" if madd == "vpdpbusd" else "saturated"}
