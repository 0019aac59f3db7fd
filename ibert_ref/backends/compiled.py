"""The compiled backend: the exact datapath with one fused numba pass per op and an exact int8 GEMM.

``IBertModel.from_pretrained(..., backend="compiled")`` (or ``make_datapath("exact",
backend="compiled")``) builds a :class:`CompiledDatapath`. It is an
:class:`~ibert_ref.backends.fast_numpy.FastExactDatapath` — same constants, same int8 resident weights, same
integers at every op — whose expensive steps run elsewhere:

* the row-local kernels of :mod:`ibert_ref.kernels` (requantize with or without residual, i-exp
  with its 16-bit requantization, the softmax normalisation, IntGELU, IntLayerNorm) are replaced,
  through :meth:`CompiledDatapath.replacement_kernel`, by the one-pass kernels of
  :mod:`ibert_ref.backends.compiled_kernels`, rows in parallel (numba ``prange``);
* QuantLinear is an exact int8 x int8 -> int32 GEMM (:mod:`ibert_ref.backends.int_gemm`:
  ``torch._int_mm`` after an exactness self-check, else float32 BLAS in exact chunks); its bias
  — and IntGELU, when one follows — is deferred (:class:`DeferredLinear`) and fused into the
  requantization that consumes it, unless something reads the integers first (a trace does);
* the attention GEMMs run on the same int8 GEMM, per head: ``Q K^T`` directly, ``P V`` as
  ``(P - 128) V + 128 * sum(V)`` (``P`` in [0, 256] is not int8; ``P - 128`` is when no
  probability is 256); otherwise in float32, exact while every partial sum is an integer below
  2^24 (checked per call from the operands' bounds).

Whenever an input falls outside what a compiled kernel handles (an unexpected dtype or layout,
a constant that is not per tensor / per channel, a value where the reference raises), the NumPy
backend's kernel runs instead, so results and errors are the reference's. While a width census
collects (``oplog`` set) everything runs on NumPy, so the kernels' own code reports its
intermediates. Hardware profiles (:mod:`ibert_ref.hardware.profiles`) do not use this backend:
they model their own registers (wrapping, saturating) and record overflow per op on whole
arrays, which these exact kernels do not reproduce.
"""

from __future__ import annotations

import os

# Two OpenMP runtimes share the cores here: numba's ``prange`` kernels (numba's omp layer loads
# the system libgomp) and torch's GEMMs (torch ships its own libgomp). By default an idle
# libgomp thread spins after each parallel region, so the runtime that is not working takes a
# core from the one that is (measured on a loaded 2-core VM: 1x128 in 1.8-4 s instead of 0.1 s). Idle
# threads sleep instead (``OMP_WAIT_POLICY=PASSIVE``), unless the environment says otherwise.
# Read by each libgomp when it loads: numba's on the first kernel launch, torch's on import (a
# torch imported before this module keeps its setting).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from .. import intops  # noqa: E402
from .. import kernels as K  # noqa: E402
from ..datapath import QTensor  # noqa: E402
from . import compiled_kernels as _kernels  # noqa: E402
from . import fast_intops as F  # noqa: E402
from .fast_numpy import FastExactDatapath  # noqa: E402
from .int_gemm import TorchIntGemm, choose_gemm  # noqa: E402

I64 = np.int64
_INTS = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))
_KERNEL_INTS = (np.dtype(np.int32), np.dtype(np.int64))
#: Largest i-exp table (entries, int32) built per softmax constant set; roberta-base: ~1,800.
EXP_TABLE_MAX = 1 << 16


def _rows(a: np.ndarray, int8: bool = False) -> np.ndarray:
    """``a`` as a C-contiguous (rows, last axis) array whose dtype is int32 or int64 (int16
    widened to int32, and int8 too unless ``int8``: fewer compiled signatures, exact)."""
    a = np.ascontiguousarray(a)
    if a.dtype not in _KERNEL_INTS and not (int8 and a.dtype == np.int8):
        a = a.astype(np.int32)
    return a.reshape(-1, a.shape[-1])


def _residual_rows(a: np.ndarray, cols: int) -> np.ndarray:
    """A residual operand as (rows, cols), int8 kept (the model's residuals are int8 QuantAct
    outputs: no widened copy), any other type as int64."""
    a = np.ascontiguousarray(a, dtype=np.int8 if a.dtype == np.int8 else I64)
    return a.reshape(-1, cols)


_OUT_DTYPES = {}


def _out_dtype(bits: int):
    """The narrowest of int8/int16/int32/int64 holding ``bits`` signed bits (as the NumPy
    backend's ``clamp_bits``), memoised."""
    dt = _OUT_DTYPES.get(bits)
    if dt is None:
        dt = _OUT_DTYPES[bits] = np.dtype(intops.smallest_int_dtype(-(1 << (bits - 1)), (1 << (bits - 1)) - 1))
    return dt


#: Per-head GEMMs run on the backend's threads (torch single-threaded) from this many heads on
#: (batch x heads); fewer run on the calling thread with torch's own threads (measured: 96 heads
#: of 128 x 64 x 128, 8x128, -20% forward time; 12 heads, 1x128, no gain).
HEAD_POOL_MIN = 32
#: Kernels whose first operand has fewer elements run on one thread: waking a sleeping
#: (``OMP_WAIT_POLICY=PASSIVE``) second thread costs more than it saves on such small arrays.
SMALL_ELEMS = 1 << 17


class _SizedKernels:
    """:mod:`~ibert_ref.backends.compiled_kernels`, each call run on one thread when its first
    operand is below :data:`SMALL_ELEMS` elements, else on all of numba's threads (the count
    set when the backend was built). Scheduling only: rows are independent, the integers the
    same for any thread count."""

    def __init__(self):
        self.full = None

    def _threads(self, n):
        import numba  # noqa: PLC0415

        if self.full is None:
            self.full = numba.get_num_threads()
        want = 1 if n < SMALL_ELEMS else self.full
        if want != numba.get_num_threads():  # (per calling thread in numba)
            numba.set_num_threads(want)

    def __getattr__(self, name):
        fn = getattr(_kernels, name)

        def call(*args):
            self._threads(getattr(args[0], "size", 0))
            return fn(*args)

        call.__doc__ = fn.__doc__
        return call


ck = _SizedKernels()


def _numba_threads() -> int:
    """The backend's thread count (numba's, as set when it was built)."""
    import numba  # noqa: PLC0415

    return ck.full if ck.full is not None else numba.get_num_threads()


#: ``z_id`` of :func:`~ibert_ref.backends.compiled_kernels.requantize_linear_rows` without a
#: residual (not read).
_NO_RESIDUAL = np.zeros((1, 1), dtype=I64)
#: ``colsum`` of :func:`~ibert_ref.backends.compiled_kernels.merge_heads_rows` without ``plus`` (not read).
_NO_COLSUM = np.zeros((1, 1, 1), dtype=np.int32)


def _requant_output(shape, bits: int):
    """``(out, lo, hi)`` for a ``bits``-wide QuantAct: an empty output array of ``shape`` in the
    narrowest integer type holding ``bits`` signed bits, and its clamp bounds
    ``-2^(bits-1)``, ``2^(bits-1) - 1``."""
    return np.empty(shape, dtype=_out_dtype(bits)), -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def kernel_threads_from_env():
    """``IBERT_REF_NUM_THREADS``: the compiled kernels' thread count (a positive integer), or
    None when unset (numba's default: one per core). ValueError on anything else."""
    env = os.environ.get("IBERT_REF_NUM_THREADS")
    if not env:
        return None
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"IBERT_REF_NUM_THREADS must be a positive integer, got {env!r}")
    return n


def _scalar(v):
    """A size-1 integer constant as a Python int, or None."""
    v = np.asarray(v)
    if v.size != 1 or v.dtype not in _INTS:
        return None
    return int(v.reshape(-1)[0])


class _Deferred(QTensor):
    """An op output whose integers are written only when ``data`` is read (once, then kept):
    a subclass sets ``shape`` and ``scale`` and computes the flat array in :meth:`_compute`."""

    _data = None

    @property
    def materialized(self) -> bool:
        return self._data is not None

    @property
    def data(self):
        if self._data is None:
            self._data = self._compute().reshape(self.shape)
        return self._data

    def _compute(self) -> np.ndarray:
        raise NotImplementedError


class DeferredLinear(_Deferred):
    """A QuantLinear output whose bias (and IntGELU, when one follows) is not yet applied:
    ``acc`` (rows, N) from the exact int8 GEMM, ``bias`` int64 (N,), ``gelu`` None or IntGELU's
    per-channel ``(b, c, one)``. Reading ``data`` computes the integers — ``acc + bias``
    (int32, the caller proved it fits) or IntGELU of it (int64) — exactly as the unfused ops
    would, once; a requantization that consumes it unread fuses them into its own pass
    (:func:`~ibert_ref.backends.compiled_kernels.requantize_linear_rows`). A trace reads it, so
    traced runs materialise every op, as the NumPy backend does."""

    def __init__(self, acc, shape, bias, gelu, scale):  # noqa: D107 - fields as documented
        self.acc, self.shape, self.bias, self.gelu = acc, shape, bias, gelu
        self.scale = scale

    def _compute(self):
        if self.gelu is None:
            out = np.empty(self.acc.shape, dtype=np.int32)
            ck.add_bias_rows(self.acc, self.bias, out)
        else:
            out = np.empty(self.acc.shape, dtype=I64)
            ck.int_gelu_rows(self.acc, self.bias, *self.gelu, out)
        return out


class DeferredExp(_Deferred):
    """i-exp's 16-bit output (softmax's ``act``) not yet written: the scores ``rows`` (rows, T)
    and the exact table of :func:`~ibert_ref.backends.compiled_kernels.int_exp_table` (every
    entry in ``[0, 2^15)``, the ``x = 0`` one positive). Reading ``data`` writes it
    (:func:`~ibert_ref.backends.compiled_kernels.int_exp_lookup_rows`); the softmax
    normalisation that consumes it unread recomputes the exponentials in its own pass."""

    def __init__(self, rows, x0_30, table, shape, scale):  # noqa: D107
        self.rows, self.x0_30, self.table, self.shape = rows, x0_30, table, shape
        self.scale = scale

    def _compute(self):
        out = np.empty(self.rows.shape, dtype=np.int16)
        ck.int_exp_lookup_rows(self.rows, self.x0_30, self.table, out)  # never refuses: checked table
        return out


class DeferredProbs(_Deferred):
    """IntSoftmax's probabilities not yet written, computed from the scores in one pass
    (:func:`~ibert_ref.backends.compiled_kernels.softmax_rows`): ``data`` as int16, or
    :meth:`minus_128` — the int8 operand ``P - 128`` of the context GEMM — without writing
    ``P`` at all."""

    def __init__(self, rows, x0_30, table, shift, shape, scale):  # noqa: D107
        self.rows, self.x0_30, self.table, self.shift, self.shape = rows, x0_30, table, shift, shape
        self.scale = scale
        self._p8 = None

    def _compute(self):
        if self._p8 is not None:  # every P <= 255 was checked: P = (P - 128) + 128 exactly
            return self._p8.astype(np.int16) + np.int16(128)
        out = np.empty(self.rows.shape, dtype=np.int16)
        ck.softmax_rows(self.rows, self.x0_30, self.table, self.shift, False, out)
        return out

    def minus_128(self):
        """``(P - 128 as int8 (B, nh, T, T), how many P exceed 255)``. When none does, the int8
        array is kept (1 byte per probability) and the scores are released."""
        if self._p8 is not None:
            return self._p8, 0
        out = np.empty(self.rows.shape, dtype=np.int8)
        over = ck.softmax_rows(self.rows, self.x0_30, self.table, self.shift, True, out)
        out = out.reshape(self.shape)
        if not over:
            self._p8, self.rows = out, None
        return out, over


class DeferredLayerNorm(_Deferred):
    """IntLayerNorm's int64 output not yet written: its input rows, constants and per-row
    integers (mean and ``2^31 / std``, computed — and checked — when the op ran, so a constant
    row raises there, as in the reference). Reading ``data`` writes it
    (:func:`~ibert_ref.backends.compiled_kernels.layernorm_apply_rows`); the QuantAct that
    consumes it unread computes it row by row in its own pass
    (:func:`~ibert_ref.backends.compiled_kernels.layernorm_requantize_rows`)."""

    def __init__(self, rows, mean, factor, bias, shape, scale):  # noqa: D107
        self.rows, self.mean, self.factor, self.bias, self.shape = rows, mean, factor, bias, shape
        self.scale = scale

    def _compute(self):
        out = np.empty(self.rows.shape, dtype=I64)
        ck.layernorm_apply_rows(self.rows, self.mean, self.factor, self.bias, out)
        return out


class CompiledDatapath(FastExactDatapath):
    """The exact datapath on compiled kernels (see the module docstring).

    ``gemm``: ``None`` (``torch._int_mm`` if available and exact, else float32 BLAS),
    ``"torch"`` or ``"blas"`` (or the environment variable ``IBERT_REF_INT_GEMM``). Threads:
    numba's (one per core, or ``IBERT_REF_NUM_THREADS``) for the kernels, torch's for the GEMMs;
    idle ones sleep (``OMP_WAIT_POLICY=PASSIVE``, see the module source).
    """

    backend = "compiled"

    def __init__(self, gemm=None):
        super().__init__()
        threads = kernel_threads_from_env()
        if threads is not None:  # the kernels' threads (numba); default: one per core
            import numba  # noqa: PLC0415

            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            ck.full = None  # re-read
        self.int_gemm = choose_gemm(gemm)
        self._torch = self.int_gemm.torch if isinstance(self.int_gemm, TorchIntGemm) else None
        self._vectors = {}
        self._replacements = {}
        self._kernels = {
            "quant_linear": self._quant_linear,
            "requantize": self._requantize,
            "int_exp": self._int_exp,
            "softmax_normalize": self._softmax_normalize,
            "int_gelu": self._int_gelu,
            "int_layernorm": self._int_layernorm,
        }

    def __repr__(self):
        return f"CompiledDatapath(gemm={self.int_gemm.name!r})"

    # ---- the kernels this backend replaces ------------------------------------------------
    def compiled_kernel(self, name: str):
        """The compiled one-pass kernel for ``name`` (``fn(dp, *args)`` returning the kernel's
        result, or None where its input is outside what it handles), or None. None while a
        census collects."""
        if self.oplog is not None:
            return None
        return self._kernels.get(name)

    def replacement_kernel(self, name: str):
        """Kernel ``name`` for :func:`ibert_ref.dataflow.kernel`: the compiled kernel, falling
        back (where it returns None) to the NumPy backend's route (its replacement, else the
        kernel of :mod:`ibert_ref.kernels`). While a census collects: the NumPy kernels."""
        compiled = self.compiled_kernel(name)
        if compiled is None:
            return super().replacement_kernel(name)
        run = self._replacements.get(name)
        if run is None:
            fallback = super().replacement_kernel(name) or getattr(K, name)

            def run(dp, *args, **kwargs):
                out = compiled(dp, *args, **kwargs)
                return fallback(dp, *args, **kwargs) if out is None else out

            self._replacements[name] = run
        return run

    # ---- per-channel constants --------------------------------------------------------
    def _vector(self, v, cols: int):
        """``v`` (a per-tensor or per-channel integer constant) as an int64 (cols,) vector, or
        None if it has another shape or type. Cached per array (constants live as long as the
        model)."""
        key = (id(v), cols)
        hit = self._vectors.get(key)
        if hit is not None and hit[0] is v:
            return hit[1]
        a = np.asarray(v)
        if a.dtype not in _INTS or a.size == 0:
            return None
        if a.ndim > 0 and (any(d != 1 for d in a.shape[:-1]) or a.shape[-1] not in (1, cols)):
            return None
        vec = np.array(np.broadcast_to(a.reshape(-1), (cols,)), dtype=I64)  # a writable copy: one numba signature
        self._vectors[key] = (v, vec)
        return vec

    def _multiplier(self, dy, cols: int):
        """``(m, e, d, zlim, dmax)`` of a dyadic multiplier for
        :func:`~ibert_ref.backends.compiled_kernels.dyadic_row`: ``m``/``e`` int64 (cols,)
        vectors, ``d = m * 2^-e`` float64 (exact), ``zlim = floor((2^53 - 1) / max|m|)``
        (-1 when some ``e > 1000``: float routes off), ``dmax = max|d|``. None where the
        reference raises (``|m| > 2^31``, ``e < 0``) or the shape is not per tensor / per
        channel; the reference's ValueError where it raises. Cached per multiplier."""
        key = ("dy", id(dy.m), id(dy.e), cols)
        hit = self._vectors.get(key)
        if hit is not None and hit[0] is dy.m and hit[1] is dy.e:
            return hit[2]
        m, e = self._vector(dy.m, cols), self._vector(dy.e, cols)
        if m is None or e is None:
            return None
        if e.min() < 0:  # the reference's errors (intops.mul_shift_round)
            raise ValueError("mul_shift_round needs e >= 0 (a multiplier below 2^31 * 2^-e)")
        if np.abs(m).max() > (1 << 31):
            raise ValueError("mul_shift_round needs |m| <= 2^31")
        m_max = int(np.abs(m).max())
        if int(e.max()) > 1000:
            d, zlim, dmax = np.zeros(cols), -1, float("inf")
        else:
            d = np.ldexp(m.astype(np.float64), -e.astype(np.int32))
            zlim = ((1 << 53) - 1) // m_max if m_max else 1 << 62
            dmax = float(np.abs(d).max())
        out = (m, e, d, zlim, dmax)
        self._vectors[key] = (dy.m, dy.e, out)
        return out

    def _zeros(self, cols: int):
        key = ("zeros", cols)
        if key not in self._vectors:
            self._vectors[key] = np.zeros(cols, dtype=I64)
        return self._vectors[key]

    # ---- compiled kernels (fn(dp, *kernel args) -> QTensor or None) -----------------------
    @staticmethod
    def _quant_linear(dp, x, p):
        """QuantLinear: the exact int8 GEMM, its bias deferred (:class:`DeferredLinear`) to the
        op that consumes it. None (the kernel's own path) unless ``x`` and the weights are int8
        and ``K * 2^14 + max|b| < 2^31`` (the materialised result is the int32 of the NumPy
        backend)."""
        xd, w = np.asarray(dp.recover(x)), np.asarray(p.w)
        if xd.dtype != np.int8 or xd.ndim < 2 or xd.size == 0 or w.dtype != np.int8 or w.ndim != 2:
            return None
        n, k = w.shape
        bias = dp._vector(p.b, n)
        if bias is None or xd.shape[-1] != k or k * (1 << 14) + int(np.abs(bias).max()) >= (1 << 31):
            return None
        acc = np.ascontiguousarray(dp.int_gemm.matmul_i8(np.ascontiguousarray(xd).reshape(-1, k), w.T))
        if acc.dtype not in _KERNEL_INTS:
            return None
        return DeferredLinear(acc, xd.shape[:-1] + (n,), bias, None, np.asarray(p.out_scale, dtype=np.float32))

    @staticmethod
    def _requantize(dp, x, p, identity=None):
        if isinstance(x, DeferredLinear) and not x.materialized and 2 <= p.bits <= 32:
            return dp._requantize_linear(x, p, identity)
        if isinstance(x, DeferredLayerNorm) and not x.materialized and identity is None and 2 <= p.bits <= 32:
            mult = dp._multiplier(dp.requant_multiplier(p.dy, x), x.rows.shape[-1])
            if mult is not None:
                out, lo, hi = _requant_output(x.shape, p.bits)
                if not ck.layernorm_requantize_rows(x.rows, x.mean, x.factor, x.bias, *mult, lo, hi,
                                                    out.reshape(x.rows.shape)):
                    return dp.emit(out, p.out_scale)
        z = np.asarray(dp.round_recover(x))
        if z.dtype not in _INTS or z.ndim == 0 or z.size == 0 or not 2 <= p.bits <= 32:
            return None  # (wider outputs do not occur in I-BERT: the NumPy kernel runs)
        cols = z.shape[-1]
        target = dp._requant_target(x, p, z.shape)
        if target is None:
            return None
        mult, out, out2, lo, hi = target
        if identity is None:
            refused = ck.requantize_rows(_rows(z, int8=True), *mult, lo, hi, out2)
        else:
            residual = dp._residual_operands(identity, p, z.shape)
            if residual is None:
                return None
            refused = dp._requantize_sum(_rows(z), dp._zeros(cols), None, mult, residual, lo, hi, out2)
        return None if refused else dp.emit(out, p.out_scale)

    def _requantize_linear(self, x, p, identity):
        """:meth:`_requantize` of an unread :class:`DeferredLinear`: bias (and IntGELU) fused
        into the requantization pass (same integers), with or without a residual."""
        target = self._requant_target(x, p, x.shape)
        if target is None:
            return None
        mult, out, out2, lo, hi = target
        residual = None
        if identity is not None:  # (a residual after IntGELU does not occur in I-BERT: NumPy runs it)
            residual = None if x.gelu is not None else self._residual_operands(identity, p, x.shape)
            if residual is None:
                return None
        refused = self._requantize_sum(x.acc, x.bias, x.gelu, mult, residual, lo, hi, out2)
        return None if refused else self.emit(out, p.out_scale)

    @staticmethod
    def _requantize_sum(acc_rows, bias, gelu, mult, residual, lo, hi, out_rows):
        """:func:`~ibert_ref.backends.compiled_kernels.requantize_linear_rows` on ``acc_rows +
        bias``, with IntGELU when ``gelu`` (its constants ``(b, c, one)``) is not None and the
        residual ``(z_id_rows, mult_id)`` when ``residual`` is not None. Returns the number of
        refused rows."""
        gelu_consts = gelu if gelu is not None else (bias,) * 3  # (not read without gelu)
        z_id_rows, mult_id = residual if residual is not None else (_NO_RESIDUAL, mult)
        return ck.requantize_linear_rows(acc_rows, bias, gelu is not None, *gelu_consts, *mult,
                                         residual is not None, z_id_rows, *mult_id, lo, hi, out_rows)

    def _requant_target(self, x, p, shape):
        """``(mult, out, out_rows, lo, hi)`` for requantizing ``x`` by ``p``: the multiplier of
        ``p.dy`` (:meth:`_multiplier`), the ``p.bits``-wide output of ``shape``
        (:func:`_requant_output`), that output as (rows, C), its clamp bounds; or None (a
        multiplier the kernels do not take)."""
        mult = self._multiplier(self.requant_multiplier(p.dy, x), shape[-1])
        if mult is None:
            return None
        out, lo, hi = _requant_output(shape, p.bits)
        return mult, out, out.reshape(-1, shape[-1]), lo, hi

    def _residual_operands(self, identity, p, shape):
        """The residual's integers as (rows, C) and its multiplier for
        :func:`~ibert_ref.backends.compiled_kernels.requantize_linear_rows`, or None (another
        shape or integer type, or a multiplier the kernels do not take: the NumPy kernel runs)."""
        z_id = np.asarray(self.round_recover(identity))
        if z_id.shape != tuple(shape) or z_id.dtype not in _INTS:
            return None
        cols = z_id.shape[-1]
        mult_id = self._multiplier(self.requant_multiplier(p.dy_identity, identity), cols)
        return None if mult_id is None else (_residual_rows(z_id, cols), mult_id)

    @staticmethod
    def _int_exp(dp, scores, p):
        s = np.asarray(scores)
        consts = [_scalar(v) for v in (p.x0_int, p.x0_30, p.b_int, p.c_int, p.dy_exact.m, p.dy_exact.e)]
        if s.dtype not in _INTS or s.ndim == 0 or s.size == 0 or any(c is None for c in consts):
            return None
        x0_int, x0_30, b_int, c_int, m, e = consts
        if x0_int == 0 or abs(m) > (1 << 31) or e < 0 or not 2 <= p.act_bits <= 16:
            return None  # (I-BERT's act is 16 bits; other widths take the NumPy kernel)
        lo, hi = -(1 << (p.act_bits - 1)), (1 << (p.act_bits - 1)) - 1
        out = np.empty(s.shape, dtype=np.int16)
        if -EXP_TABLE_MAX < x0_30 <= 0:  # x = max(s - rowmax, x0_30) has -x0_30 + 1 values: a table
            key = ("exp", x0_int, x0_30, b_int, c_int, m, e, lo, hi)
            hit = dp._vectors.get(key)
            if hit is None:
                table = ck.int_exp_table(x0_int, x0_30, b_int, c_int, m, e, lo, hi)
                hit = dp._vectors[key] = (table, bool(table.min() >= 0 and table[-1] > 0))
            table, clean = hit
            if clean and lo <= 0 and hi <= (1 << 15) - 1:  # never refuses; a positive entry at x = 0
                return DeferredExp(_rows(s), x0_30, table, s.shape, np.asarray(p.act_scale, dtype=np.float32))
            refused = ck.int_exp_lookup_rows(_rows(s), x0_30, table, out.reshape(-1, s.shape[-1]))
        else:
            refused = ck.int_exp_rows(_rows(s), x0_int, x0_30, b_int, c_int, m, e, lo, hi, out.reshape(-1, s.shape[-1]))
        return None if refused else dp.emit(out, p.act_scale)

    @staticmethod
    def _softmax_normalize(dp, e, p):
        from ..kernels import SOFTMAX_OUT_SCALE_F32  # noqa: PLC0415 - kernels import the datapath

        shift = 32 - int(p.out_bits)
        if isinstance(e, DeferredExp) and not e.materialized and 18 <= shift <= 62:
            return DeferredProbs(e.rows, e.x0_30, e.table, shift, e.shape, SOFTMAX_OUT_SCALE_F32)
        data = np.asarray(dp.recover(e))
        if data.dtype not in _INTS or data.ndim == 0 or data.size == 0 or not 18 <= shift <= 62:
            return None
        out = np.empty(data.shape, dtype=np.int16)
        rows = np.ascontiguousarray(data, dtype=np.int16 if data.dtype == np.int16 else I64).reshape(-1, data.shape[-1])
        refused = ck.softmax_normalize_rows(rows, shift, out.reshape(-1, data.shape[-1]))
        return None if refused else dp.emit(out, SOFTMAX_OUT_SCALE_F32)

    @staticmethod
    def _int_gelu(dp, x, p):
        if isinstance(x, DeferredLinear) and not x.materialized and x.gelu is None:
            cols = x.acc.shape[-1]
            consts = tuple(dp._vector(v, cols) for v in (p.b_int, p.c_int, p.one))
            if all(v is not None for v in consts):  # deferred too: fused into the next requantization
                return DeferredLinear(x.acc, x.shape, x.bias, consts, np.asarray(p.out_scale, dtype=np.float32))
        data = np.asarray(dp.recover(x))
        if data.dtype not in _INTS or data.ndim == 0 or data.size == 0:
            return None
        cols = data.shape[-1]
        b, c, one = (dp._vector(v, cols) for v in (p.b_int, p.c_int, p.one))
        if b is None or c is None or one is None:
            return None
        out = np.empty(data.shape, dtype=I64)
        ck.int_gelu_rows(_rows(data), dp._zeros(cols), b, c, one, out.reshape(-1, cols))
        return dp.emit(out, p.out_scale)

    @staticmethod
    def _int_layernorm(dp, x, p):
        data = np.asarray(dp.recover(x))
        shift = _scalar(p.shift)
        if data.dtype not in _INTS or data.ndim == 0 or data.size == 0 or shift is None or not 0 <= shift <= 62:
            return None
        cols = data.shape[-1]
        bias = dp._vector(p.bias_int, cols)
        if bias is None:
            return None
        rows = _rows(data)
        mean, factor = np.empty(rows.shape[0], dtype=I64), np.empty(rows.shape[0], dtype=I64)
        if ck.layernorm_stats_rows(rows, shift, mean, factor):
            return None  # a row the reference refuses: its kernel runs and raises here
        return DeferredLayerNorm(rows, mean, factor, bias, data.shape, p.out_scale)

    # ---- GEMMs ------------------------------------------------------------------------
    def linear(self, x, w, b):
        """``x (..., K) @ w (N, K)^T + b`` exactly: the int8 GEMM, then the bias in one compiled
        pass (int32 result when ``K * 2^14 + max|b| < 2^31``, else int64). Operands that are not
        int8-valued, or weights that are not int8, take the NumPy path."""
        x = np.asarray(x)
        w = np.asarray(w)
        if self.oplog is not None or x.ndim == 0 or x.size == 0 or w.dtype != np.int8 or w.ndim != 2:
            return super().linear(x, w, b)
        if x.dtype != np.int8:
            if x.dtype not in _INTS or int(x.min()) < -128 or int(x.max()) > 127:
                return super().linear(x, w, b)
            x = x.astype(np.int8)
        n, k = w.shape
        bias = self._vector(b, n)
        if bias is None or x.shape[-1] != k:
            return super().linear(x, w, b)
        acc = self.int_gemm.matmul_i8(np.ascontiguousarray(x).reshape(-1, k), w.T)
        acc = np.ascontiguousarray(acc)
        bound = k * (1 << 14) + int(np.abs(bias).max())
        if acc.dtype == np.int32 and bound < (1 << 31):
            out = acc if acc.flags.writeable else np.empty(acc.shape, dtype=np.int32)
            ck.add_bias_rows(acc, bias, out)  # in place: no second buffer
        else:  # wider than int32 (not in I-BERT), or the BLAS GEMM's int64: NumPy, exact in int64
            out = acc.astype(I64) + bias
        return out.reshape(x.shape[:-1] + (n,))

    def _heads_f32(self, a, num_heads):
        """(B, T, H) integers -> (B, nh, T, hd) float32 (exact below 2^24), torch or NumPy."""
        b, t, h = a.shape
        if self._torch is not None:
            return self._torch.from_numpy(np.ascontiguousarray(a)).view(b, t, num_heads, h // num_heads).transpose(1, 2).float()
        return a.reshape(b, t, num_heads, h // num_heads).transpose(0, 2, 1, 3).astype(np.float32)

    def _f32_matmul(self, a, b):
        if self._torch is not None:
            return self._torch.matmul(a, b).numpy()
        return np.matmul(a, b)

    def _per_head(self, a, b_rows, out):
        """``out[i, h] = a[i, h] @ b_rows[i, h]^T`` for every batch row ``i`` and head ``h``
        (torch int8 tensors (B, nh, M, K) and (B, nh, N, K), ``out`` int32 (B, nh, M, N)), each
        an exact ``torch._int_mm``. The heads are small GEMMs: they run on this backend's
        threads, half the heads each, with torch's intra-op threads set to 1 meanwhile (a
        2-thread torch GEMM of 128 x 64 x 128 spends more waking its second thread than
        computing), restored afterwards."""
        torch = self._torch
        pairs = [(i, h) for i in range(a.shape[0]) for h in range(a.shape[1])]

        def run(part):
            for i, h in part:
                torch._int_mm(a[i, h], b_rows[i, h].t(), out=out[i, h])

        workers = min(len(pairs), _numba_threads())
        if workers <= 1 or len(pairs) < HEAD_POOL_MIN:
            return run(pairs)
        pool = self._head_pool(workers)
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            step = -(-len(pairs) // workers)
            list(pool.map(run, [pairs[k:k + step] for k in range(0, len(pairs), step)]))
        finally:
            torch.set_num_threads(saved)

    def _head_pool(self, workers):
        if getattr(self, "_pool", None) is None or self._pool_size != workers:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            self._pool, self._pool_size = ThreadPoolExecutor(workers, thread_name_prefix="ibert-heads"), workers
        return self._pool

    def _int8_heads(self, a, num_heads, transpose=False):
        """(B, T, H) int8 -> C-contiguous (B, nh, T, hd) int8 heads ((B, nh, hd, T) if ``transpose``)."""
        b, t, h = a.shape
        heads = a.reshape(b, t, num_heads, h // num_heads)
        return np.ascontiguousarray(heads.transpose(0, 2, 3, 1) if transpose else heads.transpose(0, 2, 1, 3))

    def attention_scores(self, q, k, num_heads, mask, score_scale_f32):
        """``Q K^T`` per head: the exact int8 GEMM (int32, ``hd * 2^14`` at most) when the GEMM
        is ``torch._int_mm`` and both operands are int8, else :meth:`_attention_scores_f32`;
        masked keys get the ``-2^62`` sentinel (int64) in one compiled pass."""
        qd, kd = np.asarray(q.data), np.asarray(k.data)
        if (self._torch is None or self.oplog is not None or qd.ndim != 3 or qd.shape != kd.shape or qd.size == 0
                or qd.dtype != np.int8 or kd.dtype != np.int8):
            return self._attention_scores_f32(q, k, num_heads, mask, score_scale_f32)
        b, t, _ = qd.shape
        torch = self._torch
        qh = torch.from_numpy(self._int8_heads(qd, num_heads))
        kh = torch.from_numpy(self._int8_heads(kd, num_heads))
        scores = np.empty((b, num_heads, t, t), dtype=np.int32)
        out = torch.from_numpy(scores)
        self._per_head(qh, kh, out)
        if mask is None or np.all(mask):
            return scores
        keep = np.ascontiguousarray(np.asarray(mask).astype(bool).astype(np.uint8))
        masked = np.empty(scores.shape, dtype=I64)
        ck.mask_scores(scores.reshape(-1, t), keep, masked.reshape(-1, t))
        return masked

    def _attention_scores_f32(self, q, k, num_heads, mask, score_scale_f32):
        """``Q K^T`` per head on float32 (exact: ``hd * max|q| * max|k| <= 2^24``), then one
        compiled pass to int32 (int64 with the ``-2^62`` sentinel on masked keys)."""
        qd, kd = np.asarray(q.data), np.asarray(k.data)
        if self.oplog is not None or qd.ndim != 3 or qd.shape != kd.shape or qd.size == 0:
            return super().attention_scores(q, k, num_heads, mask, score_scale_f32)
        b, t, h = qd.shape
        hd = h // num_heads
        if hd * intops.abs_bound(qd) * intops.abs_bound(kd) > F.F32_EXACT_INT:
            return super().attention_scores(q, k, num_heads, mask, score_scale_f32)
        qf, kf = self._heads_f32(qd, num_heads), self._heads_f32(kd, num_heads)
        s = self._f32_matmul(qf, kf.transpose(-1, -2) if self._torch is not None else kf.transpose(0, 1, 3, 2))
        s = np.ascontiguousarray(s).reshape(-1, t)
        masked = mask is not None and not np.all(mask)
        keep = np.ones((b, t), dtype=np.uint8) if mask is None else np.asarray(mask).astype(bool).astype(np.uint8)
        out = np.empty(s.shape, dtype=I64 if masked else np.int32)
        ck.scores_from_f32(s, np.ascontiguousarray(keep), num_heads, out)
        return out.reshape(b, num_heads, t, t)

    def attention_context(self, p, v, num_heads, scale_f32):
        """``P V`` per head by the exact int8 GEMM when every probability is in [0, 255]:
        ``P V = (P - 128) V + 128 * sum_rows(V)`` with ``P - 128`` and ``V`` int8 (int32 sums,
        ``T * 2^14`` at most), heads merged by one compiled pass; else
        :meth:`_attention_context_f32`."""
        deferred = isinstance(p, DeferredProbs) and not p.materialized
        pd, vd = (None if deferred else np.asarray(p.data)), np.asarray(v.data)
        shape, dtype = (p.shape, np.dtype(np.int16)) if deferred else (pd.shape, pd.dtype)
        if (self._torch is None or self.oplog is not None or len(shape) != 4 or vd.ndim != 3 or vd.size == 0
                or dtype not in _INTS or vd.dtype != np.int8 or shape[-1] != vd.shape[1] or 0 in shape):
            return self._attention_context_f32(p, v, num_heads, scale_f32)
        b, nh, t, t_k = shape
        if deferred:
            p8, over = p.minus_128()  # P - 128 straight from the scores: P itself never written
        else:
            p8 = np.empty(pd.shape, dtype=np.int8)
            over = ck.probs_minus_128(np.ascontiguousarray(pd).reshape(-1, t_k), p8.reshape(-1, t_k))
        if over:
            return self._attention_context_f32(p, v, num_heads, scale_f32)  # a 256 (one live key)
        torch = self._torch
        hd = vd.shape[-1] // nh
        vt = torch.from_numpy(self._int8_heads(vd, nh, transpose=True))  # (B, nh, hd, T): V^T rows
        colsum = vd.reshape(b, t_k, nh, hd).sum(axis=1, dtype=np.int32)  # (B, nh, hd)
        heads = np.empty((b, nh, t, hd), dtype=np.int32)
        out, p8t = torch.from_numpy(heads), torch.from_numpy(p8)
        self._per_head(p8t, vt, out)
        ctx = np.empty((b, t, nh * hd), dtype=np.int32)
        ck.merge_heads_rows(heads, np.ascontiguousarray(colsum), True, ctx)
        return QTensor(ctx, np.asarray(scale_f32, dtype=np.float32))

    def _attention_context_f32(self, p, v, num_heads, scale_f32):
        """``P V`` per head on float32 (exact: ``T * max|p| * max|v| <= 2^24``), heads merged
        into (B, T, H) int32 by one compiled pass."""
        pd, vd = np.asarray(p.data), np.asarray(v.data)
        if self.oplog is not None or pd.ndim != 4 or vd.ndim != 3 or pd.size == 0 or pd.dtype not in _INTS:
            return super().attention_context(p, v, num_heads, scale_f32)
        b, nh, t, _ = pd.shape
        if pd.shape[-1] * intops.abs_bound(pd) * intops.abs_bound(vd) > F.F32_EXACT_INT:
            return super().attention_context(p, v, num_heads, scale_f32)
        if self._torch is not None:
            pf = self._torch.from_numpy(np.ascontiguousarray(pd)).float()
        else:
            pf = pd.astype(np.float32)
        ctx = np.ascontiguousarray(self._f32_matmul(pf, self._heads_f32(vd, num_heads)))
        out = np.empty((b, t, vd.shape[-1]), dtype=np.int32)
        ck.merge_heads_rows(ctx, _NO_COLSUM, False, out)
        return QTensor(out, np.asarray(scale_f32, dtype=np.float32))
