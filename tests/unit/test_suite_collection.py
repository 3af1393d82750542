"""The README's test command collects every test file under tests/.

pytest silently skips folders matching its `norecursedirs` (the default list holds `dist`, `build`,
`*.egg`, ...): that is how 31 distributed tests once sat outside CI. This test asks pytest itself,
with the same configuration `tests/run.sh` uses, which files it collects and compares that with
every `tests/**/test_*.py` on disk.
"""
from __future__ import annotations

import ast
import re
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


# -- skips ----------------------------------------------------------------------------------------
# A test of a dependency the project pins (runtime `dependencies` or the `dev` extra, and torch, which
# the README installs first) must fail when that dependency is missing, never skip: a skip in a green
# CI run hides that the promise was not checked (issue 20 item 7: the lm-eval equality test could skip).

def _pinned_modules() -> set[str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dists = [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("dev", [])]
    names = {re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0].strip().lower().replace("-", "_") for d in dists}
    return names | {"torch"}


def _skip_calls(tree: ast.AST):
    """(line, kind, call) for pytest.importorskip / pytest.skip / pytest.mark.skip(if) in a file."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("pytest.importorskip", "pytest.skip", "pytest.mark.skip", "pytest.mark.skipif"):
                yield node.lineno, name, node


def _has_reason(kind: str, call: ast.Call) -> bool:
    if any(k.arg in ("reason", "msg") for k in call.keywords):
        return True
    # pytest.skip(reason) and pytest.mark.skip(reason) take it positionally; skipif's first is the condition
    return len(call.args) >= (2 if kind == "pytest.mark.skipif" else 1)


def test_no_test_of_a_pinned_dependency_can_skip_and_every_skip_gives_its_reason():
    pinned = _pinned_modules()
    assert "lm_eval" in pinned, "pyproject.toml's dev extra no longer pins lm-eval?"
    bad = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for line, kind, call in _skip_calls(ast.parse(path.read_text(), str(path))):
            if kind == "pytest.importorskip":
                module = ast.literal_eval(call.args[0]).split(".")[0] if call.args else "?"
                if module.lower() in pinned:
                    bad.append(f"{rel}:{line}: importorskip({module!r}) of a pinned dependency: import it")
            elif not _has_reason(kind, call):
                bad.append(f"{rel}:{line}: {kind} without a reason (CI's -rs output would not say why)")
    assert not bad, "\n".join(bad)
