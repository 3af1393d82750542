"""The suite removes what its tests wrote once they passed (tests/conftest.py says why): asked of
pytest itself, on two small modules, with this repository's conftest and retention setting."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MODULE = '''
import pytest

@pytest.fixture(scope="module")
def shared(module_tmp):
    folder = module_tmp("shared")
    (folder / "checkpoint").write_bytes(b"x" * 1000)
    return folder

def test_passes(shared, tmp_path):
    (tmp_path / "run").write_text("kept only if this failed")

def test_{name}(shared, tmp_path):
    (tmp_path / "run").write_text("kept only if this failed")
    assert {outcome}
'''


def test_folders_of_passed_tests_and_modules_go_and_a_failed_modules_stay(tmp_path):
    policy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert policy.get("tmp_path_retention_policy") == "failed"
    suite = tmp_path / "suite"
    (suite / "tests").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "conftest.py", suite / "tests" / "conftest.py")
    (suite / "tests" / "test_green.py").write_text(MODULE.format(name="also_passes", outcome="True"))
    (suite / "tests" / "test_red.py").write_text(MODULE.format(name="fails", outcome="False"))
    basetemp = tmp_path / "basetemp"  # given: pytest keeps it at the end, so what the run removed shows
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--basetemp={basetemp}",
                          "-o", "tmp_path_retention_policy=failed", "tests"],
                         cwd=suite, capture_output=True, text=True)
    assert "1 failed, 3 passed" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    left = sorted(p.relative_to(basetemp).as_posix() for p in basetemp.rglob("*") if p.is_file())
    assert left == ["test_fails0/run", "test_red0/shared/checkpoint"], left
