"""The only network zocli uses: the Hugging Face hub, from `zocli prepare` (data and `--weights`).

Without a network the hub libraries retry for tens of seconds before they fail (24-60 s measured).
One short TCP probe tells first: when the hub cannot be reached they run in offline mode, so a copy
already in the Hugging Face cache is still used and anything else fails at once.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

PROBE_SECONDS = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub endpoint opens within `timeout` seconds (DNS included)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True  # only the proxy knows: let the libraries try
    url = urlsplit(constants.ENDPOINT)
    address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    # A thread bounds the DNS lookup too, which the socket timeout does not cover; a daemon thread
    # cannot hold up the exit if the lookup hangs.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(opened)


@contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Yield whether the hub is reachable; if not, the hub libraries run in offline mode meanwhile."""
    if reachable():
        yield True
        return
    from huggingface_hub import constants

    # Both libraries read these module flags at call time (the environment only at import).
    flags = [constants] + [sys.modules[name] for name in ("datasets.config",) if name in sys.modules]
    saved = [module.HF_HUB_OFFLINE for module in flags]
    for module in flags:
        module.HF_HUB_OFFLINE = True
    try:
        yield False
    finally:
        for module, value in zip(flags, saved):
            module.HF_HUB_OFFLINE = value


def is_weights_tag(pretrained: str) -> bool:
    """Whether --pretrained names an open_clip tag, weights the hub serves: not none, a local dir or a file."""
    return not (pretrained == "none" or pretrained.startswith("local-dir:") or is_weights_file(pretrained))


def is_weights_file(pretrained: str) -> bool:
    """Whether --pretrained names a weights file: a path, a weights suffix, or a name that exists here."""
    path = Path(pretrained).expanduser()
    return "/" in pretrained or path.suffix in WEIGHT_SUFFIXES or path.exists()


_REVISIONS: dict[str, str] = {}  # hub dataset id -> the commit hash last loaded in this process


def note_revision(repo_id: str, revision: str | None = None) -> None:
    """Remember the commit hash `repo_id` resolves to (online only; a failure leaves it unrecorded)."""
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(repo_id, revision=revision, timeout=PROBE_SECONDS * 3).sha
    except Exception:
        return
    if sha:
        _REVISIONS[repo_id] = sha


def last_revision(repo_id: str | None) -> str | None:
    """The hub commit a dataset was loaded from in this process, if it was resolved."""
    return _REVISIONS.get(repo_id) if repo_id else None
