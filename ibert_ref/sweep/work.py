"""What a sweep's Dask workers run: the exact baseline of a shard, one configuration on a shard,
and the per-sentence comparisons. Imported by the workers (pickled by reference), so it must
stay importable without Dask.

Each worker process keeps a small cache (module level, so it lives as long as the worker):
the loaded checkpoint per model, the compiled model per (model, configuration) (least recently
used first out, as many as fit ``IBERT_REF_SWEEP_CACHE_MB``, see :func:`_cache_size`), and the float
model. A task therefore loads and compiles nothing that the same worker already has.

A *shard* is ``{"shard": id, "batches": [{"indices": [...], "ids": [[...], ...], "labels":
[...] | None}, ...]}``: whole batches of equal-length sentences (no padding), so every
sentence's integers, and every float computed from them, do not depend on which shard or
worker ran it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["ModelSpec", "run_baseline", "run_config", "summarize_baseline", "cache_info", "EXACT_ID"]

#: The config id of the exact datapath's row (the baseline every configuration is compared to).
EXACT_ID = "exact"


@dataclass(frozen=True)
class ModelSpec:
    """Where a worker finds the model (the same path or Hub id on every machine)."""

    model: str
    revision: Optional[str] = None
    cache_dir: Optional[str] = None
    local_files_only: bool = False
    float_model: Optional[str] = None
    classification: bool = False


_LOCK = threading.Lock()
_CHECKPOINTS: dict = {}
_MODELS: "OrderedDict" = OrderedDict()
_FLOAT_MODELS: dict = {}
_STATS = {"checkpoint_loads": 0, "compiles": 0, "float_loads": 0}


def _cache_size(checkpoint) -> int:
    """How many compiled models a worker keeps: ``IBERT_REF_SWEEP_MODEL_CACHE`` if set, else as
    many as fit ``IBERT_REF_SWEEP_CACHE_MB`` (default 1024) at a quarter of the checkpoint's
    float bytes each (a compiled model holds int8 weights: measured ~1/7 on MiniLM), at least 2.
    A sweep touches every configuration on every shard, so a cache smaller than the grid means
    recompiling in most tasks (the load/compile seconds in the summary show it)."""
    try:
        fixed = int(os.environ.get("IBERT_REF_SWEEP_MODEL_CACHE", "0"))
        budget = float(os.environ.get("IBERT_REF_SWEEP_CACHE_MB", "1024")) * 2**20
    except ValueError:
        fixed, budget = 0, 2.0**30
    if fixed > 0:
        return fixed
    per_model = max(1, sum(int(getattr(t, "nbytes", 0)) for t in checkpoint.tensors.values()) // 4)
    return max(2, int(budget // per_model))


def cache_info() -> dict:
    """What this process has loaded and compiled so far (for tests and throughput notes)."""
    with _LOCK:
        return dict(_STATS, models_cached=len(_MODELS), pid=os.getpid())


def _checkpoint(spec: ModelSpec):
    from ..loading import load_checkpoint

    key = (spec.model, spec.revision, spec.cache_dir, spec.local_files_only)
    if key not in _CHECKPOINTS:
        _CHECKPOINTS[key] = load_checkpoint(
            spec.model, revision=spec.revision, cache_dir=spec.cache_dir, local_files_only=spec.local_files_only
        )
        _STATS["checkpoint_loads"] += 1
    return _CHECKPOINTS[key]


def _model(spec: ModelSpec, point: Optional[dict]):
    """(lock, model) for ``point`` (None: the exact datapath), compiled once per worker."""
    from .. import IBertForSequenceClassification, IBertModel, make_datapath

    key = (spec, EXACT_ID if point is None else point["config_id"])
    with _LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        checkpoint = _checkpoint(spec)
        datapath = "exact" if point is None else make_datapath(point["base"], **point["overrides"])
        if spec.classification:
            model = IBertForSequenceClassification.from_checkpoint(checkpoint, datapath=datapath)
        else:
            model = IBertModel.from_checkpoint(checkpoint, datapath=datapath)
        _STATS["compiles"] += 1
        entry = (threading.Lock(), model)
        _MODELS[key] = entry
        while len(_MODELS) > _cache_size(checkpoint):
            _MODELS.popitem(last=False)
        return entry


def _float_model(path: str):
    with _LOCK:
        if path not in _FLOAT_MODELS:
            try:
                import torch  # noqa: F401, PLC0415 - optional: only with --float-model
                import transformers  # noqa: PLC0415
            except ImportError as exc:
                raise ImportError(
                    f"--float-model needs torch and transformers on every worker (pip install -e '.[verify]'): {exc}"
                ) from None
            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            config = transformers.AutoConfig.from_pretrained(path)
            extra = {"quant_mode": False} if getattr(config, "model_type", "") == "ibert" else {}
            _FLOAT_MODELS[path] = transformers.AutoModel.from_pretrained(path, **extra).eval()
            _STATS["float_loads"] += 1
        return _FLOAT_MODELS[path]


# ---------------------------------------------------------------------------------------
# One batch: run, then cut per sentence.
def _run_batch(model, spec: ModelSpec, ids: np.ndarray):
    """(encoder output, logits or None) of one equal-length batch, with the trace."""
    mask = np.ones_like(ids)
    out = model(ids, attention_mask=mask, return_trace=True)
    if spec.classification:
        return out.encoder, np.asarray(out.logits)
    return out, None


def _layer_group(name: str) -> Optional[str]:
    if name.startswith("embeddings."):
        return "emb"
    if name.startswith("encoder.layer."):
        return "L" + name.split(".")[2]
    return None


def _int8_ops(enc, batch: int) -> "OrderedDict":
    """Layer group -> the names of its 8-bit ops (QuantAct outputs, embedding lookups), in
    execution order; only per-token arrays ``(B, T, ...)``."""
    groups: "OrderedDict" = OrderedDict()
    for name, value in enc.trace.items():
        meta = enc.trace_meta[name]
        if meta.bits != 8 or value.ndim < 2 or value.shape[0] != batch:
            continue
        group = _layer_group(name)
        if group is not None:
            groups.setdefault(group, []).append(name)
    return groups


def _rows(enc, groups, batch: int) -> list:
    rows = []
    for r in range(batch):
        codes = {g: np.concatenate([enc.trace[n][r].ravel() for n in names]).astype(np.int8) for g, names in groups.items()}
        rows.append(
            {
                "codes": codes,
                "final": np.asarray(enc.last_hidden_state_int[r], dtype=np.int8),
                "last": np.asarray(enc.last_hidden_state[r], dtype=np.float32),
            }
        )
    return rows


def _float_rows(spec: ModelSpec, ids: np.ndarray) -> list:
    import torch  # noqa: PLC0415

    model = _float_model(spec.float_model)
    t = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
    with torch.no_grad():
        h = model(input_ids=t, attention_mask=torch.ones_like(t)).last_hidden_state.numpy()
    return [np.asarray(h[r], dtype=np.float32) for r in range(ids.shape[0])]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape == b.shape and np.array_equal(a, b):
        return 1.0
    na, nb = math.sqrt(float(np.dot(a, a))), math.sqrt(float(np.dot(b, b)))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b)) / (na * nb)


def _pool(last) -> np.ndarray:
    return np.asarray(last, dtype=np.float64).mean(axis=0)


# ---------------------------------------------------------------------------------------
# Tasks
def run_baseline(spec: ModelSpec, shard: dict) -> dict:
    """The exact datapath on every sentence of ``shard`` (and the float model with
    ``spec.float_model``): what each configuration is compared with. Kept on the worker that
    computed it; Dask moves it to the workers that need it."""
    t0, c0 = time.perf_counter(), time.process_time()
    lock, model = _model(spec, None)
    setup = time.perf_counter() - t0
    sentences, op_order = {}, None
    with lock:
        for b in shard["batches"]:
            ids = np.asarray(b["ids"], dtype=np.int64)
            enc, logits = _run_batch(model, spec, ids)
            if op_order is None:
                op_order = list(enc.trace)
            rows = _rows(enc, _int8_ops(enc, ids.shape[0]), ids.shape[0])
            floats = _float_rows(spec, ids) if spec.float_model else [None] * len(rows)
            for r, (idx, row) in enumerate(zip(b["indices"], rows)):
                row["pooled"] = _pool(row["last"])
                if floats[r] is not None:
                    row["float_last"] = floats[r]
                    row["float_pooled"] = _pool(floats[r])
                if logits is not None:
                    row["pred"] = int(np.argmax(logits[r]))
                    row["label"] = None if b.get("labels") is None else int(b["labels"][r])
                sentences[int(idx)] = row
    return {
        "shard": shard["shard"],
        "sentences": sentences,
        "op_order": op_order or [],
        "seconds": time.perf_counter() - t0 - setup,
        "setup_seconds": setup,
        "cpu_seconds": time.process_time() - c0,
    }


def _new_result(config_id: str, shard: dict) -> dict:
    return {
        "config_id": config_id,
        "shard": shard["shard"],
        "index": [],
        "tokens": [],
        "codes_equal": {},
        "codes_total": {},
        "final_equal": [],
        "final_total": [],
        "cos_last": [],
        "cos_pooled": [],
        "max_abs_diff": [],
        "cos_last_float": [],
        "cos_pooled_float": [],
        "correct": [],
        "agree": [],
        "overflow": {},
        "failed": [],
        "error": None,
    }


def _compare_into(res: dict, idx: int, base: dict, cur: dict) -> None:
    res["index"].append(idx)
    res["tokens"].append(int(base["final"].shape[0]))
    for g, codes in base["codes"].items():
        other = cur["codes"].get(g)
        equal = 0 if other is None or other.shape != codes.shape else int(np.count_nonzero(other == codes))
        res["codes_equal"].setdefault(g, []).append(equal)
        res["codes_total"].setdefault(g, []).append(int(codes.size))
    res["final_equal"].append(int(np.count_nonzero(cur["final"] == base["final"])))
    res["final_total"].append(int(base["final"].size))
    res["cos_last"].append(_cos(cur["last"], base["last"]))
    res["cos_pooled"].append(_cos(cur["pooled"], base["pooled"]))
    diff = np.abs(np.asarray(cur["last"], dtype=np.float64) - np.asarray(base["last"], dtype=np.float64))
    res["max_abs_diff"].append(float(diff.max()) if diff.size else 0.0)
    if "float_last" in base:
        res["cos_last_float"].append(_cos(cur["last"], base["float_last"]))
        res["cos_pooled_float"].append(_cos(cur["pooled"], base["float_pooled"]))
    if "pred" in base:
        if base.get("label") is not None:
            res["correct"].append(int(cur["pred"] == base["label"]))
        res["agree"].append(int(cur["pred"] == base["pred"]))


def _add_overflow(res: dict, events, op_order: dict) -> None:
    for ev in events:
        op = ev.op or "(unattributed)"
        key = f"{op} [{ev.part}]" if getattr(ev, "part", "") else op
        slot = res["overflow"].setdefault(key, [op_order.get(op, len(op_order)), 0])
        slot[1] += int(ev.count)


def run_config(spec: ModelSpec, point: dict, shard: dict, baseline: dict) -> dict:
    """One configuration on one shard, compared sentence by sentence with ``baseline``.

    Returns small per-sentence lists (integers counted, cosines per sentence) so that the
    client can aggregate them exactly, whatever the sharding. A batch that raises is counted
    as failed sentences (with the first error), not as a failed sweep.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    lock, model = _model(spec, point)
    setup = time.perf_counter() - t0
    res = _new_result(point["config_id"], shard)
    op_order = {name: i for i, name in enumerate(baseline["op_order"])}
    with lock:
        for b in shard["batches"]:
            ids = np.asarray(b["ids"], dtype=np.int64)
            try:
                enc, logits = _run_batch(model, spec, ids)
            except Exception as exc:  # a datapath that breaks the model is a result, not a crash
                res["failed"].extend(int(i) for i in b["indices"])
                if res["error"] is None:
                    res["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                continue
            _add_overflow(res, enc.overflow_events, op_order)
            rows = _rows(enc, _int8_ops(enc, ids.shape[0]), ids.shape[0])
            for r, (idx, row) in enumerate(zip(b["indices"], rows)):
                row["pooled"] = _pool(row["last"])
                if logits is not None:
                    row["pred"] = int(np.argmax(logits[r]))
                _compare_into(res, int(idx), baseline["sentences"][int(idx)], row)
    res["seconds"] = time.perf_counter() - t0 - setup
    res["setup_seconds"] = setup
    res["cpu_seconds"] = time.process_time() - c0  # < seconds + setup when the core is shared
    res["worker"] = _worker_name()
    return res


def summarize_baseline(spec: ModelSpec, shard: dict, baseline: dict) -> dict:
    """The exact datapath's own row (compared with itself; its float-model cosine and task
    metric are the reference numbers for every configuration)."""
    t0 = time.perf_counter()
    res = _new_result(EXACT_ID, shard)
    for b in shard["batches"]:
        for idx in b["indices"]:
            base = baseline["sentences"][int(idx)]
            _compare_into(res, int(idx), base, base)
    res["seconds"] = baseline["seconds"] + (time.perf_counter() - t0)
    res["setup_seconds"] = baseline["setup_seconds"]
    res["cpu_seconds"] = baseline.get("cpu_seconds", 0.0)
    res["worker"] = _worker_name()
    return res


def _worker_name() -> str:
    try:
        from distributed import get_worker  # noqa: PLC0415

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"
