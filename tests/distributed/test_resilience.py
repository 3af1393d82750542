"""Checkpoints you can trust: every test runs the real command on 2 CPU ranks (gloo, fp32,
tiny model) and breaks it the way clusters do: kill -9, a kill in the middle of a save, a damaged file,
a preemption signal, NaN, a hung rank, a different number of ranks on resume, and leaked secrets.

The uninterrupted 6-step run (checkpoints every 2 steps) is the reference every resumed run must equal
bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _job import (
    checkpoint_states,
    complete_steps,
    last_step,
    metrics,
    raw_states,
    run,
    run_ranks,
    save_seconds,
    start,
    wait_until,
)

pytestmark = pytest.mark.slow

STEPS = 6
EVERY = 2
COMMON = (f"trainer.max_steps={STEPS}", f"checkpoint.every_steps={EVERY}")


@pytest.fixture(scope="module")
def data_dir(module_tmp) -> Path:
    return module_tmp("prepared") / "quickstart"


@pytest.fixture(scope="module")
def reference(module_tmp, data_dir):
    """The uninterrupted run: (run_dir, metrics by step, log)."""
    run_dir = module_tmp("reference") / "run"
    rc, out = run(run_dir, data_dir, *COMMON)
    assert rc == 0, out[-4000:]
    by_step = {m["step"]: m for m in metrics(run_dir)}
    assert sorted(by_step) == list(range(1, STEPS + 1))
    return run_dir, by_step, out


def _rng(request) -> random.Random:
    seed = int(os.environ.get("LLAMA3ZH_TEST_SEED", random.randrange(1 << 30)))
    print(f"{request.node.name}: random seed {seed} (LLAMA3ZH_TEST_SEED={seed} reproduces it)")
    return random.Random(seed)


def _assert_same_curve(run_dir: Path, ref: dict, steps=None) -> None:
    got = {m["step"]: m for m in metrics(run_dir)}
    assert [m["step"] for m in metrics(run_dir)] == list(range(1, STEPS + 1)), "each step once, in order"
    for s in steps or range(1, STEPS + 1):
        assert got[s]["loss"] == ref[s]["loss"], f"step {s}: loss {got[s]['loss']!r} != {ref[s]['loss']!r}"
        assert got[s]["grad_norm"] == ref[s]["grad_norm"], f"step {s}: grad_norm differs"
        assert got[s]["lr"] == ref[s]["lr"], f"step {s}: lr differs"


def _assert_same_state(a: Path, b: Path) -> None:
    """Bit-identical ZeRO-3 partitions: fp32 weights, Adam moments and step, per rank."""
    ra, rb = raw_states(a), raw_states(b)
    assert len(ra) == len(rb)
    for r, (x, y) in enumerate(zip(ra, rb)):
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(x[key], y[key]), f"rank {r}: {key} differs between {a} and {b}"
        assert x["step"] == y["step"]


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# 1 ------------------------------------------------------------------------------------------------
def test_resume_is_bit_exact(reference, data_dir, tmp_path, request):
    """kill -9 of one rank at a random step after a checkpoint, then the same command again: every later
    step's loss and grad norm == the uninterrupted run's, and so are the final weights and Adam state."""
    ref_dir, ref, _ = reference
    rng = _rng(request)
    kill_during = rng.randint(EVERY + 1, STEPS - 1)
    run_dir = tmp_path / "run"
    job = start(run_dir, data_dir, *COMMON)
    wait_until(job, lambda: complete_steps(run_dir) and last_step(run_dir) >= kill_during - 1)
    victim = rng.randrange(2)
    pid = wait_until(job, lambda: job.rank_pids().get(victim))
    os.kill(pid, signal.SIGKILL)
    rc = job.wait()
    assert rc != 0, "a job that lost a rank must not report success"
    assert 0 < max(complete_steps(run_dir)) < STEPS

    rc, out = run(run_dir, data_dir, *COMMON, log_suffix="-rerun")
    assert rc == 0, out[-4000:]
    assert re.search(r"resumed from \S+/checkpoints/step_\d+ at step \d+", out)
    _assert_same_curve(run_dir, ref)
    _assert_same_state(run_dir / "checkpoints" / f"step_{STEPS}", ref_dir / "checkpoints" / f"step_{STEPS}")


# 2 ------------------------------------------------------------------------------------------------
def test_a_kill_at_any_point_of_a_save_resumes_from_the_newest_complete_checkpoint(reference, data_dir, tmp_path, request):
    """10 times: kill the whole job (launcher and ranks) at a random moment of a checkpoint save; the
    rerun resumes from the newest checkpoint that was complete when it died, and the run finishes with
    every step logged once. (A kill that lands after the save completed lets the run move on, so the
    run is long enough for 10 trials of up to 2 steps each.)"""
    _, _, ref_log = reference
    rng = _rng(request)
    # How long a (non-final) save takes here; kills fall uniformly over that time.
    window = max(save_seconds(ref_log)[:-1])
    run_dir = tmp_path / "run"
    steps = 24
    args = (f"trainer.max_steps={steps}", "checkpoint.every_steps=1", "checkpoint.keep=2")
    ckpts = run_dir / "checkpoints"
    expected_resume = None
    for trial in range(10):
        t_start = time.time()
        job = start(run_dir, data_dir, *args, log_suffix=f"-{trial}")

        def saving():
            """A checkpoint folder this job started writing (leftovers of killed saves are older), once
            there is a complete checkpoint to fall back on."""
            if not complete_steps(run_dir):
                return None
            for d in ckpts.iterdir():
                try:
                    fresh = d.stat().st_mtime >= t_start
                except FileNotFoundError:
                    continue
                if fresh and re.fullmatch(r"step_\d+", d.name) and not (d / "complete.json").exists():
                    return d
            return None

        target = wait_until(job, saving, poll=0.01)
        delay = rng.uniform(0, window)
        time.sleep(delay)
        job.kill_all()
        job.wait()
        landed = "after it completed" if (target / "complete.json").exists() else "before it completed"
        print(f"trial {trial}: killed {delay:.2f}s into the save of {target.name}, {landed}")
        out = job.output()
        if expected_resume is None:
            assert "resumed from" not in out
        else:
            assert f"resumed from {ckpts}/step_{expected_resume} at step {expected_resume}" in out, out[-3000:]
        assert "refusing checkpoint" not in out
        done = complete_steps(run_dir)
        expected_resume = max(done) if done else None
        if (ckpts / "latest").exists():
            named = (ckpts / "latest").read_text().strip()
            assert (ckpts / named / "complete.json").is_file(), "latest names a complete checkpoint"

    rc, out = run(run_dir, data_dir, *args, log_suffix="-final")
    assert rc == 0, out[-4000:]
    if expected_resume is not None:
        assert f"resumed from {ckpts}/step_{expected_resume} at step {expected_resume}" in out
    assert "refusing checkpoint" not in out
    assert [m["step"] for m in metrics(run_dir)] == list(range(1, steps + 1)), "each step once, in order"
    assert (run_dir / "FINISHED").exists()


# 3 ------------------------------------------------------------------------------------------------
def test_a_flipped_byte_is_named_and_the_previous_checkpoint_is_used(reference, data_dir, tmp_path, request):
    ref_dir, ref, _ = reference
    rng = _rng(request)
    run_dir = _copy_run(ref_dir, tmp_path / "run")
    (run_dir / "FINISHED").unlink()
    newest = run_dir / "checkpoints" / f"step_{STEPS}"
    victim = rng.choice(sorted(p for p in newest.rglob("*") if p.is_file() and p.name != "complete.json"))
    data = bytearray(victim.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 0xFF
    victim.write_bytes(bytes(data))

    rc, out = run(run_dir, data_dir, *COMMON)
    assert rc == 0, out[-4000:]
    assert f"refusing checkpoint step_{STEPS}: {victim}: checksum mismatch" in out, out[-3000:]
    prev = STEPS - EVERY
    assert f"resumed from {run_dir}/checkpoints/step_{prev} at step {prev}" in out
    _assert_same_curve(run_dir, ref)
    _assert_same_state(newest, ref_dir / "checkpoints" / f"step_{STEPS}")


# 4 ------------------------------------------------------------------------------------------------
def test_sigusr1_to_one_rank_saves_on_all_ranks_at_one_step_exits_75_and_the_rerun_continues_exactly(
        reference, data_dir, tmp_path, request):
    ref_dir, ref, _ = reference
    rng = _rng(request)
    run_dir = tmp_path / "run"
    job = start(run_dir, data_dir, *COMMON)
    wait_until(job, lambda: last_step(run_dir) >= EVERY + 1)
    target = rng.randrange(2)
    os.kill(job.rank_pids()[target], signal.SIGUSR1)
    rc = job.wait()
    out = job.output()
    assert rc == 75, out[-4000:]
    said = re.findall(r"rank (\d): preemption signal: saving at step (\d+) and exiting 75", out)
    assert sorted(r for r, _ in said) == ["0", "1"], out[-3000:]
    assert len({s for _, s in said}) == 1, f"ranks saved at different steps: {said}"
    step = int(said[0][1])
    assert step < STEPS
    marker = json.loads((run_dir / "checkpoints" / f"step_{step}" / "complete.json").read_text())
    assert marker["step"] == step
    assert any("zero_pp_rank_0_" in f for f in marker["files"]) and any("zero_pp_rank_1_" in f for f in marker["files"])
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{step}"

    rc, out = run(run_dir, data_dir, *COMMON, log_suffix="-rerun")
    assert rc == 0, out[-4000:]
    assert f"resumed from {run_dir}/checkpoints/step_{step} at step {step}" in out
    _assert_same_curve(run_dir, ref)
    _assert_same_state(run_dir / "checkpoints" / f"step_{STEPS}", ref_dir / "checkpoints" / f"step_{STEPS}")


# 5 ------------------------------------------------------------------------------------------------
def test_a_nan_on_one_rank_is_applied_by_no_rank_logged_by_all_and_training_goes_on(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    bad = 4
    rc, out = run(run_dir, data_dir, "trainer.max_steps=5", "checkpoint.every_steps=1", "checkpoint.keep=3",
                  env={"LLAMA3ZH_INJECT_NAN": f"1:{bad}"})
    assert rc == 0, out[-4000:]
    for r in (0, 1):
        m = re.search(rf"rank {r}: step {bad} skipped: .*samples on this rank: \[('[^']+'.*)\]", out)
        assert m, f"rank {r} did not log the skipped step with its sample ids:\n{out[-3000:]}"
    by_step = {m["step"]: m for m in metrics(run_dir)}
    assert by_step[bad]["skipped"] is True
    assert not any(by_step[s]["skipped"] for s in by_step if s != bad)
    ckpts = run_dir / "checkpoints"
    _assert_same_state(ckpts / f"step_{bad}", ckpts / f"step_{bad - 1}")  # nothing applied
    after = raw_states(ckpts / f"step_{bad + 1}")
    assert not torch.equal(after[0]["fp32"], raw_states(ckpts / f"step_{bad}")[0]["fp32"])  # training went on
    assert all(torch.isfinite(r["fp32"]).all() for r in after)


def test_max_bad_steps_consecutive_nans_stop_every_rank_with_the_message(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    rc, out = run(run_dir, data_dir, "trainer.max_steps=5", "checkpoint.every_steps=0", "trainer.max_bad_steps=2",
                  env={"LLAMA3ZH_INJECT_NAN": "0:2,3"})
    assert rc != 0
    for r in (0, 1):
        assert f"error: rank {r}: 2 non-finite steps in a row (trainer.max_bad_steps=2)" in out, out[-3000:]
    assert last_step(run_dir) == 3
    assert "Traceback" not in out


# 6 ------------------------------------------------------------------------------------------------
def test_a_rank_that_hangs_ends_the_job_non_zero_within_the_timeout_plus_60s(data_dir, tmp_path):
    timeout_s = 15
    run_dir = tmp_path / "run"
    job = start(run_dir, data_dir, f"trainer.max_steps={STEPS}", "checkpoint.every_steps=0",
                f"cluster.timeout_minutes={timeout_s / 60}", env={"LLAMA3ZH_INJECT_HANG": "1:3"})
    wait_until(job, lambda: "hanging at step 3" in job.output(), poll=0.1)
    t_hang = time.monotonic()
    rc = job.wait()
    elapsed = time.monotonic() - t_hang
    out = job.output()
    print(f"hung rank -> job exit: {elapsed:.1f}s (collective timeout {timeout_s}s)")
    assert rc != 0, out[-4000:]
    assert elapsed < timeout_s + 60, out[-4000:]
    for r in (0, 1):
        assert re.search(rf"rank {r}: .*last completed step 2\b", out), f"rank {r}'s last step is not in the log:\n{out[-4000:]}"


# 7 ------------------------------------------------------------------------------------------------
PROBE = Path(__file__).with_name("_reshard_probe.py")


def _assert_states_close(a: dict, b: dict, tol=1e-7) -> None:
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            x, y = a["params"][name][key], b["params"][name][key]
            assert x.shape == y.shape, f"{name}.{key}: shape"
            diff = (x - y).abs().max().item()
            assert diff <= tol, f"{name}.{key}: max |diff| {diff} > {tol}"
    assert set(a["adam_step"]) == set(b["adam_step"])
    assert a["param_groups"] == b["param_groups"], "optimizer hyperparameters per group (weight decay) differ"
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert a["trainer_state"]["step"] == b["trainer_state"]["step"]
    assert a["trainer_state"]["consumed_rows"] == b["trainer_state"]["consumed_rows"]


PROBE_ARGS = ["+experiment=quickstart", "logger.mode=disabled", "trainer.progress_bar=false",
              "trainer.global_batch_size=2", "trainer.weight_decay=0.01", f"trainer.max_steps={STEPS}",
              "cluster.nproc_per_node=1"]


@pytest.fixture(scope="module")
def resumed_on_one(reference, data_dir, module_tmp):
    """The 2-rank checkpoint of step STEPS - EVERY resumed on 1 rank by the real recipe (the probe
    saves what it loaded, then makes one update): (two, one, saved states, step, probe log)."""
    ref_dir, _, _ = reference
    step = STEPS - EVERY
    base = module_tmp("to_one")
    two = base / "two"
    (two / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref_dir / "checkpoints" / f"step_{step}", two / "checkpoints" / f"step_{step}")
    saved = checkpoint_states(two / "checkpoints" / f"step_{step}")
    one = base / "one"
    rc, out = run_ranks(PROBE, 1, [*PROBE_ARGS, f"run.dir={two}"],
                        env={"LLAMA3ZH_DATA_DIR": str(data_dir), "PROBE_OUT": str(one)}, log=base / "to1.log")
    assert rc == 0, out[-4000:]
    return two, one, saved, step, out


def test_after_a_resume_on_another_world_size_each_group_steps_its_own_count_on_its_parameters_device(resumed_on_one):
    """DeepSpeed's universal loader hands every ZeRO sub-group one shared CPU ``step`` tensor: torch's
    fused AdamW (CUDA) needs it float32 on the parameter's device, and a shared counter advances once
    per group per update. After the resume each group has its own, on its parameter's device, with
    the saved count, and one update advances each by exactly one."""
    _, one, saved, _, out = resumed_on_one
    report = json.loads((one / "optimizer_steps_rank0.json").read_text())
    loaded, updated = report["after_load"], report["after_one_update"]
    assert len(loaded) == 2 and {g["optimizer"] for g in loaded} == {"AdamW"}  # decay / no-decay groups
    assert len({g["step_id"] for g in loaded}) == len(loaded), "groups share one step tensor"
    for g in loaded:
        assert g["step_device"] == g["param_device"] and g["moment_devices"] == [g["param_device"]], g
        assert g["step_dtype"] == "torch.float32", g  # what fused AdamW requires
        assert g["step"] == saved["adam_step"][0], (g, saved["adam_step"])
    assert [g["step"] for g in updated] == [g["step"] + 1 for g in loaded]


def test_resume_on_1_rank_from_2_and_on_2_from_1_keeps_weights_and_optimizer_state(reference, data_dir, tmp_path,
                                                                                     resumed_on_one):
    """2 -> 1 -> 2 ranks through the real resume path: after loading, the state (fp32 weights, Adam
    moments and step, per-group hyperparameters, LR schedule, data position) equals the saved one to
    1e-7; and the CLI finishes a 2-rank run on 1 rank close to the 2-rank curve."""
    _, ref, _ = reference
    two, one, saved, step, out = resumed_on_one
    env = {"LLAMA3ZH_DATA_DIR": str(data_dir)}
    probe_args = PROBE_ARGS
    assert "saved by 2 ranks; resuming on 1" in out
    on_one = checkpoint_states(one / "checkpoints" / f"step_{step}")
    assert json.loads((one / "checkpoints" / f"step_{step}" / "trainer_state.json").read_text())["world_size"] == 1
    _assert_states_close(saved, on_one)

    back = tmp_path / "back"
    rc, out = run_ranks(PROBE, 2, [*probe_args, f"run.dir={one}"], env={**env, "PROBE_OUT": str(back)},
                        log=tmp_path / "to2.log")
    assert rc == 0, out[-4000:]
    assert "saved by 1 ranks; resuming on 2" in out
    _assert_states_close(saved, checkpoint_states(back / "checkpoints" / f"step_{step}"))

    # The user's command on 1 rank finishes the 2-rank run (steps 5, 6 redone on a different layout).
    rc, out = run(two, data_dir, *COMMON, "cluster.nproc_per_node=1", log_suffix="-1rank")
    assert rc == 0, out[-4000:]
    got = {m["step"]: m for m in metrics(two)}
    for s in range(step + 1, STEPS + 1):
        assert got[s]["world_size"] == 1
        assert got[s]["loss"] == pytest.approx(ref[s]["loss"], rel=1e-4), f"step {s}"


# 8 ------------------------------------------------------------------------------------------------
def test_planted_api_keys_and_tokens_appear_nowhere_in_the_run_folder_or_its_logs(data_dir, tmp_path):
    secrets = {
        "WANDB_API_KEY": "wandbkey-0123456789abcdef0123456789abcdef01234567",
        "HF_TOKEN": "hf_PlantedFakeTokenDoNotLeak987654321",
        "MY_SERVICE_PASSWORD": "pw-Planted-Fake-Password-24680",
    }
    run_dir = tmp_path / "run"
    rc, out = run(run_dir, data_dir, "trainer.max_steps=2", "checkpoint.every_steps=1", "logger.mode=offline",
                  env={**secrets, "WANDB_MODE": "offline"})
    assert rc == 0, out[-4000:]
    assert list((run_dir / "wandb").glob("offline-run-*")), "the W&B run was written"
    files = [p for p in run_dir.rglob("*") if p.is_file()] + [run_dir.with_name(run_dir.name + ".log")]
    assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".pt" for p in files)
    for p in files:
        blob = p.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in blob, f"{name} leaked into {p}"


# 10 -----------------------------------------------------------------------------------------------
DROPOUT = (*COMMON, "+model.arch.attention_dropout=0.1")


def test_resume_with_dropout_is_bit_exact_because_each_ranks_rng_state_is_restored(data_dir, tmp_path):
    """Issue 20 item 4: with attention dropout on, every training step draws from the torch RNG, so a
    resume equals the uninterrupted run only if each rank's RNG state is restored from the checkpoint.
    The run resumed from step 4 matches the uninterrupted one step for step, in its final weights and
    Adam state, and in the RNG states (python, numpy, torch) each rank saves at the end.

    (The data order needs no RNG state: it is a pure function of the seed and the epoch, data/loader.py;
    test_resume_is_bit_exact covers it.)"""
    ref_dir = tmp_path / "uninterrupted"
    rc, out = run(ref_dir, data_dir, *DROPOUT)
    assert rc == 0, out[-4000:]
    assert "attention_dropout: 0.1" in (ref_dir / "config.yaml").read_text()
    ref = {m["step"]: m for m in metrics(ref_dir)}

    # The same run as if it had died after the checkpoint of step 4: that checkpoint is the newest.
    run_dir = _copy_run(ref_dir, tmp_path / "resumed")
    (run_dir / "checkpoints" / f"step_{STEPS}" / "complete.json").unlink()
    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS}")
    (run_dir / "checkpoints" / "latest").write_text(f"step_{STEPS - EVERY}\n")
    rc, out = run(run_dir, data_dir, *DROPOUT, log_suffix="-rerun")
    assert rc == 0, out[-4000:]
    assert f"resumed from {run_dir}/checkpoints/step_{STEPS - EVERY} at step {STEPS - EVERY}" in out
    _assert_same_curve(run_dir, ref, steps=range(STEPS - EVERY + 1, STEPS + 1))
    final, ref_final = run_dir / "checkpoints" / f"step_{STEPS}", ref_dir / "checkpoints" / f"step_{STEPS}"
    _assert_same_state(final, ref_final)
    for rank in range(2):
        got = torch.load(final / f"rng_state_rank{rank}.pt", weights_only=False)
        want = torch.load(ref_final / f"rng_state_rank{rank}.pt", weights_only=False)
        assert torch.equal(got["torch"], want["torch"]), f"rank {rank}: torch RNG state differs"
        assert got["python"] == want["python"], f"rank {rank}: python RNG state differs"
        assert all(np.array_equal(a, b) for a, b in zip(got["numpy"], want["numpy"])), f"rank {rank}: numpy RNG"
