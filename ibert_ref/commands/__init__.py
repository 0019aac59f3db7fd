"""Subcommands of the ``ibert-ref`` CLI (one module each) and their shared options."""

from __future__ import annotations

import argparse

from ..datapath import available_datapaths
from ._args import model_name, nonempty, profile_option
from ._inputs import hub_preflight


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model / --revision / --cache-dir / --local-files-only / --datapath / --gemm / --profile-option."""
    p.add_argument(
        "--model",
        default=None,
        type=model_name,
        help="Hub id or local folder of an I-BERT checkpoint (default: the bundled tiny model)",
    )
    add_hub_options(p)
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
    add_profile_option(p)


def add_profile_option(p: argparse.ArgumentParser) -> None:
    """--profile-option KEY=VALUE (repeatable), checked against the profiles' parameters."""
    from ._args import _profile_values

    listed = ", ".join(f"{k}={'|'.join(v)}" if isinstance(v, tuple) else f"{k}=N" for k, v in _profile_values().items())
    p.add_argument(
        "--profile-option",
        action="append",
        default=[],
        type=profile_option,
        metavar="KEY=VALUE",
        help=f"hardware profile parameter, repeatable (see docs/hardware.md): {listed}",
    )


def add_hub_options(p: argparse.ArgumentParser) -> None:
    """--revision / --cache-dir / --local-files-only."""
    p.add_argument("--revision", default=None, type=nonempty("revision"), help="Hub revision (branch, tag or commit)")
    p.add_argument("--cache-dir", default=None, type=nonempty("folder name"), help="Hugging Face cache folder")
    p.add_argument("--local-files-only", action="store_true", help="never touch the network (also HF_HUB_OFFLINE=1)")


def model_source(args):
    """The folder or Hub id the command reads (--model, or the bundled model), after checking once
    that a Hub id can be reached (see :func:`~ibert_ref.commands._inputs.hub_preflight`); sets
    ``args.local_files_only`` when only the cache can serve it."""
    from ..data import default_model_path

    name = args.model or default_model_path()
    args.local_files_only = hub_preflight(name, revision=getattr(args, "revision", None),
                                          cache_dir=getattr(args, "cache_dir", None),
                                          local_files_only=getattr(args, "local_files_only", False))
    return name


def hub_kwargs(args) -> dict:
    return dict(revision=getattr(args, "revision", None), cache_dir=getattr(args, "cache_dir", None),
                local_files_only=getattr(args, "local_files_only", False))


def build_datapath(args):
    """--datapath (+ --gemm, --profile-option) -> a datapath name or object for from_pretrained."""
    if not getattr(args, "profile_option", None):
        return args.datapath
    from ..datapath import make_datapath
    from ..hardware.profiles import PROFILES, parse_profile_options

    if args.datapath not in PROFILES:
        raise ValueError(f"--profile-option applies to the hardware profiles ({', '.join(PROFILES)}), "
                         f"not --datapath {args.datapath}")
    return make_datapath(args.datapath, **parse_profile_options(args.profile_option))


def load_model_and_tokenizer(args, with_checkpoint: bool = False):
    """Build (IBertModel, Tokenizer) from the common options (and the loaded Checkpoint when asked)."""
    from ..loading import load_checkpoint
    from ..model import IBertModel
    from ..tokenizer import Tokenizer

    name = model_source(args)
    kw = hub_kwargs(args)
    datapath = build_datapath(args)
    checkpoint = load_checkpoint(name, **kw)
    model = IBertModel.from_checkpoint(checkpoint, datapath=datapath, gemm=args.gemm)
    tokenizer = Tokenizer.from_pretrained(name, **kw)
    return (model, tokenizer, checkpoint) if with_checkpoint else (model, tokenizer)
