"""Op-by-op replay: feed each of our kernels the exact inputs transformers gave the module
of the same name, and compare the integers.

This isolates a kernel bug from a cascade: a difference in op N cannot come from ops
before N. The constants of each op are re-derived from the scales the module actually
received (the same compile functions the model uses), so constant derivation is checked
too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from ..compile import op_params
from ..dataflow import Op, absolute_op, module_kind, op_of, quant_act_bits, run_op
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


def module_params(dp: Datapath, get: Callable[[str], np.ndarray], name: str, in_scales: Sequence) -> Tuple[Op, object]:
    """``(op row, constants)`` for one call of transformers' module ``name`` whose inputs had the
    scales ``in_scales`` (the input, then a QuantAct's identity if the call had one; None for a
    float input): the constants re-derived by :func:`ibert_ref.compile.op_params`, as the model
    compiles them. A QuantAct runs as transformers calls it, one requantization of its input
    (:data:`REQUANTIZE_ROW`), whatever op of the dataflow it belongs to; IntSoftmax's constants
    are its i-exp QuantAct's."""
    kind = module_kind(name)
    if kind == "QuantAct":
        row = replace(REQUANTIZE_ROW, name=name, bits=quant_act_bits(name),
                      identity="identity" if len(in_scales) > 1 else None)
        return row, op_params(dp, row, in_scales, get)
    owner = absolute_op(name + ".act" if kind == "IntSoftmax" else name)
    return op_of(name), op_params(dp, owner, in_scales, get)


def replay_op(dp: Datapath, get: Callable[[str], np.ndarray], name: str, args, kwargs) -> QTensor:
    """Run our kernel for module ``name`` on transformers' inputs ``args``/``kwargs``: the
    module's op of :mod:`ibert_ref.dataflow` through its one dispatcher, with constants
    derived from the scales the module received (:func:`module_params`; IntSoftmax: its i-exp
    op, then its normalisation)."""
    kind = module_kind(name)
    if kind == "QuantEmbedding":
        row, params = module_params(dp, get, name, [None])
        return run_op(dp, row, params, [np.asarray(args[0])])
    scale_arg = args[1] if len(args) > 1 else kwargs.get("scaling_factor")
    if kind == "QuantAct" and scale_arg is None:
        # a float producer (force_dequant): QuantAct's input-quantization path, which
        # ignores any identity (transformers' behaviour, see kernels.quantize_input)
        row, params = module_params(dp, get, name, [None])
        return run_op(dp, row, params, [_f32(args[0])])
    x, s = _f32(args[0]), _f32(scale_arg)
    if kind == "QuantAct":
        if op_of(name).kernel != "requantize" and not isinstance(dp, TransformersDatapath):
            raise NotReplayable(
                "the exact datapath folds i-exp's left shift into this requantization "
                "(exp_int, up to ~2^70, is never materialised): replay IntSoftmax as a whole"
            )
        identity = kwargs.get("identity", args[2] if len(args) > 2 else None)
        id_scale = kwargs.get("identity_scaling_factor", args[3] if len(args) > 3 else None)
        row, params = module_params(dp, get, name, [s] + ([] if identity is None else [_f32(id_scale)]))
        ins = [as_datapath_input(dp, x, s)] + ([] if identity is None else [as_datapath_input(dp, identity, id_scale)])
        return run_op(dp, row, params, ins)
    if kind == "IntSoftmax":
        row, params = module_params(dp, get, name, [s.reshape(1)])
        exp16 = run_op(dp, op_of(name + ".act"), params, [dp.recover(as_datapath_input(dp, x, s.reshape(1)))])
        return run_op(dp, row, params, [exp16])
    row, params = module_params(dp, get, name, [s])
    return run_op(dp, row, params, [as_datapath_input(dp, x, s)])


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
