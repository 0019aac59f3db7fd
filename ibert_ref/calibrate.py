"""Calibrate I-BERT's activation ranges in NumPy (no torch): transformers' train-mode semantics.

A quant-mode I-BERT is only usable once every QuantAct has a range (``x_min``/``x_max``) and
every IntLayerNorm a ``shift``. transformers fills them with forward passes in ``train()`` mode;
Hub checkpoints such as ``kssteven/ibert-roberta-base`` carry float weights only. This module
runs the same train-mode forward on NumPy arrays:

* **QuantAct** (``quant_modules.QuantAct.forward`` with ``self.training``): the range is updated
  from ``x_act = x`` (or ``identity + x`` for a residual), the float32 value transformers holds,
  *before* the activation is quantized, and the quantization uses the updated range. First call
  (buffers still within +-1.1e-5): ``x_min = -1e-5 + min(x_act)``, ``x_max = 1e-5 + max(x_act)``;
  later calls: ``x_min = 0.95 * x_min + 0.05 * min(x_act)`` (same for max), all in float32.
  ``momentum=-1`` keeps running min/max instead. ``embeddings_act1`` is called twice per
  forward (word + token type, then + position), so its range moves twice per batch. IntSoftmax's
  16-bit QuantAct sees the raw integer ``exp_int`` (its range is in integer units).
* **IntLayerNorm** in train mode: when ``sum(floor(y / 2^shift)^2) >= 2^32`` for some token,
  ``shift = max(shift, max(ceil(log2(sqrt(sum(y^2) / 2^32)))))`` and the variance is recomputed;
  it only grows.
* Dropout is not applied (transformers calibrates with dropout active unless its probabilities
  are 0; compare with dropout 0).

The forward below follows :mod:`ibert_ref.model`'s dataflow op by op, but compiles each op's
constants on the fly from the ranges as they stand at that point of the pass.

**Range selection** (``range_method``): ``"ema"`` (default) is transformers' semantics above.
The other methods keep I-BERT's format (one symmetric per-tensor range per QuantAct, the same
kernels; the checkpoint loads unchanged in transformers and ibert-ref) but choose each 8-bit
QuantAct's range from the whole calibration set, in forward order, so that every op sees its
upstream already quantized with the ranges chosen for it (sequential calibration). The
calibration texts run as **one padded batch** (memory grows with texts x longest text), and
only real tokens (attention mask 1) are observed:

* ``"minmax"``: ``(min, max)`` of the real-token values (no clipping; the reference);
* ``"percentile"``: clip ``c`` = the ``percentile``-th percentile of ``|x|``;
* ``"mse"``: clip ``c`` minimising the quantization MSE
  ``mean((x - s * clamp(rne(x / s), -2^(b-1), 2^(b-1) - 1))^2)``, ``s = c / (2^(b-1) - 1)``
  (:func:`mse_optimal_clip`; never worse than ``"minmax"`` on the observed values);
* ``"search"`` (output-aware): clip ``c`` among :func:`search_candidates` (the ``"mse"`` clip,
  multiples of it, percentiles, min/max) minimising the error of the consuming encoder layer's
  output, computed on through the float model (:class:`FloatModel`), against the float model's
  output on the same calibration batch (``search_target="float"``) or against the same
  continuation of the unquantized value (``"local"``); the ``"mse"`` clip is a candidate and
  wins ties, so the choice is never worse than it on that objective. See :class:`Calibrator`.

The range written is ``(max(min x, -c), min(max x, c))``, so ``max(|x_min|, |x_max|) = c``.
16-bit (embedding sum, IntSoftmax's ``exp_int``) and 22-bit (LayerNorm input) QuantActs keep
running min/max over that batch: clipping the softmax's ``exp_int`` would saturate each row's
largest probability.

``embeddings_act1`` in the whole-set methods: its range is chosen **once, before its first
call**, from the float32 sums of both calls computed from the dequantized embeddings,
``x1 = token_type + word`` and ``x2 = position + x1``: ``x_min = min(-1e-5 + min x1, min x2)``,
``x_max = max(1e-5 + max x1, max x2)``. Both calls then quantize with that one scale. An eval
forward of the written checkpoint uses that same range for both calls, so the calibration pass
computes exactly the integers of the deployed model at every QuantAct, and every downstream
range is chosen on them. (``"ema"`` keeps transformers' train mode: the first call quantizes
with the range updated from ``x1`` alone, the second with the range updated again from its own
input.)

``datapath="transformers"`` (default) reproduces transformers' float32 values, stale layer scale
included, so the ranges are the ones transformers would compute (bit-identical with
``gemm="torch"``, see docs/verification.md); ``datapath="exact"`` observes the exact integer
model's values (true scales).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import kernels as K
from .compile import (
    ACT_BITS,
    EMBEDDING_ACT_BITS,
    LN_INPUT_BITS,
    SOFTMAX_ACT_BITS,
    check_config,
    compile_model,
    dequantized_ops,
    embedding_params,
    expected_shape,
    gelu_params,
    layernorm_params,
    linear_params,
    requant_params,
    softmax_params,
)
from .convert import (
    UNCALIBRATED_MAX_F32,
    UNCALIBRATED_MIN_F32,
    copy_tokenizer_files,
    is_dead_quant_act,
    quant_act_names,
    layernorm_names,
    uncalibrated_quant_buffers,
    write_checkpoint,
)
from .datapath import Datapath, QTensor, TransformersDatapath, make_datapath
from .loading import Checkpoint, load_checkpoint
from .model import roberta_position_ids
from .quant import F32, symmetric_scale_f32, weight_scale_per_channel_f32

#: transformers' QuantAct momentum (``act_range_momentum``).
DEFAULT_MOMENTUM = 0.95
#: A range still inside +-1.1e-5 counts as "not initialised" (transformers' test).
INIT_THRESHOLD = 1.1e-5
#: IntLayerNorm's ``max_bit``: the variance must stay below 2^32.
LN_MAX_BIT = 32
#: ``range_method`` values: transformers' EMA, then the whole-set sequential methods.
RANGE_METHODS = ("ema", "minmax", "percentile", "mse", "search")
#: ``search_target`` values of ``range_method="search"`` (see :class:`Calibrator`).
SEARCH_TARGETS = ("float", "local")
#: ``range_method="search"``: candidate clips as multiples of the MSE-optimal clip ...
SEARCH_MSE_FACTORS = (0.6, 0.7, 0.8, 0.9, 1.1, 1.25, 1.5)
#: ... and as percentiles of ``|x|`` (min/max, ``max|x|``, is always a candidate too).
SEARCH_PERCENTILES = (99.99, 99.999)
#: Default percentile of ``|x|`` for ``range_method="percentile"``.
DEFAULT_PERCENTILE = 99.99
#: The MSE search evaluates its candidate clips on at most this many values (a fixed-seed
#: sample); the winner is then checked against min/max on all values.
MSE_SEARCH_SAMPLES = 1 << 20


class CalibrationError(ValueError):
    """Calibration cannot go on (NaN activation, LayerNorm overflow transformers would assert on, ...)."""


def quant_act_bits(name: str) -> int:
    """Output width of a QuantAct from its module name (modeling_ibert.py / quant_modules.py)."""
    if name.endswith(("embeddings_act1", "embeddings_act2", "softmax.act")):
        return EMBEDDING_ACT_BITS if "embeddings_act" in name else SOFTMAX_ACT_BITS
    if name.endswith("ln_input_act"):
        return LN_INPUT_BITS
    if name.endswith("LayerNorm.activation"):
        return 32  # ln_output_bit; never called
    return ACT_BITS


# ---------------------------------------------------------------------------------------
@dataclass
class RangeTracker:
    """QuantAct ranges (float32 (1,) arrays) and LayerNorm shifts, updated as transformers does."""

    momentum: float = DEFAULT_MOMENTUM
    x_min: Dict[str, np.ndarray] = field(default_factory=dict)
    x_max: Dict[str, np.ndarray] = field(default_factory=dict)
    shifts: Dict[str, int] = field(default_factory=dict)
    updates: Dict[str, int] = field(default_factory=dict)

    def update(self, name: str, x_act) -> None:
        """One train-mode range update from the float32 values ``x_act`` (see module docstring)."""
        x_act = np.asarray(x_act)
        lo, hi = F32(np.min(x_act)), F32(np.max(x_act))
        if np.isnan(lo) or np.isnan(hi):
            raise CalibrationError(f"{name}: NaN in the activation (transformers asserts here)")
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CalibrationError(f"{name}: infinite activation value; the range would be unusable")
        cur_min = self.x_min.get(name, UNCALIBRATED_MIN_F32)
        cur_max = self.x_max.get(name, UNCALIBRATED_MAX_F32)
        if float(cur_min.min()) > -INIT_THRESHOLD and float(cur_max.max()) < INIT_THRESHOLD:
            new_min, new_max = cur_min + lo, cur_max + hi
        elif self.momentum == -1:
            new_min, new_max = np.minimum(cur_min, lo), np.maximum(cur_max, hi)
        else:
            m, one_minus_m = F32(self.momentum), F32(1 - self.momentum)
            new_min = cur_min * m + lo * one_minus_m
            new_max = cur_max * m + hi * one_minus_m
        self.x_min[name] = np.asarray(new_min, dtype=F32).reshape(1)
        self.x_max[name] = np.asarray(new_max, dtype=F32).reshape(1)
        self.updates[name] = self.updates.get(name, 0) + 1

    def scale(self, name: str, bits: int) -> np.ndarray:
        """``max(|x_min|, |x_max|) / (2^(bits-1) - 1)`` (float32, (1,))."""
        return symmetric_scale_f32(bits, self.x_min[name], self.x_max[name])

    def observe(self, name: str, x_act, bits: int) -> np.ndarray:
        """Update the range from ``x_act``, then return the (updated) output scale."""
        self.update(name, x_act)
        return self.scale(name, bits)


# ---------------------------------------------------------------------------------------
def _new_shift_exact(var_unshifted_max: int) -> int:
    """``ceil(log2(sqrt(v / 2^32)))`` for an exact integer ``v``: the smallest ``k`` with ``4^(k+16) >= v``."""
    v = int(var_unshifted_max)
    n = 0
    while 4**n < v:
        n += 1
    return n - 16


def layernorm_train_shift(dp: Datapath, x: QTensor, shift: int, name: str = "IntLayerNorm") -> int:
    """IntLayerNorm's train-mode overflow guard: the (possibly raised) ``shift`` for input ``x``.

    Same steps as :func:`ibert_ref.kernels.int_layernorm` up to the variance:
    ``var = sum(floor((x - rne(mean x)) / 2^shift)^2)``. If ``max(var) >= 2^32``:
    ``shift = max(shift, max_rows ceil(log2(sqrt(sum(y^2) / 2^32))))`` (float32 in the
    transformers datapath, exact integers otherwise); if the variance still reaches 2^32 + 0.1,
    raise (transformers asserts).
    """
    x_int = dp.recover(x)
    y = x_int - dp.round_mean_last(x_int)

    def variance(k):
        y_shifted = dp.floor_div_pow2(y, k)
        return dp.sum_last(y_shifted * y_shifted)

    var = variance(shift)
    if float(np.max(var)) < 2.0**LN_MAX_BIT:
        return shift
    if np.issubdtype(np.asarray(y).dtype, np.integer):
        var_full = np.sum(y * y, axis=-1)  # |y| < 2^22 (22-bit input), so this fits int64
        new = _new_shift_exact(int(np.max(var_full)))
    else:
        var_full = dp.sum_last(y * y)
        with np.errstate(divide="ignore"):
            new = int(np.max(np.ceil(np.log2(np.sqrt(var_full / F32(2.0**LN_MAX_BIT))))))
    shift = max(int(shift), new)
    if float(np.max(variance(shift))) >= 2.0**LN_MAX_BIT + 0.1:
        raise CalibrationError(f"{name}: variance still >= 2^32 after raising shift to {shift}")
    return shift


# ---------------------------------------------------------------------------------------
# Range selection from a whole calibration set (range_method != "ema")
def fake_quantize(x, clip: float, bits: int) -> np.ndarray:
    """``s * clamp(rne(x / s), -2^(b-1), 2^(b-1) - 1)`` with ``s = symmetric_scale_f32(bits, -clip, clip)``.

    What a ``bits``-wide QuantAct with range magnitude ``clip`` makes of the real values ``x``
    (float64 result; ``rne`` = round half to even, QuantAct's FixedPointMul clamp).
    """
    scale = float(symmetric_scale_f32(bits, F32(-clip), F32(clip)))
    q = np.clip(np.rint(np.asarray(x, dtype=np.float64) / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return q * scale


def quantization_mse(x, clip: float, bits: int) -> float:
    """Mean squared error ``mean((x - fake_quantize(x, clip, bits))^2)`` (float64)."""
    x64 = np.asarray(x, dtype=np.float64)
    return float(np.mean((x64 - fake_quantize(x64, clip, bits)) ** 2))


def _as_clip_f32(c: float) -> float:
    return float(F32(c))


def percentile_clip(x, percentile: float = DEFAULT_PERCENTILE) -> float:
    """``c`` = the ``percentile``-th percentile of ``|x|`` (linear interpolation), as a float32 value."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    return _as_clip_f32(np.percentile(np.abs(np.asarray(x, dtype=np.float64)), percentile))


def mse_optimal_clip(x, bits: int, samples: int = MSE_SEARCH_SAMPLES, seed: int = 0) -> float:
    """The clip ``c`` in ``(0, max|x|]`` minimising :func:`quantization_mse` of ``x`` (float32 value).

    Search: 97 geometric candidates ``max|x| * 2^(-8k/96)``, ``k = 0..96`` (ratio 1.06), then
    25 linear candidates across the two neighbours of the best one. Candidates are scored on
    ``x`` itself, or on a fixed-seed sample of ``samples`` values when ``x`` is larger; the
    winner replaces ``max|x|`` only if its MSE on all of ``x`` is not larger, so the result is
    never worse than min/max on ``x``.
    """
    x64 = np.asarray(x, dtype=np.float64).reshape(-1)
    if x64.size == 0:
        raise ValueError("no values to choose a clip from")
    amax = _as_clip_f32(np.max(np.abs(x64)))
    if amax == 0.0:
        return amax
    sample = x64
    if x64.size > samples:
        sample = np.random.default_rng(seed).choice(x64, size=samples, replace=False)

    def best_of(cands):
        cands = sorted({_as_clip_f32(c) for c in cands if c > 0})
        errs = [quantization_mse(sample, c, bits) for c in cands]
        k = int(np.argmin(errs))
        return cands, k

    coarse = amax * np.exp2(-8.0 * np.arange(97) / 96)
    cands, k = best_of(coarse)
    lo, hi = cands[max(k - 1, 0)], cands[min(k + 1, len(cands) - 1)]
    cands, k = best_of(np.concatenate([np.linspace(lo, hi, 25), [cands[k]]]))
    best = cands[k]
    if best != amax and quantization_mse(x64, best, bits) > quantization_mse(x64, amax, bits):
        return amax
    return best


@dataclass
class ClipChoice:
    """One QuantAct's range choice: observed ``(lo, hi)``, clip ``c`` and the quantization MSE of
    the observed values with ``c`` and with min/max (``c = max|x|``), over ``count`` values.

    ``range_method="search"`` also fills ``mse_clip`` (the ``"mse"`` method's clip on the same
    values), ``objective`` and ``objective_mse`` (the search objective with ``clip`` and with
    ``mse_clip``; ``objective <= objective_mse``) and ``candidates`` (how many clips were scored).
    """

    lo: float
    hi: float
    clip: float
    mse: float
    mse_minmax: float
    count: int
    mse_clip: Optional[float] = None
    objective: Optional[float] = None
    objective_mse: Optional[float] = None
    candidates: int = 0


def select_range(x, bits: int, method: str, percentile: float = DEFAULT_PERCENTILE):
    """``((x_min, x_max) float32, ClipChoice)`` for the values ``x`` with ``method``
    (``"minmax"``, ``"percentile"`` or ``"mse"``); ``max(|x_min|, |x_max|)`` is the clip."""
    x64 = np.asarray(x, dtype=np.float64).reshape(-1)
    if x64.size == 0:
        raise CalibrationError("no real-token values to choose a range from")
    if not np.isfinite(x64).all():
        raise CalibrationError("NaN or infinite activation value; cannot choose a range")
    lo, hi = _as_clip_f32(x64.min()), _as_clip_f32(x64.max())
    amax = max(abs(lo), abs(hi))
    if method == "minmax":
        c = amax
    elif method == "percentile":
        c = min(percentile_clip(x64, percentile), amax)
    elif method == "mse":
        c = mse_optimal_clip(x64, bits)
    elif method == "search":
        raise ValueError("range method 'search' scores clips through the model; use Calibrator, not select_range")
    else:
        raise ValueError(f"unknown range method {method!r}; choose from minmax, percentile, mse")
    c = max(c, 1e-8)  # symmetric_scale_f32 clamps the magnitude there anyway
    choice = ClipChoice(lo=lo, hi=hi, clip=c, mse=quantization_mse(x64, c, bits),
                        mse_minmax=quantization_mse(x64, amax, bits), count=int(x64.size))
    return range_for_clip(lo, hi, c), choice


def range_for_clip(lo: float, hi: float, clip: float):
    """The written range ``(max(lo, -c), min(hi, c))`` as float32 (1,) arrays, for a clip
    ``0 < c <= max(|lo|, |hi|)``: one end has magnitude ``c``, so the QuantAct scale is ``c / (2^(b-1) - 1)``."""
    c = max(float(clip), 1e-8)
    if c > max(abs(lo), abs(hi)):
        raise ValueError(f"clip {c} exceeds max(|x_min|, |x_max|) = {max(abs(lo), abs(hi))}")
    return np.array([max(lo, -c)], dtype=F32), np.array([min(hi, c)], dtype=F32)


def search_candidates(x, mse_clip: float) -> List[float]:
    """Candidate clips of ``range_method="search"`` for the values ``x``, the MSE-optimal clip first.

    ``mse_clip``, then ``mse_clip * f`` for ``f`` in :data:`SEARCH_MSE_FACTORS`, the
    :data:`SEARCH_PERCENTILES` of ``|x|`` and ``max|x|`` (min/max); every candidate is capped at
    ``max|x|``, rounded to float32 and listed once.
    """
    x64 = np.abs(np.asarray(x, dtype=np.float64).reshape(-1))
    amax = _as_clip_f32(x64.max())
    raw = [mse_clip] + [mse_clip * f for f in SEARCH_MSE_FACTORS]
    raw += [percentile_clip(x64, p) for p in SEARCH_PERCENTILES] + [amax]
    out: List[float] = []
    for c in raw:
        c = max(min(_as_clip_f32(c), amax), 1e-8)
        if c not in out:
            out.append(c)
    return out


# ---------------------------------------------------------------------------------------
# The float model (quant_mode off), the reference of range_method="search"
SQRT_HALF = 0.7071067811865476


def erf_f32(x) -> np.ndarray:
    """``erf(x)`` in float32 (Abramowitz & Stegun 7.1.26: ``1 - t(a1 + t(a2 + ...)) exp(-x^2)``,
    ``t = 1 / (1 + p|x|)``, odd extension; absolute error < 1.5e-7 plus float32 rounding)."""
    x = np.asarray(x, dtype=F32)
    a = np.abs(x)
    t = F32(0.3275911) * a
    t += F32(1)
    np.reciprocal(t, out=t)
    poly = t * F32(1.061405429)
    for coef in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += F32(coef)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a
    np.subtract(F32(1), poly, out=poly)
    return np.copysign(poly, x)


def gelu_f32(x) -> np.ndarray:
    """Float GELU ``x / 2 * (1 + erf(x / sqrt(2)))`` (BERT's ``hidden_act="gelu"``)."""
    e = erf_f32(x * F32(SQRT_HALF))
    e += F32(1)
    e *= x
    e *= F32(0.5)
    return e


def layer_norm_f32(x, w, b, eps: float) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * w + b`` over the last axis (biased variance), float32."""
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(axis=-1, keepdims=True)
    return d / np.sqrt(var + F32(eps)) * w + b


class FloatModel:
    """The float I-BERT (transformers' ``quant_mode=False``, i.e. the float BERT/RoBERTa it came
    from) in float32 NumPy, written per QuantAct point so a forward can resume from any of them.

    Activations are **packed**: ``(tokens, hidden)`` holding the real tokens (``mask`` 1) of a
    ``(batch, seq)`` batch in row-major order; only attention unpacks them (padding keys get a
    ``-1e9`` bias). ``get(key)`` returns a float32 tensor (no prefix). Dropout is off.
    """

    def __init__(self, get, config: dict):
        self.get = get
        self.heads = config["num_attention_heads"]
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.layers = config["num_hidden_layers"]
        self._w: Dict[str, np.ndarray] = {}

    def w(self, key: str) -> np.ndarray:
        if key not in self._w:
            self._w[key] = self.get(key)
        return self._w[key]

    def linear(self, name: str, x) -> np.ndarray:
        """``x W^T + b`` for packed ``x`` (one 2-D GEMM)."""
        return np.asarray(x, dtype=F32) @ self.w(name + ".weight").T + self.w(name + ".bias")

    def embeddings(self, ids, tt, pos, mask) -> np.ndarray:
        """``LayerNorm(word[ids] + token_type[tt] + position[pos])`` at the real tokens (packed)."""
        e, real = "embeddings.", np.asarray(mask) > 0
        x = (self.w(e + "word_embeddings.weight")[ids[real]] + self.w(e + "token_type_embeddings.weight")[tt[real]]
             + self.w(e + "position_embeddings.weight")[pos[real]])
        return layer_norm_f32(x, self.w(e + "LayerNorm.weight"), self.w(e + "LayerNorm.bias"), self.eps)

    def attention(self, q, k, v, mask) -> np.ndarray:
        """``softmax(q k^T / sqrt(d) + bias) v`` per head, heads joined again (packed in and out)."""
        real = np.asarray(mask) > 0
        b, n = real.shape
        hidden = q.shape[-1]
        d = hidden // self.heads

        def split(t):
            full = np.zeros((b, n, hidden), dtype=F32)
            full[real] = t
            return full.reshape(b, n, self.heads, d).transpose(0, 2, 1, 3)

        bias = np.where(real[:, None, None, :], F32(0), F32(-1e9)).astype(F32)
        scores = split(q) @ split(k).transpose(0, 1, 3, 2) / F32(math.sqrt(d)) + bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        return (probs @ split(v)).transpose(0, 2, 1, 3).reshape(b, n, hidden)[real]

    def layer(self, i: int, state: Dict[str, np.ndarray], mask) -> np.ndarray:
        """Encoder layer ``i``'s output from ``state``: ``"input"`` (the layer input) and,
        optionally, the outputs of some of the layer's 8-bit QuantActs (keys of
        :data:`LAYER_SEARCHED_ACTS`), all packed. A QuantAct in ``state`` replaces the float
        value at that point; everything else is computed in float from what precedes it. With
        ``state = {"input": h}`` this is the float layer."""
        p = f"encoder.layer.{i}."
        h = state["input"]

        def at(act, compute):
            return state[act] if act in state else compute()

        q = at("attention.self.query_activation", lambda: self.linear(p + "attention.self.query", h))
        k = at("attention.self.key_activation", lambda: self.linear(p + "attention.self.key", h))
        v = at("attention.self.value_activation", lambda: self.linear(p + "attention.self.value", h))
        ctx = at("attention.self.output_activation", lambda: self.attention(q, k, v, mask))
        a = at("attention.output.output_activation", lambda: layer_norm_f32(
            self.linear(p + "attention.output.dense", ctx) + h, self.w(p + "attention.output.LayerNorm.weight"),
            self.w(p + "attention.output.LayerNorm.bias"), self.eps))
        a = at("pre_intermediate_act", lambda: a)
        f = at("intermediate.output_activation", lambda: gelu_f32(self.linear(p + "intermediate.dense", a)))
        f = at("pre_output_act", lambda: f)
        return at("output.output_activation", lambda: layer_norm_f32(
            self.linear(p + "output.dense", f) + a, self.w(p + "output.LayerNorm.weight"),
            self.w(p + "output.LayerNorm.bias"), self.eps))

    def forward(self, ids, tt, pos, mask) -> List[np.ndarray]:
        """Every encoder layer's float output at the real tokens (a list of packed float32 arrays)."""
        h = self.embeddings(ids, tt, pos, mask)
        outs = []
        for i in range(self.layers):
            h = self.layer(i, {"input": h}, mask)
            outs.append(h)
        return outs


# ---------------------------------------------------------------------------------------
class Calibrator:
    """Runs train-mode forward passes over batches and keeps the ranges (see module docstring).

    ``checkpoint``: a loaded :class:`~ibert_ref.loading.Checkpoint` (float weights; ranges are
    read from it only when ``reset=False``). ``range_method``: ``"ema"`` (transformers'
    semantics, any number of :meth:`step` calls) or ``"minmax"``/``"percentile"``/``"mse"``
    /``"search"`` (see the module docstring: exactly one :meth:`step`, on the whole calibration
    set as one padded batch; ``momentum`` is not used). After a search step, ``clip_report``
    maps each 8-bit QuantAct to its :class:`ClipChoice`. ``on_observe(name, values)``, when
    set, is called with the real-token values each searched QuantAct observed;
    ``on_search(name, clips, objectives)`` (``"search"`` only) with the candidates and their
    scores; ``on_output(name, qtensor)`` with the output of every QuantAct call of the pass, in
    order (``embeddings_act1`` twice: its second call is the one a model trace records) (for
    tests and analysis).

    ``range_method="search"`` (output-aware clipping) chooses each 8-bit QuantAct's clip, in
    forward order, among :func:`search_candidates` (the ``"mse"`` clip first). Each candidate
    range quantizes the QuantAct's input with the integer kernel of the datapath; the result
    goes on through the **float** model (:class:`FloatModel`, the other 8-bit QuantActs of the
    layer not yet chosen stay float, the ones already chosen keep their quantized outputs) up to
    the output ``y`` of the encoder layer that consumes it: its own layer, or the next one for
    ``embeddings.output_activation`` / ``output.output_activation`` (the last layer's output
    activation is scored on its own output). The score is ``mean((y - t)^2)`` over the real
    tokens of the calibration batch and the hidden units, and the lowest score wins (ties: the
    earlier candidate, so the ``"mse"`` clip keeps its place). ``search_target`` sets ``t``:

    * ``"float"`` (default): that layer's output in the float model run on the same calibration
      batch. The score is the whole quantized model's error at that layer so far, so a clip can
      also offset upstream error.
    * ``"local"``: the same continuation from the QuantAct's unquantized input ``x``: only the
      error this one QuantAct adds, propagated to the layer output.

    Only the calibration batch is used; the 16/22-bit QuantActs and LayerNorm shifts are set as
    in the other search methods.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        datapath: str = "transformers",
        gemm: str = "numpy",
        momentum: float = DEFAULT_MOMENTUM,
        reset: bool = True,
        range_method: str = "ema",
        percentile: float = DEFAULT_PERCENTILE,
        progress: bool = False,
        search_target: str = "float",
    ):
        if range_method not in RANGE_METHODS:
            raise ValueError(f"range_method must be one of {', '.join(RANGE_METHODS)}, got {range_method!r}")
        if range_method == "percentile" and not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        if range_method != "ema" and not reset:
            raise ValueError(f"range_method={range_method!r} chooses every range afresh; it cannot continue (reset=False)")
        if search_target not in SEARCH_TARGETS:
            raise ValueError(f"search_target must be one of {', '.join(SEARCH_TARGETS)}, got {search_target!r}")
        if search_target != "float" and range_method != "search":
            raise ValueError(f"search_target={search_target!r} applies to range_method='search' only")
        self.range_method = range_method
        self.search_target = search_target
        self.percentile = float(percentile)
        self.show_progress = progress
        self.clip_report: Dict[str, ClipChoice] = {}
        self.on_observe = None
        self.on_search = None
        self.on_output = None
        self._real_tokens: Optional[np.ndarray] = None
        self._float: Optional[FloatModel] = None  # range_method="search": the reference
        self._float_targets: List[np.ndarray] = []
        self._layer_state: Dict[str, np.ndarray] = {}
        self._search_bar = None
        self.checkpoint = checkpoint
        self.config = dict(checkpoint.config)
        check_config({**self.config, "quant_mode": True})
        if dequantized_ops(self.config):
            raise CalibrationError(
                f"force_dequant={self.config.get('force_dequant')!r}: calibration implements the all-integer "
                "model only (force_dequant='none')"
            )
        self.dp = make_datapath(datapath, gemm=gemm)
        # search methods: the 16/22-bit QuantActs keep running min/max over their one batch
        self.tracker = RangeTracker(momentum=momentum if range_method == "ema" else -1)
        n = self.config["num_hidden_layers"]
        for name in layernorm_names(n):
            self.tracker.shifts[name] = 0
        if not reset:
            for name in quant_act_names(n):
                if checkpoint.has(name + ".x_min"):
                    self.tracker.x_min[name] = self.get(name + ".x_min").reshape(1)
                    self.tracker.x_max[name] = self.get(name + ".x_max").reshape(1)
            for name in layernorm_names(n):
                if checkpoint.has(name + ".shift"):
                    self.tracker.shifts[name] = int(self.get(name + ".shift").reshape(-1)[0])
        e = "embeddings."
        self.word = embedding_params(self.dp, self.get(e + "word_embeddings.weight"))
        self.token_type = embedding_params(self.dp, self.get(e + "token_type_embeddings.weight"))
        self.position = embedding_params(self.dp, self.get(e + "position_embeddings.weight"))
        self.batches = 0
        self.tokens = 0

    def get(self, key: str) -> np.ndarray:
        return self.checkpoint.tensor(key, shape=expected_shape(key, self.config)).astype(F32)

    # -- inputs ------------------------------------------------------------------------
    def _inputs(self, input_ids, attention_mask, token_type_ids):
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.size == 0:
            raise ValueError(f"input_ids must be a non-empty (batch, seq) array, got shape {ids.shape}")
        vocab = self.config["vocab_size"]
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"input_ids outside the vocabulary [0, {vocab})")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must be 0/1 with the shape of input_ids")
        if not mask.any(axis=1).all():
            raise ValueError("an attention_mask row masks every token")
        tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
        pad = self.config.get("pad_token_id", 1)
        pos = roberta_position_ids(ids, pad)
        maxpos = self.config["max_position_embeddings"]
        if pos.max() >= maxpos:
            raise ValueError(f"sequence too long: at most {maxpos - pad - 1} tokens")
        return ids, mask, tt, pos

    # -- the train-mode forward --------------------------------------------------------
    def step(self, input_ids, attention_mask=None, token_type_ids=None) -> None:
        """One train-mode forward over a batch: updates every live QuantAct range and LN shift."""
        ids, mask, tt, pos = self._inputs(input_ids, attention_mask, token_type_ids)
        dp = self.dp
        searching = self.range_method != "ema"
        if searching and self.batches:
            raise CalibrationError(
                f"range_method={self.range_method!r} calibrates on exactly one batch (the whole calibration set, "
                "see join_batches); step() was already called"
            )
        self._real_tokens = mask.astype(bool)
        if searching:
            from .progress import Progress

            per_layer = len(LAYER_SEARCHED_ACTS)
            self._search_bar = Progress(1 + per_layer * self.config["num_hidden_layers"],
                                        desc=f"range search ({self.range_method})", unit="op",
                                        enabled=self.show_progress)
        if self.range_method == "search":
            self._float = FloatModel(self.get, self.config)
            self._float_targets = self._float.forward(ids, tt, pos, mask)
        try:
            h = self._embeddings(ids, tt, pos)
            emb_scale = h.scale
            for i in range(self.config["num_hidden_layers"]):
                h = self._layer(i, dp.layer_input(h, emb_scale), mask)
        finally:
            if self._search_bar is not None:
                self._search_bar.close()
                self._search_bar = None
            self._float_targets, self._layer_state = [], {}
        self.batches += 1
        self.tokens += int(mask.sum())

    def _observe(self, name, x_act, bits=None):
        bits = quant_act_bits(name) if bits is None else bits
        if self.range_method == "ema" or bits != ACT_BITS:
            return self.tracker.observe(name, x_act, bits)
        values = self._real_values(name, x_act)
        if self.on_observe is not None:
            self.on_observe(name, values)
        (x_min, x_max), choice = select_range(values, bits, self.range_method, self.percentile)
        self.tracker.x_min[name], self.tracker.x_max[name] = x_min, x_max
        self.tracker.updates[name] = self.tracker.updates.get(name, 0) + 1
        self.clip_report[name] = choice
        if self._search_bar is not None:
            self._search_bar.update()
        return self.tracker.scale(name, bits)

    def _real_values(self, name, x_act) -> np.ndarray:
        """The values of ``x_act`` (batch, seq, ...) at real tokens (attention mask 1), flattened."""
        x = np.asarray(x_act)
        real = self._real_tokens
        if real is None or x.shape[:2] != real.shape:
            raise CalibrationError(f"{name}: activation shape {x.shape} does not start with (batch, seq)")
        return x[real].reshape(-1)

    def _requant(self, name, x: QTensor, identity: Optional[QTensor] = None) -> QTensor:
        """A QuantAct in train mode: observe ``identity + x``, then requantize with the new range."""
        dp = self.dp
        x_act = dp.dequantize(x) if identity is None else dp.dequantize(identity) + dp.dequantize(x)
        bits = quant_act_bits(name)
        if self.range_method == "search" and bits == ACT_BITS and identity is None:
            out = K.requantize(dp, x, requant_params(bits, self._search(name, x, x_act), x.scale))
            short = self._layer_act(name)[1]
            if short is not None:
                self._layer_state[short] = self._packed(dp.dequantize(out))
            return self._emit_output(name, out)
        scale = self._observe(name, x_act, bits)
        params = requant_params(bits, scale, x.scale, None if identity is None else identity.scale)
        return self._emit_output(name, K.requantize(dp, x, params, identity=identity))

    # -- range_method="search" ---------------------------------------------------------
    def _layer_act(self, name: str):
        """``(layer index, name inside the layer)``; ``(-1, None)`` for ``embeddings.output_activation``."""
        if name.startswith("embeddings."):
            return -1, None
        rest = name[len("encoder.layer."):]
        i, short = rest.split(".", 1)
        return int(i), short

    def _continue(self, name: str, value) -> np.ndarray:
        """The float continuation of the QuantAct output ``value`` to the output of the encoder
        layer :meth:`_target_layer` (see the class docstring)."""
        i, short = self._layer_act(name)
        if short is None or short == "output.output_activation":
            if i + 1 == self.config["num_hidden_layers"]:
                return value  # the last layer's output activation: scored on its own output
            return self._float.layer(i + 1, {"input": value}, self._real_tokens)
        return self._float.layer(i, {**self._layer_state, short: value}, self._real_tokens)

    def _packed(self, x) -> np.ndarray:
        """``x`` (batch, seq, hidden) at the real tokens: (tokens, hidden) float32."""
        return np.asarray(x, dtype=F32)[self._real_tokens]

    @staticmethod
    def _score(y, target) -> float:
        """``mean((y - target)^2)`` over the real tokens and hidden units (float64)."""
        diff = np.asarray(y, dtype=np.float64) - target
        return float(np.mean(diff * diff))

    def _search(self, name: str, x: QTensor, x_act) -> np.ndarray:
        """Choose the clip of the 8-bit QuantAct ``name`` (input ``x``; its float value
        ``x_act``) by its downstream error; record it and return the output scale."""
        dp, bits = self.dp, ACT_BITS
        values = self._real_values(name, x_act)
        if self.on_observe is not None:
            self.on_observe(name, values)
        _, base = select_range(values, bits, "mse")
        clips = search_candidates(values, base.clip)
        if self.search_target == "local":
            target = self._continue(name, self._packed(x_act))
        else:
            target = self._float_targets[self._target_layer(name)]
        target = np.asarray(target, dtype=np.float64)
        scores = []
        for c in clips:
            x_min, x_max = range_for_clip(base.lo, base.hi, c)
            out = K.requantize(dp, x, requant_params(bits, symmetric_scale_f32(bits, x_min, x_max), x.scale))
            scores.append(self._score(self._continue(name, self._packed(dp.dequantize(out))), target))
        if not np.isfinite(scores).all():
            raise CalibrationError(f"{name}: non-finite search objective {scores}")
        k = int(np.argmin(scores))  # first minimum: the mse clip (index 0) wins ties
        if self.on_search is not None:
            self.on_search(name, list(clips), list(scores))
        c = clips[k]
        self.tracker.x_min[name], self.tracker.x_max[name] = range_for_clip(base.lo, base.hi, c)
        self.tracker.updates[name] = self.tracker.updates.get(name, 0) + 1
        amax = max(abs(base.lo), abs(base.hi))
        self.clip_report[name] = ClipChoice(
            lo=base.lo, hi=base.hi, clip=c, mse=quantization_mse(values, c, bits),
            mse_minmax=quantization_mse(values, amax, bits), count=base.count, mse_clip=base.clip,
            objective=scores[k], objective_mse=scores[0], candidates=len(clips))
        if self._search_bar is not None:
            self._search_bar.update()
        return self.tracker.scale(name, bits)

    def _target_layer(self, name: str) -> int:
        """Index of the encoder layer whose output scores the QuantAct ``name``."""
        i, short = self._layer_act(name)
        if short is None or short == "output.output_activation":
            return min(i + 1, self.config["num_hidden_layers"] - 1)
        return i

    def _layernorm(self, name, x: QTensor) -> QTensor:
        shift = layernorm_train_shift(self.dp, x, self.tracker.shifts.get(name, 0), name)
        self.tracker.shifts[name] = shift
        params = layernorm_params(
            self.dp, self.get(name + ".weight"), self.get(name + ".bias"), np.array([shift], dtype=F32)
        )
        return K.int_layernorm(self.dp, x, params)

    def _linear(self, name, x: QTensor) -> QTensor:
        params = linear_params(self.dp, self.get(name + ".weight"), self.get(name + ".bias"), x.scale)
        return K.quant_linear(self.dp, x, params)

    def _embeddings(self, ids, tt, pos) -> QTensor:
        dp, e = self.dp, "embeddings."
        word = K.quant_embedding(dp, self.word, ids)
        token_type = K.quant_embedding(dp, self.token_type, tt)
        position = K.quant_embedding(dp, self.position, pos)
        if self.range_method == "ema":
            # transformers' train mode: the first call quantizes with the range of its own sum
            emb = self._requant(e + "embeddings_act1", word, identity=token_type)
            emb = self._requant(e + "embeddings_act1", emb, identity=position)  # the same module again
        else:
            emb = self._embedding_sums(e + "embeddings_act1", word, token_type, position)
        emb = self._layernorm(e + "LayerNorm", emb)
        return self._requant(e + "output_activation", emb)

    def _embedding_sums(self, name, word: QTensor, token_type: QTensor, position: QTensor) -> QTensor:
        """``embeddings_act1``'s two calls with one range (whole-set methods).

        The range is chosen first, from the float32 sums of both calls computed from the
        dequantized tables (``q * scale``): ``x1 = token_type + word`` and ``x2 = position + x1``
        (unquantized; the second call's actual input is ``position + s * q1``). It is running
        min/max over the two, as for the other 16-bit QuantActs:
        ``x_min = min(-1e-5 + min x1, min x2)``, ``x_max = max(1e-5 + max x1, max x2)``. Both
        calls then requantize (FixedPointMul, round half to even, clamp to 16 bits) to the one
        scale ``s = max(|x_min|, |x_max|) / (2^15 - 1)``: ``q1`` from ``word + token_type``,
        then ``q2`` from ``s * q1 + position``. These are the integers an eval forward of the
        written checkpoint computes (its first call uses the final range too); transformers'
        train mode (``ema``) instead quantizes the first call with the range of ``x1`` alone.
        """
        dp, bits = self.dp, EMBEDDING_ACT_BITS
        sum1_f32 = dp.dequantize(token_type) + dp.dequantize(word)
        sum2_f32 = dp.dequantize(position) + sum1_f32
        self.tracker.update(name, sum1_f32)
        self.tracker.update(name, sum2_f32)
        scale_f32 = self.tracker.scale(name, bits)
        params1 = requant_params(bits, scale_f32, word.scale, token_type.scale)
        emb = self._emit_output(name, K.requantize(dp, word, params1, identity=token_type))
        params2 = requant_params(bits, scale_f32, emb.scale, position.scale)
        emb = K.requantize(dp, emb, params2, identity=position)
        return self._emit_output(name, emb)

    def _emit_output(self, name, out: QTensor) -> QTensor:
        """Hand a QuantAct call's output to ``on_output`` (when set) and return it."""
        if self.on_output is not None:
            self.on_output(name, out)
        return out

    def _softmax(self, pre, scores, score_scale) -> QTensor:
        """IntSoftmax in train mode: the 16-bit QuantAct's range comes from ``exp_int``."""
        dp = self.dp
        placeholder = softmax_params(dp, score_scale, np.ones(1, dtype=F32))
        z, z_q = exp_polynomial(dp, scores, placeholder)
        exp_int_f32 = exp_integers_f32(dp, z, z_q)
        act_scale = self._observe(pre + "softmax.act", exp_int_f32, SOFTMAX_ACT_BITS)
        p = softmax_params(dp, score_scale, act_scale)
        e16 = dp.exp_requantize(z, z_q, p.exp_scale, p.dy_tf, p.dy_exact, p.act_bits)
        return K.softmax_normalize(dp, self._emit_output(pre + "softmax.act", dp.emit(e16, p.act_scale)), p)

    def _layer(self, i: int, h: QTensor, mask) -> QTensor:
        dp = self.dp
        pre = f"encoder.layer.{i}."
        sa = pre + "attention.self."
        if self.range_method == "search":
            self._layer_state = {"input": self._packed(dp.dequantize(h))}
        num_heads = self.config["num_attention_heads"]
        head_dim = self.config["hidden_size"] // num_heads

        q = self._requant(sa + "query_activation", self._linear(sa + "query", h))
        k = self._requant(sa + "key_activation", self._linear(sa + "key", h))
        v = self._requant(sa + "value_activation", self._linear(sa + "value", h))
        score_scale = (q.scale * k.scale) / F32(math.sqrt(head_dim))
        scores = K.attention_scores(dp, q, k, num_heads, mask, score_scale)
        probs = self._softmax(sa, scores, score_scale)
        context = dp.attention_context(probs, v, num_heads, F32(1.0 / 256.0) * v.scale)
        context = self._requant(sa + "output_activation", context)

        ao = pre + "attention.output."
        a = self._requant(ao + "ln_input_act", self._linear(ao + "dense", context), identity=h)
        a = self._requant(ao + "output_activation", self._layernorm(ao + "LayerNorm", a))
        a = self._requant(pre + "pre_intermediate_act", a)

        f = self._linear(pre + "intermediate.dense", a)
        f = K.int_gelu(dp, f, gelu_params(dp, f.scale))
        f = self._requant(pre + "intermediate.output_activation", f)
        f = self._requant(pre + "pre_output_act", f)

        o = pre + "output."
        y = self._requant(o + "ln_input_act", self._linear(o + "dense", f), identity=a)
        y = self._layernorm(o + "LayerNorm", y)
        return self._requant(o + "output_activation", y)

    # -- results -----------------------------------------------------------------------
    def ranges(self) -> Dict[str, Tuple[float, float]]:
        """``{QuantAct name: (x_min, x_max)}`` for every range observed so far."""
        return {n: (float(self.tracker.x_min[n][0]), float(self.tracker.x_max[n][0])) for n in self.tracker.x_min}

    def buffers(self) -> Dict[str, np.ndarray]:
        """Every quantization buffer of the calibrated model (keys without prefix).

        ``x_min``/``x_max``/``act_scaling_factor`` of the live QuantActs, ``shift`` of every
        IntLayerNorm, and the derived QuantLinear/QuantEmbedding buffers (``weight_integer``,
        ``fc_scaling_factor``, ``bias_integer``, ``weight_scaling_factor``) as an eval forward of
        transformers leaves them (bias quantized with the stale layer-input scale). Dead QuantActs
        keep transformers' initial values.
        """
        n = self.config["num_hidden_layers"]
        missing = [a for a in quant_act_names(n) if not is_dead_quant_act(a) and a not in self.tracker.x_min]
        if missing:
            raise CalibrationError(f"no calibration batch has been run (first unset range: {missing[0]})")
        out = uncalibrated_quant_buffers(self.config)
        for name in self.tracker.x_min:
            out[name + ".x_min"] = self.tracker.x_min[name].copy()
            out[name + ".x_max"] = self.tracker.x_max[name].copy()
            out[name + ".act_scaling_factor"] = self.tracker.scale(name, quant_act_bits(name))
        for name, shift in self.tracker.shifts.items():
            out[name + ".shift"] = np.array([shift], dtype=F32)
        out.update(self._derived_buffers(out))
        return out

    def _derived_buffers(self, buffers) -> Dict[str, np.ndarray]:
        def get(key):
            return buffers[key] if key in buffers else self.get(key)

        tf = TransformersDatapath()
        cm = compile_model(tf, {**self.config, "quant_mode": True}, get, lambda k: k in buffers or self.checkpoint.has(k))
        out = {}
        emb = cm.embeddings
        for table, params in (("word", emb.word), ("token_type", emb.token_type), ("position", emb.position)):
            out[f"embeddings.{table}_embeddings.weight_integer"] = np.asarray(params.w, dtype=F32)
            out[f"embeddings.{table}_embeddings.weight_scaling_factor"] = np.asarray(params.scale, dtype=F32).reshape(1)
        names = {
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attn_dense": "attention.output.dense",
            "intermediate_dense": "intermediate.dense",
            "output_dense": "output.dense",
        }
        for i, layer in enumerate(cm.layers):
            for attr, mod in names.items():
                p = f"encoder.layer.{i}.{mod}"
                lp = getattr(layer, attr)
                out[p + ".weight_integer"] = np.asarray(lp.w, dtype=F32)
                out[p + ".bias_integer"] = np.asarray(lp.b, dtype=F32)
                out[p + ".fc_scaling_factor"] = weight_scale_per_channel_f32(self.get(p + ".weight"))
        return out


#: The 8-bit QuantActs of one encoder layer, the ones a range search chooses (with the
#: embeddings' ``output_activation``).
LAYER_SEARCHED_ACTS = (
    "attention.self.query_activation",
    "attention.self.key_activation",
    "attention.self.value_activation",
    "attention.self.output_activation",
    "attention.output.output_activation",
    "pre_intermediate_act",
    "intermediate.output_activation",
    "pre_output_act",
    "output.output_activation",
)


# ---------------------------------------------------------------------------------------
def exp_polynomial(dp: Datapath, scores, p: K.SoftmaxParams):
    """Steps 1-3 of :func:`ibert_ref.kernels.int_exp`: ``(poly, z_q)`` before the ``2^(30 - z_q)`` shift."""
    x = scores - scores.max(axis=-1, keepdims=True)
    x = np.maximum(x, p.x0_30)
    z_q = dp.floor_div(x, p.x0_int)
    r = x - p.x0_int * z_q
    return (r + p.b_int) * r + p.c_int, z_q


def exp_integers_f32(dp: Datapath, poly, z_q) -> np.ndarray:
    """``exp_int = max(floor(poly * 2^(30 - z_q)), 0)`` as the float32 values transformers'
    16-bit QuantAct observes (float32 arithmetic in the transformers datapath; the exact integer,
    then rounded to float32, otherwise)."""
    if np.issubdtype(np.asarray(poly).dtype, np.integer):
        exact = np.maximum(poly, 0).astype(np.float64) * np.exp2((30 - z_q).astype(np.float64))
        return exact.astype(F32)
    return np.maximum(np.floor(poly * dp.pow2(F32(30) - z_q)), F32(0))


# ---------------------------------------------------------------------------------------
def read_texts(path) -> List[str]:
    """Non-empty lines of a UTF-8 text file (one calibration text per line)."""
    with open(path, encoding="utf-8") as f:
        texts = [line.strip() for line in f]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{path}: no non-empty lines")
    return texts


def make_batches(tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 128):
    """Tokenize ``texts`` in order into right-padded batches ``[(input_ids, attention_mask), ...]``
    (int64), each sequence truncated to ``max_length`` tokens."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=max_length)
        batches.append((enc["input_ids"], enc["attention_mask"]))
    return batches


def join_batches(batches, pad_token_id: int = 0):
    """Right-pad ``[(input_ids, attention_mask), ...]`` to the longest sequence and stack them
    into one ``(input_ids, attention_mask)`` batch (int64; padding ids ``pad_token_id``, mask 0)."""
    pairs = [(np.atleast_2d(np.asarray(i, dtype=np.int64)), np.atleast_2d(np.asarray(m, dtype=np.int64)))
             for i, m in batches]
    if not pairs:
        raise ValueError("no calibration batches")
    for ids, mask in pairs:
        if ids.shape != mask.shape:
            raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} differ in shape")
    length = max(ids.shape[1] for ids, _ in pairs)
    ids_out = np.concatenate([np.pad(i, ((0, 0), (0, length - i.shape[1])), constant_values=pad_token_id)
                              for i, _ in pairs])
    mask_out = np.concatenate([np.pad(m, ((0, 0), (0, length - m.shape[1]))) for _, m in pairs])
    return ids_out, mask_out


@dataclass
class CalibrationResult:
    """What :func:`calibrate_checkpoint` did: the output folder (or None), the ranges, shifts,
    the number of batches and real tokens seen, the datapath and range method used, and (search
    methods) the :class:`ClipChoice` per searched QuantAct."""

    folder: Optional[str]
    ranges: Dict[str, Tuple[float, float]]
    shifts: Dict[str, int]
    batches: int
    tokens: int
    datapath: str
    range_method: str = "ema"
    clip_report: Dict[str, ClipChoice] = field(repr=False, default_factory=dict)
    tensors: Dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    config: dict = field(repr=False, default_factory=dict)


def _base_prefix(checkpoint: Checkpoint) -> str:
    return "ibert." if "ibert.embeddings.word_embeddings.weight" in checkpoint.tensors else ""


def calibrate_checkpoint(
    model,
    *,
    texts: Optional[Sequence[str]] = None,
    batches: Optional[Iterable] = None,
    out=None,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    datapath: str = "transformers",
    gemm: str = "numpy",
    momentum: float = DEFAULT_MOMENTUM,
    reset: bool = True,
    range_method: str = "ema",
    percentile: float = DEFAULT_PERCENTILE,
    search_target: str = "float",
    progress: bool = True,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
) -> CalibrationResult:
    """Calibrate the I-BERT checkpoint ``model`` (folder or Hub id) and optionally write it to ``out``.

    Give ``texts`` (tokenized with the checkpoint's tokenizer into batches of ``batch_size``,
    truncated to ``max_length`` tokens, default ``min(128, the position limit)``) or ready
    ``batches`` of ``(input_ids, attention_mask)``. ``reset=True`` starts from transformers'
    initial ranges (+-1e-5, shift 0); ``reset=False`` continues the EMA from the checkpoint's.
    ``range_method`` ``"minmax"``/``"percentile"``/``"mse"``/``"search"`` (see the module
    docstring) joins all batches into one padded batch and chooses every 8-bit range on it in
    forward order; ``"search"`` scores candidate clips by the error of the consuming encoder
    layer's output against the float model on that batch (``search_target``, see
    :class:`Calibrator`).

    The written folder holds ``config.json`` (``quant_mode=true``), ``model.safetensors`` (every
    input tensor, with the quantization buffers replaced, keeping an ``ibert.`` prefix if the
    input had one) and the tokenizer files; both :class:`ibert_ref.IBertModel` and transformers'
    ``IBertModel.from_pretrained`` load it.
    """
    from .progress import progress as progress_bar

    ckpt = load_checkpoint(model, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    tokenizer = None
    if batches is None:
        if texts is None:
            raise ValueError("give texts or batches to calibrate on")
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.from_pretrained(
            model, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        cfg = ckpt.config
        limit = cfg["max_position_embeddings"] - cfg.get("pad_token_id", 1) - 1
        batches = make_batches(tokenizer, list(texts), batch_size, min(max_length or 128, limit))
    batches = list(batches)
    if not batches:
        raise ValueError("no calibration batches")

    cal = Calibrator(ckpt, datapath=datapath, gemm=gemm, momentum=momentum, reset=reset,
                     range_method=range_method, percentile=percentile, progress=progress,
                     search_target=search_target)
    if range_method == "ema":
        for ids, mask in progress_bar(batches, desc="calibrate", unit="batch", enabled=progress):
            cal.step(ids, mask)
    else:
        cal.step(*join_batches(batches, ckpt.config.get("pad_token_id", 1)))

    prefix = _base_prefix(ckpt)
    tensors = dict(ckpt.tensors)
    for key, value in cal.buffers().items():
        tensors[prefix + key] = value
    config = dict(ckpt.config)
    config["quant_mode"] = True
    config.setdefault("force_dequant", "none")
    result = CalibrationResult(
        folder=None,
        ranges=cal.ranges(),
        shifts=dict(cal.tracker.shifts),
        batches=cal.batches,
        tokens=cal.tokens,
        datapath=cal.dp.name,
        range_method=range_method,
        clip_report=dict(cal.clip_report),
        tensors=tensors,
        config=config,
    )
    if out is not None:
        write_checkpoint(out, config, tensors)
        copy_tokenizer_files(ckpt.source, out)
        if tokenizer is not None and tokenizer.source and os.path.isdir(tokenizer.source):
            copy_tokenizer_files(tokenizer.source, out)
        result.folder = os.fspath(out)
    return result
