"""Inputs the subcommands read from files or the network, checked before any work starts:
``--input-ids`` files, ``--texts`` files, and a Hub id when the Hub cannot be reached."""

from __future__ import annotations

import os
import re
import sys


from ..input_files import INT64_MAX, INTEGER_TOKEN, InputIdsError, printable, read_input_ids
from ._args import ArgError

__all__ = ["read_ids_file", "read_text_lines", "hub_preflight", "parse_id_list"]


def parse_id_list(text: str, option: str = "--ids", vocab_size=None) -> list:
    """``'0 1035, 2'`` -> ``[0, 1035, 2]``; a token that is not an integer, or an id outside
    ``[0, vocab_size)`` (``[0, 2^63)`` without a vocabulary), is an :class:`ArgError`."""
    ids = []
    for t in text.replace(",", " ").split():
        if not INTEGER_TOKEN.fullmatch(t):
            raise ArgError(f"{option} {printable(text)!r}: {printable(t)!r} is not an integer token id")
        v = int(t)
        limit = vocab_size if isinstance(vocab_size, int) and vocab_size > 0 else INT64_MAX + 1
        if not 0 <= v < limit:
            raise ArgError(f"{option}: id {v} is outside the vocabulary [0, {limit})")
        ids.append(v)
    return ids


def read_ids_file(path, pad_token_id: int = 1):
    """:func:`ibert_ref.input_files.read_input_ids` for ``--input-ids``: its refusals become an
    :class:`ArgError` naming the option."""
    try:
        return read_input_ids(path, pad_token_id=pad_token_id)
    except InputIdsError as exc:
        raise ArgError(f"--input-ids {exc}") from None


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
