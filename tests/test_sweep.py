"""``ibert-ref sweep`` on Dask distributed: grids, determinism across workers and shard sizes,
--resume after an interrupted run, a worker killed mid-sweep, an external scheduler, and the
float-model / task metrics. Tiny bundled model, a few sentences: about a minute in all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from ibert_ref.cli import main  # noqa: E402
from ibert_ref.data import default_model_path  # noqa: E402
from ibert_ref.sweep import (  # noqa: E402
    EXACT_ID,
    GridError,
    ModelSpec,
    collect,
    make_shards,
    parse_grid,
    read_inputs,
    run_sweep,
    write_csv,
)
from ibert_ref.sweep.engine import local_cluster  # noqa: E402
from ibert_ref.sweep.report import read_csv_rows  # noqa: E402

SENTENCES = [
    "The capital of France is Paris.",
    "Integers all the way down.",
    "A small dog barked at the postman this morning.",
    "Rain again.",
    "The committee will publish its final report next week.",
    "She plays the violin in a string quartet on Sundays.",
    "Prices rose sharply after the announcement.",
    "Where is the nearest train station?",
    "He forgot his umbrella, so he got wet.",
    "Hardware teams care about accumulator widths.",
    "The river flooded the lower part of the old town.",
    "Good morning!",
    "Our flight was delayed by three hours because of fog.",
    "The recipe needs two eggs, flour and a pinch of salt.",
    "Quantization maps real numbers to small integers.",
    "The museum opens at nine.",
    "They built a wooden bridge across the stream.",
    "My phone battery dies before lunch every day.",
    "The orchestra rehearsed the symphony all afternoon.",
    "Please close the window.",
]
GRID = ["base=generic acc_bits=16,32 overflow=wrap,saturate", "base=arm"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("sweep-in") / "texts.txt"
    p.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return p


def _sweep_args(texts, out, *extra):
    args = ["sweep", "--texts", str(texts), "--out", str(out), "--no-progress", "--batch-size", "3"]
    for g in GRID:
        args += ["--grid", g]
    return args + list(extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, texts_file):
    """The CLI with one process worker, shard size 5: the table every other run must equal."""
    out = tmp_path_factory.mktemp("sweep-ref") / "out"
    assert main(_sweep_args(texts_file, out, "--workers", "1", "--shard-size", "5")) == 0
    return out


@pytest.fixture(scope="module")
def client():
    """A LocalCluster with two process workers (one thread each), shared by several tests."""
    from distributed import Client

    cluster = local_cluster(2)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _spec_inputs(texts_file, **kw):
    spec = ModelSpec(model=str(default_model_path()), **kw)
    inputs, classification, _ = read_inputs(spec, texts_path=str(texts_file))
    return spec, inputs


# ---------------------------------------------------------------------------------------
# Grids
def test_product_spec_is_the_cartesian_product_and_named_profiles_are_points():
    points = parse_grid(["base=generic acc_bits=16,20,24 overflow=wrap,saturate requant=rne,gemmlowp",
                         "base=arm,tensor-core"])
    assert len(points) == 3 * 2 * 2 + 2
    assert [p.label for p in points[-2:]] == ["arm", "tensor-core"]
    first = dict(points[0].params)
    assert (first["acc_bits"], first["overflow"], first["requant"]) == (16, "wrap", "ibert")  # rne is I-BERT's RNE
    assert dict(points[-1].params)["k_step"] == 32  # the tensor-core profile's own parameters
    assert len({p.config_id for p in points}) == len(points)
    # the same datapath twice (here: arm written out, and arm) runs once
    again = parse_grid(["base=arm | base=arm acc_bits=32"])
    assert len(again) == 1 and again[0].label == "arm"


def test_grid_file_lists_points_that_are_not_a_product(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps([
        {"base": "tensor-core"},
        {"base": "generic", "acc_bits": 24, "overflow": "saturate", "k_step": 32, "name": "asic-24"},
        {"acc_bits": [16, 20], "overflow": "wrap"},
    ]))
    points = parse_grid([str(grid)])
    assert [p.label for p in points] == ["tensor-core", "asic-24", "generic acc_bits=16 overflow=wrap",
                                         "generic acc_bits=20 overflow=wrap"]
    assert dict(points[1].params)["k_step"] == 32
    yaml = pytest.importorskip("yaml")
    ygrid = tmp_path / "grid.yaml"
    ygrid.write_text(yaml.safe_dump({"grid": [{"base": "arm"}, {"acc_bits": [24, 32]}]}))
    assert [p.label for p in parse_grid([str(ygrid)])] == ["arm", "generic acc_bits=24", "generic acc_bits=32"]


@pytest.mark.parametrize(
    "grid, message",
    [
        ("acc_bits=16 colour=blue", "unknown parameter 'colour'"),
        ("acc_bits=1", "acc_bits must be an int in [2, 64]"),
        ("acc_bits=96", "acc_bits must be an int in [2, 64]"),
        ("acc_bits=sixteen", "is not an integer"),
        ("base=fpga", "unknown profile base='fpga'"),
        ("base=exact", "always in the table"),
        ("requant=floor", "requant must be one of"),
        ("overflow=raise", "use overflow=exact"),
        ("k_step=0", "k_step must be a positive int"),
        ("acc_bits=16 acc_bits=24", "given twice"),
        ("acc_bits=", "empty value"),
        ("acc_bits", "is not KEY=VALUE"),
        ("missing.json", "cannot read"),
    ],
)
def test_bad_grid_fails_before_any_work_with_one_line(grid, message, tmp_path, texts_file, capsys):
    out = tmp_path / "out"
    args = ["sweep", "--texts", str(texts_file), "--out", str(out), "--grid", grid, "--workers", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("ibert-ref sweep: error:") and "\n" not in err
    assert not out.exists()  # nothing written, no cluster started


def test_bad_grid_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GridError, match="not valid JSON"):
        parse_grid([str(bad)])
    bad.write_text(json.dumps([{"base": "generic", "acc_bits": [16, 24], "name": "one"}]))
    with pytest.raises(GridError, match="'name' labels a single point"):
        parse_grid([str(bad)])
    bad.write_text(json.dumps({"points": []}))
    with pytest.raises(GridError, match="non-empty list"):
        parse_grid([str(bad)])


def test_inputs_and_out_folder_errors(tmp_path, texts_file, capsys):
    labelled = tmp_path / "labelled.txt"
    labelled.write_text("good film\t1\nbad film\t0\n")
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("good film\t1\nno label here\n")
    cases = [
        (["--texts", str(labelled)], "not a sequence-classification checkpoint"),
        (["--texts", str(mixed)], "mixed.txt:2: no TAB-separated label"),
        (["--texts", str(tmp_path / "none.txt")], "cannot read"),
    ]
    for src, message in cases:
        out = tmp_path / "o"
        assert main(["sweep", *src, "--out", str(out), "--grid", "acc_bits=24", "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
        assert not out.exists()


def test_ids_file_inputs(tmp_path, capsys):
    spec = ModelSpec(model=str(default_model_path()))
    ids = tmp_path / "ids.txt"
    ids.write_text("0 100 200 2\n\n0, 7, 8, 9, 2\n")
    inputs, classification, _ = read_inputs(spec, ids_path=str(ids))
    assert inputs.ids == [[0, 100, 200, 2], [0, 7, 8, 9, 2]] and inputs.labels is None and not classification
    for line, message in (("0 100000 2", "ids.txt: sequence 1: token id 100000 is outside [0, 1024)"),
                          ("0 x 2", "ids.txt: line 1: 'x' is not an integer token id")):
        ids.write_text(line + "\n")
        assert main(["sweep", "--ids", str(ids), "--out", str(tmp_path / "o"), "--grid", "acc_bits=24"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


# ---------------------------------------------------------------------------------------
# Shards and determinism
def test_shards_are_whole_equal_length_batches(texts_file):
    spec, inputs = _spec_inputs(texts_file)
    for shard_size in (1, 4, 7, 100):
        shards = make_shards(inputs, batch_size=3, shard_size=shard_size)
        batches = [tuple(b["indices"]) for s in shards for b in s["batches"]]
        assert batches == [tuple(b["indices"]) for s in make_shards(inputs, 3, 1) for b in s["batches"]]
        assert sorted(i for b in batches for i in b) == list(range(len(SENTENCES)))
        for s in shards:
            for b in s["batches"]:
                assert len({len(r) for r in b["ids"]}) == 1 and len(b["ids"]) <= 3
            assert len(s["batches"]) == 1 or sum(len(b["indices"]) for b in s["batches"]) <= shard_size


def test_reference_table_has_the_metrics(reference):
    rows = {r["label"]: r for r in read_csv_rows(reference / "results.csv")}
    assert list(rows) == ["exact (baseline)", "generic acc_bits=16 overflow=wrap", "generic acc_bits=16 overflow=saturate",
                          "generic acc_bits=32 overflow=wrap", "generic acc_bits=32 overflow=saturate", "arm"]
    exact = rows["exact (baseline)"]
    assert float(exact["int8_equal"]) == 1.0 and float(exact["cos_pooled_mean"]) == 1.0
    assert int(exact["sentences"]) == len(SENTENCES) and int(exact["overflow_count"]) == 0
    wrap16 = rows["generic acc_bits=16 overflow=wrap"]
    assert int(wrap16["overflow_count"]) > 0
    assert wrap16["overflow_first_op"].startswith("encoder.layer.0.attention.self.query [")  # op [part]
    assert wrap16["overflow_by_op"].startswith(wrap16["overflow_first_op"] + "=")
    counts = [int(part.rsplit("=", 1)[1]) for part in wrap16["overflow_by_op"].split("; ")]
    assert sum(counts) == int(wrap16["overflow_count"]) == sum(counts)
    assert float(wrap16["int8_equal_emb"]) == 1.0 > float(wrap16["int8_equal_L0"])  # embeddings have no accumulator
    assert float(wrap16["cos_pooled_mean"]) < 0.99
    wide = rows["generic acc_bits=32 overflow=wrap"]
    assert int(wide["overflow_count"]) == 0 and float(wide["int8_equal"]) == 1.0 and float(wide["max_abs_diff"]) == 0.0
    assert 0.9 < float(rows["arm"]["cos_pooled_mean"]) < 1.0  # double rounding: close, not equal
    assert (reference / "summary.png").stat().st_size > 10_000
    stored = sorted(p.name for p in (reference / "tasks" / EXACT_ID).iterdir())
    assert stored[0] == "shard-00000.json" and not any(n.startswith(".tmp") for n in stored)


def test_results_identical_for_two_workers_and_any_shard_size(reference, client, texts_file, tmp_path):
    want = (reference / "results.csv").read_text()
    spec, inputs = _spec_inputs(texts_file)
    points = parse_grid(GRID)
    for shard_size in (3, 100):
        out = tmp_path / f"s{shard_size}"
        run = run_sweep(spec, inputs, points, out, client=client, batch_size=3, shard_size=shard_size, progress=False)
        assert run.tasks_run == run.tasks_total == (len(points) + 1) * run.shards
        workers = {json.loads(p.read_text())["worker"] for p in (out / "tasks").rglob("shard-*.json")}
        if shard_size == 3:
            assert run.shards > 4 and len(workers) == 2  # both workers took part
        write_csv(out / "results.csv", collect(out, points, run.shards, run.sentences))
        assert (out / "results.csv").read_text() == want


# ---------------------------------------------------------------------------------------
# Reliability
def test_resume_after_interrupt_runs_only_what_is_missing(reference, client, texts_file, tmp_path):
    out = tmp_path / "out"
    more = tmp_path / "more.txt"  # enough work that the interrupt lands mid-sweep
    more.write_text("\n".join(SENTENCES * 3) + "\n")
    args = _sweep_args(more, out, "--workers", "1", "--shard-size", "3")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ibert_ref.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            if len(list(out.glob("tasks/*/shard-*.json"))) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "rerun the same command with --resume" in err
    done = {p.relative_to(out) for p in out.glob("tasks/*/shard-*.json")}
    assert done and not list(out.glob("tasks/*/.tmp-*"))
    assert not (out / "results.csv").exists()

    spec = ModelSpec(model=str(default_model_path()))
    inputs, _, _ = read_inputs(spec, texts_path=str(more))
    points = parse_grid(GRID)
    ran = []
    run = run_sweep(spec, inputs, points, out, client=client, resume=True, batch_size=3, shard_size=3,
                    progress=False, on_result=lambda r: ran.append((r["config_id"], r["shard"])))
    assert run.tasks_reused == len(done) and run.tasks_run == run.tasks_total - len(done) == len(ran) == len(set(ran))
    finished = {(p.parent.name, int(p.stem.split("-")[1])) for p in done}
    assert not finished & set(ran)  # nothing finished was recomputed
    rows = collect(out, points, run.shards, run.sentences)
    assert [r["config_id"] for r in rows] == [EXACT_ID] + [p.config_id for p in points]  # one row each
    # three copies of every sentence: same integers, so every share and mean equals the reference's
    ref = {r["config_id"]: r for r in read_csv_rows(reference / "results.csv")}
    for r in rows:
        want = ref[r["config_id"]]
        assert r["sentences"] == 3 * int(want["sentences"])
        assert r["overflow_count"] == 3 * int(want["overflow_count"])
        assert r["int8_equal"] == float(want["int8_equal"])
        assert r["cos_pooled_mean"] == pytest.approx(float(want["cos_pooled_mean"]), abs=1e-15)
    # resuming a finished sweep runs nothing; resuming with other options is refused
    assert run_sweep(spec, inputs, points, out, client=client, resume=True, batch_size=3, shard_size=3,
                     progress=False).tasks_run == 0
    assert main(_sweep_args(more, out, "--workers", "1", "--shard-size", "4", "--resume")) == 2
    assert main(_sweep_args(more, out, "--workers", "1", "--shard-size", "3")) == 2  # no --resume: refused


def test_worker_killed_mid_sweep_gives_the_same_table(reference, texts_file, tmp_path):
    import logging

    from distributed import Client

    spec, inputs = _spec_inputs(texts_file)
    points = parse_grid(GRID)
    killed = {}
    results = []

    def kill_one(res):
        results.append(res)
        if killed:
            return
        processing = {w: keys for w, keys in c.processing().items() if keys}
        if not processing:
            return
        addr = sorted(processing)[0]
        pid = c.run(os.getpid, workers=[addr])[addr]
        killed.update(addr=addr, pid=pid, keys=set(processing[addr]))
        os.kill(pid, signal.SIGKILL)

    cluster = local_cluster(2, silence_logs=logging.CRITICAL)
    c = Client(cluster)
    try:
        out = tmp_path / "out"
        run = run_sweep(spec, inputs, points, out, client=c, batch_size=3, shard_size=3, progress=False,
                        on_result=kill_one)
    finally:
        c.close()
        cluster.close()
    assert killed, "no worker was busy when the first result arrived"
    assert run.tasks_run == run.tasks_total
    # the tasks the dead worker held ran elsewhere
    assert all(r["worker"] != killed["addr"] for r in results[1:])
    write_csv(out / "results.csv", collect(out, points, run.shards, run.sentences))
    assert (out / "results.csv").read_text() == (reference / "results.csv").read_text()


def _wait_for_file(path, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def test_scheduler_option_runs_on_a_separately_started_cluster(reference, texts_file, tmp_path, capsys):
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    dask = [sys.executable, "-m", "dask"]
    procs = []
    try:
        procs.append(subprocess.Popen(
            dask + ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(sched_file)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_file(sched_file, procs[0], 60)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen(
            dask + ["worker", address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1",
                    "--no-dashboard", "--death-timeout", "30"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=30) as c:
            c.wait_for_workers(1, timeout=60)
        out = tmp_path / "out"
        assert main(_sweep_args(texts_file, out, "--scheduler", address, "--shard-size", "4")) == 0
        printed = capsys.readouterr().out
        assert "on 1 worker(s)" in printed and "exact (baseline)" in printed
        assert (out / "results.csv").read_text() == (reference / "results.csv").read_text()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    # an address nobody listens on fails in bounded time with one line
    t0 = time.time()
    assert main(_sweep_args(texts_file, tmp_path / "o2", "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "2")) == 2
    assert time.time() - t0 < 30
    err = capsys.readouterr().err.strip()
    assert "cannot connect" in err and "\n" not in err
    assert not (tmp_path / "o2").exists()  # nothing written: the same command can simply be rerun


# ---------------------------------------------------------------------------------------
# Float model and task metric
def _classification_checkpoint(folder: Path) -> Path:
    """The bundled model plus a seeded random classification head (2 labels), no torch needed."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src = Path(default_model_path())
    shutil.copytree(src, folder)
    tensors = load_file(str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    h = config["hidden_size"]
    rng = np.random.default_rng(0)
    tensors.update({
        "classifier.dense.weight": rng.normal(0, 0.3, (h, h)).astype(np.float32),
        "classifier.dense.bias": np.zeros(h, np.float32),
        "classifier.out_proj.weight": rng.normal(0, 0.3, (2, h)).astype(np.float32),
        "classifier.out_proj.bias": np.zeros(2, np.float32),
    })
    save_file(tensors, str(folder / "model.safetensors"))
    config.update(architectures=["IBertForSequenceClassification"], id2label={"0": "neg", "1": "pos"},
                  label2id={"neg": 0, "pos": 1})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_task_metric_for_a_labelled_file(client, tmp_path):
    model = _classification_checkpoint(tmp_path / "clf")
    labelled = tmp_path / "labelled.txt"
    labelled.write_text("".join(f"{s}\t{'pos' if i % 2 else 0}\n" for i, s in enumerate(SENTENCES[:10])))
    spec = ModelSpec(model=str(model))
    inputs, classification, num_labels = read_inputs(spec, texts_path=str(labelled))
    assert classification and num_labels == 2 and inputs.labels == [i % 2 for i in range(10)]
    spec = ModelSpec(model=str(model), classification=True)
    points = parse_grid(["acc_bits=16,32"])
    run = run_sweep(spec, inputs, points, tmp_path / "out", client=client, batch_size=3, shard_size=4, progress=False)
    rows = {r["label"]: r for r in collect(tmp_path / "out", points, run.shards, run.sentences)}
    exact = rows["exact (baseline)"]
    assert exact["agree_with_exact"] == 1.0 and 0.0 <= exact["accuracy"] <= 1.0
    assert exact["accuracy"] * 10 == round(exact["accuracy"] * 10)  # a count of 10 sentences
    assert rows["generic acc_bits=32"]["accuracy"] == exact["accuracy"]
    assert rows["generic acc_bits=32"]["agree_with_exact"] == 1.0


def test_float_model_cosines(client, texts_file, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    spec, inputs = _spec_inputs(texts_file, float_model=str(default_model_path()))
    inputs.ids, inputs.texts = inputs.ids[:6], inputs.texts[:6]
    points = parse_grid(["acc_bits=16,32"])
    run = run_sweep(spec, inputs, points, tmp_path / "out", client=client, batch_size=3, shard_size=3, progress=False)
    rows = {r["label"]: r for r in collect(tmp_path / "out", points, run.shards, run.sentences)}
    exact, wide, narrow = rows["exact (baseline)"], rows["generic acc_bits=32"], rows["generic acc_bits=16"]
    # the bundled model's float weights (quant_mode off) vs its integers: close, not equal
    assert 0.5 < exact["cos_pooled_float_mean"] < 1.0 and exact["cos_pooled_float_min"] <= exact["cos_pooled_float_mean"]
    assert wide["cos_pooled_float_mean"] == exact["cos_pooled_float_mean"]  # same integers as exact
    assert narrow["cos_pooled_float_mean"] < exact["cos_pooled_float_mean"]


# ---------------------------------------------------------------------------------------
# verify / vectors over many inputs on the same engine
def test_vectors_many_writes_one_folder_per_input_and_resumes(client, tmp_path):
    from ibert_ref.sweep.many import vectors_many
    from ibert_ref.vectors import load_vectors, rerun_op

    model = str(default_model_path())
    inputs, _, _ = read_inputs(ModelSpec(model), texts=SENTENCES[:5])
    out = tmp_path / "vec"
    index = vectors_many(model, inputs, out, client=client, shard_size=2, progress=False)
    assert index["folders"] == [f"input-{i:05d}" for i in range(5)] and index["shards_run"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + index["folders"]  # no temporary folder left
    for i in (0, 4):
        assert load_vectors(out / f"input-{i:05d}")[1]["input_ids"].tolist() == [inputs.ids[i]]
    manifest, arrays = load_vectors(out / "input-00003")
    entry = manifest["ops"][5]
    assert np.array_equal(rerun_op(entry, arrays, manifest), arrays[entry["npz_key"]])  # each folder re-runs alone
    # a lost folder is rebuilt, the others are kept
    import shutil

    shutil.rmtree(out / "input-00002")
    again = vectors_many(model, inputs, out, client=client, shard_size=2, resume=True, progress=False)
    assert again["shards_run"] == 1 and (out / "input-00002" / "manifest.json").exists()


def test_verify_many_sums_the_verdicts(client, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ibert_ref.sweep.many import verify_many

    model = str(default_model_path())
    inputs, _, _ = read_inputs(ModelSpec(model), texts=SENTENCES[:4])
    summary = verify_many(model, inputs, tmp_path / "ver", datapath="transformers", gemm="torch", client=client,
                          shard_size=2, progress=False)
    assert summary["ok"] and summary["unexplained"] == 0 and summary["batches"] == 4
    e2e = summary["totals"]["e2e"]
    assert e2e["elements"] == e2e["equal"] > 0  # transformers datapath + torch GEMM: bit-equal
    assert json.loads((tmp_path / "ver" / "verify.json").read_text()) == summary
