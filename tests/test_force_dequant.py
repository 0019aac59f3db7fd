"""``config.force_dequant`` against transformers: the named non-linearities run in float32.

transformers builds IntGELU / IntSoftmax / IntLayerNorm with ``quant_mode=False`` for
"gelu" / "softmax" / "layernorm" ("nonlinear": all three); they return a None scale and
the QuantAct that follows quantizes its float input (``SymmetricQuantFunction``, clamp
[-127, 126]). Each value is checked on a calibrated task model (a different head for each
value, the multiple-choice head with "nonlinear" too): logits, loss, attentions and every
trace entry bit-equal in the transformers datapath with torch's kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ibert_ref import IBertModel  # noqa: E402
from ibert_ref import heads as H  # noqa: E402
from ibert_ref.compile import CompileError, dequantized_ops  # noqa: E402
from ibert_ref.oracle.builders import make_calibrated_ibert  # noqa: E402
from ibert_ref.oracle.capture import capture_transformers_trace, expected_module_names  # noqa: E402

pytestmark = pytest.mark.oracle

VOCAB = 96
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, vocab_size=VOCAB,
            calib_batches=3, calib_max_len=16, seed=5)
#: force_dequant value -> the head class it is tested on (each head appears at least once)
CASES = {
    "gelu": "IBertForMaskedLM",
    "softmax": "IBertForTokenClassification",
    "layernorm": "IBertForQuestionAnswering",
    "nonlinear": "IBertForSequenceClassification",
    "nonlinear-mc": "IBertForMultipleChoice",
}
#: module kinds whose trace entry disappears when the op runs in float
FLOAT_MODULES = {
    "gelu": ("intermediate.intermediate_act_fn",),
    "softmax": ("attention.self.softmax", "attention.self.softmax.act"),
    "layernorm": ("LayerNorm",),
}


def padded_batch(seed=0, rows=3, seq=10):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, size=(rows, seq))
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    for r, n in enumerate(np.linspace(seq, 3, rows).astype(int)):
        ids[r, n:] = 1
        mask[r, n:] = 0
    return ids, mask


def inputs_and_labels(cls_name):
    ids, mask = padded_batch()
    b, t = ids.shape
    rng = np.random.default_rng(1)
    if cls_name == "IBertForMultipleChoice":
        return np.stack([ids, ids[::-1]], 1), np.stack([mask, mask[::-1]], 1), dict(labels=rng.integers(0, 2, b))
    if cls_name == "IBertForSequenceClassification":
        return ids, mask, dict(labels=rng.integers(0, 2, b))
    if cls_name == "IBertForQuestionAnswering":
        return ids, mask, dict(start_positions=np.array([1, 2, 3]), end_positions=np.array([3, t + 2, 4]))
    labels = rng.integers(0, VOCAB if cls_name == "IBertForMaskedLM" else 2, size=(b, t))
    labels[mask == 0] = -100
    return ids, mask, dict(labels=labels)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    fd = request.param.split("-")[0]
    cls_name = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    model, _ = make_calibrated_ibert(folder, model_class=cls_name, force_dequant=fd, **TINY)
    ids, mask, labels = inputs_and_labels(cls_name)
    with torch.no_grad():
        theirs = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), output_attentions=True,
                       output_hidden_states=True, **{k: torch.as_tensor(v) for k, v in labels.items()})
    capture = capture_transformers_trace(model, ids, attention_mask=mask)
    return dict(fd=fd, cls_name=cls_name, folder=folder, ids=ids, mask=mask, labels=labels, theirs=theirs,
                capture=capture)


def load(case, datapath="transformers", gemm="torch"):
    return getattr(H, case["cls_name"]).from_pretrained(str(case["folder"]), datapath=datapath, gemm=gemm)


def test_logits_loss_attentions_hidden_states_bit_equal(case):
    ours = load(case)(case["ids"], attention_mask=case["mask"], **case["labels"], output_attentions=True, output_hidden_states=True)
    theirs = case["theirs"]
    fields = ("start_logits", "end_logits") if case["cls_name"] == "IBertForQuestionAnswering" else ("logits",)
    for f in fields:
        np.testing.assert_array_equal(getattr(ours, f), getattr(theirs, f).numpy(), err_msg=f)
    np.testing.assert_array_equal(ours.loss, theirs.loss.numpy())
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        np.testing.assert_array_equal(a, b.numpy())
    for a, b in zip(ours.attentions, theirs.attentions):
        np.testing.assert_array_equal(a, b.numpy())
    float_softmax = "softmax" in dequantized_ops({"force_dequant": case["fd"]})
    assert (ours.encoder.attentions_int is None) == float_softmax


def test_every_trace_entry_bit_equal_and_float_ops_untraced(case):
    ours = load(case)(case["ids"], attention_mask=case["mask"], return_trace=True)
    cap = case["capture"]
    assert set(ours.trace) == set(cap.trace)
    for name, q in cap.trace.items():
        np.testing.assert_array_equal(ours.trace[name].astype(np.int64), q, err_msg=name)
    # exactly the dequantized modules are missing from the full quant-mode list
    dropped = set(expected_module_names(2)) - set(cap.trace)
    ops = dequantized_ops({"force_dequant": case["fd"]})
    expected_dropped = {n for n in expected_module_names(2)
                        for op in ops for suffix in FLOAT_MODULES[op] if n.endswith(suffix)}
    assert dropped == expected_dropped


def test_quantact_after_a_float_op_uses_the_asymmetric_input_clamp(case):
    """SymmetricQuantFunction clamps to [-127, 126]; FixedPointMul to [-128, 127]."""
    ours = load(case)(case["ids"], attention_mask=case["mask"], return_trace=True)
    ops = dequantized_ops({"force_dequant": case["fd"]})
    after = {"gelu": "intermediate.output_activation", "softmax": "attention.self.output_activation",
             "layernorm": "output.output_activation"}
    for op in ops:
        name = f"encoder.layer.0.{after[op]}"
        q = ours.trace[name]
        assert q.min() >= -127 and q.max() <= 126, name
        np.testing.assert_array_equal(q.astype(np.int64), case["capture"].trace[name])


def test_exact_datapath_runs_and_keeps_integer_ranges(case):
    ours = load(case, datapath="exact", gemm="numpy")(case["ids"], attention_mask=case["mask"], **case["labels"], return_trace=True)
    assert set(ours.trace) == set(case["capture"].trace)
    assert np.isfinite(ours.loss)
    q = ours.trace["encoder.layer.1.output.output_activation"]
    assert q.dtype == np.int8


def test_numpy_float_ops_move_an_int8_code_by_at_most_one(case):
    """gemm="numpy": NumPy's float32 erf/exp/sums are within a few ulp of torch's (which ulp
    depends on the machine's libm/SIMD and BLAS), so the int8 code right after the first
    dequantized op can only cross one rounding boundary: every code is within 1 of
    transformers'. (How many differ is the machine's business; that none differs by more is not.)"""
    ours = load(case, gemm="numpy")(case["ids"], attention_mask=case["mask"], return_trace=True)
    name = "encoder.layer.0.attention.self.output_activation"
    diff = np.abs(ours.trace[name].astype(np.int64) - case["capture"].trace[name])
    assert diff.max() <= 1, (name, int(diff.max()))


def test_unknown_force_dequant_is_refused():
    """transformers treats any unknown string as "none"; a typo must not silently change the model."""
    with pytest.raises(CompileError, match="force_dequant='Gelu'"):
        dequantized_ops({"force_dequant": "Gelu"})
    assert dequantized_ops({"force_dequant": "nonlinear"}) == {"gelu", "softmax", "layernorm"}
    assert dequantized_ops({}) == frozenset()


def test_bundled_model_unchanged_by_force_dequant_none():
    ids = np.array([[0, 11, 12, 13, 2]])
    a = IBertModel.from_pretrained(datapath="transformers")(ids, return_trace=True)
    assert "encoder.layer.0.attention.self.softmax.act" in a.trace
