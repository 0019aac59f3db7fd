"""Subcommands of the ``ibert-ref`` CLI (one module each) and their shared options."""

from __future__ import annotations

import argparse

from ..datapath import available_datapaths


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model / --revision / --cache-dir / --local-files-only / --datapath / --gemm."""
    p.add_argument(
        "--model",
        default=None,
        help="Hub id or local folder of an I-BERT checkpoint (default: the bundled tiny model)",
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")
    p.add_argument("--local-files-only", action="store_true", help="never touch the network (also HF_HUB_OFFLINE=1)")
    p.add_argument(
        "--datapath",
        default="exact",
        choices=available_datapaths(),
        help="exact: true integers (default); transformers: bit-exact float32 emulation; or a hardware profile",
    )
    p.add_argument(
        "--gemm",
        default="numpy",
        choices=("numpy", "torch"),
        help="float32 GEMM order for --datapath transformers (torch needs the verify extra)",
    )
    p.add_argument(
        "--profile-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="hardware profile parameter, repeatable: acc_bits=24, overflow=wrap|saturate|raise|exact, "
        "k_step=32|none, requant=ibert|arm|gemmlowp|tflite-double|tflite-single|cutlass-f32, "
        "exp=fold|shift-right|left-shift, gelu=wide|int32, ln_var=int64|uint32|int32-sat, "
        "sqrt=isqrt|float32, probs=u9|u8-sat (see docs/hardware.md)",
    )


def load_model_and_tokenizer(args):
    """Build (IBertModel, Tokenizer) from the common options."""
    from ..data import default_model_path
    from ..model import IBertModel
    from ..tokenizer import Tokenizer

    name = args.model or default_model_path()
    kw = dict(revision=args.revision, cache_dir=args.cache_dir, local_files_only=args.local_files_only)
    datapath = args.datapath
    if getattr(args, "profile_option", None):
        from ..datapath import make_datapath
        from ..hardware.profiles import PROFILES, parse_profile_options

        if args.datapath not in PROFILES:
            raise ValueError(f"--profile-option applies to the hardware profiles {tuple(PROFILES)}, not {args.datapath!r}")
        datapath = make_datapath(args.datapath, gemm=args.gemm, **parse_profile_options(args.profile_option))
    model = IBertModel.from_pretrained(name, datapath=datapath, gemm=args.gemm, **kw)
    tokenizer = Tokenizer.from_pretrained(name, **kw)
    return model, tokenizer
