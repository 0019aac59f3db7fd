"""Execution backends of the exact datapath.

``"numpy"`` (default)
    :class:`ibert_ref.backends.fast_numpy.FastExactDatapath`: the I-BERT kernels of
    :mod:`ibert_ref.kernels` on NumPy arrays, with the fast exact routes of
    :mod:`ibert_ref.backends.fast_intops` (float BLAS and float64 where proven exact);
    nothing but NumPy needed. ``fast=False`` gives the reference itself,
    :class:`~ibert_ref.datapath.ExactDatapath` (pure integer NumPy, slow).

``"compiled"``
    :class:`ibert_ref.backends.compiled.CompiledDatapath`: the same integers, op for op, from
    one fused numba pass per op (:mod:`ibert_ref.backends.compiled_kernels`) and an exact
    int8 x int8 -> int32 GEMM (:mod:`ibert_ref.backends.int_gemm`). Needs numba (the ``fast``
    extra); proven equal to the NumPy reference by ``tests/test_compiled_backend.py``.
"""

from __future__ import annotations

import importlib.util

BACKENDS = ("numpy", "compiled")


def compiled_available() -> bool:
    """Whether numba is importable (the ``compiled`` backend's one requirement)."""
    return importlib.util.find_spec("numba") is not None


def make_exact_datapath(backend: str = "numpy", fast: bool = True, **kwargs):
    """The exact datapath on ``backend`` (``"numpy"`` or ``"compiled"``); ``fast=False``
    (NumPy only): the reference :class:`~ibert_ref.datapath.ExactDatapath` itself."""
    if backend == "numpy":
        if kwargs:
            raise TypeError(f"the numpy backend takes no options, got {sorted(kwargs)}")
        if not fast:
            from ..datapath import ExactDatapath  # noqa: PLC0415

            return ExactDatapath()
        from .fast_numpy import FastExactDatapath  # noqa: PLC0415

        return FastExactDatapath()
    if not fast:
        raise ValueError(f"fast=False is the NumPy reference; it does not apply to backend={backend!r}")
    if backend == "compiled":
        if not compiled_available():
            raise ImportError(
                "backend='compiled' needs numba: pip install 'ibert-ref[fast]' "
                "(or use backend='numpy', the pure NumPy reference)"
            )
        from .compiled import CompiledDatapath  # noqa: PLC0415

        return CompiledDatapath(**kwargs)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
