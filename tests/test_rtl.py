"""The Verilog in rtl/ simulated under Icarus Verilog on the golden vectors.

``ibert_ref.vectors.write_vectors`` writes the bundled model's vectors (a padded batch of two
sentences, so the softmax rows have masked keys) into a tmp folder; ``ibert_ref.hardware.rtl_tb``
runs ``rtl/tb_requant.v`` on every requantization op (QuantAct: 8/16/22 bits, with and without
the residual branch) and ``rtl/tb_iexp.v`` on every i-exp op, and each testbench compares every
element with the golden output. The shortcut requantizer ``(z*m + 2^(e-1)) >> e`` (built with
``-DIBERT_ROUND_HALF_UP``) must fail: the model's vectors contain no exact tie (counted here), so
a crafted tie set in the same format (:func:`~ibert_ref.hardware.rtl_tb.write_tie_vectors`) is
what catches it.

Without iverilog/vvp the tests skip with "missing tool: iverilog" (a failure under CI=true).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ibert_ref.hardware import rtl_tb
from ibert_ref.model import IBertModel
from ibert_ref.tokenizer import Tokenizer
from ibert_ref.vectors import read_hex, write_hex, write_vectors

pytestmark = pytest.mark.rtl

TEXTS = ["The capital of France is Paris.", "Integers all the way down."]


@pytest.fixture(scope="module")
def tools():
    for tool in ("iverilog", "vvp"):
        if shutil.which(tool) is None:
            pytest.skip(f"missing tool: {tool} (Debian package iverilog)")


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vectors")
    enc = Tokenizer.from_pretrained()(TEXTS)
    assert enc["attention_mask"].min() == 0  # padded: masked keys reach the i-exp testbench
    write_vectors(IBertModel.from_pretrained(), enc["input_ids"], folder, attention_mask=enc["attention_mask"])
    return folder


@pytest.fixture(scope="module")
def build(tools, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rtl_build")
    return folder, rtl_tb.compile_testbenches(folder), rtl_tb.compile_testbenches(folder, round_half_up=True)


def _run(folder, build, rhu=False, layers=None):
    build_dir, rne_vvps, rhu_vvps = build
    return rtl_tb.run_vectors(folder, build_dir, layers=layers, vvps=rhu_vvps if rhu else rne_vvps)


def test_every_requantization_and_iexp_op_passes(vectors, build):
    results = _run(vectors, build)
    failed = [r.summary + " " + r.first_mismatch for r in results if not r.passed]
    assert not failed, "\n".join(failed)
    layer0 = [r for r in results if r.name.startswith("encoder.layer.0.")]
    assert sum(r.op == "requantize" for r in layer0) == 11 and sum(r.op == "int_exp" for r in layer0) == 1
    assert len(results) == 3 + 4 * 12  # the embeddings' three QuantActs, then 12 ops in each of 4 layers


def test_testbench_reports_the_first_mismatch(vectors, build, tmp_path):
    """One golden element changed: the requantizer testbench fails and names that element."""
    corrupt = tmp_path / "vectors"
    shutil.copytree(vectors, corrupt)
    name = "encoder.layer.0.attention.output.ln_input_act"
    path = corrupt / "hex" / f"{name}.hex"
    golden = read_hex(path, 22)
    golden[123] += 1
    write_hex(path, golden, 22)
    (result,) = [r for r in _run(corrupt, build, layers={0}) if r.name == name]
    assert not result.passed and "FAIL" in result.summary and "1 of" in result.summary
    assert result.first_mismatch.startswith(f"FIRST MISMATCH {name}: element 123 ")


def test_round_half_up_shortcut_fails_on_ties(vectors, build, tmp_path):
    """The model's vectors hold no exact tie, so the shortcut passes them; the crafted tie set
    (half of its inputs at ties) passes the RNE requantizer and fails the shortcut."""
    assert sum(rtl_tb.count_ties(vectors).values()) == 0
    assert all(r.passed for r in _run(vectors, build, rhu=True, layers={-1, 0}))
    ties = tmp_path / "ties"
    rtl_tb.write_tie_vectors(ties)
    assert rtl_tb.count_ties(ties)["ties.requant"] > 2000
    (good,) = _run(ties, build)
    (bad,) = _run(ties, build, rhu=True)
    assert good.passed, good.summary
    assert not bad.passed and bad.first_mismatch.startswith("FIRST MISMATCH ties.requant")
    n_bad = int(bad.summary.split("FAIL ties.requant: ")[1].split()[0])
    golden = np.load(ties / "vectors.npz")["ties.requant"]
    assert n_bad > 1000 and n_bad < golden.size


def test_requantizer_at_the_edges_of_its_ranges(build, tmp_path):
    """62-bit inputs, |m| = 2^31 of both signs, e from 0 to 255 (>= 96 rounds to 0; real
    checkpoints have channels with e ~ 160), 22-bit saturation: 5,632 elements."""
    folder = tmp_path / "extreme"
    manifest = rtl_tb.write_extreme_vectors(folder)
    assert max(manifest["ops"][0]["params"]["dy"]["e"]) == 255
    (result,) = _run(folder, build)
    assert result.passed, result.summary + " " + result.first_mismatch


def test_cli_flow_prints_pass_per_op(vectors, build, capsys):
    build_dir = Path(build[0]) / "cli"
    assert rtl_tb.main([str(vectors), "--build", str(build_dir), "--layers", "0"]) == 0
    out = capsys.readouterr().out
    assert "PASS encoder.layer.0.attention.self.softmax.act" in out and "12 of 12 ops PASS" in out


@pytest.mark.parametrize("top, sources", [("ibert_requantizer", ["ibert_requant.v"]),
                                          ("ibert_iexp16", ["ibert_requant.v", "ibert_iexp.v"])])
def test_rtl_is_lint_clean_under_verilator(top, sources):
    """``verilator --lint-only -Wall``: no width, unused or latch warning in the synthesizable RTL
    (Verilator is optional: .ci/run installs only iverilog)."""
    verilator = shutil.which("verilator")
    if verilator is None:
        pytest.skip("optional tool absent: verilator (lint only)")
    import subprocess

    done = subprocess.run([verilator, "--lint-only", "-Wall", "-Wno-DECLFILENAME", f"-I{rtl_tb.RTL_DIR}", "--top-module", top,
                           *[str(rtl_tb.RTL_DIR / s) for s in sources]], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
