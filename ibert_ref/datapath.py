"""Datapaths: the number system the I-BERT kernels run on.

The kernels in :mod:`ibert_ref.kernels` are written once, as the algorithm of the paper
(and of transformers' code). Every arithmetic step whose result depends on how numbers
are held goes through a datapath method. Two datapaths ship:

``ExactDatapath`` ("exact")
    Integers are int64 NumPy arrays (int8 weights); every floor, shift and rounding is exact
    integer math (:mod:`ibert_ref.intops`); each layer's input carries its true scale. What
    I-BERT means: the reference. The backends of :mod:`ibert_ref.backends` compute the same
    integers faster (``make_datapath("exact")`` picks the NumPy one).

``TransformersDatapath`` ("transformers")
    Reproduces transformers' float32 emulation bit for bit: values travel dequantized
    (``q * s`` in float32) and are recovered by ``x / s`` without rounding; the dyadic
    requantization runs in float64; every layer is handed the embeddings' output scale
    (the stale-scale bug, transformers#26738).

A value between ops is a :class:`QTensor` (``data`` + ``scale``): ``data`` is the integer
``q`` in the exact datapath and the float32 ``q * scale`` in the transformers datapath.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import intops
from .quant import F32, Dyadic, rdiv_f32

I64 = np.int64


@dataclass
class QTensor:
    """A quantized tensor: ``data`` as the datapath holds it, and its float32 ``scale``.

    ``scale`` broadcasts against the last axis of ``data`` (shape (1,) per tensor or
    (C,) per channel).
    """

    data: np.ndarray
    scale: np.ndarray


class GemmBackend:
    """The float32 kernels of the transformers datapath whose bits depend on the library:
    GEMMs and sums (summation order) and sqrt (torch's vectorised float32 sqrt is not
    always correctly rounded: floor(sqrt(980316032)) is 31310 in torch, 31309 in NumPy)."""

    name = "abstract"

    def linear(self, x_f32, w_f32, b_f32):  # (..., in), (out, in), (out,) -> (..., out)
        raise NotImplementedError

    def attention_scores(self, q_f32, k_f32, num_heads):  # (B,T,H) x2 -> (B,nh,T,T)
        raise NotImplementedError

    def attention_context(self, p_f32, v_f32, num_heads):  # (B,nh,T,T), (B,T,H) -> (B,T,H)
        raise NotImplementedError

    def sum_last(self, x_f32):
        raise NotImplementedError

    def mean_last(self, x_f32):
        raise NotImplementedError

    def sqrt(self, x_f32):
        raise NotImplementedError


def split_heads(x, num_heads: int):
    """(B, T, H) -> (B, heads, T, H / heads): a view, transformers' ``view`` + ``transpose``."""
    b, t, h = x.shape
    return x.reshape(b, t, num_heads, h // num_heads).transpose(0, 2, 1, 3)


def merge_heads(ctx):
    """(B, heads, T, hd) -> (B, T, heads * hd), contiguous: the inverse of :func:`split_heads`."""
    b, nh, t, hd = ctx.shape
    return np.ascontiguousarray(ctx.transpose(0, 2, 1, 3)).reshape(b, t, nh * hd)


class NumpyGemm(GemmBackend):
    """float32 GEMMs and sums in NumPy (OpenBLAS order: not torch's, see docs)."""

    name = "numpy"

    def linear(self, x_f32, w_f32, b_f32):
        return np.matmul(x_f32, w_f32.T) + b_f32

    def attention_scores(self, q_f32, k_f32, num_heads):
        q = split_heads(q_f32, num_heads)
        k = split_heads(k_f32, num_heads)
        return np.matmul(q, k.transpose(0, 1, 3, 2))

    def attention_context(self, p_f32, v_f32, num_heads):
        return merge_heads(np.matmul(p_f32, split_heads(v_f32, num_heads)))

    def sum_last(self, x_f32):
        return np.sum(x_f32, axis=-1, keepdims=True, dtype=F32)

    def mean_last(self, x_f32):
        return np.mean(x_f32, axis=-1, keepdims=True, dtype=F32)

    def sqrt(self, x_f32):
        return np.sqrt(x_f32)


class TorchGemm(GemmBackend):
    """torch's own float32 kernels, called with the same shapes and views as transformers.

    Verification only (needs the ``verify`` extra); torch is imported on first use.
    """

    name = "torch"

    def __init__(self):
        import torch  # noqa: PLC0415 - optional oracle dependency

        self.torch = torch

    def _t(self, a):
        # clone(): torch-allocated (64-byte aligned) storage, as transformers' own tensors
        # have. A NumPy buffer may be aligned differently, and torch's vectorised float32
        # reductions split the work by alignment, which changes the rounding.
        return self.torch.from_numpy(np.ascontiguousarray(a)).clone()

    def linear(self, x_f32, w_f32, b_f32):
        f = self.torch.nn.functional.linear
        return f(self._t(x_f32), self._t(w_f32), self._t(b_f32)).numpy()

    def _heads(self, x, num_heads):
        b, t, h = x.shape
        return self._t(x).view(b, t, num_heads, h // num_heads).transpose(1, 2)

    def attention_scores(self, q_f32, k_f32, num_heads):
        q = self._heads(q_f32, num_heads)
        k = self._heads(k_f32, num_heads)
        return self.torch.matmul(q, k.transpose(-1, -2)).numpy()

    def attention_context(self, p_f32, v_f32, num_heads):
        ctx = self.torch.matmul(self._t(p_f32), self._heads(v_f32, num_heads))
        ctx = ctx.permute(0, 2, 1, 3).contiguous()
        b, t = ctx.shape[0], ctx.shape[1]
        return ctx.view(b, t, -1).numpy()

    def sum_last(self, x_f32):
        return self._t(x_f32).sum(dim=-1, keepdim=True).numpy()

    def mean_last(self, x_f32):
        return self._t(x_f32).mean(dim=-1, keepdim=True).numpy()

    def sqrt(self, x_f32):
        return self.torch.sqrt(self._t(x_f32)).numpy()


def make_gemm_backend(name: str) -> GemmBackend:
    """``"numpy"`` (default) or ``"torch"`` (verification only)."""
    if name == "numpy":
        return NumpyGemm()
    if name == "torch":
        try:
            return TorchGemm()
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("gemm='torch' needs the verify extra: pip install 'ibert-ref[verify]'") from exc
    raise ValueError(f"unknown gemm backend {name!r}; expected 'numpy' or 'torch'")


class Datapath:
    """Interface every datapath implements. See the module docstring."""

    name = "abstract"
    #: Whether each layer is handed the embeddings' scale (transformers) or its true input scale.
    stale_layer_scale = False
    #: Integer dtype of resident weights / working arrays.
    working_dtype = I64

    # ---- constants (compile time) -----------------------------------------------------
    def const(self, v_f32):
        """An integer-valued float32 constant in this datapath's number type."""
        raise NotImplementedError

    def weights(self, w_f32):
        """A resident integer weight table (int8 values held as float32)."""
        raise NotImplementedError

    # ---- moving between ops -----------------------------------------------------------
    def emit(self, w, scale_f32) -> QTensor:
        raise NotImplementedError

    def recover(self, t: QTensor):
        """The integer a module computes on: exact ``q``; transformers ``fl(x / s)``, unrounded."""
        raise NotImplementedError

    def round_recover(self, t: QTensor):
        """FixedPointMul's input: exact ``q``; transformers ``rne(fl(x / s))``."""
        raise NotImplementedError

    def integers(self, t: QTensor) -> np.ndarray:
        """The integer ``t`` stands for (``rint(output / scale)``), int64."""
        raise NotImplementedError

    def dequantize(self, t: QTensor) -> np.ndarray:
        """float32 ``q * scale``."""
        raise NotImplementedError

    def layer_input(self, h: QTensor, emb_scale_f32) -> QTensor:
        """The (value, scale) pair a layer receives."""
        return h

    # ---- arithmetic ------------------------------------------------------------------
    def dyadic_round(self, z, dy: Dyadic):
        """``rne(z * m / 2^e)``."""
        raise NotImplementedError

    def clamp_bits(self, w, bits: int):
        """Saturate to ``[-2^(bits-1), 2^(bits-1) - 1]``."""
        raise NotImplementedError

    def floor_div(self, x, d):
        raise NotImplementedError

    def floor_div_pow2(self, x, k):
        raise NotImplementedError

    def floor_div_into(self, c: int, t):
        """``floor(c / t)`` for a Python integer numerator (torch: reciprocal first)."""
        raise NotImplementedError

    def pow2(self, k):
        raise NotImplementedError

    def round_mean_last(self, x):
        raise NotImplementedError

    def sum_last(self, x):
        raise NotImplementedError

    def floor_sqrt(self, v):
        raise NotImplementedError

    def linear(self, x, w, b):
        raise NotImplementedError

    def attention_scores(self, q: QTensor, k: QTensor, num_heads: int, mask, score_scale_f32):
        """Raw scores ``Q_int K_int^T`` (B, nh, T, T) as this datapath's integers; masked
        keys (``mask == 0``) become minus infinity (exact: a sentinel far below any score)."""
        raise NotImplementedError

    def attention_context(self, p: QTensor, v: QTensor, num_heads: int, scale_f32) -> QTensor:
        raise NotImplementedError

    def exp_requantize(self, z, q, exp_scale_f32, dy_tf: Dyadic, dy_exact: Dyadic, bits: int):
        """Softmax: ``exp_int = max(floor(z * 2^(30 - q)), 0)`` then the 16-bit QuantAct."""
        raise NotImplementedError

    # ---- hooks for hardware profiles and the width census --------------------------------
    # The defaults change nothing: the kernels' own formulas run, and nothing is recorded.
    # ``ibert_ref.hardware.profiles`` overrides them; ``ibert_ref.widths`` sets ``oplog``.

    #: Per-run log of intermediate widths and overflow events
    #: (:class:`ibert_ref.hardware.oplog.OpLog`); None: nothing is recorded.
    oplog = None

    def note(self, family: str, part: str, values, unsigned: bool = False):
        """Report an intermediate of a kernel to the width census (``values``: an array, or a
        callable returning an array or a ``(min, max)`` pair, evaluated only while a census
        is collecting)."""
        log = self.oplog
        if log is None or not log.collect_widths:
            return
        from .hardware.oplog import S32, U32, int_range  # noqa: PLC0415 - only during a census

        values = values() if callable(values) else values
        lo, hi = values if isinstance(values, tuple) else int_range(values)
        log.note(family, part, lo, hi, self.provided_register(family, part), U32 if unsigned else S32)

    def provided_register(self, family: str, part: str):
        """The register this datapath models ``family``/``part`` in (default: int64)."""
        from .hardware.oplog import S64  # noqa: PLC0415

        return S64

    def begin_run(self) -> None:
        """Called by the model before a forward pass."""
        if self.oplog is not None:
            self.oplog.begin_run()

    def end_op(self, name: str, kind: str) -> None:
        """Called by the model's tracer after each traced op (names pending log items)."""
        if self.oplog is not None:
            self.oplog.end_op(name, kind)

    def end_run(self) -> list:
        """Called by the model after a forward pass: the run's overflow records."""
        return [] if self.oplog is None else self.oplog.end_run()

    def requant_multiplier(self, dy: Dyadic, x: QTensor) -> Dyadic:
        """The multiplier :func:`~ibert_ref.kernels.requantize` applies to ``x``'s integers
        (``dy``, unless the datapath holds ``x`` with an extra power-of-two exponent)."""
        return dy

    def sum_squares(self, y):
        """IntLayerNorm's ``sum(y^2)`` over the last axis (keepdims)."""
        return self.sum_last(y * y)

    def replacement_kernel(self, name: str):
        """A function computing kernel ``name`` of :mod:`ibert_ref.kernels` for this datapath
        (``fn(dp, *args, **kwargs)``, the kernel's signature), or None (default): the kernel
        itself runs. Backends return a cheaper route to the same integers (proven equal by
        tests/test_fast_path.py and tests/test_compiled_backend.py); a hardware profile may
        return its modelled variant (the int32 IntGELU). :func:`ibert_ref.dataflow.kernel` is
        the one place that consults it."""
        return None


class ExactDatapath(Datapath):
    """Exact integers, true scales: the reference.

    The plainest exact code, every step an integer operation on int64 arrays: int64 GEMMs
    (:func:`~ibert_ref.intops.matmul_exact_reference`), the two-limb
    :func:`~ibert_ref.intops.mul_shift_round`, the 31-step restoring square root
    (:func:`~ibert_ref.intops.isqrt_floor`), and the kernels of :mod:`ibert_ref.kernels`
    as written. Weights stay resident as int8; every other value is int64.

    ``make_datapath("exact")`` runs the same integers faster on the NumPy backend
    (:class:`ibert_ref.backends.fast_numpy.FastExactDatapath`) or the compiled one;
    ``make_datapath("exact", fast=False)`` is this class.
    """

    name = "exact"
    stale_layer_scale = False
    #: what runs the kernels (:mod:`ibert_ref.backends`)
    backend = "numpy"
    #: whether this is a fast route to the reference's integers (a backend) or the reference
    fast = False

    def __init__(self, fast: bool = False):
        if fast and type(self) is ExactDatapath:
            raise ValueError("ExactDatapath is the reference (integer-only, slow); the same integers faster: "
                             "make_datapath('exact') (the NumPy backend, FastExactDatapath) or backend='compiled'")

    def __repr__(self):
        return f"{type(self).__name__}()"

    def const(self, v_f32):
        return np.asarray(v_f32).astype(I64)

    def weights(self, w_f32):
        return np.asarray(w_f32).astype(np.int8)

    def emit(self, w, scale_f32):
        return QTensor(np.asarray(w).astype(I64, copy=False), np.asarray(scale_f32, dtype=F32))

    def recover(self, t):
        return t.data

    round_recover = recover

    def integers(self, t):
        return t.data

    def dequantize(self, t):
        return t.data.astype(F32) * t.scale

    def dyadic_round(self, z, dy):
        return intops.mul_shift_round(z, dy.m, dy.e, "half_even")

    def clamp_bits(self, w, bits):
        return intops.clamp_signed(w, bits)

    def floor_div(self, x, d):
        return np.floor_divide(x, d)

    def floor_div_pow2(self, x, k):
        return x >> np.asarray(k, dtype=I64)

    def floor_div_into(self, c, t):
        t = np.asarray(t, dtype=I64)
        if np.any(t <= 0):
            raise ZeroDivisionError("integer division by a non-positive denominator (all-equal LayerNorm row?)")
        return I64(c) // t

    def pow2(self, k):
        return I64(1) << np.asarray(k, dtype=I64)

    def round_mean_last(self, x):
        return intops.div_round_half_even(x.sum(axis=-1, keepdims=True), x.shape[-1])

    def sum_last(self, x):
        return x.sum(axis=-1, keepdims=True)

    def floor_sqrt(self, v):
        return intops.isqrt_floor(v)

    def linear(self, x, w, b):
        # (..., in) x (out, in)^T: int8 x int8 products summed exactly, plus the int32 bias
        return intops.matmul_exact_reference(x, w.T) + b

    def attention_scores(self, q, k, num_heads, mask, score_scale_f32):
        k_t = split_heads(k.data, num_heads).transpose(0, 1, 3, 2)
        scores = intops.matmul_exact_reference(split_heads(q.data, num_heads), k_t)
        if mask is not None:
            keep = mask[:, None, None, :].astype(bool)
            scores = np.where(keep, scores, -intops.SATURATION_I64)
        return scores

    def attention_context(self, p, v, num_heads, scale_f32):
        ctx = intops.matmul_exact_reference(p.data, split_heads(v.data, num_heads))
        return QTensor(merge_heads(ctx), np.asarray(scale_f32, dtype=F32))

    def exp_requantize(self, z, q, exp_scale_f32, dy_tf, dy_exact, bits):
        # exp_int = z * 2^(30 - q) (up to ~2^70) is never materialised: the left shift is
        # folded into the requantization shift, e16 = rne(z * m / 2^(e - (30 - q))).
        shift = dy_exact.e - (30 - q)
        if np.any(shift < 0):
            raise OverflowError("softmax exp requantization shift went negative")
        e16 = intops.mul_shift_round(np.maximum(z, 0), dy_exact.m, shift, "half_even")
        return intops.clamp_signed(e16, bits)


class TransformersDatapath(Datapath):
    """transformers' float32 emulation, reproduced bit for bit (see the module docstring).

    ``gemm`` picks whose float32 GEMM/reduction order is used: ``numpy`` (default) or
    ``torch`` (bit-exact with transformers; needs the verify extra).
    """

    name = "transformers"
    stale_layer_scale = True
    working_dtype = F32

    def __init__(self, gemm: str = "numpy"):
        self.gemm = make_gemm_backend(gemm)

    def const(self, v_f32):
        return np.asarray(v_f32, dtype=F32)

    def weights(self, w_f32):
        return np.asarray(w_f32, dtype=F32)

    def emit(self, w, scale_f32):
        scale_f32 = np.asarray(scale_f32, dtype=F32)
        return QTensor(np.asarray(w, dtype=F32) * scale_f32, scale_f32)

    def recover(self, t):
        with np.errstate(over="ignore", invalid="ignore"):
            return t.data / t.scale

    def round_recover(self, t):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.rint(t.data / t.scale)

    def integers(self, t):
        with np.errstate(invalid="ignore"):
            return np.rint(t.data / t.scale).astype(I64)

    def dequantize(self, t):
        return t.data

    def layer_input(self, h, emb_scale_f32):
        return QTensor(h.data, np.asarray(emb_scale_f32, dtype=F32))

    def dyadic_round(self, z, dy):
        # float64 product (rounds once |z * m| >= 2^53), exact division by 2^e, then RNE.
        product_f64 = np.asarray(z).astype(np.float64) * dy.m.astype(np.float64)
        return np.rint(np.ldexp(product_f64, -dy.e.astype(np.int32)))

    def clamp_bits(self, w, bits):
        n = 2 ** (bits - 1) - 1
        return np.clip(np.asarray(w).astype(F32), F32(-n - 1), F32(n))

    def floor_div(self, x, d):
        return np.floor(x / d)

    def floor_div_pow2(self, x, k):
        return np.floor(x / self.pow2(k))

    def floor_div_into(self, c, t):
        return np.floor(rdiv_f32(float(c), t))

    def pow2(self, k):
        return np.ldexp(F32(1.0), np.asarray(k).astype(np.int32))

    def round_mean_last(self, x):
        return np.rint(self.gemm.mean_last(x))

    def sum_last(self, x):
        return self.gemm.sum_last(x)

    def floor_sqrt(self, v):
        return np.floor(self.gemm.sqrt(v))

    def linear(self, x, w, b):
        return self.gemm.linear(x, w, b)

    def attention_scores(self, q, k, num_heads, mask, score_scale_f32):
        head_dim = q.data.shape[-1] // num_heads
        scores = self.gemm.attention_scores(q.data, k.data, num_heads)
        scores = scores / F32(np.sqrt(head_dim))
        if mask is not None and not np.all(mask):
            additive = np.where(mask.astype(bool), F32(0.0), np.finfo(F32).min).astype(F32)
            scores = scores + additive[:, None, None, :]
        with np.errstate(over="ignore"):
            return scores / np.asarray(score_scale_f32, dtype=F32)

    def attention_context(self, p, v, num_heads, scale_f32):
        ctx = self.gemm.attention_context(p.data, v.data, num_heads)
        return QTensor(ctx, np.asarray(scale_f32, dtype=F32))

    def exp_requantize(self, z, q, exp_scale_f32, dy_tf, dy_exact, bits):
        exp_int = np.maximum(np.floor(z * self.pow2(F32(30) - q)), F32(0))
        # transformers#26767: the 16-bit QuantAct is handed the *integer* exp_int as if it
        # were a dequantized value, with pre-scale exp_scale; z_int = rne(exp_int / exp_scale)
        # can overflow float32 to inf.
        with np.errstate(over="ignore"):
            z_int = np.rint(exp_int / np.asarray(exp_scale_f32, dtype=F32))
        return self.clamp_bits(self.dyadic_round(z_int, dy_tf), bits)


DATAPATHS = ("exact", "transformers")

#: Extra datapaths (hardware profiles) registered by name: ``name -> factory(**kwargs)``.
_REGISTRY: dict = {}


def register_datapath(name: str, factory) -> None:
    """Make ``make_datapath(name, **kwargs)`` build ``factory(**kwargs)`` (used by
    :mod:`ibert_ref.hardware` to add the ARM / Tensor Core profiles)."""
    _REGISTRY[name] = factory


def available_datapaths() -> tuple:
    """Every datapath name ``make_datapath`` accepts."""
    _load_plugins()
    return DATAPATHS + tuple(n for n in _REGISTRY if n not in DATAPATHS)


def _load_plugins() -> None:
    try:  # hardware profiles register themselves on import
        import ibert_ref.hardware.profiles  # noqa: F401, PLC0415
    except ImportError:  # pragma: no cover - profiles not present
        pass


def make_datapath(name="exact", gemm: str = "numpy", backend: str = "numpy", **kwargs) -> Datapath:
    """Build a datapath by name: ``"exact"``, ``"transformers"`` or a registered profile.

    ``backend`` (exact datapath only): ``"numpy"`` (default, NumPy alone) or ``"compiled"``
    (numba kernels and an exact int8 GEMM, :mod:`ibert_ref.backends`; the same integers)."""
    if isinstance(name, Datapath):
        if backend != "numpy" and getattr(name, "backend", "numpy") != backend:
            raise ValueError(f"backend={backend!r} given with an already-built datapath {name!r}")
        return name
    if backend != "numpy" and name != "exact":
        raise ValueError(f"backend={backend!r} applies to datapath='exact' only, not {name!r}")
    if name == "exact":
        if gemm != "numpy":
            raise ValueError("the exact datapath computes GEMMs exactly; gemm applies to datapath='transformers'")
        from .backends import make_exact_datapath  # noqa: PLC0415

        return make_exact_datapath(backend, **kwargs)
    if name == "transformers":
        return TransformersDatapath(gemm=gemm, **kwargs)
    _load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name](**kwargs)
    raise ValueError(f"unknown datapath {name!r}; expected one of {available_datapaths()}")
