"""Hardware datapaths: I-BERT's kernels run with the widths, overflow behaviour and roundings
of a real target, bit for bit, and every overflow reported.

:class:`HardwareDatapath` is the exact datapath (:class:`~ibert_ref.datapath.ExactDatapath`)
with these parameters; each one changes a named step and nothing else:

``acc_bits``, ``overflow``, ``k_step`` — GEMM accumulators (QuantLinear, ``Q K^T``, ``P V``)
    int8 products summed exactly within a k-chunk of ``k_step`` terms (None: all of K), the
    running sum stored in an ``acc_bits`` register after each chunk
    (:func:`~ibert_ref.hardware.accumulate.int_matmul`); the bias is added after the last
    chunk, in the same register. ``overflow``: ``"wrap"`` (ARM SDOT/SMMLA, dp4a, IMMA), ``"saturate"``
    (IMMA ``.satfinite``: clamp after every chunk, so the chunk size and order matter),
    ``"raise"`` (stop with :class:`~ibert_ref.hardware.accumulate.IntegerOverflowError` naming
    the op) or ``"exact"`` (keep the exact value, record where it would not fit). When
    ``K * max|a| * max|b| + max|bias|`` fits the register no chunk can overflow, and the GEMM
    is computed in one exact BLAS call (same integers, no per-chunk loop). The same policy
    applies where the profile narrows a value to an int32 register (requantization input).

``requant`` — the rounding of QuantAct's dyadic requantization ``z * m / 2^e``
    (I-BERT's ``m`` has 31 bits, ``2^30 <= |m| <= 2^31``; TFLite's form is
    ``m * 2^(shift - 31)`` with ``shift = 31 - e``):

    * ``"ibert"``: **RNE** of the exact rational (what I-BERT means; transformers computes it
      in float64, which is off by one once ``|z * m| >= 2^53``). Any input width.
    * ``"arm"``: NEON ``SRSHL(SQRDMULH(SSHL(z, left), m), -right)``: **RHU** at 2^-31, then
      **RHU** at 2^-right (no gemmlowp fix-up).
    * ``"gemmlowp"`` = ``"tflite-double"``: ``RoundingDivideByPOT(
      SaturatingRoundingDoublingHighMul(z << left, m), right)``: **RHU** at 2^-31, then
      **RHAZ** (half away from zero) at 2^-right; ``right > 31`` flushes the multiplier to 0
      (TFLite ``QuantizeMultiplier``).
    * ``"tflite-single"``: ``(z * m + 2^(e-1)) >> e``, one **RHU** of the exact product
      (TFLITE_SINGLE_ROUNDING, ruy, a GPU ``mul.wide.s32`` epilogue). TFLite DCHECKs
      ``m >= 0``; I-BERT has negative multipliers (IntGELU, negative LayerNorm gamma): they
      are applied as the same formula (RHU of the negative product), which TFLite would reject.
    * ``"cutlass-f32"``: CUTLASS ``LinearCombinationClamp``: ``rint(float32(z) *
      float32(m 2^-e))``, float32 product, **RNE** (``cvt.rni``); float32 holds 24 bits.

    All but ``"ibert"`` take an **int32** input ``z`` (narrowed under ``overflow``; an
    IntGELU product of ~40 bits does not fit) and an int32 multiplier: **m = 2^31 does not
    fit SQRDMULH's int32 operand**, so ``|m| = 2^31`` is stored as ``(m / 2, shift + 1)``, the
    same value (TFLite's ``QuantizeMultiplier`` does the same). ``left = max(shift, 0)`` is an
    int32 shift that wraps (TFLite's int32 multiply, NEON SSHL); a wrap is recorded.

``exp`` — how the softmax's i-exp meets the 16-bit QuantAct (``poly`` the exp polynomial,
    ``q`` the power of two, exact ``exp = poly * 2^(30 - q)`` of scale ``S * 2^-30``):

    * ``"fold"``: ``R(poly * m / 2^(e - 30 + q))``: the left shift is folded into the
      requantization shift, never materialised (exact datapath; int32-realizable: ``poly`` is
      the requantization input).
    * ``"shift-right"``: ``R((poly >> q) * m / 2^(e - 30))``: the paper's ``poly >> q``
      (floor) first, a different integer function (``poly >> q`` fits int32).
    * ``"left-shift"``: transformers' ``exp_int = poly << (30 - q)`` held in an ``acc_bits``
      register under ``overflow`` (up to ~2^70: this is what overflows), then ``R(exp_int * m / 2^e)``.

``gelu`` — ``"wide"``: the kernel's own IntGELU (``x * (erf + one)``, ~40 bits);
    ``"int32"``: :func:`int_gelu_int32` (pre-shifted input, every value in int32).

``ln_var`` — IntLayerNorm's ``var = sum((y >> shift)^2)`` (< 2^32 after calibration):
    ``"int64"`` exact; ``"uint32"`` modulo 2^32, read unsigned (UMLAL/wrapping int32 read
    as unsigned: exact below 2^32); ``"int32-sat"`` a saturating int32 accumulator (wrong
    above 2^31 - 1: the wrong choice the census warns about).

``sqrt`` — ``"isqrt"`` exact integer floor-sqrt; ``"float32"`` ``floor(sqrtf(float32(var)))``
    (transformers; differs once ``var > 2^24``).

``probs`` — the ``P V`` operand: ``"u9"`` probabilities 0..256 as they are (256 needs 9 bits:
    a 16-bit operand); ``"u8-sat"`` clamped to 255 so they fit a u8 operand (USDOT, u8 IMMA).

Named profiles (:data:`PROFILES`), registered with :func:`~ibert_ref.datapath.register_datapath`
so ``make_datapath(name, **overrides)``, ``IBertModel.from_pretrained(..., datapath=name)`` and
``ibert-ref ... --datapath name`` accept them:

* ``"arm"``: int32 wrapping accumulators (SDOT/SMMLA), ARM requantization, and the
  int32-realizable variants (``gelu="int32"``, ``ln_var="uint32"``).
* ``"tensor-core"``: IMMA ``mma.m16n8k32``: k_step 32, ``.satfinite`` saturation at the end
  of each instruction (``overflow="wrap"`` for the plain form), an integer single-rounding
  epilogue, the same int32 variants.
* ``"x86-vnni"``: x86 int8 GEMMs (:mod:`ibert_ref.hardware.x86`): activations shifted to u8
  (+128) with weight-sum compensation, ``madd="vpdpbusd"`` (AVX-512 VNNI, default),
  ``"vpdpbusds"`` or ``"vpmaddubsw"`` (AVX2: int16 pair saturation, reported); the float32
  requantization epilogue of oneDNN/FBGEMM (``cutlass-f32``); probabilities as u8 (``u8-sat``).
  ``"x86-avx2"`` is the same with ``madd="vpmaddubsw"``.
* ``"generic"``: every parameter at its exact default; describe your own ASIC with
  ``make_datapath("generic", acc_bits=24, overflow="saturate", requant="gemmlowp", ...)``.

Every profile records overflow events per op: the model returns them as
``IBertModelOutput.overflow_events`` and ``ibert-ref run`` prints them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from .. import intops
from ..backends.fast_numpy import FastExactDatapath
from ..datapath import QTensor, register_datapath, split_heads
from ..quant import F32, Dyadic
from .accumulate import int_matmul
from .oplog import S32, S64, U32, U64, OpLog, OverflowRecord, Register, overflow_record
from .primitives import multiply_by_quantized_multiplier, sqrdmulh, srshl, sshl

I64 = np.int64

OVERFLOW_POLICIES = ("wrap", "saturate", "raise", "exact")

#: requant mode -> the name of its rounding.
REQUANT_MODES = {
    "ibert": "I-BERT RNE (exact rational)",
    "arm": "ARM SQRDMULH + SRSHL: RHU, RHU",
    "gemmlowp": "gemmlowp SRDHM + RoundingDivideByPOT: RHU, RHAZ",
    "tflite-double": "TFLite double rounding (= gemmlowp): RHU, RHAZ",
    "tflite-single": "TFLite single rounding: one RHU",
    "cutlass-f32": "CUTLASS float32 epilogue: RNE of a float32 product",
}
EXP_VARIANTS = ("fold", "shift-right", "left-shift")
GELU_VARIANTS = ("wide", "int32")
LN_VAR_VARIANTS = ("int64", "uint32", "int32-sat")
SQRT_VARIANTS = ("isqrt", "float32")
PROBS_VARIANTS = ("u9", "u8-sat")
#: The parameters of a profile (:meth:`HardwareDatapath.parameters`), in this order.
PARAMETERS = ("acc_bits", "overflow", "k_step", "requant", "exp", "gelu", "ln_var", "sqrt", "probs")

#: The int32-realizable non-linearities every integer target profile uses: the softmax exponent
#: shift folded into the requantization, the int32 IntGELU, LayerNorm's variance as a uint32.
INT32_NONLINEAR = dict(exp="fold", gelu="int32", ln_var="uint32")

#: The named profiles: name -> parameters (keyword overrides are applied on top).
PROFILES = {
    "generic": dict(acc_bits=32, overflow="wrap", k_step=None, requant="ibert"),
    "arm": dict(acc_bits=32, overflow="wrap", k_step=None, requant="arm", **INT32_NONLINEAR),
    "tensor-core": dict(acc_bits=32, overflow="saturate", k_step=32, requant="tflite-single", **INT32_NONLINEAR),
    # its GEMMs are ibert_ref.hardware.x86's (make_profile builds X86VnniDatapath)
    "x86-vnni": dict(acc_bits=32, overflow="wrap", k_step=4, requant="cutlass-f32", **INT32_NONLINEAR,
                     probs="u8-sat", madd="vpdpbusd"),
}
PROFILES["x86-avx2"] = {**PROFILES["x86-vnni"], "madd": "vpmaddubsw"}  # = x86-vnni with madd=vpmaddubsw

#: IntGELU int32 variant: width of the pre-shifted input, and of its clip constant ``b``.
GELU_X_BITS = 17
GELU_B_BITS = 13


def _signed_limits(bits: int) -> tuple:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _wrap_signed(x_i64, bits: int):
    """Low ``bits`` bits of int64 ``x`` read as signed (two's complement); ``bits >= 64``:
    ``x`` itself (an int64 already is its low 64 bits)."""
    if bits >= 64:
        return np.asarray(x_i64, dtype=I64)
    lo, hi = _signed_limits(bits)
    low = np.asarray(x_i64, dtype=I64) & I64((1 << bits) - 1)
    return np.where(low > hi, low - I64(1 << bits), low)


def _abs_max(x) -> int:
    x = np.asarray(x)
    return 0 if x.size == 0 else max(abs(int(x.min())), abs(int(x.max())))


def _exact_matmul(a_i64, b_i64):
    """Exact ``a @ b`` in int64: float64 BLAS while every partial sum is below 2^53."""
    k = a_i64.shape[-1]
    if k * _abs_max(a_i64) * _abs_max(b_i64) < (1 << 53):
        return np.matmul(a_i64.astype(np.float64), b_i64.astype(np.float64)).astype(I64)
    return np.matmul(a_i64.astype(I64), b_i64.astype(I64))


def tflite_multiplier(dy: Dyadic) -> tuple:
    """I-BERT's ``m / 2^e`` as TFLite's ``(m32, shift)`` with value ``m32 * 2^(shift - 31)``:
    ``shift = 31 - e``; ``|m| = 2^31`` (not an int32) becomes ``(m / 2, shift + 1)``."""
    m_i64 = np.asarray(dy.m, dtype=I64)
    e_i64 = np.asarray(dy.e, dtype=I64)
    big = np.abs(m_i64) == (1 << 31)
    return np.where(big, m_i64 // 2, m_i64), 31 - e_i64 + big


@dataclass
class ShiftedQTensor(QTensor):
    """A QTensor held with a power-of-two exponent: ``data * 2^exponent`` is the integer of
    the op's compiled output scale (``scale`` already includes ``2^exponent``). The next
    requantization folds the exponent into its shift (``e - exponent``)."""

    exponent: object = 0


class HardwareDatapath(FastExactDatapath):
    """The exact datapath with a target's widths, overflow policy and roundings (see the
    module docstring for every parameter). Its exact steps take the NumPy backend's fast
    routes (:mod:`ibert_ref.backends.fast_numpy`, the reference's integers); every value is
    held in int64, as this datapath's registers are modelled."""

    name = "hardware"
    narrow = False

    def __init__(
        self,
        acc_bits: int = 32,
        overflow: str = "wrap",
        k_step=None,
        requant: str = "ibert",
        *,
        exp: str = "fold",
        gelu: str = "wide",
        ln_var: str = "int64",
        sqrt: str = "isqrt",
        probs: str = "u9",
        name=None,
    ):
        super().__init__()
        if not isinstance(acc_bits, (int, np.integer)) or not 2 <= acc_bits <= 64:
            raise ValueError(f"acc_bits must be an int in [2, 64], got {acc_bits!r}")
        if k_step is not None and (not isinstance(k_step, (int, np.integer)) or k_step < 1):
            raise ValueError(f"k_step must be a positive int or None, got {k_step!r}")
        for label, value, allowed in (
            ("overflow", overflow, OVERFLOW_POLICIES),
            ("requant", requant, tuple(REQUANT_MODES)),
            ("exp", exp, EXP_VARIANTS),
            ("gelu", gelu, GELU_VARIANTS),
            ("ln_var", ln_var, LN_VAR_VARIANTS),
            ("sqrt", sqrt, SQRT_VARIANTS),
            ("probs", probs, PROBS_VARIANTS),
        ):
            if value not in allowed:
                raise ValueError(f"{label} must be one of {allowed}, got {value!r}")
        self.acc_bits, self.overflow, self.k_step, self.requant = int(acc_bits), overflow, k_step, requant
        self.exp, self.gelu, self.ln_var, self.sqrt, self.probs = exp, gelu, ln_var, sqrt, probs
        if name is not None:
            self.name = name
        self.oplog = OpLog()
        self._gelu_constants = {}

    def parameters(self) -> dict:
        return {k: getattr(self, k) for k in PARAMETERS}

    def semantics(self) -> dict:
        """Parameter -> what its current value computes (integer semantics, one line each;
        recorded in the golden vectors' manifest). Parameters without an entry here are
        described by the module docstring."""
        acc = (f"int8 x int8 products summed exactly per k-chunk of "
               f"{'all of K' if self.k_step is None else self.k_step} terms, the running sum held in a signed "
               f"{self.acc_bits}-bit register after each chunk (chunks in increasing k), the int32 bias added "
               f"after the last chunk in the same register")
        table = {
            "acc_bits": acc,
            "overflow": {"wrap": "a value that does not fit keeps its low bits (two's complement), recorded",
                         "saturate": "a value that does not fit is clamped to the register's range, recorded",
                         "raise": "a value that does not fit stops the run (IntegerOverflowError naming the op)",
                         "exact": "the exact value is kept; where it would not fit is recorded"}[self.overflow],
            "k_step": acc,
            "requant": REQUANT_MODES[self.requant] + (
                "; int32 input z (a wider z is narrowed under 'overflow', recorded), TFLite multiplier "
                "(m32, shift = 31 - e), |m| = 2^31 stored as (m/2, shift+1)" if self.requant != "ibert" else
                "; any input width, the product z*m exact"),
            "exp": {"fold": "R(poly * m / 2^(e - 30 + q)): i-exp's left shift folded into the requantization shift",
                    "shift-right": "R((poly >> q) * m / 2^(e - 30)): floor shift first",
                    "left-shift": "exp_int = poly << (30 - q) held in the acc_bits register under 'overflow', "
                                  "then R(exp_int * m / 2^e)"}[self.exp],
            "gelu": {"wide": "IntGELU x * (erf_q + one) in int64 (~40 bits)",
                     "int32": f"IntGELU on x' = sat{GELU_X_BITS}(x >> k) with b' = b >> k, c' = c >> 2k, "
                              "one' = one >> 2k (floors, k per channel), every value in int32; the output is held "
                              "with exponent 3k (data * 2^(3k) at the compiled scale), folded into the next "
                              "requantization's shift"}[self.gelu],
            "ln_var": {"int64": "IntLayerNorm var = sum((y >> shift)^2) exact in int64",
                       "uint32": "var modulo 2^32 read unsigned (exact below 2^32; a wrap is recorded)",
                       "int32-sat": "var in a saturating int32 accumulator (clamps at 2^31 - 1, recorded)",
                       }[self.ln_var],
            "sqrt": {"isqrt": "exact integer floor-sqrt",
                     "float32": "floor(sqrtf(float32(var)))"}[self.sqrt],
            "probs": {"u9": "P V operand: probabilities 0..256 as they are (9 bits unsigned)",
                      "u8-sat": "P V operand: probabilities clamped to 255 (u8), recorded"}[self.probs],
        }
        return {k: table.get(k, "see ibert_ref.hardware.profiles") for k in self.parameters()}

    def describe(self) -> str:
        """One line: accumulator, rounding and variants."""
        k = "all of K" if self.k_step is None else f"k_step {self.k_step}"
        return (
            f"{self.name}: int{self.acc_bits} accumulators ({self.overflow}, {k}); requant {self.requant} "
            f"[{REQUANT_MODES[self.requant]}]; exp {self.exp}, gelu {self.gelu}, ln_var {self.ln_var}, "
            f"sqrt {self.sqrt}, probs {self.probs}"
        )

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"HardwareDatapath({args}, name={self.name!r})"

    # ---- registers and overflow -------------------------------------------------------
    def _requant_in(self) -> Register:
        return S64 if self.requant == "ibert" else S32

    def provided_register(self, family: str, part: str) -> Register:
        """The register this profile holds ``family``/``part`` in (for the width census)."""
        acc = Register(self.acc_bits)
        table = {
            ("QuantLinear", "out"): acc,
            ("linear", "acc"): acc,
            ("scores", "QK^T acc"): acc,
            ("context", "PV acc"): acc,
            ("exp", "poly"): self._requant_in() if self.exp == "fold" else S64,
            ("exp", "poly >> q"): self._requant_in(),
            ("exp", "exp_int = poly*2^(30-q)"): acc if self.exp == "left-shift" else Register(None),
            ("IntGELU", "out"): self._requant_in() if self.gelu == "wide" else S32,
            ("gelu", "x * (erf_q + one)"): self._requant_in(),
            ("gelu", "x >> k"): Register(GELU_X_BITS),
            ("gelu", "erf poly (|x'|+b')^2+c'"): S32,
            ("gelu", "erf_q' + one'"): S32,
            ("gelu", "x' * (erf_q' + one')"): S32,
            ("layernorm", "var = sum((y>>shift)^2)"): {"int64": S64, "uint32": U32, "int32-sat": S32}[self.ln_var],
            ("softmax", "sum(e)"): U64,
            ("softmax", "factor = 2^32 // sum"): U64,
            ("softmax", "e * factor"): U64,
        }
        return table.get((family, part), S64)

    def _action(self, policy: str) -> str:
        return {"wrap": "wrapped", "saturate": "saturated", "raise": "raise", "exact": "kept"}[policy]

    def _fit(self, family, part, exact_i64, bits, policy=None, forced=False, detail=""):
        """Hold ``exact_i64`` in a signed ``bits`` register under ``policy`` (default: the
        profile's ``overflow``), recording an event for the elements that do not fit.
        ``forced``: the register really is that narrow (an instruction operand), so
        ``"exact"`` cannot keep the value and acts as ``"raise"``. A ``"raise"`` profile
        raises on every record, designed saturations included."""
        exact_i64 = np.asarray(exact_i64, dtype=I64)
        lo, hi = _signed_limits(bits)
        if exact_i64.size == 0 or (int(exact_i64.min()) >= lo and int(exact_i64.max()) <= hi):
            return exact_i64
        policy = policy or self.overflow
        if self.overflow == "raise" or (policy == "exact" and forced):
            policy = "raise"
        out_of_range = (exact_i64 < lo) | (exact_i64 > hi)
        if policy == "wrap":
            produced = _wrap_signed(exact_i64, bits)
        elif policy == "saturate":
            produced = np.clip(exact_i64, lo, hi)
        else:
            produced = exact_i64
        self._event(
            overflow_record(family, part, self._action(policy), bits, exact_i64, produced, out_of_range, detail),
            int(exact_i64.min()),
            int(exact_i64.max()),
        )
        if policy == "raise" and forced:
            return np.clip(exact_i64, lo, hi)  # a stand-in the instruction accepts; the op raises when named
        return produced

    def _event(self, record, lo: int, hi: int, signed: bool = True) -> None:
        """File an overflow record and, during a width census, the exact range of its part
        (quantity ``"<part> (exact)"``, held in the register that could not hold it)."""
        self.oplog.event(record)
        self.oplog.note(
            record.family, f"{record.part} (exact)", lo, hi, Register(record.bits, signed), S32 if signed else U32
        )

    # ---- GEMMs ------------------------------------------------------------------------
    def _gemm(self, family, part, a, b, bias=None):
        """``a @ b (+ bias)`` through the profile's accumulator (see the module docstring)."""
        a_i64 = np.asarray(a, dtype=I64)
        b_i64 = np.asarray(b, dtype=I64)
        k = a_i64.shape[-1]
        bias_bound = 0 if bias is None else _abs_max(bias)
        lo, hi = _signed_limits(min(self.acc_bits, 64))
        if self.acc_bits >= 63 or k * _abs_max(a_i64) * _abs_max(b_i64) + bias_bound <= hi:
            acc = _exact_matmul(a_i64, b_i64)  # no partial sum can leave the register
            return acc if bias is None else acc + np.asarray(bias, dtype=I64)
        mode = "exact" if self.overflow in ("raise", "exact") else self.overflow
        res = int_matmul(a_i64, b_i64, acc_bits=self.acc_bits, overflow=mode, k_step=self.k_step, op_name=family)
        if res.events:
            first = res.events[0]
            chunks = -(-k // (self.k_step or k))
            self._event(
                OverflowRecord(
                    op="",
                    family=family,
                    part=part,
                    action=self._action(self.overflow),
                    bits=self.acc_bits,
                    count=sum(e.count for e in res.events),
                    first_index=first.first_index,
                    exact=first.exact,
                    produced=first.produced,
                    detail=f"in {len(res.events)} of {chunks} k-chunks of {self.k_step or k}; "
                    f"first after k {first.k_start}:{first.k_stop}",
                ),
                int(res.exact_i64.min()),
                int(res.exact_i64.max()),
            )
        acc = np.asarray(res.values, dtype=I64)
        if bias is None:
            return acc
        return self._add_bias(family, part, acc, res.exact_i64, np.asarray(bias, dtype=I64), mode)

    def _add_bias(self, family, part, acc_i64, exact_i64, bias_i64, mode):
        """The bias add after the last k-chunk, in the same register (records carry the exact sum)."""
        pre = acc_i64 + bias_i64
        lo, hi = _signed_limits(self.acc_bits)
        out_of_range = (pre < lo) | (pre > hi)
        if not out_of_range.any():
            return pre
        policy = "raise" if self.overflow == "raise" else mode
        held = {"wrap": lambda: _wrap_signed(pre, self.acc_bits), "saturate": lambda: np.clip(pre, lo, hi)}
        produced = held[policy]() if policy in held else pre
        exact_total = exact_i64 + bias_i64
        record = overflow_record(
            family, part + " + bias", self._action(policy), self.acc_bits, exact_total, produced, out_of_range
        )
        self._event(record, int(exact_total.min()), int(exact_total.max()))
        return produced

    def linear(self, x, w, b):
        # (..., in) x (out, in)^T, the int32 bias added after the last k-chunk
        return self._gemm("linear", "acc", x, np.asarray(w).T, bias=b)

    def attention_scores(self, q, k, num_heads, mask, score_scale_f32):
        qh = split_heads(np.asarray(q.data, dtype=I64), num_heads)
        kh = split_heads(np.asarray(k.data, dtype=I64), num_heads)
        scores = self._gemm("scores", "QK^T acc", qh, kh.transpose(0, 1, 3, 2))
        if mask is not None:
            keep = mask[:, None, None, :].astype(bool)
            scores = np.where(keep, scores, -intops.SATURATION_I64)
        return scores

    def attention_context(self, p, v, num_heads, scale_f32):
        p_int = np.asarray(p.data, dtype=I64)
        if self.probs == "u8-sat" and p_int.size and int(p_int.max()) > 255:
            over = p_int > 255  # 256: a row with one live key
            action = "raise" if self.overflow == "raise" else "saturated"
            clamped = np.minimum(p_int, 255)
            record = overflow_record("context", "probs -> u8", action, 8, p_int, clamped, over)
            self._event(record, int(p_int.min()), int(p_int.max()), signed=False)
            p_int = clamped
        ctx = self._gemm("context", "PV acc", p_int, split_heads(np.asarray(v.data, dtype=I64), num_heads))
        self.note("context", "PV acc", ctx)
        b, nh, t, hd = ctx.shape
        ctx = np.ascontiguousarray(ctx.transpose(0, 2, 1, 3)).reshape(b, t, nh * hd)
        return QTensor(ctx, np.asarray(scale_f32, dtype=F32))

    # ---- requantization ---------------------------------------------------------------
    def dyadic_round(self, z, dy):
        return self._requant("requantize", z, dy)

    def requant_multiplier(self, dy, x):
        k = getattr(x, "exponent", None)
        if k is None:
            return dy
        e_i64 = np.asarray(dy.e, dtype=I64) - np.asarray(k, dtype=I64)
        if np.any(e_i64 < 0):
            raise ValueError("a pre-shifted input needs a requantization shift >= its exponent")
        return Dyadic(m=np.asarray(dy.m, dtype=I64), e=e_i64)

    def _requant(self, family, z, dy):
        """``R(z * m / 2^e)`` with the profile's rounding (see the module docstring)."""
        z_i64 = np.asarray(z, dtype=I64)
        if self.requant == "ibert":
            return super().dyadic_round(z_i64, dy)
        z_i32 = self._fit(family, "requant input (int32)", z_i64, 32, forced=True)
        if self.requant == "tflite-single":
            return intops.mul_shift_round(z_i32, dy.m, dy.e, "half_up")
        if self.requant == "cutlass-f32":
            alpha_f32 = np.ldexp(np.asarray(dy.m, dtype=np.float64), -np.asarray(dy.e, dtype=np.int32)).astype(F32)
            return np.rint(z_i32.astype(F32) * alpha_f32).astype(I64)
        m32, shift = tflite_multiplier(dy)
        if np.any(shift > 31):
            raise ValueError("requantization multiplier above 2^0 * 2^31: shift > 31 is not representable")
        left = np.maximum(shift, 0)
        right = np.maximum(-shift, 0)
        # z << left in an int32 register (TFLite: an int32 multiply; NEON: SSHL) wraps
        self._fit(family, "requant z << left (int32)", z_i32 << left, 32, policy="wrap", forced=True)
        if self.requant == "arm":
            high = sqrdmulh(sshl(z_i32, left), m32)
            return np.asarray(srshl(high, -np.minimum(right, 64)), dtype=I64)
        flush = right > 31  # TFLite QuantizeMultiplier: shift < -31 -> multiplier 0
        m32, shift = np.where(flush, 0, m32), np.where(flush, 0, shift)
        return np.asarray(multiply_by_quantized_multiplier(z_i32, m32, shift, "double"), dtype=I64)

    def exp_requantize(self, z, q, exp_scale_f32, dy_tf, dy_exact, bits):
        poly = np.maximum(np.asarray(z, dtype=I64), 0)
        q_i64 = np.asarray(q, dtype=I64)
        m, e = np.asarray(dy_exact.m, dtype=I64), np.asarray(dy_exact.e, dtype=I64)
        if self.exp == "fold":
            e_total = e - (30 - q_i64)
            if np.any(e_total < 0):
                raise OverflowError("softmax exp requantization shift went negative")
            e16 = self._requant("exp", poly, Dyadic(m, e_total))
        elif self.exp == "shift-right":
            t = poly >> q_i64
            self.note("exp", "poly >> q", t)
            if np.any(e - 30 < 0):
                raise OverflowError("softmax exp requantization shift went negative")
            e16 = self._requant("exp", t, Dyadic(m, e - 30))
        else:  # left-shift: transformers' exp_int, materialised in an acc_bits register
            exp_int = self._left_shift_fit("exp", "exp_int = poly*2^(30-q)", poly, 30 - q_i64)
            e16 = self._requant("exp", exp_int, Dyadic(m, e))
        return intops.clamp_signed(e16, bits)

    def _left_shift_fit(self, family, part, v_i64, left_i64):
        """``v << left`` (v >= 0, 0 <= left <= 62) held in an ``acc_bits`` register."""
        bits = min(self.acc_bits, 64)
        lo, hi = _signed_limits(bits)
        left_i64 = np.broadcast_to(left_i64, v_i64.shape)
        fits = v_i64 <= (I64(hi) >> left_i64)
        if fits.all():
            return v_i64 << left_i64
        policy = self.overflow
        fits64 = v_i64 <= (I64((1 << 62) - 1) >> left_i64)
        if policy == "exact" and not fits64.all():
            policy = "raise"  # beyond int64: cannot be kept
        if policy == "wrap":
            # wrap(v << left) depends only on the low (bits - left) bits of v
            low_mask = (I64(1) << np.maximum(bits - left_i64, 0)) - 1
            produced = _wrap_signed((v_i64 & low_mask) << np.minimum(left_i64, bits), bits)
        elif policy == "exact":
            produced = v_i64 << left_i64
        else:  # saturate (raise: the run stops when the op is named)
            produced = np.where(fits, v_i64 << np.where(fits, left_i64, 0), I64(hi))
        flat = np.flatnonzero(~fits.ravel())
        first = int(flat[0])
        exact_first = int(v_i64.ravel()[first]) << int(left_i64.ravel()[first])
        ranges = [(int(v_i64[left_i64 == k].min()) << int(k), int(v_i64[left_i64 == k].max()) << int(k))
                  for k in np.unique(left_i64)]
        self._event(
            OverflowRecord(
                op="",
                family=family,
                part=part,
                action=self._action(policy),
                bits=bits,
                count=int(flat.size),
                first_index=first,
                exact=exact_first,
                produced=int(produced.ravel()[first]) if policy != "raise" else exact_first,
                detail="exact value: poly << (30 - q)",
            ),
            min(r[0] for r in ranges),
            max(r[1] for r in ranges),
        )
        return produced

    def floor_div_into(self, c, t):
        """``floor(c / t)`` (softmax ``2^32 / sum``, LayerNorm ``2^31 / std``). A divisor <= 0
        (only after an overflow upstream, or an all-equal LayerNorm row) gives 0, as ARM
        UDIV does for 0 (PTX leaves it unspecified), and is recorded."""
        t_i64 = np.asarray(t, dtype=I64)
        bad = t_i64 <= 0
        if not bad.any():
            return super().floor_div_into(c, t_i64)
        family = "softmax" if c == 2**32 else "layernorm"
        policy = "raise" if self.overflow == "raise" else "divide-by-zero -> 0"
        quotient = np.where(bad, I64(0), I64(c) // np.where(bad, I64(1), t_i64))
        record = overflow_record(family, f"{c} // divisor", policy, 64, t_i64, quotient, bad, "divisor <= 0")
        self.oplog.event(record)
        return quotient

    # ---- IntLayerNorm -----------------------------------------------------------------
    def sum_squares(self, y):
        var = super().sum_squares(y)
        if self.ln_var == "uint32":
            wrapped = var >= (1 << 32)
            if wrapped.any():
                policy = "raise" if self.overflow == "raise" else "wrap"
                produced = var & I64((1 << 32) - 1) if policy == "wrap" else var
                self._event(
                    overflow_record("layernorm", "var (uint32)", self._action(policy), 32, var, produced, wrapped),
                    int(var.min()),
                    int(var.max()),
                    signed=False,
                )
                return produced
            return var
        if self.ln_var == "int32-sat":
            policy = "raise" if self.overflow == "raise" else "saturate"
            return self._fit("layernorm", "var (int32 saturating)", var, 32, policy=policy)
        return var

    def floor_sqrt(self, v):
        if self.sqrt == "float32":
            v_i64 = np.asarray(v, dtype=I64)
            if np.any(v_i64 < 0):
                raise ValueError("floor_sqrt of a negative number")
            return np.floor(np.sqrt(v_i64.astype(F32))).astype(I64)
        return super().floor_sqrt(v)

    # ---- IntGELU ----------------------------------------------------------------------
    def replacement_kernel(self, name):
        """The int32 IntGELU (:func:`int_gelu_int32`) when ``gelu="int32"``; every other kernel
        runs as written in :mod:`ibert_ref.kernels` (on this datapath's arithmetic)."""
        if name == "int_gelu" and self.gelu == "int32":
            return int_gelu_int32
        return None

    def gelu_int32_constants(self, p):
        """Per-channel ``(k, b', c', one')`` of :func:`int_gelu_int32` (compile-time; cached)."""
        key = id(p)
        if key not in self._gelu_constants:
            self._gelu_constants[key] = (p, gelu_int32_constants(p))
        return self._gelu_constants[key][1]


# ---------------------------------------------------------------------------------------
def gelu_int32_constants(p, x_bits: int = GELU_X_BITS, b_bits: int = GELU_B_BITS) -> tuple:
    """Shift ``k`` per channel and the IntGELU constants of the input ``x >> k``.

    ``k`` is the smallest shift with ``|b_int >> k| < 2^b_bits`` and
    ``2^(x_bits-1) * (2 |one >> 2k| + 2) < 2^31`` (so the product fits int32). The constants of
    the pre-shifted input (scale ``s * 2^k``) are the compiled ones shifted (floors):
    ``b' = b_int >> k``, ``c' = c_int >> 2k``, ``one' = one >> 2k``. Integers only.
    """
    b_i64 = np.atleast_1d(np.asarray(p.b_int, dtype=I64))
    c_i64 = np.atleast_1d(np.asarray(p.c_int, dtype=I64))
    one_i64 = np.atleast_1d(np.asarray(p.one, dtype=I64))
    shape = np.broadcast_shapes(b_i64.shape, c_i64.shape, one_i64.shape)
    b_i64, c_i64, one_i64 = (np.broadcast_to(a, shape) for a in (b_i64, c_i64, one_i64))
    k_i64 = np.full(shape, -1, dtype=I64)
    for k in range(0, 32):
        ok = (np.abs(b_i64 >> k) < (1 << b_bits)) & (
            (1 << (x_bits - 1)) * (2 * np.abs(one_i64 >> (2 * k)) + 2) < (1 << 31)
        )
        k_i64 = np.where((k_i64 < 0) & ok, k, k_i64)
    if np.any(k_i64 < 0):
        raise ValueError("IntGELU constants too wide for the int32 variant")
    return k_i64, b_i64 >> k_i64, c_i64 >> (2 * k_i64), one_i64 >> (2 * k_i64)


def int_gelu_int32(dp: HardwareDatapath, x: QTensor, p) -> ShiftedQTensor:
    """IntGELU with every intermediate in int32 (the profile's ``gelu="int32"``).

    With ``k``, ``b'``, ``c'``, ``one'`` from :func:`gelu_int32_constants` (per channel)::

        x'    = sat_17(x >> k)                              (floor; a saturation is recorded)
        erf'  = floor(sign(x') ((min(|x'|, -b') + b')^2 + c') / 2^14)     (|.| < 2^27)
        out   = x' * (erf' + one')                          (|out| < 2^31)

    = IntGELU of the input ``x >> k`` at scale ``s * 2^k``: the output stands for
    ``out * 2^(3k)`` at the compiled output scale (``s * 2^k * s_erf * 2^(2k) / 2``), held as a
    :class:`ShiftedQTensor` with exponent ``3k``; the next requantization folds ``3k`` into
    its shift. Cost: ``k`` low bits of the input and ``2k`` of the erf constants (floors).
    """
    k_i64, b2, c2, one2 = dp.gelu_int32_constants(p)
    x_int = np.asarray(dp.recover(x), dtype=I64)
    x_sh = dp._fit("gelu", "x >> k", x_int >> k_i64, GELU_X_BITS, policy="saturate")
    sign = np.sign(x_sh)
    clipped = np.minimum(np.abs(x_sh), -b2)
    erf_poly = (clipped + b2) ** 2 + c2
    erf_q = dp.floor_div_pow2(sign * erf_poly, 14)
    product = dp._fit("gelu", "x' * (erf_q' + one') (int32)", x_sh * (erf_q + one2), 32)
    dp.note("gelu", "x >> k", x_sh)
    dp.note("gelu", "erf poly (|x'|+b')^2+c'", erf_poly)
    dp.note("gelu", "erf_q' + one'", lambda: erf_q + one2)
    dp.note("gelu", "x' * (erf_q' + one')", product)
    exponent = 3 * k_i64
    scale_f32 = np.ldexp(np.asarray(p.out_scale, dtype=F32), exponent.astype(np.int32)).astype(F32)
    return ShiftedQTensor(product, scale_f32, exponent=exponent)


# ---------------------------------------------------------------------------------------
def make_profile(name: str, **overrides) -> HardwareDatapath:
    """The named profile (:data:`PROFILES`) with keyword ``overrides``."""
    if name not in PROFILES:
        raise ValueError(f"unknown hardware profile {name!r}; expected one of {tuple(PROFILES)}")
    cls = HardwareDatapath
    if "madd" in PROFILES[name]:  # x86-vnni, x86-avx2
        from .x86 import X86VnniDatapath  # x86.py builds on this module: imported here

        cls = X86VnniDatapath
    accepted = {n for c in cls.__mro__ if issubclass(c, HardwareDatapath)  # a subclass forwards **kwargs
                for n, q in inspect.signature(c.__init__).parameters.items()
                if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY) and n != "self"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(f"profile {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(sorted(accepted - {'name'}))}")
    return cls(**{**PROFILES[name], **overrides, "name": overrides.get("name", name)})


def parse_profile_options(items) -> dict:
    """``["acc_bits=24", "overflow=saturate", "k_step=none"]`` -> keyword arguments."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"profile option {item!r} is not KEY=VALUE")
        key, value = (s.strip() for s in item.split("=", 1))
        if key in ("acc_bits", "k_step"):
            out[key] = None if value.lower() == "none" else int(value)
        else:
            out[key] = value
    return out


def _factory(name):
    def build(**overrides):
        return make_profile(name, **overrides)

    build.__name__ = f"make_{name.replace('-', '_')}_profile"
    build.__doc__ = f"The {name!r} hardware profile ({PROFILES[name]}) with keyword overrides."
    return build


for _name in PROFILES:
    register_datapath(_name, _factory(_name))
