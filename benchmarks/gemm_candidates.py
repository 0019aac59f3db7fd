"""Exact int8 x int8 -> int32 GEMM candidates for the compiled backend: speed and exactness.

Each candidate computes ``x (M, K) @ w (N, K)^T`` for int8 operands (QuantLinear's shapes in a
roberta-base forward) and must return the int64 definition exactly; it is also run on the
adversarial operands of :func:`ibert_ref.backends.int_gemm.adversarial_operands` (every operand
at -128 / 127, K = 3072: what a ``vpmaddubsw``-based kernel saturates).

* ``blas``      float32 BLAS in exact K-chunks (the NumPy backend: :func:`ibert_ref.backends.fast_intops.matmul_exact`,
                int8 weights converted to float32 per call, as they stay int8 resident)
* ``torch``     ``torch._int_mm`` (oneDNN s8 x s8 -> s32)
* ``numba``     a plain numba kernel: rows in parallel, int32 dot products (what LLVM vectorises)
* ``onnxruntime`` ``MatMulInteger`` (s8 x s8 -> s32) if onnxruntime and onnx import (``--ort-path``
                adds a folder to ``sys.path``, e.g. a ``pip install --target`` folder)

Run: python benchmarks/gemm_candidates.py [--repeats 20] [--ort-path DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (1024, 768, 3072), (512, 3072, 768)]


def candidates(ort_path=None, only=None):
    """name -> ``fn(x (M, K) int8, w (N, K) int8) -> (M, N)``; ``only``: import just that one."""
    from ibert_ref.backends import fast_intops

    out = {"blas": lambda x, w: fast_intops.matmul_exact(x, w.T, narrow=True)}
    if only == "blas":
        return out
    try:
        if only not in (None, "torch"):
            raise ImportError
        import torch

        out["torch"] = lambda x, w: torch._int_mm(torch.from_numpy(x), torch.from_numpy(w).t()).numpy()
    except ImportError:
        pass
    try:
        if only not in (None, "numba"):
            raise ImportError
        from numba import njit, prange

        @njit(parallel=True, cache=True)
        def numba_gemm(x, w, out):
            """``out[i, j] = sum_k int32(x[i, k]) * int32(w[j, k])`` (exact: |sum| < 2^31 for K <= 2^17)."""
            m, k = x.shape
            n = w.shape[0]
            for i in prange(m):
                for j in range(n):
                    acc = np.int32(0)
                    for t in range(k):
                        acc += np.int32(x[i, t]) * np.int32(w[j, t])
                    out[i, j] = acc

        def run_numba(x, w):
            out = np.empty((x.shape[0], w.shape[0]), dtype=np.int32)
            numba_gemm(x, w, out)
            return out

        out["numba"] = run_numba
    except ImportError:
        pass
    if ort_path:
        sys.path.append(ort_path)
    try:
        if only not in (None, "onnxruntime"):
            raise ImportError
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        sessions = {}

        def run_ort(x, w):
            key = w.shape
            if key not in sessions:
                node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
                graph = helper.make_graph(
                    [node], "g",
                    [helper.make_tensor_value_info("A", TensorProto.INT8, ["M", w.shape[1]]),
                     helper.make_tensor_value_info("B", TensorProto.INT8, [w.shape[1], w.shape[0]])],
                    [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", w.shape[0]])],
                )
                model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                model.ir_version = 8
                opts = ort.SessionOptions()
                sessions[key] = (ort.InferenceSession(model.SerializeToString(), opts,
                                                      providers=["CPUExecutionProvider"]),
                                 np.ascontiguousarray(w.T))
            sess, wt = sessions[key]
            return sess.run(None, {"A": x, "B": wt})[0]

        out[f"onnxruntime {ort.__version__}"] = run_ort
        del onnx
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--ort-path", default=None)
    p.add_argument("--only", default=None, help="one candidate: blas, torch, numba or onnxruntime; each in its own process is fairer: "
                   "torch's OpenMP threads and OpenBLAS' threads in one process get in each other's way")
    p.add_argument("--no-header", action="store_true")
    args = p.parse_args(argv)
    from ibert_ref.backends.int_gemm import adversarial_operands, reference_int_matmul

    rng = np.random.default_rng(0)
    cands = candidates(args.ort_path, args.only)
    if args.only:
        cands = {k: v for k, v in cands.items() if k.startswith(args.only)}
    if not args.no_header:
        print("| candidate | adversarial operands (all -128 / 127, K = 3072) | "
              + " | ".join(f"{m}x{k}x{n}" for m, k, n in SHAPES) + " |")
        print("|---|---|" + "---|" * len(SHAPES))
    for name, fn in cands.items():
        adversarial = [np.array_equal(np.asarray(fn(a, np.ascontiguousarray(b.T))).astype(np.int64),
                                      reference_int_matmul(a, b)) for a, b in adversarial_operands()]
        exact = f"{sum(adversarial)}/{len(adversarial)} cases exact"
        cells = []
        for m, k, n in SHAPES:
            x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
            w = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
            wrong = int((np.asarray(fn(x, w)).astype(np.int64) != reference_int_matmul(x, w.T)).sum())
            ts = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn(x, w)
                ts.append(time.perf_counter() - t)
            sec = statistics.median(ts)
            cells.append(f"{sec * 1e3:.2f} ms ({2 * m * k * n / sec / 1e9:.0f} GOP/s)"
                         + (f", {wrong} WRONG on random operands" if wrong else ""))
        print(f"| {name} | {exact} | " + " | ".join(cells) + " |")
    if not args.no_header:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
        print(f"\nCPU: {cpu}; median of {args.repeats}; threads: torch/numba/BLAS defaults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
