"""`ibert-ref run` — the README's first command — on the bundled model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ibert_ref import IBertModel, Tokenizer
from ibert_ref.cli import main

TEXT = "The capital of France is Paris."


def test_run_prints_every_op_with_widths_and_the_output_vector(capsys):
    assert main(["run", TEXT]) == 0
    out = capsys.readouterr().out
    model = IBertModel.from_pretrained()
    enc = Tokenizer.from_pretrained()(TEXT)
    result = model(enc["input_ids"], return_trace=True)
    for name, q in result.trace.items():
        line = next(row for row in out.splitlines() if row.startswith(name + " "))
        fields = line.split()
        assert int(fields[3]) == int(q.min()) and int(fields[4]) == int(q.max()), name
    assert str(result.last_hidden_state_int[0, 0, :8].tolist()) in out


def test_run_transformers_datapath_and_layer_filter(capsys):
    assert main(["run", TEXT, "--datapath", "transformers", "--layers", "1"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.1.output.output_activation" in out
    assert "encoder.layer.0." not in out
    assert "datapath: transformers" in out


def test_run_with_a_folder_and_bad_model_gives_a_clear_error(capsys, tmp_path):
    assert main(["run", TEXT, "--model", str(tmp_path / "nowhere")]) == 2
    assert "error" in capsys.readouterr().err


def test_console_script_runs():
    exe = shutil.which("ibert-ref", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("console script not installed next to this interpreter")
    done = subprocess.run([exe, "run", TEXT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "encoder.layer.3.output.output_activation" in done.stdout


def test_the_shipped_calibration_file_calibrates_the_bundled_model(tmp_path, capsys):
    """examples/calib.txt (docs/verification.md's commands) works as --texts: every line is a
    non-empty UTF-8 sentence, and the calibrated folder loads and runs."""
    texts = Path(__file__).resolve().parents[1] / "examples" / "calib.txt"
    lines = texts.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 30 and all(line.strip() for line in lines)
    out = tmp_path / "calibrated"
    assert main(["calibrate", "--texts", str(texts), "--out", str(out), "--no-progress"]) == 0
    assert f"written to {out}" in capsys.readouterr().out
    model = IBertModel.from_pretrained(str(out))
    enc = Tokenizer.from_pretrained(str(out))(TEXT)
    assert model(enc["input_ids"]).last_hidden_state_int.shape[-1] == model.config["hidden_size"]
