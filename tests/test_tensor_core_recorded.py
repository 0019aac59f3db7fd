"""The ``tensor-core`` profile's accumulator against real int8 Tensor Core results.

``tests/data/imma_h100.npz`` was recorded on an NVIDIA H100 80GB HBM3 (CUDA 13.0, CuPy NVRTC,
torch 2.11.0+cu130) by ``scripts/gpu_imma_check.py``: inline-PTX
``mma.sync.aligned.m16n8k32.row.col{.satfinite}.s32.s8.s8.s32`` chained over k, and
``torch._int_mm`` (cuBLASLt). The inputs are stored beside the outputs, so these tests re-run our
model (``ibert_ref.hardware.accumulate.int_matmul``) on exactly what the GPU was given.
"""

from pathlib import Path

import numpy as np
import pytest

from ibert_ref.hardware.accumulate import int_matmul
from ibert_ref.hardware.profiles import PROFILES

RECORD = np.load(Path(__file__).with_name("data") / "imma_h100.npz")
MMA_CASES = ("random", "cross_and_return", "inside_one_instruction", "long_k")
TC = PROFILES["tensor-core"]


def _mma(case, overflow, k_step=TC["k_step"]):
    a, b, c = (RECORD[f"{case}.{r}"] for r in "abc")
    return int_matmul(a, b, acc_bits=TC["acc_bits"], overflow=overflow, k_step=k_step, initial=c)


def test_recording_is_from_a_tensor_core_gpu():
    assert "H100" in str(RECORD["device"])
    assert TC["overflow"] == "saturate" and TC["k_step"] == 32 and TC["acc_bits"] == 32


@pytest.mark.parametrize("case", MMA_CASES)
def test_satfinite_mma_equals_the_tensor_core_profile(case):
    assert np.array_equal(_mma(case, TC["overflow"]).values, RECORD[f"{case}.d_sat"])


@pytest.mark.parametrize("case", MMA_CASES)
def test_plain_mma_wraps_mod_2_32(case):
    assert np.array_equal(_mma(case, "wrap").values, RECORD[f"{case}.d_wrap"])


def test_the_recording_has_overflows_that_saturate_and_wrap_tell_apart():
    for case in ("cross_and_return", "long_k"):
        assert _mma(case, "saturate").events, case
        assert not np.array_equal(RECORD[f"{case}.d_sat"], RECORD[f"{case}.d_wrap"]), case


def test_clamp_is_once_per_k32_instruction_not_per_k16_or_per_product():
    """Inside each instruction the running sum crosses INT32_MAX/MIN and comes back: the GPU kept
    the exact value, so it clamps once per 32-wide chunk; a k_step=16 model clamps mid-way."""
    real = RECORD["inside_one_instruction.d_sat"]
    a, b, c = (RECORD[f"inside_one_instruction.{r}"] for r in "abc")
    exact = c.astype(np.int64) + a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(real, exact)
    assert not np.array_equal(_mma("inside_one_instruction", "saturate", k_step=16).values, real)


def test_clamp_happens_between_instructions_not_only_at_the_end():
    real = RECORD["cross_and_return.d_sat"]
    assert not np.array_equal(_mma("cross_and_return", "saturate", k_step=None).values, real)


@pytest.mark.parametrize("case", ["intmm", "intmm_cross"])
def test_torch_int_mm_on_cuda_saturates_in_increasing_k(case):
    """cuBLASLt's int8 GEMM (torch._int_mm) saturates; with a sum that crosses INT32_MAX and comes
    back, it ends where an in-order saturating accumulator ends, not on the exact value."""
    a, b, real = (RECORD[f"{case}.{r}"] for r in ("a", "b", "d"))
    assert np.array_equal(int_matmul(a, b, acc_bits=32, overflow="saturate", k_step=32).values, real)
    assert not np.array_equal(int_matmul(a, b, acc_bits=32, overflow="wrap").values, real)
