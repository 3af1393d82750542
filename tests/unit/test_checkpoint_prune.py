"""Which checkpoint folders survive a save (``CheckpointManager._prune``, run by rank 0 after the marker)."""

import json

from llama3zh_dist.checkpoint import MARKER, CheckpointManager


def _make(root, step, complete=True):
    d = root / "checkpoints" / f"step_{step}"
    d.mkdir(parents=True)
    (d / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    if complete:
        (d / MARKER).write_text(json.dumps({"step": step, "files": {}}))
    return d


def _left(root):
    return sorted(p.name for p in (root / "checkpoints").iterdir())


def test_keeps_the_newest_k_complete_and_drops_older_interrupted_saves(tmp_path):
    for s in (2, 4, 6):
        _make(tmp_path, s)
    _make(tmp_path, 5, complete=False)  # a save killed half way, older than the newest complete one
    _make(tmp_path, 8, complete=True)
    CheckpointManager(tmp_path, rank=0, world_size=1, keep=2)._prune(8)
    assert _left(tmp_path) == ["step_6", "step_8"]


def test_a_refused_newer_checkpoint_does_not_push_the_fallback_out(tmp_path):
    # step_6 was refused at resume (damaged); training resumed from step_4 and has just saved step_5.
    for s in (4, 5, 6):
        _make(tmp_path, s)
    CheckpointManager(tmp_path, rank=0, world_size=1, keep=2)._prune(5)
    assert _left(tmp_path) == ["step_4", "step_5", "step_6"]


def test_universal_conversions_go_with_their_checkpoint(tmp_path):
    for s in (2, 4, 6):
        _make(tmp_path, s)
    uni = tmp_path / "checkpoints" / "universal"
    for s in (2, 4):
        (uni / f"step_{s}").mkdir(parents=True)
    (uni / ".step_4").mkdir()  # a conversion that was interrupted
    CheckpointManager(tmp_path, rank=0, world_size=1, keep=2)._prune(6)
    assert _left(tmp_path) == ["step_4", "step_6", "universal"]
    assert sorted(p.name for p in uni.iterdir()) == ["step_4"]
