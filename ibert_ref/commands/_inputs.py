"""Inputs the subcommands read from files or the network, checked before any work starts:
``--input-ids`` files, ``--texts`` files, and a Hub id when the Hub cannot be reached."""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np

from ._args import ArgError, printable

__all__ = ["read_ids_file", "read_text_lines", "hub_preflight", "parse_id_list"]

INT64_MAX = (1 << 63) - 1
_INT = re.compile(r"[+-]?\d+")


def _fail(path, msg):
    raise ArgError(f"--input-ids {printable(os.fspath(path))}: {msg}")


# ---------------------------------------------------------------------------------------
# --input-ids FILE
def _check_id(path, v, where):
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(path, f"{where} is {v!r}: token ids must be integers")
    if v < 0 or v > INT64_MAX:
        _fail(path, f"{where} is {v}: token ids must be in [0, vocab_size)")
    return v


def _check_mask_value(path, v, where):
    if isinstance(v, bool):
        return int(v)
    if not isinstance(v, int) or v not in (0, 1):
        _fail(path, f"{where} is {v!r}: attention_mask values must be 0 or 1")
    return v


def _rows(path, obj, what):
    """A list of rows (a flat list is one row); every row a non-empty list."""
    if not isinstance(obj, list) or not obj:
        _fail(path, f"{what} must be a non-empty list of lists of integers, got {type(obj).__name__}"
              + ("" if obj else " (empty)"))
    if not isinstance(obj[0], list):
        obj = [obj]
    for r, row in enumerate(obj):
        if not isinstance(row, list):
            _fail(path, f"{what}[{r}] is {type(row).__name__}: expected a list (all rows, or no row, nested)")
        if not row:
            _fail(path, f"{what}[{r}] is empty: every sequence needs at least one token")
    return obj


def _from_lists(path, ids_rows, mask_rows, pad_token_id):
    ids_rows = _rows(path, ids_rows, "input_ids")
    for r, row in enumerate(ids_rows):
        for c, v in enumerate(row):
            _check_id(path, v, f"input_ids[{r}][{c}]")
    if mask_rows is not None:
        mask_rows = _rows(path, mask_rows, "attention_mask")
        if len(mask_rows) != len(ids_rows):
            _fail(path, f"attention_mask has {len(mask_rows)} row(s), input_ids {len(ids_rows)}")
        for r, (irow, mrow) in enumerate(zip(ids_rows, mask_rows)):
            if len(mrow) != len(irow):
                _fail(path, f"attention_mask[{r}] has {len(mrow)} value(s), input_ids[{r}] {len(irow)}: "
                      "the mask must have exactly the ids' shape")
            for c, v in enumerate(mrow):
                _check_mask_value(path, v, f"attention_mask[{r}][{c}]")
    width = max(len(row) for row in ids_rows)
    ids = np.full((len(ids_rows), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(ids_rows), width), dtype=np.int64)
    for r, row in enumerate(ids_rows):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1 if mask_rows is None else mask_rows[r]
    return ids, mask


def _from_arrays(path, ids, mask):
    ids = np.asarray(ids)
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        _fail(path, f"input_ids have dtype {ids.dtype}: token ids must be integers")
    if ids.ndim not in (1, 2) or ids.size == 0:
        _fail(path, f"input_ids have shape {ids.shape}: expected (seq,) or (batch, seq), non-empty")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > INT64_MAX):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        _fail(path, f"input_ids contain {bad}: token ids must be in [0, vocab_size)")
    ids = np.atleast_2d(ids.astype(np.int64))
    if mask is None:
        return ids, np.ones_like(ids)
    mask = np.asarray(mask)
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        _fail(path, f"attention_mask has dtype {mask.dtype}: expected integers 0/1")
    mask = np.atleast_2d(mask)
    if mask.shape != ids.shape:
        _fail(path, f"attention_mask has shape {mask.shape}, input_ids {ids.shape}: they must be equal")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        _fail(path, "attention_mask values must be 0 or 1")
    return ids, mask.astype(np.int64)


def _read_json(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=lambda c: _fail(path, f"{c} is not a token id"))
    except UnicodeDecodeError as exc:
        _fail(path, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
    except json.JSONDecodeError as exc:
        _fail(path, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    except RecursionError:
        _fail(path, "JSON nested too deeply")


def parse_id_list(text: str, option: str = "--ids", vocab_size=None) -> list:
    """``'0 1035, 2'`` -> ``[0, 1035, 2]``; a token that is not an integer, or an id outside
    ``[0, vocab_size)`` (``[0, 2^63)`` without a vocabulary), is an :class:`ArgError`."""
    ids = []
    for t in text.replace(",", " ").split():
        if not _INT.fullmatch(t):
            raise ArgError(f"{option} {printable(text)!r}: {printable(t)!r} is not an integer token id")
        v = int(t)
        limit = vocab_size if isinstance(vocab_size, int) and vocab_size > 0 else INT64_MAX + 1
        if not 0 <= v < limit:
            raise ArgError(f"{option}: id {v} is outside the vocabulary [0, {limit})")
        ids.append(v)
    return ids


def _read_text_ids(path):
    rows = []
    for lineno, line in enumerate(read_text_lines(path, option="--input-ids", keep_empty=True), 1):
        tokens = line.replace(",", " ").split()
        if not tokens:
            continue
        for t in tokens:
            if not _INT.fullmatch(t):
                _fail(path, f"line {lineno}: {printable(t)!r} is not an integer token id")
        rows.append([int(t) for t in tokens])
    if not rows:
        _fail(path, "no token ids (every line is empty)")
    return rows


def read_ids_file(path, pad_token_id: int = 1):
    """``(input_ids, attention_mask)`` (int64) from ``.npy`` / ``.npz`` / ``.json`` / text, with
    the model API's rules: integer ids only (no floats, bools or strings, nothing beyond int64),
    an attention_mask of exactly the ids' shape holding 0/1, no empty sequence. Ragged id rows
    (without a mask) are right-padded with ``pad_token_id`` and masked. Raises :class:`ArgError`
    naming the file and the offending entry."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        _fail(path, "no such file" if not os.path.exists(path) else "not a file")
    lower = path.lower()
    if lower.endswith((".npy", ".npz")):
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as exc:  # ValueError (pickled object arrays), OSError, zipfile errors ...
            _fail(path, f"cannot read it as {lower[-4:]}: {exc}")
        if lower.endswith(".npy"):
            return _from_arrays(path, loaded, None)
        with loaded as z:
            if "input_ids" not in z.files:
                _fail(path, f"no 'input_ids' array (arrays: {', '.join(z.files) or 'none'})")
            unknown = sorted(set(z.files) - {"input_ids", "attention_mask"})
            if unknown:
                _fail(path, f"unexpected array(s) {unknown}; expected input_ids and optionally attention_mask")
            try:
                ids, mask = z["input_ids"], (z["attention_mask"] if "attention_mask" in z.files else None)
            except ValueError as exc:
                _fail(path, f"cannot read an array: {exc}")
        return _from_arrays(path, ids, mask)
    if lower.endswith(".json"):
        obj = _read_json(path)
        mask = None
        if isinstance(obj, dict):
            unknown = sorted(set(obj) - {"input_ids", "attention_mask"})
            if unknown:
                _fail(path, f"unexpected key(s) {unknown}; expected input_ids and optionally attention_mask")
            if "input_ids" not in obj:
                _fail(path, "no 'input_ids' key")
            obj, mask = obj["input_ids"], obj.get("attention_mask")
        return _from_lists(path, obj, mask, pad_token_id)
    return _from_lists(path, _read_text_ids(path), None, pad_token_id)


# ---------------------------------------------------------------------------------------
def read_text_lines(path, option: str = "--texts", keep_empty: bool = False):
    """Lines of a UTF-8 text file, stripped; an unreadable file or invalid UTF-8 is an
    :class:`ArgError` naming the option, the file and the line."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise ArgError(f"{option} {printable(path)}: is a folder, not a text file") from None
    except OSError as exc:
        raise ArgError(f"{option} {printable(path)}: {exc.strerror or exc}") from None
    lines = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ArgError(f"{option} {printable(path)}: line {lineno} is not UTF-8 "
                           f"(byte 0x{line[exc.start]:02x} at column {exc.start + 1})") from None
        if text or keep_empty:
            lines.append(text)
    if not any(lines):
        raise ArgError(f"{option} {printable(path)}: no non-empty lines")
    return lines


# ---------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def _hub_reachable(timeout: float = 3.0):
    """``None`` when the Hub endpoint accepts a TCP connection, else the reason it does not."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def hub_preflight(name, *, revision=None, cache_dir=None, local_files_only=False) -> bool:
    """Before resolving a Hub id, check once that the Hub can be reached, instead of
    huggingface_hub's ~24 s of retries. Returns the ``local_files_only`` to use: unchanged when the
    Hub answers (or ``name`` is a local path, or offline mode is on, or a proxy is configured);
    ``True`` (with a note on stderr) when it does not but the repo is in the HF cache; raises
    :class:`ArgError` with the hint (``HF_HUB_OFFLINE=1``, a local folder) when it is in neither."""
    from ..loading import is_offline

    if name is None or local_files_only or is_offline():
        return local_files_only
    name = os.fspath(name)
    if os.path.exists(name) or not _HUB_ID.fullmatch(name) or any(os.environ.get(v) for v in PROXY_VARS):
        return local_files_only
    why = _hub_reachable()
    if why is None:
        return local_files_only
    try:
        from huggingface_hub import try_to_load_from_cache

        from ..loading import _hub_cache_dir

        cached = try_to_load_from_cache(name, "config.json", cache_dir=_hub_cache_dir(cache_dir), revision=revision)
    except Exception:
        cached = None
    if isinstance(cached, str):
        print(f"note: the Hub cannot be reached ({why}); using the cached copy of {name!r}", file=sys.stderr)
        return True
    raise ArgError(f"{name!r} is not a local folder, the Hub cannot be reached ({why}) and the repo is not in "
                   "the Hugging Face cache. Pass a local folder (--model DIR), or download it where there is "
                   "network; HF_HUB_OFFLINE=1 (or --local-files-only) uses the cache only, without retries")
