"""``verify --texts`` and ``vectors --texts``: many inputs through the sweep engine (Dask)."""

import json

import numpy as np
import pytest

pytest.importorskip("distributed")

from ibert_ref.cli import main  # noqa: E402
from ibert_ref.tokenizer import Tokenizer  # noqa: E402

SENTENCES = ["The cat sat on the mat.", "Hello world", "A third, longer sentence for the batch."]


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def test_vectors_texts_writes_one_folder_per_input(tmp_path, texts, capsys):
    out = tmp_path / "v"
    assert main(["vectors", "--texts", str(texts), "--out", str(out), "--workers", "1", "--no-param-hex"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["folders"] == ["input-00000", "input-00001", "input-00002"]
    enc = Tokenizer.from_pretrained()(SENTENCES)
    for i, folder in enumerate(index["folders"]):
        assert (out / folder / "manifest.json").is_file()
        with np.load(out / folder / "vectors.npz") as z:
            stored = z["input_ids"]
        real = enc["input_ids"][i][enc["attention_mask"][i] == 1]
        assert np.array_equal(stored.reshape(-1), real), folder
    assert "3 vectors folders" in capsys.readouterr().out


def test_verify_texts_summarises_every_batch(tmp_path, texts, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "vv"
    assert main(["verify", "--texts", str(texts), "--out", str(out), "--workers", "1"]) == 0
    summary = json.loads((out / "verify.json").read_text())
    assert summary["ok"] and summary["inputs"] == 3 and summary["unexplained"] == 0
    replay = summary["totals"]["replay"]
    assert replay["elements"] > 0 and replay["equal"] == replay["elements"]  # transformers datapath, torch GEMM
    assert "-> OK" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["verify", "--texts", "T"], "--texts needs --out"),
    (["verify", "--text", "hi", "--workers", "2"], "--workers apply to --texts"),
    (["vectors", "--texts", "T", "--out", "o", "--overwrite"], "--overwrite does not apply to --texts"),
    (["vectors", "--texts", "T", "--out", "o", "--datapath", "arm", "--profile-option", "acc_bits=24"],
     "--profile-option is not supported"),
])
def test_many_inputs_option_errors(tmp_path, texts, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [str(texts) if a == "T" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
