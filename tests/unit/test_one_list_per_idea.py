"""One list per idea: data formats, GPU names and reject reasons are each listed once, and every
user-facing mention is derived from (or points to) that list, so adding one is one edit.

- formats: the converter registry (``data/formats.py``) and the schema's ``FORMATS`` (which checks
  ``data.format`` without importing the converters) are the same list;
- no other file of the product (code, configs, README, ARCHITECTURE) spells out several formats or
  GPU names by hand, where a new one would be missed;
- a reject reason outside the vocabulary is refused when the reject is made: it would be recorded
  but count towards neither ``data.max_reject_fraction`` nor the filters.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from llama3zh_dist.data.formats import _CONVERTERS, FILTER_REASONS, VALIDATION_REASONS, Reject
from llama3zh_dist.data.verdicts import Verdicts
from llama3zh_dist.errors import UserError
from llama3zh_dist.gpus import GPUS
from llama3zh_dist.schema.data import FORMATS

ROOT = Path(__file__).resolve().parents[2]
# What users and engineers read (tests and benchmarks pick subsets on purpose: not scanned).
PRODUCT_TEXT = ["llama3zh_dist/**/*.py", "conf/**/*.yaml", "slurm/*", "launchers/*", "README.md", "ARCHITECTURE.md",
                "slurm/README.md"]


def _hand_lists(names: list[str], allowed: set[str]) -> list[str]:
    """Lines outside ``allowed`` files that name three or more of ``names`` (a hand-kept list)."""
    words = [re.compile(rf"(?<![\w-]){re.escape(n)}(?![\w-])") for n in names]
    found = []
    for pattern in PRODUCT_TEXT:
        for path in sorted(ROOT.glob(pattern)):
            rel = str(path.relative_to(ROOT))
            if not path.is_file() or rel in allowed:
                continue
            for no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if sum(bool(w.search(line)) for w in words) >= 3:
                    found.append(f"{rel}:{no}: {line.strip()}")
    return found


def test_the_converter_registry_is_the_schemas_list_of_formats():
    assert tuple(_CONVERTERS) == FORMATS
    assert all((conv.__doc__ or "").strip() for conv in _CONVERTERS.values()), "each converter documents its rows"


def test_formats_are_listed_by_hand_nowhere_else():
    found = _hand_lists(list(FORMATS), {"llama3zh_dist/schema/data.py", "llama3zh_dist/data/formats.py"})
    assert not found, "derive these from schema.data.FORMATS or point to data/formats.py:\n" + "\n".join(found)


def test_gpu_names_are_listed_by_hand_nowhere_else():
    found = _hand_lists([g.name for g in GPUS], {"llama3zh_dist/gpus.py"})
    assert not found, "derive these from gpus.GPUS (known_names) or point to gpus.py:\n" + "\n".join(found)


def test_an_unknown_data_format_is_answered_with_every_format(tmp_path):
    from llama3zh_dist.config import load_config

    with pytest.raises(UserError) as e:
        load_config(["data=files", f"data.files=[{tmp_path}/a.jsonl]", "data.format=sharegtp"])
    assert all(f in str(e.value) for f in FORMATS), str(e.value)


def test_a_reject_reason_outside_the_vocabulary_is_refused_when_made():
    for reason in (*VALIDATION_REASONS, *FILTER_REASONS):
        assert Reject(reason, "detail").reason == reason
    with pytest.raises(ValueError, match="'made_up_reason' is not in VALIDATION_REASONS or FILTER_REASONS"):
        Reject("made_up_reason", "a converter's new reason")
    # the driver's filters (duplicates, down-sampling) mark rows through Verdicts.code
    verdicts = SimpleNamespace(reasons=[""])
    assert Verdicts.code(verdicts, "near_duplicate") == 1
    with pytest.raises(ValueError, match="'made_up_filter' is not in"):
        Verdicts.code(verdicts, "made_up_filter")


def test_every_reason_the_code_makes_is_in_the_vocabulary():
    """Reasons are literals at the raise sites (Reject, ConversationError, RoleError, Verdicts.reject)."""
    made = set()
    for path in (ROOT / "llama3zh_dist").rglob("*.py"):
        text = path.read_text()
        made.update(re.findall(r'\b(?:Reject|ConversationError|RoleError)\(\s*"([a-z_]+)"', text))
        made.update(re.findall(r'\.reject\([^,()]+(?:\[[^\]]*\])?,\s*"([a-z_]+)"', text))
    assert {"bad_json", "duplicate", "near_duplicate", "downsampled", "tool_call_role"} <= made  # the scan works
    assert made <= set(VALIDATION_REASONS) | set(FILTER_REASONS), made - set(VALIDATION_REASONS) - set(FILTER_REASONS)
