"""Config and call options of I-BERT against transformers (the oracle) and their documented
semantics: output_attentions (integer probabilities and their scale), output_hidden_states,
position_ids, token_type_ids with type_vocab_size > 1, inputs_embeds (and transformers'
token-type quirk), head_mask (dropped by transformers 5: emulated there with hooks),
hidden_act, and the ``ibert.`` prefix of task checkpoints.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ibert_ref import IBertModel  # noqa: E402
from ibert_ref.compile import CompileError  # noqa: E402
from ibert_ref.oracle.builders import make_calibrated_ibert  # noqa: E402
from ibert_ref.oracle.capture import capture_transformers_trace  # noqa: E402

pytestmark = pytest.mark.oracle

VOCAB = 96
LAYERS, HEADS = 2, 2
TINY = dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=48,
            vocab_size=VOCAB, calib_batches=3, calib_max_len=16, seed=9)


def padded_batch(seed=0, rows=3, seq=10):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, VOCAB, size=(rows, seq))
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    for r, n in enumerate(np.linspace(seq, 3, rows).astype(int)):
        ids[r, n:] = 1
        mask[r, n:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def two_types(tmp_path_factory):
    """A calibrated IBertModel with type_vocab_size=2, ours (torch GEMMs) and a padded batch."""
    folder = tmp_path_factory.mktemp("two-types")
    model, _ = make_calibrated_ibert(folder, type_vocab_size=2, **TINY)
    ids, mask = padded_batch()
    token_types = (np.arange(ids.shape[1])[None, :] >= 4).astype(np.int64).repeat(ids.shape[0], 0)
    ours = IBertModel.from_pretrained(str(folder), datapath="transformers", gemm="torch")
    return dict(model=model, folder=folder, ours=ours, ids=ids, mask=mask, token_types=token_types)


@pytest.fixture(scope="module")
def float_softmax(tmp_path_factory):
    folder = tmp_path_factory.mktemp("float-softmax")
    model, _ = make_calibrated_ibert(folder, force_dequant="softmax", **TINY)
    return dict(model=model, ours=IBertModel.from_pretrained(str(folder), datapath="transformers", gemm="torch"))


def t(a):
    return None if a is None else torch.as_tensor(a)


def run_transformers(model, **kw):
    with torch.no_grad():
        return model(**{k: t(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()})


# ---------------------------------------------------------------------------------------
def test_output_attentions_integer_probabilities_and_scale(two_types):
    c = two_types
    theirs = run_transformers(c["model"], input_ids=c["ids"], attention_mask=c["mask"], output_attentions=True)
    ours = c["ours"](c["ids"], c["mask"], output_attentions=True)
    assert len(ours.attentions) == len(ours.attentions_int) == LAYERS
    for p, q, s, ref in zip(ours.attentions, ours.attentions_int, ours.attentions_scale, theirs.attentions):
        np.testing.assert_array_equal(p, ref.numpy())
        assert q.dtype == np.int16 and q.min() >= 0 and q.max() <= 256
        assert s.item() == 2.0**-8
        np.testing.assert_array_equal(q.astype(np.float32) * s, p)
        padded_keys = np.broadcast_to((c["mask"] == 0)[:, None, None, :], q.shape)
        assert np.all(q[padded_keys] == 0)


def test_output_hidden_states_values_codes_and_scales(two_types):
    c = two_types
    theirs = run_transformers(c["model"], input_ids=c["ids"], attention_mask=c["mask"], output_hidden_states=True)
    ours = c["ours"](c["ids"], c["mask"], output_hidden_states=True)
    assert len(ours.hidden_states) == LAYERS + 1
    for h, q, s, ref in zip(ours.hidden_states, ours.hidden_states_int, ours.hidden_states_scale,
                            theirs.hidden_states):
        np.testing.assert_array_equal(h, ref.numpy())
        assert q.dtype == np.int8
        np.testing.assert_array_equal(q.astype(np.float32) * s, h)


def test_position_ids_and_token_type_ids_bit_equal(two_types):
    c = two_types
    positions = np.arange(c["ids"].shape[1])[None, :].repeat(3, 0) + 5
    theirs = run_transformers(c["model"], input_ids=c["ids"], attention_mask=c["mask"],
                              token_type_ids=c["token_types"], position_ids=positions)
    ours = c["ours"](c["ids"], c["mask"], token_type_ids=c["token_types"], position_ids=positions)
    np.testing.assert_array_equal(ours.last_hidden_state, theirs.last_hidden_state.numpy())
    np.testing.assert_array_equal(ours.pooler_output, theirs.pooler_output.numpy())
    cap = capture_transformers_trace(c["model"], c["ids"], attention_mask=c["mask"],
                                     token_type_ids=c["token_types"], position_ids=positions)
    trace = c["ours"](c["ids"], c["mask"], token_type_ids=c["token_types"], position_ids=positions,
                      return_trace=True).trace
    for name, q in cap.trace.items():
        np.testing.assert_array_equal(trace[name].astype(np.int64), q, err_msg=name)
    # the second segment really is embedded differently
    zero = c["ours"](c["ids"], c["mask"], position_ids=positions)
    assert not np.array_equal(zero.last_hidden_state, ours.last_hidden_state)
    with pytest.raises(ValueError, match="token_type_ids"):
        c["ours"](c["ids"], c["mask"], token_type_ids=c["token_types"] * 2)


def test_inputs_embeds_bit_equal_with_transformers_quirk(two_types):
    """transformers quantizes inputs_embeds on embeddings_act1's input path, which drops the
    token-type identity: token types have no effect. The transformers datapath reproduces
    it; the exact datapath adds the token-type embedding as I-BERT intends."""
    c = two_types
    embeds = (c["model"].embeddings.word_embeddings.weight.detach().numpy()[c["ids"]] * 0.9).astype(np.float32)
    theirs = run_transformers(c["model"], inputs_embeds=embeds, attention_mask=c["mask"],
                              token_type_ids=c["token_types"], output_hidden_states=True)
    ours = c["ours"](inputs_embeds=embeds, attention_mask=c["mask"], token_type_ids=c["token_types"],
                     output_hidden_states=True, return_trace=True)
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        np.testing.assert_array_equal(a, b.numpy())
    np.testing.assert_array_equal(ours.pooler_output, theirs.pooler_output.numpy())
    assert "embeddings.word_embeddings" not in ours.trace
    no_types = c["ours"](inputs_embeds=embeds, attention_mask=c["mask"])
    np.testing.assert_array_equal(no_types.last_hidden_state, ours.last_hidden_state)  # the quirk

    exact = IBertModel.from_pretrained(str(c["folder"]), datapath="exact")
    with_types = exact(inputs_embeds=embeds, attention_mask=c["mask"], token_type_ids=c["token_types"])
    without = exact(inputs_embeds=embeds, attention_mask=c["mask"])
    assert not np.array_equal(with_types.last_hidden_state_int, without.last_hidden_state_int)


def test_inputs_embeds_input_errors(two_types):
    c = two_types
    embeds = np.zeros((1, 4, 32), dtype=np.float32)
    with pytest.raises(ValueError, match="both input_ids and inputs_embeds"):
        c["ours"](np.array([[0, 5, 6, 2]]), inputs_embeds=embeds)
    with pytest.raises(ValueError, match="either input_ids or inputs_embeds"):
        c["ours"]()
    with pytest.raises(ValueError, match=r"\(batch, seq, 32\)"):
        c["ours"](inputs_embeds=np.zeros((1, 4, 31), dtype=np.float32))
    with pytest.raises(TypeError, match="float"):
        c["ours"](inputs_embeds=np.zeros((1, 4, 32), dtype=np.int64))
    with pytest.raises(ValueError, match="NaN"):
        c["ours"](inputs_embeds=np.full((1, 4, 32), np.nan, dtype=np.float32))


# ---------------------------------------------------------------------------------------
# head_mask: the I-BERT docs' semantics, emulated in transformers with softmax hooks
def transformers_with_head_mask(model, head_mask, **kw):
    """Run transformers with each layer's softmax output multiplied by ``head_mask[layer]``
    (what IBertSelfAttention did with head_mask before transformers 5; dropout is the identity
    in eval, so multiplying the softmax output is the same)."""
    hooks = []
    for i, layer in enumerate(model.encoder.layer):
        def hook(mod, args, out, i=i):
            probs, scale = out
            return probs * torch.as_tensor(head_mask[i], dtype=probs.dtype)[None, :, None, None], scale

        hooks.append(layer.attention.self.softmax.register_forward_hook(hook))
    try:
        return run_transformers(model, output_attentions=True, **kw)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("head_mask", [np.array([[1, 0], [0, 1]]), np.array([[0, 0], [1, 1]])])
def test_head_mask_bit_equal_with_documented_semantics(two_types, head_mask):
    c = two_types
    theirs = transformers_with_head_mask(c["model"], head_mask, input_ids=c["ids"], attention_mask=c["mask"])
    ours = c["ours"](c["ids"], c["mask"], head_mask=head_mask, output_attentions=True)
    np.testing.assert_array_equal(ours.last_hidden_state, theirs.last_hidden_state.numpy())
    for layer, (p, q, ref) in enumerate(zip(ours.attentions, ours.attentions_int, theirs.attentions)):
        np.testing.assert_array_equal(p, ref.numpy())
        for head in range(HEADS):
            assert np.any(q[:, head]) == bool(head_mask[layer, head])


def test_head_mask_with_float_softmax_bit_equal(float_softmax):
    ids, mask = padded_batch(seed=2)
    head_mask = np.array([[0, 1], [1, 0]])
    theirs = transformers_with_head_mask(float_softmax["model"], head_mask, input_ids=ids, attention_mask=mask)
    ours = float_softmax["ours"](ids, mask, head_mask=head_mask, output_attentions=True)
    np.testing.assert_array_equal(ours.last_hidden_state, theirs.last_hidden_state.numpy())
    for p, ref in zip(ours.attentions, theirs.attentions):
        np.testing.assert_array_equal(p, ref.numpy())
    assert ours.attentions_int is None


def test_head_mask_semantics_directly(two_types):
    c = two_types
    base = c["ours"](c["ids"], c["mask"], output_attentions=True, return_trace=True)
    ones = c["ours"](c["ids"], c["mask"], head_mask=np.ones(HEADS, dtype=np.int64), output_attentions=True)
    np.testing.assert_array_equal(ones.last_hidden_state, base.last_hidden_state)
    # a 1-D mask applies to every layer; the softmax trace (the module output) is unmasked
    off = c["ours"](c["ids"], c["mask"], head_mask=np.array([0, 1]), output_attentions=True, return_trace=True)
    for layer in range(LAYERS):
        assert not off.attentions_int[layer][:, 0].any()
    # layer 0's unmasked head is untouched (later layers see a changed input)
    np.testing.assert_array_equal(off.attentions_int[0][:, 1], base.attentions_int[0][:, 1])
    np.testing.assert_array_equal(off.trace["encoder.layer.0.attention.self.softmax"],
                                  base.trace["encoder.layer.0.attention.self.softmax"])
    # exact datapath: same semantics on true integers
    exact = IBertModel.from_pretrained(str(c["folder"]), datapath="exact")
    e = exact(c["ids"], c["mask"], head_mask=np.array([[1, 0], [1, 1]]), output_attentions=True)
    assert not e.attentions_int[0][:, 1].any() and e.attentions_int[1][:, 1].any()


def test_head_mask_rejects_fractions_and_bad_shapes(two_types):
    c = two_types
    with pytest.raises(ValueError, match="only 0"):
        c["ours"](c["ids"], c["mask"], head_mask=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        c["ours"](c["ids"], c["mask"], head_mask=np.ones((3, HEADS)))


# ---------------------------------------------------------------------------------------
def test_hidden_act_other_than_gelu_is_rejected_like_transformers(two_types, tmp_path):
    config = transformers.IBertConfig(hidden_act="relu", quant_mode=True)
    with pytest.raises(ValueError, match="gelu"):
        transformers.IBertModel(config)
    folder = tmp_path / "relu"
    shutil.copytree(two_types["folder"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_act"] = "relu"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompileError, match="gelu"):
        IBertModel.from_pretrained(str(folder))


def test_prefixed_task_checkpoint_encoder_matches_transformers(tmp_path):
    model, folder = make_calibrated_ibert(tmp_path / "seqcls", model_class="IBertForSequenceClassification", **TINY)
    keys = json.loads((folder / "config.json").read_text())
    assert keys["architectures"] == ["IBertForSequenceClassification"]
    ids, mask = padded_batch(seed=3)
    ours = IBertModel.from_pretrained(str(folder), datapath="transformers", gemm="torch")(ids, mask)
    theirs = run_transformers(model.ibert, input_ids=ids, attention_mask=mask)
    np.testing.assert_array_equal(ours.last_hidden_state, theirs.last_hidden_state.numpy())
