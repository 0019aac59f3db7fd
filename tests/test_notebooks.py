"""The teaching notebooks: executed top to bottom (so they never rot), stored stripped, and
identical to what ``scripts/build_notebooks.py`` generates.

The notebooks check themselves: their cells assert that the hand-called kernels reproduce
the model, agree with transformers' I-BERT (when installed) and stay within measured
distances of float math. A notebook passes here when every cell runs without an error.

Execution needs the ``notebooks`` extra (nbclient, nbformat, ipykernel, matplotlib). The
kernel is ``python3``, pinned to this interpreter: the test writes a kernelspec whose argv
is ``sys.executable -m ipykernel_launcher`` into a temporary folder put first on
``JUPYTER_PATH``, so a fresh venv (or a user-level ``python3`` kernelspec pointing at another
Python) cannot make the notebooks run elsewhere.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_one_layer", "02_nonlinear_kernels", "03_datapaths"}
#: The issue asks for each notebook to run in under a minute (kernel start included).
MAX_SECONDS = 60


def _load_script(name):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_teaching_notebook_is_present():
    assert EXPECTED <= {p.stem for p in NOTEBOOKS}


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{path.name}: a code cell has outputs (run scripts/strip_notebooks.py)"
                assert cell["execution_count"] is None, f"{path.name}: a code cell has an execution count"


def test_notebooks_are_what_the_generator_writes(tmp_path):
    pytest.importorskip("nbformat")
    build = _load_script("build_notebooks")
    assert build.main(["--out", str(tmp_path)]) == 0
    for name in EXPECTED:
        # cells (ids, sources, metadata) and notebook metadata; not nbformat's JSON layout
        stored = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8"))
        generated = json.loads((tmp_path / f"{name}.ipynb").read_text(encoding="utf-8"))
        for key in ("cells", "metadata"):
            assert stored[key] == generated[key], f"{name}.ipynb is stale: run scripts/build_notebooks.py"


def test_strip_removes_outputs_and_keeps_sources(tmp_path):
    nbformat = pytest.importorskip("nbformat")
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
    nb.metadata["language_info"]["version"] = "3.11.0"
    nb.metadata["widgets"] = {"state": {}}
    dirty = tmp_path / "dirty.ipynb"
    dirty.write_text(nbformat.writes(nb), encoding="utf-8")

    assert strip_mod.main(["--check", str(dirty)]) == 1
    assert strip_mod.main([str(dirty)]) == 0
    assert dirty.read_text(encoding="utf-8") == clean
    assert [c.source for c in nbformat.read(dirty, as_version=4).cells] == [c.source for c in original.cells]
    assert strip_mod.main(["--check", str(dirty)]) == 0


def test_strip_check_passes_on_the_stored_notebooks():
    pytest.importorskip("nbformat")
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
    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
        pytest.importorskip(module, reason=f"could not import {module}: needs the notebooks extra: pip install -e '.[notebooks]'")
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
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, python3_kernel, tmp_path):
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    assert KernelSpecManager().get_kernel_spec(python3_kernel).argv[0] == sys.executable
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=python3_kernel,
        timeout=MAX_SECONDS,  # per cell
        resources={"metadata": {"path": str(tmp_path)}},  # notebooks must not depend on the cwd
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on the first failure
    elapsed = time.perf_counter() - start

    assert _error_outputs(nb) == []
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.execution_count is not None for c in code_cells)
    assert elapsed < MAX_SECONDS, f"{path.name} took {elapsed:.0f} s (limit {MAX_SECONDS} s)"
