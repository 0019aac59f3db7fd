"""``ibert-ref``: the command line. Each subcommand lives in ``ibert_ref/commands/<name>.py``
and exposes ``add_parser(subparsers)`` (which sets ``func``)."""

from __future__ import annotations

import argparse
import importlib
import sys

import pkgutil

from . import commands as _commands

#: Subcommands listed first in ``--help``; any other module in ibert_ref/commands follows.
PREFERRED_ORDER = ("run", "verify", "vectors", "widths", "calibrate", "convert", "bench")


def command_names() -> list:
    found = [m.name for m in pkgutil.iter_modules(_commands.__path__) if not m.name.startswith("_")]
    return sorted(found, key=lambda n: (PREFERRED_ORDER.index(n) if n in PREFERRED_ORDER else 99, n))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibert-ref",
        description="Integer reference simulator of I-BERT: run, trace and check the integers.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ibert-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in command_names():
        importlib.import_module(f"ibert_ref.commands.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError, ImportError) as exc:
        print(f"ibert-ref {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
