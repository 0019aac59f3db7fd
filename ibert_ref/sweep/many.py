"""Many inputs through ``verify`` and ``vectors`` on the sweep's Dask engine.

* :func:`verify_many`: transformers' I-BERT vs ibert-ref (:func:`ibert_ref.oracle.verify.verify`)
  on every batch of equal-length sentences, one task per shard; per batch the verdict (every
  difference explained?), the first diverging op and the equal / total element counts; summed
  into ``OUT/verify.json``.
* :func:`vectors_many`: golden vectors (:func:`ibert_ref.vectors.write_vectors`) for every input,
  **one folder per input** (``OUT/input-NNNNN/``, each with its own ``manifest.json``, so each is a
  test of its own and re-runs alone); no stacked set. The worker writes into a temporary folder
  and sends the files back; the client renames each folder into place whole, so this works on
  workers without a shared file system.

Both store every finished task at once and resume (``resume=True``) without recomputing it;
``client`` / ``workers`` / ``scheduler`` as :func:`ibert_ref.sweep.run_sweep`. The commands
``ibert-ref verify --texts`` / ``ibert-ref vectors --texts`` are meant to call these.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .engine import SweepError, SweepInputs, _atomic_write_text, _start_client, make_shards

__all__ = ["verify_many", "vectors_many", "verify_shard", "vectors_shard"]

_LOCK = threading.Lock()
_VERIFY_MODELS: dict = {}
_VECTOR_MODELS: dict = {}


# ---------------------------------------------------------------------------------------
# worker side
def verify_shard(model: str, datapath: str, gemm: Optional[str], shard: dict) -> dict:
    """:func:`~ibert_ref.oracle.verify.verify` on each batch of ``shard`` (transformers' model is
    loaded once per worker and batch shape by verify itself)."""
    import transformers  # noqa: PLC0415 - the verify extra

    from ..oracle.verify import verify

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t0 = time.perf_counter()
    batches = []
    for b in shard["batches"]:
        ids = np.asarray(b["ids"], dtype=np.int64)
        report = verify(model, input_ids=ids, attention_mask=np.ones_like(ids), datapath=datapath, gemm=gemm)
        totals = {mode: report.totals(mode) for mode, _ in report.modes()}
        batches.append({
            "indices": [int(i) for i in b["indices"]],
            "ok": bool(report.ok),
            "unexplained": int(report.unexplained),
            "first_divergence": report.first_divergence("e2e") if report.e2e is not None else None,
            "totals": totals,
            "last_hidden_state_max_abs_diff": report.last_hidden_state_max_abs_diff,
        })
    return {"shard": shard["shard"], "batches": batches, "seconds": time.perf_counter() - t0}


def _model_for_vectors(model: str, datapath: str):
    from .. import IBertModel

    key = (model, datapath)
    with _LOCK:
        if key not in _VECTOR_MODELS:
            _VECTOR_MODELS[key] = (threading.Lock(), IBertModel.from_pretrained(model, datapath=datapath))
        return _VECTOR_MODELS[key]


def vectors_shard(model: str, datapath: str, shard: dict, param_hex: bool = True) -> dict:
    """Golden vectors for each input of ``shard``, written to a temporary folder per input and
    returned as ``{index: {relative path: bytes}}``."""
    from ..vectors import write_vectors

    lock, m = _model_for_vectors(model, datapath)
    files = {}
    with lock, tempfile.TemporaryDirectory(prefix="ibert-vectors-") as tmp:
        for b in shard["batches"]:
            for idx, row in zip(b["indices"], b["ids"]):
                folder = Path(tmp) / f"input-{int(idx):05d}"
                write_vectors(m, np.asarray([row], dtype=np.int64), folder, param_hex=param_hex)
                files[int(idx)] = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                                   if p.is_file()}
    return {"shard": shard["shard"], "files": files}


# ---------------------------------------------------------------------------------------
# client side
def _run(shards, submit: Callable, store: Callable, done: Callable, workers, scheduler, client, progress, desc):
    todo = [s for s in shards if not done(s)]
    if not todo:
        return 0
    own = client is None
    cluster = None
    if own:
        client, cluster = _start_client(workers, scheduler, 10.0)
    try:
        from distributed import as_completed
        from tqdm import tqdm

        futures = {submit(client, s): s for s in todo}
        with tqdm(total=len(shards), initial=len(shards) - len(todo), desc=desc, unit="shard",
                  disable=not progress, mininterval=0.5) as bar:
            for fut in as_completed(list(futures)):
                shard = futures.pop(fut)
                if fut.status == "error":
                    exc = fut.exception()
                    raise SweepError(f"shard {shard['shard']} failed on a worker: "
                                     f"{type(exc).__name__}: {exc}".splitlines()[0])
                store(shard, fut.result())
                bar.update(1)
        return len(todo)
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()


def verify_many(model: str, inputs: SweepInputs, out, *, datapath: str = "transformers", gemm: Optional[str] = None,
                workers=None, scheduler=None, client=None, resume: bool = False, batch_size: int = 8,
                shard_size: int = 32, progress: bool = True) -> dict:
    """Verify every input; returns (and writes to ``OUT/verify.json``) the summary: inputs,
    batches, unexplained differences, batches not ok with their first diverging op, and the
    equal / total elements per mode."""
    out = Path(out)
    shards = make_shards(inputs, batch_size, shard_size)
    parts = out / "verify-shards"
    if out.exists() and any(out.iterdir()) and not resume:
        raise SweepError(f"--out {out} is not empty: pass --resume to continue, or choose a new folder")

    def path(s):
        return parts / f"shard-{s['shard']:05d}.json"

    def done(s):
        return path(s).exists()

    def submit(c, s):
        return c.submit(verify_shard, model, datapath, gemm, s, pure=False)

    def store(s, res):
        _atomic_write_text(path(s), json.dumps(res) + "\n")

    ran = _run(shards, submit, store, done, workers, scheduler, client, progress, "verify")
    summary = {"model": model, "datapath": datapath, "inputs": len(inputs.ids), "batches": 0, "unexplained": 0,
               "not_ok": [], "totals": {}, "shards_run": ran}
    for s in shards:
        res = json.loads(path(s).read_text())
        for b in res["batches"]:
            summary["batches"] += 1
            summary["unexplained"] += b["unexplained"]
            if not b["ok"]:
                summary["not_ok"].append({"inputs": b["indices"], "first_divergence": b["first_divergence"]})
            for mode, t in b["totals"].items():
                agg = summary["totals"].setdefault(mode, {})
                for k, v in t.items():
                    agg[k] = agg.get(k, 0) + v
    summary["ok"] = summary["unexplained"] == 0
    _atomic_write_text(out / "verify.json", json.dumps(summary, indent=1) + "\n")
    return summary


def vectors_many(model: str, inputs: SweepInputs, out, *, datapath: str = "exact", workers=None, scheduler=None,
                 client=None, resume: bool = False, shard_size: int = 8, param_hex: bool = True,
                 progress: bool = True) -> dict:
    """Golden vectors for every input: ``OUT/input-NNNNN/`` (one folder per input, the input's
    index in the texts file), each written whole (temporary folder, then rename)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise SweepError(f"--out {out} is not empty: pass --resume to continue, or choose a new folder")
    shards = make_shards(inputs, 1, shard_size)  # one input per forward: a folder holds one input

    def folders(s):
        return [out / f"input-{int(i):05d}" for b in s["batches"] for i in b["indices"]]

    def done(s):
        return all((f / "manifest.json").exists() for f in folders(s))

    def submit(c, s):
        return c.submit(vectors_shard, model, datapath, s, param_hex, pure=False)

    def store(s, res):
        for idx, files in res["files"].items():
            final = out / f"input-{int(idx):05d}"
            if (final / "manifest.json").exists():
                continue
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out))
            for rel, data in files.items():
                p = tmp / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            if final.exists():  # an incomplete folder of an interrupted run
                shutil.rmtree(final)
            os.replace(tmp, final)

    out.mkdir(parents=True, exist_ok=True)
    ran = _run(shards, submit, store, done, workers, scheduler, client, progress, "vectors")
    index = {"model": model, "datapath": datapath, "inputs": len(inputs.ids),
             "folders": [f"input-{i:05d}" for i in range(len(inputs.ids))], "shards_run": ran}
    _atomic_write_text(out / "index.json", json.dumps(index, indent=1) + "\n")
    return index
