"""``verify`` under a hardware profile: the profile against the exact datapath, every differing
element classed by the profile's documented deviation (re-run with that one thing switched back
to exact), 0 unexplained; an injected bug is unexplained."""

from __future__ import annotations

import numpy as np
import pytest

from ibert_ref.cli import main
from ibert_ref.data import default_model_path
from ibert_ref.datapath import available_datapaths, make_datapath
from ibert_ref.hardware.profiles import HardwareDatapath
from ibert_ref.oracle.verify import is_profile, profile_switches, verify
from ibert_ref.tokenizer import Tokenizer

TEXTS = ["The capital of France is Paris.", "Hi there", "Water boils at one hundred degrees Celsius."]

CASES = [(n, {}) for n in available_datapaths() if n not in ("exact", "transformers")] + [
    ("generic", dict(acc_bits=24, overflow="saturate")),
    ("generic", dict(acc_bits=24, overflow="saturate", k_step=32, requant="gemmlowp", gelu="int32")),
    ("generic", dict(acc_bits=16, overflow="saturate", k_step=32)),
    ("generic", dict(acc_bits=16, overflow="wrap")),
    ("generic", dict(exp="shift-right", ln_var="int32-sat", probs="u8-sat", sqrt="float32")),
    ("generic", dict(exp="left-shift", requant="cutlass-f32", gelu="int32")),
]


def _ids(v):
    return v if isinstance(v, str) else (",".join(f"{k}={x}" for k, x in v.items()) or "defaults")


@pytest.fixture(scope="module")
def batch():
    enc = Tokenizer.from_pretrained(default_model_path())(TEXTS)
    return enc["input_ids"], enc["attention_mask"]


def _classes(report, mode):
    return {k for r in (report.e2e if mode == "e2e" else report.replay).values() for k in r.causes}


@pytest.mark.parametrize("name,kw", CASES, ids=_ids)
def test_every_profile_difference_is_classed_by_its_deviation(batch, name, kw):
    dp = make_datapath(name, **kw)
    assert is_profile(dp)
    ids, mask = batch
    report = verify(None, input_ids=ids, attention_mask=mask, datapath=dp)
    assert report.unexplained == 0, report.format(only_differing=True)
    assert report.ok and report.datapath == dp.name
    assert report.to_dict()["reference"] == "exact datapath" and report.to_dict()["unexplained"] == 0
    allowed = {label for _, label, _ in profile_switches(dp)}
    allowed |= {f"{a} + {b}" for a in allowed for b in allowed}
    assert _classes(report, "replay") <= allowed | {"input-representation"}
    assert _classes(report, "e2e") <= allowed | {"cascade"}
    # every deviation the profile has is the cause of a difference, or of none at all
    if dp.parameters().get("gelu") == "int32":
        assert "gelu=int32" in _classes(report, "replay")
    if dp.parameters().get("requant") == "arm":
        assert "requant=arm" in _classes(report, "replay")
    # e2e: the first differing op is an own deviation, never a cascade
    first = report.first_divergence("e2e")
    if first is not None:
        assert "cascade" not in report.e2e[first].causes


def test_24_bit_saturating_accumulators_equal_the_exact_datapath(batch):
    ids, mask = batch
    report = verify(None, input_ids=ids, attention_mask=mask,
                    datapath=make_datapath("generic", acc_bits=24, overflow="saturate", k_step=32))
    for mode in ("replay", "e2e"):
        t = report.totals(mode)
        assert t["equal"] == t["elements"] > 0


def test_16_bit_accumulators_are_classed_as_accumulator_and_k_step(batch):
    ids, mask = batch
    report = verify(None, input_ids=ids, attention_mask=mask,
                    datapath=make_datapath("generic", acc_bits=16, overflow="saturate", k_step=32))
    replay = report.totals("replay")
    assert replay.get("accumulator int16 saturate", 0) > 0
    first = report.first_divergence("e2e")
    assert first.endswith("attention.self.query")
    assert "saturated in 16 bits" in report.e2e[first].evidence["accumulator int16 saturate"]  # its records
    assert report.unexplained == 0


def test_an_injected_profile_bug_is_unexplained(batch, monkeypatch):
    """A bug in a step the profile shares with its switched-back copies (floor-sqrt + 1) is
    not a documented deviation: no switch reproduces the exact datapath, so it is unexplained."""
    original = HardwareDatapath.floor_sqrt

    def buggy(self, v):
        return original(self, v) + 1

    monkeypatch.setattr(HardwareDatapath, "floor_sqrt", buggy)
    ids, mask = batch
    report = verify(None, input_ids=ids, attention_mask=mask, datapath="arm")
    assert report.unexplained > 0
    assert "unexplained" in report.replay["embeddings.LayerNorm"].causes


def test_cli_verify_under_a_profile_passes(capsys):
    assert main(["verify", "--text", "The capital of France is Paris.", "--datapath", "arm"]) == 0
    out = capsys.readouterr().out
    assert "compared with the exact datapath" in out
    assert "== end to end, against the exact datapath ==" in out
    assert "== op-by-op replay (each op fed the exact datapath's inputs) ==" in out
    assert "unexplained differences: 0  -> OK" in out


def test_cli_verify_takes_profile_options(capsys):
    argv = ["verify", "--text", "Hello world", "--datapath", "generic",
            "--profile-option", "acc_bits=16", "--profile-option", "overflow=saturate"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "saturated in 16 bits" in out and "unexplained differences: 0  -> OK" in out
    assert main(["verify", "--text", "Hello world", "--profile-option", "acc_bits=16"]) == 2  # not a profile
    assert "--profile-option applies to the hardware profiles" in capsys.readouterr().err


def test_768_wide_model_profiles_have_no_unexplained_difference(tmp_path):
    """A random calibrated 768-wide model (12 heads, intermediate 3072; transformers builds it)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ibert_ref.oracle.builders import make_calibrated_ibert

    _, folder = make_calibrated_ibert(tmp_path / "wide", hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                                      intermediate_size=3072, vocab_size=256, calib_batches=2)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 256, size=(2, 20))
    ids[:, 0], ids[:, -1] = 0, 2
    mask = np.ones_like(ids)
    mask[1, 14:], ids[1, 14:] = 0, 1
    for name, kw in (("arm", {}), ("tensor-core", {}), ("generic", dict(acc_bits=24, overflow="saturate"))):
        report = verify(folder, input_ids=ids, attention_mask=mask, datapath=make_datapath(name, **kw))
        assert report.unexplained == 0, (name, report.format(only_differing=True))
        if name != "generic":
            assert report.totals("replay").get("gelu=int32", 0) > 0


def test_force_dequant_models_are_refused_under_a_profile(tmp_path):
    import json
    import shutil

    folder = tmp_path / "fd"
    shutil.copytree(default_model_path(), folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "force_dequant": "gelu"}))
    with pytest.raises(ValueError, match="all-integer model only"):
        verify(str(folder), input_ids=np.array([[0, 100, 2]]), datapath="arm")
