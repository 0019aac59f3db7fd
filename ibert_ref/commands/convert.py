"""``ibert-ref convert``: a float BERT / RoBERTa checkpoint -> calibrated I-BERT."""

from __future__ import annotations

import argparse

from .calibrate import add_calibration_options, print_result


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a float BERT/RoBERTa safetensors checkpoint to I-BERT, then calibrate it",
        description="Copy a float BERT or RoBERTa checkpoint (folder or Hub id, safetensors) into transformers' "
        "I-BERT layout: same module names; for BERT the position table is shifted by pad_token_id + 1 rows "
        "(I-BERT numbers tokens from pad+1) and max_position_embeddings grows accordingly; every quantization "
        "buffer is added. Task heads are dropped, the pooler kept. With --texts the result is calibrated "
        "(see `ibert-ref calibrate`); without, it is written uncalibrated.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="folder or Hub id of a float BERT/RoBERTa checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--texts", default=None, help="calibration texts, one per line (omit: write uncalibrated)")
    p.add_argument("--revision", default=None, help="Hub revision")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")
    p.add_argument("--local-files-only", action="store_true", help="never touch the network")
    add_calibration_options(p)
    p.set_defaults(func=run_convert)


def run_convert(args) -> int:
    from ..calibrate import calibrate_checkpoint, read_texts
    from ..convert import convert_checkpoint

    texts = read_texts(args.texts) if args.texts else None
    search = args.range_method != "ema"
    conv, result = convert_checkpoint(
        args.model,
        args.out,
        texts=None if search else texts,
        batch_size=args.batch_size,
        max_length=args.max_length,
        datapath=args.calib_datapath,
        gemm=args.gemm,
        momentum=args.momentum,
        progress=not args.no_progress,
        revision=args.revision,
        cache_dir=args.cache_dir,
        local_files_only=args.local_files_only,
    )
    if search and texts is not None:  # convert_checkpoint calibrates with the EMA only: calibrate in place
        result = calibrate_checkpoint(
            args.out,
            texts=texts,
            out=args.out,
            batch_size=args.batch_size,
            max_length=args.max_length,
            datapath=args.calib_datapath,
            gemm=args.gemm,
            range_method=args.range_method,
            percentile=args.percentile,
            search_target=args.search_target,
            progress=not args.no_progress,
        )
    print(f"converted {conv.source_type} -> ibert: {len(conv.tensors)} tensors in {args.out}")
    for note in conv.notes:
        print(f"  {note}")
    if conv.dropped:
        print(f"  dropped {len(conv.dropped)} tensor(s) I-BERT has no module for: {', '.join(conv.dropped[:6])}"
              + (" ..." if len(conv.dropped) > 6 else ""))
    if result is None:
        print("not calibrated: run `ibert-ref calibrate --model OUT --texts FILE --out OUT` before using it")
    else:
        print_result(result)
    return 0
