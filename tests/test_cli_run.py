"""`ibert-ref run` — the README's first command — on the bundled model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
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
