"""The sweep engine: inputs -> (configuration, shard) tasks on Dask -> per-task result files.

Client side only; the workers run :mod:`ibert_ref.sweep.work`.

* Inputs are tokenized once on the client (no padding), sorted by length and cut into batches of
  equal-length sentences (at most ``batch_size``); a shard is a run of whole batches (at most
  ``shard_size`` sentences, at least one batch). A sentence's batch therefore depends only on the
  inputs and ``batch_size``, never on the shard size or the workers.
* Per shard one baseline task (the exact datapath, and the float model) and, depending on it,
  one task per configuration plus the exact row's summary. The scheduler runs a configuration
  task where its baseline is, or moves the baseline (a few MB) to it; a lost baseline (a killed
  worker) is recomputed by the scheduler.
* Every finished task is written at once to ``DIR/tasks/<config>/shard-NNNNN.json`` (temporary
  file + rename), so an interrupted sweep loses nothing finished and ``resume=True`` runs only
  what is missing. ``DIR/sweep.json`` records what the results depend on; a resumed sweep must
  match it (the grid may grow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence


from .grid import GridPoint
from .work import EXACT_ID, ModelSpec

__all__ = ["SweepError", "SweepInputs", "read_inputs", "make_shards", "run_sweep", "SweepRun", "THREAD_ENV", "local_cluster"]

FORMAT = 1

#: Environment of LocalCluster workers: one BLAS / OpenMP / numba thread per worker process
#: (N processes on N cores; more threads per process would only oversubscribe the cores).
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "IBERT_REF_NUM_THREADS": "1",
    "OPENBLAS_THREAD_TIMEOUT": "4",
}


class SweepError(ValueError):
    """A sweep that cannot start or finish (one line, no traceback, in the CLI)."""


@dataclass
class SweepInputs:
    """Tokenized inputs: ``ids[i]`` the token ids of sentence ``i`` (no padding), ``labels``
    (ints) for a labelled file, ``texts`` as read (None for an ids file)."""

    ids: List[List[int]]
    labels: Optional[List[int]] = None
    texts: Optional[List[str]] = None
    source: str = ""

    def digest(self) -> str:
        blob = json.dumps({"ids": self.ids, "labels": self.labels}, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# Inputs
def _model_config(spec: ModelSpec) -> dict:
    from ..loading import CONFIG_NAME, read_json, resolve_file

    path = resolve_file(
        spec.model, CONFIG_NAME, revision=spec.revision, cache_dir=spec.cache_dir, local_files_only=spec.local_files_only
    )
    return read_json(path)


def _read_lines(path: str, what: str) -> List[tuple]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise SweepError(f"{what} {path}: not UTF-8 text") from None
    except OSError as exc:
        raise SweepError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    out = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not out:
        raise SweepError(f"{what} {path}: no non-empty lines")
    return out


def _label_value(raw: str, label2id: dict, where: str) -> int:
    raw = raw.strip()
    try:
        return int(raw)
    except ValueError:
        pass
    if raw in label2id:
        return int(label2id[raw])
    known = ", ".join(sorted(map(str, label2id))) or "none in config.json"
    raise SweepError(f"{where}: label {raw!r} is neither an integer nor a label name ({known})")


def read_inputs(
    spec: ModelSpec,
    texts_path: Optional[str] = None,
    ids_path: Optional[str] = None,
    max_length: int = 128,
    texts: Optional[Sequence[str]] = None,
) -> tuple:
    """(SweepInputs, classification: bool, num_labels) from a texts file (one sentence per line;
    ``text<TAB>label`` lines make a labelled file), a token-ids file (one sequence of integers per
    line) or a list of ``texts``. Texts are tokenized with the model's tokenizer and truncated
    to ``max_length`` tokens (and to what the model's position table holds)."""
    config = _model_config(spec)
    archs = config.get("architectures") or []
    classification = any(str(a).endswith("ForSequenceClassification") for a in archs)
    label2id = {str(k): v for k, v in (config.get("label2id") or {}).items()}
    num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    limit = int(config.get("max_position_embeddings", 514)) - int(config.get("pad_token_id", 1) or 0) - 1
    max_length = max(2, min(int(max_length), limit))
    labels = None
    if ids_path is not None:
        from ..input_files import InputIdsError, read_input_ids

        try:  # the model API's rules (integers only, no empty sequence), errors naming the entry
            ids, mask = read_input_ids(ids_path)
        except InputIdsError as exc:
            raise SweepError(f"--ids {exc}") from None
        rows = [row[m == 1].tolist() for row, m in zip(ids, mask)]
        vocab = int(config.get("vocab_size", 0))
        for n, row in enumerate(rows, 1):
            bad = [t for t in row if t < 0 or (vocab and t >= vocab)]
            if bad:
                raise SweepError(f"--ids {ids_path}: sequence {n}: token id {bad[0]} is outside [0, {vocab})")
            if len(row) > max_length:
                raise SweepError(f"--ids {ids_path}: sequence {n}: {len(row)} tokens; the model takes at most "
                                 f"{max_length}")
        return SweepInputs(ids=rows, source=ids_path), classification, num_labels
    if texts is None:
        lines = _read_lines(texts_path, "--texts")
        tabbed = [n for n, line in lines if "\t" in line]
        if tabbed and len(tabbed) != len(lines):
            first = next(n for n, line in lines if "\t" not in line)
            raise SweepError(
                f"--texts {texts_path}:{first}: no TAB-separated label, but line {tabbed[0]} has one; "
                "a labelled file has 'text<TAB>label' on every line"
            )
        if tabbed:
            texts, labels = [], []
            for n, line in lines:
                text, _, raw = line.rpartition("\t")
                if not text.strip():
                    raise SweepError(f"--texts {texts_path}:{n}: empty text before the label")
                texts.append(text)
                labels.append(_label_value(raw, label2id, f"--texts {texts_path}:{n}"))
            if not classification:
                raise SweepError(
                    f"--texts {texts_path} is labelled (text<TAB>label), but {spec.model} is not a "
                    "sequence-classification checkpoint (config.json architectures); give unlabelled texts"
                )
            bad = [y for y in labels if not 0 <= y < num_labels]
            if bad:
                raise SweepError(f"--texts {texts_path}: label {bad[0]} is outside [0, {num_labels})")
        else:
            texts = [line for _, line in lines]
    from ..tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(
        spec.model, revision=spec.revision, cache_dir=spec.cache_dir, local_files_only=spec.local_files_only
    )
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_length)
    ids = [row[mask == 1].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
    return SweepInputs(ids=ids, labels=labels, texts=list(texts), source=texts_path or "<texts>"), classification, num_labels


def make_shards(inputs: SweepInputs, batch_size: int, shard_size: int) -> List[dict]:
    """Batches of equal-length sentences (length-sorted, at most ``batch_size``), packed into
    shards of at most ``shard_size`` sentences (whole batches; at least one)."""
    if batch_size < 1 or shard_size < 1:
        raise SweepError("--batch-size and --shard-size must be positive")
    order = sorted(range(len(inputs.ids)), key=lambda i: (len(inputs.ids[i]), i))
    batches, cur = [], []
    for i in order:
        if cur and (len(inputs.ids[i]) != len(inputs.ids[cur[0]]) or len(cur) == batch_size):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    shards, pack = [], []
    for b in batches:
        if pack and sum(map(len, pack)) + len(b) > shard_size:
            shards.append(pack)
            pack = []
        pack.append(b)
    if pack:
        shards.append(pack)
    out = []
    for sid, pack in enumerate(shards):
        out.append(
            {
                "shard": sid,
                "batches": [
                    {
                        "indices": list(b),
                        "ids": [inputs.ids[i] for i in b],
                        "labels": None if inputs.labels is None else [inputs.labels[i] for i in b],
                    }
                    for b in pack
                ],
            }
        )
    return out


# ---------------------------------------------------------------------------------------
# Result files
def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def task_path(out: Path, config_id: str, shard: int) -> Path:
    return out / "tasks" / config_id / f"shard-{shard:05d}.json"


def load_task(out: Path, config_id: str, shard: int) -> Optional[dict]:
    """A stored task result, or None when absent or not a complete result of that task."""
    p = task_path(out, config_id, shard)
    try:
        res = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("config_id") != config_id or res.get("shard") != shard:
        return None
    return res


def _manifest(spec: ModelSpec, inputs: SweepInputs, batch_size: int, shard_size: int, max_length: int) -> dict:
    model = spec.model
    if os.path.isdir(model):
        model = os.path.realpath(model)
    float_model = spec.float_model
    if float_model and os.path.isdir(float_model):
        float_model = os.path.realpath(float_model)
    return {
        "format": FORMAT,
        "model": model,
        "revision": spec.revision,
        "float_model": float_model,
        "classification": spec.classification,
        "inputs": inputs.source,
        "inputs_sha256": inputs.digest(),
        "sentences": len(inputs.ids),
        "max_length": max_length,
        "batch_size": batch_size,
        "shard_size": shard_size,
    }


_MANIFEST_WHAT = {
    "model": "--model",
    "revision": "--revision",
    "float_model": "--float-model",
    "classification": "the model's head",
    "inputs_sha256": "the inputs (texts, labels or --max-length)",
    "sentences": "the number of sentences",
    "max_length": "--max-length",
    "batch_size": "--batch-size",
    "shard_size": "--shard-size",
    "format": "the result format",
}


def _prepare_out(out: Path, manifest: dict, resume: bool) -> dict:
    """Check ``out`` against ``manifest`` (raises before anything is written); returns the
    manifest to write once the sweep starts (the grid merged with the stored one)."""
    mpath = out / "sweep.json"
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out}: exists and is not a folder")
    if mpath.exists():
        if not resume:
            raise SweepError(f"--out {out} already holds a sweep: pass --resume to continue it, or choose a new --out")
        try:
            old = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise SweepError(f"--out {out}: sweep.json is unreadable; choose a new --out") from None
        for key, what in _MANIFEST_WHAT.items():
            if old.get(key) != manifest.get(key):
                raise SweepError(
                    f"--resume: {what} differs from the sweep in {out} ({old.get(key)!r} there, {manifest.get(key)!r} now); "
                    "resume with the same options or choose a new --out"
                )
        old_grid = old.get("grid", [])
    else:
        if out.exists() and any(out.iterdir()):
            raise SweepError(f"--out {out} exists, is not empty and holds no sweep; choose a new or empty folder")
        old_grid = []
    merged = list(old_grid)
    known = {g["config_id"] for g in merged}
    for g in manifest.get("grid", []):
        if g["config_id"] not in known:
            merged.append(g)
    return dict(manifest, grid=merged)


def _write_manifest(out: Path, manifest: dict) -> None:
    _atomic_write_text(out / "sweep.json", json.dumps(manifest, indent=1) + "\n")


def _point_json(p: GridPoint) -> dict:
    return {"config_id": p.config_id, "label": p.label, "base": p.base, "overrides": dict(p.overrides),
            "params": dict(p.params)}


# ---------------------------------------------------------------------------------------
@dataclass
class SweepRun:
    """What :func:`run_sweep` did: tasks run and reused, times, the workers it used."""

    out: Path
    points: List[GridPoint]
    shards: int
    sentences: int
    tasks_total: int
    tasks_run: int = 0
    tasks_reused: int = 0
    wall_seconds: float = 0.0
    compute_seconds: float = 0.0
    setup_seconds: float = 0.0
    baseline_seconds: float = 0.0
    workers: List[str] = field(default_factory=list)
    sentence_configs: int = 0

    @property
    def throughput(self) -> float:
        """Sentences x configurations computed per wall-clock second (this run's tasks only)."""
        return self.sentence_configs / self.wall_seconds if self.wall_seconds > 0 else 0.0


def _start_client(workers: Optional[int], scheduler: Optional[str], connect_timeout: float):
    try:
        from distributed import Client
    except ImportError:
        raise SweepError(
            "ibert-ref sweep needs Dask distributed: pip install -e '.[sweep]' (dask[distributed], matplotlib)"
        ) from None
    if scheduler:
        try:
            client = Client(scheduler, timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise SweepError(f"--scheduler {scheduler}: cannot connect ({type(exc).__name__}: {exc})".splitlines()[0]) from None
        return client, None
    cluster = local_cluster(workers or os.cpu_count() or 1)
    return Client(cluster), cluster


def local_cluster(n_workers: int, silence_logs: int = logging.ERROR):
    """A LocalCluster of ``n_workers`` process workers with one thread each (:data:`THREAD_ENV`),
    listening on 127.0.0.1 only, without a dashboard (its HTTP routes on a free port)."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        silence_logs=silence_logs,
        env=dict(THREAD_ENV),
    )


def run_sweep(
    spec: ModelSpec,
    inputs: SweepInputs,
    points: Sequence[GridPoint],
    out,
    *,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    client=None,
    resume: bool = False,
    batch_size: int = 8,
    shard_size: int = 32,
    max_length: int = 128,
    progress: bool = True,
    on_result: Optional[Callable[[dict], None]] = None,
    connect_timeout: float = 10.0,
) -> SweepRun:
    """Run (or resume) a sweep and store every task's result under ``out``; returns what ran.

    ``client``: an existing ``distributed.Client`` (else ``scheduler`` or a LocalCluster of
    ``workers`` process workers, closed at the end). ``on_result(result)`` is called on the
    client after each task's result is stored. Aggregate with
    :func:`ibert_ref.sweep.report.collect`.
    """
    out = Path(out)
    shards = make_shards(inputs, batch_size, shard_size)
    manifest = _manifest(spec, inputs, batch_size, shard_size, max_length)
    manifest["grid"] = [_point_json(p) for p in points]
    merged = _prepare_out(out, manifest, resume)
    todo = {}  # shard -> [point json or None (the exact row)]
    total = reused = 0
    for s in shards:
        for p in [None] + list(points):
            cid = EXACT_ID if p is None else p.config_id
            total += 1
            if load_task(out, cid, s["shard"]) is not None:
                reused += 1
                continue
            todo.setdefault(s["shard"], []).append(None if p is None else _point_json(p))
    run = SweepRun(out=out, points=list(points), shards=len(shards), sentences=len(inputs.ids),
                   tasks_total=total, tasks_reused=reused)
    if not todo:
        _write_manifest(out, merged)
        return run

    from . import work

    own = client is None
    cluster = None
    if own:
        client, cluster = _start_client(workers, scheduler, connect_timeout)
    try:
        _write_manifest(out, merged)  # only now: a sweep that could not start leaves --out as it was
        from distributed import as_completed

        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            tqdm = None
        run.workers = sorted(client.scheduler_info().get("workers", {}))
        token = hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:10]
        by_id = {s["shard"]: s for s in shards}
        pending, baselines, remaining, kind = {}, {}, {}, {}
        t0 = time.perf_counter()
        for n, (sid, pts) in enumerate(sorted(todo.items())):
            shard = by_id[sid]
            prio = -n * 10  # earlier shards first, so a shard's baseline is freed early
            base = client.submit(work.run_baseline, spec, shard, key=f"ibert-sweep-{token}-baseline-{sid}",
                                 priority=prio + 2, pure=False)
            baselines[sid] = base
            remaining[sid] = len(pts)
            for pj in pts:
                if pj is None:
                    f = client.submit(work.summarize_baseline, spec, shard, base,
                                      key=f"ibert-sweep-{token}-{EXACT_ID}-{sid}", priority=prio + 1, pure=False)
                else:
                    f = client.submit(work.run_config, spec, pj, shard, base,
                                      key=f"ibert-sweep-{token}-{pj['config_id']}-{sid}", priority=prio, pure=False)
                n_sent = sum(len(b["indices"]) for b in shard["batches"])
                kind[f.key] = (sid, EXACT_ID if pj is None else pj["config_id"], n_sent)
                pending[f.key] = f
        bar = None
        if tqdm is not None:
            bar = tqdm(total=total, initial=reused, desc="sweep", unit="task", disable=not progress,
                       dynamic_ncols=True, mininterval=0.5)
        try:
            for fut in as_completed(list(pending.values())):
                sid, cid, n_sent = kind.pop(fut.key)
                pending.pop(fut.key, None)
                if fut.status == "error":
                    exc = fut.exception()
                    msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    raise SweepError(f"task {cid} on shard {sid} failed on a worker: {msg}")
                if fut.status != "finished":
                    raise SweepError(f"task {cid} on shard {sid} was {fut.status} (the scheduler or its workers went "
                                     "away?); finished tasks are stored: rerun with --resume")
                res = fut.result()
                res["label"] = "exact (baseline)" if cid == EXACT_ID else next(p.label for p in points if p.config_id == cid)
                _atomic_write_text(task_path(out, cid, sid), json.dumps(res, separators=(",", ":")) + "\n")
                run.tasks_run += 1
                run.compute_seconds += float(res.get("seconds", 0.0))
                run.setup_seconds += float(res.get("setup_seconds", 0.0))
                if cid == EXACT_ID:
                    run.baseline_seconds += float(res.get("seconds", 0.0))
                else:
                    run.sentence_configs += n_sent
                remaining[sid] -= 1
                if remaining[sid] == 0:
                    del baselines[sid]  # the last reference: the scheduler forgets the baseline
                if bar is not None:
                    bar.update(1)
                    el = time.perf_counter() - t0
                    bar.set_postfix_str(f"{run.sentence_configs / el:.1f} sentences*configs/s" if el > 0 else "",
                                        refresh=False)
                if on_result is not None:
                    on_result(res)
        finally:
            run.wall_seconds = time.perf_counter() - t0
            if bar is not None:
                bar.close()
            if pending:
                client.cancel(list(pending.values()))
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    return run
