"""``ibert-ref convert``: a float BERT / RoBERTa checkpoint -> calibrated I-BERT."""

from __future__ import annotations

from . import add_hub_options, hub_kwargs, model_source
from ._args import HelpFormatter, model_name, nonempty
from .calibrate import add_calibration_options, calibrate, print_result


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a float BERT/RoBERTa safetensors checkpoint to I-BERT, then calibrate it",
        description="Copy a float BERT or RoBERTa checkpoint (folder or Hub id, safetensors) into transformers' "
        "I-BERT layout: same module names; for BERT the position table is shifted by pad_token_id + 1 rows "
        "(I-BERT numbers tokens from pad+1) and max_position_embeddings grows accordingly; every quantization "
        "buffer is added. Task heads are dropped, the pooler kept. With --texts the result is calibrated "
        "(see `ibert-ref calibrate`); without, it is written uncalibrated. --out is written whole or not at "
        "all (a temporary folder beside it, renamed into place when conversion and calibration are done).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, type=model_name, help="folder or Hub id of a float BERT/RoBERTa checkpoint")
    p.add_argument("--out", required=True, type=nonempty("folder name"),
                   help="output folder: new or empty (or replaced whole with --overwrite); not the input folder")
    p.add_argument("--texts", default=None, type=nonempty("file name"),
                   help="calibration texts, one per line, e.g. examples/calib.txt (omit: write uncalibrated)")
    add_hub_options(p)
    add_calibration_options(p)
    p.set_defaults(func=run_convert)


def run_convert(args) -> int:
    from ..convert import convert_checkpoint
    from ..outdir import check_output_dir, output_dir
    from ._inputs import read_text_lines

    source = model_source(args)
    check_output_dir(args.out, overwrite=args.overwrite, inputs=[source])
    texts = read_text_lines(args.texts) if args.texts else None
    result = None
    with output_dir(args.out, overwrite=args.overwrite, inputs=[source]) as tmp:
        conv, _ = convert_checkpoint(source, tmp, texts=None, progress=not args.no_progress, **hub_kwargs(args))
        if texts is not None:  # calibrate the converted folder in place, inside the temporary folder
            result = calibrate(args, str(tmp), texts, tmp, range_method=args.range_method,
                               momentum=args.momentum, reset=True)
    if result is not None:
        result.folder = args.out
    print(f"converted {conv.source_type} -> ibert: {len(conv.tensors)} tensors in {args.out}")
    for note in conv.notes:
        print(f"  {note}")
    if conv.dropped:
        print(f"  dropped {len(conv.dropped)} tensor(s) I-BERT has no module for: {', '.join(conv.dropped[:6])}"
              + (" ..." if len(conv.dropped) > 6 else ""))
    if result is None:
        print("not calibrated: run `ibert-ref calibrate --model OUT --texts FILE --out NEW_FOLDER` before using it")
    else:
        print_result(result)
    return 0
