"""The quickstart export where users serve it: llama.cpp's converter, vLLM's engine arguments, our GGUF
files run by llama.cpp itself (llama-cpp-python built from its sdist by ``tests/setup/llama_cpp.sh``),
and the model card read by ``huggingface_hub``. All on the session's real quickstart run.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest
from conftest import run_python

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path(os.environ.get("LLAMA3ZH_CACHE", pathlib.Path.home() / ".cache" / "llama3zh_dist"))
LLAMA_CPP_VERSION = "0.3.36"  # tests/setup/llama_cpp.sh
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

NEW_TOKENS = 48


def _prompts() -> list[str]:
    """5 of the quickstart's training questions: the trained model answers them and ends with <|eot_id|>."""
    from llama3zh_dist.quickstart_check import quickstart_pairs

    return [q for q, _ in quickstart_pairs()[:5]]


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.fail("llama-cpp-python is not installed: run tests/setup/llama_cpp.sh (builds it once, cached)")
    return llama_cpp


@pytest.fixture(scope="module")
def run_copy(quickstart_run, module_tmp):
    """The quickstart run's files and export (no checkpoints), copied: these tests add GGUF files and an
    evaluation to it, which the other quickstart tests must not see."""
    src = quickstart_run[0]
    dst = module_tmp("serving") / "run"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    return dst


@pytest.fixture(scope="module")
def with_gguf(run_copy):
    """``python -m llama3zh_dist.export model.path=<export> export.gguf=[f16,q8_0]`` on the export folder."""
    proc = run_python(["-m", "llama3zh_dist.export", f"model.path={run_copy / 'export'}", "export.gguf=[f16,q8_0]"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_copy / "export"


@pytest.fixture(scope="module")
def converter_gguf(quickstart_run, module_tmp):
    """llama.cpp's own ``convert_hf_to_gguf.py`` (from the llama-cpp-python source distribution that
    tests/setup/llama_cpp.sh caches) run on the quickstart export: (returncode, stderr, f16 file)."""
    sdist = CACHE / "sdist" / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    if not sdist.is_file():
        pytest.fail(f"{sdist} missing: run tests/setup/llama_cpp.sh")
    tmp = module_tmp("converter")
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.name == prefix + "convert_hf_to_gguf.py"
                   or m.name.startswith((prefix + "gguf-py/", prefix + "conversion/"))]
        tf.extractall(tmp, members=members, filter="data")
    out = tmp / "converted-f16.gguf"
    conv = subprocess.run([sys.executable, str(tmp / prefix / "convert_hf_to_gguf.py"), str(quickstart_run[0] / "export"),
                           "--outfile", str(out), "--outtype", "f16"], capture_output=True, text=True)
    return conv.returncode, conv.stderr, out


def test_export_names_its_architecture_and_llama_cpps_converter_and_vllm_read_it(quickstart_run, converter_gguf):
    export = quickstart_run[0] / "export"
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]  # the quickstart initialises from model.arch
    rc, err, out = converter_gguf
    assert rc == 0 and "Failed to detect model architecture" not in err, err[-3000:]
    assert out.stat().st_size > 0
    from llama3zh_dist.export.engine_args import vllm_engine_args

    args = vllm_engine_args(export)
    import transformers

    assert args["architecture"] == "LlamaForCausalLM" and hasattr(transformers, args["architecture"])
    assert args["engine_args"]["dtype"] == "float32" and args["engine_args"]["max_model_len"] == 8192
    assert 128009 in args["stop_token_ids"]


def _gguf_tensors(path):
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, np.asarray(t.data).copy()) for t in r.tensors}


def test_gguf_files_are_listed_in_sha256sums_and_equal_llama_cpps_converter(with_gguf, converter_gguf):
    import hashlib

    sums = dict(reversed(line.split("  ", 1)) for line in (with_gguf / "SHA256SUMS").read_text().splitlines())
    for name in ("gguf/model-f16.gguf", "gguf/model-q8_0.gguf"):
        assert sums[name] == hashlib.sha256((with_gguf / name).read_bytes()).hexdigest()
    rc, err, conv = converter_gguf
    assert rc == 0, err[-3000:]
    ours, theirs = _gguf_tensors(with_gguf / "gguf/model-f16.gguf"), _gguf_tensors(conv)
    assert set(ours) == set(theirs)
    for name, (kind, data) in theirs.items():
        assert ours[name][0] == kind and (ours[name][1] == data).all(), name


@pytest.fixture(scope="module")
def hf_greedy(with_gguf):
    """(tokenizer, [(prompt ids, greedy continuation)]) of the Hugging Face export, for the 5 prompts."""
    return _hf_greedy(with_gguf)


def _hf_greedy(export: pathlib.Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    out = []
    for p in _prompts():
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 eos_token_id=[128009])
        out.append((ids, gen[0, len(ids):].tolist()))
    return tok, out


def _llama(path, **kw):
    return _llama_cpp().Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, seed=0, **kw)


def _cpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        if t == 128009:
            break
        llm.eval([t])
    return out


def test_llama_cpp_runs_our_f16_gguf_greedily_as_the_hf_export_and_q8_0_agrees(with_gguf, hf_greedy):
    tok, hf = hf_greedy
    f16 = _llama(with_gguf / "gguf/model-f16.gguf", logits_all=True)
    for (ids, want), p in zip(hf, _prompts()):
        text = tok.decode(ids)
        # llama.cpp tokenises the rendered prompt as our tokenizer does (the GGUF's vocabulary and merges)
        assert f16.tokenize(text.encode(), add_bos=False, special=True) == ids, p
        assert _cpp_greedy(f16, ids, NEW_TOKENS) == want, p
    del f16
    q8 = _llama(with_gguf / "gguf/model-q8_0.gguf", logits_all=True)
    import numpy as np

    agree = total = 0
    for ids, want in hf:
        q8.reset()
        q8.eval(ids + want[:-1])
        top1 = np.argmax(np.asarray(q8.scores[len(ids) - 1: len(ids) + len(want) - 1]), axis=-1)
        agree += int((top1 == np.asarray(want)).sum())
        total += len(want)
    print(f"q8_0 top-1 agreement {agree}/{total}")
    assert agree >= 0.95 * total


def test_llama_cpps_chat_handling_uses_our_template_and_stops_at_eot(with_gguf, hf_greedy):
    """``create_chat_completion`` renders the GGUF's chat template and ends the turn at <|eot_id|>: its
    answer is llama.cpp's own greedy continuation of our rendered prompt up to (not including) that token."""
    tok, hf = hf_greedy
    llm = _llama(with_gguf / "gguf/model-f16.gguf", logits_all=True)
    for (ids, _), p in zip(hf, _prompts()):
        raw = _cpp_greedy(llm, ids, 400)
        if raw[-1] != 128009:
            continue  # no end of turn within the budget: try the next prompt
        r = llm.create_chat_completion(messages=[{"role": "user", "content": p}], temperature=0.0,
                                       max_tokens=len(raw) + 50)
        choice = r["choices"][0]
        assert choice["finish_reason"] == "stop", (p, choice)
        assert choice["message"]["content"] == tok.decode(raw[:-1], skip_special_tokens=True), p
        break
    else:
        pytest.fail("no prompt ended with <|eot_id|> within 400 tokens")


def test_model_card_parses_and_its_numbers_are_the_runs_after_a_later_evaluation(with_gguf):
    run = with_gguf.parent
    proc = run_python(["-m", "llama3zh_dist.eval", f"run.dir={run}", "+experiment=quickstart",
                       "eval.benchmarks=[cmmlu]"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((run / "eval" / "export" / "results.json").read_text())
    from huggingface_hub import ModelCard

    card = ModelCard.load(with_gguf / "README.md")
    meta = card.data.to_dict()
    assert meta["language"] == ["zh", "en"] and meta["license"] == "llama3"
    assert meta["library_name"] == "transformers" and "gguf" in meta["tags"]
    report = json.loads((run / "data_report.json").read_text())
    assert meta["datasets"] == list(report["sources"])
    [entry] = card.data.eval_results
    assert entry.dataset_name == "CMMLU" and entry.metric_value == results["cmmlu"]["accuracy"]
    text = card.text
    for name, s in report["sources"].items():
        repaired = sum((s.get("repairs") or {}).values())
        row = [c.strip() for c in next(line for line in text.splitlines() if line.startswith(f"| {name} |")).split("|")[1:-1]]
        assert [int(x.replace(",", "")) for x in row[2:6]] == [s["read"], s["kept"], repaired, s["rejected"]]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in records if "loss" in r}
    assert f"| optimizer steps | {max(steps):,} |" in text
    assert f"| tokens trained | {sum(r['tokens'] for r in steps.values()):,} |" in text
    assert f"| cmmlu | overall | {100 * results['cmmlu']['accuracy']:.2f} | {results['cmmlu']['n']} |" in text
    for cat, v in results["cmmlu"]["categories"].items():
        assert f"| cmmlu | {cat} | {100 * v['accuracy']:.2f} | {v['n']} |" in text
    assert "gguf/model-q8_0.gguf" in text
    sums = (with_gguf / "SHA256SUMS").read_text()
    import hashlib

    assert f"{hashlib.sha256((with_gguf / 'README.md').read_bytes()).hexdigest()}  README.md" in sums
