"""Per-run log of what a datapath did inside each op: intermediate widths and overflow events.

A kernel call does not know which module of the model it serves; the model's tracer does.
So a datapath (or a kernel, through :meth:`ibert_ref.datapath.Datapath.note`) files what it
sees under a *family* (``"linear"``, ``"requantize"``, ``"exp"``, ...) and a *part* (``"acc"``,
``"poly"``, ...). The items wait in a pending list until the model's tracer reports the op it
just produced (``end_op(name, kind)``); the op then claims the pending items of the families
it is made of (:data:`FAMILIES_OF_KIND`). Items of other families stay pending for a later
op: the first call of the embeddings' 16-bit QuantAct, for instance, is not followed by its
own trace record but by a table lookup, and is claimed by the second call of that QuantAct
(:mod:`ibert_ref.dataflow`).

Two kinds of item:

* :class:`WidthNote`: the signed min/max of an intermediate (only when ``collect_widths``),
  with the width the profile models it in (:class:`Register`).
* :class:`OverflowRecord`: a place where a profile wrapped, saturated, or (``overflow="raise"``)
  would have had to: element count, first flat index, the exact value and the value produced.
  ``"raise"`` records raise :class:`~ibert_ref.hardware.accumulate.IntegerOverflowError` when
  their op is named, so the error names the op.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional

import numpy as np

from .accumulate import IntegerOverflowError

#: Which kernel families each traced module kind is made of (the model's ``rec(name, kind)``).
FAMILIES_OF_KIND = {
    "QuantEmbedding": (),
    "QuantAct": ("requantize", "exp", "scores", "context", "quantize_input"),
    "QuantLinear": ("linear",),
    "IntSoftmax": ("softmax",),
    "IntGELU": ("gelu",),
    "IntLayerNorm": ("layernorm",),
}

#: Families whose items belong to the attention block rather than to the op that claims them.
_ATTENTION_PARTS = ("scores", "context")

UNATTRIBUTED = "(unattributed)"


@dataclass(frozen=True)
class Register:
    """A register width: ``bits`` and signedness (``None`` bits: the value is never held)."""

    bits: Optional[int]
    signed: bool = True

    def __str__(self) -> str:
        if self.bits is None:
            return "-"
        return f"{'s' if self.signed else 'u'}{self.bits}"

    def holds(self, lo: int, hi: int) -> bool:
        """Whether every integer in [lo, hi] fits."""
        if self.bits is None:
            return True
        if self.signed:
            return -(1 << (self.bits - 1)) <= lo and hi <= (1 << (self.bits - 1)) - 1
        return 0 <= lo and hi <= (1 << self.bits) - 1


S32, U32, S64, U64 = Register(32), Register(32, False), Register(64), Register(64, False)


@dataclass(frozen=True)
class WidthNote:
    """The range of one intermediate of one op: ``lo``/``hi`` as Python ints (exact, any width)."""

    op: str
    family: str
    part: str
    lo: int
    hi: int
    provided: Register
    nominal: Register  # what I-BERT's "integer-only, INT32" design assigns (32 bits)
    at: str = ""  # the traced op whose report claimed this note (for ordering)


@dataclass(frozen=True)
class OverflowRecord:
    """One op-part where a profile's register could not hold the exact value.

    ``action``: ``"wrapped"``, ``"saturated"``, ``"raise"`` (stopped the run), or ``"kept"``
    (``overflow="exact"``: the value is kept exact, the record says where it would not fit).
    ``count`` elements (or element x k-chunk incidents for GEMMs); the first at flat index
    ``first_index`` of the part's array, whose exact value is ``exact`` and whose produced
    value is ``produced``.
    """

    op: str
    family: str
    part: str
    action: str
    bits: int
    count: int
    first_index: int
    exact: int
    produced: int
    detail: str = ""

    def describe(self) -> str:
        more = f"; {self.detail}" if self.detail else ""
        return (
            f"{self.op} [{self.part}]: {self.action} in {self.bits} bits, {self.count} element(s); "
            f"first at flat index {self.first_index}: exact {self.exact}, produced {self.produced}{more}"
        )


def int_range(values) -> tuple:
    """(min, max) of an integer-valued array as Python ints ((0, 0) when empty)."""
    a = np.asarray(values)
    if a.size == 0:
        return 0, 0
    if a.dtype.kind == "f":
        a = np.rint(a[np.isfinite(a)]) if not np.isfinite(a).all() else np.rint(a)
        if a.size == 0:
            return 0, 0
    return int(a.min()), int(a.max())


def overflow_record(family, part, action, bits, exact, produced, out_of_range, detail="") -> OverflowRecord:
    """Build a record from same-shaped arrays of exact and produced values and the mask of
    elements that did not fit (at least one must be set)."""
    flat = np.asarray(out_of_range).ravel()
    first = int(np.argmax(flat))
    return OverflowRecord(
        op="",
        family=family,
        part=part,
        action=action,
        bits=int(bits),
        count=int(np.count_nonzero(flat)),
        first_index=first,
        exact=int(np.asarray(exact).ravel()[first]),
        produced=int(np.asarray(produced).ravel()[first]),
        detail=detail,
    )


class OpLog:
    """Pending items of the current op and the claimed ones of the current run."""

    def __init__(self, collect_widths: bool = False):
        self.collect_widths = collect_widths
        self.begin_run()

    def begin_run(self) -> None:
        self._pending: List[tuple] = []  # (family, item)
        self.notes: List[WidthNote] = []
        self.events: List[OverflowRecord] = []

    # -- filing -------------------------------------------------------------------------
    def note(self, family: str, part: str, lo: int, hi: int, provided: Register, nominal: Register) -> None:
        if self.collect_widths:
            self._pending.append((family, WidthNote("", family, part, int(lo), int(hi), provided, nominal)))

    def event(self, record: OverflowRecord) -> None:
        self._pending.append((record.family, record))

    # -- claiming -----------------------------------------------------------------------
    @staticmethod
    def _op_name(name: str, family: str) -> str:
        if family in _ATTENTION_PARTS and ".attention.self." in name:
            return name.split(".attention.self.")[0] + ".attention.self"
        return name

    def end_op(self, name: str, kind: str) -> None:
        """Give the pending items of ``kind``'s families the op name ``name``; raise if one of
        them is a ``"raise"`` overflow."""
        families = FAMILIES_OF_KIND.get(kind)
        keep, raised = [], None
        for family, item in self._pending:
            if families is not None and family not in families:
                keep.append((family, item))
                continue
            item = replace(item, op=self._op_name(name, family))
            if isinstance(item, WidthNote):
                self.notes.append(replace(item, at=name))
            else:
                self.events.append(item)
                if item.action == "raise" and raised is None:
                    raised = item
        self._pending = keep
        if raised is not None:
            more = f" ({raised.detail})" if raised.detail else ""
            raise IntegerOverflowError(
                raised.op,
                f"[{raised.part}] does not fit {raised.bits} bits (overflow='raise'): {raised.count} element(s), "
                f"first at flat index {raised.first_index}, exact value {raised.exact}{more}",
            )

    def end_run(self) -> List[OverflowRecord]:
        """Name what is left ``(unattributed)`` and return the run's overflow records."""
        if self._pending:
            self.end_op(UNATTRIBUTED, "*")
        return list(self.events)
