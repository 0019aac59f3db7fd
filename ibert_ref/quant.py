"""Compile-time quantization math: scales, integer weights, dyadic multipliers.

Everything here runs once, when a checkpoint is compiled, never in the forward pass.
The arithmetic deliberately reproduces transformers' I-BERT (5.24) to the bit, because
the integer constants of every datapath (the exact one included) are defined by it:

* every scale is a float32 number computed with float32 operations;
* ``python_scalar / tensor`` in torch is ``tensor.reciprocal() * scalar`` (two float32
  roundings); :func:`rdiv_f32` reproduces it;
* dyadic multipliers come from ``np.frexp`` of a float64 ratio, the mantissa rounded to
  31 bits half away from zero (``Decimal`` ROUND_HALF_UP in transformers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32

#: The smallest scale transformers allows (``torch.clamp(scale, min=1e-8)``), as float32.
MIN_SCALE_F32 = F32(1e-8)


def rdiv_f32(c: float, t_f32: np.ndarray) -> np.ndarray:
    """``c / t`` the way torch computes a Python scalar divided by a tensor.

    ``fl(fl(1 / t) * fl(c))`` — the reciprocal is rounded to float32 first, then the
    product. Equals ``fl(c / t)`` only when ``c`` is a power of two.
    """
    t_f32 = np.asarray(t_f32, dtype=F32)
    with np.errstate(divide="ignore", over="ignore"):
        return (F32(1.0) / t_f32) * F32(c)


def symmetric_scale_f32(num_bits: int, x_min_f32, x_max_f32) -> np.ndarray:
    """Scale of symmetric quantization: ``max(|min|, |max|) / (2^(bits-1) - 1)``.

    float32 throughout; the magnitude is clamped below at float32(1e-8) first. Works
    elementwise, so per-channel ranges give per-channel scales.
    """
    n = 2 ** (num_bits - 1) - 1
    mag_f32 = np.maximum(np.abs(np.asarray(x_min_f32, dtype=F32)), np.abs(np.asarray(x_max_f32, dtype=F32)))
    return np.maximum(mag_f32, MIN_SCALE_F32) / F32(n)


def quantize_symmetric_f32(x_f32: np.ndarray, scale_f32: np.ndarray, num_bits: int) -> np.ndarray:
    """transformers' ``SymmetricQuantFunction``: ``clamp(rne(fl(1/s) * x), -n, n - 1)``.

    ``n = 2^(bits-1) - 1``; note the asymmetric clamp: int8 weights land in
    [-127, 126]. The clamp bounds are float32 numbers, so for 32 bits they are
    ``±2^31`` (float32 cannot hold 2^31 - 1). Returns integer-valued float32.
    """
    n = 2 ** (num_bits - 1) - 1
    q_f32 = np.rint(rdiv_f32(1.0, scale_f32) * np.asarray(x_f32, dtype=F32))
    return np.clip(q_f32, F32(-n), F32(n - 1))


def weight_scale_per_channel_f32(w_f32: np.ndarray, num_bits: int = 8) -> np.ndarray:
    """Per-output-row scale of a Linear weight (out, in): symmetric over the row's min/max."""
    return symmetric_scale_f32(num_bits, w_f32.min(axis=1), w_f32.max(axis=1))


def weight_scale_per_tensor_f32(w_f32: np.ndarray, num_bits: int = 8) -> np.ndarray:
    """One scale (shape (1,)) for a whole table (QuantEmbedding)."""
    return symmetric_scale_f32(num_bits, w_f32.min().reshape(1), w_f32.max().reshape(1))


@dataclass(frozen=True)
class Dyadic:
    """A dyadic number ``m * 2^-e`` approximating a float64 scale ratio.

    ``m`` is int64 with ``2^30 <= |m| <= 2^31`` (it can equal 2^31, and it is negative for
    negative ratios), ``e`` is int64. Arrays broadcast against the data they multiply.
    """

    m: np.ndarray
    e: np.ndarray

    @property
    def value(self) -> np.ndarray:
        """The represented ratio as float64 (for display only)."""
        return self.m.astype(np.float64) * np.exp2(-self.e.astype(np.float64))


def dyadic_from_ratio(ratio_f64: np.ndarray, mantissa_bits: int = 31) -> Dyadic:
    """``batch_frexp``: ``ratio = f * 2^k`` (``0.5 <= |f| < 1``), ``m = round_half_away(f * 2^31)``,
    ``e = 31 - k``.

    ``f * 2^31`` is exact in float64, and ``|f * 2^31| + 0.5`` is exact too (at most 31
    integer bits), so ``floor(|v| + 0.5)`` is the exact half-away-from-zero rounding that
    transformers gets from ``Decimal.quantize(ROUND_HALF_UP)``. A ratio of 0 gives m = 0,
    e = 31.
    """
    ratio_f64 = np.asarray(ratio_f64, dtype=np.float64)
    frac_f64, exp_i = np.frexp(ratio_f64)
    v_f64 = frac_f64 * float(2**mantissa_bits)
    m_i64 = (np.sign(v_f64) * np.floor(np.abs(v_f64) + 0.5)).astype(np.int64)
    e_i64 = (mantissa_bits - exp_i).astype(np.int64)
    return Dyadic(m=m_i64, e=e_i64)


def requant_ratio_f64(pre_scale_f32, out_scale_f32) -> np.ndarray:
    """``float64(pre_scale) / float64(float32(out_scale))`` — FixedPointMul's ``new_scale``."""
    return np.asarray(pre_scale_f32, dtype=F32).astype(np.float64) / np.asarray(out_scale_f32, dtype=F32).astype(
        np.float64
    )


def dyadic_requant(pre_scale_f32, out_scale_f32) -> Dyadic:
    """The dyadic multiplier that moves integers of scale ``pre`` to scale ``out``."""
    return dyadic_from_ratio(requant_ratio_f64(pre_scale_f32, out_scale_f32))


def bits_needed_signed(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in [lo, hi] (1 for {0})."""
    lo, hi = int(lo), int(hi)
    need = 1
    while not (-(1 << (need - 1)) <= lo and hi <= (1 << (need - 1)) - 1):
        need += 1
    return need
