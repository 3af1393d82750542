"""One rank of the packed-loss check (tests/distributed/test_packed_loss.py); run with RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT set.

The quickstart model (conf/model/tiny.yaml, fp32) is built the trainer's way (``build_model`` under
transformers' ZeRO-3 integration) and wrapped by ``deepspeed.initialize`` with the trainer's DeepSpeed
config. Each rank packs its own conversations into one row with the real packer, then computes with
the trainer's loss (``supervised_loss_sum``) the loss of the packed row and of every sample alone.
Writes ``OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CONVERSATIONS = [
    [("你好，请介绍一下你自己。", "我是一个乐于助人的中文助手，可以回答问题、写作和翻译。")],
    [("为什么天空是蓝色的？", "阳光穿过大气时被空气分子散射，蓝光波长短，散射最强，所以天空看起来是蓝色的。")],
    [("西红柿炒鸡蛋怎么做？", "鸡蛋先炒好盛出，再炒西红柿出汁，倒回鸡蛋，加盐和少许糖调味。"),
     ("要放葱吗？", "可以，出锅前撒一把葱花更香。")],
    [("鸡兔同笼共10只，28只脚，各几只？", "兔有4只，鸡有6只：6×2+4×4=28。")],
    [("北京有哪些好玩的地方？", "故宫、长城、颐和园、天坛和南锣鼓巷都值得一去。")],
    [("冬天摸门把手为什么会被电？", "空气干燥，身上积累的静电在接近金属时瞬间放电。")],
]


def main(out_dir: Path) -> None:
    import deepspeed
    import pyarrow as pa
    import torch
    import torch.distributed as dist

    from llama3zh_dist.config import load_config
    from llama3zh_dist.data.loader import collate
    from llama3zh_dist.data.packing import build_rows
    from llama3zh_dist.llama3.chat_format import encode_for_training
    from llama3zh_dist.deepspeed_config import build_deepspeed_config
    from llama3zh_dist.model import build_model, supervised_loss_sum

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = load_config(["+experiment=quickstart", f"cluster.nproc_per_node={world}"])
    assert cfg.model.dtype == "float32" and cfg.model.attn_implementation == "sdpa"
    ds_config = build_deepspeed_config(cfg, world)
    assert ds_config["zero_optimization"]["stage"] == 3
    torch.manual_seed(int(cfg.trainer.seed))
    model = build_model(cfg, ds_config)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    partitioned = all(hasattr(p, "ds_tensor") and p.ds_tensor.numel() < p.ds_numel for p in model.parameters() if p.ds_numel >= world)

    # this rank's samples, as the data pipeline encodes them (Llama 3 template, real tokenizer)
    mine = CONVERSATIONS[rank::world]
    samples = []
    for turns in mine:
        msgs = [m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
        samples.append(encode_for_training(msgs))
    table = pa.table({
        "input_ids": [ids for ids, _ in samples],
        "labels": [lab for _, lab in samples],
        "id": [f"r{rank}-{k}" for k in range(len(samples))],
    })
    row = build_rows(table, [list(range(len(samples)))]).to_pylist()[0]
    packed = collate([row])
    singles = [collate(build_rows(table, [[k]]).to_pylist()) for k in range(len(samples))]
    assert sum(b.supervised_tokens for b in singles) == packed.supervised_tokens
    assert packed.position_ids[0].tolist().count(0) == len(samples)

    cpu = torch.device("cpu")
    engine.eval()
    with torch.no_grad():
        packed_sum = float(supervised_loss_sum(engine, packed, cpu))
        unpacked = [float(supervised_loss_sum(engine, b, cpu)) for b in singles]
    totals = torch.tensor([packed_sum, sum(unpacked), float(packed.supervised_tokens)], dtype=torch.float64)
    dist.all_reduce(totals)
    result = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "zero_stage": engine.zero_optimization_stage(),
        "partitioned": partitioned,
        "samples": len(samples),
        "tokens": packed.tokens,
        "supervised_tokens": packed.supervised_tokens,
        "packed_sum": packed_sum,
        "unpacked_sums": unpacked,
        "global_packed_loss": float(totals[0] / totals[2]),
        "global_unpacked_loss": float(totals[1] / totals[2]),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
