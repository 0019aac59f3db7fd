"""``ibert-ref``: the command line. Each subcommand lives in ``ibert_ref/commands/<name>.py``
and exposes ``add_parser(subparsers)`` (which sets ``func``).

:func:`main` never shows a traceback: a usage error exits 2 through argparse; any error while
running prints one line ``ibert-ref CMD: error: MESSAGE`` and returns 2; Ctrl-C prints
``ibert-ref CMD: interrupted`` and returns 130; a closed stdout (``| head``) ends quietly with 141
(128 + SIGPIPE, what a shell reports for a program killed by a broken pipe). ``IBERT_REF_DEBUG=1``
re-raises instead, for developers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import commands as _commands

#: Subcommands listed first in ``--help``; any other module in ibert_ref/commands follows.
PREFERRED_ORDER = ("run", "verify", "vectors", "widths", "sweep", "calibrate", "convert", "bench")


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
    from .commands._args import HelpFormatter

    for subparser in sub.choices.values():  # every command shows each default once (issue 12)
        if subparser.formatter_class is argparse.ArgumentDefaultsHelpFormatter:
            subparser.formatter_class = HelpFormatter
    return parser


EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

#: Exceptions that carry a message meant for the user; anything else is reported with its type.
EXPECTED = (ValueError, OSError, ImportError, ArithmeticError, LookupError)


def debug_enabled() -> bool:
    return os.environ.get("IBERT_REF_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def error_message(exc: BaseException) -> str:
    """One line for ``exc``: OS errors as ``FILE: reason`` (no ``[Errno N]``), an unexpected
    exception type with a hint to report it."""
    from .commands._args import printable

    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {exc.strerror}" if where != "" else exc.strerror
    elif isinstance(exc, UnicodeError):
        text = f"text that is not valid UTF-8: {exc}"
    else:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, KeyError) and exc.args:
            text = f"missing key {exc.args[0]!r}"
    if not isinstance(exc, EXPECTED) or isinstance(exc, (IndexError, KeyError, ZeroDivisionError)):
        text = f"{type(exc).__name__}: {text} (unexpected; IBERT_REF_DEBUG=1 shows the traceback, please report it)"
    return printable(str(text)).strip()


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush does not
    raise again (the recipe of the Python docs, 'Note on SIGPIPE')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (tests capture it)
        pass


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help / --version (0): returned, like every other status
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except BrokenPipeError:  # --help | head
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    if hasattr(sys.stdout, "reconfigure"):  # file names from argv print as the bytes they were
        try:
            sys.stdout.reconfigure(errors="surrogateescape")
        except (ValueError, OSError):  # pragma: no cover - a stream that cannot be reconfigured
            pass
    debug = debug_enabled()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a broken pipe shows here, inside the handler, not at exit
        return code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"ibert-ref {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if debug:
            raise
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if debug:
            raise
        try:
            print(f"ibert-ref {args.command}: error: {error_message(exc)}", file=sys.stderr)
        except Exception:  # pragma: no cover - stderr itself unusable
            pass
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
