"""The README's test command collects every test file under tests/.

pytest silently skips folders matching its `norecursedirs` (the default list holds `dist`, `build`,
`*.egg`, ...): that is how 31 distributed tests once sat outside CI. This test asks pytest itself,
with the same configuration `tests/run.sh` uses, which files it collects and compares that with
every `tests/**/test_*.py` on disk.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _collected_files() -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode in (0, 5), out.stdout[-3000:] + out.stderr[-3000:]
    files = set()
    for line in out.stdout.splitlines():
        if "::" in line:
            files.add(line.split("::", 1)[0])
    return files


def test_every_test_file_on_disk_is_collected():
    on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / "tests").rglob("test_*.py")}
    assert on_disk, "no test files found: is REPO right?"
    collected = _collected_files()
    missing = sorted(on_disk - collected)
    assert not missing, f"test files pytest does not collect (norecursedirs? a bad name?): {missing}"
