"""``ibert-ref bench``: time ibert-ref against transformers on the same inputs, and measure memory.

Each system is timed **alone**: a fresh worker subprocess per system and repeat loads the model,
runs every shape (its first forward timed separately: import, JIT and first-touch costs), then
the timed forwards, reports, and exits before the next system's worker starts — no other
system's process (its threads, its memory) is alive while one is timed. The order of the systems
rotates from repeat to repeat, so that a drift in machine load spreads over all of them. Every
sample is kept; the report gives medians, spread (min-max) and per-system first-call time and
peak memory, with the CPU model, load average and thread settings.

Systems (``--systems``):

``exact``           ibert-ref, exact integer datapath on the NumPy backend (int8 weights resident)
``exact-compiled``  ibert-ref, exact datapath on the compiled backend (numba kernels, exact int8
                    GEMM; the same integers, :mod:`ibert_ref.backends`; needs the fast extra)
``exact-ref``       ibert-ref, exact datapath with the reference kernels (slow; not in the default set)
``transformers``    ibert-ref, transformers datapath (float32 emulation, numpy GEMMs)
``tf-quant``        transformers ``IBertModel`` with ``quant_mode=True`` (needs the verify extra)
``tf-fp32``         transformers ``IBertModel`` with ``quant_mode=False``: same weights, float32
``gemm-floor``      only the float32 BLAS GEMMs of one forward (the model's shapes, integer-valued
                    operands, weights already float32): a lower bound for any exact path whose
                    GEMMs run on float32 BLAS, as the NumPy backend's do (not in the default set)

Environment: the workers run without ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` unless
``--keep-openblas-env`` (a forced core type can pick a slower kernel); the BLAS each worker
actually uses is reported (threadpoolctl, when installed).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np

from ._args import HelpFormatter, bounded_int, model_name, nonempty

SYSTEMS = {
    "exact": "ibert-ref exact (numpy)",
    "exact-compiled": "ibert-ref exact (compiled)",
    "exact-ref": "ibert-ref exact (reference kernels)",
    "transformers": "ibert-ref transformers datapath",
    "tf-quant": "transformers quant_mode",
    "tf-fp32": "transformers FP32",
    "gemm-floor": "float32 GEMMs only",
}
DEFAULT_SYSTEMS = ("exact", "exact-compiled", "tf-fp32", "tf-quant")
DEFAULT_SHAPES = ("1x128", "8x128", "1x512")
OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: Targets (ratios measured in one run on one machine): exact forward <= 1.0x transformers FP32.
TARGET_EXACT_OVER_FP32 = 1.0
TARGET_WEIGHT_BYTES_RATIO = 0.35


# ---------------------------------------------------------------------------------------
# Worker side: one system, one model, JSON lines on stdin/stdout.
def rss_bytes():
    """Current resident set size of this process (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        return None


def peak_rss_bytes():
    """Peak resident set size since start or the last :func:`reset_peak_rss` (Linux
    ``VmHWM``; elsewhere ``ru_maxrss``), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):  # pragma: no cover - non-Unix
        return None


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count at the current RSS (Linux ``clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:  # pragma: no cover - non-Linux or restricted
        return False


def trim_heap() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``); False if unavailable."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False


def array_bytes(obj, seen=None) -> int:
    """Bytes of every distinct NumPy array reachable through dataclasses, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        if id(base) in seen:
            return 0
        seen.add(id(base))
        return int(getattr(base, "nbytes", obj.nbytes))
    if is_dataclass(obj) and not isinstance(obj, type):
        return sum(array_bytes(getattr(obj, f.name), seen) for f in fields(obj))
    if isinstance(obj, (list, tuple)):
        return sum(array_bytes(v, seen) for v in obj)
    if isinstance(obj, dict):
        return sum(array_bytes(v, seen) for v in obj.values())
    return 0


def blas_info():
    """What BLAS/OpenMP libraries this process loaded (threadpoolctl), or a note."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: d.get(k) for k in keep if k in d} for d in threadpool_info()]


def thread_settings(sysobj) -> dict:
    """The thread pools this worker uses: torch's (when imported), numba's (the compiled
    backend), the OpenMP / BLAS environment, and the compiled backend's int8 GEMM."""
    out = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS",
                                          "OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT", "MKL_NUM_THREADS")
           if os.environ.get(k) is not None}
    if "torch" in sys.modules:
        out["torch_threads"] = sys.modules["torch"].get_num_threads()
    if "numba" in sys.modules:
        numba = sys.modules["numba"]
        out["numba_threads"] = numba.get_num_threads()
        try:
            out["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel kernel has run
            out["numba_threading_layer"] = None
    dp = getattr(getattr(sysobj, "model", None), "datapath", None)
    if getattr(dp, "int_gemm", None) is not None:
        from ..backends import int_gemm

        out["int_gemm"] = dp.int_gemm.name
        if int_gemm.GEMM_FALLBACK_REASON:
            out["int_gemm_note"] = int_gemm.GEMM_FALLBACK_REASON
    return out


class IBertRefSystem:
    """An ibert-ref model on one datapath."""

    def __init__(self, model_path, datapath):
        from ..datapath import ExactDatapath
        from ..model import IBertModel

        if datapath == "exact-compiled":
            self.model = IBertModel.from_pretrained(model_path, datapath="exact", backend="compiled")
        else:
            dp = ExactDatapath() if datapath == "exact-ref" else datapath
            self.model = IBertModel.from_pretrained(model_path, datapath=dp)
        self.config = self.model.config

    def weight_bytes(self):
        b = array_bytes(self.model.compiled)
        return {"resident": b, "parameters": b}

    def forward(self, ids, mask):
        return self.model(ids, attention_mask=mask)


class GemmFloorSystem:
    """The float32 GEMMs of one encoder forward and nothing else: per layer Q, K, V, attention
    output (H x H), intermediate (H -> I), output (I -> H), and the per-head scores and
    context GEMMs, on integer-valued float32 operands (exact, as in ``fast_intops.matmul_exact``),
    weights converted once at load. The time any exact path spends in BLAS at least."""

    def __init__(self, model_path):
        from ..loading import load_checkpoint

        self.config = load_checkpoint(model_path).config
        c = self.config
        h, i = int(c["hidden_size"]), int(c["intermediate_size"])
        rng = np.random.default_rng(0)

        def w(rows, cols):
            return rng.integers(-127, 127, size=(rows, cols)).astype(np.float32)

        self.layers = [[w(h, h) for _ in range(4)] + [w(i, h), w(h, i)] for _ in range(int(c["num_hidden_layers"]))]
        self._inputs = {}

    def weight_bytes(self):
        b = sum(a.nbytes for layer in self.layers for a in layer)
        return {"resident": b, "parameters": b}

    def _operands(self, batch, seq):
        key = (batch, seq)
        if key not in self._inputs:
            c, rng = self.config, np.random.default_rng(1)
            h, i, nh = int(c["hidden_size"]), int(c["intermediate_size"]), int(c["num_attention_heads"])
            self._inputs = {key: (
                rng.integers(-128, 128, size=(batch * seq, h)).astype(np.float32),
                rng.integers(-128, 128, size=(batch * seq, i)).astype(np.float32),
                rng.integers(-128, 128, size=(batch, nh, seq, h // nh)).astype(np.float32),
                rng.integers(0, 257, size=(batch, nh, seq, seq)).astype(np.float32),
            )}
        return self._inputs[key]

    def forward(self, ids, mask):
        x, x_i, q, p = self._operands(*ids.shape)
        for wq, wk, wv, wo, w_in, w_out in self.layers:
            for wt in (wq, wk, wv, wo):
                np.matmul(x, wt.T)
            np.matmul(x, w_in.T)
            np.matmul(x_i, w_out.T)
            np.matmul(q, q.transpose(0, 1, 3, 2))
            np.matmul(p, q)


def make_inputs(batch, seq, vocab, seed=0):
    """The benchmark's inputs: random ids in [5, vocab) (no special tokens), no padding."""
    rng = np.random.default_rng([seed, batch, seq])
    ids = rng.integers(5, vocab, size=(batch, seq), dtype=np.int64)
    return ids, np.ones_like(ids)


def worker_main(system, model_path) -> int:
    """Serve requests on stdin: ``{"op": "run", "batch": B, "seq": T}`` -> ``{"seconds": ...}``.
    Any error is answered with one line ``{"error": "Type: message"}`` (the parent reports it
    without the worker's traceback) and ends the worker."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the libraries print goes to stderr, not the protocol
    try:
        return _serve(system, model_path, out)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        import traceback

        traceback.print_exc()  # to stderr, for IBERT_REF_DEBUG readers
        try:
            out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            out.flush()
        except OSError:  # the parent is gone
            pass
        return 1


def _serve(system, model_path, out) -> int:
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    if system.startswith("tf-"):
        from ..oracle.bench_system import TransformersSystem  # torch lives in the oracle package

        sysobj = TransformersSystem(model_path, quant_mode=(system == "tf-quant"))
    elif system == "gemm-floor":
        sysobj = GemmFloorSystem(model_path)
    else:
        sysobj = IBertRefSystem(model_path, system)
    load_s = time.perf_counter() - t0
    gc.collect()
    rss_load, peak_load = rss_bytes(), peak_rss_bytes()
    trim_heap()  # what loading freed but the allocator kept (all systems alike)
    info = {
        "system": system,
        "load_seconds": load_s,
        "rss_before_load": rss0,
        "rss_after_load": rss_load,
        "peak_rss_load": peak_load,
        "rss_after_load_trimmed": rss_bytes(),
        "peak_reset": reset_peak_rss(),
        "weight_bytes": sysobj.weight_bytes(),
        "max_positions": int(sysobj.config["max_position_embeddings"]) - int(sysobj.config.get("pad_token_id", 1)) - 1,
        "vocab_size": int(sysobj.config["vocab_size"]),
        "blas": blas_info(),
        "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
        "pid": os.getpid(),
    }
    info["threads"] = thread_settings(sysobj)
    out.write(json.dumps(info) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        if req["op"] == "threads":  # after the first forward: lazily started pools included
            out.write(json.dumps({"threads": thread_settings(sysobj), "peak_rss": peak_rss_bytes(),
                                  "rss": rss_bytes()}) + "\n")
            out.flush()
            continue
        ids, mask = make_inputs(req["batch"], req["seq"], info["vocab_size"], req.get("seed", 0))
        t = time.perf_counter()
        sysobj.forward(ids, mask)
        secs = time.perf_counter() - t
        out.write(json.dumps({"seconds": secs, "rss": rss_bytes(), "peak_rss": peak_rss_bytes()}) + "\n")
        out.flush()
    return 0


# ---------------------------------------------------------------------------------------
# Parent side.
class Worker:
    """A worker subprocess for one system."""

    def __init__(self, system, model_path, env):
        cmd = [sys.executable, "-m", "ibert_ref.commands.bench", "--worker", system, "--model", str(model_path)]
        self.started = time.perf_counter()
        self.system = system
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            last = err[-1] if err else f"exit status {self.proc.wait()}"
            raise RuntimeError(f"benchmark worker {self.system!r} ended without an answer: {last}")
        reply = json.loads(line)
        if "error" in reply:
            raise ValueError(f"benchmark worker {self.system!r} ({SYSTEMS[self.system]}): {reply['error']}")
        return reply

    def run(self, batch, seq):
        self.proc.stdin.write(json.dumps({"op": "run", "batch": batch, "seq": seq}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def threads(self):
        self.proc.stdin.write(json.dumps({"op": "threads"}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):  # pragma: no cover
                self.proc.kill()


def worker_env(keep_openblas_env: bool):
    """The workers' environment: without ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE``, and with
    ``OPENBLAS_THREAD_TIMEOUT=4`` unless set: OpenBLAS' idle threads then sleep at once instead
    of spinning for ~0.1 s after each GEMM, which would steal a core from the *next* worker in
    the round-robin (every system alike; torch's own GEMMs do not use it)."""
    env = dict(os.environ)
    removed = {}
    if not keep_openblas_env:
        for name in OPENBLAS_ENV:
            if name in env:
                removed[name] = env.pop(name)
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    return env, removed


def parse_shape(text):
    """``'8x128'`` -> ``(8, 128)``; both at least 1."""
    try:
        b, t = text.strip().lower().split("x")
        b, t = int(b), int(t)
    except ValueError as exc:
        raise ValueError(f"shape {text!r} is not BATCHxSEQ, e.g. 8x128") from exc
    if b < 1 or t < 1:
        raise ValueError(f"shape {text!r}: batch and sequence length must be at least 1")
    return b, t


def shape_list(text):
    """``--shapes``: comma-separated BATCHxSEQ (argparse type: the error names the option)."""
    try:
        shapes = [parse_shape(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not shapes:
        raise argparse.ArgumentTypeError("no shape given, e.g. 1x128,8x128")
    return shapes


def system_list(text):
    """``--systems``: comma-separated names from :data:`SYSTEMS`."""
    systems = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise argparse.ArgumentTypeError(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}"
                                         if unknown else "no system given")
    return systems


def machine_info():
    """Date, CPU, core count, Python/NumPy (and torch/transformers if importable) versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    from importlib import metadata  # versions without importing (no thread pool in the parent)

    for mod in ("torch", "transformers", "numba"):
        try:
            versions[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            versions[mod] = None
    from .. import __version__

    versions["ibert-ref"] = __version__
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _cold_jit_seconds(model_path, env, shape, log):
    """First forward of the compiled backend in a fresh process with an empty numba cache
    (``NUMBA_CACHE_DIR`` a new temporary folder): the one-time compile cost a first install pays
    (later processes load the cached machine code: the "first call" column)."""
    import shutil
    import tempfile

    cache = tempfile.mkdtemp(prefix="ibert-bench-numba-")
    try:
        w = Worker("exact-compiled", model_path, {**env, "NUMBA_CACHE_DIR": cache})
        try:
            log("compiled backend, empty numba cache: compiling ...")
            return w.run(*shape)["seconds"]
        finally:
            w.close()
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _spread(v):
    v = sorted(v)
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "all": v}


def run_benchmark(model_path, systems, shapes, repeats=5, warmup=1, keep_openblas_env=False, log=print,
                  inner=1, cold_jit=True):
    """Time every system on every shape, one system alive at a time; return a result dict
    (see :func:`format_report`).

    For each of ``repeats`` rounds, the systems run in an order rotated by one per round; each
    run is a fresh worker process that loads the model, then per shape: one first forward
    (recorded as the first call), ``warmup`` untimed forwards, ``inner`` timed forwards; then
    reports its thread pools and peak memory and exits before the next worker starts.
    ``cold_jit``: one extra compiled-backend process with an empty numba cache measures the
    first-call compile time.
    """
    env, removed = worker_env(keep_openblas_env)
    keys = [f"{b}x{t}" for b, t in shapes]
    result = {"model": str(model_path), "machine": machine_info(), "openblas_env_removed": removed,
              "repeats": repeats, "warmup": warmup, "inner": inner, "systems": {}, "timings": {},
              "runs": [], "worker_env": {k: env.get(k) for k in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")}}
    samples = {s: {k: [] for k in keys} for s in systems}
    firsts = {s: {k: [] for k in keys} for s in systems}
    if cold_jit and "exact-compiled" in systems:
        result["cold_jit_seconds"] = _cold_jit_seconds(model_path, env, shapes[0], log)
    for r in range(repeats):
        order = systems[r % len(systems):] + systems[: r % len(systems)]
        for s in order:
            run = {"repeat": r, "system": s, "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None}
            w = Worker(s, model_path, env)
            try:
                info = w.info
                for (b, t), key in zip(shapes, keys):
                    if t > info["max_positions"]:
                        continue
                    firsts[s][key].append(w.run(b, t)["seconds"])
                    for _ in range(warmup):
                        w.run(b, t)
                    for _ in range(inner):
                        samples[s][key].append(w.run(b, t)["seconds"])
                after = w.threads()
            finally:
                w.close()
            run.update(load_seconds=info["load_seconds"], peak_rss_load=info["peak_rss_load"],
                       rss_after_load=info["rss_after_load"], rss_after_load_trimmed=info["rss_after_load_trimmed"],
                       peak_rss_forward=after["peak_rss"] if info.get("peak_reset") else None,
                       wall_seconds=time.perf_counter() - w.started, threads=after["threads"])
            result["runs"].append(run)
            result["systems"].setdefault(s, info)
            result["systems"][s]["threads"] = after["threads"]
            done = ", ".join(f"{k} {samples[s][k][-1] * 1e3:,.0f} ms" for k in keys if samples[s][k])
            log(f"round {r + 1}/{repeats} {SYSTEMS[s]}: {done} (load avg {run['loadavg_before']})")
    for key in keys:
        row = {s: {**_spread(samples[s][key]), "first": firsts[s][key]} for s in systems if samples[s][key]}
        if row:
            result["timings"][key] = row
        else:
            log(f"skipped {key}: longer than the model's positions")
    for s in systems:
        mine = [run for run in result["runs"] if run["system"] == s]
        summary = result["systems"][s]
        summary["load_seconds_median"] = statistics.median(run["load_seconds"] for run in mine)
        summary["peak_rss_load"] = max(run["peak_rss_load"] or 0 for run in mine) or None
        fwd = [run["peak_rss_forward"] for run in mine if run["peak_rss_forward"]]
        summary["peak_rss_forward"] = max(fwd) if fwd else None
        first_key = next((k for k in keys if firsts[s][k]), None)
        summary["first_call_seconds"] = statistics.median(firsts[s][first_key]) if first_key else None
        summary["first_call_shape"] = first_key
    result["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return result


def _mb(n):
    return "-" if n is None else f"{n / 2**20:,.0f}"


def ratios(result):
    """Per shape: each exact system's median over FP32's (target <= 1.0), quant_mode over each
    exact system, and the other pairs that are there; the weight-bytes ratio."""
    out = {}
    for key, tm in result["timings"].items():
        med = {s: v["median"] for s, v in tm.items()}
        r = {}
        for s in ("exact", "exact-compiled", "transformers"):
            if s in med and "tf-fp32" in med:
                r[f"{s}_over_fp32"] = med[s] / med["tf-fp32"]
            if s in med and "tf-quant" in med:
                r[f"quant_over_{s}"] = med["tf-quant"] / med[s]
        if "exact" in med and "exact-compiled" in med:
            r["numpy_over_compiled"] = med["exact"] / med["exact-compiled"]
        if "exact-ref" in med and "exact" in med:
            r["reference_over_fast"] = med["exact-ref"] / med["exact"]
        if "gemm-floor" in med and "tf-fp32" in med:
            r["gemm_floor_over_fp32"] = med["gemm-floor"] / med["tf-fp32"]
        out[key] = r
    systems = result["systems"]
    for s in ("exact", "exact-compiled"):
        if s in systems and "tf-fp32" in systems:
            out[f"weight_bytes_{s}_over_fp32"] = (
                systems[s]["weight_bytes"]["resident"] / systems["tf-fp32"]["weight_bytes"]["parameters"]
            )
    return out


def _ms(v):
    return f"{v * 1e3:,.1f}"


def format_report(result) -> str:
    """Markdown: medians with spread per system and shape, the ratios against the target, first
    calls and memory per system, and the machine, load and thread settings."""
    systems = list(result["systems"])
    lines = [f"model: `{result['model']}`", "",
             "Median of the timed forwards (min-max), each system alone in its own process:", ""]
    lines += ["| batch x seq | " + " | ".join(SYSTEMS[s] for s in systems) + " |", "|" + "---|" * (len(systems) + 1)]
    for key, tm in result["timings"].items():
        cells = [f"{_ms(tm[s]['median'])} ms ({_ms(tm[s]['min'])}-{_ms(tm[s]['max'])})" if s in tm else "-"
                 for s in systems]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    r = ratios(result)
    cols = [(f"{s}_over_fp32", f"{SYSTEMS[s]} / FP32 (target <= {TARGET_EXACT_OVER_FP32:g})", TARGET_EXACT_OVER_FP32)
            for s in ("exact", "exact-compiled") if s in systems and "tf-fp32" in systems]
    cols += [(f"quant_over_{s}", f"quant_mode / {SYSTEMS[s]}", None)
             for s in ("exact", "exact-compiled", "transformers") if s in systems and "tf-quant" in systems]
    if "exact" in systems and "exact-compiled" in systems:
        cols.append(("numpy_over_compiled", "numpy / compiled backend", None))
    if "gemm-floor" in systems and "tf-fp32" in systems:
        cols.append(("gemm_floor_over_fp32", "float32 GEMMs only / FP32", None))
    if cols:
        lines += ["", "| batch x seq | " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
        for key in result["timings"]:
            cells = []
            for name, _, target in cols:
                v = r.get(key, {}).get(name)
                mark = "" if v is None or target is None else (" met" if v <= target else " MISSED")
                cells.append("-" if v is None else f"{v:.2f}x{mark}")
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "| system | first call (s) | weights resident (MiB) | RSS after load / trimmed (MiB) "
              "| peak RSS loading (MiB) | peak RSS forwards (MiB) | load (s) |", "|---|---|---|---|---|---|---|"]
    for s in systems:
        info = result["systems"][s]
        first = "-" if info.get("first_call_seconds") is None else f"{info['first_call_seconds']:.2f} ({info['first_call_shape']})"
        if s == "exact-compiled" and "cold_jit_seconds" in result:
            first += f"; empty numba cache {result['cold_jit_seconds']:.1f}"
        lines.append(f"| {SYSTEMS[s]} | {first} | {_mb(info['weight_bytes']['resident'])} | "
                     f"{_mb(info['rss_after_load'])} / {_mb(info['rss_after_load_trimmed'])} | "
                     f"{_mb(info.get('peak_rss_load'))} | {_mb(info.get('peak_rss_forward'))} | "
                     f"{info.get('load_seconds_median', info['load_seconds']):.1f} |")
    for s in ("exact", "exact-compiled"):
        name = f"weight_bytes_{s}_over_fp32"
        if name in r:
            v = r[name]
            lines += ["", f"{SYSTEMS[s]} weights / FP32 parameters: {v:.3f}x "
                          f"(target <= {TARGET_WEIGHT_BYTES_RATIO}: {'met' if v <= TARGET_WEIGHT_BYTES_RATIO else 'MISSED'})"]
    m = result["machine"]
    loads = [run["loadavg_before"][0] for run in result["runs"] if run.get("loadavg_before")]
    lines += ["", f"machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; {m['date']}",
              "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
              f"load average (1 min) at start {m['loadavg_start'][0]:.2f}, before each worker "
              f"{min(loads):.2f}-{max(loads):.2f}, at end {m['loadavg_end'][0]:.2f}" if loads and m.get("loadavg_start")
              else "load average: n/a",
              f"repeats {result['repeats']} (a fresh process per system and repeat, order rotated), "
              f"{result['inner']} timed forward(s) per shape per process after {result['warmup']} warm-up; "
              f"OpenBLAS env removed: {result['openblas_env_removed'] or 'none set'}",
              "worker env: " + ", ".join(f"{k}={v}" for k, v in result["worker_env"].items())]
    for s in systems:
        info = result["systems"][s]
        th = ", ".join(f"{k}={v}" for k, v in info.get("threads", {}).items())
        lines.append(f"threads {SYSTEMS[s]}: {th or '-'}; numpy BLAS: {info['blas']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time ibert-ref against transformers (quant_mode and FP32) and measure memory",
        description="Time one forward pass of each system on the same random inputs, each system "
        "alone (a fresh process per system and round, order rotated; medians and spread), print "
        "the ratios against the target (exact <= 1.0x transformers FP32), first-call times and "
        "each model's weights and memory. transformers systems need the verify extra.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default=None, type=model_name,
                   help="folder of an I-BERT checkpoint (default: the bundled tiny model)")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), type=system_list,
                   help="comma-separated, from: " + ", ".join(SYSTEMS))
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), type=shape_list,
                   help="comma-separated BATCHxSEQ (shapes longer than the model's positions are skipped)")
    p.add_argument("--repeats", type=bounded_int(1, None, "count"), default=5,
                   help="rounds: a fresh process per system and round, systems in rotated order")
    p.add_argument("--inner", type=bounded_int(1, None, "count"), default=1,
                   help="timed forwards per shape in each process (median over all reported)")
    p.add_argument("--warmup", type=bounded_int(0, None, "count"), default=1,
                   help="untimed forwards per shape after the (separately reported) first call")
    p.add_argument("--no-cold-jit", action="store_true",
                   help="skip the compiled backend's empty-cache compile measurement")
    p.add_argument("--keep-openblas-env", action="store_true",
                   help="keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE in the workers' environment")
    p.add_argument("--json", default=None, type=nonempty("file name"),
                   help="also write the raw results to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import default_model_path
    from .verify import check_output_file, write_text_atomic

    model = Path(args.model) if args.model else Path(default_model_path())
    if not model.is_dir():
        raise ValueError(f"--model {args.model!r}: not a folder (bench loads a local checkpoint folder)")
    if not (model / "config.json").is_file():
        raise ValueError(f"--model {args.model!r}: no config.json in this folder")
    systems = args.systems if isinstance(args.systems, list) else system_list(args.systems)
    if any(s.startswith("tf-") for s in systems):
        import importlib.util

        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
            raise ImportError(
                "the tf-quant / tf-fp32 systems need the verify extra (pip install 'ibert-ref[verify]'); "
                "or pass --systems exact,transformers"
            )
    if "exact-compiled" in systems:
        from ..backends import compiled_available

        if not compiled_available():
            raise ImportError("the exact-compiled system needs the fast extra (pip install 'ibert-ref[fast]'); "
                              "or leave it out of --systems")
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    shapes = args.shapes if isinstance(args.shapes, list) else shape_list(args.shapes)
    if args.json:
        check_output_file(args.json, "--json")
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    result = run_benchmark(model, systems, shapes, args.repeats, args.warmup, args.keep_openblas_env, log,
                           inner=args.inner, cold_jit=not args.no_cold_jit)
    print(format_report(result))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        worker = argparse.ArgumentParser()
        worker.add_argument("--worker", required=True, choices=list(SYSTEMS))
        worker.add_argument("--model", required=True)
        a = worker.parse_args()
        sys.exit(worker_main(a.worker, a.model))
    sys.exit("run `ibert-ref bench` (this module's __main__ is the benchmark worker)")
