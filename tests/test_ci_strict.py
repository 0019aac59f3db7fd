"""Under CI=true a test skipped for a missing extra or tool fails; other skips stay skips."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


def _run_pytest(tmp_path, body: str, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(body))
    env = {**os.environ, "CI": ci}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


MISSING_MODULE = """
    import pytest
    pytest.importorskip("no_such_module_ibert_ref_probe")
    def test_x():
        pass
"""

MISSING_TOOL_AND_OTHER = """
    import pytest
    def test_tool():
        pytest.skip("missing tool: no-such-simulator")
    def test_cpu():
        pytest.skip("this CPU lacks AVX-512 VNNI")
"""


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_module_fails_under_ci(tmp_path, ci):
    proc = _run_pytest(tmp_path, MISSING_MODULE, ci)
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr  # 2: a module-level skip fails collection
    assert "required extra or tool is missing" in proc.stdout


def test_missing_module_skips_outside_ci(tmp_path):
    proc = _run_pytest(tmp_path, MISSING_MODULE, "")
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    assert "skipped" in proc.stdout


def test_missing_tool_fails_and_other_skip_stays_under_ci(tmp_path):
    proc = _run_pytest(tmp_path, MISSING_TOOL_AND_OTHER, "true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 skipped" in proc.stdout
