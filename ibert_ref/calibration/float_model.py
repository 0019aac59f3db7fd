"""The float I-BERT (transformers' ``quant_mode=False``) in float32 NumPy, resumable at every
QuantAct point: the reference the output-aware range search scores candidates against."""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np

from ..dataflow import ATTENTION_MASK, INPUT_IDS, LAYER_INPUT, POSITION_IDS, TOKEN_TYPE_IDS, block_ops, layer_prefix
from ..quant import F32


# ---------------------------------------------------------------------------------------
# The float model (quant_mode off), the reference of range_method="search"
SQRT_HALF = 0.7071067811865476


def erf_f32(x) -> np.ndarray:
    """``erf(x)`` in float32 (Abramowitz & Stegun 7.1.26: ``1 - t(a1 + t(a2 + ...)) exp(-x^2)``,
    ``t = 1 / (1 + p|x|)``, odd extension; absolute error < 1.5e-7 plus float32 rounding)."""
    x = np.asarray(x, dtype=F32)
    a = np.abs(x)
    t = F32(0.3275911) * a
    t += F32(1)
    np.reciprocal(t, out=t)
    poly = t * F32(1.061405429)
    for coef in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += F32(coef)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a
    np.subtract(F32(1), poly, out=poly)
    return np.copysign(poly, x)


def gelu_f32(x) -> np.ndarray:
    """Float GELU ``x / 2 * (1 + erf(x / sqrt(2)))`` (BERT's ``hidden_act="gelu"``)."""
    e = erf_f32(x * F32(SQRT_HALF))
    e += F32(1)
    e *= x
    e *= F32(0.5)
    return e


def layer_norm_f32(x, w, b, eps: float) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * w + b`` over the last axis (biased variance), float32."""
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(axis=-1, keepdims=True)
    return d / np.sqrt(var + F32(eps)) * w + b


class FloatModel:
    """The float I-BERT (transformers' ``quant_mode=False``, i.e. the float BERT/RoBERTa it came
    from) in float32 NumPy: the ops of :mod:`ibert_ref.dataflow` with float kernels
    (:meth:`kernel`), evaluated on demand so that a forward can resume from any QuantAct point.

    Activations are **packed**: ``(tokens, hidden)`` holding the real tokens (``mask`` 1) of a
    ``(batch, seq)`` batch in row-major order; only attention unpacks them (padding keys get a
    ``-1e9`` bias). ``get(key)`` returns a float32 tensor (no prefix). Dropout is off.
    """

    def __init__(self, get, config: dict):
        self.get = get
        self.heads = config["num_attention_heads"]
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.layers = config["num_hidden_layers"]
        self._w: Dict[str, np.ndarray] = {}

    def w(self, key: str) -> np.ndarray:
        if key not in self._w:
            self._w[key] = self.get(key)
        return self._w[key]

    def linear(self, name: str, x) -> np.ndarray:
        """``x W^T + b`` for packed ``x`` (one 2-D GEMM)."""
        return np.asarray(x, dtype=F32) @ self.w(name + ".weight").T + self.w(name + ".bias")

    def kernel(self, op, args, mask) -> np.ndarray:
        """The float32 counterpart of ``op``'s integer kernel on packed values: a QuantAct is the
        identity (plus its residual identity), a QuantLinear ``x W^T + b``, IntGELU the float GELU,
        IntLayerNorm LayerNorm with ``eps``, a table lookup the float table at the real tokens; the
        attention ops are ``q k^T / sqrt(d) + bias``, ``exp(s - max)``, the normalisation and
        ``P v`` per head (heads joined again)."""
        k, name, real = op.kernel, op.module, np.asarray(mask) > 0
        if k == "quant_embedding":
            return self.w(name + ".weight")[args[0][real]]
        if k == "requantize":
            return args[0] if len(args) == 1 else args[0] + args[1]
        if k == "quant_linear":
            return self.linear(name, args[0])
        if k == "int_layernorm":
            return layer_norm_f32(args[0], self.w(name + ".weight"), self.w(name + ".bias"), self.eps)
        if k == "int_gelu":
            return gelu_f32(args[0])
        if k == "attention_scores":
            bias = np.where(real[:, None, None, :], F32(0), F32(-1e9)).astype(F32)
            d = args[0].shape[-1] // self.heads
            q, k_t = self._split(args[0], real), self._split(args[1], real).transpose(0, 1, 3, 2)
            return q @ k_t / F32(math.sqrt(d)) + bias
        if k == "int_exp":
            return np.exp(args[0] - args[0].max(axis=-1, keepdims=True))
        if k == "softmax_normalize":
            return args[0] / args[0].sum(axis=-1, keepdims=True)
        if k == "attention_context":
            b, n = real.shape
            return (args[0] @ self._split(args[1], real)).transpose(0, 2, 1, 3).reshape(b, n, args[1].shape[-1])[real]
        raise KeyError(k)

    def _split(self, t, real) -> np.ndarray:
        """Packed ``(tokens, hidden)`` -> ``(batch, heads, seq, head_dim)``, zeros at padding."""
        b, n = real.shape
        hidden = t.shape[-1]
        full = np.zeros((b, n, hidden), dtype=F32)
        full[real] = t
        return full.reshape(b, n, self.heads, hidden // self.heads).transpose(0, 2, 1, 3)

    def _evaluate(self, ops, values: Dict[str, np.ndarray], mask) -> np.ndarray:
        """The block's output: each op's value from ``values`` if given there, else its float
        kernel on its inputs' values (computed on demand, each once)."""
        by_name = {op.name: op for op in ops}

        def value(name):
            if name not in values:
                op = by_name[name]
                values[name] = self.kernel(op, [value(n) for n in op.sources], mask)
            return values[name]

        return value(ops[-1].name)

    def embeddings(self, ids, tt, pos, mask) -> np.ndarray:
        """``LayerNorm(word[ids] + token_type[tt] + position[pos])`` at the real tokens (packed)."""
        values = {INPUT_IDS: ids, TOKEN_TYPE_IDS: tt, POSITION_IDS: pos, ATTENTION_MASK: mask}
        return self._evaluate(block_ops(None), values, mask)

    def layer(self, i: int, state: Dict[str, np.ndarray], mask) -> np.ndarray:
        """Encoder layer ``i``'s output from ``state``: ``"input"`` (the layer input) and,
        optionally, the outputs of some of the layer's 8-bit QuantActs (names inside the layer,
        :data:`ibert_ref.dataflow.LAYER_ACT8`), all packed. A QuantAct in ``state`` replaces the
        float value at that point; everything else is computed in float from what precedes it.
        With ``state = {"input": h}`` this is the float layer."""
        ops = block_ops(i)
        prefix = layer_prefix(i)
        values = {LAYER_INPUT: state["input"], ATTENTION_MASK: mask}
        values.update({prefix + k: v for k, v in state.items() if k != "input"})
        return self._evaluate(ops, values, mask)

    def forward(self, ids, tt, pos, mask) -> List[np.ndarray]:
        """Every encoder layer's float output at the real tokens (a list of packed float32 arrays)."""
        h = self.embeddings(ids, tt, pos, mask)
        outs = []
        for i in range(self.layers):
            h = self.layer(i, {"input": h}, mask)
            outs.append(h)
        return outs
