"""IBertModel: the integer forward pass, readable top to bottom like the paper's boxes.

``IBertModel.from_pretrained(name_or_folder, datapath="exact" | "transformers")`` loads a
transformers I-BERT checkpoint (safetensors), compiles every integer constant once
(:mod:`ibert_ref.compile`) and runs the dataflow below on integer arrays. With
``return_trace=True`` the output carries, for every quantized module, the integer array
its output stands for, keyed by transformers' module path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from . import kernels as K
from .compile import CompiledModel, EmbeddingsParams, LayerParams, compile_model, expected_shape
from .datapath import Datapath, QTensor, make_datapath
from .intops import smallest_int_dtype
from .quant import F32

#: Declared integer width of each module kind's output (what a hardware datapath must hold).
OP_BITS = {
    "QuantEmbedding": 8,
    "QuantLinear": 32,
    "IntSoftmax": 16,  # values in [0, 256]: 9 bits unsigned
    "IntGELU": 64,  # ~40 bits on roberta-base-sized layers
    "IntLayerNorm": 32,
}


@dataclass
class TraceEntry:
    """Where an integer came from: its module kind, scale and declared width."""

    kind: str
    scale: np.ndarray
    bits: int


class Tracer:
    """Collects ``name -> integer ndarray`` (and per-op metadata) during a forward pass."""

    def __init__(self, dp: Datapath, prefix: str = ""):
        self.dp = dp
        self.prefix = prefix
        self.values: Dict[str, np.ndarray] = {}
        self.meta: Dict[str, TraceEntry] = {}

    def __call__(self, name: str, kind: str, t: QTensor, bits: Optional[int] = None) -> QTensor:
        q = self.dp.integers(t)
        bits = OP_BITS[kind] if bits is None else bits
        lo, hi = (int(q.min()), int(q.max())) if q.size else (0, 0)
        dtype = smallest_int_dtype(lo, hi)
        declared = smallest_int_dtype(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        if np.dtype(declared).itemsize > np.dtype(dtype).itemsize:
            dtype = declared
        key = self.prefix + name
        self.values[key] = q.astype(dtype)
        self.meta[key] = TraceEntry(kind=kind, scale=np.asarray(t.scale, dtype=F32), bits=bits)
        return t


def _no_trace(name, kind, t, bits=None):
    return t


@dataclass
class IBertModelOutput:
    """Mirrors transformers' ``BaseModelOutputWithPooling`` (float32 NumPy arrays), plus
    the integers: ``trace`` (module path -> int ndarray) when ``return_trace=True``."""

    last_hidden_state: np.ndarray
    pooler_output: Optional[np.ndarray] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    trace: Optional[Dict[str, np.ndarray]] = None
    trace_meta: Optional[Dict[str, TraceEntry]] = None
    last_hidden_state_int: Optional[np.ndarray] = None
    last_hidden_state_scale: Optional[np.ndarray] = None

    def __getitem__(self, i):
        return self.to_tuple()[i]

    def to_tuple(self):
        return tuple(
            v for v in (self.last_hidden_state, self.pooler_output, self.hidden_states, self.attentions) if v is not None
        )


# ---------------------------------------------------------------------------------------
# The dataflow. Shapes: B batch, T tokens, H hidden, I intermediate, nh heads.
def roberta_position_ids(input_ids: np.ndarray, pad_token_id: int) -> np.ndarray:
    """RoBERTa positions: ``pad + cumsum(ids != pad)`` for real tokens, ``pad`` for padding."""
    real = (input_ids != pad_token_id).astype(np.int64)
    return np.cumsum(real, axis=1) * real + pad_token_id


def embeddings_forward(dp, p: EmbeddingsParams, input_ids, token_type_ids, position_ids, rec) -> QTensor:
    """ids (B,T) -> int8 (B,T,H). word + token_type (16-bit act) + position (same act), LN, int8."""
    pre = "embeddings."
    word = rec(pre + "word_embeddings", "QuantEmbedding", K.quant_embedding(dp, p.word, input_ids))
    token_type = rec(pre + "token_type_embeddings", "QuantEmbedding", K.quant_embedding(dp, p.token_type, token_type_ids))
    emb = K.requantize(dp, word, p.act1_first, identity=token_type)
    position = rec(pre + "position_embeddings", "QuantEmbedding", K.quant_embedding(dp, p.position, position_ids))
    emb = rec(pre + "embeddings_act1", "QuantAct", K.requantize(dp, emb, p.act1_second, identity=position), 16)
    emb = rec(pre + "LayerNorm", "IntLayerNorm", K.int_layernorm(dp, emb, p.layernorm))
    return rec(pre + "output_activation", "QuantAct", K.requantize(dp, emb, p.output_activation), 8)


def self_attention(dp, p: LayerParams, h: QTensor, mask, num_heads, rec, pre) -> tuple:
    """int8 (B,T,H) -> int8 context (B,T,H), and the probabilities (B,nh,T,T) in [0, 256]."""
    q = rec(pre + "query", "QuantLinear", K.quant_linear(dp, h, p.query))
    k = rec(pre + "key", "QuantLinear", K.quant_linear(dp, h, p.key))
    v = rec(pre + "value", "QuantLinear", K.quant_linear(dp, h, p.value))
    q = rec(pre + "query_activation", "QuantAct", K.requantize(dp, q, p.query_activation), 8)
    k = rec(pre + "key_activation", "QuantAct", K.requantize(dp, k, p.key_activation), 8)
    v = rec(pre + "value_activation", "QuantAct", K.requantize(dp, v, p.value_activation), 8)
    scores = K.attention_scores(dp, q, k, num_heads, mask, p.score_scale)
    exp16 = rec(pre + "softmax.act", "QuantAct", K.int_exp(dp, scores, p.softmax), 16)
    probs = rec(pre + "softmax", "IntSoftmax", K.softmax_normalize(dp, exp16, p.softmax))
    context = dp.attention_context(probs, v, num_heads, p.context_scale)
    context = rec(pre + "output_activation", "QuantAct", K.requantize(dp, context, p.self_output_activation), 8)
    return context, probs


def layer_forward(dp, p: LayerParams, h: QTensor, mask, num_heads, rec, pre) -> tuple:
    """One IBertLayer: attention block and feed-forward block, each with residual + IntLayerNorm."""
    context, probs = self_attention(dp, p, h, mask, num_heads, rec, pre + "attention.self.")

    ao = pre + "attention.output."
    a = rec(ao + "dense", "QuantLinear", K.quant_linear(dp, context, p.attn_dense))
    a = rec(ao + "ln_input_act", "QuantAct", K.requantize(dp, a, p.attn_ln_input_act, identity=h), 22)
    a = rec(ao + "LayerNorm", "IntLayerNorm", K.int_layernorm(dp, a, p.attn_layernorm))
    a = rec(ao + "output_activation", "QuantAct", K.requantize(dp, a, p.attn_output_activation), 8)

    a = rec(pre + "pre_intermediate_act", "QuantAct", K.requantize(dp, a, p.pre_intermediate_act), 8)
    f = rec(pre + "intermediate.dense", "QuantLinear", K.quant_linear(dp, a, p.intermediate_dense))
    f = rec(pre + "intermediate.intermediate_act_fn", "IntGELU", K.int_gelu(dp, f, p.gelu))
    f = rec(pre + "intermediate.output_activation", "QuantAct", K.requantize(dp, f, p.intermediate_output_activation), 8)
    f = rec(pre + "pre_output_act", "QuantAct", K.requantize(dp, f, p.pre_output_act), 8)

    o = pre + "output."
    y = rec(o + "dense", "QuantLinear", K.quant_linear(dp, f, p.output_dense))
    y = rec(o + "ln_input_act", "QuantAct", K.requantize(dp, y, p.output_ln_input_act, identity=a), 22)
    y = rec(o + "LayerNorm", "IntLayerNorm", K.int_layernorm(dp, y, p.output_layernorm))
    y = rec(o + "output_activation", "QuantAct", K.requantize(dp, y, p.output_activation), 8)
    return y, probs


def pooler_forward(pooler, h_f32: np.ndarray) -> np.ndarray:
    """float32 ``tanh(h[:, 0] @ W^T + b)`` — transformers runs the pooler in float."""
    return np.tanh(h_f32[:, 0] @ pooler.w.T + pooler.b).astype(F32)


# ---------------------------------------------------------------------------------------
class IBertModel:
    """The integer I-BERT encoder (embeddings, N layers, float pooler).

    Build with :meth:`from_pretrained`; call with NumPy int arrays::

        model = IBertModel.from_pretrained("path/or/hub-id")
        out = model(input_ids, attention_mask=mask, return_trace=True)
        out.trace["encoder.layer.0.attention.self.softmax"]   # int16 in [0, 256]
    """

    def __init__(self, compiled: CompiledModel, datapath: Datapath, source: str = ""):
        self.compiled = compiled
        self.datapath = datapath
        self.config = compiled.config
        self.source = source

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint, datapath="exact", gemm="numpy"):
        """Compile an already-loaded :class:`~ibert_ref.loading.Checkpoint`."""
        dp = make_datapath(datapath, gemm=gemm)
        config = checkpoint.config

        def get(key):
            return checkpoint.tensor(key, shape=expected_shape(key, config)).astype(F32)

        compiled = compile_model(dp, config, get, checkpoint.has)
        return cls(compiled, dp, source=checkpoint.source)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path=None,
        *,
        datapath: str = "exact",
        gemm: str = "numpy",
        revision: Optional[str] = None,
        cache_dir: Optional[str] = None,
        local_files_only: bool = False,
    ):
        """Load config.json + model.safetensors (folder, Hub id or the offline cache) and compile.

        ``datapath``: ``"exact"`` (true integers, default) or ``"transformers"`` (bit-exact
        float32 emulation). ``gemm`` (transformers datapath only): ``"numpy"`` or
        ``"torch"``. ``name_or_path=None`` loads the bundled tiny model.
        """
        from .loading import load_checkpoint

        if name_or_path is None:
            from .data import default_model_path

            name_or_path = default_model_path()
        checkpoint = load_checkpoint(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls.from_checkpoint(checkpoint, datapath=datapath, gemm=gemm)

    # -- inputs ------------------------------------------------------------------------
    def _check_inputs(self, input_ids, attention_mask, token_type_ids, position_ids):
        cfg = self.config
        input_ids = _as_int_array("input_ids", input_ids)
        if input_ids.ndim == 1:
            input_ids = input_ids[None, :]
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {input_ids.shape}")
        b, t = input_ids.shape
        if b == 0 or t == 0:
            raise ValueError(f"empty input: input_ids has shape {input_ids.shape}")
        vocab = cfg["vocab_size"]
        if input_ids.min() < 0 or input_ids.max() >= vocab:
            bad = input_ids[(input_ids < 0) | (input_ids >= vocab)][0]
            raise ValueError(f"input_ids contains {bad}, outside the vocabulary [0, {vocab})")
        pad = cfg.get("pad_token_id", 1)
        if attention_mask is None:
            attention_mask = np.ones((b, t), dtype=np.int64)
        attention_mask = _reshape_like("attention_mask", _as_int_array("attention_mask", attention_mask), (b, t))
        if not np.isin(attention_mask, (0, 1)).all():
            raise ValueError("attention_mask must contain only 0 and 1")
        if not attention_mask.any(axis=1).all():
            row = int(np.flatnonzero(~attention_mask.any(axis=1))[0])
            raise ValueError(f"attention_mask row {row} masks every token (transformers gives NaN here)")
        if token_type_ids is None:
            token_type_ids = np.zeros((b, t), dtype=np.int64)
        token_type_ids = _reshape_like("token_type_ids", _as_int_array("token_type_ids", token_type_ids), (b, t))
        tv = cfg.get("type_vocab_size", 1)
        if token_type_ids.min() < 0 or token_type_ids.max() >= tv:
            raise ValueError(f"token_type_ids must be in [0, {tv})")
        if position_ids is None:
            position_ids = roberta_position_ids(input_ids, pad)
        position_ids = _reshape_like("position_ids", _as_int_array("position_ids", position_ids), (b, t))
        maxpos = cfg["max_position_embeddings"]
        if position_ids.min() < 0 or position_ids.max() >= maxpos:
            raise ValueError(
                f"position ids reach {int(position_ids.max())} but max_position_embeddings is {maxpos} "
                f"(sequence too long: at most {maxpos - pad - 1} tokens)"
            )
        return input_ids, attention_mask, token_type_ids, position_ids

    # -- forward -----------------------------------------------------------------------
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_trace: bool = False,
        return_dict: bool = True,
    ):
        input_ids, mask, token_type_ids, position_ids = self._check_inputs(
            input_ids, attention_mask, token_type_ids, position_ids
        )
        dp, cm = self.datapath, self.compiled
        tracer = Tracer(dp) if return_trace else None
        rec = tracer if tracer is not None else _no_trace
        num_heads = self.config["num_attention_heads"]

        h = embeddings_forward(dp, cm.embeddings, input_ids, token_type_ids, position_ids, rec)
        emb_scale = cm.embeddings.output_activation.out_scale
        hidden, attentions = [dp.dequantize(h)], []
        for i, layer in enumerate(cm.layers):
            h, probs = layer_forward(
                dp, layer, dp.layer_input(h, emb_scale), mask, num_heads, rec, f"encoder.layer.{i}."
            )
            hidden.append(dp.dequantize(h))
            attentions.append(dp.dequantize(probs))

        last = dp.dequantize(h)
        pooled = pooler_forward(cm.pooler, last) if cm.pooler is not None else None
        out = IBertModelOutput(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            trace=tracer.values if tracer else None,
            trace_meta=tracer.meta if tracer else None,
            last_hidden_state_int=dp.integers(h).astype(np.int8),
            last_hidden_state_scale=h.scale,
        )
        return out if return_dict else out.to_tuple()

    forward = __call__

    def __repr__(self):
        c = self.config
        return (
            f"IBertModel(datapath={self.datapath.name!r}, layers={c['num_hidden_layers']}, "
            f"hidden={c['hidden_size']}, heads={c['num_attention_heads']}, source={self.source!r})"
        )


def _as_int_array(name, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    return a.astype(np.int64)


def _reshape_like(name, a, shape):
    if a.ndim == 1 and shape[0] == 1:
        a = a[None, :]
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape} (same as input_ids)")
    return a
