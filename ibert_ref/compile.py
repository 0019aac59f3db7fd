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
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

import numpy as np

from .datapath import Datapath
from .float_ops import FloatLayerNormParams
from .kernels import (
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


def checked_dyadic(pre_scale, out_scale):
    """``dyadic_requant`` that refuses a ratio of 2^31 or more (a negative exponent): no
    requantization in I-BERT multiplies by that much, so the scales are broken."""
    dy = dyadic_requant(pre_scale, out_scale)
    if np.any(dy.e < 0):
        ratio = float(np.max(dy.value))
        raise CompileError(f"requantization ratio {ratio:.3g} >= 2^31: input and output scales are inconsistent")
    return dy


def requant_params(bits, out_scale, pre_scale, identity_scale=None) -> RequantParams:
    return RequantParams(
        bits=bits,
        out_scale=out_scale,
        dy=checked_dyadic(pre_scale, out_scale),
        dy_identity=None if identity_scale is None else checked_dyadic(identity_scale, out_scale),
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


def softmax_params(dp: Datapath, score_scale_f32, act_scale_f32) -> SoftmaxParams:
    s = np.asarray(score_scale_f32, dtype=F32)
    s2 = s * s
    x0_int = np.floor(rdiv_f32(SOFTMAX_X0, s))
    b_int = np.floor(rdiv_f32(SOFTMAX_COEF[1], s))
    c_int = np.floor(rdiv_f32(SOFTMAX_COEF[2], s2))
    exp_scale = (F32(SOFTMAX_COEF[0]) * s2) / F32(2**30)
    _check_int_constants(f"IntSoftmax (score scale {s.reshape(-1)[0]:.3g})", x0_int=x0_int, b_int=b_int, c_int=c_int)
    return SoftmaxParams(
        x0_int=dp.const(x0_int),
        x0_30=dp.const(F32(30) * x0_int),
        b_int=dp.const(b_int),
        c_int=dp.const(c_int),
        exp_scale=exp_scale,
        act_scale=act_scale_f32,
        dy_tf=dyadic_requant(exp_scale, act_scale_f32),
        # exact: exp_int is the value the QuantAct range was calibrated on (scale 1)
        dy_exact=dyadic_from_ratio(1.0 / np.asarray(act_scale_f32, dtype=F32).astype(np.float64)),
    )


def gelu_params(dp: Datapath, in_scale_f32) -> GeluParams:
    s = np.asarray(in_scale_f32, dtype=F32)
    t = s / F32(GELU_K)
    t2 = t * t
    b_int = np.floor(rdiv_f32(GELU_COEF[1], t))
    c_int = np.floor(rdiv_f32(GELU_COEF[2], t2))
    erf_scale = (t2 * F32(GELU_COEF[0])) * F32(2**GELU_CONST)
    one = np.floor_divide(F32(1.0), erf_scale)
    out_scale = (s * erf_scale) / F32(2)
    _check_int_constants(f"IntGELU (input scale {s.reshape(-1)[0]:.3g})", b_int=b_int, c_int=c_int, one=one)
    return GeluParams(b_int=dp.const(b_int), c_int=dp.const(c_int), one=dp.const(one), out_scale=out_scale)


def layernorm_params(dp: Datapath, gamma_f32, beta_f32, shift_f32) -> LayerNormParams:
    hidden = gamma_f32.shape[0]
    if np.any(gamma_f32 == 0):
        raise CompileError("IntLayerNorm weight has a zero: bias/weight is undefined")
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
    bias_int = np.floor((beta_f32 / gamma_f32) / base_scale)
    _check_int_constants("IntLayerNorm", bias_int=bias_int)
    return LayerNormParams(shift=int(shift), bias_int=dp.const(bias_int), out_scale=base_scale * gamma_f32)


# ---------------------------------------------------------------------------------------
def norm_params(dp: Datapath, get: Getter, prefix: str, fd: frozenset, eps: float) -> NormParams:
    """IntLayerNorm ``prefix`` compiled, or its float32 fallback when LayerNorm is dequantized."""
    gamma, beta = get(prefix + ".weight"), get(prefix + ".bias")
    if "layernorm" in fd:
        return FloatLayerNormParams(gamma=gamma.astype(F32), beta=beta.astype(F32), eps=float(eps))
    return layernorm_params(dp, gamma, beta, get(prefix + ".shift"))


def act_params(bits: int, out_scale, producer) -> ActParams:
    """The QuantAct after ``producer``: requantization from the producer's output scale,
    or the input-quantization path when the producer ran in float (``producer`` is None or
    a :class:`FloatLayerNormParams`)."""
    if producer is None or isinstance(producer, FloatLayerNormParams):
        return QuantizeInputParams(bits=bits, scale=out_scale)
    return requant_params(bits, out_scale, producer.out_scale)


def compile_embeddings(dp: Datapath, get: Getter, fd: frozenset = frozenset(), eps: float = 1e-12) -> EmbeddingsParams:
    p = "embeddings."
    word = embedding_params(dp, get(p + "word_embeddings.weight"))
    token_type = embedding_params(dp, get(p + "token_type_embeddings.weight"))
    position = embedding_params(dp, get(p + "position_embeddings.weight"))
    s_act1 = act_scale(get, p + "embeddings_act1", EMBEDDING_ACT_BITS)
    layernorm = norm_params(dp, get, p + "LayerNorm", fd, eps)
    s_out = act_scale(get, p + "output_activation", ACT_BITS)
    return EmbeddingsParams(
        word=word,
        token_type=token_type,
        position=position,
        act1_first=requant_params(EMBEDDING_ACT_BITS, s_act1, word.scale, token_type.scale),
        act1_second=requant_params(EMBEDDING_ACT_BITS, s_act1, s_act1, position.scale),
        layernorm=layernorm,
        output_activation=act_params(ACT_BITS, s_out, layernorm),
        act1_input=QuantizeInputParams(bits=EMBEDDING_ACT_BITS, scale=s_act1),
        act1_input_identity=requant_params(EMBEDDING_ACT_BITS, s_act1, s_act1, token_type.scale),
    )


def compile_layer(
    dp: Datapath, get: Getter, i: int, in_scale, num_heads: int, fd: frozenset = frozenset(), eps: float = 1e-12
) -> LayerParams:
    p = f"encoder.layer.{i}."
    sa = p + "attention.self."
    hidden = get(sa + "query.weight").shape[0]
    head_dim = hidden // num_heads

    def lin(name, s_in):
        return linear_params(dp, get(name + ".weight"), get(name + ".bias"), s_in)

    query, key, value = lin(sa + "query", in_scale), lin(sa + "key", in_scale), lin(sa + "value", in_scale)
    s_q = act_scale(get, sa + "query_activation", ACT_BITS)
    s_k = act_scale(get, sa + "key_activation", ACT_BITS)
    s_v = act_scale(get, sa + "value_activation", ACT_BITS)
    score_scale = (s_q * s_k) / F32(math.sqrt(head_dim))
    softmax = None  # float softmax: softmax.act is never called (nor calibrated)
    if "softmax" not in fd:
        softmax = softmax_params(dp, score_scale, act_scale(get, sa + "softmax.act", SOFTMAX_ACT_BITS))
    context_scale = F32(1.0 / 256.0) * s_v
    s_ctx_out = act_scale(get, sa + "output_activation", ACT_BITS)
    if softmax is None:
        self_output_activation = QuantizeInputParams(bits=ACT_BITS, scale=s_ctx_out)
    else:
        self_output_activation = requant_params(ACT_BITS, s_ctx_out, context_scale)

    ao = p + "attention.output."
    attn_dense = lin(ao + "dense", s_ctx_out)
    s_ln1_in = act_scale(get, ao + "ln_input_act", LN_INPUT_BITS)
    ln1 = norm_params(dp, get, ao + "LayerNorm", fd, eps)
    s_attn_out = act_scale(get, ao + "output_activation", ACT_BITS)
    s_pre_int = act_scale(get, p + "pre_intermediate_act", ACT_BITS)

    inter_dense = lin(p + "intermediate.dense", s_pre_int)
    gelu = None if "gelu" in fd else gelu_params(dp, inter_dense.out_scale)
    s_inter_out = act_scale(get, p + "intermediate.output_activation", ACT_BITS)
    s_pre_out = act_scale(get, p + "pre_output_act", ACT_BITS)

    out_dense = lin(p + "output.dense", s_pre_out)
    s_ln2_in = act_scale(get, p + "output.ln_input_act", LN_INPUT_BITS)
    ln2 = norm_params(dp, get, p + "output.LayerNorm", fd, eps)
    s_layer_out = act_scale(get, p + "output.output_activation", ACT_BITS)

    return LayerParams(
        query=query,
        key=key,
        value=value,
        query_activation=requant_params(ACT_BITS, s_q, query.out_scale),
        key_activation=requant_params(ACT_BITS, s_k, key.out_scale),
        value_activation=requant_params(ACT_BITS, s_v, value.out_scale),
        score_scale=score_scale,
        softmax=softmax,
        context_scale=context_scale,
        self_output_activation=self_output_activation,
        attn_dense=attn_dense,
        attn_ln_input_act=requant_params(LN_INPUT_BITS, s_ln1_in, attn_dense.out_scale, in_scale),
        attn_layernorm=ln1,
        attn_output_activation=act_params(ACT_BITS, s_attn_out, ln1),
        pre_intermediate_act=requant_params(ACT_BITS, s_pre_int, s_attn_out),
        intermediate_dense=inter_dense,
        gelu=gelu,
        intermediate_output_activation=act_params(ACT_BITS, s_inter_out, gelu),
        pre_output_act=requant_params(ACT_BITS, s_pre_out, s_inter_out),
        output_dense=out_dense,
        output_ln_input_act=requant_params(LN_INPUT_BITS, s_ln2_in, out_dense.out_scale, s_pre_int),
        output_layernorm=ln2,
        output_activation=act_params(ACT_BITS, s_layer_out, ln2),
        input_scale=np.asarray(in_scale, dtype=F32),
    )


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


def expected_shape(key: str, config: dict):
    """The shape a checkpoint tensor must have under ``config`` (None when not checked)."""
    h, i = config["hidden_size"], config["intermediate_size"]
    parts = key.split(".")
    leaf, owner = parts[-1], parts[-2] if len(parts) > 1 else ""
    if leaf in ("x_min", "x_max", "shift"):
        return (1,)
    if key.startswith("embeddings.") and leaf == "weight" and owner.endswith("_embeddings"):
        rows = {
            "word_embeddings": config["vocab_size"],
            "token_type_embeddings": config.get("type_vocab_size", 1),
            "position_embeddings": config["max_position_embeddings"],
        }[owner]
        return (rows, h)
    if owner == "LayerNorm":
        return (h,)
    if owner in ("query", "key", "value") or key.endswith("attention.output.dense." + leaf) or owner == "pooler":
        return (h, h) if leaf == "weight" else (h,)
    if key.endswith("intermediate.dense." + leaf):
        return (i, h) if leaf == "weight" else (i,)
    if key.endswith("output.dense." + leaf):
        return (h, i) if leaf == "weight" else (h,)
    if key.startswith("pooler.dense."):
        return (h, h) if leaf == "weight" else (h,)
    return None


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


# ---------------------------------------------------------------------------------------
# Which stored tensors belong to the encoder (anything else in its namespaces is refused)
_QUANT_ACT = r"(x_min|x_max|act_scaling_factor)"
_LINEAR = r"(weight|bias|weight_integer|bias_integer|fc_scaling_factor)"
_LAYERNORM = r"LayerNorm\.((weight|bias|shift)|activation\." + _QUANT_ACT + ")"
_ENCODER_TENSOR = re.compile(
    r"^(?:ibert\.)?(?:"
    r"embeddings\.(?:position_ids|token_type_ids"
    r"|(?:word|position|token_type)_embeddings\.(?:weight|weight_integer|weight_scaling_factor)"
    r"|(?:embeddings_act1|embeddings_act2|output_activation)\." + _QUANT_ACT + "|" + _LAYERNORM + ")"
    r"|encoder\.layer\.(?P<layer>\d+)\.(?:"
    r"attention\.self\.(?:(?:query|key|value)\." + _LINEAR
    + r"|(?:query_activation|key_activation|value_activation|output_activation|softmax\.act)\." + _QUANT_ACT + ")"
    r"|attention\.output\.(?:dense\." + _LINEAR + r"|(?:ln_input_act|output_activation)\." + _QUANT_ACT
    + "|" + _LAYERNORM + ")"
    r"|(?:pre_intermediate_act|pre_output_act|intermediate\.output_activation)\." + _QUANT_ACT
    + r"|intermediate\.dense\." + _LINEAR
    + r"|output\.(?:dense\." + _LINEAR + r"|(?:ln_input_act|output_activation)\." + _QUANT_ACT + "|" + _LAYERNORM + ")"
    r")"
    r"|pooler\.dense\.(?:weight|bias)"
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
