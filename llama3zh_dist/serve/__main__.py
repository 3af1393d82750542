"""``python -m llama3zh_dist.serve model.path=<export> [serve.compare=<export>] [serve.port=8000]``

Loads each export once (whatever the number of users), then serves the OpenAI-compatible API and
the web chat on ``serve.host:serve.port`` until Ctrl-C. ``run.dir=<run>`` serves its export. The API
key (``serve.api_key`` or ``LLAMA3ZH_API_KEY``) is never printed, logged or saved.
"""

from __future__ import annotations

import os
import socket
import sys

# The engine runs the model in its own thread while the main thread runs the HTTP server. With
# OpenMP's default active waiting, the idle team of one thread spins on the cores the other needs:
# measured on 2 cores, 8 concurrent requests ran at 16 tokens/s instead of 136. Passive waiting
# must be set before torch (libgomp) loads; a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ..config import load_config
from ..errors import UserError, exits_cleanly_on_user_error
from ..process_exit import exit_process
from .settings import api_key, model_ids, out_dir_for


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the models load, so a taken port fails in a second."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): pick another serve.port= "
                        "(0 = any free port) or serve.host=") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(argv)
    serve = cfg.serve
    targets = model_ids(cfg, argv)
    out_dir = out_dir_for(cfg, argv)
    key = api_key(cfg)
    sock = _bind(serve.host, int(serve.port))
    host, port = sock.getsockname()[:2]

    from transformers.utils import logging as hf_logging

    from .models import ServedModel

    hf_logging.disable_progress_bar()  # "Loading weights" bars: one line per model says the same

    models = {}
    for model_id, folder in targets:
        print(f"[serve] loading {model_id}", file=sys.stderr, flush=True)
        models[model_id] = ServedModel(folder, model_id, serve, bool(cfg.model.get("trust_remote_code", False)))
    backend = next(iter(models.values())).backend

    import uvicorn

    from .app import create_app

    app = create_app(models, serve, key, out_dir)
    shown = f"[{host}]" if ":" in host else host
    print(f"[serve] {backend} backend, {len(models)} model(s): {', '.join(models)}", file=sys.stderr)
    print(f"[serve] API   http://{shown}:{port}/v1  (key {'required' if key else 'not required'})", file=sys.stderr)
    print(f"[serve] chat  http://{shown}:{port}/" + ("  (compare mode)" if len(models) == 2 else ""), file=sys.stderr)
    print(f"[serve] votes {out_dir}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    exit_process(main())
