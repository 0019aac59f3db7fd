"""I-BERT task models: the five heads of transformers' I-BERT on the integer encoder.

Same class names, constructors and outputs as transformers::

    IBertForMaskedLM                 logits (B, T, vocab)          labels (B, T), -100 ignored
    IBertForSequenceClassification   logits (B, num_labels)        labels: see problem_type
    IBertForMultipleChoice           logits (B, num_choices)       input_ids (B, choices, T)
    IBertForTokenClassification      logits (B, T, num_labels)     labels (B, T), -100 ignored
    IBertForQuestionAnswering        start_logits, end_logits (B, T)  start/end_positions (B,)

The encoder is :class:`~ibert_ref.model.IBertModel` (integer, any datapath). The heads and
the pooler run in float32 exactly as transformers runs them (``nn.Linear``, ``tanh``, erf
GELU, ``nn.LayerNorm``; :mod:`ibert_ref.float_ops`): with ``datapath="transformers",
gemm="torch"`` logits and losses equal transformers' bit for bit. ``integer_heads=True``
runs them in integer arithmetic instead (:mod:`ibert_ref.integer_heads`).

Checkpoints: a task checkpoint (``ibert.``-prefixed encoder keys plus the head's keys)
loads into its class; a checkpoint without the head's weights (e.g. a base ``IBertModel``)
is refused unless ``allow_missing_head=True``, which fills the missing head weights with
zeros (LayerNorm weight: ones) and warns — transformers would initialise them randomly;
a golden model does not invent weights silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from .compile import CompileError, PoolerParams, act_out_scale
from .dataflow import WORD_EMBEDDINGS, block_output_params
from .float_ops import IGNORE_INDEX, FloatLayerNormParams, FloatLinearParams, FloatOps
from .integer_heads import IntegerLinearHead, IntegerLMHead, IntegerTanhHead
from .loading import CheckpointError
from .model import IBertModel, IBertModelOutput
from .quant import F32

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


# ---------------------------------------------------------------------------------------
# outputs
class _Output:
    """transformers' ``ModelOutput`` behaviour: ``to_tuple()`` / indexing give the
    non-None values of :attr:`_tuple_fields`, in order."""

    _tuple_fields: tuple = ()

    def to_tuple(self):
        return tuple(getattr(self, f) for f in self._tuple_fields if getattr(self, f) is not None)

    def __getitem__(self, i):
        return self.to_tuple()[i]


@dataclass
class _HeadOutputBase(_Output):
    #: the encoder's full output (integers, trace, pooler output)
    encoder: Optional[IBertModelOutput] = None
    #: ``integer_heads=True``: the int32 logits and their (single) float32 scale
    logits_int: Optional[np.ndarray] = None
    logits_scale: Optional[np.ndarray] = None

    @property
    def trace(self):
        return None if self.encoder is None else self.encoder.trace


@dataclass
class MaskedLMOutput(_HeadOutputBase):
    loss: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    _tuple_fields = ("loss", "logits", "hidden_states", "attentions")


@dataclass
class SequenceClassifierOutput(MaskedLMOutput):
    pass


@dataclass
class MultipleChoiceModelOutput(MaskedLMOutput):
    pass


@dataclass
class TokenClassifierOutput(MaskedLMOutput):
    pass


@dataclass
class QuestionAnsweringModelOutput(_HeadOutputBase):
    loss: Optional[np.ndarray] = None
    start_logits: Optional[np.ndarray] = None
    end_logits: Optional[np.ndarray] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    #: ``integer_heads=True``: start/end int32 logits (B, T, 2 stacked) share ``logits_scale``
    _tuple_fields = ("loss", "start_logits", "end_logits", "hidden_states", "attentions")


# ---------------------------------------------------------------------------------------
# the shared machinery
def num_labels_of(config: dict) -> int:
    """``len(id2label)`` when the config has it (that is what transformers keeps), else
    ``num_labels``, else transformers' default 2."""
    if config.get("id2label"):
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


class IBertPreTrainedHead:
    """Base of the five task models: an integer encoder plus a float32 (or integer) head.

    Subclasses declare the head's checkpoint keys (:meth:`head_shapes`), how to build the
    float head from them (:meth:`_build_head`) and its forward / loss.
    """

    #: transformers' task models build their encoder without a pooler, except multiple choice.
    add_pooling_layer = False
    output_class = MaskedLMOutput

    def __init__(self, ibert: IBertModel, head: dict, *, missing_head_keys=(), integer_heads: bool = False):
        self.ibert = ibert
        self.config = ibert.config
        self.datapath = ibert.datapath
        self.float_ops: FloatOps = ibert.float_ops
        self.head = head
        self.missing_head_keys: List[str] = list(missing_head_keys)
        self.integer_heads = bool(integer_heads)
        if integer_heads and self.missing_head_keys:
            raise CompileError(
                f"integer_heads=True needs the head's real weights: {self.missing_head_keys} are zero "
                "placeholders (their integer ranges are degenerate)"
            )
        self.integer_head = self._build_integer_head() if integer_heads else None

    # -- construction ----------------------------------------------------------------
    @classmethod
    def head_shapes(cls, config: dict) -> Dict[str, tuple]:
        """``checkpoint key -> shape`` of the head's float tensors."""
        raise NotImplementedError

    @classmethod
    def check_head_config(cls, config: dict) -> None:
        """Reject configurations transformers' class would not run."""

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint,
        datapath="exact",
        gemm: str = "numpy",
        *,
        allow_missing_head: bool = False,
        integer_heads: bool = False,
        backend: str = "numpy",
    ):
        """Compile a loaded :class:`~ibert_ref.loading.Checkpoint` (task or base checkpoint);
        ``backend`` as :meth:`IBertModel.from_pretrained` (the encoder's; the same integers)."""
        config = checkpoint.config
        cls.check_head_config(config)
        shapes = cls.head_shapes(config)
        missing = [k for k in shapes if not checkpoint.has(k)]
        if missing and not allow_missing_head:
            raise CheckpointError(
                f"checkpoint {checkpoint.source!r} has no weights for the {cls.__name__} head "
                f"(missing {missing}); it looks like a checkpoint of another class (e.g. a base "
                "IBertModel). transformers would initialise these randomly; a golden model does not "
                "invent weights. Load a checkpoint fine-tuned for this task, or pass "
                "allow_missing_head=True to use zero placeholders (the logits are then meaningless)."
            )
        if missing:
            warnings.warn(
                f"{cls.__name__}: head weights {missing} are not in {checkpoint.source!r}; "
                "using zero placeholders (LayerNorm weights: ones)",
                UserWarning,
                stacklevel=2,
            )
        tensors = {}
        for key, shape in shapes.items():
            if key in missing:
                tensors[key] = _placeholder(key, shape)
            else:
                tensors[key] = checkpoint.tensor(key, shape=shape).astype(F32)
        ibert = IBertModel.from_checkpoint(
            checkpoint, datapath=datapath, gemm=gemm, add_pooling_layer=cls.add_pooling_layer, backend=backend
        )
        head = cls._build_head(tensors, checkpoint, ibert)
        return cls(ibert, head, missing_head_keys=missing, integer_heads=integer_heads)

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
        allow_missing_head: bool = False,
        integer_heads: bool = False,
        backend: str = "numpy",
    ):
        """Load config.json + model.safetensors (folder, Hub id or the offline cache) and compile.

        ``datapath``/``gemm``/``backend`` as :meth:`IBertModel.from_pretrained`. ``allow_missing_head``:
        accept a checkpoint without this head's weights (zero placeholders, with a warning).
        ``integer_heads``: run pooler/head in integer arithmetic (beyond transformers).
        ``name_or_path=None`` is the bundled tiny model (an ``IBertModel`` checkpoint: it
        has no task head, so it needs ``allow_missing_head=True``).
        """
        from .loading import load_pretrained_checkpoint

        checkpoint = load_pretrained_checkpoint(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls.from_checkpoint(checkpoint, datapath=datapath, gemm=gemm, allow_missing_head=allow_missing_head,
                                   integer_heads=integer_heads, backend=backend)

    @classmethod
    def _build_head(cls, tensors: dict, checkpoint, ibert: IBertModel) -> dict:
        raise NotImplementedError

    def _build_integer_head(self):
        raise NotImplementedError

    # -- forward ---------------------------------------------------------------------
    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, head_mask, flags):
        return self.ibert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds=inputs_embeds,
            head_mask=head_mask,
            output_hidden_states=flags["output_hidden_states"],
            output_attentions=flags["output_attentions"],
            return_trace=flags["return_trace"],
        )

    def float_logits(self, enc: IBertModelOutput) -> np.ndarray:
        """The float32 head on the encoder output (transformers' computation)."""
        raise NotImplementedError

    def int_logits(self, enc: IBertModelOutput):
        """The integer head: (int32 logits as int64, float32 scale (1,))."""
        t = self._integer_head_qtensor(enc)
        return t.data, np.asarray(t.scale, dtype=F32).reshape(1)

    def _integer_head_qtensor(self, enc: IBertModelOutput):
        raise NotImplementedError

    def _logits(self, enc):
        """(logits float32, logits_int or None, scale or None) from the active head."""
        if self.integer_head is None:
            return self.float_logits(enc), None, None
        q, scale = self.int_logits(enc)
        return (q.astype(F32) * scale).astype(F32), q, scale

    def _finish(self, enc, return_dict, loss=None, **values):
        out = self.output_class(
            loss=loss, hidden_states=enc.hidden_states, attentions=enc.attentions, encoder=enc, **values
        )
        return out if return_dict else out.to_tuple()

    def __repr__(self):
        c = self.config
        head = "integer" if self.integer_heads else "float32"
        return (
            f"{type(self).__name__}(datapath={self.datapath.name!r}, layers={c['num_hidden_layers']}, "
            f"hidden={c['hidden_size']}, head={head}, source={self.ibert.source!r})"
        )


def _placeholder(key: str, shape) -> np.ndarray:
    """Zeros, or ones for a LayerNorm weight (transformers' LayerNorm init)."""
    if key.endswith("layer_norm.weight"):
        return np.ones(shape, dtype=F32)
    return np.zeros(shape, dtype=F32)


def _forward_flags(output_attentions, output_hidden_states, return_trace):
    return dict(
        output_attentions=bool(output_attentions),
        output_hidden_states=bool(output_hidden_states),
        return_trace=bool(return_trace),
    )


def _int_labels(name, labels, shape=None) -> np.ndarray:
    a = np.asarray(labels)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
    if shape is not None and a.size != int(np.prod(shape)):
        raise ValueError(f"{name} has shape {a.shape}, expected {tuple(shape)}")
    return a.astype(np.int64)


# ---------------------------------------------------------------------------------------
class _LabelsHead(IBertPreTrainedHead):
    """Heads called as transformers' ``(input_ids, attention_mask, token_type_ids,
    position_ids, ..., labels=)`` whose one ``logits`` output gets ``self.loss(logits, labels)``."""

    def loss(self, logits: np.ndarray, labels) -> np.ndarray:
        raise NotImplementedError

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        inputs_embeds=None,
        head_mask=None,
        labels=None,
        output_attentions=False,
        output_hidden_states=False,
        return_dict=True,
        return_trace=False,
    ):
        enc = self._encode(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, head_mask,
            _forward_flags(output_attentions, output_hidden_states, return_trace),
        )
        logits, q, scale = self._logits(enc)
        loss = None if labels is None else self.loss(logits, labels)
        return self._finish(enc, return_dict, loss=loss, logits=logits, logits_int=q, logits_scale=scale)

    forward = __call__


class _PerTokenLabelsHead(_LabelsHead):
    """Heads whose ``labels`` are one class per token (B, T), -100 ignored: cross-entropy
    over the flattened logits (masked LM, token classification)."""

    def loss(self, logits: np.ndarray, labels) -> np.ndarray:
        v = logits.shape[-1]
        labels = _int_labels("labels", labels, logits.shape[:-1])
        return self.float_ops.cross_entropy(logits.reshape(-1, v), labels.reshape(-1))


# ---------------------------------------------------------------------------------------
class IBertForMaskedLM(_PerTokenLabelsHead):
    """``lm_head``: dense -> erf GELU -> LayerNorm(eps) -> decoder (tied to the float
    word-embedding table) + ``lm_head.bias``. ``labels`` (B, T) with -100 ignored ->
    cross-entropy ``loss``."""

    output_class = MaskedLMOutput

    @classmethod
    def head_shapes(cls, config):
        h, v = config["hidden_size"], config["vocab_size"]
        shapes = {
            "lm_head.dense.weight": (h, h),
            "lm_head.dense.bias": (h,),
            "lm_head.layer_norm.weight": (h,),
            "lm_head.layer_norm.bias": (h,),
            "lm_head.bias": (v,),
        }
        if not config.get("tie_word_embeddings", True):
            shapes["lm_head.decoder.weight"] = (v, h)
        return shapes

    @classmethod
    def _build_head(cls, t, checkpoint, ibert):
        cfg = checkpoint.config
        h, v = cfg["hidden_size"], cfg["vocab_size"]
        if cfg.get("tie_word_embeddings", True):
            decoder_w = checkpoint.tensor(WORD_EMBEDDINGS + ".weight", shape=(v, h)).astype(F32)
        else:
            decoder_w = t["lm_head.decoder.weight"]
        return dict(
            dense=FloatLinearParams(t["lm_head.dense.weight"], t["lm_head.dense.bias"]),
            layer_norm=FloatLayerNormParams(
                t["lm_head.layer_norm.weight"], t["lm_head.layer_norm.bias"], float(cfg.get("layer_norm_eps", 1e-12))
            ),
            decoder=FloatLinearParams(decoder_w, t["lm_head.bias"]),
        )

    def _build_integer_head(self):
        h = self.head
        return IntegerLMHead.build(h["dense"], h["layer_norm"], h["decoder"], _last_scale(self.ibert))

    def float_logits(self, enc):
        f, h = self.float_ops, self.head
        x = f.linear(enc.last_hidden_state, h["dense"].w, h["dense"].b)
        x = f.gelu(x)
        x = f.layer_norm(x, h["layer_norm"])
        return f.linear(x, h["decoder"].w, h["decoder"].b)

    def _integer_head_qtensor(self, enc):
        return self.integer_head(enc.last_hidden_state_int, enc.last_hidden_state_scale)



# ---------------------------------------------------------------------------------------
class IBertForSequenceClassification(_LabelsHead):
    """``classifier``: ``h[:, 0]`` -> dense -> tanh -> out_proj. ``labels``: regression
    (num_labels == 1, MSE), single-label (integer labels, cross-entropy) or multi-label
    (float 0/1 labels (B, num_labels), BCE with logits), or as ``config.problem_type``
    says. Unlike transformers, the inferred problem type is not written back to the config."""

    output_class = SequenceClassifierOutput

    @classmethod
    def head_shapes(cls, config):
        h, n = config["hidden_size"], num_labels_of(config)
        return {
            "classifier.dense.weight": (h, h),
            "classifier.dense.bias": (h,),
            "classifier.out_proj.weight": (n, h),
            "classifier.out_proj.bias": (n,),
        }

    @classmethod
    def check_head_config(cls, config):
        pt = config.get("problem_type")
        if pt is not None and pt not in PROBLEM_TYPES:
            raise CompileError(f"problem_type={pt!r} is not one of {PROBLEM_TYPES}")

    @classmethod
    def _build_head(cls, t, checkpoint, ibert):
        return dict(
            dense=FloatLinearParams(t["classifier.dense.weight"], t["classifier.dense.bias"]),
            out_proj=FloatLinearParams(t["classifier.out_proj.weight"], t["classifier.out_proj.bias"]),
        )

    @property
    def num_labels(self) -> int:
        return num_labels_of(self.config)

    def _build_integer_head(self):
        return IntegerTanhHead.build(self.head["dense"], self.head["out_proj"], _last_scale(self.ibert))

    def float_logits(self, enc):
        f, h = self.float_ops, self.head
        x = f.tanh(f.linear(enc.last_hidden_state[:, 0, :], h["dense"].w, h["dense"].b))
        return f.linear(x, h["out_proj"].w, h["out_proj"].b)

    def _integer_head_qtensor(self, enc):
        return self.integer_head(enc.last_hidden_state_int[:, 0, :], enc.last_hidden_state_scale)

    def problem_type(self, labels: np.ndarray) -> str:
        """transformers' rule: config.problem_type, else regression for one label, else
        single-label for integer labels, else multi-label."""
        pt = self.config.get("problem_type")
        if pt is not None:
            return pt
        if self.num_labels == 1:
            return "regression"
        if np.issubdtype(labels.dtype, np.integer):
            return "single_label_classification"
        return "multi_label_classification"

    def loss(self, logits: np.ndarray, labels) -> np.ndarray:
        labels = np.asarray(labels)
        pt = self.problem_type(labels)
        f = self.float_ops
        if pt == "regression":
            target = labels.astype(F32)
            if self.num_labels == 1:
                return f.mse_loss(np.squeeze(logits), np.squeeze(target))
            return f.mse_loss(logits, target)
        if pt == "single_label_classification":
            return f.cross_entropy(logits.reshape(-1, self.num_labels), _int_labels("labels", labels).reshape(-1))
        return f.bce_with_logits(logits, labels.astype(F32))


# ---------------------------------------------------------------------------------------
class IBertForMultipleChoice(IBertPreTrainedHead):
    """Encoder *with* pooler (``tanh(dense(h[:, 0]))``) -> ``classifier`` (H -> 1), one
    score per choice. Inputs are (B, num_choices, T) (``inputs_embeds`` (B, C, T, H)) and
    are flattened to (B * C, T) for the encoder, as transformers does; hidden states and
    attentions keep that flattened batch. ``labels`` (B,) -> cross-entropy over choices.
    Positional arguments in transformers' order: ``input_ids, token_type_ids, attention_mask, labels``."""

    add_pooling_layer = True
    output_class = MultipleChoiceModelOutput

    @classmethod
    def head_shapes(cls, config):
        h = config["hidden_size"]
        return {
            "pooler.dense.weight": (h, h),
            "pooler.dense.bias": (h,),
            "classifier.weight": (1, h),
            "classifier.bias": (1,),
        }

    @classmethod
    def _build_head(cls, t, checkpoint, ibert):
        if ibert.compiled.pooler is None:  # missing (allow_missing_head): the placeholder pooler
            ibert.compiled.pooler = PoolerParams(w=t["pooler.dense.weight"], b=t["pooler.dense.bias"])
        return dict(
            pooler=FloatLinearParams(ibert.compiled.pooler.w, ibert.compiled.pooler.b),
            classifier=FloatLinearParams(t["classifier.weight"], t["classifier.bias"]),
        )

    def _build_integer_head(self):
        return IntegerTanhHead.build(self.head["pooler"], self.head["classifier"], _last_scale(self.ibert))

    def float_logits(self, enc):
        c = self.head["classifier"]
        return self.float_ops.linear(enc.pooler_output, c.w, c.b)  # (B*C, 1)

    def _integer_head_qtensor(self, enc):
        return self.integer_head(enc.last_hidden_state_int[:, 0, :], enc.last_hidden_state_scale)

    def __call__(
        self,
        input_ids=None,
        token_type_ids=None,
        attention_mask=None,
        labels=None,
        position_ids=None,
        *,
        inputs_embeds=None,
        head_mask=None,
        output_attentions=False,
        output_hidden_states=False,
        return_dict=True,
        return_trace=False,
    ):
        source = input_ids if input_ids is not None else inputs_embeds
        if source is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        lead = 3 if input_ids is not None else 4
        if np.ndim(source) != lead:
            what = "input_ids" if input_ids is not None else "inputs_embeds"
            want = "(batch, num_choices, seq)" if lead == 3 else "(batch, num_choices, seq, hidden)"
            raise ValueError(f"{what} must be {want} for multiple choice, got shape {np.shape(source)}")
        num_choices = np.shape(source)[1]

        def flat(a, trailing=1):
            if a is None:
                return None
            a = np.asarray(a)
            return a.reshape((-1,) + a.shape[a.ndim - trailing:])

        enc = self._encode(
            flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
            flat(inputs_embeds, 2), head_mask,
            _forward_flags(output_attentions, output_hidden_states, return_trace),
        )
        logits, q, scale = self._logits(enc)
        logits = logits.reshape(-1, num_choices)
        q = None if q is None else q.reshape(-1, num_choices)
        loss = None
        if labels is not None:
            loss = self.float_ops.cross_entropy(logits, _int_labels("labels", labels, logits.shape[:1]).reshape(-1))
        return self._finish(enc, return_dict, loss=loss, logits=logits, logits_int=q, logits_scale=scale)

    forward = __call__


# ---------------------------------------------------------------------------------------
class IBertForTokenClassification(_PerTokenLabelsHead):
    """``classifier`` (H -> num_labels) on every token. ``labels`` (B, T), -100 ignored."""

    output_class = TokenClassifierOutput

    @classmethod
    def head_shapes(cls, config):
        h, n = config["hidden_size"], num_labels_of(config)
        return {"classifier.weight": (n, h), "classifier.bias": (n,)}

    @classmethod
    def _build_head(cls, t, checkpoint, ibert):
        return dict(classifier=FloatLinearParams(t["classifier.weight"], t["classifier.bias"]))

    def _build_integer_head(self):
        return IntegerLinearHead.build(self.head["classifier"], _last_scale(self.ibert))

    def float_logits(self, enc):
        c = self.head["classifier"]
        return self.float_ops.linear(enc.last_hidden_state, c.w, c.b)

    def _integer_head_qtensor(self, enc):
        return self.integer_head(enc.last_hidden_state_int, enc.last_hidden_state_scale)



# ---------------------------------------------------------------------------------------
class IBertForQuestionAnswering(IBertPreTrainedHead):
    """``qa_outputs`` (H -> 2) split into ``start_logits`` and ``end_logits`` (B, T).
    ``start_positions``/``end_positions`` (B,) are clamped to [0, T]; T itself is ignored
    (transformers' ``ignore_index``); ``loss = (CE(start) + CE(end)) / 2``."""

    output_class = QuestionAnsweringModelOutput

    @classmethod
    def check_head_config(cls, config):
        if num_labels_of(config) != 2:
            raise CompileError(
                f"IBertForQuestionAnswering needs num_labels == 2 (start, end), got {num_labels_of(config)}"
            )

    @classmethod
    def head_shapes(cls, config):
        h = config["hidden_size"]
        return {"qa_outputs.weight": (2, h), "qa_outputs.bias": (2,)}

    @classmethod
    def _build_head(cls, t, checkpoint, ibert):
        return dict(qa_outputs=FloatLinearParams(t["qa_outputs.weight"], t["qa_outputs.bias"]))

    def _build_integer_head(self):
        return IntegerLinearHead.build(self.head["qa_outputs"], _last_scale(self.ibert))

    def float_logits(self, enc):
        c = self.head["qa_outputs"]
        return self.float_ops.linear(enc.last_hidden_state, c.w, c.b)  # (B, T, 2)

    def _integer_head_qtensor(self, enc):
        return self.integer_head(enc.last_hidden_state_int, enc.last_hidden_state_scale)

    def loss(self, start_logits, end_logits, start_positions, end_positions):
        seq = start_logits.shape[1]
        losses = []
        for name, logits, pos in (("start_positions", start_logits, start_positions),
                                  ("end_positions", end_logits, end_positions)):
            pos = _int_labels(name, pos)
            if pos.ndim > 1:
                pos = pos.squeeze(-1)
            if pos.shape != (logits.shape[0],):
                raise ValueError(f"{name} has shape {np.shape(pos)}, expected ({logits.shape[0]},)")
            # positions outside the sequence are clamped to T, which is ignored
            losses.append(self.float_ops.cross_entropy(logits, np.clip(pos, 0, seq), ignore_index=seq))
        return np.asarray((losses[0] + losses[1]) / F32(2), dtype=F32)

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        inputs_embeds=None,
        head_mask=None,
        start_positions=None,
        end_positions=None,
        output_attentions=False,
        output_hidden_states=False,
        return_dict=True,
        return_trace=False,
    ):
        enc = self._encode(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, head_mask,
            _forward_flags(output_attentions, output_hidden_states, return_trace),
        )
        logits, q, scale = self._logits(enc)
        start = np.ascontiguousarray(logits[..., 0])
        end = np.ascontiguousarray(logits[..., 1])
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss(start, end, start_positions, end_positions)
        return self._finish(
            enc, return_dict, loss=loss, start_logits=start, end_logits=end, logits_int=q, logits_scale=scale
        )

    forward = __call__


def _last_scale(ibert: IBertModel) -> np.ndarray:
    """The float32 scale of the encoder's int8 output (its last QuantAct)."""
    return act_out_scale(block_output_params(ibert.compiled.embeddings, ibert.compiled.layers))


HEAD_CLASSES = {
    cls.__name__: cls
    for cls in (
        IBertForMaskedLM,
        IBertForSequenceClassification,
        IBertForMultipleChoice,
        IBertForTokenClassification,
        IBertForQuestionAnswering,
    )
}

__all__ = list(HEAD_CLASSES) + [
    "IBertPreTrainedHead",
    "MaskedLMOutput",
    "SequenceClassifierOutput",
    "MultipleChoiceModelOutput",
    "TokenClassifierOutput",
    "QuestionAnsweringModelOutput",
    "IGNORE_INDEX",
    "num_labels_of",
]
