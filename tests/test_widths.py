"""Width census (ibert_ref.widths): rows match the trace and independent recomputations of the
kernels' intermediates; the known wide spots of I-BERT show on a roberta-base-shaped layer."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from ibert_ref.cli import main as cli_main
from ibert_ref.data import default_model_path
from ibert_ref.datapath import make_datapath
from ibert_ref.model import IBertModel
from ibert_ref.quant import bits_needed_signed
from ibert_ref.tokenizer import Tokenizer
from ibert_ref.widths import bits_needed_unsigned, width_census

TEXTS = ["The capital of France is Paris.", "Water boils at one hundred degrees Celsius at sea level."]
L0 = "encoder.layer.0."


@pytest.fixture(scope="module")
def batch():
    enc = Tokenizer.from_pretrained(default_model_path())(TEXTS)
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def exact(batch):
    """(model, trace output, census) on the bundled model, exact datapath."""
    ids, mask = batch
    model = IBertModel.from_pretrained()
    out = model(ids, attention_mask=mask, return_trace=True)
    return model, out, width_census(model, ids, mask)


def test_output_rows_match_the_trace(exact):
    _, out, census = exact
    rows = {r.op: r for r in census.rows if r.quantity == "out"}
    assert list(rows) == list(out.trace)
    for name, q in out.trace.items():
        r = rows[name]
        assert (r.lo, r.hi) == (int(q.min()), int(q.max()))
        assert r.need_signed == bits_needed_signed(r.lo, r.hi)
        assert r.nominal.bits == out.trace_meta[name].bits


def test_bits_needed():
    assert bits_needed_unsigned(0, 255) == 8 and bits_needed_unsigned(0, 256) == 9
    assert bits_needed_unsigned(-1, 5) is None
    assert bits_needed_signed(0, 256) == 10 and bits_needed_signed(-(2**31), 2**31 - 1) == 32


def test_intermediates_come_before_their_op(exact):
    _, _, census = exact
    ops = [r.op for r in census.rows]
    gelu = L0 + "intermediate.intermediate_act_fn"
    first = ops.index(gelu)
    assert census.rows[first].quantity != "out" and census.rows[ops.index(gelu, first) + 2].op == gelu
    assert census.find(L0 + "attention.self", "QK^T acc").op == L0 + "attention.self"


def python_layernorm_var(x_row, shift):
    """sum(((x - rne(mean)) >> shift)^2) of one row, in Python integers."""
    x = [int(v) for v in x_row]
    mean = round(Fraction(sum(x), len(x)))  # half to even
    return sum(((v - mean) >> shift) ** 2 for v in x)


def test_layernorm_variance_row_matches_python_integers(exact, batch):
    model, out, census = exact
    _, mask = batch
    x = out.trace[L0 + "attention.output.ln_input_act"].astype(np.int64)
    shift = model.compiled.layers[0].attn_layernorm.shift
    var = [python_layernorm_var(x[b, t], shift) for b in range(x.shape[0]) for t in range(x.shape[1])]
    row = census.find(L0 + "attention.output.LayerNorm", "var = sum((y>>shift)^2)")
    assert (row.lo, row.hi) == (min(var), max(var))
    assert row.nominal.signed is False


def test_exp_rows_match_python_integers(exact, batch):
    # i-exp recomputed from the traced int8 q and k with Python integers
    model, out, census = exact
    _, mask = batch
    p = model.compiled.layers[0].softmax
    x0, x0_30, b_int, c_int = (int(np.asarray(v).ravel()[0]) for v in (p.x0_int, p.x0_30, p.b_int, p.c_int))
    q8 = out.trace[L0 + "attention.self.query_activation"].astype(np.int64)
    k8 = out.trace[L0 + "attention.self.key_activation"].astype(np.int64)
    heads = model.config["num_attention_heads"]
    hd = q8.shape[-1] // heads
    polys, exps = [], []
    for b in range(q8.shape[0]):
        live = [j for j in range(q8.shape[1]) if mask[b, j]]
        for h in range(heads):
            qh, kh = q8[b, :, h * hd : (h + 1) * hd], k8[b, :, h * hd : (h + 1) * hd]
            for i in range(q8.shape[1]):
                s = {j: int(qh[i] @ kh[j]) for j in live}
                top = max(s.values())
                for j in range(q8.shape[1]):
                    x = max(s[j] - top, x0_30) if j in s else x0_30
                    z = x // x0
                    r = x - x0 * z
                    poly = (r + b_int) * r + c_int
                    polys.append(poly)
                    exps.append(max(poly, 0) << (30 - z))
    poly_row = census.find(L0 + "attention.self.softmax.act", "poly")
    assert (poly_row.lo, poly_row.hi) == (min(polys), max(polys))
    exp_row = census.find(L0 + "attention.self.softmax.act", "exp_int = poly*2^(30-q)")
    assert exp_row.hi == max(exps) and exp_row.need_signed > 32 and "*" in exp_row.flag


def test_gelu_product_row_is_the_intgelu_output(exact):
    _, _, census = exact
    product = census.find(L0 + "intermediate.intermediate_act_fn", "x * (erf_q + one)")
    output = census.find(L0 + "intermediate.intermediate_act_fn", "out")
    assert (product.lo, product.hi) == (output.lo, output.hi)


def test_single_key_softmax_rows_need_9_bits_only_in_float32():
    # a one-token sequence: its softmax row has one live key. Exact integers: e = 32767 (the
    # clamped max exponential), factor = 2^32 // e, out = e * factor >> 24 = 255; transformers'
    # float32 product rounds e * factor up to 2^32, giving 256 (9 bits unsigned).
    ids = np.array([[0, 1, 1, 1], [0, 100, 200, 2]])
    mask = np.array([[1, 0, 0, 0], [1, 1, 1, 1]])
    exact = width_census(IBertModel.from_pretrained(), ids, mask)
    e = exact.find(L0 + "attention.self.softmax.act", "out").hi
    assert exact.find(L0 + "attention.self.softmax", "out").hi == (e * (2**32 // e)) >> 24 == 255
    emulated = width_census(IBertModel.from_pretrained(datapath="transformers"), ids, mask)
    row = emulated.find(L0 + "attention.self.softmax", "out")
    assert row.hi == 256 and row.need_unsigned == 9


def test_census_of_a_profile_keeps_its_overflow_log(batch):
    ids, mask = batch
    model = IBertModel.from_pretrained(datapath=make_datapath("generic", acc_bits=16))
    own = model.datapath.oplog
    census = width_census(model, ids, mask)
    assert model.datapath.oplog is own and not own.collect_widths
    assert census.overflow_events
    # the register holds the wrapped values; the exact ones get their own flagged row
    assert census.find(L0 + "attention.self.query", "out").flag == ""
    exact_acc = census.find(L0 + "attention.self.query", "acc (exact)")
    assert exact_acc.flag.startswith("!") and exact_acc.need_signed > 16
    exact = IBertModel.from_pretrained()
    width_census(exact, ids, mask)
    assert exact.datapath.oplog is None


def test_cli_widths(capsys):
    assert cli_main(["widths", "--text", "Hello world", "--layers", "0", "--datapath", "arm"]) == 0
    text = capsys.readouterr().out
    assert "x' * (erf_q' + one')" in text and "flagged row(s)" in text
    assert cli_main(["widths", "--ids", "0", "--ids", "0 100 2", "--layers", "0", "--flagged", "--markdown"]) == 0
    text = capsys.readouterr().out
    assert text.count("| `encoder.layer.0") >= 2 and "exp_int" in text
    assert cli_main(["widths"]) == 2


# ---------------------------------------------------------------------------------------
# a roberta-base-shaped layer (hidden 768, 12 heads, intermediate 3072), built with transformers


@pytest.fixture(scope="module")
def roberta_base_layer(tmp_path_factory):
    pytest.importorskip("transformers")
    from ibert_ref.oracle.builders import make_calibrated_ibert

    folder = tmp_path_factory.mktemp("rb-layer")
    make_calibrated_ibert(
        folder,
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=3072,
        vocab_size=128,
        calib_batches=2,
        calib_batch_size=4,
        calib_max_len=16,
        check_reload=False,
    )
    rng = np.random.default_rng(0)
    ids = np.concatenate([[0], rng.integers(5, 128, 14), [2]])[None]
    return folder, ids


def test_known_wide_spots_of_a_roberta_base_layer(roberta_base_layer):
    folder, ids = roberta_base_layer
    census = width_census(IBertModel.from_pretrained(folder), ids)
    gelu = census.find(L0 + "intermediate.intermediate_act_fn", "x * (erf_q + one)")
    assert gelu.need_signed >= 36 and "*" in gelu.flag  # ~40 bits
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
        var = census.find(L0 + ln, "var = sum((y>>shift)^2)")
        assert 2**31 <= var.hi < 2**32  # near 2^32: fits uint32, not int32
        assert var.need_unsigned == 32 and var.need_signed == 33 and var.flag == ""
    assert census.find(L0 + "attention.self.softmax.act", "exp_int = poly*2^(30-q)").need_signed > 40
    assert census.find(L0 + "attention.self.softmax", "out").need_unsigned <= 9


def test_arm_profile_holds_every_value_of_a_roberta_base_layer(roberta_base_layer):
    folder, ids = roberta_base_layer
    census = width_census(IBertModel.from_pretrained(folder, datapath="arm"), ids)
    assert census.overflow_events == []
    assert not [r for r in census.rows if "!" in r.flag]
    for r in census.rows:
        if r.op.endswith("intermediate_act_fn"):
            assert r.need_signed <= 32, r
    assert census.find(L0 + "output.LayerNorm", "var = sum((y>>shift)^2)").provided.signed is False


def test_saturating_int32_variance_is_wrong_on_a_roberta_base_layer(roberta_base_layer):
    folder, ids = roberta_base_layer
    out = IBertModel.from_pretrained(folder, datapath=make_datapath("generic", ln_var="int32-sat"))(ids)
    events = [e for e in out.overflow_events if e.part == "var (int32 saturating)"]
    assert events and all(e.produced == 2**31 - 1 and e.exact > 2**31 - 1 for e in events)
