"""``ibert-ref verify``: transformers' I-BERT and ibert-ref side by side, every difference explained."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..datapath import available_datapaths


def add_input_options(p: argparse.ArgumentParser) -> None:
    """--text / --input-ids (one of them is required)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", default=None, help="input text(s); several texts form a padded batch")
    src.add_argument(
        "--input-ids",
        default=None,
        metavar="FILE",
        help="token ids instead of text: .npy/.npz (input_ids [+ attention_mask]), .json (list of id lists "
        "or {input_ids, attention_mask}) or text (one sequence per line, ids separated by spaces/commas)",
    )


def read_inputs(args, model_folder):
    """``(input_ids, attention_mask)`` from --text (tokenized with the model's tokenizer) or --input-ids."""
    from ..tokenizer import Tokenizer
    from ..vectors import read_input_ids

    kw = dict(revision=getattr(args, "revision", None), cache_dir=getattr(args, "cache_dir", None),
              local_files_only=getattr(args, "local_files_only", False))
    if args.text is not None:
        enc = Tokenizer.from_pretrained(model_folder, **kw)(args.text)
        return enc["input_ids"], enc["attention_mask"]
    from ..loading import read_json, resolve_file

    config = read_json(resolve_file(model_folder, "config.json", **kw))
    return read_input_ids(args.input_ids, pad_token_id=config.get("pad_token_id", 1))


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="compare ibert-ref with transformers' I-BERT op by op and end to end; explain every difference",
        description="Run transformers' I-BERT (the verify extra: torch + transformers) and ibert-ref on the same "
        "input, hook every quantized module and print, per op, elements / equal / max |diff| / first differing "
        "index, the first diverging op, and the cause of every differing element, each checked by re-running "
        "the op with one thing changed (rounded inputs, float64, torch's GEMM, exact requantization; the stale "
        "layer-input scale is checked against the producer's scale). Two modes: 'replay' feeds each op "
        "transformers' own inputs (a kernel difference, never a cascade); 'e2e' runs the models end to end. "
        "Exit code 0 when every difference is explained, 1 otherwise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=None, help="folder or Hub id of a quant-mode I-BERT (default: bundled tiny model)")
    p.add_argument("--revision", default=None, help="Hub revision")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")
    p.add_argument("--local-files-only", action="store_true", help="never touch the network")
    add_input_options(p)
    p.add_argument("--datapath", default="transformers", choices=available_datapaths(),
                   help="our datapath: transformers (expect 100%% agreement with --gemm torch), exact, or a profile")
    p.add_argument("--gemm", default="torch", choices=("numpy", "torch"),
                   help="float32 GEMM order of the transformers datapath")
    p.add_argument("--mode", default="both", choices=("replay", "e2e", "both"), help="which comparison(s) to print")
    p.add_argument("--all-ops", action="store_true", help="list every op, not only the differing ones")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the full report as JSON")
    p.set_defaults(func=run_verify)


def run_verify(args) -> int:
    from ..data import default_model_path
    from ..loading import resolve_file

    try:
        from ..oracle.verify import verify
    except ImportError as exc:  # torch / transformers missing
        raise ImportError(f"verify needs the verify extra (pip install 'ibert-ref[verify]'): {exc}") from exc

    folder = args.model or default_model_path()
    config_path = resolve_file(folder, "config.json", revision=args.revision, cache_dir=args.cache_dir,
                               local_files_only=args.local_files_only)
    folder = os.path.dirname(config_path)
    ids, mask = read_inputs(args, folder)
    modes = ("replay", "e2e")
    report = verify(folder, input_ids=ids, attention_mask=mask, datapath=args.datapath,
                    gemm=args.gemm if args.datapath == "transformers" else "numpy", modes=modes)
    shown = None if args.mode == "both" else args.mode
    print(report.format(mode=shown, only_differing=not args.all_ops))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=1)
        print(f"report written to {args.json}", file=sys.stderr)
    return 0 if report.ok else 1
