"""The float32 operations of I-BERT: what transformers runs in float even in ``quant_mode``.

transformers keeps these parts of I-BERT in float32 (``docs/heads.md``):

* the pooler and every task head (``nn.Linear``, ``torch.tanh``, erf-GELU, ``nn.LayerNorm``);
* the non-linearities named by ``config.force_dequant`` (``gelu``, ``softmax``,
  ``layernorm``, ``nonlinear`` = all three), which fall back to ``nn.GELU``,
  ``F.softmax`` and IntLayerNorm's own float formula;
* the training losses (``CrossEntropyLoss``, ``MSELoss``, ``BCEWithLogitsLoss``).

Two implementations share one interface:

:class:`FloatOps` ("numpy")
    NumPy float32, op for op in torch's order. Elementwise ``+ - * /`` and ``sqrt`` are
    correctly rounded in both libraries, so they agree bit for bit; ``erf``, ``exp``,
    ``tanh`` and the reductions use different approximations / summation orders, so
    results can differ from torch by an ulp or two (measured in ``tests/test_heads.py``).

:class:`TorchFloatOps` ("torch")
    torch's own CPU kernels, called with the same shapes as transformers: bit-exact with
    transformers. Chosen automatically for the transformers datapath with ``gemm="torch"``
    (:func:`float_ops_for`); it reuses that datapath's GEMM backend, so torch stays an
    optional (verification-only) dependency.

Every function takes and returns float32 NumPy arrays (losses: 0-d float32 arrays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .datapath import GemmBackend, NumpyGemm

F32 = np.float32

#: torch's default ``ignore_index`` of CrossEntropyLoss.
IGNORE_INDEX = -100

_ERF_F64 = np.frompyfunc(math.erf, 1, 1)


@dataclass
class FloatLayerNormParams:
    """A LayerNorm run in float32: ``gamma``/``beta`` (H,) and ``eps`` (a Python float)."""

    gamma: np.ndarray
    beta: np.ndarray
    eps: float


@dataclass
class FloatLinearParams:
    """An ``nn.Linear`` run in float32: ``w`` (out, in) and ``b`` (out,)."""

    w: np.ndarray
    b: np.ndarray


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=F32)


class FloatOps:
    """float32 ops in NumPy, each written in the order torch's CPU kernel evaluates it.

    ``gemm``: the datapath's :class:`~ibert_ref.datapath.GemmBackend` used for ``linear``
    and the LayerNorm means (so a datapath's GEMM order is shared); None uses NumPy.
    """

    name = "numpy"

    def __init__(self, gemm: GemmBackend | None = None):
        self.gemm = gemm

    # ---- layers ---------------------------------------------------------------------
    def linear(self, x, w, b):
        """``nn.Linear``: ``x @ w.T + b`` (float32 GEMM; (..., in) -> (..., out))."""
        if self.gemm is not None:
            return _f32(self.gemm.linear(_f32(x), _f32(w), _f32(b)))
        return np.matmul(_f32(x), _f32(w).T) + _f32(b)

    def attention_scores(self, q, k, num_heads):
        """``Q K^T`` per head on float32 (B,T,H) operands -> (B, nh, T, T) (the datapath's GEMM)."""
        return _f32((self.gemm or NumpyGemm()).attention_scores(_f32(q), _f32(k), num_heads))

    def attention_context(self, probs, v, num_heads):
        """``P V`` per head, heads merged back: (B,nh,T,T), (B,T,H) -> (B,T,H) float32."""
        return _f32((self.gemm or NumpyGemm()).attention_context(_f32(probs), _f32(v), num_heads))

    def mean_last(self, x):
        """``x.mean(-1, keepdim=True)`` in float32."""
        if self.gemm is not None:
            return _f32(self.gemm.mean_last(_f32(x)))
        return np.mean(_f32(x), axis=-1, keepdims=True, dtype=F32)

    def gelu(self, x):
        """Exact (erf) GELU as torch evaluates it: ``fl(x * 0.5) * fl(1 + erf(fl(x * 2^-0.5)))``.

        ``erf`` is computed in float64 and rounded to float32 (correctly rounded in
        practice); torch's vectorised erf is a polynomial, so about a third of the
        outputs differ from torch by one ulp, and in the negative tail, where ``1 + erf``
        cancels, by up to ~2e-7 absolute.
        """
        x = _f32(x)
        t = x * F32(1.0 / math.sqrt(2.0))
        erf = _ERF_F64(t.astype(np.float64)).astype(np.float64).astype(F32)
        return (x * F32(0.5)) * (F32(1.0) + erf)

    def tanh(self, x):
        """``torch.tanh`` in float32 (NumPy's float32 tanh; within an ulp of torch's)."""
        return np.tanh(_f32(x))

    def softmax(self, x):
        """``F.softmax(x, dim=-1)``: ``e = exp(x - max)``, ``e * (1 / sum(e))`` (torch's order)."""
        x = _f32(x)
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            return e * (F32(1.0) / np.sum(e, axis=-1, keepdims=True, dtype=F32))

    def log_softmax(self, x):
        """``F.log_softmax(x, dim=-1)``: ``(x - max) - log(sum(exp(x - max)))``."""
        x = _f32(x)
        shifted = x - x.max(axis=-1, keepdims=True)
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True, dtype=F32))

    def ibert_layernorm(self, x, p: FloatLayerNormParams):
        """IntLayerNorm's float path (``force_dequant`` "layernorm"/"nonlinear"), op for op::

            mean = x.mean(-1); y = x - mean; var = (y * y).mean(-1)
            out = (y / sqrt(eps + var)) * gamma + beta

        (not ``nn.LayerNorm``: no fused kernel, ``eps`` added before the square root).
        """
        x = _f32(x)
        y = x - self.mean_last(x)
        var = self.mean_last(y * y)
        return (y / np.sqrt(F32(p.eps) + var)) * _f32(p.gamma) + _f32(p.beta)

    def layer_norm(self, x, p: FloatLayerNormParams):
        """``nn.LayerNorm`` (the MaskedLM head): ``(x - mean) * rsqrt(var + eps) * gamma + beta``,
        biased variance. torch's fused kernel accumulates differently: an ulp or two apart."""
        x = _f32(x)
        mean = self.mean_last(x)
        y = x - mean
        var = self.mean_last(y * y)
        rstd = F32(1.0) / np.sqrt(var + F32(p.eps))
        return (y * rstd) * _f32(p.gamma) + _f32(p.beta)

    # ---- losses (mean reduction, as transformers' heads use them) ---------------------
    def cross_entropy(self, logits, labels, ignore_index: int = IGNORE_INDEX):
        """``CrossEntropyLoss(ignore_index=...)``: mean of ``-log_softmax(logits)[i, y_i]``
        over the rows whose label is not ``ignore_index`` (NaN when every row is ignored,
        as torch). ``logits`` (N, C), ``labels`` (N,) ints in [0, C) or ``ignore_index``."""
        logits, labels = _check_ce(logits, labels, ignore_index)
        keep = labels != ignore_index
        logp = self.log_softmax(logits)
        picked = -logp[np.flatnonzero(keep), labels[keep]]
        count = F32(keep.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.sum(picked, dtype=F32) / count, dtype=F32)

    def mse_loss(self, pred, target):
        """``MSELoss()``: ``mean((pred - target)^2)`` in float32 (shapes must match)."""
        pred, target = _check_same_shape("MSELoss", pred, target)
        d = pred - target
        return np.asarray(np.mean(d * d, dtype=F32), dtype=F32)

    def bce_with_logits(self, logits, target):
        """``BCEWithLogitsLoss()``: ``mean((1 - y) * x - log_sigmoid(x))`` with the stable
        ``log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|))`` (shapes must match)."""
        x, y = _check_same_shape("BCEWithLogitsLoss", logits, target)
        log_sigmoid = np.minimum(x, F32(0)) - np.log1p(np.exp(-np.abs(x)))
        return np.asarray(np.mean((F32(1) - y) * x - log_sigmoid, dtype=F32), dtype=F32)


class TorchFloatOps(FloatOps):
    """The same ops through torch's own CPU kernels: bit-exact with transformers.

    Built from a torch :class:`~ibert_ref.datapath.GemmBackend` (``gemm.torch`` is the
    torch module), so only the verify extra brings torch in.
    """

    name = "torch"

    def __init__(self, gemm: GemmBackend):
        super().__init__(gemm)
        self.torch = gemm.torch
        self.F = gemm.torch.nn.functional

    def _t(self, a, dtype=F32):
        return self.torch.from_numpy(np.require(np.asarray(a, dtype=dtype), requirements=["C", "W"]))

    def _n(self, t) -> np.ndarray:
        return t.detach().numpy().astype(F32, copy=False)

    def gelu(self, x):
        return self._n(self.F.gelu(self._t(x)))

    def tanh(self, x):
        return self._n(self.torch.tanh(self._t(x)))

    def softmax(self, x):
        return self._n(self.F.softmax(self._t(x), dim=-1))

    def log_softmax(self, x):
        return self._n(self.F.log_softmax(self._t(x), dim=-1))

    def ibert_layernorm(self, x, p: FloatLayerNormParams):
        x = self._t(x)
        mean = x.mean(axis=-1, keepdim=True)
        y = x - mean
        var = self.torch.mean(y**2, axis=-1, keepdim=True)
        out = y / self.torch.sqrt(p.eps + var)
        return self._n(out * self._t(p.gamma) + self._t(p.beta))

    def layer_norm(self, x, p: FloatLayerNormParams):
        gamma = _f32(p.gamma)
        return self._n(self.F.layer_norm(self._t(x), gamma.shape, self._t(gamma), self._t(p.beta), p.eps))

    def cross_entropy(self, logits, labels, ignore_index: int = IGNORE_INDEX):
        logits, labels = _check_ce(logits, labels, ignore_index)
        loss = self.F.cross_entropy(self._t(logits), self._t(labels, np.int64), ignore_index=ignore_index)
        return np.asarray(self._n(loss), dtype=F32)

    def mse_loss(self, pred, target):
        pred, target = _check_same_shape("MSELoss", pred, target)
        return np.asarray(self._n(self.F.mse_loss(self._t(pred), self._t(target))), dtype=F32)

    def bce_with_logits(self, logits, target):
        x, y = _check_same_shape("BCEWithLogitsLoss", logits, target)
        return np.asarray(self._n(self.F.binary_cross_entropy_with_logits(self._t(x), self._t(y))), dtype=F32)


def float_ops_for(dp) -> FloatOps:
    """The float ops matching datapath ``dp``: torch's kernels when ``dp`` computes its
    GEMMs with torch (transformers datapath, ``gemm="torch"``), NumPy otherwise."""
    gemm = getattr(dp, "gemm", None)
    if not isinstance(gemm, GemmBackend):
        gemm = None
    if gemm is not None and getattr(gemm, "name", "") == "torch":
        return TorchFloatOps(gemm)
    return FloatOps(gemm)


# ---- input checks ----------------------------------------------------------------------
def _check_ce(logits, labels, ignore_index):
    logits = _f32(logits)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"cross-entropy labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"cross-entropy expects logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    n_classes = logits.shape[1]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        raise ValueError(
            f"label {int(labels[bad][0])} is out of range: expected [0, {n_classes}) or {ignore_index} (ignored)"
        )
    return logits, labels


def _check_same_shape(what, a, b):
    a, b = _f32(a), _f32(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: input shape {a.shape} and target shape {b.shape} differ")
    return a, b
