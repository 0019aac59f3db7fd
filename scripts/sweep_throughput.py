#!/usr/bin/env python
"""Throughput of ``ibert-ref sweep`` with 1, 2, ... process workers, and where the time goes.

For each worker count: a fresh LocalCluster, the sweep run under Dask's task stream, then

* throughput: sentences x configurations per wall-clock second;
* compute: seconds inside the tasks (baseline, configuration, exact row), of which model
  load + compile (once per worker and configuration);
* transfer: seconds the workers spent fetching baselines from one another (and bytes);
* per-task overhead: workers x wall - compute - transfer, divided by the tasks (scheduling,
  result serialization, the client writing result files, idle tail at the end);
* sizes: one shard's baseline (what a transfer moves) and one task's result file.

    python scripts/sweep_throughput.py --model /tmp/minilm-sweep/minilm-ibert \\
        --texts scripts/sweep_sentences.txt --head 48 --workers 1,2 \\
        --grid "acc_bits=16,24 overflow=wrap | base=arm,tensor-core"
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(spec, inputs, points, n_workers, shard_size, batch_size):
    from distributed import Client, get_task_stream

    from ibert_ref.sweep.engine import local_cluster, run_sweep

    cluster = local_cluster(n_workers)
    client = Client(cluster)
    try:
        with tempfile.TemporaryDirectory() as tmp, get_task_stream(client) as ts:
            run = run_sweep(spec, inputs, points, Path(tmp) / "out", client=client, shard_size=shard_size,
                            batch_size=batch_size, progress=False)
            files = list((Path(tmp) / "out" / "tasks").rglob("shard-*.json"))
            sizes = [p.stat().st_size for p in files]
            stored = [json.loads(p.read_text()) for p in files]
        compute = {"baseline": 0.0, "config": 0.0, "exact": 0.0}
        transfer, transfer_bytes, transfers = 0.0, 0, 0
        for rec in ts.data:
            key = str(rec["key"])
            kind = "baseline" if "-baseline-" in key else ("exact" if "-exact-" in key else "config")
            for ss in rec["startstops"]:
                if ss["action"] == "compute":
                    compute[kind] += ss["stop"] - ss["start"]
                elif ss["action"] == "transfer":
                    transfer += ss["stop"] - ss["start"]
                    transfers += 1
                    transfer_bytes += int(ss.get("nbytes", 0) or 0)
    finally:
        client.close()
        cluster.close()
    tasks = len(ts.data)
    task_wall = sum(r.get("seconds", 0.0) + r.get("setup_seconds", 0.0) for r in stored)
    task_cpu = sum(r.get("cpu_seconds", 0.0) for r in stored)
    busy = sum(compute.values()) + transfer
    return {
        "workers": n_workers,
        "tasks": tasks,
        "wall": run.wall_seconds,
        "throughput": run.throughput,
        "sentence_configs": run.sentence_configs,
        "compute": compute,
        "setup": run.setup_seconds,
        "transfer": transfer,
        "transfers": transfers,
        "transfer_bytes": transfer_bytes,
        "overhead_per_task": (n_workers * run.wall_seconds - busy) / max(tasks, 1),
        "result_bytes": sum(sizes) / max(len(sizes), 1),
        "cpu_share": task_cpu / task_wall if task_wall else 0.0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--head", type=int, default=None, help="only the first N sentences")
    ap.add_argument("--grid", action="append", required=True)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)

    from ibert_ref.sweep import ModelSpec, make_shards, parse_grid, read_inputs
    from ibert_ref.sweep.work import run_baseline

    spec = ModelSpec(model=args.model)
    inputs, _, _ = read_inputs(spec, texts_path=args.texts)
    if args.head:
        inputs.ids, inputs.texts = inputs.ids[: args.head], inputs.texts[: args.head]
    points = parse_grid(args.grid)
    shards = make_shards(inputs, args.batch_size, args.shard_size)
    base = run_baseline(spec, shards[0])
    per_sentence = len(pickle.dumps(base, protocol=5)) / sum(len(b["indices"]) for b in shards[0]["batches"])
    print(f"{len(inputs.ids)} sentences ({sum(map(len, inputs.ids))} tokens), {len(points)} configurations, "
          f"{len(shards)} shards of <= {args.shard_size}; baseline {per_sentence / 1024:.0f} KiB per sentence; "
          f"load {os.getloadavg()[0]:.1f}")
    for n in [int(x) for x in args.workers.split(",")]:
        t0 = time.perf_counter()
        m = measure(spec, inputs, points, n, args.shard_size, args.batch_size)
        c = m["compute"]
        print(
            f"workers {n}: {m['throughput']:.2f} sentences x configs/s (wall {m['wall']:.1f} s, "
            f"{m['tasks']} tasks; with cluster start {time.perf_counter() - t0:.1f} s); compute: configs "
            f"{c['config']:.1f} s, baselines {c['baseline']:.1f} s, exact rows {c['exact']:.2f} s, of which "
            f"load/compile {m['setup']:.1f} s; transfer {m['transfer']:.2f} s in {m['transfers']} "
            f"({m['transfer_bytes'] / 2**20:.1f} MiB); overhead {1000 * m['overhead_per_task']:.0f} ms/task; "
            f"result file {m['result_bytes'] / 1024:.1f} KiB; CPU time / task time {m['cpu_share']:.2f}; "
            f"load {os.getloadavg()[0]:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
