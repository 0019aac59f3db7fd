"""Checkpoint loading for the I-BERT reference simulator.

A checkpoint is a ``config.json`` plus float weights stored as safetensors, either in one
``model.safetensors`` file or sharded behind a ``model.safetensors.index.json``.  It can come from
a local folder or from a Hugging Face Hub repository (resolved through ``huggingface_hub``, so the
usual cache, ``revision``, ``local_files_only`` and ``HF_HUB_OFFLINE=1`` all work).

Only safetensors are read, through ``safetensors.safe_open(framework="np")``.  Pickle checkpoints
(``pytorch_model.bin``) are refused: unpickling executes arbitrary code.

This module imports only the standard library, numpy, safetensors and huggingface_hub.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from safetensors import safe_open

__all__ = [
    "CONFIG_NAME",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "PICKLE_WEIGHTS_NAMES",
    "CheckpointError",
    "Checkpoint",
    "load_checkpoint",
    "load_pretrained_checkpoint",
    "resolve_file",
    "read_json",
    "read_safetensors",
    "is_offline",
]

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

_TRUE_STRINGS = {"1", "on", "yes", "true"}

# safetensors dtypes that numpy represents natively (BF16 is handled separately).
_NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}


class CheckpointError(ValueError):
    """A checkpoint (or tokenizer) file could not be found, read or validated.

    The message always names the file, folder, repository or tensor key concerned.
    """


# ---------------------------------------------------------------------------------------------
# Checkpoint container
# ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint: parsed ``config.json`` and all tensors as numpy arrays.

    Attributes:
        config: the parsed ``config.json`` (a dict).
        tensors: every tensor of the checkpoint by its stored key.  fp16/bf16 tensors are
            converted to float32; other dtypes are kept as stored.
        source: the resolved local folder the files were read from (for a Hub repo, the
            snapshot folder in the HF cache).
        files: the resolved paths of every file read, in reading order.
    """

    config: dict
    tensors: dict[str, np.ndarray]
    source: str
    files: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_prefix_duplicates(self.tensors, self.source)

    def find_key(self, key: str, prefix_options: Sequence[str] = ("", "ibert.")) -> str | None:
        """Return the stored key matching ``key`` with or without one of ``prefix_options``.

        ``key`` itself is tried first; then, after removing a leading prefix from
        ``prefix_options`` if ``key`` has one, every ``prefix + base`` in order.  This lets callers
        ask for ``"embeddings.LayerNorm.shift"`` whether the checkpoint was saved from
        ``IBertModel`` (no prefix) or from a task model (``"ibert."`` prefix), and vice versa.
        Returns ``None`` when nothing matches.
        """
        if key in self.tensors:
            return key
        base = key
        for prefix in prefix_options:
            if prefix and key.startswith(prefix):
                base = key[len(prefix):]
                break
        for prefix in prefix_options:
            candidate = prefix + base
            if candidate in self.tensors:
                return candidate
        return None

    def has(self, key: str, prefix_options: Sequence[str] = ("", "ibert.")) -> bool:
        """Whether ``key`` exists, with or without one of ``prefix_options`` (see :meth:`find_key`)."""
        return self.find_key(key, prefix_options) is not None

    def tensor(
        self,
        key: str,
        shape: Sequence[int | None] | None = None,
        prefix_options: Sequence[str] = ("", "ibert."),
    ) -> np.ndarray:
        """Return the tensor stored under ``key`` (with or without an ``ibert.`` prefix).

        Args:
            key: the tensor name, e.g. ``"encoder.layer.0.attention.self.query.weight"``.
            shape: optional expected shape; ``None`` entries are wildcards.
            prefix_options: prefixes tried around ``key`` (see :meth:`find_key`).

        Raises:
            CheckpointError: naming the key when it is missing, or the key, expected and actual
                shape when the shape does not match.
        """
        found = self.find_key(key, prefix_options)
        if found is None:
            tried = _candidate_keys(key, prefix_options)
            close = difflib.get_close_matches(key, list(self.tensors), n=3, cutoff=0.75)
            hint = f"; close matches: {close}" if close else ""
            raise CheckpointError(
                f"checkpoint {self.source!r} has no tensor {key!r} (tried {tried}){hint}"
            )
        arr = self.tensors[found]
        if shape is not None:
            expected = tuple(shape)
            actual = tuple(arr.shape)
            ok = len(expected) == len(actual) and all(
                e is None or int(e) == a for e, a in zip(expected, actual)
            )
            if not ok:
                raise CheckpointError(
                    f"tensor {found!r} in checkpoint {self.source!r} has shape {actual}, "
                    f"expected {expected}"
                )
        return arr

    def keys(self) -> list[str]:
        """All stored tensor keys, in loading order."""
        return list(self.tensors)


def check_prefix_duplicates(tensors: dict, source: str = "") -> None:
    """Refuse a checkpoint that stores the same tensor with and without the ``ibert.`` prefix
    (a base-model key and a task-model key) with different values: :meth:`Checkpoint.tensor`
    would silently pick one. Equal values (same shape and elements) are accepted."""
    for key, arr in tensors.items():
        if not key.startswith("ibert."):
            continue
        other = tensors.get(key[len("ibert."):])
        if other is None:
            continue
        a, b = np.asarray(arr), np.asarray(other)
        if a.shape != b.shape or not np.array_equal(a, b):
            raise CheckpointError(
                f"checkpoint {source!r} stores {key[len('ibert.'):]!r} both with and without the 'ibert.' prefix "
                f"with different values (shapes {b.shape} and {a.shape}): which one is meant is ambiguous"
            )


def _candidate_keys(key: str, prefix_options: Sequence[str]) -> list[str]:
    base = key
    for prefix in prefix_options:
        if prefix and key.startswith(prefix):
            base = key[len(prefix):]
            break
    out = [key]
    for prefix in prefix_options:
        if prefix + base not in out:
            out.append(prefix + base)
    return out


# ---------------------------------------------------------------------------------------------
# File resolution (local folder or Hub repo)
# ---------------------------------------------------------------------------------------------


def is_offline() -> bool:
    """Whether Hub offline mode is requested.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import time.  This function also reads
    the environment at call time (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``), so setting the
    variable after ``huggingface_hub`` was imported still keeps the loaders off the network.
    """
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return True
    except Exception:  # pragma: no cover - huggingface_hub always present in practice
        pass
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE_STRINGS:
            return True
    return False


def _hub_cache_dir(cache_dir: str | os.PathLike | None) -> str:
    """The Hub cache folder: ``cache_dir``, else ``$HF_HUB_CACHE`` read now, else the library default."""
    if cache_dir is not None:
        return str(Path(cache_dir).expanduser())
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return os.path.expandvars(os.path.expanduser(env))
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a filesystem path (not a Hub repo id)."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def _local_base(name_or_path: str | os.PathLike) -> str | None:
    """The local folder that ``name_or_path`` designates, or ``None`` if it is not local.

    An existing folder is itself; an existing file designates its parent folder.
    """
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return os.path.abspath(path)
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path))
    return None


def _check_relative_filename(filename: str, context: str) -> None:
    parts = filename.replace("\\", "/").split("/")
    if os.path.isabs(filename) or filename.startswith("/") or ".." in parts or not filename:
        raise CheckpointError(
            f"{context}: refusing file name {filename!r} (must be a relative path inside the checkpoint)"
        )


def _hub_repo_cached(repo_id: str, cache_dir: str, revision: str | None) -> bool:
    """Whether the HF cache holds a snapshot of ``repo_id`` at ``revision`` (branch, tag or commit)."""
    storage = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    if not os.path.isdir(storage):
        return False
    rev = revision or "main"
    if os.path.isdir(os.path.join(storage, "snapshots", rev)):
        return True
    ref = os.path.join(storage, "refs", rev)
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as fh:
            commit = fh.read().strip()
        return os.path.isdir(os.path.join(storage, "snapshots", commit))
    return False


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    required: bool = True,
) -> str | None:
    """Resolve ``filename`` inside a local folder or a Hub repository to a local path.

    Args:
        name_or_path: an existing local folder (or a file inside one, meaning its folder), or a
            Hub repo id such as ``"kssteven/ibert-roberta-base"``.
        filename: the file's path relative to the folder / repo root.
        revision: Hub branch, tag or commit hash (ignored for local folders).
        cache_dir: Hub cache folder; default ``$HF_HUB_CACHE`` (read at call time) or the
            ``huggingface_hub`` default.
        local_files_only: never touch the network; also forced on when :func:`is_offline`.
        required: if False, return ``None`` when the file does not exist instead of raising.

    Returns:
        The local path of the file (inside the HF cache for a Hub repo), or ``None``.

    Raises:
        CheckpointError: naming the folder/repo and file when it cannot be resolved: a missing
            local folder, an invalid repo id, a repo/revision that does not exist or is not in the
            cache while offline, or (if ``required``) a missing file.
    """
    _check_relative_filename(filename, f"{name_or_path}")
    base = _local_base(name_or_path)
    if base is not None:
        path = os.path.join(base, *filename.replace("\\", "/").split("/"))
        if os.path.isfile(path):
            return path
        if required:
            raise CheckpointError(f"file {filename!r} not found in local folder {base!r}")
        return None

    name = os.fspath(name_or_path)
    if _looks_like_path(name):
        raise CheckpointError(f"local folder {name!r} does not exist (and it is not a Hub repo id)")
    return _resolve_hub_file(
        name,
        filename,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        required=required,
    )


_OFFLINE_LOCK = threading.RLock()
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


@contextlib.contextmanager
def _hub_offline_guard(active: bool):
    """While ``active``, switch huggingface_hub's own offline flag on.

    ``local_files_only=True`` alone does not keep huggingface_hub 2.x off the network: building
    the request headers fetches an "agent harness" registry from the Hub once per process (a
    best-effort call with a 3 s timeout) unless ``constants.HF_HUB_OFFLINE`` is set.  Offline
    resolution must make no connection at all, so the flag is set for the duration of the call
    and restored afterwards.
    """
    if not active:
        yield
        return
    from huggingface_hub import constants

    with _OFFLINE_LOCK:
        previous = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = previous


def _resolve_hub_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
    required: bool,
) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    cache = _hub_cache_dir(cache_dir)
    offline = bool(local_files_only) or is_offline()
    where = f"Hub repo {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    if not offline and revision is not None and _COMMIT_HASH.fullmatch(revision):
        # A commit is immutable: if the file is cached for it, no network is needed at all
        # (hf_hub_download would return the same path, but only after building request headers,
        # which can touch the network).
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
        except Exception:
            cached = None
        if isinstance(cached, str) and os.path.isfile(cached):
            return cached
    try:
        with _hub_offline_guard(offline):
            return hf_hub_download(
                repo_id=repo_id,
                filename=filename,
                revision=revision,
                cache_dir=cache,
                local_files_only=offline,
            )
    except hf_errors.HFValidationError as exc:
        raise CheckpointError(
            f"{repo_id!r} is neither an existing local folder nor a valid Hub repo id: {exc}"
        ) from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise CheckpointError(f"{where}: revision not found while resolving {filename!r}: {exc}") from exc
    except hf_errors.RepositoryNotFoundError as exc:  # includes GatedRepoError
        raise CheckpointError(
            f"{where} not found or not accessible while resolving {filename!r}: {exc}"
        ) from exc
    except hf_errors.EntryNotFoundError as exc:
        if isinstance(exc, hf_errors.LocalEntryNotFoundError) and not _hub_repo_cached(
            repo_id, cache, revision
        ):
            why = "offline mode / local_files_only is set" if offline else "the Hub could not be reached"
            raise CheckpointError(
                f"{where} is not a local folder and is not in the HF cache {cache!r}, and {why}; "
                f"cannot resolve {filename!r}"
            ) from exc
        if required:
            raise CheckpointError(f"file {filename!r} not found in {where} (cache {cache!r})") from exc
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{where}: could not resolve {filename!r}: {exc}") from exc


def _hub_file_exists_without_download(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
) -> bool:
    """Whether ``filename`` exists, never downloading it (used to detect pickle-only repos)."""
    base = _local_base(name_or_path)
    if base is not None:
        return os.path.isfile(os.path.join(base, filename))
    repo_id = os.fspath(name_or_path)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            repo_id, filename, cache_dir=_hub_cache_dir(cache_dir), revision=revision
        )
        if isinstance(cached, str):
            return True
        if local_files_only or is_offline():
            return False
        from huggingface_hub import HfApi

        return bool(HfApi().file_exists(repo_id, filename, revision=revision))
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# File readers
# ---------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike, what: str | None = None) -> dict:
    """Read a JSON file that must contain an object.

    Raises:
        CheckpointError: naming the file (and line/column) if it is unreadable, not valid JSON,
            or not a JSON object.
    """
    label = what or os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        data = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{label}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{label}: not UTF-8 text: {exc}") from exc
    except RecursionError as exc:
        raise CheckpointError(f"{label}: JSON nested too deeply to parse (not a config file?)") from exc
    except OSError as exc:
        raise CheckpointError(f"{label}: cannot read file: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{label}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_safetensors_header(path: str) -> tuple[dict, int]:
    """Parse the safetensors header: returns (header dict, byte offset of the data section)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: safetensors header too small")
        (n,) = struct.unpack("<Q", head)
        size = os.path.getsize(path)
        if n > size - 8:
            raise CheckpointError(f"{path}: safetensors header length {n} exceeds file size {size}")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except RecursionError as exc:
            raise CheckpointError(f"{path}: safetensors header nested too deeply to parse") from exc
    return header, 8 + n


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _read_raw_16bit(path: str, key: str, header: dict, data_start: int) -> np.ndarray:
    """Read a bf16 tensor's raw 16-bit words from the file and widen them to float32 exactly."""
    info = header.get(key)
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: tensor {key!r} missing from safetensors header")
    shape = tuple(int(d) for d in info["shape"])
    begin, end = (int(x) for x in info["data_offsets"])
    count = math.prod(shape)
    if end - begin != 2 * count:
        raise CheckpointError(
            f"{path}: tensor {key!r} has {end - begin} bytes for shape {shape} of 2-byte elements"
        )
    with open(path, "rb") as fh:
        fh.seek(data_start + begin)
        buf = fh.read(end - begin)
    if len(buf) != end - begin:
        raise CheckpointError(f"{path}: tensor {key!r} is truncated")
    bits = np.frombuffer(buf, dtype="<u2").reshape(shape)
    return _bf16_to_f32(bits)


def read_safetensors(path: str | os.PathLike, what: str | None = None) -> dict[str, np.ndarray]:
    """Read every tensor of one safetensors file into numpy arrays (no pickle involved).

    float16 and bfloat16 tensors are widened to float32 exactly; other dtypes are kept.  Float
    tensors must be finite.

    Raises:
        CheckpointError: naming the file for a truncated/malformed file or an unsupported dtype,
            and the key for a tensor holding NaN or inf.
    """
    path = os.fspath(path)
    label = what or path
    out: dict[str, np.ndarray] = {}
    try:
        with safe_open(path, framework="np") as fh:
            keys = list(fh.keys())
            header_cache: tuple[dict, int] | None = None
            for key in keys:
                dtype = fh.get_slice(key).get_dtype()
                if dtype == "BF16":  # numpy has no bfloat16: widen the raw bits ourselves
                    if header_cache is None:
                        header_cache = _read_safetensors_header(path)
                    arr = _read_raw_16bit(path, key, *header_cache)
                elif dtype in _NUMPY_DTYPES:
                    arr = fh.get_tensor(key)
                else:
                    raise CheckpointError(
                        f"{label}: tensor {key!r} has dtype {dtype}, which is not supported"
                    )
                out[key] = _normalise_tensor(arr, key, label)
    except CheckpointError:
        raise
    except Exception as exc:  # SafetensorError, OSError, malformed header ...
        raise CheckpointError(f"{label}: malformed or truncated safetensors file: {exc}") from exc
    return out


def _normalise_tensor(arr: np.ndarray, key: str, label: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating) and arr.size and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise CheckpointError(
            f"{label}: tensor {key!r} contains non-finite values ({n_nan} NaN, {n_inf} inf)"
        )
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------
# Checkpoint loading
# ---------------------------------------------------------------------------------------------


def load_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Checkpoint:
    """Load ``config.json`` and all safetensors weights of a checkpoint.

    ``name_or_path`` is either an existing local folder, a path to a ``.safetensors`` file or
    ``.safetensors.index.json`` file (with ``config.json`` beside it), or a Hub repo id.  Hub files
    are resolved with ``huggingface_hub.hf_hub_download`` honouring ``revision``, ``cache_dir``,
    ``local_files_only`` and ``HF_HUB_OFFLINE=1`` (then only the local HF cache is used).

    Weights: ``model.safetensors`` is tried first, then ``model.safetensors.index.json`` with its
    shards.  Pickle checkpoints (``pytorch_model.bin``) are refused, never unpickled.

    Raises:
        CheckpointError: naming the file or key for every failure: missing folder/repo, missing
            or malformed ``config.json``, missing weights, pickle-only checkpoint, malformed or
            truncated safetensors, malformed index, missing shard, key missing from its shard,
            duplicate keys across shards, unsupported dtype, NaN/inf values.
    """
    kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    path = os.fspath(name_or_path)
    explicit_weights: str | None = None
    if os.path.isfile(path):
        lower = path.lower()
        if lower.endswith(".bin") or lower.endswith(".bin.index.json") or lower.endswith((".pt", ".pth", ".ckpt")):
            raise CheckpointError(
                f"{path}: pickle checkpoints are refused (unpickling can execute code); "
                "convert it to safetensors (model.safetensors) first"
            )
        if not (lower.endswith(".safetensors") or lower.endswith(".safetensors.index.json")):
            raise CheckpointError(
                f"{path}: expected a folder, a .safetensors file or a .safetensors.index.json file"
            )
        explicit_weights = os.path.abspath(path)

    config_path = resolve_file(path, CONFIG_NAME, **kw)
    assert config_path is not None
    config = read_json(config_path)
    files = [config_path]
    source = os.path.dirname(os.path.abspath(config_path))

    if explicit_weights is not None:
        if explicit_weights.lower().endswith(".index.json"):
            tensors = _load_sharded(path, explicit_weights, files, kw)
        else:
            files.append(explicit_weights)
            tensors = read_safetensors(explicit_weights)
        return Checkpoint(config=config, tensors=tensors, source=source, files=files)

    single = resolve_file(path, SAFE_WEIGHTS_NAME, required=False, **kw)
    if single is not None:
        files.append(single)
        tensors = read_safetensors(single)
        return Checkpoint(config=config, tensors=tensors, source=source, files=files)

    index = resolve_file(path, SAFE_WEIGHTS_INDEX_NAME, required=False, **kw)
    if index is not None:
        tensors = _load_sharded(path, index, files, kw)
        return Checkpoint(config=config, tensors=tensors, source=source, files=files)

    for pickle_name in PICKLE_WEIGHTS_NAMES:
        if _hub_file_exists_without_download(path, pickle_name, **kw):
            raise CheckpointError(
                f"{path!r} only provides {pickle_name!r}: pickle checkpoints are refused "
                "(unpickling can execute code). Convert it to safetensors, e.g. "
                "`model.save_pretrained(folder, safe_serialization=True)` in transformers, "
                "and load that folder"
            )
    raise CheckpointError(
        f"no weights found for {path!r} (looked for {SAFE_WEIGHTS_NAME!r} and "
        f"{SAFE_WEIGHTS_INDEX_NAME!r} in {source!r})"
    )


def load_pretrained_checkpoint(
    name_or_path: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Checkpoint:
    """:func:`load_checkpoint` as the ``from_pretrained`` constructors call it: ``None`` is the
    bundled tiny model (:func:`ibert_ref.data.default_model_path`)."""
    if name_or_path is None:
        from .data import default_model_path

        name_or_path = default_model_path()
    return load_checkpoint(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)


def _load_sharded(
    name_or_path: str, index_path: str, files: list[str], kw: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Load all shards listed in a safetensors index; appends the files read to ``files``."""
    files.append(index_path)
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: missing or empty 'weight_map' object")
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index_path}: key {key!r} maps to a non-string shard {shard!r}")
        _check_relative_filename(shard, index_path)

    # Shards live beside the index (resolve relative to the index file's folder).
    index_dir = os.path.dirname(os.path.abspath(index_path))
    local = _local_base(name_or_path) is not None
    shard_order = list(dict.fromkeys(weight_map.values()))

    tensors: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for shard in shard_order:
        if local:
            shard_path = resolve_file(index_dir, shard, required=False)
        else:
            shard_path = resolve_file(name_or_path, shard, required=False, **kw)
        if shard_path is None:
            raise CheckpointError(f"shard {shard!r} listed in {index_path} is missing")
        files.append(shard_path)
        shard_tensors = read_safetensors(shard_path)
        for key, arr in shard_tensors.items():
            if key in tensors:
                raise CheckpointError(
                    f"duplicate tensor key {key!r}: found in shard {origin[key]!r} and in shard {shard!r}"
                )
            tensors[key] = arr
            origin[key] = shard
        for key, listed in weight_map.items():
            if listed == shard and key not in shard_tensors:
                raise CheckpointError(
                    f"{index_path}: key {key!r} is listed in shard {shard!r} but that shard lacks it"
                )
    return tensors

