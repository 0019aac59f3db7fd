"""I-BERT's integer kernels, written once against a :class:`~ibert_ref.datapath.Datapath`.

Each kernel is the algorithm box of the paper (as transformers implements it), with its
exact integer formula, rounding rule and widths in the docstring. Every step whose result
depends on the number system (a division, a floor, a reduction, a GEMM) is a datapath
call; steps that are the same in every number system (``+``, ``*``, ``min``, ``max``)
are plain NumPy on the datapath's arrays. The compile-time constants each kernel needs
live in the ``*Params`` dataclasses, built by :mod:`ibert_ref.compile`.

Notation: ``q`` an integer, ``s`` its float32 scale (real value ``q * s``).

These functions are the reference: no dispatch inside. A backend may compute a kernel's
integers by another route (``dp.replacement_kernel(name)``, consulted by
:func:`ibert_ref.dataflow.kernel` only), proven equal to the function here by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .datapath import Datapath, QTensor
from .quant import F32, Dyadic

#: IntSoftmax output scale: probabilities are integers in [0, 256] times 2^-8.
SOFTMAX_OUT_SCALE_F32 = np.array([1.0 / 256.0], dtype=F32)


@dataclass
class EmbeddingParams:
    """QuantEmbedding: int8 table ``w`` (values in [-127, 126]) and its per-tensor scale."""

    w: np.ndarray
    scale: np.ndarray


@dataclass
class RequantParams:
    """QuantAct with a pre-scale (FixedPointMul): ``bits`` wide output of scale ``out_scale``.

    ``dy`` moves the input's integers to ``out_scale``; ``dy_identity`` moves a residual's.
    """

    bits: int
    out_scale: np.ndarray
    dy: Dyadic
    dy_identity: Optional[Dyadic] = None


@dataclass
class LinearParams:
    """QuantLinear: int8 weights ``w`` (out, in), int32 bias ``b`` (out,), accumulator scale
    ``out_scale = s_w[c] * s_x`` per output channel."""

    w: np.ndarray
    b: np.ndarray
    out_scale: np.ndarray


@dataclass
class SoftmaxParams:
    """IntSoftmax constants for one attention-score scale ``s``.

    ``x0_int = floor(-0.6931 / s)`` (the integer of -ln 2), ``x0_30 = 30 * x0_int`` (the
    clamp), ``b_int = floor(b / s)``, ``c_int = floor(c / s^2)`` (second-order exp
    polynomial), ``exp_scale = 0.3582 * s^2 / 2^30``; the 16-bit QuantAct's output scale
    ``act_scale`` and its multipliers (transformers' and the exact one).
    """

    x0_int: object
    x0_30: object
    b_int: object
    c_int: object
    exp_scale: np.ndarray
    act_scale: np.ndarray
    dy_tf: Dyadic
    dy_exact: Dyadic
    act_bits: int = 16
    out_bits: int = 8


@dataclass
class GeluParams:
    """IntGELU constants per channel (input scale ``s``, ``s' = s / 1.4142``):
    ``b_int = floor(-1.769 / s')``, ``c_int = floor((1 / -0.2888) / s'^2)``,
    ``one = floor(1 / s_erf)`` with ``s_erf = s'^2 * -0.2888 * 2^14``, and the output scale
    ``s * s_erf / 2`` (negative)."""

    b_int: object
    c_int: object
    one: object
    out_scale: np.ndarray


@dataclass
class LayerNormParams:
    """IntLayerNorm constants: ``shift`` (the persisted overflow guard),
    ``bias_int = floor((beta / gamma) / (sqrt(D) / 2^30))`` and the per-channel output scale
    ``sqrt(D) / 2^30 * gamma``."""

    shift: int
    bias_int: object
    out_scale: np.ndarray


# ---------------------------------------------------------------------------------------
def quant_embedding(dp: Datapath, p: EmbeddingParams, ids: np.ndarray) -> QTensor:
    """``q = W_int[ids]`` (int8 values in [-127, 126]), scale ``s_w`` (per tensor). A lookup."""
    return dp.emit(p.w[ids], p.scale)


def requantize(dp: Datapath, x: QTensor, p: RequantParams, identity: Optional[QTensor] = None) -> QTensor:
    """QuantAct / FixedPointMul: move integers to a new scale, optionally adding a residual.

    ``q_out = clamp( rne(q * m / 2^e) + rne(q_id * m_id / 2^e_id), -2^(b-1), 2^(b-1) - 1 )``

    with ``m / 2^e`` the dyadic form of ``s_in / s_out`` (31-bit mantissa). Rounding: half
    to even on the exact rational (exact datapath; transformers computes it in float64,
    which rounds the product once ``|q * m| >= 2^53``). Widths: input up to 62 bits, the
    product up to 93 bits (held in two int64 limbs), output ``b`` bits (8, 16 or 22).
    """
    z = dp.round_recover(x)
    out = dp.dyadic_round(z, dp.requant_multiplier(p.dy, x))
    if identity is not None:
        z_id = dp.round_recover(identity)
        out = dp.dyadic_round(z_id, dp.requant_multiplier(p.dy_identity, identity)) + out
    return dp.emit(dp.clamp_bits(out, p.bits), p.out_scale)


def quant_linear(dp: Datapath, x: QTensor, p: LinearParams) -> QTensor:
    """QuantLinear: ``acc[c] = sum_k x_q[k] * W_q[c, k] + b_q[c]``.

    int8 x int8 products, int32 accumulation (exact: cannot overflow for K <= 132,104),
    int32 bias; output scale ``s_x * s_w[c]`` per channel. No rounding.
    """
    acc = dp.linear(dp.recover(x), p.w, p.b)
    return dp.emit(acc, p.out_scale)


def attention_scores(dp: Datapath, q: QTensor, k: QTensor, num_heads: int, mask, scale_f32):
    """``S = Q_q K_q^T`` per head: int8 x int8 over the head dimension into int32 (<= hd * 2^14).

    Scale ``s_q * s_k / sqrt(hd)``. Keys with ``mask == 0`` get minus infinity, so IntSoftmax
    clamps them to ``30 * x0_int``. Returns the datapath's integers (B, heads, T, T).
    """
    scores = dp.attention_scores(q, k, num_heads, mask, scale_f32)
    dp.note("scores", "QK^T acc", lambda: scores if mask is None else scores[_live_keys(mask, scores.shape)])
    return scores


def _live_keys(mask, shape):
    """(B, T) 0/1 key mask -> boolean mask of the unmasked score positions (B, heads, T, T)."""
    return np.broadcast_to(np.asarray(mask)[:, None, None, :].astype(bool), shape)


def int_exp(dp: Datapath, scores, p: SoftmaxParams) -> QTensor:
    """i-exp of the max-subtracted scores, requantized to 16 bits (softmax's ``act``).

    1. ``x = max(S - rowmax(S), 30 * x0_int)``               (x <= 0)
    2. ``z_q = floor(x / x0_int)``, ``r = x - x0_int * z_q``     (exp(x) = 2^-z_q exp(r), r in (-ln2, 0])
    3. ``poly = (r + b_int) * r + c_int``                     (second-order exp polynomial, ~40 bits)
    4. ``exp_int = max(floor(poly * 2^(30 - z_q)), 0)``        (up to ~70 bits)
    5. ``e = clamp(rne(exp_int * m / 2^e), 0, 2^15 - 1)``       (the 16-bit QuantAct)

    Floors in 1-4, round half to even in 5. Returns 16-bit integers, scale ``act_scale``.
    """
    x = scores - scores.max(axis=-1, keepdims=True)
    x = np.maximum(x, p.x0_30)
    z_q = dp.floor_div(x, p.x0_int)
    r = x - p.x0_int * z_q
    poly = (r + p.b_int) * r + p.c_int
    dp.note("exp", "poly", poly)
    dp.note("exp", "exp_int = poly*2^(30-q)", lambda: _left_shifted_range(poly, 30 - z_q))
    e16 = dp.exp_requantize(poly, z_q, p.exp_scale, p.dy_tf, p.dy_exact, p.act_bits)
    return dp.emit(e16, p.act_scale)


def softmax_normalize(dp: Datapath, e: QTensor, p: SoftmaxParams) -> QTensor:
    """IntSoftmax's normalisation of the 16-bit exponentials along the last axis:

    ``factor = floor(2^32 / sum(e))``, ``out = floor(e * factor / 2^(32 - 8))``.

    Output: integers in [0, 256] (9 bits unsigned: a row with one live key gives 256),
    scale 2^-8. Floors only. Row sums are 249..256, not exactly 256.
    """
    e_int = dp.recover(e)
    e_sum = dp.sum_last(e_int)
    factor = dp.floor_div_into(2**32, e_sum)
    e_times_factor = e_int * factor
    out = dp.floor_div_pow2(e_times_factor, 32 - p.out_bits)
    dp.note("softmax", "sum(e)", e_sum, unsigned=True)
    dp.note("softmax", "factor = 2^32 // sum", factor, unsigned=True)
    dp.note("softmax", "e * factor", e_times_factor, unsigned=True)
    return dp.emit(out, SOFTMAX_OUT_SCALE_F32)


def _left_shifted_range(v, left):
    """(min, max) of ``max(v, 0) * 2^left`` as Python ints (the value may exceed int64)."""
    v_i64 = np.maximum(np.rint(np.asarray(v)), 0).astype(np.int64)
    left_i64 = np.broadcast_to(np.rint(np.asarray(left)).astype(np.int64), v_i64.shape)
    hi = 0
    for k in np.unique(left_i64):
        top = int(v_i64[left_i64 == k].max())
        hi = max(hi, top << int(k) if k >= 0 else top >> int(-k))
    return 0, hi


def int_softmax(dp: Datapath, scores, p: SoftmaxParams) -> QTensor:
    """IntSoftmax (I-BERT Alg. 2): :func:`int_exp` then :func:`softmax_normalize`."""
    return softmax_normalize(dp, int_exp(dp, scores, p), p)


def int_gelu(dp: Datapath, x: QTensor, p: GeluParams) -> QTensor:
    """IntGELU (I-BERT Alg. 2): ``GELU(x) ~ x * (erf(x / sqrt 2) + 1) / 2``.

    ``erf_q = sign(x) * ((min(|x|, -b_int) + b_int)^2 + c_int)``, then
    ``erf_q = floor(erf_q / 2^14)``; output ``x * (erf_q + one)`` — about 40 bits (the
    widest product in I-BERT). Floors only; output scale ``s * s_erf / 2`` (negative).
    """
    x_int = dp.recover(x)
    sign = np.sign(x_int)
    clipped = np.minimum(np.abs(x_int), -p.b_int)
    erf_poly = (clipped + p.b_int) ** 2 + p.c_int
    erf_q = dp.floor_div_pow2(sign * erf_poly, 14)
    product = x_int * (erf_q + p.one)
    dp.note("gelu", "erf poly (|x|+b)^2+c", erf_poly)
    dp.note("gelu", "erf_q + one", lambda: erf_q + p.one)
    dp.note("gelu", "x * (erf_q + one)", product)
    return dp.emit(product, p.out_scale)


def int_layernorm(dp: Datapath, x: QTensor, p: LayerNormParams) -> QTensor:
    """IntLayerNorm over the last axis (D channels):

    ``mean = rne(sum(x) / D)``, ``y = x - mean``, ``var = sum(floor(y / 2^shift)^2)``
    (< 2^32 after calibration, but it can exceed 2^31: a uint32, not an int32; ``dp.sum_squares``),
    ``std = isqrt(var) * 2^shift`` (integer floor-sqrt),
    ``factor = floor(2^31 / std)``, ``out = floor(y * factor / 2) + bias_int``.
    Output ~31 bits, scale ``sqrt(D) / 2^30 * gamma`` per channel.
    """
    x_int = dp.recover(x)
    y = x_int - dp.round_mean_last(x_int)
    y_shifted = dp.floor_div_pow2(y, p.shift)
    var = dp.sum_squares(y_shifted)
    std = dp.floor_sqrt(var) * dp.pow2(p.shift)
    factor = dp.floor_div_into(2**31, std)
    y_times_factor = y * factor
    out = dp.floor_div_pow2(y_times_factor, 1) + p.bias_int
    dp.note("layernorm", "sum(x)", lambda: x_int.sum(axis=-1))
    dp.note("layernorm", "y = x - mean", y)
    dp.note("layernorm", "var = sum((y>>shift)^2)", var, unsigned=True)
    dp.note("layernorm", "y * factor", y_times_factor)
    return dp.emit(out, p.out_scale)


@dataclass
class QuantizeInputParams:
    """QuantAct without a pre-scale (its input is a float): ``bits`` wide, scale ``scale``."""

    bits: int
    scale: np.ndarray


def quantize_input(dp: Datapath, x_f32: np.ndarray, p: QuantizeInputParams) -> QTensor:
    """QuantAct's input-quantization path (transformers' ``SymmetricQuantFunction``), taken
    when the producer ran in float (``force_dequant``) or the input is ``inputs_embeds``:

    ``q = clamp( rne( fl(fl(1 / s) * x) ), -(2^(b-1) - 1), 2^(b-1) - 2 )``

    float32 reciprocal first, then the product (torch's ``1.0 / scale * x``), round half to
    even, and the *asymmetric* clamp of SymmetricQuantFunction ([-127, 126] for 8 bits).
    The same in every datapath: the input is a float32 value, not an integer.
    """
    n = 2 ** (p.bits - 1) - 1
    scale_f32 = np.asarray(p.scale, dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        q_f32 = np.rint((F32(1.0) / scale_f32) * np.asarray(x_f32, dtype=F32))
    if np.isnan(q_f32).any():
        raise FloatingPointError("quantize_input: NaN reached a QuantAct (float non-linearity overflowed?)")
    return dp.emit(np.clip(q_f32, F32(-n), F32(n - 1)), scale_f32)
