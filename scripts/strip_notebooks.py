#!/usr/bin/env python
"""Strip outputs from Jupyter notebooks, so they are stored (and diffed) as source only.

The notebooks' sources are the jupytext percent-format files ``notebooks/*.py``; each is paired
with its ``.ipynb``. Run a notebook in Jupyter (with the jupytext extension the paired ``.py`` is
saved too) and its ``.ipynb`` gets outputs: this script removes them before you commit.

For every code cell: outputs removed, ``execution_count`` set to null. Cell metadata keeps only
``tags`` and the layout keys jupytext writes to reproduce the .py's blank lines
(``lines_to_next_cell`` ...); notebook metadata keeps only ``jupytext`` (the pairing), ``kernelspec`` and the
``name``/``pygments_lexer`` of ``language_info``. Cell ids and sources are untouched. A notebook
written by ``jupytext --sync`` is left byte for byte unchanged.

Usage::

    python scripts/strip_notebooks.py                 # strip notebooks/*.ipynb in place
    python scripts/strip_notebooks.py A.ipynb B.ipynb # strip these
    python scripts/strip_notebooks.py --check         # exit 1 (and name them) if any has outputs

Needs ``nbformat`` (the ``notebooks`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
KEEP_LANGUAGE_INFO = ("name", "pygments_lexer")
#: cell metadata that is part of the source: tags, and how jupytext lays the cell out in the .py
KEEP_CELL_METADATA = ("tags", "lines_to_next_cell", "lines_to_end_of_cell_marker", "cell_marker")


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return ``nb`` without outputs, execution counts or volatile metadata (modified in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
    meta = {}
    if "jupytext" in nb.metadata:
        meta["jupytext"] = nb.metadata["jupytext"]
    if "kernelspec" in nb.metadata:
        meta["kernelspec"] = nb.metadata["kernelspec"]
    if "language_info" in nb.metadata:
        meta["language_info"] = {k: v for k, v in nb.metadata["language_info"].items() if k in KEEP_LANGUAGE_INFO}
    nb.metadata = nbformat.from_dict(meta)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The notebook as stored: nbformat's JSON plus a final newline (as jupytext writes it)."""
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Strip outputs and execution counts from Jupyter notebooks (in place).",
        epilog="With no PATH, strips notebooks/*.ipynb of this repository.",
    )
    ap.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="notebooks to strip")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is not stripped")
    args = ap.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    dirty = []
    for path in paths:
        if not path.is_file():
            print(f"not a file: {path}", file=sys.stderr)
            return 2
        text = path.read_text(encoding="utf-8")
        stripped = render(strip(nbformat.reads(text, as_version=4)))
        if stripped == text:
            continue
        dirty.append(path)
        if not args.check:
            path.write_text(stripped, encoding="utf-8")
            print(f"stripped {path}")
    if args.check and dirty:
        print("not stripped (run scripts/strip_notebooks.py):\n  " + "\n  ".join(map(str, dirty)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
