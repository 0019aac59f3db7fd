"""``ibert-ref calibrate``: fill an I-BERT checkpoint's activation ranges in NumPy (no torch)."""

from __future__ import annotations

import argparse

from . import add_hub_options, hub_kwargs, model_source
from ._args import HelpFormatter, bounded_float, bounded_int, model_name, nonempty


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=bounded_int(1, None, "count"), default=8, help="texts per calibration batch")
    p.add_argument("--max-length", type=bounded_int(1, None, "count"), default=None,
                   help="truncate each text to this many tokens (default: 128, or the model's position limit "
                   "if smaller; more than the limit is refused)")
    p.add_argument("--calib-datapath", dest="calib_datapath", default="transformers",
                   choices=("transformers", "exact"),
                   help="values the ranges are observed on: transformers' float32 forward (what transformers' "
                   "own calibration computes) or the exact integer model")
    p.add_argument("--gemm", default="numpy", choices=("numpy", "torch"),
                   help="float32 GEMM order of the transformers-datapath forward; torch (verify extra) gives "
                   "ranges bit-identical to transformers' own calibration")
    p.add_argument("--momentum", type=bounded_float(0.0, 1.0, "momentum", also=(-1.0,)), default=0.95,
                   help="QuantAct EMA momentum (transformers' default 0.95; -1 keeps running min/max); --range ema only")
    p.add_argument("--range", dest="range_method", default="ema",
                   choices=("ema", "minmax", "percentile", "mse", "search"),
                   help="how each 8-bit QuantAct range is chosen. ema: transformers' train-mode semantics, batch by "
                   "batch. minmax / percentile / mse / search: all texts run as ONE padded batch and each range is "
                   "chosen in forward order on the real tokens, upstream already quantized: min/max, a percentile of "
                   "|x| (--percentile), the clip minimising the quantization MSE, or (search, output-aware, slower: "
                   "about 1 min for MiniLM-L6 on 160 texts) the candidate clip (the mse clip, multiples of it, "
                   "percentiles, min/max) minimising the MSE of the consuming encoder layer's output, run on in "
                   "float, against the float model on the calibration texts. Same checkpoint format either way")
    p.add_argument("--percentile", type=bounded_float(0.0, 100.0, "percentile", lo_open=True), default=99.99,
                   help="percentile of |x| used as the clip by --range percentile")
    p.add_argument("--search-target", dest="search_target", default="float", choices=("float", "local"),
                   help="--range search: the reference of the layer-output error. float: the float model's "
                   "output on the same texts (the whole error so far); local: the same continuation from the "
                   "QuantAct's unquantized input (only the error this QuantAct adds)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out whole (no file of an earlier run survives)")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="calibrate activation ranges (QuantAct EMA, LayerNorm shift) and write a checkpoint",
        description="Run transformers' train-mode calibration in NumPy: every QuantAct range is initialised by "
        "the first batch (x_min = -1e-5 + min, x_max = 1e-5 + max) and then follows an EMA (momentum 0.95), "
        "the forward using the updated range; IntLayerNorm's shift is raised when the variance reaches 2^32. "
        "Writes config.json (quant_mode=true), model.safetensors and the tokenizer files to --out; both "
        "ibert-ref and transformers' IBertModel.from_pretrained load the result. --out is written whole or "
        "not at all (a temporary folder beside it, renamed into place at the end).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default=None, type=model_name,
                   help="folder or Hub id of an I-BERT checkpoint (default: the bundled tiny model)")
    add_hub_options(p)
    p.add_argument("--texts", required=True, type=nonempty("file name"),
                   help="UTF-8 file, one calibration text per line (e.g. examples/calib.txt)")
    p.add_argument("--out", required=True, type=nonempty("folder name"),
                   help="output folder: new or empty (or replaced whole with --overwrite); not the input folder")
    p.add_argument("--continue", dest="keep", action="store_true",
                   help="continue the EMA from the checkpoint's ranges instead of starting afresh")
    add_calibration_options(p)
    p.set_defaults(func=run_calibrate)


def print_result(result) -> None:
    print(f"calibrated on {result.batches} batches, {result.tokens} real tokens (datapath {result.datapath}, "
          f"range {result.range_method})")
    if result.clip_report:
        clipped = [(n, c) for n, c in result.clip_report.items() if c.clip < max(abs(c.lo), abs(c.hi))]
        print(f"{len(clipped)}/{len(result.clip_report)} 8-bit ranges clipped below max|x|")
        searched = [c for c in result.clip_report.values() if c.objective is not None]
        if searched:
            moved = sum(c.clip != c.mse_clip for c in searched)
            print(f"search: {moved}/{len(searched)} clips differ from the mse clip; layer-output error at the chosen "
                  f"clips / at the mse clips, summed over the QuantActs: {sum(c.objective for c in searched):.4g} / "
                  f"{sum(c.objective_mse for c in searched):.4g}")
    print(f"{'QuantAct':58s} {'x_min':>14s} {'x_max':>14s}")
    for name, (lo, hi) in result.ranges.items():
        print(f"{name:58s} {lo:14.6g} {hi:14.6g}")
    print("IntLayerNorm shifts: " + ", ".join(f"{n}={s}" for n, s in result.shifts.items()))
    if result.folder:
        print(f"written to {result.folder}")


def run_calibrate(args) -> int:
    from ..outdir import check_output_dir, output_dir
    from ._inputs import read_text_lines

    model = model_source(args)
    check_output_dir(args.out, overwrite=args.overwrite, inputs=[model])
    texts = read_text_lines(args.texts)
    with output_dir(args.out, overwrite=args.overwrite, inputs=[model]) as tmp:
        result = calibrate(args, model, texts, tmp, range_method=args.range_method, momentum=args.momentum,
                           reset=not args.keep)
    result.folder = args.out
    print_result(result)
    return 0


def calibrate(args, model, texts, out, **kw):
    """``calibrate_checkpoint`` with the calibration options of ``args``, written into ``out``;
    ``--max-length`` above the model's position limit is refused (it used to be cut silently)."""
    from ..calibrate import calibrate_checkpoint
    from ..loading import read_json, resolve_file

    config = read_json(resolve_file(model, "config.json", **hub_kwargs(args)))
    try:
        limit = int(config["max_position_embeddings"]) - int(config.get("pad_token_id", 1)) - 1
    except (KeyError, TypeError, ValueError):
        limit = None
    if limit is not None and limit >= 1 and args.max_length is not None and args.max_length > limit:
        raise ValueError(f"--max-length {args.max_length}: the model takes at most {limit} tokens per text")
    return calibrate_checkpoint(
        model,
        texts=texts,
        out=out,
        batch_size=args.batch_size,
        max_length=args.max_length,
        datapath=args.calib_datapath,
        gemm=args.gemm,
        percentile=args.percentile,
        search_target=args.search_target,
        progress=not args.no_progress,
        **hub_kwargs(args),
        **kw,
    )
