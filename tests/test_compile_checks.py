"""A checkpoint that loads must run: every derived constant is checked representable at compile
time and refused with the checkpoint key, the value and the bound; config fields and duplicate
keys are refused at load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ibert_ref.compile import CompileError
from ibert_ref.data import default_model_path
from ibert_ref.loading import Checkpoint, CheckpointError, load_checkpoint, read_json
from ibert_ref.model import IBertModel

IDS = np.array([[0, 100, 200, 300, 2, 1]])
MASK = np.array([[1, 1, 1, 1, 1, 0]])
SA = "encoder.layer.0.attention.self."


@pytest.fixture(scope="module")
def base():
    return load_checkpoint(default_model_path())


def with_range(base, key, lo, hi, config=None):
    t = dict(base.tensors)
    t[key + ".x_min"] = np.array([lo], np.float32)
    t[key + ".x_max"] = np.array([hi], np.float32)
    return Checkpoint(config={**base.config, **(config or {})}, tensors=t, source="edited")


@pytest.mark.parametrize("datapath", ["exact", "transformers", "arm"])
def test_query_range_1e4_is_refused_naming_the_softmax_sum(base, datapath):
    """Was: ZeroDivisionError "all-equal LayerNorm row?" (exact), NaN and -2^63 (transformers):
    the score scale makes c_int 0, so exp(0) requantizes to 0 and every softmax row sums to 0."""
    with pytest.raises(CompileError) as info:
        IBertModel.from_checkpoint(with_range(base, SA + "query_activation", -1e4, 1e4), datapath=datapath)
    msg = str(info.value)
    assert SA + "query_activation.x_min/x_max = [-10000, 10000]" in msg
    assert "exp(0)" in msg and "sum to 0" in msg and "bound" in msg


@pytest.mark.parametrize("datapath", ["exact", "transformers", "arm"])
def test_tiny_softmax_act_range_is_refused(base, datapath):
    """Was: OverflowError "softmax exp requantization shift went negative" in the forward."""
    with pytest.raises(CompileError) as info:
        IBertModel.from_checkpoint(with_range(base, SA + "softmax.act", -1e-4, 1e-4), datapath=datapath)
    msg = str(info.value)
    assert SA + "softmax.act.x_min/x_max = [-0.0001, 0.0001]" in msg
    assert "shift e = " in msg and "bound: scale > 0.5" in msg


def test_softmax_act_range_at_the_bound(base):
    """Just above the bound (scale > 0.5) compiles and runs; just below is refused."""
    ok = with_range(base, SA + "softmax.act", -17000.0, 17000.0)
    out = IBertModel.from_checkpoint(ok)(IDS, attention_mask=MASK, return_trace=True)
    assert int(out.trace[SA + "softmax"].max()) <= 256
    with pytest.raises(CompileError, match="bound: scale > 0.5"):
        IBertModel.from_checkpoint(with_range(base, SA + "softmax.act", -16000.0, 16000.0))


def test_layernorm_input_that_is_always_zero_is_refused(base):
    key = "encoder.layer.0.attention.output.ln_input_act"
    with pytest.raises(CompileError) as info:
        IBertModel.from_checkpoint(with_range(base, key, -1e30, 1e30))
    assert key + ".x_min/x_max" in str(info.value) and "std 0" in str(info.value)


def test_overflowing_score_scale_is_refused(base):
    ck = with_range(with_range(base, SA + "query_activation", -3e38, 3e38), SA + "key_activation", -3e38, 3e38)
    with pytest.raises(CompileError, match="finite nonzero"):
        IBertModel.from_checkpoint(ck)


def test_compile_errors_are_value_errors():
    assert issubclass(CompileError, ValueError) and issubclass(CheckpointError, ValueError)


def test_calibrated_model_is_unchanged(base):
    """The checks refuse nothing a calibrated checkpoint has (same integers as before them)."""
    model = IBertModel.from_checkpoint(base)
    out = model(IDS, attention_mask=MASK)
    assert np.isfinite(out.last_hidden_state).all()


# ---------------------------------------------------------------------------------------
# config.json and keys
@pytest.mark.parametrize("eps", [float("nan"), -1e-5, float("inf"), "1e-5", True])
def test_bad_layer_norm_eps_is_refused_naming_the_field(base, eps):
    ck = Checkpoint(config={**base.config, "layer_norm_eps": eps}, tensors=base.tensors, source="x")
    with pytest.raises(CompileError, match="layer_norm_eps"):
        IBertModel.from_checkpoint(ck)


@pytest.mark.parametrize("pad", [10**9, "vocab_size"])
def test_pad_token_id_beyond_the_vocabulary_is_refused_at_load(base, pad):
    pad = base.config["vocab_size"] if pad == "vocab_size" else pad
    ck = Checkpoint(config={**base.config, "pad_token_id": pad}, tensors=base.tensors, source="x")
    with pytest.raises(CompileError, match=f"pad_token_id={pad} must be below vocab_size"):
        IBertModel.from_checkpoint(ck)


def test_pad_token_id_without_a_position_is_refused(base):
    cfg = {**base.config, "pad_token_id": base.config["max_position_embeddings"] - 1}
    with pytest.raises(CompileError, match="leaves no position"):
        IBertModel.from_checkpoint(Checkpoint(config=cfg, tensors=base.tensors, source="x"))


def test_deeply_nested_config_is_a_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_json(path)
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_json(path)


def test_same_tensor_with_and_without_prefix(base):
    key = "encoder.layer.0.attention.self.query.weight"
    same = dict(base.tensors)
    same["ibert." + key] = base.tensors[key].copy()
    model = IBertModel.from_checkpoint(Checkpoint(config=base.config, tensors=same, source="x"))
    np.testing.assert_array_equal(model(IDS).last_hidden_state_int,
                                  IBertModel.from_checkpoint(base)(IDS).last_hidden_state_int)
    other = dict(base.tensors)
    other["ibert." + key] = base.tensors[key] + 1
    with pytest.raises(CheckpointError, match="both with and without the 'ibert.' prefix"):
        Checkpoint(config=base.config, tensors=other, source="x")


def test_duplicate_prefixed_tensor_in_a_folder_is_refused(tmp_path, base):
    from safetensors.numpy import save_file

    key = "embeddings.LayerNorm.bias"
    t = dict(base.tensors)
    t["ibert." + key] = t[key] * 2 + 1
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(base.config))
    with pytest.raises(CheckpointError, match=key):
        load_checkpoint(tmp_path)
