"""Shared by the CLI tests: run ``ibert-ref`` in-process with its output captured."""

from __future__ import annotations

import contextlib
import io

from ibert_ref import cli


def run_cli(argv):
    """``cli.main(argv)`` with stdout/stderr captured: ``(exit code, stdout, stderr)``; the exit
    code of a ``SystemExit`` (argparse's) as raised."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()
