"""Exact int8 x int8 -> int32 GEMMs for the compiled backend, and the self-check that guards them.

Candidates (measured in benchmarks/README.md, "Choosing the integer GEMM"):

``torch``  ``torch._int_mm`` (oneDNN / FBGEMM s8 x s8 -> s32 on CPU: VNNI ``vpdpbusd`` or AMX
           tiles, exact int32 accumulation) — about twice the float32 BLAS rate with VNNI and
           several times it with AMX-INT8. Needs torch (the ``verify`` extra).
``blas``   float32 BLAS in exact K-chunks, :func:`ibert_ref.backends.fast_intops.matmul_exact` (the NumPy
           backend's GEMM): every partial sum an integer below 2^24. Needs nothing but NumPy.

A library int8 kernel is trusted only after :func:`self_check` has reproduced, bit for bit,
the int64 products of adversarial operands: every operand at -128 or 127 with K = 3072 (the
largest inner dimension of roberta-base), where an implementation built on the u8 x s8
``vpmaddubsw`` instruction (pairs of products summed into a *saturating* int16) or on a
u8-shifted operand without exact compensation goes wrong. If the check fails the backend uses
``blas`` and says so (:data:`GEMM_FALLBACK_REASON`).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from . import fast_intops

#: Environment override of the GEMM choice: ``torch`` or ``blas``.
GEMM_ENV = "IBERT_REF_INT_GEMM"
#: Why the ``torch`` GEMM is not in use (None while it is, or before the first choice).
GEMM_FALLBACK_REASON = None

_CHECK_K = 3072


def adversarial_operands(k: int = _CHECK_K):
    """int8 operand pairs ``(a (m, k), b (k, n))`` that break inexact int8 GEMMs: all -128
    times all -128 (every product 2^14, the sum k * 2^14 = 50,331,648 for k = 3072), all 127
    times all -128, alternating signs (u8-shifted operands: every compensation term at its
    extreme), and -128 against 127 in pairs (the ``vpmaddubsw`` int16 saturation pattern:
    255 * 127 + 255 * 127 > 2^15 once shifted to u8)."""
    rng = np.random.default_rng(12345)
    m, n = 33, 40
    full = lambda v, shape: np.full(shape, v, dtype=np.int8)  # noqa: E731
    alt = np.where(np.arange(k) % 2 == 0, -128, 127).astype(np.int8)
    pairs = [
        (full(-128, (m, k)), full(-128, (k, n))),
        (full(127, (m, k)), full(-128, (k, n))),
        (full(-128, (m, k)), full(127, (k, n))),
        (np.tile(alt, (m, 1)), np.tile(alt[:, None], (1, n))),
        (np.tile(alt, (m, 1)), np.tile(alt[::-1, None], (1, n))),
        (rng.choice(np.array([-128, 127], dtype=np.int8), size=(m, k)),
         rng.choice(np.array([-128, 127], dtype=np.int8), size=(k, n))),
        (rng.integers(-128, 128, size=(m, k), dtype=np.int8), rng.integers(-128, 128, size=(k, n), dtype=np.int8)),
    ]
    return pairs


def reference_int_matmul(a, b) -> np.ndarray:
    """``a @ b`` summed in int64 (the definition)."""
    return np.matmul(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))


class BlasGemm:
    """int8 x int8 on float32 BLAS in exact K-chunks (:func:`ibert_ref.backends.fast_intops.matmul_exact`)."""

    name = "blas"

    def matmul_i8(self, x_i8: np.ndarray, w_t_i8: np.ndarray) -> np.ndarray:
        """``x (M, K) @ w_t (K, N)`` exactly: int32 when one float32 GEMM suffices (K <= 1024), else int64."""
        return fast_intops.matmul_exact(x_i8, w_t_i8, narrow=True)


class TorchIntGemm:
    """int8 x int8 -> int32 with ``torch._int_mm`` (exact integer accumulation)."""

    name = "torch"

    def __init__(self):
        import torch  # noqa: PLC0415 - optional accelerator

        self.torch = torch
        if not hasattr(torch, "_int_mm"):
            raise ImportError(f"torch {torch.__version__} has no _int_mm")

    def matmul_i8(self, x_i8: np.ndarray, w_t_i8: np.ndarray) -> np.ndarray:
        """``x (M, K) @ w_t (K, N)`` as int32. ``w_t`` may be the transposed view of a C-contiguous
        (N, K) weight (no copy: the GEMM reads it as a column-major operand)."""
        t = self.torch
        a = t.from_numpy(np.ascontiguousarray(x_i8))
        w_t_i8 = np.asarray(w_t_i8)
        if w_t_i8.flags.f_contiguous and not w_t_i8.flags.c_contiguous:
            b = t.from_numpy(w_t_i8.T).t()  # (N, K) row-major seen as (K, N)
        else:
            b = t.from_numpy(np.ascontiguousarray(w_t_i8))
        return t._int_mm(a, b).numpy()


def self_check(gemm) -> bool:
    """True iff ``gemm`` reproduces the int64 products of :func:`adversarial_operands`, for
    row-major and transposed (column-major) right operands and a few row counts."""
    for a, b in adversarial_operands():
        ref = reference_int_matmul(a, b)
        for rows in (1, 7, a.shape[0]):
            for b_op in (b, np.ascontiguousarray(b.T).T):
                got = np.asarray(gemm.matmul_i8(a[:rows], b_op))
                if got.shape != ref[:rows].shape or not np.array_equal(got.astype(np.int64), ref[:rows]):
                    return False
    return True


_CHOSEN = None


def choose_gemm(prefer: str = None):
    """The GEMM the compiled backend uses: ``torch._int_mm`` if torch is importable and passes
    :func:`self_check`, else float32 BLAS in exact chunks. ``prefer`` (or the environment
    variable ``IBERT_REF_INT_GEMM``) forces ``"torch"`` or ``"blas"``. The choice (and the
    check) is made once per process."""
    global _CHOSEN, GEMM_FALLBACK_REASON
    prefer = prefer or os.environ.get(GEMM_ENV) or None
    if prefer not in (None, "torch", "blas"):
        raise ValueError(f"{GEMM_ENV} / prefer must be 'torch' or 'blas', got {prefer!r}")
    if prefer == "blas":
        return BlasGemm()
    if _CHOSEN is not None:
        return _CHOSEN
    try:
        gemm = TorchIntGemm()
    except ImportError as exc:
        GEMM_FALLBACK_REASON = f"torch._int_mm unavailable ({exc}); exact float32 BLAS used"
        if prefer == "torch":
            raise
        _CHOSEN = BlasGemm()
        return _CHOSEN
    if self_check(gemm):
        GEMM_FALLBACK_REASON = None
        _CHOSEN = gemm
    else:
        GEMM_FALLBACK_REASON = "torch._int_mm failed the exactness self-check; exact float32 BLAS used"
        warnings.warn(GEMM_FALLBACK_REASON, RuntimeWarning, stacklevel=2)
        _CHOSEN = BlasGemm()
    return _CHOSEN
