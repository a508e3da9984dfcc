"""zocli.data.hub and what uses it: without a network, `prepare` answers in seconds, not after a minute of retries."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from zocli.data import hub


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(args: list[str], tmp_path, port: int) -> tuple[subprocess.CompletedProcess, float]:
    # HF_HUB_OFFLINE unset: the user has not declared the machine offline; the hub endpoint refuses.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", *hub.PROXY_VARIABLES)}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"), COLUMNS="300")
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "zocli", "prepare", "--data-root", str(tmp_path / "data"), *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    return proc, time.perf_counter() - began


def test_an_unreachable_hub_is_detected(monkeypatch, closed_port):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    for name in hub.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not hub.reachable()
    with hub.offline_unless_reachable() as online:
        assert not online and constants.HF_HUB_OFFLINE
    assert constants.HF_HUB_OFFLINE is False  # restored


def test_prepare_without_network_fails_in_seconds(tmp_path, closed_port):
    # Found: 36-60 s of hub retries before the hint (24 s here against a refusing endpoint).
    proc, seconds = _prepare(["--benchmark", "cifar100"], tmp_path, closed_port)
    assert proc.returncode == 1, proc.stderr
    assert seconds < 12, f"{seconds:.1f} s"
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--source DIR" in error[0] and "unreachable" in error[0]


def test_weights_without_network_name_both_ways_out(tmp_path, closed_port):
    proc, seconds = _prepare(["--weights"], tmp_path, closed_port)
    assert proc.returncode == 1, proc.stderr
    assert seconds < 20, f"{seconds:.1f} s"  # open_clip's import is most of it
    error = proc.stderr.strip()
    assert error.count("\n") == 0 and "hf download timm/vit_base_patch16_clip_224.openai" in error
    assert "--pretrained PATH" in error
