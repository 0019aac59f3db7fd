"""Run real NVIDIA int8 Tensor Core instructions and record what they return.

Runs on a machine with an NVIDIA GPU (sm_80 or newer) and CuPy or nvcc; needs only NumPy besides.
It does not import ibert_ref: it records raw inputs and outputs, and
``tests/test_tensor_core_recorded.py`` checks the ``tensor-core`` profile's accumulator model
(``ibert_ref.hardware.accumulate.int_matmul``) against the recording on any machine.

What runs:

* ``mma.sync.aligned.m16n8k32.row.col{.satfinite}.s32.s8.s8.s32`` (inline PTX), one warp per
  16x8 tile of D, the accumulator chained through the instructions in increasing k::

      acc = C;  for each 32-wide k-chunk:  acc = mma(A[:, chunk], B[chunk, :], acc)

  once with ``.satfinite`` and once without, on several cases: random operands with an int32
  ``C`` drawn from the whole range, chunk sums that cross INT32_MAX / INT32_MIN and come back,
  and chunks whose running partial sum crosses the limit *inside* one instruction while the
  chunk's total does not (this tells whether the clamp is applied once per instruction).
* ``torch._int_mm`` (cuBLASLt int8 x int8 -> int32), if torch with CUDA is there, on a K long
  enough that the exact sum leaves int32.

Usage: ``python scripts/gpu_imma_check.py OUT.npz``  (one array per case and role: ``CASE.a``,
``CASE.b``, ``CASE.c``, ``CASE.d_sat``, ``CASE.d_wrap``, ``intmm.a``, ``intmm.b``, ``intmm.d``,
plus ``device`` and ``how``).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1

CUDA_SOURCE = r"""
#include <stdint.h>

template <bool SAT>
__device__ __forceinline__ void mma_k32(int d[4], const uint32_t a[4], const uint32_t b[2]) {
    if (SAT) {
        asm volatile("mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

// A [M, K] int8 row-major, BT [N, K] int8 row-major (B column-major), C, D [M, N] int32.
// One warp per 16x8 tile; blockIdx.x = tile index. Fragment layouts: PTX ISA, mma.m16n8k32 .s8.
template <bool SAT>
__device__ void tile(const int8_t* A, const int8_t* BT, const int* C, int* D, int M, int N, int K) {
    int tiles_n = N / 8;
    int tm = blockIdx.x / tiles_n, tn = blockIdx.x % tiles_n;
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int r0 = tm * 16 + g, r1 = r0 + 8;
    int n = tn * 8 + g;
    int d[4];
    int c_row[4] = {r0, r0, r1, r1};
    int c_col[4] = {tn * 8 + t * 2, tn * 8 + t * 2 + 1, tn * 8 + t * 2, tn * 8 + t * 2 + 1};
    for (int i = 0; i < 4; ++i) d[i] = C[c_row[i] * N + c_col[i]];
    for (int k0 = 0; k0 < K; k0 += 32) {
        uint32_t a[4], b[2];
        a[0] = *(const uint32_t*)(A + (size_t)r0 * K + k0 + t * 4);
        a[1] = *(const uint32_t*)(A + (size_t)r1 * K + k0 + t * 4);
        a[2] = *(const uint32_t*)(A + (size_t)r0 * K + k0 + 16 + t * 4);
        a[3] = *(const uint32_t*)(A + (size_t)r1 * K + k0 + 16 + t * 4);
        b[0] = *(const uint32_t*)(BT + (size_t)n * K + k0 + t * 4);
        b[1] = *(const uint32_t*)(BT + (size_t)n * K + k0 + 16 + t * 4);
        mma_k32<SAT>(d, a, b);
    }
    for (int i = 0; i < 4; ++i) D[c_row[i] * N + c_col[i]] = d[i];
}

extern "C" __global__ void imma_sat(const int8_t* A, const int8_t* BT, const int* C, int* D, int M, int N, int K) {
    tile<true>(A, BT, C, D, M, N, K);
}
extern "C" __global__ void imma_wrap(const int8_t* A, const int8_t* BT, const int* C, int* D, int M, int N, int K) {
    tile<false>(A, BT, C, D, M, N, K);
}
"""

HOST_WRAPPER = r"""
#include <cuda_runtime.h>
extern "C" int run_imma(int sat, const int8_t* A, const int8_t* BT, const int* C, int* D, int M, int N, int K) {
    int8_t *dA, *dB; int *dC, *dD;
    size_t sa = (size_t)M * K, sb = (size_t)N * K, sc = (size_t)M * N * sizeof(int);
    if (cudaMalloc(&dA, sa) || cudaMalloc(&dB, sb) || cudaMalloc(&dC, sc) || cudaMalloc(&dD, sc)) return 1;
    cudaMemcpy(dA, A, sa, cudaMemcpyHostToDevice);
    cudaMemcpy(dB, BT, sb, cudaMemcpyHostToDevice);
    cudaMemcpy(dC, C, sc, cudaMemcpyHostToDevice);
    int tiles = (M / 16) * (N / 8);
    if (sat) imma_sat<<<tiles, 32>>>(dA, dB, dC, dD, M, N, K);
    else imma_wrap<<<tiles, 32>>>(dA, dB, dC, dD, M, N, K);
    if (cudaDeviceSynchronize() != cudaSuccess) return 2;
    cudaMemcpy(D, dD, sc, cudaMemcpyDeviceToHost);
    cudaFree(dA); cudaFree(dB); cudaFree(dC); cudaFree(dD);
    return 0;
}
"""


def _cases(rng: np.random.Generator) -> dict:
    """Each case: (A [M, K] int8, B [K, N] int8, C [M, N] int32)."""
    cases = {}
    m, n, k = 64, 32, 256
    # 1. random operands, C anywhere in int32: chunks near the limits saturate / wrap.
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    c = rng.integers(I32_MIN, I32_MAX, (m, n), dtype=np.int64, endpoint=True).astype(np.int32)
    cases["random"] = (a, b, c)
    # 2. C within one chunk sum of the limits, operands of one sign per chunk (cross and come back).
    a = np.empty((m, k), np.int8)
    for j in range(k // 32):
        a[:, j * 32:(j + 1) * 32] = (127 if j % 2 == 0 else -128)
    a[m // 2:] *= -1  # half of the rows go the other way first (a -128 stays -128: int8 wrap)
    b = rng.integers(96, 128, (k, n), dtype=np.int8)
    c = np.where(np.arange(m)[:, None] < m // 2, I32_MAX - rng.integers(0, 400_000, (m, n)),
                 I32_MIN + rng.integers(0, 400_000, (m, n))).astype(np.int32)
    cases["cross_and_return"] = (a, b, c)
    # 3. inside one instruction: the first 16 products of each chunk push past the limit, the
    #    next 16 bring the chunk's total back to 0 (+-127 x 127). Clamping once per instruction
    #    leaves C as it was; clamping each partial sum would not.
    a = np.empty((m, k), np.int8)
    for j in range(k // 32):
        a[:, j * 32:j * 32 + 16] = 127
        a[:, j * 32 + 16:(j + 1) * 32] = -127
    a[m // 2:] *= -1
    b = np.full((k, n), 127, np.int8)
    c = np.where(np.arange(m)[:, None] < m // 2, I32_MAX - rng.integers(0, 200_000, (m, n)),
                 I32_MIN + rng.integers(0, 200_000, (m, n))).astype(np.int32)
    cases["inside_one_instruction"] = (a, b, c)
    # 4. long K, all products +16384 or 16129: the exact sum leaves int32 after ~131k terms.
    k_long = 32 * 8192
    a = np.full((16, k_long), -128, np.int8)
    a[8:] = 127
    b = np.full((k_long, 8), -128, np.int8)
    b[:, 4:] = 127
    cases["long_k"] = (a, b, np.zeros((16, 8), np.int32))
    return cases


class _CupyRunner:
    how = "cupy RawModule (NVRTC)"

    def __init__(self):
        import cupy as cp

        self.cp = cp
        self.module = cp.RawModule(code="#define uint32_t unsigned int\n#define int8_t signed char\n"
                                   + CUDA_SOURCE.replace("#include <stdint.h>", ""),
                                   options=("-std=c++14",), name_expressions=None)

    def __call__(self, sat: bool, a, bt, c):
        cp = self.cp
        m, k = a.shape
        n = bt.shape[0]
        d = cp.empty((m, n), cp.int32)
        fn = self.module.get_function("imma_sat" if sat else "imma_wrap")
        fn(((m // 16) * (n // 8),), (32,), (cp.asarray(a), cp.asarray(bt), cp.asarray(c), d,
                                             np.int32(m), np.int32(n), np.int32(k)))
        cp.cuda.Device().synchronize()
        return cp.asnumpy(d)


class _NvccRunner:
    how = "nvcc -arch=sm_80 shared library"

    def __init__(self):
        folder = tempfile.mkdtemp()
        src = os.path.join(folder, "imma.cu")
        lib = os.path.join(folder, "libimma.so")
        with open(src, "w") as f:
            f.write(CUDA_SOURCE + HOST_WRAPPER)
        subprocess.run(["nvcc", "-O2", "-arch=sm_80", "-shared", "-Xcompiler", "-fPIC", src, "-o", lib], check=True)
        self.lib = ctypes.CDLL(lib)

    def __call__(self, sat: bool, a, bt, c):
        m, k = a.shape
        n = bt.shape[0]
        a, bt, c = (np.ascontiguousarray(x) for x in (a, bt, c))
        d = np.empty((m, n), np.int32)
        p = lambda x: x.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        rc = self.lib.run_imma(int(sat), p(a), p(bt), p(c), p(d), m, n, k)
        if rc:
            raise RuntimeError(f"run_imma returned {rc}")
        return d


def _runner():
    errors = []
    for cls in (_CupyRunner, _NvccRunner):
        try:
            return cls()
        except Exception as exc:  # noqa: BLE001 - try the next way to build the kernel
            errors.append(f"{cls.how}: {exc}")
    raise RuntimeError("could not build the IMMA kernel: " + " | ".join(errors))


def main(out_path: str) -> int:
    rng = np.random.default_rng(20261205)
    run = _runner()
    arrays = {"how": np.array(run.how)}
    for name, (a, b, c) in _cases(rng).items():
        bt = np.ascontiguousarray(b.T)
        d_sat, d_wrap = run(True, a, bt, c), run(False, a, bt, c)
        exact = c.astype(np.int64) + a.astype(np.int64) @ b.astype(np.int64)
        arrays.update({f"{name}.a": a, f"{name}.b": b, f"{name}.c": c, f"{name}.d_sat": d_sat, f"{name}.d_wrap": d_wrap})
        wrapped = ((exact - I32_MIN) % (1 << 32) + I32_MIN).astype(np.int32)
        print(f"{name:24s} M,N,K={a.shape[0]},{b.shape[1]},{a.shape[1]}  exact outside int32: "
              f"{int(np.sum((exact < I32_MIN) | (exact > I32_MAX)))}  satfinite==exact: {int(np.sum(d_sat == exact))}"
              f"  plain==exact mod 2^32: {int(np.sum(d_wrap == wrapped))} / {exact.size}")
    try:
        import torch

        if torch.cuda.is_available():
            arrays["device"] = np.array(torch.cuda.get_device_name(0))
            k = 32 * 8192
            a = np.full((32, k), -128, np.int8)
            a[16:] = 127
            b = np.full((k, 8), -128, np.int8)
            b[:, 4:] = 127
            d = torch._int_mm(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()).cpu().numpy()
            arrays.update({"intmm.a": a, "intmm.b": b, "intmm.d": d})
            print("torch._int_mm long K:", np.unique(d).tolist(), "torch", torch.__version__)
            # Cross and return: the first half of K pushes past INT32_MAX (rows 0-15) or
            # INT32_MIN (rows 16-31), the second half brings the exact sum back to +-2^30.
            # A saturating accumulator in increasing k ends far from the exact value; a wrapping
            # one (or an order that interleaves the halves) ends on it.
            half = 32 * 4096 + 32 * 2048  # 196608 products of 127 * 127 = 16129: 3.17e9 > 2^31
            a = np.full((32, 2 * half), 127, np.int8)
            a[:, half:] = -127
            a[16:] *= -1
            b = np.full((2 * half, 8), 127, np.int8)
            b[half - 32 * 1024:half, :] = 0  # keep the exact end value inside int32
            d = torch._int_mm(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()).cpu().numpy()
            arrays.update({"intmm_cross.a": a, "intmm_cross.b": b, "intmm_cross.d": d})
            exact = a.astype(np.int64) @ b.astype(np.int64)
            print("torch._int_mm cross and return:", np.unique(d).tolist(), "exact:", np.unique(exact).tolist())
    except Exception as exc:  # noqa: BLE001 - the _int_mm part is optional
        print("torch._int_mm not run:", exc)
    np.savez_compressed(out_path, **arrays)
    print("how:", run.how, "->", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "imma_record.npz"))
