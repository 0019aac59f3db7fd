"""Aggregate a sweep's task files into one row per configuration; write ``results.csv``, the
summary table and ``summary.png``.

Aggregation is exact and order-free, so the table does not depend on the number of workers,
the shard size or the order results arrived in: counts are summed (a fraction is
``sum(equal) / sum(total)``, never an average of per-shard fractions); a mean over sentences is
``math.fsum`` of the per-sentence values (correctly rounded, whatever the order) divided by the
count; minima and maxima are order-free anyway.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import List, Optional, Sequence

from .engine import SweepError, load_task
from .grid import PARAMETERS, GridPoint
from .work import EXACT_ID

__all__ = ["collect", "aggregate", "write_csv", "format_table", "plot_summary", "short_op", "CSV_NAME", "PLOT_NAME"]

CSV_NAME = "results.csv"
PLOT_NAME = "summary.png"


def short_op(name: Optional[str]) -> str:
    """``encoder.layer.0.attention.self.query`` -> ``L0.attn.self.query``."""
    if not name:
        return ""
    s = name.replace("encoder.layer.", "L").replace("attention.", "attn.").replace("intermediate.", "inter.")
    return s.replace("embeddings.", "emb.")


def _mean(values) -> Optional[float]:
    return math.fsum(values) / len(values) if values else None


def _frac(equal, total) -> Optional[float]:
    t = sum(total)
    return sum(equal) / t if t else None


def aggregate(results: Sequence[dict], point: Optional[GridPoint], sentences: int) -> dict:
    """One configuration's row from its task results (every shard of the sweep)."""
    index, failed, errors = [], [], []
    codes_equal, codes_total = {}, {}
    lists = {k: [] for k in ("final_equal", "final_total", "cos_last", "cos_pooled", "max_abs_diff",
                             "cos_last_float", "cos_pooled_float", "correct", "agree", "tokens")}
    overflow = {}
    for res in results:
        index.extend(res["index"])
        failed.extend(res.get("failed", []))
        if res.get("error"):
            errors.append((min(res.get("failed") or [0]), res["error"]))
        for g, v in res["codes_equal"].items():
            codes_equal.setdefault(g, []).extend(v)
            codes_total.setdefault(g, []).extend(res["codes_total"][g])
        for k in lists:
            lists[k].extend(res.get(k, []))
        for op, (order, count) in res.get("overflow", {}).items():
            slot = overflow.setdefault(op, [order, 0])
            slot[1] += int(count)
    covered = sorted(index + failed)
    if covered != list(range(sentences)):
        raise SweepError(f"configuration {point.label if point else EXACT_ID}: results do not cover every sentence "
                         "(missing task files); rerun with --resume")
    row = {"config_id": EXACT_ID if point is None else point.config_id,
           "label": "exact (baseline)" if point is None else point.label,
           "base": "exact" if point is None else point.base}
    params = {} if point is None else dict(point.params)
    for k in PARAMETERS:
        v = params.get(k, "")
        row[k] = "none" if (point is not None and v is None) else v
    row["sentences"] = len(index)
    row["tokens"] = sum(lists["tokens"])
    row["failed_sentences"] = len(failed)
    row["error"] = min(errors)[1] if errors else ""
    ops = sorted(((o, op, c) for op, (o, c) in overflow.items() if c), key=lambda t: (t[0], t[1]))
    row["overflow_count"] = sum(c for _, _, c in ops)
    row["overflow_ops"] = len(ops)
    row["overflow_first_op"] = ops[0][1] if ops else ""
    row["overflow_by_op"] = "; ".join(f"{op}={c}" for _, op, c in ops)
    all_eq = [x for g in codes_equal for x in codes_equal[g]]
    all_tot = [x for g in codes_total for x in codes_total[g]]
    row["int8_equal"] = _frac(all_eq, all_tot)
    for g in sorted(codes_equal, key=_group_key):
        row[f"int8_equal_{g}"] = _frac(codes_equal[g], codes_total[g])
    row["final_int8_equal"] = _frac(lists["final_equal"], lists["final_total"])
    row["cos_last_mean"] = _mean(lists["cos_last"])
    row["cos_last_min"] = min(lists["cos_last"]) if lists["cos_last"] else None
    row["cos_pooled_mean"] = _mean(lists["cos_pooled"])
    row["cos_pooled_min"] = min(lists["cos_pooled"]) if lists["cos_pooled"] else None
    row["max_abs_diff"] = max(lists["max_abs_diff"]) if lists["max_abs_diff"] else None
    if lists["cos_pooled_float"] or lists["cos_last_float"]:
        row["cos_last_float_mean"] = _mean(lists["cos_last_float"])
        row["cos_pooled_float_mean"] = _mean(lists["cos_pooled_float"])
        row["cos_pooled_float_min"] = min(lists["cos_pooled_float"]) if lists["cos_pooled_float"] else None
    if lists["agree"]:
        row["accuracy"] = _mean(lists["correct"]) if lists["correct"] else None
        row["agree_with_exact"] = _mean(lists["agree"])
    return row


def _group_key(g: str):
    return (-1, g) if g == "emb" else (int(g[1:]), g) if g[1:].isdigit() else (10**6, g)


def collect(out, points: Sequence[GridPoint], shards: int, sentences: int) -> List[dict]:
    """The rows of a finished sweep (the exact baseline first, then ``points`` in grid order)."""
    out = Path(out)
    rows = []
    for point in [None] + list(points):
        cid = EXACT_ID if point is None else point.config_id
        results = []
        for sid in range(shards):
            res = load_task(out, cid, sid)
            if res is None:
                raise SweepError(f"{out}: result of {cid} on shard {sid} is missing; rerun with --resume")
            results.append(res)
        rows.append(aggregate(results, point, sentences))
    return rows


def _columns(rows: Sequence[dict]) -> List[str]:
    cols: List[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(path, rows: Sequence[dict]) -> None:
    """``results.csv``: one row per configuration, every parameter and metric a column
    (floats at full precision; an empty cell is a metric that does not apply)."""
    from .engine import _atomic_write_text
    import io

    buf = io.StringIO()
    cols = _columns(rows)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in cols])
    _atomic_write_text(Path(path), buf.getvalue())


def _fmt_not_one(v: float, digits: int, max_digits: int, unit: int) -> str:
    """``unit * v`` with ``digits`` decimals, two more at a time (up to ``max_digits``) while a
    ``v`` that is not 1 would print as ``unit``."""
    text = f"{unit * v:.{digits}f}"
    while v != 1.0 and text.startswith(f"{unit}.") and digits < max_digits:
        digits += 2
        text = f"{unit * v:.{digits}f}"
    return text


def fmt_share(v, digits: int = 2, none: str = "-") -> str:
    """A share as a percentage; one that is not 1 but rounds to 100 gets more digits."""
    if v is None or v == "":
        return none
    return _fmt_not_one(float(v), digits, 8, 100) + "%"


def fmt_cos(v, digits: int = 4, none: str = "-") -> str:
    """A cosine; one that is not 1 but rounds to 1.0000 gets more digits."""
    if v is None or v == "":
        return none
    return _fmt_not_one(float(v), digits, 12, 1)


def _pct(v, digits=2) -> str:
    return fmt_share(v, digits)


def _num(v, fmt=".4f") -> str:
    if fmt == ".4f":
        return fmt_cos(v)
    return "-" if v is None else format(v, fmt)


def _count(n: int) -> str:
    if n < 10000:
        return str(n)
    return f"{n / 1000:.0f}k" if n < 10**6 else f"{n / 1e6:.1f}M"


def format_table(rows: Sequence[dict]) -> List[str]:
    """The summary table printed at the end of a sweep (one line per configuration)."""
    has_float = any(r.get("cos_pooled_float_mean") is not None for r in rows)
    has_task = any(r.get("agree_with_exact") is not None for r in rows)
    head = ["configuration", "overflows (first op)", "int8 =", "final =", "pooled cos", "min", "max|diff|"]
    if has_float:
        head.append("vs float")
    if has_task:
        head += ["accuracy", "agree"]
    body = []
    for r in rows:
        ovf = "0" if not r["overflow_count"] else f"{_count(r['overflow_count'])} ({short_op(r['overflow_first_op'])})"
        if r["failed_sentences"]:
            ovf += f" FAILED {r['failed_sentences']}"
        line = [r["label"], ovf, _pct(r["int8_equal"]), _pct(r["final_int8_equal"]), _num(r["cos_pooled_mean"]),
                _num(r["cos_pooled_min"]), _num(r["max_abs_diff"], ".3g")]
        if has_float:
            line.append(_num(r.get("cos_pooled_float_mean")))
        if has_task:
            line += [_pct(r.get("accuracy"), 1), _pct(r.get("agree_with_exact"), 1)]
        body.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    lines += [fmt(b) for b in body]
    lines.append("int8 =: share of all int8 codes (every QuantAct output and embedding, every layer) equal to the exact "
                 "datapath; final =: of the last hidden state; pooled cos: mean-pooled embedding vs exact (mean, min)")
    return lines


def plot_summary(path, rows: Sequence[dict], title: str = "") -> None:
    """``summary.png``. Left: accumulator bits vs the share of int8 codes equal to the exact
    datapath, one line per setting of the other parameters (an overflowing point ringed in red,
    with its overflow count); without an ``acc_bits`` sweep, that share per configuration.
    Right: each configuration's pooled-embedding cosine vs the exact datapath (diamonds: vs the
    float model, when given), annotated with its int8 agreement and overflow count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [r for r in rows if r["config_id"] != EXACT_ID]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 0.9 + max(3.6, 0.3 * len(rows))), dpi=90,
                                   gridspec_kw={"width_ratios": [0.9, 1.1]})
    lines = {}
    for r in configs:
        others = tuple((k, r[k]) for k in PARAMETERS if k != "acc_bits")
        lines.setdefault((r["base"], others), []).append(r)
    lines = {k: rs for k, rs in lines.items() if len(rs) > 1}
    if lines:  # left: accumulator width vs agreement
        swept = [r for rs in lines.values() for r in rs]
        varying = [k for k in PARAMETERS if k != "acc_bits" and len({r[k] for r in swept}) > 1]
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for n, ((base, others), rs) in enumerate(lines.items()):
            rs = sorted(rs, key=lambda r: r["acc_bits"])
            xs = [r["acc_bits"] for r in rs]
            ys = [100 * (r["int8_equal"] or 0) for r in rs]
            desc = ", ".join(f"{k}={dict(others)[k]}" for k in varying)
            label = (base if base != "generic" or not desc else "") + (" " if base != "generic" and desc else "") + desc
            ax1.plot(xs, ys, "-o", color=colours[n % len(colours)], markersize=6, label=label or base, alpha=0.9)
            for r, x, y in zip(rs, xs, ys):
                if r["overflow_count"]:
                    ax1.plot([x], [y], marker="o", markersize=13, markerfacecolor="none", markeredgecolor="red")
                    ax1.annotate(_count(r["overflow_count"]), (x, y), textcoords="offset points",
                                 xytext=(8, -4 - 9 * (n % 3)), fontsize=7, color="red")
        ax1.set_xlabel("accumulator bits (acc_bits)")
        ax1.set_xticks(sorted({r["acc_bits"] for r in swept}))
        ax1.set_title("int8 codes equal to the exact datapath vs accumulator width\n"
                      "(red ring: overflowed; number: overflowed elements)", fontsize=9.5)
        ax1.legend(fontsize=7.5, loc="lower right")
        ax1.set_ylabel("int8 codes equal to exact (%)")
    else:  # no accumulator sweep: agreement per configuration
        ys1 = list(range(len(configs)))[::-1]
        ax1.barh(ys1, [100 * (r["int8_equal"] or 0) for r in configs], alpha=0.45,
                 color=["#d62728" if r["overflow_count"] else "#1f77b4" for r in configs])
        ax1.set_yticks(ys1)
        ax1.set_yticklabels([r["label"] for r in configs], fontsize=7)
        ax1.set_xlabel("int8 codes equal to exact (%)")
        ax1.set_title("int8 codes equal to the exact datapath (red: overflowed)", fontsize=9.5)
    ax1.grid(True, alpha=0.3)
    # right: pooled-embedding cosine per configuration
    ys = list(range(len(rows)))[::-1]
    vals = [r["cos_pooled_mean"] if r["cos_pooled_mean"] is not None else 0.0 for r in rows]
    colour = ["#999999" if r["config_id"] == EXACT_ID else "#d62728" if r["overflow_count"] else "#1f77b4" for r in rows]
    bars = ax2.barh(ys, vals, color=colour, alpha=0.4)
    lo = min(vals + [r.get("cos_pooled_float_mean") or 1.0 for r in rows])
    if any(r.get("cos_pooled_float_mean") is not None for r in rows):
        ax2.plot([r.get("cos_pooled_float_mean") or float("nan") for r in rows], ys, "kD", markersize=4,
                 label="vs float model")
        ax2.legend(fontsize=7, loc="lower right")
    ax2.set_xlim(max(0.0, lo - 0.35 * (1 - lo) - 0.002), 1.0005)
    ax2.set_yticks(ys)
    ax2.set_yticklabels([r["label"] for r in rows], fontsize=7)
    ax2.set_xlabel("mean cosine of the mean-pooled embedding vs the exact datapath")
    ax2.set_title("sentence embedding (red: overflowed)", fontsize=9.5)
    for b, r in zip(bars, rows):
        note = f"{fmt_cos(r['cos_pooled_mean'])}   int8 {fmt_share(r['int8_equal'], 1)}"
        if r["overflow_count"]:
            note += f"   {_count(r['overflow_count'])} overflows"
        if r["failed_sentences"]:
            note += f"   {r['failed_sentences']} failed"
        ax2.annotate(note, (ax2.get_xlim()[0], b.get_y() + b.get_height() / 2), xytext=(3, 0),
                     textcoords="offset points", va="center", fontsize=6.5, color="black")
    ax2.grid(True, axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def read_csv_rows(path) -> List[dict]:
    """results.csv back as dicts of strings (for tests and scripts without pandas)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def timing_json(run) -> str:
    return json.dumps(
        {
            "workers": run.workers,
            "tasks_total": run.tasks_total,
            "tasks_run": run.tasks_run,
            "tasks_reused": run.tasks_reused,
            "sentence_configs": run.sentence_configs,
            "wall_seconds": run.wall_seconds,
            "compute_seconds": run.compute_seconds,
            "setup_seconds": run.setup_seconds,
            "baseline_seconds": run.baseline_seconds,
            "throughput_sentence_configs_per_s": run.throughput,
        },
        indent=1,
    )
