"""slurm/train.sh on a real (local, two-node) Slurm cluster: tests/slurm/cluster.sh start.

The trainer tests submit the very same script users submit, changed only by sbatch options and Hydra
overrides, and run the real `python -m llama3zh_dist` (tiny model, CPU, one rank per node).
The lifecycle-logic tests (no-progress limit, resubmission) swap the interpreter for a stand-in
through LLAMA3ZH_PYTHON, so that they take seconds per attempt instead of a training each.

    tests/slurm/cluster.sh start && .venv/bin/pytest -m slurm tests/slurm -v
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # slurm_util, whatever the import mode
from slurm_util import (  # noqa: E402
    POLL_BOUND_S,
    TERMINAL,
    describe,
    job_info,
    metrics,
    read_log,
    require_cluster,
    sbatch,
    wait_job,
)

pytestmark = pytest.mark.slurm

# Two nodes, one CPU rank each: world size 2 across node1 and node2.
SBATCH_2N = ["--nodes=2", "--gpus-per-node=0"]
MAX_STEPS = 6


@pytest.fixture(scope="module")
def work(module_tmp) -> Path:
    require_cluster()
    return module_tmp("slurm")


def quickstart(work: Path, run_dir: Path) -> list[str]:
    return [
        "+experiment=quickstart",
        "cluster.nodes=2",
        "cluster.nproc_per_node=1",
        f"trainer.max_steps={MAX_STEPS}",
        "checkpoint.every_steps=2",
        f"run.dir={run_dir}",
        # One prepared dataset for all the runs of this module.
        f"data.out_dir={work}/prepared",
        # Extra overrides for a site or a debugging session (space-separated), e.g. other data.
        *os.environ.get("SLURM_TEST_OVERRIDES", "").split(),
    ]


# The jobs run this test's interpreter (the project's environment), wherever the repository is.
JOB_ENV = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "LLAMA3ZH_PYTHON": sys.executable}


@pytest.fixture(scope="module")
def reference(work: Path):
    """One uninterrupted 2-node quickstart run: (job id, run dir, job output)."""
    run_dir, log = work / "ref", work / "ref.out"
    job = sbatch([*SBATCH_2N, f"--output={log}"], quickstart(work, run_dir), env=JOB_ENV)
    info = wait_job(job, log)
    return job, run_dir, log, info


def test_two_node_quickstart_finishes_and_exports(reference):
    job, run_dir, log, info = reference
    text = read_log(log)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", describe(job, log)
    # One launcher per node, on both nodes of the test cluster.
    assert re.search(r"\[node 0 of 2: .*slurm node node1\] launcher starting", text), describe(job, log)
    assert re.search(r"\[node 1 of 2: .*slurm node node2\] launcher starting", text), describe(job, log)
    assert "preflight ok: world size 2" in text, describe(job, log)
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, MAX_STEPS + 1)), rows
    assert all(r["world_size"] == 2 for r in rows), rows
    assert (run_dir / "FINISHED").exists(), describe(job, log)
    export = run_dir / "export"
    assert (export / "config.json").exists(), sorted(p.name for p in export.iterdir()) if export.exists() else "no export/"
    assert list(export.glob("*.safetensors")), sorted(p.name for p in export.iterdir())
    # Bookkeeping of the script: the job output is linked from the run folder; progress recorded.
    assert (run_dir / "slurm" / f"{job}.out").resolve() == log.resolve()
    state = (run_dir / "slurm" / "state").read_text()
    assert f"last_step={MAX_STEPS}" in state and "stalled=0" in state, state


def test_warning_signal_saves_requeues_resumes_with_identical_losses(work: Path, reference):
    ref_job, ref_dir, ref_log, ref_info = reference
    assert ref_info.get("JobState") == "COMPLETED", describe(ref_job, ref_log)
    ref_loss = {r["step"]: r["loss"] for r in metrics(ref_dir)}

    run_dir, log = work / "preempted", work / "preempted.out"
    job = sbatch([*SBATCH_2N, f"--output={log}"], quickstart(work, run_dir), env=JOB_ENV)

    # Mid-run: once step 2 is logged (the run has MAX_STEPS), send the warning signal the way
    # Slurm's --signal=B:USR1@... does: to the batch script only.
    t0 = time.time()
    while time.time() - t0 < POLL_BOUND_S:
        info = job_info(job)
        steps = [r["step"] for r in metrics(run_dir)]
        if info.get("JobState") in TERMINAL:
            pytest.fail("the job ended before the warning signal could be sent\n" + describe(job, log))
        if steps and max(steps) >= 2:
            break
        time.sleep(0.3)
    else:
        subprocess.run(["scancel", job])
        pytest.fail("no step 2 logged in time\n" + describe(job, log))
    assert max(steps) < MAX_STEPS, f"the run got to step {max(steps)} before the signal; raise MAX_STEPS"
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)

    info = wait_job(job, log)
    text = read_log(log)
    assert info.get("JobState") == "COMPLETED", describe(job, log)
    assert int(info.get("Restarts", "0")) >= 1, describe(job, log)
    assert "got SIGUSR1" in text and "requeueing job" in text, describe(job, log)
    saved = re.search(r"preemption signal: saving at step (\d+)", text)
    resumed = re.search(r"resumed from \S+ at step (\d+)", text)
    assert saved and resumed, describe(job, log)
    k = int(resumed.group(1))
    assert k == int(saved.group(1)) and 2 <= k < MAX_STEPS, describe(job, log)
    # Attempt 2 started from the checkpoint of attempt 1 and went on to the end.
    assert text.count("attempt 2 on") == 1 and "attempt 3 on" not in text, describe(job, log)
    rows = metrics(run_dir)
    loss = {r["step"]: r["loss"] for r in rows}
    assert sorted(loss) == list(range(1, MAX_STEPS + 1)), rows
    after = {s: loss[s] for s in loss if s > k}
    assert after, f"no steps after the resume at step {k}"
    assert after == {s: ref_loss[s] for s in after}, f"losses after resume differ:\n resumed {after}\n reference {ref_loss}"
    assert loss == ref_loss
    assert all(r["world_size"] == 2 for r in rows)
    # Both attempts logged into the same W&B run (offline here: one folder per attempt, one run id).
    wandb_runs = sorted(p.name for p in (run_dir / "wandb").glob("*run-*"))
    assert len(wandb_runs) >= 2 and len({n.rsplit("-", 1)[-1] for n in wandb_runs}) == 1, wandb_runs
    assert (run_dir / "FINISHED").exists() and (run_dir / "export" / "config.json").exists()


def test_bad_override_fails_before_srun_with_message(work: Path):
    run_dir, log = work / "bad", work / "bad.out"
    overrides = [*quickstart(work, run_dir), "trainer.global_batch_size=3"]  # world size 2 cannot divide 3
    job = sbatch([*SBATCH_2N, f"--output={log}"], overrides, env=JOB_ENV)
    info = wait_job(job, log)
    text = read_log(log)
    assert info.get("JobState") == "FAILED" and info.get("ExitCode", "").startswith("2:"), describe(job, log)
    assert "error: trainer.global_batch_size=3" in text, describe(job, log)
    assert "pre-flight failed" in text, describe(job, log)
    # Nothing was started on the nodes, nothing requeued.
    assert "launcher starting" not in text and "rendezvous" not in text, describe(job, log)
    assert info.get("Restarts") == "0", describe(job, log)
    print(f"bad config: job {job} ran {info.get('RunTime')}")


def test_node_count_mismatch_fails_before_srun(work: Path):
    run_dir, log = work / "mismatch", work / "mismatch.out"
    job = sbatch(["--nodes=1", "--gpus-per-node=0", f"--output={log}"], quickstart(work, run_dir), env=JOB_ENV)
    info = wait_job(job, log)
    text = read_log(log)
    assert info.get("JobState") == "FAILED" and info.get("ExitCode", "").startswith("2:"), describe(job, log)
    assert "cluster.nodes=2 but this job has 1 node(s)" in text, describe(job, log)
    assert "launcher starting" not in text, describe(job, log)


# ---- The script's own lifecycle logic, with a stand-in trainer ---------------------------------------

FAKE = r"""#!/usr/bin/env bash
# Stand-in for the project's python: a preflight that passes, a trainer that behaves per FAKE_MODE,
# and the real interpreter for anything else (train.sh's small helpers).
if [[ "${1:-}" == -m && "${2:-}" == llama3zh_dist* ]]; then
  mod=$2; shift 2
  rd=""
  for a in "$@"; do [[ "$a" == run.dir=* ]] && rd=${a#run.dir=}; done
  if [[ "$mod" == llama3zh_dist.preflight ]]; then
    echo "preflight ok: world size 2, gradient accumulation 1, run.dir=$rd"; exit 0
  fi
  echo "fake trainer on ${SLURMD_NODENAME:-?} (node ${SLURM_NODEID:-?}), mode ${FAKE_MODE:-}"
  if [[ "${SLURM_NODEID:-0}" != 0 ]]; then     # node 0 decides the step's exit code
    if [[ "${FAKE_MODE:-}" == crash ]]; then     # like a node waiting for node 0's data prep
      for _ in $(seq 600); do sleep 1; done
      echo "fake trainer: node ${SLURM_NODEID} waited to the end"
    fi
    exit 0
  fi
  mkdir -p "$rd"
  case "${FAKE_MODE:-}" in
    stall) exit 75 ;;  # "saved, requeue me", but never a new step
    crash) sleep 2; echo "fake trainer: crashing"; exit 1 ;;
    wait)              # a long step that saves and exits 75 on a signal
      trap 'echo "fake trainer: saved after a signal"; exit 75' USR1 TERM
      echo "fake trainer: running"
      for _ in $(seq 600); do sleep 1; done
      exit 0 ;;
    progress)          # one new step per attempt; finished at step 2
      n=0; [[ -s "$rd/metrics.jsonl" ]] && n=$(wc -l <"$rd/metrics.jsonl")
      n=$((n + 1)); echo "{\"step\": $n, \"loss\": 1.0, \"world_size\": 2}" >>"$rd/metrics.jsonl"
      if ((n >= 2)); then echo '{"step": 2}' >"$rd/FINISHED"; exit 0; fi
      exit 75 ;;
  esac
  exit 1
fi
exec @REAL@ "$@"
"""


@pytest.fixture
def fake_python(work: Path) -> Path:
    path = work / "fake_python.sh"
    path.write_text(FAKE.replace("@REAL@", sys.executable))
    path.chmod(0o755)
    return path


def test_chain_stops_after_more_than_three_attempts_without_progress(work: Path, fake_python: Path):
    run_dir, log = work / "stall", work / "stall.out"
    job = sbatch([*SBATCH_2N, f"--output={log}"], [f"run.dir={run_dir}"],
                 env={"LLAMA3ZH_PYTHON": str(fake_python), "FAKE_MODE": "stall"})
    info = wait_job(job, log)
    text = read_log(log)
    assert info.get("JobState") == "FAILED" and info.get("ExitCode", "").startswith("1:"), describe(job, log)
    # Attempts 1-3 requeue, the 4th without a new step stops the chain.
    assert info.get("Restarts") == "3", describe(job, log)
    assert "stopping the requeue chain: 4 consecutive attempts without a new optimizer step" in text, describe(job, log)
    assert "stalled=4" in (run_dir / "slurm" / "state").read_text()


def test_resubmits_where_requeue_is_not_allowed_and_finished_run_is_a_no_op(work: Path, fake_python: Path):
    run_dir, log = work / "resubmit", work / "resubmit.out"
    env = {"LLAMA3ZH_PYTHON": str(fake_python), "FAKE_MODE": "progress"}
    job = sbatch([*SBATCH_2N, "--no-requeue", f"--output={log}"], [f"run.dir={run_dir}"], env=env)
    wait_job(job, log)
    m = re.search(r"submitted job (\d+) to continue the run", read_log(log))
    assert m and "scontrol requeue refused" in read_log(log), describe(job, log)
    follow = m.group(1)
    info = wait_job(follow, log)
    assert info.get("JobState") == "COMPLETED", describe(follow, log)
    assert (run_dir / "FINISHED").exists() and [r["step"] for r in metrics(run_dir)] == [1, 2]
    # Submitting the same command again on a finished run does nothing (no srun).
    again_log = work / "resubmit-again.out"
    again = sbatch([*SBATCH_2N, f"--output={again_log}"], [f"run.dir={run_dir}"], env=env)
    info = wait_job(again, again_log)
    text = read_log(again_log)
    assert info.get("JobState") == "COMPLETED" and "is FINISHED" in text, describe(again, again_log)
    assert "fake trainer" not in text


def test_scancel_stops_the_job_without_requeue(work: Path, fake_python: Path):
    """scancel also sends SIGTERM (the trainer saves and exits 75): a cancelled job must stay cancelled."""
    run_dir, log = work / "cancel", work / "cancel.out"
    job = sbatch([*SBATCH_2N, f"--output={log}"], [f"run.dir={run_dir}"],
                 env={"LLAMA3ZH_PYTHON": str(fake_python), "FAKE_MODE": "wait"})
    wait_job(job, log, until=lambda info: "fake trainer: running" in read_log(log))
    subprocess.run(["scancel", job], check=True)
    info = wait_job(job, log)
    # Give a wrongly issued requeue time to show up in the job record.
    time.sleep(5)
    info = job_info(job)
    text = read_log(log)
    assert info.get("JobState") == "CANCELLED" and info.get("Restarts") == "0", describe(job, log)
    assert "requeueing job" not in text and "attempt 2" not in text, describe(job, log)


def test_a_failing_node_ends_the_step_on_all_nodes_without_requeue(work: Path, fake_python: Path):
    run_dir, log = work / "crash", work / "crash.out"
    job = sbatch([*SBATCH_2N, f"--output={log}"], [f"run.dir={run_dir}"],
                 env={"LLAMA3ZH_PYTHON": str(fake_python), "FAKE_MODE": "crash"})
    info = wait_job(job, log)
    text = read_log(log)
    assert info.get("JobState") == "FAILED" and info.get("Restarts") == "0", describe(job, log)
    # Node 1 (waiting, like a node waiting for node 0's data prep) was stopped, not waited for.
    assert "waited to the end" not in text, describe(job, log)
    assert re.search(r"node2: task 1: (Killed|Terminated|Exited with exit code 1[2-9][0-9])", text), describe(job, log)
    assert "training failed (exit" in text and "not requeueing" in text, describe(job, log)
