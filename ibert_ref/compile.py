"""Compile a checkpoint into integer parameters, once, before any forward pass.

Input: the float weights and the calibrated QuantAct ranges (``x_min``/``x_max``) and
LayerNorm ``shift`` buffers of a transformers I-BERT checkpoint. Output: int8 weights,
int32 biases, dyadic multipliers and polynomial constants for every op, in the number
type of the chosen datapath. The forward pass (``model.py``) only reads these.

The arithmetic that derives each constant is transformers' (float32 scales, see
:mod:`ibert_ref.quant`), so both datapaths share the same constants for the same input
scale. They differ in which input scale a layer is compiled for: transformers hands every
layer the embeddings' output scale (stale), the exact datapath the previous layer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .checkpoint_schema import check_tensor_keys, expected_shape  # noqa: F401 - the loader's checks, public here
from .dataflow import LAYER_INPUT, Op, block_ops
from .datapath import Datapath
from .float_ops import FloatLayerNormParams
from .kernels import (
    SOFTMAX_OUT_SCALE_F32,
    EmbeddingParams,
    GeluParams,
    LayerNormParams,
    LinearParams,
    QuantizeInputParams,
    RequantParams,
    SoftmaxParams,
)
from .quant import (
    F32,
    dyadic_from_ratio,
    dyadic_requant,
    quantize_symmetric_f32,
    rdiv_f32,
    symmetric_scale_f32,
    weight_scale_per_channel_f32,
    weight_scale_per_tensor_f32,
)

# transformers' I-BERT constants (quant_modules.py), as Python floats.
SOFTMAX_X0 = -0.6931
SOFTMAX_COEF = (0.35815147, 0.96963238 / 0.35815147, 1.0 / 0.35815147)
GELU_K = 1.4142
GELU_COEF = (-0.2888, -1.769, 1.0 / -0.2888)
GELU_CONST = 14

# Bit widths of I-BERT's QuantActs (modeling_ibert.py).
EMBEDDING_ACT_BITS = 16
ACT_BITS = 8
LN_INPUT_BITS = 22
SOFTMAX_ACT_BITS = 16

Getter = Callable[[str], np.ndarray]

#: ``config.force_dequant`` values and the non-linearities each one runs in float32
#: (transformers: IntGELU / IntSoftmax / IntLayerNorm built with quant_mode=False).
FORCE_DEQUANT = {
    "none": frozenset(),
    "gelu": frozenset({"gelu"}),
    "softmax": frozenset({"softmax"}),
    "layernorm": frozenset({"layernorm"}),
    "nonlinear": frozenset({"gelu", "softmax", "layernorm"}),
}

#: A QuantAct's compiled form: a dyadic requantization (its producer was integer) or the
#: input-quantization path (its producer ran in float, see ``force_dequant``).
ActParams = Union[RequantParams, QuantizeInputParams]
#: A LayerNorm's compiled form: IntLayerNorm, or its float32 fallback.
NormParams = Union[LayerNormParams, FloatLayerNormParams]


class CompileError(ValueError):
    """The checkpoint cannot be compiled (missing calibration, bad ranges, ...)."""


@dataclass
class LayerParams:
    """Every constant of one IBertLayer, named after transformers' modules.

    With ``force_dequant``, ``softmax``/``gelu`` are None (the op runs in float32), the
    LayerNorms are :class:`~ibert_ref.float_ops.FloatLayerNormParams`, and the QuantAct that
    follows a float op is a :class:`~ibert_ref.kernels.QuantizeInputParams`.
    """

    query: LinearParams
    key: LinearParams
    value: LinearParams
    query_activation: RequantParams
    key_activation: RequantParams
    value_activation: RequantParams
    score_scale: np.ndarray
    softmax: Optional[SoftmaxParams]
    context_scale: np.ndarray
    self_output_activation: ActParams
    attn_dense: LinearParams
    attn_ln_input_act: RequantParams
    attn_layernorm: NormParams
    attn_output_activation: ActParams
    pre_intermediate_act: RequantParams
    intermediate_dense: LinearParams
    gelu: Optional[GeluParams]
    intermediate_output_activation: ActParams
    pre_output_act: RequantParams
    output_dense: LinearParams
    output_ln_input_act: RequantParams
    output_layernorm: NormParams
    output_activation: ActParams
    input_scale: np.ndarray


@dataclass
class EmbeddingsParams:
    word: EmbeddingParams
    token_type: EmbeddingParams
    position: EmbeddingParams
    act1_first: RequantParams  # word + token_type
    act1_second: RequantParams  # (word + token_type) + position: same module again
    layernorm: NormParams
    output_activation: ActParams
    #: inputs_embeds: the float input quantized to act1's 16 bits (input-quantization path)
    act1_input: Optional[QuantizeInputParams] = None
    #: inputs_embeds, exact datapath only: token type added to the quantized input
    act1_input_identity: Optional[RequantParams] = None


@dataclass
class PoolerParams:
    """Float32 pooler (transformers runs it in float): ``tanh(h[:, 0] @ W^T + b)``."""

    w: np.ndarray
    b: np.ndarray


@dataclass
class CompiledModel:
    config: dict
    datapath_name: str
    embeddings: EmbeddingsParams
    layers: List[LayerParams]
    pooler: PoolerParams | None
    notes: Dict[str, str] = field(default_factory=dict)
    #: non-linearities run in float32 (``config.force_dequant``): subset of gelu/softmax/layernorm
    force_dequant: frozenset = frozenset()


# ---------------------------------------------------------------------------------------
def act_scale(get: Getter, prefix: str, bits: int) -> np.ndarray:
    """A QuantAct's output scale from its calibrated ``x_min``/``x_max`` buffers."""
    x_min = get(prefix + ".x_min").astype(F32).reshape(1)
    x_max = get(prefix + ".x_max").astype(F32).reshape(1)
    if not (np.isfinite(x_min).all() and np.isfinite(x_max).all()):
        raise CompileError(f"{prefix}: x_min/x_max are not finite")
    if x_min[0] > x_max[0]:
        raise CompileError(f"{prefix}: x_min {x_min[0]} > x_max {x_max[0]}")
    if max(abs(x_min[0]), abs(x_max[0])) <= 1.1e-5:
        raise CompileError(
            f"{prefix}: uncalibrated activation range (x_min={x_min[0]:.3g}, x_max={x_max[0]:.3g}); "
            "run calibration (transformers train-mode forwards or `ibert-ref calibrate`) first"
        )
    return symmetric_scale_f32(bits, x_min, x_max)


def _first(v) -> float:
    return float(np.asarray(v, dtype=np.float64).reshape(-1)[0])


def _check_scale(what: str, name: str, scale) -> None:
    """A float32 scale that every derived constant can use: finite and nonzero."""
    a = np.asarray(scale, dtype=np.float64)
    bad = ~np.isfinite(a) | (a == 0)
    if bad.any():
        raise CompileError(f"{what}: {name} = {a[bad][0]:.4g} is not a finite nonzero float32 scale "
                           "(bound: 0 < |scale| <= 3.4e38); its calibrated range is degenerate")


def checked_dyadic(pre_scale, out_scale, what: str = "requantization"):
    """``dyadic_requant`` with every constant checked representable: both scales finite and
    nonzero, the ratio a finite nonzero float64, and ``e >= 0`` (a ratio below 2^31: no
    requantization in I-BERT multiplies by that much, so the scales are broken). ``what``
    names the checkpoint keys the scales come from (in the error)."""
    _check_scale(what, "input scale", pre_scale)
    _check_scale(what, "output scale", out_scale)
    ratio = np.asarray(pre_scale, dtype=F32).astype(np.float64) / np.asarray(out_scale, dtype=F32).astype(np.float64)
    bad = ~np.isfinite(ratio) | (ratio == 0)
    if bad.any():
        raise CompileError(f"{what}: requantization ratio {ratio[bad][0]:.4g} is not a finite nonzero number "
                           "(bound: 2^-1074 < |ratio| < 2^31)")
    dy = dyadic_requant(pre_scale, out_scale)
    if np.any(dy.e < 0):
        ratio = float(np.max(dy.value))
        raise CompileError(f"{what}: requantization ratio {ratio:.3g} >= 2^31 (bound: < 2^31): input and output "
                           "scales are inconsistent")
    return dy


def requant_params(bits, out_scale, pre_scale, identity_scale=None, what: str = "requantization") -> RequantParams:
    """QuantAct constants: the dyadic multipliers of the input (and residual) scale to
    ``out_scale``, checked representable (:func:`checked_dyadic`)."""
    return RequantParams(
        bits=bits,
        out_scale=out_scale,
        dy=checked_dyadic(pre_scale, out_scale, what),
        dy_identity=None if identity_scale is None else checked_dyadic(identity_scale, out_scale, what + " (residual)"),
    )


def embedding_params(dp: Datapath, w_f32) -> EmbeddingParams:
    scale = weight_scale_per_tensor_f32(w_f32)
    return EmbeddingParams(w=dp.weights(quantize_symmetric_f32(w_f32, scale, 8)), scale=scale)


def linear_params(dp: Datapath, w_f32, b_f32, in_scale_f32) -> LinearParams:
    """int8 per-channel weights, int32 bias quantized with ``s_w[c] * s_in``."""
    w_scale = weight_scale_per_channel_f32(w_f32)
    w_int = quantize_symmetric_f32(w_f32, w_scale[:, None], 8)
    out_scale = w_scale * np.asarray(in_scale_f32, dtype=F32)
    b_int = quantize_symmetric_f32(b_f32, out_scale, 32)
    return LinearParams(w=dp.weights(w_int), b=dp.const(b_int), out_scale=out_scale)


#: Largest IntLayerNorm ``shift`` accepted: its inputs are at most 32 bits wide.
MAX_LAYERNORM_SHIFT = 31
#: Compile-time integer constants must stay below this magnitude (int64 with headroom; a
#: calibrated model is far below it: c_int ~ 3 / s^2 reaches it only for scales s < 1e-9).
MAX_CONSTANT = 2**62


def _check_int_constants(what: str, **consts) -> None:
    """Refuse constants that are not finite or too large for int64 arithmetic (degenerate scales)."""
    for name, v in consts.items():
        v = np.asarray(v, dtype=np.float64)
        bad = v[~np.isfinite(v) | (np.abs(v) >= MAX_CONSTANT)]
        if bad.size:
            raise CompileError(
                f"{what}: constant {name} = {bad[0]:.4g} is not a finite integer below 2^62; "
                "the calibrated ranges behind it are degenerate (corrupt or uncalibrated checkpoint?)"
            )


#: IntSoftmax's i-exp folds ``2^(30 - q)`` (q in [0, 30]) into its requantization shift: the
#: exact multiplier's ``e`` must be at least this (else q = 0, the row maximum, needs a left shift).
SOFTMAX_MIN_EXP_SHIFT = 30


def _rne_positive(num: int, e: int) -> int:
    """Round half to even of ``num / 2^e`` for Python ints ``num >= 0``, ``e >= 0``."""
    q, r = num >> e, num & ((1 << e) - 1)
    half = 1 << (e - 1) if e > 0 else 0
    return q + (1 if e > 0 and (r > half or (r == half and q & 1)) else 0)


def softmax_params(dp: Datapath, score_scale_f32, act_scale_f32, what: str = "IntSoftmax") -> SoftmaxParams:
    """IntSoftmax constants for attention-score scale ``s`` (see
    :class:`~ibert_ref.kernels.SoftmaxParams`), each checked representable:

    * ``s`` finite and nonzero, ``x0_int = floor(-0.6931 / s) <= -1``;
    * ``|x0_int| * (|x0_int| + |b_int|) + |c_int| < 2^62`` (the exp polynomial in int64);
    * the exact 16-bit requantization ``m / 2^e`` of ``exp_int`` has ``e >= 30`` (the fold of
      ``2^(30 - q)`` needs no left shift: softmax.act's scale > 0.5, i.e. its range
      magnitude > 16383.5);
    * ``exp(0)`` (every row's maximum: ``c_int * 2^30``) requantizes to at least 1, so no
      row of 16-bit exponentials sums to 0 (``2^32 / sum`` is defined).

    ``what`` names the checkpoint keys behind ``s`` and the QuantAct range (in the error)."""
    s = np.asarray(score_scale_f32, dtype=F32)
    _check_scale(what, "attention-score scale s_q * s_k / sqrt(head_dim)", s)
    _check_scale(what, "softmax.act scale", act_scale_f32)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        s2 = s * s
        x0_int = np.floor(rdiv_f32(SOFTMAX_X0, s))
        b_int = np.floor(rdiv_f32(SOFTMAX_COEF[1], s))
        c_int = np.floor(rdiv_f32(SOFTMAX_COEF[2], s2))
        exp_scale = (F32(SOFTMAX_COEF[0]) * s2) / F32(2**30)
    _check_int_constants(f"{what} (score scale {s.reshape(-1)[0]:.3g})", x0_int=x0_int, b_int=b_int, c_int=c_int)
    x0, b, c = int(x0_int.reshape(-1)[0]), int(b_int.reshape(-1)[0]), int(c_int.reshape(-1)[0])
    if x0 > -1:
        raise CompileError(f"{what}: x0_int = floor(-0.6931 / s) = {x0} with score scale s = {_first(s):.4g} "
                           "(bound: x0_int <= -1, i.e. s <= 0.6931)")
    poly_bound = abs(x0) * (abs(x0) + abs(b)) + abs(c)
    if poly_bound >= MAX_CONSTANT:
        raise CompileError(f"{what}: the exp polynomial reaches {poly_bound:.4g} with score scale s = {_first(s):.4g} "
                           "(bound: < 2^62)")
    act_f64 = np.asarray(act_scale_f32, dtype=F32).astype(np.float64)
    dy_exact = dyadic_from_ratio(1.0 / act_f64)
    m, e = int(dy_exact.m.reshape(-1)[0]), int(dy_exact.e.reshape(-1)[0])
    if e < SOFTMAX_MIN_EXP_SHIFT:
        raise CompileError(
            f"{what}: softmax.act scale {_first(act_f64):.4g} gives the exp requantization shift e = {e} < "
            f"{SOFTMAX_MIN_EXP_SHIFT} (i-exp's 2^(30 - q) cannot be folded into it); bound: scale > 0.5, i.e. "
            "max(|x_min|, |x_max|) > 16383.5 (a calibrated range holds exp_int, ~c_int * 2^30)")
    if m <= 0 or c <= 0 or _rne_positive(c * (1 << 30) * m, e) < 1:
        raise CompileError(
            f"{what}: exp(0) = c_int * 2^30 = {c} * 2^30 requantizes to 0 at softmax.act's scale "
            f"{_first(act_f64):.4g} (score scale s = {_first(s):.4g}): every row of exponentials would sum to 0; "
            "bound: c_int * 2^30 / scale >= 0.5 (c_int = floor(2.79 / s^2) >= 1 needs s <= 1.67)")
    return SoftmaxParams(
        x0_int=dp.const(x0_int),
        x0_30=dp.const(F32(30) * x0_int),
        b_int=dp.const(b_int),
        c_int=dp.const(c_int),
        exp_scale=exp_scale,
        act_scale=act_scale_f32,
        dy_tf=checked_dyadic(exp_scale, act_scale_f32, what + " (transformers' exp requantization)"),
        # exact: exp_int is the value the QuantAct range was calibrated on (scale 1)
        dy_exact=dy_exact,
    )


def gelu_params(dp: Datapath, in_scale_f32) -> GeluParams:
    s = np.asarray(in_scale_f32, dtype=F32)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        t = s / F32(GELU_K)
        t2 = t * t
        b_int = np.floor(rdiv_f32(GELU_COEF[1], t))
        c_int = np.floor(rdiv_f32(GELU_COEF[2], t2))
        erf_scale = (t2 * F32(GELU_COEF[0])) * F32(2**GELU_CONST)
        one = np.floor_divide(F32(1.0), erf_scale)
        out_scale = (s * erf_scale) / F32(2)
    _check_int_constants(f"IntGELU (input scale {s.reshape(-1)[0]:.3g})", b_int=b_int, c_int=c_int, one=one)
    return GeluParams(b_int=dp.const(b_int), c_int=dp.const(c_int), one=dp.const(one), out_scale=out_scale)


def check_gelu_range(what: str, p: GeluParams, x_bound: int) -> None:
    """IntGELU's widest value, ``x * (erf_q + one)`` with ``|x| <= x_bound`` (the
    QuantLinear accumulator's bound ``K * 127^2 + max|bias|``) and
    ``|erf_q| <= (b_int^2 + |c_int|) / 2^14``, must stay below 2^62 (int64 arithmetic and the
    next requantization's input bound); the output scale must be finite and nonzero."""
    b = np.abs(np.asarray(p.b_int, dtype=np.float64)).max()
    c = np.abs(np.asarray(p.c_int, dtype=np.float64)).max()
    one = np.abs(np.asarray(p.one, dtype=np.float64)).max()
    bound = float(x_bound) * ((b * b + c) / 2.0**GELU_CONST + one + 1.0)
    if not bound < float(MAX_CONSTANT):
        raise CompileError(f"{what}: IntGELU's product x * (erf_q + one) can reach {bound:.4g} (|x| <= {x_bound}, "
                           f"|b_int| = {b:.4g}, |c_int| = {c:.4g}, |one| = {one:.4g}); bound: < 2^62")
    _check_scale(what, "IntGELU output scale", p.out_scale)


#: IntLayerNorm's ``floor(y * factor / 2)`` stays below 2^52 (``|y| < 2^21``, factor <= 2^31):
#: ``bias_int`` must leave room for it below 2^62 (the next requantization's input bound).
MAX_LAYERNORM_BIAS = 2**61


def layernorm_params(dp: Datapath, gamma_f32, beta_f32, shift_f32, what: str = "IntLayerNorm") -> LayerNormParams:
    """IntLayerNorm constants; ``bias_int`` checked below 2^61 and the output scale
    ``sqrt(D) / 2^30 * gamma`` finite and nonzero (``what`` names the keys in the error)."""
    hidden = gamma_f32.shape[0]
    if np.any(gamma_f32 == 0):
        raise CompileError(f"{what}: IntLayerNorm weight has a zero: bias/weight is undefined")
    shift = float(np.asarray(shift_f32).reshape(-1)[0])
    if shift < 0 or shift != int(shift):
        raise CompileError(f"IntLayerNorm shift must be a non-negative integer, got {shift}")
    if shift > MAX_LAYERNORM_SHIFT:
        raise CompileError(
            f"IntLayerNorm shift {shift:g} > {MAX_LAYERNORM_SHIFT}: inputs are at most 32 bits, so every "
            "floor(y / 2^shift) would be 0 or -1 (corrupt checkpoint?)"
        )
    dim_sqrt = np.sqrt(F32(hidden))
    base_scale = dim_sqrt / F32(2**30)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        bias_int = np.floor((beta_f32 / gamma_f32) / base_scale)
        out_scale = base_scale * gamma_f32
    _check_int_constants(what, bias_int=bias_int)
    big = np.abs(bias_int) >= MAX_LAYERNORM_BIAS
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise CompileError(f"{what}: bias_int[{i}] = floor((beta / gamma) / (sqrt(D) / 2^30)) = {bias_int[i]:.4g} "
                           f"(beta {float(beta_f32[i]):.4g}, gamma {float(gamma_f32[i]):.4g}); "
                           "bound: |bias_int| < 2^61")
    _check_scale(what, "IntLayerNorm output scale sqrt(D) / 2^30 * gamma", out_scale)
    return LayerNormParams(shift=int(shift), bias_int=dp.const(bias_int), out_scale=out_scale)


# ---------------------------------------------------------------------------------------
def norm_params(dp: Datapath, get: Getter, prefix: str, fd: frozenset, eps: float) -> NormParams:
    """IntLayerNorm ``prefix`` compiled, or its float32 fallback when LayerNorm is dequantized."""
    gamma, beta = get(prefix + ".weight"), get(prefix + ".bias")
    if "layernorm" in fd:
        return FloatLayerNormParams(gamma=gamma.astype(F32), beta=beta.astype(F32), eps=float(eps))
    return layernorm_params(dp, gamma, beta, get(prefix + ".shift"), what=f"{prefix} (.weight, .bias, .shift)")


def always_zero(bound: int, dy) -> bool:
    """Whether ``rne(z * m / 2^e)`` is 0 for every ``|z| <= bound`` (``bound * |m| / 2^e <= 1/2``),
    for every channel of ``dy``. Exact (Python ints)."""
    m, e = np.broadcast_arrays(np.abs(np.asarray(dy.m, dtype=np.int64)).reshape(-1),
                               np.asarray(dy.e, dtype=np.int64).reshape(-1))
    return all(2 * int(bound) * int(mi) <= (1 << int(ei)) for mi, ei in zip(m, e))


def check_layernorm_input(what: str, terms) -> None:
    """Refuse an IntLayerNorm whose input requantization gives 0 for every input it can get
    (``terms``: ``(bound on |z|, Dyadic)`` per added term): every row would be all zeros, its
    standard deviation 0 and ``2^31 / std`` undefined."""
    if all(always_zero(bound, dy) for bound, dy in terms):
        detail = ", ".join(f"|z| <= {bound} times {float(np.max(np.abs(dy.value))):.4g}" for bound, dy in terms)
        raise CompileError(f"{what}: every input requantizes to 0 ({detail}), so every IntLayerNorm row is all "
                           "zeros (std 0); bound: some |z| * ratio > 0.5")


def range_key(get: Getter, prefix: str) -> str:
    """``"<prefix>.x_min/x_max = [lo, hi]"``: a QuantAct's checkpoint keys and values (for errors)."""
    try:
        lo, hi = _first(get(prefix + ".x_min")), _first(get(prefix + ".x_max"))
    except Exception:  # noqa: BLE001 - a missing key is reported where it is read
        return prefix
    return f"{prefix}.x_min/x_max = [{lo:.6g}, {hi:.6g}]"


# ---------------------------------------------------------------------------------------
# Compiling a block: an interpreter of the dataflow over scales
def op_params(dp: Datapath, op: Op, in_scales: Sequence, get: Getter, *, head_dim: Optional[int] = None,
              fd: frozenset = frozenset(), eps: float = 1e-12, what: Optional[str] = None):
    """The compiled constants of the dataflow op ``op`` (absolute names, :mod:`ibert_ref.dataflow`)
    from the output scales of its sources (``in_scales``, in ``op.sources`` order; None for ids,
    the mask, or a value a float op produced) and the checkpoint (``get``: weights, QuantAct
    ranges, LayerNorm shifts). By the op's kernel:

    * ``quant_embedding``: the int8 table and its scale (:func:`embedding_params`);
    * ``quant_linear``: int8 weights, int32 bias at scale ``s_w[c] * s_in`` (:func:`linear_params`);
    * ``requantize``: the dyadic multipliers from the input (and residual) scale to the
      QuantAct's calibrated scale (:func:`requant_params`); the input-quantization path
      (:class:`~ibert_ref.kernels.QuantizeInputParams`) after an op that ran in float;
    * ``attention_scores``: the score scale ``s_q * s_k / sqrt(head_dim)`` (float32);
    * ``int_exp`` (IntSoftmax's QuantAct): :func:`softmax_params`, or None when the softmax runs
      in float (``fd``); ``softmax_normalize`` shares these constants (compile its int_exp);
    * ``attention_context``: the context scale ``s_v / 256`` (float32);
    * ``int_gelu``: :func:`gelu_params`, or None when GELU runs in float;
    * ``int_layernorm``: IntLayerNorm's constants, or its float32 fallback (:func:`norm_params`).

    ``what`` names the checkpoint keys in errors (default: the op's range keys).
    """
    k, name = op.kernel, op.module
    if k == "quant_embedding":
        return embedding_params(dp, get(name + ".weight"))
    if k == "quant_linear":
        return linear_params(dp, get(name + ".weight"), get(name + ".bias"), in_scales[0])
    if k == "requantize":
        out_scale = act_scale(get, name, op.width)
        what = what or range_key(get, name)
        if in_scales[0] is None:  # a float producer (force_dequant): QuantAct's input-quantization path
            return QuantizeInputParams(bits=op.width, scale=out_scale)
        return requant_params(op.width, out_scale, in_scales[0], in_scales[1] if op.identity else None, what=what)
    if k == "attention_scores":
        if head_dim is None:
            raise ValueError(f"{op.name}: the score scale needs head_dim")
        with np.errstate(over="ignore", under="ignore"):
            return (in_scales[0] * in_scales[1]) / F32(math.sqrt(head_dim))
    if k == "int_exp":
        if "softmax" in fd:
            return None  # the float softmax: its QuantAct is never called (nor calibrated)
        return softmax_params(dp, in_scales[0], act_scale(get, name, op.width), what=what or range_key(get, name))
    if k == "attention_context":
        return F32(1.0 / 256.0) * in_scales[1]
    if k == "int_gelu":
        return None if "gelu" in fd else gelu_params(dp, in_scales[0])
    if k == "int_layernorm":
        return norm_params(dp, get, name, fd, eps)
    raise KeyError(f"{op.name}: no constants for kernel {k!r}")


def op_output_scale(op: Op, p, in_scales: Sequence):
    """The float32 scale of the integers ``op`` outputs, given its compiled constants ``p`` and its
    sources' scales; None when the op runs in float (``force_dequant``) or passes a float on."""
    k = op.kernel
    if k == "quant_embedding":
        return p.scale
    if k == "requantize":
        return act_out_scale(p)
    if k == "attention_scores":
        return p
    if k == "attention_context":
        return None if in_scales[0] is None else p
    if k == "int_exp":
        return None if p is None else p.act_scale
    if k == "softmax_normalize":
        return None if p is None else SOFTMAX_OUT_SCALE_F32
    if p is None or isinstance(p, FloatLayerNormParams):  # int_gelu / int_layernorm in float
        return None
    return p.out_scale  # quant_linear, int_gelu, int_layernorm


def compile_block(dp: Datapath, get: Getter, layer: Optional[int], in_scale=None, num_heads: int = 1,
                  fd: frozenset = frozenset(), eps: float = 1e-12) -> Dict[str, object]:
    """Interpret one block of :mod:`ibert_ref.dataflow` over scales: ``{params field: constants}``
    for every op of block ``layer`` (None: the embeddings), compiled for the layer input scale
    ``in_scale``. Each op's constants come from its sources' output scales (:func:`op_params`,
    :func:`op_output_scale`), in dataflow order; after each op the checks that need its
    producers run (:func:`_check_op`)."""
    ops = block_ops(layer)
    by_name = {op.name: op for op in ops}
    scales: Dict[str, object] = {LAYER_INPUT: in_scale}
    compiled: Dict[str, object] = {}
    fields: Dict[str, object] = {}
    for op in ops:
        srcs = [scales.get(s) for s in op.sources]
        if op.kernel == "softmax_normalize":
            p = compiled[op.inputs[0]]  # IntSoftmax's constants are its QuantAct's (int_exp)
        else:
            p = op_params(dp, op, srcs, get, head_dim=_head_dim(op, by_name, get, num_heads), fd=fd, eps=eps,
                          what=_softmax_what(op, by_name, get))
        compiled[op.name] = p
        fields.setdefault(op.params, p)
        scales[op.name] = op_output_scale(op, p, srcs)
        _check_op(op, p, by_name, compiled, get)
    return fields


def _head_dim(op: Op, by_name: dict, get: Getter, num_heads: int) -> Optional[int]:
    """Attention scores: the head width, from the query QuantLinear's weight (hidden / heads)."""
    if op.kernel != "attention_scores":
        return None
    query = by_name[by_name[op.inputs[0]].inputs[0]]
    return get(query.module + ".weight").shape[0] // num_heads


def _softmax_what(op: Op, by_name: dict, get: Getter) -> Optional[str]:
    """IntSoftmax's QuantAct: its range keys and those of the query / key activations (errors)."""
    if op.kernel != "int_exp":
        return None
    q_act, k_act = by_name[op.inputs[0]].inputs
    return (f"{range_key(get, op.module)}; score scale from {range_key(get, by_name[q_act].module)}, "
            f"{range_key(get, by_name[k_act].module)}")


def _check_op(op: Op, p, by_name: dict, compiled: dict, get: Getter) -> None:
    """Checks of ``op``'s constants against its producers': IntGELU's widest product for the
    QuantLinear accumulator it reads (:func:`check_gelu_range`); an IntLayerNorm whose input
    requantization is 0 for every input it can get (:func:`check_layernorm_input`)."""
    if op.kernel == "int_gelu" and p is not None:
        dense = by_name[op.inputs[0]]
        what = (f"{op.module} (input scale from {range_key(get, by_name[dense.inputs[0]].module)} and "
                f"{dense.module}.weight)")
        check_gelu_range(what, p, _magnitude_bound(dense.name, by_name, compiled))
    if op.kernel == "int_layernorm" and isinstance(p, LayerNormParams):
        act = by_name[op.inputs[0]]
        act_p = compiled[act.name]
        terms = [(_magnitude_bound(act.inputs[0], by_name, compiled), act_p.dy)]
        if act.identity:
            terms.append((_magnitude_bound(act.identity, by_name, compiled), act_p.dy_identity))
        check_layernorm_input(range_key(get, act.module), terms)


def _magnitude_bound(name: str, by_name: dict, compiled: dict) -> int:
    """The bound on ``|q|`` of op ``name``'s output integers that the compile-time checks use:
    int8 values (tables, 8-bit QuantActs, the layer input) 127; a QuantLinear accumulator
    ``K * 127^2 + max|bias|``; a wider QuantAct ``2^(bits-1)``, or 0 when each term of its
    requantization is 0 for every input (:func:`always_zero`)."""
    op = by_name.get(name)
    if op is None or op.kernel == "quant_embedding" or (op.kernel == "requantize" and op.width == 8):
        return 127
    p = compiled[name]
    if op.kernel == "quant_linear":
        return int(np.asarray(p.w).shape[1]) * 127 * 127 + int(np.max(np.abs(np.asarray(p.b, dtype=np.float64))))
    if op.kernel == "requantize":
        terms = [(_magnitude_bound(op.inputs[0], by_name, compiled), p.dy)]
        if op.identity:
            terms.append((_magnitude_bound(op.identity, by_name, compiled), p.dy_identity))
        return 0 if all(always_zero(bound, dy) for bound, dy in terms) else 2 ** (op.width - 1)
    raise KeyError(f"{name}: no magnitude bound for kernel {op.kernel!r}")


def compile_embeddings(dp: Datapath, get: Getter, fd: frozenset = frozenset(), eps: float = 1e-12) -> EmbeddingsParams:
    """The embeddings' constants (:func:`compile_block` of :data:`ibert_ref.dataflow.EMBEDDINGS`),
    and the input-quantization constants of ``inputs_embeds`` (not an op of the dataflow: the
    float input enters at ``embeddings_act1``'s scale, the token type added on the exact datapath)."""
    fields = compile_block(dp, get, None, fd=fd, eps=eps)
    act1 = fields["act1_second"]
    act1_name = next(op.module for op in block_ops(None) if op.params == "act1_second")
    return EmbeddingsParams(
        **fields,
        act1_input=QuantizeInputParams(bits=act1.bits, scale=act1.out_scale),
        act1_input_identity=requant_params(act1.bits, act1.out_scale, act1.out_scale, fields["token_type"].scale,
                                           what=range_key(get, act1_name)),
    )


def compile_layer(
    dp: Datapath, get: Getter, i: int, in_scale, num_heads: int, fd: frozenset = frozenset(), eps: float = 1e-12
) -> LayerParams:
    """Encoder layer ``i``'s constants for input scale ``in_scale`` (:func:`compile_block` of
    :data:`ibert_ref.dataflow.LAYER`)."""
    fields = compile_block(dp, get, i, in_scale, num_heads, fd, eps)
    return LayerParams(**fields, input_scale=np.asarray(in_scale, dtype=F32))


def dequantized_ops(config: dict) -> frozenset:
    """The non-linearities ``config.force_dequant`` runs in float32 (empty for "none")."""
    fd = config.get("force_dequant", "none")
    if fd is None:
        fd = "none"
    if fd not in FORCE_DEQUANT:
        # transformers silently treats an unknown value as "none"; a typo here would
        # quietly change the model, so refuse it.
        raise CompileError(f"force_dequant={fd!r} is not one of {sorted(FORCE_DEQUANT)}")
    return FORCE_DEQUANT[fd]


#: config.json fields the compiler reads: name -> (smallest allowed value, default or None if required).
CONFIG_INTS = {
    "hidden_size": (1, None),
    "num_attention_heads": (1, None),
    "num_hidden_layers": (0, None),
    "intermediate_size": (1, None),
    "vocab_size": (1, None),
    "max_position_embeddings": (1, None),
    "type_vocab_size": (1, 1),
    "pad_token_id": (0, 1),
}


def _check_config_ints(config: dict) -> None:
    """Every integer field the compiler reads is present, an int (not bool/str/float) and in range."""
    for name, (lowest, default) in CONFIG_INTS.items():
        if name not in config and default is not None:
            continue
        if name not in config:
            raise CompileError(f"config.json has no {name!r} (required by I-BERT)")
        v = config[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
            raise CompileError(f"config.json: {name}={v!r} must be an integer >= {lowest}")


def check_config(config: dict) -> None:
    """Reject configurations the integer model does not implement (yet) with a clear error."""
    if not config.get("quant_mode", False):
        # A quant_mode=false checkpoint can still be compiled if it carries calibrated
        # ranges; the range check in act_scale() names the first missing one.
        pass
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CompileError(f"hidden_act={act!r}: I-BERT only supports 'gelu' (as transformers)")
    dequantized_ops(config)  # validates force_dequant
    _check_config_ints(config)
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    if hidden % heads != 0:
        raise CompileError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    pad, vocab = config.get("pad_token_id", 1), config["vocab_size"]
    if pad >= vocab:
        raise CompileError(f"config.json: pad_token_id={pad} must be below vocab_size={vocab} (a token id)")
    maxpos = config["max_position_embeddings"]
    if pad + 1 >= maxpos:
        raise CompileError(f"config.json: pad_token_id={pad} leaves no position: RoBERTa positions start at "
                           f"pad_token_id + 1, which must be below max_position_embeddings={maxpos}")
    if "layer_norm_eps" in config:
        eps = config["layer_norm_eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise CompileError(f"config.json: layer_norm_eps={eps!r} must be a finite number >= 0")


def act_out_scale(p: ActParams) -> np.ndarray:
    """The output scale of a compiled QuantAct (either path)."""
    return p.scale if isinstance(p, QuantizeInputParams) else p.out_scale


def compile_model(
    dp: Datapath, config: dict, get: Getter, has: Callable[[str], bool], add_pooling_layer: bool = True
) -> CompiledModel:
    """Compile every op of an IBertModel for datapath ``dp`` (see the module docstring).

    ``add_pooling_layer=False`` skips the pooler (transformers' task models other than
    multiple choice build their encoder without one, even if the checkpoint has it).
    """
    check_config(config)
    fd = dequantized_ops(config)
    eps = float(config.get("layer_norm_eps", 1e-12))
    emb = compile_embeddings(dp, get, fd, eps)
    emb_scale = act_out_scale(emb.output_activation)
    layers = []
    in_scale = emb_scale
    for i in range(config["num_hidden_layers"]):
        layer = compile_layer(
            dp, get, i, emb_scale if dp.stale_layer_scale else in_scale, config["num_attention_heads"], fd, eps
        )
        layers.append(layer)
        in_scale = act_out_scale(layer.output_activation)
    pooler = None
    if add_pooling_layer and has("pooler.dense.weight"):
        pooler = PoolerParams(w=get("pooler.dense.weight").astype(F32), b=get("pooler.dense.bias").astype(F32))
    return CompiledModel(
        config=config, datapath_name=dp.name, embeddings=emb, layers=layers, pooler=pooler, force_dequant=fd
    )
