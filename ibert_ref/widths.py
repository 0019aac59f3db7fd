"""Width census: how many bits each integer of the forward pass needs, on given inputs, next to
the bits I-BERT's design gives it and the bits the chosen datapath holds it in.

One forward pass with the datapath's width log switched on. Two sources of rows:

* every traced op output (``out``), as in ``ibert-ref run``;
* the intermediates the kernels report through :meth:`~ibert_ref.datapath.Datapath.note`:
  the attention scores ``Q K^T`` and the ``P V`` accumulator, i-exp's polynomial and the
  value transformers materialises (``poly * 2^(30 - q)``), the softmax sum, factor and
  product, IntGELU's erf polynomial and its product, IntLayerNorm's ``sum(x)``, ``y``, the
  sum of squares ``var`` and ``y * factor`` — and what a hardware profile's variants hold
  instead (``poly >> q``, the int32 GELU's ``x >> k``, ...).

For each row: the signed min/max (exact Python integers), the bits needed (two's complement,
and unsigned when the minimum is >= 0), the **nominal** width (I-BERT's declared width for
op outputs; 32 bits, the "INT32" of integer-only I-BERT, for intermediates) and the width the
**profile** models the value in (``-``: never materialised). Flags: ``!`` the profile's
register cannot hold the value (the run wrapped / saturated it: see the overflow events);
``*`` the value needs more than the nominal width.

    census = width_census(model, input_ids, attention_mask)
    print("\\n".join(census.format(layers={0})))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional

import numpy as np

from .hardware.oplog import OpLog, Register
from .quant import bits_needed_signed

#: Outputs whose width is set by the op itself in every datapath (a clamp or a lookup).
_CLAMPED_KINDS = ("QuantAct", "QuantEmbedding")


def bits_needed_unsigned(lo: int, hi: int) -> Optional[int]:
    """Bits of an unsigned register holding [lo, hi]; None when ``lo < 0``."""
    if lo < 0:
        return None
    return max(int(hi).bit_length(), 1)


@dataclass(frozen=True)
class WidthRow:
    """One integer of one op: its range, the bits it needs and the bits it gets."""

    op: str
    quantity: str
    lo: int
    hi: int
    nominal: Register
    provided: Register

    @property
    def need_signed(self) -> int:
        return bits_needed_signed(self.lo, self.hi)

    @property
    def need_unsigned(self) -> Optional[int]:
        return bits_needed_unsigned(self.lo, self.hi)

    @property
    def fits_profile(self) -> bool:
        return self.provided.holds(self.lo, self.hi)

    @property
    def fits_nominal(self) -> bool:
        return self.nominal.holds(self.lo, self.hi)

    @property
    def flag(self) -> str:
        return ("!" if not self.fits_profile else "") + ("*" if not self.fits_nominal else "")

    def layer(self) -> Optional[int]:
        """The encoder layer index of the op, or None (embeddings)."""
        if self.op.startswith("encoder.layer."):
            return int(self.op.split(".")[2])
        return None


@dataclass
class Census:
    """The rows of a width census, in forward-pass order, and the run's overflow events."""

    datapath: str
    rows: List[WidthRow]
    overflow_events: list = field(default_factory=list)
    input_shape: tuple = ()

    def select(self, layers: Optional[Iterable[int]] = None, flagged_only: bool = False) -> List[WidthRow]:
        """Rows of the given encoder layers (embeddings rows are kept when ``layers`` has -1)."""
        keep = None if layers is None else set(layers)
        out = []
        for row in self.rows:
            layer = row.layer()
            if keep is not None and (-1 if layer is None else layer) not in keep:
                continue
            if flagged_only and not row.flag:
                continue
            out.append(row)
        return out

    def find(self, op_suffix: str, quantity: str) -> WidthRow:
        """The first row whose op ends with ``op_suffix`` and whose quantity is ``quantity``."""
        for row in self.rows:
            if row.op.endswith(op_suffix) and row.quantity == quantity:
                return row
        raise KeyError(f"no census row {op_suffix!r} / {quantity!r}")

    def format(self, layers=None, flagged_only=False, markdown=False) -> List[str]:
        """A text (or Markdown) table of the selected rows."""
        rows = self.select(layers, flagged_only)
        head = ("op", "quantity", "min", "max", "need s", "need u", "I-BERT", "profile", "flag")
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for r in rows:
                cells = (
                    f"`{r.op}`",
                    r.quantity.replace("|", "\\|"),
                    str(r.lo),
                    str(r.hi),
                    str(r.need_signed),
                    "" if r.need_unsigned is None else str(r.need_unsigned),
                    str(r.nominal),
                    str(r.provided),
                    r.flag,
                )
                lines.append("| " + " | ".join(cells) + " |")
            return lines
        width = max([len(r.op) for r in rows] + [2])
        qwidth = max([len(r.quantity) for r in rows] + [8])
        lines = [
            f"{head[0]:{width}s}  {head[1]:{qwidth}s} {head[2]:>15s} {head[3]:>15s} {head[4]:>6s} {head[5]:>6s} "
            f"{head[6]:>6s} {head[7]:>7s} {head[8]}"
        ]
        for r in rows:
            need_u = "" if r.need_unsigned is None else str(r.need_unsigned)
            lines.append(
                f"{r.op:{width}s}  {r.quantity:{qwidth}s} {r.lo:>15d} {r.hi:>15d} {r.need_signed:>6d} {need_u:>6s} "
                f"{str(r.nominal):>6s} {str(r.provided):>7s} {r.flag}"
            )
        return lines


def _output_row(dp, name, q, meta) -> WidthRow:
    lo, hi = (int(q.min()), int(q.max())) if q.size else (0, 0)
    nominal = Register(meta.bits)
    if meta.kind in _CLAMPED_KINDS:
        provided = Register(meta.bits)
    else:
        provided = dp.provided_register(meta.kind, "out")
    return WidthRow(name, "out", lo, hi, nominal, provided)


def _note_rows(notes) -> List[WidthRow]:
    """Aggregate notes of the same op and quantity (an op called twice) into one row each."""
    merged = {}
    for n in notes:
        key = (n.op, n.part)
        if key in merged:
            r = merged[key]
            merged[key] = WidthRow(r.op, r.quantity, min(r.lo, n.lo), max(r.hi, n.hi), r.nominal, r.provided)
        else:
            merged[key] = WidthRow(n.op, n.part, n.lo, n.hi, n.nominal, n.provided)
    return list(merged.values())


def width_census(model, input_ids, attention_mask=None, **call_kwargs) -> Census:
    """Run ``model`` once on the inputs with the width log on and return the :class:`Census`.

    ``call_kwargs`` go to the model call (``token_type_ids``, ``position_ids``, ...). The
    datapath's own log (a hardware profile's overflow events) is restored afterwards.
    """
    dp = model.datapath
    had_own = "oplog" in vars(dp)
    saved = dp.oplog
    dp.oplog = OpLog(collect_widths=True)
    try:
        out = model(input_ids, attention_mask=attention_mask, return_trace=True, **call_kwargs)
        notes = list(dp.oplog.notes)
    finally:
        if had_own:
            dp.oplog = saved
        else:
            del dp.oplog
    by_claim = {}
    for n in notes:
        by_claim.setdefault(n.at, []).append(n)
    rows: List[WidthRow] = []
    for name, q in out.trace.items():
        rows.extend(_note_rows(by_claim.pop(name, [])))
        rows.append(_output_row(dp, name, q, out.trace_meta[name]))
    for leftover in by_claim.values():  # claimed by an untraced name (none in I-BERT)
        rows.extend(_note_rows(leftover))
    shape = tuple(np.asarray(input_ids).shape) if input_ids is not None else ()
    return Census(datapath=dp.name, rows=rows, overflow_events=list(out.overflow_events), input_shape=shape)


# ---------------------------------------------------------------------------------------
# x86 AVX2: where vpmaddubsw's int16 pair sums would saturate in this run
@dataclass(frozen=True)
class PairSaturationRow:
    """One int8 GEMM of a run (QuantLinear or ``Q K^T``) computed the AVX2 way
    (:func:`ibert_ref.hardware.x86.vnni_matmul` with ``madd="vpmaddubsw"``): the exact range of
    the u8 x s8 pair sums ``(x0+128) w0 + (x1+128) w1``, how many leave int16 (saturate), how many
    accumulators change, and by how much at most."""

    op: str
    k: int
    pairs: int
    saturated: int
    outputs: int
    changed: int
    lo: int
    hi: int
    max_delta: int


def vpmaddubsw_pairs(model, input_ids, attention_mask=None, **call_kwargs) -> List[PairSaturationRow]:
    """Run ``model`` once (its own datapath) and recompute each int8 GEMM from the traced int8
    operands as x86 AVX2 would (activations shifted to u8, ``vpmaddubsw`` + ``vpmaddwd``,
    weight-sum compensation). ``P V`` is not listed: probabilities of one row sum to at most
    256, so ``p0 v0 + p1 v1`` stays within ``256 * 128 = 32768`` (never saturates)."""
    from .hardware.x86 import vnni_matmul
    from .dataflow import expand

    out = model(input_ids, attention_mask=attention_mask, return_trace=True, **call_kwargs)
    heads = int(model.config["num_attention_heads"])
    rows = []
    for spec in expand(int(model.config["num_hidden_layers"])):
        if spec.kernel == "quant_linear":
            group = model.compiled.embeddings if spec.layer is None else model.compiled.layers[spec.layer]
            a = np.asarray(out.trace[spec.inputs[0]], dtype=np.int64)
            b = np.asarray(getattr(group, spec.params).w, dtype=np.int64).T
        elif spec.kernel == "attention_scores":
            q, k = (np.asarray(out.trace[n], dtype=np.int64) for n in spec.inputs)
            bsz, t, hidden = q.shape
            a = q.reshape(bsz, t, heads, hidden // heads).transpose(0, 2, 1, 3)
            b = k.reshape(bsz, t, heads, hidden // heads).transpose(0, 2, 3, 1)
        else:
            continue
        got, info = vnni_matmul(a, b, madd="vpmaddubsw")
        exact = np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
        delta = np.abs(got - exact)
        lo, hi = info["pair_range"]
        kk = a.shape[-1]
        rows.append(PairSaturationRow(spec.name, kk, int(exact.size * ((kk + 1) // 2)), info["pair_saturations"],
                                      int(exact.size), int(np.count_nonzero(delta)), lo, hi, int(delta.max())))
    return rows


def format_pair_rows(rows: List[PairSaturationRow], layers=None) -> List[str]:
    """A text table of :func:`vpmaddubsw_pairs` rows (encoder layers in ``layers``; -1 = embeddings)."""
    keep = [r for r in rows if layers is None or
            (int(r.op.split(".")[2]) if r.op.startswith("encoder.layer.") else -1) in layers]
    width = max([len(r.op) for r in keep] + [2])
    lines = [f"{'op':{width}s} {'K':>5s} {'pairs':>10s} {'saturated':>9s} {'outputs':>8s} {'changed':>8s} "
             f"{'pair min':>9s} {'pair max':>9s} {'max |d|':>8s}"]
    for r in keep:
        lines.append(f"{r.op:{width}s} {r.k:5d} {r.pairs:10d} {r.saturated:9d} {r.outputs:8d} {r.changed:8d} "
                     f"{r.lo:9d} {r.hi:9d} {r.max_delta:8d}")
    return lines
