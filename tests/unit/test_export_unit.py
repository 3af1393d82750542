"""Unit tests of the exporter's parts (no DeepSpeed, no checkpoint): sizes, shard plan, streamed
safetensors, refusal of incomplete checkpoints, atomic replacement, W&B references, CLI messages."""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
import torch

from llama3zh_dist.errors import UserError
from llama3zh_dist.export import check_complete_checkpoint, log_export_to_wandb, resolve_checkpoint
from llama3zh_dist.export.core import _move_into_place, _remove_leftovers, resolve_dtype
from llama3zh_dist.export.safetensors_stream import (
    HashingWriter,
    TensorEntry,
    header_bytes,
    parse_size,
    plan_shards,
    tensor_bytes,
)


def test_shard_size_reads_like_transformers():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError):
        parse_size("five gigs")


def test_dtype_names_are_checked_with_a_clear_message():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    with pytest.raises(UserError, match="export.dtype"):
        resolve_dtype("int8")


def test_shard_plan_keeps_order_names_files_like_hf_and_gives_big_tensors_their_own_shard():
    e = [TensorEntry(f"t{i}", (n,), torch.bfloat16) for i, n in enumerate([10, 10, 100, 10, 10])]
    shards = plan_shards(e, 45)  # bytes: 20 20 200 20 20
    assert [s.filename for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert [[x.name for x in s.entries] for s in shards] == [["t0", "t1"], ["t2"], ["t3", "t4"]]
    assert [s.filename for s in plan_shards(e, 10**9)] == ["model.safetensors"]


def test_streamed_safetensors_file_reads_back_with_safetensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = {
        "a": torch.randn(3, 5).to(torch.bfloat16),
        "b": torch.randn(7),
        "c": torch.arange(6, dtype=torch.int64).view(2, 3),
        "d": torch.tensor([True, False, True]),
        "e": torch.randn(2, 2).half(),
        "empty": torch.empty(0, 4),
    }
    entries = [TensorEntry(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    w = HashingWriter(tmp_path / "x.safetensors")
    w.write(header_bytes(entries, {"format": "pt"}))
    for k, v in tensors.items():
        w.write(tensor_bytes(v))
    digest = w.close()
    assert digest == hashlib.sha256((tmp_path / "x.safetensors").read_bytes()).hexdigest()
    back = load_file(str(tmp_path / "x.safetensors"))
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def _fake_checkpoint(root: pathlib.Path, step: int, complete: bool) -> pathlib.Path:
    d = root / "checkpoints" / f"step_{step}"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    if complete:
        files = {"config.json": hashlib.sha256(b"{}").hexdigest()}
        (d / "complete.json").write_text(json.dumps({"step": step, "files": files}))
    return d


def test_incomplete_checkpoint_is_refused_with_a_clear_message(tmp_path):
    d = _fake_checkpoint(tmp_path, 5, complete=False)
    with pytest.raises(UserError, match=r"step_5 is incomplete .*complete\.json.*export\.step"):
        check_complete_checkpoint(d)
    with pytest.raises(UserError, match="does not exist"):
        check_complete_checkpoint(tmp_path / "nope")
    with pytest.raises(UserError, match="export.step=7: no checkpoint"):
        resolve_checkpoint(tmp_path, 7)
    with pytest.raises(UserError, match="incomplete"):
        resolve_checkpoint(tmp_path, 5)


def test_latest_must_exist_and_name_a_complete_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path)
    _fake_checkpoint(tmp_path, 3, complete=True)
    (tmp_path / "checkpoints" / "latest").write_text("step_3\n")
    assert resolve_checkpoint(tmp_path).name == "step_3"
    assert resolve_checkpoint(tmp_path, "4".replace("4", "3")).name == "step_3"


def test_checkpoint_missing_a_listed_file_is_refused(tmp_path):
    d = _fake_checkpoint(tmp_path, 2, complete=True)
    (d / "config.json").unlink()
    with pytest.raises(UserError, match="lacks files"):
        check_complete_checkpoint(d)


def test_new_export_replaces_the_old_one_in_one_step_and_leftovers_are_cleaned(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "SHA256SUMS").write_text("old")
    new = tmp_path / ".tmp-export-export-999999999-abcd"
    new.mkdir()
    (new / "SHA256SUMS").write_text("new")
    _move_into_place(new, out)
    assert (out / "SHA256SUMS").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # a temp folder of a killed export (pid gone) is removed by the next export
    dead = tmp_path / ".tmp-export-export-999999999-ffff"
    dead.mkdir()
    _remove_leftovers(out)
    assert not dead.exists() and out.exists()


class _FakeRun:
    name = "sft"

    def __init__(self):
        self.logged = []
        self.summary = {}

    def log_artifact(self, art):
        self.logged.append(art)


def test_wandb_gets_a_reference_artifact_with_the_checksums_and_uploads_nothing(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"weights")
    (export / "config.json").write_text("{}")
    files = {n: hashlib.sha256((export / n).read_bytes()).hexdigest() for n in ("model.safetensors", "config.json")}
    (export / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in sorted(files.items())))
    run = _FakeRun()
    art = log_export_to_wandb(run, export, {"files": files, "dtype": "bfloat16", "num_parameters": 7, "step": 3})
    assert run.logged == [art] and art.type == "model"
    assert art.metadata["sha256"] == files and art.metadata["dtype"] == "bfloat16"
    refs = {name: entry.ref for name, entry in art.manifest.entries.items()}
    assert set(refs) == {"model.safetensors", "config.json", "SHA256SUMS"}
    assert all(r.startswith("file://") for r in refs.values())
    assert run.summary["export/path"] == str(export.resolve())
    assert log_export_to_wandb(None, export, {}) is None


def test_cli_without_run_dir_says_what_to_type(capsys):
    from llama3zh_dist.export.__main__ import main

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "run.dir=" in err and "Traceback" not in err


def test_cli_refuses_a_run_whose_latest_checkpoint_is_incomplete(tmp_path, capsys):
    from llama3zh_dist.export.__main__ import main

    _fake_checkpoint(tmp_path, 4, complete=False)
    (tmp_path / "checkpoints" / "latest").write_text("step_4")
    with pytest.raises(SystemExit) as e:
        main([f"run.dir={tmp_path}", "model=tiny"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "step_4 is incomplete" in err and "Traceback" not in err


def test_tied_embeddings_are_expected_once_like_save_pretrained():
    from transformers import LlamaConfig

    from llama3zh_dist.export.model_meta import expected_tensors, skeleton

    cfg = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    exp = expected_tensors(skeleton(cfg))
    assert "model.embed_tokens.weight" in exp and "lm_head.weight" not in exp
    cfg.tie_word_embeddings = False
    assert "lm_head.weight" in expected_tensors(skeleton(cfg))


def _shard_being_written(tmp_path):
    """One shard of three tensors as the exporter lays it out: header written, file at its full size
    (zeros where no tensor is yet), and the bytes each tensor will get."""
    from llama3zh_dist.export.writer import WriteProgress

    tensors = {"a": torch.randn(300), "b": torch.arange(50, dtype=torch.int64), "c": torch.randn(7, 9).half()}
    shards = plan_shards([TensorEntry(k, tuple(v.shape), v.dtype) for k, v in tensors.items()], 10**9)
    progress = WriteProgress(shards)
    (fn, rows), = progress.layout.items()
    path = tmp_path / fn
    head = progress.headers[fn]
    path.write_bytes(head + bytes(rows[-1][1] - len(head)))
    progress.header_written(fn)
    return path, progress, rows, {name: bytes(tensor_bytes(tensors[name])) for _, _, name in rows}


def _write_at(path, start: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(data)


def test_read_back_follows_the_writers_and_hashes_the_file_as_written(tmp_path):
    """The read-back starts before the tensors are written and reads each part only once it is
    reported written: had it read ahead, it would hash the zeros there and refuse the file."""
    import threading

    import xxhash

    from llama3zh_dist.export.writer import read_back

    path, progress, rows, data = _shard_being_written(tmp_path)
    result = {}
    reader = threading.Thread(target=lambda: result.update(sha=read_back(path, progress)))
    reader.start()
    for start, _, name in reversed(rows):  # writers finish in any order
        _write_at(path, start, data[name])
        progress.tensor_written(path.name, name, xxhash.xxh3_64_intdigest(data[name]))
    reader.join()
    assert result["sha"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_back_names_bytes_read_back_other_than_written_and_a_short_file(tmp_path):
    import xxhash

    from llama3zh_dist.export.writer import read_back

    path, progress, rows, data = _shard_being_written(tmp_path)
    for start, _, name in rows:
        flipped = bytearray(data[name])
        if name == "b":
            flipped[3] ^= 0xFF  # what reached the disk is not what was meant
        _write_at(path, start, bytes(flipped))
        progress.tensor_written(path.name, name, xxhash.xxh3_64_intdigest(data[name]))
    start, end, _ = rows[1]
    with pytest.raises(RuntimeError, match=f"bytes {start}-{end} read back other than written"):
        read_back(path, progress)
    _write_at(path, start, data["b"])
    read_back(path, progress)  # mended: passes
    with open(path, "r+b") as f:
        f.truncate(rows[-1][1] - 1)
    with pytest.raises(RuntimeError, match="shorter than written"):
        read_back(path, progress)


def test_a_writer_failure_ends_the_read_back_waiting_for_it(tmp_path):
    import threading

    from llama3zh_dist.export.writer import read_back

    path, progress, _, _ = _shard_being_written(tmp_path)
    errors = []

    def read():
        try:
            read_back(path, progress)
        except RuntimeError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    progress.failed(OSError(28, "No space left on device"))
    reader.join()
    assert len(errors) == 1 and f"writing {path.name} failed" in str(errors[0])
    assert isinstance(errors[0].__cause__, OSError)
