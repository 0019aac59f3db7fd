"""The float I-BERT (transformers' ``quant_mode=False``) in float32 NumPy, resumable at every
QuantAct point: the reference the output-aware range search scores candidates against."""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np

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
    from) in float32 NumPy, written per QuantAct point so a forward can resume from any of them.

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

    def embeddings(self, ids, tt, pos, mask) -> np.ndarray:
        """``LayerNorm(word[ids] + token_type[tt] + position[pos])`` at the real tokens (packed)."""
        e, real = "embeddings.", np.asarray(mask) > 0
        x = (self.w(e + "word_embeddings.weight")[ids[real]] + self.w(e + "token_type_embeddings.weight")[tt[real]]
             + self.w(e + "position_embeddings.weight")[pos[real]])
        return layer_norm_f32(x, self.w(e + "LayerNorm.weight"), self.w(e + "LayerNorm.bias"), self.eps)

    def attention(self, q, k, v, mask) -> np.ndarray:
        """``softmax(q k^T / sqrt(d) + bias) v`` per head, heads joined again (packed in and out)."""
        real = np.asarray(mask) > 0
        b, n = real.shape
        hidden = q.shape[-1]
        d = hidden // self.heads

        def split(t):
            full = np.zeros((b, n, hidden), dtype=F32)
            full[real] = t
            return full.reshape(b, n, self.heads, d).transpose(0, 2, 1, 3)

        bias = np.where(real[:, None, None, :], F32(0), F32(-1e9)).astype(F32)
        scores = split(q) @ split(k).transpose(0, 1, 3, 2) / F32(math.sqrt(d)) + bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        return (probs @ split(v)).transpose(0, 2, 1, 3).reshape(b, n, hidden)[real]

    def layer(self, i: int, state: Dict[str, np.ndarray], mask) -> np.ndarray:
        """Encoder layer ``i``'s output from ``state``: ``"input"`` (the layer input) and,
        optionally, the outputs of some of the layer's 8-bit QuantActs (keys of
        :data:`LAYER_SEARCHED_ACTS`), all packed. A QuantAct in ``state`` replaces the float
        value at that point; everything else is computed in float from what precedes it. With
        ``state = {"input": h}`` this is the float layer."""
        p = f"encoder.layer.{i}."
        h = state["input"]

        def at(act, compute):
            return state[act] if act in state else compute()

        q = at("attention.self.query_activation", lambda: self.linear(p + "attention.self.query", h))
        k = at("attention.self.key_activation", lambda: self.linear(p + "attention.self.key", h))
        v = at("attention.self.value_activation", lambda: self.linear(p + "attention.self.value", h))
        ctx = at("attention.self.output_activation", lambda: self.attention(q, k, v, mask))
        a = at("attention.output.output_activation", lambda: layer_norm_f32(
            self.linear(p + "attention.output.dense", ctx) + h, self.w(p + "attention.output.LayerNorm.weight"),
            self.w(p + "attention.output.LayerNorm.bias"), self.eps))
        a = at("pre_intermediate_act", lambda: a)
        f = at("intermediate.output_activation", lambda: gelu_f32(self.linear(p + "intermediate.dense", a)))
        f = at("pre_output_act", lambda: f)
        return at("output.output_activation", lambda: layer_norm_f32(
            self.linear(p + "output.dense", f) + a, self.w(p + "output.LayerNorm.weight"),
            self.w(p + "output.LayerNorm.bias"), self.eps))

    def forward(self, ids, tt, pos, mask) -> List[np.ndarray]:
        """Every encoder layer's float output at the real tokens (a list of packed float32 arrays)."""
        h = self.embeddings(ids, tt, pos, mask)
        outs = []
        for i in range(self.layers):
            h = self.layer(i, {"input": h}, mask)
            outs.append(h)
        return outs
