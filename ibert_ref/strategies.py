"""Hypothesis strategies for I-BERT: integers, scales, multipliers, ranges, configs, models.

For property-based testers who want to check their own kernels or hardware models against
ours (see ``docs/properties.md`` for a worked example). Needs the ``test`` extra
(``pip install 'ibert-ref[test]'``, i.e. ``hypothesis``); the simulator core never imports
this module.

Strategies (each returns a ``hypothesis.strategies.SearchStrategy``)

=============================  ==============================================================
``int_tensors(bits, shape)``   int64 arrays whose values fit a signed (or unsigned) width
``scales(lo, hi)``             positive float32 scales, log-uniform (shrink towards ``hi``)
``dyadics()``                  :class:`~ibert_ref.quant.Dyadic` multipliers ``m * 2^-e``
``quant_ranges()``             calibrated ``(x_min, x_max)`` float32 pairs, shape (1,) each
``rounding_modes()``           the rounding rules of :mod:`ibert_ref.intops`
``datapath_names()``           names from ``available_datapaths()`` (hardware profiles too)
``datapaths()``                built :class:`~ibert_ref.datapath.Datapath` objects
``requant_params(dp)``         ``(RequantParams, in_scale)`` for the QuantAct kernel
``softmax_params(dp)``         calibrated :class:`~ibert_ref.kernels.SoftmaxParams`
``gelu_params(dp)``            :class:`~ibert_ref.kernels.GeluParams` for an input scale
``layernorm_params(dp, D)``    :class:`~ibert_ref.kernels.LayerNormParams`
``ibert_configs()``            small valid I-BERT ``config.json`` dicts
``input_batches(config)``      ``(input_ids, attention_mask)`` right-padded int64 batches
``checkpoints()``              NumPy-built, calibrated :class:`~ibert_ref.loading.Checkpoint`
``calibrated_models()``        compiled :class:`~ibert_ref.model.IBertModel` objects
=============================  ==============================================================

and two plain functions: :func:`make_numpy_checkpoint` (a calibrated random checkpoint with
NumPy only, no torch) and :func:`save_checkpoint` (write it as ``config.json`` +
``model.safetensors``).

Every value a strategy draws is valid input for our kernels (the integers fit the declared
widths, ranges are calibrated, scales positive), so a failing property is a finding, not a
generator artefact.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("ibert_ref.strategies needs hypothesis: pip install 'ibert-ref[test]'") from exc

from . import compile as C
from . import dataflow as D
from . import intops
from .datapath import Datapath, available_datapaths, make_datapath
from .input_files import pad_rows
from .loading import Checkpoint
from .quant import F32, Dyadic, symmetric_scale_f32

__all__ = [
    "signed_bounds",
    "int_tensors",
    "scales",
    "dyadics",
    "quant_ranges",
    "rounding_modes",
    "datapath_names",
    "datapaths",
    "requant_params",
    "softmax_params",
    "gelu_params",
    "layernorm_params",
    "ibert_configs",
    "input_batches",
    "max_sequence_length",
    "checkpoints",
    "calibrated_models",
    "make_numpy_checkpoint",
    "save_checkpoint",
]


# ---------------------------------------------------------------------------------------
# Integers, scales, multipliers, ranges
def signed_bounds(bits: int, signed: bool = True) -> tuple:
    """``(lo, hi)`` of a ``bits``-wide integer: ``[-2^(b-1), 2^(b-1) - 1]`` or ``[0, 2^b - 1]``."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def int_tensors(
    bits: int = 8,
    shape=None,
    *,
    signed: bool = True,
    min_value: Optional[int] = None,
    max_value: Optional[int] = None,
    min_dims: int = 1,
    max_dims: int = 3,
    min_side: int = 1,
    max_side: int = 6,
    dtype=np.int64,
):
    """int64 (or ``dtype``) arrays with every value in the ``bits``-wide range.

    ``shape``: a fixed shape tuple, a strategy of shapes, or None (any shape with
    ``min_dims..max_dims`` axes of ``min_side..max_side`` elements). ``min_value`` /
    ``max_value`` narrow the range further. Unsigned 64-bit values do not fit int64: use
    ``dtype=np.uint64`` for them.
    """
    lo, hi = signed_bounds(bits, signed)
    lo = lo if min_value is None else max(lo, int(min_value))
    hi = hi if max_value is None else min(hi, int(max_value))
    if lo > hi:
        raise ValueError(f"empty range [{lo}, {hi}]")
    if shape is None:
        shape = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)
    return hnp.arrays(dtype=dtype, shape=shape, elements=st.integers(lo, hi))


def scales(min_value: float = 2.0**-20, max_value: float = 1.0):
    """A positive float32 scale, log-uniform in ``[min_value, max_value]`` (a NumPy float32)."""
    if not 0 < min_value <= max_value:
        raise ValueError("scales need 0 < min_value <= max_value")
    lo, hi = math.log2(min_value), math.log2(max_value)

    def to_scale(t):
        return F32(np.clip(F32(2.0**t), F32(min_value), F32(max_value)))

    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(to_scale)


def dyadics(*, min_e: int = 0, max_e: int = 62, normalized: bool = True, allow_negative: bool = False):
    """A :class:`~ibert_ref.quant.Dyadic` ``m * 2^-e`` with int64 0-d arrays ``m``, ``e``.

    ``normalized`` (default): ``2^30 <= |m| <= 2^31``, the mantissas
    :func:`~ibert_ref.quant.dyadic_from_ratio` produces; otherwise any ``0 <= |m| <= 2^31``.
    ``allow_negative`` draws negative mantissas too. ``e`` is in ``[min_e, max_e]``.
    """
    m_lo = (1 << 30) if normalized else 0
    mags = st.one_of(st.sampled_from([m_lo, 1 << 31, (1 << 31) - 1]), st.integers(m_lo, 1 << 31))
    signs = st.sampled_from([1, -1]) if allow_negative else st.just(1)
    return st.builds(
        lambda m, s, e: Dyadic(m=np.array(m * s, dtype=np.int64), e=np.array(e, dtype=np.int64)),
        mags,
        signs,
        st.integers(min_e, max_e),
    )


def quant_ranges(*, min_magnitude: float = 1e-3, max_magnitude: float = 1e3, one_sided: bool = True):
    """A calibrated QuantAct range ``(x_min, x_max)``: float32 arrays of shape (1,).

    ``x_min <= x_max`` and ``max(|x_min|, |x_max|)`` in ``[min_magnitude, max_magnitude]``
    (above the 1.1e-5 of an uncalibrated QuantAct). ``one_sided`` also draws ranges that do
    not contain 0 (post-GELU or softmax-like activations).
    """

    @st.composite
    def build(draw):
        mag = float(draw(scales(min_magnitude, max_magnitude)))
        frac = draw(st.floats(-1.0 if one_sided else 0.0, 1.0))
        lo, hi = (-mag, mag * frac) if draw(st.booleans()) else (mag * -frac, mag)
        if lo > hi:
            lo, hi = hi, lo
        return np.array([lo], dtype=F32), np.array([hi], dtype=F32)

    return build()


def rounding_modes():
    """One of :data:`ibert_ref.intops.ROUNDINGS` (``half_even``, ``half_up``, ``half_away``, ``floor``)."""
    return st.sampled_from(intops.ROUNDINGS)


def datapath_names(*, include: Optional[Sequence[str]] = None, exclude: Sequence[str] = ()):
    """A name accepted by :func:`~ibert_ref.datapath.make_datapath` (registered profiles too)."""
    names = [n for n in available_datapaths() if n not in exclude and (include is None or n in include)]
    if not names:
        raise ValueError("no datapath left to draw from")
    return st.sampled_from(names)


def datapaths(names=None):
    """Built datapaths (``make_datapath(name)`` with default options; numpy GEMMs)."""
    return (datapath_names() if names is None else names).map(make_datapath)


def _dp(dp) -> Datapath:
    return make_datapath(dp) if not isinstance(dp, Datapath) else dp


# ---------------------------------------------------------------------------------------
# Kernel constants (built with the compiler's own helpers, as a checkpoint would be)
def requant_params(dp="exact", *, bits=st.sampled_from([8, 16, 22]), in_bits: int = 32, with_identity: bool = False):
    """``(RequantParams, in_scale_f32, identity_scale_f32 or None)`` for :func:`kernels.requantize`.

    For inputs ``in_bits`` wide: the output scale is ``in_scale * 2^(in_bits - bits + u)`` with
    ``u`` in [-4, 2] (an integer half the time: power-of-two ratios, the tie-rich case
    hardware requantizers get wrong), so most outputs fit ``bits`` and some saturate. The
    multiplier is ``dyadic_requant(in_scale, out_scale)`` (transformers' arithmetic). A
    residual's scale is ``2^-12 .. 2^24`` times the output scale (a 22-bit LayerNorm input
    adding an int8 residual is ~2^14), keeping its multiplier's exponent ``e >= 0``.
    """

    @st.composite
    def build(draw):
        b = draw(bits) if isinstance(bits, st.SearchStrategy) else int(bits)
        s_in = np.array([draw(scales(2.0**-24, 2.0**4))], dtype=F32)
        u = draw(st.one_of(st.integers(-4, 2), st.floats(-4, 2)))
        s_out = (s_in * F32(2.0 ** (in_bits - b + u))).astype(F32)
        s_id = (s_out * F32(2.0 ** draw(st.floats(-12, 24)))).astype(F32) if with_identity else None
        return C.requant_params(b, s_out, s_in, s_id), s_in, s_id

    return build()


def softmax_params(dp="exact", score_scale=None, *, act_headroom=st.just(1.0)):
    """Calibrated IntSoftmax constants for a score scale (default: ``scales(1e-4, 5e-2)``).

    The 16-bit QuantAct range is what calibration records: ``x_max = c_int * 2^30`` (the
    largest ``exp_int``, reached at the row maximum), times ``act_headroom`` (>= 1).
    """
    score_scale = scales(1e-4, 5e-2) if score_scale is None else score_scale

    @st.composite
    def build(draw):
        d = _dp(dp)
        s = np.array([draw(score_scale)], dtype=F32)
        c_int = np.floor(C.rdiv_f32(C.SOFTMAX_COEF[2], s * s))
        x_max = (c_int.astype(np.float64) * 2.0**30 * float(draw(act_headroom))).astype(F32)
        act = symmetric_scale_f32(C.SOFTMAX_ACT_BITS, np.zeros(1, F32), x_max)
        return C.softmax_params(d, s, act)

    return build()


def gelu_params(dp="exact", in_scale=None):
    """IntGELU constants for an input (QuantLinear accumulator) scale, default ``scales(1e-5, 1e-2)``."""
    in_scale = scales(1e-5, 1e-2) if in_scale is None else in_scale
    return in_scale.map(lambda s: C.gelu_params(_dp(dp), np.array([s], dtype=F32)))


def layernorm_params(dp="exact", hidden: int = 8, *, shift=st.integers(0, 12)):
    """IntLayerNorm constants for ``hidden`` channels: gammas of both signs (|gamma| in
    [0.25, 2]), betas in [-2, 2], and a ``shift`` (default 0..12)."""

    @st.composite
    def build(draw):
        mags = draw(hnp.arrays(np.float32, hidden, elements=st.floats(0.25, 2.0, width=32)))
        signs = draw(hnp.arrays(np.float32, hidden, elements=st.sampled_from([1.0, -1.0])))
        beta = draw(hnp.arrays(np.float32, hidden, elements=st.floats(-2.0, 2.0, width=32)))
        sh = draw(shift) if isinstance(shift, st.SearchStrategy) else int(shift)
        return C.layernorm_params(_dp(dp), (mags * signs).astype(F32), beta, np.array([sh], dtype=F32))

    return build()


# ---------------------------------------------------------------------------------------
# Configs, inputs, checkpoints, models
def ibert_configs(
    *,
    hidden_sizes=(8, 16, 32),
    max_layers: int = 2,
    max_heads: int = 4,
    vocab_sizes=st.integers(8, 64),
    max_positions=st.integers(8, 40),
    type_vocab_sizes=st.integers(1, 2),
):
    """A small valid I-BERT ``config.json`` dict (``quant_mode=True``, RoBERTa-style ids:
    ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2). ``hidden_size`` is a multiple of the head count,
    ``intermediate_size`` is 2 or 4 times ``hidden_size``."""

    @st.composite
    def build(draw):
        hidden = draw(st.sampled_from(list(hidden_sizes)))
        heads = draw(st.sampled_from([h for h in (1, 2, 4, 8) if h <= max_heads and hidden % h == 0]))
        return {
            "model_type": "ibert",
            "architectures": ["IBertModel"],
            "quant_mode": True,
            "force_dequant": "none",
            "hidden_act": "gelu",
            "hidden_size": hidden,
            "num_attention_heads": heads,
            "num_hidden_layers": draw(st.integers(1, max_layers)),
            "intermediate_size": hidden * draw(st.sampled_from([2, 4])),
            "vocab_size": draw(vocab_sizes),
            "max_position_embeddings": draw(max_positions),
            "type_vocab_size": draw(type_vocab_sizes),
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "layer_norm_eps": 1e-12,
        }

    return build()


def max_sequence_length(config: dict) -> int:
    """Longest sequence RoBERTa position ids allow: ``max_position_embeddings - pad - 1``."""
    return int(config["max_position_embeddings"]) - int(config.get("pad_token_id", 1)) - 1


def input_batches(config: dict, *, max_batch: int = 3, max_len: Optional[int] = None, min_len: int = 1):
    """``(input_ids, attention_mask)``: int64 (B, T), right-padded with ``pad_token_id``.

    Real tokens are any id in ``[0, vocab)`` except the pad id (a pad id inside a sequence
    would get a padding position id, as in transformers). Each row has ``min_len..T`` real
    tokens; ``T <= max_len`` (default: the longest sequence the positions allow, capped at 12).
    """
    pad = int(config.get("pad_token_id", 1))
    vocab = int(config["vocab_size"])
    cap = max_sequence_length(config)
    max_len = min(cap, 12) if max_len is None else min(max_len, cap)
    token = st.integers(0, vocab - 1).filter(lambda t: t != pad)

    @st.composite
    def build(draw):
        return pad_rows(
            draw(st.lists(st.lists(token, min_size=min_len, max_size=max_len), min_size=1, max_size=max_batch)), pad
        )

    return build()


def _gelu_f64(x):
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _layernorm_f64(x, gamma, beta, eps=1e-12):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _float64_block(f, ops, env, mask, heads, seen):
    """One block of :mod:`ibert_ref.dataflow` in float64 (float GELU, softmax and LayerNorm; weights
    ``f``): ``seen(name, x, mask)`` is called with each QuantAct's input (``x`` plus its residual
    identity; not the softmax's, whose range is set from its score scale). Returns the block output."""
    real = np.asarray(mask).astype(bool)

    def split(a):
        b, t, h = a.shape
        return a.reshape(b, t, heads, h // heads).transpose(0, 2, 1, 3)

    for op in ops:
        a = [env[n] for n in op.sources]
        k = op.kernel
        if k == "quant_embedding":
            out = f[op.module + ".weight"][a[0]]
        elif k == "requantize":
            out = a[0] if len(a) == 1 else a[0] + a[1]
            seen(op.module, out, mask)
        elif k == "quant_linear":
            out = a[0] @ f[op.module + ".weight"].T + f[op.module + ".bias"]
        elif k == "attention_scores":
            hd = a[0].shape[-1] // heads
            bias = np.where(real, 0.0, -1e9)[:, None, None, :]
            out = split(a[0]) @ split(a[1]).transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        elif k == "int_exp":
            out = np.exp(a[0] - a[0].max(axis=-1, keepdims=True))
        elif k == "softmax_normalize":
            out = a[0] / a[0].sum(axis=-1, keepdims=True)
        elif k == "attention_context":
            ctx = a[0] @ split(a[1])
            b, t = a[1].shape[:2]
            out = ctx.transpose(0, 2, 1, 3).reshape(b, t, a[1].shape[-1])
        elif k == "int_gelu":
            out = _gelu_f64(a[0])
        elif k == "int_layernorm":
            out = _layernorm_f64(a[0], f[op.module + ".weight"], f[op.module + ".bias"])
        else:  # pragma: no cover - every kernel of the dataflow is listed
            raise KeyError(k)
        env[op.name] = out
    return env[ops[-1].name]


def _worst_case_shift(hidden: int, in_bits: int) -> int:
    """The smallest IntLayerNorm ``shift`` that keeps ``var = sum(floor(y / 2^shift)^2)`` below
    2^32 for ANY input: ``|y| < 2^in_bits`` (a ``in_bits``-wide value minus its mean), so
    ``var < D * 2^(2 (in_bits - shift))`` and ``shift >= (log2 D + 2 in_bits - 32) / 2``."""
    need = math.ceil((math.log2(hidden) + 2 * in_bits - 32) / 2)
    return max(0, need)


def make_numpy_checkpoint(config: dict, seed: int = 0, *, calib_batches: int = 4, calib_len: int = 16) -> Checkpoint:
    """A calibrated random I-BERT checkpoint built with NumPy only (no torch, no transformers).

    Weights follow the oracle builder's recipe (:mod:`ibert_ref.oracle.builders`): query/key
    weights normal(0, 0.3) (so attention is not uniform), other weights normal(0,
    1/sqrt(fan_in)), biases normal(0, 0.1), embeddings normal(0, 1) with a zero ``<pad>`` row,
    LayerNorm |gamma| uniform in [0.5, 1.5] with ~10% negative, beta normal(0, 0.3).

    Calibration: a float64 forward pass of the same network (float GELU, softmax and
    LayerNorm) over ``calib_batches`` random batches records each QuantAct's input min/max as
    its ``x_min``/``x_max`` (a plausible stand-in for transformers' fake-quant EMA). The
    softmax QuantAct gets ``x_max = c_int * 2^30`` (the largest ``exp_int``) for the score
    scale its query/key ranges give. LayerNorm ``shift`` is the worst-case-safe value of
    :func:`_worst_case_shift` (16-bit input in the embeddings, 22-bit in the layers).
    ``source`` is ``"numpy-random(seed=...)"``; ``files`` is empty.
    """
    cfg = dict(config)
    C.check_config(cfg)
    rng = np.random.default_rng(seed)
    h, nl = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads, vocab, maxpos = cfg["num_attention_heads"], cfg["vocab_size"], cfg["max_position_embeddings"]
    tv, pad = cfg.get("type_vocab_size", 1), cfg.get("pad_token_id", 1)
    hd = h // heads
    t: dict = {}

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(F32)

    def linear(name, n_out, n_in, std=None):
        t[name + ".weight"] = normal((n_out, n_in), std if std is not None else 1.0 / math.sqrt(n_in))
        t[name + ".bias"] = normal((n_out,), 0.1)

    def layernorm(name, in_bits):
        mag = rng.uniform(0.5, 1.5, h)
        sign = np.where(rng.uniform(size=h) < 0.1, -1.0, 1.0)
        t[name + ".weight"] = (mag * sign).astype(F32)
        t[name + ".bias"] = normal((h,), 0.3)
        t[name + ".shift"] = np.array([_worst_case_shift(h, in_bits)], dtype=F32)

    emb_ops = D.block_ops(None)
    tables = {op.inputs[0]: op.module for op in emb_ops if op.kernel == "quant_embedding"}
    for ids_name, rows in ((D.INPUT_IDS, vocab), (D.POSITION_IDS, maxpos), (D.TOKEN_TYPE_IDS, tv)):
        t[tables[ids_name] + ".weight"] = normal((rows, h), 1.0)
        if ids_name != D.TOKEN_TYPE_IDS:
            t[tables[ids_name] + ".weight"][pad] = 0
    for i in [None] + list(range(nl)):
        ops = D.block_ops(i)
        by_name = {op.name: op for op in ops}
        scores = next(op for op in ops if op.kernel == "attention_scores") if i is not None else None
        qk = {by_name[a].inputs[0] for a in scores.inputs} if scores is not None else set()
        for op in ops:
            if op.kernel == "quant_linear":
                out_dim, in_dim = op.weight_shape(cfg)
                linear(op.module, out_dim, in_dim, std=0.3 if op.name in qk else None)
            elif op.kernel == "int_layernorm":
                layernorm(op.module, D.quant_act_bits(op.inputs[0]))
    linear("pooler.dense", h, h)

    # ---- calibration: float64 forward, min/max of every QuantAct input --------------------
    lo: dict = {}
    hi: dict = {}

    def seen(name, x, mask=None):
        v = x if mask is None else x[mask.astype(bool)]
        lo[name] = min(lo.get(name, np.inf), float(v.min()))
        hi[name] = max(hi.get(name, -np.inf), float(v.max()))

    maxlen = max(1, min(calib_len, maxpos - pad - 1))
    f = {k: v.astype(np.float64) for k, v in t.items()}
    for _ in range(calib_batches):
        lens = rng.integers(1, maxlen + 1, size=4)
        ids = np.full((4, lens.max()), pad, dtype=np.int64)
        for r, n in enumerate(lens):
            ids[r, :n] = rng.choice([x for x in range(vocab) if x != pad], size=n)
        mask = (ids != pad).astype(np.int64)
        pos = np.cumsum(mask, axis=1) * mask + pad
        tt = rng.integers(0, tv, size=ids.shape)
        env = {D.INPUT_IDS: ids, D.POSITION_IDS: pos, D.TOKEN_TYPE_IDS: tt, D.ATTENTION_MASK: mask}
        x = _float64_block(f, emb_ops, env, mask, heads, seen)
        for i in range(nl):
            x = _float64_block(f, D.block_ops(i), {D.LAYER_INPUT: x, D.ATTENTION_MASK: mask}, mask, heads, seen)

    for name in lo:
        t[name + ".x_min"] = np.array([lo[name]], dtype=F32)
        t[name + ".x_max"] = np.array([hi[name]], dtype=F32)
    for i in range(nl):
        ops = D.block_ops(i)
        q_act, k_act = next(op for op in ops if op.kernel == "attention_scores").inputs
        exp_act = next(op for op in ops if op.kernel == "int_exp").module
        s_q = symmetric_scale_f32(8, t[q_act + ".x_min"], t[q_act + ".x_max"])
        s_k = symmetric_scale_f32(8, t[k_act + ".x_min"], t[k_act + ".x_max"])
        s = (s_q * s_k) / F32(math.sqrt(hd))
        c_int = np.floor(C.rdiv_f32(C.SOFTMAX_COEF[2], s * s))
        t[exp_act + ".x_min"] = np.zeros(1, dtype=F32)
        t[exp_act + ".x_max"] = (c_int.astype(np.float64) * 2.0**30).astype(F32)
    return Checkpoint(config=cfg, tensors=t, source=f"numpy-random(seed={seed})", files=[])


def save_checkpoint(checkpoint: Checkpoint, folder) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (float32) into ``folder``; returns it."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(checkpoint.config, indent=2))
    save_file({k: np.ascontiguousarray(v) for k, v in checkpoint.tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "np"})
    return folder


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


@functools.lru_cache(maxsize=64)
def _cached_numpy_checkpoint(config_json: str, seed: int) -> Checkpoint:
    return make_numpy_checkpoint(json.loads(config_json), seed)


@functools.lru_cache(maxsize=8)
def _cached_oracle_folder(config_json: str, seed: int) -> str:
    import tempfile

    from .oracle.builders import make_calibrated_ibert  # needs torch + transformers

    cfg = json.loads(config_json)
    folder = Path(tempfile.mkdtemp(prefix="ibert-ref-oracle-"))
    make_calibrated_ibert(
        folder,
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        intermediate_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg["max_position_embeddings"],
        type_vocab_size=cfg.get("type_vocab_size", 1),
        seed=seed,
        check_reload=False,
    )
    return str(folder)


def checkpoints(configs=None, seeds=st.integers(0, 2**16), *, source: str = "numpy"):
    """Calibrated checkpoints: ``source="numpy"`` (:func:`make_numpy_checkpoint`, fast, no torch)
    or ``"oracle"`` (transformers' own train-mode calibration via the oracle builder; needs the
    ``verify`` extra, several seconds per model). Built checkpoints are cached per
    (config, seed), so keep ``seeds`` small for oracle models."""
    from .loading import load_checkpoint

    configs = ibert_configs() if configs is None else configs
    if source not in ("numpy", "oracle"):
        raise ValueError(f"source must be 'numpy' or 'oracle', got {source!r}")

    def build(config, seed):
        if source == "numpy":
            return _cached_numpy_checkpoint(_config_key(config), seed)
        return load_checkpoint(_cached_oracle_folder(_config_key(config), seed))

    return st.builds(build, configs, seeds)


def calibrated_models(configs=None, seeds=st.integers(0, 2**16), *, datapath="exact", source: str = "numpy"):
    """Compiled :class:`~ibert_ref.model.IBertModel` objects for drawn configs and seeds.

    ``datapath``: a name, or a strategy of names (e.g. :func:`datapath_names`). Use
    ``model.config`` with :func:`input_batches` to draw matching inputs (``st.data()``).
    """
    from .model import IBertModel

    names = datapath if isinstance(datapath, st.SearchStrategy) else st.just(datapath)
    return st.builds(
        lambda ckpt, name: IBertModel.from_checkpoint(ckpt, datapath=name),
        checkpoints(configs, seeds, source=source),
        names,
    )
