"""The one-GPU check runs on the bare GPU image plus the wheels we carry (bench/gpu_wheels.sh).

Two proofs, both without a GPU:

- metadata: every Requires-Dist of every carried wheel (markers for the image's Python 3.12) is met
  by the carried set or the image (../shared/gpu_image.md), compiled wheels are cp312 builds, the
  set is under 64 MiB, and removing any one wheel is caught;
- imports: a virtual environment holding only packages of the image's list, plus the carried
  wheels installed exactly as on the GPU machine (``pip install --no-deps --target``, then
  ``PYTHONPATH``), runs ``bench/gpu_check.py --imports-only`` (everything the sections, the
  quickstart's ranks and the export import) and the no-CUDA exit.

The environment is Python 3.11, not the image's 3.12: the only torch this machine can install
offline is the CPU build on disk (cp311), and the CUDA torch for 3.12 is gigabytes. So the import
test uses the same pins built for 3.11 (only the compiled wheels' tags differ), numpy 2.4.6 (2.5
needs 3.12) and torch 2.13.0+cpu in place of 2.11.0+cu130; the 3.12 tags are checked on metadata.
Both the wheel sets and the environment are cached under ~/.cache/llama3zh_dist/, keyed by what
they are built from: the first run downloads (~3 minutes), later runs take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import wheel_check  # noqa: E402

CACHE = Path(os.environ.get("LLAMA3ZH_CACHE", Path.home() / ".cache" / "llama3zh_dist"))
SCRIPT = ROOT / "bench" / "gpu_wheels.sh"
SHARED_IMAGE_FACTS = ROOT.parent / "shared" / "gpu_image.md"
CARRIED = re.findall(r"([A-Za-z0-9_.-]+)==", SCRIPT.read_text().split("set -euo pipefail")[1])
# The image's packages the import chain needs (all on its list; versions where gpu_image.md states
# them, but see the module docstring for torch and numpy).
IMAGE_SUBSET = [
    "torch==2.13.0", "numpy==2.4.6", "accelerate==1.15.0", "huggingface_hub==1.33.0", "safetensors==0.8.0",
    "tiktoken==0.14.0", "transformers==5.17.0", "tokenizers==0.23.2", "packaging", "scipy", "filelock", "fsspec",
    "hf-xet", "tqdm", "regex", "typer", "click", "rich", "shellingham", "annotated-doc", "markdown-it-py", "mdurl",
    "pygments", "psutil", "py-cpuinfo", "msgpack", "ninja", "einops", "sympy", "mpmath", "networkx", "jinja2",
    "markupsafe", "setuptools", "pillow", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "requests",
    "charset-normalizer", "urllib3", "pyarrow", "pyyaml", "typing-extensions", "xxhash",
]


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def carried_wheels(python: str) -> Path:
    """The carried set built by bench/gpu_wheels.sh for ``python`` (cached by the script's content)."""
    out = CACHE / "gpu_wheels" / f"py{python}-{_key(SCRIPT.read_text(), python)}"
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        env = dict(os.environ, WHEEL_DIR=str(out), PY_VERSION=python, PYTHON=sys.executable)
        subprocess.run(["bash", str(SCRIPT)], check=True, env=env, stdout=subprocess.DEVNULL)
        (out / ".complete").touch()
    return out


@pytest.fixture(scope="module")
def wheels_312() -> Path:
    return carried_wheels("3.12")


def test_the_image_facts_here_are_those_of_shared_gpu_image_md():
    if not SHARED_IMAGE_FACTS.exists():
        pytest.skip(f"{SHARED_IMAGE_FACTS} is not beside this clone: nothing to compare the transcription with")
    text = SHARED_IMAGE_FACTS.read_text()
    seen = re.search(r"Versions seen: (.*?)\.\n", text).group(1)
    versions = dict(re.match(r"(\S+) (\S+)", v.strip()).groups() for v in seen.split(","))
    assert {k.replace("_", "-"): v for k, v in versions.items()} == wheel_check.IMAGE_VERSIONS
    names = re.search(r"Packages present \(names only\): (.*?)\.\n", text, re.S).group(1)
    assert {wheel_check.canonicalize_name(n.strip()) for n in names.split(",")} == wheel_check.IMAGE_PACKAGES


def test_the_carried_set_is_complete_for_the_image_and_fits_64_mib(wheels_312):
    assert wheel_check.problems(sorted(wheels_312.glob("*.whl"))) == []
    size = sum(w.stat().st_size for w in wheels_312.glob("*.whl"))
    assert size <= 64 * 2**20, f"{size / 2**20:.1f} MiB"
    print(f"\ncarried: {len(list(wheels_312.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB")


def test_the_carried_transformers_is_the_one_this_suite_tests(wheels_312):
    carried = {wheel_check.wheel_metadata(w)[0]: str(wheel_check.wheel_metadata(w)[1]) for w in wheels_312.glob("*.whl")}
    for name in ("transformers", "huggingface-hub", "deepspeed", "tokenizers"):
        assert carried[name] == importlib.metadata.version(name), name


@pytest.mark.parametrize("removed", CARRIED)
def test_removing_any_carried_wheel_is_caught(wheels_312, removed):
    kept = [w for w in wheels_312.glob("*.whl")
            if wheel_check.canonicalize_name(w.name.split("-")[0]) != wheel_check.canonicalize_name(removed)]
    assert len(kept) == len(list(wheels_312.glob("*.whl"))) - 1
    found = wheel_check.problems(kept)
    name = wheel_check.canonicalize_name(removed)
    assert any(name in p.lower().replace("_", "-") for p in found), found


def test_compiled_wheels_for_another_python_are_caught(wheels_312):
    found = wheel_check.problems(sorted(carried_wheels("3.11").glob("*.whl")))
    assert any(p.startswith("pydantic_core-") and "CPython 3.12" in p for p in found), found
    assert any(p.startswith("kernels-") for p in found), found


@pytest.fixture(scope="module")
def image_venv() -> Path:
    """A venv holding only packages of the image's list (cached)."""
    venv = CACHE / "gpu_image_venv" / _key(*IMAGE_SUBSET, sys.version)
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *IMAGE_SUBSET], check=True)
        (venv / ".complete").touch()
    installed = subprocess.run([str(python), "-c", "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] "
                                "for d in m.distributions()))"], capture_output=True, text=True, check=True, cwd=venv).stdout.split()
    extra = {wheel_check.canonicalize_name(n) for n in installed} - wheel_check.IMAGE_PACKAGES
    assert not extra, f"not on the GPU image: {sorted(extra)}"
    return python


def run_check(python: Path, site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """bench/gpu_check.py as the GPU machine runs it: the carried wheels on PYTHONPATH, nothing else."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(python), str(ROOT / "bench" / "gpu_check.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_the_check_imports_on_the_image_packages_plus_the_carried_wheels(image_venv, tmp_path):
    site = tmp_path / "site"
    subprocess.run([str(image_venv), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *map(str, carried_wheels("3.11").glob("*.whl"))], check=True)
    proc = run_check(image_venv, site, "--imports-only", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = __import__("json").loads(proc.stdout.splitlines()[-1])
    assert versions["transformers"] == importlib.metadata.version("transformers")  # the carried one, not the image's
    # no CUDA here: the check itself refuses in one line, and writes only to its out folder
    proc = run_check(image_venv, site, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.splitlines()[-1].startswith("gpu_check: FAILED environment: no CUDA")
    # and without a carried wheel the imports fail (the case: huggingface_hub needs httpx2)
    shutil.rmtree(site / "httpx2")
    proc = run_check(image_venv, site, "--imports-only", cwd=tmp_path)
    assert proc.returncode != 0 and "No module named 'httpx2'" in proc.stderr, proc.stderr[-2000:]
