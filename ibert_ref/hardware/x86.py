"""x86 int8 dot products (AVX-512 VNNI, AVX-VNNI, AVX2) and the ``x86-vnni`` hardware profile.

x86 has no signed x signed int8 dot product below AMX: ``vpdpbusd`` multiplies **unsigned** bytes
by **signed** bytes. int8 libraries (oneDNN, FBGEMM, ONNX Runtime's MLAS) therefore shift the
signed activations to unsigned, ``u = x + 128`` (in [0, 255]), and subtract the weight-sum
compensation afterwards::

    sum_k x[k] w[k] = sum_k (x[k] + 128) w[k] - 128 * sum_k w[k]

Without VNNI (AVX2), the dot product is ``vpmaddubsw`` (u8 x s8 pairs summed into a
**saturating int16**) then ``vpmaddwd`` with ones (int16 pairs into int32) then ``vpaddd``. The
int16 pair sum saturates once ``u0 w0 + u1 w1`` leaves [-32768, 32767] (up to 255 * 127 * 2 =
64770): the known hazard that makes libraries keep weights to 7 bits (ONNX Runtime's
``reduce_range``, FBGEMM's advice). The compensation does not undo it.

Primitives (elementwise over leading axes, broadcast; operand ranges checked, ``ValueError``
outside; exact int64 arithmetic; the dtype of the destination register):

- :func:`vpdpbusd`, :func:`vpdpbusds`: one 32-bit lane of ``VPDPBUSD``/``VPDPBUSDS``
  (AVX512_VNNI, AVX-VNNI).
- :func:`vpmaddubsw`: one 16-bit lane of ``VPMADDUBSW`` (SSSE3/AVX2/AVX-512BW).
- :func:`vpmaddwd`: one 32-bit lane of ``VPMADDWD`` (SSE2/AVX2/AVX-512BW).
- :func:`avx2_dot4`: the AVX2 four-byte dot step ``vpaddd(acc, vpmaddwd(vpmaddubsw(u, w), 1))``.
- :func:`requantize_f32`: the float32 epilogue these libraries use
  (``vcvtdq2ps``, ``vmulps``, ``vcvtps2dq``: round to nearest even, MXCSR default).
- :func:`vnni_matmul`: a whole u8-shifted GEMM with compensation, per ``madd``.

The profile (:class:`X86VnniDatapath`, ``make_datapath("x86-vnni", madd=...)``) is the
``arm``-style int32-realizable datapath whose GEMMs go through :func:`vnni_matmul`; each
``vpmaddubsw`` saturation is an overflow event (``ibert-ref run``) and the pair-sum range is a
row of the width census (``ibert-ref widths``).
"""

from __future__ import annotations

import numpy as np

from .accumulate import int_matmul
from .oplog import OverflowRecord, Register
from .profiles import HardwareDatapath

I64 = np.int64

#: The dot-product instruction a GEMM is built from (the profile's ``madd`` option).
MADD_VARIANTS = {
    "vpdpbusd": "AVX-512 VNNI / AVX-VNNI vpdpbusd: u8 x s8, 4 products into a wrapping int32",
    "vpdpbusds": "vpdpbusds: u8 x s8, 4 products into a saturating int32 (clamped per instruction)",
    "vpmaddubsw": "AVX2 vpmaddubsw + vpmaddwd + vpaddd: u8 x s8 pairs saturated to int16, then int32",
}

#: The shift that makes a signed int8 activation an unsigned byte.
U8_SHIFT = 128

#: Census / event part of the vpmaddubsw pair sum.
PAIR_PART = "u8*s8 pair sum (vpmaddubsw s16)"

#: Rows per block when the pair sums of a GEMM are formed (bounds the temporary to ~8M int32).
_PAIR_BLOCK_ELEMS = 1 << 23

__all__ = [
    "MADD_VARIANTS",
    "U8_SHIFT",
    "X86VnniDatapath",
    "avx2_dot4",
    "requantize_f32",
    "vnni_matmul",
    "vpdpbusd",
    "vpdpbusds",
    "vpmaddubsw",
    "vpmaddwd",
]


# ---------------------------------------------------------------------------------------------
# Operands
# ---------------------------------------------------------------------------------------------


def _operand(x, lo: int, hi: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array or int, got dtype {arr.dtype}")
    x_i64 = arr.astype(I64)
    if x_i64.size and (int(x_i64.min()) < lo or int(x_i64.max()) > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}]; got values in [{int(x_i64.min())}, {int(x_i64.max())}]")
    return x_i64


def _groups(a, b, width: int, name: str):
    if a.ndim == 0 or a.shape[-1] != width or b.ndim == 0 or b.shape[-1] != width:
        raise ValueError(f"{name}: the operands need a trailing axis of length {width}")


def _wrap_signed(x_i64, bits: int):
    """``wrap_bits(x)``: the low ``bits`` bits of int64 ``x`` read as signed (1 <= bits <= 64)."""
    x_i64 = np.asarray(x_i64, dtype=I64)
    if bits >= 64:
        return x_i64
    half = I64(1 << (bits - 1))
    low = x_i64 & I64((1 << bits) - 1)
    return np.where(low >= half, (low - half) - half, low)


def _sat(x_i64, bits: int):
    return np.clip(x_i64, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


# ---------------------------------------------------------------------------------------------
# Instructions (one destination lane each)
# ---------------------------------------------------------------------------------------------


def vpdpbusd(acc, u, w):
    """VPDPBUSD (one int32 lane): ``wrap_32(acc + sum_{i<4} u[i] * w[i])``.

    ``u`` unsigned bytes (0..255), ``w`` signed bytes (-128..127). The four products (each fits
    int16: -32640..32385) are summed exactly and added to the lane modulo 2^32; nothing
    saturates. In: `acc` int32 ``[...]``, `u` ``[..., 4]``, `w` ``[..., 4]``. Out: int32 ``[...]``.
    """
    acc_i64 = _operand(acc, -(1 << 31), (1 << 31) - 1, "acc")
    u_i64 = _operand(u, 0, 255, "u")
    w_i64 = _operand(w, -128, 127, "w")
    _groups(u_i64, w_i64, 4, "vpdpbusd")
    return _wrap_signed(acc_i64 + (u_i64 * w_i64).sum(axis=-1), 32).astype(np.int32)[()]


def vpdpbusds(acc, u, w):
    """VPDPBUSDS (one int32 lane): ``sat_32(acc + sum_{i<4} u[i] * w[i])``.

    As :func:`vpdpbusd`, but the lane saturates (clamped once per instruction, after the four
    products are added). In/out as :func:`vpdpbusd`.
    """
    acc_i64 = _operand(acc, -(1 << 31), (1 << 31) - 1, "acc")
    u_i64 = _operand(u, 0, 255, "u")
    w_i64 = _operand(w, -128, 127, "w")
    _groups(u_i64, w_i64, 4, "vpdpbusds")
    return _sat(acc_i64 + (u_i64 * w_i64).sum(axis=-1), 32).astype(np.int32)[()]


def vpmaddubsw(u, w):
    """VPMADDUBSW (one int16 lane): ``sat_16(u[0] * w[0] + u[1] * w[1])``.

    ``u`` unsigned bytes, ``w`` signed bytes; the pair sum (-65280..64770) saturates to
    [-32768, 32767] (e.g. ``255*127 + 255*127 = 64770 -> 32767``). In: `u`, `w` ``[..., 2]``.
    Out: int16 ``[...]``.
    """
    u_i64 = _operand(u, 0, 255, "u")
    w_i64 = _operand(w, -128, 127, "w")
    _groups(u_i64, w_i64, 2, "vpmaddubsw")
    return _sat((u_i64 * w_i64).sum(axis=-1), 16).astype(np.int16)[()]


def vpmaddwd(a, b):
    """VPMADDWD (one int32 lane): ``wrap_32(a[0] * b[0] + a[1] * b[1])`` of int16 pairs.

    The only sum outside int32 is ``(-32768)^2 * 2 = 2^31``, which wraps to -2^31. In: `a`, `b`
    int16 ``[..., 2]``. Out: int32 ``[...]``.
    """
    a_i64 = _operand(a, -(1 << 15), (1 << 15) - 1, "a")
    b_i64 = _operand(b, -(1 << 15), (1 << 15) - 1, "b")
    _groups(a_i64, b_i64, 2, "vpmaddwd")
    return _wrap_signed((a_i64 * b_i64).sum(axis=-1), 32).astype(np.int32)[()]


def avx2_dot4(acc, u, w):
    """The AVX2 int8 dot step on one int32 lane (4 bytes)::

        p[j] = sat_16(u[2j] w[2j] + u[2j+1] w[2j+1])        vpmaddubsw, j = 0, 1
        acc  = wrap_32(acc + p[0] + p[1])                   vpmaddwd(p, 1), vpaddd

    Equal to :func:`vpdpbusd` unless a pair saturates. In: `acc` int32 ``[...]``, `u` u8 and
    `w` s8 ``[..., 4]``. Out: int32 ``[...]``.
    """
    u_i64 = _operand(u, 0, 255, "u")
    w_i64 = _operand(w, -128, 127, "w")
    _groups(u_i64, w_i64, 4, "avx2_dot4")
    pairs = np.asarray(vpmaddubsw(u_i64.reshape(u_i64.shape[:-1] + (2, 2)), w_i64.reshape(w_i64.shape[:-1] + (2, 2))))
    summed = np.asarray(vpmaddwd(pairs.astype(I64), np.ones_like(pairs, dtype=I64)), dtype=I64)
    acc_i64 = _operand(acc, -(1 << 31), (1 << 31) - 1, "acc")
    return _wrap_signed(acc_i64 + summed, 32).astype(np.int32)[()]


def requantize_f32(z, alpha_f32):
    """The float32 requantization epilogue of oneDNN / FBGEMM / MLAS on x86::

        out = cvtps2dq(float32(z) * alpha)       float32(z): vcvtdq2ps (RNE above 2^24),
                                                 the product rounded RNE to float32 (vmulps),
                                                 then rounded to nearest even (vcvtps2dq)

    In: int32 `z`, float32 `alpha_f32` (broadcast, e.g. per channel). Out: int64 (the caller
    saturates; ``vcvtps2dq`` returns 0x80000000 outside int32, which is not modelled: a result
    outside int32 raises ``ValueError``). = the ``cutlass-f32`` requantization of
    :mod:`ibert_ref.hardware.profiles`.
    """
    z_i64 = _operand(z, -(1 << 31), (1 << 31) - 1, "z")
    alpha = np.asarray(alpha_f32)
    if alpha.dtype != np.float32:
        raise TypeError(f"alpha_f32 must be float32, got {alpha.dtype}")
    product = z_i64.astype(np.float32) * alpha
    out = np.rint(product.astype(np.float64))
    if out.size and (np.abs(out).max() >= 2.0**31):
        raise ValueError("requantize_f32: result outside int32 (vcvtps2dq would return 0x80000000)")
    return out.astype(I64)


# ---------------------------------------------------------------------------------------------
# A whole GEMM
# ---------------------------------------------------------------------------------------------


def _pair_saturation(u_i64, w_i64):
    """For ``u [B, M, K]`` (K even) and ``w [B, K, N]``: the vpmaddubsw correction
    ``sum_j (sat_16(P_j) - P_j)`` per output ``[B, M, N]``, the exact pair-sum range, the number
    of saturated pairs, and the first one (flat output index, exact value, saturated value)."""
    b, m, k = u_i64.shape
    n = w_i64.shape[-1]
    u_even, u_odd = u_i64[..., 0::2].astype(np.int32), u_i64[..., 1::2].astype(np.int32)
    w_even, w_odd = w_i64[..., 0::2, :].astype(np.int32), w_i64[..., 1::2, :].astype(np.int32)
    correction = np.zeros((b, m, n), dtype=I64)
    lo, hi, count, first = 0, 0, 0, None
    rows = max(1, _PAIR_BLOCK_ELEMS // max(1, (k // 2) * n))
    for bi in range(b):
        for r0 in range(0, m, rows):
            r1 = min(m, r0 + rows)
            pairs = (u_even[bi, r0:r1, :, None] * w_even[bi, None, :, :]
                     + u_odd[bi, r0:r1, :, None] * w_odd[bi, None, :, :])  # [rows, K/2, N], |.| <= 65280
            lo, hi = min(lo, int(pairs.min())), max(hi, int(pairs.max()))
            over = (pairs > 32767) | (pairs < -32768)
            if not over.any():
                continue
            excess = np.where(pairs > 32767, 32767 - pairs, 0) + np.where(pairs < -32768, -32768 - pairs, 0)
            correction[bi, r0:r1] = excess.sum(axis=1)
            count += int(np.count_nonzero(over))
            if first is None:
                row, j, col = np.unravel_index(int(np.argmax(over)), over.shape)
                exact = int(pairs[row, j, col])
                first = (int(np.ravel_multi_index((bi, r0 + row, col), (b, m, n))), exact, int(_sat(I64(exact), 16)))
    return correction, (lo, hi), count, first


def vnni_matmul(x, w, *, madd: str = "vpdpbusd", acc_bits: int = 32, u8_input: bool = False):
    """``x @ w`` the way an x86 int8 kernel computes it (bias excluded).

    ``x [..., M, K]`` int8 activations (or, with ``u8_input=True``, unsigned bytes used as they
    are, e.g. softmax probabilities), ``w [..., K, N]`` int8. With ``u = x + 128`` and
    ``comp[n] = 128 * sum_k w[k, n]`` (zero when ``u8_input``)::

        vpdpbusd:    S = wrap_acc(sum_k u w)            4 products per instruction, wrapping lane
        vpdpbusds:   S = sat per 4-k instruction        (k increasing; order matters once it clips)
        vpmaddubsw:  S = wrap_acc(sum_j sat_16(u[2j] w[2j] + u[2j+1] w[2j+1]))
        out = wrap_acc(S - comp)

    K is zero-padded to a multiple of 4 (``u = 128`` against ``w = 0``: adds nothing), as
    kernels do. Returns ``(out int64 [..., M, N], info)``; ``info`` has ``events`` (accumulator
    overflows, :class:`~ibert_ref.hardware.accumulate.OverflowEvent`), ``pair_range`` (exact
    min/max of the vpmaddubsw pair sums, or None), ``pair_saturations`` (count) and
    ``first_saturation`` ((flat output index, exact pair, produced) or None).
    """
    if madd not in MADD_VARIANTS:
        raise ValueError(f"madd must be one of {tuple(MADD_VARIANTS)}, got {madd!r}")
    if u8_input:
        u_i64 = _operand(x, 0, 255, "x (u8)")
    else:
        u_i64 = _operand(x, -128, 127, "x (s8)") + U8_SHIFT
    w_i64 = _operand(w, -128, 127, "w")
    if u_i64.ndim < 2 or w_i64.ndim < 2 or u_i64.shape[-1] != w_i64.shape[-2]:
        raise ValueError(f"vnni_matmul: x is [..., M, K], w [..., K, N]; got {u_i64.shape}, {w_i64.shape}")
    k = u_i64.shape[-1]
    pad = (-k) % 4
    if pad:
        u_i64 = np.concatenate([u_i64, np.full(u_i64.shape[:-1] + (pad,), U8_SHIFT, I64)], axis=-1)
        w_i64 = np.concatenate([w_i64, np.zeros(w_i64.shape[:-2] + (pad, w_i64.shape[-1]), I64)], axis=-2)
    batch = np.broadcast_shapes(u_i64.shape[:-2], w_i64.shape[:-2])
    u_b = np.broadcast_to(u_i64, batch + u_i64.shape[-2:])
    w_b = np.broadcast_to(w_i64, batch + w_i64.shape[-2:])
    comp = np.zeros(batch + (1, w_i64.shape[-1]), I64) if u8_input else U8_SHIFT * w_b.sum(axis=-2, keepdims=True)
    info = {"events": (), "pair_range": None, "pair_saturations": 0, "first_saturation": None}
    if madd == "vpmaddubsw":
        m, n = u_b.shape[-2], w_b.shape[-1]
        u3, w3 = u_b.reshape((-1, m, k + pad)), w_b.reshape((-1, k + pad, n))
        correction, pair_range, count, first = _pair_saturation(u3, w3)
        exact = np.matmul(u3.astype(np.float64), w3.astype(np.float64)).astype(I64)  # < 2^53: exact
        s = _wrap_signed(exact + correction, acc_bits).reshape(batch + (m, n))
        info.update(pair_range=pair_range, pair_saturations=count, first_saturation=first)
    elif (k + pad) * 255 * 128 <= (1 << (acc_bits - 1)) - 1:  # no partial sum can leave the lane
        s = np.matmul(u_b.astype(np.float64), w_b.astype(np.float64)).astype(I64)
    else:
        res = int_matmul(u_b, w_b, acc_bits=acc_bits, overflow="wrap" if madd == "vpdpbusd" else "saturate",
                         k_step=4, op_name="vnni_matmul")
        s = np.asarray(res.values, dtype=I64)
        info["events"] = res.events
    return _wrap_signed(s - comp, acc_bits), info


# ---------------------------------------------------------------------------------------------
# The profile
# ---------------------------------------------------------------------------------------------


class X86VnniDatapath(HardwareDatapath):
    """The ``x86-vnni`` profile: :class:`~ibert_ref.hardware.profiles.HardwareDatapath` whose
    GEMMs (QuantLinear, ``Q K^T``, ``P V``) run through :func:`vnni_matmul`.

    ``madd``: ``"vpdpbusd"`` (AVX-512 VNNI / AVX-VNNI, default), ``"vpdpbusds"`` (saturating
    lane, clamped every 4 k), ``"vpmaddubsw"`` (AVX2: int16 pair saturation, recorded as
    overflow events ``"saturated"`` in part :data:`PAIR_PART`; with ``overflow="raise"`` the
    run stops at the first op that saturates). The left GEMM operand is shifted to u8 (+128) and
    the compensation ``128 * sum_k w`` subtracted; in ``P V`` the probabilities are the u8
    operand as they are, so the profile needs ``probs="u8-sat"`` (256 is no byte; a built
    profile whose ``probs`` attribute is switched to ``"u9"``, as ``verify`` does to undo one
    deviation, computes a ``P V`` that holds a 256 exactly).
    The other parameters are :class:`HardwareDatapath`'s (profile defaults: int32 wrapping
    accumulators, the float32 requantization epilogue ``requant="cutlass-f32"`` that
    oneDNN / FBGEMM / MLAS use, ``gelu="int32"``, ``ln_var="uint32"``).
    """

    name = "x86-vnni"

    def __init__(self, *args, madd: str = "vpdpbusd", **kwargs):
        super().__init__(*args, **kwargs)
        if madd not in MADD_VARIANTS:
            raise ValueError(f"madd must be one of {tuple(MADD_VARIANTS)}, got {madd!r}")
        if self.probs != "u8-sat":
            raise ValueError("x86-vnni: P V takes the probabilities as the unsigned byte operand, so probs must be "
                             "'u8-sat' (a probability of 256 is no byte)")
        self.madd = madd

    def parameters(self) -> dict:
        return {**super().parameters(), "madd": self.madd}

    def describe(self) -> str:
        return f"{super().describe()}; madd {self.madd} [{MADD_VARIANTS[self.madd]}]"

    def provided_register(self, family: str, part: str) -> Register:
        if part == PAIR_PART:
            return Register(16)
        return super().provided_register(family, part)

    def _gemm(self, family, part, a, b, bias=None):
        """``a @ b (+ bias)`` by :func:`vnni_matmul` (bias added after, in the accumulator)."""
        a_i64 = np.asarray(a, dtype=I64)
        b_i64 = np.asarray(b, dtype=I64)
        exact = np.matmul(a_i64.astype(np.float64), b_i64.astype(np.float64)).astype(I64)  # < 2^53: exact
        if family == "context" and a_i64.size and int(a_i64.max()) > 255:
            # probs="u9" set on a built profile (verify's switch back to exact): a 9-bit operand
            # is no byte, so P V is taken exact here
            return exact
        out, info = vnni_matmul(a_i64, b_i64, madd=self.madd, acc_bits=self.acc_bits, u8_input=family == "context")
        if info["pair_range"] is not None:
            self.note(family, PAIR_PART, info["pair_range"])
        if info["pair_saturations"]:
            index, exact_pair, produced = info["first_saturation"]
            affected = int(np.count_nonzero(out != _wrap_signed(exact, self.acc_bits)))
            record = OverflowRecord(
                op="", family=family, part=PAIR_PART, action="raise" if self.overflow == "raise" else "saturated",
                bits=16, count=info["pair_saturations"], first_index=index, exact=exact_pair, produced=produced,
                detail=f"{affected} of {out.size} outputs changed; u8 operand = x + 128",
            )
            self._event(record, *info["pair_range"])
        for event in info["events"]:  # int32 lane overflows (never for I-BERT's K)
            self._event(
                OverflowRecord(op="", family=family, part=part, action="wrapped" if self.madd == "vpdpbusd" else
                               "saturated", bits=self.acc_bits, count=event.count, first_index=event.first_index,
                               exact=event.exact, produced=event.produced,
                               detail=f"u8-shifted sum, k {event.k_start}:{event.k_stop}"),
                int(exact.min()), int(exact.max()),
            )
        if bias is None:
            return out
        mode = "wrap" if self.overflow in ("wrap", "exact") else self.overflow
        return self._add_bias(family, part, out, exact, np.asarray(bias, dtype=I64), mode)

