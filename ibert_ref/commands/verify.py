"""``ibert-ref verify``: transformers' I-BERT and ibert-ref side by side, every difference explained."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..datapath import available_datapaths
from . import add_hub_options, add_profile_option, build_datapath, hub_kwargs, model_source
from ._args import ArgError, HelpFormatter, input_text, model_name, nonempty
from .sweep import add_cluster_options


def add_input_options(p: argparse.ArgumentParser) -> None:
    """--text / --input-ids (one of them is required)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", default=None, type=input_text,
                     help="input text(s); several texts form a padded batch")
    for flag, text in (
        ("--input-ids", "token ids instead of text: .npy/.npz (input_ids [+ attention_mask]), .json (list of id "
         "lists or {input_ids, attention_mask}) or text (one sequence per line, ids separated by spaces/commas); "
         "integers only, a mask of exactly the ids' shape holding 0/1; ragged rows without a mask are padded"),
        ("--texts", "many inputs, one sentence per line: run as Dask tasks (batches of equal-length sentences) "
         "through the sweep engine into --out (--workers / --scheduler / --resume; the sweep extra)"),
    ):
        src.add_argument(flag, default=None, metavar="FILE", type=nonempty("file name"), help=text)
    add_cluster_options(p)


def check_many_inputs_options(args) -> None:
    """--workers / --scheduler / --resume belong to --texts, and --texts needs --out."""
    if args.texts is None:
        given = [o for o, v in (("--workers", args.workers), ("--scheduler", args.scheduler),
                                ("--resume", args.resume)) if v]
        if given:
            raise ArgError(f"{', '.join(given)} apply to --texts (many inputs) only")
        return
    if not getattr(args, "out", None):
        raise ArgError("--texts needs --out DIR (one result per batch, kept for --resume)")
    if getattr(args, "profile_option", None):
        raise ArgError("--texts runs a named datapath on the workers: --profile-option is not supported with it")


def read_many_inputs(args, model_folder):
    """The --texts file tokenized with the model's tokenizer: a :class:`ibert_ref.sweep.SweepInputs`."""
    from ..sweep import ModelSpec, read_inputs

    spec = ModelSpec(model=os.fspath(model_folder), **hub_kwargs(args))
    inputs, _, _ = read_inputs(spec, texts_path=args.texts)
    return inputs


def read_inputs(args, model_folder):
    """``(input_ids, attention_mask)`` from --text (tokenized with the model's tokenizer) or --input-ids."""
    from ..tokenizer import Tokenizer
    from ._inputs import read_ids_file

    kw = hub_kwargs(args)
    if args.text is not None:
        enc = Tokenizer.from_pretrained(model_folder, **kw)(args.text)
        return enc["input_ids"], enc["attention_mask"]
    from ..loading import read_json, resolve_file

    config = read_json(resolve_file(model_folder, "config.json", **kw))
    pad = config.get("pad_token_id", 1)
    return read_ids_file(args.input_ids, pad_token_id=pad if isinstance(pad, int) and pad >= 0 else 1)


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
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default=None, type=model_name,
                   help="folder or Hub id of a quant-mode I-BERT (default: bundled tiny model)")
    add_hub_options(p)
    add_input_options(p)
    p.add_argument("--datapath", default="transformers", choices=available_datapaths(),
                   help="our datapath: transformers (expect 100%% agreement with --gemm torch), exact, or a profile")
    p.add_argument("--gemm", default="torch", choices=("numpy", "torch"),
                   help="float32 GEMM order of the transformers datapath")
    add_profile_option(p)
    p.add_argument("--mode", default="both", choices=("replay", "e2e", "both"), help="which comparison(s) to print")
    p.add_argument("--all-ops", action="store_true", help="list every op, not only the differing ones")
    p.add_argument("--json", default=None, metavar="FILE", type=nonempty("file name"),
                   help="also write the full report as JSON")
    p.add_argument("--out", default=None, metavar="DIR", type=nonempty("folder name"),
                   help="with --texts: the folder of per-batch results and verify.json")
    p.set_defaults(func=run_verify)


def check_output_file(path, option: str) -> None:
    """Refuse an output file path that is a folder or lies in a missing folder / a file (before the run)."""
    from ..outdir import OutputDirError

    if os.path.isdir(path):
        raise OutputDirError(f"{option} {path!r} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputDirError(f"{option} {path!r}: {parent!r} is not an existing folder")


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it (renamed into place)."""
    import tempfile

    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        from ..outdir import current_umask

        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def run_verify(args) -> int:
    from ..loading import resolve_file

    check_many_inputs_options(args)
    if args.json:  # the arguments first, so a bad one fails at once, before torch is imported
        check_output_file(args.json, "--json")
    folder = model_source(args)
    config_path = resolve_file(folder, "config.json", **hub_kwargs(args))
    folder = os.path.dirname(config_path)
    if args.texts is not None:
        return verify_texts(args, folder)
    ids, mask = read_inputs(args, folder)
    try:
        from ..oracle.verify import verify
    except ImportError as exc:  # torch / transformers missing
        raise ImportError(f"verify needs the verify extra (pip install 'ibert-ref[verify]'): {exc}") from exc
    modes = ("replay", "e2e")
    report = verify(folder, input_ids=ids, attention_mask=mask, datapath=build_datapath(args),
                    gemm=args.gemm if args.datapath == "transformers" else "numpy", modes=modes)
    shown = None if args.mode == "both" else args.mode
    print(report.format(mode=shown, only_differing=not args.all_ops))
    if args.json:
        write_text_atomic(args.json, json.dumps(report.to_dict(), indent=1) + "\n")
        print(f"report written to {args.json}", file=sys.stderr)
    return 0 if report.ok else 1


def verify_texts(args, folder) -> int:
    """``verify --texts FILE --out DIR``: every batch verified as a Dask task (see
    :func:`ibert_ref.sweep.many.verify_many`); prints the summary; exit 1 on any unexplained
    difference."""
    from ..sweep.many import verify_many

    inputs = read_many_inputs(args, folder)
    summary = verify_many(folder, inputs, args.out, datapath=args.datapath,
                          gemm=args.gemm if args.datapath == "transformers" else "numpy",
                          workers=args.workers, scheduler=args.scheduler, resume=args.resume)
    print(f"model: {folder}   datapath: {summary['datapath']}   inputs: {summary['inputs']}   "
          f"batches: {summary['batches']}")
    for mode, totals in summary["totals"].items():
        elements, equal = totals.get("elements", 0), totals.get("equal", 0)
        causes = ", ".join(f"{k} {v}" for k, v in sorted(totals.items()) if k not in ("elements", "equal"))
        print(f"  {mode}: {equal} of {elements} integers equal" + (f"; differing: {causes}" if causes else ""))
    for bad in summary["not_ok"][:10]:
        print(f"  not ok: inputs {bad['inputs']} (first divergence {bad['first_divergence']})")
    if args.json:
        write_text_atomic(args.json, json.dumps(summary, indent=1) + "\n")
    print(f"unexplained differences: {summary['unexplained']}  -> {'OK' if summary['ok'] else 'FAIL'}"
          f"   (written: {os.path.join(args.out, 'verify.json')})")
    return 0 if summary["ok"] else 1
