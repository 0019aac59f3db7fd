"""``ibert-ref run TEXT``: one integer forward pass, printed per op (range and bit width)."""

from __future__ import annotations

import sys

import numpy as np

from . import add_model_options, load_model_and_tokenizer
from ._args import HelpFormatter, bounded_int, check_layers, input_text, layer_list
from ..quant import bits_needed_signed


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the integer model on a text and print every op's integer range and width",
        description="Tokenize TEXT, run the integer I-BERT and print, per op, the integer "
        "range, the bits it needs and the bits its module declares, then the output vector. "
        "Under a hardware profile (--datapath arm, tensor-core, generic) it also runs the exact datapath "
        "and prints how many output codes and trace integers differ from it.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("text", nargs="+", type=input_text, help="input text(s); several texts form a padded batch")
    add_model_options(p)
    p.add_argument("--layers", default=None, type=layer_list(),
                   help="only print these encoder layers, e.g. '0' or '0,3'")
    p.add_argument("--values", type=bounded_int(1, None, "count"), default=8, help="how many output values to print")
    p.set_defaults(func=run)


WIDE_FLAG_LEGEND = "'!' = the values need more bits than the op's module declares (need > decl)"


def wide_ops(trace, meta) -> list[str]:
    """Names of the trace entries whose values need more bits than declared."""
    return [n for n, q in trace.items() if q.size and bits_needed_signed(int(q.min()), int(q.max())) > meta[n].bits]


def format_trace_table(trace, meta, layers=None) -> list[str]:
    """Rows ``op | dtype | shape | min | max | bits needed | bits declared`` (``!``: need > decl)."""
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


def compare_with_exact(out, exact) -> list[str]:
    """Lines saying how many int8 output codes and trace integers of a hardware-profile run
    (``out``) differ from the exact datapath's run (``exact``) on the same inputs."""
    a, b = np.asarray(out.last_hidden_state_int), np.asarray(exact.last_hidden_state_int)
    n_out = int(np.count_nonzero(a != b))
    entries = differing_entries = differing = total = 0
    rescaled = []
    for name, q in out.trace.items():
        if name not in exact.trace or exact.trace[name].shape != q.shape:
            continue
        entries += 1
        total += q.size
        d = int(np.count_nonzero(np.asarray(q, dtype=np.int64) != np.asarray(exact.trace[name], dtype=np.int64)))
        differing += d
        differing_entries += d > 0
        if not np.array_equal(np.asarray(out.trace_meta[name].scale), np.asarray(exact.trace_meta[name].scale)):
            rescaled.append(name)
    lines = [
        "compared with the exact datapath (same inputs):",
        f"  last_hidden_state: {n_out} of {a.size} int8 codes differ ({100.0 * n_out / max(a.size, 1):.2f}%)",
        f"  trace: {differing_entries} of {entries} entries differ, {differing} of {total} integers "
        f"({100.0 * differing / max(total, 1):.2f}%)",
    ]
    if rescaled:
        lines.append(f"  {len(rescaled)} entr{'y is' if len(rescaled) == 1 else 'ies are'} held at another scale "
                     f"than exact (every integer may differ), e.g. {rescaled[0]}")
    return lines


def run(args) -> int:
    from ..hardware.accumulate import IntegerOverflowError
    from ..model import IBertModel

    model, tokenizer, checkpoint = load_model_and_tokenizer(args, with_checkpoint=True)
    layers = args.layers
    check_layers(layers, int(model.config["num_hidden_layers"]))
    enc = tokenizer(args.text)
    try:
        out = model(enc["input_ids"], attention_mask=enc["attention_mask"], return_trace=True)
    except IntegerOverflowError as exc:
        print(f"ibert-ref run: overflow (overflow='raise'): {exc}", file=sys.stderr)
        return 3
    exact = None
    if hasattr(model.datapath, "describe"):  # a hardware profile: also run the exact datapath
        exact = IBertModel.from_checkpoint(checkpoint, datapath="exact")(
            enc["input_ids"], attention_mask=enc["attention_mask"], return_trace=True)
    print(f"model: {model.source}")
    print(f"datapath: {model.datapath.name}   tokens: {enc['input_ids'].shape[1]}   batch: {enc['input_ids'].shape[0]}")
    print(f"input_ids[0]: {enc['input_ids'][0].tolist()}")
    print()
    print("\n".join(format_trace_table(out.trace, out.trace_meta, layers)))
    wide = wide_ops(out.trace, out.trace_meta)
    if wide:
        print(WIDE_FLAG_LEGEND)
        print(f"{len(wide)} of {len(out.trace)} ops need more bits than declared (all layers): {', '.join(wide[:4])}"
              + (" ..." if len(wide) > 4 else ""))
    else:
        print(f"all {len(out.trace)} ops fit their declared widths (need <= decl)")
    print()
    if hasattr(model.datapath, "describe"):
        print(f"profile: {model.datapath.describe()}")
        print("\n".join(format_overflow_events(out.overflow_events) or ["overflow events: none"]))
        print("\n".join(compare_with_exact(out, exact)))
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
