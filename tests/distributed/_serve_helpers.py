"""A real ``python -m llama3zh_dist.serve`` subprocess on a free loopback port, for the serve tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_URL = re.compile(r"\[serve\] API\s+http://([0-9.]+):(\d+)/v1")


class ServeProcess:
    """Starts the server with ``serve.port=0`` and reads the port it printed; ``stop()`` ends it."""

    def __init__(self, args: list[str], env: dict | None = None, cwd: Path | None = None):
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
                    **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "llama3zh_dist.serve", *args, "serve.port=0"],
                                     cwd=cwd or ROOT, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        ready = threading.Event()
        self.base_url = None

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = _URL.search(line)
                if m and self.base_url is None:
                    self.base_url = f"http://{m.group(1)}:{m.group(2)}"
                    ready.set()
            ready.set()  # the process ended

        threading.Thread(target=read, daemon=True).start()
        ready.wait()
        if self.base_url is None:
            self.proc.wait()
            raise RuntimeError("serve did not start:\n" + "".join(self.lines)[-5000:])

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def peak_rss_bytes(self) -> int:
        """The server process's peak resident set so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
