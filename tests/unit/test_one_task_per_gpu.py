"""One task per GPU (``srun --ntasks-per-node=8 --gpus-per-task=1``): each rank sees one GPU, index 0,
while LOCAL_RANK says its place on the node. DeepSpeed takes its device from LOCAL_RANK (zero.Init:
``cuda:$LOCAL_RANK``, the engine: ``set_device(LOCAL_RANK)``), so LOCAL_RANK must name the visible
index before DeepSpeed reads it. Tested with the environment Slurm gives each task and the exact
expression DeepSpeed evaluates, on the CUDA accelerator class (no GPU needed to name a device)."""

from __future__ import annotations

import pytest


def _slurm_task_env(local_rank: int, gpus_per_task: bool) -> dict:
    # --gpus-per-task=1: Slurm binds one GPU per task and CUDA_VISIBLE_DEVICES names only it;
    # one task per node: the task sees all 8.
    return {"LOCAL_RANK": str(local_rank), "SLURM_LOCALID": str(local_rank),
            "CUDA_VISIBLE_DEVICES": str(local_rank) if gpus_per_task else "0,1,2,3,4,5,6,7"}


def _visible(env: dict) -> int:
    return len(env["CUDA_VISIBLE_DEVICES"].split(","))  # what torch.cuda.device_count() reports


def _deepspeed_device(env: dict) -> str:
    """partition_parameters.Init: torch.device(get_accelerator().device_name(os.environ["LOCAL_RANK"]))."""
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    return CUDA_Accelerator().device_name(env["LOCAL_RANK"])


@pytest.mark.parametrize("local_rank", range(8))
def test_with_one_gpu_per_task_every_rank_drives_cuda_0_and_deepspeed_reads_0(local_rank):
    from llama3zh_dist.collectives import NODE_LOCAL_RANK, pin_local_rank_to_device

    env = _slurm_task_env(local_rank, gpus_per_task=True)
    assert pin_local_rank_to_device(int(env["LOCAL_RANK"]), _visible(env), env) == 0
    assert _deepspeed_device(env) == "cuda:0"
    assert env["LOCAL_RANK"] == "0"
    if local_rank:
        assert env[NODE_LOCAL_RANK] == str(local_rank)  # kept for logs
    # a second call (the recipe's setup running twice in a process) keeps the same answer
    assert pin_local_rank_to_device(0, _visible(env), env) == 0 and env.get(NODE_LOCAL_RANK, "0") == str(local_rank)


@pytest.mark.parametrize("local_rank", range(8))
def test_with_one_task_per_node_each_rank_keeps_the_gpu_of_its_local_rank(local_rank):
    from llama3zh_dist.collectives import NODE_LOCAL_RANK, pin_local_rank_to_device

    env = _slurm_task_env(local_rank, gpus_per_task=False)
    assert pin_local_rank_to_device(local_rank, _visible(env), env) == local_rank
    assert _deepspeed_device(env) == f"cuda:{local_rank}"
    assert NODE_LOCAL_RANK not in env


def test_more_ranks_than_visible_gpus_is_refused_with_the_setting():
    from llama3zh_dist.collectives import pin_local_rank_to_device

    env = {"LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "0,1"}
    with pytest.raises(RuntimeError, match="cluster.nproc_per_node"):
        pin_local_rank_to_device(3, 2, env)


def test_the_recipe_pins_before_deepspeed_starts():
    """training_device (which pins) runs before init_distributed (rendezvous.py: deepspeed.init_distributed) and the model build."""
    import inspect

    from llama3zh_dist.train import SFTRecipe

    src = inspect.getsource(SFTRecipe.setup)
    assert src.index("training_device(") < src.index("init_distributed(") < src.index("build_model(")
