"""Serving's parts that need no model: incremental detokenising with the real Llama 3 tokenizer
(whole characters only, stop strings), the ``serve`` config group (checks, the key redacted in a
config dump), votes -> preference pairs, and the exact vLLM engine arguments ``backend=auto`` uses."""

from __future__ import annotations

import json

import pytest

from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer
from llama3zh_dist.serve.detok import IncrementalDetokenizer
from llama3zh_dist.serve.votes import VoteBook, read_votes, to_pairs

TEXT = "西红柿炒鸡蛋：先炒蛋，再炒西红柿🍅，最后加盐。Eggs & tomatoes — naïve café 😀👍🏽!"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def test_every_piece_is_whole_characters_and_the_pieces_join_to_the_decoded_text(tok):
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert any("\ufffd" in tok.decode(ids[:k]) for k in range(1, len(ids)))  # characters do span tokens
    d = IncrementalDetokenizer(tok)
    pieces = [d.add(i) for i in ids] + [d.finish()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == TEXT


@pytest.mark.parametrize("stop", ["再炒", "。", "😀", "naïve c"])
def test_a_stop_string_ends_the_text_just_before_it_even_across_tokens(tok, stop):
    ids = tok.encode(TEXT, add_special_tokens=False)
    d = IncrementalDetokenizer(tok, stop=["never there", stop])
    out = []
    for i in ids:
        out.append(d.add(i))
        if d.stopped:
            break
    out.append(d.finish())
    assert d.stopped and "".join(out) == TEXT[: TEXT.index(stop)]
    assert all(stop not in p for p in out)


def test_special_tokens_and_stop_ids_never_reach_the_text(tok):
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    d = IncrementalDetokenizer(tok, skip_ids={eot})
    text = "".join(d.add(i) for i in tok.encode("你好", add_special_tokens=False) + [eot]) + d.finish()
    assert text == "你好"


def test_serve_config_group_checks_and_the_key_is_redacted_in_a_dump(tmp_path):
    from omegaconf import OmegaConf

    from llama3zh_dist.config import load_config, save_config
    from llama3zh_dist.errors import UserError

    cfg = load_config(["serve.api_key=sk-secret-abcdef", "serve.port=0"])
    assert cfg.serve.host == "127.0.0.1" and cfg.serve.backend == "auto"
    save_config(cfg, tmp_path / "config.yaml")
    dumped = (tmp_path / "config.yaml").read_text()
    assert "sk-secret-abcdef" not in dumped and OmegaConf.load(tmp_path / "config.yaml").serve.api_key == "***REDACTED***"
    with pytest.raises(UserError, match="serve.backend='tgi' is rejected"):
        load_config(["serve.backend=tgi"])
    with pytest.raises(UserError, match="serve.max_concurrent=0 is rejected"):
        load_config(["serve.max_concurrent=0"])


def test_votes_append_whole_lines_and_only_a_or_b_become_pairs(tmp_path):
    book = VoteBook(tmp_path)
    conv = [{"role": "user", "content": "你好"}]
    a, b = {"model": "runs/x/export", "answer": "甲"}, {"model": "ckpt80/export", "answer": "乙"}
    for vote in ("a", "b", "tie", "both_bad"):
        book.append(conv, a, b, {"temperature": 0.7}, vote)
    votes = read_votes(tmp_path / "votes.jsonl")
    assert [v["vote"] for v in votes] == ["a", "b", "tie", "both_bad"]
    assert set(votes[0]) == {"time", "messages", "a", "b", "sampling", "vote"}
    pairs = to_pairs(votes)
    assert pairs == [
        {"prompt": conv, "chosen": [{"role": "assistant", "content": "甲"}],
         "rejected": [{"role": "assistant", "content": "乙"}], "chosen_model": "runs/x/export",
         "rejected_model": "ckpt80/export"},
        {"prompt": conv, "chosen": [{"role": "assistant", "content": "乙"}],
         "rejected": [{"role": "assistant", "content": "甲"}], "chosen_model": "ckpt80/export",
         "rejected_model": "runs/x/export"},
    ]
    with pytest.raises(ValueError):
        book.append(conv, a, b, {}, "maybe")


def test_pairs_command_writes_preference_pairs_and_explains_missing_votes(tmp_path, capsys):
    from llama3zh_dist.serve.pairs import main

    with pytest.raises(SystemExit) as e:
        main([f"serve.out_dir={tmp_path}"])
    assert e.value.code == 2 and "no votes at" in capsys.readouterr().err
    VoteBook(tmp_path).append([{"role": "user", "content": "q"}], {"model": "m1", "answer": "x"},
                              {"model": "m2", "answer": "y"}, {}, "b")
    assert main([f"serve.out_dir={tmp_path}"]) == 0
    lines = (tmp_path / "preference_pairs.jsonl").read_text().splitlines()
    assert [json.loads(x)["chosen_model"] for x in lines] == ["m2"]


def test_vllm_engine_args_backend_auto_would_use(tmp_path):
    """Without vLLM or a GPU here, the exact AsyncEngineArgs keywords for an export are checked."""
    from omegaconf import OmegaConf

    from llama3zh_dist.serve.models import resolve_backend, vllm_engine_args

    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16", "max_position_embeddings": 8192}))
    serve = OmegaConf.create({"dtype": "auto", "max_model_len": None, "max_concurrent": 16,
                              "gpu_memory_utilization": 0.9})
    args = vllm_engine_args(tmp_path, "runs/sft/export", serve)
    print(json.dumps(args, indent=1))
    assert args == {
        "model": str(tmp_path), "tokenizer": str(tmp_path), "served_model_name": ["runs/sft/export"],
        "dtype": "bfloat16", "max_model_len": 8192, "generation_config": str(tmp_path),
        "trust_remote_code": False, "max_num_seqs": 16, "gpu_memory_utilization": 0.9,
        "tokenizer_mode": "auto", "enable_prefix_caching": True, "seed": 0,
    }
    serve.max_model_len, serve.dtype = 2048, "float16"
    assert vllm_engine_args(tmp_path, "m", serve)["max_model_len"] == 2048
    assert vllm_engine_args(tmp_path, "m", serve)["dtype"] == "float16"
    assert resolve_backend("auto") == "transformers"  # this machine: no GPU (and no vLLM)
    try:  # the keywords are vLLM's own, where vLLM is installed
        from vllm import AsyncEngineArgs
    except ImportError:
        return
    AsyncEngineArgs(**args)
