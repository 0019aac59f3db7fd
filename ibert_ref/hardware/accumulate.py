"""A model of an integer GEMM accumulator: chunked k-accumulation with a chosen overflow policy.

Hardware sums int8 products into an int32 (or narrower) accumulator a few k at a time: 4 per
SDOT/dp4a, 8 per SMMLA, 16 or 32 per NVIDIA IMMA ``mma`` instruction.  What happens when the
running accumulator leaves the register's range depends on the target:

- ``"wrap"``: ARM SDOT/SMMLA/MLA, dp4a, IMMA without ``.satfinite``.  Arithmetic mod 2^acc_bits,
  so the result is ``exact mod 2^acc_bits`` whatever the chunking or order.
- ``"saturate"``: IMMA with ``.satfinite`` (the MLIR/Triton default for int8): each instruction
  computes ``sat(C + sum over its k-chunk)`` - the k-chunk sum is exact, the clamp is applied
  once per chunk.  Saturating addition is not associative, so the chunk size and the chunk order
  change the result.
- ``"exact"``: unbounded (int64) accumulation - the mathematical value.
- ``"raise"``: exact accumulation, but raise ``IntegerOverflowError`` as soon as the running value
  after a chunk leaves the acc_bits range.

In every mode, an "overflow" is a chunk boundary where the value about to be stored
(running accumulator + chunk sum) lies outside ``[-2^(acc_bits-1), 2^(acc_bits-1) - 1]``; each one
is reported as an ``OverflowEvent``.  For I-BERT's int8 GEMMs (K <= 3072) none can occur with a
32-bit accumulator; the events exist to prove that, and to study narrower accumulators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .primitives import as_int64

__all__ = [
    "OVERFLOW_MODES",
    "IntegerOverflowError",
    "OverflowEvent",
    "AccumulatorResult",
    "int_matmul",
]

OVERFLOW_MODES = ("wrap", "saturate", "raise", "exact")

_INT64_MAX = (1 << 63) - 1
# Integers up to 2^53 in magnitude are exact in float64, so a k-chunk whose every partial sum is
# bounded by 2^53 can go through BLAS without rounding (see _matmul_exact_i64).
_FLOAT64_EXACT_LIMIT = 1 << 53


class IntegerOverflowError(ArithmeticError):
    """An integer op produced a value outside the width it is modelled with.

    `op_name` names the op (e.g. ``"layer.0.attention.self.query"``); `event` carries the details
    for accumulator overflows (None for others).
    """

    def __init__(self, op_name: str, detail: str, event: OverflowEvent | None = None):
        super().__init__(f"{op_name}: {detail}")
        self.op_name = op_name
        self.event = event


@dataclass(frozen=True)
class OverflowEvent:
    """One k-chunk after which at least one accumulator element left the acc_bits range.

    `first_index` is the flat (C-order) index, into the output array, of the first such element;
    `exact` is its unbounded value ``initial + sum_{k < k_stop} a*b`` and `produced` the value the
    accumulator holds after this chunk (wrapped, saturated, or equal to `exact` in the
    ``"exact"``/``"raise"`` modes).
    """

    op_name: str
    acc_bits: int
    chunk_index: int
    k_start: int
    k_stop: int
    count: int
    first_index: int
    exact: int
    produced: int

    def describe(self) -> str:
        return (
            f"int{self.acc_bits} accumulator overflow after k-chunk {self.chunk_index} "
            f"(k {self.k_start}:{self.k_stop}): {self.count} element(s); first at flat index "
            f"{self.first_index}, exact value {self.exact}, produced {self.produced}"
        )


@dataclass(frozen=True)
class AccumulatorResult:
    """The outcome of ``int_matmul``.

    values    [..., M, N]  what the accumulator holds: int32 for acc_bits <= 32 (int16 / int8 for
                           narrower, int64 above 32), int64 in ``"exact"`` mode.
    exact_i64 [..., M, N]  the unbounded sum ``initial + a @ b`` (int64).
    events                 one OverflowEvent per k-chunk with an overflow, in k order.
    """

    values: np.ndarray
    exact_i64: np.ndarray
    events: tuple[OverflowEvent, ...]
    acc_bits: int
    overflow: str

    @property
    def overflowed(self) -> bool:
        return bool(self.events)


# ---------------------------------------------------------------------------------------------


def _signed_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _acc_dtype(bits: int) -> type[np.signedinteger]:
    for width, dtype in ((8, np.int8), (16, np.int16), (32, np.int32)):
        if bits <= width:
            return dtype
    return np.int64


def _as_int_array(x, name: str) -> np.ndarray:
    return as_int64(x, name, "an integer array")


def _max_abs(x_i64: np.ndarray) -> int:
    if x_i64.size == 0:
        return 0
    return max(abs(int(x_i64.min())), abs(int(x_i64.max())))


def _k_chunks(k: int, k_step: int | None) -> list[tuple[int, int]]:
    """[k_start, k_stop) ranges in k order; the last chunk may be shorter."""
    step = k if k_step is None else k_step
    return [(k0, min(k0 + step, k)) for k0 in range(0, k, max(step, 1))]


def _matmul_exact_i64(a_i64, b_i64, max_abs_a: int, max_abs_b: int) -> np.ndarray:
    """Exact ``a @ b`` as int64 for one k-chunk.

    If ``k * max|a| * max|b| <= 2^53`` every product and every partial sum, in whatever order
    BLAS adds them, is an integer of magnitude <= 2^53, hence exactly representable in float64:
    the float64 matmul is then exact and ~50x faster than NumPy's int64 matmul.  Otherwise the
    int64 matmul is used (the caller has checked that int64 cannot overflow).
    """
    k = a_i64.shape[-1]
    fits_float64 = (
        max_abs_a <= _FLOAT64_EXACT_LIMIT
        and max_abs_b <= _FLOAT64_EXACT_LIMIT
        and k * max_abs_a * max_abs_b <= _FLOAT64_EXACT_LIMIT
    )
    if fits_float64:
        return np.matmul(a_i64.astype(np.float64), b_i64.astype(np.float64)).astype(np.int64)
    return np.matmul(a_i64, b_i64)


def _bound(pre_i64: np.ndarray, acc_bits: int, overflow: str) -> np.ndarray:
    """Store `pre` into an acc_bits register: wrap, saturate, or keep (exact / raise)."""
    lo, hi = _signed_range(acc_bits)
    if overflow == "wrap":
        low = pre_i64 & ((1 << acc_bits) - 1)
        return np.where(low > hi, (low - (hi + 1)) + lo, low)
    if overflow == "saturate":
        return np.clip(pre_i64, lo, hi)
    return pre_i64


def _overflow_event(out_of_range, exact_i64, stored_i64, *, op_name, acc_bits, chunk_index, k0, k1):
    first_index = int(np.argmax(out_of_range.ravel()))
    return OverflowEvent(
        op_name=op_name,
        acc_bits=acc_bits,
        chunk_index=chunk_index,
        k_start=k0,
        k_stop=k1,
        count=int(np.count_nonzero(out_of_range)),
        first_index=first_index,
        exact=int(exact_i64.ravel()[first_index]),
        produced=int(stored_i64.ravel()[first_index]),
    )


def _validate_options(acc_bits, overflow, k_step):
    if not isinstance(acc_bits, (int, np.integer)) or not 2 <= acc_bits <= 63:
        raise ValueError(f"acc_bits must be an int in [2, 63], got {acc_bits!r}")
    if overflow not in OVERFLOW_MODES:
        raise ValueError(f"overflow must be one of {OVERFLOW_MODES}, got {overflow!r}")
    if k_step is not None and (not isinstance(k_step, (int, np.integer)) or k_step < 1):
        raise ValueError(f"k_step must be a positive int or None, got {k_step!r}")


def int_matmul(
    a,
    b,
    *,
    acc_bits: int = 32,
    overflow: str = "wrap",
    k_step: int | None = None,
    initial=None,
    op_name: str = "int_matmul",
) -> AccumulatorResult:
    """``acc = initial + a @ b`` through an acc_bits accumulator updated once per k-chunk.

    a [..., M, K] int, b [..., K, N] int (int8 in practice; leading axes broadcast),
    initial [..., M, N] int within acc_bits (broadcast; default 0) -> AccumulatorResult.

    For k-chunks ``[k0, k0 + k_step)`` in increasing k order (``k_step=None``: one chunk of all
    K)::

        chunk_sum = sum_{k0 <= k < k1} a[..., m, k] * b[..., k, n]        # exact, int64
        acc       = bound(acc + chunk_sum)                                # acc starts at initial

    where bound is wrap_{acc_bits} (``"wrap"``), sat_{acc_bits} (``"saturate"``, IMMA
    ``.satfinite``: k_step=32 models ``mma.m16n8k32``), or the identity (``"exact"``,
    ``"raise"``).  To model another chunk order, permute the k axis of `a` and `b` together.

    Every chunk boundary at which ``acc + chunk_sum`` leaves the acc_bits range is recorded as an
    OverflowEvent; with ``overflow="raise"`` the first one raises IntegerOverflowError naming
    `op_name`.  All sums are exact in int64: the call raises ValueError if
    ``2^(acc_bits-1) + K * max|a| * max|b|`` could exceed int64 (never for int8 operands).
    """
    _validate_options(acc_bits, overflow, k_step)
    a_i64 = _as_int_array(a, "a")
    b_i64 = _as_int_array(b, "b")
    if a_i64.ndim < 2 or b_i64.ndim < 2:
        raise ValueError(f"a and b must be at least 2-D, got shapes {a_i64.shape}, {b_i64.shape}")
    k = a_i64.shape[-1]
    if b_i64.shape[-2] != k:
        raise ValueError(f"{op_name}: a is [..., M, {k}] but b is [..., {b_i64.shape[-2]}, N]")
    batch_shape = np.broadcast_shapes(a_i64.shape[:-2], b_i64.shape[:-2])
    out_shape = batch_shape + (a_i64.shape[-2], b_i64.shape[-1])

    lo, hi = _signed_range(acc_bits)
    if initial is None:
        initial_i64 = np.zeros(out_shape, dtype=np.int64)
    else:
        initial_i64 = np.broadcast_to(_as_int_array(initial, "initial"), out_shape)
        if initial_i64.size and (int(initial_i64.min()) < lo or int(initial_i64.max()) > hi):
            raise ValueError(f"{op_name}: initial must fit in int{acc_bits}")

    max_abs_a, max_abs_b = _max_abs(a_i64), _max_abs(b_i64)
    if (1 << (acc_bits - 1)) + k * max_abs_a * max_abs_b > _INT64_MAX:
        raise ValueError(f"{op_name}: exact accumulation could exceed int64 (K={k})")

    exact_i64 = np.array(initial_i64, dtype=np.int64)  # unbounded running sum (a copy)
    acc_i64 = exact_i64.copy()  # what the accumulator register holds
    events: list[OverflowEvent] = []
    for chunk_index, (k0, k1) in enumerate(_k_chunks(k, k_step)):
        chunk_sum_i64 = _matmul_exact_i64(
            a_i64[..., k0:k1], b_i64[..., k0:k1, :], max_abs_a, max_abs_b
        )
        exact_i64 += chunk_sum_i64
        pre_i64 = acc_i64 + chunk_sum_i64  # |acc| <= 2^(acc_bits-1): fits int64 (checked above)
        out_of_range = (pre_i64 < lo) | (pre_i64 > hi)
        acc_i64 = _bound(pre_i64, acc_bits, overflow)
        if out_of_range.any():
            event = _overflow_event(
                out_of_range, exact_i64, acc_i64,
                op_name=op_name, acc_bits=acc_bits, chunk_index=chunk_index, k0=k0, k1=k1,
            )
            if overflow == "raise":
                raise IntegerOverflowError(op_name, event.describe(), event)
            events.append(event)

    values = acc_i64 if overflow == "exact" else acc_i64.astype(_acc_dtype(acc_bits))
    return AccumulatorResult(
        values=values,
        exact_i64=exact_i64,
        events=tuple(events),
        acc_bits=acc_bits,
        overflow=overflow,
    )
