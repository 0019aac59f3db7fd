"""Integer pooler and task heads (``integer_heads=True``): beyond transformers.

transformers runs the pooler and every task head in float32. With ``integer_heads=True``
the heads run on the encoder's int8 output in exact integer arithmetic, so the whole path
from token ids to logits is integer:

* every ``nn.Linear`` becomes an int8 x int8 -> int32 linear (I-BERT's QuantLinear rules:
  int8 weights in [-127, 126], int32 bias at scale ``s_w * s_x``). Hidden layers use
  per-channel weight scales; the last projection (the logits) uses **one** scale per
  tensor, so the int32 logits of a row share a scale and ``argmax`` can be taken on the
  integers;
* ``tanh`` (pooler, classification head) is :func:`int_tanh`: the accumulator is
  requantized to a 16-bit fixed-point number with :data:`TANH_FRAC_BITS` fractional bits,
  then ``tanh(a) = (1 - exp(-2a)) / (1 + exp(-2a))`` with I-BERT's i-exp polynomial and
  one rounded integer division; output int8 at scale 1/127;
* the MaskedLM head's GELU and LayerNorm are I-BERT's own IntGELU and IntLayerNorm
  kernels (:mod:`ibert_ref.kernels`, exact datapath); its decoder reuses the int8
  word-embedding table (tied weights).

Ranges are static (no calibration data): the GELU output is requantized to 22 bits with a
bound derived from the int8 weights, IntLayerNorm's shift is the smallest that keeps its
variance sum below 2^32 for any 22-bit input, and the decoder input is requantized to int8
with the LayerNorm's analytic bound ``|gamma| * sqrt(H) + |beta|``.

The error against the float heads is measured by :func:`compare_heads` (figures in
``docs/heads.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import kernels as K
from .compile import gelu_params, layernorm_params, linear_params, requant_params
from .datapath import ExactDatapath, QTensor
from .float_ops import FloatLayerNormParams, FloatLinearParams
from .kernels import GeluParams, LayerNormParams, LinearParams, RequantParams
from .quant import F32, quantize_symmetric_f32, symmetric_scale_f32, weight_scale_per_tensor_f32

I64 = np.int64
EXACT = ExactDatapath()

#: Fixed-point format of int_tanh's input: 16-bit integers, scale 2^-10 (|x| < 32).
TANH_FRAC_BITS = 10
TANH_IN_BITS = 16
#: |x| is clipped to 8 before i-exp (tanh(8) = 1 - 2.3e-7 rounds to 127/127).
TANH_SATURATION = 8
#: int_tanh output: int8 in [-127, 127], scale 1/127.
TANH_OUT_MAX = 127
TANH_OUT_SCALE_F32 = np.array([1.0 / TANH_OUT_MAX], dtype=F32)
#: I-BERT's i-exp polynomial exp(r) ~ c0 r^2 + c1 r + c2 on (-ln 2, 0] (as IntSoftmax).
EXP_COEF = (0.35815147, 0.96963238, 1.0)
LN2 = 0.6931
#: Width of the LM head's GELU output once requantized (IntLayerNorm's input), as I-BERT's
#: LayerNorm-input QuantActs (:mod:`ibert_ref.dataflow`).
LM_LN_INPUT_BITS = 22


# ---------------------------------------------------------------------------------------
# int_tanh
@dataclass
class TanhParams:
    """int_tanh constants (all Python ints; see :func:`int_tanh`)."""

    frac_bits: int
    x_sat: int  # TANH_SATURATION * 2^F
    x0_int: int  # floor(-ln2 * 2^F)  (negative)
    b_int: int  # floor(c1 / c0 * 2^F)
    c_int: int  # floor(c2 / c0 * 2^2F)
    one: int  # rne(2^2F / c0): 1.0 at the polynomial's scale c0 * 2^-2F
    out_max: int = TANH_OUT_MAX


def tanh_params(frac_bits: int = TANH_FRAC_BITS) -> TanhParams:
    c0, c1, c2 = EXP_COEF
    return TanhParams(
        frac_bits=frac_bits,
        x_sat=TANH_SATURATION << frac_bits,
        x0_int=math.floor(-LN2 * 2**frac_bits),
        b_int=math.floor(c1 / c0 * 2**frac_bits),
        c_int=math.floor(c2 / c0 * 2 ** (2 * frac_bits)),
        one=round(2 ** (2 * frac_bits) / c0),
    )


def int_tanh(x_q: np.ndarray, p: TanhParams) -> np.ndarray:
    """Integer tanh of ``x = x_q * 2^-F`` -> int8 codes ``t`` with ``tanh(x) ~ t / 127``.

    1. ``a = min(|x_q|, 8 * 2^F)``, ``u = -2a``                      (u <= 0, 16+ bits)
    2. ``q = floor(u / x0_int)``, ``r = u - x0_int * q``             (exp(u) = 2^-q exp(r), r in (x0_int, 0])
    3. ``z = (r + b_int) * r + c_int``                            (i-exp polynomial, scale c0 * 2^-2F)
    4. ``e = floor(z / 2^q)``                                    (exp(-2a); q <= 23)
    5. ``t = floor((2 * (one - e) * 127 + (one + e)) / (2 * (one + e)))``  (round half up)
    6. ``out = sign(x_q) * t``                                   (int8 in [-127, 127])

    Floors in 2 and 4, round half up in 5 (an exact integer division). Widths for F = 10:
    ``|r| <= 710``, ``z, one < 2^22``, step 5's numerator < 2^30: 32-bit arithmetic suffices.
    """
    x_q = np.asarray(x_q, dtype=I64)
    a = np.minimum(np.abs(x_q), p.x_sat)
    u = -2 * a
    q = u // p.x0_int  # floor division: both operands <= 0 -> q >= 0
    r = u - p.x0_int * q
    z = (r + p.b_int) * r + p.c_int
    e = z >> q
    num, den = p.one - e, p.one + e
    t = (2 * num * p.out_max + den) // (2 * den)
    return np.sign(x_q) * t


# ---------------------------------------------------------------------------------------
# compile-time helpers
def per_tensor_linear_params(w_f32, b_f32, in_scale_f32) -> LinearParams:
    """int8 weights with one per-tensor scale (so the logits share one scale), int32 bias
    at ``s_w * s_x``; the same quantizer as QuantLinear (clamp [-127, 126])."""
    w_f32 = np.asarray(w_f32, dtype=F32)
    s_w = weight_scale_per_tensor_f32(w_f32)
    w_int = quantize_symmetric_f32(w_f32, s_w, 8)
    out_scale = s_w * np.asarray(in_scale_f32, dtype=F32)
    b_int = quantize_symmetric_f32(np.asarray(b_f32, dtype=F32), out_scale, 32)
    return LinearParams(w=EXACT.weights(w_int), b=EXACT.const(b_int), out_scale=out_scale)


def accumulator_bound(p: LinearParams, in_bits: int = 8) -> np.ndarray:
    """Per output channel, the largest ``|acc|`` any ``in_bits`` input can produce:
    ``sum_k |W[c, k]| * 2^(in_bits-1) + |b[c]|`` (int64)."""
    w = np.abs(p.w.astype(I64))
    return w.sum(axis=1) * (1 << (in_bits - 1)) + np.abs(p.b.astype(I64))


def safe_layernorm_shift(hidden: int, in_bits: int) -> int:
    """Smallest IntLayerNorm ``shift`` with ``hidden * (2^in_bits / 2^shift)^2 < 2^32``:
    ``y = x - mean`` of ``in_bits``-bit inputs has ``|y| <= 2^in_bits``, so the variance
    sum cannot reach 2^32 for any input."""
    shift = 0
    while hidden * ((1 << in_bits) >> shift) ** 2 >= 2**32:
        shift += 1
    return shift


# ---------------------------------------------------------------------------------------
# heads
@dataclass
class IntegerTanhHead:
    """``dense -> tanh -> out`` on one int8 vector per row (pooler + classifier, or the
    sequence-classification head)."""

    dense: LinearParams
    to_fixed: RequantParams
    tanh: TanhParams
    out: LinearParams

    @classmethod
    def build(cls, dense: FloatLinearParams, out: FloatLinearParams, in_scale_f32) -> "IntegerTanhHead":
        d = linear_params(EXACT, dense.w, dense.b, in_scale_f32)
        fixed_scale = np.array([2.0**-TANH_FRAC_BITS], dtype=F32)
        return cls(
            dense=d,
            to_fixed=requant_params(TANH_IN_BITS, fixed_scale, d.out_scale),
            tanh=tanh_params(),
            out=per_tensor_linear_params(out.w, out.b, TANH_OUT_SCALE_F32),
        )

    def hidden(self, x_i8: np.ndarray, scale_f32) -> np.ndarray:
        """int8 (N, H) -> the tanh layer's int8 codes (N, H), scale 1/127."""
        acc = K.quant_linear(EXACT, QTensor(x_i8.astype(I64), scale_f32), self.dense)
        x_fixed = K.requantize(EXACT, acc, self.to_fixed)
        return int_tanh(x_fixed.data, self.tanh)

    def __call__(self, x_i8: np.ndarray, scale_f32) -> QTensor:
        """int8 (N, H) -> int32 logits (N, out) with one scale."""
        t = self.hidden(x_i8, scale_f32)
        return K.quant_linear(EXACT, QTensor(t, TANH_OUT_SCALE_F32), self.out)


@dataclass
class IntegerLinearHead:
    """One int8 linear to the logits (token classification, question answering, and the
    multiple-choice classifier after an integer pooler)."""

    out: LinearParams

    @classmethod
    def build(cls, out: FloatLinearParams, in_scale_f32) -> "IntegerLinearHead":
        return cls(out=per_tensor_linear_params(out.w, out.b, in_scale_f32))

    def __call__(self, x_i8: np.ndarray, scale_f32) -> QTensor:
        return K.quant_linear(EXACT, QTensor(np.asarray(x_i8).astype(I64), scale_f32), self.out)


@dataclass
class IntegerLMHead:
    """MaskedLM head: ``dense -> IntGELU -> 22-bit -> IntLayerNorm -> int8 -> decoder``."""

    dense: LinearParams
    gelu: GeluParams
    to_ln: RequantParams
    layernorm: LayerNormParams
    to_decoder: RequantParams
    decoder: LinearParams

    @classmethod
    def build(
        cls, dense: FloatLinearParams, ln: FloatLayerNormParams, decoder: FloatLinearParams, in_scale_f32
    ) -> "IntegerLMHead":
        d = linear_params(EXACT, dense.w, dense.b, in_scale_f32)
        gelu = gelu_params(EXACT, d.out_scale)
        # GELU(x) <= max(x, 0) and >= -0.17: bound it by the largest accumulator.
        x_max = float(np.max(accumulator_bound(d).astype(np.float64) * d.out_scale.astype(np.float64)))
        bound = F32(max(x_max, 0.17))
        ln_in_scale = symmetric_scale_f32(LM_LN_INPUT_BITS, -bound, bound).reshape(1)
        hidden = ln.gamma.shape[0]
        shift = np.array([safe_layernorm_shift(hidden, LM_LN_INPUT_BITS)], dtype=F32)
        layernorm = layernorm_params(EXACT, np.asarray(ln.gamma, F32), np.asarray(ln.beta, F32), shift)
        # LayerNorm output: |(x - mean) / std| <= sqrt(H), times gamma, plus beta.
        ln_bound = F32(np.max(np.abs(ln.gamma) * np.sqrt(hidden) + np.abs(ln.beta)))
        dec_in_scale = symmetric_scale_f32(8, -ln_bound, ln_bound).reshape(1)
        return cls(
            dense=d,
            gelu=gelu,
            to_ln=requant_params(LM_LN_INPUT_BITS, ln_in_scale, gelu.out_scale),
            layernorm=layernorm,
            to_decoder=requant_params(8, dec_in_scale, layernorm.out_scale),
            decoder=per_tensor_linear_params(decoder.w, decoder.b, dec_in_scale),
        )

    def __call__(self, x_i8: np.ndarray, scale_f32) -> QTensor:
        """int8 (B, T, H) -> int32 logits (B, T, V), one scale."""
        acc = K.quant_linear(EXACT, QTensor(np.asarray(x_i8).astype(I64), scale_f32), self.dense)
        g = K.int_gelu(EXACT, acc, self.gelu)
        g = K.requantize(EXACT, g, self.to_ln)
        y = K.int_layernorm(EXACT, g, self.layernorm)
        y = K.requantize(EXACT, y, self.to_decoder)
        return K.quant_linear(EXACT, y, self.decoder)


# ---------------------------------------------------------------------------------------
# measurement
@dataclass
class HeadComparison:
    """Integer-head logits against the float heads on the same encoder output."""

    max_abs_error: float
    mean_abs_error: float
    max_abs_logit: float
    argmax_agreement: Optional[float]
    rows: int

    def __str__(self):
        agree = "n/a" if self.argmax_agreement is None else f"{self.argmax_agreement:.4f}"
        return (
            f"max|err| {self.max_abs_error:.4g}, mean|err| {self.mean_abs_error:.4g} "
            f"(max|logit| {self.max_abs_logit:.3g}), argmax agreement {agree} over {self.rows} rows"
        )


def compare_logits(float_logits: np.ndarray, int_logits: np.ndarray, valid_rows=None) -> HeadComparison:
    """Errors of ``int_logits`` (dequantized) against ``float_logits``; argmax over the
    last axis, on the rows selected by ``valid_rows`` (a boolean mask over the leading axes)."""
    f = np.asarray(float_logits, dtype=np.float64)
    i = np.asarray(int_logits, dtype=np.float64)
    if valid_rows is not None:
        f, i = f[valid_rows], i[valid_rows]
    err = np.abs(f - i)
    agree = None
    if f.shape[-1] > 1:
        agree = float(np.mean(np.argmax(f, axis=-1) == np.argmax(i, axis=-1)))
    return HeadComparison(
        max_abs_error=float(err.max()),
        mean_abs_error=float(err.mean()),
        max_abs_logit=float(np.abs(f).max()),
        argmax_agreement=agree,
        rows=int(np.prod(f.shape[:-1])),
    )
