"""Output folders written all at once: ``--out`` is always the old complete folder or the new one.

A command that writes a folder (``vectors``, ``calibrate``, ``convert``) writes into a temporary
sibling of ``--out`` (same parent, so the same file system) and, when everything is written,
renames it into place::

    with output_dir(args.out, overwrite=args.overwrite, inputs=[model_folder]) as tmp:
        write_everything_into(tmp)
    # here args.out holds exactly what was written into tmp

* On any exception, ``KeyboardInterrupt`` included, the temporary folder is removed and ``--out``
  is left as it was.
* ``--out`` that exists and is not empty is refused unless ``overwrite=True``; then it is replaced
  whole (no stale file of the earlier run survives). The old folder is renamed aside first and
  removed only after the new one is in place; between the two renames (microseconds) the path
  does not exist. If the second rename fails, the old folder is renamed back.
* ``--out`` equal to or inside an input folder, or an input folder or file inside ``--out``, is
  refused (writing would replace or mix with the input).
* The files and folders written get the process umask (``safetensors`` creates files 0600, a
  temporary folder is 0700): files ``0o666 & ~umask`` (``0o777`` if a file was executable),
  folders ``0o777 & ~umask``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional

__all__ = ["OutputDirError", "check_output_dir", "output_dir", "apply_umask", "current_umask"]

TMP_TAG = ".ibert-ref-tmp-"
OLD_TAG = ".ibert-ref-old-"


class OutputDirError(ValueError):
    """``--out`` cannot be written: it is a file, not empty without ``overwrite``, or overlaps an input."""


def _real(path) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(out, *, overwrite: bool = False, inputs: Iterable = (), label: str = "--out") -> Path:
    """Refuse an unusable output folder (see the module docstring); returns its real path."""
    text = os.fspath(out)
    if not text.strip():
        raise OutputDirError(f"{label}: the folder name is empty")
    real = _real(text)
    if real == real.parent:
        raise OutputDirError(f"{label} {text!r}: refusing to write the root folder")
    for item in inputs:
        if item is None or not os.fspath(item):
            continue
        if not os.path.exists(item):  # a Hub id, not a local folder
            continue
        src = _real(item)
        if src.is_file():  # an input file (e.g. --input-ids): only --out around it would remove it
            if _inside(src, real):
                raise OutputDirError(f"{label} {text!r} contains the input file {os.fspath(item)!r}; "
                                     "write to another folder")
            continue
        if _inside(real, src):
            what = "is" if real == src else "is inside"
            raise OutputDirError(f"{label} {text!r} {what} the input folder {os.fspath(item)!r}; "
                                 "write to another folder")
        if _inside(src, real):
            raise OutputDirError(f"{label} {text!r} contains the input folder {os.fspath(item)!r}; "
                                 "write to another folder")
    if os.path.lexists(text) and not os.path.isdir(text):
        raise OutputDirError(f"{label} {text!r} exists and is not a folder")
    if os.path.isdir(text):
        try:
            entries = os.listdir(text)
        except OSError as exc:
            raise OutputDirError(f"{label} {text!r}: cannot read the folder ({exc.strerror})") from exc
        if entries and not overwrite:
            raise OutputDirError(f"{label} {text!r} is not empty ({len(entries)} entries); pass --overwrite "
                                 "to replace it whole, or choose a new folder")
        if entries and _inside(_real(os.getcwd()), real):
            raise OutputDirError(f"{label} {text!r} is (or contains) the current folder; --overwrite would "
                                 "replace the folder you are working in: choose another folder")
    for parent in Path(text).parents:  # the nearest existing ancestor must be a folder
        if os.path.exists(parent):
            if not parent.is_dir():
                raise OutputDirError(f"{label} {text!r}: {os.fspath(parent)!r} is not a folder")
            break
    return real


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder, umask: Optional[int] = None) -> None:
    """Give ``folder``, and everything below it, the modes a plain ``open()`` / ``mkdir()`` under
    the process umask would have given them."""
    mask = current_umask() if umask is None else umask
    dir_mode, file_mode, exe_mode = 0o777 & ~mask, 0o666 & ~mask, 0o777 & ~mask
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, exe_mode if executable else file_mode)
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, dir_mode)
    os.chmod(folder, dir_mode)


def _rename_into_place(tmp: Path, out: Path, overwrite: bool, label: str) -> None:
    """``tmp`` becomes ``out``; an existing ``out`` is moved aside first and removed afterwards."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutputDirError(f"{label} {os.fspath(out)!r} appeared as a file while writing; nothing written")
    if not os.path.isdir(out):
        os.rename(tmp, out)
        return
    if not os.listdir(out):
        os.rmdir(out)
        os.rename(tmp, out)
        return
    if not overwrite:  # created by someone else while this run was writing
        raise OutputDirError(f"{label} {os.fspath(out)!r} was filled by another process while writing; "
                             "nothing written (pass --overwrite to replace it)")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}{OLD_TAG}", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def output_dir(out, *, overwrite: bool = False, inputs: Iterable = (), label: str = "--out") -> Iterator[Path]:
    """Yield a new empty temporary folder beside ``out``; rename it to ``out`` when the block
    succeeds, remove it when the block raises (see the module docstring)."""
    out = Path(os.fspath(out))
    check_output_dir(out, overwrite=overwrite, inputs=inputs, label=label)
    target = _real(out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_TAG}", dir=target.parent))
    except OSError as exc:
        raise OutputDirError(f"{label} {os.fspath(out)!r}: cannot create a folder in "
                             f"{os.fspath(target.parent)!r} ({exc.strerror})") from exc
    try:
        yield tmp
        apply_umask(tmp)
        _rename_into_place(tmp, target, overwrite, label)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
