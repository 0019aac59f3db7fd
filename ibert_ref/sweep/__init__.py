"""Design-space sweeps: many datapath configurations x many sentences, on Dask distributed.

    from ibert_ref.sweep import ModelSpec, parse_grid, read_inputs, run_sweep, collect

    spec = ModelSpec("path/to/ibert")
    points = parse_grid(["base=generic acc_bits=16,24,32 overflow=wrap,saturate", "base=arm,tensor-core"])
    inputs, classification, _ = read_inputs(spec, texts_path="sentences.txt")
    run = run_sweep(spec, inputs, points, "sweep-out", workers=2)
    rows = collect("sweep-out", points, run.shards, run.sentences)

The command line is ``ibert-ref sweep`` (see docs/sweeps.md). ``grid`` and ``work`` import
without Dask; ``engine`` needs it only to run.
"""

from .engine import SweepError, SweepInputs, SweepRun, make_shards, read_inputs, run_sweep
from .grid import GridError, GridPoint, parse_grid
from .report import collect, format_table, plot_summary, write_csv
from .work import EXACT_ID, ModelSpec

__all__ = [
    "EXACT_ID",
    "GridError",
    "GridPoint",
    "ModelSpec",
    "SweepError",
    "SweepInputs",
    "SweepRun",
    "collect",
    "format_table",
    "make_shards",
    "parse_grid",
    "plot_summary",
    "read_inputs",
    "run_sweep",
    "write_csv",
]
