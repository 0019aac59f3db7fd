"""NumPy calibration: transformers' train-mode semantics, checked against transformers itself."""

from __future__ import annotations

import numpy as np
import pytest

from ibert_ref import IBertModel
from ibert_ref.calibrate import (
    CalibrationError,
    Calibrator,
    RangeTracker,
    calibrate_checkpoint,
    layernorm_train_shift,
    make_batches,
    read_texts,
)
from ibert_ref.calibration.ranges import _new_shift_exact
from ibert_ref.cli import main
from ibert_ref.data import default_model_path
from ibert_ref.datapath import make_datapath
from ibert_ref.loading import load_checkpoint
from ibert_ref.tokenizer import Tokenizer

F32 = np.float32
CALIB_TEXTS = [
    "The capital of France is Paris.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Could you pass me the salt, please?",
    "The compiler reported an error on line forty-two.",
    "Snow fell quietly over the village.",
    "Why is the sky blue?",
    "The orchestra tuned their instruments before the concert, and the audience slowly fell silent.",
    "Three plus four equals seven.",
    "A transformer uses attention to mix information between tokens.",
    "Penguins cannot fly, but they are excellent swimmers.",
    "Room 404 is at the end of the corridor.",
    "She painted the fence a bright shade of green.",
]


# ---------------------------------------------------------------------------------------
# QuantAct range semantics (quant_modules.QuantAct.forward in train mode)
def test_first_update_initialises_from_the_initial_buffers():
    t = RangeTracker()
    t.update("a", np.array([[-2.0, 0.5], [3.0, 1.0]], dtype=F32))
    assert t.x_min["a"][0] == F32(-1e-5) + F32(-2.0)
    assert t.x_max["a"][0] == F32(1e-5) + F32(3.0)


def test_later_updates_are_a_float32_ema_with_momentum_0_95():
    t = RangeTracker()
    t.update("a", np.array([-2.0, 3.0], dtype=F32))
    lo, hi = t.x_min["a"][0], t.x_max["a"][0]
    t.update("a", np.array([-1.0, 7.0], dtype=F32))
    assert t.x_min["a"][0] == lo * F32(0.95) + F32(-1.0) * F32(1 - 0.95)
    assert t.x_max["a"][0] == hi * F32(0.95) + F32(7.0) * F32(1 - 0.95)
    assert t.x_min["a"].dtype == F32 and t.updates["a"] == 2


def test_momentum_minus_one_keeps_running_min_max():
    t = RangeTracker(momentum=-1)
    for v in ([-2.0, 3.0], [-1.0, 7.0], [-5.0, 1.0]):
        t.update("a", np.array(v, dtype=F32))
    assert t.x_min["a"][0] == F32(-5.0)
    assert t.x_max["a"][0] == F32(7.0)


def test_a_range_still_within_1e_5_is_initialised_again():
    t = RangeTracker()
    t.update("a", np.zeros(4, dtype=F32))  # stays at -1e-5 / 1e-5: "not initialised" for transformers
    t.update("a", np.array([-1.0, 2.0], dtype=F32))
    assert t.x_max["a"][0] == F32(1e-5) + F32(2.0)


def test_the_forward_uses_the_updated_range():
    t = RangeTracker()
    scale = t.observe("a", np.array([-1.0, 127.0], dtype=F32), 8)
    assert scale[0] == (F32(1e-5) + F32(127.0)) / F32(127)


def test_nan_activation_is_refused():
    with pytest.raises(CalibrationError, match="NaN"):
        RangeTracker().update("a", np.array([1.0, np.nan], dtype=F32))


# ---------------------------------------------------------------------------------------
# IntLayerNorm shift (train mode)
@pytest.mark.parametrize("v", [2**32, 2**32 + 1, 4 * 2**32 - 1, 4 * 2**32, 4 * 2**32 + 1, 3 * 10**12, 2**50])
def test_exact_new_shift_is_ceil_log2_sqrt_v_over_2_32(v):
    k = _new_shift_exact(v)
    assert 4 ** (k + 16) >= v and (k == 0 or 4 ** (k + 15) < v)


@pytest.mark.parametrize("datapath", ["exact", "transformers"])
def test_layernorm_shift_grows_until_the_variance_fits_32_bits(datapath):
    dp = make_datapath(datapath)
    rng = np.random.default_rng(0)
    q = rng.integers(-(2**21), 2**21, size=(2, 3, 64))  # 22-bit inputs: variance ~ 2^47
    scale = np.ones(1, dtype=F32)
    x = dp.emit(q, scale)
    shift = layernorm_train_shift(dp, x, 0)
    y = q - np.rint(q.mean(axis=-1, keepdims=True))
    var = lambda k: (np.floor(y / 2.0**k) ** 2).sum(axis=-1)  # noqa: E731
    assert var(shift).max() < 2**32 <= var(shift - 1).max()
    assert layernorm_train_shift(dp, x, shift + 3) == shift + 3  # it never shrinks
    small = dp.emit(rng.integers(-100, 100, size=(1, 2, 64)), scale)
    assert layernorm_train_shift(dp, small, 0) == 0


# ---------------------------------------------------------------------------------------
# Whole-model calibration
@pytest.fixture(scope="module")
def batches():
    tok = Tokenizer.from_pretrained()
    return make_batches(tok, CALIB_TEXTS, batch_size=4)


def test_batches_are_padded_and_in_order(batches):
    assert len(batches) == 3 and all(ids.shape == mask.shape for ids, mask in batches)
    assert any(mask.min() == 0 for _, mask in batches)


def test_calibrated_folder_loads_in_ibert_ref_and_runs(tmp_path, batches):
    result = calibrate_checkpoint(default_model_path(), batches=batches, out=tmp_path / "c", progress=False)
    assert result.batches == 3 and result.tokens == sum(int(m.sum()) for _, m in batches)
    model = IBertModel.from_pretrained(tmp_path / "c")
    out = model(batches[0][0], attention_mask=batches[0][1])
    assert np.isfinite(out.last_hidden_state).all()
    ckpt = load_checkpoint(tmp_path / "c")
    assert ckpt.config["quant_mode"] is True
    # dead QuantActs keep transformers' initial values
    np.testing.assert_array_equal(ckpt.tensor("embeddings.embeddings_act2.x_min"), np.array([-1e-5], F32))


def test_calibration_is_deterministic_and_independent_of_the_starting_ranges(batches):
    ckpt = load_checkpoint(default_model_path())  # a calibrated checkpoint: reset=True ignores its ranges
    a, b = Calibrator(ckpt), Calibrator(ckpt)
    for ids, mask in batches:
        a.step(ids, mask)
        b.step(ids, mask)
    assert a.ranges() == b.ranges() and a.tracker.shifts == b.tracker.shifts
    c = Calibrator(ckpt, reset=False)
    c.step(*batches[0])
    assert c.ranges() != a.ranges()  # continues the EMA from the stored ranges instead


def test_calibrate_refuses_force_dequant(tmp_path):
    ckpt = load_checkpoint(default_model_path())
    ckpt.config["force_dequant"] = "gelu"
    with pytest.raises(CalibrationError, match="force_dequant"):
        Calibrator(ckpt)


def test_cli_calibrate(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(CALIB_TEXTS[:5]) + "\n\n")
    assert read_texts(texts) == CALIB_TEXTS[:5]
    assert main(["calibrate", "--texts", str(texts), "--out", str(tmp_path / "o"), "--batch-size", "2",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 3 batches" in out and "encoder.layer.0.attention.self.softmax.act" in out
    assert (tmp_path / "o" / "tokenizer.json").is_file()
    (tmp_path / "empty.txt").write_text("\n")
    assert main(["calibrate", "--texts", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "x")]) == 2


# ---------------------------------------------------------------------------------------
# Against transformers' own train-mode calibration (the oracle)
def _transformers_calibrated(folder, batches):
    torch = pytest.importorskip("torch")
    from transformers.models.ibert.quant_modules import IntLayerNorm, QuantAct

    from ibert_ref.oracle.capture import load_transformers_ibert

    model = load_transformers_ibert(folder)
    for m in model.modules():
        if isinstance(m, QuantAct):  # back to transformers' initial, uncalibrated buffers
            m.x_min.fill_(-1e-5)
            m.x_max.fill_(1e-5)
        elif isinstance(m, IntLayerNorm):
            m.shift.fill_(0)
        elif isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    with torch.no_grad():
        for ids, mask in batches:
            model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    model.eval()
    ranges = {n: (float(m.x_min.item()), float(m.x_max.item())) for n, m in model.named_modules()
              if isinstance(m, QuantAct)}
    shifts = {n: int(m.shift.item()) for n, m in model.named_modules() if isinstance(m, IntLayerNorm)}
    return model, ranges, shifts


@pytest.fixture(scope="module")
def transformers_ranges(batches):
    pytest.importorskip("transformers")
    _, ranges, shifts = _transformers_calibrated(default_model_path(), batches)
    return ranges, shifts


@pytest.mark.oracle
@pytest.mark.parametrize("gemm", ["torch", "numpy"])
def test_ranges_and_shifts_equal_transformers_train_mode(batches, transformers_ranges, gemm):
    ranges, shifts = transformers_ranges
    cal = Calibrator(load_checkpoint(default_model_path()), gemm=gemm)
    for ids, mask in batches:
        cal.step(ids, mask)
    ours = cal.ranges()
    assert set(ours) == {n for n in ranges if not n.endswith(("embeddings_act2", "LayerNorm.activation"))}
    # bit-identical on the bundled model (with NumPy's GEMM too: no summation-order flip on these inputs)
    assert {n: ranges[n] for n in ours} == ours
    assert shifts == cal.tracker.shifts
    assert max(shifts.values()) > 0  # the shift guard did fire


@pytest.mark.oracle
def test_written_checkpoint_is_what_transformers_computes(tmp_path, batches):
    """transformers loads the folder with no missing/unexpected key and, in eval, reproduces our
    derived buffers and the transformers datapath bit for bit."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import transformers

    calibrate_checkpoint(default_model_path(), batches=batches, out=tmp_path / "c", progress=False, gemm="torch")
    tm, info = transformers.IBertModel.from_pretrained(tmp_path / "c", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tm.eval()
    ids, mask = batches[1]
    with torch.no_grad():
        hf = tm(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    ours = IBertModel.from_pretrained(tmp_path / "c", datapath="transformers", gemm="torch")
    np.testing.assert_array_equal(ours(ids, attention_mask=mask).last_hidden_state, hf)
    ckpt = load_checkpoint(tmp_path / "c")
    state = {k: v.numpy() for k, v in tm.state_dict().items()}
    for key in ("weight_integer", "fc_scaling_factor", "bias_integer", "weight_scaling_factor", "act_scaling_factor"):
        keys = [k for k in state if k.endswith(key) and "embeddings_act2" not in k and "LayerNorm.activation" not in k]
        assert keys, key
        for k in keys:
            np.testing.assert_array_equal(ckpt.tensor(k), state[k], err_msg=k)


def test_a_task_checkpoint_keeps_its_prefix_and_head(tmp_path, batches):
    """An ``ibert.``-prefixed task checkpoint (float weights only, like kssteven/ibert-roberta-base)."""
    from ibert_ref.convert import write_checkpoint

    ckpt = load_checkpoint(default_model_path())
    floats = {"ibert." + k: v for k, v in ckpt.tensors.items()
              if k.endswith((".weight", ".bias")) and not k.startswith("pooler.")}
    floats["classifier.dense.weight"] = np.ones((64, 64), F32)
    config = dict(ckpt.config, quant_mode=False, architectures=["IBertForSequenceClassification"])
    write_checkpoint(tmp_path / "task", config, floats, tokenizer_from=default_model_path())
    result = calibrate_checkpoint(tmp_path / "task", batches=batches, out=tmp_path / "out", progress=False)
    out = load_checkpoint(tmp_path / "out")
    assert out.config["quant_mode"] is True
    np.testing.assert_array_equal(out.tensors["classifier.dense.weight"], floats["classifier.dense.weight"])
    assert "ibert.encoder.layer.0.output.LayerNorm.shift" in out.tensors
    assert not any(k.startswith(("embeddings.", "encoder.")) for k in out.tensors)
    same = Calibrator(ckpt)
    for ids, mask in batches:
        same.step(ids, mask)
    assert result.ranges == same.ranges()  # the prefix changes nothing in the numbers


# ---------------------------------------------------------------------------------------
# Range selection (--range minmax | percentile | mse): same format, better-chosen clips
def _fake_quant_mse(x, x_min, x_max, bits=8):
    """Independent re-statement: QuantAct scale max(|x_min|, |x_max|) / (2^(b-1) - 1), output
    clamp [-2^(b-1), 2^(b-1) - 1], round half to even; MSE against x (float64)."""
    x = np.asarray(x, dtype=np.float64)
    s = max(abs(float(x_min)), abs(float(x_max))) / (2 ** (bits - 1) - 1)
    q = np.clip(np.round(x / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return float(np.mean((x - q * s) ** 2))


def _heavy_tailed(seed=0, n=20000):
    """Student-t (3 degrees of freedom): a heavy tail, where clipping the largest values pays."""
    return np.random.default_rng(seed).standard_t(3, n).astype(F32)


def test_mse_clip_is_as_good_as_a_brute_force_search_and_clips_the_tail():
    from ibert_ref.calibrate import mse_optimal_clip

    x = _heavy_tailed()
    amax = float(np.abs(x).max())
    c = mse_optimal_clip(x, 8)
    brute = min(_fake_quant_mse(x, -t, t) for t in np.linspace(amax / 256, amax, 4000))
    assert _fake_quant_mse(x, -c, c) <= brute * 1.002
    assert c < amax and _fake_quant_mse(x, -c, c) < 0.95 * _fake_quant_mse(x, -amax, amax)
    # 4-bit: far fewer levels, so the optimum clips much harder
    c4 = mse_optimal_clip(x, 4)
    assert c4 < 0.5 * amax
    assert _fake_quant_mse(x, -c4, c4, bits=4) <= 1.002 * min(
        _fake_quant_mse(x, -t, t, bits=4) for t in np.linspace(amax / 256, amax, 4000))
    # uniform data: clipping gains nothing, the search keeps (nearly) the full range
    u = np.linspace(-1, 1, 4001, dtype=F32)
    assert mse_optimal_clip(u, 8) > 0.97


def test_mse_clip_on_a_large_array_is_never_worse_than_min_max():
    from ibert_ref.calibrate import mse_optimal_clip

    x = _heavy_tailed(seed=1, n=50000)
    c = mse_optimal_clip(x, 8, samples=1000)  # candidates scored on a 1000-value sample
    amax = float(np.abs(x).max())
    assert _fake_quant_mse(x, -c, c) <= _fake_quant_mse(x, -amax, amax)


def test_select_range_per_method():
    from ibert_ref.calibrate import select_range

    x = _heavy_tailed(seed=2)
    (lo, hi), info = select_range(x, 8, "minmax")
    assert (lo[0], hi[0]) == (x.min(), x.max()) and info.clip == max(-x.min(), x.max())
    (lo, hi), info = select_range(x, 8, "percentile", percentile=99.0)
    assert info.clip == F32(np.percentile(np.abs(x.astype(np.float64)), 99.0))
    assert max(abs(lo[0]), abs(hi[0])) == F32(info.clip) and lo[0] >= x.min() and hi[0] <= x.max()
    (lo, hi), info = select_range(x, 8, "mse")
    assert max(abs(lo[0]), abs(hi[0])) == F32(info.clip) and info.mse <= info.mse_minmax
    with pytest.raises(ValueError, match="unknown range method"):
        select_range(x, 8, "kl")
    with pytest.raises(CalibrationError, match="NaN"):
        select_range(np.array([1.0, np.nan]), 8, "mse")


def test_join_batches_pads_and_stacks():
    from ibert_ref.calibrate import join_batches

    a = (np.array([[5, 6, 7]]), np.array([[1, 1, 1]]))
    b = (np.array([[8, 9], [4, 0]]), np.array([[1, 1], [1, 0]]))
    ids, mask = join_batches([a, b], pad_token_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [8, 9, 0], [4, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("method", ["mse", "percentile", "minmax"])
def test_search_never_has_larger_per_op_mse_than_min_max(batches, method):
    """Sequential search on the bundled model: each 8-bit QuantAct's chosen range quantizes the
    real-token values it observed (upstream already quantized) with no larger MSE than their
    min/max would (mse, minmax); every 8-bit QuantAct is searched once, in forward order."""
    from ibert_ref.calibrate import join_batches

    cal = Calibrator(load_checkpoint(default_model_path()), range_method=method, percentile=99.9)
    seen = {}
    cal.on_observe = lambda name, values: seen.setdefault(name, values.copy())
    ids, mask = join_batches(batches, 1)
    cal.step(ids, mask)
    n_layers = cal.config["num_hidden_layers"]
    assert len(seen) == 1 + 9 * n_layers and list(seen)[0] == "embeddings.output_activation"
    assert all(v.size % int(mask.sum()) == 0 for v in seen.values())  # real tokens only
    ranges = cal.ranges()
    gains = []
    for name, values in seen.items():
        lo, hi = ranges[name]
        chosen = _fake_quant_mse(values, lo, hi)
        minmax = _fake_quant_mse(values, values.min(), values.max())
        if method != "percentile":
            assert chosen <= minmax * (1 + 1e-9), name
        gains.append((minmax, chosen))
    if method == "minmax":
        assert all(m == c for m, c in gains)
    else:
        assert any(m > 1.05 * c for m, c in gains)  # some range is clipped, to its benefit
    assert set(cal.clip_report) == set(seen)
    with pytest.raises(CalibrationError, match="exactly one batch"):
        cal.step(ids, mask)


@pytest.mark.parametrize("method", ["mse", "search"])
def test_search_checkpoint_loads_and_runs(tmp_path, batches, method):
    result = calibrate_checkpoint(default_model_path(), batches=batches, out=tmp_path / "m", progress=False,
                                  range_method=method)
    assert result.batches == 1 and result.tokens == sum(int(m.sum()) for _, m in batches)
    assert result.range_method == method and len(result.clip_report) == 37
    model = IBertModel.from_pretrained(tmp_path / "m", datapath="exact")
    assert np.isfinite(model(batches[0][0], attention_mask=batches[0][1]).last_hidden_state).all()
    with pytest.raises(ValueError, match="range_method"):
        Calibrator(load_checkpoint(default_model_path()), range_method="kl")
    with pytest.raises(ValueError, match="cannot continue"):
        Calibrator(load_checkpoint(default_model_path()), range_method="mse", reset=False)


@pytest.mark.oracle
@pytest.mark.parametrize("method", ["mse", "search"])
def test_search_checkpoint_runs_bit_exact_in_transformers(tmp_path, batches, method):
    """The format is unchanged: transformers loads an mse- or search-calibrated folder with no
    missing or unexpected key and reproduces ibert-ref's transformers datapath bit for bit."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    calibrate_checkpoint(default_model_path(), batches=batches, out=tmp_path / "m", progress=False,
                         range_method=method, gemm="torch")
    tm, info = transformers.IBertModel.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = batches[2]
    with torch.no_grad():
        hf = tm.eval()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    ours = IBertModel.from_pretrained(tmp_path / "m", datapath="transformers", gemm="torch")
    np.testing.assert_array_equal(ours(ids, attention_mask=mask).last_hidden_state, hf.numpy())


def test_cli_calibrate_and_convert_with_range_search(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(CALIB_TEXTS) + "\n")
    assert main(["calibrate", "--texts", str(texts), "--out", str(tmp_path / "o"), "--range", "percentile",
                 "--percentile", "99.9", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 1 batches" in out and "range percentile" in out and "8-bit ranges clipped" in out
    IBertModel.from_pretrained(tmp_path / "o")
    pytest.importorskip("transformers")
    from test_convert import SENTENCES, _bert_like

    _bert_like(tmp_path / "src", "bert", 0)
    texts.write_text("\n".join(SENTENCES))
    assert main(["convert", "--model", str(tmp_path / "src"), "--out", str(tmp_path / "conv"), "--texts", str(texts),
                 "--range", "mse", "--no-progress"]) == 0
    assert "range mse" in capsys.readouterr().out
    IBertModel.from_pretrained(tmp_path / "conv")


# ---------------------------------------------------------------------------------------
# --range search: output-aware clipping against the float model
def test_float_erf_and_gelu_match_math_erf():
    import math

    from ibert_ref.calibrate import erf_f32, gelu_f32

    x = np.linspace(-6, 6, 2001)
    ref = np.array([math.erf(v) for v in x])
    assert np.abs(erf_f32(x.astype(F32)) - ref).max() < 5e-7  # 1.5e-7 (A&S 7.1.26) + float32 rounding
    ref_gelu = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(gelu_f32(x.astype(F32)), ref_gelu, atol=2e-6)


@pytest.mark.oracle
def test_float_model_is_transformers_float_ibert(batches):
    """The search's reference: every layer output of :class:`FloatModel` equals transformers'
    ``IBertModel(quant_mode=False)`` hidden states on a padded batch (real tokens), to float32 rounding."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ibert_ref.calibrate import FloatModel
    from ibert_ref.model import roberta_position_ids

    ckpt = load_checkpoint(default_model_path())
    cal = Calibrator(ckpt)  # for its float32 tensor reader
    ids, mask = batches[2]
    assert mask.min() == 0
    real = mask > 0
    ours = FloatModel(cal.get, ckpt.config).forward(ids, np.zeros_like(ids), roberta_position_ids(ids, 1), mask)
    tm = transformers.IBertModel.from_pretrained(default_model_path(), quant_mode=False).eval()
    with torch.no_grad():
        hs = tm(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                output_hidden_states=True).hidden_states
    assert len(ours) == len(hs) - 1 == ckpt.config["num_hidden_layers"]
    for i, h in enumerate(ours):
        np.testing.assert_allclose(h, hs[i + 1].numpy()[real], atol=2e-5, rtol=1e-5, err_msg=f"layer {i}")


def _searched(batches, target="float"):
    from ibert_ref.calibrate import join_batches

    cal = Calibrator(load_checkpoint(default_model_path()), range_method="search", search_target=target)
    seen, tables = {}, {}
    cal.on_observe = lambda name, values: seen.setdefault(name, values.copy())
    cal.on_search = lambda name, clips, scores: tables.setdefault(name, (clips, scores))
    ids, mask = join_batches(batches, 1)
    cal.step(ids, mask)
    return cal, seen, tables, (ids, mask)


@pytest.mark.parametrize("target", ["float", "local"])
def test_search_is_never_worse_than_the_mse_clip_on_its_objective(batches, target):
    """Each 8-bit QuantAct's chosen clip has the lowest layer-output error of its candidates; the
    mse clip, recomputed here from the values the QuantAct observed, is one of them (so the choice
    is never worse than mse on that objective); the written range is that clip."""
    from ibert_ref.calibrate import mse_optimal_clip

    cal, seen, tables, _ = _searched(batches, target)
    assert list(tables) == list(seen) and len(tables) == 1 + 9 * cal.config["num_hidden_layers"]
    ranges, moved = cal.ranges(), 0
    for name, (clips, scores) in tables.items():
        values = seen[name]
        c_mse = mse_optimal_clip(values, 8)
        assert c_mse in clips, name
        rep = cal.clip_report[name]
        assert rep.clip == clips[int(np.argmin(scores))] and rep.objective == min(scores)
        assert rep.objective <= scores[clips.index(c_mse)] and rep.objective_mse == scores[clips.index(c_mse)]
        assert all(0 < c <= np.abs(values).max() for c in clips) and len(set(clips)) == len(clips)
        lo, hi = ranges[name]
        assert max(abs(lo), abs(hi)) == F32(rep.clip) and lo >= values.min() and hi <= values.max()
        moved += rep.clip != c_mse
    assert moved > 0  # the search does move some clips away from the mse one on this model


def test_search_is_deterministic(batches):
    a, _, ta, _ = _searched(batches)
    b, _, tb, _ = _searched(batches)
    assert a.ranges() == b.ranges() and a.tracker.shifts == b.tracker.shifts and ta == tb


@pytest.mark.oracle
def test_search_objective_of_the_last_layer_is_the_error_against_transformers_float(batches):
    """Independent check of the objective: for the last ``output.output_activation`` the search
    scores ``mean((y - t)^2)`` of the layer output itself, over real tokens. ``y`` = the quantized
    last-layer output of the calibration forward (captured), ``t`` = transformers' float I-BERT
    on the same batch."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ibert_ref.calibrate import join_batches

    outputs = []

    class Capturing(Calibrator):
        def _layer(self, *args):
            out = super()._layer(*args)
            outputs.append(self.dp.dequantize(out))
            return out

    ids, mask = join_batches(batches, 1)
    cal = Capturing(load_checkpoint(default_model_path()), range_method="search")
    cal.step(ids, mask)
    last = f"encoder.layer.{len(outputs) - 1}.output.output_activation"
    with torch.no_grad():
        t = transformers.IBertModel.from_pretrained(default_model_path(), quant_mode=False).eval()(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    real = mask > 0
    err = float(np.mean((outputs[-1][real].astype(np.float64) - t[real]) ** 2))
    assert cal.clip_report[last].objective == pytest.approx(err, rel=1e-4)


def test_search_errors():
    from ibert_ref.calibrate import range_for_clip, select_range

    with pytest.raises(ValueError, match="search_target"):
        Calibrator(load_checkpoint(default_model_path()), range_method="search", search_target="global")
    with pytest.raises(ValueError, match="applies to range_method='search' only"):
        Calibrator(load_checkpoint(default_model_path()), range_method="mse", search_target="local")
    with pytest.raises(ValueError, match="Calibrator"):
        select_range(_heavy_tailed(), 8, "search")
    with pytest.raises(ValueError, match="exceeds"):
        range_for_clip(-1.0, 2.0, 3.0)


def test_cli_calibrate_range_search(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(CALIB_TEXTS) + "\n")
    assert main(["calibrate", "--texts", str(texts), "--out", str(tmp_path / "o"), "--range", "search",
                 "--search-target", "local", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "range search" in out and "clips differ from the mse clip" in out
    IBertModel.from_pretrained(tmp_path / "o")


@pytest.mark.parametrize("method,datapath", [("minmax", "transformers"), ("percentile", "transformers"),
                                             ("mse", "transformers"), ("search", "transformers"),
                                             ("mse", "exact")])
def test_whole_set_calibration_pass_computes_the_written_models_integers(tmp_path, batches, method, datapath):
    """The sequential calibration pass chooses each range on exactly the integers the written
    checkpoint computes in eval: at every QuantAct (embeddings_act1 included, whose two calls
    share one range chosen before the first), its output equals the trace of
    ``IBertModel.from_pretrained(out, datapath=<calibration datapath>)`` on the same batch."""
    from ibert_ref.calibrate import join_batches

    ids, mask = join_batches(batches, 1)
    result = calibrate_checkpoint(default_model_path(), batches=batches, out=tmp_path / "c", progress=False,
                                  range_method=method, datapath=datapath)
    cal = Calibrator(load_checkpoint(default_model_path()), range_method=method, datapath=datapath)
    outputs, calls = {}, []
    cal.on_output = lambda name, t: (calls.append(name), outputs.__setitem__(name, cal.dp.integers(t)))
    cal.step(ids, mask)
    assert cal.ranges() == result.ranges  # deterministic: this pass is the one that wrote the folder
    assert calls.count("embeddings.embeddings_act1") == 2  # the last one is the traced (second) call

    trace = IBertModel.from_pretrained(tmp_path / "c", datapath=datapath)(ids, attention_mask=mask,
                                                                          return_trace=True).trace
    n = cal.config["num_hidden_layers"]
    required = {"embeddings.embeddings_act1", "embeddings.output_activation"}
    required |= {f"encoder.layer.{i}.output.output_activation" for i in range(n)}
    assert required <= set(outputs)
    assert len(outputs) == 2 + n * 12  # act1, output_activation; 12 QuantActs per layer (softmax.act included)
    for name, q in outputs.items():
        assert name in trace, name
        np.testing.assert_array_equal(q, trace[name], err_msg=f"{method}/{datapath}: {name}")
