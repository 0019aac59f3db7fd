"""The oracle: calibrated transformers I-BERT models and the integer trace captured from them."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ibert_ref.oracle import builders, capture  # noqa: E402

pytestmark = pytest.mark.oracle

BUNDLED = Path(__file__).resolve().parents[1] / "ibert_ref" / "data" / "tiny-ibert"
N_LAYERS = 2

# One IBertLayer, in dataflow order (docs/ibert-dataflow.md), with the bits of its integer output.
LAYER_0 = {
    "encoder.layer.0.attention.self.query": 32,
    "encoder.layer.0.attention.self.key": 32,
    "encoder.layer.0.attention.self.value": 32,
    "encoder.layer.0.attention.self.query_activation": 8,
    "encoder.layer.0.attention.self.key_activation": 8,
    "encoder.layer.0.attention.self.value_activation": 8,
    "encoder.layer.0.attention.self.softmax.act": 16,
    "encoder.layer.0.attention.self.softmax": 9,
    "encoder.layer.0.attention.self.output_activation": 8,
    "encoder.layer.0.attention.output.dense": 32,
    "encoder.layer.0.attention.output.ln_input_act": 22,
    "encoder.layer.0.attention.output.LayerNorm": 32,
    "encoder.layer.0.attention.output.output_activation": 8,
    "encoder.layer.0.pre_intermediate_act": 8,
    "encoder.layer.0.intermediate.dense": 32,
    "encoder.layer.0.intermediate.intermediate_act_fn": 64,
    "encoder.layer.0.intermediate.output_activation": 8,
    "encoder.layer.0.pre_output_act": 8,
    "encoder.layer.0.output.dense": 32,
    "encoder.layer.0.output.ln_input_act": 22,
    "encoder.layer.0.output.LayerNorm": 32,
    "encoder.layer.0.output.output_activation": 8,
}
EMBEDDINGS = {
    "embeddings.word_embeddings": 8,
    "embeddings.token_type_embeddings": 8,
    "embeddings.position_embeddings": 8,
    "embeddings.embeddings_act1": 16,
    "embeddings.LayerNorm": 32,
    "embeddings.output_activation": 8,
}
QUANT_ACT_BITS = {n: b for n, b in {**EMBEDDINGS, **LAYER_0}.items()
                  if n.endswith(("_act", "_act1", "activation", "softmax.act"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer calibrated quant-mode IBertModel saved in a temp folder, and a padded batch."""
    folder = tmp_path_factory.mktemp("tiny-ibert")
    model, folder = builders.make_calibrated_ibert(folder, hidden_size=32, num_hidden_layers=N_LAYERS,
                                                   num_attention_heads=2, intermediate_size=64,
                                                   vocab_size=128, max_position_embeddings=66, seed=0)
    ids, mask = builders.pad_batch([[0, 17, 42, 99, 5, 2], [0, 7, 8, 9, 10, 11, 12, 13, 2], [0, 64, 2]])
    return model, folder, ids, mask


@pytest.fixture(scope="module")
def cap(tiny):
    model, _, ids, mask = tiny
    return capture.capture_transformers_trace(model, ids, mask)


def test_every_called_quantized_module_has_an_entry(cap):
    expected = set(EMBEDDINGS) | set(LAYER_0) | {n.replace("layer.0", "layer.1") for n in LAYER_0}
    assert set(cap.trace) == expected
    assert set(capture.expected_module_names(N_LAYERS)) == expected
    assert set(cap.inputs) == expected and set(cap.outputs) == expected


def test_dead_modules_are_never_called(cap):
    assert "embeddings.embeddings_act2" not in cap.calls
    assert not [n for n in cap.calls if n.endswith("LayerNorm.activation")]


def test_calls_follow_the_dataflow_order(cap):
    order = list(cap.calls)
    assert order == capture.expected_module_names(N_LAYERS)


def test_embeddings_act1_is_called_twice_and_the_entry_is_the_second_call(cap):
    calls = cap.calls["embeddings.embeddings_act1"]
    assert len(calls) == 2
    assert cap.trace["embeddings.embeddings_act1"] is calls[1].trace
    # the second call re-quantizes the first call's output and adds the position embeddings
    np.testing.assert_array_equal(calls[1].inputs.args[0], calls[0].output)


def test_trace_is_int64(cap):
    for name, q in cap.trace.items():
        assert q.dtype == np.int64, name


def test_trace_is_rint_of_output_over_scale(cap):
    for name, (out, scale) in cap.outputs.items():
        assert out.dtype == np.float32 and scale.dtype == np.float32, name
        np.testing.assert_array_equal(np.rint(out / scale).astype(np.int64), cap.trace[name], err_msg=name)


def test_softmax_probabilities_are_in_0_256_with_scale_one_over_256(cap):
    for i in range(N_LAYERS):
        name = f"encoder.layer.{i}.attention.self.softmax"
        q = cap.trace[name]
        assert q.min() >= 0 and q.max() <= 256
        assert cap.outputs[name][1].shape == () and cap.outputs[name][1] == np.float32(1 / 256)


def test_masked_keys_get_probability_zero(tiny, cap):
    _, _, _, mask = tiny
    keymask = mask.numpy().astype(bool)[:, None, None, :]
    q = cap.trace["encoder.layer.0.attention.self.softmax"]
    assert np.all(np.where(keymask, 0, q) == 0)


@pytest.mark.parametrize("name,bits", sorted(QUANT_ACT_BITS.items()))
def test_quant_act_outputs_fit_their_bit_width(cap, name, bits):
    for n in (name, name.replace("layer.0", "layer.1")):
        q = cap.trace[n]
        assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1, n


def test_int8_weights_of_embeddings_are_in_minus127_126(cap):
    for name in ("word_embeddings", "token_type_embeddings", "position_embeddings"):
        q = cap.trace[f"embeddings.{name}"]
        assert q.min() >= -127 and q.max() <= 126


def test_scales_have_the_module_shapes(cap):
    H, I = 32, 64
    assert cap.outputs["embeddings.word_embeddings"][1].shape == (1,)
    assert cap.outputs["embeddings.LayerNorm"][1].shape == (H,)
    assert cap.outputs["encoder.layer.0.attention.self.query"][1].shape == (H,)
    assert cap.outputs["encoder.layer.0.intermediate.dense"][1].shape == (I,)
    assert cap.outputs["encoder.layer.0.intermediate.intermediate_act_fn"][1].shape == (I,)
    assert np.all(cap.outputs["encoder.layer.0.intermediate.intermediate_act_fn"][1] < 0)
    assert cap.outputs["encoder.layer.0.output.output_activation"][1].shape == (1,)


def test_inputs_are_numpy_and_keep_kwargs(cap):
    args, kwargs = cap.inputs["encoder.layer.0.attention.output.ln_input_act"]
    assert isinstance(args[0], np.ndarray) and args[0].dtype == np.float32
    assert set(kwargs) == {"identity", "identity_scaling_factor"}
    args, _ = cap.inputs["embeddings.word_embeddings"]
    assert args[0].dtype == np.int64


def test_last_hidden_state_is_the_last_layer_output(cap):
    out, _ = cap.outputs[f"encoder.layer.{N_LAYERS - 1}.output.output_activation"]
    np.testing.assert_array_equal(cap.last_hidden_state, out)
    assert cap.pooler_output.shape == (3, 32) and cap.pooler_output.dtype == np.float32


def test_saved_model_reloads_with_an_identical_trace(tiny, cap):
    _, folder, ids, mask = tiny
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    again = capture.capture_transformers_trace(capture.load_transformers_ibert(folder), ids, mask)
    for name, q in cap.trace.items():
        np.testing.assert_array_equal(again.trace[name], q, err_msg=name)


def test_capture_refuses_a_training_model(tiny):
    model, _, ids, mask = tiny
    model.train()
    try:
        with pytest.raises(ValueError):
            capture.capture_transformers_trace(model, ids, mask)
    finally:
        model.eval()


def test_calibrated_model_has_non_uniform_attention(tiny):
    model, _, ids, mask = tiny
    report = builders.calibration_report(model, ids, mask)
    assert not report["softmax_overflow"]
    for name, a in report["attention"].items():
        assert a["rows"] > 0 and a["uniform_rows"] == 0, name
    assert all(s >= 1 for s in report["ln_shifts"].values())


def test_default_init_std_makes_the_softmax_quant_act_overflow():
    # docs/ibert-dataflow.md: a small score scale overflows IntSoftmax's float32 16-bit QuantAct
    model, _ = builders.make_calibrated_ibert(None, qk_std=0.02, calib_batches=2)
    ids, mask = builders.random_calibration_batches(128, 1, seed=3)[0]
    report = builders.calibration_report(model, ids, mask)
    assert report["softmax_overflow"]
    assert all(a["uniform_fraction"] == 1.0 for a in report["attention"].values())


def test_task_model_names_lose_the_ibert_prefix():
    model, _ = builders.make_calibrated_ibert(None, model_class="IBertForSequenceClassification",
                                              num_labels=3, calib_batches=2)
    ids, mask = builders.random_calibration_batches(128, 1, seed=4)[0]
    cap = capture.capture_transformers_trace(model, ids, mask)
    assert set(cap.trace) == set(capture.expected_module_names(2))
    assert cap.head_outputs["logits"].shape == (ids.shape[0], 3)
    assert cap.pooler_output is None


def test_tokenizer_has_roberta_special_ids_and_loads_in_transformers(tmp_path):
    from transformers import AutoTokenizer

    tok = builders.make_tokenizer(tmp_path, vocab_size=600)
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    hf = AutoTokenizer.from_pretrained(tmp_path)
    text = "The capital of France is <mask>."
    ids = hf(text)["input_ids"]
    assert ids == tok.encode(text).ids
    assert ids[0] == 0 and ids[-1] == 2 and 4 in ids


# ---- the bundled model ---------------------------------------------------------------------------

def test_bundled_model_files_exist_and_are_small():
    names = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json"}
    assert names <= {p.name for p in BUNDLED.iterdir()}
    assert builders.folder_size_bytes(BUNDLED) < 5 * 2**20


def test_bundled_model_loads_in_transformers_with_non_uniform_attention():
    from transformers import AutoTokenizer

    model = capture.load_transformers_ibert(BUNDLED)
    assert model.config.quant_mode and model.config.vocab_size == 1024
    tok = AutoTokenizer.from_pretrained(BUNDLED)
    enc = tok(["The capital of France is Paris.", "Snow fell quietly over the village."],
              padding=True, return_tensors="pt")
    report = builders.calibration_report(model, enc["input_ids"], enc["attention_mask"])
    assert not report["softmax_overflow"]
    for name, a in report["attention"].items():
        assert a["uniform_rows"] == 0, name
    cap = capture.capture_transformers_trace(model, enc["input_ids"], enc["attention_mask"])
    q = cap.trace["encoder.layer.3.output.output_activation"]
    assert q.min() >= -128 and q.max() <= 127 and np.unique(q).size > 50
