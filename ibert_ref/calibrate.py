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
  ``momentum=-1`` keeps running min/max instead. The embeddings' 16-bit QuantAct is called twice
  per forward (word + token type, then + position), so its range moves twice per batch. IntSoftmax's
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

The embeddings' 16-bit QuantAct in the whole-set methods: its range is chosen **once, before its first
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

import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from .calibration.batches import join_batches, make_batches, read_texts
from .calibration.float_model import FloatModel, erf_f32, gelu_f32, layer_norm_f32
from .calibration.forward import Calibrator, exp_integers_f32, exp_polynomial
from .calibration.ranges import (
    DEFAULT_MOMENTUM,
    DEFAULT_PERCENTILE,
    INIT_THRESHOLD,
    LN_MAX_BIT,
    MSE_SEARCH_SAMPLES,
    RANGE_METHODS,
    SEARCH_MSE_FACTORS,
    SEARCH_PERCENTILES,
    SEARCH_TARGETS,
    CalibrationError,
    ClipChoice,
    RangeTracker,
    fake_quantize,
    layernorm_train_shift,
    mse_optimal_clip,
    percentile_clip,
    quant_act_bits,
    quantization_mse,
    range_for_clip,
    search_candidates,
    select_range,
)
from .checkpoint_writer import copy_tokenizer_files, write_checkpoint
from .dataflow import WORD_EMBEDDINGS
from .loading import Checkpoint, load_checkpoint

# The calibration package holds the pieces (ranges, float model, calibration forward, batches);
# this module is the entry point and keeps their public names importable from here.
__all__ = [
    "CalibrationError", "CalibrationResult", "Calibrator", "ClipChoice", "FloatModel", "RangeTracker",
    "DEFAULT_MOMENTUM", "DEFAULT_PERCENTILE", "INIT_THRESHOLD", "LN_MAX_BIT", "MSE_SEARCH_SAMPLES",
    "RANGE_METHODS", "SEARCH_MSE_FACTORS", "SEARCH_PERCENTILES", "SEARCH_TARGETS",
    "calibrate_checkpoint", "erf_f32", "exp_integers_f32", "exp_polynomial", "fake_quantize",
    "gelu_f32", "join_batches", "layer_norm_f32", "layernorm_train_shift", "make_batches",
    "mse_optimal_clip", "percentile_clip", "quant_act_bits", "quantization_mse", "range_for_clip",
    "read_texts", "search_candidates", "select_range",
]


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
    return "ibert." if f"ibert.{WORD_EMBEDDINGS}.weight" in checkpoint.tensors else ""


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
