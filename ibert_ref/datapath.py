"""Datapaths: the number system the I-BERT kernels run on.

The kernels in :mod:`ibert_ref.kernels` are written once, as the algorithm of the paper
(and of transformers' code). Every arithmetic step whose result depends on how numbers
are held goes through a datapath method. Two datapaths ship:

``ExactDatapath`` ("exact")
    Integers are NumPy integer arrays (int64 for intermediates; on the fast path a clamped
    QuantAct output is held as int8/int16/int32 and a QuantLinear accumulator as int32);
    every floor, shift and rounding is exact integer math (or float math proven exact for
    the operands at hand); each layer's input carries its true scale. What I-BERT means.

``TransformersDatapath`` ("transformers")
    Reproduces transformers' float32 emulation bit for bit: values travel dequantized
    (``q * s`` in float32) and are recovered by ``x / s`` without rounding; the dyadic
    requantization runs in float64; every layer is handed the embeddings' output scale
    (the stale-scale bug, transformers#26738).

A value between ops is a :class:`QTensor` (``data`` + ``scale``): ``data`` is the integer
``q`` in the exact datapath and the float32 ``q * scale`` in the transformers datapath.
"""

from __future__ import annotations

import threading
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


def _split_heads(x, num_heads):
    b, t, h = x.shape
    return x.reshape(b, t, num_heads, h // num_heads).transpose(0, 2, 1, 3)


class NumpyGemm(GemmBackend):
    """float32 GEMMs and sums in NumPy (OpenBLAS order: not torch's, see docs)."""

    name = "numpy"

    def linear(self, x_f32, w_f32, b_f32):
        return np.matmul(x_f32, w_f32.T) + b_f32

    def attention_scores(self, q_f32, k_f32, num_heads):
        q = _split_heads(q_f32, num_heads)
        k = _split_heads(k_f32, num_heads)
        return np.matmul(q, k.transpose(0, 1, 3, 2))

    def attention_context(self, p_f32, v_f32, num_heads):
        ctx = np.matmul(p_f32, _split_heads(v_f32, num_heads))
        b, nh, t, hd = ctx.shape
        return np.ascontiguousarray(ctx.transpose(0, 2, 1, 3)).reshape(b, t, nh * hd)

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

    def variant_kernel(self, name: str):
        """A replacement for kernel ``name`` (e.g. an int32-realizable IntGELU), or None."""
        return None

    def row_runner(self, name: str):
        """How to run the row-local kernel ``name`` (:func:`~ibert_ref.kernels.row_local`):
        None to call it once on the whole arrays, else ``runner(kernel, args, kwargs)``."""
        return None

    def compiled_kernel(self, name: str):
        """A compiled replacement of the row-local kernel ``name`` (``fn(dp, *args, **kwargs)``
        returning the same integers, or None to let the kernel run), or None (default).
        :class:`ibert_ref.backends.compiled.CompiledDatapath` provides them."""
        return None


class ExactDatapath(Datapath):
    """Exact integers (int64 arrays), true scales.

    ``fast=True`` (default) and ``fast=False`` compute the same integers, op for op
    (tests/test_fast_path.py). The reference path is the plainest exact code: int64 GEMMs
    (:func:`~ibert_ref.intops.matmul_exact_reference`), the two-limb
    :func:`~ibert_ref.intops.mul_shift_round`, the 31-step restoring square root. The fast
    path picks cheaper kernels from the operands' actual ranges, checked at every call:

    * GEMMs on float32 BLAS while every partial sum is an integer below 2^24 (K-chunks of
      1024 for int8 x int8, accumulated in float64), :func:`~ibert_ref.intops.matmul_exact`;
    * requantization in float64 when ``z * m`` is exact there, with an exact repair of
      near-ties when it is not, else single int64 products
      (:func:`~ibert_ref.intops.mul_shift_round_fast`); the softmax exponent shift through a
      table over its 31 possible values;
    * a float square root corrected by one exact integer step;
    * IntGELU through :meth:`variant_kernel`: the kernel's own int64 operations, in place,
      row block by row block (cache-resident), :meth:`_int_gelu_blocked`;
    * QuantAct/FixedPointMul through :meth:`variant_kernel` in float64 when every product is
      exact there (:meth:`_requantize_f64`), else the kernel with the tiers above;
    * row-local kernels (:func:`~ibert_ref.kernels.row_local`) on cache-sized row blocks
      (:meth:`row_runner`, optionally on threads).

    Weights stay resident as int8 (converted to float32 per GEMM, never cached). On the fast
    path a clamped result is held in the narrowest type of its width (``narrow``: int8 for
    an 8-bit QuantAct, int16, int32 for the 22-bit one) instead of int64: less memory
    traffic, and GEMM operands whose bound is read from the type. Every kernel widens before
    its arithmetic (products and sums of the datapath's arrays are int64).
    """

    name = "exact"
    stale_layer_scale = False
    #: what runs the kernels (:mod:`ibert_ref.backends`): NumPy here
    backend = "numpy"

    def __init__(self, fast: bool = True):
        self.fast = bool(fast)
        #: hold clamped results as int8/int16/int32 (fast path); int64 everywhere otherwise
        self.narrow = self.fast
        self._mul_shift_round = intops.mul_shift_round_fast if self.fast else intops.mul_shift_round
        self._matmul = intops.matmul_exact if self.fast else intops.matmul_exact_reference
        self._isqrt = intops.isqrt_floor_fast if self.fast else intops.isqrt_floor

    def __repr__(self):
        return f"ExactDatapath(fast={self.fast})"

    def const(self, v_f32):
        return np.asarray(v_f32).astype(I64)

    def weights(self, w_f32):
        return np.asarray(w_f32).astype(np.int8)

    def emit(self, w, scale_f32):
        w = np.asarray(w)
        if not (self.narrow and w.dtype in _NARROW_INTS):
            w = w.astype(I64, copy=False)
        return QTensor(w, np.asarray(scale_f32, dtype=F32))

    def recover(self, t):
        return t.data

    round_recover = recover

    def integers(self, t):
        return t.data

    def dequantize(self, t):
        return t.data.astype(F32) * t.scale

    def dyadic_round(self, z, dy):
        return self._mul_shift_round(z, dy.m, dy.e, "half_even")

    def clamp_bits(self, w, bits):
        if self.narrow and bits <= 32:
            return intops.clamp_signed_narrow(w, bits)
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
        return self._isqrt(v)

    def linear(self, x, w, b):
        # (..., in) x (out, in)^T: int8 x int8 products summed exactly, plus the int32 bias
        if self.fast:
            return intops.matmul_exact(x, w.T, add_int=b, narrow=self.narrow)
        return intops.matmul_exact_reference(x, w.T) + b

    def attention_scores(self, q, k, num_heads, mask, score_scale_f32):
        qh = _split_heads(q.data, num_heads)
        kh = _split_heads(k.data, num_heads)
        scores = self._matmul(qh, kh.transpose(0, 1, 3, 2))
        if mask is not None and not (self.fast and np.all(mask)):
            keep = mask[:, None, None, :].astype(bool)
            scores = np.where(keep, scores, -intops.SATURATION_I64)
        return scores

    def attention_context(self, p, v, num_heads, scale_f32):
        ctx = self._matmul(p.data, _split_heads(v.data, num_heads))
        b, nh, t, hd = ctx.shape
        ctx = np.ascontiguousarray(ctx.transpose(0, 2, 1, 3)).reshape(b, t, nh * hd)
        return QTensor(ctx, np.asarray(scale_f32, dtype=F32))

    def exp_requantize(self, z, q, exp_scale_f32, dy_tf, dy_exact, bits):
        # exp_int = z * 2^(30 - q) (up to ~2^70) is never materialised: the left shift is
        # folded into the requantization shift, e16 = rne(z * m / 2^(e - (30 - q))).
        if self.fast:
            e16 = self._exp_requantize_f64(z, q, dy_exact, bits)
            if e16 is not None:
                return e16
        z = np.maximum(z, 0)
        shift = dy_exact.e - (30 - q)
        if np.any(shift < 0):
            raise OverflowError("softmax exp requantization shift went negative")
        e16 = self._mul_shift_round(z, dy_exact.m, shift, "half_even")
        return intops.clamp_signed(e16, bits)

    def row_runner(self, name: str):
        """Fast path only: row-local kernels run on row blocks of about
        ``intops.BLOCK_ELEMS`` elements, on ``intops.get_num_threads()`` threads
        (:func:`run_row_blocks`). None while a census collects (ops are reported whole) and on
        the reference path."""
        if self.fast and self.oplog is None:
            return self._run_row_blocks
        return None

    def _run_row_blocks(self, kernel, args, kwargs):
        return run_row_blocks(self, kernel, args, kwargs)

    def variant_kernel(self, name: str):
        """Fast path only: IntGELU fused over row blocks (:meth:`_int_gelu_blocked`, the same
        integers as :func:`~ibert_ref.kernels.int_gelu`). None while a width census collects
        (the kernel's own code then reports its intermediates) and on the reference path."""
        if name == "int_gelu" and self.fast and self.oplog is None:
            return self._int_gelu_blocked
        if name == "requantize" and self.fast and self.oplog is None:
            return self._requantize_f64
        return None

    @staticmethod
    def _requantize_f64(dp, x, p, identity=None):
        """:func:`~ibert_ref.kernels.requantize` in float64 when every step is exact there,
        else None (the kernel's own code runs):

        ``y = rint(z * d) [+ rint(z_id * d_id)]``, ``d = m * 2^-e`` (exact), then
        ``clamp(y, -2^(b-1), 2^(b-1) - 1)`` written to the narrow integer type in one pass.
        Exact while ``max|z| * max|m| < 2^53`` and ``< 2^51 * 2^(min e)`` for each term (the
        product ``z * m`` and its scaling are exact, rint is round half to even of the exact
        rational, and each rounded term is below 2^51 so their sum is exact): tier 0 of
        :func:`~ibert_ref.intops.mul_shift_round_fast`, without its int64 round trip.
        """
        terms = [(x, p.dy)] if identity is None else [(x, p.dy), (identity, p.dy_identity)]
        if p.bits > 32 or (identity is not None and np.shape(identity.data) != np.shape(x.data)):
            return None
        y_f64 = None
        for t, dy in terms:
            z = np.asarray(dp.round_recover(t))
            dy = dp.requant_multiplier(dy, t)
            m, e = np.asarray(dy.m, dtype=I64), np.asarray(dy.e, dtype=I64)
            if z.dtype not in _NARROW_INTS + (np.dtype(I64),) or z.size == 0 or m.size == 0 or e.size == 0:
                return None
            if not all(v.ndim <= 1 or all(d == 1 for d in v.shape[:-1]) for v in (m, e)):
                return None
            e_lo, e_hi = int(e.min()), int(e.max())
            product = intops.abs_bound(z) * intops.abs_bound(m)
            if e_lo < 0 or e_hi > 1000 or product >= intops.F64_EXACT_INT or product >= intops.ROUND_MAGIC_LIMIT << e_lo:
                return None
            d_f64 = np.ldexp(m.astype(np.float64), -e.astype(np.int32))
            if y_f64 is None:
                y_f64 = np.multiply(z, d_f64, dtype=np.float64)
                np.rint(y_f64, out=y_f64)
            else:
                term = np.multiply(z, d_f64, dtype=np.float64)
                y_f64 += np.rint(term, out=term)
        if y_f64.shape != np.shape(x.data):  # m or e broadcast z to a larger shape
            return None
        return dp.emit(dp.clamp_bits(y_f64, p.bits), p.out_scale)

    @staticmethod
    def _int_gelu_blocked(dp, x, p):
        """:func:`~ibert_ref.kernels.int_gelu`, the same int64 operations in the same order,
        run row block by row block (about ``intops.BLOCK_ELEMS`` elements, cache-resident),
        each block computed in place in the result (:meth:`_int_gelu_block`):

        ``a = min(|x|, -b) + b``, ``a = a * a + c`` (erf_poly), ``a = a * sign(x)``,
        ``a = floor(a / 2^14)`` (arithmetic shift), ``out = x * (a + one)`` — int64 with
        NumPy's wrapping, exactly as the kernel (an int8/16/32 ``x`` is widened into the int64
        result by the first step). Inputs of another type, empty, or with constants that are
        not int64 scalars / per-channel vectors take the kernel's own formula unblocked
        (:meth:`_int_gelu_plain`).
        """
        x_int = np.asarray(x.data)
        consts = [np.asarray(v) for v in (p.b_int, p.c_int, p.one)]
        plain = x_int.dtype not in _NARROW_INTS + (np.dtype(I64),) or x_int.ndim == 0 or x_int.size == 0
        for v in consts:
            per_channel = v.ndim <= x_int.ndim and all(d == 1 for d in v.shape[:-1])
            if v.dtype != I64 or not (v.ndim == 0 or (per_channel and v.shape[-1] in (1, x_int.shape[-1]))):
                plain = True
        if plain:
            return ExactDatapath._int_gelu_plain(dp, x_int, p)
        cols = x_int.shape[-1]
        b, c, one = (v.reshape(v.shape[-1:]) if v.ndim else v for v in consts)
        x_rows = np.ascontiguousarray(x_int).reshape(-1, cols)  # int8..int64: widened into the int64 result
        product = np.empty(x_rows.shape, dtype=I64)
        step = max(1, intops.BLOCK_ELEMS // cols)
        for r0 in range(0, x_rows.shape[0], step):
            ExactDatapath._int_gelu_block(x_rows[r0 : r0 + step], -b, b, c, one, product[r0 : r0 + step])
        return dp.emit(product.reshape(x_int.shape), p.out_scale)

    @staticmethod
    def _int_gelu_block(x_i64, neg_b, b, c, one, out):
        """One row block of :meth:`_int_gelu_blocked`, written into ``out`` (int64):
        ``out = x * (floor(sign(x) * ((min(|x|, -b) + b)^2 + c) / 2^14) + one)``."""
        a = np.abs(x_i64, out=out)
        np.minimum(a, neg_b, out=a)
        a += b
        a *= a
        a += c
        a *= np.sign(x_i64)
        a >>= 14
        a += one
        a *= x_i64
        return a

    @staticmethod
    def _int_gelu_plain(dp, x_int, p):
        """The kernel's formula as written in :func:`~ibert_ref.kernels.int_gelu` (whole arrays)."""
        sign = np.sign(x_int)
        clipped = np.minimum(np.abs(x_int), -p.b_int)
        erf_poly = (clipped + p.b_int) ** 2 + p.c_int
        erf_q = dp.floor_div_pow2(sign * erf_poly, 14)
        return dp.emit(x_int * (erf_q + p.one), p.out_scale)

    @staticmethod
    def _exp_requantize_f64(z, q, dy, bits):
        """``clamp(rint(max(z, 0) * d[q]))``, ``d[q] = m * 2^-(e - 30 + q)`` from a table over q's range.

        Same integers as the reference when ``max z * |m| < 2^53`` and the result stays below
        2^51 (tier 0 of :func:`~ibert_ref.intops.mul_shift_round_fast`: every table entry and
        every product is exact); None when that does not hold. Runs block by block.
        """
        z, q = np.asarray(z), np.asarray(q)
        m, e = np.asarray(dy.m), np.asarray(dy.e)
        if m.size != 1 or e.size != 1 or z.size == 0 or z.shape != q.shape:
            return None
        q_lo, q_hi = int(q.min()), int(q.max())
        shift_lo = int(e.reshape(-1)[0]) - 30 + q_lo
        if shift_lo < 0:
            raise OverflowError("softmax exp requantization shift went negative")
        m_int = int(m.reshape(-1)[0])
        product = max(int(z.max()), 0) * abs(m_int)
        if product >= intops.F64_EXACT_INT or product >= intops.ROUND_MAGIC_LIMIT << shift_lo:
            return None
        if q_hi - q_lo > 256 or shift_lo + q_hi - q_lo > 1000:
            return None
        table_f64 = np.ldexp(float(m_int), -np.arange(shift_lo, shift_lo + q_hi - q_lo + 1, dtype=np.int32))
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

        def kernel(z_blk, q_blk):
            x_f64 = np.take(table_f64, q_blk - q_lo if q_lo else q_blk)
            x_f64 *= np.maximum(z_blk, 0)
            e16 = intops.rint_f64_to_i64(x_f64)
            return np.clip(e16, lo, hi, out=e16)

        return intops.blockwise(kernel, z.shape, (np.ascontiguousarray(z), np.ascontiguousarray(q)))


_NARROW_INTS = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


def _row_data(v):
    """The array a row-local kernel's argument ``v`` contributes rows from, or None."""
    data = v.data if isinstance(v, QTensor) else v if isinstance(v, np.ndarray) else None
    return data if data is not None and data.ndim >= 2 else None


def _same_for_every_row(v, depth: int = 0) -> bool:
    """True if ``v`` (a parameter, scale or dataclass of them) holds no array with rows:
    every array it holds is a scalar or per-channel (all axes but the last of length 1)."""
    if isinstance(v, np.ndarray):
        return v.ndim <= 1 or all(d == 1 for d in v.shape[:-1])
    if depth < 3 and hasattr(v, "__dataclass_fields__"):
        return all(_same_for_every_row(getattr(v, f), depth + 1) for f in v.__dataclass_fields__)
    return True


def run_row_blocks(dp, kernel, args, kwargs):
    """``kernel(dp, *args, **kwargs)`` for a row-local kernel, computed on row blocks.

    Every argument that is an array (or a :class:`QTensor`'s data) of 2 or more dimensions
    is cut into the same blocks of rows (all leading axes flattened; they must agree), each
    block of about ``intops.BLOCK_ELEMS`` elements; other arguments (parameters, per-tensor
    or per-channel scales: checked, :func:`_same_for_every_row`) go whole to every block. Blocks run on
    :func:`~ibert_ref.intops.run_blocks` and write their rows of the result. Row-locality
    makes this the same integers as one whole call; small inputs, or arguments that do not
    fit the pattern (a scale with rows, disagreeing leading axes), take the whole call.
    """
    items = list(enumerate(args)) + list(kwargs.items())
    datas = {key: d for key, d in ((key, _row_data(v)) for key, v in items) if d is not None}
    whole = lambda: kernel(dp, *args, **kwargs)  # noqa: E731
    if not datas:
        return whole()
    lead = next(iter(datas.values())).shape[:-1]
    rows = int(np.prod(lead))
    cols = max(d.shape[-1] for d in datas.values())
    step = intops.block_rows(rows * cols, cols)
    if step is None or any(d.shape[:-1] != lead for d in datas.values()):
        return whole()
    if not all(_same_for_every_row(v if key not in datas else v.scale if isinstance(v, QTensor) else None)
               for key, v in items):
        return whole()
    flat = {key: d.reshape(rows, d.shape[-1]) for key, d in datas.items()}
    state = {"out": None, "scale": None}
    lock = threading.Lock()

    def block_arg(key, v, r0, r1):
        if key not in flat:
            return v
        rows_blk = flat[key][r0:r1]
        return QTensor(rows_blk, v.scale) if isinstance(v, QTensor) else rows_blk

    def one_block(i):
        r0, r1 = i * step, min((i + 1) * step, rows)
        blk_args = [block_arg(j, v, r0, r1) for j, v in enumerate(args)]
        blk_kwargs = {k: block_arg(k, v, r0, r1) for k, v in kwargs.items()}
        res = kernel(dp, *blk_args, **blk_kwargs)
        data = np.asarray(res.data)
        with lock:
            if state["out"] is None:
                state["out"] = np.empty((rows, data.shape[-1]), dtype=data.dtype)
                state["scale"] = res.scale
            out, scale = state["out"], state["scale"]
        if data.shape != (r1 - r0, out.shape[1]):
            raise AssertionError(f"{kernel.__name__}: row block {i} gave shape {data.shape}, not row-local")
        if res.scale is not scale and not np.array_equal(res.scale, scale):
            raise AssertionError(f"{kernel.__name__}: row block {i} has another output scale")
        if not np.can_cast(data.dtype, out.dtype, casting="safe"):
            raise _WiderBlock  # a block needs a wider type than the first one: run it whole
        out[r0:r1] = data

    try:
        intops.run_blocks(one_block, -(-rows // step))
    except _WiderBlock:
        return whole()
    return QTensor(state["out"].reshape(lead + state["out"].shape[1:]), state["scale"])


class _WiderBlock(Exception):
    """A row block's result type is wider than the first block's (run_row_blocks)."""


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
