"""Acceptance tests of the exporter on real ZeRO-3 checkpoints made by 2 CPU ranks (gloo).

The checkpoints come from ``_export_helpers.py`` (DeepSpeed ``save_checkpoint`` plus our
``config.json``/``complete.json``/``reference_logits.safetensors``), made once per module.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from _export_helpers import make_zero3_checkpoint  # noqa: E402

from llama3zh_dist.errors import UserError  # noqa: E402
from llama3zh_dist.export import LIMITS, export_checkpoint, export_run  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _save_run_config(run_dir: pathlib.Path) -> None:
    from omegaconf import OmegaConf

    from llama3zh_dist.config import load_config

    cfg = load_config(["model=tiny", f"run.dir={run_dir}", "export.max_shard_size=100KB", "export.workers=2"])
    OmegaConf.save(cfg, run_dir / "config.yaml")


@pytest.fixture(scope="module")
def tokenizer():
    from llama3zh_dist.llama3.hf_tokenizer import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module")
def tied_run(module_tmp):
    """Tiny Llama with tied embeddings, several ZeRO sub-groups, reference logits, the tokenizer (as the
    trainer saves every checkpoint), a run config. ``untied_run`` carries no tokenizer (a checkpoint
    from before checkpoints did): its exports save the tokenizer object they are given."""
    run = module_tmp("tied") / "run"
    make_zero3_checkpoint(run, tie=True, reference_logits=True, tokenizer=True, sub_group_size=20000)
    _save_run_config(run)
    return run


@pytest.fixture(scope="module")
def untied_run(module_tmp):
    run = module_tmp("untied") / "run"
    make_zero3_checkpoint(run, hidden=96, layers=3, heads=6, kv_heads=2, reference_logits=True)
    return run


def _ckpt(run: pathlib.Path) -> pathlib.Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def _load_export(folder: pathlib.Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _looks_complete(folder: pathlib.Path) -> bool:
    return (folder / "SHA256SUMS").is_file() and (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _sums_hold(folder: pathlib.Path) -> bool:
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            return False
    return True


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_every_exported_tensor_equals_deepspeeds_consolidation_cast_to_the_export_dtype(
        which, tied_run, untied_run, tokenizer, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run = tied_run if which == "tied" else untied_run
    ckpt = _ckpt(run)
    ref = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    for dtype in DTYPES:
        out = tmp_path / f"export-{dtype}"
        s = export_checkpoint(ckpt, out, tokenizer=tokenizer, dtype=dtype, max_shard_size="60KB", workers=3)
        got = _load_export(out)
        assert len(s["shards"]) > 1 and (out / "model.safetensors.index.json").is_file()
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(got)
        if which == "tied":  # one embedding, as save_pretrained writes it
            assert "lm_head.weight" not in got and "model.embed_tokens.weight" in got
            assert set(got) == set(ref) - {"lm_head.weight"}
        else:
            assert set(got) == set(ref)
        for name, t in got.items():
            assert t.dtype == DTYPES[dtype], name
            assert torch.equal(t, ref[name].to(DTYPES[dtype])), name
        assert s["num_parameters"] == sum(t.numel() for t in got.values())
        assert _sums_hold(out)


def test_export_loads_offline_with_auto_classes_and_gives_the_trained_models_logits(
        tied_run, untied_run, tokenizer, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    for run in (tied_run, untied_run):
        ckpt = _ckpt(run)
        ref = load_file(str(ckpt / "reference_logits.safetensors"))
        for dtype in ("float32", "bfloat16"):
            out = tmp_path / f"{run.parent.name}-{dtype}"
            s = export_checkpoint(ckpt, out, tokenizer=tokenizer, dtype=dtype, max_shard_size="5GB")
            assert s["shards"] == ["model.safetensors"]
            assert s["verification"]["logits"]["failures"] == []
            model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
            assert model.dtype == DTYPES[dtype]
            assert json.loads((out / "config.json").read_text())["torch_dtype"] == dtype
            with torch.no_grad():
                logits = model(input_ids=ref["input_ids"]).logits.float()
            scale = max(1.0, float(ref["logits"].abs().max()))
            err = float((logits - ref["logits"]).abs().max())
            assert err <= LIMITS[DTYPES[dtype]]["max_rel_diff"] * scale, (dtype, err, scale)
            if dtype == "float32":
                assert torch.allclose(logits, ref["logits"], atol=1e-4 * scale, rtol=0)
            tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
            assert tok.chat_template == tokenizer.chat_template and len(tok) == len(tokenizer) == 128256
            msgs = [{"role": "user", "content": "你好"}]
            assert tok.apply_chat_template(msgs, tokenize=False) == tokenizer.apply_chat_template(msgs, tokenize=False)
            gen = GenerationConfig.from_pretrained(out, local_files_only=True)
            assert gen.eos_token_id == [128009, 128001] and gen.bos_token_id == 128000
            assert gen.pad_token_id == 128004 and gen.do_sample is False


def _copy_checkpoint(run: pathlib.Path, dest_run: pathlib.Path) -> pathlib.Path:
    src = _ckpt(run)
    dst = dest_run / "checkpoints" / src.name
    shutil.copytree(src, dst)
    (dest_run / "checkpoints" / "latest").write_text(src.name)
    return dst


def _rewrite_marker(ckpt: pathlib.Path) -> None:
    info = json.loads((ckpt / "complete.json").read_text())
    info["files"] = {f: hashlib.sha256((ckpt / f).read_bytes()).hexdigest() for f in info["files"]}
    (ckpt / "complete.json").write_text(json.dumps(info))


def test_export_is_refused_when_the_logits_disagree_with_the_trained_model(tied_run, tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = _copy_checkpoint(tied_run, tmp_path / "run")
    ref = load_file(str(ckpt / "reference_logits.safetensors"))
    ref["logits"] = ref["logits"] + 0.5 * ref["logits"].abs().max()
    save_file(ref, str(ckpt / "reference_logits.safetensors"))
    _rewrite_marker(ckpt)
    out = tmp_path / "run" / "export"
    with pytest.raises(RuntimeError, match="logits differ"):
        export_checkpoint(ckpt, out, tokenizer=tokenizer, dtype="float32")
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == ["checkpoints"]


def test_an_export_that_cannot_check_its_logits_says_so_on_the_console_and_in_the_folder(tied_run, tmp_path):
    """Issue 20 item 3: a checkpoint without reference logits (an older version's) is exported, but the
    console warns and ``verification.json`` records ``logits_verified: false`` with the reason; with
    them, the file records the figures of the check. Never silent."""
    run = tmp_path / "run"
    ckpt = _copy_checkpoint(tied_run, run)
    shutil.copy(tied_run / "config.yaml", run / "config.yaml")
    ok = _cli(run)
    assert ok.returncode == 0, ok.stderr[-3000:]
    verified = json.loads((run / "export" / "verification.json").read_text())
    assert verified["logits_verified"] is True and verified["logits"]["failures"] == []
    assert "not verified" not in ok.stderr and _sums_hold(run / "export")

    (ckpt / "reference_logits.safetensors").unlink()
    info = json.loads((ckpt / "complete.json").read_text())
    del info["files"]["reference_logits.safetensors"]
    (ckpt / "complete.json").write_text(json.dumps(info))
    r = _cli(run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING: export not verified" in r.stderr and "reference_logits.safetensors" in r.stderr
    record = json.loads((run / "export" / "verification.json").read_text())
    assert record["logits_verified"] is False and "reference_logits.safetensors" in record["not_verified"]
    assert "verification.json" in (run / "export" / "SHA256SUMS").read_text()


def test_damaged_or_incomplete_checkpoint_is_refused_with_a_clear_message(tied_run, tokenizer, tmp_path):
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    ckpt = _copy_checkpoint(tied_run, run)
    optim = next(ckpt.glob("*optim_states.pt"))
    data = bytearray(optim.read_bytes())
    data[-100] ^= 0xFF
    optim.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its checksum in complete.json"):
        export_checkpoint(ckpt, run / "export", tokenizer=tokenizer, verify="full")
    with pytest.raises(UserError, match="damaged"):  # without the source checksums: it does not unpickle
        export_checkpoint(ckpt, run / "export", tokenizer=tokenizer)
    (ckpt / "complete.json").unlink()  # an interrupted save
    cfg = OmegaConf.load(tied_run / "config.yaml")
    cfg.run.dir = str(run)
    with pytest.raises(UserError, match=r"step_2 is incomplete \(no complete\.json"):
        export_run(cfg)
    with pytest.raises(UserError, match="export.step=9: no checkpoint"):
        export_run(cfg, step=9)
    assert not (run / "export").exists()


def _cli(run: pathlib.Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "llama3zh_dist.export", f"run.dir={run}", *overrides],
                          cwd=ROOT, env=e, capture_output=True, text=True)


def test_cli_exports_the_latest_checkpoint_with_the_runs_config_and_command_line_overrides(tied_run, tmp_path):
    run = tmp_path / "run"
    _copy_checkpoint(tied_run, run)
    shutil.copy(tied_run / "config.yaml", run / "config.yaml")  # its run.dir names the original run
    r = _cli(run, "export.dtype=float16")
    assert r.returncode == 0, r.stderr[-3000:]
    out = run / "export"
    assert r.stdout.strip().splitlines()[-1] == str(out)  # run.dir from the command line wins
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"  # override wins
    assert (out / "model.safetensors.index.json").is_file()  # 100KB shards: the run's own setting
    assert _sums_hold(out) and {t.dtype for t in _load_export(out).values()} == {torch.float16}
    bad = _cli(run, "export.step=7")
    assert bad.returncode == 2 and "export.step=7" in bad.stderr and "Traceback" not in bad.stderr


CRASH_POINTS = ["mid_shard", "after_weights", "before_sums", "before_rename"]


def test_a_crash_mid_export_leaves_no_folder_that_looks_complete(tied_run, tokenizer, tmp_path):
    run = tmp_path / "run"
    ckpt = _copy_checkpoint(tied_run, run)
    shutil.copy(tied_run / "config.yaml", run / "config.yaml")
    out = run / "export"
    # no export yet: a killed export leaves no export folder
    r = _cli(run, env={"LLAMA3ZH_EXPORT_CRASH_AT": "mid_shard"})
    assert r.returncode == -9, r.stderr[-2000:]
    assert not out.exists()
    assert not any(_looks_complete(p) for p in run.iterdir() if p.is_dir())
    # with a previous export: after a kill at any point it is still there, whole and unchanged
    export_checkpoint(ckpt, out, tokenizer=tokenizer, dtype="float32", max_shard_size="100KB")
    before = (out / "SHA256SUMS").read_text()
    for point in CRASH_POINTS:
        r = _cli(run, "export.dtype=bfloat16", env={"LLAMA3ZH_EXPORT_CRASH_AT": point})
        assert r.returncode == -9, (point, r.stderr[-2000:])
        assert (out / "SHA256SUMS").read_text() == before and _sums_hold(out), point
        leftovers = [p for p in run.iterdir() if p.name not in ("checkpoints", "export", "config.yaml")]
        assert all(p.name.startswith(".tmp-export-export-") for p in leftovers), (point, leftovers)
    # the next export replaces it and removes what the killed ones left
    s = export_checkpoint(ckpt, out, tokenizer=tokenizer, dtype="bfloat16")
    assert s["dtype"] == "bfloat16" and _sums_hold(out)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "export"]


def _memprobe(warm: pathlib.Path, ckpt: pathlib.Path, out: pathlib.Path, shard: str, hold: int = 0) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, str(HERE / "_export_memprobe.py"), str(warm), str(ckpt), str(out), shard, "4",
                        str(hold)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# What the design promises to hold besides one tensor (export/core.py): each of the 4 writer threads one
# piece (CHUNK_ELEMENTS fp32 pages read + the cast copy: 12 MB in bf16), and a fixed part, the same for
# any model size (read-back buffers, the 128k-token tokenizer.json parsed by the check, allocator
# slack). Nothing scales with the shard size or the number of tensors. Measured here: 74-85 MiB in all.
from llama3zh_dist.export.writer import CHUNK_ELEMENTS  # noqa: E402

PIECES = 4 * CHUNK_ELEMENTS * (4 + 2)
FIXED_OVERHEAD = 40 * 2**20
BUFFER = PIECES + FIXED_OVERHEAD  # 88 MiB


@pytest.fixture(scope="module")
def big_run(module_tmp):
    """~95M parameters (364 MiB fp32) whose largest tensors (32000 x 512 embeddings, untied) are 62.5 MiB
    in fp32: large enough that a hold of two of them stands out above the buffer's slack."""
    run = module_tmp("big") / "run"
    make_zero3_checkpoint(run, vocab=32000, hidden=512, intermediate=2048, layers=16, heads=8, kv_heads=4, steps=1)
    return run


@pytest.mark.skipif(not pathlib.Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_is_one_tensor_plus_a_fixed_buffer_and_a_larger_hold_exceeds_it(untied_run, big_run, tmp_path):
    small, big = _ckpt(untied_run), _ckpt(big_run)
    shard = "16MB"
    m = _memprobe(small, big, tmp_path / "export-big", shard)
    growth = m["peak"] - m["baseline"]
    bound = m["largest_tensor_fp32"] + BUFFER
    print({"growth_MiB": growth / 2**20, "bound_MiB": bound / 2**20, "total_fp32_MiB": m["total_fp32"] / 2**20})
    assert growth <= bound, m
    # the bound means something: half of the model's fp32 weights does not fit in it ...
    assert bound < m["total_fp32"] / 2 and m["shards"] > 4
    # ... and an export that held more than one whole tensor (a writer assembling the largest tensor in
    # fp32 and keeping a second one, instead of streaming pieces) is caught
    held = _memprobe(small, big, tmp_path / "export-held", shard, hold=2 * m["largest_tensor_fp32"])
    assert held["peak"] - held["baseline"] > bound, (held, bound)


def test_logits_check_reads_vocabulary_matrices_by_rows_and_still_matches(tied_run, tokenizer, tmp_path, monkeypatch):
    """The check runs the model module by module; embeddings read only the rows of the prompt's tokens
    and a big LM head is applied block by block (forced here on the tiny model)."""
    from llama3zh_dist.export import model_meta

    monkeypatch.setattr(model_meta, "BIG_WEIGHT", 1000)
    monkeypatch.setattr(model_meta, "ROW_BLOCK", 64 * 96)
    s = export_checkpoint(_ckpt(tied_run), tmp_path / "export", tokenizer=tokenizer, dtype="float32")
    lg = s["verification"]["logits"]
    assert lg["max_abs_diff"] <= 1e-4 * max(1.0, lg["max_abs_reference"]) and lg["argmax_agreement"] == 1.0


def test_the_export_carries_the_checkpoints_own_tokenizer_byte_for_byte_and_refuses_a_damaged_one(tied_run, tmp_path):
    """Issue 23 (export time): the tokenizer is copied from ``step_N/tokenizer/`` (hashed against
    ``complete.json`` on the way), not loaded and saved again; a loader given for older checkpoints is
    never called; a damaged tokenizer file stops the export like a damaged weight file."""
    from transformers import AutoTokenizer

    ckpt = _ckpt(tied_run)
    out = tmp_path / "export"

    def must_not_load():
        raise AssertionError("the checkpoint has its tokenizer: nothing to load")

    s = export_checkpoint(ckpt, out, tokenizer=must_not_load, dtype="float32")
    names = sorted(p.name for p in (ckpt / "tokenizer").iterdir())
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(names)
    for name in names:
        assert (out / name).read_bytes() == (ckpt / "tokenizer" / name).read_bytes(), name
        assert name in s["files"]
    assert "checkpoint" in s["verification"]["tokenizer"]["source"] and _sums_hold(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 128256 and "<|eot_id|>" in tok.apply_chat_template([{"role": "user", "content": "你好"}],
                                                                           tokenize=False)

    damaged = _copy_checkpoint(tied_run, tmp_path / "run")
    f = damaged / "tokenizer" / "tokenizer.json"
    f.write_bytes(f.read_bytes().replace(b'"<|eot_id|>"', b'"<|eot_ix|>"', 1))
    with pytest.raises(UserError, match=r"tokenizer/tokenizer.json does not match its checksum in complete.json"):
        export_checkpoint(damaged, tmp_path / "run" / "export", dtype="float32")
    assert not (tmp_path / "run" / "export").exists()


def test_checkpoint_names_in_another_order_than_the_config_are_written_again_in_the_configs_order(
        untied_run, tokenizer, tmp_path, monkeypatch):
    """The export starts writing under the names and order the checkpoint holds (before transformers
    has built the config's model); when the config's order differs, the shards are planned by the
    config and written again: same tensors, in the order ``save_pretrained`` would write them."""
    from transformers import AutoConfig

    from llama3zh_dist.export import core
    from llama3zh_dist.export.model_meta import expected_tensors, skeleton

    real = core.names_in_checkpoint
    monkeypatch.setattr(core, "names_in_checkpoint", lambda c: dict(reversed(list(real(c).items()))))
    ckpt = _ckpt(untied_run)
    s = export_checkpoint(ckpt, tmp_path / "export", tokenizer=tokenizer, dtype="float32", max_shard_size="60KB")
    want = list(expected_tensors(skeleton(AutoConfig.from_pretrained(ckpt))))
    got = []
    for shard in s["shards"]:
        data = (tmp_path / "export" / shard).read_bytes()
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        header.pop("__metadata__", None)
        got += sorted(header, key=lambda k: header[k]["data_offsets"][0])
    assert got == want and _sums_hold(tmp_path / "export")
    monkeypatch.setattr(core, "names_in_checkpoint", real)
    ref = export_checkpoint(ckpt, tmp_path / "plain", tokenizer=tokenizer, dtype="float32", max_shard_size="60KB")
    same = {k: v for k, v in s["files"].items() if k != "verification.json"}
    assert same == {k: v for k, v in ref["files"].items() if k != "verification.json"}  # byte for byte
