"""The multiple-choice scores equal lm-evaluation-harness's own, item by item.

lm-eval itself runs here (offline) on the same model folder and the same local CSVs, through its
installed ``cmmlu_*`` / ``ceval-valid_*`` task configs with only the dataset location changed.
"""

from __future__ import annotations

from pathlib import Path

import lm_eval  # pinned in the dev extra: missing is an error, not a skip (test_suite_collection.py)
import pytest
import yaml
from omegaconf import OmegaConf

from _eval_helpers import BUNDLED_MC, make_model_folder, write_ceval_layout

BATCH = 4  # the harness batches (right padding); we run one sequence at a time
CMMLU_SUBJECTS = ["chinese_history", "computer_science"]
CEVAL_MAP = {"nutrition": "basic_medicine"}


@pytest.fixture(scope="module")
def folders(module_tmp):
    base = module_tmp("harness")
    # 160 positions: the 2-shot prompts are longer, so the left truncation path is compared too.
    model = make_model_folder(base / "model", max_positions=160)
    ceval = write_ceval_layout(base / "ceval", CEVAL_MAP)
    return model, ceval, base


def _local_task(tasks: Path, installed: Path, name: str, files: dict[str, str]) -> str:
    task = f"local_{name}"
    (tasks / f"{task}.yaml").write_text(yaml.safe_dump({
        "include": str(installed), "task": task, "dataset_path": "csv", "dataset_name": None,
        "dataset_kwargs": {"data_files": files}}, allow_unicode=True))
    return task


def _harness(model: Path, ceval: Path, base: Path, shots: int) -> dict[tuple[str, str, int], tuple[list[float], float]]:
    """(benchmark, subject, row) -> (per-choice log-likelihoods, acc) as lm-eval computes them."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    installed = Path(lm_eval.__file__).parent / "tasks"
    tasks = base / f"tasks_{shots}"
    tasks.mkdir()
    names = {}
    for s in CMMLU_SUBJECTS:
        t = _local_task(tasks, installed / "cmmlu" / f"cmmlu_{s}.yaml", f"cmmlu_{s}",
                        {"test": str(BUNDLED_MC / "test" / f"{s}.csv"), "dev": str(BUNDLED_MC / "dev" / f"{s}.csv")})
        names[t] = ("cmmlu", s)
    for s in CEVAL_MAP.values():
        t = _local_task(tasks, installed / "ceval" / f"ceval-valid_{s}.yaml", f"ceval_{s}",
                        {"val": str(ceval / "val" / f"{s}_val.csv"), "dev": str(ceval / "dev" / f"{s}_dev.csv")})
        names[t] = ("ceval", s)
    res = simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", tasks=list(names),
                          num_fewshot=shots, task_manager=TaskManager(include_path=str(tasks)), device="cpu",
                          batch_size=BATCH, log_samples=True)
    out = {}
    for task, (bench, subject) in names.items():
        for s in res["samples"][task]:
            out[(bench, subject, s["doc_id"])] = ([float(r[0]) for r in s["filtered_resps"]], float(s["acc"]))
        out[(bench, subject, "acc")] = res["results"][task]["acc,none"]
    return out


def _ours(model: Path, ceval: Path, shots: int) -> list[dict]:
    from llama3zh_dist.eval.core import load_model
    from llama3zh_dist.eval.runner import load_benchmarks, score_benchmarks

    ev = OmegaConf.create({"benchmarks": ["cmmlu", "ceval"], "cmmlu": {"path": str(BUNDLED_MC)},
                           "ceval": {"path": str(ceval)}, "subjects": [*CMMLU_SUBJECTS, *CEVAL_MAP.values()],
                           "shots": shots, "chat_template": False})
    m, tok, device = load_model(model, OmegaConf.create({"model": {"trust_remote_code": False}}))
    return score_benchmarks(m, tok, load_benchmarks(ev), ev, device, show_progress=False)


@pytest.mark.parametrize("shots", [0, 2])
def test_per_item_choice_logliks_and_accuracy_equal_lm_evaluation_harness(folders, shots):
    model, ceval, base = folders
    theirs = _harness(model, ceval, base, shots)
    ours = _ours(model, ceval, shots)
    assert len(ours) == 16 * 3
    assert {(r["benchmark"], r["subject"]) for r in ours} == {("cmmlu", s) for s in CMMLU_SUBJECTS} | {("ceval", "basic_medicine")}
    worst = 0.0
    for r in ours:
        ll, acc = theirs[(r["benchmark"], r["subject"], r["index"])]
        mine = [r["loglik"][c] for c in "ABCD"]
        worst = max(worst, max(abs(a - b) for a, b in zip(ll, mine)))
        assert float(r["predicted"] == r["answer"]) == acc, r
    assert worst < 1e-4, worst
    # the choices really differ: equality is not two near-uniform models agreeing by accident
    spread = [max(r["loglik"].values()) - min(r["loglik"].values()) for r in ours]
    assert sum(spread) / len(spread) > 0.05
    for bench, subject in {(r["benchmark"], r["subject"]) for r in ours}:
        rows = [r for r in ours if (r["benchmark"], r["subject"]) == (bench, subject)]
        assert sum(r["predicted"] == r["answer"] for r in rows) / len(rows) == pytest.approx(theirs[(bench, subject, "acc")])
