"""Acceptance tests of ``python -m llama3zh_dist.sweep +sweep=quickstart``, on this machine.

One real sweep serves every test (4 trials, ASHA, one trial at a time, each a 2-rank ZeRO-3 CPU run
of the tiny model): trial 0 trains well, trial 1 learns almost nothing (ASHA must stop it), trial 2
has an impossible learning rate (the optimizer refuses it: the trial crashes), trial 3 is fine. The
sweep is interrupted (SIGINT, as Ctrl-C) as soon as trial 0 has finished and rerun with the same
command, which must resume it. Then the best-config experiment it wrote is run as a normal run.

The config tree is a copy (LLAMA3ZH_CONF_DIR), so the written experiment file stays out of conf/.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

STEPS, EVAL_EVERY = 12, 3
POINTS = (  # trainer.lr, in trial order
    "[{trainer:{lr:3.0e-3,warmup_ratio:0.1,weight_decay:0.0}},"
    "{trainer:{lr:1.0e-6,warmup_ratio:0.1,weight_decay:0.0}},"
    "{trainer:{lr:-1.0,warmup_ratio:0.1,weight_decay:0.0}},"
    "{trainer:{lr:2.0e-3,warmup_ratio:0.1,weight_decay:0.0}}]"
)


def _overrides(run_dir: Path) -> list[str]:
    return [
        "+sweep=quickstart", f"run.dir={run_dir}",
        f"trainer.max_steps={STEPS}", f"trainer.eval_every={EVAL_EVERY}", "checkpoint.every_steps=3",
        "sweep.num_samples=4", "sweep.max_concurrent=1", f"sweep.scheduler.grace_period={EVAL_EVERY}",
        f"sweep.points_to_evaluate={POINTS}", "sweep.poll_s=0.5",
    ]


def _read_jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _trial_dirs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "trials").glob("*_0000*"))


@pytest.fixture(scope="module")
def sweep(module_tmp):
    """Run the sweep, interrupt it after the first trial finished, rerun it to the end."""
    work = module_tmp("sweep")
    conf = work / "conf"
    shutil.copytree(ROOT / "conf", conf)
    env = {**os.environ, "LLAMA3ZH_CONF_DIR": str(conf), "WANDB_MODE": "offline"}
    run_dir = work / "run"
    cmd = [sys.executable, "-m", "llama3zh_dist.sweep", *_overrides(run_dir)]

    t0 = time.time()
    log1 = open(work / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=work, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    # Interrupt once trial 0 has finished and the next trial has started (the sweep is still running).
    while first.poll() is None:
        dirs = _trial_dirs(run_dir)
        done = [d for d in dirs if (d / "FINISHED").exists()]
        running = [d for d in dirs if (d / "launches.log").exists() and d not in done]
        if done and running:
            break
        time.sleep(1)
    assert first.poll() is None, (work / "first.log").read_text()[-5000:]
    finished_before = {d.name: (d / "metrics.jsonl").read_bytes() for d in done}
    started_before = [d.name for d in _trial_dirs(run_dir)]
    first.send_signal(signal.SIGINT)
    first_code = first.wait()
    log1.close()

    second = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    (work / "second.log").write_text(second.stdout)
    summary = json.loads((run_dir / "sweep_summary.json").read_text())
    print(f"sweep wall time (both runs): {wall:.0f} s; counts: {summary['counts']}")
    return {
        "work": work, "conf": conf, "env": env, "run_dir": run_dir, "first_code": first_code,
        "first_log": (work / "first.log").read_text(), "second": second, "summary": summary,
        "finished_before": finished_before, "started_before": started_before,
    }


def _rows(sweep) -> list[dict]:
    return sweep["summary"]["trials"]


def _by_lr(sweep) -> dict[float, dict]:
    return {r["trainer.lr"]: r for r in _rows(sweep)}


def test_asha_sweep_of_four_trials_finishes_stops_one_early_and_best_is_the_table_minimum(sweep):
    assert sweep["second"].returncode == 0, sweep["second"].stdout[-5000:]
    s = sweep["summary"]
    rows = _rows(sweep)
    assert s["complete"] and len(rows) == 4
    assert sum(r["status"] == "stopped early" for r in rows) >= 1
    # The trial that barely learns is the one ASHA stops, at the first rung.
    slow = _by_lr(sweep)[1e-6]
    assert slow["status"] == "stopped early" and slow["steps_run"] < STEPS
    scored = [r["best_val_loss"] for r in rows if r["best_val_loss"] is not None]
    assert s["best"]["best_val_loss"] == min(scored)
    best_row = next(r for r in rows if r["trial"] == s["best"]["trial"])
    assert best_row["best_val_loss"] == min(scored)
    # The console table and the CSV say the same.
    assert "best_val_loss" in sweep["second"].stdout and s["best"]["trial"] in sweep["second"].stdout
    with open(sweep["run_dir"] / "sweep_summary.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["trial"] for r in csv_rows] == [r["trial"] for r in rows]
    assert [r["status"] for r in csv_rows] == [r["status"] for r in rows]
    # Every trial is its own run folder with its own W&B run, grouped under the sweep.
    for r in rows:
        d = Path(r["run_dir"])
        assert d.parent == sweep["run_dir"] / "trials"
        if r["status"] != "failed":
            cfg = (d / "config.yaml").read_text()
            assert "group: sweep_quickstart" in cfg and (d / "wandb").is_dir()


def test_crashing_trial_is_failed_in_the_table_and_the_others_finish(sweep):
    crashed = _by_lr(sweep)[-1.0]
    assert crashed["status"] == "failed"
    # the trial's own run refuses lr=-1 (the config schema) and exits 2: its reason reaches the table
    assert "trainer.lr=-1.0 is rejected" in crashed["error"]
    others = [r for r in _rows(sweep) if r is not crashed]
    assert all(r["status"] in ("finished", "stopped early") and r["best_val_loss"] is not None for r in others)
    assert _by_lr(sweep)[3e-3]["status"] == "finished" and _by_lr(sweep)[3e-3]["steps_run"] == STEPS


def test_interrupted_sweep_resumes_without_redoing_finished_trials(sweep):
    assert sweep["first_code"] == 130, sweep["first_log"][-5000:]
    assert "resuming the sweep" in sweep["second"].stdout
    rows = _rows(sweep)
    assert len(rows) == 4  # the rerun restored the 4 trials; it did not start a new sweep
    for name, metrics in sweep["finished_before"].items():
        d = sweep["run_dir"] / "trials" / name
        assert len(_read_jsonl(d / "launches.log")) == 1, f"{name} was run again"
        assert (d / "metrics.jsonl").read_bytes() == metrics
    # The trial interrupted mid-run was started again and completed.
    interrupted = [n for n in sweep["started_before"] if n not in sweep["finished_before"]]
    for name in interrupted:
        row = next(r for r in rows if r["trial"] == name)
        launches = _read_jsonl(sweep["run_dir"] / "trials" / name / "launches.log")
        assert row["status"] in ("finished", "stopped early", "failed") and len(launches) == 2


def test_best_experiment_runs_and_reproduces_the_trials_metrics(sweep):
    """The written experiment is a normal run; with the same config and seed its metrics equal the trial's."""
    best = sweep["summary"]["best"]
    path = Path(best["experiment_file"])
    assert path.parent == sweep["conf"] / "experiment"
    text = path.read_text()
    assert text.startswith("# @package _global_\n# python -m llama3zh_dist +experiment=quickstart_best\n")
    run = sweep["work"] / "best_run"
    res = subprocess.run([sys.executable, "-m", "llama3zh_dist", f"+experiment={best['experiment']}", f"run.dir={run}"],
                         cwd=sweep["work"], env=sweep["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert res.returncode == 0, res.stdout[-5000:]
    assert (run / "FINISHED").exists() and (run / "export" / "config.json").exists()
    trial = {r["step"]: r for r in _read_jsonl(sweep["run_dir"] / "trials" / best["trial"] / "metrics.jsonl")}
    normal = {r["step"]: r for r in _read_jsonl(run / "metrics.jsonl")}
    assert sorted(trial) == sorted(normal) == list(range(1, STEPS + 1))
    for step, t in trial.items():
        for key in ("loss", "lr", "grad_norm", "tokens", "supervised_tokens", "val_loss"):
            assert normal[step].get(key) == t.get(key), (step, key, normal[step].get(key), t.get(key))
    evals = [r for r in trial.values() if "val_loss" in r]
    assert [r["step"] for r in evals] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    # Each evaluation: loss and perplexity overall and per source of the held-out split.
    for r in evals:
        for src in ("sharegpt_zh", "ruozhiba", "zhihu", "firefly"):
            assert r[f"val_ppl/{src}"] == pytest.approx(math.exp(r[f"val_loss/{src}"]))
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
