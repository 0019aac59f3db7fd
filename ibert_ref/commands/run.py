"""``ibert-ref run TEXT``: one integer forward pass, printed per op (range and bit width)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import add_model_options, load_model_and_tokenizer
from ..quant import bits_needed_signed


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the integer model on a text and print every op's integer range and width",
        description="Tokenize TEXT, run the integer I-BERT and print, per op, the integer "
        "range, the bits it needs and the bits its module declares, then the output vector.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("text", nargs="+", help="input text(s); several texts form a padded batch")
    add_model_options(p)
    p.add_argument("--layers", default=None, help="only print these layers, e.g. '0' or '0,3'")
    p.add_argument("--values", type=int, default=8, help="how many output values to print")
    p.set_defaults(func=run)


def format_trace_table(trace, meta, layers=None) -> list[str]:
    """Rows ``op | dtype | shape | min | max | bits needed | bits declared``."""
    rows = [f"{'op':58s} {'dtype':6s} {'shape':>14s} {'min':>16s} {'max':>16s} {'need':>4s} {'decl':>4s}"]
    for name, q in trace.items():
        if layers is not None and name.startswith("encoder.layer."):
            if int(name.split(".")[2]) not in layers:
                continue
        lo, hi = int(q.min()), int(q.max())
        need = bits_needed_signed(lo, hi)
        decl = meta[name].bits
        flag = "  !" if need > decl else ""
        shape = "x".join(map(str, q.shape))
        rows.append(f"{name:58s} {str(q.dtype):6s} {shape:>14s} {lo:>16d} {hi:>16d} {need:>4d} {decl:>4d}{flag}")
    return rows


def format_overflow_events(events) -> list[str]:
    """One line per op and part where a hardware profile wrapped or saturated (empty: none)."""
    if not events:
        return []
    lines = [f"overflow events ({len(events)}): op [part]: action, count, first flat index, exact -> produced"]
    for ev in events:
        lines.append(
            f"  {ev.op} [{ev.part}]: {ev.action} in {ev.bits} bits, {ev.count} element(s), "
            f"first at {ev.first_index}: exact {ev.exact} -> produced {ev.produced}"
            + (f" ({ev.detail})" if ev.detail else "")
        )
    return lines


def run(args) -> int:
    from ..hardware.accumulate import IntegerOverflowError

    model, tokenizer = load_model_and_tokenizer(args)
    enc = tokenizer(args.text)
    try:
        out = model(enc["input_ids"], attention_mask=enc["attention_mask"], return_trace=True)
    except IntegerOverflowError as exc:
        print(f"ibert-ref run: overflow (overflow='raise'): {exc}", file=sys.stderr)
        return 3
    layers = None if args.layers is None else {int(x) for x in args.layers.split(",")}
    print(f"model: {model.source}")
    print(f"datapath: {model.datapath.name}   tokens: {enc['input_ids'].shape[1]}   batch: {enc['input_ids'].shape[0]}")
    print(f"input_ids[0]: {enc['input_ids'][0].tolist()}")
    print()
    print("\n".join(format_trace_table(out.trace, out.trace_meta, layers)))
    print()
    if hasattr(model.datapath, "describe"):
        print(f"profile: {model.datapath.describe()}")
        print("\n".join(format_overflow_events(out.overflow_events) or ["overflow events: none"]))
        print()
    q = out.last_hidden_state_int[0, 0]
    n = args.values
    print(f"output (token 0, first {n} of {q.shape[0]} channels):")
    print(f"  int8:    {q[:n].tolist()}")
    print(f"  scale:   {float(np.asarray(out.last_hidden_state_scale).reshape(-1)[0]):.9g}")
    print(f"  float32: {np.array2string(out.last_hidden_state[0, 0, :n], precision=5)}")
    if out.pooler_output is not None:
        print(f"  pooler:  {np.array2string(out.pooler_output[0, :n], precision=5)}")
    return 0
