"""Op-by-op replay: feed each of our kernels the exact inputs transformers gave the module
of the same name, and compare the integers.

This isolates a kernel bug from a cascade: a difference in op N cannot come from ops
before N. The constants of each op are re-derived from the scales the module actually
received (the same compile functions the model uses), so constant derivation is checked
too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import numpy as np

from .. import kernels as K
from ..compile import (
    act_scale,
    embedding_params,
    gelu_params,
    layernorm_params,
    linear_params,
    requant_params,
    softmax_params,
)
from ..dataflow import Op, module_kind, op_of, quant_act_bits, run_op
from ..datapath import Datapath, QTensor, TransformersDatapath
from ..intops import SATURATION_I64
from ..quant import F32


@dataclass
class OpComparison:
    """Agreement of one op: elements, how many equal, the largest |difference|, first index."""

    name: str
    kind: str
    elements: int
    equal: int
    max_abs_diff: int
    first_diff_index: tuple | None

    @property
    def all_equal(self) -> bool:
        return self.equal == self.elements


def compare_integers(name: str, kind: str, ours: np.ndarray, theirs: np.ndarray) -> OpComparison:
    """Elementwise comparison of two integer arrays of the same shape."""
    ours = np.asarray(ours, dtype=np.int64)
    theirs = np.asarray(theirs, dtype=np.int64)
    if ours.shape != theirs.shape:
        raise ValueError(f"{name}: shape {ours.shape} != transformers' {theirs.shape}")
    diff = ours != theirs
    first = tuple(int(i) for i in np.argwhere(diff)[0]) if diff.any() else None
    return OpComparison(
        name=name,
        kind=kind,
        elements=int(ours.size),
        equal=int(ours.size - diff.sum()),
        max_abs_diff=int(np.abs(ours - theirs).max()) if ours.size else 0,
        first_diff_index=first,
    )


#: A QuantAct called as transformers calls the module: one requantization of its input
#: (plus identity), whatever op of the dataflow it belongs to.
REQUANTIZE_ROW = Op("QuantAct", "QuantAct", "requantize", ("x",), "act")


def _f32(a):
    return np.asarray(a, dtype=F32)


def as_datapath_input(dp: Datapath, x_f32, scale_f32) -> QTensor:
    """transformers' (value, scale) pair as an input of datapath ``dp``.

    The transformers datapath takes it as is. The exact datapath takes the integer the
    pair stands for, ``rint(x / s)`` (minus infinity — a masked score — becomes the
    exact datapath's mask sentinel)."""
    if isinstance(dp, TransformersDatapath):
        return QTensor(_f32(x_f32), _f32(scale_f32))
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = _f32(x_f32) / _f32(scale_f32)
    q = np.where(np.isfinite(ratio), np.rint(np.nan_to_num(ratio)), -float(SATURATION_I64))
    return QTensor(q.astype(np.int64), _f32(scale_f32))


class NotReplayable(Exception):
    """This op has no stand-alone counterpart in the datapath (see the message)."""


def replay_op(dp: Datapath, get: Callable[[str], np.ndarray], name: str, args, kwargs) -> QTensor:
    """Run our kernel for module ``name`` on transformers' inputs ``args``/``kwargs``: the
    module's op of :mod:`ibert_ref.dataflow` through its one dispatcher, with constants
    derived from the scales the module received (IntSoftmax: its i-exp op, then its
    normalisation)."""
    op, kind = op_of(name), module_kind(name)
    if kind == "QuantEmbedding":
        return run_op(dp, op, embedding_params(dp, get(name + ".weight")), [np.asarray(args[0])])
    scale_arg = args[1] if len(args) > 1 else kwargs.get("scaling_factor")
    if kind == "QuantAct" and scale_arg is None:
        # a float producer (force_dequant): QuantAct's input-quantization path, which
        # ignores any identity (transformers' behaviour, see kernels.quantize_input)
        bits = quant_act_bits(name)
        return run_op(dp, REQUANTIZE_ROW, K.QuantizeInputParams(bits, act_scale(get, name, bits)), [_f32(args[0])])
    x, s = _f32(args[0]), _f32(scale_arg)
    if kind == "QuantAct":
        if op.kernel != "requantize" and not isinstance(dp, TransformersDatapath):
            raise NotReplayable(
                "the exact datapath folds i-exp's left shift into this requantization "
                "(exp_int, up to ~2^70, is never materialised): replay IntSoftmax as a whole"
            )
        bits = quant_act_bits(name)
        identity = kwargs.get("identity", args[2] if len(args) > 2 else None)
        id_scale = kwargs.get("identity_scaling_factor", args[3] if len(args) > 3 else None)
        params = requant_params(bits, act_scale(get, name, bits), s, None if identity is None else _f32(id_scale))
        ins = [as_datapath_input(dp, x, s)] + ([] if identity is None else [as_datapath_input(dp, identity, id_scale)])
        return run_op(dp, REQUANTIZE_ROW, params, ins)
    if kind == "QuantLinear":
        params = linear_params(dp, get(name + ".weight"), get(name + ".bias"), s)
        return run_op(dp, op, params, [as_datapath_input(dp, x, s)])
    if kind == "IntSoftmax":
        params = softmax_params(dp, s.reshape(1), act_scale(get, name + ".act", quant_act_bits(name + ".act")))
        exp16 = run_op(dp, op_of(name + ".act"), params, [dp.recover(as_datapath_input(dp, x, s.reshape(1)))])
        return run_op(dp, op, params, [exp16])
    if kind == "IntGELU":
        return run_op(dp, op, gelu_params(dp, s), [as_datapath_input(dp, x, s)])
    if kind == "IntLayerNorm":
        params = layernorm_params(dp, get(name + ".weight"), get(name + ".bias"), get(name + ".shift"))
        return run_op(dp, op, params, [as_datapath_input(dp, x, s)])
    raise KeyError(kind)


def replay_capture(capture, get: Callable[[str], np.ndarray], dp: Datapath | None = None) -> Dict[str, OpComparison]:
    """Replay every captured module call (all calls of a module called twice) and compare
    our integers with transformers'. Returns ``{name: OpComparison}`` in capture order;
    a module called twice is compared on both calls (the entry covers both)."""
    dp = dp or TransformersDatapath()
    results: Dict[str, OpComparison] = {}
    for name, calls in capture.calls.items():
        if name not in capture.trace:
            continue
        kind = module_kind(name)
        total = None
        for call in calls:
            try:
                ours = dp.integers(replay_op(dp, get, name, call.inputs.args, call.inputs.kwargs))
            except NotReplayable:
                break
            cmp = compare_integers(name, kind, ours, call.trace)
            if total is None:
                total = cmp
            else:
                total = OpComparison(
                    name=name,
                    kind=kind,
                    elements=total.elements + cmp.elements,
                    equal=total.equal + cmp.equal,
                    max_abs_diff=max(total.max_abs_diff, cmp.max_abs_diff),
                    first_diff_index=total.first_diff_index or cmp.first_diff_index,
                )
        if total is not None:
            results[name] = total
    return results
