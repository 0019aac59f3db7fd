"""Benchmark: ibert-ref's exact datapath (NumPy and compiled backends) against transformers' I-BERT.

One run times, on the same random inputs, for batch 1 and 8 at seq 128 and batch 1 at seq 512:

* ibert-ref exact datapath, NumPy backend (int8 weights resident, fast exact NumPy kernels),
* ibert-ref exact datapath, compiled backend (numba kernels and an exact int8 GEMM),
* transformers ``IBertModel`` with ``quant_mode=False`` (FP32, the same float weights),
* transformers ``IBertModel`` with ``quant_mode=True``,

each system **alone**: a fresh process per system and round (load, first call, timed forwards,
exit) with no other system's process alive, the order rotated from round to round; it prints
medians with min-max, the ratios against the target (exact <= 1.0x FP32), first-call times
(and the compiled backend's compile time with an empty cache), memory, the CPU model, the load
average and every worker's thread settings. ``ibert_ref.commands.bench`` holds the harness.

The default model is a roberta-base-shaped I-BERT (12 layers, hidden 768, 12 heads,
intermediate 3072, vocab 50265, 514 positions) with random weights, calibrated by
``ibert_ref.oracle.builders.make_calibrated_ibert`` (about 1 minute on 2 cores, 1 GB on disk)
and cached in ``--cache`` (default ``/tmp/ibert-bench/roberta-base-shape``); it is built on
first use. ``--model DIR`` benchmarks any saved I-BERT folder instead (``--model bundled``: the
tiny model shipped with the package).

Run:  python benchmarks/bench_vs_transformers.py [--repeats 5] [--json results.json]
Needs the verify extra (torch + transformers) for the transformers systems, the fast extra
(numba) for the compiled backend.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ibert_ref.commands.bench import DEFAULT_SHAPES, DEFAULT_SYSTEMS, SYSTEMS, format_report, parse_shape, run_benchmark

DEFAULT_CACHE = Path("/tmp/ibert-bench/roberta-base-shape")
ROBERTA_BASE_SHAPE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    vocab_size=50265,
    max_position_embeddings=514,
)


def build_roberta_base_shape(folder: Path) -> Path:
    """Build and calibrate the roberta-base-shaped I-BERT into ``folder`` (once)."""
    from ibert_ref.oracle.builders import make_calibrated_ibert

    print(f"building a calibrated roberta-base-shaped I-BERT in {folder} (about a minute) ...", file=sys.stderr)
    t = time.perf_counter()
    make_calibrated_ibert(folder, calib_batches=8, calib_batch_size=4, calib_max_len=128, seed=0, **ROBERTA_BASE_SHAPE)
    print(f"built in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return folder


def resolve_model(args) -> Path:
    if args.model == "bundled":
        from ibert_ref.data import default_model_path

        return Path(default_model_path())
    if args.model:
        return Path(args.model)
    folder = Path(args.cache)
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        build_roberta_base_shape(folder)
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="I-BERT folder, or 'bundled' (default: the cached roberta-base shape)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the roberta-base-shaped model is built/cached")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="comma-separated BATCHxSEQ")
    p.add_argument("--repeats", type=int, default=5, help="rounds (a fresh process per system and round)")
    p.add_argument("--inner", type=int, default=1, help="timed forwards per shape in each process")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards per shape after the first call")
    p.add_argument("--no-cold-jit", action="store_true", help="skip the empty-numba-cache compile measurement")
    p.add_argument("--keep-openblas-env", action="store_true",
                   help="keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for the workers (removed by default)")
    p.add_argument("--json", default=None, help="write the raw results here")
    args = p.parse_args(argv)

    model = resolve_model(args)
    systems = [s for s in args.systems.split(",") if s]
    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    result = run_benchmark(model, systems, shapes, args.repeats, args.warmup, args.keep_openblas_env,
                           log=lambda m: print(m, file=sys.stderr), inner=args.inner, cold_jit=not args.no_cold_jit)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
