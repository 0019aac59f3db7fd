"""The teaching notebooks: sources in jupytext percent format, paired .ipynb in sync, executed.

Each notebook is two files in ``notebooks/``: ``NN_name.py``, the source a person edits (jupytext
percent format: ``# %%`` code cells, ``# %% [markdown]`` text cells), and ``NN_name.ipynb``, the
same cells as Jupyter stores them, without outputs. The .py's header pairs the two
(``jupytext: formats: ipynb,py:percent``), so ``jupytext --sync`` or Jupyter with the jupytext
extension keeps them equal. Here:

* the .ipynb holds exactly the cells ``jupytext --to ipynb`` makes of the .py (sources, types,
  tags; cell ids are free), with the same pairing and kernel, and no outputs;
* every notebook runs top to bottom with the documented command,
  ``jupyter nbconvert --to notebook --execute NN_name.ipynb``, in an empty folder (so it cannot
  depend on the current directory), in under a minute. The notebooks check themselves (their
  cells assert that hand-called kernels reproduce the model, agree with transformers when it is
  installed, and stay within measured distances of float math), so running is the test.

Execution needs the ``notebooks`` extra (nbconvert, nbclient, nbformat, ipykernel, matplotlib,
jupytext). The kernel is ``python3``, pinned to this interpreter: the test writes a kernelspec
whose argv is ``sys.executable -m ipykernel_launcher`` into a temporary folder put first on
``JUPYTER_PATH``, so a user-level ``python3`` kernelspec pointing at another Python cannot make
the notebooks run elsewhere.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = ("01_one_layer", "02_nonlinear_kernels", "03_datapaths")
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PAIRING = "ipynb,py:percent"
#: A hang guard per cell, not a speed target: run times depend on the machine and its load, so
#: they are measured (docs/notebooks.md: 8-25 s each) and never asserted.
CELL_TIMEOUT_SECONDS = 600
NEEDS_EXTRA = "needs the notebooks extra: pip install -e '.[notebooks]'"


def _importorskip(module):
    # "could not import" in the reason: under CI=true (tests/conftest.py) the skip is a failure
    return pytest.importorskip(module, reason=f"could not import {module}: {NEEDS_EXTRA}")


def _load_script(name):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(nb):
    """What a notebook says: per cell its type, source and tags (ids and volatile metadata aside)."""
    return [(c["cell_type"], c["source"], list(c.get("metadata", {}).get("tags", []))) for c in nb["cells"]]


def test_every_teaching_notebook_is_present_as_a_py_source_and_an_ipynb():
    for name in EXPECTED:
        assert (NOTEBOOK_DIR / f"{name}.py").is_file(), f"notebooks/{name}.py (the source) is missing"
        assert (NOTEBOOK_DIR / f"{name}.ipynb").is_file(), f"notebooks/{name}.ipynb is missing: jupytext --sync"
    sources = {p.stem for p in NOTEBOOK_DIR.glob("*.py")}
    assert sources == {p.stem for p in NOTEBOOKS}, "every notebook is a .py source paired with an .ipynb"
    assert not (ROOT / "scripts" / "build_notebooks.py").exists(), "the notebooks are no longer generated"


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{path.name}: a code cell has outputs (run scripts/strip_notebooks.py)"
                assert cell["execution_count"] is None, f"{path.name}: a code cell has an execution count"


@pytest.mark.parametrize("name", EXPECTED)
def test_py_source_and_ipynb_are_paired_and_in_sync(name):
    jupytext = _importorskip("jupytext")
    _importorskip("nbformat")
    py = NOTEBOOK_DIR / f"{name}.py"
    text = py.read_text(encoding="utf-8")
    assert text.startswith("# ---\n# jupyter:\n"), f"{py.name}: no jupytext header"
    assert "# %%" in text, f"{py.name}: not in percent format"

    from_py = jupytext.reads(text, fmt="py:percent")
    # what `jupytext --to ipynb notebooks/<name>.py` writes, read back as JSON
    expected = json.loads(jupytext.writes(from_py, fmt="ipynb"))
    stored = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))

    for label, nb in ((py.name, expected), (f"{name}.ipynb", stored)):
        formats = nb["metadata"].get("jupytext", {}).get("formats")
        assert formats == PAIRING, f"{label}: jupytext pairing is {formats!r}, want {PAIRING!r}"
    assert stored["metadata"].get("kernelspec") == expected["metadata"].get("kernelspec")
    assert stored["metadata"]["kernelspec"]["name"] == "python3"
    stale = f"notebooks/{name}.ipynb differs from its source {py.name}: run `jupytext --sync notebooks/{name}.py`"
    assert len(_cells(stored)) == len(_cells(expected)), stale
    for i, (got, want) in enumerate(zip(_cells(stored), _cells(expected))):
        assert got == want, f"{stale} (first difference in cell {i})"


def test_sync_check_catches_an_edit_of_one_side(tmp_path):
    # The comparison above is not vacuous: a .py edited without --sync is caught, and --sync fixes it.
    jupytext = _importorskip("jupytext")
    _importorskip("nbformat")
    for name in ("01_one_layer",):
        shutil.copy(NOTEBOOK_DIR / f"{name}.py", tmp_path / f"{name}.py")
        shutil.copy(NOTEBOOK_DIR / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
        py = tmp_path / f"{name}.py"
        py.write_text(py.read_text(encoding="utf-8").replace("integer by integer", "int by int", 1), encoding="utf-8")
        stored = json.loads((tmp_path / f"{name}.ipynb").read_text(encoding="utf-8"))
        edited = json.loads(jupytext.writes(jupytext.read(py), fmt="ipynb"))
        assert _cells(stored) != _cells(edited)

        proc = subprocess.run([sys.executable, "-m", "jupytext", "--sync", str(py)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        synced = json.loads((tmp_path / f"{name}.ipynb").read_text(encoding="utf-8"))
        assert _cells(synced) == _cells(edited)
        assert [c["id"] for c in synced["cells"]] == [c["id"] for c in stored["cells"]], "--sync keeps cell ids"


def test_strip_removes_outputs_and_keeps_sources_and_pairing(tmp_path):
    nbformat = _importorskip("nbformat")
    strip_mod = _load_script("strip_notebooks")
    source = NOTEBOOK_DIR / "01_one_layer.ipynb"
    clean = source.read_text(encoding="utf-8")

    # What Jupyter adds when a notebook is run and saved.
    nb = nbformat.reads(clean, as_version=4)
    original = copy.deepcopy(nb)
    for i, cell in enumerate(nb.cells):
        cell.metadata["collapsed"] = False
        if cell.cell_type == "code":
            cell.execution_count = i
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
            cell.metadata["execution"] = {"iopub.status.idle": "2024-01-01T00:00:00Z"}
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3", "version": "3.11.0"}
    nb.metadata["widgets"] = {"state": {}}
    dirty = tmp_path / "dirty.ipynb"
    dirty.write_text(nbformat.writes(nb), encoding="utf-8")

    assert strip_mod.main(["--check", str(dirty)]) == 1
    assert strip_mod.main([str(dirty)]) == 0
    stripped = nbformat.read(dirty, as_version=4)
    assert [c.source for c in stripped.cells] == [c.source for c in original.cells]
    assert [c.id for c in stripped.cells] == [c.id for c in original.cells]
    assert stripped.metadata["jupytext"]["formats"] == PAIRING  # the pairing survives
    assert stripped.metadata["language_info"] == {"name": "python", "pygments_lexer": "ipython3"}
    assert all(c.outputs == [] and c.execution_count is None for c in stripped.cells if c.cell_type == "code")
    assert strip_mod.main(["--check", str(dirty)]) == 0
    if "language_info" not in original.metadata:  # `jupytext --to ipynb` writes none; Jupyter adds one
        del stripped.metadata["language_info"]
    assert strip_mod.render(stripped) == clean


def test_strip_check_passes_on_the_stored_notebooks():
    _importorskip("nbformat")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "strip_notebooks.py"), "--check", *map(str, NOTEBOOKS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def python3_kernel(tmp_path_factory):
    """A ``python3`` kernelspec running this interpreter, first on JUPYTER_PATH."""
    for module in ("nbconvert", "nbclient", "nbformat", "ipykernel", "matplotlib", "jupytext"):
        _importorskip(module)
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ibert-ref tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(jupyter_dir))
    mp.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silence jupyter_core's platformdirs migration warning
    mp.setenv("MPLBACKEND", "Agg")
    yield "python3"
    mp.undo()


def _error_outputs(nb):
    return [
        "\n".join(out.get("traceback", [])) or out.get("evalue", "")
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_top_to_bottom_with_nbconvert(name, python3_kernel, tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(python3_kernel).argv[0] == sys.executable
    work = tmp_path / "run"  # an empty folder: the notebook must not depend on the cwd
    work.mkdir()
    nb_path = work / f"{name}.ipynb"
    shutil.copy(NOTEBOOK_DIR / f"{name}.ipynb", nb_path)
    cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
           f"--ExecutePreprocessor.timeout={CELL_TIMEOUT_SECONDS}", str(nb_path)]  # timeout: per cell
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False)
    assert proc.returncode == 0, f"{name} failed to run:\n{proc.stderr[-6000:]}"

    executed = json.loads((work / f"{name}.nbconvert.ipynb").read_text(encoding="utf-8"))
    assert _error_outputs(executed) == []
    code_cells = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert code_cells and all(c["execution_count"] is not None for c in code_cells)
    assert sorted(p.name for p in work.iterdir()) == sorted([f"{name}.ipynb", f"{name}.nbconvert.ipynb"]), \
        "a notebook wrote files into its folder"
