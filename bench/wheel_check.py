"""Is the carried wheel set (bench/gpu_wheels.sh) complete for the bare GPU image?

    python bench/wheel_check.py .whl            # prints one line per problem; exit 1 if any

Every ``Requires-Dist`` of every carried wheel (markers evaluated for the image's Python 3.12 on
x86-64 Linux, no extras) must be met by another carried wheel or by a package of the image, and
every compiled wheel must install on CPython 3.12. The image's packages are those of
``../shared/gpu_image.md`` (``IMAGE_PACKAGES`` and ``IMAGE_VERSIONS`` below, checked against that
file by tests/unit/test_gpu_wheels.py). A requirement with a version range on an image package whose
version the image facts do not state cannot be proven: it is a problem too (carry the package).
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag, cpython_tags, compatible_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

# ../shared/gpu_image.md, "Versions seen" (torch's local tag dropped)
IMAGE_VERSIONS = {
    "accelerate": "1.15.0", "botorch": "0.18.1", "cupy-cuda13x": "14.2.0", "gpytorch": "1.15.2",
    "huggingface-hub": "1.33.0", "jax": "0.11.2", "numpy": "2.5.2", "safetensors": "0.8.0", "sentencepiece": "0.2.2",
    "tiktoken": "0.14.0", "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0", "triton": "3.6.0",
}
# ../shared/gpu_image.md, "Packages present (names only)"
IMAGE_PACKAGES = frozenset(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# Image packages of unstated version, with the lowest version the image must have: implied by the
# Requires-Dist of packages whose version it states (read from their wheels' METADATA), which are
# installed there and work. A carried wheel's minimum at or below these floors is met.
IMPLIED_FLOORS = {
    "click": ("8.4.2", "huggingface_hub 1.33.0"), "filelock": ("3.10.0", "huggingface_hub 1.33.0"),
    "fsspec": ("2023.5.0", "huggingface_hub 1.33.0"), "hf-xet": ("1.6.0", "huggingface_hub 1.33.0 (and < 2.0)"),
    "httpx": ("0.23.0", "huggingface_hub 1.33.0"), "packaging": ("20.9", "huggingface_hub 1.33.0"),
    "pyyaml": ("5.1", "transformers 5.17.0, huggingface_hub 1.33.0"), "tqdm": ("4.60", "transformers 5.17.0"),
    "regex": ("2025.10.22", "transformers 5.17.0"), "typing-extensions": ("4.1.0", "huggingface_hub 1.33.0"),
    "psutil": ("0", "accelerate 1.15.0 (no minimum)"),
    # scipy wheels older than 1.13 are built against numpy 1.x and do not import with the image's numpy 2.5
    "scipy": ("1.13.0", "numpy 2.5.2's ABI"),
}
# Requirements of the image's own packages (their METADATA) on packages we carry: a carried wheel
# shadows the image's copy for everything, so it must still satisfy them (else carry that package too).
IMAGE_REQUIRES = {
    "tokenizers": ["huggingface-hub<2.0,>=0.16.4"],
    "accelerate": ["huggingface_hub>=0.21.0", "safetensors>=0.4.3", "numpy>=1.17", "packaging>=20.0"],
}
# The image's interpreter and machine, for environment markers and wheel tags.
IMAGE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
             "platform_python_implementation": "CPython", "platform_machine": "x86_64", "platform_system": "Linux",
             "sys_platform": "linux", "os_name": "posix", "extra": ""}
# The distributions the check itself imports (its own imports, the quickstart's, the export's).
ROOTS = ("transformers", "deepspeed", "hydra-core", "omegaconf", "llama-models", "datasketch",
         "opencc-python-reimplemented", "pydantic")


def image_tags(python: str = "3.12") -> set[Tag]:
    """Wheel tags CPython ``python`` on manylinux x86-64 (glibc 2.28+) installs."""
    major, minor = (int(x) for x in python.split("."))
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(28, 4, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
    return set(cpython_tags((major, minor), platforms=platforms)) | set(compatible_tags((major, minor), platforms=platforms))


def wheel_metadata(path: Path) -> tuple[str, Version, list[Requirement]]:
    """(canonical name, version, Requires-Dist) read from the wheel's own METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = Parser().parsestr(z.read(meta).decode())
    return canonicalize_name(msg["Name"]), Version(msg["Version"]), [Requirement(r) for r in msg.get_all("Requires-Dist") or []]


def problems(wheels: Path | list[Path], python: str = "3.12", roots: tuple[str, ...] = ROOTS) -> list[str]:
    """What keeps ``wheels`` (a folder of them, or a list) plus the image from importing the check; [] if nothing."""
    wheels = sorted(Path(wheels).glob("*.whl")) if isinstance(wheels, (str, Path)) else list(wheels)
    env = dict(IMAGE_ENV, python_version=python, python_full_version=f"{python}.0" if python != "3.12" else "3.12.3")
    tags = image_tags(python)
    carried: dict[str, tuple[Version, list[Requirement]]] = {}
    out = []
    for w in wheels:
        name, version, reqs = wheel_metadata(w)
        carried[name] = (version, reqs)
        if not tags & set(parse_wheel_filename(w.name)[3]):
            out.append(f"{w.name}: not installable on CPython {python} x86-64 Linux (build it for cp{python.replace('.', '')})")
    for root in roots:
        if canonicalize_name(root) not in carried:
            out.append(f"{root}: imported by the check, neither carried nor on the image")
    for name, (version, reqs) in sorted(carried.items()):
        for req in reqs:
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in carried:
                if not req.specifier.contains(carried[dep][0], prereleases=True):
                    out.append(f"{name} {version} needs {req}: carried {dep} is {carried[dep][0]}")
            elif dep in IMAGE_VERSIONS:
                if not req.specifier.contains(Version(IMAGE_VERSIONS[dep]), prereleases=True):
                    out.append(f"{name} {version} needs {req}: the image has {dep} {IMAGE_VERSIONS[dep]} (carry it)")
            elif dep in IMPLIED_FLOORS:
                floor, source = IMPLIED_FLOORS[dep]
                if not req.specifier.contains(Version(floor), prereleases=True):
                    out.append(f"{name} {version} needs {req}: the image's {dep} is only known to be >= {floor} "
                               f"(from {source}; carry it)")
            elif dep in IMAGE_PACKAGES:
                if str(req.specifier):
                    out.append(f"{name} {version} needs {req}: the image has {dep}, version not stated (carry it)")
            else:
                out.append(f"{name} {version} needs {req}: neither carried nor on the image")
    for name, reqs in IMAGE_REQUIRES.items():
        if name in carried:
            continue  # the carried copy replaces the image's
        for req in map(Requirement, reqs):
            dep = canonicalize_name(req.name)
            if dep in carried and not req.specifier.contains(carried[dep][0], prereleases=True):
                out.append(f"the image's {name} {IMAGE_VERSIONS[name]} needs {req}: the carried {dep} "
                           f"{carried[dep][0]} breaks it (carry {name} too)")
    return out


if __name__ == "__main__":
    found = problems(Path(sys.argv[1] if len(sys.argv) > 1 else ".whl"))
    print("\n".join(found) or "complete: every requirement is carried or on the image")
    sys.exit(1 if found else 0)
