"""The I-BERT checkpoint schema: every module name, key, shape rule and uncalibrated-buffer rule.

transformers' ``IBertModel`` stores, per module (names relative to the base model, optionally
under an ``ibert.`` prefix):

* ``embeddings.{word,token_type,position}_embeddings``: ``weight`` (float32 table) plus the
  QuantEmbedding buffers ``weight_integer``, ``weight_scaling_factor``;
* every QuantLinear (six per layer): ``weight``, ``bias`` plus ``weight_integer``,
  ``fc_scaling_factor``, ``bias_integer``;
* every IntLayerNorm: ``weight``, ``bias``, ``shift``;
* every QuantAct: ``x_min``, ``x_max``, ``act_scaling_factor`` (calibrated ranges).

Loading, compiling, converting, calibrating and the Hypothesis strategies read the names from
here; a new op's checkpoint keys are one edit.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from .quant import F32

#: transformers' initial QuantAct range (``zeros(1) -/+ 1e-5`` in float32).
UNCALIBRATED_MIN_F32 = np.array([-1e-5], dtype=F32)
UNCALIBRATED_MAX_F32 = np.array([1e-5], dtype=F32)

# Module names of I-BERT (relative to the base model), the single source of the key layout.
EMBEDDING_TABLES = ("word_embeddings", "token_type_embeddings", "position_embeddings")
EMBEDDING_QUANT_ACTS = ("embeddings_act1", "embeddings_act2", "LayerNorm.activation", "output_activation")
LAYER_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
LAYER_LAYERNORMS = ("attention.output.LayerNorm", "output.LayerNorm")
LAYER_QUANT_ACTS = (
    "attention.self.query_activation",
    "attention.self.key_activation",
    "attention.self.value_activation",
    "attention.self.output_activation",
    "attention.self.softmax.act",
    "attention.output.ln_input_act",
    "attention.output.LayerNorm.activation",
    "attention.output.output_activation",
    "intermediate.output_activation",
    "output.ln_input_act",
    "output.LayerNorm.activation",
    "output.output_activation",
    "pre_intermediate_act",
    "pre_output_act",
)
#: QuantActs transformers creates but never calls (their buffers stay at the initial values).
DEAD_QUANT_ACT_SUFFIXES = ("embeddings_act2", "LayerNorm.activation")

def quant_act_names(num_layers: int) -> List[str]:
    """Every QuantAct of an IBertModel (dead ones included), in module order."""
    names = [f"embeddings.{a}" for a in EMBEDDING_QUANT_ACTS]
    for i in range(num_layers):
        names += [f"encoder.layer.{i}.{a}" for a in LAYER_QUANT_ACTS]
    return names


def is_dead_quant_act(name: str) -> bool:
    """Whether transformers never calls this QuantAct (``embeddings_act2``, ``*.LayerNorm.activation``)."""
    return name.endswith(DEAD_QUANT_ACT_SUFFIXES)


def layernorm_names(num_layers: int) -> List[str]:
    names = ["embeddings.LayerNorm"]
    for i in range(num_layers):
        names += [f"encoder.layer.{i}.{n}" for n in LAYER_LAYERNORMS]
    return names


def linear_names(num_layers: int) -> List[str]:
    return [f"encoder.layer.{i}.{n}" for i in range(num_layers) for n in LAYER_LINEARS]


def float_parameter_keys(config: dict) -> List[str]:
    """The float tensors an IBertModel needs (pooler excluded), without prefix."""
    keys = [f"embeddings.{t}.weight" for t in EMBEDDING_TABLES]
    keys += ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    for name in linear_names(config["num_hidden_layers"]):
        keys += [name + ".weight", name + ".bias"]
    for i in range(config["num_hidden_layers"]):
        for ln in LAYER_LAYERNORMS:
            keys += [f"encoder.layer.{i}.{ln}.weight", f"encoder.layer.{i}.{ln}.bias"]
    return keys


def uncalibrated_quant_buffers(config: dict) -> Dict[str, np.ndarray]:
    """Every quantization buffer of an IBertModel at transformers' initial values (no prefix).

    QuantAct: ``x_min=-1e-5``, ``x_max=+1e-5``, ``act_scaling_factor=0``; IntLayerNorm
    ``shift=0``; QuantLinear ``weight_integer``/``fc_scaling_factor``/``bias_integer`` and
    QuantEmbedding ``weight_integer``/``weight_scaling_factor`` zeros of the right shapes.
    """
    h, inter, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    rows = {
        "word_embeddings": config["vocab_size"],
        "token_type_embeddings": config.get("type_vocab_size", 1),
        "position_embeddings": config["max_position_embeddings"],
    }
    out: Dict[str, np.ndarray] = {}
    for table in EMBEDDING_TABLES:
        out[f"embeddings.{table}.weight_scaling_factor"] = np.zeros(1, F32)
        out[f"embeddings.{table}.weight_integer"] = np.zeros((rows[table], h), F32)
    for name in quant_act_names(n):
        out[name + ".x_min"] = UNCALIBRATED_MIN_F32.copy()
        out[name + ".x_max"] = UNCALIBRATED_MAX_F32.copy()
        out[name + ".act_scaling_factor"] = np.zeros(1, F32)
    for name in layernorm_names(n):
        out[name + ".shift"] = np.zeros(1, F32)
    shapes = {
        "attention.self.query": (h, h),
        "attention.self.key": (h, h),
        "attention.self.value": (h, h),
        "attention.output.dense": (h, h),
        "intermediate.dense": (inter, h),
        "output.dense": (h, inter),
    }
    for i in range(n):
        for lin, (o, k) in shapes.items():
            p = f"encoder.layer.{i}.{lin}"
            out[p + ".weight_integer"] = np.zeros((o, k), F32)
            out[p + ".fc_scaling_factor"] = np.zeros(o, F32)
            out[p + ".bias_integer"] = np.zeros(o, F32)
    return out
