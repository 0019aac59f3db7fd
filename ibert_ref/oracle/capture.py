"""Record the integers every quantized module of a transformers I-BERT produces (the oracle trace).

:func:`capture_transformers_trace` registers forward hooks on every ``QuantEmbedding``, ``QuantAct``,
``QuantLinear``, ``IntGELU``, ``IntSoftmax`` and ``IntLayerNorm`` of an eval-mode transformers
I-BERT, runs one forward pass and returns a :class:`Capture`. Each quantized module returns a
dequantized float32 tensor and its scale ``(output, scale)``; the trace holds the integers
``np.rint(output / scale)``, with ``output / scale`` computed in float32 by torch exactly as the
modules themselves recover integers (scale broadcast over the last axis: (1,) per tensor, (C,) per
channel, or the Python float 1/256 of IntSoftmax).

Names are ``named_modules()`` names of the base ``IBertModel`` (the module paths of
:mod:`ibert_ref.dataflow`); for a task model (``IBertForSequenceClassification`` ...) the ``ibert.``
prefix is stripped.

Expected entries per forward (see ``docs/ibert-dataflow.md``): every module of the dataflow's ops
(:func:`expected_module_names`); the QuantAct the embeddings call twice has its second call as the
entry (the first is in ``Capture.calls``). Never called, so never present: the dead QuantActs of
:mod:`ibert_ref.checkpoint_schema`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from ..dataflow import LAYER, block_ops, module_names

# Module names (relative to ``encoder.layer.{i}.``) that one IBertLayer calls, in dataflow order.
LAYER_MODULES = tuple(dict.fromkeys(op.module for op in LAYER if op.module is not None))

# Module names the embeddings call, in dataflow order (a module called twice once).
EMBEDDING_MODULES = tuple(dict.fromkeys(op.module for op in block_ops(None)))

QUANT_MODULE_CLASSES = ("QuantEmbedding", "QuantAct", "QuantLinear", "IntGELU", "IntSoftmax", "IntLayerNorm")


def expected_module_names(num_hidden_layers):
    """All module names a quant-mode (force_dequant="none") forward records, in dataflow order."""
    return module_names(num_hidden_layers)


class ModuleInputs(NamedTuple):
    """A module call's arguments converted to NumPy: tensors -> arrays (dtype kept), None kept."""

    args: tuple
    kwargs: dict


@dataclass
class ModuleCall:
    """One call of one quantized module.

    ``output`` is the returned float32 tensor as a NumPy array; ``scale`` the returned scaling factor
    as a float32 array (a Python-float scale becomes a 0-d array), or None when the module ran
    dequantized (force_dequant); ``trace`` is ``np.rint(output / scale)`` as int64 (None when
    ``scale`` is None).
    """

    inputs: ModuleInputs
    output: np.ndarray
    scale: np.ndarray | None
    trace: np.ndarray | None


@dataclass
class Capture:
    """The result of :func:`capture_transformers_trace`.

    Attributes:
        trace: ``{name: int64 array}``, ``np.rint(output / scale)`` of each module's last call.
        inputs: ``{name: ModuleInputs(args, kwargs)}`` of each module's last call (for op-by-op
            replay: feed these to our op and compare with ``trace``/``outputs``).
        outputs: ``{name: (output_f32, scale_f32)}`` of each module's last call; the scale is
            float32 with the module's own shape ((1,), (C,), or 0-d for IntSoftmax's 1/256), or None.
        last_hidden_state: float32 (B, T, H), the base model's output (``code * s_out``).
        pooler_output: float32 (B, H) or None (no pooler).
        calls: ``{name: [ModuleCall, ...]}``, every call in order (the embeddings' QuantAct
            called twice has two).
        head_outputs: for a task model, its tensor outputs other than hidden states (e.g.
            ``{"logits": ...}``) as NumPy arrays; empty for ``IBertModel``.
    """

    trace: dict[str, np.ndarray]
    inputs: dict[str, ModuleInputs]
    outputs: dict[str, tuple]
    last_hidden_state: np.ndarray
    pooler_output: np.ndarray | None
    calls: dict[str, list] = field(default_factory=dict)
    head_outputs: dict[str, np.ndarray] = field(default_factory=dict)


def _to_numpy(obj: Any):
    """Tensors -> NumPy copies (dtype kept); tuples/lists/dicts recursively; other values as is."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone().numpy()
    if isinstance(obj, tuple):
        return tuple(_to_numpy(o) for o in obj)
    if isinstance(obj, list):
        return [_to_numpy(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj


def _as_long(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.to(torch.long)
    return torch.as_tensor(np.asarray(x), dtype=torch.long)


def _integer_trace(name, out, scale):
    """``np.rint(out / scale)`` with the division done by torch in float32, as int64."""
    with torch.no_grad():
        q = (out / scale).detach().cpu().numpy()
    q = np.rint(q)
    if not np.all(np.isfinite(q)):
        warnings.warn(f"{name}: non-finite values in output / scale (fully masked row or float32 "
                      f"overflow); they are stored as int64 min", RuntimeWarning, stacklevel=3)
        q = np.where(np.isfinite(q), q, np.iinfo(np.int64).min)
    return q.astype(np.int64)


def _scale_to_numpy(scale):
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor):
        return scale.detach().cpu().clone().numpy().astype(np.float32, copy=False)
    return np.asarray(scale, dtype=np.float32)


def _base_model(model):
    return model.ibert if hasattr(model, "ibert") else model


def capture_transformers_trace(model, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
    """Run one eval forward of a transformers I-BERT and record every quantized module's integers.

    Args:
        model: ``transformers.IBertModel`` in eval mode, or a task model whose ``.ibert`` is one
            (names then lose the ``ibert.`` prefix and the task model's own forward is run).
        input_ids: (B, T) ints (tensor, array or nested list).
        attention_mask, token_type_ids, position_ids: optional (B, T) ints, passed to the model.

    Returns:
        :class:`Capture` with ``trace[name] = np.rint(output / scale)`` (int64; ``output / scale``
        computed in float32 by torch, broadcasting the scale like the modules do), ``inputs[name]``
        (the call's args/kwargs as NumPy), ``outputs[name] = (output_f32, scale_f32)``, the
        float32 ``last_hidden_state`` and ``pooler_output``. A module called twice
        (the embeddings' 16-bit QuantAct) keeps its last call in these dicts; ``calls`` has all.
        Modules that returned a None scale (force_dequant) have ``outputs`` but no ``trace`` entry.

    Raises:
        ValueError: if the model is in training mode (a train forward would re-calibrate it).
    """
    from transformers.models.ibert import quant_modules as qm

    if model.training:
        raise ValueError("capture_transformers_trace needs model.eval(): a train-mode forward "
                         "updates the QuantAct ranges and LayerNorm shifts")
    classes = tuple(getattr(qm, c) for c in QUANT_MODULE_CLASSES)
    base = _base_model(model)

    calls: dict[str, list] = {}
    pending: dict[str, list] = {}
    base_out = {}
    handles = []

    def pre_hook(name):
        def hook(mod, args, kwargs):
            pending.setdefault(name, []).append(ModuleInputs(_to_numpy(args), _to_numpy(kwargs)))
        return hook

    def post_hook(name):
        def hook(mod, args, kwargs, output):
            inputs = pending[name].pop()
            out, scale = output[0], output[1]
            trace = None if scale is None else _integer_trace(name, out, scale)
            calls.setdefault(name, []).append(
                ModuleCall(inputs=inputs, output=_to_numpy(out).astype(np.float32, copy=False),
                           scale=_scale_to_numpy(scale), trace=trace))
        return hook

    def base_hook(mod, args, kwargs, output):
        base_out["last_hidden_state"] = output[0]
        base_out["pooler_output"] = getattr(output, "pooler_output", None) if not isinstance(
            output, tuple) else (output[1] if len(output) > 1 else None)

    for name, mod in base.named_modules():
        if isinstance(mod, classes):
            handles.append(mod.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            handles.append(mod.register_forward_hook(post_hook(name), with_kwargs=True))
    handles.append(base.register_forward_hook(base_hook, with_kwargs=True))

    kwargs = {"input_ids": _as_long(input_ids)}
    for k, v in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                 ("position_ids", position_ids)):
        if v is not None:
            kwargs[k] = _as_long(v)
    try:
        with torch.no_grad():
            result = model(**kwargs)
    finally:
        for h in handles:
            h.remove()

    trace, inputs, outputs = {}, {}, {}
    for name, lst in calls.items():
        last = lst[-1]
        inputs[name] = last.inputs
        outputs[name] = (last.output, last.scale)
        if last.trace is not None:
            trace[name] = last.trace

    head_outputs = {}
    if base is not model:
        items = result.items() if hasattr(result, "items") else enumerate(result)
        for k, v in items:
            if isinstance(v, torch.Tensor) and k not in ("hidden_states", "attentions"):
                head_outputs[str(k)] = _to_numpy(v)

    pooled = base_out.get("pooler_output")
    return Capture(
        trace=trace,
        inputs=inputs,
        outputs=outputs,
        last_hidden_state=_to_numpy(base_out["last_hidden_state"]).astype(np.float32, copy=False),
        pooler_output=None if pooled is None else _to_numpy(pooled).astype(np.float32, copy=False),
        calls=calls,
        head_outputs=head_outputs,
    )


def load_transformers_ibert(folder, model_class="IBertModel"):
    """Load a saved I-BERT with transformers, ``quant_mode`` as in its config.json, in eval mode.

    Args:
        folder: a directory with config.json + model.safetensors (e.g. ``ibert_ref/data/tiny-ibert``).
        model_class: transformers class name; ``"IBertModel"`` also loads the encoder of a saved
            task model (its ``ibert.`` prefix is handled by transformers).

    Returns:
        The model, in eval mode (float32, CPU).
    """
    import transformers

    cls = getattr(transformers, model_class)
    model = cls.from_pretrained(str(folder))
    return model.eval()
