"""Calibration ranges: transformers' QuantAct EMA and IntLayerNorm shift rule, and the whole-set
range choices (min/max, percentile, MSE-optimal clip, output-aware search candidates).

Semantics: see :mod:`ibert_ref.calibrate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..checkpoint_schema import (
    UNCALIBRATED_MAX_F32,
    UNCALIBRATED_MIN_F32,
)
from ..dataflow import quant_act_bits  # noqa: F401 - a QuantAct's width, public here
from ..datapath import Datapath, QTensor
from ..quant import F32, symmetric_scale_f32


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
