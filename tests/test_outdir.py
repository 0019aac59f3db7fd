"""Output folders (``ibert_ref.outdir`` and the commands that write folders: vectors, calibrate,
convert): ``--out`` is always either the old complete folder or the new complete one.

Covers: a new folder, an empty one, a non-empty one (refused; ``--overwrite`` replaces it
whole, so a 2-layer run over a 4-layer folder leaves no layer-2/3 file), a file, the input folder
itself / inside it / around it, an exception or KeyboardInterrupt midway (the old folder stays,
no temporary folder is left), a failing final rename (the old folder is put back), the file
modes (the process umask, not safetensors' 0600), and a real SIGINT to a running ``vectors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ibert_ref import strategies as S
from ibert_ref.data import default_model_path
from ibert_ref.outdir import OutputDirError, apply_umask, check_output_dir, output_dir

from cli_helpers import run_cli

TINY = {
    "model_type": "ibert", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 4,
    "intermediate_size": 16, "vocab_size": 20, "max_position_embeddings": 12, "type_vocab_size": 1,
    "pad_token_id": 1, "quant_mode": True, "hidden_act": "gelu", "force_dequant": "none",
}


def snapshot(folder: Path) -> dict:
    """relative path -> sha256 of every file below ``folder`` (folders as ``None``)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def leftovers(parent: Path) -> list:
    """Temporary or set-aside folders of ``output_dir`` left in ``parent``."""
    return [p.name for p in parent.iterdir() if ".ibert-ref-tmp-" in p.name or ".ibert-ref-old-" in p.name]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


# ---------------------------------------------------------------------------------------
# The context manager
def test_a_new_folder_appears_only_when_the_block_succeeds(tmp_path):
    out = tmp_path / "sub" / "out"
    with output_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp != out
        assert not out.exists()  # nothing at --out while writing
        (tmp / "a.txt").write_text("new")
        (tmp / "hex").mkdir()
        (tmp / "hex" / "b.hex").write_text("01\n")
    assert snapshot(out).keys() == {"a.txt", "hex", "hex/b.hex"}
    assert leftovers(out.parent) == []


def test_an_existing_empty_folder_is_used_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with output_dir(out) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new"


def test_a_non_empty_folder_is_refused_without_overwrite_and_replaced_whole_with_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.hex").write_text("old")
    (out / "keep").mkdir()
    with pytest.raises(OutputDirError, match="not empty .*--overwrite"):
        with output_dir(out):
            pytest.fail("the block must not run")
    assert (out / "stale.hex").read_text() == "old"
    with output_dir(out, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
    assert snapshot(out).keys() == {"a.txt"}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("writer failed"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_an_interrupted_block_leaves_the_old_folder_and_no_temporary_folder(tmp_path, exc):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{\"old\": true}")
    before = snapshot(out)
    with pytest.raises(type(exc)):
        with output_dir(out, overwrite=True) as tmp:
            (tmp / "manifest.json").write_text("{\"new\": true}")
            (tmp / "half.hex").write_text("00\n")
            raise exc
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_a_failing_final_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # 1: old folder aside, 2: new folder into place
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space"):
        with output_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert snapshot(out) == {"old.txt": hashlib.sha256(b"old").hexdigest()}
    assert leftovers(tmp_path) == []


def test_output_paths_that_cannot_be_written_are_refused_before_anything_runs(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (a_file, "is not a folder"),
        (a_file / "sub", "is not a folder"),
        (src, "is the input folder"),
        (src / "out", "is inside the input folder"),
        (tmp_path, "contains the input folder"),
        ("", "empty"),
        ("/", "root"),
    ]
    for out, fragment in cases:
        with pytest.raises(OutputDirError, match=fragment):
            check_output_dir(out, inputs=[src], overwrite=True)
    # an input file: only an --out around it is refused (beside it is fine); a Hub id is no folder
    with pytest.raises(OutputDirError, match="contains the input file"):
        check_output_dir(src, inputs=[src / "config.json"], overwrite=True)
    assert check_output_dir(src / "out", inputs=[src / "config.json"]) == (src / "out").resolve()
    assert check_output_dir(tmp_path / "new", inputs=["org/some-hub-model"]) == (tmp_path / "new").resolve()


def test_overwrite_never_replaces_the_current_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work / "sub")
    for out in (work, work / "sub", "..", "."):
        if out == "." or out == work / "sub":
            (work / "sub" / "x").write_text("x")  # non-empty
        with pytest.raises(OutputDirError, match="current folder"):
            check_output_dir(out, overwrite=True)
    assert (work / "notes.txt").read_text() == "mine"


def test_a_symlink_to_the_input_folder_is_the_input_folder(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    link = tmp_path / "link"
    link.symlink_to(src, target_is_directory=True)
    with pytest.raises(OutputDirError, match="input folder"):
        check_output_dir(link, inputs=[src], overwrite=True)


def test_written_files_get_the_process_umask_not_0600(tmp_path, umask_022):
    from safetensors.numpy import save_file

    out = tmp_path / "out"
    with output_dir(out) as tmp:
        save_file({"w": np.zeros(2, np.float32)}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text("{}")
        (tmp / "hex").mkdir()
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (out / "config.json").stat().st_mode & 0o777 == 0o644
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "hex").stat().st_mode & 0o777 == 0o755


def test_apply_umask_follows_the_mask_and_keeps_executables_executable(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "f", 0o600)
    os.chmod(tmp_path / "run.sh", 0o700)
    apply_umask(tmp_path, umask=0o027)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "run.sh").stat().st_mode & 0o777 == 0o750
    assert tmp_path.stat().st_mode & 0o777 == 0o750


# ---------------------------------------------------------------------------------------
# The commands
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 4-layer and a 2-layer random checkpoint, and an ids file they both accept."""
    root = tmp_path_factory.mktemp("models")
    four = S.save_checkpoint(S.make_numpy_checkpoint(TINY, seed=0), root / "four")
    two = S.save_checkpoint(S.make_numpy_checkpoint({**TINY, "num_hidden_layers": 2}, seed=1), root / "two")
    ids = root / "ids.json"
    ids.write_text(json.dumps({"input_ids": [[0, 5, 6, 2]], "attention_mask": [[1, 1, 1, 1]]}))
    return four, two, ids


def vectors(model, ids, out, *extra):
    return run_cli(["vectors", "--model", str(model), "--input-ids", str(ids), "--out", str(out), *extra])


def test_vectors_of_a_2_layer_model_over_a_4_layer_folder_leave_no_stale_file(models, tmp_path):
    four, two, ids = models
    out = tmp_path / "v"
    assert vectors(four, ids, out)[0] == 0
    four_files = snapshot(out)
    assert any("encoder.layer.3." in name for name in four_files)
    code, _, err = vectors(two, ids, out)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert snapshot(out) == four_files
    assert vectors(two, ids, out, "--overwrite")[0] == 0
    assert vectors(two, ids, tmp_path / "fresh")[0] == 0
    assert snapshot(out).keys() == snapshot(tmp_path / "fresh").keys()
    assert not any("encoder.layer.2." in n or "encoder.layer.3." in n for n in snapshot(out))
    assert json.loads((out / "manifest.json").read_text())["model"]["config"]["num_hidden_layers"] == 2
    assert leftovers(tmp_path) == []


def test_vectors_interrupted_midway_keep_the_earlier_folder(models, tmp_path, monkeypatch):
    import ibert_ref.vectors as V

    four, two, ids = models
    out = tmp_path / "v"
    assert vectors(four, ids, out)[0] == 0
    before = snapshot(out)
    real_write_hex = V.write_hex
    written = []

    def write_hex_then_ctrl_c(path, *args, **kw):
        written.append(path)
        if len(written) == 20:
            raise KeyboardInterrupt
        return real_write_hex(path, *args, **kw)

    monkeypatch.setattr(V, "write_hex", write_hex_then_ctrl_c)
    code, _, err = vectors(two, ids, out, "--overwrite")
    assert code == 130
    assert err.strip() == "ibert-ref vectors: interrupted"
    assert len(written) == 20
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_vectors_refuse_to_write_into_the_model_folder(models, tmp_path):
    four, _, ids = models
    model = tmp_path / "m"
    shutil.copytree(four, model)
    before = snapshot(model)
    for out in (model, model / "vectors"):
        code, _, err = vectors(model, ids, out, "--overwrite")
        assert code == 2 and "input folder" in err
    assert snapshot(model) == before


def test_calibrate_failing_while_writing_the_weights_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import safetensors.numpy

    texts = tmp_path / "calib.txt"
    texts.write_text("The capital of France is Paris.\nIntegers all the way down.\n")
    out = tmp_path / "cal"
    argv = ["calibrate", "--texts", str(texts), "--out", str(out), "--no-progress", "--batch-size", "2"]
    assert run_cli(argv)[0] == 0
    before = snapshot(out)

    def save_file_fails(*args, **kw):
        raise OSError(28, "No space left on device", "model.safetensors")

    monkeypatch.setattr(safetensors.numpy, "save_file", save_file_fails)
    code, _, err = run_cli(argv + ["--overwrite", "--momentum", "-1"])
    assert code == 2
    assert "No space left on device" in err and "Errno" not in err
    assert snapshot(out) == before  # in particular config.json is the old one
    assert leftovers(tmp_path) == []


def test_calibrate_writes_files_with_the_umask(tmp_path, umask_022):
    texts = tmp_path / "calib.txt"
    texts.write_text("hello world\n")
    out = tmp_path / "cal"
    assert run_cli(["calibrate", "--texts", str(texts), "--out", str(out), "--no-progress"])[0] == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and modes["config.json"] == 0o644, modes


def test_convert_refuses_its_own_input_folder_and_leaves_it_untouched(tmp_path):
    src = tmp_path / "float-model"
    shutil.copytree(default_model_path(), src)
    before = snapshot(src)
    for out in (src, src / "converted"):
        code, _, err = run_cli(["convert", "--model", str(src), "--out", str(out), "--overwrite"])
        assert code == 2 and "input folder" in err, err
    assert snapshot(src) == before


def test_sigint_to_a_running_vectors_command_leaves_the_earlier_folder(models, tmp_path):
    """A real SIGINT, in a subprocess, while ``vectors`` is writing hex files."""
    four, two, ids = models
    out = tmp_path / "v"
    assert vectors(four, ids, out)[0] == 0
    before = snapshot(out)
    marker = tmp_path / "writing"
    script = textwrap.dedent(f"""
        import sys, time
        import ibert_ref.vectors as V
        from ibert_ref import cli
        real, n = V.write_hex, [0]
        def slow(path, *a, **k):
            n[0] += 1
            if n[0] == 10:
                open({str(marker)!r}, "w").close()
                time.sleep(60)
            return real(path, *a, **k)
        V.write_hex = slow
        sys.exit(cli.main(["vectors", "--model", {str(two)!r}, "--input-ids", {str(ids)!r},
                           "--out", {str(out)!r}, "--overwrite"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "ibert-ref vectors: interrupted"
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


@pytest.fixture
def float_roberta(tmp_path):
    """A float RoBERTa folder: the bundled model's weights under ``model_type: roberta``."""
    src = tmp_path / "roberta"
    shutil.copytree(default_model_path(), src)
    config = json.loads((src / "config.json").read_text())
    config.update(model_type="roberta")
    config.pop("quant_mode", None)
    config.pop("force_dequant", None)
    (src / "config.json").write_text(json.dumps(config))
    return src


@pytest.mark.parametrize("range_method", ["ema", "mse"])
def test_convert_interrupted_during_calibration_leaves_no_uncalibrated_checkpoint(
        float_roberta, tmp_path, monkeypatch, range_method):
    """Conversion writes the uncalibrated layout first; Ctrl-C during the calibration used to leave it
    at --out. Now --out appears only with the calibrated checkpoint."""
    import ibert_ref.calibrate as C

    texts = tmp_path / "calib.txt"
    texts.write_text("hello world\nThe capital of France is Paris.\n")
    out = tmp_path / "converted"
    argv = ["convert", "--model", str(float_roberta), "--out", str(out), "--texts", str(texts), "--no-progress",
            "--range", range_method]
    real = C.calibrate_checkpoint

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "calibrate_checkpoint", interrupted)
    code, _, err = run_cli(argv)
    assert code == 130 and err.strip() == "ibert-ref convert: interrupted"
    assert not out.exists() and leftovers(tmp_path) == []
    monkeypatch.setattr(C, "calibrate_checkpoint", real)
    code, stdout, _ = run_cli(argv)
    assert code == 0 and f"written to {out}" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "ibert" and config["quant_mode"] is True
    from ibert_ref import IBertModel

    IBertModel.from_pretrained(str(out))  # calibrated: compiles
