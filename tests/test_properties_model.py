"""Model-level properties on random calibrated checkpoints (NumPy-built, no torch needed).

* The transformers datapath (float32 emulation) and the exact datapath agree on layer 0
  wherever float32 / float64 hold the values exactly (below 2^24 / 2^53): end to end up to the
  embeddings' IntLayerNorm, and op by op after it when both are fed the same integers.
* Inside a model, attention probabilities obey the kernel-level bounds, masked keys get
  exactly 0, and every registered datapath runs every model.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ibert_ref import kernels as K
from ibert_ref import strategies as S
from ibert_ref.datapath import make_datapath
from ibert_ref.model import IBertModel

F24 = 1 << 24  # float32 holds every integer below this exactly
F64_EXACT_Z = 1 << 22  # |z| < 2^22 and |m| <= 2^31 keep z * m < 2^53 (exact in float64)


def scaled(fraction: float, minimum: int = 5):
    """Settings with ``fraction`` of the active profile's max_examples (expensive tests)."""
    return settings(max_examples=max(minimum, int(settings().max_examples * fraction)))


def both_datapaths(ckpt):
    return IBertModel.from_checkpoint(ckpt, datapath="exact"), IBertModel.from_checkpoint(ckpt, datapath="transformers")


# ---------------------------------------------------------------------------------------
# transformers vs exact on layer 0
EMBEDDING_OPS_BEFORE_LAYERNORM = (
    "embeddings.word_embeddings",
    "embeddings.token_type_embeddings",
    "embeddings.position_embeddings",
    "embeddings.embeddings_act1",
)


@scaled(0.5)
@given(st.data())
def test_embeddings_agree_between_transformers_and_exact_up_to_the_first_layernorm(data):
    """Lookups and the 16-bit embeddings QuantAct: every value is below 2^16 and each
    requantization product below 2^53, so float32 emulation and exact integers agree bit for bit."""
    ckpt = data.draw(S.checkpoints())
    ids, mask = data.draw(S.input_batches(ckpt.config))
    exact, tf = both_datapaths(ckpt)
    a = exact(ids, mask, return_trace=True).trace
    b = tf(ids, mask, return_trace=True).trace
    for name in EMBEDDING_OPS_BEFORE_LAYERNORM:
        assert np.array_equal(a[name], b[name]), name


L0 = "encoder.layer.0."


def layer0_replays(p, nh):
    """Layer-0 ops whose float32 emulation is exact for inputs below 2^22, as
    ``name -> (kernel(dp, params, q) -> QTensor, [input trace names])``. Excluded on purpose:
    IntLayerNorm (y * factor ~ 2^31..2^33), IntGELU (~2^40), the softmax QuantAct (its float32
    input exp_int / exp_scale is ~2^50, transformers#26767), softmax normalisation (e * factor
    up to 2^32) and the QuantActs that read LayerNorm / GELU outputs (inputs above 2^24)."""
    sa, ao = L0 + "attention.self.", L0 + "attention.output."

    def lin(name):
        return lambda dp, lp, x: K.quant_linear(dp, x[0], getattr(lp, name))

    def act(name, with_identity=False):
        return lambda dp, lp, x: K.requantize(dp, x[0], getattr(lp, name), identity=x[1] if with_identity else None)

    def context_act(dp, lp, x):
        ctx = dp.attention_context(x[0], x[1], nh, lp.context_scale)
        return K.requantize(dp, ctx, lp.self_output_activation)

    h = "embeddings.output_activation"
    return {
        sa + "query": (lin("query"), [h]),
        sa + "key": (lin("key"), [h]),
        sa + "value": (lin("value"), [h]),
        sa + "query_activation": (act("query_activation"), [sa + "query"]),
        sa + "key_activation": (act("key_activation"), [sa + "key"]),
        sa + "value_activation": (act("value_activation"), [sa + "value"]),
        sa + "output_activation": (context_act, [sa + "softmax", sa + "value_activation"]),
        ao + "dense": (lin("attn_dense"), [sa + "output_activation"]),
        ao + "ln_input_act": (act("attn_ln_input_act", True), [ao + "dense", h]),
        L0 + "pre_intermediate_act": (act("pre_intermediate_act"), [ao + "output_activation"]),
        L0 + "intermediate.dense": (lin("intermediate_dense"), [L0 + "pre_intermediate_act"]),
        L0 + "pre_output_act": (act("pre_output_act"), [L0 + "intermediate.output_activation"]),
        L0 + "output.dense": (lin("output_dense"), [L0 + "pre_output_act"]),
        L0 + "output.ln_input_act": (act("output_ln_input_act", True), [L0 + "output.dense", L0 + "pre_intermediate_act"]),
    }


@scaled(0.5)
@given(st.data())
def test_layer0_ops_agree_between_transformers_and_exact_when_fed_the_same_integers_below_2_22(data):
    """Each layer-0 op in :func:`layer0_replays`, fed the exact model's input integers (all
    below 2^22) on both datapaths, gives identical integers. Layer 0 is compiled for the same
    input scale on both datapaths (the stale-scale difference starts at layer 1), which is
    checked too. Replaying on the exact datapath must also reproduce its own trace."""
    ckpt = data.draw(S.checkpoints())
    ids, mask = data.draw(S.input_batches(ckpt.config))
    exact, tf = both_datapaths(ckpt)
    out = exact(ids, mask, return_trace=True)
    trace, meta = out.trace, out.trace_meta
    tf_meta = tf(ids, mask, return_trace=True).trace_meta
    nh = ckpt.config["num_attention_heads"]
    for name, (op, inputs) in layer0_replays(exact.compiled.layers[0], nh).items():
        assert np.array_equal(meta[name].scale, tf_meta[name].scale), name
        assume(all(np.abs(trace[i].astype(np.int64)).max() < F64_EXACT_Z for i in inputs))
        results = []
        for model in (exact, tf):
            dp = model.datapath
            xs = [dp.emit(trace[i].astype(np.int64), meta[i].scale) for i in inputs]
            results.append(dp.integers(op(dp, model.compiled.layers[0], xs)))
        assert np.array_equal(results[0], trace[name]), f"{name}: replay differs from the exact trace"
        assert np.abs(results[0]).max() < F24
        assert np.array_equal(results[0], results[1]), f"{name}: transformers and exact differ"


# ---------------------------------------------------------------------------------------
# Inside a model
@scaled(0.5)
@given(st.data())
def test_attention_rows_of_a_model_sum_to_256_within_the_floor_bound_and_masked_keys_get_0(data):
    """For every layer, head and real query token: ``256 - n_nz - S / 2^24 < sum(p) <= 256``
    (see the kernel test), masked keys' 16-bit exponentials and probabilities are exactly 0."""
    ckpt = data.draw(S.checkpoints())
    ids, mask = data.draw(S.input_batches(ckpt.config))
    exact = IBertModel.from_checkpoint(ckpt)
    trace = exact(ids, mask, return_trace=True).trace
    keys_masked = ~mask.astype(bool)[:, None, None, :]
    for i in range(ckpt.config["num_hidden_layers"]):
        sa = f"encoder.layer.{i}.attention.self."
        e16, probs = trace[sa + "softmax.act"].astype(np.int64), trace[sa + "softmax"].astype(np.int64)
        assert np.all(np.where(keys_masked, e16, 0) == 0) and np.all(np.where(keys_masked, probs, 0) == 0)
        total, s_sum, n_nz = probs.sum(-1), e16.sum(-1), (e16 > 0).sum(-1)
        assert np.all(total <= 256) and np.all(total > 256 - n_nz - s_sum / 2.0**24)


@scaled(0.25)
@given(st.data())
def test_every_registered_datapath_runs_every_calibrated_model(data):
    """Names come from ``available_datapaths()`` (hardware profiles included once registered):
    the output is (B, T, H) float32 with int8 integers behind it."""
    ckpt = data.draw(S.checkpoints())
    name = data.draw(S.datapath_names())
    ids, mask = data.draw(S.input_batches(ckpt.config))
    out = IBertModel.from_checkpoint(ckpt, datapath=name)(ids, mask)
    b, t = ids.shape
    assert out.last_hidden_state.shape == (b, t, ckpt.config["hidden_size"])
    assert out.last_hidden_state.dtype == np.float32 and np.isfinite(out.last_hidden_state).all()
    assert out.last_hidden_state_int.dtype == np.int8


@scaled(0.5)
@given(st.data(), st.integers(12, 32), st.sampled_from(["wrap", "saturate"]), st.sampled_from([None, 4, 16, 32]))
def test_wrap_and_saturate_accumulators_agree_with_exact_whenever_no_overflow_is_reported(data, acc_bits, overflow,
                                                                                           k_step):
    """The ``generic`` hardware profile with narrow GEMM accumulators (12-32 bits, wrapping or
    saturating, any k-chunking) and every other step exact: a run that reports no overflow
    event gives the exact datapath's integers at every op; a run that does report one names
    only GEMM accumulators (QuantLinear, ``Q K^T``, ``P V``: the only narrowed registers)."""
    ckpt = data.draw(S.checkpoints())
    ids, mask = data.draw(S.input_batches(ckpt.config))
    dp = make_datapath("generic", acc_bits=acc_bits, overflow=overflow, k_step=k_step)
    out = IBertModel.from_checkpoint(ckpt, datapath=dp)(ids, mask, return_trace=True)
    ref = IBertModel.from_checkpoint(ckpt)(ids, mask, return_trace=True).trace
    if out.overflow_events:
        families = {e.family for e in out.overflow_events}
        assert families <= {"linear", "scores", "context"}, families
        return
    assert out.trace.keys() == ref.keys()
    for name in ref:
        assert np.array_equal(out.trace[name], ref[name]), name


@scaled(0.25)
@given(S.calibrated_models(), st.data())
def test_calibrated_models_from_the_strategy_use_their_int8_range(model, data):
    """The NumPy calibration gives ranges the integer model actually uses: the final int8
    output spans more than a quarter of [-128, 127] (not saturated to a constant, not stuck
    near 0), and attention is not uniform everywhere."""
    ids, mask = data.draw(S.input_batches(model.config, min_len=4))
    out = model(ids, mask, return_trace=True)
    q = out.last_hidden_state_int.astype(np.int64)
    assert q.max() - q.min() > 64
    probs = out.trace["encoder.layer.0.attention.self.softmax"]
    assert probs.max() > probs[probs > 0].min()


ORACLE_CONFIG = {
    "model_type": "ibert", "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1,
    "intermediate_size": 32, "vocab_size": 40, "max_position_embeddings": 20, "type_vocab_size": 1,
    "pad_token_id": 1, "quant_mode": True, "hidden_act": "gelu", "force_dequant": "none",
}


@pytest.mark.oracle
def test_oracle_calibrated_checkpoints_work_with_the_same_strategies():
    """``checkpoints(source="oracle")`` (transformers' own train-mode calibration, one fixed
    small model) feeds the same input strategy and model; skipped without the verify extra."""
    pytest.importorskip("transformers")

    @settings(max_examples=3, database=None)
    @given(S.checkpoints(st.just(ORACLE_CONFIG), st.just(0), source="oracle"), st.data())
    def check(ckpt, data):
        ids, mask = data.draw(S.input_batches(ckpt.config))
        out = IBertModel.from_checkpoint(ckpt)(ids, mask, return_trace=True)
        assert out.last_hidden_state.shape == (*ids.shape, 16)
        probs = out.trace["encoder.layer.0.attention.self.softmax"].astype(np.int64)
        assert np.all(probs.sum(-1) <= 256)

    check()
