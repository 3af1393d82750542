"""Disk use of the suite.

A full run trains and checkpoints dozens of small models: kept to the end, its folders took 16-17 GB,
and a CI machine with less free disk failed halfway with writes refused. So nothing is kept longer
than its tests need: ``tmp_path`` folders of passed tests go at once (``tmp_path_retention_policy``
in pyproject.toml), and the folders a module's shared fixtures make go after the module, through
``module_tmp``. A module with a failed test keeps its folders, for the post-mortem.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """``module_tmp("name")`` -> a new empty folder for a module-scoped fixture (``tmp_path_factory.mktemp``'s
    role), removed when the module ends with none of its tests failed."""
    failed_before = request.session.testsfailed
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])

    def make(name: str) -> Path:
        for n in range(1000):
            path = root / (name if n == 0 else f"{name}{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
        raise RuntimeError(f"module_tmp: no free name for {name!r} under {root}")

    yield make
    if request.session.testsfailed == failed_before:
        shutil.rmtree(root, ignore_errors=True)
