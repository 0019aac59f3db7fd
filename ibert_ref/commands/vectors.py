"""``ibert-ref vectors``: golden test vectors for RTL ($readmemh hex, .npz, manifest.json)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_model_options
from .verify import add_input_options, read_inputs


def add_parser(sub) -> None:
    p = sub.add_parser(
        "vectors",
        help="write golden test vectors: per-op $readmemh hex files, vectors.npz and manifest.json",
        description="Run the integer model once and write, for every op in execution order, its output "
        "integers as a $readmemh file (one element per line, row-major, two's complement at the op's declared "
        "width), all arrays in vectors.npz, and manifest.json: shapes, dtypes, widths, scales, dyadic (m, e) "
        "multipliers, polynomial constants, each op's inputs, the input ids and the sha256 of the model files. "
        "Any single op can be re-run from these files (ibert_ref.vectors.rerun_op).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_input_options(p)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--strict-widths", action="store_true",
                   help="fail when an op's values need more bits than its declared width (default: write them "
                   "wider, flag them in the manifest and warn)")
    p.add_argument("--no-param-hex", action="store_true",
                   help="do not write hex files for weights/constant arrays (they stay in vectors.npz)")
    add_model_options(p)
    p.set_defaults(func=run_vectors)


def run_vectors(args) -> int:
    from ..data import default_model_path
    from ..model import IBertModel
    from ..vectors import write_vectors

    folder = args.model or default_model_path()
    datapath = args.datapath
    if getattr(args, "profile_option", None):
        from ..datapath import make_datapath
        from ..hardware.profiles import parse_profile_options

        datapath = make_datapath(args.datapath, **parse_profile_options(args.profile_option))
    model = IBertModel.from_pretrained(folder, datapath=datapath, gemm=args.gemm, revision=args.revision,
                                       cache_dir=args.cache_dir, local_files_only=args.local_files_only)
    ids, mask = read_inputs(args, model.source or folder)
    manifest = write_vectors(model, ids, args.out, attention_mask=mask, param_hex=not args.no_param_hex,
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
