"""IBertModel: the integer forward pass, readable top to bottom like the paper's boxes.

``IBertModel.from_pretrained(name_or_folder, datapath="exact" | "transformers")`` loads a
transformers I-BERT checkpoint (safetensors), compiles every integer constant once
(:mod:`ibert_ref.compile`) and interprets the dataflow (:mod:`ibert_ref.dataflow`: the op table, read top
to bottom like the paper's boxes) on integer arrays. With
``return_trace=True`` the output carries, for every quantized module, the integer array
its output stands for, keyed by transformers' module path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Optional

import numpy as np

from . import kernels as K
from .compile import CompiledModel, EmbeddingsParams, LayerParams, check_tensor_keys, compile_model, expected_shape
from .dataflow import (
    ATTENTION_MASK,
    FIRST_CALL,
    INPUT_IDS,
    LAYER_INPUT,
    POSITION_IDS,
    TOKEN_TYPE_IDS,
    block_ops,
    run_op,
)
from .dataflow import OP_BITS  # noqa: F401 - the declared width per kind (one dict: tests may patch it here)
from .datapath import Datapath, QTensor, TransformersDatapath, make_datapath
from .float_ops import FloatOps, float_ops_for
from .intops import smallest_int_dtype
from .quant import F32



#: Per-chunk element budget of a forward pass: a batch is run in blocks of
#: ``rows_per_chunk(config, T)`` sequences, so that each block's widest activation
#: (``rows * T * max(H, I, heads * T)`` integers: the FFN's ``I``-wide tensors or the
#: ``heads x T x T`` attention scores) has at most this many elements. The integers are those
#: of one call on the whole batch. See :func:`rows_per_chunk` and docs/properties.md.
CHUNK_ELEMENTS = 1 << 24


def rows_per_chunk(config: dict, seq_len: int, budget: Optional[int] = None) -> int:
    """Sequences per block of a forward pass: ``max(1, budget // (T * max(H, I, heads * T)))``
    with ``budget = CHUNK_ELEMENTS`` (2^24 elements: 128 MiB per int64 array of the widest
    activation). A single sequence wider than the budget runs alone (one row per block)."""
    budget = CHUNK_ELEMENTS if budget is None else int(budget)
    width = max(int(config["hidden_size"]), int(config["intermediate_size"]),
                int(config["num_attention_heads"]) * int(seq_len))
    return max(1, budget // max(1, int(seq_len) * width))


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
        self.dp.end_op(self.prefix + name, kind)
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


def _name_ops(dp: Datapath):
    """The tracer's stand-in without a trace: tells the datapath which op just ran (hardware
    profiles file their overflow events under it)."""

    def rec(name, kind, t, bits=None):
        dp.end_op(name, kind)
        return t

    return rec


@dataclass
class IBertModelOutput:
    """Mirrors transformers' ``BaseModelOutputWithPooling`` (float32 NumPy arrays), plus
    the integers: ``trace`` (module path -> int ndarray) when ``return_trace=True``.

    With ``output_hidden_states``: ``hidden_states`` (embeddings output, then each layer's;
    float32 ``q * s``) and their int8 codes/scales ``hidden_states_int``/``hidden_states_scale``.
    With ``output_attentions``: ``attentions`` (float32 probabilities, after ``head_mask``)
    and ``attentions_int`` (integers in [0, 256]) with ``attentions_scale`` (2^-8); both are
    None when ``force_dequant`` runs the softmax in float (``attentions`` then holds the
    float32 softmax).
    """

    last_hidden_state: np.ndarray
    pooler_output: Optional[np.ndarray] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    trace: Optional[Dict[str, np.ndarray]] = None
    trace_meta: Optional[Dict[str, TraceEntry]] = None
    last_hidden_state_int: Optional[np.ndarray] = None
    last_hidden_state_scale: Optional[np.ndarray] = None
    #: Where the datapath wrapped or saturated (hardware profiles; empty otherwise):
    #: :class:`~ibert_ref.hardware.oplog.OverflowRecord` per op and part.
    overflow_events: list = field(default_factory=list)
    hidden_states_int: Optional[tuple] = None
    hidden_states_scale: Optional[tuple] = None
    attentions_int: Optional[tuple] = None
    attentions_scale: Optional[tuple] = None

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


def reproduces_transformers_quirks(dp) -> bool:
    """Whether ``dp`` reproduces transformers' data-flow quirks (the transformers datapath)."""
    return isinstance(dp, TransformersDatapath)


def _batch_array(block, batch: int):
    """An uninitialised array for ``batch`` rows shaped like ``block`` (None stays None)."""
    if block is None:
        return None
    block = np.asarray(block)
    return np.empty((batch,) + block.shape[1:], dtype=block.dtype)


def _batch_tuple(blocks, batch: int):
    return None if blocks is None else tuple(_batch_array(b, batch) for b in blocks)


def _put(whole, sl: slice, block):
    """Write ``block`` into rows ``sl`` of ``whole`` (widening ``whole``'s dtype first if the
    block needed a wider integer dtype than the earlier blocks); returns ``whole``."""
    if whole is None:
        return None
    block = np.asarray(block)
    if np.result_type(whole.dtype, block.dtype) != whole.dtype:
        whole = whole.astype(np.result_type(whole.dtype, block.dtype))
    whole[sl] = block
    return whole


class DegenerateRowError(ValueError):
    """An input row for which an integer kernel is undefined (a constant IntLayerNorm row)."""


def run_block(dp, ops, env: dict, *, params: Callable, rec=None, num_heads: int = 1, mask=None, fops=None,
              head_mask=None, hooks: Optional[Dict[str, Callable]] = None, after: Optional[Callable] = None) -> dict:
    """Interpret one block of :mod:`ibert_ref.dataflow` (``ops``: its rows with absolute names)
    on datapath ``dp``: each op's kernel (:func:`ibert_ref.dataflow.run_op`) on the values of
    its inputs, in order. ``env`` holds the block inputs (ids, the layer input) and receives
    every op's output; it is returned.

    * ``params(op, args)``: the op's compiled constants (the model reads them from its
      :class:`~ibert_ref.compile.LayerParams`; calibration compiles them when the op runs);
    * ``rec(name, kind, value, bits)``: the tracer, called on every traced op's integer output
      (it also tells the datapath which op just ran: overflow records are filed under it);
    * ``mask`` (B, T) 0/1: handed to the scores kernel, which masks as its datapath holds
      values (transformers adds float32's minimum; the exact datapath a sentinel), so the i-exp
      op takes the masked scores alone;
    * ``head_mask`` (nh,) 0/1: multiplies IntSoftmax's output after it is traced;
    * ``hooks``: op name -> ``hook(env)`` computing that op's value instead of its kernel (it may
      fill later ops' values too; an op whose value is already in ``env`` is skipped). Hook
      values are not traced;
    * ``after(op, value)``: called with every kernel output (after tracing).
    """
    hooks = hooks or {}
    for op in ops:
        if op.name in env:
            continue
        if op.name in hooks:
            env[op.name] = hooks[op.name](env)
            continue
        args = [env[n] for n in op.sources if n != ATTENTION_MASK]
        p = params(op, args)
        try:
            out = run_op(dp, op, p, args, num_heads=num_heads, mask=mask, fops=fops)
        except ZeroDivisionError as exc:
            if op.kernel != "int_layernorm":
                raise
            raise DegenerateRowError(
                f"{op.name}: an input row is constant (all {args[0].data.shape[-1]} channels equal, standard "
                "deviation 0), so IntLayerNorm's 2^31 / std is undefined (transformers gives NaN here); the QuantAct "
                "range before this LayerNorm is too coarse for these inputs"
            ) from exc
        if rec is not None and op.traced and isinstance(out, QTensor):
            out = rec(op.name, op.kind, out, op.bits)
        if op.kind == "IntSoftmax" and head_mask is not None:
            out = QTensor(out.data * head_mask.astype(out.data.dtype)[None, :, None, None], out.scale)
        if after is not None:
            after(op, out)
        env[op.name] = out
    return env


def _compiled(group):
    """``params`` for :func:`run_block` from compiled constants: the op's field of ``group``."""
    return lambda op, args: getattr(group, op.params)


def embeddings_forward(
    dp, p: EmbeddingsParams, input_ids, token_type_ids, position_ids, rec, *, inputs_embeds=None, fops=None
) -> QTensor:
    """ids (B,T) -> int8 (B,T,H): the embeddings block of :mod:`ibert_ref.dataflow`
    (word + token type, 16-bit; + position, the same QuantAct; IntLayerNorm; int8).

    ``inputs_embeds`` (B,T,H float32) replaces the word lookup: act1's first call quantizes it
    on its input path (16 bits). transformers' input path ignores the token-type identity (the
    quirk is reproduced by the transformers datapath); the other datapaths add it.
    """
    env = {INPUT_IDS: input_ids, TOKEN_TYPE_IDS: token_type_ids, POSITION_IDS: position_ids}
    ops = block_ops(None)
    hooks = {}
    if inputs_embeds is not None:
        word, first = ops[0].name, next(op for op in ops if op.name.endswith(FIRST_CALL))

        def quantize_embeds(env):
            emb = K.quantize_input(dp, inputs_embeds, p.act1_input)
            if reproduces_transformers_quirks(dp):
                return emb
            return K.requantize(dp, emb, p.act1_input_identity, identity=env[first.identity])

        hooks = {word: lambda env: None, first.name: quantize_embeds}
    env = run_block(dp, ops, env, params=_compiled(p), rec=rec, fops=fops or FloatOps(), hooks=hooks)
    return env[ops[-1].name]


def float_softmax_attention(dp, fops, q: QTensor, k: QTensor, v: QTensor, mask, num_heads, head_mask):
    """transformers' attention with a float softmax (``force_dequant`` softmax/nonlinear):
    ``softmax(q k^T / sqrt(hd) + M)`` and ``probs @ v`` in float32 on the dequantized
    int8 q, k, v (``M`` = float32 min on padded keys). Returns (context, probs) float32."""
    head_dim = q.data.shape[-1] // num_heads
    scores = fops.attention_scores(dp.dequantize(q), dp.dequantize(k), num_heads) / np.float32(math.sqrt(head_dim))
    if mask is not None and not np.all(mask):
        scores = scores + np.where(mask.astype(bool), F32(0.0), np.finfo(F32).min).astype(F32)[:, None, None, :]
    probs = fops.softmax(scores)
    if head_mask is not None:
        probs = probs * head_mask.astype(F32)[None, :, None, None]
    return fops.attention_context(probs, dp.dequantize(v), num_heads), probs


def layer_forward(dp, p: LayerParams, h: QTensor, mask, num_heads, rec, pre, *, fops=None, head_mask=None) -> tuple:
    """One IBertLayer (int8 (B,T,H) -> int8 (B,T,H)): the layer block of
    :mod:`ibert_ref.dataflow` (``pre``: ``encoder.layer.N.``), attention and feed-forward, each
    with residual + IntLayerNorm. Returns the output and the probabilities (B,nh,T,T) in
    [0, 256] after ``head_mask`` (a float32 array when the softmax is dequantized).

    Non-linearities named by ``force_dequant`` run in float32 (``fops``); the QuantAct after
    each of them then quantizes its float input (input-quantization path). A float softmax
    replaces the four attention ops from the scores to the context (a hook)."""
    fops = fops or FloatOps()
    layer = int(pre.split(".")[2])
    ops = block_ops(layer)
    by_kernel = {op.kernel: op.name for op in ops}
    hooks = {}
    if p.softmax is None:
        scores_op = next(op for op in ops if op.kernel == "attention_scores")
        context_op = next(op for op in ops if op.kernel == "attention_context")
        q_name, k_name = scores_op.inputs
        v_name = context_op.inputs[1]

        def float_attention(env):
            context, probs = float_softmax_attention(dp, fops, env[q_name], env[k_name], env[v_name], mask, num_heads,
                                                     head_mask)
            env.update({by_kernel["int_exp"]: None, by_kernel["softmax_normalize"]: probs, context_op.name: context})
            return None

        hooks = {scores_op.name: float_attention}
    env = run_block(dp, ops, {LAYER_INPUT: h}, params=_compiled(p), rec=rec, num_heads=num_heads, mask=mask,
                    fops=fops, head_mask=head_mask, hooks=hooks)
    return env[ops[-1].name], env[by_kernel["softmax_normalize"]]


def pooler_forward(pooler, h_f32: np.ndarray, fops: Optional[FloatOps] = None) -> np.ndarray:
    """float32 ``tanh(h[:, 0] @ W^T + b)`` — transformers runs the pooler in float."""
    fops = fops or FloatOps()
    return fops.tanh(fops.linear(h_f32[:, 0], pooler.w, pooler.b))


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
        #: the float32 ops (pooler, force_dequant fallbacks): torch's kernels with gemm="torch"
        self.float_ops = float_ops_for(datapath)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls, checkpoint, datapath="exact", gemm="numpy", add_pooling_layer: bool = True, backend: str = "numpy"
    ):
        """Compile an already-loaded :class:`~ibert_ref.loading.Checkpoint` (keys with or
        without the ``ibert.`` prefix of task checkpoints). ``add_pooling_layer=False``
        leaves the pooler out, as transformers' task models do. ``backend``: see :meth:`from_pretrained`."""
        dp = make_datapath(datapath, gemm=gemm, backend=backend)
        config = checkpoint.config

        def get(key):
            return _float_tensor(checkpoint, key, checkpoint.tensor(key, shape=expected_shape(key, config)))

        compiled = compile_model(dp, config, get, checkpoint.has, add_pooling_layer=add_pooling_layer)
        check_tensor_keys(checkpoint.tensors, config)
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
        backend: str = "numpy",
    ):
        """Load config.json + model.safetensors (folder, Hub id or the offline cache) and compile.

        ``datapath``: ``"exact"`` (true integers, default) or ``"transformers"`` (bit-exact
        float32 emulation). ``gemm`` (transformers datapath only): ``"numpy"`` or
        ``"torch"``. ``name_or_path=None`` loads the bundled tiny model. ``backend`` (exact
        datapath): ``"numpy"`` (default: NumPy alone) or ``"compiled"`` (numba kernels and an
        exact int8 GEMM, the same integers; needs the ``fast`` extra), :mod:`ibert_ref.backends`.
        """
        from .loading import load_pretrained_checkpoint

        checkpoint = load_pretrained_checkpoint(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls.from_checkpoint(checkpoint, datapath=datapath, gemm=gemm, backend=backend)

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
        attention_mask = _reshape_like(
            "attention_mask", _as_int_array("attention_mask", attention_mask, allow_bool=True), (b, t)
        )
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
        if position_ids.min() < 0:
            raise ValueError(f"position_ids contains {int(position_ids.min())}: position ids must be >= 0")
        if position_ids.max() >= maxpos:
            raise ValueError(
                f"position ids reach {int(position_ids.max())} but max_position_embeddings is {maxpos} "
                f"(sequence too long: at most {maxpos - pad - 1} tokens)"
            )
        return input_ids, attention_mask, token_type_ids, position_ids

    # -- forward -----------------------------------------------------------------------
    def _check_inputs_embeds(self, inputs_embeds, input_ids, attention_mask, token_type_ids, position_ids):
        """Validate ``inputs_embeds`` (B, T, H) float; the rest as for ids. Default positions
        are sequential from ``pad + 1`` (transformers cannot see padding in embeddings)."""
        if input_ids is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        x = np.asarray(inputs_embeds)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"inputs_embeds must be a float array, got dtype {x.dtype}")
        if x.ndim == 2:
            x = x[None]
        hidden = self.config["hidden_size"]
        if x.ndim != 3 or x.shape[-1] != hidden or 0 in x.shape:
            raise ValueError(
                f"inputs_embeds must be (batch, seq, {hidden}), got shape {np.asarray(inputs_embeds).shape}"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError("inputs_embeds contains NaN or inf")
        # Any non-pad id gives transformers' sequential embeds positions (pad+1 .. pad+T).
        pad = self.config.get("pad_token_id", 1)
        stand_in_ids = np.full(x.shape[:2], 0 if pad != 0 else 1, dtype=np.int64)
        _, mask, token_type_ids, position_ids = self._check_inputs(
            stand_in_ids, attention_mask, token_type_ids, position_ids
        )
        return x.astype(F32), mask, token_type_ids, position_ids

    def _check_head_mask(self, head_mask):
        """(nh,) or (layers, nh) of 0/1 -> (layers, nh) int64, or None."""
        if head_mask is None:
            return None
        layers, heads = self.config["num_hidden_layers"], self.config["num_attention_heads"]
        m = np.asarray(head_mask)
        if m.dtype == bool:
            m = m.astype(np.int64)
        if m.ndim == 1:
            m = np.broadcast_to(m, (layers, m.shape[0]))
        if m.shape != (layers, heads):
            raise ValueError(f"head_mask must have shape ({heads},) or ({layers}, {heads}), got {np.shape(head_mask)}")
        if not np.isin(m, (0, 1)).all():
            raise ValueError(
                "head_mask must contain only 0 (head off) and 1 (head on): an integer model cannot "
                "scale attention probabilities by a fraction"
            )
        return m.astype(np.int64)

    # -- forward -----------------------------------------------------------------------
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        inputs_embeds=None,
        head_mask=None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_trace: bool = False,
        return_dict: bool = True,
    ):
        """Run the encoder (and pooler, if the checkpoint has one).

        ``input_ids`` (B, T) ints, or ``inputs_embeds`` (B, T, H) float32 instead;
        ``attention_mask`` 0/1 (B, T); ``token_type_ids`` in [0, type_vocab_size);
        ``position_ids`` (default: RoBERTa positions from the ids); ``head_mask`` 0/1 of
        shape (heads,) or (layers, heads) multiplies each head's attention probabilities
        (the I-BERT docs' semantics; transformers 5 no longer has it).
        """
        if inputs_embeds is not None:
            inputs_embeds, mask, token_type_ids, position_ids = self._check_inputs_embeds(
                inputs_embeds, input_ids, attention_mask, token_type_ids, position_ids
            )
        else:
            if input_ids is None:
                raise ValueError("You have to specify either input_ids or inputs_embeds")
            input_ids, mask, token_type_ids, position_ids = self._check_inputs(
                input_ids, attention_mask, token_type_ids, position_ids
            )
        head_mask = self._check_head_mask(head_mask)
        rows = rows_per_chunk(self.config, input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1])
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if batch <= rows:
            out = self._forward(input_ids, inputs_embeds, mask, token_type_ids, position_ids, head_mask,
                                output_hidden_states, output_attentions, return_trace)
        else:
            out = self._forward_chunked(rows, batch, input_ids, inputs_embeds, mask, token_type_ids, position_ids,
                                        head_mask, output_hidden_states, output_attentions, return_trace)
        return out if return_dict else out.to_tuple()

    def _forward_chunked(self, rows, batch, input_ids, inputs_embeds, mask, token_type_ids, position_ids, head_mask,
                         output_hidden_states, output_attentions, return_trace):
        """The forward on consecutive blocks of ``rows`` batch rows, outputs concatenated along
        the batch axis. Every op of the encoder is per sequence (per-tensor scales fixed at
        compile time, attention within a sequence), so the integers are those of one call on
        the whole batch (tests/test_chunking.py). Overflow records stay per block (their flat
        indices count within the block; the detail names the block's rows); width-census
        notes of every block are kept."""
        dp = self.datapath
        notes, events = [], []
        out = None
        for r0 in range(0, batch, rows):
            sl = slice(r0, min(r0 + rows, batch))
            part = self._forward(
                None if input_ids is None else input_ids[sl], None if inputs_embeds is None else inputs_embeds[sl],
                mask[sl], token_type_ids[sl], position_ids[sl], head_mask, output_hidden_states, output_attentions,
                return_trace)
            log = getattr(dp, "oplog", None)
            if log is not None:
                notes += list(log.notes)
            rows_txt = f"batch rows {sl.start}..{sl.stop - 1} of a chunked batch"
            events += [replace(r, detail=f"{r.detail}; {rows_txt}" if r.detail else rows_txt)
                       for r in part.overflow_events]
            if out is None:  # outputs allocated once for the whole batch, each block written in place
                out = IBertModelOutput(
                    last_hidden_state=_batch_array(part.last_hidden_state, batch),
                    pooler_output=_batch_array(part.pooler_output, batch),
                    trace=None if part.trace is None else {k: _batch_array(v, batch) for k, v in part.trace.items()},
                    trace_meta=part.trace_meta,
                    last_hidden_state_int=_batch_array(part.last_hidden_state_int, batch),
                    last_hidden_state_scale=part.last_hidden_state_scale,
                    hidden_states=_batch_tuple(part.hidden_states, batch),
                    hidden_states_int=_batch_tuple(part.hidden_states_int, batch),
                    hidden_states_scale=part.hidden_states_scale,
                    attentions=_batch_tuple(part.attentions, batch),
                    attentions_int=_batch_tuple(part.attentions_int, batch),
                    attentions_scale=part.attentions_scale,
                )
            for field_name in ("last_hidden_state", "pooler_output", "last_hidden_state_int"):
                setattr(out, field_name, _put(getattr(out, field_name), sl, getattr(part, field_name)))
            if part.trace is not None:
                for k, v in part.trace.items():
                    out.trace[k] = _put(out.trace[k], sl, v)
            for field_name in ("hidden_states", "hidden_states_int", "attentions", "attentions_int"):
                whole, block = getattr(out, field_name), getattr(part, field_name)
                if whole is not None:
                    setattr(out, field_name, tuple(_put(w, sl, b) for w, b in zip(whole, block)))
            del part
        log = getattr(dp, "oplog", None)
        if log is not None:
            log.notes = notes
            log.events = list(events)
        out.overflow_events = events
        return out

    def _forward(self, input_ids, inputs_embeds, mask, token_type_ids, position_ids, head_mask,
                 output_hidden_states, output_attentions, return_trace):
        """The forward pass on validated inputs (one block of batch rows)."""
        dp, cm, fops = self.datapath, self.compiled, self.float_ops
        tracer = Tracer(dp) if return_trace else None
        rec = tracer if tracer is not None else _name_ops(dp)
        dp.begin_run()
        num_heads = self.config["num_attention_heads"]

        h = embeddings_forward(
            dp, cm.embeddings, input_ids, token_type_ids, position_ids, rec, inputs_embeds=inputs_embeds, fops=fops
        )
        emb_scale = h.scale
        hidden, attentions = [h], []
        for i, layer in enumerate(cm.layers):
            h, probs = layer_forward(
                dp,
                layer,
                dp.layer_input(h, emb_scale),
                mask,
                num_heads,
                rec,
                f"encoder.layer.{i}.",
                fops=fops,
                head_mask=None if head_mask is None else head_mask[i],
            )
            hidden.append(h)
            attentions.append(probs)

        overflow_events = dp.end_run()
        last = dp.dequantize(h)
        pooled = pooler_forward(cm.pooler, last, fops) if cm.pooler is not None else None
        float_probs = bool(attentions) and not isinstance(attentions[0], QTensor)
        out = IBertModelOutput(
            last_hidden_state=last,
            pooler_output=pooled,
            trace=tracer.values if tracer else None,
            trace_meta=tracer.meta if tracer else None,
            last_hidden_state_int=dp.integers(h).astype(np.int8),
            last_hidden_state_scale=h.scale,
            overflow_events=overflow_events,
        )
        if output_hidden_states:
            out.hidden_states = tuple(dp.dequantize(t) for t in hidden)
            out.hidden_states_int = tuple(dp.integers(t).astype(np.int8) for t in hidden)
            out.hidden_states_scale = tuple(t.scale for t in hidden)
        if output_attentions:
            if float_probs:
                out.attentions = tuple(attentions)
            else:
                out.attentions = tuple(dp.dequantize(p) for p in attentions)
                out.attentions_int = tuple(dp.integers(p).astype(np.int16) for p in attentions)
                out.attentions_scale = tuple(p.scale for p in attentions)
        return out

    forward = __call__

    def __repr__(self):
        c = self.config
        return (
            f"IBertModel(datapath={self.datapath.name!r}, layers={c['num_hidden_layers']}, "
            f"hidden={c['hidden_size']}, heads={c['num_attention_heads']}, source={self.source!r})"
        )


def _as_int_array(name, a, allow_bool: bool = False) -> np.ndarray:
    """``a`` as int64, refusing ragged lists, non-integer dtypes, bools (unless a mask) and
    unsigned values that do not fit int64. An empty input passes (its caller names it)."""
    try:
        a = np.asarray(a)
    except ValueError as exc:  # numpy >= 1.24: inhomogeneous nested lists
        raise ValueError(f"{name} is ragged (rows of different lengths): pad it to (batch, seq) first") from exc
    if a.size == 0 and a.dtype != object:
        return a.astype(np.int64)
    if a.dtype == bool:
        if not allow_bool:
            raise TypeError(f"{name} must be an integer array, got dtype bool")
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} contains {int(a.max())}, beyond int64")
    return a.astype(np.int64)


def _float_tensor(checkpoint, key, arr) -> np.ndarray:
    """A stored weight / range as float32; refuses integer dtypes and NaN / inf (a Checkpoint
    built in memory skips the loader's own checks)."""
    from .loading import CheckpointError

    if not np.issubdtype(arr.dtype, np.floating):
        raise CheckpointError(f"tensor {key!r} in {checkpoint.source!r} has dtype {arr.dtype}, expected a float type")
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"tensor {key!r} in {checkpoint.source!r} contains non-finite values (NaN or inf)")
    return arr.astype(F32)


def _reshape_like(name, a, shape):
    if a.ndim == 1 and shape[0] == 1:
        a = a[None, :]
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape} (same as input_ids)")
    return a
