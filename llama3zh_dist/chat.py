"""``python -m llama3zh_dist.chat model.path=<export folder>``: chat with an exported model.

Interactive mode keeps the conversation (multi-turn), streams each answer token by token, and
understands ``/reset`` and ``/exit``; the input line has line editing and history (readline, the
history kept in ``~/.cache/llama3zh_dist/chat_history``), and Ctrl-C while the model loads exits
quietly (status 130). One-shot mode (``chat.prompt="..."``, or ``chat.prompt=-`` to
read the prompt from stdin) prints the answer alone on stdout, for scripts.

The prompt is built with the exported tokenizer's own chat template, which renders exactly the
training format; generation stops at ``<|eot_id|>`` (and ``<|end_of_text|>``), the ids the export's
``generation_config.json`` names, so a Llama 3 chat model never runs on past its turn.

Without ``model.path``, the chat opens ``run.dir/export``.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from omegaconf import DictConfig

from .config import load_config, require_run_dir, resolve_path
from .errors import UserError, exits_cleanly_on_user_error
from .llama3.tokens import STOP_TOKENS
from .process_exit import exit_process
from .quiet import no_progress_bars_off_a_terminal


def resolve_model_folder(cfg: DictConfig, argv: list[str] = ()) -> Path:
    """The exported model folder: ``model.path`` when given on the command line (or set by an
    experiment to a local folder), else ``run.dir/export``."""
    given = any(a.split("=", 1)[0].lstrip("+") == "model.path" for a in argv)
    export = resolve_path(str(Path(cfg.run.dir) / "export"))
    if given and cfg.model.path:
        folder = resolve_path(cfg.model.path)
    elif (export / "config.json").exists() or not cfg.model.path:
        folder = export
    else:
        folder = resolve_path(cfg.model.path)
    if not (folder / "config.json").exists():
        raise UserError(
            f"no exported model at {folder} (config.json missing). Pass model.path=<export folder>, or "
            f"run.dir=<run folder> whose training finished (or run `python -m llama3zh_dist.export run.dir=...`)."
        )
    return folder


class ChatModel:
    """An exported model and its tokenizer, offline; greedy when ``temperature`` is 0."""

    def __init__(self, folder: Path, cfg: DictConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        no_progress_bars_off_a_terminal()

        trust = bool(cfg.model.get("trust_remote_code", False))
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=trust, dtype="auto"
        ).to(device).eval()
        self.device = device
        self.stop_ids = [i for i in self.tok.convert_tokens_to_ids(list(STOP_TOKENS)) if i is not None]
        self.c = cfg.chat

    def _generate_kwargs(self, messages: list[dict]) -> dict:
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
        kw = dict(
            input_ids=ids["input_ids"].to(self.device),
            attention_mask=ids["attention_mask"].to(self.device),
            max_new_tokens=int(self.c.max_new_tokens),
            eos_token_id=self.stop_ids,
            pad_token_id=self.tok.pad_token_id,
            repetition_penalty=float(self.c.repetition_penalty),
        )
        if float(self.c.temperature) > 0:
            kw.update(do_sample=True, temperature=float(self.c.temperature), top_p=float(self.c.top_p))
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def answer(self, messages: list[dict]) -> str:
        import torch

        kw = self._generate_kwargs(messages)
        with torch.no_grad():
            out = self.model.generate(**kw)
        return self.tok.decode(out[0, kw["input_ids"].shape[1]:], skip_special_tokens=True)

    def stream(self, messages: list[dict]):
        """Yield the answer's text as it is generated."""
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        kw = self._generate_kwargs(messages)

        def work():
            with torch.no_grad():
                self.model.generate(**kw, streamer=streamer)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()


def _start(cfg: DictConfig) -> list[dict]:
    return [{"role": "system", "content": cfg.chat.system}] if cfg.chat.system else []


def one_shot(chat: ChatModel, cfg: DictConfig) -> int:
    prompt = sys.stdin.read() if cfg.chat.prompt == "-" else str(cfg.chat.prompt)
    if not prompt.strip():
        raise UserError("chat.prompt is empty (with chat.prompt=- the prompt is read from stdin)")
    messages = _start(cfg) + [{"role": "user", "content": prompt.strip()}]
    print(chat.answer(messages), flush=True)
    return 0


HISTORY = Path(os.path.expanduser("~/.cache/llama3zh_dist/chat_history"))


def _line_editing() -> None:
    """Arrow keys, Ctrl-A/E, and Up for earlier inputs (this session's and the previous ones'):
    importing ``readline`` gives ``input()`` all of it; without it the keys reach the model as ``^[[D``."""
    try:
        import atexit
        import readline
    except ImportError:  # a Python without readline (Windows): plain input()
        return
    try:
        readline.read_history_file(HISTORY)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            HISTORY.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(HISTORY)
        except OSError:
            pass

    atexit.register(save)


def interactive(chat: ChatModel, cfg: DictConfig, folder: Path) -> int:
    if sys.stdin.isatty():
        _line_editing()
    print(f"chatting with {folder} — /reset starts over, /exit (or Ctrl-D) quits", file=sys.stderr)
    messages = _start(cfg)
    while True:
        try:
            line = input("你: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            messages = _start(cfg)
            print("(conversation reset: the model no longer sees the earlier turns)", file=sys.stderr, flush=True)
            continue
        messages.append({"role": "user", "content": text})
        print("助手: ", end="", flush=True)
        parts = []
        for piece in chat.stream(messages):
            parts.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        messages.append({"role": "assistant", "content": "".join(parts)})


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Free text (Chinese, punctuation, quotes) is not valid Hydra override grammar unless quoted
    # twice; take chat.prompt / chat.system verbatim and set them after composing.
    verbatim = {k: a.split("=", 1)[1] for a in argv for k in ("chat.prompt", "chat.system")
                if a.startswith(k + "=")}
    try:
        cfg = load_config([a for a in argv if a.split("=", 1)[0] not in verbatim])
        for key, value in verbatim.items():
            cfg.chat[key.split(".", 1)[1]] = value
        require_run_dir(cfg, argv)
        folder = resolve_model_folder(cfg, argv)
        chat = ChatModel(folder, cfg)
        if cfg.chat.prompt is not None:
            return one_shot(chat, cfg)
        return interactive(chat, cfg, folder)
    except KeyboardInterrupt:  # Ctrl-C while the libraries or the weights load: no traceback
        print("\ninterrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    exit_process(main())
