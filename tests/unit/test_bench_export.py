"""bench/bench_export.py still finds what it runs (it once imported its checkpoint maker from a test
folder that had been renamed, and nothing noticed)."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_export_benchmark_imports_and_finds_its_checkpoint_maker_and_both_exporters():
    spec = importlib.util.spec_from_file_location("bench_export", ROOT / "bench" / "bench_export.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.checkpoint_maker().__name__ == "make_zero3_checkpoint"
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict  # noqa: F401 - the baseline

    from llama3zh_dist.export import export_checkpoint  # noqa: F401 - ours
