"""Verify ibert-ref against transformers' I-BERT, op by op and end to end, and explain every difference.

Two comparisons of the integers each quantized module produces (transformers' are captured with
forward hooks, :mod:`ibert_ref.oracle.capture`):

* **replay** (op by op): each of our kernels is fed the exact inputs transformers gave the module of
  the same name, so a difference is the op's own, never a cascade;
* **end to end** (e2e): our model runs on its own, and its trace is compared with transformers'.

Every differing element is *classified by checking its cause*: the op is re-run with one thing
changed at a time, and a cause is assigned to the elements that the change makes agree.

Replay, transformers datapath (``gemm="numpy"``): re-run with torch's GEMM; elements that then
agree are ``gemm-order`` (float32 summation order, NumPy vs torch).

Replay, exact (integer) datapath: our output ``O`` on the integers transformers' inputs stand for
(``rint(x / s)``), against a ladder of float emulations of transformers, each one step closer to
exact integers. A differing element gets the cause of the first rung that reproduces ``O``:

1. ``R0``: transformers' float32 emulation (torch GEMM) on the float inputs must reproduce
   transformers; where it does not, the element is ``unexplained``.
2. ``R1``: R0 with every ``x / s`` recovery rounded to an integer -> ``unrounded-input``
   (transformers computes on ``x / s`` without rounding; for the q/k/v of layers >= 1 the cause
   of the fraction is checked too: ``stale-scale``, the scale transformers passed differs from the
   producer's true scale, transformers#26738).
3. ``R2``: R1 computed in float64 -> ``float32-precision`` (some integer held in float32 in this
   op exceeded 2^24, measured) or ``float32-floor-boundary`` (none did: a float32 quotient or
   product rounded across a floor/round boundary).
4. ``R3``: R2 with exact integer requantization -> ``softmax-exp-requant`` (IntSoftmax's 16-bit
   QuantAct: transformers divides ``exp_int`` by ``exp_scale`` in float32 and requantizes in
   float64, the exact datapath rescales once) or ``float64-fixedpointmul`` (a QuantAct's float64
   product ``z * m`` above 2^53 rounded).

End to end, per element: ``stale-scale`` when the op's scale differs and the difference is the
checked stale layer-input scale; the op's own difference when our e2e output equals our replay
output (the replay's cause applies; IntSoftmax's 16-bit QuantAct is also replayed from the scores
IntSoftmax received, since the attention-score GEMM is not a traced module); ``cascade`` when our inputs
differ because an upstream op already diverged; ``gemm-order`` when our whole run with torch's
GEMM agrees there (an untraced GEMM, transformers datapath with ``gemm="numpy"``). Anything else
is ``unexplained``; ``VerifyReport.ok`` is False then and ``ibert-ref verify`` exits with 1.

Python API: :func:`verify` -> :class:`VerifyReport` (``.ok``, ``.unexplained``,
``.first_divergence(mode)``, ``.totals(mode)``, ``.format()``, ``.to_dict()``; ``.replay`` and
``.e2e`` map op names to :class:`OpReport`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import intops
from ..compile import SOFTMAX_ACT_BITS, act_scale, expected_shape
from ..dataflow import LAYER_INPUT_OPS, block_output, module_kind, op_of, run_op
from ..datapath import Datapath, ExactDatapath, GemmBackend, QTensor, TransformersDatapath, split_heads
from ..quant import F32, dyadic_from_ratio, dyadic_requant, weight_scale_per_channel_f32
from .replay import compare_integers, module_params

F64 = np.float64

#: Human descriptions of the causes (the report adds measured evidence).
CAUSES = {
    "gemm-order": "float32 GEMM summation order (NumPy vs torch); disappears with torch's GEMM",
    "unrounded-input": "transformers computes on x / s without rounding it to an integer",
    "stale-scale": "stale layer-input scale in transformers' encoder (transformers#26738)",
    "float32-precision": "transformers' float32 lost integer precision above 2^24 (a float64 run agrees)",
    "float32-floor-boundary": "a float32 quotient/product rounded across a floor or round boundary "
    "(all integers < 2^24; a float64 run agrees)",
    "softmax-exp-requant": "IntSoftmax's 16-bit QuantAct: transformers divides exp_int by exp_scale "
    "(float32) then requantizes in float64; the exact datapath rescales once",
    "float64-fixedpointmul": "FixedPointMul's float64 product z*m above 2^53 rounded in transformers",
    "cascade": "inputs differ from transformers' (an upstream op diverged)",
    "unexplained": "no checked cause reproduces it",
}


# ---------------------------------------------------------------------------------------
# Counterfactual datapaths (the rungs of the ladder)
class _RoundedInputs(TransformersDatapath):
    """transformers' float32 emulation, except that every ``x / s`` recovery is rounded."""

    name = "transformers+rounded-inputs"

    def recover(self, t):
        return np.rint(t.data / t.scale)


class _F64Gemm(GemmBackend):
    name = "float64"

    def linear(self, x, w, b):
        return np.matmul(np.asarray(x, F64), np.asarray(w, F64).T) + np.asarray(b, F64)

    def sum_last(self, x):
        return np.sum(np.asarray(x, F64), axis=-1, keepdims=True)

    def mean_last(self, x):
        return np.mean(np.asarray(x, F64), axis=-1, keepdims=True)

    def sqrt(self, x):
        return np.sqrt(np.asarray(x, F64))


class _Float64(TransformersDatapath):
    """transformers' algorithm in float64 on integer inputs (recoveries rounded)."""

    name = "float64+rounded-inputs"
    working_dtype = F64

    def __init__(self):
        self.gemm = _F64Gemm()

    def const(self, v):
        return np.asarray(v, dtype=F64)

    weights = const

    def emit(self, w, scale_f32):
        scale_f32 = np.asarray(scale_f32, dtype=F32)
        return QTensor(np.asarray(w, dtype=F64) * scale_f32.astype(F64), scale_f32)

    def recover(self, t):
        return np.rint(np.asarray(t.data, F64) / np.asarray(t.scale, F64))

    round_recover = recover

    def integers(self, t):
        with np.errstate(invalid="ignore"):
            return self.recover(t).astype(np.int64)

    def clamp_bits(self, w, bits):
        n = 2 ** (bits - 1) - 1
        return np.clip(np.asarray(w, F64), -n - 1.0, float(n))

    def floor_div_into(self, c, t):
        return np.floor(F64(c) / np.asarray(t, F64))

    def pow2(self, k):
        return np.ldexp(1.0, np.asarray(k).astype(np.int32))

    def attention_scores(self, q, k, num_heads, mask, score_scale_f32):
        qh = split_heads(self.recover(q), num_heads)
        kh = split_heads(self.recover(k), num_heads)
        scores = np.matmul(qh, kh.transpose(0, 1, 3, 2))
        if mask is not None:
            scores = np.where(mask[:, None, None, :].astype(bool), scores, -np.inf)
        return scores

    def attention_context(self, p, v, num_heads, scale_f32):
        ctx = np.matmul(self.recover(p), split_heads(self.recover(v), num_heads))
        b, nh, t, hd = ctx.shape
        ctx = np.ascontiguousarray(ctx.transpose(0, 2, 1, 3)).reshape(b, t, nh * hd)
        return self.emit(ctx, scale_f32)

    def exp_requantize(self, z, q, exp_scale_f32, dy_tf, dy_exact, bits):
        exp_int = np.maximum(np.floor(z * self.pow2(30 - q)), 0.0)
        z_int = np.rint(exp_int / np.asarray(exp_scale_f32, F64))
        return self.clamp_bits(self.dyadic_round(z_int, dy_tf), bits)


class _Float64ExactRequant(_Float64):
    """R2 with exact integer requantization (dyadic rounding and the softmax exp rescale)."""

    name = "float64+exact-requant"

    def dyadic_round(self, z, dy):
        return intops.mul_shift_round(np.asarray(z).astype(np.int64), dy.m, dy.e, "half_even").astype(F64)

    def exp_requantize(self, z, q, exp_scale_f32, dy_tf, dy_exact, bits):
        e16 = ExactDatapath().exp_requantize(
            np.asarray(z).astype(np.int64), np.asarray(q).astype(np.int64), exp_scale_f32, dy_tf, dy_exact, bits
        )
        return e16.astype(F64)


class _MagnitudeProbe:
    """Wraps a float datapath; records the largest finite |value| of every array its methods
    take or return (the integers it holds, in its own float type)."""

    def __init__(self, inner: Datapath):
        self._inner = inner
        self.max_abs = 0.0

    def _see(self, v):
        if isinstance(v, np.ndarray) and v.size and np.issubdtype(v.dtype, np.floating):
            finite = np.abs(v[np.isfinite(v)])
            if finite.size:
                self.max_abs = max(self.max_abs, float(finite.max()))

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def wrapped(*args, **kwargs):
            out = attr(*args, **kwargs)
            for v in (*args, out):
                self._see(v)
            return out

        return wrapped


# ---------------------------------------------------------------------------------------
# Running one module on transformers' inputs, in a given input style
def _to_integers(x_f32, s_f32) -> np.ndarray:
    """The integers a dequantized float32 tensor stands for: ``rint(fl(x / s))`` (int64); minus
    infinity (a masked attention score) becomes the exact datapath's masked sentinel."""
    with np.errstate(over="ignore", invalid="ignore"):
        q = np.rint(np.asarray(x_f32, F32) / np.asarray(s_f32, F32))
    neg_inf = np.isneginf(q)
    if np.any(~np.isfinite(q) & ~neg_inf):
        raise ValueError("non-finite input value that is not a masked score")
    if np.any(np.abs(np.where(neg_inf, 0, q)) >= intops.SATURATION_I64):
        raise ValueError("input integer beyond 2^62")
    q = np.where(neg_inf, 0, q).astype(np.int64)
    return np.where(neg_inf, -intops.SATURATION_I64, q)


def _input(style: str, x_f32, s_f32):
    """An op input as datapath data: ``float32`` (transformers' own tensor), ``integer`` (int64
    ``q``) or ``float64`` (``q * s`` in float64, so that a float64 recovery gives ``q`` back)."""
    if style == "float32":
        return np.asarray(x_f32, F32)
    q = _to_integers(x_f32, s_f32)
    if style == "integer":
        return q
    qf = np.where(q <= -intops.SATURATION_I64, -np.inf, q.astype(F64))
    with np.errstate(invalid="ignore"):
        return qf * np.asarray(s_f32, F32).astype(F64)


def _scores(style: str, x_f32, s_f32):
    """IntSoftmax's input as the raw scores the kernel takes."""
    if style == "float32":
        with np.errstate(over="ignore"):
            return np.asarray(x_f32, F32) / np.asarray(s_f32, F32)
    q = _to_integers(x_f32, s_f32)
    if style == "integer":
        return q
    return np.where(q <= -intops.SATURATION_I64, -np.inf, q.astype(F64))


#: Keyword names transformers' quantized modules use for their input scale.
_SCALE_KEYS = ("pre_act_scaling_factor", "prev_act_scaling_factor", "scaling_factor")


def _arg(args, kwargs, i, key):
    if len(args) > i:
        return args[i]
    return kwargs.get(key)


def _input_scale(args, kwargs):
    """The scale argument of a quantized module's call (second positional or by keyword)."""
    if len(args) > 1:
        return args[1]
    for key in _SCALE_KEYS:
        if kwargs.get(key) is not None:
            return kwargs[key]
    return None


def run_module(dp, get: Callable[[str], np.ndarray], name: str, args, kwargs, style: str, want: str = "out") -> np.ndarray:
    """Run our kernel for transformers' module ``name`` on its captured ``args``/``kwargs``
    (the module's op of :mod:`ibert_ref.dataflow`, through its one dispatcher); returns the
    output integers (int64). ``style`` says how inputs are handed to ``dp``.
    ``want="exp"`` (IntSoftmax only): return the 16-bit exponentials (the i-exp op's output)
    computed from the module's input scores instead of the probabilities."""
    kind = module_kind(name)
    if kind == "QuantEmbedding":
        row, params = module_params(dp, get, name, [None])
        return dp.integers(run_op(dp, row, params, [np.asarray(args[0])])).astype(np.int64)
    x = np.asarray(args[0])
    if kind == "QuantAct" and _input_scale(args, kwargs) is None:
        # a float producer (force_dequant): QuantAct's input-quantization path (no identity)
        row, params = module_params(dp, get, name, [None])
        return dp.integers(run_op(dp, row, params, [np.asarray(x, F32)])).astype(np.int64)
    s = np.asarray(_input_scale(args, kwargs), F32)
    if kind == "QuantAct" and op_of(name).kernel == "int_exp":
        out = _softmax_act(dp, get, name, x, s, style)
    elif kind == "QuantAct":
        identity = _arg(args, kwargs, 2, "identity")
        id_scale = None if identity is None else np.asarray(_arg(args, kwargs, 3, "identity_scaling_factor"), F32)
        row, params = module_params(dp, get, name, [s] + ([] if identity is None else [id_scale]))
        ins = [QTensor(_input(style, x, s), s)]
        if identity is not None:
            ins.append(QTensor(_input(style, identity, id_scale), id_scale))
        out = run_op(dp, row, params, ins)
    elif kind == "IntSoftmax":
        row, params = module_params(dp, get, name, [s.reshape(1)])
        out = run_op(dp, op_of(name + ".act"), params, [_scores(style, x, s.reshape(1))])
        if want != "exp":
            out = run_op(dp, row, params, [out])
    else:  # QuantLinear, IntGELU, IntLayerNorm
        row, params = module_params(dp, get, name, [s])
        out = run_op(dp, row, params, [QTensor(_input(style, x, s), s)])
    with np.errstate(invalid="ignore"):
        return dp.integers(out).astype(np.int64)


def _split_float(x) -> tuple:
    """``x = z * 2^k`` exactly for float32 integer values ``x >= 0`` (``z`` < 2^24, int64)."""
    frac, exp = np.frexp(np.asarray(x, F32).astype(F64))
    z = np.rint(frac * 2.0**24).astype(np.int64)
    return z, (exp - 24).astype(np.int64)


def _softmax_act(dp, get, name, exp_int_f32, exp_scale_f32, style):
    """IntSoftmax's 16-bit QuantAct on transformers' ``exp_int`` (an integer held in float32,
    passed with pre-scale ``exp_scale``; transformers#26767). Runs the datapath's own exp
    requantization on the same integer: ``exp_int = z * 2^(30 - q)`` with ``q = 30`` (float
    styles) or the exact split ``exp_int = z * 2^k`` (integer style)."""
    act = act_scale(get, name, SOFTMAX_ACT_BITS)
    exp_scale_f32 = np.asarray(exp_scale_f32, F32).reshape(1)
    dy_tf = dyadic_requant(exp_scale_f32, act)
    dy_exact = dyadic_from_ratio(1.0 / act.astype(F64))
    if style == "integer" or isinstance(dp, _Float64ExactRequant):
        z, k = _split_float(exp_int_f32)
        e16 = dp.exp_requantize(z, 30 - k, exp_scale_f32, dy_tf, dy_exact, SOFTMAX_ACT_BITS)
    else:
        dtype = F64 if style == "float64" else F32
        z = np.asarray(exp_int_f32, F32).astype(dtype)
        e16 = dp.exp_requantize(z, np.full(z.shape, 30, dtype=dtype), exp_scale_f32, dy_tf, dy_exact, SOFTMAX_ACT_BITS)
    return dp.emit(e16, act)


def _style(dp) -> str:
    return "float32" if np.issubdtype(np.dtype(dp.working_dtype), np.floating) else "integer"


# ---------------------------------------------------------------------------------------
@dataclass
class OpReport:
    """Agreement of one op and the cause of every differing element.

    ``causes``: ``{cause key: number of elements}`` (keys of :data:`CAUSES`; ``unexplained``
    included when non-zero); ``evidence``: ``{cause key: text}`` with what was measured.
    """

    name: str
    kind: str
    elements: int
    equal: int
    max_abs_diff: int
    first_diff_index: Optional[tuple]
    causes: Dict[str, int] = field(default_factory=dict)
    evidence: Dict[str, str] = field(default_factory=dict)

    @property
    def all_equal(self) -> bool:
        return self.equal == self.elements

    @property
    def unexplained(self) -> int:
        return self.causes.get("unexplained", 0)


@dataclass
class _OpDetail:
    """Internal per-op replay result of the last call (for the e2e decomposition)."""

    ours: np.ndarray
    theirs: np.ndarray
    cause_of: np.ndarray  # object array of cause keys ("" where equal)
    evidence: Dict[str, str] = field(default_factory=dict)


#: Key suffix of the replay detail of IntSoftmax's 16-bit QuantAct computed from its input scores.
FROM_SCORES = "@scores"


def _merge(reports: List[OpReport]) -> OpReport:
    first = reports[0]
    out = OpReport(first.name, first.kind, 0, 0, 0, None)
    for r in reports:
        out.elements += r.elements
        out.equal += r.equal
        out.max_abs_diff = max(out.max_abs_diff, r.max_abs_diff)
        out.first_diff_index = out.first_diff_index or r.first_diff_index
        for k, v in r.causes.items():
            out.causes[k] = out.causes.get(k, 0) + v
        for k, v in r.evidence.items():
            out.evidence.setdefault(k, v)
    return out


def _report(name, kind, ours, theirs, cause_of, evidence) -> OpReport:
    cmp = compare_integers(name, kind, ours, theirs)
    causes: Dict[str, int] = {}
    for key in cause_of[ours != theirs]:
        causes[key] = causes.get(key, 0) + 1
    return OpReport(cmp.name, cmp.kind, cmp.elements, cmp.equal, cmp.max_abs_diff, cmp.first_diff_index,
                    causes, {k: v for k, v in evidence.items() if k in causes})


class _Context:
    """What the classification checks need: the capture, weights, our datapath."""

    def __init__(self, capture, get, dp):
        self.capture = capture
        self.get = get
        self.dp = dp
        self.style = _style(dp)

    def producer_scale(self, name) -> Optional[np.ndarray]:
        """The true scale of a layer's input (the previous layer's output), for layer >= 1."""
        parts = name.split(".")
        if len(parts) < 3 or parts[0] != "encoder" or int(parts[2]) == 0:
            return None
        prev = block_output(int(parts[2]) - 1)
        out = self.capture.outputs.get(prev)
        return None if out is None else np.asarray(out[1], F32)

    def stale_input(self, name, passed_scale) -> Optional[str]:
        """Evidence text if ``name`` is a layer-input QuantLinear fed a scale that is not its producer's."""
        if op_of(name).name not in LAYER_INPUT_OPS or name.startswith("embeddings."):
            return None
        producer = self.producer_scale(name)
        if producer is None or np.array_equal(producer.reshape(-1), np.asarray(passed_scale, F32).reshape(-1)):
            return None
        return (f"transformers passed s={float(np.asarray(passed_scale).reshape(-1)[0]):.9g} (embeddings' output "
                f"scale), the producer's scale is {float(producer.reshape(-1)[0]):.9g}")


def _fraction(x_f32, s_f32) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.asarray(x_f32, F32) / np.asarray(s_f32, F32)
    r = r[np.isfinite(r)]
    return float(np.max(np.abs(r - np.rint(r)))) if r.size else 0.0


def _classify_call(ctx: _Context, name, call, theirs, want="out"):
    """Replay one call on the context's datapath and attribute each differing element: the
    ladder of its style (integer or float) names a cause for what it explains, the rest is
    ``unexplained``. Returns ``(ours, theirs, cause, evidence)``."""
    args, kwargs = call.inputs.args, call.inputs.kwargs
    theirs = np.asarray(theirs, np.int64)
    integer = ctx.style == "integer"
    ours = run_module(ctx.dp, ctx.get, name, args, kwargs, "integer" if integer else "float32", want)
    cause = np.full(theirs.shape, "", dtype=object)
    diff = ours != theirs
    evidence: Dict[str, str] = {}
    if diff.any():
        ladder = _integer_ladder if integer else _float_ladder
        left = ladder(ctx, name, args, kwargs, want, ours, theirs, diff.copy(), cause, evidence)
        cause[left] = "unexplained"
    return ours, theirs, cause, evidence


def _integer_ladder(ctx: _Context, name, args, kwargs, want, ours, theirs, left, cause, evidence):
    """An integer datapath's causes, tried in order on the differing elements ``left``; returns
    those still unexplained."""
    r0 = run_module(TransformersDatapath(gemm="torch"), ctx.get, name, args, kwargs, "float32", want)
    unexplained = left & (r0 != theirs)
    cause[unexplained] = "unexplained"
    left &= ~unexplained
    if unexplained.any():
        evidence["unexplained"] = "transformers' float32 emulation does not reproduce transformers here"

    probe = _MagnitudeProbe(_RoundedInputs(gemm="torch"))
    r1 = run_module(probe, ctx.get, name, args, kwargs, "float32", want)
    hit = left & (r1 == ours)
    if hit.any():
        s = _input_scale(args, kwargs)
        stale = ctx.stale_input(name, s) if s is not None else None
        if stale:
            cause[hit] = "stale-scale"
            evidence["stale-scale"] = f"input x/s fractional up to {_fraction(args[0], s):.3g}: {stale}"
        else:
            cause[hit] = "unrounded-input"
            frac = _fraction(args[0], s) if s is not None else 0.0
            evidence["unrounded-input"] = f"recoveries x/s not rounded (op input fractional up to {frac:.3g})"
    left &= ~hit

    if left.any():
        r2 = run_module(_Float64(), ctx.get, name, args, kwargs, "float64", want)
        hit = left & (r2 == ours)
        if hit.any():
            big = probe.max_abs
            key = "float32-precision" if big > 2.0**24 else "float32-floor-boundary"
            cause[hit] = key
            evidence[key] = f"largest integer held in float32 in this op: {big:.4g} (2^{np.log2(max(big, 1)):.1f})"
        left &= ~hit
    if left.any():
        r3 = run_module(_Float64ExactRequant(), ctx.get, name, args, kwargs, "float64", want)
        hit = left & (r3 == ours)
        if hit.any():
            key = "softmax-exp-requant" if "softmax" in name else "float64-fixedpointmul"
            cause[hit] = key
            evidence[key] = "exact requantization of the float64 run reproduces ours"
        left &= ~hit
    return left


def _float_ladder(ctx: _Context, name, args, kwargs, want, ours, theirs, left, cause, evidence):
    """A float (transformers) datapath's one cause, ``gemm-order`` via torch's GEMM; returns the
    differing elements it does not explain."""
    if getattr(getattr(ctx.dp, "gemm", None), "name", "torch") != "torch":
        alt = run_module(TransformersDatapath(gemm="torch"), ctx.get, name, args, kwargs, "float32", want)
        hit = left & (alt == theirs)
        cause[hit] = "gemm-order"
        if hit.any():
            evidence["gemm-order"] = "re-run with gemm='torch' agrees with transformers"
        left &= ~hit
    return left


def replay_and_classify(capture, get, dp: Datapath):
    """Op-by-op replay with classification: ``({name: OpReport}, {name: _OpDetail of the last call})``."""
    ctx = _Context(capture, get, dp)
    reports, details = {}, {}
    for name, calls in capture.calls.items():
        if name not in capture.trace:
            continue
        kind = module_kind(name)
        per_call = []
        for call in calls:
            ours, theirs, cause, evidence = _classify_call(ctx, name, call, call.trace)
            per_call.append(_report(name, kind, ours, theirs, cause, evidence))
        reports[name] = _merge(per_call)
        details[name] = _OpDetail(ours=ours, theirs=theirs, cause_of=cause, evidence=evidence)
        if kind == "IntSoftmax" and name + ".act" in capture.trace:
            # its QuantAct end to end depends on the (untraced) attention scores: replay it from
            # the scores IntSoftmax received, too.
            ours, theirs, cause, evidence = _classify_call(ctx, name, calls[-1], capture.trace[name + ".act"], "exp")
            details[name + ".act" + FROM_SCORES] = _OpDetail(ours=ours, theirs=theirs, cause_of=cause,
                                                              evidence=evidence)
    return reports, details


# ---------------------------------------------------------------------------------------
def classify_end_to_end(capture, out, get, dp: Datapath, replay_details, alt_out=None) -> Dict[str, OpReport]:
    """Compare our e2e trace with transformers' and attribute each differing element.

    Per element, in order: ``stale-scale`` (the op's scale differs, checked); the op's own
    difference (our e2e output equals our replay output on transformers' inputs: the replay's
    cause); ``cascade`` (an upstream op already differs); ``gemm-order`` (``alt_out``, our e2e
    run with torch's GEMM, agrees with transformers there: an untraced GEMM such as the
    attention scores); otherwise ``unexplained``.
    """
    ctx = _Context(capture, get, dp)
    reports: Dict[str, OpReport] = {}
    first_divergence: Optional[str] = None
    for name in capture.trace:
        kind = module_kind(name)
        theirs = np.asarray(capture.trace[name], np.int64)
        if name not in out.trace:
            reports[name] = OpReport(name, kind, int(theirs.size), 0, 0, None, {"unexplained": int(theirs.size)},
                                     {"unexplained": "op missing from ibert-ref's trace"})
            continue
        ours = np.asarray(out.trace[name], np.int64)
        cause = np.full(theirs.shape, "", dtype=object)
        evidence: Dict[str, str] = {}
        diff = ours != theirs
        if diff.any():
            our_scale = np.asarray(out.trace_meta[name].scale, F32).reshape(-1)
            their_scale = np.asarray(capture.outputs[name][1], F32).reshape(-1)
            stale = None
            if not np.array_equal(our_scale, their_scale) and kind == "QuantLinear":
                stale = _check_stale_linear(ctx, name, our_scale, their_scale)
            if stale is not None:
                cause[diff] = "stale-scale"
                evidence["stale-scale"] = stale
            else:
                for key in (name, name + FROM_SCORES):
                    detail = replay_details.get(key)
                    if detail is None:
                        continue
                    own = diff & (cause == "") & (ours == detail.ours)
                    if own.any():
                        cause[own] = detail.cause_of[own]
                        for k in set(detail.cause_of[own]):
                            where = "from the scores IntSoftmax received" if key != name else "on the op's inputs"
                            evidence[k] = f"own difference, reproduced by op-by-op replay {where}: " + detail.evidence.get(
                                k, CAUSES.get(k, k))
                rest = diff & (cause == "")
                if rest.any() and first_divergence is not None:
                    cause[rest] = "cascade"
                    evidence["cascade"] = f"first divergence upstream: {first_divergence}"
                rest = diff & (cause == "")
                if rest.any() and alt_out is not None:
                    fixed = rest & (np.asarray(alt_out.trace[name], np.int64) == theirs)
                    if fixed.any():
                        cause[fixed] = "gemm-order"
                        evidence["gemm-order"] = "our end-to-end run with gemm='torch' agrees here (an untraced GEMM)"
                rest = diff & (cause == "")
                if rest.any():
                    cause[rest] = "unexplained"
                    evidence["unexplained"] = "differs end to end; no checked cause reproduces it"
            if first_divergence is None:
                first_divergence = name
        reports[name] = _report(name, kind, ours, theirs, cause, evidence)
    return reports


def _check_stale_linear(ctx: _Context, name, our_scale, their_scale) -> Optional[str]:
    """Our QuantLinear output scale is ``s_w * s_producer``, transformers' ``s_w * s_passed``: checked."""
    call = ctx.capture.calls[name][-1]
    passed = np.asarray(_input_scale(call.inputs.args, call.inputs.kwargs), F32)
    producer = ctx.producer_scale(name)
    if producer is None:
        return None
    s_w = weight_scale_per_channel_f32(ctx.get(name + ".weight"))
    if np.array_equal(our_scale, (s_w * producer).reshape(-1)) and np.array_equal(
        their_scale, (s_w * passed).reshape(-1)
    ) and not np.array_equal(producer, passed):
        return (f"our accumulator scale is s_w * {float(producer.reshape(-1)[0]):.9g} (producer), transformers' is "
                f"s_w * {float(passed.reshape(-1)[0]):.9g} (the embeddings' scale it passes to every layer)")
    return None


# ---------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """Result of :func:`verify`: per-op reports for each mode, the first divergence and the verdict."""

    model: str
    datapath: str
    gemm: str
    input_ids: np.ndarray
    attention_mask: np.ndarray
    replay: Optional[Dict[str, OpReport]] = None
    e2e: Optional[Dict[str, OpReport]] = None
    last_hidden_state_max_abs_diff: Optional[float] = None
    pooler_max_abs_diff: Optional[float] = None
    notes: List[str] = field(default_factory=list)
    #: what ours is compared with: transformers' I-BERT, or (a hardware profile) the exact datapath
    reference: str = "transformers"

    def modes(self):
        return [(m, r) for m, r in (("replay", self.replay), ("e2e", self.e2e)) if r is not None]

    def first_divergence(self, mode: str = "e2e") -> Optional[str]:
        reports = self.e2e if mode == "e2e" else self.replay
        for name, r in (reports or {}).items():
            if not r.all_equal:
                return name
        return None

    def totals(self, mode: str) -> Dict[str, int]:
        reports = self.e2e if mode == "e2e" else self.replay
        t = {"elements": 0, "equal": 0}
        for r in (reports or {}).values():
            t["elements"] += r.elements
            t["equal"] += r.equal
            for k, v in r.causes.items():
                t[k] = t.get(k, 0) + v
        return t

    @property
    def unexplained(self) -> int:
        return sum(r.unexplained for _, reports in self.modes() for r in reports.values())

    @property
    def ok(self) -> bool:
        """True when every difference (in every mode run) has a checked cause."""
        return self.unexplained == 0

    def format(self, mode: Optional[str] = None, only_differing: bool = False) -> str:
        """The per-op table(s) and the classification, as text."""
        lines = [f"model: {self.model}", f"datapath: {self.datapath} (gemm={self.gemm})   "
                 f"input: {tuple(self.input_ids.shape)} ids, {int(self.attention_mask.sum())} real tokens"]
        for m, reports in self.modes():
            if mode is not None and m != mode:
                continue
            if self.reference == "transformers":
                title = "op-by-op replay (each op fed transformers' inputs)" if m == "replay" else "end to end"
            else:
                title = (f"op-by-op replay (each op fed the {self.reference}'s inputs)" if m == "replay"
                         else f"end to end, against the {self.reference}")
            lines += ["", f"== {title} =="]
            lines.append(f"{'op':56s} {'kind':14s} {'elements':>9s} {'equal':>9s} {'%':>7s} {'max|d|':>7s}  first diff")
            for r in reports.values():
                if only_differing and r.all_equal:
                    continue
                pct = 100.0 * r.equal / r.elements if r.elements else 100.0
                first = "-" if r.first_diff_index is None else str(r.first_diff_index)
                lines.append(f"{r.name:56s} {r.kind:14s} {r.elements:9d} {r.equal:9d} {pct:7.3f} {r.max_abs_diff:7d}  {first}")
            t = self.totals(m)
            pct = 100.0 * t["equal"] / t["elements"] if t["elements"] else 100.0
            lines.append(f"{'total':56s} {'':14s} {t['elements']:9d} {t['equal']:9d} {pct:7.3f}")
            lines.append(f"first divergence: {self.first_divergence(m) or 'none (bit-identical)'}")
            diffs = [r for r in reports.values() if not r.all_equal]
            if diffs:
                lines.append("differences by cause:")
                for r in diffs:
                    for key, n in sorted(r.causes.items(), key=lambda kv: -kv[1]):
                        ev = r.evidence.get(key, "")
                        lines.append(f"  {r.name}: {n} {key}" + (f" -- {ev}" if ev else ""))
                lines.append("cause totals: " + ", ".join(f"{k} {v}" for k, v in t.items() if k not in ("elements", "equal")))
        if self.last_hidden_state_max_abs_diff is not None:
            lines += ["", f"last_hidden_state max |diff|: {self.last_hidden_state_max_abs_diff:.6g}"]
        if self.pooler_max_abs_diff is not None:
            lines.append(f"pooler_output max |diff|: {self.pooler_max_abs_diff:.6g}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"unexplained differences: {self.unexplained}  -> {'OK' if self.ok else 'FAIL'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-serialisable summary."""
        def ops(reports):
            return [dict(name=r.name, kind=r.kind, elements=r.elements, equal=r.equal, max_abs_diff=r.max_abs_diff,
                         first_diff_index=None if r.first_diff_index is None else list(r.first_diff_index),
                         causes=r.causes, evidence=r.evidence) for r in reports.values()]

        return dict(
            model=self.model, datapath=self.datapath, gemm=self.gemm, reference=self.reference,
            input_ids=self.input_ids.tolist(), attention_mask=self.attention_mask.tolist(),
            modes={m: dict(ops=ops(r), first_divergence=self.first_divergence(m), totals=self.totals(m))
                   for m, r in self.modes()},
            last_hidden_state_max_abs_diff=self.last_hidden_state_max_abs_diff,
            pooler_max_abs_diff=self.pooler_max_abs_diff, notes=self.notes,
            unexplained=self.unexplained, ok=self.ok,
        )


# ---------------------------------------------------------------------------------------
# Hardware profiles: the profile against the exact datapath, every difference classed by the
# profile's documented deviation
#: The exact value of each hardware-profile parameter (switching one back to it undoes that
#: one deviation; ``acc_bits=64`` holds every int8 GEMM exactly, so no wrap or saturation).
EXACT_PARAMETERS = dict(acc_bits=64, k_step=None, requant="ibert", exp="fold", gelu="wide", ln_var="int64",
                        sqrt="isqrt", probs="u9", madd="vpdpbusd")

PROFILE_CAUSES = {
    "k_step": "saturating accumulation per k-chunk (saturation is order dependent): one chunk over all of K agrees",
    "accumulator": "the GEMM accumulator wrapped or saturated in acc_bits: a 64-bit register agrees",
    "requant": "the profile's requantization (rounding, int32 input narrowing): I-BERT's RNE agrees",
    "exp": "the profile's i-exp variant: the folded (exact) variant agrees",
    "gelu": "the profile's int32 IntGELU (x >> k, shifted constants): the wide IntGELU agrees",
    "ln_var": "the profile's LayerNorm variance register: the int64 sum agrees",
    "sqrt": "the profile's square root: the integer floor-sqrt agrees",
    "probs": "the profile's P V operand (u8 clamp of 256): the 9-bit probabilities agree",
    "madd": "the x86 multiply-add (vpmaddubsw saturates int16 pairs of u8 x s8 products): vpdpbusd "
    "(products summed in int32) agrees",
    "cascade": "the op computes what the exact datapath computes on its inputs; its inputs differ (upstream)",
    "input-representation": "the input is the profile's own representation of its producer's output "
    "(int32 IntGELU: x >> k, exponent 3k); the exact kernel on that input agrees",
    "unexplained": "no single switch (or pair of switches) back to exact reproduces the exact datapath",
}


def _cause_text(key: str) -> str:
    return PROFILE_CAUSES.get(key, f"the profile's {key} variant: its exact value agrees")


def is_profile(dp) -> bool:
    """Whether ``dp`` is a hardware profile (parameters that can be switched back to exact)."""
    return callable(getattr(dp, "parameters", None)) and callable(getattr(dp, "semantics", None))


def _switched(dp, overrides: dict, name: str):
    """A copy of profile ``dp`` (same class) with ``overrides`` set and a fresh log."""
    import copy

    from ..hardware.oplog import OpLog

    d = copy.copy(dp)
    for k, v in overrides.items():
        setattr(d, k, v)
    d.oplog = OpLog()
    d._gelu_constants = {}
    d.name = name
    return d


def profile_switches(dp) -> List[tuple]:
    """``[(cause key, label, overrides)]``: each documented deviation of profile ``dp`` from
    the exact datapath, and the parameter values that switch it back. Kernel variants come
    first (an i-exp left shift held in ``acc_bits`` is the exp variant's cost), then the
    k-step, then the accumulator width (wrap/saturate)."""
    p = dp.parameters()
    exact = _exact_values(dp)
    out = []
    for key in exact:
        if key not in ("k_step", "acc_bits") and key in p and p[key] != exact[key]:
            out.append((key, f"{key}={p[key]}", {key: exact[key]}))
    if p.get("k_step") is not None:
        out.append(("k_step", f"k_step={p['k_step']}", {"k_step": None}))
    if p.get("acc_bits", 64) != 64:
        out.append(("accumulator", f"accumulator int{p['acc_bits']} {p.get('overflow')}", {"acc_bits": 64}))
    return out


def _exact_values(dp) -> dict:
    """Parameter -> its exact value: :data:`EXACT_PARAMETERS`, plus what a profile class
    declares for parameters of its own (``exact_parameters()``, e.g. an x86 madd variant)."""
    own = getattr(dp, "exact_parameters", None)
    return {**EXACT_PARAMETERS, **(dict(own()) if callable(own) else {})}


def _exact_twin(dp):
    """Profile ``dp`` with every known parameter at its exact value: the exact datapath's
    integers, and it reads a profile's pre-shifted inputs (exponents) as the profile does."""
    known = {k: v for k, v in _exact_values(dp).items() if k in dp.parameters()}
    return _switched(dp, known, "exact (every parameter switched back)")


def _differs(a, b) -> bool:
    if a.ints.shape != b.ints.shape or not np.array_equal(a.ints, b.ints):
        return True
    ea = None if a.exponent is None else np.asarray(a.exponent)
    eb = None if b.exponent is None else np.asarray(b.exponent)
    return (ea is None) != (eb is None) or (ea is not None and not np.array_equal(ea, eb))


def _classify_profile_op(dp, twin, switches, spec, params, heads, inputs, ours, reference, cascade_from):
    """Class every element where ``ours`` (the profile's output on ``inputs``) differs from
    ``reference`` (the exact datapath's output). Returns (cause array, evidence)."""
    from ..vectors import run_op

    cause = np.full(reference.shape, "", dtype=object)
    evidence: Dict[str, str] = {}
    diff = ours != reference
    if not diff.any():
        return cause, evidence
    x = run_op(twin, spec, params, heads, inputs).ints  # the exact kernel on the same inputs
    own = diff & (ours != x)
    if (diff & ~own).any():
        if cascade_from:
            key, text = cascade_from
            cause[diff & ~own] = key
            evidence[key] = text
        else:
            cause[diff & ~own] = "unexplained"
            evidence["unexplained"] = ("inputs equal the exact datapath's and the exact kernel on them agrees "
                                       "with the profile")
    if own.any():
        left = own.copy()
        for key, label, overrides in switches:
            if not left.any():
                break
            y = run_op(_switched(dp, overrides, label), spec, params, heads, inputs).ints
            hit = left & (y == x)
            if hit.any():
                cause[hit] = label
                evidence[label] = f"{_cause_text(key)} (re-run with {overrides})"
                left &= ~hit
        for i, (ka, la, oa) in enumerate(switches):
            for kb, lb, ob in switches[i + 1:]:
                if not left.any():
                    break
                y = run_op(_switched(dp, {**oa, **ob}, la + " + " + lb), spec, params, heads, inputs).ints
                hit = left & (y == x)
                if hit.any():
                    label = f"{la} + {lb}"
                    cause[hit] = label
                    evidence[label] = f"{_cause_text(ka)}; and {_cause_text(kb)} (re-run with both switched back)"
                    left &= ~hit
        if left.any():
            cause[left] = "unexplained"
            evidence["unexplained"] = PROFILE_CAUSES["unexplained"]
    return cause, evidence


def verify_profile(model_folder, dp, input_ids, attention_mask, token_type_ids=None,
                   modes=("replay", "e2e")) -> VerifyReport:
    """Compare hardware profile ``dp`` with the exact datapath and class every difference by
    the profile's documented deviation (no transformers involved).

    Every op of the dataflow (:func:`ibert_ref.dataflow.expand`: the traced modules plus the
    ``Q K^T`` / ``P V`` accumulators and the first call of the QuantAct called twice) is
    compared elementwise. An element that differs is classed by re-running the op on the
    same inputs:

    * with every parameter switched back to exact (``X``; :data:`EXACT_PARAMETERS`): where the
      profile's output equals ``X`` the op itself computed exactly — the difference came with
      its inputs: ``cascade`` end to end (evidence: the first differing input), or, op by op,
      ``input-representation`` (an input held in the profile's own form, see below);
    * elsewhere with one deviation switched back at a time (:func:`profile_switches`: k-step,
      accumulator width/wrap/saturate, requantization rounding, the i-exp / IntGELU /
      LayerNorm-variance / sqrt / probability variants), then with pairs: an element takes the
      first switch whose run equals ``X`` there; none: ``unexplained``.

    Modes: ``e2e``: the profile's own run against the exact run; ``replay``: each op of the
    profile fed the exact run's inputs (an input that the profile holds in another form — the
    int32 IntGELU's pre-shifted output — is the profile's replay of its producer).
    """
    from ..model import IBertModel, roberta_position_ids
    from ..vectors import OpValue, _params_of, op_graph, run_graph, run_op

    exact_model = IBertModel.from_pretrained(model_folder, datapath="exact")
    prof_model = IBertModel.from_pretrained(model_folder, datapath=dp)
    if prof_model.compiled.force_dequant:
        raise ValueError(f"force_dequant={prof_model.config.get('force_dequant')!r}: the model runs float "
                         "non-linearities; verify under a hardware profile covers the all-integer model only")
    cfg = prof_model.config
    ids = np.asarray(input_ids, dtype=np.int64)
    ids = ids[None, :] if ids.ndim == 1 else ids
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64).reshape(ids.shape)
    tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, np.int64).reshape(ids.shape)
    pos = roberta_position_ids(ids, cfg.get("pad_token_id", 1))
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt, "position_ids": pos}
    kw = dict(attention_mask=mask, token_type_ids=tt, position_ids=pos, return_trace=True)
    exact_out, prof_out = exact_model(ids, **kw), prof_model(ids, **kw)
    compiled, heads = prof_model.compiled, cfg["num_attention_heads"]
    exact_vals, _ = run_graph(exact_model.compiled, exact_model.datapath, inputs, cfg)
    prof_vals, events = run_graph(compiled, _switched(dp, {}, dp.name), inputs, cfg)
    for label, vals, out in (("exact", exact_vals, exact_out), (dp.name, prof_vals, prof_out)):
        for name, q in out.trace.items():  # the op graph is the model, op for op
            if not np.array_equal(np.asarray(q, np.int64), vals[name].ints):
                raise RuntimeError(f"{name}: the op graph does not reproduce the {label} model's trace")
    twin = _exact_twin(dp)
    switches = profile_switches(dp)
    report = VerifyReport(model=str(model_folder), datapath=dp.name, gemm="-", input_ids=ids, attention_mask=mask,
                          reference="exact datapath")
    report.notes.append(f"hardware profile compared with the exact datapath (not transformers): {dp.describe()}")
    graph = op_graph(cfg["num_hidden_layers"])

    if "e2e" in modes:
        reports: Dict[str, OpReport] = {}
        first: Optional[str] = None
        for spec in graph:
            ours, ref = prof_vals[spec.name], exact_vals[spec.name]
            ins = [prof_vals[n] for n in spec.sources]
            bad_inputs = [n for n in spec.sources if _differs(prof_vals[n], exact_vals[n])]
            cascade = None
            if bad_inputs:
                cascade = ("cascade", f"input(s) differ from the exact run: {', '.join(bad_inputs)}; first divergence "
                                      f"upstream: {first}")
            cause, ev = _classify_profile_op(dp, twin, switches, spec, _params_of(compiled, spec), heads, ins,
                                             ours.ints, ref.ints, cascade)
            block = spec.name.rsplit(".", 1)[0] if spec.kind in ("AttentionScores", "AttentionContext") else None
            recs = [r for name, rs in events.items() if name in (spec.name, block) for r in rs
                    if block is None or r.family == ("scores" if spec.kind == "AttentionScores" else "context")]
            if recs:  # the profile's own overflow records of this op back its deviation classes
                text = "; ".join(f"[{r.part}] {r.action} in {r.bits} bits, {r.count} element(s)" for r in recs)
                for label in ev:
                    if label not in ("cascade", "unexplained"):
                        ev[label] += f"; overflow records of this op: {text}"
            reports[spec.name] = _report(spec.name, spec.kind, ours.ints, ref.ints, cause, ev)
            if first is None and not reports[spec.name].all_equal:
                first = spec.name
        report.e2e = reports
        report.last_hidden_state_max_abs_diff = float(np.max(np.abs(prof_out.last_hidden_state
                                                                      - exact_out.last_hidden_state)))
        n_ev = sum(len(v) for v in events.values())
        report.notes.append(f"overflow records of the profile's run: {n_ev}" + "".join(
            f"\n  {r.describe()}" for recs in events.values() for r in recs[:1]))

    if "replay" in modes:
        reports = {}
        replayed: Dict[str, OpValue] = {}
        for spec in graph:
            ins, reps = [], []
            for n in spec.sources:
                own = replayed.get(n)
                if own is not None and own.exponent is not None:
                    ins.append(own)  # the profile holds this input in its own form
                    reps.append(n)
                else:
                    ins.append(exact_vals[n])
            params = _params_of(compiled, spec)
            ours = run_op(_switched(dp, {}, dp.name), spec, params, heads, ins)
            replayed[spec.name] = ours
            ref = exact_vals[spec.name].ints
            rep = None
            if reps:
                rep = ("input-representation", f"{PROFILE_CAUSES['input-representation']}: {', '.join(reps)}")
            cause, ev = _classify_profile_op(dp, twin, switches, spec, params, heads, ins, ours.ints, ref, rep)
            reports[spec.name] = _report(spec.name, spec.kind, ours.ints, ref, cause, ev)
        report.replay = reports
    return report


def verify(
    model=None,
    *,
    texts=None,
    input_ids=None,
    attention_mask=None,
    token_type_ids=None,
    datapath="transformers",
    gemm: Optional[str] = None,
    modes=("replay", "e2e"),
    transformers_model=None,
) -> VerifyReport:
    """Run transformers' I-BERT and ibert-ref side by side and classify every difference.

    Args:
        model: folder (or Hub id) of a quant-mode I-BERT checkpoint; None for the bundled model.
        texts: text(s) to tokenize with the model's tokenizer (a padded batch), or give
            ``input_ids`` (+ ``attention_mask``) directly.
        datapath: ours: ``"transformers"`` (expect 100% agreement with ``gemm="torch"``),
            ``"exact"`` or another registered datapath.
        gemm: for the transformers datapath, ``"torch"`` (default) or ``"numpy"``.
        modes: any of ``"replay"`` (op by op) and ``"e2e"`` (end to end); e2e needs replay's
            per-op results to separate own differences from cascades, so replay always runs.
        transformers_model: an already loaded transformers model (else loaded from ``model``).
    """
    from ..data import default_model_path
    from ..loading import load_checkpoint
    from ..model import IBertModel

    folder = model or default_model_path()
    if input_ids is None:
        if texts is None:
            raise ValueError("give texts or input_ids")
        from ..tokenizer import Tokenizer

        enc = Tokenizer.from_pretrained(folder)([texts] if isinstance(texts, str) else list(texts))
        input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    input_ids = np.asarray(input_ids, dtype=np.int64)
    if input_ids.ndim == 1:
        input_ids = input_ids[None, :]
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
    attention_mask = attention_mask.reshape(input_ids.shape)
    unknown = set(modes) - {"replay", "e2e"}
    if unknown or not modes:
        raise ValueError(f"modes must be a subset of ('replay', 'e2e'), got {modes}")

    from ..datapath import make_datapath

    if not isinstance(datapath, str) or datapath not in ("exact", "transformers"):
        profile = make_datapath(datapath)
        if is_profile(profile):
            return verify_profile(folder, profile, input_ids, attention_mask, token_type_ids, modes)
    if gemm is None:
        gemm = "torch" if datapath == "transformers" else "numpy"
    ours_model = IBertModel.from_pretrained(folder, datapath=datapath, gemm=gemm)
    dp = ours_model.datapath
    ckpt = load_checkpoint(folder)

    def get(key):
        return ckpt.tensor(key, shape=expected_shape(key, ckpt.config)).astype(F32)

    from .capture import capture_transformers_trace, load_transformers_ibert

    tmodel = transformers_model if transformers_model is not None else load_transformers_ibert(folder)
    capture = capture_transformers_trace(tmodel, input_ids, attention_mask=attention_mask,
                                         token_type_ids=token_type_ids)
    report = VerifyReport(model=str(folder), datapath=dp.name, gemm=gemm, input_ids=input_ids,
                          attention_mask=attention_mask)
    replay_reports, details = replay_and_classify(capture, get, dp)
    if "replay" in modes:
        report.replay = replay_reports
    if "e2e" in modes:
        out = ours_model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_trace=True)
        alt_out = None
        if dp.name == "transformers" and gemm != "torch":
            alt = IBertModel.from_pretrained(folder, datapath="transformers", gemm="torch")
            alt_out = alt(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_trace=True)
            n = sum(int(np.sum(np.asarray(alt_out.trace[k], np.int64) != capture.trace[k])) for k in capture.trace)
            report.notes.append(f"end to end with gemm='torch' instead: {n} differing elements")
        report.e2e = classify_end_to_end(capture, out, get, dp, details, alt_out)
        report.last_hidden_state_max_abs_diff = float(np.max(np.abs(out.last_hidden_state - capture.last_hidden_state)))
        if out.pooler_output is not None and capture.pooler_output is not None:
            report.pooler_max_abs_diff = float(np.max(np.abs(out.pooler_output - capture.pooler_output)))

    return report
