"""I-BERT's dataflow, written once: the ops of the embeddings and of one encoder layer, in order.

Every tool is an interpreter or an observer of these two tables: the integer forward
(:mod:`ibert_ref.model`), calibration and its float reference (:mod:`ibert_ref.calibration`),
the compiler's names and wiring (:mod:`ibert_ref.compile`), the checkpoint schema
(:mod:`ibert_ref.checkpoint_schema`), golden vectors (:mod:`ibert_ref.vectors`), op replay and
verify (:mod:`ibert_ref.oracle`). A new op is one row here (and its kernel).

An :class:`Op` row names, relative to its block (``embeddings.`` or ``encoder.layer.N.``):

* ``name``: the transformers module path (``named_modules()`` of ``IBertModel``) — or, for
  three intermediates that have no module of their own, a name next to their module:
  ``embeddings_act1.first_call`` (the first of the two calls of that QuantAct),
  ``attention.self.scores`` (``Q K^T``) and ``attention.self.context`` (``P V``);
* ``kind``: the transformers class (``QuantAct``, ``QuantLinear``, ...; the two attention
  GEMMs are ``AttentionScores`` / ``AttentionContext``);
* ``kernel``: the :mod:`ibert_ref.kernels` function :func:`run_op` calls;
* ``inputs``: earlier ops of the block, or block inputs (:data:`BLOCK_INPUTS`);
  ``identity``: the op whose output a QuantAct adds as its residual identity;
* ``params``: the field of :class:`~ibert_ref.compile.EmbeddingsParams` /
  :class:`~ibert_ref.compile.LayerParams` holding the op's compiled constants;
* ``bits``: the declared width of the output (None: the kind's width, :data:`OP_BITS`).

The run-time semantics of every kernel are integer: int8 x int8 GEMMs into int32
accumulators, dyadic requantization ``rne(q * m / 2^e)`` then saturation to ``bits``, i-exp,
IntGELU and IntLayerNorm as in the paper's algorithm boxes (see :mod:`ibert_ref.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import numpy as np

from . import kernels as K
from .datapath import QTensor
from .intops import SATURATION_I64

#: Declared integer width of each module kind's output (what a hardware datapath must hold).
OP_BITS = {
    "QuantEmbedding": 8,
    "QuantLinear": 32,
    "IntSoftmax": 16,  # values in [0, 256]: 9 bits unsigned
    "IntGELU": 64,  # ~40 bits on roberta-base-sized layers
    "IntLayerNorm": 32,
    "AttentionScores": 32,
    "AttentionContext": 32,
}

#: The kinds the model's trace records (the attention GEMMs have no module of their own).
TRACED_KINDS = ("QuantEmbedding", "QuantAct", "QuantLinear", "IntSoftmax", "IntGELU", "IntLayerNorm")

#: Suffix of the first call of a QuantAct called twice (``embeddings_act1``).
FIRST_CALL = ".first_call"

#: Inputs of a block that no op of it produces.
INPUT_IDS, TOKEN_TYPE_IDS, POSITION_IDS, ATTENTION_MASK = "input_ids", "token_type_ids", "position_ids", "attention_mask"
LAYER_INPUT = "layer_input"
BLOCK_INPUTS = (INPUT_IDS, TOKEN_TYPE_IDS, POSITION_IDS, ATTENTION_MASK, LAYER_INPUT)


@dataclass(frozen=True)
class Op:
    """One op of the dataflow (see the module docstring). ``layer`` is None in the tables
    and for embeddings ops; :func:`expand` fills it and makes names absolute."""

    name: str
    kind: str
    kernel: str
    inputs: Tuple[str, ...]
    params: str
    bits: Optional[int] = None
    identity: Optional[str] = None
    #: shape of the module's float ``weight`` as config fields (a LayerNorm: ``(H,)``; its bias and
    #: a QuantLinear's bias have the first dimension)
    weight: Optional[Tuple[str, ...]] = None
    layer: Optional[int] = None

    @property
    def width(self) -> int:
        """Declared output width: ``bits``, or the kind's (:data:`OP_BITS`, read at call time)."""
        return OP_BITS[self.kind] if self.bits is None else self.bits

    @property
    def sources(self) -> Tuple[str, ...]:
        """Every input in kernel order: ``inputs``, then the residual ``identity``."""
        return self.inputs + ((self.identity,) if self.identity else ())

    @property
    def module(self) -> Optional[str]:
        """The transformers module this op is a call of (None for the attention GEMMs)."""
        if self.kind in ("AttentionScores", "AttentionContext"):
            return None
        return self.name[: -len(FIRST_CALL)] if self.name.endswith(FIRST_CALL) else self.name

    def weight_shape(self, config: dict) -> Tuple[int, ...]:
        """The shape of the module's float ``weight`` under ``config``."""
        return tuple(int(config.get(k, 1) if k == "type_vocab_size" else config[k]) for k in self.weight)

    @property
    def traced(self) -> bool:
        """Whether the model's trace records this op (its module's last call)."""
        return self.kind in TRACED_KINDS and not self.name.endswith(FIRST_CALL)


def _op(name, kind, kernel, inputs, params, bits=None, identity=None, weight=None) -> Op:
    return Op(name, kind, kernel, tuple(inputs), params, bits, identity, weight)


#: The config fields of the widths the weight shapes are made of.
H, I = "hidden_size", "intermediate_size"


# ---------------------------------------------------------------------------------------
# The embeddings. B batch, T tokens, H hidden. int8 tables, 16-bit sums, int8 output.
_E = "embeddings_act1"
EMBEDDINGS: Tuple[Op, ...] = (
    # name (module path)     kind              kernel             inputs                params        bits  identity
    # ids (B,T) -> int8 (B,T,H) table rows, one scale per table
    _op("word_embeddings",       "QuantEmbedding", "quant_embedding", [INPUT_IDS],          "word",
        weight=("vocab_size", H)),
    _op("token_type_embeddings", "QuantEmbedding", "quant_embedding", [TOKEN_TYPE_IDS],     "token_type",
        weight=("type_vocab_size", H)),
    # word + token_type -> 16-bit (first call of embeddings_act1)
    _op(_E + FIRST_CALL,         "QuantAct",       "requantize",      ["word_embeddings"],  "act1_first",  16,
        identity="token_type_embeddings"),
    _op("position_embeddings",   "QuantEmbedding", "quant_embedding", [POSITION_IDS],       "position",
        weight=("max_position_embeddings", H)),
    # (word + token_type) + position -> 16-bit (the same module called again)
    _op(_E,                      "QuantAct",       "requantize",      [_E + FIRST_CALL],    "act1_second", 16,
        identity="position_embeddings"),
    # IntLayerNorm -> ~31-bit, then int8 h
    _op("LayerNorm",             "IntLayerNorm",   "int_layernorm",   [_E],                 "layernorm",
        weight=(H,)),
    _op("output_activation",     "QuantAct",       "requantize",      ["LayerNorm"],        "output_activation", 8),
)

# ---------------------------------------------------------------------------------------
# One encoder layer (paper: Alg. 1-4). h (B,T,H) int8, nh heads, I intermediate.
_S, _O = "attention.self.", "attention.output."
_GELU, _INTER_ACT = "intermediate.intermediate_act_fn", "intermediate.output_activation"
LAYER: Tuple[Op, ...] = (
    # name (module path)        kind                kernel               inputs                   params
    # q, k, v: int8 x int8 -> int32 accumulators (+ int32 bias) (B,T,H), requantized to int8
    _op(_S + "query",            "QuantLinear",      "quant_linear",      [LAYER_INPUT],           "query",
        weight=(H, H)),
    _op(_S + "key",              "QuantLinear",      "quant_linear",      [LAYER_INPUT],           "key",
        weight=(H, H)),
    _op(_S + "value",            "QuantLinear",      "quant_linear",      [LAYER_INPUT],           "value",
        weight=(H, H)),
    _op(_S + "query_activation", "QuantAct",         "requantize",        [_S + "query"],          "query_activation", 8),
    _op(_S + "key_activation",   "QuantAct",         "requantize",        [_S + "key"],            "key_activation", 8),
    _op(_S + "value_activation", "QuantAct",         "requantize",        [_S + "value"],          "value_activation", 8),
    # scores Q K^T int32 (B,nh,T,T); i-exp -> 16-bit (masked keys -> 0); normalise -> [0, 256], 2^-8
    _op(_S + "scores",           "AttentionScores",  "attention_scores",
        [_S + "query_activation", _S + "key_activation"],                                      "score_scale"),
    _op(_S + "softmax.act",      "QuantAct",         "int_exp",           [_S + "scores", ATTENTION_MASK], "softmax", 16),
    _op(_S + "softmax",          "IntSoftmax",       "softmax_normalize", [_S + "softmax.act"],    "softmax"),
    # context P V int32 (B,T,H) -> int8 -> dense int32 -> + residual h, 22-bit -> IntLayerNorm -> int8
    _op(_S + "context",          "AttentionContext", "attention_context",
        [_S + "softmax", _S + "value_activation"],                                             "context_scale"),
    _op(_S + "output_activation", "QuantAct",        "requantize",        [_S + "context"],        "self_output_activation", 8),
    _op(_O + "dense",            "QuantLinear",      "quant_linear",      [_S + "output_activation"], "attn_dense",
        weight=(H, H)),
    _op(_O + "ln_input_act",     "QuantAct",         "requantize",        [_O + "dense"],          "attn_ln_input_act", 22,
        identity=LAYER_INPUT),
    _op(_O + "LayerNorm",        "IntLayerNorm",     "int_layernorm",     [_O + "ln_input_act"],   "attn_layernorm",
        weight=(H,)),
    _op(_O + "output_activation", "QuantAct",        "requantize",        [_O + "LayerNorm"],      "attn_output_activation", 8),
    # a = pre_intermediate_act (int8): the FFN's input AND its residual (transformers' wiring)
    _op("pre_intermediate_act",  "QuantAct",         "requantize",        [_O + "output_activation"], "pre_intermediate_act", 8),
    # dense int32 (B,T,I) -> IntGELU ~40-bit -> int8 -> int8 again
    _op("intermediate.dense",    "QuantLinear",      "quant_linear",      ["pre_intermediate_act"], "intermediate_dense",
        weight=(I, H)),
    _op(_GELU,                   "IntGELU",          "int_gelu",          ["intermediate.dense"],  "gelu"),
    _op(_INTER_ACT,              "QuantAct",         "requantize",        [_GELU],                 "intermediate_output_activation", 8),
    _op("pre_output_act",        "QuantAct",         "requantize",        [_INTER_ACT],            "pre_output_act", 8),
    # dense int32 (B,T,H) -> + residual a, 22-bit -> IntLayerNorm -> int8: the next layer's h
    _op("output.dense",          "QuantLinear",      "quant_linear",      ["pre_output_act"],      "output_dense",
        weight=(H, I)),
    _op("output.ln_input_act",   "QuantAct",         "requantize",        ["output.dense"],        "output_ln_input_act", 22,
        identity="pre_intermediate_act"),
    _op("output.LayerNorm",      "IntLayerNorm",     "int_layernorm",     ["output.ln_input_act"], "output_layernorm",
        weight=(H,)),
    _op("output.output_activation", "QuantAct",      "requantize",        ["output.LayerNorm"],    "output_activation", 8),
)

#: QuantActs transformers creates but never calls (buffers stay at their initial values),
#: with their declared widths: per block, module path -> bits.
DEAD_EMBEDDINGS_QUANT_ACTS = {"embeddings_act2": 16, "LayerNorm.activation": 32}
DEAD_LAYER_QUANT_ACTS = {_O + "LayerNorm.activation": 32, "output.LayerNorm.activation": 32}

EMBEDDINGS_PREFIX = "embeddings."


def layer_prefix(i: int) -> str:
    return f"encoder.layer.{i}."


def block_output(layer: Optional[int]) -> str:
    """Absolute name of the int8 output of the embeddings (``layer=None``) or of layer ``layer``."""
    if layer is None:
        return EMBEDDINGS_PREFIX + EMBEDDINGS[-1].name
    return layer_prefix(layer) + LAYER[-1].name


def _absolute(op: Op, prefix: str, layer: Optional[int], layer_input: str) -> Op:
    def ab(n):
        if n == LAYER_INPUT:
            return layer_input
        return n if n in BLOCK_INPUTS else prefix + n

    return replace(op, name=prefix + op.name, inputs=tuple(ab(n) for n in op.inputs),
                   identity=None if op.identity is None else ab(op.identity), layer=layer)


def expand(num_layers: int) -> List[Op]:
    """Every op of a forward of ``num_layers`` encoder layers, in execution order, with
    absolute names (``embeddings.X``, ``encoder.layer.N.X``); a layer's input is the previous
    block's ``output_activation``."""
    ops = [_absolute(op, EMBEDDINGS_PREFIX, None, "") for op in EMBEDDINGS]
    for i in range(num_layers):
        ops += [_absolute(op, layer_prefix(i), i, block_output(i - 1 if i else None)) for op in LAYER]
    return ops


def block_ops(layer: Optional[int]) -> List[Op]:
    """The ops of one block with absolute names (``layer`` None: the embeddings); the layer
    input keeps the name :data:`LAYER_INPUT`."""
    if layer is None:
        return [_absolute(op, EMBEDDINGS_PREFIX, None, "") for op in EMBEDDINGS]
    return [_absolute(op, layer_prefix(layer), layer, LAYER_INPUT) for op in LAYER]


# ---------------------------------------------------------------------------------------
# Names the checkpoint schema, calibration and the oracle read
def _modules(block: Tuple[Op, ...], kind: str) -> List[str]:
    names = []
    for op in block:
        if op.kind == kind and op.module not in names:
            names.append(op.module)
    return names


#: Per block, module paths of each kind, in dataflow order (QuantActs: dead ones last).
EMBEDDING_TABLES = tuple(_modules(EMBEDDINGS, "QuantEmbedding"))
EMBEDDING_QUANT_ACTS = tuple(_modules(EMBEDDINGS, "QuantAct")) + tuple(DEAD_EMBEDDINGS_QUANT_ACTS)
EMBEDDING_LAYERNORMS = tuple(_modules(EMBEDDINGS, "IntLayerNorm"))
LAYER_LINEARS = tuple(_modules(LAYER, "QuantLinear"))
LAYER_LAYERNORMS = tuple(_modules(LAYER, "IntLayerNorm"))
LAYER_QUANT_ACTS = tuple(_modules(LAYER, "QuantAct")) + tuple(DEAD_LAYER_QUANT_ACTS)
#: The 8-bit QuantActs of one layer (what a range search chooses, with the embeddings' output).
LAYER_ACT8 = tuple(op.name for op in LAYER if op.kind == "QuantAct" and op.bits == 8)
#: The ops of a layer that read the layer input (the QuantLinears transformers hands a stale scale).
LAYER_INPUT_OPS = tuple(op.name for op in LAYER if LAYER_INPUT in op.inputs)
#: The QuantAct that ends a block (its output is the next layer's input).
OUTPUT_ACT = LAYER[-1].name
#: The word-embedding table (the lookup of the input ids; tied to the LM head's decoder).
WORD_EMBEDDINGS = EMBEDDINGS_PREFIX + next(op.name for op in EMBEDDINGS if INPUT_IDS in op.inputs)


def block_output_params(embeddings, layers):
    """The compiled constants of the encoder's last QuantAct: the last layer's, or the
    embeddings' when there is no layer (``embeddings``/``layers``: a CompiledModel's)."""
    return getattr(layers[-1], LAYER[-1].params) if layers else getattr(embeddings, EMBEDDINGS[-1].params)


def module_names(num_layers: int) -> List[str]:
    """Every module a quant-mode forward calls, in dataflow order (a module called twice once)."""
    names: List[str] = []
    for op in expand(num_layers):
        if op.module is not None and op.module not in names:
            names.append(op.module)
    return names


def split_name(name: str) -> Tuple[Optional[int], str]:
    """``(layer or None, path inside the block)`` of an absolute module path (an optional
    ``ibert.`` prefix is dropped)."""
    if name.startswith("ibert."):
        name = name[len("ibert."):]
    if name.startswith(EMBEDDINGS_PREFIX):
        return None, name[len(EMBEDDINGS_PREFIX):]
    if name.startswith("encoder.layer."):
        i, rest = name[len("encoder.layer."):].split(".", 1)
        return int(i), rest
    raise KeyError(f"not an I-BERT module path: {name}")


def absolute_op(name: str) -> Op:
    """The op row of an absolute op or module path with absolute names, as :func:`block_ops`
    gives it (``embeddings_act1``: its second call)."""
    layer, short = split_name(name)
    full = (EMBEDDINGS_PREFIX if layer is None else layer_prefix(layer)) + short
    for op in block_ops(layer):
        if op.name == full:
            return op
    raise KeyError(f"not an I-BERT quantized module: {name}")


def op_of(name: str) -> Op:
    """The op row (relative names) of an absolute op or module path; for ``embeddings_act1``
    the second call's row."""
    layer, short = split_name(name)
    for op in EMBEDDINGS if layer is None else LAYER:
        if op.name == short:
            return op
    raise KeyError(f"not an I-BERT quantized module: {name}")


def module_kind(name: str) -> str:
    """transformers' class name of the module at ``name`` (dead QuantActs included)."""
    layer, short = split_name(name)
    if short in (DEAD_EMBEDDINGS_QUANT_ACTS if layer is None else DEAD_LAYER_QUANT_ACTS):
        return "QuantAct"
    return op_of(name).kind


def quant_act_bits(name: str) -> int:
    """Output width of the QuantAct at ``name`` (modeling_ibert.py), dead ones included."""
    layer, short = split_name(name)
    dead = DEAD_EMBEDDINGS_QUANT_ACTS if layer is None else DEAD_LAYER_QUANT_ACTS
    if short in dead:
        return dead[short]
    op = op_of(name)
    if op.kind != "QuantAct":
        raise KeyError(f"{name} is a {op.kind}, not a QuantAct")
    return op.width


# ---------------------------------------------------------------------------------------
# The one kernel dispatcher
def kernel(dp, name: str):
    """The function that computes kernel ``name`` of :mod:`ibert_ref.kernels` on datapath
    ``dp``: the datapath's replacement (a backend's faster route to the same integers, or a
    hardware profile's modelled variant: ``dp.replacement_kernel``) or the kernel itself."""
    return dp.replacement_kernel(name) or getattr(K, name)


def _raw(v):
    """A kernel argument that is a plain array (ids, a mask, raw scores): a QTensor's data."""
    return v.data if isinstance(v, QTensor) else v


def run_op(dp, op: Op, params, args, *, num_heads: int = 1, mask=None, fops=None):
    """Run ``op``'s kernel on datapath ``dp`` with compiled ``params`` (a field of
    :class:`~ibert_ref.compile.EmbeddingsParams` / ``LayerParams``, or constants derived
    from captured scales) on ``args`` (the values of ``op.sources``, in order).

    Values are :class:`~ibert_ref.datapath.QTensor` (the datapath's integers and a float32
    scale), int arrays (ids, the 0/1 mask, raw attention scores), or float32 arrays (the
    output of an op ``force_dequant`` runs in float). Returns a QTensor, the raw scores array
    (``attention_scores``), or a float32 array (a float fallback).

    * ``attention_scores``: ``Q K^T`` per head; keys with ``mask == 0`` (the ``mask``
      argument) become minus infinity as the datapath holds it.
    * ``int_exp``: a second argument (the 0/1 mask) replaces masked integer scores by
      ``-SATURATION_I64`` first (the scores were computed without the mask).
    * ``requantize`` with :class:`~ibert_ref.kernels.QuantizeInputParams`: QuantAct's
      input-quantization path (its producer ran in float).
    * ``int_gelu`` with ``params`` None and ``int_layernorm`` with float params: the
      float32 fallbacks of ``force_dequant`` (``fops``).
    """
    k = op.kernel
    if k == "quant_embedding":
        return K.quant_embedding(dp, params, np.asarray(_raw(args[0]), dtype=np.int64))
    if k == "requantize":
        if isinstance(params, K.QuantizeInputParams):
            x = args[0]
            return K.quantize_input(dp, x if isinstance(x, np.ndarray) else dp.dequantize(x), params)
        return kernel(dp, k)(dp, args[0], params, identity=args[1] if len(args) > 1 else None)
    if k == "quant_linear":
        return kernel(dp, k)(dp, args[0], params)
    if k == "attention_scores":
        return K.attention_scores(dp, args[0], args[1], num_heads, mask, params)
    if k == "int_exp":
        scores = _raw(args[0])
        if len(args) > 1:
            live = np.asarray(_raw(args[1])).astype(bool)[:, None, None, :]
            scores = np.where(live, np.asarray(scores, dtype=np.int64), -SATURATION_I64)
        return kernel(dp, k)(dp, scores, params)
    if k == "softmax_normalize":
        return kernel(dp, k)(dp, args[0], params)
    if k == "attention_context":
        return dp.attention_context(args[0], args[1], num_heads, params)
    if k == "int_gelu":
        if params is None:
            return fops.gelu(dp.dequantize(args[0]))  # force_dequant gelu: nn.GELU in float32
        return kernel(dp, k)(dp, args[0], params)
    if k == "int_layernorm":
        if not isinstance(params, K.LayerNormParams):
            return fops.ibert_layernorm(dp.dequantize(args[0]), params)  # force_dequant layernorm
        return kernel(dp, k)(dp, args[0], params)
    raise KeyError(f"unknown kernel {k!r} of op {op.name}")
