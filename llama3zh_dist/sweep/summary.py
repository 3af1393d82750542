"""The end of a sweep: one row per trial (status, values, best metric), the console table,
``sweep_summary.json`` / ``.csv`` and the best trial as an experiment file."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .best_experiment import write_best_experiment
from .trial import _Tail

TUNE_DIR = "tune"  # run.dir/tune: Ray Tune's experiment state (what a rerun restores)
STATUS_FINISHED, STATUS_STOPPED, STATUS_FAILED = "finished", "stopped early", "failed"


def _status(trial, run_dir: Path) -> str:
    s = trial.status
    if s == "ERROR":
        return STATUS_FAILED
    if s == "TERMINATED":
        return STATUS_FINISHED if (run_dir / "FINISHED").exists() else STATUS_STOPPED
    started = (run_dir / "launches.log").exists()
    return "interrupted" if s in ("RUNNING", "PAUSED") or started else s.lower()


def _steps_run(run_dir: Path) -> int:
    p = run_dir / "metrics.jsonl"
    steps = [r.get("step", 0) for r in _Tail(p).records()] if p.exists() else []
    return int(max(steps, default=0))


def _collect(experiment_path: Path, trials_dir: Path, sw: DictConfig, params: list[str]) -> list[dict]:
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(experiment_path), default_metric=str(sw.metric), default_mode=str(sw.mode))
    dfs = analysis.trial_dataframes
    rows = []
    for t in sorted(analysis.trials, key=lambda t: t.trial_id):
        run_dir = trials_dir / t.trial_id
        df = dfs.get(t.trial_id)
        vals: list[tuple[float, int]] = []
        if df is not None and str(sw.metric) in df:
            for v, step in zip(df[str(sw.metric)], df["step"] if "step" in df else itertools.repeat(None)):
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    vals.append((float(v), int(step) if step is not None and step == step else -1))
        pick = (min if sw.mode == "min" else max)(vals, default=None, key=lambda x: x[0])
        error = None
        if t.status == "ERROR":
            error = _trial_error(t)
        rows.append({
            "trial": t.trial_id,
            "status": _status(t, run_dir),
            **{k: t.config.get(k) for k in params},
            f"best_{sw.metric}": pick[0] if pick else None,
            "best_step": pick[1] if pick else None,
            "steps_run": _steps_run(run_dir),
            "run_dir": str(run_dir),
            "error": error,
        })
    return rows


def _trial_error(trial) -> str:
    """The first line of a failed trial's error (the rank's exception, from ``TrialRun``)."""
    try:
        text = trial.get_error()
    except Exception:
        text = None
    if not text:
        return "failed (see the trial's train.log)"
    m = re.search(r"training exited with code .*", text)
    return m.group(0).strip() if m else text.strip().splitlines()[-1][:300]


def format_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.5g}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(out)



def _metric_ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def summarize(cfg: DictConfig, run_dir: Path, argv: list[str], space: dict[str, dict], wall_s: float) -> dict:
    sw = cfg.sweep
    params = list(space)
    rows = _collect(run_dir / TUNE_DIR, run_dir / "trials", sw, params)
    metric = f"best_{sw.metric}"
    scored = [r for r in rows if _metric_ok(r[metric])]
    best = (min if sw.mode == "min" else max)(scored, key=lambda r: r[metric], default=None)
    complete = all(r["status"] in (STATUS_FINISHED, STATUS_STOPPED, STATUS_FAILED) for r in rows)
    summary: dict[str, Any] = {
        "sweep": str(sw.name), "run_dir": str(run_dir), "metric": str(sw.metric), "mode": str(sw.mode),
        "complete": complete, "seconds": round(wall_s, 1), "params": params,
        "counts": {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})},
        "best": None, "trials": rows,
    }
    if best is not None and complete:
        best_params = {k: best[k] for k in params}
        name = str(sw.best_experiment)
        command = f"python -m llama3zh_dist +experiment={name}"
        header = [
            command,
            "",
            f"Written by `python -m llama3zh_dist.sweep {' '.join(argv)}`: the best trial",
            f"({best['trial']}, {sw.metric}={best[metric]:.4f} at step {best['best_step']}) of the sweep in {run_dir}.",
            "The trial's settings on top of the experiment the sweep ran; rewritten by every sweep of that name.",
        ]
        path = write_best_experiment(name, [a for a in argv], best_params, header)
        summary["best"] = {"trial": best["trial"], metric: best[metric], "step": best["best_step"],
                           "params": best_params, "experiment": name, "experiment_file": str(path),
                           "command": command}
    (run_dir / "sweep_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    columns = ["trial", "status", *params, metric, "best_step", "steps_run", "error"]
    with open(run_dir / "sweep_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    print("\n" + format_table(rows, columns), flush=True)
    return summary
