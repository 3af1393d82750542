"""GGUF files of an export folder, for llama.cpp / Ollama / LM Studio: ``gguf/model-<type>.gguf``.

Written with the ``gguf`` package (llama.cpp's own Python writer, the one its converter uses) from the
export's safetensors, ``config.json`` and tokenizer files, so the same code serves a fresh export and
``python -m llama3zh_dist.export model.path=<export> export.gguf=[q8_0]``. The metadata is what
llama.cpp's ``convert_hf_to_gguf.py`` writes for a Llama 3 model: the ``llama`` architecture keys, the
real BPE tokenizer (tokens, token types, merges, pre-tokenizer ``llama-bpe``), the exported chat
template, and ``<|eot_id|>`` as end of turn and end of sequence, so llama.cpp-based tools stop a chat
turn without extra flags.

Bounded memory: a tensor is read from the safetensors file in blocks of rows (``pread`` into one reused
buffer, no mmap left resident), converted or quantised (``gguf.quants``) and appended to the GGUF file;
the query/key rows are permuted head by head into llama.cpp's rotary layout (as the converter does).
The process holds one block (``BLOCK_ELEMENTS``) and its converted copy, whatever the model size.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re

import numpy as np
import torch

from llama3zh_dist.errors import UserError

GGUF_TYPES = ("bf16", "f16", "q8_0")
BLOCK_ELEMENTS = 1 << 22  # 4M elements: 16 MB fp32 per block
GGUF_DIR = "gguf"


def gguf_filename(qtype: str) -> str:
    return f"{GGUF_DIR}/model-{qtype}.gguf"


def _ggml_types(qtype: str):
    import gguf

    Q = gguf.GGMLQuantizationType
    return {"bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16), "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
            "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}[qtype]


def _tensor_type(qtype: str, shape: list[int]):
    """As the converter: 1-D tensors (norms, rope factors) stay F32; a row length that is not a whole
    number of q8_0 blocks falls back to F16."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) < 2:
        return Q.F32
    t, _ = _ggml_types(qtype)
    if t == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16
    return t


def _convert_rows(rows: torch.Tensor, ggml_type) -> np.ndarray:
    """A block of rows (any float dtype) as the bytes of ``ggml_type`` (2-D uint8 array)."""
    import gguf
    from gguf import quants

    Q = gguf.GGMLQuantizationType
    x = rows.float()
    if ggml_type == Q.F32:
        return x.numpy().view(np.uint8)
    if ggml_type == Q.F16:
        return x.numpy().astype(np.float16).view(np.uint8)
    if ggml_type == Q.BF16:  # torch rounds to nearest even, as gguf.quants' BF16 does
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
    return quants.quantize(x.numpy(), ggml_type)


# ------------------------------------------------------------------------------------------- tokenizer


def _tokenizer_metadata(export_dir: pathlib.Path) -> dict:
    """tokens, token types, merges and special ids from the export's ``tokenizer.json`` (byte-level BPE)."""
    import gguf

    tj = export_dir / "tokenizer.json"
    if not tj.is_file():
        raise UserError(f"{export_dir} has no tokenizer.json: GGUF needs the tokenizer; export again")
    data = json.loads(tj.read_text())
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{tj}: a {model.get('type')} tokenizer; GGUF export handles Llama 3's byte-level BPE")
    vocab: dict[str, int] = dict(model["vocab"])
    special: set[int] = set()
    for t in data.get("added_tokens") or []:
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special.add(t["id"])
    cfg = json.loads((export_dir / "config.json").read_text())
    size = max(int(cfg.get("vocab_size", 0)), max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    tc = export_dir / "tokenizer_config.json"
    add_bos = bool(json.loads(tc.read_text()).get("add_bos_token", False)) if tc.is_file() else False
    return {"tokens": tokens, "types": types, "merges": merges, "vocab": vocab, "add_bos": add_bos}


_GENERATION_TAGS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def _chat_template(export_dir: pathlib.Path) -> str | None:
    """The export's chat template without ``{% generation %}`` / ``{% endgeneration %}``: those mark the
    assistant tokens for ``transformers``' ``return_assistant_tokens_mask`` only (they render nothing),
    and are unknown to plain Jinja2 (llama-cpp-python) and llama.cpp's own template engine."""
    jinja = export_dir / "chat_template.jinja"
    if jinja.is_file():
        text = jinja.read_text()
    else:
        tc = export_dir / "tokenizer_config.json"
        text = json.loads(tc.read_text()).get("chat_template") if tc.is_file() else None
    return _GENERATION_TAGS.sub("", text) if isinstance(text, str) else None


# --------------------------------------------------------------------------------------------- tensors


def _shard_of(export_dir: pathlib.Path) -> dict[str, str]:
    index = export_dir / "model.safetensors.index.json"
    if index.is_file():
        return json.loads(index.read_text())["weight_map"]
    single = export_dir / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{export_dir} holds no model.safetensors or index: not an export folder")
    from .verify import _ShardReader

    r = _ShardReader(single)
    try:
        return {k: "model.safetensors" for k in r.header if k != "__metadata__"}
    finally:
        r.close()


def _rope_theta(cfg: dict) -> float:
    """transformers 5 keeps it in ``rope_parameters``, 4.x at the top level."""
    return float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or 10000.0)


def _rope_factors(cfg: dict) -> np.ndarray | None:
    """Llama 3.1-style rope scaling as llama.cpp's converter writes it (``rope_freqs.weight``)."""
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if str(rs.get("rope_type", rs.get("type", ""))).lower() != "llama3":
        return None
    base = _rope_theta(cfg)
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, lo, hi = rs.get("factor", 8.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _plan(export_dir: pathlib.Path, cfg: dict, qtype: str):
    """(gguf name, hf name, shape, ggml type, heads to permute by) per tensor, in file order."""
    import gguf

    from .verify import _ShardReader

    n_layers = cfg["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    where = _shard_of(export_dir)
    shapes = {}
    for fn in sorted(set(where.values())):
        r = _ShardReader(export_dir / fn)
        shapes.update({k: v["shape"] for k, v in r.header.items() if k != "__metadata__"})
        r.close()
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    plan = []
    for hf in where:
        if hf.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"{export_dir}: tensor {hf} has no GGUF name for the llama architecture")
        permute = heads if hf.endswith("q_proj.weight") else kv if hf.endswith("k_proj.weight") else None
        plan.append((name, hf, list(shapes[hf]), _tensor_type(qtype, shapes[hf]), permute))
    return plan, where


def _rows_blocks(reader, hf: str, shape: list[int], permute: int | None):
    """Blocks of rows of tensor ``hf``; with ``permute`` heads, each block is whole heads, reordered
    from HF's rotary layout (halves) to llama.cpp's (interleaved pairs), as the converter's ``permute``."""
    sl = reader.get_slice(hf)
    rows = shape[0] if shape else 1
    per_row = math.prod(shape[1:]) if len(shape) > 1 else (shape[0] if shape else 1)
    if len(shape) < 2:
        yield sl[:].reshape(1, -1)
        return
    step = max(1, BLOCK_ELEMENTS // per_row)
    if permute:
        head_rows = rows // permute
        step = max(head_rows, step // head_rows * head_rows)
    buf = torch.empty(step * per_row, dtype=sl.dtype)
    for a in range(0, rows, step):
        b = min(rows, a + step)
        w = sl.read_rows(a, b, buf).reshape(b - a, per_row)
        if permute:
            hr = rows // permute
            w = w.reshape((b - a) // hr, 2, hr // 2, per_row).transpose(1, 2).reshape(b - a, per_row)
        yield w


def write_gguf(export_dir, qtype: str, *, model_name: str | None = None) -> pathlib.Path:
    """Write ``export_dir/gguf/model-<qtype>.gguf`` (temp file renamed into place); returns its path."""
    import gguf

    from .verify import _ShardReader

    if qtype not in GGUF_TYPES:
        raise UserError(f"export.gguf: {qtype!r} is not a GGUF type written here; use any of {list(GGUF_TYPES)}")
    export_dir = pathlib.Path(export_dir)
    cfg = json.loads((export_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise UserError(f"{export_dir}: model_type {cfg.get('model_type')!r}; GGUF export handles Llama models")
    tok = _tokenizer_metadata(export_dir)
    plan, where = _plan(export_dir, cfg, qtype)
    out = export_dir / gguf_filename(qtype)
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_metadata(w, cfg, tok, _chat_template(export_dir), qtype, model_name or export_dir.resolve().name)
        rope = _rope_factors(cfg)
        for name, _, shape, t, _ in plan:
            w.add_tensor_info(name, _byte_shape(shape, t), np.dtype(np.uint8), _nbytes(shape, t), raw_dtype=t)
        if rope is not None:
            w.add_tensor_info(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", list(rope.shape),
                              rope.dtype, rope.nbytes)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        readers: dict[str, _ShardReader] = {}
        try:
            for name, hf, shape, t, permute in plan:
                fn = where[hf]
                if fn not in readers:
                    readers[fn] = _ShardReader(export_dir / fn)
                _append_tensor(w, name, (_convert_rows(b, t) for b in _rows_blocks(readers[fn], hf, shape, permute)))
            if rope is not None:
                _append_tensor(w, "rope_freqs.weight", iter([rope.view(np.uint8)]))
        finally:
            for r in readers.values():
                r.close()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _byte_shape(shape: list[int], t) -> list[int]:
    from gguf import quants

    return list(quants.quant_shape_to_byte_shape(tuple(shape), t))


def _nbytes(shape: list[int], t) -> int:
    return math.prod(_byte_shape(shape, t))


def _append_tensor(w, name: str, blocks) -> None:
    """Append one tensor's data block by block. ``GGUFWriter.write_tensor_data`` takes a whole tensor
    in one array; this does the same bookkeeping (alignment padding, tensor-info order, state) while
    writing row blocks, so no tensor is ever held whole."""
    import gguf

    fout = w.fout[0]
    info = w.tensors[0].pop(next(iter(w.tensors[0])))
    written = 0
    w.write_padding(fout, fout.tell())
    for b in blocks:
        b.tofile(fout)
        written += b.nbytes
    if written != info.nbytes:
        raise RuntimeError(f"GGUF {name}: wrote {written} bytes of {info.nbytes}")
    w.write_padding(fout, written)
    w.state = gguf.gguf_writer.WriterState.WEIGHTS


def _add_metadata(w, cfg: dict, tok: dict, template: str | None, qtype: str, name: str) -> None:
    import gguf

    from llama3zh_dist.llama3.tokens import BOS, EOT, PAD

    _, file_type = _ggml_types(qtype)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_name(name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_vocab_size(len(tok["tokens"]))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    # llama-bpe: Llama 3's split pattern with whole-word lookup first (ignore_merges, as tiktoken and
    # our tokenizer.json do). llama.cpp's converter guesses "smaug-bpe" for this tokenizer only because
    # its fingerprint expects a BOS that our tokenizer.json does not add; smaug-bpe applies merges to
    # whole words, which can split a word differently.
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    vocab = tok["vocab"]
    for tok_name in (BOS, EOT, PAD):
        if tok_name not in vocab:
            raise UserError(f"the export's tokenizer lacks {tok_name}: not a Llama 3 tokenizer")
    w.add_bos_token_id(vocab[BOS])
    # <|eot_id|> ends an assistant turn: as eos and eot, every llama.cpp tool stops there
    w.add_eos_token_id(vocab[EOT])
    w.add_eot_token_id(vocab[EOT])
    w.add_pad_token_id(vocab[PAD])
    w.add_add_bos_token(bool(tok["add_bos"]))  # as the HF tokenizer: the chat template writes the BOS
    if template:
        w.add_chat_template(template)
