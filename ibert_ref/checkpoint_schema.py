"""The I-BERT checkpoint schema: every module name, key, shape rule and uncalibrated-buffer rule.

transformers' ``IBertModel`` stores, per module (names relative to the base model, optionally
under an ``ibert.`` prefix):

* every QuantEmbedding (the embedding tables): ``weight`` (float32 table) plus
  ``weight_integer``, ``weight_scaling_factor``;
* every QuantLinear (six per layer): ``weight``, ``bias`` plus ``weight_integer``,
  ``fc_scaling_factor``, ``bias_integer``;
* every IntLayerNorm: ``weight``, ``bias``, ``shift``;
* every QuantAct: ``x_min``, ``x_max``, ``act_scaling_factor`` (calibrated ranges).

The module names and weight shapes come from the dataflow (:mod:`ibert_ref.dataflow`: its ops,
plus the QuantActs transformers builds but never calls). Loading, compiling, converting,
calibrating and the Hypothesis strategies read them from here.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from .dataflow import (
    DEAD_EMBEDDINGS_QUANT_ACTS,
    DEAD_LAYER_QUANT_ACTS,
    EMBEDDINGS_PREFIX,
    EMBEDDING_LAYERNORMS,
    EMBEDDING_QUANT_ACTS,
    EMBEDDING_TABLES,
    LAYER_LAYERNORMS,
    LAYER_LINEARS,
    LAYER_QUANT_ACTS,
    Op,
    block_ops,
    layer_prefix,
    split_name,
)
from .quant import F32

__all__ = [
    "DEAD_QUANT_ACT_SUFFIXES", "EMBEDDING_QUANT_ACTS", "EMBEDDING_TABLES", "LAYER_LAYERNORMS", "LAYER_LINEARS",
    "LAYER_QUANT_ACTS", "UNCALIBRATED_MAX_F32", "UNCALIBRATED_MIN_F32", "check_tensor_keys", "expected_shape",
    "float_parameter_keys", "is_dead_quant_act", "layernorm_names", "linear_names", "quant_act_names",
    "uncalibrated_quant_buffers",
]

#: transformers' initial QuantAct range (``zeros(1) -/+ 1e-5`` in float32).
UNCALIBRATED_MIN_F32 = np.array([-1e-5], dtype=F32)
UNCALIBRATED_MAX_F32 = np.array([1e-5], dtype=F32)

#: QuantActs transformers creates but never calls (their buffers stay at the initial values):
#: the shortest name suffixes that tell them.
_DEAD = list(dict.fromkeys(list(DEAD_EMBEDDINGS_QUANT_ACTS) + list(DEAD_LAYER_QUANT_ACTS)))
DEAD_QUANT_ACT_SUFFIXES = tuple(n for n in _DEAD if not any(n != m and n.endswith("." + m) for m in _DEAD))


def quant_act_names(num_layers: int) -> List[str]:
    """Every QuantAct of an IBertModel (dead ones included): per block, in dataflow order, the
    dead ones last."""
    names = [EMBEDDINGS_PREFIX + a for a in EMBEDDING_QUANT_ACTS]
    for i in range(num_layers):
        names += [layer_prefix(i) + a for a in LAYER_QUANT_ACTS]
    return names


def is_dead_quant_act(name: str) -> bool:
    """Whether transformers never calls this QuantAct (see :data:`DEAD_QUANT_ACT_SUFFIXES`)."""
    return name.endswith(DEAD_QUANT_ACT_SUFFIXES)


def layernorm_names(num_layers: int) -> List[str]:
    names = [EMBEDDINGS_PREFIX + n for n in EMBEDDING_LAYERNORMS]
    for i in range(num_layers):
        names += [layer_prefix(i) + n for n in LAYER_LAYERNORMS]
    return names


def linear_names(num_layers: int) -> List[str]:
    return [layer_prefix(i) + n for i in range(num_layers) for n in LAYER_LINEARS]


def _weighted_ops(num_layers: int) -> List[Op]:
    """The ops whose module has a float ``weight`` (tables, QuantLinears, LayerNorms), absolute names."""
    ops = [op for op in block_ops(None) if op.weight]
    for i in range(num_layers):
        ops += [op for op in block_ops(i) if op.weight]
    return ops


def float_parameter_keys(config: dict) -> List[str]:
    """The float tensors an IBertModel needs (pooler excluded), without prefix."""
    keys = []
    for op in _weighted_ops(config["num_hidden_layers"]):
        keys += [op.module + ".weight"] + ([] if op.kind == "QuantEmbedding" else [op.module + ".bias"])
    return keys


def uncalibrated_quant_buffers(config: dict) -> Dict[str, np.ndarray]:
    """Every quantization buffer of an IBertModel at transformers' initial values (no prefix).

    QuantAct: ``x_min=-1e-5``, ``x_max=+1e-5``, ``act_scaling_factor=0``; IntLayerNorm
    ``shift=0``; QuantLinear ``weight_integer``/``fc_scaling_factor``/``bias_integer`` and
    QuantEmbedding ``weight_integer``/``weight_scaling_factor`` zeros of the right shapes.
    """
    n = config["num_hidden_layers"]
    out: Dict[str, np.ndarray] = {}
    ops = _weighted_ops(n)
    for op in ops:
        if op.kind == "QuantEmbedding":
            out[op.module + ".weight_scaling_factor"] = np.zeros(1, F32)
            out[op.module + ".weight_integer"] = np.zeros(op.weight_shape(config), F32)
    for name in quant_act_names(n):
        out[name + ".x_min"] = UNCALIBRATED_MIN_F32.copy()
        out[name + ".x_max"] = UNCALIBRATED_MAX_F32.copy()
        out[name + ".act_scaling_factor"] = np.zeros(1, F32)
    for name in layernorm_names(n):
        out[name + ".shift"] = np.zeros(1, F32)
    for op in ops:
        if op.kind == "QuantLinear":
            shape = op.weight_shape(config)
            out[op.module + ".weight_integer"] = np.zeros(shape, F32)
            out[op.module + ".fc_scaling_factor"] = np.zeros(shape[0], F32)
            out[op.module + ".bias_integer"] = np.zeros(shape[0], F32)
    return out


def expected_shape(key: str, config: dict) -> Optional[Tuple[int, ...]]:
    """The shape a checkpoint tensor (no prefix) must have under ``config`` (None when not
    checked): ``(1,)`` for ranges and shifts; a module's float ``weight`` as the dataflow gives
    it; a QuantLinear's other tensors and a LayerNorm's its first dimension; the pooler ``(H, H)``
    / ``(H,)``."""
    module, _, leaf = key.rpartition(".")
    if leaf in ("x_min", "x_max", "shift"):
        return (1,)
    h = config["hidden_size"]
    if module == "pooler.dense":
        return (h, h) if leaf == "weight" else (h,)
    try:
        layer, short = split_name(module)
    except (KeyError, ValueError):
        return None
    op = next((o for o in block_ops(layer) if o.module == module and o.weight), None) if short else None
    if op is None:
        return None
    shape = op.weight_shape(config)
    if op.kind == "QuantEmbedding":
        return shape if leaf == "weight" else None
    return shape if leaf == "weight" else shape[:1]


# ---------------------------------------------------------------------------------------
# Which stored tensors belong to the encoder (anything else in its namespaces is refused)
_QUANT_ACT = r"(x_min|x_max|act_scaling_factor)"
_TABLE = r"(weight|weight_integer|weight_scaling_factor)"
_LINEAR = r"(weight|bias|weight_integer|bias_integer|fc_scaling_factor)"
_LAYERNORM = r"(weight|bias|shift)"
#: Buffers transformers' embeddings register besides the modules' tensors.
_EMBEDDINGS_BUFFERS = ("position_ids", "token_type_ids")


def _alternatives(names, leaves: str) -> str:
    return "(?:" + "|".join(re.escape(n) for n in names) + r")\." + leaves


def _block_pattern(tables, linears, layernorms, quant_acts) -> str:
    parts = [_alternatives(names, leaves) for names, leaves in
             ((tables, _TABLE), (linears, _LINEAR), (layernorms, _LAYERNORM), (quant_acts, _QUANT_ACT)) if names]
    return "(?:" + "|".join(parts) + ")"


_ENCODER_TENSOR = re.compile(
    r"^(?:ibert\.)?(?:"
    + re.escape(EMBEDDINGS_PREFIX) + "(?:" + "|".join(_EMBEDDINGS_BUFFERS) + "|"
    + _block_pattern(EMBEDDING_TABLES, (), EMBEDDING_LAYERNORMS, EMBEDDING_QUANT_ACTS) + ")"
    + r"|encoder\.layer\.(?P<layer>\d+)\." + _block_pattern((), LAYER_LINEARS, LAYER_LAYERNORMS, LAYER_QUANT_ACTS)
    + r"|pooler\.dense\.(?:weight|bias)"
    r")$"
)
_ENCODER_NAMESPACE = re.compile(r"^(?:ibert\.)?(?:embeddings|encoder|pooler)\.")


def check_tensor_keys(keys, config: dict) -> None:
    """Refuse stored tensors inside the encoder's namespaces (``embeddings.``, ``encoder.``,
    ``pooler.``, optionally ``ibert.``-prefixed) that no I-BERT module owns, and layers beyond
    ``num_hidden_layers``: a typo'd or extra tensor would otherwise be silently ignored (and a
    renamed ``pooler.dense.weight`` would silently drop the pooler). Task heads
    (``classifier.``, ``lm_head.``, ...) and transformers' cached integer weights and scaling
    factors are accepted. Raises :class:`~ibert_ref.loading.CheckpointError`."""
    from .loading import CheckpointError

    layers = config.get("num_hidden_layers", 0)
    unknown, beyond = [], []
    for key in keys:
        if not _ENCODER_NAMESPACE.match(key):
            continue
        m = _ENCODER_TENSOR.match(key)
        if m is None:
            unknown.append(key)
        elif m.group("layer") is not None and int(m.group("layer")) >= layers:
            beyond.append(key)
    if beyond:
        raise CheckpointError(
            f"checkpoint has tensors for encoder layers beyond num_hidden_layers={layers} in config.json, "
            f"e.g. {beyond[0]!r} ({len(beyond)} tensors): config and weights do not match"
        )
    if unknown:
        raise CheckpointError(
            f"checkpoint has {len(unknown)} tensor(s) that no I-BERT module owns, e.g. {unknown[:3]} "
            "(typo, corruption, or not an I-BERT checkpoint)"
        )
