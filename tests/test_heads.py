"""The five I-BERT task heads against transformers (the oracle), and the integer heads.

Each head is built by transformers on a tiny calibrated config and run on a right-padded
batch. In the transformers datapath with torch's GEMMs (``gemm="torch"``) every logit,
every loss, every hidden state / attention and every trace entry equals transformers' bit
for bit; ``return_dict=False`` gives transformers' tuple. Loading rules (task checkpoints,
base-into-head refusal) and the integer heads' error are checked too.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ibert_ref import IBertModel  # noqa: E402
from ibert_ref import heads as H  # noqa: E402
from ibert_ref.compile import CompileError  # noqa: E402
from ibert_ref.datapath import make_datapath  # noqa: E402
from ibert_ref.float_ops import FloatLayerNormParams, FloatOps, TorchFloatOps  # noqa: E402
from ibert_ref.integer_heads import TANH_FRAC_BITS, compare_logits, int_tanh, tanh_params  # noqa: E402
from ibert_ref.loading import CheckpointError  # noqa: E402
from ibert_ref.oracle.builders import make_calibrated_ibert  # noqa: E402
from ibert_ref.oracle.capture import capture_transformers_trace  # noqa: E402

pytestmark = pytest.mark.oracle

VOCAB = 96
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, vocab_size=VOCAB,
            calib_batches=3, calib_max_len=16, seed=11)
BUILDS = {
    "IBertForSequenceClassification": dict(num_labels=3),
    "IBertForMaskedLM": dict(),
    "IBertForTokenClassification": dict(num_labels=5),
    "IBertForQuestionAnswering": dict(),
    "IBertForMultipleChoice": dict(),
}
CLASSES = sorted(BUILDS)


def padded_batch(rows=3, seq=10, seed=0):
    """ids with <s> first, right padding of different lengths (one row unpadded), and the mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, size=(rows, seq))
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    for r, n in enumerate(np.linspace(seq, 3, rows).astype(int)):
        ids[r, n - 1] = 2
        ids[r, n:] = 1
        mask[r, n:] = 0
    return ids, mask


def inputs_for(cls_name, seed=0):
    """(ids, mask) — (B, 2 choices, T) for multiple choice — and the labels kwargs."""
    ids, mask = padded_batch(seed=seed)
    rng = np.random.default_rng(seed + 100)
    b, t = ids.shape
    if cls_name == "IBertForMultipleChoice":
        ids, mask = np.stack([ids, ids[::-1]], 1), np.stack([mask, mask[::-1]], 1)
        return ids, mask, dict(labels=rng.integers(0, 2, size=b))
    if cls_name == "IBertForSequenceClassification":
        return ids, mask, dict(labels=rng.integers(0, 3, size=b))
    if cls_name == "IBertForQuestionAnswering":
        # one start beyond the sequence: clamped to T and ignored, as transformers does
        return ids, mask, dict(start_positions=np.array([1, t + 7, 3]), end_positions=np.array([2, 4, 0]))
    n = VOCAB if cls_name == "IBertForMaskedLM" else 5
    labels = rng.integers(0, n, size=(b, t))
    labels[mask == 0] = -100
    return ids, mask, dict(labels=labels)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = {}
    for name, kw in BUILDS.items():
        folder = tmp_path_factory.mktemp(name)
        model, _ = make_calibrated_ibert(folder, model_class=name, **TINY, **kw)
        out[name] = (model, folder)
    return out


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    model, _ = make_calibrated_ibert(folder, model_class="IBertForSequenceClassification", num_labels=1, **TINY)
    return model, folder


def run_transformers(model, ids, mask, labels, **kw):
    model.config.problem_type = None  # transformers writes the inferred problem type back
    t = {k: torch.as_tensor(v) for k, v in labels.items()}
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), **t, **kw)


def ours_torch(cls_name, folder, **kw):
    return getattr(H, cls_name).from_pretrained(str(folder), datapath="transformers", gemm="torch", **kw)


def logit_fields(cls_name):
    return ("start_logits", "end_logits") if cls_name == "IBertForQuestionAnswering" else ("logits",)


# ---------------------------------------------------------------------------------------
# bit-exactness with transformers
@pytest.mark.parametrize("cls_name", CLASSES)
def test_logits_loss_hidden_states_attentions_bit_equal(built, cls_name):
    model, folder = built[cls_name]
    ids, mask, labels = inputs_for(cls_name)
    theirs = run_transformers(model, ids, mask, labels, output_hidden_states=True, output_attentions=True)
    ours = ours_torch(cls_name, folder)(ids, attention_mask=mask, **labels, output_hidden_states=True, output_attentions=True)
    for f in logit_fields(cls_name):
        np.testing.assert_array_equal(getattr(ours, f), getattr(theirs, f).numpy(), err_msg=f)
    assert ours.loss.dtype == np.float32 and np.isfinite(ours.loss)
    np.testing.assert_array_equal(ours.loss, theirs.loss.numpy())
    assert len(ours.hidden_states) == len(theirs.hidden_states) == TINY["num_hidden_layers"] + 1
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        np.testing.assert_array_equal(a, b.numpy())
    for a, b in zip(ours.attentions, theirs.attentions):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("cls_name", CLASSES)
def test_trace_entries_equal(built, cls_name):
    model, folder = built[cls_name]
    ids, mask, _ = inputs_for(cls_name)
    cap = capture_transformers_trace(model, ids, attention_mask=mask)
    ours = ours_torch(cls_name, folder)(ids, attention_mask=mask, return_trace=True)
    assert set(ours.trace) == set(cap.trace)
    for name, q in cap.trace.items():
        np.testing.assert_array_equal(ours.trace[name].astype(np.int64), q, err_msg=name)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_return_dict_false_gives_transformers_tuple(built, cls_name):
    model, folder = built[cls_name]
    ids, mask, labels = inputs_for(cls_name, seed=1)
    for with_labels in (True, False):
        lab = labels if with_labels else {}
        theirs = run_transformers(model, ids, mask, lab, output_attentions=True, return_dict=False)
        ours = ours_torch(cls_name, folder)(ids, attention_mask=mask, **lab, output_attentions=True, return_dict=False)
        assert isinstance(ours, tuple) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            if isinstance(b, tuple):
                assert all(np.array_equal(x, y.numpy()) for x, y in zip(a, b))
            else:
                np.testing.assert_array_equal(a, b.numpy())


def test_sequence_classification_problem_types(built, regression):
    ids, mask = padded_batch(seed=3)
    b = ids.shape[0]
    rng = np.random.default_rng(3)
    model, folder = built["IBertForSequenceClassification"]
    ours = ours_torch("IBertForSequenceClassification", folder)
    cases = {
        "single_label int64": rng.integers(0, 3, size=b),
        "multi_label float": (rng.random((b, 3)) > 0.5).astype(np.float32),
    }
    for what, labels in cases.items():
        theirs = run_transformers(model, ids, mask, dict(labels=labels))
        np.testing.assert_array_equal(ours(ids, attention_mask=mask, labels=labels).loss, theirs.loss.numpy(), err_msg=what)
    assert ours.problem_type(cases["multi_label float"]) == "multi_label_classification"

    # problem_type from the config: regression with 3 outputs (MSE on (B, 3))
    target = rng.normal(size=(b, 3)).astype(np.float32)
    model.config.problem_type = "regression"
    ours.config["problem_type"] = "regression"
    try:
        with torch.no_grad():
            theirs = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                           labels=torch.as_tensor(target))
        np.testing.assert_array_equal(ours(ids, attention_mask=mask, labels=target).loss, theirs.loss.numpy())
    finally:
        del ours.config["problem_type"]
        model.config.problem_type = None

    # num_labels == 1: regression, logits squeezed
    rmodel, rfolder = regression
    target = rng.normal(size=b).astype(np.float32)
    theirs = run_transformers(rmodel, ids, mask, dict(labels=target))
    out = ours_torch("IBertForSequenceClassification", rfolder)(ids, attention_mask=mask, labels=target)
    assert out.logits.shape == (b, 1)
    np.testing.assert_array_equal(out.logits, theirs.logits.numpy())
    np.testing.assert_array_equal(out.loss, theirs.loss.numpy())


def test_masked_lm_all_labels_ignored_gives_nan_like_torch(built):
    model, folder = built["IBertForMaskedLM"]
    ids, mask = padded_batch()
    labels = np.full(ids.shape, -100)
    theirs = run_transformers(model, ids, mask, dict(labels=labels))
    ours = ours_torch("IBertForMaskedLM", folder)(ids, attention_mask=mask, labels=labels)
    assert np.isnan(ours.loss) and np.isnan(theirs.loss.item())


def test_question_answering_positions_of_shape_b1_and_clamped(built):
    model, folder = built["IBertForQuestionAnswering"]
    ids, mask = padded_batch(seed=4)
    t = ids.shape[1]
    pos = dict(start_positions=np.array([[0], [-5], [t + 1]]), end_positions=np.array([[t], [2], [1]]))
    theirs = run_transformers(model, ids, mask, pos)
    ours = ours_torch("IBertForQuestionAnswering", folder)(ids, attention_mask=mask, **pos)
    np.testing.assert_array_equal(ours.loss, theirs.loss.numpy())


def test_bad_labels_raise_clear_errors(built):
    _, folder = built["IBertForTokenClassification"]
    ids, mask = padded_batch()
    model = ours_torch("IBertForTokenClassification", folder)
    with pytest.raises(ValueError, match="out of range"):
        model(ids, attention_mask=mask, labels=np.full(ids.shape, 5))
    with pytest.raises(TypeError, match="integers"):
        model(ids, attention_mask=mask, labels=np.zeros(ids.shape, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        model(ids, attention_mask=mask, labels=np.zeros((1, 2), dtype=np.int64))
    mc = ours_torch("IBertForMultipleChoice", built["IBertForMultipleChoice"][1])
    with pytest.raises(ValueError, match="num_choices"):
        mc(ids, attention_mask=mask)


# ---------------------------------------------------------------------------------------
# float ops: NumPy reproduction of torch's float32 kernels
def test_numpy_float_ops_within_an_ulp_or_two_of_torch():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(4, 7, 32)) * 3).astype(np.float32)
    np_ops, t_ops = FloatOps(), TorchFloatOps(make_datapath("transformers", gemm="torch").gemm)
    ln = FloatLayerNormParams(rng.normal(size=32).astype(np.float32), rng.normal(size=32).astype(np.float32), 1e-5)

    # about a third of GELU outputs are one ulp apart (torch's polynomial erf); in the
    # negative tail 1 + erf cancels, so compare absolutely there
    for op in ("gelu", "tanh", "softmax"):
        a, b = getattr(np_ops, op)(x), getattr(t_ops, op)(x)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=op)
        assert np.mean(a == b) >= 0.5, op
    np.testing.assert_allclose(np_ops.layer_norm(x, ln), t_ops.layer_norm(x, ln), rtol=0, atol=4e-6)
    np.testing.assert_allclose(np_ops.ibert_layernorm(x, ln), t_ops.ibert_layernorm(x, ln), rtol=0, atol=4e-6)
    logits, labels = x.reshape(-1, 32), rng.integers(0, 32, size=28)
    labels[::5] = -100
    for a, b in ((np_ops.cross_entropy(logits, labels), t_ops.cross_entropy(logits, labels)),
                 (np_ops.mse_loss(x, x[::-1]), t_ops.mse_loss(x, x[::-1])),
                 (np_ops.bce_with_logits(x, (x > 0).astype(np.float32)),
                  t_ops.bce_with_logits(x, (x > 0).astype(np.float32)))):
        np.testing.assert_allclose(a, b, rtol=2e-6)


@pytest.mark.parametrize("cls_name", ["IBertForSequenceClassification", "IBertForMaskedLM"])
def test_numpy_float_heads_close_to_torch_on_the_same_encoder_output(built, cls_name):
    """The float heads with NumPy float ops (gemm="numpy"), fed transformers' own encoder
    output, stay within float32 rounding of transformers' logits."""
    _, folder = built[cls_name]
    ids, mask, _ = inputs_for(cls_name)
    ref = ours_torch(cls_name, folder)
    enc = ref.ibert(ids, attention_mask=mask)
    np_head = getattr(H, cls_name).from_pretrained(str(folder), datapath="transformers", gemm="numpy")
    a, b = np_head.float_logits(enc), ref.float_logits(enc)
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(1.0, float(np.abs(b).max())))


# ---------------------------------------------------------------------------------------
# loading
def test_task_checkpoint_loads_into_ibert_model_with_ibert_prefix(built):
    model, folder = built["IBertForTokenClassification"]
    ids, mask = padded_batch(seed=5)
    enc = IBertModel.from_pretrained(str(folder), datapath="transformers", gemm="torch")(ids, attention_mask=mask)
    with torch.no_grad():
        theirs = model.ibert(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
    np.testing.assert_array_equal(enc.last_hidden_state, theirs.last_hidden_state.numpy())
    assert enc.pooler_output is None  # task checkpoints carry no pooler


def test_base_checkpoint_into_head_is_refused_unless_allowed():
    with pytest.raises(CheckpointError, match="allow_missing_head"):
        H.IBertForSequenceClassification.from_pretrained()  # the bundled IBertModel checkpoint
    with pytest.warns(UserWarning, match="zero placeholders"):
        model = H.IBertForSequenceClassification.from_pretrained(allow_missing_head=True)
    assert model.missing_head_keys == list(H.IBertForSequenceClassification.head_shapes(model.config))
    out = model(np.array([[0, 10, 20, 2]]))
    np.testing.assert_array_equal(out.logits, np.zeros((1, 2), np.float32))  # zero weights and biases
    with pytest.warns(UserWarning), pytest.raises(CompileError, match="integer_heads=True needs"):
        H.IBertForSequenceClassification.from_pretrained(allow_missing_head=True, integer_heads=True)


def test_base_checkpoint_pooler_serves_multiple_choice():
    """IBertModel's checkpoint has a pooler: only the classifier is missing."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = H.IBertForMultipleChoice.from_pretrained(allow_missing_head=True)
    assert model.missing_head_keys == ["classifier.weight", "classifier.bias"]
    assert any("classifier.weight" in str(w.message) for w in caught)


def test_checkpoint_of_another_head_class_is_refused(built):
    _, folder = built["IBertForSequenceClassification"]
    with pytest.raises(CheckpointError, match="classifier.weight"):
        H.IBertForTokenClassification.from_pretrained(str(folder))


# ---------------------------------------------------------------------------------------
# integer heads
def test_int_tanh_within_one_code_of_tanh_on_every_16_bit_input():
    p = tanh_params()
    x_q = np.arange(-(2**15), 2**15, dtype=np.int64)
    t = int_tanh(x_q, p)
    ref = 127 * np.tanh(x_q / 2.0**TANH_FRAC_BITS)
    assert t.min() == -127 and t.max() == 127
    assert np.max(np.abs(t - ref)) <= 1.0
    np.testing.assert_array_equal(int_tanh(-x_q[1:], p), -t[1:])  # odd
    assert np.all(np.diff(t) >= 0)  # monotone


@pytest.mark.parametrize("cls_name", CLASSES)
def test_integer_heads_are_integer_and_close_to_the_float_heads(built, cls_name):
    """Figures quoted in docs/heads.md come from this comparison (same encoder output)."""
    _, folder = built[cls_name]
    ids, mask, labels = inputs_for(cls_name)
    model = getattr(H, cls_name).from_pretrained(str(folder), datapath="transformers", integer_heads=True)
    out = model(ids, attention_mask=mask, **labels)
    assert np.issubdtype(out.logits_int.dtype, np.integer) and out.logits_scale.shape == (1,)
    assert np.isfinite(out.loss)
    enc = out.encoder
    flat = model.float_logits(enc)
    q, scale = model.int_logits(enc)
    if cls_name == "IBertForMultipleChoice":
        flat, q = flat.reshape(ids.shape[:2]), q.reshape(ids.shape[:2])
        np.testing.assert_array_equal(out.logits_int, q)
    if cls_name == "IBertForQuestionAnswering":
        # start/end argmax over the (unpadded) positions
        for k in (0, 1):
            f_k, i_k = np.where(mask, flat[..., k], -np.inf), np.where(mask, q[..., k] * scale[0], -np.inf)
            assert np.array_equal(f_k.argmax(-1), i_k.argmax(-1))
        rows = mask.astype(bool)
    else:
        rows = mask.astype(bool) if flat.ndim == 3 else None
    cmp = compare_logits(flat, q * scale, rows)
    # int8 linears: errors of the order of the int8 steps, far below the logit range
    assert cmp.max_abs_error <= 0.05 * max(1.0, cmp.max_abs_logit)
    if cmp.argmax_agreement is not None:
        assert cmp.argmax_agreement >= 0.9, cmp


@pytest.mark.parametrize("cls_name", CLASSES)
def test_heads_on_the_compiled_backend_give_the_reference_integers(built, cls_name):
    """``backend="compiled"`` on a task model: the encoder's integers (every traced op) and the
    logits (float heads, and integer heads) are those of the exact reference datapath."""
    pytest.importorskip("numba")
    from ibert_ref.datapath import ExactDatapath

    _, folder = built[cls_name]
    ids, mask, _ = inputs_for(cls_name)
    cls = getattr(H, cls_name)
    for integer_heads in (False, True):
        fast = cls.from_pretrained(str(folder), backend="compiled", integer_heads=integer_heads)
        ref = cls.from_pretrained(str(folder), datapath=ExactDatapath(), integer_heads=integer_heads)
        assert fast.ibert.datapath.backend == "compiled"
        out_fast = fast(ids, attention_mask=mask, return_trace=True)
        out_ref = ref(ids, attention_mask=mask, return_trace=True)
        for k in out_ref.trace:
            np.testing.assert_array_equal(out_fast.trace[k], out_ref.trace[k], err_msg=k)
        for field in logit_fields(cls_name):
            np.testing.assert_array_equal(getattr(out_fast, field), getattr(out_ref, field), err_msg=field)
