"""Is the Hugging Face Hub there? One answer for every component (tokenizer, data sources, pre-flight)."""

from __future__ import annotations

import os


def offline_requested() -> bool:
    """The user (or CI) said so: HF_HUB_OFFLINE=1/true/yes (any case), as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub (HF_ENDPOINT)? False when offline is requested.
    Used to fail in seconds instead of after a minute of huggingface_hub's retries."""
    import socket
    from urllib.parse import urlparse

    if offline_requested():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False
