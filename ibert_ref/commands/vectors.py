"""``ibert-ref vectors``: golden test vectors for RTL ($readmemh hex, .npz, manifest.json)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import add_model_options, build_datapath, hub_kwargs, model_source
from ._args import ArgError, HelpFormatter, nonempty
from .verify import add_input_options, check_many_inputs_options, read_inputs, read_many_inputs


def add_parser(sub) -> None:
    p = sub.add_parser(
        "vectors",
        help="write golden test vectors: per-op $readmemh hex files, vectors.npz and manifest.json",
        description="Run the integer model once and write, for every op in execution order, its output "
        "integers as a $readmemh file (one element per line, row-major, two's complement at the op's declared "
        "width), all arrays in vectors.npz, and manifest.json: shapes, dtypes, widths, scales, dyadic (m, e) "
        "multipliers, polynomial constants, each op's inputs, the input ids and the sha256 of the model files. "
        "Any single op can be re-run from these files (ibert_ref.vectors.rerun_op). "
        "The folder is written whole or not at all: into a temporary folder beside --out, renamed into place "
        "at the end.",
        formatter_class=HelpFormatter,
    )
    add_input_options(p)
    p.add_argument("--out", required=True, type=nonempty("folder name"),
                   help="output folder: new or empty (or replaced whole with --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out whole (no file of an earlier run survives)")
    p.add_argument("--strict-widths", action="store_true",
                   help="fail when an op's values need more bits than its declared width (default: write them "
                   "wider, flag them in the manifest and warn)")
    p.add_argument("--no-param-hex", action="store_true",
                   help="do not write hex files for weights/constant arrays (they stay in vectors.npz)")
    add_model_options(p)
    p.set_defaults(func=run_vectors)


def run_vectors(args) -> int:
    from ..model import IBertModel
    from ..outdir import check_output_dir, output_dir
    from ..vectors import write_vectors

    check_many_inputs_options(args)
    folder = model_source(args)
    if args.texts is not None:
        return vectors_texts(args, folder)
    check_output_dir(args.out, overwrite=args.overwrite, inputs=[folder])  # before the model loads
    model = IBertModel.from_pretrained(folder, datapath=build_datapath(args), gemm=args.gemm, **hub_kwargs(args))
    ids, mask = read_inputs(args, model.source or folder)
    inputs = [folder, model.source] + ([args.input_ids] if args.input_ids else [])
    with output_dir(args.out, overwrite=args.overwrite, inputs=inputs) as tmp:
        manifest = write_vectors(model, ids, tmp, attention_mask=mask, param_hex=not args.no_param_hex,
                                 strict_widths=args.strict_widths)
    for warning in manifest["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    out = Path(args.out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"model: {model.source}   datapath: {manifest['datapath']}   input: {tuple(ids.shape)}")
    print(f"{len(manifest['ops'])} ops written to {out} ({size / 1e6:.1f} MB): manifest.json, vectors.npz, "
          f"hex/ ({len(manifest['inputs']) + len(manifest['ops'])} files)" + ("" if args.no_param_hex else ", params/"))
    for e in manifest["ops"][:3]:
        print(f"  {e['index']:3d} {e['name']:50s} {e['op']:18s} bits {e['bits']:2d} {e['hex']}")
    print("  ...")
    return 0


def vectors_texts(args, folder) -> int:
    """``vectors --texts FILE --out DIR``: one vectors folder per input (``DIR/input-NNNNN``, the
    line's index among the non-empty lines), each written whole, as Dask tasks (see
    :func:`ibert_ref.sweep.many.vectors_many`); ``DIR/index.json`` lists them."""
    from ..loading import resolve_file
    from ..outdir import check_output_dir
    from ..sweep.many import vectors_many

    if args.overwrite:
        raise ArgError("--overwrite does not apply to --texts: use a new --out, or --resume to continue one")
    if args.strict_widths:
        raise ArgError("--strict-widths does not apply to --texts")
    folder = os.path.dirname(resolve_file(folder, "config.json", **hub_kwargs(args)))
    if not args.resume:
        check_output_dir(args.out, inputs=[folder])
    inputs = read_many_inputs(args, folder)
    index = vectors_many(folder, inputs, args.out, datapath=args.datapath, workers=args.workers,
                         scheduler=args.scheduler, resume=args.resume, param_hex=not args.no_param_hex)
    print(f"model: {folder}   datapath: {index['datapath']}   inputs: {index['inputs']}")
    print(f"{len(index['folders'])} vectors folders in {args.out} (input-00000 ...), listed in index.json; "
          f"{index['shards_run']} task(s) run")
    return 0
