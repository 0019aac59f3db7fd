"""``ibert-ref sweep``: datapath configurations x sentences on Dask; results.csv, summary.png and a
summary table. See docs/sweeps.md."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import add_hub_options
from ._args import HelpFormatter, bounded_int, model_name

GRID_HELP = (
    "configurations: a product spec 'base=generic acc_bits=16,24,32 overflow=wrap,saturate requant=rne,gemmlowp' "
    "(base: generic | arm | tensor-core, several allowed; parameters acc_bits, overflow (wrap|saturate|exact), "
    "k_step, requant, exp, gelu, ln_var, sqrt, probs as in docs/hardware.md) or a JSON/YAML grid file; repeatable"
)


_positive = bounded_int(1, None)


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """--workers N | --scheduler ADDR, and --resume: where the Dask tasks run, and continuing a run."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive, default=None,
                       help="process workers of a local Dask cluster (default: the number of cores)")
    where.add_argument("--scheduler", metavar="ADDR", default=None,
                       help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--resume", action="store_true", help="continue the run in --out: run only unfinished tasks")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run many datapath configurations over many sentences on Dask and compare each with the exact datapath",
        description="Design-space sweep: every configuration of --grid runs on every sentence, on a Dask "
        "LocalCluster (--workers) or an existing cluster (--scheduler), and is compared with the exact "
        "datapath: overflow events by op, int8 codes equal per layer, last-hidden-state and pooled-embedding "
        "cosine, max |diff| (and vs --float-model; accuracy for a labelled file). Writes DIR/results.csv, "
        "DIR/summary.png and one file per finished task (for --resume).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default=None, type=model_name,
                   help="I-BERT checkpoint folder or Hub id (default: the bundled tiny model)")
    add_hub_options(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--texts", metavar="FILE", help="one sentence per line; 'text<TAB>label' lines (every line) "
                     "add the task metric for a sequence-classification checkpoint")
    src.add_argument("--ids", metavar="FILE", help="one sequence of token ids per line (integers, space-separated)")
    p.add_argument("--grid", action="append", required=True, metavar="SPEC|FILE", help=GRID_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (results.csv, summary.png, tasks/)")
    add_cluster_options(p)
    p.add_argument("--float-model", metavar="DIR", default=None,
                   help="float checkpoint (e.g. the BERT the I-BERT was converted from) to compare with too "
                   "(needs torch + transformers on the workers)")
    p.add_argument("--batch-size", type=_positive, default=8, help="sentences of one length per forward pass")
    p.add_argument("--shard-size", type=_positive, default=32, help="sentences per task (whole batches)")
    p.add_argument("--max-length", type=_positive, default=128, help="truncate texts to this many tokens")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to reach --scheduler")
    p.add_argument("--no-plot", action="store_true", help="do not draw summary.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..sweep import ModelSpec, collect, format_table, parse_grid, plot_summary, read_inputs, run_sweep, write_csv
    from ..sweep.report import CSV_NAME, PLOT_NAME, timing_json

    points = parse_grid(args.grid)  # a bad grid fails here, before anything is read or started
    if args.model is None:
        from ..data import default_model_path

        args.model = str(default_model_path())
    fm = args.float_model
    if fm is not None and not os.path.exists(fm) and (fm.startswith((os.sep, ".", "~")) or fm.count("/") != 1):
        raise FileNotFoundError(f"--float-model {fm}: no such folder (give a local folder or a Hub id)")
    spec = ModelSpec(model=args.model, revision=args.revision, cache_dir=args.cache_dir,
                     local_files_only=args.local_files_only, float_model=args.float_model)
    inputs, classification, _ = read_inputs(spec, texts_path=args.texts, ids_path=args.ids, max_length=args.max_length)
    if classification:
        spec = ModelSpec(**{**spec.__dict__, "classification": True})
    out = Path(args.out)
    stored = []
    try:
        sweep = run_sweep(spec, inputs, points, out, workers=args.workers, scheduler=args.scheduler,
                          resume=args.resume, batch_size=args.batch_size, shard_size=args.shard_size,
                          max_length=args.max_length, progress=not args.no_progress,
                          on_result=stored.append, connect_timeout=args.connect_timeout)
    except KeyboardInterrupt:
        print(f"ibert-ref sweep: interrupted; {len(stored)} task(s) of this run are stored in {out / 'tasks'}: "
              "rerun the same command with --resume to finish", file=sys.stderr)
        return 130
    rows = collect(out, points, sweep.shards, sweep.sentences)
    write_csv(out / CSV_NAME, rows)
    (out / "timing.json").write_text(timing_json(sweep) + "\n", encoding="utf-8")
    if not args.no_plot:
        try:
            plot_summary(out / PLOT_NAME, rows, title=f"{Path(spec.model).name}: {sweep.sentences} sentences, "
                         f"{len(points)} configurations vs the exact datapath")
        except ImportError:
            print("ibert-ref sweep: matplotlib is not installed; summary.png not drawn (pip install matplotlib)",
                  file=sys.stderr)
    print(f"model: {spec.model}   sentences: {sweep.sentences} ({rows[0]['tokens']} tokens)   "
          f"configurations: {len(points)} + exact   shards: {sweep.shards}")
    print()
    print("\n".join(format_table(rows)))
    print()
    if sweep.tasks_run:
        busy = sweep.compute_seconds + sweep.setup_seconds
        print(f"ran {sweep.tasks_run} task(s) ({sweep.tasks_reused} reused) on {len(sweep.workers)} worker(s) in "
              f"{sweep.wall_seconds:.1f} s: {sweep.throughput:.2f} sentences x configurations / s; "
              f"worker time {busy:.1f} s (compute {sweep.compute_seconds:.1f} s, load/compile {sweep.setup_seconds:.1f} s)")
    else:
        print(f"all {sweep.tasks_total} task(s) were already stored in {out}; nothing to run")
    written = [CSV_NAME] + ([] if args.no_plot else [PLOT_NAME])
    print(f"written: {', '.join(str(out / w) for w in written)}")
    return 0
