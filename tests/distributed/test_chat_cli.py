"""``python -m llama3zh_dist.chat`` on the session's quickstart export, typed at a real terminal (a pty).

Line editing and history (readline), ``/reset`` confirmed, Ctrl-C while the model loads exits quietly
(one line, status 130), and no weight-loading progress bar when the output is a pipe.
"""

from __future__ import annotations

import codecs
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_python

pytestmark = pytest.mark.slow
LEFT, UP, CTRL_C = "\x1b[D", "\x1b[A", "\x03"
PROMPT = "你: "
# Only against a test hanging for ever: a command that shows nothing new for this long while the test
# waits on it is stuck (waiting for input the test will not type). The slowest silent stretch here,
# importing torch on a loaded 2-core machine, takes well under a minute; nothing is timed by it.
HANG_GUARD_S = 300


def _foreground_job_of_the_terminal() -> None:
    """In the child before exec, after ``start_new_session``'s setsid: what a shell at a terminal gives a
    command. The pty becomes its controlling terminal, its process group the foreground one, so Ctrl-C
    typed there sends it SIGINT; and SIGINT has its default action: a CI job started in the background
    (``&`` in a script) inherits SIGINT ignored, and Python keeps an inherited ignore."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """The chat command on a pseudo-terminal: what a person at a keyboard sends and sees.

    What the terminal shows is decoded incrementally: readline writes its prompt one byte per write,
    so on a busy machine a read can end inside the 3 bytes of "你"; decoding each read on its own
    turned them into U+FFFD, the prompt was never seen and the test waited for ever. While the test
    waits it always reads, so the command never blocks on a full terminal.
    """

    def __init__(self, args: list[str], home: Path):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a terminal's size
        env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "WANDB_MODE": "offline", "TERM": "xterm"}
        self.proc = subprocess.Popen([sys.executable, "-m", "llama3zh_dist.chat", *args], cwd=ROOT, env=env,
                                     stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=_foreground_job_of_the_terminal)
        os.close(slave)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.seen = ""
        self.ended = False  # the command closed the terminal: all it showed is in seen
        self.last_news = time.monotonic()

    def _read(self, wait_s: float) -> None:
        """Add what the terminal shows within ``wait_s`` to ``seen``."""
        if self.ended or not select.select([self.master], [], [], wait_s)[0]:
            return
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: every process holding the terminal has ended
            data = b""
        self.seen += self.decoder.decode(data, final=not data)
        self.ended = not data
        self.last_news = time.monotonic()

    def _wait(self, what: str, done) -> None:
        while not done():
            if self.ended:
                pytest.fail(f"the chat ended (status {self.proc.wait()}) before {what}; the terminal showed:\n"
                            f"{self.seen}")
            if time.monotonic() - self.last_news > HANG_GUARD_S:
                self.close()
                pytest.fail(f"the chat showed nothing new for {HANG_GUARD_S} s while waiting for {what} "
                            f"(stuck: a hang guard, not a time limit); the terminal showed:\n{self.seen}")
            self._read(0.05)

    def prompts(self, n: int) -> None:
        """Wait until the chat has asked for input ``n`` times."""
        self._wait(f"prompt {n} ({PROMPT!r})", lambda: self.seen.count(PROMPT) >= n)

    def loading(self, library: str) -> None:
        """Wait until the command has begun to load ``library`` (its files are mapped)."""
        maps = Path(f"/proc/{self.proc.pid}/maps")
        self._wait(f"it loads {library}", lambda: f"/{library}/" in maps.read_text())

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def finish(self) -> int:
        """The exit status, once the command has ended; everything it showed is in ``seen``."""
        self._wait("the end", lambda: self.ended)
        code = self.proc.wait()  # it has closed the terminal: it is exiting
        self.close()
        return code

    def close(self) -> None:
        """End the command if it still runs (a failed test) and close the terminal."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.master is not None:
            os.close(self.master)
            self.master = None


@pytest.fixture
def terminal(tmp_path):
    """Open the chat on a terminal (home: the test's tmp_path); ended and closed after the test."""
    opened = []

    def open_chat(args: list[str]) -> Terminal:
        opened.append(Terminal(args, tmp_path))
        return opened[-1]

    yield open_chat
    for term in opened:
        term.close()


def test_interactive_chat_has_line_editing_history_and_a_reset_confirmation(quickstart_run, terminal, tmp_path):
    run_dir, _, _ = quickstart_run
    term = terminal([f"run.dir={run_dir}", "chat.max_new_tokens=4"])
    term.prompts(1)
    term.type("abc" + LEFT * 3 + "X\r")  # the cursor moved back: the line sent is "Xabc"
    term.prompts(2)
    term.type("/reset\r")
    term.prompts(3)
    term.type(UP * 2 + "\r")  # Up twice: the first line again, from the history
    term.prompts(4)
    term.type("/exit\r")
    assert term.finish() == 0, term.seen
    assert "^[[" not in term.seen, term.seen  # arrow keys echoed raw: no line editing
    after_reset = term.seen.split("/reset", 2)[-1]
    assert "conversation reset" in after_reset.split(PROMPT)[0], term.seen
    history = (tmp_path / ".cache" / "llama3zh_dist" / "chat_history").read_text().splitlines()
    assert history[-4:] == ["Xabc", "/reset", "Xabc", "/exit"], history


def test_ctrl_c_while_the_model_loads_exits_quietly_with_130(quickstart_run, terminal):
    run_dir, _, _ = quickstart_run
    term = terminal([f"run.dir={run_dir}"])
    term.loading("torch")
    assert PROMPT not in term.seen
    term.type(CTRL_C)  # the terminal sends SIGINT to the command, as at a keyboard
    code = term.finish()
    shown = term.seen.replace("^C", "", 1)  # the terminal's own echo of the key
    lines = [x for x in shown.splitlines() if x.strip()]
    assert code == 130 and "Traceback" not in shown and len(lines) == 1, term.seen


def test_one_shot_chat_into_a_pipe_shows_no_progress_bar(quickstart_run):
    run_dir, _, _ = quickstart_run
    proc = run_python(["-m", "llama3zh_dist.chat", f"run.dir={run_dir}", "chat.prompt=你好", "chat.max_new_tokens=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Loading weights" not in proc.stderr and "\r" not in proc.stderr, proc.stderr[-2000:]
