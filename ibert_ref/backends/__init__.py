"""Execution backends of the exact datapath.

``"numpy"`` (default)
    :class:`~ibert_ref.datapath.ExactDatapath`: the I-BERT kernels of :mod:`ibert_ref.kernels`
    on NumPy arrays (fast exact paths of :mod:`ibert_ref.intops`), nothing but NumPy needed.

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


def make_exact_datapath(backend: str = "numpy", **kwargs):
    """The exact datapath on ``backend`` (``"numpy"`` or ``"compiled"``)."""
    if backend == "numpy":
        from ..datapath import ExactDatapath  # noqa: PLC0415

        return ExactDatapath(**kwargs)
    if backend == "compiled":
        if not compiled_available():
            raise ImportError(
                "backend='compiled' needs numba: pip install 'ibert-ref[fast]' "
                "(or use backend='numpy', the pure NumPy reference)"
            )
        from .compiled import CompiledDatapath  # noqa: PLC0415

        return CompiledDatapath(**kwargs)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
