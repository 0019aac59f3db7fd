"""Token-id files (``--input-ids``; :func:`ibert_ref.vectors.read_input_ids`), read with the
model API's rules: integer ids only, an attention mask of exactly the ids' shape holding 0/1,
no empty sequence. Every refusal is an :class:`InputIdsError` naming the file and the entry."""

from __future__ import annotations

import json
import os
import re

import numpy as np

__all__ = ["InputIdsError", "read_input_ids", "printable", "pad_rows"]

INT64_MAX = (1 << 63) - 1
INTEGER_TOKEN = re.compile(r"[+-]?\d+")


class InputIdsError(ValueError):
    """A token-id file that cannot be used; ``path`` and ``detail`` say where and why."""

    def __init__(self, path, detail: str):
        self.path, self.detail = os.fspath(path), detail
        super().__init__(f"{printable(self.path)}: {detail}")


def printable(text: str) -> str:
    """``text`` with any lone surrogate (an undecodable byte from argv or a file name) shown as
    ``\\xNN`` (``\\uDXXX`` for the other surrogates), so that it can be printed."""
    out = []
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def pad_rows(rows, pad_id: int):
    """Right-pad id sequences to the longest: ``(input_ids, attention_mask)``, int64, the
    padding ``pad_id`` with mask 0."""
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return ids, mask


def _fail(path, msg):
    raise InputIdsError(path, msg)


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
    ids, mask = pad_rows(ids_rows, pad_token_id)
    if mask_rows is not None:
        for r, row in enumerate(mask_rows):
            mask[r, : len(row)] = row
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


def _text_lines(path):
    """The lines of a UTF-8 text file (invalid UTF-8 is refused with the line and column)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        _fail(path, exc.strerror or str(exc))
    lines = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            _fail(path, f"line {lineno} is not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})")
    return lines


def _read_text_ids(path):
    rows = []
    for lineno, line in enumerate(_text_lines(path), 1):
        tokens = line.replace(",", " ").split()
        if not tokens:
            continue
        for t in tokens:
            if not INTEGER_TOKEN.fullmatch(t):
                _fail(path, f"line {lineno}: {printable(t)!r} is not an integer token id")
        rows.append([int(t) for t in tokens])
    if not rows:
        _fail(path, "no token ids (every line is empty)")
    return rows


def read_input_ids(path, pad_token_id: int = 1):
    """``(input_ids, attention_mask)`` (int64) from ``.npy`` / ``.npz`` / ``.json`` / text, with
    the model API's rules: integer ids only (no floats, bools or strings, nothing beyond int64),
    an attention_mask of exactly the ids' shape holding 0/1, no empty sequence. Ragged id rows
    (without a mask) are right-padded with ``pad_token_id`` and masked. Raises :class:`InputIdsError`
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
