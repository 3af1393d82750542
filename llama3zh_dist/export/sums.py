"""``SHA256SUMS`` of an export folder, kept up to date when files are added after the export (GGUF,
the model card): the listed files are hashed and the list rewritten atomically."""

from __future__ import annotations

import os
import pathlib

from llama3zh_dist.fileio import sha256_file

SUMS = "SHA256SUMS"


def read_sums(folder: pathlib.Path) -> dict[str, str]:
    p = pathlib.Path(folder) / SUMS
    out = {}
    for line in (p.read_text().splitlines() if p.is_file() else []):
        if "  " in line:
            digest, name = line.split("  ", 1)
            out[name] = digest
    return out


def update_sums(folder, names: list[str]) -> None:
    """Hash ``names`` (paths relative to ``folder``) into its ``SHA256SUMS``, written temp-then-rename."""
    folder = pathlib.Path(folder)
    sums = read_sums(folder)
    for n in names:
        sums[n] = sha256_file(folder / n)
    tmp = folder / f".{SUMS}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for name in sorted(sums):
            f.write(f"{sums[name]}  {name}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / SUMS)
